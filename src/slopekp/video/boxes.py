"""Where each object's box comes from, frame by frame (METHOD §9.2 step 1): one interface, three sources.

``open_boxes(spec, sequence)`` returns a :class:`BoxTrack` whose ``step(t, frame)`` gives ``{object id: box or
None}`` for frame ``t`` (``None``: the object is not there, or the tracker lost it). Boxes are ``[x1, y1, x2, y2]``
in 0-based frame pixels, inclusive corners (``docs/conventions.md``); the reconstructor pads and squares them
as at training time (:meth:`slopekp.predict.Reconstructor.prepare`).

``spec``:
* ``gt``: the tight box of each object's ground-truth mask (an oracle);
* ``masks:DIR``: the tight boxes of a folder of predicted masks in the DAVIS format, ``DIR/<sequence>/<frame>.png``
  palette PNGs whose values are object ids (what LWL or any VOS method writes); every frame must have one and
  every id must be one of the sequence's objects;
* ``tracker`` (``tracker:csrt``) or ``tracker:kcf``: OpenCV's CSRT or KCF tracker (the contrib build), one per
  object, started from the object's first ground-truth mask at least :data:`MIN_TRACK_SIDE` pixels wide and high
  (the semi-supervised protocol: an object that enters later starts where it first appears). A lost track (the
  tracker says so, fails, or its box leaves the frame) gives ``None`` while lost; the tracker keeps running and
  the object returns when it is found again.
"""

from __future__ import annotations

import abc
from pathlib import Path

import cv2
import numpy as np

from slopekp.data.video import VOID_LABEL, VideoSequence, read_label_png

__all__ = ["BOX_SOURCES", "BoxTrack", "label_boxes", "open_boxes", "parse_box_spec"]

BOX_SOURCES = ("gt", "masks:DIR", "tracker", "tracker:csrt", "tracker:kcf")
TRACKERS = ("csrt", "kcf")
#: A tracker starts on an object's first mask whose box is at least this many pixels on each side.
MIN_TRACK_SIDE = 4


def parse_box_spec(spec: str) -> tuple[str, str]:
    """``gt`` → ``("gt", "")``, ``masks:DIR`` → ``("masks", DIR)``, ``tracker[:csrt|kcf]`` → ``("tracker", kind)``.

    Raises:
        ValueError: anything else.
    """
    kind, _, arg = spec.partition(":")
    if kind == "gt" and not arg:
        return "gt", ""
    if kind == "masks" and arg:
        return "masks", arg
    if kind == "tracker" and (arg or "csrt") in TRACKERS:
        return "tracker", arg or "csrt"
    raise ValueError(f"--boxes {spec!r}: expected one of gt, masks:DIR, tracker, tracker:csrt, tracker:kcf")


def label_boxes(labels: np.ndarray, ids: tuple[int, ...]) -> dict[int, np.ndarray | None]:
    """The tight box of ``labels == id`` for each id (``None`` when the id has no pixel)."""
    out: dict[int, np.ndarray | None] = {}
    for i in ids:
        m = labels == i
        if not m.any():
            out[i] = None
            continue
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        out[i] = np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)
    return out


class BoxTrack(abc.ABC):
    """The boxes of one sequence's objects, frame after frame (frames in order, from 0)."""

    def __init__(self, sequence: VideoSequence) -> None:
        self.sequence = sequence
        self.ids = sequence.object_ids

    @abc.abstractmethod
    def step(self, t: int, frame: np.ndarray) -> dict[int, np.ndarray | None]:
        """Boxes of frame ``t`` (``frame``: ``(H, W, 3)`` uint8 RGB)."""


class GroundTruthBoxes(BoxTrack):
    def __init__(self, sequence: VideoSequence) -> None:
        super().__init__(sequence)
        missing = [n for n, a in zip(sequence.frame_names, sequence.annotated) if not a]
        if missing:
            raise ValueError(
                f"sequence {sequence.name!r}: --boxes gt needs an annotation for every frame; {len(missing)} "
                f"frame(s) have none, e.g. {missing[:5]}"
            )

    def step(self, t: int, frame: np.ndarray) -> dict[int, np.ndarray | None]:
        return label_boxes(self.sequence.load_labels(t), self.ids)


