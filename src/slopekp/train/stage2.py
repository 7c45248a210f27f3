"""Stage II: learn shape, texture, mean shape and encoder with the live camera multiplex (METHOD §5.4, App. B).

Each step, for a batch of B images and the P hypotheses of each (read from the store, re-expressed for the
batch's crops and mirrors):
1. the network predicts the shape ``(B, V, 3)`` and the UV texture ``(B, 3, Hu, Wu)``;
2. every hypothesis renders the predicted mesh: soft silhouette and texture, ``B·P`` renders;
3. per hypothesis: ``L_mask (B, P)`` and ``L_tex (B, P)`` (:mod:`slopekp.train.losses`);
4. **network loss** ``mean_b Σ_p q_bp (w_m L_mask + w_t L_tex)`` + shape priors, with the detached weights ``q``
   of :func:`~slopekp.train.losses.hypothesis_weights`; it updates the network only. The ``flow`` texture head adds
   two terms: the mask's distance transform at its samples (CMR's) and an L1 pull of each texel the image's best
   hypothesis sees to its projection (:func:`~slopekp.train.losses.flow_projection_loss`);
5. **camera loss** ``w_m mean L_mask + w_t mean L_tex`` (unweighted: every hypothesis moves to explain the image
   under the current shape and texture); it advances only the batch's rows of the store's per-image Adam;
6. the batch's scores become ``q``.

Self-supervised: the data set is built with ``return_gt_camera=False`` and the loop refuses one that returns
cameras. Ground truth is read only by the report at the end (best camera vs GT, strictly and up to the depth
mirror, before and after Stage II).

Writes ``OUT/manifest.json``, ``config.yaml``, ``checkpoints/last.pt`` (atomically every
``train.checkpoint_every`` steps, at each epoch's end and on SIGINT/SIGTERM), ``multiplex.npz`` (the store after
Stage II: Stage III's pose targets), ``tb/`` and ``report/metrics.json``. Rerunning the same command resumes
from the checkpoint, exactly (the next step's loss is the one the uninterrupted run would have had).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from slopekp.checkpoint import rng_state, save_checkpoint, set_rng_state
from slopekp.config import Config, config_to_yaml
from slopekp.data.augment import APPEARANCE_SETTINGS, Augment
from slopekp.data.cub import CubDataset, require_images
from slopekp.eval.metrics import rotation_error_stats
from slopekp.manifest import Manifest, cmr_data_fingerprint, file_input, flat_settings
from slopekp.mesh import load_template, regularizers, template_fingerprint
from slopekp.models.base import Prediction
from slopekp.models.encoder import normalize_image
from slopekp.models.reconstructor import build_model
from slopekp.render import Renderer, RenderResult, RenderSettings
from slopekp.render.uv_atlas import TexelSurface, project_texels, texel_surface
from slopekp.train import distributed as D
from slopekp.train import run
from slopekp.train.hypotheses import OffsetSettings
from slopekp.train.losses import flow_projection_loss, hypothesis_weights, mask_loss, texture_flow_loss, texture_loss
from slopekp.train.multiplex import CameraMultiplex, MultiplexLookup
from slopekp.train.report import evaluate_multiplex
from slopekp.train.scores import best_hypothesis
from slopekp.train.stage1 import build_stage1_dataset, build_stage1_renderer
from slopekp.utils import atomic_save_json, resolve_device

STAGE2_COMMAND = "train stage2"
CHECKPOINT = Path("checkpoints") / "last.pt"
STORE_NAME = "multiplex.npz"
#: Decoded training images kept in memory (:class:`~slopekp.data.cub.CubDataset`'s ``cache_bytes``): every epoch
#: after the first reads them from there instead of decoding the files again (all of SynthBirds' 2,000 images of
#: 128² take 98 MiB; CUB's photos, about 0.5 MiB each, fill it with the first thousand or so).
IMAGE_CACHE_BYTES = 512 * 2**20

#: Settings left out of the manifest: they change speed or how long the run goes, not what a step computes.
_NOT_RESULT = {
    "render": ("fused",),  # speed only
    "data": ("images_dir", "sfm_dir", *APPEARANCE_SETTINGS),  # the appearance augmentation is Stage III's
    "model": ("pose_head", "num_keypoints", "end2end", "texture_from_photo"),  # no pose head in Stage II; inference
    "train": ("epochs", "pose_epochs", "checkpoint_every", "num_workers", "sync_every", "camera_weight",
              "heatmap_weight", "coordinate_weight", "freeze_backbone", "pose_targets",
              "mirror_by_appearance"),  # Stage III's; fmt: skip
}


@dataclass
class Stage2Result:
    out_dir: Path
    checkpoint: Path
    store_path: Path
    steps: int
    """Global steps done (this call and before)."""
    seconds: float
    """Wall time of this call's training."""
    metrics: dict[str, Any]
    """``report/metrics.json``."""


