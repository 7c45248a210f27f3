"""Stage I: initialise the camera multiplex by fitting P hypotheses per image to its mask (METHOD §5.3).

The shape is the template itself (no network, no deformation). For each image, every hypothesis of the grid of
METHOD §5.1 is optimised independently — scale, translation and the three bounded angle offsets of §5.2 — with
Adam (lr 0.1, 150 steps) on the mask loss ``mean_px[D·S + (S − M)²]`` of its rendered silhouette (§7.1); each
ends at its iterate of lowest loss (``multiplex.best_iterate``). The per-hypothesis losses become scores (min–max
rescaling + softmin with peakiness 20). Results go to a
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

import contextlib
import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from slopekp.config import Config, MultiplexConfig, save_config
from slopekp.data.augment import APPEARANCE_SETTINGS
from slopekp.data.cub import CubDataset, collate_samples, require_images
from slopekp.geometry.camera import depth_mirror_cameras
from slopekp.manifest import MANIFEST_NAME, Manifest, cmr_data_fingerprint, flat_settings, prepare_output_dir
from slopekp.mesh import load_template, mirror_permutation, template_fingerprint
from slopekp.render import Renderer, RenderSettings
from slopekp.train import run
from slopekp.train.camera_adam import adam_update, suppress_gradient_noise
from slopekp.train.hypotheses import (
    OffsetSettings,
    apply_offsets,
    cameras_match,
    hypothesis_cameras_from_config,
    hypothesis_mirrors,
    mirror_representatives,
    positive_scale_cameras,
)
from slopekp.train.losses import mask_loss
from slopekp.train.multiplex import CameraMultiplex
from slopekp.train.report import MultiplexMetrics, write_multiplex_report
from slopekp.train.scores import hypothesis_scores
from slopekp.utils import resolve_device, seed_everything, spawned_map, worker_processes

STORE_NAME = "multiplex.npz"


class HypothesisFit(NamedTuple):
    """Result of :func:`fit_hypotheses` for B images and P hypotheses."""

    cameras: Tensor
    """``(B, P, 7)`` fitted cameras (NDC of the masks' crops; scale made positive, see
    :func:`~slopekp.train.hypotheses.positive_scale_cameras`)."""
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
    batch_invariant: bool = True,
    prune: tuple[tuple[int, int], ...] = (),
    mirror_of: Tensor | None = None,
    best_iterate: bool = True,
) -> HypothesisFit:
    """Fit P camera hypotheses per image to its mask (METHOD §5.3).

    Each hypothesis has its own offsets ``(δs, δt, α_az, α_el, α_cr)`` (METHOD §5.2) and Adam moments. The
    objective is the *sum* over images and hypotheses of the per-silhouette mask loss (with a mean, Adam's
    ``eps`` would couple them), so in exact arithmetic every trajectory is independent of the others.

    In float arithmetic it is not, and the difference is not small: the rasteriser's summation order and the
    SIMD layout of its element-wise kernels depend on everything rendered in the same call, which changes the
    result in the last bit; Adam at lr 0.1 on the sharp silhouette loss is chaotic, and amplifies a 1e-8
    difference about fivefold per step (measured: 1e-7 after 2 steps, 2e-3 after 7, 0.2 after 20), so the
    same image fitted in batches of 4 or 12 ended on other cameras and other best hypotheses. With
    ``batch_invariant`` (the default) each image is therefore optimised in a call of its own, whose tensors
    have the same shapes whatever the batch: an image gets bit-identical cameras alone or in any batch (on
    one device and thread count). ``batch_invariant=False`` renders the whole batch per call; its results then
    depend on the batch composition. Measured on 2 CPU cores (12 images, P = 40, paired runs, 1 thread): per
    image is 8% faster at 64² (1.12 against 1.21 s per step; a peak of 75 MB against 830 MB) and 23% slower at
    32² (0.48 against 0.39 s), where the fixed cost of a render call weighs more.

    Args:
        verts: ``(V, 3)`` template vertices (object frame).
        faces: ``(F, 3)`` int64 faces.
        renderer: renders ``(B, P, H, W)`` silhouettes; its image size must equal the masks'.
        mask: ``(B, H, W)`` masks in [0, 1]; mask_dt: ``(B, H, W)`` their distance transforms.
        init_cameras: ``(P, 7)`` hypotheses shared by all images, or ``(B, P, 7)``.
        settings: the offset parametrisation (gain ``c`` = 0.1 in Stage I).
        steps, lr, peakiness, betas: optimiser and scoring settings.
        ids: optional ``(B,)`` image ids, only to name images in error messages.
        batch_invariant: optimise image by image (see above).
        prune: successive halving, ``((step, keep), ...)`` (:func:`pruning_schedule`): before ``step``, each image
            goes on fitting only its ``keep`` hypotheses of lowest loss at the previous step; the others stop where
            they are and are scored with the rest at the end. ``loss_curve`` then averages the hypotheses still
            fitted. Empty (the default): every hypothesis takes every step.
        best_iterate: each hypothesis ends at the iterate of lowest mask loss among those it was rendered at (its
            steps and its end), not at its last one. Adam at lr 0.1 does not settle: each hypothesis ends jittering
            about the bottom of its basin, and the loss it is scored by is then partly that jitter's luck. Free (each
            step renders the loss anyway). On the quickstart's 400 SynthBirds images: the best hypothesis 1.8° nearer
            the truth up to the mirror and its mask IoU 0.882 -> 0.892 (docs/results/stage1_schedules.md).
        mirror_of: optional ``(P,)`` depth-mirror pairing of the hypotheses
            (:func:`~slopekp.train.hypotheses.hypothesis_mirrors`), for a mirror-symmetric template
            (:func:`~slopekp.mesh.symmetry.mirror_permutation`) only. A hypothesis and its depth mirror then render
            the same silhouette at every step (the mirrored offsets ``(δs, δt, −α_az, −α_el, α_cr)`` take mirrored
            Adam steps), so only the first of each pair is fitted (``prune`` counts those) and its partner becomes its
            depth mirror with the same loss: 21 fits instead of 40 on the default grid. In exact arithmetic the
            result is the same; in float arithmetic the pair no longer drifts apart by the fit's chaos (see above), so
            its scores tie exactly and the lower index wins where one is chosen.

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
    if mirror_of is not None:
        reps = _check_mirror_pairs(init_cameras, mirror_of)
        fit = fit_hypotheses(
            verts, faces, renderer, mask, mask_dt, init_cameras[:, reps], settings=settings, steps=steps, lr=lr,
            peakiness=peakiness, betas=betas, ids=ids, batch_invariant=batch_invariant, prune=prune,
            best_iterate=best_iterate,
        )  # fmt: skip
        return _with_mirrors(fit, reps, mirror_of.to(reps.device), peakiness)
    if batch_invariant and B > 1:
        fits = [
            fit_hypotheses(
                verts, faces, renderer, mask[i : i + 1], mask_dt[i : i + 1], init_cameras[i : i + 1],
                settings=settings, steps=steps, lr=lr, peakiness=peakiness, betas=betas,
                ids=None if ids is None else ids[i : i + 1], batch_invariant=False, prune=prune,
                best_iterate=best_iterate,
            )
            for i in range(B)
        ]  # fmt: skip
        return HypothesisFit(*(torch.cat([getattr(f, k) for f in fits]) for k in ("cameras", "loss", "scores")),
                             torch.stack([f.loss_curve for f in fits]).mean(0))  # fmt: skip
    base = init_cameras.to(mask.device, torch.float32)
    P = base.shape[1]
    offsets = torch.zeros(*base.shape[:2], 6, dtype=torch.float32, device=mask.device)
    exp_avg, exp_avg_sq = torch.zeros_like(offsets), torch.zeros_like(offsets)
    step = torch.zeros(B, dtype=torch.int64, device=mask.device)
    final = offsets  # (B, P, 6) every hypothesis's offsets; those of a stopped one where it stopped
    active = torch.arange(P, device=mask.device).expand(B, P)  # (B, K) the hypotheses still fitted
    fitted_base = base
    prune_at = dict(prune)
    curve, loss = [], None
    best_loss = torch.full((B, P), math.inf, device=mask.device)  # (B, P) each hypothesis's lowest loss so far
    best_offsets = torch.zeros_like(offsets)  # (B, P, 6) where it had it
    for i in range(steps):
        if i in prune_at and loss is not None and prune_at[i] < active.shape[1]:
            keep = torch.sort(loss, dim=1, stable=True).indices[:, : prune_at[i]]  # the best by the last loss
            final = final.scatter(1, _expand_rows(active, 6), offsets)
            active = active.gather(1, keep)
            offsets, exp_avg, exp_avg_sq = (_rows(t, keep) for t in (offsets, exp_avg, exp_avg_sq))
            fitted_base = _rows(base, active)
        leaf = offsets.requires_grad_(True)
        cams = apply_offsets(fitted_base, leaf, settings)
        loss = mask_loss(renderer(verts, faces, cams, mode="silhouette").alpha, mask, mask_dt)  # (B, K)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        grad = suppress_gradient_noise(grad)  # else Adam turns rounding noise into steps: see its docstring
        loss = loss.detach()
        curve.append(loss.mean())
        if best_iterate:
            so_far = best_loss.gather(1, active)
            better = loss < so_far
            best_loss = best_loss.scatter(1, active, torch.where(better, loss, so_far))
            rows = _expand_rows(active, 6)
            kept = torch.where(better[..., None], leaf.detach(), best_offsets.gather(1, rows))
            best_offsets = best_offsets.scatter(1, rows, kept)
        # every image of the batch steps, so the per-row step counts stay equal here (the store's Adam is the
        # same function, used there on a subset of rows)
        res = adam_update(leaf.detach(), grad, exp_avg, exp_avg_sq, step, lr, betas)
        offsets, exp_avg, exp_avg_sq, step = res
    final = final.scatter(1, _expand_rows(active, 6), offsets)
    with torch.no_grad():
        cams = positive_scale_cameras(apply_offsets(base, final, settings))
        loss = mask_loss(renderer(verts, faces, cams, mode="silhouette").alpha, mask, mask_dt)
        better = best_loss < loss  # all False without best_iterate (best_loss stays inf)
        if bool(better.any()):
            final = torch.where(better[..., None], best_offsets, final)
            cams = positive_scale_cameras(apply_offsets(base, final, settings))
            loss = torch.where(better, best_loss, loss)
    curve.append(loss.mean())
    return HypothesisFit(cams, loss, hypothesis_scores(loss, peakiness), torch.stack(curve))


