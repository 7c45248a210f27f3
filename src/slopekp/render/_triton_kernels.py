"""The Triton kernels of :mod:`slopekp.render.fused` (imported only when the fused path runs: this module needs
Triton; see that module for the maths and the status)."""

import triton
import triton.language as tl


@triton.jit
def _edge(px, py, ax, ay, bx, by, sgn):
    """The edge from ``a`` to ``b`` at pixel centres ``p``: its edge function ``cross(b - a, p - a)``, the signed
    distance to its line (> 0 inside), the parameter ``t`` of the closest point of the segment, ``p`` minus that
    point, and the squared distance."""
    ex = bx - ax
    ey = by - ay
    qx = px - ax
    qy = py - ay
    w = ex * qy - ey * qx
    len2 = ex * ex + ey * ey
    len2 = tl.where(len2 > 0, len2, 1.0)  # masked-off lanes only: live faces have no zero-length edge
    t = tl.minimum(tl.maximum((qx * ex + qy * ey) / len2, 0.0), 1.0)
    rx = qx - t * ex
    ry = qy - t * ey
    return w, w * sgn / tl.sqrt(len2), t, rx, ry, rx * rx + ry * ry


@triton.jit
def _pair_block(table_ptr, G, g, fm, px, py, pvalid, r2, inv_sigma, near, far):
    """The dense (pixels, faces) block of one chunk: ``1 - D``, the kept pairs (faces ``fm`` of the chunk that touch
    the tile, pixels ``pvalid`` in the image, within the cut-off and ``[near, far]``), and the backward's pieces."""
    x0 = tl.load(table_ptr + 0 * G + g, mask=fm, other=0.0)[None, :]
    x1 = tl.load(table_ptr + 1 * G + g, mask=fm, other=0.0)[None, :]
    x2 = tl.load(table_ptr + 2 * G + g, mask=fm, other=0.0)[None, :]
    y0 = tl.load(table_ptr + 3 * G + g, mask=fm, other=0.0)[None, :]
    y1 = tl.load(table_ptr + 4 * G + g, mask=fm, other=0.0)[None, :]
    y2 = tl.load(table_ptr + 5 * G + g, mask=fm, other=0.0)[None, :]
    z0 = tl.load(table_ptr + 6 * G + g, mask=fm, other=0.0)[None, :]
    z1 = tl.load(table_ptr + 7 * G + g, mask=fm, other=0.0)[None, :]
    z2 = tl.load(table_ptr + 8 * G + g, mask=fm, other=0.0)[None, :]
    inv_a = tl.load(table_ptr + 9 * G + g, mask=fm, other=0.0)[None, :]  # 1 / A
    sgn = tl.where(inv_a > 0, 1.0, -1.0)
    pxb = px[:, None]
    pyb = py[:, None]
    # edge k runs from corner a = k+1 to b = k+2 (mod 3); the closest edge's boundary point q = sum_v beta_v v_v
    w0, m, t, rx, ry, d2 = _edge(pxb, pyb, x1, y1, x2, y2, sgn)  # edge 0: v1 -> v2
    b0 = tl.zeros_like(t)
    b1 = 1.0 - t
    b2 = t
    w1, m1, t, rxk, ryk, dk = _edge(pxb, pyb, x2, y2, x0, y0, sgn)  # edge 1: v2 -> v0
    m = tl.minimum(m, m1)
    closer = dk < d2  # strictly: ties keep the earlier edge, as the reference does
    rx = tl.where(closer, rxk, rx)
    ry = tl.where(closer, ryk, ry)
    b2n = tl.where(closer, 1.0 - t, b2)
    b0 = tl.where(closer, t, b0)
    b1 = tl.where(closer, 0.0, b1)
    b2 = b2n
    d2 = tl.minimum(d2, dk)
    w2, m2, t, rxk, ryk, dk = _edge(pxb, pyb, x0, y0, x1, y1, sgn)  # edge 2: v0 -> v1
    m = tl.minimum(m, m2)
    closer = dk < d2
    rx = tl.where(closer, rxk, rx)
    ry = tl.where(closer, ryk, ry)
    b0 = tl.where(closer, 1.0 - t, b0)
    b1 = tl.where(closer, t, b1)
    b2 = tl.where(closer, 0.0, b2)
    d2 = tl.minimum(d2, dk)
    delta = tl.where(m > 0, 1.0, tl.where(m < 0, -1.0, 0.0))
    z = delta * d2
    # the [near, far] test on the clamped-barycentric depth (always true for faces inside the range)
    c0 = tl.minimum(tl.maximum(w0 * inv_a, 0.0), 1.0)
    c1 = tl.minimum(tl.maximum(w1 * inv_a, 0.0), 1.0)
    c2 = tl.minimum(tl.maximum(w2 * inv_a, 0.0), 1.0)
    # c0 + c1 + c2 >= 1 for a live face (its barycentrics sum to 1); 0 only in masked-off lanes
    depth = (c0 * z0 + c1 * z1 + c2 * z2) / tl.maximum(c0 + c1 + c2, 1e-30)
    keep = (z > -r2) & (depth >= near) & (depth <= far) & fm[None, :] & pvalid[:, None]
    one_minus_d = tl.sigmoid(-z * inv_sigma)
    return one_minus_d, keep, delta, b0, b1, b2, rx, ry