def stage2_manifest(cfg: Config, data_dir, multiplex_path, template_fp: str) -> Manifest:
    d = cfg.data
    data = cmr_data_fingerprint(data_dir, d.split, images_dir=d.images_dir or None, sfm_dir=d.sfm_dir or None)
    mp = file_input(multiplex_path)
    settings = {"seed": cfg.seed}
    for name in ("render", "data", "model", "train"):
        settings.update(flat_settings(getattr(cfg, name), name, _NOT_RESULT.get(name, ())))
    inputs = {"data": data, "template": {"fingerprint": template_fp, "path": cfg.template.path}, "stage1": mp}
    return Manifest(STAGE2_COMMAND, inputs=inputs, settings=settings)


def build_train_dataset(
    cfg: Config, data_dir, return_gt_camera: bool = False, augment: bool = True, appearance: bool = True
):
    """The CMR data set at the network's input size, with ``cfg.data``'s crops, jitter and flips (``augment``) and
    appearance augmentation (``augment`` and ``appearance``; :mod:`slopekp.data.augment`) on the train split, keeping
    decoded images in memory (:data:`IMAGE_CACHE_BYTES`). Stage II passes ``appearance=False``: the photo stays
    what its texture reconstructs, and the appearance augmentation trains the pose network (Stage III) alone
    (measured in docs/results/transfer.md)."""

    d = cfg.data
    on = augment and d.split == "train"
    return require_images(CubDataset(
        data_dir, split=d.split, img_size=cfg.model.image_size, padding_frac=d.padding_frac,
        jitter_frac=d.jitter_frac, flip=d.flip and on, jitter=on, seed=cfg.seed, return_gt_camera=return_gt_camera,
        max_items=d.max_items, images_dir=d.images_dir or None, sfm_dir=d.sfm_dir or None,
        cache_bytes=IMAGE_CACHE_BYTES, augment=Augment.from_config(d) if on and appearance else None,
    ))  # fmt: skip


def build_renderer(cfg: Config) -> Renderer:
    """The renderer of Stage II (and of the Stage III targets' appearance): ``cfg.render`` at ``train.render_size``."""
    return Renderer(RenderSettings.from_config(cfg.render, cfg.train.render_size))


def resize_targets(batch, size: int):
    """``(img, mask, mask_dt)`` of a batch at the render size (bilinear; the distance transform is normalised by
    the image side, so it resizes as a field)."""
    img, mask, dt = batch.img, batch.mask, batch.mask_dt
    if img.shape[-1] == size:
        return img, mask, dt
    f = torch.nn.functional.interpolate
    kw = {"size": (size, size), "mode": "bilinear", "align_corners": False, "antialias": True}
    return f(img, **kw), f(mask[:, None], **kw)[:, 0], f(dt[:, None], **kw)[:, 0]


def shape_priors(pred, faces: Tensor, template_verts: Tensor, w) -> dict[str, Tensor]:
    """METHOD §7.3–7.6: deformation size, graph Laplacian of the predicted mesh (or, with ``train.laplacian_of:
    deformation``, of its displacement from the template ``(V, 3)``), and (if weighted) edge lengths."""
    smoothed = pred.verts if w.laplacian_of == "mesh" else pred.verts - template_verts.to(pred.verts)
    out = {
        "deform": w.deform_weight * regularizers.deform_loss(pred.delta_v),
        "laplacian": w.laplacian_weight * regularizers.graph_laplacian_loss(smoothed, faces),
    }
    if w.edge_weight > 0:
        out["edge"] = w.edge_weight * regularizers.edge_length_loss(pred.verts, faces, template_verts)
    return out


class Stage2Losses(NamedTuple):
    """One Stage II step's losses and what the step needs besides (:func:`stage2_losses`)."""

    network: Tensor
    """Scalar: the network's loss, each image's hypotheses weighted by ``weights``, plus the shape priors."""
    camera: Tensor
    """Scalar: the multiplex's loss (every hypothesis equally), for the cameras' own update."""
    lookup: MultiplexLookup
    """The batch's rows of the store (cameras, offsets)."""
    weights: Tensor
    """``(B, P)`` the hypotheses' detached weights (METHOD §5.4)."""
    logs: dict[str, Tensor]
    """0-dim tensors on the device, read back by the training loop every ``train.sync_every`` steps."""
    prediction: Prediction
    """The network's output (for the example images)."""
    render: RenderResult
    """The renders under every hypothesis (for the example images)."""


