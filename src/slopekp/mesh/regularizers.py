"""Shape regularisers (METHOD §7.3–7.6): deformation size, graph and cotangent Laplacians, edge lengths.

All losses take batched vertices ``(B, V, 3)`` (a single ``(V, 3)`` mesh is treated as ``B = 1``), are
differentiable, and return a scalar tensor. Laplacian matrices are ``torch`` sparse COO ``(V, V)`` float32
tensors with the sign convention ``L = D − W`` (diagonal = sum of the off-diagonal weights), so ``(L x)_v
= Σ_u w_vu (x_v − x_u)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from slopekp.mesh.topology import edges
from slopekp.utils import check_shape

__all__ = [
    "uniform_laplacian",
    "graph_laplacian_loss",
    "cotangent_weights",
    "cotangent_laplacian",
    "cotangent_laplacian_loss",
    "edge_length_loss",
    "deform_loss",
]


def _batched(verts: Tensor, name: str = "verts") -> Tensor:
    if verts.dim() == 2:
        verts = verts.unsqueeze(0)
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, V, 3) or (V, 3), got {tuple(verts.shape)}")
    return verts


def _laplacian_from_weights(ij: Tensor, w: Tensor, num_verts: int) -> Tensor:
    """Sparse ``D − W`` from symmetric edge weights ``w`` on undirected edges ``ij`` ``(E, 2)``."""
    i, j = ij[:, 0], ij[:, 1]
    diag = torch.zeros(num_verts, dtype=w.dtype, device=w.device)
    diag = diag.index_add(0, i, w).index_add(0, j, w)
    ar = torch.arange(num_verts, device=w.device)
    rows = torch.cat([i, j, ar])
    cols = torch.cat([j, i, ar])
    vals = torch.cat([-w, -w, diag])
    idx = torch.stack([rows, cols])
    return torch.sparse_coo_tensor(idx, vals, (num_verts, num_verts), check_invariants=True).coalesce()


def uniform_laplacian(faces: Tensor, num_verts: int) -> Tensor:
    """Unnormalised uniform (graph) Laplacian ``L = D − A``.

    Args:
        faces: ``(F, 3)`` int64.
        num_verts: ``V``.

    Returns:
        Sparse COO ``(V, V)`` float32 on ``faces.device``: ``L_vv = deg(v)``, ``L_vu = −1`` for each edge.
    """
    e = edges(faces)
    w = torch.ones(e.shape[0], dtype=torch.float32, device=faces.device)
    return _laplacian_from_weights(e, w, num_verts)


def graph_laplacian_loss(verts: Tensor, faces: Tensor) -> Tensor:
    """METHOD 7.4: ``mean_{b,v} ‖deg(v)·V_v − Σ_{u∈N(v)} V_u‖₂`` (unnormalised uniform Laplacian, L2 norm).

    Args:
        verts: ``(B, V, 3)`` or ``(V, 3)`` float.
        faces: ``(F, 3)`` int64.

    Returns:
        Scalar tensor. The gradient at a vertex whose Laplacian is exactly zero is zero (no NaN).
    """
    v = _batched(verts)
    e = edges(faces).to(v.device)
    diff = v[:, e[:, 0]] - v[:, e[:, 1]]  # (B, E, 3)
    lap = torch.zeros_like(v).index_add(1, e[:, 0], diff).index_add(1, e[:, 1], -diff)
    return _safe_norm(lap).mean()


def _safe_norm(x: Tensor, eps: float = 1e-20) -> Tensor:
    """``‖x‖₂`` over the last dim with a finite (zero) gradient at ``x = 0``."""
    sq = (x * x).sum(-1)
    return torch.where(sq > eps, sq.clamp_min(eps).sqrt(), torch.zeros_like(sq))


def cotangent_weights(verts: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """Cotangent edge weights ``w_uv = (cot α + cot β)/2`` over the (one or two) angles opposite each edge.

    Args:
        verts: ``(V, 3)`` float.
        faces: ``(F, 3)`` int64.

    Returns:
        ``edges (E, 2)`` int64 (as :func:`~slopekp.mesh.topology.edges`) and ``weights (E,)`` in the dtype
        of ``verts``. Weights can be negative for obtuse triangles.
    """
    check_shape("verts", verts, ("V", 3))
    e = edges(faces)
    key_base = verts.shape[0]
    half = torch.zeros(e.shape[0], dtype=verts.dtype, device=verts.device)
    ekey = e[:, 0] * key_base + e[:, 1]
    for k in range(3):
        a, b, c = faces[:, k], faces[:, (k + 1) % 3], faces[:, (k + 2) % 3]
        # angle at a, opposite edge (b, c)
        u, w = verts[b] - verts[a], verts[c] - verts[a]
        cot = (u * w).sum(-1) / torch.linalg.cross(u, w, dim=-1).norm(dim=-1).clamp_min(1e-12)
        lo, hi = torch.minimum(b, c), torch.maximum(b, c)
        idx = torch.searchsorted(ekey, lo * key_base + hi)
        half = half.index_add(0, idx, 0.5 * cot)
    return e, half


def cotangent_laplacian(verts: Tensor, faces: Tensor) -> Tensor:
    """Cotangent Laplacian ``L = D − W`` with ``W_uv = (cot α_uv + cot β_uv)/2`` (no area normalisation).

    ``(L x)_v = Σ_u W_uv (x_v − x_u)``; for a flat mesh it annihilates every linear function at interior
    vertices, and ``L·verts`` is (twice the Voronoi area times) the mean-curvature normal. U-CMR fixes it
    from the template (METHOD 7.5), so it is computed without gradient.

    Args:
        verts: ``(V, 3)`` float.
        faces: ``(F, 3)`` int64.

    Returns:
        Sparse COO ``(V, V)`` float32 on ``verts.device``.
    """
    with torch.no_grad():
        e, w = cotangent_weights(verts.detach().to(torch.float64), faces)
    return _laplacian_from_weights(e, w.to(torch.float32), verts.shape[0])


def cotangent_laplacian_loss(x: Tensor, laplacian: Tensor) -> Tensor:
    """METHOD 7.5: ``mean_{b,v} ‖(L x_b)_v‖₂`` with a fixed sparse Laplacian.

    Args:
        x: ``(B, V, 3)`` or ``(V, 3)`` (vertices, or the deformation Δv).
        laplacian: sparse ``(V, V)`` (e.g. :func:`cotangent_laplacian` of the template).

    Returns:
        Scalar tensor, differentiable w.r.t. ``x``.
    """
    xb = _batched(x, "x")
    b, v, _ = xb.shape
    if laplacian.shape != (v, v):
        raise ValueError(f"laplacian must have shape ({v}, {v}) to match x, got {tuple(laplacian.shape)}")
    flat = xb.permute(1, 0, 2).reshape(v, b * 3)
    lx = torch.sparse.mm(laplacian.to(dtype=xb.dtype, device=xb.device), flat).reshape(v, b, 3)
    return _safe_norm(lx).mean()


def edge_length_loss(verts: Tensor, faces: Tensor, ref_verts: Tensor) -> Tensor:
    """METHOD 7.6: ``mean_e relu(|log ℓ_e − log ℓ⁰_e| − log 2)``: edges stretched or shrunk by over 2x.

    Args:
        verts: ``(B, V, 3)`` or ``(V, 3)``.
        faces: ``(F, 3)`` int64.
        ref_verts: ``(V, 3)`` reference (template) vertices giving ``ℓ⁰``.

    Returns:
        Scalar tensor.
    """
    v = _batched(verts)
    check_shape("ref_verts", ref_verts, tuple(v.shape[1:]))
    e = edges(faces).to(v.device)
    eps = 1e-12
    ell = (v[:, e[:, 0]] - v[:, e[:, 1]]).norm(dim=-1).clamp_min(eps)
    ell0 = (ref_verts[e[:, 0]] - ref_verts[e[:, 1]]).norm(dim=-1).clamp_min(eps).to(v.dtype)
    return torch.relu((ell.log() - ell0.log()).abs() - math.log(2.0)).mean()


def deform_loss(delta_v: Tensor) -> Tensor:
    """METHOD 7.3: ``mean_{b,v} ‖Δv_bv‖₂`` (L2 norm, not squared; zero gradient at Δv = 0).

    Args:
        delta_v: ``(B, V, 3)`` or ``(V, 3)``.

    Returns:
        Scalar tensor.
    """
    return _safe_norm(_batched(delta_v, "delta_v")).mean()
