"""The camera hypotheses of the multiplex (U-CMR; METHOD §5.1-§5.2): the initial grid and learnable offsets.

* A camera is a ``(..., 7)`` tensor ``[s, tx, ty, qw, qx, qy, qz]`` in the NDC of an image crop
  (``docs/conventions.md``).
* **Hypothesis grid** (METHOD §5.1): ``q_{a,e,c} = q_z(cr_c) ⊗ q_x(el_e) ⊗ q_y(az_a) ⊗ q_x(base_bias)``
  with ``az_a = 2π·a/num_az + az_bias``, ``el_e = −90° + 180°·(e+1)/(num_el+1) + el_bias``
  (``{−60, −30, 0, 30, 60}°`` for 5 bins) and ``cr_c = 2π·c/num_cr``; flattened index
  ``(a·num_el + e)·num_cr + c`` (azimuth-major). Initial cameras are ``[scale_bias, 0, 0, q]``.
* **Offsets** (METHOD §5.2): each hypothesis is a fixed *base* camera plus a learnable ``(..., 6)`` offset
  ``[δs, δtx, δty, α_az, α_el, α_cr]``: ``s = s_b + δs``, ``t = t_b + δt`` and
  ``q = q_z(cr) ⊗ q_x(el) ⊗ q_y(az) ⊗ q_b`` with ``az = tanh(c·α_az)·az_range`` (likewise el, cr); see
  :class:`OffsetSettings` and :func:`apply_offsets`.

The defaults are those of :class:`slopekp.config.MultiplexConfig` (one set of defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from slopekp.config import MultiplexConfig
from slopekp.geometry.camera import depth_mirror_cameras, split_camera
from slopekp.geometry.rotations import azelcr_to_quat, quat_about_axis, quat_multiply
from slopekp.utils import device_constant

__all__ = ["NUM_OFFSETS", "OffsetSettings", "apply_offsets", "cameras_match", "hypothesis_cameras",
           "hypothesis_cameras_from_config", "hypothesis_mirrors", "mirror_representatives",
           "positive_scale_cameras"]  # fmt: skip

NUM_OFFSETS = 6
_DEFAULTS = MultiplexConfig()


@dataclass(frozen=True)
class OffsetSettings:
    """How learnable ``(..., 6)`` offsets ``[δs, δtx, δty, α_az, α_el, α_cr]`` map to a camera (§5.2)."""

    gain: float = _DEFAULTS.offset_gain
    """``c`` in ``tanh(c·α)``: 0.1 in Stage I and SLOPE-KP, 1 in U-CMR's Stage II."""
    az_range_deg: float = _DEFAULTS.az_range_deg
    el_range_deg: float = _DEFAULTS.el_range_deg
    cr_range_deg: float = _DEFAULTS.cr_range_deg

    def as_array(self) -> np.ndarray:
        """``(4,)`` float64 ``[gain, az_range_deg, el_range_deg, cr_range_deg]`` (the ``.npz`` record)."""
        return np.array([self.gain, self.az_range_deg, self.el_range_deg, self.cr_range_deg], dtype=np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> OffsetSettings:
        return cls(*(float(x) for x in np.asarray(a, dtype=np.float64).reshape(4)))

    @classmethod
    def from_config(cls, cfg: MultiplexConfig) -> OffsetSettings:
        """From a :class:`slopekp.config.MultiplexConfig`."""
        return cls(cfg.offset_gain, cfg.az_range_deg, cfg.el_range_deg, cfg.cr_range_deg)


def hypothesis_cameras(
    num_az: int = _DEFAULTS.num_az,
    num_el: int = _DEFAULTS.num_el,
    num_cr: int = _DEFAULTS.num_cr,
    *,
    scale: float = _DEFAULTS.scale_bias,
    base_bias_deg: float = _DEFAULTS.base_bias_deg,
    az_bias_deg: float = _DEFAULTS.az_bias_deg,
    el_bias_deg: float = _DEFAULTS.el_bias_deg,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The initial hypothesis grid of METHOD §5.1 (``P = num_az·num_el·num_cr``).

    Returns:
        ``(P, 7)`` cameras ``[scale, 0, 0, q_{a,e,c}]``, index ``(a·num_el + e)·num_cr + c``.

    Raises:
        ValueError: if a bin count is < 1 or ``scale`` is not positive.
    """
    for name, n in (("num_az", num_az), ("num_el", num_el), ("num_cr", num_cr)):
        if int(n) != n or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    kw = {"dtype": torch.float64, "device": device}
    az = 2 * math.pi * torch.arange(num_az, **kw) / num_az + math.radians(az_bias_deg)
    el = torch.deg2rad(-90.0 + 180.0 * (torch.arange(num_el, **kw) + 1) / (num_el + 1) + el_bias_deg)
    cr = 2 * math.pi * torch.arange(num_cr, **kw) / num_cr
    az, el, cr = torch.meshgrid(az, el, cr, indexing="ij")
    base = quat_about_axis("x", torch.tensor(math.radians(base_bias_deg), **kw))
    q = azelcr_to_quat(az.reshape(-1), el.reshape(-1), cr.reshape(-1), base.expand(az.numel(), 4))
    st = torch.tensor([scale, 0.0, 0.0], **kw).expand(q.shape[0], 3)
    return torch.cat([st, q], dim=-1).to(dtype)


def hypothesis_cameras_from_config(cfg: MultiplexConfig, *, dtype=torch.float32, device=None) -> Tensor:
    """:func:`hypothesis_cameras` with the fields of a :class:`slopekp.config.MultiplexConfig`; ``(P, 7)``."""
    return hypothesis_cameras(
        cfg.num_az,
        cfg.num_el,
        cfg.num_cr,
        scale=cfg.scale_bias,
        base_bias_deg=cfg.base_bias_deg,
        az_bias_deg=cfg.az_bias_deg,
        el_bias_deg=cfg.el_bias_deg,
        dtype=dtype,
        device=device,
    )


def apply_offsets(base: Tensor, offsets: Tensor, settings: OffsetSettings) -> Tensor:
    """Compose base cameras with offsets (METHOD §5.2); differentiable in ``offsets``.

    Args:
        base: ``(..., 7)`` base cameras ``[s_b, t_b, q_b]``.
        offsets: ``(..., 6)`` ``[δs, δtx, δty, α_az, α_el, α_cr]`` (broadcast against ``base``).
        settings: the gain ``c`` and the angle ranges.

    Returns:
        ``(..., 7)``: ``[s_b + δs, t_b + δt, q_z(cr) ⊗ q_x(el) ⊗ q_y(az) ⊗ q_b]`` with
        ``az = tanh(c·α_az)·range_az`` (likewise el, cr). Zero offsets give back ``base``.
    """
    if base.shape[-1] != 7 or offsets.shape[-1] != NUM_OFFSETS:
        raise ValueError(
            f"base must be (..., 7) and offsets (..., 6); got {tuple(base.shape)} and {tuple(offsets.shape)}"
        )
    ranges = device_constant(
        tuple(math.radians(a) for a in (settings.az_range_deg, settings.el_range_deg, settings.cr_range_deg)),
        offsets.dtype, offsets.device,
    )  # fmt: skip
    ang = torch.tanh(settings.gain * offsets[..., 3:]) * ranges
    shape = torch.broadcast_shapes(base.shape[:-1], offsets.shape[:-1])
    s_b, t_b, q_b = split_camera(base)
    ang = ang.expand(*shape, 3)
    q = azelcr_to_quat(ang[..., 0], ang[..., 1], ang[..., 2], q_b.expand(*shape, 4))
    st = torch.cat([s_b[..., None], t_b], dim=-1).expand(*shape, 3) + offsets[..., :3].expand(*shape, 3)
    return torch.cat([st, q], dim=-1)


def positive_scale_cameras(cameras: Tensor) -> Tensor:
    """Replace cameras of negative scale by the silhouette-equivalent camera of positive scale.

    ``p = s·(RX)_xy + t`` with ``s < 0`` equals ``|s|·(R_z(π)·R·X)_xy + t`` (a half turn about the viewing
    axis negates x and y); only the sign of the depth differs, which a silhouette does not see. Additive
    scale offsets (METHOD §5.2) can cross zero, and the rest of the package expects ``s > 0``.

    Args:
        cameras: ``(..., 7)``.

    Returns:
        ``(..., 7)`` with ``s ≥ 0``; rows with ``s ≥ 0`` are unchanged.
    """
    s, t, q = split_camera(cameras)
    neg = s[..., None] < 0
    half_turn = device_constant((0.0, 0.0, 0.0, 1.0), cameras.dtype, cameras.device)
    q = torch.where(neg, quat_multiply(half_turn.expand_as(q), q), q)
    return torch.cat([s[..., None].abs(), t, q], dim=-1)


def cameras_match(a: Tensor, b: Tensor, atol: float = 1e-5) -> Tensor:
    """Elementwise over broadcast ``(..., 7)`` cameras: scale and translation within ``atol`` and the same rotation
    (``1 − |q·q'| ≤ atol``, either sign of the quaternion); ``(...)`` bool."""
    st = (a[..., :3] - b[..., :3]).abs().amax(-1) <= atol
    rot = 1.0 - (a[..., 3:] * b[..., 3:]).sum(-1).abs() <= atol
    return st & rot


def hypothesis_mirrors(cameras: Tensor, atol: float = 1e-5) -> Tensor | None:
    """Pair each hypothesis with its depth mirror in the same set (METHOD §2.3), if the set is closed under it.

    The default grid is: the depth mirror of ``(az, el)`` is ``(180° − az, −el)`` (``Z·R_x(el)·R_y(az)·R_x(b)·D =
    R_x(−el)·R_y(π − az)·R_x(b)``), which is on the grid for an even ``num_az`` and a grid symmetric in elevation
    (zero ``az_bias_deg`` and ``el_bias_deg``); the two side views at zero elevation are their own mirrors. For a
    mirror-symmetric template a hypothesis and its mirror render the same silhouette at every step of Stage I, so
    only one of them needs fitting (:func:`slopekp.train.stage1.fit_hypotheses`, ``mirror_of``).

    Args:
        cameras: ``(P, 7)`` hypotheses.
        atol: the largest difference in scale, translation and rotation (``1 − |q·q'|``) of a match.

    Returns:
        ``(P,)`` int64, ``mirror_of[i]`` the hypothesis that is the depth mirror of ``i`` (``i`` itself for a
        view that is its own mirror); ``None`` if some hypothesis's mirror is not in the set.
    """
    if cameras.dim() != 2 or cameras.shape[-1] != 7:
        raise ValueError(f"cameras must be (P, 7), got {tuple(cameras.shape)}")
    c = cameras.detach().to(torch.float64)
    match = cameras_match(depth_mirror_cameras(c)[:, None], c[None, :], atol)  # (P, P): mirror of i vs camera j
    if not bool((match.sum(-1) == 1).all()):
        return None
    mirror_of = match.to(torch.int64).argmax(-1)
    if not torch.equal(mirror_of[mirror_of], torch.arange(c.shape[0], device=c.device)):
        return None
    return mirror_of.to(cameras.device)


def mirror_representatives(mirror_of: Tensor) -> Tensor:
    """The hypotheses that Stage I fits when mirrors are shared: the first of each pair (and each view that is
    its own mirror), ``(K,)`` int64 in increasing order; the others are their partners' depth mirrors."""
    return torch.nonzero(mirror_of >= torch.arange(mirror_of.numel(), device=mirror_of.device)).reshape(-1)
