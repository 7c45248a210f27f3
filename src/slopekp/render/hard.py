"""The hard z-buffer over the planned blocks (:mod:`slopekp.render.plan`, cut-off radius 0), in pure PyTorch with
plain autograd: :func:`hard_rasterize` and its result, :class:`HardFragments`. It has no fused path.
Conventions: :mod:`slopekp.render.rasterize`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from slopekp.render.plan import (
    Block,
    block_grid,
    check_screen,
    corners,
    edge_functions,
    face_row,
    face_tensors,
    make_plan,
    pixel_centres,
)

__all__ = ["HardFragments", "hard_rasterize"]


class HardFragments(NamedTuple):
    """Z-buffer result: the closest face covering each pixel centre.

    Ties in depth go to the smallest face index. ``bary`` and ``depth`` are those of the winning face; empty
    pixels hold ``face_index = -1``, ``bary = 0`` and ``depth = far``.
    """

    alpha: Tensor  # (N, H, W) float, 0/1
    face_index: Tensor  # (N, H, W) int64, -1 where empty
    bary: Tensor  # (N, H, W, 3)
    depth: Tensor  # (N, H, W)


def _inside(w: list[Tensor]) -> Tensor:
    """Closed-triangle test (either winding): all ``w_k >= 0`` or all ``<= 0``."""
    mn = torch.minimum(torch.minimum(w[0], w[1]), w[2])
    mx = torch.maximum(torch.maximum(w[0], w[1]), w[2])
    return (mn >= 0) | (mx <= 0)


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
    check_screen(screen_verts, faces, height, width)
    n_img, n_faces = screen_verts.shape[0], faces.shape[0]
    fxy, fz, area2 = face_tensors(screen_verts, faces)
    with torch.no_grad():
        plan = make_plan(
            fxy.detach(), fz.detach(), area2.detach(), faces_per_image=n_faces, height=height, width=width,
            radius=0.0, near=near, far=far, double_sided=double_sided, max_pairs=max_pairs,
        )
        hw = n_img * height * width
        fxy_d, fz_d, a_d = fxy.detach(), fz.detach(), area2.detach()

        def block_depth(blk: Block) -> tuple[Tensor, Tensor, Tensor]:
            grid = block_grid(blk, plan, fxy_d.dtype)
            w = edge_functions(*corners(fxy_d, blk.g), grid.px, grid.py)
            zs = fz_d.index_select(1, blk.g) / a_d.index_select(0, blk.g)  # (3, Fb) z_k / A
            depth = w[0] * face_row(zs[0]) + w[1] * face_row(zs[1]) + w[2] * face_row(zs[2])
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
