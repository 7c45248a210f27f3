"""The pure-PyTorch soft silhouette and soft RGB pairs over the planned blocks (:mod:`slopekp.render.plan`), with
one analytic backward (``torch.autograd.Function``). The reference path, and the CPU path; the fused Triton kernels
(:mod:`slopekp.render.fused`) compute the same. Conventions: :mod:`slopekp.render.rasterize`.

Soft silhouette (SoftRas, Liu et al. 2019): ``D_j = sigmoid(delta_j · d_j² / sigma)``, ``delta = +1`` inside
the triangle and ``-1`` outside, ``d`` the Euclidean NDC distance from the pixel centre to the triangle's
boundary (the minimum over its three edge segments), and
``alpha = 1 - prod_j (1 - D_j) = 1 - exp(sum_j log(1 - D_j))``. Pairs with ``D_j < eps`` (outside and farther
than the cut-off radius ``r``) are ignored by definition, as in SoftRas. The silhouette's backward pass is analytic
(``torch.autograd.Function``, chosen by measurement: on ``soft16_64`` its backward took 0.03 s where
autograd through the same arithmetic took 0.36 s, and the forward no longer records a graph): with ``c_j =
dL/d(d_j²)`` and the closest boundary point ``q = sum_v beta_v v_v``, ``d(d²)/dv_v = -2 beta_v (p - q)``. The
forward pass keeps ``beta``, ``p - q``, ``d log(1 - D)/d(d²)`` and the pixel index per block element (6 floats and
an int64; this, not ``max_pairs``, sets the memory kept for backward), and the backward is one gather and a few
reductions per block.

RGB pairs (``return_pairs``) come out of the same pass and share its backward (chosen by measurement: on
``rgb16_64``, one core, autograd through separately enumerated pairs took 0.03 s forward and 0.06 s backward;
the shared pass adds about 0.006 s and 0.009 s to the silhouette's): the kept elements of each block are
compacted face-major (``nonzero``), ``D = sigmoid(delta·d²/sigma)`` and the raw barycentrics ``b_k = w_k/A``
(the kernel's signed edge distances times ``|e_k|/|A|``) are gathered, then clamped, renormalised and
interpolated into depth.
Backward: ``dL/dD`` joins the silhouette's ``dL/d(d²)`` inside the blocks (``dD/d(d²) = -(1 - D)·coef``),
and ``dL/dbary``, ``dL/ddepth`` reduce to 13 sums per face (one ``index_add_``), from which the corner
gradients follow because ``w_k`` is linear in the pixel centre ``p = v_0 + b_1 e_1 + b_2 e_2``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from slopekp.render.plan import (
    Block,
    Plan,
    SilhouettePairs,
    block_grid,
    corners,
    edge_functions,
    face_row,
    make_plan,
    soft_cutoff_radius,
)

__all__ = ["soft_pairs", "soft_silhouette"]


# ------------------------------------------------------------------------------------------------------------
# soft silhouette with an analytic backward
# ------------------------------------------------------------------------------------------------------------
def _depth_ok(w: list[Tensor], area2: Tensor, z: Tensor, near: float, far: float) -> Tensor:
    """Clamped-barycentric depth inside ``[near, far]``; ``area2: (Fb,)``, ``z: (3, Fb)``."""
    b = [(wk / face_row(area2)).clamp(0, 1) for wk in w]
    depth = (b[0] * face_row(z[0]) + b[1] * face_row(z[1]) + b[2] * face_row(z[2])) / (b[0] + b[1] + b[2])
    return (depth >= near) & (depth <= far)


class _SilhouetteBlock(NamedTuple):
    """What the backward pass needs from one block (layout ``(..., wy, wx, Fb)``)."""

    coef: Tensor  # (wy, wx, Fb) d(log(1 - D))/d(d²), 0 for dropped pairs
    beta: list[Tensor]  # 3 x (wy, wx, Fb) closest boundary point as a combination of the face's vertices
    r: list[Tensor]  # 2 x (wy, wx, Fb) pixel centre minus the closest boundary point
    pix: Tensor  # (wy, wx, Fb) flat pixel index of each element (the forward's, not planned again)


class _PairBlock(NamedTuple):
    """Kept pairs of one block, face-major (the pairs of a face are consecutive)."""

    ints: Tensor  # (3, Mb) int64: element index in the flattened (wy, wx, Fb) block, flat pixel, flat face
    floats: Tensor  # (4, Mb): -delta·d²/sigma (D = sigmoid(-z)), then the signed distances to the edge lines
    # k = 0, 1, 2 (> 0 inside; w_k·sign(A)/|e_k|)


def _edge_table(fxy: Tensor, area2: Tensor) -> Tensor:
    """Per-face constants ``(24, G)`` of the silhouette kernel: corner x (3), corner y (3), then per edge k
    (from ``v_{k+1}`` to ``v_{k+2}``): ``sign(A)·(ex, ey)/|e|`` (2, so that ``w/|e|`` is the signed distance
    to the edge line, positive inside), ``(ex, ey)/|e|²`` (2) and ``(ex, ey)`` (2). Faces with ``A = 0``
    give non-finite columns; they are never live."""
    gx, gy = fxy[0], fxy[1]  # (3, G)
    sign_a = torch.sign(area2)
    cols = [gx[0], gx[1], gx[2], gy[0], gy[1], gy[2]]
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        ex, ey = gx[b] - gx[a], gy[b] - gy[a]
        len2 = ex * ex + ey * ey
        s_len = sign_a * torch.rsqrt(len2)
        cols += [ex * s_len, ey * s_len, ex / len2, ey / len2, ex, ey]
    return torch.stack(cols)


def _silhouette_block(
    blk: Block, plan: Plan, table: Tensor, fxy: Tensor, fz: Tensor, area2: Tensor, sigma: float, r2: float,
    near: float, far: float, need_grad: bool, want_pairs: bool = False,
) -> tuple[Tensor, Tensor, _SilhouetteBlock | None, _PairBlock | None]:
    """``log(1 - D)`` per block element (0 where dropped), the flat pixel index, backward data and, with
    ``want_pairs``, the kept pairs of the block.

    Float-only arithmetic (no boolean masks or ``where``, which are several times slower on CPU): the inside
    sign comes from the minimum signed edge distance, the cut-off from ``threshold``, the closest edge is
    tracked with ``lerp``.
    """
    grid = block_grid(blk, plan, fxy.dtype)
    col = [face_row(c) for c in table.index_select(1, blk.g)]  # 24 x (1, 1, Fb)
    dx = [grid.px - col[v] for v in range(3)]  # (1, wx, Fb)
    dy = [grid.py - col[3 + v] for v in range(3)]  # (wy, 1, Fb)
    m = d2 = None
    wn = []
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        nx, ny, tx, ty, ex, ey = col[6 + 6 * k : 12 + 6 * k]
        qx, qy = dx[a], dy[a]
        wk = nx * qy - ny * qx  # signed distance to the edge line, > 0 inside
        wn.append(wk)
        m = wk if m is None else torch.minimum(m, wk)
        t = (qx * tx + qy * ty).clamp_(0, 1)
        rx = qx - t * ex
        ry = qy - t * ey
        dk = rx * rx
        dk.addcmul_(ry, ry)
        if d2 is None:
            d2, brx, bry = dk, rx, ry
            if need_grad:
                beta = [torch.zeros_like(t), 1 - t, t]  # edge 0 runs v1 -> v2
        else:
            if need_grad:
                sel = (d2 - dk).sign_().clamp_(min=0)  # 1 where this edge is strictly closer
                brx = torch.lerp(brx, rx, sel)
                bry = torch.lerp(bry, ry, sel)
                beta[a] = torch.lerp(beta[a], 1 - t, sel)
                beta[b] = torch.lerp(beta[b], t, sel)
                beta[k] = beta[k].addcmul_(beta[k], sel, value=-1.0)
            d2 = torch.minimum(d2, dk)
    delta = torch.sign(m)  # +1 inside, -1 outside, 0 on an edge (where d = 0)
    z = delta * d2  # delta·d²: pairs with z <= -r² (outside, beyond the cut-off) are dropped
    z = torch.nn.functional.threshold(z, -r2, -math.inf)
    if blk.crossing:
        w = edge_functions(*corners(fxy, blk.g), grid.px, grid.py)
        fzb = fz.index_select(1, blk.g)
        z.masked_fill_(~_depth_ok(w, area2.index_select(0, blk.g), fzb, near, far), -math.inf)
    one_minus_d = torch.sigmoid(z.mul_(-1.0 / sigma))  # 1 - D = sigmoid(-delta d²/sigma), 1 where dropped
    ls = torch.log(one_minus_d)
    saved = None
    if need_grad:
        coef = (one_minus_d - 1).mul_(delta).mul_(1.0 / sigma)  # -D·delta/sigma
        saved = _SilhouetteBlock(coef, beta, [brx, bry], grid.pix)
    pairs = None
    if want_pairs:
        # kept elements (z = -delta d²/sigma is +inf exactly where the pair was dropped), face-major: the
        # pairs of a face are consecutive, which keeps the later per-face gathers and texture look-ups local
        fb, area = blk.g.shape[0], blk.wy * blk.wx
        keep = (z < math.inf).permute(2, 0, 1).reshape(fb, area)
        slot, px = torch.nonzero(keep, as_tuple=True)  # 2-D: no integer division by the window area
        ints = slot.new_empty(3, slot.shape[0])  # block element, flat pixel, flat face
        idx = torch.mul(px, fb, out=ints[0]).add_(slot)  # element index in the (wy, wx, Fb) block
        torch.index_select(grid.pix.reshape(-1), 0, idx, out=ints[1])
        torch.index_select(blk.g, 0, slot, out=ints[2])
        floats = z.new_empty(4, idx.shape[0])  # z, then the three signed edge distances
        for k, t in enumerate((z, *wn)):
            torch.index_select(t.reshape(-1), 0, idx, out=floats[k])
        pairs = _PairBlock(ints, floats)
    return ls, grid.pix, saved, pairs


class _SoftSilhouette(torch.autograd.Function):
    """Soft silhouette ``log_t`` and, with ``want_pairs``, the kept pairs (``D``, clamped barycentrics, depth)
    for the RGB aggregation, with one analytic backward for both.

    Pair outputs: ``pix, face`` (int64, not differentiable), ``prob (M,)``, ``bary (3, M)`` (component-major),
    ``depth (M,)``. Backward: ``dL/dD`` of each pair is scattered back into its block and folded into the
    silhouette's ``c = dL/d(d²)`` (``dD/d(d²) = -(1 - D)·coef``), so the distance part costs one extra
    ``index_add_`` per block. The barycentric/depth part reduces per face 13 sums over its pairs (one
    ``index_add_``), from which the corner gradients follow (see ``_pair_face_grads``).
    """

    @staticmethod
    def forward(ctx, fxy, fz, area2, plan, sigma, r2, near, far, want_pairs=False):
        need_grad = any(ctx.needs_input_grad[:3])
        log_t = fxy.new_zeros(plan.num_faces // plan.faces_per_image * plan.height * plan.width)
        saved, kept = [], []
        table = _edge_table(fxy, area2)
        for blk in plan.blocks:
            ls, pix, data, pairs = _silhouette_block(
                blk, plan, table, fxy, fz, area2, sigma, r2, near, far, need_grad, want_pairs
            )
            log_t.index_add_(0, pix.reshape(-1), ls.reshape(-1))
            saved.append(data)
            kept.append(pairs)
        ctx.plan = plan
        ctx.blocks = saved
        ctx.want_pairs = want_pairs
        if not want_pairs:
            return log_t
        out, data = _pair_outputs(kept, fxy, fz, area2, need_grad)
        if data is not None:
            # tensors through save_for_backward: prob, bary and face are outputs, and keeping outputs as ctx
            # attributes makes a reference cycle (freed only by the garbage collector)
            ctx.counts = data.counts
            ctx.save_for_backward(fxy, fz, area2, *data[1:])
        ctx.mark_non_differentiable(out[0], out[1])
        return (log_t, *out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_t, *grad_pairs):
        plan = ctx.plan
        grad = grad_log_t.new_zeros(plan.num_faces, 3, 2)  # (G, corner, xy)
        scatter = None
        if ctx.want_pairs:
            _, _, grad_prob, grad_bary, grad_depth = grad_pairs
            fxy, fz, area2, *rest = ctx.saved_tensors
            pd = _PairData(ctx.counts, *rest)
            scatter = grad_prob * (1 - pd.prob)  # (1 - D)·dL/dD, folded into c below
        start = 0
        for i, (blk, data) in enumerate(zip(plan.blocks, ctx.blocks)):
            gl = grad_log_t.index_select(0, data.pix.reshape(-1))
            if scatter is not None:
                n = pd.counts[i]
                gl.index_add_(0, pd.idx[start : start + n], scatter[start : start + n], alpha=-1.0)
                start += n
            c = gl.view_as(data.coef).mul_(data.coef)  # dL/d(d²)
            cr = [rc * c for rc in data.r]
            # d(d²)/dv_v = -2 beta_v r  ->  dL/dv_v = -2 sum_pixels c beta_v r
            g = torch.stack([(bv * crc).sum((0, 1)) for bv in data.beta for crc in cr], 1)  # (Fb, 6)
            grad[blk.g] = g.view(-1, 3, 2).mul_(-2.0)
        grad = grad.permute(2, 1, 0).contiguous()  # (xy, corner, G) like fxy: autograd adds it to others
        if not ctx.want_pairs:
            return grad, None, None, None, None, None, None, None, None
        gxy, gz, ga = _pair_face_grads(pd, grad_bary, grad_depth, fxy, fz, area2)
        return grad.add_(gxy), gz, ga, None, None, None, None, None, None


class _PairData(NamedTuple):
    """Per-pair data kept for the backward pass of the RGB pairs."""

    counts: list[int]  # kept pairs per block
    idx: Tensor  # (M,) element index inside its block
    g: Tensor  # (M,) flat face id
    prob: Tensor  # (M,) D
    braw: Tensor  # (3, M) unclamped barycentrics w_k / A
    bary: Tensor  # (3, M) clamped, renormalised barycentrics
    inv_s: Tensor  # (M,) 1 / sum of the clamped barycentrics


def _pair_outputs(kept: list[_PairBlock], fxy: Tensor, fz: Tensor, area2: Tensor, need_grad: bool):
    """Per-pair ``D``, clamped barycentrics and depth from the blocks' kept elements."""
    if kept:
        ints = torch.cat([p.ints for p in kept], 1)
        floats = torch.cat([p.floats for p in kept], 1)
    else:
        ints = torch.zeros(3, 0, dtype=torch.long, device=fxy.device)
        floats = fxy.new_zeros(4, 0)
    idx, pix, g = ints
    prob = torch.sigmoid(floats[0].neg_())
    # w_k / A = (signed distance to edge k)·|e_k|/|A|
    gx, gy = fxy[0], fxy[1]
    inv_abs_a = area2.abs().reciprocal()
    braw = floats[1:]
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        scale = torch.hypot(gx[b] - gx[a], gy[b] - gy[a]).mul_(inv_abs_a)
        braw[k].mul_(scale.index_select(0, g))
    bary = braw.clamp(0, 1)
    inv_s = bary[0] + bary[1]
    inv_s.add_(bary[2]).reciprocal_()
    for k in range(3):
        bary[k].mul_(inv_s)
    depth = bary[0] * fz[0].index_select(0, g)
    depth.addcmul_(bary[1], fz[1].index_select(0, g)).addcmul_(bary[2], fz[2].index_select(0, g))
    data = None
    if need_grad:
        data = _PairData([p.ints.shape[1] for p in kept], idx, g, prob, braw, bary, inv_s)
    return (pix, g, prob, bary, depth), data


