"""Stage III: train one pose head on the Stage II best cameras (METHOD §5.6, §8 step 3).

The targets are self-supervised: each image's best-scoring hypothesis of the Stage II multiplex
(:meth:`~slopekp.train.multiplex.CameraMultiplex.best_cameras`), re-expressed for the crop and mirror of every
sample. No ground-truth camera or keypoint is read (the data set returns none; the loop refuses one that does).
Two options that are not in the paper (docs/training.md measures them): ``train.pose_targets=stage1`` takes them
from the Stage I store that the Stage II run started from, and ``train.mirror_by_appearance`` replaces each one by
its depth mirror where a colouring shared by the training set says so (:mod:`slopekp.train.appearance`), and
``train.reselect_every`` lets the network's own predictions re-choose each target among the image's best hypotheses
and their depth mirrors every few epochs (self-training, :mod:`slopekp.train.targets`).

* Regression heads (``quaternion``, ``gramschmidt``, ``svd``): ``w_cam · camera_loss(π̂, π*)`` (§7.8).
* The keypoint head: heatmap targets are Gaussians at the keypoint vertices of the predicted shape (detached)
  projected with ``π*``, for the keypoints that ``π*`` sees (:func:`~slopekp.models.keypoints.keypoint_visibility`,
  from the hard renderer's z-buffer); ``w_hm · heatmap_loss`` (§7.7). Its pose always comes from its keypoints
  through PnP; with ``model.end2end`` a camera loss on that PnP camera is added and back-propagated through PnP.

``supervised=True`` (``--supervised``) is the ablation with ground-truth poses: the targets are the data set's
SfM cameras of each crop instead of the multiplex's best cameras. It measures what a head reaches with perfect
targets, i.e. how much of its error comes from the self-supervised targets; its manifest, metrics and messages
say "supervised".

The encoder, shape and texture come from the Stage II checkpoint. ``train.freeze_backbone`` (default) trains the
pose head only (U-CMR); otherwise the encoder is trained by the pose loss too. ``train.frozen_batchnorm``
(default) keeps every BatchNorm layer on its running statistics: with small batches, batch statistics make a
pose head see each image only relative to its batch-mates.

Writes ``OUT/manifest.json``, ``config.yaml``, ``checkpoints/last.pt`` (a complete model: backbone + this head),
``tb/`` and ``report/metrics.json``; rerunning the same command resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from slopekp.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, template_payload
from slopekp.config import CHOICES, Config, config_to_yaml, load_config
from slopekp.data.cub import collate_samples
from slopekp.data.synth.writer import GENERATOR_NAME
from slopekp.eval.evaluate import benchmark_dataset, evaluate_model
from slopekp.eval.metrics import rotation_error, rotation_error_stats, rotation_error_up_to_mirror
from slopekp.manifest import Manifest, cmr_data_fingerprint, file_digest, file_input, flat_settings
from slopekp.mesh import load_template, template_fingerprint
from slopekp.models.base import EncoderOutput, PoseLossContext
from slopekp.models.encoder import normalize_image
from slopekp.models.reconstructor import BACKBONE, build_model
from slopekp.render import Lighting, Renderer, RenderSettings
from slopekp.train import distributed as D
from slopekp.train import run
from slopekp.train.appearance import choose_depth_mirrors
from slopekp.train.multiplex import CameraMultiplex
from slopekp.train.stage2 import CHECKPOINT, STORE_NAME, build_renderer, build_train_dataset
from slopekp.train.targets import PoseTargets, Reselection
from slopekp.utils import atomic_save_json
from slopekp.version import __version__

STAGE3_COMMAND = "train stage3"
#: the pose head's settings and the inference-only ones: Stage III takes them from its own config, the rest of
#: ``model.*`` from Stage II's
_POSE_FIELDS = (
    "pose_head", "num_keypoints", "keypoint_width", "end2end", "heatmap_sigma", "heatmap_size", "heatmap_occluded",
    "heatmap_visibility", "heatmap_loss", "texture_from_photo",
)
TARGETS = {False: "multiplex best cameras (self-supervised)", True: "SfM cameras (supervised ablation)"}
POSE_TARGETS = CHOICES["train.pose_targets"]


def targets_label(cfg: Config, supervised: bool) -> str:
    """What the pose targets are, as the manifest, the checkpoint and the metrics say it."""
    if supervised:
        return TARGETS[True]
    label = "multiplex best cameras" if cfg.train.pose_targets == "stage2" else "Stage I multiplex best cameras"
    if cfg.train.mirror_by_appearance:
        label += ", depth mirror chosen by appearance"
    if cfg.train.reselect_every > 0:
        label += f", re-selected by the network every {cfg.train.reselect_every} epoch(s)"
    return label + " (self-supervised)"


def targets_store(cfg: Config, stage2_dir: Path) -> Path:
    """The multiplex file of the pose targets (``train.pose_targets``): Stage II's own, or the Stage I store that
    Stage II's manifest names, refused when it moved or changed since."""
    if cfg.train.pose_targets not in POSE_TARGETS:
        raise ValueError(f"train.pose_targets must be one of {', '.join(POSE_TARGETS)}, got {cfg.train.pose_targets!r}")
    if cfg.train.pose_targets == "stage2":
        return stage2_dir / STORE_NAME
    m = Manifest.load(stage2_dir)
    entry = m.inputs.get("stage1") if m is not None else None
    if not entry or "path" not in entry:
        raise ValueError(f"{stage2_dir}: its manifest names no Stage I store (train.pose_targets=stage1)")
    path = Path(entry["path"])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the Stage I store that {stage2_dir} was trained from is gone "
                                f"(train.pose_targets=stage1)")  # fmt: skip
    if file_digest(path).hexdigest()[:16] != entry.get("fingerprint"):
        raise ValueError(f"{path}: the Stage I store changed since {stage2_dir} was trained from it "
                         f"(train.pose_targets=stage1)")  # fmt: skip
    return path