def stage2_losses(model, store: CameraMultiplex, renderer: Renderer, template, batch, cfg: Config,
                  ids: Tensor | None = None, atlas: TexelSurface | None = None) -> Stage2Losses:  # fmt: skip
    """One step's losses (:class:`Stage2Losses`). ``ids``: the batch's image ids on the host (default ``batch.id``;
    reading ids on an accelerator makes the host wait for it). ``atlas``: the template's
    :func:`~slopekp.render.uv_atlas.texel_surface` at the UV image's size, for the texture-flow head (made here when
    not given)."""

    w = cfg.train
    with run.autocast(batch.img.device, w.amp):
        pred = model(normalize_image(batch.img), pose=False)
    if pred.verts.dtype != torch.float32:  # bf16 network: the renderer and the losses stay float32
        pred = dataclasses.replace(pred, verts=pred.verts.float(), delta_v=pred.delta_v.float(),
                                   uv_image=pred.uv_image.float())  # fmt: skip
    lk = store.lookup(batch.id if ids is None else ids, batch.crop)
    img, mask, dt = resize_targets(batch, cfg.train.render_size)
    res = renderer(pred.verts, template.faces, lk.cameras, mode="rgb", uv_image=pred.uv_image,
                   verts_uv=template.verts_uv)  # fmt: skip
    l_mask = mask_loss(res.alpha, mask, dt)  # (B, P)
    l_tex = texture_loss(res.rgb, img, mask, ssim_weight=w.ssim_weight) if w.texture_weight > 0 else None
    per_hyp = w.mask_weight * l_mask + (w.texture_weight * l_tex if l_tex is not None else 0)
    q = hypothesis_weights(l_mask, l_tex, texture_share=w.score_texture_weight)
    regs = shape_priors(pred, template.faces, template.verts, w)
    if pred.texture_flow is not None:
        flow = pred.texture_flow.float()
        if w.texture_flow_weight > 0:  # the texture flow reads the bird, not the background (CMR's tex_dt_loss)
            regs["texture_flow"] = w.texture_flow_weight * texture_flow_loss(flow, dt).mean()
        if w.flow_projection_weight > 0:  # and, where the best camera sees a texel, its pixel
            if atlas is None:
                atlas = texel_surface(template.verts_uv, template.faces, tuple(flow.shape[-2:]))
            best = lk.cameras[torch.arange(q.shape[0], device=q.device), q.argmax(-1)]
            view = project_texels(pred.verts.detach(), template.faces, atlas, best.detach(), renderer)
            regs["flow_projection"] = w.flow_projection_weight * flow_projection_loss(flow, view).mean()
    net = (q * per_hyp).sum(-1).mean() + sum(regs.values())
    cam = per_hyp.mean()
    logs = {"mask": l_mask.detach().mean(), "best_mask": l_mask.detach().amin(-1).mean(), **regs,
            "total": net.detach(), "camera_update": cam.detach(), "best_score": q.amax(-1).mean()}  # fmt: skip
    if l_tex is not None:
        logs["texture"] = l_tex.detach().mean()
    # logs stay on the device (0-dim tensors): the training loop reads them back every train.sync_every steps
    logs = {k: v.detach() if isinstance(v, Tensor) else v for k, v in logs.items()}
    return Stage2Losses(net, cam, lk, q, logs, pred, res)