def _pair_face_grads(pd: _PairData, grad_bary: Tensor, grad_depth: Tensor, fxy: Tensor, fz: Tensor, area2):
    """Corner gradients ``(2, 3, G)``, depth gradients ``(3, G)`` and ``dL/dA`` ``(G,)`` from the pairs'
    ``dL/dbary (3, M)`` and ``dL/ddepth (M,)``.

    With ``G_k = dL/dbary_k + dL/ddepth·z_k``, the clamped, renormalised barycentrics give ``dL/db_k =
    [0 <= b_k <= 1] (G_k - sum_j G_j bary_j) / s`` for the raw ``b_k = w_k / A``. The edge function ``w_k`` is linear in
    the pixel centre ``p = v_0 + b_1 e_1 + b_2 e_2`` (``e_j = v_j - v_0``), so per face it needs only the sums
    ``sum dL/db_k``, ``sum dL/db_k·b_1``, ``sum dL/db_k·b_2`` (9), ``sum_k dL/db_k·b_k`` (for ``A``) and
    ``sum dL/ddepth·bary_v`` (3): 13 rows reduced with one ``index_add_``.
    """
    g, bary = pd.g, pd.bary
    m = g.shape[0]
    rows = bary.new_empty(13, m)
    gk = bary.new_empty(3, m)  # G_k
    for k in range(3):
        torch.index_select(fz[k], 0, g, out=gk[k])
    gk.mul_(grad_depth.unsqueeze(0)).add_(grad_bary)
    t = (gk * bary).sum(0)
    gb = rows[0:3]
    torch.sub(gk, t.unsqueeze(0), out=gb)
    gb.mul_(pd.inv_s.unsqueeze(0))
    # clamp(b_k, 0, 1) passes the gradient where it returns b_k (float arithmetic: a boolean mask with mixed
    # values is ~10x slower on CPU)
    clipped = pd.braw.clamp(0, 1).sub_(pd.braw).abs_().sign_()
    gb.addcmul_(gb, clipped, value=-1)
    torch.mul(gb, pd.braw[1].unsqueeze(0), out=rows[3:6])
    torch.mul(gb, pd.braw[2].unsqueeze(0), out=rows[6:9])
    torch.mul(gb[0], pd.braw[0], out=rows[9]).addcmul_(gb[1], pd.braw[1]).addcmul_(gb[2], pd.braw[2])
    torch.mul(bary, grad_depth.unsqueeze(0), out=rows[10:13])
    r = rows.new_zeros(13, fz.shape[1]).index_add_(1, g, rows)
    # faces with A = 0 are never live (no pairs, r = 0): give them 0, not 0·inf = NaN
    inv_a = torch.where(area2 != 0, area2.reciprocal(), torch.zeros_like(area2))
    gx, gy = fxy[0], fxy[1]
    e1x, e1y, e2x, e2y = gx[1] - gx[0], gy[1] - gy[0], gx[2] - gx[0], gy[2] - gy[0]
    # per edge k: S_k = sum dL/dw_k, X_k = sum dL/dw_k (p_x - x_0), Y_k likewise (dL/dw_k = dL/db_k / A)
    s_ = r[0:3] * inv_a
    x_ = (e1x * r[3:6] + e2x * r[6:9]) * inv_a
    y_ = (e1y * r[3:6] + e2y * r[6:9]) * inv_a
    rel_x = torch.stack([torch.zeros_like(e1x), e1x, e2x])  # x_v - x_0
    rel_y = torch.stack([torch.zeros_like(e1y), e1y, e2y])
    gxy = fxy.new_zeros(2, 3, fxy.shape[2])
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        # w_k = (x_b - x_a)(p_y - y_a) - (y_b - y_a)(p_x - x_a)
        gxy[0, a] += rel_y[b] * s_[k] - y_[k]
        gxy[0, b] += y_[k] - rel_y[a] * s_[k]
        gxy[1, a] += x_[k] - rel_x[b] * s_[k]
        gxy[1, b] += rel_x[a] * s_[k] - x_[k]
    return gxy, r[10:13], -r[9] * inv_a


