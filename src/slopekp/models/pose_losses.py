"""The pose heads' training losses (METHOD §7.7–7.8): the camera loss (the regression heads, and the keypoint
head end to end) and the keypoint head's heatmap loss."""

from __future__ import annotations

import torch
from torch import Tensor

from slopekp.geometry.camera import split_camera
from slopekp.geometry.rotations import quat_normalize

__all__ = ["camera_loss", "heatmap_loss"]


def camera_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image camera loss ``(1 − |⟨q̂, q*⟩|) + mean_{s,tx,ty}(x̂ − x*)²`` (METHOD §7.8).

    The quaternion term is 0 for the same rotation (either sign of ``q``) and 1 for a half turn apart.

    Args:
        pred, target: ``(B, 7)`` cameras.

    Returns:
        ``(B,)``.
    """
    if pred.shape != target.shape or pred.shape[-1] != 7:
        raise ValueError(f"pred and target must both be (B, 7), got {tuple(pred.shape)}, {tuple(target.shape)}")
    s, t, q = split_camera(pred)
    s_t, t_t, q_t = split_camera(target)
    rot = 1 - (quat_normalize(q) * quat_normalize(q_t)).sum(-1).abs()
    st, st_t = torch.cat([s[..., None], t], dim=-1), torch.cat([s_t[..., None], t_t], dim=-1)
    return rot + (st - st_t).square().mean(-1)


def heatmap_loss(pred: Tensor, target: Tensor, visible: Tensor, weight: float = 10.0) -> Tensor:
    """``weight · mean_{b,k,i,j} (w_bk (Ĥ_bk − G_bk))²`` (METHOD §7.7): invisible keypoints contribute nothing.

    Args:
        pred: ``(B, K, H, W)`` raw decoder heatmaps; target: the same shape (Gaussians, zero when invisible).
        visible: ``(B, K)`` bool or {0, 1}.

    Returns:
        Scalar.
    """
    if pred.shape != target.shape or visible.shape != pred.shape[:2]:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and visible {tuple(visible.shape)} disagree"
        )
    w = visible.to(pred.dtype)[..., None, None]
    return weight * (w * (pred - target)).square().mean()