@dataclass
class Stage3Result:
    out_dir: Path
    checkpoint: Path
    steps: int
    seconds: float
    metrics: dict[str, Any]


def stage3_config(cfg: Config, stage2_dir: Path, head: str) -> Config:
    """``cfg`` with the backbone settings of the Stage II run (its ``config.yaml``) and the pose head ``head``."""
    s2 = load_config(stage2_dir / "config.yaml")
    pose = {k: getattr(cfg.model, k) for k in _POSE_FIELDS}
    pose["pose_head"] = head
    model = dataclasses.replace(s2.model, **pose)
    return dataclasses.replace(cfg, model=model, template=s2.template, render=s2.render)


def stage3_manifest(
    cfg: Config, data_dir, stage2_dir: Path, template_fp: str, stage2_step: int, supervised: bool, store_path: Path
) -> Manifest:
    """The Stage II run is identified by its pose targets (the store's bytes: ``np.savez`` writes the same bytes
    for the same arrays) and its checkpoint's step (``torch.save`` bytes differ between identical saves).
    ``store_path``: the targets' store (:func:`targets_store`), an input of its own when it is Stage I's."""
    d = cfg.data
    data = cmr_data_fingerprint(data_dir, d.split, images_dir=d.images_dir or None, sfm_dir=d.sfm_dir or None)
    s2 = {
        "fingerprint": f"{file_digest(stage2_dir / STORE_NAME).hexdigest()[:16]}@step{stage2_step}",
        "path": str(stage2_dir.resolve()),
    }
    settings = {"seed": cfg.seed, **flat_settings(cfg.data, "data", ("images_dir", "sfm_dir"))}
    settings["targets"] = targets_label(cfg, supervised)
    settings.update(flat_settings(cfg.model, "model", ("texture_from_photo",)))  # inference only
    not_result = ("pose_epochs", "epochs", "checkpoint_every", "num_workers", "sync_every")
    settings.update(flat_settings(cfg.train, "train", not_result))
    inputs = {"data": data, "template": {"fingerprint": template_fp, "path": cfg.template.path}, "stage2": s2}
    if cfg.train.pose_targets == "stage1" and not supervised:
        inputs["stage1"] = file_input(store_path)
    return Manifest(f"{STAGE3_COMMAND} {cfg.model.pose_head}", inputs=inputs, settings=settings)


