"""Evaluate a trained model on a data split with ground-truth cameras (METHOD §9.1 protocol: no padding, no
jitter, no flip; crops in order).

Per image: the pose head's camera against the ground-truth camera (rotation error, strictly and up to the depth
mirror) and the silhouette of the predicted shape under the predicted camera against the ground-truth mask
(hard z-buffer coverage, METHOD's σ = 1e-8 "effectively hard" SoftRas), with both IoU conventions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from slopekp.data.cub import CubDataset, collate_samples
from slopekp.data.meshes import TrueMeshes
from slopekp.eval.metrics import (
    mask_bbox_side,
    mask_iou,
    mask_iou_soft,
    rotation_error,
    rotation_error_stats,
    rotation_error_up_to_mirror,
)
from slopekp.eval.reconstruction import (
    chamfer_distance,
    masked_l1,
    masked_ssim,
    mesh_length,
    normal_consistency,
    sample_surface,
)
from slopekp.models.encoder import normalize_image
from slopekp.render import Renderer, RenderSettings

SURFACE_POINTS = 2000
"""Points sampled on each surface for the Chamfer distance."""
TEXTURE_KEYS = ("l1_pred_camera", "ssim_pred_camera", "l1_gt_camera", "ssim_gt_camera")
"""``metrics["texture"]``'s keys (and ``per_image``'s, ``(N,)`` each)."""


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    """``num_images``, ``mask_iou_soft``, ``mask_iou_0.5`` (means), ``rotation_error`` and
    ``rotation_error_up_to_mirror`` (:func:`~slopekp.eval.metrics.rotation_error_stats`), ``shape`` and (given
    ``verts_uv``) ``texture``, and ``texture_head`` where the network showed its photo texture
    (:func:`evaluate_model`)."""
    per_image: dict[str, Tensor]
    """``index``, ``rotation_error_deg``, ``rotation_error_up_to_mirror_deg``, ``iou_soft``, ``iou`` — ``(N,)`` —
    and ``pred_camera``, ``gt_camera`` — ``(N, 7)``; ``normal_consistency``, and where measured ``chamfer`` and the
    texture keys — ``(N,)`` (with ``keep_predictions``, also ``verts``, ``kp``, ``mask_side``)."""


def benchmark_dataset(data_dir, split: str, img_size: int, *, images_dir=None, sfm_dir=None, max_items: int = 0):
    """The U-CMR benchmark view of a CMR-format split: padding and jitter 0, no flips, ground-truth cameras."""

    return CubDataset(data_dir, split=split, img_size=img_size, padding_frac=0.0, jitter_frac=0.0, flip=False,
                      jitter=False, return_gt_camera=True, max_items=max_items, images_dir=images_dir,
                      sfm_dir=sfm_dir)  # fmt: skip


@torch.no_grad()
def evaluate_model(model, dataset, faces: Tensor, *, batch_size: int = 16, device=None,
                   keep_predictions: bool = False, verts_uv: Tensor | None = None,
                   true_meshes: TrueMeshes | None = None) -> Evaluation:  # fmt: skip
    """Run ``model`` (a :class:`~slopekp.models.reconstructor.ReconstructionNet`) over ``dataset`` and score it.

    ``keep_predictions`` also keeps, in ``per_image``, what keypoint transfer needs
    (:func:`~slopekp.eval.transfer.pck_over_pairs`): ``verts (N, V, 3)``, ``kp (N, K, 3)`` and ``mask_side (N,)``.

    Shape and texture (issue 24; :mod:`slopekp.eval.reconstruction`): ``metrics["shape"]`` always has the predicted
    meshes' ``normal_consistency``; with ``true_meshes`` (the split's, by record id) also ``chamfer``, the
    symmetric Chamfer distance between :data:`SURFACE_POINTS` points on the predicted and on the true surface in the
    object frame divided by the true bird's length, and the true meshes' own ``normal_consistency_true``. With
    ``verts_uv`` (the template's), ``metrics["texture"]``: the masked L1 and SSIM of the textured render against the
    input over the ground-truth mask, under the predicted camera (``*_pred_camera``) and the true one
    (``*_gt_camera``). The texture is the one the network outputs: with ``model.texture_from_photo`` the photo
    texture (:func:`slopekp.models.texture.photo_texture`), and then ``metrics["texture_head"]`` scores the texture
    head's own UV image the same way.

    Raises:
        ValueError: the data set has no ground-truth cameras, or is empty.
    """


    if len(dataset) == 0:
        raise ValueError("the evaluation split is empty")
    if not getattr(dataset, "return_gt_camera", False):
        raise ValueError("evaluation needs ground-truth cameras (anno_<split>.mat)")
    device = device or next(iter([*model.parameters(), *model.buffers()]), faces).device
    model.eval()
    size = dataset.img_size
    renderer = Renderer(RenderSettings(image_size=size))
    parts: dict[str, list[Tensor]] = {k: [] for k in ("index", "err", "err_m", "iou_soft", "iou", "pred", "gt")}
    gen = torch.Generator().manual_seed(0)  # the surface samples: the same for every run
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples):
        batch = batch.to(device)
        pred = model(normalize_image(batch.img))
        tex = {} if verts_uv is None else {"uv_image": pred.uv_image, "verts_uv": verts_uv}
        seen = renderer(pred.verts, faces, pred.camera, mode="hard", **tex)  # silhouette (and texture) at once
        sil = seen.alpha
        parts.setdefault("smooth", []).append(normal_consistency(pred.verts.float(), faces).cpu())
        if verts_uv is not None:
            truth = renderer(pred.verts, faces, batch.gt_camera, mode="hard", **tex)
            frags = {"": (seen, truth)}
            if pred.uv_image_head is not None:  # the photo texture is shown: score the texture head's own too
                head = {"uv_image": pred.uv_image_head, "verts_uv": verts_uv}
                frags["head_"] = tuple(renderer(pred.verts, faces, c, mode="hard", **head)
                                       for c in (pred.camera, batch.gt_camera))  # fmt: skip
            for prefix, pair in frags.items():
                for name, frag in zip(("pred_camera", "gt_camera"), pair):
                    rgb = frag.rgb.float()
                    parts.setdefault(f"{prefix}l1_{name}", []).append(masked_l1(rgb, batch.img, batch.mask).cpu())
                    parts.setdefault(f"{prefix}ssim_{name}", []).append(masked_ssim(rgb, batch.img, batch.mask).cpu())
        if true_meshes is not None:
            ids = [dataset.records[int(i)].id for i in batch.index]
            true = torch.as_tensor(true_meshes.lookup(ids), device=pred.verts.device)
            true_faces = torch.as_tensor(true_meshes.faces, device=true.device)
            state = gen.get_state()  # the same draws for both: a mesh equal to the truth scores exactly 0
            a = sample_surface(pred.verts.float(), faces, SURFACE_POINTS, gen)
            gen.set_state(state)
            b = sample_surface(true, true_faces, SURFACE_POINTS, gen)
            parts.setdefault("chamfer", []).append((chamfer_distance(a, b) / mesh_length(true)).cpu())
            parts.setdefault("smooth_true", []).append(normal_consistency(true, true_faces).cpu())
        parts["index"].append(batch.index.cpu())
        parts["err"].append(rotation_error(pred.camera, batch.gt_camera).cpu())
        parts["err_m"].append(rotation_error_up_to_mirror(pred.camera, batch.gt_camera).cpu())
        parts["iou_soft"].append(mask_iou_soft(sil, batch.mask).cpu())
        parts["iou"].append(mask_iou(sil, batch.mask).cpu())
        parts["pred"].append(pred.camera.float().cpu())
        parts["gt"].append(batch.gt_camera.float().cpu())
        if keep_predictions:
            parts.setdefault("verts", []).append(pred.verts.float().cpu())
            parts.setdefault("kp", []).append(batch.kp.cpu())
            parts.setdefault("mask_side", []).append(mask_bbox_side(batch.mask).cpu())
    cat = {k: torch.cat(v) for k, v in parts.items()}
    shape = {"normal_consistency": float(cat["smooth"].double().mean())}
    if "chamfer" in cat:
        shape.update(chamfer=float(cat["chamfer"].double().mean()), chamfer_median=float(cat["chamfer"].median()),
                     normal_consistency_true=float(cat["smooth_true"].double().mean()))  # fmt: skip
    texture = {k: float(cat[k].double().nanmean()) for k in TEXTURE_KEYS if k in cat}
    texture_head = {k: float(cat[f"head_{k}"].double().nanmean()) for k in TEXTURE_KEYS if f"head_{k}" in cat}
    metrics = {
        "num_images": int(cat["index"].numel()),
        "mask_iou_soft": float(cat["iou_soft"].double().mean()),
        "mask_iou_0.5": float(cat["iou"].double().mean()),
        "rotation_error": rotation_error_stats(cat["err"]),
        "rotation_error_up_to_mirror": rotation_error_stats(cat["err_m"]),
        "shape": shape,
        **({"texture": texture} if texture else {}),
        **({"texture_head": texture_head} if texture_head else {}),
    }
    per_image = {
        "index": cat["index"],
        "rotation_error_deg": torch.rad2deg(cat["err"]),
        "rotation_error_up_to_mirror_deg": torch.rad2deg(cat["err_m"]),
        "iou_soft": cat["iou_soft"],
        "iou": cat["iou"],
        "pred_camera": cat["pred"],
        "gt_camera": cat["gt"],
        "normal_consistency": cat["smooth"],
        **{k: cat[k] for k in ("verts", "kp", "mask_side", "chamfer", *TEXTURE_KEYS) if k in cat},
    }
    return Evaluation(metrics, per_image)
