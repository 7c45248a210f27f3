"""Shading and colour aggregation: Lambertian face shading and the SoftRas depth-softmax RGB blend."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Lighting", "face_normals", "lambert_factor", "softmax_rgb_blend"]


@dataclass(frozen=True)
class Lighting:
    """Ambient plus one directional light, for visualisation renders (flat, per-face Lambertian shading).

    ``direction`` is in the camera frame (x right, y down, z forward) and points from the surface *towards*
    the light; the default ``(0, 0, -1)`` is a light at the camera. The shaded colour is
    ``albedo · (ambient + directional · max(0, n · direction))`` with ``n`` the unit face normal turned
    towards the camera.
    """

    ambient: float = 0.5
    directional: float = 0.5
    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.ambient, self.directional, *self.direction)):
            raise ValueError(f"Lighting values must be finite, got {self}")
        if len(self.direction) != 3 or sum(v * v for v in self.direction) == 0:
            raise ValueError(f"Lighting.direction must be a non-zero 3-vector, got {self.direction}")


def face_normals(screen_verts: Tensor, faces: Tensor) -> Tensor:
    """Unit normals ``(N, F, 3)`` of screen-space triangles, turned towards the camera (``n_z <= 0``).

    ``screen_verts: (N, V, 3)`` ``[x, y, depth]``; for a weak-perspective camera with ``s > 0`` these are the
    camera-frame normals of the rotated mesh.
    """
    fv = screen_verts[:, faces]  # (N, F, 3, 3)
    n = torch.cross(fv[:, :, 1] - fv[:, :, 0], fv[:, :, 2] - fv[:, :, 0], dim=-1)
    n = torch.where(n[..., 2:3] > 0, -n, n)
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def lambert_factor(normals: Tensor, lighting: Lighting) -> Tensor:
    """Per-face brightness ``ambient + directional·max(0, n·l)``: ``normals (..., 3) -> (...)``."""
    d = torch.tensor(lighting.direction, dtype=normals.dtype, device=normals.device)
    d = d / d.norm()
    return lighting.ambient + lighting.directional * (normals * d).sum(-1).clamp(min=0)


def softmax_rgb_blend(
    pix: Tensor,
    prob: Tensor,
    depth: Tensor,
    colours: Tensor,
    *,
    num_pixels: int,
    gamma: float,
    near: float,
    far: float,
    background: Tensor,
    bg_eps: float = 1e-3,
) -> Tensor:
    """SoftRas ``softmax`` colour aggregation over face-pixel pairs.

    For each pixel ``p`` with pairs ``j``: ``zn_j = (far - z_j)/(far - near)`` (1 at near, 0 at far),
    ``w_j = D_j·exp((zn_j - m_p)/gamma)``, background weight ``w_b = exp((bg_eps - m_p)/gamma)`` with
    ``m_p = max(bg_eps, max_j zn_j)`` (a constant shift for stability, which cancels), and
    ``rgb_p = (sum_j w_j c_j + w_b·background) / (sum_j w_j + w_b)``.

    Args:
        pix: ``(M,)`` int64 flat pixel index in ``[0, num_pixels)``.
        prob: ``(M,)`` ``D_j``; depth: ``(M,)``; colours: ``(M, C)``.
        num_pixels: number of pixels in the flattened image stack.
        gamma: temperature; near, far: depth range; background: ``(C,)``; bg_eps: background's normalised
        depth.

    Returns:
        ``(num_pixels, C)`` colours.
    """
    zn = (far - depth) / (far - near)
    zmax = torch.full((num_pixels,), bg_eps, dtype=depth.dtype, device=depth.device)
    zmax = zmax.scatter_reduce(0, pix, zn.detach(), "amax")
    w = prob * torch.exp((zn - zmax[pix]) / gamma)
    w_bg = torch.exp((bg_eps - zmax) / gamma)
    c = colours.shape[1]
    num = (background.to(colours.dtype) * w_bg.unsqueeze(1)).index_add(0, pix, colours * w.unsqueeze(1))
    den = w_bg.index_add(0, pix, w)
    return num / den.unsqueeze(1).expand(-1, c)
