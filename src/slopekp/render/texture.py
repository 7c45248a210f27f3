"""Texture look-ups for the renderer: sphere-UV mapping (METHOD §3.4) and bilinear UV-image sampling.

UV convention: ``verts_uv`` in [-1, 1]², read as spherical coordinates ``phi = pi·u`` (azimuth) and
``theta = pi·(v + 1)/2`` (inclination), i.e. the unit-sphere point ``(sin θ cos φ, sin θ sin φ, cos θ)``. The
renderer interpolates these *sphere points* with per-pixel barycentrics, maps the result back to ``(u, v)``
and adds the U-CMR ``texture_uvshift`` (``u <- u + 0.5``, wrapped into [-1, 1)), then samples the UV image at
``(u, v)`` like ``grid_sample(..., align_corners=True, padding_mode="border")``: ``u = -1`` is the left
column, ``v = -1`` the top row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["UV_SHIFT", "sample_bilinear", "sphere_to_uv", "uv_to_sphere"]

UV_SHIFT = 0.5
"""U-CMR ``texture_uvshift``: added to ``u`` after the sphere round trip (moves the azimuth seam)."""


def uv_to_sphere(uv: Tensor) -> Tensor:
    """Map ``uv: (..., 2)`` in [-1, 1]² to unit-sphere points ``(..., 3)`` (``phi = pi·u``, ``theta =
    pi·(v+1)/2``)."""
    phi = math.pi * uv[..., 0]
    theta = math.pi * (uv[..., 1] + 1) / 2
    st = torch.sin(theta)
    return torch.stack([st * torch.cos(phi), st * torch.sin(phi), torch.cos(theta)], -1)


def sphere_to_uv(points: Tensor, shift: float = UV_SHIFT) -> Tensor:
    """Map points ``(..., 3)`` (any non-zero norm) back to ``(u, v): (..., 2)``, then ``u <- wrap(u +
    shift)``.

    ``u = atan2(y, x)/pi`` wrapped into [-1, 1), ``v = 2·acos(z/|p|)/pi - 1``. Gradients are kept finite at
    the poles (``x = y = 0``) and at ``|z| = |p|`` by clamping.
    """
    x, y, z = points.unbind(-1)
    r2xy = x * x + y * y
    pole = r2xy < 1e-20
    safe_y = torch.where(pole, torch.zeros_like(y), y)
    safe_x = torch.where(pole, torch.ones_like(x), x)
    u = torch.atan2(safe_y, safe_x) / math.pi
    norm = torch.sqrt(r2xy + z * z).clamp(min=1e-12)
    cos_t = (z / norm).clamp(-1 + 1e-7, 1 - 1e-7)
    v = 2 * torch.acos(cos_t) / math.pi - 1
    u = torch.remainder(u + shift + 1, 2) - 1
    return torch.stack([u, v], -1)


def sample_bilinear(images: Tensor, image_index: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples of ``images: (T, C, Hu, Wu)`` at ``uv: (M, 2)`` in image ``image_index: (M,)``.

    Same values and gradients as ``grid_sample(images[image_index], uv, align_corners=True,
    padding_mode="border")`` without materialising one image per sample. Returns ``(M, C)``.
    """
    t, c, hu, wu = images.shape
    ix = ((uv[:, 0] + 1) * (0.5 * (wu - 1))).clamp(0, wu - 1)
    iy = ((uv[:, 1] + 1) * (0.5 * (hu - 1))).clamp(0, hu - 1)
    x0 = ix.detach().floor().clamp(max=max(wu - 2, 0)).long()
    y0 = iy.detach().floor().clamp(max=max(hu - 2, 0)).long()
    fx = (ix - x0.to(ix.dtype)).unsqueeze(1)
    fy = (iy - y0.to(iy.dtype)).unsqueeze(1)
    x1 = (x0 + 1).clamp(max=wu - 1)
    y1 = (y0 + 1).clamp(max=hu - 1)
    flat = images.permute(0, 2, 3, 1).reshape(t * hu * wu, c)
    base = image_index * (hu * wu)
    v00 = flat.index_select(0, base + y0 * wu + x0)
    v01 = flat.index_select(0, base + y0 * wu + x1)
    v10 = flat.index_select(0, base + y1 * wu + x0)
    v11 = flat.index_select(0, base + y1 * wu + x1)
    top = v00 + (v01 - v00) * fx
    bot = v10 + (v11 - v10) * fx
    return top + (bot - top) * fy
