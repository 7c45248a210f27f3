"""The template mesh (:class:`Template`), its sphere UV parametrisation and the loaders (METHOD §3.1, §3.4).

Object frame (``docs/conventions.md``): the bird is symmetric about x = 0; +x is the bird's left, the beak
points to −y, the tail to +y and the back to +z. Faces wind counter-clockwise seen from outside.

Sphere UV (METHOD §3.4): for the direction ``(sinθ cosφ, sinθ sinφ, cosθ)`` of a vertex,
``u = φ/π ∈ [−1, 1]`` (azimuth from +x towards +y) and ``v = 2θ/π − 1 ∈ [−1, 1]`` (inclination from +z;
−1 at the top, +1 at the bottom).
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from slopekp.mesh.symmetry import Symmetry, find_symmetry
from slopekp.mesh.topology import check_faces, orient_outward

__all__ = [
    "TEMPLATE_NAMES",
    "Template",
    "direction_uv",
    "farthest_point_sampling",
    "load_template",
    "sphere_uv",
]

#: Built-in template names accepted by :func:`load_template`.
TEMPLATE_NAMES = ("procedural", "icosphere")


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
    if verts.dim() != 2 or verts.shape[-1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {tuple(verts.shape)}")
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
    if verts.dim() != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {tuple(verts.shape)}")
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
        if self.verts.dim() != 2 or self.verts.shape[1] != 3:
            raise ValueError(
                f"template {self.name!r}: verts must have shape (V, 3), got {tuple(self.verts.shape)}"
            )
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
        if self.verts_uv.shape != (self.verts.shape[0], 2):
            raise ValueError(
                f"template {self.name!r}: verts_uv must have shape ({self.verts.shape[0]}, 2), "
                f"got {tuple(self.verts_uv.shape)}"
            )
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


# ----------------------------------------------------------------------------------------------- loaders


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, dtypes and plain containers, and nothing else.

    Any other global (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``, so a
    malicious file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("__builtin__", "dict"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):  # NumPy 2 renamed numpy.core
                module = "numpy._core." + module[len("numpy.core.") :]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _load_npy_dict(path: Path) -> dict:
    """Read a ``.npy`` holding a pickled object (U-CMR's dict) with the restricted unpickler."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as e:
            raise ValueError(f"{path}: not a valid .npy file ({e})") from e
        payload = f.read()
    if dtype.hasobject:
        try:
            obj = _ArrayOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as e:
            raise ValueError(f"{path}: unsafe or corrupt pickled .npy ({e})") from e
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
            obj = obj.item()
    else:
        raise ValueError(
            f"{path}: expected a pickled dict with verts/faces, found a plain {dtype} array of {shape}"
        )
    if not isinstance(obj, dict):
        raise ValueError(
            f"{path}: expected a dict with keys verts, faces, verts_uv; got {type(obj).__name__}"
        )
    return obj


def _arrays_from_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("verts", "faces") if k not in z.files]
            if missing:
                raise ValueError(f"{path}: missing key(s) {missing} (has {sorted(z.files)})")
            try:
                verts, faces = z["verts"], z["faces"]
                uv = z["verts_uv"] if "verts_uv" in z.files else None
            except ValueError as e:  # object arrays need pickle
                raise ValueError(f"{path}: arrays must be plain numeric arrays ({e})") from e
        return verts, faces, uv
    if suffix == ".npy":
        d = _load_npy_dict(path)
        missing = [k for k in ("verts", "faces") if k not in d]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing} (has {sorted(map(str, d))})")
        return np.asarray(d["verts"]), np.asarray(d["faces"]), (
            np.asarray(d["verts_uv"]) if "verts_uv" in d else None
        )
    if suffix in (".obj", ".ply", ".glb", ".off", ".stl"):
        from slopekp.mesh.io import load_mesh

        m = load_mesh(path)
        return m.verts.numpy(), m.faces.numpy(), None
    raise ValueError(f"{path}: unsupported template format {suffix!r} (use .npz, .npy, .obj, .ply or .glb)")


def load_template(path_or_name: str | Path, mean_centre: bool = True, reorient: bool = True) -> Template:
    """Load a template mesh by built-in name or from a file.

    Names: ``"procedural"`` (:func:`~slopekp.mesh.procedural.procedural_bird`) and ``"icosphere"`` (level
    3, 642 vertices). Files: ``.npz`` (arrays ``verts``, ``faces``, optional ``verts_uv``; no pickle),
    ``.npy`` (U-CMR's pickled dict, read with a restricted unpickler that only rebuilds numpy arrays, so
    an untrusted file cannot run code), and ``.obj`` / ``.ply`` / ``.glb`` via trimesh. Missing
    ``verts_uv`` is computed with :func:`sphere_uv` (before centring).

    Faces read from a file are re-wound consistently outward with
    :func:`~slopekp.mesh.topology.orient_outward`. This matters for U-CMR's ``bird_template.npy``, whose
    x > 0 half is wound inward; after loading, its signed volume is +0.696.

    Args:
        path_or_name: a built-in name or a file path.
        mean_centre: subtract the vertex mean in y and z only (x is left alone so the symmetry plane
            stays at x = 0), as U-CMR and SLOPE-KP do (METHOD §3.1).
        reorient: re-wind file faces with ``orient_outward`` (turn off only to inspect a file as stored).

    Returns:
        :class:`Template` on the CPU.

    Raises:
        ValueError: unknown name, missing file, unsupported format, missing key, unsafe pickle or
            invalid mesh.
    """
    s = str(path_or_name)
    if s in TEMPLATE_NAMES:
        from slopekp.mesh import procedural

        t = procedural.procedural_bird() if s == "procedural" else procedural.icosphere(3)
        verts, faces, uv, name = t.verts, t.faces, t.verts_uv, s
    else:
        path = Path(s).expanduser()
        if not path.is_file():
            raise ValueError(
                f"template {s!r} is neither a built-in name {TEMPLATE_NAMES} nor an existing file"
            )
        v_np, f_np, uv_np = _arrays_from_file(path)
        name = str(path)
        if v_np.ndim != 2 or v_np.shape[-1] != 3:
            raise ValueError(f"{path}: verts must have shape (V, 3), got {v_np.shape}")
        if not np.issubdtype(f_np.dtype, np.integer):
            raise ValueError(f"{path}: faces must be integers, got dtype {f_np.dtype}")
        verts = torch.as_tensor(v_np.astype(np.float32))
        faces = torch.as_tensor(f_np.astype(np.int64))
        check_faces(faces, verts.shape[0], name=f"{path}: faces")
        if not bool(torch.isfinite(verts).all()):
            raise ValueError(f"{path}: verts contains NaN or Inf")
        if reorient:
            faces = orient_outward(verts, faces)
        uv = sphere_uv(verts) if uv_np is None else torch.as_tensor(np.asarray(uv_np, dtype=np.float32))
    if mean_centre:
        mean = verts.mean(dim=0)
        verts = verts - torch.stack([torch.zeros_like(mean[0]), mean[1], mean[2]])
    return Template(verts=verts.clone(), faces=faces.clone(), verts_uv=uv.clone(), name=name)
