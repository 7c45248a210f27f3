"""Candidate-pair rasterisation of projected triangle meshes, in pure PyTorch.

Conventions (docs/conventions.md):

* Screen vertices are ``(N, V, 3)`` = ``[x_ndc, y_ndc, depth]``; x right, y **down**, both in [-1, 1];
  smaller depth is closer to the camera.
* Pixel ``(row i, col j)`` of an ``H x W`` image samples the NDC point ``x = (2j+1)/W - 1``,
  ``y = (2i+1)/H - 1``.
* Face ``f`` has vertices ``v0, v1, v2``; the edge opposite vertex ``k`` runs ``v1->v2`` (k=0), ``v2->v0``
  (k=1), ``v0->v1`` (k=2). Its edge function at ``p`` is ``w_k = cross(b - a, p - a)``; barycentrics are
  ``w_k / A`` with ``A = cross(v1 - v0, v2 - v0)`` (twice the signed screen area). A face seen from outside
  (counter-clockwise winding in the object frame) has ``A < 0`` in this y-down screen frame: it is
  *front-facing*. A pixel centre is inside when all ``w_k`` are ``>= 0`` or all ``<= 0`` (closed triangle).
* Faces with ``A == 0`` exactly (edge-on) are ignored, as are faces entirely nearer than ``near`` or farther
  than ``far``.

Algorithm (no dense ``N·F·H·W`` tensor): every face gets a screen window, its bounding box grown by the soft
cut-off radius ``r = sqrt(sigma·ln(1/eps - 1))`` and clipped to the image. Faces are grouped into buckets of
equal window shape (sides rounded up to 1, 2, 3, 4, 6, 8, 12, ... and capped by the image; small buckets are
merged into larger ones when that is cheaper than another round of kernel launches). Each bucket is a dense
block in the face-innermost layout ``(wy, wx, Fb)``: per-face constants ``(1, 1, Fb)`` broadcast against pixel
rows ``(wy, 1, Fb)`` and columns ``(1, wx, Fb)`` (on CPU this is several times faster than ``(Fb, wy, wx)``,
whose short inner loops defeat vectorisation). A window is shifted, never clipped, to stay inside the image,
so every block element is a distinct real pixel; elements outside the face's own window fail the cut-off test
by themselves. Per-pixel results are aggregated with ``index_add_`` / ``scatter_reduce_``. No block holds more
than ``max_pairs`` elements, which bounds the transient memory of the forward pass.

Soft silhouette (SoftRas, Liu et al. 2019): ``D_j = sigmoid(delta_j · d_j² / sigma)``, ``delta = +1`` inside
the triangle and ``-1`` outside, ``d`` the Euclidean NDC distance from the pixel centre to the triangle's
boundary (the minimum over its three edge segments), and
``alpha = 1 - prod_j (1 - D_j) = 1 - exp(sum_j log(1 - D_j))``. Pairs with ``D_j < eps`` (outside and farther
than ``r``) are ignored by definition, as in SoftRas. The silhouette's backward pass is analytic
(``torch.autograd.Function``, chosen by measurement: on ``soft16_64`` its backward took 0.03 s where
autograd through the same arithmetic took 0.36 s, and the forward no longer records a graph): with ``c_j =
dL/d(d_j²)`` and the closest boundary point ``q = sum_v beta_v v_v``, ``d(d²)/dv_v = -2 beta_v (p - q)``. The
forward pass keeps ``beta``, ``p - q`` and ``d log(1 - D)/d(d²)`` per block element (6 floats; this, not
``max_pairs``, sets the memory kept for backward), and the backward is one gather and a few reductions per
block.

RGB pairs (``return_pairs``) come out of the same pass and share its backward (chosen by measurement: on
``rgb16_64``, one core, autograd through separately enumerated pairs took 0.03 s forward and 0.06 s backward;
the shared pass adds about 0.006 s and 0.009 s to the silhouette's): the kept elements of each block are
compacted face-major (``nonzero``), ``D = sigmoid(delta·d²/sigma)`` and the raw barycentrics ``b_k = w_k/A``
(the kernel's signed edge distances times ``|e_k|/|A|``) are gathered, then clamped, renormalised and
interpolated into depth.
Backward: ``dL/dD`` joins the silhouette's ``dL/d(d²)`` inside the blocks (``dD/d(d²) = -(1 - D)·coef``),
and ``dL/dbary``, ``dL/ddepth`` reduce to 13 sums per face (one ``index_add_``), from which the corner
gradients follow because ``w_k`` is linear in the pixel centre ``p = v_0 + b_1 e_1 + b_2 e_2``. The hard
z-buffer uses plain autograd.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "HardFragments",
    "SoftPairs",
    "hard_rasterize",
    "pixel_centres",
    "soft_cutoff_radius",
    "soft_rasterize",
]

_MERGE_ELEMS = 8192
"""Extra block elements worth one bucket's kernel launches (merge a bucket into a larger one below this)."""


