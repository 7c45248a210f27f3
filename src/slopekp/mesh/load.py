"""Loading a template mesh by built-in name or from a file (``.npz``, U-CMR's pickled ``.npy`` with a restricted
unpickler, or any mesh format trimesh reads), into a :class:`~slopekp.mesh.template.Template`."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from slopekp.mesh.io import load_mesh
from slopekp.mesh.procedural import icosphere, procedural_bird
from slopekp.mesh.template import Template, sphere_uv
from slopekp.mesh.topology import check_faces, orient_outward
from slopekp.utils import check_shape

__all__ = ["TEMPLATE_NAMES", "load_template"]

#: Built-in template names accepted by :func:`load_template`.
TEMPLATE_NAMES = ("procedural", "icosphere")


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
        t = procedural_bird() if s == "procedural" else icosphere(3)
        verts, faces, uv, name = t.verts, t.faces, t.verts_uv, s
    else:
        path = Path(s).expanduser()
        if not path.is_file():
            raise ValueError(
                f"template {s!r} is neither a built-in name {TEMPLATE_NAMES} nor an existing file"
            )
        v_np, f_np, uv_np = _arrays_from_file(path)
        name = str(path)
        check_shape(f"{path}: verts", v_np, ("V", 3))
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
