"""Naive dense reference renderer for the tests: every (image, face, pixel) triple, (N, F, H, W) tensors.

Written from the formulas in the renderer's docstrings (SoftRas silhouette / softmax RGB, z-buffer), without
the window enumeration, buckets or scatter operations of the fast path. Only for tiny sizes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Dense(NamedTuple):
    bary: torch.Tensor  # (N, F, H, W, 3) unclamped
    inside: torch.Tensor  # (N, F, H, W) bool
    d2: torch.Tensor  # (N, F, H, W) squared distance to the triangle boundary
    area2: torch.Tensor  # (N, F, 1, 1)
    z: torch.Tensor  # (N, F, 3) vertex depths


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _seg_d2(p, a, b):
    e = b - a
    len2 = (e * e).sum(-1, keepdim=True)
    dot = ((p - a) * e).sum(-1, keepdim=True)
    t = torch.where(len2 > 0, dot / len2.clamp(min=1e-300), torch.zeros_like(len2))
    q = a + t.clamp(0, 1) * e
    return ((p - q) ** 2).sum(-1)


def dense_geometry(sv: torch.Tensor, faces: torch.Tensor, h: int, w: int) -> Dense:
    """``sv: (N, V, 3)`` screen verts -> dense per-pair geometry."""
    xs = torch.tensor([(2 * j + 1) / w - 1 for j in range(w)], dtype=sv.dtype)
    ys = torch.tensor([(2 * i + 1) / h - 1 for i in range(h)], dtype=sv.dtype)
    p = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)], -1)  # (H, W, 2)
    fv = sv[:, faces]  # (N, F, 3, 3)
    v = [fv[:, :, k, None, None, :2] for k in range(3)]  # (N, F, 1, 1, 2)
    area2 = _cross(v[1] - v[0], v[2] - v[0])
    lam = torch.stack(
        [_cross(v[2] - v[1], p - v[1]), _cross(v[0] - v[2], p - v[2]), _cross(v[1] - v[0], p - v[0])], -1
    )
    inside = ((lam >= 0).all(-1) | (lam <= 0).all(-1)) & (area2 != 0)
    d2 = torch.minimum(torch.minimum(_seg_d2(p, v[1], v[2]), _seg_d2(p, v[2], v[0])), _seg_d2(p, v[0], v[1]))
    bary = lam / area2.unsqueeze(-1)
    return Dense(bary, inside, d2, area2, fv[..., 2])


def dense_soft(
    sv, faces, h, w, *, sigma, eps, near=1.0, far=100.0, gamma=1e-4, colour_fn=None,
    background=(0.0, 0.0, 0.0), double_sided=True, bg_eps=1e-3,
):
    """Dense SoftRas: returns ``(alpha (N,H,W), rgb (N,3,H,W) or None)``.

    ``colour_fn(bary_clamped (N,F,H,W,3)) -> (N,F,H,W,3)`` gives each pair's colour. ``eps`` = 0 keeps every
    pair.
    """
    g = dense_geometry(sv, faces, h, w)
    signed = torch.where(g.inside, g.d2, -g.d2) / sigma
    prob = torch.sigmoid(signed)
    bc = g.bary.clamp(0, 1)
    bc = bc / bc.sum(-1, keepdim=True)
    depth = (bc * g.z[:, :, None, None, :]).sum(-1)
    keep = (g.area2 != 0) & (depth >= near) & (depth <= far)
    if eps > 0:
        keep = keep & (g.inside | (g.d2 < sigma * math.log(1 / eps - 1)))
    if not double_sided:
        keep = keep & (g.area2 < 0)
    log_t = torch.where(keep, F.logsigmoid(-signed), torch.zeros_like(signed)).sum(1)
    alpha = 1 - torch.exp(log_t)
    if colour_fn is None:
        return alpha, None
    zn = (far - depth) / (far - near)
    zn_k = torch.where(keep, zn, torch.full_like(zn, -math.inf))
    zmax = torch.maximum(zn_k.amax(1), torch.full_like(zn_k[:, 0], bg_eps)).detach()  # (N, H, W)
    wgt = torch.where(keep, prob * torch.exp((zn - zmax[:, None]) / gamma), torch.zeros_like(prob))
    wbg = torch.exp((bg_eps - zmax) / gamma)
    col = colour_fn(bc)  # (N, F, H, W, 3)
    bg = torch.tensor(background, dtype=sv.dtype)
    num = (wgt.unsqueeze(-1) * col).sum(1) + wbg.unsqueeze(-1) * bg
    rgb = num / (wgt.sum(1) + wbg).unsqueeze(-1)
    return alpha, rgb.permute(0, 3, 1, 2)


def dense_hard(sv, faces, h, w, *, near=1.0, far=100.0, double_sided=True):
    """Dense z-buffer: ``(face_index (N,H,W), depth (N,H,W), bary (N,H,W,3))``; ties -> lowest face index."""
    g = dense_geometry(sv, faces, h, w)
    depth = (g.bary * g.z[:, :, None, None, :]).sum(-1)
    ok = g.inside & (depth >= near) & (depth <= far)
    if not double_sided:
        ok = ok & (g.area2 < 0)
    zb = torch.where(ok, depth, torch.full_like(depth, math.inf))
    zmin, idx = zb.min(1)  # first minimum = lowest face index
    covered = torch.isfinite(zmin)
    face_index = torch.where(covered, idx, torch.full_like(idx, -1))
    bary = torch.gather(g.bary, 1, idx[:, None, :, :, None].expand(-1, 1, -1, -1, 3)).squeeze(1)
    bary = torch.where(covered.unsqueeze(-1), bary, torch.zeros_like(bary))
    return face_index, torch.where(covered, zmin, torch.full_like(zmin, far)), bary


def uv_colour_fn(faces, verts_uv, uv_image, tex_index):
    """Colour function for ``dense_soft``: sphere-UV mapping + ``F.grid_sample`` (align_corners, border)."""
    phi = math.pi * verts_uv[:, 0]
    theta = math.pi * (verts_uv[:, 1] + 1) / 2
    st = torch.sin(theta)
    sph = torch.stack([st * torch.cos(phi), st * torch.sin(phi), torch.cos(theta)], -1)
    fs = sph[faces]  # (F, 3 verts, 3)

    def fn(bc):
        pts = torch.einsum("nfhwk,fkc->nfhwc", bc, fs)
        u = torch.atan2(pts[..., 1], pts[..., 0]) / math.pi
        v = 2 * torch.acos((pts[..., 2] / pts.norm(dim=-1)).clamp(-1 + 1e-7, 1 - 1e-7)) / math.pi - 1
        u = torch.remainder(u + 0.5 + 1, 2) - 1
        grid = torch.stack([u, v], -1)  # (N, F, H, W, 2)
        n, f, h, w, _ = grid.shape
        out = F.grid_sample(
            uv_image[tex_index], grid.reshape(n, f * h, w, 2), align_corners=True, padding_mode="border"
        )  # (N, 3, F*H, W)
        return out.reshape(n, 3, f, h, w).permute(0, 2, 3, 4, 1)

    return fn


def vertex_colour_fn(faces, verts_rgb, tex_index):
    """Colour function for ``dense_soft``: per-vertex colours ``(T, V, 3)`` interpolated with clamped
    barycentrics."""
    fc = verts_rgb[tex_index][:, faces]  # (N, F, 3 verts, 3)
    return lambda bc: torch.einsum("nfhwk,nfkc->nfhwc", bc, fc)


def uv_sphere_mesh(rings: int, segs: int, dtype=torch.float64):
    """Closed lat-long unit sphere: ``verts (V, 3)``, ``faces (F, 3)`` counter-clockwise seen from outside."""
    verts = [[0.0, 0.0, 1.0]]
    for i in range(1, rings):
        th = math.pi * i / rings
        for j in range(segs):
            ph = 2 * math.pi * j / segs
            verts.append([math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th)])
    verts.append([0.0, 0.0, -1.0])
    faces = [[0, 1 + j, 1 + (j + 1) % segs] for j in range(segs)]
    for i in range(rings - 2):
        for j in range(segs):
            a, b = 1 + i * segs + j, 1 + i * segs + (j + 1) % segs
            faces += [[a, a + segs, b], [b, a + segs, b + segs]]
    last, base = len(verts) - 1, 1 + (rings - 2) * segs
    faces += [[base + j, last, base + (j + 1) % segs] for j in range(segs)]
    return torch.tensor(verts, dtype=dtype), torch.tensor(faces)
