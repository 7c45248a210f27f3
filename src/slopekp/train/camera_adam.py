"""The multiplex's optimiser: a per-image Adam (METHOD §5.4, §10 item 8) and the gradient-noise guard of the
offsets.

Each image's hypotheses have their own first/second moments *and step count*: a step only touches the rows of
the images in the batch (the intent of U-CMR's ``Adam_NonZeroGradOnly``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from slopekp.train.hypotheses import NUM_OFFSETS

__all__ = ["GRAD_NOISE_FLOOR", "AdamResult", "adam_update", "suppress_gradient_noise"]


class AdamResult(NamedTuple):
    """New values of the rows that :func:`adam_update` stepped."""

    param: Tensor
    """``(R, ...)`` updated parameters."""
    exp_avg: Tensor
    """``(R, ...)`` first moments ``m``."""
    exp_avg_sq: Tensor
    """``(R, ...)`` second moments ``v``."""
    step: Tensor
    """``(R,)`` int64 per-row step counts (each incremented by one)."""


def adam_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> AdamResult:
    """One Adam step (Kingma & Ba 2015; ``torch.optim.Adam`` without weight decay) counted *per row*.

    Every row (leading index) is an independent parameter with its own bias correction, so rows can advance at
    different rates: pass only the rows of the images in the batch and write the result back.

    Args:
        param, grad, exp_avg, exp_avg_sq: ``(R, ...)`` the rows' parameters, gradients and moments.
        step: ``(R,)`` int64 steps already taken by each row.
        lr, betas, eps: the usual Adam hyper-parameters.

    Returns:
        :class:`AdamResult` with new tensors (the inputs are not modified).
    """
    b1, b2 = betas
    t = (step + 1).to(param.dtype).reshape((-1,) + (1,) * (param.dim() - 1))
    m = exp_avg * b1 + grad * (1 - b1)
    v = exp_avg_sq * b2 + grad.square() * (1 - b2)
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    new = param - lr * m_hat / (v_hat.sqrt() + eps)
    return AdamResult(new, m, v, step + 1)


#: Offset-gradient components at most this fraction of the largest one of their group are float rounding noise.
GRAD_NOISE_FLOOR = 1e-5


def suppress_gradient_noise(grad: Tensor, rel: float = GRAD_NOISE_FLOOR) -> Tensor:
    """Zero the offset-gradient components that are float32 rounding noise, so that Adam does not amplify them.

    A hypothesis of the grid often starts on a symmetry of the problem: a side view of a mirror-symmetric bird
    (turning it left or right changes its silhouette the same way) or a front view whose silhouette lies
    inside the mask. There the true gradient of some offsets is exactly zero, and the computed one is
    rounding noise (``~1e-8`` of the others) whose sign depends on the summation order: on which other
    images share the batch, or on the device. Adam's first step is ``lr·g/(|g| + eps)``, a full step in the
    noise's direction, and the hypothesis then rolls off the symmetry to a side chosen by chance. That made
    Stage I depend on the batch size (issue 8). Components no larger than ``rel`` times the largest of their
    group (``[δs, δtx, δty]`` or ``[α_az, α_el, α_cr]``: each group shares its units) are set to zero, which
    is what exact arithmetic gives there; a hypothesis on a symmetry then stays on it.

    Args:
        grad: ``(..., 6)`` gradients of offsets ``[δs, δtx, δty, α_az, α_el, α_cr]``.
        rel: the relative noise floor (``1e-5`` leaves a margin of ~100 over float32 summation noise).

    Returns:
        ``(..., 6)``, a new tensor.
    """
    if grad.shape[-1] != NUM_OFFSETS:
        raise ValueError(f"grad must be (..., {NUM_OFFSETS}), got {tuple(grad.shape)}")
    g = grad.unflatten(-1, (2, 3))
    floor = rel * g.abs().amax(-1, keepdim=True)
    return torch.where(g.abs() <= floor, torch.zeros_like(g), g).flatten(-2)
