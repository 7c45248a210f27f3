"""The template mesh (:class:`Template`), its sphere UV parametrisation and the loaders (METHOD §3.1, §3.4).

Object frame (``docs/conventions.md``): the bird is symmetric about x = 0; +x is the bird's left, the beak
points to −y, the tail to +y and the back to +z. Faces wind counter-clockwise seen from outside.

Sphere UV (METHOD §3.4): for the direction ``(sinθ cosφ, sinθ sinφ, cosθ)`` of a vertex,
``u = φ/π ∈ [−1, 1]`` (azimuth from +x towards +y) and ``v = 2θ/π − 1 ∈ [−1, 1]`` (inclination from +z;
−1 at the top, +1 at the bottom).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from slopekp.mesh.symmetry import Symmetry, find_symmetry
from slopekp.mesh.topology import check_faces
from slopekp.utils import check_shape

__all__ = [
    "Template",
    "direction_uv",
    "farthest_point_sampling",
    "sphere_uv",
    "template_fingerprint",
]


def direction_uv(dirs: Tensor, eps: float = 1e-12) -> Tensor:
    """Sphere UV of direction vectors (need not be unit length).

    Args:
        dirs: ``(..., 3)`` float.
        eps: guards the normalisation of zero vectors.

    Returns:
        ``(..., 2)`` with ``u = atan2(y, x)/π`` and ``v = 2·acos(z/‖d‖)/π − 1``, both in ``[−1, 1]``.
    """
    r = dirs.norm(dim=-1).clamp_min(eps)
    u = torch.atan2(dirs[..., 1], dirs[..., 0]) / math.pi
    v = 2.0 * torch.acos((dirs[..., 2] / r).clamp(-1.0, 1.0)) / math.pi - 1.0
    return torch.stack([u, v], dim=-1)


def sphere_uv(verts: Tensor) -> Tensor:
    """Sphere UV (METHOD §3.4) of each vertex's direction from the vertex centroid.

    Args:
        verts: ``(V, 3)`` float.

    Returns:
        ``(V, 2)`` float in ``[−1, 1]``; see :func:`direction_uv`. The azimuth seam ``u = ±1`` lies on the
        ``−x`` side of the centroid.
    """
    check_shape("verts", verts, ("V", 3))
    return direction_uv(verts - verts.mean(dim=0, keepdim=True))


def farthest_point_sampling(verts: Tensor, k: int, start: int = 0) -> Tensor:
    """Greedy farthest-point sampling of ``k`` vertex indices (METHOD §4.6 keypoints).

    Starts at ``start`` and repeatedly takes the vertex with the largest squared distance to the chosen
    set (ties: the lowest index). Distances are computed in float64 so the choice does not depend on the
    device.

    Args:
        verts: ``(V, 3)`` float.
        k: number of indices, ``1 <= k <= V``.
        start: first index.

    Returns:
        ``(k,)`` int64 on ``verts.device``, distinct indices in selection order.
    """
    check_shape("verts", verts, ("V", 3))
    n = verts.shape[0]
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of vertices), got {k}")
    if not 0 <= int(start) < n:
        raise ValueError(f"start must be a vertex index in [0, {n}), got {start}")
    v = verts.detach().to(torch.float64)
    chosen = torch.empty(int(k), dtype=torch.int64, device=verts.device)
    chosen[0] = int(start)
    d2 = ((v - v[int(start)]) ** 2).sum(-1)
    for i in range(1, int(k)):
        nxt = torch.argmax(d2)
        chosen[i] = nxt
        d2 = torch.minimum(d2, ((v - v[nxt]) ** 2).sum(-1))
    return chosen


@dataclass(eq=False)
class Template:
    """A triangle mesh in the object frame with per-vertex sphere UVs.

    Attributes:
        verts: ``(V, 3)`` float32.
        faces: ``(F, 3)`` int64, counter-clockwise seen from outside.
        verts_uv: ``(V, 2)`` float32 sphere UV in ``[−1, 1]`` (module docstring).
        name: a label (the built-in name or the file path).

    Inputs are converted to float32 / int64; ``__post_init__`` raises ``ValueError`` for bad shapes,
    non-finite values or out-of-range face indices.
    """

    verts: Tensor
    faces: Tensor
    verts_uv: Tensor
    name: str = "template"
    _sym_cache: dict[float, Symmetry] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for attr in ("verts", "faces", "verts_uv"):
            if not isinstance(getattr(self, attr), Tensor):
                setattr(self, attr, torch.as_tensor(np.asarray(getattr(self, attr))))
        check_shape(f"template {self.name!r}: verts", self.verts, ("V", 3))
        if self.verts.shape[0] < 4:
            raise ValueError(f"template {self.name!r}: needs at least 4 vertices, got {self.verts.shape[0]}")
        if not self.verts.dtype.is_floating_point:
            raise ValueError(f"template {self.name!r}: verts must be floating point, got {self.verts.dtype}")
        self.verts = self.verts.to(torch.float32)
        if not bool(torch.isfinite(self.verts).all()):
            bad = int(torch.nonzero(~torch.isfinite(self.verts).all(dim=1))[0, 0])
            raise ValueError(f"template {self.name!r}: verts contains NaN or Inf (first at vertex {bad})")
        check_faces(self.faces, self.verts.shape[0], name=f"template {self.name!r}: faces")
        self.faces = self.faces.to(torch.int64)
        check_shape(f"template {self.name!r}: verts_uv", self.verts_uv, (self.verts.shape[0], 2))
        self.verts_uv = self.verts_uv.to(torch.float32)
        if not bool(torch.isfinite(self.verts_uv).all()):
            raise ValueError(f"template {self.name!r}: verts_uv contains NaN or Inf")

    @property
    def num_verts(self) -> int:
        """``V``."""
        return int(self.verts.shape[0])

    @property
    def num_faces(self) -> int:
        """``F``."""
        return int(self.faces.shape[0])

    @property
    def device(self) -> torch.device:
        """The device of ``verts``."""
        return self.verts.device

    def to(self, device: torch.device | str) -> Template:
        """A copy with all tensors on ``device`` (cached symmetries are moved too)."""
        out = Template(self.verts.to(device), self.faces.to(device), self.verts_uv.to(device), self.name)
        out._sym_cache = {k: s.to(device) for k, s in self._sym_cache.items()}
        return out

    def symmetry(self, tol: float = 1e-6) -> Symmetry:
        """The mirror pairing of :func:`find_symmetry` at ``tol``; computed once per ``tol`` and cached."""
        key = float(tol)
        if key not in self._sym_cache:
            self._sym_cache[key] = find_symmetry(self.verts, tol=key)
        return self._sym_cache[key]


def template_fingerprint(verts: Tensor, faces: Tensor) -> str:
    """A short hash identifying a template mesh (its vertices to 1e-6 and its faces): 16 hex digits. Stores,
    checkpoints and manifests carry it, so that cameras and models are never used with another mesh.

    Args:
        verts: ``(V, 3)`` template vertices.
        faces: ``(F, 3)`` integer faces.
    """
    v = np.round(verts.detach().to("cpu", torch.float64).numpy(), 6).astype("<f8")
    f = faces.detach().to("cpu", torch.int64).numpy().astype("<i8")
    h = hashlib.sha256()
    h.update(np.asarray(v.shape, dtype="<i8").tobytes() + v.tobytes())
    h.update(np.asarray(f.shape, dtype="<i8").tobytes() + f.tobytes())
    return h.hexdigest()[:16]
