"""True meshes beside a CMR-format split (issue 24): ``meshes_<split>.npz``, written by SynthBirds for its test
split so that an evaluation can measure the predicted shape. CMR data has none, and evaluations then skip shape
accuracy.

Format (NumPy ``.npz``, no pickled objects): ``ids (N,) int64`` the 1-based record ids of
``<split>_cub_cleaned.mat``, ``verts (N, V, 3) float32`` each bird's mesh in the object frame of its ground-truth
camera (``anno_<split>.mat``), ``faces (F, 3) int64`` shared by all.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from slopekp.utils import atomic_write

__all__ = ["TrueMeshes", "meshes_path", "read_true_meshes", "write_true_meshes"]


class TrueMeshes:
    """The true meshes of one split: ``verts (N, V, 3)`` and ``faces (F, 3)``, looked up by record id."""

    def __init__(self, ids: np.ndarray, verts: np.ndarray, faces: np.ndarray, source: str = "meshes") -> None:
        ids, verts, faces = np.asarray(ids), np.asarray(verts), np.asarray(faces)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{source}: ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if verts.ndim != 3 or verts.shape[0] != ids.shape[0] or verts.shape[2] != 3:
            raise ValueError(f"{source}: verts must be (N, V, 3) with N = {ids.shape[0]} ids, got {verts.shape}")
        if not np.isfinite(verts).all():
            raise ValueError(f"{source}: verts holds NaN or infinite values")
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"{source}: faces must be an (F, 3) integer array, got {faces.dtype} {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= verts.shape[1]):
            raise ValueError(f"{source}: a face index is outside [0, {verts.shape[1]})")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"{source}: ids repeat")
        self.ids, self.verts, self.faces = ids.astype(np.int64), verts.astype(np.float32), faces.astype(np.int64)
        self.source = source
        self._row = {int(i): r for r, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def lookup(self, ids) -> np.ndarray:
        """``verts`` of the records ``ids`` (in that order), ``(len(ids), V, 3)``.

        Raises:
            KeyError: an id without a mesh, naming the file.
        """
        missing = [int(i) for i in ids if int(i) not in self._row]
        if missing:
            raise KeyError(f"{self.source}: no mesh for record id(s) {missing[:5]}")
        return self.verts[[self._row[int(i)] for i in ids]]


def meshes_path(data_dir: str | os.PathLike, split: str) -> Path:
    return Path(data_dir) / f"meshes_{split}.npz"


def write_true_meshes(data_dir: str | os.PathLike, split: str, ids, verts, faces) -> Path:
    """Write ``meshes_<split>.npz`` atomically (validated as :class:`TrueMeshes` first)."""
    meshes = TrueMeshes(np.asarray(ids, dtype=np.int64), verts, faces)
    buf = io.BytesIO()
    np.savez_compressed(buf, ids=meshes.ids, verts=meshes.verts, faces=meshes.faces)
    path = meshes_path(data_dir, split)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def read_true_meshes(data_dir: str | os.PathLike, split: str) -> TrueMeshes | None:
    """The split's true meshes, or None when the folder has no ``meshes_<split>.npz``.

    Raises:
        ValueError: the file is not a readable ``.npz`` of the format above, naming the file and the problem.
    """
    path = meshes_path(data_dir, split)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"ids", "verts", "faces"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: lacks the array(s) {sorted(missing)}")
            return TrueMeshes(z["ids"], z["verts"], z["faces"], source=str(path))
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from e
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: {e}") from e