def run_stage2(
    cfg: Config,
    data_dir: str | os.PathLike,
    multiplex_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    overwrite: bool = False,
    force_new: bool = False,
    max_steps: int | None = None,
    dist: D.DistInfo = D.SINGLE,
) -> Stage2Result:
    """Stage II end to end; see the module docstring. ``max_steps`` stops early (tests, smoke runs).

    Under ``torchrun`` (``dist`` from :func:`slopekp.train.distributed.init_distributed`) every rank takes its
    share of each global batch of ``train.batch_size × world_size`` images, the network's gradients are averaged
    (DDP), every rank applies every rank's multiplex updates after each step (so all ranks hold the same store),
    and rank 0 alone writes the folder, the checkpoints and the logs.
    """

    out_dir = Path(out_dir)
    cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    resolve_device(cfg.device)  # a device this machine lacks fails before anything is written
    template = load_template(cfg.template.path)
    fp = template_fingerprint(template.verts, template.faces)
    manifest = stage2_manifest(cfg, data_dir, multiplex_path, fp)
    state = run.prepare_run_dir(
        out_dir, manifest, cfg, dist, inputs=(data_dir, multiplex_path, cfg.data.images_dir, cfg.data.sfm_dir),
        overwrite=overwrite, force_new=force_new, results=(str(CHECKPOINT),),
    )  # fmt: skip
    device = D.rank_device(run.setup(cfg), dist)
    template = template.to(device)

    dataset = build_train_dataset(cfg, data_dir, return_gt_camera=False, appearance=False)
    if getattr(dataset, "return_gt_camera", False):
        raise ValueError("Stage II must not see ground-truth cameras")
    model = build_model(cfg.model, template, cfg.template.symmetry_tol).to(device)
    for n, p in model.named_parameters():  # Stage II does not run the pose head (DDP must not wait for it)
        p.requires_grad_(not n.startswith("pose."))
    params = [p for n, p in model.named_parameters() if not n.startswith("pose.")]
    opt = run.adam(params, cfg.train.lr)
    renderer = build_renderer(cfg)
    atlas = None  # where each texel lies on the mesh, for the texture-flow head's projection target
    if model.texture.reads_image and cfg.train.flow_projection_weight > 0:
        atlas = texel_surface(template.verts_uv, template.faces, model.texture.uv_size)
    ckpt_path = out_dir / CHECKPOINT
    at = run.LoopState()
    ck = None
    if state == "resume":  # last.pt, or the newer checkpoint that a killed save left beside it
        ck = run.resume_checkpoint(ckpt_path, manifest, dist, kind="stage2", template_fingerprint=fp,
                                   map_location=device)  # fmt: skip
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        store = CameraMultiplex.from_state_dict(ck["multiplex"], device=device)
        at = run.LoopState(ck["epoch"], ck["step"], ck["batch_in_epoch"])
        set_rng_state(ck["rng"])
    else:
        store = initial_store(multiplex_path, fp, manifest.inputs["data"]["fingerprint"], cfg, device)
        store = prune(store, 0, cfg)  # top_k_after = 0: the top k from the start
    missing = [i for i in range(len(dataset)) if i not in store]
    if missing:
        raise ValueError(
            f"{multiplex_path}: {len(missing)} image(s) of the data set have no Stage I cameras (e.g. ids "
            f"{missing[:5]}); run `slopekp multiplex init` on the whole data set first"
        )

    ddp = D.wrap_ddp(model, dist)

    def checkpoint(logs: dict) -> None:
        if not dist.is_main:
            return
        save_checkpoint(ckpt_path, {
            "kind": "stage2", "head": cfg.model.pose_head, "template_fingerprint": fp,
            "config": config_to_yaml(cfg), "manifest": manifest.to_dict(), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "multiplex": store.state_dict(), "epoch": at.epoch, "step": at.step,
            "batch_in_epoch": at.in_epoch, "rng": rng_state(), "metrics": logs,
        })  # fmt: skip

    def train_step(batch) -> dict[str, float]:
        ids = batch.id  # on the host: the store's rows are looked up there
        batch = batch.to(device)
        if batch.gt_camera is not None:
            raise ValueError("Stage II received ground-truth cameras")
        net, cam, lk, q, logs, pred, res = stage2_losses(ddp, store, renderer, template, batch, cfg, ids, atlas)
        opt.zero_grad(set_to_none=True)
        net.backward(inputs=params, retain_graph=True)
        if cfg.train.grad_clip > 0:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip).detach()
        opt.step()
        if cfg.train.multiplex_lr > 0:
            (lk.offsets.grad,) = torch.autograd.grad(cam, lk.offsets)
            store.adam_step(lk, lr=cfg.train.multiplex_lr)
        store.set_scores(ids, q)
        D.sync_store_rows(store, ids, dist)  # every rank applies every rank's rows
        step = at.step + 1
        if writer is not None and (step % cfg.train.image_every == 1 or cfg.train.image_every == 1):
            write_examples(writer, step, batch, pred, res, q, cfg.train.render_size)
        return D.all_reduce_mean(logs, dist)

    def end_of_epoch(epochs_done: int) -> None:
        nonlocal store
        store = prune(store, epochs_done, cfg)

    writer = run.summary_writer(out_dir / "tb") if dist.is_main else None
    t0 = time.perf_counter()
    model.train()
    try:
        loop = run.LoopSettings(cfg.train.epochs, "stage2", train_step, checkpoint, on_epoch_end=end_of_epoch,
                                max_steps=max_steps, progress=progress, desc="Stage II", postfix=("best_mask",),
                                checkpoint_path=ckpt_path)  # fmt: skip
        logs, _ = run.train_loop(dataset, cfg, dist, at, loop, writer)
    finally:
        if writer is not None:
            writer.close()
        ddp = None  # a DDP wrapper alive past the process group's end can hang the exit (pytorch#56297)
    seconds = time.perf_counter() - t0
    if not D.stores_in_sync(store, dist):
        raise RuntimeError("the ranks' camera multiplex stores diverged")
    store_path = out_dir / STORE_NAME
    metrics = None
    if dist.is_main:
        store.save(store_path)
        metrics = write_stage2_report(cfg, data_dir, multiplex_path, store, template, out_dir / "report", logs,
                                      at.step)  # fmt: skip
    metrics = D.broadcast_object(metrics, dist)
    return Stage2Result(out_dir, ckpt_path, store_path, at.step, seconds, metrics)


