"""Texture look-ups for the renderer: sphere-UV mapping (METHOD §3.4) and bilinear UV-image sampling.

UV convention: ``verts_uv`` in [-1, 1]², read as spherical coordinates ``phi = pi·u`` (azimuth) and
``theta = pi·(v + 1)/2`` (inclination), i.e. the unit-sphere point ``(sin θ cos φ, sin θ sin φ, cos θ)``. The
renderer interpolates these *sphere points* with per-pixel barycentrics, maps the result back to ``(u, v)``
and adds the U-CMR ``texture_uvshift`` (``u <- u + 0.5``, wrapped into [-1, 1)), then samples the UV image at
``(u, v)`` like ``grid_sample(..., align_corners=True, padding_mode="border")``: ``u = -1`` is the left
column, ``v = -1`` the top row. ``sample_sphere_uv`` fuses interpolation, mapping and sampling with an analytic
backward (the soft RGB renderer's path; ``sample_bilinear`` and ``sphere_to_uv`` are its autograd reference).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["UV_SHIFT", "sample_bilinear", "sample_sphere_uv", "sphere_to_uv", "uv_to_sphere"]

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


class _SphereUVSample(torch.autograd.Function):
    """``sample_bilinear(images, row, sphere_to_uv(sum_k bary_k·corner_k, shift))`` with an analytic backward
    (w.r.t. ``bary`` and ``images``), in component-major layouts: ``bary (3, M)``, colours ``(C, M)``.

    The texture is read in place: one int64 index per sample (its top-left texel in channel 0) and a shifted
    view of the flat texture for each corner and channel. The forward pass keeps the texture's slopes ``d
    colour / d (ix, iy)`` (``(2, C, M)``) and the geometric Jacobian ``d (ix, iy) / d bary`` (``(2, 3, M)``),
    so the backward pass w.r.t. ``bary`` is ``2 C + 6`` multiply-adds and keeps no sphere-to-UV
    intermediates; w.r.t. the texture it scatters the bilinear weights (``fx``, ``fy``). With ``bary_index``
    (``(L,)``), the samples use the columns ``bary[:, bary_index]`` of ``bary (3, M)`` (the others get a zero
    gradient).
    """

    @staticmethod
    def forward(ctx, bary, images, table, prim, row, shift, bary_index=None):
        t, c, hu, wu = images.shape
        ctx.num_bary = bary.shape[1]
        bary = take_columns(bary, bary_index)
        m = bary.shape[1]
        need_bary = ctx.needs_input_grad[0]
        s = bary.new_empty(9, m)  # corner k's x, y, z at rows 3k, 3k + 1, 3k + 2
        for r in range(9):
            torch.index_select(table[r], 0, prim, out=s[r])
        b0, b1, b2 = bary[0], bary[1], bary[2]
        x, y, z = (torch.addcmul(torch.addcmul(b0 * s[k], b1, s[3 + k]), b2, s[6 + k]) for k in range(3))
        # sphere_to_uv
        r2xy = torch.addcmul(x * x, y, y)
        pole = r2xy < 1e-20
        u = torch.atan2(y.masked_fill(pole, 0), x.masked_fill(pole, 1)).div_(math.pi)
        norm_raw = torch.addcmul(r2xy, z, z).sqrt_()
        norm = norm_raw.clamp(min=1e-12)
        cos_raw = z / norm
        cos_t = cos_raw.clamp(-1 + 1e-7, 1 - 1e-7)
        v = torch.acos(cos_t).mul_(2).div_(math.pi).sub_(1)
        u = torch.remainder(u.add_(shift + 1), 2).sub_(1)
        # bilinear, border padding, align_corners=True
        ix_raw = u.add_(1).mul_(0.5 * (wu - 1))
        iy_raw = v.add_(1).mul_(0.5 * (hu - 1))
        x0 = ix_raw.clamp(0, wu - 1)
        y0 = iy_raw.clamp(0, hu - 1)
        if need_bary:  # the clamps pass the gradient where they return their input
            in_x = x0 == ix_raw
            in_y = (y0 == iy_raw).logical_and_(cos_t == cos_raw)
        fx = x0.clone()
        fy = y0.clone()
        x0.floor_().clamp_(max=max(wu - 2, 0))
        y0.floor_().clamp_(max=max(hu - 2, 0))
        fx.sub_(x0)
        fy.sub_(y0)
        plane = hu * wu
        if plane <= 2 / torch.finfo(x0.dtype).eps:  # y0·wu + x0 is exact in floating point
            itex = torch.addcmul(x0, y0, y0.new_full((), wu)).long()
        else:
            itex = y0.long().mul_(wu).add_(x0.long())
        del x0, y0
        i00 = itex.add(row, alpha=c * plane)  # channel-0 texel in the flat (T, C, Hu, Wu) texture
        itex.add_(row, alpha=plane)  # texel in a flat (T, Hu, Wu) plane, for the backward
        if need_bary:
            # d ix / d p and d iy / d p (p = x, y, z); the clamps pass the gradient inside [0, size - 1]
            a = in_x.to(x.dtype).mul_(0.5 * (wu - 1) / math.pi).div_(r2xy)
            a.masked_fill_(pole, 0)  # u = atan2(y, x)/pi: du/dx = -y/(pi r²), du/dy = x/(pi r²); 0 at the poles
            pux, puy = -a * y, a.mul_(x)
            # v = 2 acos(cos)/pi - 1, cos = clamp(z/n): dv/dcos = -2/(pi sqrt(1 - cos²)); with n = |p| (not
            # clamped) dcos/dp = (e_z - cos·p/n)/n
            gc = torch.addcmul(torch.ones_like(cos_t), cos_t, cos_t, value=-1).rsqrt_().mul_(-(hu - 1) / math.pi)
            gc.mul_(in_y.to(x.dtype))
            gc.div_(norm)
            pvz = gc.clone()
            gn = gc.mul_(cos_raw).masked_fill_(norm_raw < 1e-12, 0).div_(norm)
            pvx = gn * x
            pvy = gn * y
            pvz.addcmul_(gn, z, value=-1)
            pvx.neg_()
            pvy.neg_()
            geo = bary.new_empty(2, 3, m)  # d ix / d bary_k, d iy / d bary_k
            for k in range(3):
                torch.mul(pux, s[3 * k], out=geo[0, k]).addcmul_(puy, s[3 * k + 1])
                torch.mul(pvx, s[3 * k], out=geo[1, k]).addcmul_(pvy, s[3 * k + 1]).addcmul_(pvz, s[3 * k + 2])
            del a, pux, puy, pvx, pvy, pvz, gc, gn, in_x, in_y
            slope = bary.new_empty(2, c, m)  # d colour / d ix, d colour / d iy
        del s, x, y, z, r2xy, pole, norm_raw, norm, cos_raw, cos_t, u, v, ix_raw, iy_raw
        flat = images.reshape(-1)
        offsets = _corner_offsets(wu, hu)
        out = images.new_empty(c, m)
        for ch in range(c):
            v00, v01, v10, v11 = (flat[ch * plane + o :].index_select(0, i00) for o in offsets)
            d0 = v01.sub_(v00)
            d1 = v11.sub_(v10)
            top = v00.addcmul_(fx, d0)
            bot = v10.addcmul_(fx, d1)
            dy = torch.sub(bot, top, out=slope[1, ch]) if need_bary else bot.sub_(top)  # d colour / d iy
            torch.addcmul(top, fy, dy, out=out[ch])
            if need_bary:
                torch.lerp(d0, d1, fy, out=slope[0, ch])  # d colour / d ix
        ctx.shape = images.shape
        ctx.save_for_backward(fx, fy, itex, slope if need_bary else None, geo if need_bary else None, bary_index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        fx, fy, itex, slope, geo, bary_index = ctx.saved_tensors
        t, c, hu, wu = ctx.shape
        grad_bary = grad_images = None
        if ctx.needs_input_grad[1]:
            # channel-major accumulator (C, T·Hu·Wu): one index_add_ per corner for all channels (several times
            # faster on CPU than one per corner and channel), then one transposing copy
            acc = grad_out.new_zeros(c, t * hu * wu)
            w11 = fx * fy
            w01 = fx - w11
            w10 = fy - w11
            w00 = (1 - fx).sub_(w10)
            tmp = torch.empty_like(grad_out)
            for o, wgt in zip(_corner_offsets(wu, hu), (w00, w01, w10, w11)):
                acc[:, o:].index_add_(1, itex, torch.mul(grad_out, wgt, out=tmp))
            grad_images = acc.view(c, t, hu, wu).transpose(0, 1).contiguous()
        if ctx.needs_input_grad[0]:
            gi = slope[:, 0] * grad_out[0]  # (2, M): dL/dix, dL/diy
            for ch in range(1, c):
                gi.addcmul_(slope[:, ch], grad_out[ch])
            grad_bary = torch.mul(geo[0], gi[0]).addcmul_(geo[1], gi[1])  # (3, M)
            grad_bary = put_columns(grad_bary, bary_index, ctx.num_bary)
        return grad_bary, grad_images, None, None, None, None, None


def take_columns(t: Tensor, index: Tensor | None) -> Tensor:
    """``t[..., index]`` for ``t (M,)`` or ``(K, M)`` (one 1-D gather per row: several times faster on CPU than
    ``index_select`` along dim 1); ``t`` itself when ``index`` is None. No autograd."""
    if index is None:
        return t
    if t.dim() == 1:
        return t.index_select(0, index)
    out = t.new_empty(t.shape[0], index.shape[0])
    for r in range(t.shape[0]):
        torch.index_select(t[r], 0, index, out=out[r])
    return out


def put_columns(t: Tensor, index: Tensor | None, num: int) -> Tensor:
    """Adjoint of ``take_columns``: ``t (..., L)`` added into the columns ``index`` of zeros ``(..., num)``
    (repeated columns accumulate; a 1-D ``scatter_add_`` per row is the fastest CPU scatter here)."""
    if index is None:
        return t
    out = t.new_zeros(*t.shape[:-1], num)
    if t.dim() == 1:
        return out.scatter_add_(0, index, t)
    for r in range(t.shape[0]):
        out[r].scatter_add_(0, index, t[r])
    return out


def _corner_offsets(wu: int, hu: int) -> tuple[int, int, int, int]:
    """Flat offsets of the texels right of, below and below-right of the top-left one (0 on a side of one
    texel, where ``x1 = x0``)."""
    dx = 1 if wu > 1 else 0
    dy = wu if hu > 1 else 0
    return 0, dx, dy, dx + dy


def sample_sphere_uv(
    images: Tensor,
    image_index: Tensor,
    corners: Tensor,
    prim: Tensor,
    bary: Tensor,
    shift: float = UV_SHIFT,
    *,
    bary_index: Tensor | None = None,
) -> Tensor:
    """Colours ``(C, M)`` of samples interpolated on triangles of sphere points.

    Sample ``m`` lies on triangle ``prim[m]`` (``(M,)`` int64) whose corners are the columns ``corners[:,
    prim[m]]`` of ``corners (9, K)`` (corner ``k``'s ``x, y, z`` at rows ``3k, 3k+1, 3k+2``), with barycentrics
    ``bary[:, m]`` (``(3, M)``); the point ``sum_k bary_k·corner_k`` is mapped to ``(u, v)`` by
    ``sphere_to_uv(..., shift)`` and sampled bilinearly in ``images[image_index[m]]`` (``images (T, C, Hu,
    Wu)``). Same values and gradients (w.r.t. ``bary`` and ``images``) as ``sample_bilinear(images,
    image_index, sphere_to_uv(sum_k bary_k·corner_k, shift))``, with an analytic backward; ``corners`` gets no
    gradient.

    ``bary_index``: optional ``(M,)`` int64; sample ``m`` then uses the column ``bary_index[m]`` of ``bary (3,
    K)`` (the gradient w.r.t. ``bary`` is ``(3, K)``, zero in the columns not used), which saves the caller a
    differentiable gather.
    """
    return _SphereUVSample.apply(bary, images, corners, prim, image_index, shift, bary_index)