def stage3_loss(model, batch, target: torch.Tensor, cfg: Config, faces, hard_renderer) -> tuple[torch.Tensor, dict]:
    """The pose loss of one batch against the target cameras ``(B, 7)``."""

    w = cfg.train
    img = normalize_image(batch.img)
    frozen = w.freeze_backbone
    with torch.set_grad_enabled(not frozen), run.autocast(img.device, w.amp):
        enc = model.encoder(img)
        verts = model.shape(enc.flat).verts.float()
    if enc.flat.dtype != torch.float32:  # bf16 backbone: the pose head (and PnP) run in float32
        enc = EncoderOutput({k: v.float() for k, v in enc.features.items()}, enc.conv.float(), enc.flat.float())
    ctx = PoseLossContext(faces, hard_renderer, w.camera_weight, w.heatmap_weight, w.coordinate_weight)
    return model.pose.loss(enc, verts, target, ctx)  # logs: on the device, read back by the training loop


def run_stage3(
    cfg: Config,
    data_dir: str | os.PathLike,
    stage2_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    head: str,
    *,
    progress: bool = True,
    overwrite: bool = False,
    force_new: bool = False,
    max_steps: int | None = None,
    supervised: bool = False,
    dist: D.DistInfo = D.SINGLE,
    bar_position: int | None = None,
) -> Stage3Result:
    """Stage III end to end for pose head ``head``; see the module docstring (``supervised``: targets are the
    ground-truth SfM cameras, an ablation; ``bar_position``: the progress bar's line when several runs show theirs
    at once).

    Under ``torchrun`` (``dist`` from :func:`slopekp.train.distributed.init_distributed`) every rank takes its
    share of each global batch of ``train.batch_size × world_size`` images and the trained weights' gradients are
    averaged over the ranks before each step and rank 0's BatchNorm statistics are copied to the others after it
    (as DDP does), so the ranks hold the same model (checked at the end). BatchNorm normalises each rank's share
    of the batch (no SyncBatchNorm), so a step is not exactly a single-process step on the global batch. Rank 0
    alone writes the folder, the checkpoints, the logs and the test-split report.
    """

    out_dir, stage2_dir = Path(out_dir), Path(stage2_dir)
    for need in (stage2_dir / CHECKPOINT, stage2_dir / STORE_NAME, stage2_dir / "config.yaml"):
        if not need.is_file():
            raise FileNotFoundError(f"{stage2_dir}: not a finished Stage II run (no {need.relative_to(stage2_dir)})")
    cfg = stage3_config(cfg, stage2_dir, head)
    cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    device = D.rank_device(run.setup(cfg), dist)  # seeds before the pose head is initialised
    template = load_template(cfg.template.path)
    fp = template_fingerprint(template.verts, template.faces)
    s2 = load_checkpoint(stage2_dir / CHECKPOINT, kind="stage2", template_fingerprint=fp)
    model = build_model(cfg.model, template, cfg.template.symmetry_tol)  # a bad head name fails here
    store_path = targets_store(cfg, stage2_dir)  # a bad value or a moved Stage I store fails here
    manifest = stage3_manifest(cfg, data_dir, stage2_dir, fp, int(s2["step"]), supervised, store_path)
    state = run.prepare_run_dir(
        out_dir, manifest, cfg, dist, inputs=(data_dir, stage2_dir, cfg.data.images_dir, cfg.data.sfm_dir),
        overwrite=overwrite, force_new=force_new, results=(str(CHECKPOINT),),
    )  # fmt: skip
    template = template.to(device)
    model = model.to(device)
    backbone = {k: v for k, v in s2["model"].items() if k.startswith(BACKBONE)}
    missing, _ = model.load_state_dict(backbone, strict=False)
    missing = [k for k in missing if k.startswith(BACKBONE)]
    if missing:
        raise ValueError(
            f"{stage2_dir / CHECKPOINT}: Stage II checkpoint lacks {len(missing)} weights, e.g. {missing[:5]}"
        )
    store = CameraMultiplex.load(store_path, fingerprint=fp, device=device)
    dataset = build_train_dataset(cfg, data_dir, return_gt_camera=supervised)
    missing_ids = [] if supervised else [i for i in range(len(dataset)) if i not in store]
    if missing_ids:
        raise ValueError(f"{store_path}: no pose target for {len(missing_ids)} image(s), e.g. {missing_ids[:5]}")
    mirror_of, mirror_choice = None, None
    plain = None  # the unaugmented training crops, built once for the appearance choice and the re-selections
    if not supervised and (cfg.train.mirror_by_appearance or cfg.train.reselect_every > 0):
        plain = build_train_dataset(cfg, data_dir, augment=False)
    if cfg.train.mirror_by_appearance and not supervised:
        mirror_of, mirror_choice = appearance_mirrors(cfg, plain, store, template, device)
    targets = None if supervised else PoseTargets.from_id_mirrors(store, mirror_of)
    initial_targets = None if supervised else PoseTargets.from_id_mirrors(store, mirror_of)
    reselections: list[dict] = []
    params, opt, hard = pose_training(model, cfg)
    ckpt_path = out_dir / CHECKPOINT
    at = run.LoopState()
    ck = None
    if state == "resume":  # last.pt, or the newer checkpoint that a killed save left beside it
        ck = run.resume_checkpoint(ckpt_path, manifest, dist, kind="stage3", head=head, template_fingerprint=fp,
                                   map_location=device)  # fmt: skip
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if targets is not None and ck.get("targets_state") is not None:
            targets.load_state_dict(ck["targets_state"])
            reselections = list(ck.get("reselections") or [])
        at = run.LoopState(ck["epoch"], ck["step"], ck["batch_in_epoch"])
        set_rng_state(ck["rng"])

    card = model_card_entries(data_dir, manifest, len(dataset))

    def checkpoint(logs: dict) -> None:
        if not dist.is_main:
            return
        save_checkpoint(ckpt_path, {
            "kind": "stage3", "head": head, "targets": targets_label(cfg, supervised), "template_fingerprint": fp,
            "config": config_to_yaml(cfg), "manifest": manifest.to_dict(), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "multiplex": None, "epoch": at.epoch, "step": at.step,
            "batch_in_epoch": at.in_epoch, "rng": rng_state(), "metrics": logs, "template": template_payload(template),
            "card": card, "targets_state": None if targets is None else targets.state_dict(),
            "reselections": reselections,
        })  # fmt: skip

    def train_step(batch) -> dict[str, float]:
        batch = batch.to(device)
        if supervised:
            target = batch.gt_camera
        elif batch.gt_camera is not None:
            raise ValueError("Stage III received ground-truth cameras")
        else:
            target = targets.cameras(batch.id, batch.crop)
        loss, logs = stage3_loss(model, batch, target, cfg, template.faces, hard)
        run.set_lr(opt, run.scheduled_lr(cfg.train.lr, at.step, total_steps, cfg.train.pose_lr_schedule))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        D.average_gradients(params, dist)
        if cfg.train.grad_clip > 0:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip).detach()
        opt.step()
        D.broadcast_buffers(model, dist)  # BatchNorm statistics: rank 0's on every rank, as DDP keeps them
        logs["total"] = loss.detach()  # read back by the loop every train.sync_every steps
        step = at.step + 1
        if writer is not None and (step % cfg.train.image_every == 1 or cfg.train.image_every == 1):
            model.eval()  # no BatchNorm update from the examples' forward pass
            write_examples(writer, step, model, batch, target, template.faces)
            set_train_modes(model, cfg)
        return D.all_reduce_mean(logs, dist)

    total_steps = cfg.train.pose_epochs * D.num_steps(len(dataset), cfg.train.batch_size, dist.world_size)

    def on_epoch_end(epochs_done: int) -> None:
        every = cfg.train.reselect_every
        if targets is None or every <= 0 or epochs_done % every or epochs_done >= cfg.train.pose_epochs:
            return
        done = reselect_targets(model, targets, plain, cfg, device)
        targets.load_state_dict(D.broadcast_object(targets.state_dict(), dist))  # rank 0's choice everywhere
        reselections.append({"epoch": epochs_done, **done.summary()})
        if writer is not None:
            for k in ("changed", "mirrored_share", "best_share", "mean_shift_deg"):
                writer.add_scalar(f"stage3/reselect_{k}", getattr(done, k), at.step)
        set_train_modes(model, cfg)

    set_train_modes(model, cfg)
    writer = run.summary_writer(out_dir / "tb") if dist.is_main else None
    t0 = time.perf_counter()
    try:
        loop = run.LoopSettings(cfg.train.pose_epochs, "stage3", train_step, checkpoint, max_steps=max_steps,
                                progress=progress, desc=f"Stage III {head}", checkpoint_path=ckpt_path,
                                on_epoch_end=on_epoch_end, bar_position=bar_position)  # fmt: skip
        logs, _ = run.train_loop(dataset, cfg, dist, at, loop, writer)
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - t0
    if not D.modules_in_sync(model, dist):
        raise RuntimeError("the ranks' models diverged")
    metrics = None
    if dist.is_main:
        metrics = {"steps": at.step, "last_losses": logs, "head": head, "targets": targets_label(cfg, supervised)}
        if mirror_choice is not None:
            metrics["mirror_by_appearance"] = mirror_choice
        if reselections:
            metrics["reselections"] = reselections
        if targets is not None:
            quality = targets_quality({"initial": initial_targets, "final": targets}, cfg, data_dir, device)
            if quality is not None:
                metrics["targets_train"] = quality
        test = evaluate_split(model, cfg, data_dir, template.faces, "test")
        if test is not None:
            metrics["test"] = test
            card["metrics"] = {"split": "test", **test}
            if load_checkpoint(ckpt_path).get("card", {}).get("metrics") != card["metrics"]:
                checkpoint(logs)  # the model card carries the test metrics (a finished run's file is left as it is)
        atomic_save_json(metrics, out_dir / "report" / "metrics.json")
    metrics = D.broadcast_object(metrics, dist)
    return Stage3Result(out_dir, ckpt_path, at.step, seconds, metrics)