def prune(store: CameraMultiplex, epoch: int, cfg: Config) -> CameraMultiplex:
    """U-CMR's pruning (METHOD §5.6): once ``train.top_k_after`` epochs are done (``epoch`` of them; 0 before the
    first), keep each image's ``train.top_k`` best hypotheses (offsets and Adam state follow them). Identical on every
    rank."""
    k = cfg.train.top_k
    if k and epoch >= cfg.train.top_k_after and store.num_hypotheses > k:
        return store.top_k(k)
    return store


def write_examples(writer, step: int, batch, pred, res, q: Tensor, size: int, n: int = 4) -> None:
    """TensorBoard image rows: input | best hypothesis' silhouette | its textured render | the UV texture, and the
    scores of every hypothesis as a histogram."""

    best = best_hypothesis(q)
    rows = []
    for i in range(min(n, q.shape[0])):
        b = int(best[i])
        rows.append(run.image_row(batch.img[i], res.alpha[i, b], res.rgb[i, b], pred.uv_image[i]))
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows]
    writer.add_image("stage2/input|best_mask|best_render|uv", torch.cat(rows, dim=-2), step)
    writer.add_histogram("stage2/hypothesis_scores", q.detach().float().cpu(), step)


def initial_store(multiplex_path, fp: str, data_fp: str, cfg: Config, device) -> CameraMultiplex:
    """The Stage I store, checked against the data and template, rebased to Stage II's offset gain."""
    store = CameraMultiplex.load(multiplex_path, fingerprint=fp, device=device)
    if store.data_fingerprint and store.data_fingerprint != data_fp:
        raise ValueError(
            f"{multiplex_path}: the camera multiplex was fitted to other data (data fingerprint "
            f"{store.data_fingerprint}, this data set has {data_fp})"
        )
    mp = cfg.multiplex
    settings = OffsetSettings(cfg.train.multiplex_gain, mp.az_range_deg, mp.el_range_deg, mp.cr_range_deg)
    return store.rebase(settings)


def write_stage2_report(cfg, data_dir, multiplex_path, store, template, out: Path, logs: dict, step: int) -> dict:
    """``report/metrics.json``: the last losses and, with ground truth, the quality of the pose targets (the best
    hypothesis against GT, strictly and up to the depth mirror, and how often the best is the depth mirror)
    before (the Stage I store) and after Stage II."""

    metrics: dict[str, Any] = {"steps": step, "last_losses": logs}
    size_cfg = dataclasses.replace(cfg, multiplex=dataclasses.replace(cfg.multiplex, image_size=cfg.train.render_size))
    try:
        ds = build_stage1_dataset(size_cfg, data_dir, return_gt_camera=True, augment=False)
    except (FileNotFoundError, ValueError):
        ds = None
    if ds is not None and getattr(ds, "return_gt_camera", False):
        r = build_stage1_renderer(size_cfg)
        before = CameraMultiplex.load(multiplex_path, device=store.device)
        for name, s in (("stage1", before), ("stage2", store)):
            ev, _ = evaluate_multiplex(s, ds, template.verts, template.faces, r)
            metrics[f"targets_{name}"] = target_quality(ev)
    atomic_save_json(metrics, out / "metrics.json")
    return metrics


def target_quality(ev) -> dict[str, float]:
    """Best-hypothesis rotation error against GT (degrees), strictly and up to the depth mirror, and the share of
    images whose best hypothesis is the depth mirror of the truth (closer to the mirror than to GT, within 30°)."""

    if ev.best_err is None:
        return {}
    strict, up_to_mirror = rotation_error_stats(ev.best_err), rotation_error_stats(ev.best_err_mirror)
    mirror = (ev.best_err_mirror < ev.best_err) & (torch.rad2deg(ev.best_err_mirror) < 30)
    return {
        "num_images": int(ev.best_err.numel()),
        **strict,
        **{f"{k}_up_to_mirror": v for k, v in up_to_mirror.items()},
        "pct_best_is_depth_mirror": float(100 * mirror.double().mean()),
    }
