"""Keypoint transfer between two images through the predicted meshes, and PCK (the CSM / U-CMR protocol).

For a pair ``(a, b)``: each annotated keypoint of ``a`` is lifted onto the surface that ``a``'s predicted mesh shows
at that pixel under ``a``'s predicted camera (the hard renderer's face index and barycentrics; a keypoint off the
rendered silhouette takes the nearest covered pixel), carried to the same face and barycentrics of ``b``'s predicted
mesh (every prediction shares the template's faces), and projected with ``b``'s predicted camera. It is correct when
it lands within ``alpha`` times the larger side of ``b``'s mask bounding box of ``b``'s annotation of the same
keypoint; keypoints annotated in both images are scored (PCK@alpha, usually 0.1).

Coordinates are NDC of the square crop (x right, y down, ``[-1, 1]`` across the image), as ``Sample.kp``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slopekp.geometry.camera import project_points
from slopekp.render import Renderer, RenderSettings

__all__ = ["lift_to_surface", "pck", "pck_over_pairs", "transfer_keypoints"]


def _pixel_of(points: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Row and column ``(K,)`` of the pixels containing NDC points ``(K, 2)`` (clamped into the image)."""
    col = ((points[:, 0] + 1) * (w / 2)).floor().long().clamp(0, w - 1)
    row = ((points[:, 1] + 1) * (h / 2)).floor().long().clamp(0, h - 1)
    return row, col


def lift_to_surface(points: Tensor, face_index: Tensor, bary: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The rendered surface under NDC points ``(K, 2)``: face ``(K,)``, barycentrics ``(K, 3)`` and whether the
    point's own pixel is covered ``(K,)``; an uncovered point takes the covered pixel nearest to it.

    ``face_index (H, W)`` (-1 where empty) and ``bary (H, W, 3)`` are one hard render. Raises ``ValueError`` when
    nothing is covered.
    """
    h, w = face_index.shape
    covered = torch.nonzero(face_index >= 0)  # (C, 2) rows, cols
    if covered.shape[0] == 0:
        raise ValueError("the render covers no pixel: nothing to lift keypoints onto")
    row, col = _pixel_of(points, h, w)
    hit = face_index[row, col] >= 0
    if not bool(hit.all()):
        centres = torch.stack([(covered[:, 1].to(points.dtype) + 0.5) * (2 / w) - 1,
                               (covered[:, 0].to(points.dtype) + 0.5) * (2 / h) - 1], 1)  # fmt: skip
        nearest = torch.cdist(points[~hit], centres).argmin(1)
        row, col = row.clone(), col.clone()
        row[~hit], col[~hit] = covered[nearest, 0], covered[nearest, 1]
    return face_index[row, col], bary[row, col], hit


def transfer_keypoints(points_a: Tensor, render_a, verts_b: Tensor, cam_b: Tensor, faces: Tensor,
                       z_offset: float) -> Tensor:  # fmt: skip
    """Carry NDC points ``(K, 2)`` of image ``a`` (its hard render ``render_a``: ``face_index (H, W)``, ``bary (H,
    W, 3)``) onto ``verts_b (V, 3)`` and project them with ``cam_b (7,)``: ``(K, 2)`` NDC points in ``b``."""

    face, bary, _ = lift_to_surface(points_a, *render_a)
    p = (verts_b[faces[face]] * bary.unsqueeze(-1).to(verts_b.dtype)).sum(1)  # (K, 3)
    return project_points(p, cam_b.unsqueeze(0), z_offset)[0, :, :2]


def pck(pred: Tensor, gt: Tensor, visible: Tensor, threshold: Tensor) -> tuple[int, int]:
    """``(correct, total)``: keypoints with ``visible`` (``(N, K)`` bool) whose ``pred`` lies within ``threshold``
    (``(N,)``, the same units) of ``gt`` (``(N, K, 2)``)."""
    dist = (pred - gt).norm(dim=-1)
    ok = (dist < threshold.unsqueeze(1)) & visible
    return int(ok.sum()), int(visible.sum())


@torch.no_grad()
def pck_over_pairs(
    verts: Tensor, cameras: Tensor, kp: Tensor, mask_side: Tensor, faces: Tensor, image_size: int, *,
    num_pairs: int = 1000, alpha: float = 0.1, seed: int = 0, z_offset: float = 5.0,
) -> dict:  # fmt: skip
    """PCK@``alpha`` of keypoint transfer over ``num_pairs`` random ordered pairs of distinct images, from each
    image's predicted ``verts (N, V, 3)`` and ``cameras (N, 7)``, its annotated ``kp (N, K, 3)`` (NDC x, y and
    visibility of an unflipped crop of side ``image_size``) and its mask-box side ``mask_side (N,)``
    (:func:`~slopekp.eval.metrics.mask_bbox_side`); e.g. the ``per_image`` of
    :func:`~slopekp.eval.evaluate.evaluate_model` with ``keep_predictions=True``. Returns ``{"pck", "alpha",
    "num_pairs", "num_keypoints"}``."""

    n = verts.shape[0]
    if n < 2:
        raise ValueError(f"keypoint transfer needs at least 2 images, the split has {n}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, n, (num_pairs,), generator=g)
    b = (a + torch.randint(1, n, (num_pairs,), generator=g)) % n  # never a itself
    renderer = Renderer(RenderSettings(image_size=image_size, z_offset=z_offset))
    correct = total = 0
    for i, j in zip(a.tolist(), b.tolist()):
        both = (kp[i, :, 2] > 0) & (kp[j, :, 2] > 0)
        if not bool(both.any()):
            continue
        r = renderer(verts[i : i + 1], faces, cameras[i : i + 1], mode="hard")
        moved = transfer_keypoints(kp[i, both, :2], (r.face_index[0], r.bary[0]), verts[j], cameras[j], faces,
                                   z_offset)  # fmt: skip
        every = torch.ones(1, int(both.sum()), dtype=torch.bool, device=moved.device)
        c, t = pck(moved[None], kp[j, both, :2][None], every, alpha * mask_side[j : j + 1])
        correct, total = correct + c, total + t
    return {"pck": correct / total if total else float("nan"), "alpha": alpha, "num_pairs": num_pairs,
            "num_keypoints": total}  # fmt: skip
