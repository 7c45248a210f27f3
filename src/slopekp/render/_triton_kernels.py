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
def _load_faces(table_ptr, G, g, fm):
    """The table's columns ``g`` (masked by ``fm``): corner x (3), y (3), depth (3) and ``1/A``."""
    x0 = tl.load(table_ptr + 0 * G + g, mask=fm, other=0.0)
    x1 = tl.load(table_ptr + 1 * G + g, mask=fm, other=0.0)
    x2 = tl.load(table_ptr + 2 * G + g, mask=fm, other=0.0)
    y0 = tl.load(table_ptr + 3 * G + g, mask=fm, other=0.0)
    y1 = tl.load(table_ptr + 4 * G + g, mask=fm, other=0.0)
    y2 = tl.load(table_ptr + 5 * G + g, mask=fm, other=0.0)
    z0 = tl.load(table_ptr + 6 * G + g, mask=fm, other=0.0)
    z1 = tl.load(table_ptr + 7 * G + g, mask=fm, other=0.0)
    z2 = tl.load(table_ptr + 8 * G + g, mask=fm, other=0.0)
    inv_a = tl.load(table_ptr + 9 * G + g, mask=fm, other=0.0)
    return x0, x1, x2, y0, y1, y2, z0, z1, z2, inv_a


@triton.jit
def _pair_math(px, py, x0, x1, x2, y0, y1, y2, z0, z1, z2, inv_a, inv_sigma):
    """Pixel centres ``p`` against faces, element-wise on broadcast shapes: ``1 - D``, ``delta·d²``, the depth of
    the clamped barycentrics, the closest boundary point's weights ``beta`` and ``p`` minus it, and the edge
    functions ``w_k`` (``w_k / A`` are the raw barycentrics)."""
    sgn = tl.where(inv_a > 0, 1.0, -1.0)
    # edge k runs from corner a = k+1 to b = k+2 (mod 3); the closest edge's boundary point q = sum_v beta_v v_v
    w0, m, t, rx, ry, d2 = _edge(px, py, x1, y1, x2, y2, sgn)  # edge 0: v1 -> v2
    b0 = tl.zeros_like(t)
    b1 = 1.0 - t
    b2 = t
    w1, m1, t, rxk, ryk, dk = _edge(px, py, x2, y2, x0, y0, sgn)  # edge 1: v2 -> v0
    m = tl.minimum(m, m1)
    closer = dk < d2  # strictly: ties keep the earlier edge, as the reference does
    rx = tl.where(closer, rxk, rx)
    ry = tl.where(closer, ryk, ry)
    b2n = tl.where(closer, 1.0 - t, b2)
    b0 = tl.where(closer, t, b0)
    b1 = tl.where(closer, 0.0, b1)
    b2 = b2n
    d2 = tl.minimum(d2, dk)
    w2, m2, t, rxk, ryk, dk = _edge(px, py, x0, y0, x1, y1, sgn)  # edge 2: v0 -> v1
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
    # the depth of the clamped barycentrics (for the [near, far] test and the RGB pairs)
    c0 = tl.minimum(tl.maximum(w0 * inv_a, 0.0), 1.0)
    c1 = tl.minimum(tl.maximum(w1 * inv_a, 0.0), 1.0)
    c2 = tl.minimum(tl.maximum(w2 * inv_a, 0.0), 1.0)
    # c0 + c1 + c2 >= 1 for a live face (its barycentrics sum to 1); 0 only in masked-off lanes
    inv_s = 1.0 / tl.maximum(c0 + c1 + c2, 1e-30)
    depth = (c0 * z0 + c1 * z1 + c2 * z2) * inv_s
    one_minus_d = tl.sigmoid(-z * inv_sigma)
    return one_minus_d, z, delta, depth, b0, b1, b2, rx, ry, w0, w1, w2, c0 * inv_s, c1 * inv_s, c2 * inv_s