def _check_mirror_pairs(init_cameras: Tensor, mirror_of: Tensor) -> Tensor:
    """The hypotheses to fit (:func:`~slopekp.train.hypotheses.mirror_representatives`) after checking that
    ``mirror_of`` pairs each of ``init_cameras`` (``(B, P, 7)``) with its depth mirror."""
    P = init_cameras.shape[1]
    mirror_of = mirror_of.to(init_cameras.device)
    if (mirror_of.shape != (P,) or bool(((mirror_of < 0) | (mirror_of >= P)).any())
            or not torch.equal(mirror_of[mirror_of], torch.arange(P, device=mirror_of.device))):
        raise ValueError(f"mirror_of must be a ({P},) pairing of the hypotheses (an involution), got {mirror_of}")
    cams = init_cameras.detach().to(torch.float64)
    if not bool(cameras_match(depth_mirror_cameras(cams), cams[:, mirror_of]).all()):
        raise ValueError("mirror_of does not pair each initial camera with its depth mirror")
    return mirror_representatives(mirror_of)


def _with_mirrors(fit: HypothesisFit, reps: Tensor, mirror_of: Tensor, peakiness: float) -> HypothesisFit:
    """The fit of all P hypotheses from the fit of ``reps``: each partner is its representative's depth mirror,
    with the same loss."""
    B, P = fit.loss.shape[0], mirror_of.numel()
    paired = torch.nonzero(mirror_of[reps] != reps).reshape(-1)  # positions in ``reps`` of the pairs' first halves
    slots = torch.cat([reps, mirror_of[reps[paired]]])
    cameras = torch.cat([fit.cameras, depth_mirror_cameras(fit.cameras[:, paired])], dim=1)
    loss = torch.cat([fit.loss, fit.loss[:, paired]], dim=1)
    cameras = cameras.new_empty(B, P, 7).index_copy_(1, slots, cameras)
    loss = loss.new_empty(B, P).index_copy_(1, slots, loss)
    return HypothesisFit(cameras, loss, hypothesis_scores(loss, peakiness), fit.loss_curve)


