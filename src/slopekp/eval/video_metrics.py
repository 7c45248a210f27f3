"""DAVIS region similarity J and its sequence statistics (DATA.md §8; the davis2017-evaluation toolkit's
definitions, without its limits).

* :func:`region_similarity`: ``J = |gt ∧ pred ∧ ¬void| / |(gt ∨ pred) ∧ ¬void|`` per frame; **both empty → 1**, one
  empty → 0.
* :func:`sequence_statistics`: over one object's per-frame J vector ``v`` (length ``N``):

  - J-Mean ``M = nanmean(v)``;
  - J-Recall ``O = mean(v > 0.5)``: strict (0.5 is not recalled), NaN counts as a miss;
  - J-Decay ``D = nanmean(bin₀) − nanmean(bin₃)`` with ``ids = round_half_up(linspace(1, N, 5)) − 1`` and
    ``bin_i = v[ids[i] : ids[i+1] + 1]`` (ends inclusive; neighbouring bins share a frame). The toolkit casts
    ``ids`` to uint8, so its bins are wrong from 256 frames on (NumPy 2, where ``ids[4] + 1`` wraps to 0; from 257
    with NumPy 1); here they are integers of any size.

* Frame conventions (:data:`FRAME_CONVENTIONS`): ``all`` scores every frame; ``drop-first-last`` drops the first and
  last frame, as the official DAVIS 2017 semi-supervised evaluation does (the first frame's mask is the input
  there). Void pixels (255) are excluded from both counts when a void mask is given (the official semi-supervised
  evaluation gives none: it counts void as background; :mod:`slopekp.video` scores both ways).
* :func:`aggregate`: the dataset's J-Mean, J-Recall and J-Decay are plain means over all objects of all sequences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FRAME_CONVENTIONS", "JStats", "aggregate", "decay_bins", "j_per_frame", "region_similarity",
           "sequence_statistics"]  # fmt: skip

FRAME_CONVENTIONS = ("all", "drop-first-last")


@dataclass(frozen=True)
class JStats:
    """One object's (or the data set's) J statistics."""

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


def decay_bins(n: int) -> list[tuple[int, int]]:
    """The four ``(start, end)`` frame ranges (inclusive) of J-Decay for a sequence of ``n`` scored frames."""
    if n < 1:
        raise ValueError(f"need at least one frame, got {n}")
    ids = (np.floor(np.linspace(1, n, 5) + 1e-10 + 0.5).astype(np.int64) - 1).tolist()  # round half up
    return [(ids[i], ids[i + 1]) for i in range(4)]


def sequence_statistics(values, convention: str = "all") -> JStats:
    """J-Mean, J-Recall and J-Decay of one object's per-frame J (module docstring).

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