# ------------------------------------------------------------------------------------------------------------
# entry points: soft_rasterize's pure-PyTorch path, from its face tensors
# ------------------------------------------------------------------------------------------------------------
def _soft_plan(
    fxy: Tensor, fz: Tensor, area2: Tensor, *, faces_per_image: int, height: int, width: int, sigma: float,
    eps: float, near: float, far: float, double_sided: bool, max_pairs: int,
) -> tuple[Plan, float]:
    """The blocks of faces ``fxy (2, 3, G)``, ``fz (3, G)``, ``area2 (G,)`` and the squared cut-off radius."""
    radius = soft_cutoff_radius(sigma, eps)
    plan = make_plan(
        fxy.detach(), fz.detach(), area2.detach(), faces_per_image=faces_per_image, height=height, width=width,
        radius=radius, near=near, far=far, double_sided=double_sided, max_pairs=max_pairs,
    )
    return plan, radius * radius


def soft_silhouette(
    fxy: Tensor, fz: Tensor, area2: Tensor, *, faces_per_image: int, height: int, width: int, sigma: float,
    eps: float, near: float, far: float, double_sided: bool = True, max_pairs: int = 2_000_000,
) -> Tensor:
    """``sum_j log(1 - D_j)`` per pixel, ``(N·H·W,)``: :func:`slopekp.render.rasterize.soft_rasterize`'s
    silhouette from its face tensors (:func:`~slopekp.render.plan.face_tensors`: ``fxy (2, 3, G)``, ``fz (3, G)``,
    ``area2 (G,)``, ``G = N·faces_per_image``; differentiable w.r.t. ``fxy``; pass ``fz`` and ``area2`` detached)."""
    plan, r2 = _soft_plan(fxy, fz, area2, faces_per_image=faces_per_image, height=height, width=width, sigma=sigma,
                          eps=eps, near=near, far=far, double_sided=double_sided, max_pairs=max_pairs)  # fmt: skip
    return _SoftSilhouette.apply(fxy, fz, area2, plan, sigma, r2, near, far)


def soft_pairs(
    fxy: Tensor, fz: Tensor, area2: Tensor, *, faces_per_image: int, height: int, width: int, sigma: float,
    eps: float, near: float, far: float, double_sided: bool = True, max_pairs: int = 2_000_000,
) -> SilhouettePairs:
    """The silhouette ``(N·H·W,)`` and the kept pairs ``pix, face, prob (M,), bary (3, M), depth (M,)``, as
    :func:`slopekp.render.rasterize.soft_rasterize` with ``return_pairs`` forms them (block by block, the pairs of
    a face consecutive), differentiable w.r.t. ``fxy``, ``fz`` and ``area2`` (one analytic backward,
    :class:`_SoftSilhouette`)."""
    plan, r2 = _soft_plan(fxy, fz, area2, faces_per_image=faces_per_image, height=height, width=width, sigma=sigma,
                          eps=eps, near=near, far=far, double_sided=double_sided, max_pairs=max_pairs)  # fmt: skip
    return SilhouettePairs(*_SoftSilhouette.apply(fxy, fz, area2, plan, sigma, r2, near, far, True))
