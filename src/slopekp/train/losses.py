"""Training losses as pure tensor functions (METHOD §7).

Only the silhouette term that the camera multiplex needs lives here so far:

* :func:`mask_loss` — METHOD §7.1, ``L_mask = mean_px[ D·S + (S − M)² ]`` per rendered silhouette, where
``S`` is the
  rendered soft silhouette, ``M`` the (soft, bilinearly resized) ground-truth mask and ``D`` the mask's
  distance
  transform ``EDT(1 − (M > 0.5)) / max(H, W)`` (0 inside the mask). The ``D·S`` term pulls silhouette
  pixels that
  lie outside the mask back towards it from any distance; the squared term matches the mask where they
  overlap.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_loss(silhouette: Tensor, mask: Tensor, mask_dt: Tensor) -> Tensor:
    """Per-silhouette mask loss ``mean_px[D·S + (S − M)²]`` (METHOD §7.1).

    Args:
        silhouette: ``(B, H, W)`` or ``(B, P, H, W)`` rendered soft silhouettes ``S`` in [0, 1] (``P``
        hypotheses
            of the same image share its mask).
        mask: ``(B, H, W)`` ground-truth masks ``M`` in [0, 1].
        mask_dt: ``(B, H, W)`` distance transform ``D`` of the mask (0 inside, grows outside).

    Returns:
        ``(B,)`` or ``(B, P)``: the loss averaged over pixels (no reduction over images or hypotheses).

    Raises:
        ValueError: if the shapes disagree.
    """
    if mask.dim() != 3 or mask_dt.shape != mask.shape:
        raise ValueError(
            f"mask and mask_dt must both have shape (B, H, W); got {tuple(mask.shape)} and {tuple(mask_dt.shape)}"
        )
    if silhouette.dim() == 4:
        m, d = mask[:, None], mask_dt[:, None]
    elif silhouette.dim() == 3:
        m, d = mask, mask_dt
    else:
        raise ValueError(f"silhouette must have shape (B, H, W) or (B, P, H, W), got {tuple(silhouette.shape)}")
    if silhouette.shape[0] != mask.shape[0] or silhouette.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            f"silhouette {tuple(silhouette.shape)} does not match mask {tuple(mask.shape)} (batch and H, W must agree)"
        )
    per_px = d * silhouette + (silhouette - m).square()
    return per_px.flatten(-2).mean(-1)


def mask_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """Intersection over union of binarised masks (``> threshold``) over the last two dims.

    Args:
        pred: ``(..., H, W)`` predicted masks in [0, 1].
        target: ``(..., H, W)`` target masks (broadcastable against ``pred``).

    Returns:
        ``(...)`` IoU in [0, 1]; 1 where both masks are empty (nothing to disagree on).
    """
    p = pred > threshold
    t = target > threshold
    inter = (p & t).flatten(-2).sum(-1).to(torch.float32)
    union = (p | t).flatten(-2).sum(-1).to(torch.float32)
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
