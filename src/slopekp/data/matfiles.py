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
problem. The readers check structure (fields, shapes); the *values* (a NaN or empty bbox, an empty mask, a
keypoint outside the image, a non-finite camera) are checked by :func:`cub_record_problems` and
:func:`sfm_anno_problems`, which list every problem, vectorised over the records; the loader
(:class:`slopekp.data.cub.CubDataset`) raises on the first one that would break it and
``slopekp data verify`` reports them all.
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
        mask: (H, W) uint8 in {0, 1}, the same size as the image (the stored mask ``> 0``).
        class_id: 1-based class number.
        mask_range: ``(min, max)`` of the mask values as stored, before ``mask`` was binarised (NaN when the
            stored mask has NaN values); ``None`` for a record not read from a file.
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
    mask_range: tuple[float, float] | None = None


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
                mask_range=_value_range(mask),
            )
        )
    return records


def _value_range(a: np.ndarray) -> tuple[float, float] | None:
    """``(min, max)`` of a numeric array (NaN if it holds a NaN), ``None`` when empty or not numeric."""
    if a.size == 0 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        return None
    return float(a.min()), float(a.max())


def _fmt(values) -> str:
    """``[1, 2.5, nan]``: numbers for messages, integers without a decimal point."""
    return "[" + ", ".join(f"{v:g}" for v in np.asarray(values, dtype=np.float64).ravel()) + "]"


def cub_record_problems(
    path: str | os.PathLike, records: list[CubRecord], *, fatal_only: bool = False
) -> list[str]:
    """The problems with the annotation *values* of ``records`` read from ``path``, one line each, naming
    ``path``, the 0-based record index and its image (``rel_path``). Vectorised over the records.

    Fatal problems (the loader cannot crop the sample, or would train on NaN): a bbox that is not finite or
    empty (``x2 < x1`` or ``y2 < y1``, 1-based inclusive), an empty mask, a visible keypoint (``parts[2] > 0``)
    that is not finite. Unless ``fatal_only``, also what the loader tolerates but is wrong: a bbox less than
    half inside the ``width × height`` image, a visible keypoint more than 1 px outside it (1-based centres
    ``1..W``, so outside ``[-0.5, W + 1.5]``), stored mask values outside 0..1 or not finite
    (:attr:`CubRecord.mask_range`).

    Returns:
        the problems, grouped by record (empty = none).
    """
    n = len(records)
    if n == 0:
        return []
    bbox = np.stack([np.asarray(r.bbox, dtype=np.float64).reshape(4) for r in records])  # (N, 4)
    parts = np.stack([r.parts for r in records])  # (N, 3, 15)
    size = np.array([[r.width, r.height] for r in records], dtype=np.float64)  # (N, 2) W, H
    found: list[list[str]] = [[] for _ in range(n)]

    finite = np.isfinite(bbox).all(1)
    empty = finite & ((bbox[:, 2] < bbox[:, 0]) | (bbox[:, 3] < bbox[:, 1]))
    for i in np.nonzero(~finite)[0]:
        found[i].append(f"bbox {_fmt(bbox[i])} is not finite")
    for i in np.nonzero(empty)[0]:
        found[i].append(f"bbox {_fmt(bbox[i])} is empty (x2 < x1 or y2 < y1; [x1, y1, x2, y2], 1-based inclusive)")
    if not fatal_only:  # the fraction of the box (pixel areas [x1 - 0.5, x2 + 0.5]) inside the image
        ok = finite & ~empty
        lo, hi = bbox[:, :2] - 0.5, bbox[:, 2:] + 0.5
        inter = np.clip(np.minimum(hi, size + 0.5) - np.maximum(lo, 0.5), 0, None).prod(1)
        inside = np.divide(inter, (hi - lo).prod(1), out=np.ones(n), where=ok)
        for i in np.nonzero(ok & (inside < 0.5))[0]:
            found[i].append(
                f"bbox {_fmt(bbox[i])} lies outside the {size[i, 0]:g}x{size[i, 1]:g} image "
                f"({inside[i]:.0%} of it inside)"
            )

    for i, r in enumerate(records):
        if r.mask_range is not None and not fatal_only:
            lo_v, hi_v = r.mask_range
            if not (np.isfinite(lo_v) and np.isfinite(hi_v)):
                found[i].append("mask has NaN or infinite values")
            elif lo_v < 0 or hi_v > 1:
                found[i].append(f"mask values outside 0..1 (min {lo_v:g}, max {hi_v:g}): CMR masks are 0/1")
        if not r.mask.any():
            found[i].append("mask is empty (no foreground pixel)")

    xy, vis = parts[:, :2], parts[:, 2] > 0  # (N, 2, 15), (N, 15)
    bad_kp = vis & ~np.isfinite(xy).all(1)
    for i, k in zip(*np.nonzero(bad_kp)):
        found[i].append(f"visible keypoint {k} at ({xy[i, 0, k]:.1f}, {xy[i, 1, k]:.1f}) is not finite")
    if not fatal_only:
        with np.errstate(invalid="ignore"):
            out = vis & ~bad_kp & ((xy < -0.5) | (xy > size[:, :, None] + 1.5)).any(1)
        for i, k in zip(*np.nonzero(out)):
            found[i].append(
                f"visible keypoint {k} at ({xy[i, 0, k]:.1f}, {xy[i, 1, k]:.1f}) lies outside the "
                f"{size[i, 0]:g}x{size[i, 1]:g} image"
            )
    return [f"{path}: record {i} ({records[i].rel_path}): {p}" for i in range(n) for p in found[i]]


def sfm_anno_problems(
    path: str | os.PathLike,
    anno: SfmAnnotations,
    names: list[str] | None = None,
    *,
    fatal_only: bool = False,
) -> list[str]:
    """The problems with the cameras of ``anno`` read from ``path``, one line each, naming ``path``, the
    0-based camera index and ``names[i]`` (its image) when given. Vectorised over the cameras.

    Fatal: ``rot``, ``scale`` or ``trans`` not finite. Unless ``fatal_only``, also ``scale <= 0`` and a
    ``rot`` that is not a proper rotation (``|R·Rᵀ − I| > 1e-3`` or ``det R < 0``).
    """
    n = len(anno)
    if n == 0:
        return []
    found: list[list[str]] = [[] for _ in range(n)]
    for name, value in (("rot", anno.rot), ("scale", anno.scale), ("trans", anno.trans)):
        bad = ~np.isfinite(value.reshape(n, -1)).all(1)
        for i in np.nonzero(bad)[0]:
            found[i].append(f"{name} is not finite")
    if not fatal_only:
        finite = np.isfinite(anno.rot.reshape(n, -1)).all(1)
        rot = np.where(finite[:, None, None], anno.rot, np.eye(3))
        err = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max((1, 2))
        det = np.linalg.det(rot)
        for i in np.nonzero(finite & ((err > 1e-3) | (det < 0)))[0]:
            found[i].append(f"rot is not a rotation (R·Rᵀ differs from I by {err[i]:.3g}; det {det[i]:.3g})")
        with np.errstate(invalid="ignore"):
            for i in np.nonzero(anno.scale <= 0)[0]:
                found[i].append(f"scale {anno.scale[i]:g} is not positive")

    def where(i: int) -> str:
        return f"camera {i} ({names[i]})" if names is not None and i < len(names) else f"camera {i}"

    return [f"{path}: {where(i)}: {p}" for i in range(n) for p in found[i]]


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
