"""Mirror symmetry about x = 0 (METHOD §3.2) and the symmetric ``[indep, left]`` row parametrisation.

A shape with ``V`` vertices is stored as ``I + L`` rows: the ``I`` independent vertices (on the plane, or
without an exact mirror partner) followed by the ``L`` left vertices (``x < 0``). The ``L`` right vertices
are the left ones mirrored, ``right = left ⊙ (−1, 1, 1)``. Both the learned mean shape and the per-image
deformation use this layout so that predicted shapes are exactly symmetric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from slopekp.utils import check_shape, device_constant

__all__ = ["Symmetry", "find_symmetry", "mirror_permutation"]


@dataclass(eq=False)
class Symmetry:
    """Vertex pairing under the mirror ``x → −x``.

    Attributes:
        indep: ``(I,)`` int64 vertices represented by their own row (on the plane or without a partner).
        left: ``(L,)`` int64 vertices with ``x < 0`` that have a mirror partner.
        right: ``(L,)`` int64 partners, ``verts[right[i]] ≈ verts[left[i]] ⊙ (−1, 1, 1)``.
        num_verts: ``V = I + 2L``.
    """

    indep: Tensor
    left: Tensor
    right: Tensor
    num_verts: int
    _inverse: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("indep", "left", "right"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dim() != 1:
                raise ValueError(f"Symmetry.{name} must be a 1-D tensor")
            setattr(self, name, t.to(torch.int64))
        if self.left.numel() != self.right.numel():
            raise ValueError(
                "Symmetry.left and .right must have the same length, "
                f"got {self.left.numel()} and {self.right.numel()}"
            )
        order = torch.cat([self.indep, self.left, self.right])
        if order.numel() != self.num_verts or not torch.equal(
            torch.sort(order).values, torch.arange(self.num_verts, device=order.device)
        ):
            raise ValueError(
                f"Symmetry indices must be a permutation of range({self.num_verts}) "
                f"(got {self.indep.numel()} indep + 2 x {self.left.numel()} left/right)"
            )
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        self._inverse = inverse

    @property
    def num_rows(self) -> int:
        """``I + L``, the number of learnable rows."""
        return int(self.indep.numel() + self.left.numel())

    @property
    def num_pairs(self) -> int:
        """``L``, the number of left/right pairs."""
        return int(self.left.numel())

    def symmetrize(self, rows: Tensor) -> Tensor:
        """Expand ``[indep, left]`` rows to all vertices, mirroring the left rows onto their right partners.

        Args:
            rows: ``(..., I + L, 3)``.

        Returns:
            ``(..., V, 3)`` in vertex order; differentiable w.r.t. ``rows``.
        """
        check_shape("rows", rows, (..., self.num_rows, 3))
        n_i = self.indep.numel()
        left = rows[..., n_i:, :]
        flip = device_constant((-1.0, 1.0, 1.0), rows.dtype, rows.device)
        ilr = torch.cat([rows[..., :n_i, :], left, left * flip], dim=-2)
        return ilr.index_select(-2, self._inverse.to(rows.device))

    def to_rows(self, verts: Tensor) -> Tensor:
        """Inverse of :meth:`symmetrize` for symmetric input: the ``[indep, left]`` rows of ``verts``.

        The right vertices are dropped (not averaged), so ``symmetrize(to_rows(v)) == v`` exactly when
        ``v`` is exactly symmetric.

        Args:
            verts: ``(..., V, 3)``.

        Returns:
            ``(..., I + L, 3)``.
        """
        check_shape("verts", verts, (..., self.num_verts, 3))
        idx = torch.cat([self.indep, self.left]).to(verts.device)
        return verts.index_select(-2, idx)

    def to(self, device: torch.device | str) -> Symmetry:
        """A copy with the index tensors on ``device``."""
        return Symmetry(self.indep.to(device), self.left.to(device), self.right.to(device), self.num_verts)


def find_symmetry(verts: Tensor, tol: float = 1e-6) -> Symmetry:
    """Pair vertices under the mirror ``x → −x`` (METHOD §3.2).

    Each vertex is mirrored and matched to its nearest original vertex. A vertex is **left** when ``x <
    0``, its mirror lies within ``tol`` of a vertex, and that vertex is not itself; that vertex is its
    **right** partner. Everything else (on-plane vertices, vertices without an exact partner) is
    **indep**. Left vertices are listed in increasing index order.

    Args:
        verts: ``(V, 3)`` float.
        tol: Euclidean matching tolerance.

    Returns:
        :class:`Symmetry` on ``verts.device``.

    Raises:
        ValueError: bad shape, non-finite values, or two left vertices matching the same partner.
    """
    if not isinstance(verts, Tensor) or verts.dim() != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts must be a (V, 3) tensor, got {getattr(verts, 'shape', type(verts))}")
    if not bool(torch.isfinite(verts).all()):
        raise ValueError("verts contains NaN or Inf")
    v = verts.detach().cpu().numpy().astype(np.float64)
    mirrored = v * np.array([-1.0, 1.0, 1.0])
    dist, nn = cKDTree(v).query(mirrored, k=1)
    idx = np.arange(v.shape[0])
    is_left = (v[:, 0] < 0) & (dist < tol) & (nn != idx)
    left = idx[is_left]
    right = nn[is_left]
    if np.unique(right).size != right.size:
        raise ValueError(
            f"several left vertices share a mirror partner: vertices lie within tol={tol} of each other"
        )
    if np.intersect1d(left, right).size:
        raise ValueError(
            "inconsistent mirror pairing (a vertex is both left and right); check for duplicate vertices"
        )
    taken = np.zeros(v.shape[0], dtype=bool)
    taken[left] = True
    taken[right] = True
    indep = idx[~taken]
    dev = verts.device
    return Symmetry(
        indep=torch.as_tensor(indep, dtype=torch.int64, device=dev),
        left=torch.as_tensor(left, dtype=torch.int64, device=dev),
        right=torch.as_tensor(right, dtype=torch.int64, device=dev),
        num_verts=int(v.shape[0]),
    )


def mirror_permutation(verts: Tensor, faces: Tensor, rtol: float = 1e-4) -> Tensor | None:
    """The vertex permutation of an exactly mirror-symmetric mesh, or ``None`` if the mesh is not one.

    The mesh is mirror-symmetric when the mirror ``x → −x`` maps its vertices onto its vertices (each within
    ``rtol`` of the mesh's largest extent, one to one) and its faces onto its faces (as vertex sets; the
    winding reverses). Its silhouette under any camera then equals that of the mirrored mesh, which is what
    lets Stage I fit only one of each pair of depth-mirrored hypotheses
    (:func:`slopekp.train.hypotheses.hypothesis_mirrors`). A template that is symmetric only approximately
    (U-CMR's CUB bird: 1 % of its length off, 2 % of its faces without a mirror face) is not.

    Args:
        verts: ``(V, 3)`` float.
        faces: ``(F, 3)`` int64.
        rtol: matching tolerance as a fraction of the largest side of the bounding box.

    Returns:
        ``(V,)`` int64 on ``verts.device``, ``perm[i]`` the mirror partner of vertex ``i`` (``i`` on the
        plane), or ``None``.
    """
    check_shape("verts", verts, (None, 3))
    check_shape("faces", faces, (None, 3))
    v = verts.detach().cpu().numpy().astype(np.float64)
    f = faces.detach().cpu().numpy().astype(np.int64)
    if v.shape[0] == 0 or not np.isfinite(v).all():
        return None
    extent = float((v.max(0) - v.min(0)).max())
    dist, nn = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]), k=1)
    if dist.max() > rtol * max(extent, np.finfo(np.float64).tiny) or np.unique(nn).size != nn.size:
        return None
    original = {tuple(t) for t in np.sort(f, axis=1).tolist()}
    mirrored = {tuple(t) for t in np.sort(nn[f], axis=1).tolist()}
    if original != mirrored:
        return None
    return torch.as_tensor(nn, dtype=torch.int64, device=verts.device)
