"""The pose heads' training losses (METHOD §7.7–7.8): the camera loss (the regression heads, and the keypoint
head end to end) and the keypoint head's heatmap loss."""

from __future__ import annotations

import torch
from torch import Tensor

from slopekp.geometry.camera import split_camera
from slopekp.geometry.rotations import quat_normalize

__all__ = ["camera_loss", "coordinate_loss", "heatmap_kl_loss", "heatmap_loss"]


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


def coordinate_loss(points2d: Tensor, target: Tensor, visible: Tensor) -> Tensor:
    """Mean L1 distance (NDC, summed over x and y) between predicted and target 2D keypoints, over the visible
    ones (integral regression, Sun et al., ECCV 2018); 0 when none is visible.

    Args:
        points2d: ``(B, K, 2)`` predicted (e.g. soft-argmax) keypoints; target: the same shape (no gradient).
        visible: ``(B, K)`` bool or {0, 1}.

    Returns:
        Scalar.
    """
    if points2d.shape != target.shape or points2d.shape[-1] != 2 or visible.shape != points2d.shape[:2]:
        raise ValueError(
            f"points2d {tuple(points2d.shape)}, target {tuple(target.shape)} and visible {tuple(visible.shape)} "
            "disagree"
        )
    w = visible.to(points2d.dtype)
    return ((points2d - target.detach()).abs().sum(-1) * w).sum() / w.sum().clamp_min(1.0)


def heatmap_kl_loss(logits: Tensor, target: Tensor, trained: Tensor, weight: float = 1.0) -> Tensor:
    """``weight · mean_{trained (b, k)} KL(T_bk ‖ softmax(Ĥ_bk))`` over each map's pixels: the decoder's output as a
    distribution over pixels (a spatial softmax), its target the Gaussian normalised to sum to 1, or the uniform
    distribution where the target map is all zero (a keypoint trained to show no peak). Zero exactly when every
    trained map's softmax is its target.

    A classification over pixels: unlike the squared error, whose gradient on the mostly-zero map is as large away
    from the keypoint as on it, every step raises the keypoint's pixels against all the others.

    Args:
        logits: ``(B, K, H, W)`` raw decoder heatmaps; target: the same shape (non-negative Gaussians or zeros).
        trained: ``(B, K)`` bool or {0, 1}: the maps the loss covers.

    Returns:
        Scalar (0 when no map is trained).
    """
    if logits.shape != target.shape or trained.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and trained {tuple(trained.shape)} disagree"
        )
    t = target.detach().flatten(-2)
    mass = t.sum(-1, keepdim=True)
    t = torch.where(mass > 0, t / mass.clamp_min(1e-30), torch.full_like(t, 1.0 / t.shape[-1]))
    logp = torch.log_softmax(logits.flatten(-2), dim=-1)
    kl = (torch.xlogy(t, t) - t * logp).sum(-1)  # (B, K)
    w = trained.to(kl.dtype)
    return weight * (kl * w).sum() / w.sum().clamp_min(1.0)