def pruning_schedule(mp: MultiplexConfig, num_hypotheses: int) -> tuple[tuple[int, int], ...]:
    """The ``prune`` schedule of :func:`fit_hypotheses` from ``multiplex.prune_every``, ``prune_factor`` and ``keep``:
    ``((step, keep), ...)``, every ``prune_every`` steps ``1/prune_factor`` of the hypotheses still fitted (rounded
    up, at least ``keep``); none at or after the last step, and none once ``keep`` is reached."""
    if mp.prune_every <= 0:
        return ()
    out, k = [], num_hypotheses
    for step in range(mp.prune_every, mp.steps, mp.prune_every):
        k_new = max(mp.keep, -(-k // mp.prune_factor))
        if k_new >= k:
            break
        out.append((step, k_new))
        k = k_new
    return tuple(out)


def _expand_rows(idx: Tensor, width: int) -> Tensor:
    """``(B, K)`` row indices as ``(B, K, width)`` for ``gather``/``scatter`` along dim 1."""
    return idx[..., None].expand(*idx.shape, width)


def _rows(t: Tensor, idx: Tensor) -> Tensor:
    """``t[b, idx[b, k]]``: the ``(B, K, C)`` rows of ``t: (B, P, C)``."""
    return t.gather(1, _expand_rows(idx, t.shape[-1]))


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
    return Renderer(RenderSettings.from_config(cfg.render, cfg.multiplex.image_size))


def build_stage1_dataset(
    cfg: Config, data_dir: str | os.PathLike, return_gt_camera: bool = False, augment: bool = True
):
    """The CMR-format data set of ``data_dir`` at the multiplex resolution ``cfg.multiplex.image_size``.

    With ``augment`` the ``cfg.data`` flips and jitter apply (train split only, as in U-CMR's Stage I);
    without, crops are deterministic and unflipped (the report).
    """

    d = cfg.data
    on = augment and d.split == "train"
    return require_images(CubDataset(
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
    ))


STAGE1_COMMAND = "multiplex init"

#: Config fields that change Stage I's results only through their effect on speed, or that are recorded as
#: inputs instead: left out of the manifest, so changing them and resuming is allowed.
_NOT_RESULT_SETTINGS = {
    "render": ("fused",),  # speed only
    # the data folder is an input (fingerprinted); max_items only limits which images are fitted, and each
    # image's cameras do not depend on the others: raising it and resuming extends the store
    "data": ("images_dir", "sfm_dir", "max_items", *APPEARANCE_SETTINGS),  # the appearance augmentation: Stage III's
    "multiplex": ("save_every", "batch_size", "workers"),  # batch_size is added back when batch_invariant is off
}


def stage1_manifest(cfg: Config, data_dir: str | os.PathLike, template_fp: str) -> Manifest:
    """What a Stage I store is made from: the data folder and template (fingerprints) and every setting that
    changes the fitted cameras (:mod:`slopekp.manifest`). Not included: device, threads, ``save_every``,
    ``data.max_items`` (resuming with more extends the store), and ``batch_size`` while
    ``multiplex.batch_invariant`` holds (the results do not depend on it)."""
    d = cfg.data
    data = cmr_data_fingerprint(data_dir, d.split, images_dir=d.images_dir or None, sfm_dir=d.sfm_dir or None)
    mp_skip = _NOT_RESULT_SETTINGS["multiplex"]
    if not cfg.multiplex.batch_invariant:
        mp_skip = tuple(k for k in mp_skip if k != "batch_size")
    settings = {
        "seed": cfg.seed,
        **flat_settings(cfg.render, "render", _NOT_RESULT_SETTINGS["render"]),
        **flat_settings(cfg.data, "data", _NOT_RESULT_SETTINGS["data"]),
        **flat_settings(cfg.multiplex, "multiplex", mp_skip),
    }
    inputs = {"data": data, "template": {"fingerprint": template_fp, "path": cfg.template.path}}
    return Manifest(STAGE1_COMMAND, inputs=inputs, settings=settings)


def run_stage1(
    cfg: Config,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    progress: bool = True,
    report: bool = True,
    *,
    overwrite: bool = False,
    force_new: bool = False,
) -> Stage1Result:
    """Stage I end to end: fit the multiplex of every image of ``data_dir`` and write ``out_dir``.

    Writes ``out_dir/manifest.json`` (:func:`stage1_manifest`), ``out_dir/config.yaml`` (the resolved config,
    with ``out_dir`` set to the folder really used), ``out_dir/multiplex.npz`` (the store;
    rewritten atomically every ``cfg.multiplex.save_every`` batches), ``out_dir/tb/`` (TensorBoard scalars) and
    ``out_dir/report/`` (:func:`slopekp.train.report.write_multiplex_report`).

    Rerunning into the same ``out_dir`` with the same data, template and settings resumes: images already in
    the store are skipped. Anything else is refused with the list of differences (:mod:`slopekp.manifest`),
    unless ``force_new`` (the old folder is moved aside, Stage I starts over) or ``overwrite`` (it is emptied).

    Raises:
        ValueError: a bad data folder, an empty mask (naming the image id), an output folder made from other
            data or settings (:class:`~slopekp.manifest.RunMismatchError`) or by something else
            (:class:`~slopekp.manifest.OutputExistsError`).
    """

    out_dir = Path(out_dir)
    cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    mp = cfg.multiplex
    device = resolve_device(cfg.device)
    template = load_template(cfg.template.path)
    fingerprint = template_fingerprint(template.verts, template.faces)
    dataset = build_stage1_dataset(cfg, data_dir, return_gt_camera=False)  # a bad or empty split fails here
    manifest = stage1_manifest(cfg, data_dir, fingerprint)
    state = prepare_output_dir(
        out_dir, manifest, overwrite=overwrite, force_new=force_new, results=(STORE_NAME,),
        inputs=[p for p in (data_dir, cfg.data.images_dir, cfg.data.sfm_dir) if p],
    )  # fmt: skip
    seed_everything(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    verts, faces = template.verts.to(device), template.faces.to(device)
    init = hypothesis_cameras_from_config(mp, device=device)
    settings = OffsetSettings.from_config(mp)
    store_path = out_dir / STORE_NAME
    data_fp = manifest.inputs["data"]["fingerprint"]
    if state == "resume" and store_path.exists():
        store = CameraMultiplex.load(store_path, fingerprint=fingerprint, num_hypotheses=init.shape[0], device=device)
        if store.settings != settings or store.data_fingerprint != data_fp:  # the manifest matched: not expected
            raise ValueError(f"{store_path}: the store does not match its folder's {MANIFEST_NAME}; use --force-new")
    else:
        store = CameraMultiplex(init.shape[0], fingerprint, settings, device=device, data_fingerprint=data_fp)
    save_config(cfg, out_dir / "config.yaml")

    renderer = build_stage1_renderer(cfg)
    t0 = time.perf_counter()
    mirror_of = stage1_mirror_pairs(mp, verts, faces, init)
    fitted = _fit_dataset(dataset, store, store_path, verts, faces, renderer, init, mirror_of, cfg, out_dir, progress)
    seconds = time.perf_counter() - t0
    store.save(store_path)
    metrics, report_dir = None, None
    if not report and fitted and (out_dir / "report").exists():
        shutil.rmtree(out_dir / "report")  # it described fewer images: no stale report stays
    if report:
        d = cfg.data
        has_gt = (Path(d.sfm_dir or data_dir) / f"anno_{d.split}.mat").is_file()
        gt_data = build_stage1_dataset(cfg, data_dir, return_gt_camera=has_gt, augment=False)
        report_dir = out_dir / "report"
        info = {"data_dir": str(data_dir), "split": d.split, "template": cfg.template.path,
                "image_size": cfg.multiplex.image_size,
                "hypotheses": init.shape[0],  # of which the depth mirrors of others when mirrors are shared:
                "hypotheses fitted": init.shape[0] if mirror_of is None else len(mirror_representatives(mirror_of))}
        metrics = write_multiplex_report(store, gt_data, report_dir, template=template, renderer=renderer, info=info)
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


def _fit_dataset(dataset, store, store_path, verts, faces, renderer, init, mirror_of, cfg, out_dir, progress) -> int:
    """Fit every image of ``dataset`` that is not yet in ``store`` (in ``multiplex.workers`` processes on the
    CPU); returns how many were fitted."""
    if getattr(dataset, "return_gt_camera", False):
        raise ValueError("Stage I must not see ground-truth cameras: build its data set with return_gt_camera=False")
    mp = cfg.multiplex
    todo = [i for i in range(len(dataset)) if i not in store]
    if not todo:
        return 0
    chunks = [todo[i : i + mp.batch_size] for i in range(0, len(todo), mp.batch_size)]
    fitted_per_image = init.shape[0] if mirror_of is None else mirror_representatives(mirror_of).numel()
    fit_args = FitArgs(verts, faces, renderer.settings, init, store.settings, mp.steps, mp.lr, mp.peakiness,
                       mp.batch_invariant, pruning_schedule(mp, fitted_per_image), mirror_of,
                       mp.best_iterate)  # fmt: skip
    workers = min(stage1_workers(mp.workers, store.device), len(chunks))
    writer = run.summary_writer(out_dir / "tb")
    done, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc="Stage I", disable=not progress, dynamic_ncols=True)
    if workers > 1:
        bar.set_description(f"Stage I ({workers} processes)")
    try:
        with _fitted_batches(dataset, chunks, fit_args, workers, store.device, renderer) as fitted:
            for n_batch, (ids, crop, fit) in enumerate(fitted, start=1):
                store.add(ids, fit.cameras, fit.scores, crop)
                done += len(ids)
                if n_batch % max(1, mp.save_every) == 0:
                    store.save(store_path)
                rate = done / (time.perf_counter() - t0)
                best = fit.loss.amin(-1).mean().item()
                bar.update(len(ids))
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


def stage1_mirror_pairs(mp: MultiplexConfig, verts: Tensor, faces: Tensor, init: Tensor) -> Tensor | None:
    """``fit_hypotheses``'s ``mirror_of`` for ``multiplex.share_mirrors``: the depth-mirror pairing of the grid
    ``init`` where the template is mirror-symmetric and the grid closed under the mirror, else ``None`` (every
    hypothesis is fitted)."""
    if not mp.share_mirrors or mirror_permutation(verts, faces) is None:
        return None
    return hypothesis_mirrors(init)


def stage1_workers(requested: int, device: torch.device) -> int:
    """How many processes fit Stage I (``multiplex.workers``): ``requested``, or for 0 one per core that this
    process may run on; 1 on an accelerator (one process drives it; ``configs/cub_stage1_gpu.yaml`` batches)."""
    return worker_processes(requested, device)


class FitArgs(NamedTuple):
    """What a Stage I fit needs besides its batch (sent once to each worker process)."""

    verts: Tensor
    faces: Tensor
    render_settings: RenderSettings
    init: Tensor
    offsets: OffsetSettings
    steps: int
    lr: float
    peakiness: float
    batch_invariant: bool
    prune: tuple[tuple[int, int], ...]
    mirror_of: Tensor | None
    best_iterate: bool


def _fit_chunk(dataset, indices: list[int], args: FitArgs, renderer: Renderer, device) -> tuple:
    """``(ids, crop, HypothesisFit)`` of the images ``indices`` of ``dataset``, as one batch."""
    batch = collate_samples([dataset[i] for i in indices]).to(device)
    if batch.gt_camera is not None:  # belt and braces: see the module docstring
        raise ValueError("Stage I received ground-truth cameras")
    fit = fit_hypotheses(
        args.verts, args.faces, renderer, batch.mask, batch.mask_dt, args.init, settings=args.offsets,
        steps=args.steps, lr=args.lr, peakiness=args.peakiness, ids=batch.id, batch_invariant=args.batch_invariant,
        prune=args.prune, mirror_of=args.mirror_of, best_iterate=args.best_iterate,
    )  # fmt: skip
    return batch.id, batch.crop, fit


@contextlib.contextmanager
def _fitted_batches(dataset, chunks: list[list[int]], args: FitArgs, workers: int, device, renderer: Renderer):
    """The fits of ``chunks``, in their order: in this process (with ``renderer``), or in ``workers`` spawned
    processes of one thread each (every image's fit is independent of the others, so the results are those of one
    process with one thread)."""
    if workers <= 1:
        yield (_fit_chunk(dataset, c, args, renderer, device) for c in chunks)
        return
    with spawned_map(_fit_in_worker, chunks, workers, _start_worker, (dataset, args)) as fitted:
        yield fitted


_WORKER: dict = {}
"""A Stage I worker process's data set, fit arguments and renderer (:func:`_start_worker`)."""


def _start_worker(dataset, args: FitArgs) -> None:
    torch.set_num_threads(1)  # the processes use the cores; one thread each keeps the results those of one thread
    _WORKER.update(dataset=dataset, args=args, renderer=Renderer(args.render_settings))


def _fit_in_worker(indices: list[int]) -> tuple:
    w = _WORKER
    return _fit_chunk(w["dataset"], indices, w["args"], w["renderer"], torch.device("cpu"))

