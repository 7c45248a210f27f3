"""DAVIS region similarity J, boundary measure F and their sequence statistics (DATA.md §8; the
davis2017-evaluation toolkit's definitions, without its limits).

* :func:`region_similarity`: ``J = |gt ∧ pred ∧ ¬void| / |(gt ∨ pred) ∧ ¬void|`` per frame; **both empty → 1**, one
  empty → 0.
* :func:`boundary_measure`: F per frame, the toolkit's ``f_measure``:
  - the boundary map of a mask (:func:`boundary_map`, the toolkit's ``seg2bmap`` at the mask's own size): a pixel,
    foreground or background, is on the boundary when it differs from one of its right, lower and lower-right
    neighbours that lie in the image. So the boundary sits on both sides of the outline: for a solid ``h × w``
    rectangle away from the image edge it is the rectangle's last row and last column and the background row
    above it and column left of it, a ring of ``2·(h + w)`` pixels; and the image edge is no boundary (in the last
    row a pixel is compared with its right neighbour only, in the last column with the one below only, and the
    bottom-right pixel is never on it);
  - the tolerance ``r = ceil(0.008 · sqrt(H² + W²))`` pixels (0.8 % of the image diagonal; 8 at 480 × 854), and the
    disk of radius ``r`` (:func:`disk`: the offsets with ``dx² + dy² ≤ r²``, as ``skimage.morphology.disk``);
  - precision ``P`` = the share of predicted boundary pixels within the disk of a ground-truth one (the ground
    truth's boundary dilated by the disk), recall ``R`` = the share of ground-truth boundary pixels within the disk
    of a predicted one; ``F = 2PR / (P + R)``, 0 when ``P + R = 0``. Without boundary pixels: both empty →
    ``P = R = 1`` (F = 1); no predicted boundary → ``P = 1, R = 0``; no ground-truth boundary → ``P = 0, R = 1``
    (F = 0 either way);
  - void pixels, when a void mask is given, are removed from both masks before their boundaries are taken (the
    toolkit's rule), so a prediction that spills into void is not penalised there; the edge of the void region
    can then be a boundary of both masks.

* :func:`sequence_statistics`: over one object's per-frame J (or F) vector ``v`` (length ``N``):
  - Mean ``M = nanmean(v)``;
  - Recall ``O = mean(v > 0.5)``: strict (0.5 is not recalled), NaN counts as a miss;
  - Decay ``D = nanmean(bin₀) − nanmean(bin₃)`` with ``ids = round_half_up(linspace(1, N, 5)) − 1`` and
    ``bin_i = v[ids[i] : ids[i+1] + 1]`` (ends inclusive; neighbouring bins share a frame). The toolkit casts
    ``ids`` to uint8, so its bins are wrong from 256 frames on (NumPy 2, where ``ids[4] + 1`` wraps to 0; from 257
    with NumPy 1); here they are integers of any size.

* Frame conventions (:data:`FRAME_CONVENTIONS`): ``all`` scores every frame; ``drop-first-last`` drops the first and
  last frame, as the official DAVIS 2017 semi-supervised evaluation does (the first frame's mask is the input
  there). Void pixels (255) are excluded from J's counts and from F's masks when a void mask is given (the
  official semi-supervised evaluation gives none: it counts void as background for J and F; :mod:`slopekp.video`
  scores both ways).
* :func:`aggregate`: the data set's Mean, Recall and Decay are plain means over all objects of all sequences; its
  J&F-Mean is ``(J-Mean + F-Mean) / 2`` (:func:`jf_mean`), as the toolkit's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

__all__ = ["BOUNDARY_TOLERANCE", "FRAME_CONVENTIONS", "JStats", "aggregate", "boundary_map", "boundary_measure",
           "boundary_precision_recall", "boundary_radius", "decay_bins", "disk", "f_per_frame", "j_per_frame",
           "jf_mean", "region_similarity", "sequence_statistics"]  # fmt: skip

FRAME_CONVENTIONS = ("all", "drop-first-last")

BOUNDARY_TOLERANCE = 0.008
"""F's tolerance as a share of the image diagonal (the toolkit's ``bound_th``)."""


@dataclass(frozen=True)
class JStats:
    """One object's (or the data set's) J or F statistics: Mean, Recall, Decay and the frames they were taken over
    (the name is historical: F's statistics use the same class)."""

    mean: float
    recall: float
    decay: float
    frames: int

    def as_dict(self) -> dict:
        return asdict(self)


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of one frame: ``gt``, ``pred`` and ``void`` are ``(H, W)`` (cast to bool). Both empty (after void) → 1."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred masks differ in size: {gt.shape} vs {pred.shape}")
    keep = np.ones_like(gt) if void is None else ~np.asarray(void, bool)
    inter = np.count_nonzero(gt & pred & keep)
    union = np.count_nonzero((gt | pred) & keep)
    return 1.0 if union == 0 else inter / union


