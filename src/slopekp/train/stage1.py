"""Stage I: initialise the camera multiplex by fitting P hypotheses per image to its mask (METHOD §5.3).

The shape is the template itself (no network, no deformation). For each image, every hypothesis of the grid of
METHOD §5.1 is optimised independently — scale, translation and the three bounded angle offsets of §5.2 — with
Adam (lr 0.1, 150 steps) on the mask loss ``mean_px[D·S + (S − M)²]`` of its rendered silhouette (§7.1). The
final per-hypothesis losses become scores (min–max rescaling + softmin with peakiness 20). Results go to a
:class:`~slopekp.train.multiplex.CameraMultiplex` keyed by unflipped image id.

Top to bottom:

* :func:`fit_hypotheses` — the pure optimisation of one batch of masks (no data set, no files).
* :func:`run_stage1` — the command: data set → batches → :func:`fit_hypotheses` → store (saved atomically
  after every ``multiplex.save_every`` batches; images already in the store are skipped, so a killed run
  resumes) → report (:mod:`slopekp.train.report`).

Ground truth never reaches the optimisation: the training data set is built with ``return_gt_camera=False``
(:func:`_fit_dataset` refuses any other), and only the report opens a second, GT-returning data set.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from slopekp.config import Config, save_config
from slopekp.render import Renderer, RenderSettings
from slopekp.train.losses import mask_loss
from slopekp.train.multiplex import (
    CameraMultiplex,
    OffsetSettings,
    adam_update,
    apply_offsets,
    hypothesis_cameras_from_config,
    hypothesis_scores,
    positive_scale_cameras,
    template_fingerprint,
)
from slopekp.utils import resolve_device, seed_everything

if TYPE_CHECKING:
    from slopekp.train.report import MultiplexMetrics

STORE_NAME = "multiplex.npz"


class HypothesisFit(NamedTuple):
    """Result of :func:`fit_hypotheses` for B images and P hypotheses."""

    cameras: Tensor
    """``(B, P, 7)`` fitted cameras (NDC of the masks' crops; scale made positive, see
    :func:`~slopekp.train.multiplex.positive_scale_cameras`)."""
    loss: Tensor
    """``(B, P)`` final mask loss of each hypothesis."""
    scores: Tensor
    """``(B, P)`` scores (rows sum to 1)."""
    loss_curve: Tensor
    """``(steps + 1,)`` mean loss over the batch before each step and after the last one."""


def check_masks(mask: Tensor, ids: Tensor | None = None, threshold: float = 0.5) -> None:
    """Raise ``ValueError`` naming the images whose mask ``(B, H, W)`` has no pixel above ``threshold``."""
    empty = (mask > threshold).flatten(1).sum(1) == 0
    if empty.any():
        where = empty.nonzero().flatten().tolist()
        names = ids[where].tolist() if ids is not None else where
        label = "image id(s)" if ids is not None else "batch index(es)"
        raise ValueError(f"empty mask (no pixel > {threshold}) for {label} {names}: nothing to fit a camera to")


def fit_hypotheses(
    verts: Tensor,
    faces: Tensor,
    renderer: Renderer,
    mask: Tensor,
    mask_dt: Tensor,
    init_cameras: Tensor,
    *,
    settings: OffsetSettings,
    steps: int = 150,
    lr: float = 0.1,
    peakiness: float = 20.0,
    betas: tuple[float, float] = (0.9, 0.999),
    ids: Tensor | None = None,
) -> HypothesisFit:
    """Fit P camera hypotheses per image to its mask (METHOD §5.3).

    Each hypothesis has its own offsets ``(δs, δt, α_az, α_el, α_cr)`` (METHOD §5.2) and Adam moments. The
    objective is the *sum* over images and hypotheses of the per-silhouette mask loss, so every hypothesis'
    trajectory is independent of the others and of the batch composition (an image gets the same cameras
    in any batch; with a mean, Adam's ``eps`` would couple them weakly).

    Args:
        verts: ``(V, 3)`` template vertices (object frame).
        faces: ``(F, 3)`` int64 faces.
        renderer: renders ``(B, P, H, W)`` silhouettes; its image size must equal the masks'.
        mask: ``(B, H, W)`` masks in [0, 1]; mask_dt: ``(B, H, W)`` their distance transforms.
        init_cameras: ``(P, 7)`` hypotheses shared by all images, or ``(B, P, 7)``.
        settings: the offset parametrisation (gain ``c`` = 0.1 in Stage I).
        steps, lr, peakiness, betas: optimiser and scoring settings.
        ids: optional ``(B,)`` image ids, only to name images in error messages.

    Returns:
        :class:`HypothesisFit`.

    Raises:
        ValueError: empty masks (naming the images), mismatched shapes, ``steps < 0``.
    """
    if mask.dim() != 3 or mask_dt.shape != mask.shape:
        raise ValueError(
            f"mask and mask_dt must be (B, H, W) of equal shape, got {tuple(mask.shape)} and {tuple(mask_dt.shape)}"
        )
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    check_masks(mask, ids)
    B = mask.shape[0]
    if init_cameras.dim() == 2:
        init_cameras = init_cameras.expand(B, *init_cameras.shape)
    if init_cameras.dim() != 3 or init_cameras.shape[0] != B or init_cameras.shape[-1] != 7:
        raise ValueError(f"init_cameras must be (P, 7) or (B={B}, P, 7), got {tuple(init_cameras.shape)}")
    base = init_cameras.to(mask.device, torch.float32)
    offsets = torch.zeros(*base.shape[:2], 6, dtype=torch.float32, device=mask.device)
    exp_avg, exp_avg_sq = torch.zeros_like(offsets), torch.zeros_like(offsets)
    step = torch.zeros(B, dtype=torch.int64, device=mask.device)
    curve = []
    for _ in range(steps):
        leaf = offsets.requires_grad_(True)
        cams = apply_offsets(base, leaf, settings)
        loss = mask_loss(renderer(verts, faces, cams, mode="silhouette").alpha, mask, mask_dt)  # (B, P)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        curve.append(loss.detach().mean())
        # every image of the batch steps, so the per-row step counts stay equal here (the store's Adam is the
        # same function, used there on a subset of rows)
        res = adam_update(leaf.detach(), grad, exp_avg, exp_avg_sq, step, lr, betas)
        offsets, exp_avg, exp_avg_sq, step = res
    with torch.no_grad():
        cams = positive_scale_cameras(apply_offsets(base, offsets, settings))
        loss = mask_loss(renderer(verts, faces, cams, mode="silhouette").alpha, mask, mask_dt)
    curve.append(loss.mean())
    return HypothesisFit(cams, loss, hypothesis_scores(loss, peakiness), torch.stack(curve))


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Stage1Result:
    """What :func:`run_stage1` did and wrote."""

    store_path: Path
    """The camera multiplex ``.npz`` (:meth:`CameraMultiplex.save`)."""
    store: CameraMultiplex
    num_images: int
    """Images in the store now."""
    num_fitted: int
    """Images fitted by this call (the rest were already in the store)."""
    seconds: float
    """Wall time of the fitting (excluding the report)."""
    images_per_s: float
    report_dir: Path | None
    metrics: MultiplexMetrics | None
    """The report's metrics (also in ``report/metrics.json``), or None when the report was skipped."""


def build_stage1_renderer(cfg: Config) -> Renderer:
    """The silhouette renderer of Stage I: ``cfg.render`` settings at ``cfg.multiplex.image_size``."""
    r = cfg.render
    return Renderer(
        RenderSettings(
            image_size=cfg.multiplex.image_size,
            sigma=r.sigma,
            gamma=r.gamma,
            z_offset=r.z_offset,
            near=r.near,
            far=r.far,
        )
    )


def build_stage1_dataset(
    cfg: Config, data_dir: str | os.PathLike, return_gt_camera: bool = False, augment: bool = True
):
    """The CMR-format data set of ``data_dir`` at the multiplex resolution ``cfg.multiplex.image_size``.

    With ``augment`` the ``cfg.data`` flips and jitter apply (train split only, as in U-CMR's Stage I);
    without, crops are deterministic and unflipped (the report).
    """
    from slopekp.data.cub import CubDataset

    d = cfg.data
    on = augment and d.split == "train"
    return CubDataset(
        data_dir,
        split=d.split,
        img_size=cfg.multiplex.image_size,
        padding_frac=d.padding_frac,
        jitter_frac=d.jitter_frac,
        flip=d.flip and on,
        jitter=on,
        seed=cfg.seed,
        return_gt_camera=return_gt_camera,
        max_items=d.max_items,
        images_dir=d.images_dir or None,
        sfm_dir=d.sfm_dir or None,
    )


def run_stage1(
    cfg: Config,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    progress: bool = True,
    report: bool = True,
) -> Stage1Result:
    """Stage I end to end: fit the multiplex of every image of ``data_dir`` and write ``out_dir``.

    Writes ``out_dir/config.yaml`` (the resolved config), ``out_dir/multiplex.npz`` (the store; rewritten
    atomically every ``cfg.multiplex.save_every`` batches), ``out_dir/tb/`` (TensorBoard scalars) and
    ``out_dir/report/`` (:func:`slopekp.train.report.write_multiplex_report`). Rerunning with the same
    ``out_dir`` resumes: images already in the store are skipped.

    Raises:
        ValueError: a bad data folder, an empty mask (naming the image id), or an existing store made for a
            different template or number of hypotheses.
    """
    from slopekp.mesh import load_template

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    mp = cfg.multiplex
    template = load_template(cfg.template.path)
    verts, faces = template.verts.to(device), template.faces.to(device)
    fingerprint = template_fingerprint(template.verts, template.faces)
    init = hypothesis_cameras_from_config(mp, device=device)
    settings = OffsetSettings.from_config(mp)
    store_path = out_dir / STORE_NAME
    if store_path.exists():
        store = CameraMultiplex.load(store_path, fingerprint=fingerprint, num_hypotheses=init.shape[0], device=device)
        if store.settings != settings:
            raise ValueError(
                f"{store_path}: stored offset settings {store.settings} differ from the config's {settings}; "
                "use another --out"
            )
    else:
        store = CameraMultiplex(init.shape[0], fingerprint, settings, device=device)
    save_config(cfg, out_dir / "config.yaml")

    dataset = build_stage1_dataset(cfg, data_dir, return_gt_camera=False)
    renderer = build_stage1_renderer(cfg)
    t0 = time.perf_counter()
    fitted = _fit_dataset(dataset, store, store_path, verts, faces, renderer, init, cfg, out_dir, progress)
    seconds = time.perf_counter() - t0
    store.save(store_path)
    metrics, report_dir = None, None
    if report:
        from slopekp.train.report import write_multiplex_report

        report_dir = out_dir / "report"
        metrics = write_multiplex_report(store, cfg, data_dir, report_dir, template=template, renderer=renderer)
    return Stage1Result(
        store_path=store_path,
        store=store,
        num_images=len(store),
        num_fitted=fitted,
        seconds=seconds,
        images_per_s=fitted / seconds if fitted and seconds > 0 else math.nan,
        report_dir=report_dir,
        metrics=metrics,
    )


def _fit_dataset(dataset, store, store_path, verts, faces, renderer, init, cfg, out_dir, progress) -> int:
    """Fit every image of ``dataset`` that is not yet in ``store``; returns how many were fitted."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from slopekp.data.cub import collate_samples

    if getattr(dataset, "return_gt_camera", False):
        raise ValueError("Stage I must not see ground-truth cameras: build its data set with return_gt_camera=False")
    mp = cfg.multiplex
    todo = [i for i in range(len(dataset)) if i not in store]
    if not todo:
        return 0
    loader = DataLoader(
        Subset(dataset, todo),
        batch_size=mp.batch_size,
        shuffle=False,
        num_workers=0,
        collate_fn=collate_samples,
    )
    settings = store.settings
    writer = _summary_writer(out_dir / "tb")
    done, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc="Stage I", disable=not progress, dynamic_ncols=True)
    try:
        for n_batch, batch in enumerate(loader, start=1):
            batch = batch.to(store.device)
            if batch.gt_camera is not None:  # belt and braces: see the module docstring
                raise ValueError("Stage I received ground-truth cameras")
            fit = fit_hypotheses(
                verts, faces, renderer, batch.mask, batch.mask_dt, init,
                settings=settings, steps=mp.steps, lr=mp.lr, peakiness=mp.peakiness, ids=batch.id,
            )  # fmt: skip
            store.add(batch.id, fit.cameras, fit.scores, batch.crop)
            done += len(batch)
            if n_batch % max(1, mp.save_every) == 0:
                store.save(store_path)
            rate = done / (time.perf_counter() - t0)
            best = fit.loss.amin(-1).mean().item()
            bar.update(len(batch))
            bar.set_postfix(best_loss=f"{best:.4f}", img_s=f"{rate:.2f}")
            if writer is not None:
                writer.add_scalar("stage1/best_loss", best, len(store))
                writer.add_scalar("stage1/mean_loss", fit.loss.mean().item(), len(store))
                writer.add_scalar("stage1/best_score", fit.scores.amax(-1).mean().item(), len(store))
                writer.add_scalar("stage1/images_per_s", rate, len(store))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return done


def _summary_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter  # a declared dependency; imported late (slow import)

    return SummaryWriter(str(path))