class SoftPairs(NamedTuple):
    """Face-pixel pairs that pass the soft cut-off (``D >= eps``), flattened over all images.

    ``M`` is the number of kept pairs (block by block, the pairs of a face consecutive). ``pix`` indexes the
    flattened ``(N, H, W)`` image stack, ``face`` the flattened ``(N, F)`` face stack (``n * F + f``). ``prob``
    is ``D``, ``depth`` the depth interpolated with the clamped barycentrics ``bary`` (``(M, 3)``, clamped to
    [0, 1] and renormalised, as SoftRas does for pixels outside the triangle; a transposed view of a
    component-major ``(3, M)`` tensor). ``prob``, ``bary`` and ``depth`` are differentiable (analytic backward).
    """

    pix: Tensor  # (M,) int64
    face: Tensor  # (M,) int64
    prob: Tensor  # (M,)
    bary: Tensor  # (M, 3)
    depth: Tensor  # (M,)


class HardFragments(NamedTuple):
    """Z-buffer result: the closest face covering each pixel centre.

    Ties in depth go to the smallest face index. ``bary`` and ``depth`` are those of the winning face; empty
    pixels hold ``face_index = -1``, ``bary = 0`` and ``depth = far``.
    """

    alpha: Tensor  # (N, H, W) float, 0/1
    face_index: Tensor  # (N, H, W) int64, -1 where empty
    bary: Tensor  # (N, H, W, 3)
    depth: Tensor  # (N, H, W)


