"""Online 3D reconstruction of the objects of a video (METHOD §9.2): per object and frame, box → crop →
reconstruct → render the silhouette → paste it back at frame resolution → score it.

:func:`run_sequence` streams one sequence: each frame is read once, its objects' boxes come from a
:class:`~slopekp.video.boxes.BoxTrack`, their crops are reconstructed as one batch
(:meth:`slopekp.predict.Reconstructor.predict_crops`), and each object's mask is pasted into the frame. An object
without a box in a frame (absent, or lost by the tracker) gets an empty mask there. What it writes, per sequence:
* ``masks/<sequence>/<frame>.png``: the predicted masks in the DAVIS format (palette PNG, object ids), which the
  official toolkit can score too. Where two objects' masks overlap, the one with the larger box is taken to be in
  front (weak-perspective crops say nothing of depth between objects). The folder is replaced whole when the
  sequence is done: no frame of an earlier run stays, and a failed run leaves the earlier folder as it was;
* ``videos/<sequence>.mp4``: the frame with the textured reconstructions overlaid and their boxes, beside the crops
  the network saw (the first three; the paper's online figure), written only when complete;

and returns each object's per-frame J and F against the ground truth (:mod:`slopekp.eval.video_metrics`), with
void pixels excluded (J: from the counts; F: removed from both masks before their boundaries are taken) and, for the
official 2017 convention, counted as background. A sequence that is not annotated in
every frame (YouTube-VOS valid: a frame's PNG holds only the objects that start there) is not scored.

**Temporal smoothing** (``smoothing = a`` in ``[0, 1)``, 0 = off, as in the paper): not in the paper. Each object's
camera (in frame pixels, so that crops moving between frames do not matter) and shape are smoothed causally: the
rotation by slerp towards the previous smoothed rotation by the fraction ``a``, scale, translation and vertices by
the exponential moving average ``x̂_t = (1 − a)·x_t + a·x̂_{t−1}``. A gap (no box) restarts it.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import roma
import torch

from slopekp.data.video import VideoSequence, label_image
from slopekp.eval.video_metrics import JStats, boundary_measure, region_similarity, sequence_statistics
from slopekp.predict import CropWarning
from slopekp.video.boxes import open_boxes
from slopekp.viz.figures import save_image

__all__ = ["ObjectResult", "SequenceResult", "Smoother", "run_sequence", "score_frame"]


@dataclass
class ObjectResult:
    """One object of a sequence."""

    id: int
    j: np.ndarray
    """``(T,)`` J per frame, void pixels excluded (all NaN when the sequence is not scored)."""
    boxed: np.ndarray
    """``(T,)`` bool: the object had a box (and so a reconstruction) in that frame."""
    j_void_as_background: np.ndarray | None = None
    """``(T,)`` J per frame with void pixels counted as background (the official 2017 semi-supervised rule)."""
    f: np.ndarray | None = None
    """``(T,)`` F per frame, void pixels removed from both masks (None: F was not computed)."""
    f_void_as_background: np.ndarray | None = None
    """``(T,)`` F per frame with void pixels counted as background (the official 2017 semi-supervised rule)."""

    @property
    def scored(self) -> bool:
        return bool(np.isfinite(self.j).all())

    def statistics(self, convention: str = "all", measure: str = "J") -> JStats | None:
        """Mean / Recall / Decay of ``measure`` (``J`` or ``F``) under ``convention``: ``all`` frames with void
        excluded, or ``drop-first-last`` with void counted as background, as the official DAVIS 2017
        semi-supervised evaluation does. None when the sequence is not scored, has too few frames, or (F) F was
        not computed."""
        if measure == "J":
            v, v_bg = self.j, self.j_void_as_background
        elif measure == "F":
            v, v_bg = self.f, self.f_void_as_background
        else:
            raise ValueError(f"unknown measure {measure!r}; choose J or F")
        if v is None or not self.scored:
            return None
        if convention != "all" and v_bg is not None:
            v = v_bg
        try:
            return sequence_statistics(v, convention)
        except ValueError:
            return None


def score_frame(gt, labels: np.ndarray) -> dict[int, tuple[float, float, float, float]]:
    """Each object's J and F in one frame: ``gt`` a :class:`slopekp.data.video.FrameMasks`, ``labels`` the predicted
    ``(H, W)`` ids → ``{id: (J with void excluded, J with void as background, F with void excluded, F with void as
    background)}`` (:mod:`slopekp.eval.video_metrics`)."""
    void = gt.void.numpy()
    has_void = bool(void.any())
    out = {}
    for k, i in enumerate(gt.object_ids):
        g, p = gt.masks[k].numpy() > 0.5, labels == i
        j_bg, f_bg = region_similarity(g, p), boundary_measure(g, p)
        if has_void:
            out[i] = (region_similarity(g, p, void), j_bg, boundary_measure(g, p, void), f_bg)
        else:  # without void pixels both conventions score the same masks
            out[i] = (j_bg, j_bg, f_bg, f_bg)
    return out


@dataclass
class SequenceResult:
    name: str
    frames: int
    objects: list[ObjectResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


class Smoother:
    """Causal smoothing of each object's camera (frame pixels) and shape (module docstring)."""

    def __init__(self, amount: float) -> None:
        if not 0 <= amount < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {amount}")
        self.amount = float(amount)
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset(self, oid: int) -> None:
        self.state.pop(oid, None)

    def __call__(self, oid: int, camera_px: torch.Tensor, verts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``camera_px (7,)`` float64, ``verts (V, 3)`` → their smoothed values (stored for the next frame)."""

        prev = self.state.get(oid)
        if self.amount == 0 or prev is None:
            self.state[oid] = (camera_px, verts)
            return camera_px, verts
        a = self.amount
        cam0, v0 = prev
        xyzw = roma.unitquat_slerp(camera_px[[4, 5, 6, 3]], cam0[[4, 5, 6, 3]], torch.tensor([a], dtype=cam0.dtype))[0]
        q = xyzw[[3, 0, 1, 2]]
        st = (1 - a) * camera_px[:3] + a * cam0[:3]
        out = (torch.cat([st, q / q.norm()]), (1 - a) * verts + a * v0)
        self.state[oid] = out
        return out


class _VideoWriter:
    """Frames of the online figure into an MP4 (OpenCV), each frame ``(H, W, 3)`` uint8 RGB."""

    def __init__(self, path: Path, fps: float = 10.0) -> None:
        self.path, self.fps, self.writer, self.tmp = path, fps, None, path.with_name(f".{path.name}.part.mp4")

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"{self.path}: OpenCV cannot write MP4 video here")
        self.writer.write(np.ascontiguousarray(frame[..., ::-1]))

    def close(self, ok: bool = True) -> None:
        """Finish the file (``ok``) or throw the partial one away: the final path only ever holds a whole video."""
        if self.writer is not None:
            self.writer.release()
            if ok:
                self.tmp.replace(self.path)
            else:
                self.tmp.unlink(missing_ok=True)


def _figure_frame(frame: np.ndarray, overlays: list[np.ndarray], boxes: list[np.ndarray], crops: list[np.ndarray],
                  height: int) -> np.ndarray:  # fmt: skip
    """The frame with the textured reconstructions blended in and their boxes, beside a column of the crops."""

    out = frame.astype(np.float32) / 255.0
    for ov in overlays:
        a = np.clip(ov[..., 3:], 0, 1) * 0.85
        out = out * (1 - a) + np.clip(ov[..., :3], 0, 1) * a
    out = (out * 255).round().astype(np.uint8)
    for b in boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 200, 0), 2)
    h, w = out.shape[:2]
    scale = height / h
    out = cv2.resize(out, (max(2, round(w * scale)) // 2 * 2, height), interpolation=cv2.INTER_AREA)
    side = height // 3
    column = np.full((height, side, 3), 40, np.uint8)
    for i, c in enumerate(crops[:3]):
        column[i * side : (i + 1) * side] = cv2.resize((np.clip(c, 0, 1) * 255).astype(np.uint8), (side, side))
    return np.concatenate([out, column], axis=1)


@torch.no_grad()
def run_sequence(
    rec,
    sequence: VideoSequence,
    boxes_spec: str,
    out_dir: str | Path | None = None,
    *,
    smoothing: float = 0.0,
    video: bool = True,
    video_height: int = 240,
    progress=None,
) -> SequenceResult:
    """Reconstruct every object of ``sequence`` online and score it (module docstring).

    Args:
        rec: a :class:`slopekp.predict.Reconstructor`.
        boxes_spec: ``gt``, ``masks:DIR`` or ``tracker[:csrt|kcf]`` (:func:`slopekp.video.boxes.open_boxes`).
        out_dir: where ``masks/`` and ``videos/`` go (None: nothing is written).
        smoothing: temporal smoothing in ``[0, 1)`` (0: off).
        video: write ``videos/<sequence>.mp4``.
        progress: a tqdm bar to advance by one per frame, or None.

    Raises:
        ValueError: naming the file or folder: fewer than 2 frames, a bad box source, a mask folder with missing
            frames or unknown ids.
    """


    if len(sequence) < 2:
        raise ValueError(f"sequence {sequence.name!r}: a video needs at least 2 frames, got {len(sequence)}")
    track = open_boxes(boxes_spec, sequence)
    smoother = Smoother(smoothing)
    ids = sequence.object_ids
    T = len(sequence)
    j = {i: np.full((4, T), np.nan) for i in ids}  # J, J with void as background, F, F with void as background
    scored = all(sequence.annotated)  # a partly annotated split (YouTube-VOS valid) cannot be scored
    boxed = {i: np.zeros(T, bool) for i in ids}
    out = Path(out_dir) if out_dir is not None else None
    writer = _VideoWriter(out / "videos" / f"{sequence.name}.mp4") if (out is not None and video) else None
    if out is not None:  # the sequence's masks go to a fresh folder that replaces the old one when complete
        final_masks = out / "masks" / sequence.name
        part_masks = out / "masks" / f".{sequence.name}.part"
        shutil.rmtree(part_masks, ignore_errors=True)
        part_masks.mkdir(parents=True)
    t0 = time.perf_counter()
    done = False
    try:
        for t in range(T):
            frame = (sequence.load_image(t).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            h, w = frame.shape[:2]
            found = track.step(t, frame)
            present = [i for i in ids if found.get(i) is not None]
            for i in ids:
                if i not in present:
                    smoother.reset(i)
            crops = []
            for i in present:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CropWarning)  # tiny boxes of far birds are expected
                    crops.append(rec.prepare(frame, bbox=found[i]))
            recs = rec.predict_crops(crops)
            masks, area, overlays = {}, {}, []
            for i, r in zip(present, recs):
                cam_px, verts = smoother(i, r.photo_camera(), r.verts)
                if smoothing > 0:
                    r = dataclasses.replace(r, verts=verts.to(r.verts), camera=r.crop_camera(cam_px))
                masks[i] = r.photo_mask()
                b = found[i]
                area[i] = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
                boxed[i][t] = True
                if writer is not None:
                    side = int(np.clip(r.crop.box[2] - r.crop.box[0] + 1, 64, 512))
                    overlays.append(r.paste(r.render(size=side)))
            labels = np.zeros((h, w), np.uint8)
            for i in sorted(masks, key=lambda k: area[k]):  # the larger box (taken as nearer) is painted last
                labels[masks[i]] = i
            if out is not None:
                save_image(part_masks / f"{sequence.frame_names[t]}.png", label_image(labels))
            if scored:
                for i, scores in score_frame(sequence.load_masks(t), labels).items():
                    j[i][:, t] = scores
            if writer is not None:
                writer.write(_figure_frame(frame, overlays, [found[i] for i in present],
                                           [c.image for c in crops], video_height))  # fmt: skip
            if progress is not None:
                progress.update(1)
        if out is not None:
            shutil.rmtree(final_masks, ignore_errors=True)  # no stale frames of an earlier run stay
            part_masks.replace(final_masks)
        done = True
    finally:
        if writer is not None:
            writer.close(ok=done)
        if out is not None and not done:
            shutil.rmtree(part_masks, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return SequenceResult(sequence.name, T, [ObjectResult(i, j[i][0], boxed[i], *j[i][1:]) for i in ids], seconds)
