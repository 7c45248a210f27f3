"""J and F tables of online reconstruction and of any folder of predicted DAVIS masks (``slopekp video`` and
``slopekp video score``), beside the paper's Table 2.

Per object and overall (the mean over all objects of all sequences, as the DAVIS toolkit aggregates): J-Mean,
J-Recall, J-Decay, F-Mean, F-Recall, F-Decay and J&F-Mean ``= (J-Mean + F-Mean) / 2``, under both frame conventions
(:data:`slopekp.eval.video_metrics.FRAME_CONVENTIONS`). The tables are written as ``results.json`` and
``results.md``. The summary (:func:`summarise`, the body of ``results.json``):
* ``objects``: one row per object: ``sequence``, ``object``, ``frames``, ``frames_with_box``, ``scored``; J's
  statistics under each convention (``row["all"]``, ``row["drop-first-last"]``: ``mean``, ``recall``, ``decay``,
  ``frames``); F's (``row["F"][convention]``, the same keys) and ``row["J&F"][convention]`` (the J&F-Mean);
* ``overall[convention]``: J's statistics over all objects (and ``objects``, their number); ``overall_F[convention]``
  F's, ``overall_J&F[convention]`` the J&F-Mean;
* ``frames``, ``fps``, ``not_scored``.

A convention's entry is None where it cannot be scored (a sequence not annotated in every frame, too few frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from slopekp.data.video import DavisDataset, YouTubeVOSDataset
from slopekp.eval.video_metrics import FRAME_CONVENTIONS, aggregate, jf_mean
from slopekp.utils import atomic_save_json, atomic_write
from slopekp.video.boxes import MaskFolderBoxes
from slopekp.video.online import ObjectResult, SequenceResult, score_frame

__all__ = ["PAPER_TABLE2", "open_video_dataset", "score_mask_folder", "summarise", "write_tables"]

#: SLOPE-KP's Table 2 (YouTube-VOS + DAVIS bird sequences, LWL boxes): J-Mean, J-Recall, J-Decay per pose head.
PAPER_TABLE2 = {
    "quaternion": (0.45, 0.48, 0.020),
    "gramschmidt": (0.40, 0.27, 0.007),
    "svd": (0.44, 0.43, 0.028),
    "keypoints": (0.45, 0.53, 0.018),
}


def open_video_dataset(root: str | Path, split: str | None = None):
    """A :class:`~slopekp.data.video.DavisDataset` (a folder with ``JPEGImages/480p``, or its parent ``DAVIS``) or a
    :class:`~slopekp.data.video.YouTubeVOSDataset` (a split folder with ``meta.json``, or its parent), by what
    ``root`` holds. ``split`` defaults to ``val`` (DAVIS) or ``train`` (YouTube-VOS: the split with full
    annotations).

    Raises:
        ValueError: naming ``root`` when it is neither.
    """

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    if (root / "JPEGImages" / "480p").is_dir() or (root / "DAVIS" / "JPEGImages").is_dir():
        return DavisDataset(root, split=split or "val")
    for yt in (root, root / "youtubevos"):  # `slopekp data synth-video --layout youtubevos` writes DIR/youtubevos
        if (yt / "JPEGImages").is_dir() or any((yt / s / "JPEGImages").is_dir() for s in ("train", "valid")):
            return YouTubeVOSDataset(yt, split=split or "train")
    raise ValueError(
        f"{root}: neither DAVIS (JPEGImages/480p, Annotations/480p, ImageSets) nor YouTube-VOS (<split>/meta.json, "
        "JPEGImages, Annotations)"
    )


def select_sequences(dataset, names: list[str] | None) -> list[str]:
    """``names`` (checked against the data set) or all of its sequences."""
    if not names:
        return list(dataset.sequences)
    unknown = [n for n in names if n not in dataset.sequences]
    if unknown:
        raise ValueError(f"unknown sequence(s) {unknown}; the split has {list(dataset.sequences)[:10]} ...")
    return list(names)


def summarise(results: list[SequenceResult]) -> dict[str, Any]:
    """Per object and overall J and F statistics and J&F-Mean under each frame convention, and the frames per
    second (module docstring)."""
    objects = []
    overall: dict[str, Any] = {}
    overall_f: dict[str, Any] = {}
    overall_jf: dict[str, Any] = {}
    for conv in FRAME_CONVENTIONS:
        j_stats, f_stats = [], []
        for seq in results:
            for obj in seq.objects:
                s = obj.statistics(conv)
                if s is not None:
                    j_stats.append(s)
                    f_stats.append(obj.statistics(conv, "F"))
        overall[conv] = {**aggregate(j_stats).as_dict(), "objects": len(j_stats)} if j_stats else None
        # F over the same objects as J (an object without F, from a caller that did not compute it, leaves it out)
        f_ok = bool(f_stats) and all(s is not None for s in f_stats)
        overall_f[conv] = {**aggregate(f_stats).as_dict(), "objects": len(f_stats)} if f_ok else None
        overall_jf[conv] = jf_mean(overall[conv], overall_f[conv])
    for seq in results:
        for obj in seq.objects:
            row = {"sequence": seq.name, "object": obj.id, "frames": int(seq.frames),
                   "frames_with_box": int(obj.boxed.sum()), "scored": obj.scored}  # fmt: skip
            f_row, jf_row = {}, {}
            for conv in FRAME_CONVENTIONS:
                j, f = obj.statistics(conv), obj.statistics(conv, "F")
                row[conv] = None if j is None else j.as_dict()
                f_row[conv] = None if f is None else f.as_dict()
                jf_row[conv] = jf_mean(j, f)
            row["F"], row["J&F"] = f_row, jf_row
            objects.append(row)
    frames = sum(r.frames for r in results)
    seconds = sum(r.seconds for r in results)
    unscored = sorted({row["sequence"] for row in objects if not row["scored"]})
    return {"objects": objects, "overall": overall, "overall_F": overall_f, "overall_J&F": overall_jf,
            "frames": frames, "fps": frames / seconds if seconds > 0 else None, "not_scored": unscored}  # fmt: skip


def _fmt(s: dict | None) -> str:
    return "– | – | –" if s is None else f"{s['mean']:.3f} | {s['recall']:.3f} | {s['decay']:+.3f}"


def _fmt_mean(v: float | dict | None) -> str:
    if isinstance(v, dict):
        v = v["mean"]
    return "–" if v is None else f"{v:.3f}"


def write_tables(out: str | Path, summary: dict[str, Any], meta: dict[str, Any]) -> tuple[Path, Path]:
    """``results.json`` (``meta`` + ``summary``) and ``results.md`` in ``out``; returns both paths."""
    out = Path(out)
    jpath, mpath = out / "results.json", out / "results.md"
    atomic_save_json({**meta, **summary}, jpath)
    f_overall = summary.get("overall_F") or {}
    jf_overall = summary.get("overall_J&F") or {}
    lines = [f"# {meta.get('title', 'J and F scores')}", ""]
    for k in ("checkpoint", "head", "boxes", "smoothing", "data", "predictions", "sequences"):
        if meta.get(k) not in (None, ""):
            v = meta[k]
            lines.append(f"- {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
    if summary.get("fps"):
        lines.append(f"- speed: {summary['fps']:.1f} frames per second ({summary['frames']} frames)")
    lines += ["", "J-Mean ↑ | J-Recall ↑ | J-Decay ↓ (region), F-Mean ↑ | F-Recall ↑ | F-Decay ↓ (boundary, tolerance "
              "0.8 % of the image diagonal) and J&F-Mean ↑ = (J-Mean + F-Mean) / 2, the mean over objects (`all`: "
              "every frame, void pixels excluded; `drop-first-last`: the official DAVIS 2017 semi-supervised rule, "
              "first and last frame dropped, void counted as background):", "",
              "| frames | objects | J-Mean | J-Recall | J-Decay | F-Mean | F-Recall | F-Decay | J&F-Mean |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for conv in FRAME_CONVENTIONS:
        o = summary["overall"][conv]
        lines.append(f"| {conv} | {0 if o is None else o['objects']} | {_fmt(o)} | {_fmt(f_overall.get(conv))} | "
                     f"{_fmt_mean(jf_overall.get(conv))} |")  # fmt: skip
    head = meta.get("head")
    if head in PAPER_TABLE2:
        m, r, d = PAPER_TABLE2[head]
        lines.append(f"| paper, Table 2 ({head}; YouTube-VOS + DAVIS, LWL boxes) | | {m:.2f} | {r:.2f} | {d:.3f} | "
                     "– | – | – | – |")  # fmt: skip
    if summary.get("not_scored"):
        lines += ["", f"Not scored: {', '.join(summary['not_scored'])} (not annotated in every frame, as in "
                  "YouTube-VOS valid, whose PNGs hold only the objects that start in them)."]  # fmt: skip
    lines += ["", "| sequence | object | frames (with a box) | J-Mean | J-Recall | J-Decay | F-Mean | F-Recall | "
              "F-Decay | J&F-Mean | J-Mean (first and last dropped) | F-Mean (first and last dropped) | J&F-Mean "
              "(first and last dropped) |", "| --- " * 13 + "|"]  # fmt: skip
    for row in summary["objects"]:
        f, jf = row.get("F") or {}, row.get("J&F") or {}
        lines.append(f"| {row['sequence']} | {row['object']} | {row['frames']} ({row['frames_with_box']}) | "
                     f"{_fmt(row['all'])} | {_fmt(f.get('all'))} | {_fmt_mean(jf.get('all'))} | "
                     f"{_fmt_mean(row['drop-first-last'])} | {_fmt_mean(f.get('drop-first-last'))} | "
                     f"{_fmt_mean(jf.get('drop-first-last'))} |")  # fmt: skip
    with atomic_write(mpath, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return jpath, mpath


def score_mask_folder(dataset, pred_dir: str | Path, sequences: list[str] | None = None,
                      progress: bool = False) -> list[SequenceResult]:  # fmt: skip
    """Score a folder of predicted DAVIS masks (``pred_dir/<sequence>/<frame>.png``) against ``dataset``'s ground
    truth with J and F: objects matched by id (semi-supervised), void excluded (and counted as background, for the
    official convention), every frame needed.

    Raises:
        ValueError: naming the file or folder: a sequence without predictions, missing frames, a PNG that is not a
            palette PNG of the frame's size, unknown ids, a sequence under 2 frames or without annotations.
    """


    results = []
    names = select_sequences(dataset, sequences)
    for name in tqdm(names, desc="score", unit="seq", disable=not progress):
        seq = dataset[name]
        if len(seq) < 2:
            raise ValueError(f"sequence {name!r}: a video needs at least 2 frames, got {len(seq)}")
        if not all(seq.annotated):
            raise ValueError(f"sequence {name!r}: scoring needs an annotation for every frame")
        pred = MaskFolderBoxes(seq, pred_dir)  # checks that every frame has its PNG first
        T, ids = len(seq), seq.object_ids
        j = {i: np.full((4, T), np.nan) for i in ids}  # J, J void as background, F, F void as background
        present = {i: np.zeros(T, bool) for i in ids}
        for t in range(T):
            gt = seq.load_masks(t)
            labels = pred.labels(t, tuple(gt.void.shape))
            for i, scores in score_frame(gt, labels).items():
                present[i][t] = bool((labels == i).any())
                j[i][:, t] = scores
        results.append(SequenceResult(name, T, [ObjectResult(i, j[i][0], present[i], *j[i][1:]) for i in ids]))
    return results
