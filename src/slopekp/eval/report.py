"""``slopekp eval``: score a trained model (a Stage III checkpoint) on a CMR-format split and write what a person
looks at (METHOD §9.1 protocol: no padding, jitter or flip).

``OUT/`` receives:
* ``metrics.json``: mask IoU soft and at 0.5, rotation error (mean, median, % under 15°, 30°, 45°) and the same
  up to the depth mirror beside it, keypoint-transfer PCK@0.1 over random image pairs
  (:mod:`slopekp.eval.transfer`), plus what was evaluated (checkpoint, head, data, split);
* ``per_image.csv``: one row per image (its file, both IoUs, both rotation errors, predicted and ground-truth
  azimuth / elevation / cyclo-rotation in degrees);
* ``rotation_error.png``: the histogram of the rotation error, strictly and up to the mirror;
* ``viewpoints.png``: predicted against ground-truth azimuth and elevation histograms;
* ``worst.png``: the images with the largest rotation errors, and ``examples.png``, images spread evenly over
  the ranks of the error (typical results): input | predicted silhouette against the ground-truth mask | the
  predicted mesh under the ground-truth camera | under the predicted camera | textured under the predicted
  camera | textured, turned 90° about the image's vertical axis (a novel view).

The folder carries a run manifest (the checkpoint's and the data's fingerprints, the split): rerunning the same
command rewrites the same results, another checkpoint or data set is refused unless ``--overwrite`` or
``--force-new``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slopekp.checkpoint import CheckpointError, load_checkpoint, model_card, template_from_payload
from slopekp.config import ConfigError, config_from_yaml
from slopekp.data.cub import collate_samples
from slopekp.data.meshes import meshes_path, read_true_meshes
from slopekp.data.viewpoints import rotations_to_azelcr
from slopekp.eval.evaluate import benchmark_dataset, evaluate_model
from slopekp.eval.transfer import pck_over_pairs
from slopekp.geometry.camera import split_camera, turn_camera
from slopekp.geometry.rotations import quat_normalize, quat_to_rotmat
from slopekp.manifest import Manifest, cmr_data_fingerprint, file_input, prepare_output_dir
from slopekp.mesh import load_template, template_fingerprint
from slopekp.models.encoder import normalize_image
from slopekp.models.reconstructor import build_model
from slopekp.render import Lighting, Renderer, RenderSettings
from slopekp.utils import atomic_save_json, atomic_write, first_line
from slopekp.viz.figures import pyplot, save_figure

__all__ = ["TrainedModel", "evaluate_checkpoint", "load_trained_model"]

EVAL_COMMAND = "eval"


@dataclass
class TrainedModel:
    model: torch.nn.Module
    """A :class:`~slopekp.models.reconstructor.ReconstructionNet` in eval mode."""
    cfg: Any
    """The training run's :class:`~slopekp.config.Config`."""
    template: Any
    """The template mesh the model predicts deformations of."""
    head: str
    targets: str = ""
    """What its pose head was trained on (the checkpoint's ``targets``: self-supervised, supervised, ...)."""
    card: dict | None = None
    """The checkpoint's model card (:func:`slopekp.checkpoint.model_card`)."""