@triton.jit
def _chunk(win_ptr, G, F, n, f0, r0, c0, TILE: tl.constexpr, FB: tl.constexpr):
    fo = f0 + tl.arange(0, FB)
    fm = fo < F
    g = n * F + fo
    wc0 = tl.load(win_ptr + 0 * G + g, mask=fm, other=1)
    wc1 = tl.load(win_ptr + 1 * G + g, mask=fm, other=0)
    wr0 = tl.load(win_ptr + 2 * G + g, mask=fm, other=1)
    wr1 = tl.load(win_ptr + 3 * G + g, mask=fm, other=0)
    touch = fm & (wc0 <= c0 + TILE - 1) & (wc1 >= c0) & (wr0 <= r0 + TILE - 1) & (wr1 >= r0)
    return g, touch

@triton.jit
def _tile(table_ptr, H, W, TILE: tl.constexpr):
    """This program's image ``n`` and ``TILE × TILE`` pixel tile (top-left ``r0, c0``): pixel rows and columns,
    which of them lie in the image, and their centres in NDC (``(2j + 1)/W − 1``) in the table's dtype."""
    n = tl.program_id(0)
    r0 = tl.program_id(1) * TILE
    c0 = tl.program_id(2) * TILE
    p = tl.arange(0, TILE * TILE)
    row = r0 + p // TILE
    col = c0 + p % TILE
    pvalid = (row < H) & (col < W)
    px = (2 * col + 1).to(table_ptr.dtype.element_ty) / W - 1.0
    py = (2 * row + 1).to(table_ptr.dtype.element_ty) / H - 1.0
    return n, r0, c0, row, col, pvalid, px, py


@triton.jit
def silhouette_forward(table_ptr, win_ptr, out_ptr, G, F, H, W, r2, inv_sigma, near, far,
                       TILE: tl.constexpr, FB: tl.constexpr):  # fmt: skip
    n, r0, c0, row, col, pvalid, px, py = _tile(table_ptr, H, W, TILE)
    acc = tl.zeros([TILE * TILE], dtype=table_ptr.dtype.element_ty)
    for f0 in range(0, F, FB):
        g, touch = _chunk(win_ptr, G, F, n, f0, r0, c0, TILE, FB)
        if tl.max(touch.to(tl.int32), axis=0) > 0:
            omd, keep, delta, b0, b1, b2, rx, ry = _pair_block(table_ptr, G, g, touch, px, py, pvalid, r2,
                                                               inv_sigma, near, far)  # fmt: skip
            acc += tl.sum(tl.where(keep, tl.log(omd), 0.0), axis=1)
    tl.store(out_ptr + (n * H + row) * W + col, acc, mask=pvalid)

@triton.jit
def silhouette_backward(table_ptr, win_ptr, grad_out_ptr, grad_ptr, G, F, H, W, r2, inv_sigma, near, far,
                        TILE: tl.constexpr, FB: tl.constexpr):  # fmt: skip
    n, r0, c0, row, col, pvalid, px, py = _tile(table_ptr, H, W, TILE)
    gl = tl.load(grad_out_ptr + (n * H + row) * W + col, mask=pvalid, other=0.0)
    for f0 in range(0, F, FB):
        g, touch = _chunk(win_ptr, G, F, n, f0, r0, c0, TILE, FB)
        if tl.max(touch.to(tl.int32), axis=0) > 0:
            omd, keep, delta, b0, b1, b2, rx, ry = _pair_block(table_ptr, G, g, touch, px, py, pvalid, r2,
                                                               inv_sigma, near, far)  # fmt: skip
            # c = dL/d(d²) = dL/dlog_t · d log(1 - D)/d(d²) = gl · (-D·delta/sigma)
            c = tl.where(keep, gl[:, None] * (omd - 1.0) * delta * inv_sigma, 0.0)
            cx = c * rx
            cy = c * ry
            # dL/dv = -2 Σ_pixels c β_v (p - q); layout (G, corner, xy)
            tl.atomic_add(grad_ptr + g * 6 + 0, -2.0 * tl.sum(cx * b0, axis=0), mask=touch)
            tl.atomic_add(grad_ptr + g * 6 + 1, -2.0 * tl.sum(cy * b0, axis=0), mask=touch)
            tl.atomic_add(grad_ptr + g * 6 + 2, -2.0 * tl.sum(cx * b1, axis=0), mask=touch)
            tl.atomic_add(grad_ptr + g * 6 + 3, -2.0 * tl.sum(cy * b1, axis=0), mask=touch)
            tl.atomic_add(grad_ptr + g * 6 + 4, -2.0 * tl.sum(cx * b2, axis=0), mask=touch)
            tl.atomic_add(grad_ptr + g * 6 + 5, -2.0 * tl.sum(cy * b2, axis=0), mask=touch)