@triton.jit
def _pair_block(table_ptr, G, g, fm, px, py, pvalid, r2, inv_sigma, near, far):
    """The dense (pixels, faces) block of one chunk: :func:`_pair_math` and the kept pairs (faces ``fm`` of the
    chunk that touch the tile, pixels ``pvalid`` in the image, within the cut-off and ``[near, far]``)."""
    x0, x1, x2, y0, y1, y2, z0, z1, z2, inv_a = _load_faces(table_ptr, G, g, fm)
    omd, z, delta, depth, b0, b1, b2, rx, ry, w0, w1, w2, bary0, bary1, bary2 = _pair_math(
        px[:, None], py[:, None], x0[None, :], x1[None, :], x2[None, :], y0[None, :], y1[None, :], y2[None, :],
        z0[None, :], z1[None, :], z2[None, :], inv_a[None, :], inv_sigma)  # fmt: skip
    keep = (z > -r2) & (depth >= near) & (depth <= far) & fm[None, :] & pvalid[:, None]
    return omd, keep, delta, depth, b0, b1, b2, rx, ry, bary0, bary1, bary2


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
def _in_dtype(table_ptr, a, b, c, d):
    """The scalar arguments in the table's dtype. They are declared ``tl.float64``: a compiled kernel would
    otherwise receive Python floats as float32 (the interpreter keeps them exact), and a float64 render would see
    ``1/sigma`` or ``near`` rounded on the GPU only."""
    dt = table_ptr.dtype.element_ty
    return tl.full([], a, dt), tl.full([], b, dt), tl.full([], c, dt), tl.full([], d, dt)