def pose_training(model, cfg: Config) -> tuple[list[torch.nn.Parameter], torch.optim.Adam, Renderer]:
    """What Stage III trains and with what: marks the pose head's parameters trainable (and the encoder's unless
    ``train.freeze_backbone``), the others frozen, and returns them, their Adam and the hard renderer of the
    pose loss's targets (:meth:`~slopekp.models.pose.PoseHead.target_size`)."""
    trained = ("pose.",) if cfg.train.freeze_backbone else ("pose.", "encoder.")
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(trained))
    params = [p for p in model.parameters() if p.requires_grad]
    hard = Renderer(RenderSettings.from_config(cfg.render, model.pose.target_size(model.encoder)))
    return params, run.adam(params, cfg.train.lr), hard


def model_card_entries(data_dir, manifest: Manifest, num_images: int) -> dict[str, Any]:
    """The checkpoint's ``card`` (:func:`slopekp.checkpoint.model_card`): what it was trained on and with which
    slopekp; the test metrics are added after training. (When: the manifest's ``created``.)"""

    data = manifest.inputs.get("data", {})
    return {
        "data": {"name": dataset_name(data_dir), "path": str(data_dir), "fingerprint": data.get("fingerprint"),
                 "split": data.get("split"), "images": int(num_images)},  # fmt: skip
        "slopekp_version": __version__,
        "metrics": None,
    }


