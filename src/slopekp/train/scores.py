"""Scoring camera hypotheses (METHOD §5.3/§5.4): per image, losses are min–max rescaled over the hypotheses
and turned into a distribution with ``softmin(peakiness · L̃)``; the best one with ties broken by index; their
rotation errors against a reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slopekp.geometry.camera import split_camera
from slopekp.geometry.rotations import quat_geodesic_angle
from slopekp.utils import checks_values

__all__ = ["best_hypothesis", "hypothesis_rotation_errors", "hypothesis_scores", "minmax_rescale"]


def best_hypothesis(scores: Tensor, rtol: float = 1e-4) -> Tensor:
    """Index of each image's best hypothesis, ties broken towards the lower index.

    Mirror-symmetric hypotheses (e.g. a camera and its depth mirror, METHOD §2.3) fit a symmetric mask
    equally well, so their scores agree up to rounding; a plain ``argmax`` would pick between them by float
    noise (batch size, device). Scores within ``rtol`` (relative) of the row's maximum count as tied.

    Args:
        scores: ``(..., P)``.

    Returns:
        ``(...)`` int64.
    """
    top = scores.amax(-1, keepdim=True)
    tied = scores >= top - rtol * top.abs()
    return tied.to(torch.int8).argmax(-1)  # the first True


def minmax_rescale(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``(x − min) / (max − min + eps)`` over the last dim; ``(..., P)`` → ``(..., P)`` in [0, 1)."""
    lo = x.amin(-1, keepdim=True)
    hi = x.amax(-1, keepdim=True)
    return (x - lo) / (hi - lo + eps)


def hypothesis_scores(loss: Tensor, peakiness: float = 20.0, power: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Scores of P hypotheses from their losses (METHOD §5.3): ``softmin_p(peakiness · L̃^power)``.

    ``L̃`` is the per-image min–max rescaled loss, so the weighting ignores the absolute loss level: the best
    hypothesis gets weight ``1 / Σ_p exp(−peakiness·L̃_p)`` (the worst ``≈ e^{−peakiness}`` times less). Equal
    losses give uniform scores.

    Args:
        loss: ``(..., P)`` per-hypothesis losses (detached by the caller if needed).
        peakiness: the softmin temperature (``quatScorePeakiness = 20``).
        power: ``lossToScorePower`` (1).

    Returns:
        ``(..., P)`` non-negative scores summing to 1 over the last dim.
    """
    if checks_values(loss) and not torch.isfinite(loss).all():
        raise ValueError("hypothesis losses contain NaN or inf; cannot score them")
    rescaled = minmax_rescale(loss, eps).clamp_min(0).pow(power)
    return torch.softmax(-peakiness * rescaled, dim=-1)


def hypothesis_rotation_errors(cameras: Tensor, gt_cameras: Tensor) -> Tensor:
    """Geodesic rotation error of every hypothesis against a reference camera, in radians.

    Args:
        cameras: ``(B, P, 7)`` hypotheses.
        gt_cameras: ``(B, 7)`` references (e.g. ground truth).

    Returns:
        ``(B, P)`` angles in ``[0, π]``.
    """
    q = split_camera(cameras).q
    return quat_geodesic_angle(q, split_camera(gt_cameras).q[:, None].expand_as(q))
