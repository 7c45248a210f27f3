"""Planning the candidate pairs of the pure-PyTorch rasteriser: face tensors, pixel windows, blocks.

Conventions: :mod:`slopekp.render.rasterize` (docs/conventions.md).

No dense ``N·F·H·W`` tensor: every face gets a screen window, its bounding box grown by the soft cut-off radius
``r = sqrt(sigma·ln(1/eps - 1))`` and clipped to the image. Faces are grouped into buckets of equal window shape
(sides rounded up to 1, 2, 3, 4, 6, 8, 12, ... and capped by the image; small buckets are merged into larger ones
when that is cheaper than another round of kernel launches). Each bucket is a dense block in the face-innermost
layout ``(wy, wx, Fb)``: per-face constants ``(1, 1, Fb)`` broadcast against pixel rows ``(wy, 1, Fb)`` and columns
``(1, wx, Fb)`` (on CPU this is several times faster than ``(Fb, wy, wx)``, whose short inner loops defeat
vectorisation). A window is shifted, never clipped, to stay inside the image, so every block element is a distinct
real pixel; elements outside the face's own window fail the cut-off test by themselves. Per-pixel results are
aggregated with ``index_add_`` / ``scatter_reduce_`` (:mod:`slopekp.render.soft`, :mod:`slopekp.render.hard`). No
block holds more than ``max_pairs`` elements, which bounds the transient memory of the forward pass. The fused
Triton path (:mod:`slopekp.render.fused`) uses the same face tensors and windows.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Block",
    "Grid",
    "Plan",
    "block_grid",
    "check_screen",
    "corners",
    "edge_functions",
    "face_row",
    "face_tensors",
    "face_windows",
    "make_plan",
    "pixel_centres",
    "soft_cutoff_radius",
]


_MERGE_ELEMS = 8192
"""Extra block elements worth one bucket's kernel launches (merge a bucket into a larger one below this)."""


# ------------------------------------------------------------------------------------------------------------
# face tensors, pixel centres, the soft cut-off
# ------------------------------------------------------------------------------------------------------------
def check_screen(screen_verts: Tensor, faces: Tensor, height: int, width: int) -> None:
    """The shapes and dtype ``soft_rasterize`` and ``hard_rasterize`` take (``ValueError`` otherwise)."""
    if screen_verts.dim() != 3 or screen_verts.shape[-1] != 3:
        raise ValueError(f"screen_verts must have shape (N, V, 3), got {tuple(screen_verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.dtype != torch.long:
        raise ValueError(
            f"faces must be an int64 tensor of shape (F, 3), got {faces.dtype} {tuple(faces.shape)}"
        )
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {(height, width)}")



class SilhouettePairs(NamedTuple):
    """The soft silhouette with the face-pixel pairs it kept, as the pure (:func:`slopekp.render.soft.soft_pairs`)
    and the fused (:func:`slopekp.render.fused.fused_soft_pairs`) paths return them for the RGB aggregation."""

    log_t: Tensor
    """``(N·H·W,)`` ``sum_j log(1 - D_j)`` per pixel (the silhouette is ``1 - exp(log_t)``)."""
    pix: Tensor
    """``(M,)`` int64 index into the flattened ``(N, H, W)`` image stack."""
    face: Tensor
    """``(M,)`` int64 index into the flattened ``(N, F)`` face stack (``n·F + f``)."""
    prob: Tensor
    """``(M,)`` the pair's coverage ``D``."""
    bary: Tensor
    """``(3, M)`` clamped, renormalised barycentric coordinates."""
    depth: Tensor
    """``(M,)`` the pair's interpolated depth."""

def face_tensors(screen_verts: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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
    return _cached_level_lut(tuple(levels), torch.device(device))


@functools.lru_cache(maxsize=64)
def _cached_level_lut(levels: tuple[int, ...], device: torch.device) -> Tensor:
    lut = torch.zeros(levels[-1] + 1, dtype=torch.long)
    prev = 0
    for i, lv in enumerate(levels):
        lut[prev + 1 : lv + 1] = i
        prev = lv
    return lut.to(device)


class Block(NamedTuple):
    """A dense block of faces with windows of one shape ``wy x wx`` (layout ``(wy, wx, Fb)``)."""

    g: Tensor  # (Fb,) flat face ids n·F + f
    row0: Tensor  # (Fb,) first window row, shifted so that row0 + wy <= H
    col0: Tensor  # (Fb,)
    wy: int
    wx: int
    crossing: bool  # some face of the block crosses near or far: per-pair depth test needed


class Plan(NamedTuple):
    """The blocks of one render, and the image stack they index."""

    blocks: list[Block]
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


def make_plan(
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
) -> Plan:
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
        remap = list(range(len(lx) * len(ly)))
        for (iy, ix), (ty, tx) in target.items():
            remap[iy * len(lx) + ix] = ty * len(lx) + tx
        key = torch.tensor(remap, device=key.device)[key]
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
                blocks.append(Block(g, r0, c0, wy, wx, bool(crossing.index_select(0, g).any())))
            start += c
    return Plan(blocks, height, width, faces_per_image, fxy.shape[-1])


# ------------------------------------------------------------------------------------------------------------
# blocks: pixel grid and edge functions (shared by the soft and the hard passes)
# ------------------------------------------------------------------------------------------------------------
class Grid(NamedTuple):
    """Pixel grid of a block in the face-innermost layout ``(wy, wx, Fb)`` (fast broadcasting on CPU)."""

    px: Tensor  # (1, wx, Fb) pixel-centre x
    py: Tensor  # (wy, 1, Fb)
    pix: Tensor  # (wy, wx, Fb) flat index into (N·H·W)


def block_grid(blk: Block, plan: Plan, dtype) -> Grid:
    """Pixel centres and flat pixel indices of the elements of block ``blk``."""
    device = blk.g.device
    di = torch.arange(blk.wy, device=device).view(blk.wy, 1, 1)
    dj = torch.arange(blk.wx, device=device).view(1, blk.wx, 1)
    jj = blk.col0.view(1, 1, -1) + dj
    ii = blk.row0.view(1, 1, -1) + di
    n = torch.div(blk.g, plan.faces_per_image, rounding_mode="floor")
    corner = ((n * plan.height + blk.row0) * plan.width + blk.col0).view(1, 1, -1)  # the window's first pixel
    pix = corner + (di * plan.width + dj)  # one pass over the block's elements (integers: exact)
    px = (2 * jj + 1).to(dtype) / plan.width - 1
    py = (2 * ii + 1).to(dtype) / plan.height - 1
    return Grid(px, py, pix)


def face_row(t: Tensor) -> Tensor:
    """Per-face values ``(Fb,)`` as ``(1, 1, Fb)`` for broadcasting against a block."""
    return t.view(1, 1, -1)


def edge_functions(gx: Tensor, gy: Tensor, px: Tensor, py: Tensor) -> list[Tensor]:
    """``w_k = cross(b - a, p - a)`` for the three edges; ``gx, gy: (3, Fb)`` corner coordinates."""
    out = []
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        ex, ey = face_row(gx[b] - gx[a]), face_row(gy[b] - gy[a])
        out.append(ex * (py - face_row(gy[a])) - ey * (px - face_row(gx[a])))
    return out


def corners(fxy: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Corner coordinates ``gx, gy: (3, Fb)`` of faces ``g: (Fb,)`` from ``fxy: (2, 3, G)``."""
    sel = fxy.index_select(2, g)
    return sel[0], sel[1]