def soft_cutoff_radius(sigma: float, eps: float) -> float:
    """NDC distance beyond which an outside pair has ``D = sigmoid(-d²/sigma) < eps``.

    Equals ``sqrt(sigma·ln(1/eps - 1))``. Raises ``ValueError`` unless ``sigma > 0`` and ``0 < eps < 0.5``.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    return math.sqrt(sigma * math.log(1.0 / eps - 1.0))


def pixel_centres(height: int, width: int, *, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """NDC coordinates of pixel centres: ``x: (W,)`` with ``x_j = (2j+1)/W - 1`` and ``y: (H,)`` likewise."""
    x = (2 * torch.arange(width, device=device) + 1).to(dtype) / width - 1
    y = (2 * torch.arange(height, device=device) + 1).to(dtype) / height - 1
    return x, y


# ------------------------------------------------------------------------------------------------------------
# planning: per-face windows, buckets of equal window shape
# ------------------------------------------------------------------------------------------------------------
def _size_levels(limit: int) -> list[int]:
    """Window sides 1, 2, 3, 4, 6, 8, 12, ... below ``limit``, then ``limit`` itself."""
    levels, k = [1, 2, 3], 2
    while levels[-1] < limit:
        levels += [2**k, 3 * 2 ** (k - 1)]
        k += 1
    return [v for v in levels if v < limit] + [limit]


def _level_lut(levels: list[int], device) -> Tensor:
    """``lut[n]`` = index of the smallest level ``>= n``, for ``n`` in ``[0, levels[-1]]``."""
    lut = torch.zeros(levels[-1] + 1, dtype=torch.long)
    prev = 0
    for i, lv in enumerate(levels):
        lut[prev + 1 : lv + 1] = i
        prev = lv
    return lut.to(device)


class _Block(NamedTuple):
    g: Tensor  # (Fb,) flat face ids n·F + f
    row0: Tensor  # (Fb,) first window row, shifted so that row0 + wy <= H
    col0: Tensor  # (Fb,)
    wy: int
    wx: int
    crossing: bool  # some face of the block crosses near or far: per-pair depth test needed


class _Plan(NamedTuple):
    blocks: list[_Block]
    height: int
    width: int
    faces_per_image: int
    num_faces: int  # G = N·F


def _merge_buckets(counts: dict[tuple[int, int], int], ly: list[int], lx: list[int]) -> dict:
    """Greedy merge of small buckets into larger ones (both sides >=) when the padding costs fewer than
    ``_MERGE_ELEMS`` extra elements. Returns ``{key: final_key}``."""
    alive = dict(counts)
    target = {k: k for k in counts}
    for key in sorted(counts, key=lambda k: counts[k]):
        if key not in alive:
            continue
        area = ly[key[0]] * lx[key[1]]
        best, best_cost = None, _MERGE_ELEMS + 1
        for other in alive:
            if other != key and other[0] >= key[0] and other[1] >= key[1]:
                cost = alive[key] * (ly[other[0]] * lx[other[1]] - area)
                if cost < best_cost:
                    best, best_cost = other, cost
        if best is not None:
            alive[best] += alive.pop(key)
            for k, v in target.items():
                if v == key:
                    target[k] = best
    return target


def face_windows(
    fxy: Tensor, fz: Tensor, area2: Tensor, *, height: int, width: int, radius: float, near: float, far: float,
    double_sided: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Each face's pixel window, its bounding box grown by the cut-off ``radius`` and clipped to the image:
    ``col0, col1, row0, row1`` (float, inclusive; empty when ``col1 < col0`` or ``row1 < row0``), whether it is
    ``live`` (a non-empty window, non-zero area, not wholly outside ``[near, far]``, not culled) and whether it
    ``crossing`` ``near`` or ``far`` (its pixels need the depth test). Inputs detached, ``(2, 3, G)``, ``(3, G)``,
    ``(G,)``."""
    lo = torch.minimum(torch.minimum(fxy[:, 0], fxy[:, 1]), fxy[:, 2])  # (2, G)
    hi = torch.maximum(torch.maximum(fxy[:, 0], fxy[:, 1]), fxy[:, 2])
    zlo = torch.minimum(torch.minimum(fz[0], fz[1]), fz[2])
    zhi = torch.maximum(torch.maximum(fz[0], fz[1]), fz[2])
    # pixel j has its centre at x_j = (2j+1)/W - 1  <=>  j = ((x+1)·W - 1)/2
    col0 = torch.ceil(((lo[0] - radius + 1) * width - 1) / 2).clamp(min=0, max=width)
    col1 = torch.floor(((hi[0] + radius + 1) * width - 1) / 2).clamp(min=-1, max=width - 1)
    row0 = torch.ceil(((lo[1] - radius + 1) * height - 1) / 2).clamp(min=0, max=height)
    row1 = torch.floor(((hi[1] + radius + 1) * height - 1) / 2).clamp(min=-1, max=height - 1)
    live = (col1 >= col0) & (row1 >= row0) & (area2 != 0) & (zhi >= near) & (zlo <= far)
    if not double_sided:
        live &= area2 < 0
    crossing = (zlo < near) | (zhi > far)
    return col0, col1, row0, row1, live, crossing