def j_per_frame(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """``(T,)`` J of each frame of ``(T, H, W)`` masks (``void``: ``(T, H, W)`` or None)."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"gt and pred must both be (T, H, W), got {gt.shape} and {pred.shape}")
    keep = np.ones_like(gt) if void is None else ~np.asarray(void, bool)
    inter = np.count_nonzero(gt & pred & keep, axis=(1, 2))
    union = np.count_nonzero((gt | pred) & keep, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` bool boundary map of a ``(H, W)`` mask (module docstring; the toolkit's ``seg2bmap``)."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {m.shape}")
    b = np.zeros_like(m)
    right = m[:, :-1] != m[:, 1:]  # (H, W - 1): differs from the right neighbour
    below = m[:-1, :] != m[1:, :]  # (H - 1, W): differs from the one below
    diagonal = m[:-1, :-1] != m[1:, 1:]  # (H - 1, W - 1): differs from the lower-right one
    b[:-1, :-1] = right[:-1] | below[:, :-1] | diagonal
    b[-1, :-1] = right[-1]  # last row: the right neighbour only
    b[:-1, -1] = below[:, -1]  # last column: the one below only
    b[-1, -1] = False
    return b


def boundary_radius(shape: tuple[int, ...], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """F's tolerance in pixels for ``(H, W)`` frames: ``ceil(tolerance · sqrt(H² + W²))``; a ``tolerance`` of 1 or
    more is taken as pixels, as the toolkit does (then it must be a whole number)."""
    if not tolerance > 0:
        raise ValueError(f"the boundary tolerance must be positive, got {tolerance}")
    if tolerance >= 1:
        if tolerance != int(tolerance):
            raise ValueError(f"a boundary tolerance in pixels must be a whole number, got {tolerance}")
        return int(tolerance)
    h, w = (int(n) for n in shape[-2:])
    return int(math.ceil(tolerance * math.sqrt(float(h * h + w * w))))


def disk(radius: int) -> np.ndarray:
    """``(2r + 1, 2r + 1)`` uint8: 1 at the offsets ``(dy, dx)`` from the centre with ``dx² + dy² ≤ r²`` (the
    definition of ``skimage.morphology.disk``)."""
    r = int(radius)
    if r != radius or r < 0:
        raise ValueError(f"a disk radius must be a whole number >= 0, got {radius}")
    d = np.arange(-r, r + 1)
    return ((d[:, None] ** 2 + d[None, :] ** 2) <= r * r).astype(np.uint8)


def _dilate(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``mask`` (bool) dilated by the symmetric ``kernel``; pixels outside the array count as background."""

    # OpenCV's default border for dilation is the smallest value, so nothing outside the array is foreground
    return cv2.dilate(np.ascontiguousarray(mask, dtype=np.uint8), kernel).astype(bool)


def _box(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``((first row, last row), (first column, last column))`` of a mask's pixels, None when it has none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))


def boundary_precision_recall(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                              tolerance: float = BOUNDARY_TOLERANCE) -> tuple[float, float]:  # fmt: skip
    """F's boundary precision and recall of one frame (module docstring): ``gt``, ``pred``, ``void`` ``(H, W)``."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"gt and pred masks must both be (H, W) of one size, got {gt.shape} and {pred.shape}")
    if void is not None:
        keep = ~np.asarray(void, bool)
        gt, pred = gt & keep, pred & keep
    radius = boundary_radius(gt.shape, tolerance)
    # Both boundaries lie in the box of both masks' foreground widened by one pixel up and left; their maps there
    # need the pixels one to the right and below too (or the image edge, which the box then shares).
    gb = pb = np.zeros((0, 0), bool)
    box = _box(gt | pred)
    if box is not None:
        (r0, r1), (c0, c1) = box
        crop = (slice(max(r0 - 1, 0), r1 + 2), slice(max(c0 - 1, 0), c1 + 2))
        gb, pb = boundary_map(gt[crop]), boundary_map(pred[crop])
    n_gt, n_pred = np.count_nonzero(gb), np.count_nonzero(pb)
    if n_gt == 0 or n_pred == 0:
        return (1.0 if n_pred == 0 else 0.0), (1.0 if n_gt == 0 else 0.0)
    # and only the box around both boundaries matters: a dilated pixel outside it is no boundary pixel of the other
    (r0, r1), (c0, c1) = _box(gb | pb)
    gb, pb = gb[r0 : r1 + 1, c0 : c1 + 1], pb[r0 : r1 + 1, c0 : c1 + 1]
    kernel = disk(radius)
    precision = np.count_nonzero(pb & _dilate(gb, kernel)) / n_pred
    recall = np.count_nonzero(gb & _dilate(pb, kernel)) / n_gt
    return float(precision), float(recall)


def boundary_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                     tolerance: float = BOUNDARY_TOLERANCE) -> float:  # fmt: skip
    """F of one frame: ``2PR / (P + R)`` of :func:`boundary_precision_recall` (0 when ``P + R = 0``)."""
    p, r = boundary_precision_recall(gt, pred, void, tolerance)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def f_per_frame(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                tolerance: float = BOUNDARY_TOLERANCE) -> np.ndarray:  # fmt: skip
    """``(T,)`` F of each frame of ``(T, H, W)`` masks (``void``: ``(T, H, W)`` or None)."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"gt and pred must both be (T, H, W), got {gt.shape} and {pred.shape}")
    return np.array([boundary_measure(gt[t], pred[t], None if void is None else void[t], tolerance)
                     for t in range(gt.shape[0])], dtype=np.float64)  # fmt: skip


def jf_mean(j: JStats | dict | None, f: JStats | dict | None) -> float | None:
    """J&F-Mean ``(J-Mean + F-Mean) / 2`` of one object's (or the data set's) statistics; None when either is."""
    if j is None or f is None:
        return None
    jm = j["mean"] if isinstance(j, dict) else j.mean
    fm = f["mean"] if isinstance(f, dict) else f.mean
    return (float(jm) + float(fm)) / 2


def decay_bins(n: int) -> list[tuple[int, int]]:
    """The four ``(start, end)`` frame ranges (inclusive) of J-Decay for a sequence of ``n`` scored frames."""
    if n < 1:
        raise ValueError(f"need at least one frame, got {n}")
    ids = (np.floor(np.linspace(1, n, 5) + 1e-10 + 0.5).astype(np.int64) - 1).tolist()  # round half up
    return [(ids[i], ids[i + 1]) for i in range(4)]


def sequence_statistics(values, convention: str = "all") -> JStats:
    """Mean, Recall and Decay of one object's per-frame J or F (module docstring).

    Raises:
        ValueError: an unknown convention, or fewer frames than it needs (``drop-first-last`` needs 3).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if convention not in FRAME_CONVENTIONS:
        raise ValueError(f"unknown frame convention {convention!r}; choose from {FRAME_CONVENTIONS}")
    if convention == "drop-first-last":
        if v.size < 3:
            raise ValueError(f"dropping the first and last frame needs at least 3 frames, got {v.size}")
        v = v[1:-1]
    if v.size < 1:
        raise ValueError("no frames to score")
    with np.errstate(invalid="ignore"):
        recall = float(np.mean(v > 0.5))
    bins = [v[a : b + 1] for a, b in decay_bins(v.size)]
    mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    first = float(np.nanmean(bins[0])) if np.isfinite(bins[0]).any() else float("nan")
    last = float(np.nanmean(bins[3])) if np.isfinite(bins[3]).any() else float("nan")
    return JStats(mean, recall, first - last, int(v.size))


def aggregate(stats: list[JStats]) -> JStats:
    """The data set's statistics: the mean over objects of each (``frames`` is the total)."""
    if not stats:
        raise ValueError("no objects to aggregate")
    arr = np.array([[s.mean, s.recall, s.decay] for s in stats], dtype=np.float64)
    m = arr.mean(axis=0)  # as the toolkit: an object with a NaN statistic makes that figure NaN
    return JStats(float(m[0]), float(m[1]), float(m[2]), int(sum(s.frames for s in stats)))