def load_trained_model(checkpoint: str | os.PathLike, *, template: str | None = None, device="cpu") -> TrainedModel:
    """The model of a Stage III checkpoint (loaded with ``weights_only=True``), on ``device``.

    The template is the one the checkpoint carries; an older checkpoint without one reads its config's template
    path. ``template`` (a path or ``procedural``) overrides both, e.g. for an older checkpoint whose template file
    moved; it must be the same mesh (its fingerprint is checked).

    Raises:
        CheckpointError: naming the file: not a checkpoint, damaged, or not of Stage III (a Stage II checkpoint has
            no trained pose head).
        ValueError: the template is not the one the model was trained with.
    """

    path = Path(checkpoint)
    ck = load_checkpoint(path, map_location="cpu")
    if ck.get("kind") != "stage3":
        raise CheckpointError(
            f"{path}: a {ck.get('kind')!r} checkpoint has no trained pose head; use the checkpoint of "
            f"`slopekp train --stage 3` (OUT/checkpoints/last.pt)"
        )
    text = ck.get("config")
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: the checkpoint holds no config")
    try:
        cfg = config_from_yaml(text, f"{path} (its config)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    if template is None and ck.get("template") is not None:
        tpl_path, tpl = f"{path} (its template)", template_from_payload(ck["template"], path)
    else:
        tpl_path = template or cfg.template.path
        try:
            tpl = load_template(tpl_path)
        except FileNotFoundError as e:
            if template:
                raise
            raise FileNotFoundError(f"{e} (the template {path} was trained with); pass --template PATH") from e
    fp = template_fingerprint(tpl.verts, tpl.faces)
    if fp != ck.get("template_fingerprint"):
        raise ValueError(
            f"template {tpl_path} (fingerprint {fp}) is not the one {path} was trained with (fingerprint "
            f"{ck.get('template_fingerprint')}, {cfg.template.path}): the shape head predicts offsets of that "
            f"mesh's vertices"
        )
    model = build_model(cfg.model, tpl, cfg.template.symmetry_tol)
    try:
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as e:
        detail = first_line(e)
        raise CheckpointError(f"{path}: its weights do not fit the network of its config ({detail})") from e
    model.to(device).eval()
    return TrainedModel(model, cfg, tpl.to(device), str(ck.get("head")), str(ck.get("targets", "")), model_card(ck))


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "test",
    template: str | None = None,
    batch_size: int = 16,
    device="cpu",
    gallery: int = 8,
    pck_pairs: int = 1000,
    overwrite: bool = False,
    force_new: bool = False,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data_dir``'s ``split`` and write ``out_dir`` (see the module docstring).

    Returns the metrics (also in ``out_dir/metrics.json``).

    Raises:
        FileNotFoundError / ValueError: naming the file: no such split (``<split>_cub_cleaned.mat``), no ground
            truth (``anno_<split>.mat``), an empty split, or a checkpoint / template problem
            (:func:`load_trained_model`).
    """

    data_dir, out_dir, checkpoint = Path(data_dir), Path(out_dir), Path(checkpoint)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if gallery < 0:
        raise ValueError(f"gallery must be >= 0, got {gallery}")
    tm = load_trained_model(checkpoint, template=template, device=device)
    dataset = benchmark_dataset(data_dir, split, tm.cfg.model.image_size)
    if len(dataset) == 0:
        raise ValueError(f"{data_dir / f'{split}_cub_cleaned.mat'}: the split {split!r} has no images")
    manifest = Manifest(
        EVAL_COMMAND,
        inputs={
            "checkpoint": file_input(checkpoint),
            "data": cmr_data_fingerprint(data_dir, split),
            **({"meshes": file_input(meshes_path(data_dir, split))} if meshes_path(data_dir, split).is_file() else {}),
        },
        settings={"split": split, "template": template or tm.cfg.template.path, "gallery": gallery,
                  "pck_pairs": pck_pairs},
    )
    prepare_output_dir(out_dir, manifest, overwrite=overwrite, force_new=force_new, results=("metrics.json",),
                       inputs=[data_dir, checkpoint.parent])  # fmt: skip
    want_pck = pck_pairs > 0 and len(dataset) >= 2
    ev = evaluate_model(tm.model, dataset, tm.template.faces, batch_size=batch_size, device=device,
                        keep_predictions=want_pck, verts_uv=tm.template.verts_uv,
                        true_meshes=read_true_meshes(data_dir, split))  # fmt: skip
    pi = ev.per_image
    pred_v, gt_v = _viewpoints_deg(pi["pred_camera"]), _viewpoints_deg(pi["gt_camera"])
    paths = [str(dataset.image_path(int(i))) for i in pi["index"]]
    _write_csv(out_dir / "per_image.csv", pi, paths, pred_v, gt_v)
    _plot_rotation_errors(out_dir / "rotation_error.png", pi["rotation_error_deg"].numpy(),
                          pi["rotation_error_up_to_mirror_deg"].numpy(), tm.head)  # fmt: skip
    _plot_viewpoints(out_dir / "viewpoints.png", pred_v, gt_v, tm.head)
    order = torch.argsort(pi["rotation_error_deg"], descending=True).tolist()
    if gallery > 0:
        # the largest errors, and examples spread evenly over the ranks of the error (typical results)
        spread = sorted({order[round(q * (len(order) - 1))] for q in np.linspace(0, 1, gallery + 2)[1:-1]},
                        key=order.index, reverse=True)  # fmt: skip
        for name, rows, title in (("worst.png", order[:gallery], f"the {min(gallery, len(order))} largest rotation "
                                   "errors"), ("examples.png", spread, "examples from the best to the worst")):
            _gallery(out_dir / name, tm, dataset, [int(pi["index"][i]) for i in rows],
                     [float(pi["rotation_error_deg"][i]) for i in rows], [float(pi["iou"][i]) for i in rows], title)
    transfer = None
    if want_pck:
        faces = tm.template.faces.cpu()
        transfer = pck_over_pairs(pi["verts"], pi["pred_camera"], pi["kp"], pi["mask_side"], faces,
                                  dataset.img_size, num_pairs=pck_pairs, z_offset=tm.cfg.render.z_offset)  # fmt: skip
    metrics = {
        **ev.metrics,
        **({"keypoint_transfer": transfer} if transfer is not None else {}),
        "checkpoint": str(checkpoint),
        "head": tm.head,
        "targets": tm.targets,
        "data": str(data_dir),
        "split": split,
        "protocol": "METHOD §9.1: no padding, jitter or flip; hard silhouettes; rotation error with the 180° fold",
    }
    atomic_save_json(metrics, out_dir / "metrics.json")
    return metrics


def _viewpoints_deg(cameras: torch.Tensor) -> np.ndarray:
    """``(N, 7)`` cameras -> ``(N, 3)`` azimuth, elevation, cyclo-rotation in degrees (SynthBirds' convention,
    :func:`slopekp.data.viewpoints.rotations_to_azelcr`)."""

    if cameras.shape[0] == 0:
        return np.zeros((0, 3))
    rot = quat_to_rotmat(quat_normalize(split_camera(cameras.double()).q)).numpy()
    return np.degrees(rotations_to_azelcr(rot))


def _write_csv(path: Path, pi: dict, paths: list[str], pred_v: np.ndarray, gt_v: np.ndarray) -> None:
    cols = ["index", "image", "iou_soft", "iou_0.5", "rotation_error_deg", "rotation_error_up_to_mirror_deg",
            "pred_azimuth_deg", "pred_elevation_deg", "pred_cyclo_deg", "gt_azimuth_deg", "gt_elevation_deg",
            "gt_cyclo_deg"]  # fmt: skip
    with atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(len(paths)):
            w.writerow([int(pi["index"][i]), paths[i], f"{float(pi['iou_soft'][i]):.5f}", f"{float(pi['iou'][i]):.5f}",
                        f"{float(pi['rotation_error_deg'][i]):.3f}",
                        f"{float(pi['rotation_error_up_to_mirror_deg'][i]):.3f}",
                        *(f"{v:.2f}" for v in pred_v[i]), *(f"{v:.2f}" for v in gt_v[i])])  # fmt: skip


def _plot_rotation_errors(path: Path, err: np.ndarray, err_mirror: np.ndarray, head: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, 180, 37)
    ax.hist(err, bins=bins, alpha=0.7, label=f"rotation error (median {np.median(err):.1f}°)")
    ax.hist(err_mirror, bins=bins, alpha=0.5, label=f"up to the depth mirror (median {np.median(err_mirror):.1f}°)")
    for t in (15, 30, 45):
        ax.axvline(t, color="0.3", lw=0.8, ls="--")
    ax.set_xlabel("geodesic rotation error (degrees)")
    ax.set_ylabel("images")
    ax.set_title(f"{head} head: rotation error on {err.size} images")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _plot_viewpoints(path: Path, pred_v: np.ndarray, gt_v: np.ndarray, head: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, k, name, lim in ((axes[0], 0, "azimuth", 180), (axes[1], 1, "elevation", 90)):
        bins = np.linspace(-lim, lim, 37)
        ax.hist(gt_v[:, k], bins=bins, alpha=0.6, label="ground truth")
        ax.hist(pred_v[:, k], bins=bins, alpha=0.6, label=f"predicted ({head})")
        ax.set_xlabel(f"{name} (degrees)")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
    fig.suptitle("viewpoints: predicted against ground truth")
    save_figure(fig, path)


@torch.no_grad()
def _gallery(path: Path, tm: TrainedModel, dataset, indices: list[int], errors: list[float], ious: list[float],
             title: str) -> None:  # fmt: skip
    """Rows of input | silhouette against mask | mesh under the GT camera | under the predicted camera | textured
    under the predicted camera | textured, turned 90° (a novel view)."""

    plt = pyplot()
    device = tm.template.faces.device
    batch = collate_samples([dataset[i] for i in indices]).to(device)
    pred = tm.model(normalize_image(batch.img))
    faces = tm.template.faces
    r = Renderer(RenderSettings(image_size=batch.img.shape[-1]))
    light = Lighting()
    sil = r(pred.verts, faces, pred.camera, mode="hard").alpha
    mesh_gt = r(pred.verts, faces, batch.gt_camera, mode="hard", lighting=light).rgb
    mesh_pred = r(pred.verts, faces, pred.camera, mode="hard", lighting=light).rgb
    tex = {"uv_image": pred.uv_image, "verts_uv": tm.template.verts_uv}
    textured = r(pred.verts, faces, pred.camera, mode="hard", **tex).rgb
    novel = r(pred.verts, faces, turn_camera(pred.camera, azimuth_deg=90.0), mode="hard", lighting=light, **tex).rgb
    n = len(indices)
    titles = ["input", "silhouette (red) vs mask (green)", "mesh, GT camera", "mesh, predicted camera",
              "textured, predicted camera", "textured, turned 90°"]  # fmt: skip
    fig, axes = plt.subplots(n, len(titles), figsize=(2.0 * len(titles), 2.0 * n + 0.4), squeeze=False,
                             layout="constrained")  # fmt: skip
    for row in range(n):
        overlay = torch.stack([sil[row], batch.mask[row], torch.zeros_like(sil[row])])
        panels = [batch.img[row], overlay, mesh_gt[row], mesh_pred[row], textured[row], novel[row]]
        for col, im in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(im.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
        axes[row][0].set_ylabel(f"#{indices[row]}\n{errors[row]:.0f}°, IoU {ious[row]:.2f}", fontsize=8)
    fig.suptitle(f"{tm.head} head: {title}", fontsize=10)
    save_figure(fig, path)