def _plan(
    fxy: Tensor,
    fz: Tensor,
    area2: Tensor,
    *,
    faces_per_image: int,
    height: int,
    width: int,
    radius: float,
    near: float,
    far: float,
    double_sided: bool,
    max_pairs: int,
) -> _Plan:
    """Windows and buckets for faces ``fxy: (2, 3, G)`` (detached) with depths ``fz: (3, G)``."""
    with torch.no_grad():
        col0, col1, row0, row1, live, crossing = face_windows(fxy, fz, area2, height=height, width=width,
                                                              radius=radius, near=near, far=far,
                                                              double_sided=double_sided)  # fmt: skip
        nx = (col1 - col0 + 1).clamp(min=0).long()
        ny = (row1 - row0 + 1).clamp(min=0).long()
        lx, ly = _size_levels(width), _size_levels(height)
        ids = torch.nonzero(live).squeeze(1)
        bx = _level_lut(lx, nx.device)[nx[ids]]
        by = _level_lut(ly, ny.device)[ny[ids]]
        key = by * len(lx) + bx
        hist = torch.bincount(key, minlength=len(lx) * len(ly)).tolist()
        counts = {(k // len(lx), k % len(lx)): c for k, c in enumerate(hist) if c > 0}
        target = _merge_buckets(counts, ly, lx)
        remap = torch.arange(len(lx) * len(ly), device=key.device)
        for (iy, ix), (ty, tx) in target.items():
            remap[iy * len(lx) + ix] = ty * len(lx) + tx
        key = remap[key]
        key, order = torch.sort(key.to(torch.int16), stable=True)  # few distinct keys: int16 sorts fast
        ids = ids[order]
        keys, sizes = torch.unique_consecutive(key, return_counts=True)
        row0, col0 = row0.long(), col0.long()
        blocks = []
        start = 0
        for k, c in zip(keys.tolist(), sizes.tolist()):
            wy, wx = ly[k // len(lx)], lx[k % len(lx)]
            step = max(1, max_pairs // (wy * wx))
            for s in range(start, start + c, step):
                g = ids[s : min(s + step, start + c)]
                r0 = row0.index_select(0, g).clamp_(max=height - wy)
                c0 = col0.index_select(0, g).clamp_(max=width - wx)
                blocks.append(_Block(g, r0, c0, wy, wx, bool(crossing.index_select(0, g).any())))
            start += c
    return _Plan(blocks, height, width, faces_per_image, fxy.shape[-1])


def _face_tensors(screen_verts: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Face corners of all images (``G = N·F``, face ``g = n·F + f``) in a face-innermost layout.

    Returns ``fxy: (2, 3, G)`` (coordinate, corner, face), ``fz: (3, G)`` corner depths and ``area2: (G,)``
    (twice the signed screen area ``A``).
    """
    fv = screen_verts.index_select(1, faces.reshape(-1)).reshape(-1, 3, 3)  # (G, corner, xyz)
    fv = fv.permute(2, 1, 0).contiguous()  # (xyz, corner, G)
    fxy = fv[:2]
    e1 = fxy[:, 1] - fxy[:, 0]
    e2 = fxy[:, 2] - fxy[:, 0]
    area2 = e1[0] * e2[1] - e1[1] * e2[0]
    return fxy, fv[2], area2


class _Grid(NamedTuple):
    """Pixel grid of a block in the face-innermost layout ``(wy, wx, Fb)`` (fast broadcasting on CPU)."""

    px: Tensor  # (1, wx, Fb) pixel-centre x
    py: Tensor  # (wy, 1, Fb)
    pix: Tensor  # (wy, wx, Fb) flat index into (N·H·W)


def _grid(blk: _Block, plan: _Plan, dtype) -> _Grid:
    device = blk.g.device
    jj = blk.col0.view(1, 1, -1) + torch.arange(blk.wx, device=device).view(1, blk.wx, 1)
    ii = blk.row0.view(1, 1, -1) + torch.arange(blk.wy, device=device).view(blk.wy, 1, 1)
    n = torch.div(blk.g, plan.faces_per_image, rounding_mode="floor").view(1, 1, -1)
    pix = (n * plan.height + ii) * plan.width + jj
    px = (2 * jj + 1).to(dtype) / plan.width - 1
    py = (2 * ii + 1).to(dtype) / plan.height - 1
    return _Grid(px, py, pix)


def _row(t: Tensor) -> Tensor:
    """Per-face values ``(Fb,)`` as ``(1, 1, Fb)`` for broadcasting against a block."""
    return t.view(1, 1, -1)


def _edge_functions(gx: Tensor, gy: Tensor, px: Tensor, py: Tensor) -> list[Tensor]:
    """``w_k = cross(b - a, p - a)`` for the three edges; ``gx, gy: (3, Fb)`` corner coordinates."""
    out = []
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        ex, ey = _row(gx[b] - gx[a]), _row(gy[b] - gy[a])
        out.append(ex * (py - _row(gy[a])) - ey * (px - _row(gx[a])))
    return out


def _corners(fxy: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Corner coordinates ``gx, gy: (3, Fb)`` of faces ``g: (Fb,)`` from ``fxy: (2, 3, G)``."""
    sel = fxy.index_select(2, g)
    return sel[0], sel[1]


def _inside(w: list[Tensor]) -> Tensor:
    """Closed-triangle test (either winding): all ``w_k >= 0`` or all ``<= 0``."""
    mn = torch.minimum(torch.minimum(w[0], w[1]), w[2])
    mx = torch.maximum(torch.maximum(w[0], w[1]), w[2])
    return (mn >= 0) | (mx <= 0)


def _depth_ok(w: list[Tensor], area2: Tensor, z: Tensor, near: float, far: float) -> Tensor:
    """Clamped-barycentric depth inside ``[near, far]``; ``area2: (Fb,)``, ``z: (3, Fb)``."""
    b = [(wk / _row(area2)).clamp(0, 1) for wk in w]
    depth = (b[0] * _row(z[0]) + b[1] * _row(z[1]) + b[2] * _row(z[2])) / (b[0] + b[1] + b[2])
    return (depth >= near) & (depth <= far)


# ------------------------------------------------------------------------------------------------------------
# soft silhouette with an analytic backward
# ------------------------------------------------------------------------------------------------------------
class _SilhouetteBlock(NamedTuple):
    """What the backward pass needs from one block (layout ``(..., wy, wx, Fb)``)."""

    coef: Tensor  # (wy, wx, Fb) d(log(1 - D))/d(d²), 0 for dropped pairs
    beta: list[Tensor]  # 3 x (wy, wx, Fb) closest boundary point as a combination of the face's vertices
    r: list[Tensor]  # 2 x (wy, wx, Fb) pixel centre minus the closest boundary point


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
    blk: _Block, plan: _Plan, table: Tensor, fxy: Tensor, fz: Tensor, area2: Tensor, sigma: float, r2: float,
    near: float, far: float, need_grad: bool, want_pairs: bool = False,
) -> tuple[Tensor, Tensor, _SilhouetteBlock | None, _PairBlock | None]:
    """``log(1 - D)`` per block element (0 where dropped), the flat pixel index, backward data and, with
    ``want_pairs``, the kept pairs of the block.

    Float-only arithmetic (no boolean masks or ``where``, which are several times slower on CPU): the inside
    sign comes from the minimum signed edge distance, the cut-off from ``threshold``, the closest edge is
    tracked with ``lerp``.
    """
    grid = _grid(blk, plan, fxy.dtype)
    col = [_row(c) for c in table.index_select(1, blk.g)]  # 24 x (1, 1, Fb)
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
        w = _edge_functions(*_corners(fxy, blk.g), grid.px, grid.py)
        fzb = fz.index_select(1, blk.g)
        z.masked_fill_(~_depth_ok(w, area2.index_select(0, blk.g), fzb, near, far), -math.inf)
    one_minus_d = torch.sigmoid(z.mul_(-1.0 / sigma))  # 1 - D = sigmoid(-delta d²/sigma), 1 where dropped
    ls = torch.log(one_minus_d)
    saved = None
    if need_grad:
        coef = (one_minus_d - 1).mul_(delta).mul_(1.0 / sigma)  # -D·delta/sigma
        saved = _SilhouetteBlock(coef, beta, [brx, bry])
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
            pix = _grid(blk, plan, grad.dtype).pix
            gl = grad_log_t.index_select(0, pix.reshape(-1))
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
# public entry points
# ------------------------------------------------------------------------------------------------------------
def _check_screen(screen_verts: Tensor, faces: Tensor, height: int, width: int) -> None:
    if screen_verts.dim() != 3 or screen_verts.shape[-1] != 3:
        raise ValueError(f"screen_verts must have shape (N, V, 3), got {tuple(screen_verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.dtype != torch.long:
        raise ValueError(
            f"faces must be an int64 tensor of shape (F, 3), got {faces.dtype} {tuple(faces.shape)}"
        )
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {(height, width)}")


def soft_rasterize(
    screen_verts: Tensor,
    faces: Tensor,
    *,
    height: int,
    width: int,
    sigma: float,
    eps: float,
    near: float,
    far: float,
    double_sided: bool = True,
    max_pairs: int = 2_000_000,
    return_pairs: bool = False,
    fused: str = "never",
) -> tuple[Tensor, SoftPairs | None]:
    """Soft silhouette of ``N`` projected meshes sharing ``faces`` (SoftRas ``prod`` aggregation).

    Args:
        screen_verts: ``(N, V, 3)`` ``[x_ndc, y_ndc, depth]``.
        faces: ``(F, 3)`` int64 vertex indices in ``[0, V)`` (the caller validates them).
        height, width: image size in pixels.
        sigma: sharpness (a squared NDC distance).
        eps: cut-off probability; pairs with ``D < eps`` are dropped.
        near, far: pairs whose clamped-barycentric depth is outside ``[near, far]`` are dropped.
        double_sided: if False, back-facing faces (``A > 0``) are culled.
        max_pairs: bound on the face-pixel pairs evaluated in one dense block.
        return_pairs: also return the kept pairs (``SoftPairs``) for RGB aggregation.
        fused: ``never``, ``auto`` or ``always``: the silhouette (and the pairs) in the fused Triton kernels of
            :mod:`slopekp.render.fused` (:func:`~slopekp.render.fused.fused_available` decides); the pairs then
            come tile by tile, not face by face.

    Returns:
        ``(log_transmittance, pairs)``: ``log_transmittance: (N, H, W)`` = ``sum_j log(1 - D_j)`` (so
        ``alpha = 1 - exp(log_transmittance)``), differentiable w.r.t. the vertices' x, y; ``pairs`` or None
        (``prob``, ``bary``, ``depth`` differentiable w.r.t. the vertices' x, y and depth).
    """
    _check_screen(screen_verts, faces, height, width)
    radius = soft_cutoff_radius(sigma, eps)
    fxy, fz, area2 = _face_tensors(screen_verts, faces)
    if fused != "never":
        from slopekp.render.fused import fused_available, fused_soft_pairs, fused_soft_silhouette

        if fused_available(screen_verts.device, fused):
            kw = dict(n_images=screen_verts.shape[0], height=height, width=width, sigma=sigma, eps=eps, near=near,
                      far=far, double_sided=double_sided)  # fmt: skip
            pairs = None
            if return_pairs:
                log_t, pix, face, prob, bary, depth = fused_soft_pairs(fxy, fz, area2, **kw)
                pairs = SoftPairs(pix, face, prob, bary.T, depth)
            else:
                log_t = fused_soft_silhouette(fxy, fz.detach(), area2.detach(), **kw)
            return log_t.view(screen_verts.shape[0], height, width), pairs
    plan = _plan(
        fxy.detach(), fz.detach(), area2.detach(), faces_per_image=faces.shape[0], height=height, width=width,
        radius=radius, near=near, far=far, double_sided=double_sided, max_pairs=max_pairs,
    )
    r2 = radius * radius
    pairs = None
    if return_pairs:
        log_t, pix, face, prob, bary, depth = _SoftSilhouette.apply(
            fxy, fz, area2, plan, sigma, r2, near, far, True
        )
        pairs = SoftPairs(pix, face, prob, bary.T, depth)
    else:
        log_t = _SoftSilhouette.apply(fxy, fz.detach(), area2.detach(), plan, sigma, r2, near, far)
    return log_t.view(screen_verts.shape[0], height, width), pairs


def _monotone_key(depth: Tensor, face: Tensor) -> Tensor:
    """int64 keys ordered by (depth, face): float32 bits made monotone in the high word, face id low."""
    bits = depth.to(torch.float32).view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(torch.int64) << 32) | face


def hard_rasterize(
    screen_verts: Tensor,
    faces: Tensor,
    *,
    height: int,
    width: int,
    near: float,
    far: float,
    double_sided: bool = True,
    max_pairs: int = 2_000_000,
) -> HardFragments:
    """Z-buffer rasterisation: the closest face whose closed triangle contains each pixel centre.

    Depth is ``sum_k b_k z_k`` with screen-space barycentrics (orthographic / weak perspective). The z-test is
    one ``scatter_reduce(amin)`` over int64 keys packing the float32 depth and the face id, so ties go to the
    smallest face index.

    Args:
        screen_verts: ``(N, V, 3)`` ``[x_ndc, y_ndc, depth]``; faces: ``(F, 3)`` int64.
        height, width: image size; near, far: depth range kept (inclusive).
        double_sided: if False, back-facing faces (``A > 0``) are culled.
        max_pairs: bound on the face-pixel pairs evaluated in one dense block.

    Returns:
        ``HardFragments`` with ``(N, H, W)`` alpha / face_index / depth and ``(N, H, W, 3)`` bary. ``bary``
        and ``depth`` are differentiable w.r.t. ``screen_verts`` for the winning faces (not across changes of
        the winner).
    """
    _check_screen(screen_verts, faces, height, width)
    n_img, n_faces = screen_verts.shape[0], faces.shape[0]
    fxy, fz, area2 = _face_tensors(screen_verts, faces)
    with torch.no_grad():
        plan = _plan(
            fxy.detach(), fz.detach(), area2.detach(), faces_per_image=n_faces, height=height, width=width,
            radius=0.0, near=near, far=far, double_sided=double_sided, max_pairs=max_pairs,
        )
        hw = n_img * height * width
        fxy_d, fz_d, a_d = fxy.detach(), fz.detach(), area2.detach()

        def block_depth(blk: _Block) -> tuple[Tensor, Tensor, Tensor]:
            grid = _grid(blk, plan, fxy_d.dtype)
            w = _edge_functions(*_corners(fxy_d, blk.g), grid.px, grid.py)
            zs = fz_d.index_select(1, blk.g) / a_d.index_select(0, blk.g)  # (3, Fb) z_k / A
            depth = w[0] * _row(zs[0]) + w[1] * _row(zs[1]) + w[2] * _row(zs[2])
            ok = _inside(w)
            if blk.crossing:
                ok &= (depth >= near) & (depth <= far)
            return grid.pix.reshape(-1), depth.reshape(-1), ok.reshape(-1)

        empty = torch.iinfo(torch.int64).max
        zkey = torch.full((hw,), empty, dtype=torch.int64, device=screen_verts.device)
        if screen_verts.dtype == torch.float32:
            # one pass: pack (depth, face id) into one int64 key
            for blk in plan.blocks:
                pix, depth, ok = block_depth(blk)
                key = _monotone_key(depth, blk.g.repeat(blk.wy * blk.wx))
                zkey.scatter_reduce_(0, pix, key.masked_fill_(~ok, empty), "amin")
            covered = zkey != empty
            pix = torch.nonzero(covered).squeeze(1)
            g = zkey[pix] & 0xFFFFFFFF
        else:
            # other dtypes: exact depth minimum first, then the smallest face id among the minima
            zbuf = fxy_d.new_full((hw,), math.inf)
            for blk in plan.blocks:
                pix, depth, ok = block_depth(blk)
                zbuf.scatter_reduce_(0, pix[ok], depth[ok], "amin")
            for blk in plan.blocks:
                pix, depth, ok = block_depth(blk)
                ok &= depth == zbuf[pix]
                g = blk.g.repeat(blk.wy * blk.wx)
                zkey.scatter_reduce_(0, pix[ok], g[ok], "amin")
            covered = zkey != empty
            pix = torch.nonzero(covered).squeeze(1)
            g = zkey[pix]
    # barycentrics and depth of the winning faces, recomputed per pixel (differentiable)
    px, py = pixel_centres(height, width, device=screen_verts.device, dtype=screen_verts.dtype)
    rows = torch.div(pix, width, rounding_mode="floor")
    col = pix - rows * width
    row = rows % height
    # per-face rows (G, 10) = corner x (3), corner y (3), depth (3), A; gathered per pixel, then (10, m)
    per_face = torch.cat([fxy.reshape(6, -1), fz, area2.unsqueeze(0)]).T.contiguous()
    cx, cy, cz, ca = per_face.index_select(0, g).T.split([3, 3, 3, 1])
    pxg, pyg = px[col], py[row]
    w = []
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        w.append((cx[b] - cx[a]) * (pyg - cy[a]) - (cy[b] - cy[a]) * (pxg - cx[a]))
    bary = torch.stack(w, -1) / ca.T
    depth = (bary * cz.T).sum(-1)
    face_index = torch.full((hw,), -1, dtype=torch.long, device=screen_verts.device)
    face_index[pix] = g % n_faces
    bary_img = screen_verts.new_zeros(hw, 3).index_put((pix,), bary)
    depth_img = screen_verts.new_full((hw,), far).index_put((pix,), depth)
    shape = (n_img, height, width)
    return HardFragments(
        covered.to(screen_verts.dtype).view(shape), face_index.view(shape), bary_img.view(*shape, 3),
        depth_img.view(shape),
    )
