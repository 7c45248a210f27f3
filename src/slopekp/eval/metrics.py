"""Evaluation metrics as pure tensor functions (METHOD §9, DATA.md §8). Angles are radians inside; the summary
functions report degrees.

* Mask IoU, two conventions, always reported by name:
  :func:`mask_iou_soft` — U-CMR's ``Σ(M·S) / Σ(M + S − M·S)`` on the soft values as they are;
  :func:`mask_iou` — SLOPE-KP's, both masks thresholded at 0.5.
* Rotation error: :func:`rotation_error` — the geodesic angle between two rotations in ``[0, π]`` (the "180°
  fold" of METHOD's ``min(e, 360° − e)`` is built in: ``q`` and ``−q`` are the same rotation);
  :func:`rotation_error_up_to_mirror` — the smaller of the errors to the truth and to its depth mirror
  (METHOD §2.3), reported beside the strict error, never instead of it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from slopekp.geometry.camera import depth_mirror_cameras, split_camera
from slopekp.geometry.rotations import quat_geodesic_angle

#: Thresholds (degrees) of the "% under" rotation statistics.
ROTATION_THRESHOLDS_DEG = (15.0, 30.0, 45.0)


def _check_masks(pred: Tensor, target: Tensor) -> None:
    if pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"masks differ in size: {tuple(pred.shape)} and {tuple(target.shape)}")


def mask_iou_soft(pred: Tensor, target: Tensor) -> Tensor:
    """U-CMR's soft IoU ``Σ(M·S) / Σ(M + S − M·S)`` over the last two dims; 1 where both masks are empty.

    Args:
        pred: ``(..., H, W)`` values in [0, 1]; target: the same (broadcastable).

    Returns:
        ``(...)``.
    """
    _check_masks(pred, target)
    inter = (pred * target).flatten(-2).sum(-1)
    union = (pred + target - pred * target).flatten(-2).sum(-1)
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.ones_like(union))


def mask_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU of the masks thresholded at ``threshold`` (strictly above) over the last two dims; 1 where both are
    empty. ``(..., H, W)`` → ``(...)``."""
    _check_masks(pred, target)
    p, t = pred > threshold, target > threshold
    inter = (p & t).flatten(-2).sum(-1).to(torch.float32)
    union = (p | t).flatten(-2).sum(-1).to(torch.float32)
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def rotation_error(pred: Tensor, target: Tensor) -> Tensor:
    """Geodesic angle between the rotations of two cameras (or quaternions), in radians in ``[0, π]``.

    Args:
        pred, target: ``(..., 7)`` cameras ``[s, tx, ty, q]`` or ``(..., 4)`` quaternions ``[w, x, y, z]``.
    """
    q1 = split_camera(pred).q if pred.shape[-1] == 7 else pred
    q2 = split_camera(target).q if target.shape[-1] == 7 else target
    if q1.shape[-1] != 4 or q2.shape[-1] != 4:
        raise ValueError(
            f"expected (..., 7) cameras or (..., 4) quaternions, got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    return quat_geodesic_angle(q1, q2)


def rotation_error_up_to_mirror(pred: Tensor, target: Tensor) -> Tensor:
    """``min(error to target, error to its depth mirror)`` for ``(..., 7)`` cameras (METHOD §2.3), radians."""

    return torch.minimum(rotation_error(pred, target), rotation_error(pred, depth_mirror_cameras(target)))


def rotation_error_stats(err: Tensor, thresholds_deg=ROTATION_THRESHOLDS_DEG) -> dict[str, float]:
    """``{"mean_deg", "median_deg", "pct_under_15deg", ...}`` of ``(N,)`` errors in radians (NaN when N = 0).

    The median is the lower middle value for an even N (``torch.median``)."""
    deg = torch.rad2deg(err.detach().double().flatten())
    if deg.numel() == 0:
        nan = {f"pct_under_{t:g}deg": math.nan for t in thresholds_deg}
        return {"mean_deg": math.nan, "median_deg": math.nan, **nan}
    out = {"mean_deg": float(deg.mean()), "median_deg": float(deg.median())}
    for t in thresholds_deg:
        out[f"pct_under_{t:g}deg"] = float(100.0 * (deg < t).double().mean())
    return out


def mask_bbox_side(mask: Tensor) -> Tensor:
    """The larger side of each ``mask > 0.5`` bounding box, ``(N, H, W) -> (N,)``, in NDC units (2 = the image
    side; PCK's scale); 0 for an empty mask."""
    n, h, w = mask.shape
    on = mask > 0.5
    rows, cols = on.any(2), on.any(1)
    out = torch.zeros(n, dtype=torch.float32, device=mask.device)
    for i in range(n):
        r, c = torch.nonzero(rows[i]).squeeze(1), torch.nonzero(cols[i]).squeeze(1)
        if r.numel():
            out[i] = max((r[-1] - r[0] + 1) * (2 / h), (c[-1] - c[0] + 1) * (2 / w))
    return out