def dataset_name(data_dir) -> str:
    """``SynthBirds`` for a folder written by :func:`slopekp.data.synth.writer.generate_synthbirds`, else the
    folder's name."""
    meta = Path(data_dir) / "meta.json"
    try:
        if json.loads(meta.read_text()).get("generator") == GENERATOR_NAME:
            return "SynthBirds"
    except (OSError, ValueError, AttributeError):
        pass
    return Path(data_dir).resolve().name


@torch.no_grad()
def write_examples(writer, step: int, model, batch, target, faces, n: int = 4) -> None:
    """TensorBoard image rows: input | the mesh under the predicted camera | under the target camera | (keypoint
    head) the heatmaps' maximum over the keypoints, normalised per image."""

    n = min(n, batch.img.shape[0])
    pred = model(normalize_image(batch.img[:n]), photo=False)  # the rows show meshes, not textures
    size = batch.img.shape[-1]
    shaded = Renderer(RenderSettings(image_size=size))
    light = Lighting()
    mesh_pred = shaded(pred.verts, faces, pred.camera, mode="hard", lighting=light).rgb
    mesh_target = shaded(pred.verts, faces, target[:n], mode="hard", lighting=light).rgb
    heat = pred.pose_extras.get("heatmaps")
    rows = []
    for i in range(n):
        panels = [batch.img[i], mesh_pred[i], mesh_target[i]]
        if heat is not None:
            h = heat[i].float().amax(0)
            panels.append((h - h.min()) / (h.max() - h.min()).clamp(min=1e-6))
        rows.append(run.image_row(*panels))
    writer.add_image("stage3/input|mesh_pred|mesh_target" + ("|heatmaps" if heat is not None else ""),
                     torch.cat(rows, dim=-2), step)  # fmt: skip


