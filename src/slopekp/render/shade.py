"""Shading and colour aggregation: Lambertian face shading and the SoftRas depth-softmax RGB blend."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from slopekp.mesh.topology import face_normals
from slopekp.render.texture import put_columns, take_columns

__all__ = ["Lighting", "SoftmaxWeights", "camera_facing_normals", "lambert_factor", "softmax_rgb_blend",
           "softmax_weights"]  # fmt: skip


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


def camera_facing_normals(screen_verts: Tensor, faces: Tensor) -> Tensor:
    """Unit normals ``(N, F, 3)`` of screen-space triangles (:func:`slopekp.mesh.topology.face_normals`), turned
    towards the camera (``n_z <= 0``).

    ``screen_verts: (N, V, 3)`` ``[x, y, depth]``; for a weak-perspective camera with ``s > 0`` these are the
    camera-frame normals of the rotated mesh.
    """
    n = face_normals(screen_verts, faces, normalize=False)
    n = torch.where(n[..., 2:3] > 0, -n, n)
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def lambert_factor(normals: Tensor, lighting: Lighting) -> Tensor:
    """Per-face brightness ``ambient + directional·max(0, n·l)``: ``normals (..., 3) -> (...)``."""
    d = torch.tensor(lighting.direction, dtype=normals.dtype, device=normals.device)
    d = d / d.norm()
    return lighting.ambient + lighting.directional * (normals * d).sum(-1).clamp(min=0)


_INT_OF = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
           torch.bfloat16: torch.int16}


def _pixel_max(pix: Tensor, values: Tensor, num_pixels: int, floor: float) -> Tensor:
    """``max(floor, max_j values_j)`` per pixel (``floor >= 0``). Non-negative floats order like their bit
    patterns read as integers, and an integer ``amax`` scatter is several times faster than a float one on
    CPU; values below 0 cannot change the result and are clamped to 0 first."""
    dtype = values.dtype
    start = torch.full((num_pixels,), floor, dtype=dtype, device=values.device)
    if dtype not in _INT_OF or floor < 0:
        return start.scatter_reduce_(0, pix, values, "amax")
    itype = _INT_OF[dtype]
    keys = values.clamp(min=0).view(itype)
    return start.view(itype).scatter_reduce_(0, pix, keys, "amax").view(dtype)


_COMPACT_BELOW = 0.9
"""``softmax_weights`` selects the live pairs when fewer than this fraction of all pairs is live (measured on
``rgb16_64``, one core: gathering the pairs' data and scattering their gradients back costs about a tenth of
what sampling the texture at a pair costs, forward and backward)."""


class SoftmaxWeights(NamedTuple):
    """Depth-softmax weights of face-pixel pairs, before the coverage factor ``D`` (``softmax_weights``).

    ``index``: ``(L,)`` int64, ascending: the pairs whose colour is needed. It holds every *live* pair, whose
    weight is not flushed to 0 (all others contribute exactly nothing to the colour, nor receive a gradient
    from it), and is ``arange(M)`` when nearly all pairs are live. ``e``: ``(L,)`` ``exp((zn_j - m_p)/gamma)``
    of those pairs, in ``[0, 1]`` (0 exactly for dead pairs). ``zmax``: ``(P,)`` the per-pixel shift ``m_p``.
    ``num_pairs``: ``M``, the number of pairs the index refers to.
    """

    index: Tensor
    e: Tensor
    zmax: Tensor
    num_pairs: int


def softmax_weights(
    pix: Tensor, depth: Tensor, *, num_pixels: int, gamma: float, near: float, far: float, bg_eps: float = 1e-3
) -> SoftmaxWeights:
    """The pairs that need a colour and their depth weights (no gradient), as ``softmax_rgb_blend`` forms them.

    A pair is live when ``(zn_j - m_p)/gamma`` is at least the log of the dtype's smallest normal number;
    others get weight exactly 0 (see ``softmax_rgb_blend``). With ``gamma = 1e-4`` over ``[near, far] = [1,
    100]`` a pair more than ~0.9 depth units behind its pixel's front surface is dead in float32 (~7 units in
    float64). The index lists the live pairs, or all pairs when at least ``_COMPACT_BELOW`` of them are live or
    the pairs are not on the CPU (where counting them would be a host synchronisation).
    Pass the result to ``softmax_rgb_blend(..., weights=...)`` with colours for the indexed pairs only, so
    that colours (e.g. texture samples) need not be computed for the others.
    """
    with torch.no_grad():
        zn = (far - depth) / (far - near)
        zmax = _pixel_max(pix, zn, num_pixels, bg_eps)
        x = zn.sub_(zmax.index_select(0, pix)).div_(gamma)
        # weights below the smallest normal number are flushed to 0 (exp is several times slower when its
        # result underflows; such a weight is < 1e-38 of the pixel's front pair, D >= eps, or background)
        live = x >= math.log(torch.finfo(x.dtype).tiny)
        m = x.shape[0]
        # off the CPU, counting the live pairs would make the host wait for the device: keep them all there
        if x.device.type != "cpu" or int(live.sum()) >= _COMPACT_BELOW * m:
            # (nearly) all live: keep every pair (dead ones with e = 0), compaction would cost more than it saves
            index = torch.arange(m, device=x.device)
            e = torch.exp(x.mul_(live)).mul_(live)
        else:
            index = torch.nonzero(live).squeeze(1)
            e = torch.exp(x.index_select(0, index))
    return SoftmaxWeights(index, e, zmax, m)


class _SoftmaxBlend(torch.autograd.Function):
    """Forward as documented in ``softmax_rgb_blend`` over the live pairs ``index`` (weights ``e``, shift
    ``zmax`` from ``softmax_weights``), colours component-major ``(C, L)``; analytic backward.

    With ``den_p = sum_j w_j + w_b`` and ``rgb_p``: ``dL/dc_j = w_j g_p / den_p``, ``dL/dw_j = g_p·(c_j -
    rgb_p) / den_p``, ``dL/dD_j = dL/dw_j·e_j``, ``dL/dz_j = -dL/dw_j·w_j / (gamma (far - near))`` (``e_j =
    exp((zn_j - m_p)/gamma)``; ``m_p`` is a constant shift) and ``dL/dbackground = sum_p w_b g_p / den_p``.
    Dead pairs (not in ``index``) get exactly 0.
    """

    @staticmethod
    def forward(ctx, pix, prob, depth, colours, background, index, e, zmax, num_pairs, gamma, near, far, bg_eps):
        c = colours.shape[0]
        sel = None if index.shape[0] == num_pairs else index
        pix = take_columns(pix, sel)
        prob = take_columns(prob, sel)
        src = e.new_empty(c + 1, e.shape[0])  # w_j c_j and w_j: one index_add_ for all channels
        w = torch.mul(prob, e, out=src[c])
        torch.mul(colours, w, out=src[:c])
        x_bg = (bg_eps - zmax).div_(gamma)
        live_bg = x_bg >= math.log(torch.finfo(x_bg.dtype).tiny)  # flushed like the pairs' weights
        w_bg = torch.exp(x_bg.mul_(live_bg)).mul_(live_bg)
        acc = torch.cat([background.to(colours.dtype).view(c, 1) * w_bg, w_bg.unsqueeze(0)])  # (C + 1, P)
        acc.index_add_(1, pix, src)
        inv_den = acc[c].reciprocal()
        rgb = acc[:c].mul_(inv_den)
        ctx.save_for_backward(pix, prob, e, colours, rgb, inv_den, w_bg, sel)  # w = prob·e is recomputed
        ctx.num_pairs = num_pairs
        ctx.scale = 1.0 / (gamma * (far - near))
        ctx.bg_dtype = background.dtype
        return rgb

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rgb):
        pix, prob, e, colours, rgb, inv_den, w_bg, sel = ctx.saved_tensors
        m = ctx.num_pairs
        w = prob * e
        gnum = grad_rgb * inv_den  # (C, P)
        r = (gnum * rgb).sum(0)
        gp = gnum.index_select(1, pix)  # (C, L)
        gw = (gp * colours).sum(0).sub_(r.index_select(0, pix))
        grad_prob = put_columns(gw * e, sel, m) if ctx.needs_input_grad[1] else None
        grad_depth = put_columns((gw * w).mul_(-ctx.scale), sel, m) if ctx.needs_input_grad[2] else None
        grad_col = gp.mul_(w) if ctx.needs_input_grad[3] else None
        grad_bg = (gnum * w_bg).sum(1).to(ctx.bg_dtype) if ctx.needs_input_grad[4] else None
        return (None, grad_prob, grad_depth, grad_col, grad_bg) + (None,) * 8


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
    weights: SoftmaxWeights | None = None,
) -> Tensor:
    """SoftRas ``softmax`` colour aggregation over face-pixel pairs.

    For each pixel ``p`` with pairs ``j``: ``zn_j = (far - z_j)/(far - near)`` (1 at near, 0 at far),
    ``w_j = D_j·exp((zn_j - m_p)/gamma)``, background weight ``w_b = exp((bg_eps - m_p)/gamma)`` with
    ``m_p = max(bg_eps, max_j zn_j)`` (a constant shift for stability, which cancels), and
    ``rgb_p = (sum_j w_j c_j + w_b·background) / (sum_j w_j + w_b)``.

    Weights whose ``exp`` falls below the dtype's smallest normal number (``< 1e-38`` in float32) count as 0
    (the background's too): such a pair is negligible next to the pixel's front pair (``D >= eps``) or the
    background. The backward pass is analytic (one gather per channel; the only scatters put the gradients of
    ``prob`` and ``depth`` back in place when dead pairs were left out).

    With ``weights = softmax_weights(pix, depth, ...)`` (same ``num_pixels``, ``gamma``, ``near``, ``far``,
    ``bg_eps``), ``colours`` holds the live pairs' colours only, ``(L, C)`` in ``weights.index`` order: the
    result is the same (dead pairs add exact zeros), and colours need not be computed for dead pairs.

    Args:
        pix: ``(M,)`` int64 flat pixel index in ``[0, num_pixels)``.
        prob: ``(M,)`` ``D_j``; depth: ``(M,)``; colours: ``(M, C)``, or ``(L, C)`` with ``weights``.
        num_pixels: number of pixels in the flattened image stack.
        gamma: temperature; near, far: depth range; background: ``(C,)``; bg_eps: background's normalised
        depth.
        weights: optional ``softmax_weights`` of these pairs (see above).

    Returns:
        ``(num_pixels, C)`` colours (a transposed view of a channel-major ``(C, num_pixels)`` tensor).
    """
    dt = depth.dtype
    if weights is None:
        weights = softmax_weights(pix, depth, num_pixels=num_pixels, gamma=gamma, near=near, far=far,
                                  bg_eps=bg_eps)
        if weights.index.shape[0] != pix.shape[0]:
            colours = colours.index_select(0, weights.index)
    elif weights.num_pairs != pix.shape[0] or weights.index.shape[0] != colours.shape[0]:
        raise ValueError(
            f"weights are for {weights.num_pairs} pairs with {weights.index.shape[0]} live, got {pix.shape[0]} "
            f"pairs and {colours.shape[0]} colours"
        )
    rgb = _SoftmaxBlend.apply(
        pix, prob.to(dt), depth, colours.T.to(dt), background, weights.index, weights.e.to(dt), weights.zmax,
        weights.num_pairs, gamma, near, far, bg_eps,
    )
    return rgb.T