class MaskFolderBoxes(BoxTrack):
    def __init__(self, sequence: VideoSequence, folder: str | Path) -> None:
        super().__init__(sequence)
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"--boxes masks:{folder}: not a folder")
        self.dir = root / sequence.name
        if not self.dir.is_dir():
            raise ValueError(f"{self.dir}: no predicted masks for sequence {sequence.name!r} (expected "
                             f"{self.dir}/<frame>.png)")  # fmt: skip
        missing = [n for n in sequence.frame_names if not (self.dir / f"{n}.png").is_file()]
        if missing:
            raise ValueError(
                f"{self.dir}: {len(missing)} of {len(sequence)} frames have no mask, e.g. "
                f"{', '.join(f'{n}.png' for n in missing[:5])}"
            )

    def labels(self, t: int, frame_size: tuple[int, int]) -> np.ndarray:
        """Frame ``t``'s ``(H, W)`` uint8 ids, checked: a palette PNG of the frame's size holding known ids only."""
        path = self.dir / f"{self.sequence.frame_names[t]}.png"
        labels = read_label_png(path, expected_size=frame_size)
        check_label_ids(labels, self.ids, path)
        return labels

    def step(self, t: int, frame: np.ndarray) -> dict[int, np.ndarray | None]:
        return label_boxes(self.labels(t, frame.shape[:2]), self.ids)


def check_label_ids(labels: np.ndarray, ids: tuple[int, ...], path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` when ``labels`` hold an id that is not one of ``ids`` (nor 0 or 255)."""
    found = set(np.unique(labels).tolist()) - {0, VOID_LABEL}
    unknown = sorted(found - set(ids))
    if unknown:
        raise ValueError(f"{path}: unknown object id(s) {unknown}; the sequence's objects are {list(ids)}")


class TrackerBoxes(BoxTrack):
    def __init__(self, sequence: VideoSequence, kind: str = "csrt") -> None:
        super().__init__(sequence)

        make = {"csrt": getattr(cv2, "TrackerCSRT_create", None), "kcf": getattr(cv2, "TrackerKCF_create", None)}
        self.create = make.get(kind)
        if self.create is None:
            raise ValueError(f"OpenCV has no {kind.upper()} tracker here; install opencv-contrib-python-headless")
        self.kind = kind
        self.trackers: dict[int, object] = {}

    def step(self, t: int, frame: np.ndarray) -> dict[int, np.ndarray | None]:
        h, w = frame.shape[:2]
        bgr = np.ascontiguousarray(frame[..., ::-1])
        out: dict[int, np.ndarray | None] = {}
        pending = [i for i in self.ids if i not in self.trackers]
        if pending and self.sequence.annotated[t]:
            start = label_boxes(self.sequence.load_labels(t), tuple(pending))
            for i, box in start.items():
                if box is None or min(box[2] - box[0], box[3] - box[1]) + 1 < MIN_TRACK_SIDE:
                    continue  # not there yet, or too small to track: try again on a later frame
                tracker = self.create()
                x1, y1, x2, y2 = (int(v) for v in box)
                try:
                    tracker.init(bgr, (x1, y1, x2 - x1 + 1, y2 - y1 + 1))
                except cv2.error:
                    continue
                self.trackers[i] = tracker
                out[i] = box
        for i in self.ids:
            if i in out:
                continue
            tracker = self.trackers.get(i)
            if tracker is None:
                out[i] = None
                continue
            try:
                ok, (x, y, bw, bh) = tracker.update(bgr)
            except cv2.error:  # OpenCV's trackers fail on degenerate boxes: a lost track
                ok, x, y, bw, bh = False, 0, 0, 0, 0
            box = np.array([x, y, x + bw - 1, y + bh - 1], dtype=np.float64)
            inside = ok and bw > 1 and bh > 1 and box[2] >= 0 and box[3] >= 0 and box[0] <= w - 1 and box[1] <= h - 1
            out[i] = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]) if inside else None
        return out


def open_boxes(spec: str, sequence: VideoSequence) -> BoxTrack:
    """The :class:`BoxTrack` of ``spec`` (module docstring) for ``sequence``; checks what it can before any frame.

    Raises:
        ValueError: naming the folder or file: a bad spec, a mask folder with missing frames, no annotations
            for ``gt``.
    """
    kind, arg = parse_box_spec(spec)
    if kind == "gt":
        return GroundTruthBoxes(sequence)
    if kind == "masks":
        return MaskFolderBoxes(sequence, arg)
    return TrackerBoxes(sequence, arg)