@torch.no_grad()
def targets_quality(targets: dict[str, PoseTargets], cfg: Config, data_dir, device) -> dict | None:
    """The report's view of the pose targets (it reads ground truth; training never does): for each named
    :class:`PoseTargets`, the rotation error of every training image's target against its true camera, strictly
    and up to the depth mirror (:func:`~slopekp.eval.metrics.rotation_error_stats`). None without true cameras."""

    d = cfg.data
    try:
        ds = benchmark_dataset(data_dir, d.split, cfg.model.image_size, images_dir=d.images_dir or None,
                               sfm_dir=d.sfm_dir or None, max_items=d.max_items)  # fmt: skip
    except (FileNotFoundError, ValueError):
        return None
    errs: dict[str, list] = {name: [] for name in targets}
    mirror: dict[str, list] = {name: [] for name in targets}
    for batch in DataLoader(ds, batch_size=64, collate_fn=collate_samples):
        gt = batch.gt_camera.to(device)
        for name, t in targets.items():
            cams = t.cameras(batch.id, batch.crop).to(device)
            errs[name].append(rotation_error(cams, gt).cpu())
            mirror[name].append(rotation_error_up_to_mirror(cams, gt).cpu())
    if not any(errs.values()):
        return None
    return {name: {"num_images": int(sum(e.numel() for e in errs[name])), **rotation_error_stats(torch.cat(errs[name])),
                   "median_deg_up_to_mirror": rotation_error_stats(torch.cat(mirror[name]))["median_deg"]}
            for name in targets}  # fmt: skip


@torch.no_grad()
def reselect_targets(model, targets: PoseTargets, dataset, cfg: Config, device) -> Reselection:
    """Self-training (``train.reselect_every``): the network, in eval mode, predicts every unaugmented training
    image's camera, and :meth:`PoseTargets.reselect` moves each target to its candidate nearest that prediction
    (``train.reselect_top`` best hypotheses and their depth mirrors). Leaves the model in eval mode."""

    model.eval()
    ids, preds, crops = [], [], []
    for batch in DataLoader(dataset, batch_size=max(cfg.train.batch_size, 32), collate_fn=collate_samples):
        img = normalize_image(batch.img.to(device))
        with run.autocast(img.device, cfg.train.amp):
            preds.append(model(img, photo=False).camera.float())
        ids.append(batch.id)
        crops.append(batch.crop)
    if not ids:
        raise ValueError("reselect_targets: the training set is empty")
    return targets.reselect(torch.cat(ids), torch.cat(preds), torch.cat(crops), cfg.train.reselect_top)


def appearance_mirrors(cfg: Config, dataset, store, template, device) -> tuple[torch.Tensor, dict]:
    """:func:`slopekp.train.appearance.choose_depth_mirrors` over the unaugmented training set ``dataset``:
    ``(mirror_of, summary)`` with ``mirror_of[id]`` True where the target is the depth mirror of the best camera."""

    renderer = build_renderer(cfg)
    ids, choice = choose_depth_mirrors(store, dataset, template.verts, template.faces, renderer,
                                       batch_size=max(cfg.train.batch_size, 32), device=device)  # fmt: skip
    mirror_of = torch.zeros(int(ids.max()) + 1, dtype=torch.bool, device=device)
    mirror_of[ids.to(device)] = choice.mirrored.to(device)
    return mirror_of, choice.summary()


def set_train_modes(model: torch.nn.Module, cfg: Config) -> None:
    """Stage III's module modes: the pose head (and the encoder, unless frozen) in training mode, shape and texture
    in eval mode; with ``train.frozen_batchnorm`` every BatchNorm layer in eval mode (running statistics)."""
    model.train()
    if cfg.train.freeze_backbone:  # frozen BatchNorm statistics too
        model.encoder.eval()
    model.shape.eval()
    model.texture.eval()
    if cfg.train.frozen_batchnorm:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def evaluate_split(model, cfg: Config, data_dir, faces, split: str) -> dict | None:
    """:func:`slopekp.eval.evaluate.evaluate_model` on ``split`` when the folder has it with ground-truth cameras
    (the report's only reader of ground truth); None otherwise."""

    d = cfg.data
    try:
        ds = benchmark_dataset(data_dir, split, cfg.model.image_size, images_dir=d.images_dir or None,
                               sfm_dir=d.sfm_dir or None)  # fmt: skip
    except (FileNotFoundError, ValueError):
        return None
    if len(ds) == 0:
        return None
    return evaluate_model(model, ds, faces, batch_size=cfg.train.batch_size).metrics