@triton.jit
def silhouette_forward(table_ptr, win_ptr, out_ptr, count_ptr, G, F, H, W, r2: tl.float64, inv_sigma: tl.float64,
                       near: tl.float64, far: tl.float64, TILE: tl.constexpr, FB: tl.constexpr,
                       COUNT: tl.constexpr):  # fmt: skip
    """``sum log(1 - D)`` of each pixel of the tile; with ``COUNT``, also the number of kept pairs of the tile
    (``count_ptr[program]``, for :func:`pairs_fill`'s offsets)."""
    r2, inv_sigma, near, far = _in_dtype(table_ptr, r2, inv_sigma, near, far)
    n, r0, c0, row, col, pvalid, px, py = _tile(table_ptr, H, W, TILE)
    acc = tl.zeros([TILE * TILE], dtype=table_ptr.dtype.element_ty)
    kept = tl.zeros([TILE * TILE], dtype=tl.int32)
    for f0 in range(0, F, FB):
        g, touch = _chunk(win_ptr, G, F, n, f0, r0, c0, TILE, FB)
        if tl.max(touch.to(tl.int32), axis=0) > 0:
            omd, keep, delta, depth, b0, b1, b2, rx, ry, bary0, bary1, bary2 = _pair_block(
                table_ptr, G, g, touch, px, py, pvalid, r2, inv_sigma, near, far)  # fmt: skip
            acc += tl.sum(tl.where(keep, tl.log(omd), 0.0), axis=1)
            if COUNT:
                kept += tl.sum(keep.to(tl.int32), axis=1)
    tl.store(out_ptr + (n * H + row) * W + col, acc, mask=pvalid)
    if COUNT:
        program = (n * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
        tl.store(count_ptr + program, tl.sum(kept, axis=0).to(tl.int64))


@triton.jit
def pairs_fill(table_ptr, win_ptr, end_ptr, count_ptr, pix_ptr, face_ptr, prob_ptr, bary_ptr, depth_ptr, M: tl.int64,
               G, F, H, W, r2: tl.float64, inv_sigma: tl.float64, near: tl.float64, far: tl.float64,
               TILE: tl.constexpr, FB: tl.constexpr):  # fmt: skip
    """Write the tile's kept pairs into its slots ``[end - count, end)`` (chunk by chunk, pixel-major in a chunk):
    flat pixel and flat face (int64), ``D``, the clamped, renormalised barycentrics ``(3, M)`` and their depth.
    The stores stop at the tile's end, whatever this pass keeps (it recomputes what the counting pass kept; the
    launch turns floating-point contraction off, so both compute it alike)."""
    r2, inv_sigma, near, far = _in_dtype(table_ptr, r2, inv_sigma, near, far)
    n, r0, c0, row, col, pvalid, px, py = _tile(table_ptr, H, W, TILE)
    program = (n * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
    end = tl.load(end_ptr + program)
    base = end - tl.load(count_ptr + program)
    pix = (n * H + row).to(tl.int64) * W + col
    for f0 in range(0, F, FB):
        g, touch = _chunk(win_ptr, G, F, n, f0, r0, c0, TILE, FB)
        if tl.max(touch.to(tl.int32), axis=0) > 0:
            omd, keep, delta, depth, b0, b1, b2, rx, ry, bary0, bary1, bary2 = _pair_block(
                table_ptr, G, g, touch, px, py, pvalid, r2, inv_sigma, near, far)  # fmt: skip
            flat = tl.reshape(keep, [TILE * TILE * FB])
            slot = base + tl.cumsum(flat.to(tl.int64), axis=0) - 1
            base += tl.sum(flat.to(tl.int64), axis=0)
            flat = flat & (slot < end)
            pix_b = tl.reshape(tl.broadcast_to(pix[:, None], [TILE * TILE, FB]), [TILE * TILE * FB])
            g_b = tl.reshape(tl.broadcast_to(g.to(tl.int64)[None, :], [TILE * TILE, FB]), [TILE * TILE * FB])
            tl.store(pix_ptr + slot, pix_b, mask=flat)
            tl.store(face_ptr + slot, g_b, mask=flat)
            tl.store(prob_ptr + slot, tl.reshape(1.0 - omd, [TILE * TILE * FB]), mask=flat)
            tl.store(bary_ptr + slot, tl.reshape(bary0, [TILE * TILE * FB]), mask=flat)
            tl.store(bary_ptr + M + slot, tl.reshape(bary1, [TILE * TILE * FB]), mask=flat)
            tl.store(bary_ptr + 2 * M + slot, tl.reshape(bary2, [TILE * TILE * FB]), mask=flat)
            tl.store(depth_ptr + slot, tl.reshape(depth, [TILE * TILE * FB]), mask=flat)


@triton.jit
def silhouette_backward(table_ptr, win_ptr, grad_out_ptr, grad_ptr, G, F, H, W, r2: tl.float64,
                        inv_sigma: tl.float64, near: tl.float64, far: tl.float64, TILE: tl.constexpr,
                        FB: tl.constexpr):  # fmt: skip
    r2, inv_sigma, near, far = _in_dtype(table_ptr, r2, inv_sigma, near, far)
    n, r0, c0, row, col, pvalid, px, py = _tile(table_ptr, H, W, TILE)
    gl = tl.load(grad_out_ptr + (n * H + row) * W + col, mask=pvalid, other=0.0)
    for f0 in range(0, F, FB):
        g, touch = _chunk(win_ptr, G, F, n, f0, r0, c0, TILE, FB)
        if tl.max(touch.to(tl.int32), axis=0) > 0:
            omd, keep, delta, depth, b0, b1, b2, rx, ry, bary0, bary1, bary2 = _pair_block(
                table_ptr, G, g, touch, px, py, pvalid, r2, inv_sigma, near, far)  # fmt: skip
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


@triton.jit
def _add_edge_grad(dw, px, py, xa, ya, xb, yb, gxa, gya, gxb, gyb):
    """Add ``dL/dw · dw/d(corner)`` for the edge function ``w = (x_b - x_a)(p_y - y_a) - (y_b - y_a)(p_x - x_a)``
    to the gradients of its corners ``a`` and ``b``."""
    return gxa + dw * (yb - py), gya + dw * (px - xb), gxb + dw * (py - ya), gyb + dw * (xa - px)


@triton.jit
def pairs_backward(table_ptr, pix_ptr, face_ptr, grad_prob_ptr, grad_bary_ptr, grad_depth_ptr, gxy_ptr, gz_ptr,
                   ga_ptr, M: tl.int64, G, H, W, inv_sigma: tl.float64, BLOCK: tl.constexpr):  # fmt: skip
    """The RGB pairs' share of the gradients, one lane per pair (recomputed from its pixel and face): ``dL/dD``
    through ``d²`` (``dD/d(d²) = D (1 - D) delta / sigma``, then ``d(d²)/dv = -2 beta_v (p - q)``), ``dL/dbary``
    and ``dL/ddepth`` through the clamped, renormalised barycentrics ``w_k / A`` into the corners (``gxy (G, 3,
    2)``), the corner depths (``gz (G, 3)``) and ``A`` (``ga (G,)``), with atomics."""
    inv_sigma = tl.full([], inv_sigma, table_ptr.dtype.element_ty)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    pix = tl.load(pix_ptr + i, mask=i < M, other=0)
    g = tl.load(face_ptr + i, mask=i < M, other=-1)
    im = g >= 0  # a slot the fill pass left unwritten (-1) gets no gradient
    col = pix % W
    row = (pix // W) % H
    px = (2 * col + 1).to(table_ptr.dtype.element_ty) / W - 1.0
    py = (2 * row + 1).to(table_ptr.dtype.element_ty) / H - 1.0
    x0, x1, x2, y0, y1, y2, z0, z1, z2, inv_a = _load_faces(table_ptr, G, g, im)
    omd, z, delta, depth, b0, b1, b2, rx, ry, w0, w1, w2, bary0, bary1, bary2 = _pair_math(
        px, py, x0, x1, x2, y0, y1, y2, z0, z1, z2, inv_a, inv_sigma)  # fmt: skip
    gp = tl.load(grad_prob_ptr + i, mask=im, other=0.0)
    gd = tl.load(grad_depth_ptr + i, mask=im, other=0.0)
    # dL/d(d²) from dL/dD, and its corner gradients -2 c beta_v (p - q)
    c = -2.0 * gp * (1.0 - omd) * omd * delta * inv_sigma
    gx0 = c * b0 * rx
    gy0 = c * b0 * ry
    gx1 = c * b1 * rx
    gy1 = c * b1 * ry
    gx2 = c * b2 * rx
    gy2 = c * b2 * ry
    # G_k = dL/dbary_k + dL/ddepth z_k; through the renormalisation and the clamp to the raw w_k / A
    k0 = tl.load(grad_bary_ptr + i, mask=im, other=0.0) + gd * z0
    k1 = tl.load(grad_bary_ptr + M + i, mask=im, other=0.0) + gd * z1
    k2 = tl.load(grad_bary_ptr + 2 * M + i, mask=im, other=0.0) + gd * z2
    t = k0 * bary0 + k1 * bary1 + k2 * bary2
    r0 = w0 * inv_a
    r1 = w1 * inv_a
    r2 = w2 * inv_a
    # 1 / s, s the sum of the clamped barycentrics (bary_k = clamp(r_k) / s; s >= 1 for a kept pair)
    inv_s = 1.0 / tl.maximum(tl.minimum(tl.maximum(r0, 0.0), 1.0) + tl.minimum(tl.maximum(r1, 0.0), 1.0)
                             + tl.minimum(tl.maximum(r2, 0.0), 1.0), 1e-30)  # fmt: skip
    d0 = tl.where((r0 >= 0.0) & (r0 <= 1.0), (k0 - t) * inv_s, 0.0)  # dL/d(w_0 / A)
    d1 = tl.where((r1 >= 0.0) & (r1 <= 1.0), (k1 - t) * inv_s, 0.0)
    d2 = tl.where((r2 >= 0.0) & (r2 <= 1.0), (k2 - t) * inv_s, 0.0)
    tl.atomic_add(ga_ptr + g, -(d0 * r0 + d1 * r1 + d2 * r2) * inv_a, mask=im)  # d(w/A)/dA = -(w/A)/A
    d0 = d0 * inv_a  # dL/dw_k
    d1 = d1 * inv_a
    d2 = d2 * inv_a
    # edge k runs from a = k+1 to b = k+2
    gx1, gy1, gx2, gy2 = _add_edge_grad(d0, px, py, x1, y1, x2, y2, gx1, gy1, gx2, gy2)
    gx2, gy2, gx0, gy0 = _add_edge_grad(d1, px, py, x2, y2, x0, y0, gx2, gy2, gx0, gy0)
    gx0, gy0, gx1, gy1 = _add_edge_grad(d2, px, py, x0, y0, x1, y1, gx0, gy0, gx1, gy1)
    tl.atomic_add(gxy_ptr + g * 6 + 0, gx0, mask=im)
    tl.atomic_add(gxy_ptr + g * 6 + 1, gy0, mask=im)
    tl.atomic_add(gxy_ptr + g * 6 + 2, gx1, mask=im)
    tl.atomic_add(gxy_ptr + g * 6 + 3, gy1, mask=im)
    tl.atomic_add(gxy_ptr + g * 6 + 4, gx2, mask=im)
    tl.atomic_add(gxy_ptr + g * 6 + 5, gy2, mask=im)
    tl.atomic_add(gz_ptr + g * 3 + 0, gd * bary0, mask=im)
    tl.atomic_add(gz_ptr + g * 3 + 1, gd * bary1, mask=im)
    tl.atomic_add(gz_ptr + g * 3 + 2, gd * bary2, mask=im)
