"""Triangle-mesh topology: edges, neighbours, closedness, volume, consistent outward winding, normals.

Convention (``docs/conventions.md``): faces wind counter-clockwise seen from outside, so the right-hand
normal ``(v1 - v0) x (v2 - v0)`` points out of the surface and a closed mesh has positive signed volume.

Faces are ``(F, 3)`` int64 vertex indices (0-based). Vertices are ``(V, 3)`` or batched ``(B, V, 3)``
float tensors where stated.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor

from slopekp.utils import tensor_memo

__all__ = [
    "check_faces",
    "edges",
    "adjacent_faces",
    "vertex_neighbors",
    "is_closed",
    "euler_characteristic",
    "signed_volume",
    "orient_outward",
    "face_normals",
    "vertex_normals",
]


def check_faces(faces: Tensor, num_verts: int, name: str = "faces") -> None:
    """Validate a face array.

    Args:
        faces: ``(F, 3)`` integer tensor of vertex indices.
        num_verts: number of vertices ``V``; every index must lie in ``[0, V)``.
        name: how the argument is called in error messages.

    Raises:
        ValueError: wrong shape or dtype, an index out of range, or a degenerate face (a vertex repeated).
    """
    if not isinstance(faces, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(faces).__name__}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"{name} must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.dtype.is_floating_point or faces.dtype == torch.bool or faces.dtype.is_complex:
        raise ValueError(f"{name} must be an integer tensor, got dtype {faces.dtype}")
    if faces.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 faces)")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0:
        raise ValueError(f"{name} index {lo} is negative (indices must be 0-based in [0, {num_verts}))")
    if hi >= num_verts:
        raise ValueError(f"{name} index {hi} out of range for {num_verts} vertices")
    degenerate = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    if bool(degenerate.any()):
        f = int(torch.nonzero(degenerate)[0, 0])
        raise ValueError(f"{name} row {f} repeats a vertex: {faces[f].tolist()}")


@tensor_memo
def edges(faces: Tensor) -> Tensor:
    """Unique undirected edges of a triangle mesh.

    Computed once per faces tensor (:func:`slopekp.utils.tensor_memo`: the regularisers ask at every training
    step, and ``unique`` reads its size back from an accelerator); the result is shared, do not modify it.

    Args:
        faces: ``(F, 3)`` int64.

    Returns:
        ``(E, 2)`` int64 with ``edges[:, 0] < edges[:, 1]``, rows sorted lexicographically.
    """
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    e = torch.sort(e, dim=1).values
    return torch.unique(e, dim=0)


@tensor_memo
def adjacent_faces(faces: Tensor) -> Tensor:
    """Pairs of faces that share an edge: ``(P, 2)`` int64 face indices, one row per edge of two faces (an edge of
    ``k > 2`` faces gives ``k − 1`` rows, consecutive faces in index order; a boundary edge none).

    Computed once per faces tensor (:func:`slopekp.utils.tensor_memo`); the result is shared, do not modify it.

    Args:
        faces: ``(F, 3)`` int64.
    """
    faces = faces.long()
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values  # (3F, 2)
    owner = torch.arange(faces.shape[0], device=faces.device).repeat(3)
    key = e[:, 0] * (int(faces.max()) + 1) + e[:, 1]
    order = torch.argsort(key, stable=True)
    key, owner = key[order], owner[order]
    pair = (key[1:] == key[:-1]).nonzero().squeeze(-1)  # consecutive equal keys: two faces of one edge
    return torch.stack([owner[pair], owner[pair + 1]], dim=1)


def vertex_neighbors(faces: Tensor, num_verts: int) -> list[Tensor]:
    """One-ring neighbours of every vertex.

    Args:
        faces: ``(F, 3)`` int64.
        num_verts: ``V``.

    Returns:
        A list of ``V`` int64 tensors; entry ``v`` holds the sorted indices of the vertices sharing an
        edge with ``v`` (empty for unreferenced vertices).
    """
    e = edges(faces)
    both = torch.cat([e, e.flip(1)], dim=0)
    order = torch.argsort(both[:, 0] * num_verts + both[:, 1])
    both = both[order]
    counts = torch.bincount(both[:, 0], minlength=num_verts).tolist()
    return list(torch.split(both[:, 1], counts))


def _edge_face_counts(faces: Tensor) -> Tensor:
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    e = torch.sort(e, dim=1).values
    _, counts = torch.unique(e, dim=0, return_counts=True)
    return counts


def is_closed(faces: Tensor) -> bool:
    """True iff every undirected edge is shared by exactly two faces (a closed 2-manifold edge structure).

    Args:
        faces: ``(F, 3)`` int64.
    """
    return bool((_edge_face_counts(faces) == 2).all())


def euler_characteristic(faces: Tensor, num_verts: int | None = None) -> int:
    """``V - E + F``; 2 for a closed genus-0 surface.

    Args:
        faces: ``(F, 3)`` int64.
        num_verts: ``V``; default: the number of distinct vertices referenced by ``faces``.
    """
    v = int(torch.unique(faces).numel()) if num_verts is None else int(num_verts)
    return v - int(edges(faces).shape[0]) + int(faces.shape[0])


def signed_volume(verts: Tensor, faces: Tensor) -> Tensor:
    """Signed enclosed volume, positive for a closed mesh wound counter-clockwise seen from outside.

    Sum over faces of ``v0 · (v1 × v2) / 6`` (divergence theorem); differentiable.

    Args:
        verts: ``(..., V, 3)`` float.
        faces: ``(F, 3)`` int64.

    Returns:
        ``(...)`` tensor.
    """
    v0, v1, v2 = verts[..., faces[:, 0], :], verts[..., faces[:, 1], :], verts[..., faces[:, 2], :]
    return (v0 * torch.linalg.cross(v1, v2, dim=-1)).sum(dim=(-1, -2)) / 6.0


def orient_outward(verts: Tensor, faces: Tensor) -> Tensor:
    """Re-wind faces consistently, then make each connected component wind outward.

    A breadth-first search over the face adjacency (two faces are adjacent when they share an edge used by
    exactly two faces) flips a neighbour whenever it traverses the shared edge in the same direction as
    the current face (a consistent orientation traverses it in opposite directions). Each component is
    then flipped as a whole if its signed volume is negative (for an open component this volume is taken
    about the origin, so "outward" is only meaningful for closed meshes).

    Args:
        verts: ``(V, 3)`` float.
        faces: ``(F, 3)`` int64.

    Returns:
        ``(F, 3)`` int64 faces (same rows, some with two indices swapped), on ``faces.device``.

    Raises:
        ValueError: invalid faces (see :func:`check_faces`), or a component that is not orientable (e.g. a
            Möbius strip).
    """
    check_faces(faces, verts.shape[0])
    f_np = faces.detach().cpu().numpy().astype(np.int64).copy()
    num_f = f_np.shape[0]
    # directed half-edges: (a, b) of face f at slot k
    a = f_np[:, [0, 1, 2]].reshape(-1)
    b = f_np[:, [1, 2, 0]].reshape(-1)
    face_of = np.repeat(np.arange(num_f), 3)
    key = np.minimum(a, b).astype(np.int64) * (int(f_np.max()) + 1) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    counts = np.diff(np.r_[starts, key_sorted.size])
    adjacency: list[list[tuple[int, bool]]] = [[] for _ in range(num_f)]
    for s in starts[counts == 2]:
        h0, h1 = order[s], order[s + 1]
        f0, f1 = int(face_of[h0]), int(face_of[h1])
        same_dir = bool(a[h0] == a[h1])  # both faces traverse the edge the same way: inconsistent pair
        adjacency[f0].append((f1, same_dir))
        adjacency[f1].append((f0, same_dir))

    flip = np.zeros(num_f, dtype=bool)
    comp = np.full(num_f, -1, dtype=np.int64)
    n_comp = 0
    for seed in range(num_f):
        if comp[seed] >= 0:
            continue
        comp[seed] = n_comp
        queue = deque([seed])
        while queue:
            f = queue.popleft()
            for g, same_dir in adjacency[f]:
                want = flip[f] ^ same_dir
                if comp[g] < 0:
                    comp[g] = n_comp
                    flip[g] = want
                    queue.append(g)
                elif flip[g] != want:
                    raise ValueError(
                        f"faces are not orientable: faces {f} and {g} cannot be wound consistently"
                    )
        n_comp += 1

    f_np[flip] = f_np[flip][:, [0, 2, 1]]
    v_np = verts.detach().cpu().numpy().astype(np.float64)
    p0, p1, p2 = v_np[f_np[:, 0]], v_np[f_np[:, 1]], v_np[f_np[:, 2]]
    face_vol = np.einsum("ij,ij->i", p0, np.cross(p1, p2)) / 6.0
    comp_vol = np.bincount(comp, weights=face_vol, minlength=n_comp)
    neg = comp_vol[comp] < 0
    f_np[neg] = f_np[neg][:, [0, 2, 1]]
    return torch.as_tensor(f_np, dtype=torch.int64, device=faces.device)


def face_normals(verts: Tensor, faces: Tensor, normalize: bool = True, eps: float = 1e-12) -> Tensor:
    """Right-hand face normals ``(v1 - v0) × (v2 - v0)``.

    Args:
        verts: ``(..., V, 3)`` float.
        faces: ``(F, 3)`` int64.
        normalize: unit length if True, otherwise the length is twice the face area.
        eps: guards the normalisation of degenerate faces.

    Returns:
        ``(..., F, 3)``.
    """
    v0, v1, v2 = verts[..., faces[:, 0], :], verts[..., faces[:, 1], :], verts[..., faces[:, 2], :]
    n = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    if normalize:
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(eps)
    return n


def vertex_normals(verts: Tensor, faces: Tensor, eps: float = 1e-12) -> Tensor:
    """Area-weighted unit vertex normals (sum of the unnormalised normals of the incident faces).

    Args:
        verts: ``(..., V, 3)`` float.
        faces: ``(F, 3)`` int64.

    Returns:
        ``(..., V, 3)``; zero vectors for vertices in no face.
    """
    fn = face_normals(verts, faces, normalize=False)  # (..., F, 3)
    out = torch.zeros_like(verts)
    for k in range(3):
        idx = faces[:, k].expand(*fn.shape[:-1]).unsqueeze(-1).expand_as(fn)
        out = out.scatter_add(-2, idx, fn)
    return out / out.norm(dim=-1, keepdim=True).clamp_min(eps)
