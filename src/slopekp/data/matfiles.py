"""Read and write CMR's MATLAB annotation files, and read the images they point to, with validation.

Two file kinds (formats in ``docs/data.md`` and ``../shared/docs/DATA.md`` §3–4, §9):

* ``<split>_cub_cleaned.mat``: variable ``images``, one struct per sample with ``id, rel_path, train,
  test, bbox{x1,y1,x2,y2}, width, height, parts (3, 15), mask (H, W), class_id``. Coordinates are
  **1-based** pixels (MATLAB); invisible parts are ``0, 0, 0``. :func:`read_cub_cleaned` returns
  :class:`CubRecord` values exactly as stored (still 1-based); the loader (:mod:`slopekp.data.cub`)
  converts to 0-based.
* ``anno_<split>.mat``: variable ``sfm_anno``, one struct per sample with ``rot (3, 3)``, ``scale``,
  ``trans (2,)`` (scaled orthographic camera in 1-based pixels of the original image:
  ``uv = scale·(rot·X)[:2] + trans``), plus the mean keypoint shape ``S (3, 15)`` and ``conv_tri`` in the
  train/testval files.

Everything is loaded with ``scipy.io.loadmat(p, struct_as_record=False, squeeze_me=True)`` (never pickle)
and written atomically. Bad files raise :class:`MatFileError` (a ``ValueError``) naming the file and the
problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, UnidentifiedImageError

from slopekp.utils import atomic_write

#: Fields every entry of ``images`` in a ``*_cub_cleaned.mat`` must have.
CUB_FIELDS = ("id", "rel_path", "train", "test", "bbox", "width", "height", "parts", "mask", "class_id")
#: Fields every entry of ``sfm_anno`` in an ``anno_*.mat`` must have.
SFM_FIELDS = ("rot", "scale", "trans")
BBOX_FIELDS = ("x1", "y1", "x2", "y2")
NUM_KEYPOINTS = 15


class MatFileError(ValueError):
    """A ``.mat`` annotation file or an image it refers to is missing, malformed or inconsistent."""


@dataclass
class CubRecord:
    """One entry of a ``*_cub_cleaned.mat`` file, as stored (1-based MATLAB coordinates).

    Attributes:
        id: image id (CUB id for real data).
        rel_path: image path relative to the images folder (``<class>/<name>.jpg``).
        train, test: 0/1 split flags.
        bbox: (4,) float64 ``[x1, y1, x2, y2]``, 1-based inclusive.
        width, height: image size in pixels.
        parts: (3, 15) float64 rows x, y (1-based) and visibility (0/1), CUB part order; invisible parts
            are 0, 0, 0.
        mask: (H, W) uint8 in {0, 1}, the same size as the image.
        class_id: 1-based class number.
    """

    id: int
    rel_path: str
    train: int
    test: int
    bbox: np.ndarray
    width: int
    height: int
    parts: np.ndarray
    mask: np.ndarray
    class_id: int


@dataclass
class SfmAnnotations:
    """The contents of an ``anno_<split>.mat`` file.

    Attributes:
        rot: (N, 3, 3) float64 rotations (object frame to camera frame, det +1).
        scale: (N,) float64 scale in pixels per object unit.
        trans: (N, 2) float64 translation in **1-based** pixels of the original image.
        S: (3, 15) float64 mean keypoint shape, or None when the file has none (val/test).
        conv_tri: (T, 3) int64 1-based triangle list, or None.
    """

    rot: np.ndarray
    scale: np.ndarray
    trans: np.ndarray
    S: np.ndarray | None = None
    conv_tri: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rot.shape[0])


def _loadmat(path: Path) -> dict:
    if not path.is_file():
        raise MatFileError(f"{path}: file not found")
    try:
        return scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except Exception as e:  # scipy raises several types for bad files
        raise MatFileError(f"{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})") from e


def _entries(path: Path, data: dict, var: str) -> np.ndarray:
    if var not in data:
        found = sorted(k for k in data if not k.startswith("_"))
        raise MatFileError(f"{path}: variable {var!r} missing (found {found})")
    # squeeze_me turns a single struct into a bare mat_struct, not a length-1 array
    return np.atleast_1d(data[var]).ravel()


def _field(path: Path, entry, i: int, name: str):
    if not hasattr(entry, name):
        raise MatFileError(f"{path}: entry {i} has no field {name!r}")
    return getattr(entry, name)


def read_cub_cleaned(path: str | os.PathLike) -> list[CubRecord]:
    """Read a CMR ``*_cub_cleaned.mat`` file into a list of :class:`CubRecord` (1-based values as stored).

    Raises:
        MatFileError: file missing or unreadable, variable ``images`` or a required field missing,
            ``parts`` not 3×15, or a mask whose size differs from the entry's ``width``/``height``.
    """
    path = Path(path)
    entries = _entries(path, _loadmat(path), "images")
    records = []
    for i, e in enumerate(entries):
        f = {name: _field(path, e, i, name) for name in CUB_FIELDS}
        missing = [k for k in BBOX_FIELDS if not hasattr(f["bbox"], k)]
        if missing:
            raise MatFileError(f"{path}: entry {i} has no field 'bbox.{missing[0]}'")
        bbox = np.array([float(getattr(f["bbox"], k)) for k in BBOX_FIELDS])
        parts = np.asarray(f["parts"], dtype=np.float64)
        if parts.shape != (3, NUM_KEYPOINTS):
            raise MatFileError(f"{path}: entry {i} parts must be 3x{NUM_KEYPOINTS}, got {parts.shape}")
        mask = np.asarray(f["mask"])
        width, height = int(f["width"]), int(f["height"])
        if mask.ndim != 2 or mask.shape != (height, width):
            raise MatFileError(
                f"{path}: entry {i} ({f['rel_path']}) mask has shape {mask.shape} but the image is "
                f"{height}x{width} (height x width)"
            )
        records.append(
            CubRecord(
                id=int(f["id"]),
                rel_path=str(f["rel_path"]),
                train=int(f["train"]),
                test=int(f["test"]),
                bbox=bbox,
                width=width,
                height=height,
                parts=parts,
                mask=(mask > 0).astype(np.uint8),
                class_id=int(f["class_id"]),
            )
        )
    return records


def write_cub_cleaned(path: str | os.PathLike, records: list[CubRecord]) -> None:
    """Write ``records`` as a CMR ``*_cub_cleaned.mat`` (variable ``images``, a 1×N struct array), atomically.

    The layout follows DATA.md §9, so :func:`read_cub_cleaned` (and CMR's own loader) read it back.
    N = 1 works (readers must use ``np.atleast_1d``, which ours does).
    """
    arr = np.zeros((1, len(records)), dtype=[(k, object) for k in CUB_FIELDS])
    for i, r in enumerate(records):
        if r.mask.shape != (r.height, r.width):
            raise MatFileError(f"{path}: record {i} mask shape {r.mask.shape} != ({r.height}, {r.width})")
        bbox = np.zeros((1, 1), dtype=[(k, object) for k in BBOX_FIELDS])
        for k, v in zip(BBOX_FIELDS, r.bbox):
            bbox[0, 0][k] = float(v)
        arr[0, i]["id"] = float(r.id)
        arr[0, i]["rel_path"] = str(r.rel_path)
        arr[0, i]["train"] = float(r.train)
        arr[0, i]["test"] = float(r.test)
        arr[0, i]["bbox"] = bbox
        arr[0, i]["width"] = float(r.width)
        arr[0, i]["height"] = float(r.height)
        arr[0, i]["parts"] = np.asarray(r.parts, dtype=np.float64).reshape(3, NUM_KEYPOINTS)
        arr[0, i]["mask"] = (np.asarray(r.mask) > 0).astype(np.uint8)
        arr[0, i]["class_id"] = float(r.class_id)
    with atomic_write(path, "wb") as f:
        scipy.io.savemat(f, {"images": arr}, do_compression=True)


def read_sfm_anno(path: str | os.PathLike) -> SfmAnnotations:
    """Read a CMR ``anno_<split>.mat`` file (SfM cameras, optional ``S`` and ``conv_tri``).

    Raises:
        MatFileError: file missing or unreadable, ``sfm_anno`` or one of ``rot/scale/trans`` missing, or
            a value of the wrong shape.
    """
    path = Path(path)
    data = _loadmat(path)
    entries = _entries(path, data, "sfm_anno")
    n = len(entries)
    rot = np.empty((n, 3, 3))
    scale = np.empty(n)
    trans = np.empty((n, 2))
    for i, e in enumerate(entries):
        r = np.asarray(_field(path, e, i, "rot"), dtype=np.float64)
        t = np.asarray(_field(path, e, i, "trans"), dtype=np.float64).ravel()
        s = np.asarray(_field(path, e, i, "scale"), dtype=np.float64)
        if r.shape != (3, 3) or t.shape != (2,) or s.size != 1:
            raise MatFileError(
                f"{path}: entry {i} has rot {r.shape}, trans {t.shape}, scale {s.shape}; "
                "expected (3, 3), (2,), scalar"
            )
        rot[i], trans[i], scale[i] = r, t, float(s)
    S = None
    if "S" in data:
        S = np.asarray(data["S"], dtype=np.float64)
        if S.shape != (3, NUM_KEYPOINTS):
            raise MatFileError(f"{path}: S must be 3x{NUM_KEYPOINTS}, got {S.shape}")
    conv_tri = np.asarray(data["conv_tri"], dtype=np.int64) if "conv_tri" in data else None
    return SfmAnnotations(rot=rot, scale=scale, trans=trans, S=S, conv_tri=conv_tri)


def write_sfm_anno(path: str | os.PathLike, anno: SfmAnnotations) -> None:
    """Write an ``anno_<split>.mat`` (variable ``sfm_anno`` 1×N with ``rot``, ``scale``, ``trans`` (2×1);
    plus ``S`` and ``conv_tri`` when present), atomically."""
    n = len(anno)
    if anno.scale.shape != (n,) or anno.trans.shape != (n, 2):
        raise MatFileError(
            f"{path}: scale {anno.scale.shape} / trans {anno.trans.shape} do not match N = {n}"
        )
    arr = np.zeros((1, n), dtype=[(k, object) for k in SFM_FIELDS])
    for i in range(n):
        arr[0, i]["rot"] = np.asarray(anno.rot[i], dtype=np.float64)
        arr[0, i]["scale"] = float(anno.scale[i])
        arr[0, i]["trans"] = np.asarray(anno.trans[i], dtype=np.float64).reshape(2, 1)
    out: dict = {"sfm_anno": arr}
    if anno.S is not None:
        out["S"] = np.asarray(anno.S, dtype=np.float64)
    if anno.conv_tri is not None:
        out["conv_tri"] = np.asarray(anno.conv_tri, dtype=np.float64)
    with atomic_write(path, "wb") as f:
        scipy.io.savemat(f, out, do_compression=True)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as **RGB** ``(H, W, 3)`` uint8 (grayscale and palette images become 3-channel).

    Raises:
        MatFileError: the file is missing, or it is not a decodable image (corrupt or truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise MatFileError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MatFileError(f"{path}: corrupt or unreadable image ({type(e).__name__}: {e})") from e
    return np.asarray(rgb, dtype=np.uint8).copy()


def check_mask_matches_image(mask: np.ndarray, image: np.ndarray, image_path: str | os.PathLike) -> None:
    """Raise :class:`MatFileError` naming ``image_path`` when ``mask (H, W)`` and ``image (H', W', 3)``
    differ in size."""
    if mask.shape[:2] != image.shape[:2]:
        raise MatFileError(
            f"{image_path}: mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size "
            f"{image.shape[0]}x{image.shape[1]} (height x width)"
        )
