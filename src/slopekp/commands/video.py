"""``slopekp video``: reconstruct the objects of videos online and score them with DAVIS J (METHOD §9.2,
Table 2); ``slopekp video score``: score any folder of predicted DAVIS masks.

* ``slopekp video --checkpoint CKPT --data DIR --out OUT [--boxes tracker|tracker:kcf|masks:DIR|gt]
  [--smooth 0.5] [--sequences ...]``
* ``slopekp video score --gt DIR --pred MASKS_DIR [--sequences ...] [--drop-first-last]``

DIR is a DAVIS folder (``JPEGImages/480p``, ``Annotations/480p``, ``ImageSets``; ``--split val`` by default) or a
YouTube-VOS one (``<split>/meta.json``; ``--split train``, the split with every frame annotated).
``slopekp data synth-video --out DIR [--layout davis|youtubevos|both]`` makes SynthBirds videos.

``OUT/`` receives ``masks/<sequence>/<frame>.png`` (DAVIS format), ``videos/<sequence>.mp4`` (the frame with
the textured reconstructions overlaid, beside the crops), ``results.json`` and ``results.md`` (J-Mean, J-Recall,
J-Decay per object and overall, all frames and first/last dropped, beside the paper's Table 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "video",
        help="online reconstruction of the birds of videos, scored with DAVIS J (Table 2); `video score` scores "
        "any folder of DAVIS masks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_video, group_parser=p)
    p.add_argument("--checkpoint", help="a trained model (Stage III OUT/checkpoints/last.pt)")
    p.add_argument("--data", help="a DAVIS or YouTube-VOS folder")
    p.add_argument("--out", help="output folder")
    p.add_argument("--split", default=None, help="the data's split (default: val for DAVIS, train for YouTube-VOS)")
    p.add_argument("--boxes", default="tracker",
                   help="where boxes come from: tracker (CSRT), tracker:kcf, masks:DIR (DAVIS-format masks, e.g. "
                        "of LWL) or gt (oracle); default tracker")  # fmt: skip
    p.add_argument("--smooth", type=float, default=0.0,
                   help="temporal smoothing of camera and shape in [0, 1) (0: off, as in the paper)")  # fmt: skip
    p.add_argument("--sequences", nargs="+", default=None, help="only these sequences")
    p.add_argument("--no-video", action="store_true", help="do not write videos/<sequence>.mp4")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    s = p.add_subparsers(dest="video_command", metavar="SUBCOMMAND")
    sc = s.add_parser("score", help="score predicted DAVIS-format masks against ground truth (J per object)",
                      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sc.add_argument("--gt", required=True, help="DAVIS or YouTube-VOS folder with the ground truth")
    sc.add_argument("--pred", required=True, help="predicted masks: PRED/<sequence>/<frame>.png palette PNGs")
    sc.add_argument("--split", default=None, help="the ground truth's split (default: val / train)")
    sc.add_argument("--sequences", nargs="+", default=None, help="only these sequences (default: all of the split)")
    sc.add_argument("--drop-first-last", action="store_true",
                    help="print the official DAVIS 2017 semi-supervised convention (first and last frame dropped, "
                         "void counted as background) instead of all frames with void excluded; results.json and "
                         "results.md hold both")  # fmt: skip
    sc.add_argument("--out", default=None, help="where results.json and results.md go (default: PRED)")
    sc.set_defaults(func=_score)


def _print_summary(summary: dict, convention: str) -> None:
    print(f"{'sequence':24s} {'object':>6s} {'J-Mean':>8s} {'J-Recall':>9s} {'J-Decay':>8s}")
    for row in summary["objects"]:
        s = row[convention]
        if s is None:
            print(f"{row['sequence']:24s} {row['object']:6d} {'(too few annotated frames)':>27s}")
            continue
        print(f"{row['sequence']:24s} {row['object']:6d} {s['mean']:8.3f} {s['recall']:9.3f} {s['decay']:+8.3f}")
    if summary.get("not_scored"):
        print(f"note: not scored (not annotated in every frame): {', '.join(summary['not_scored'])}")
    o = summary["overall"][convention]
    if o is not None:
        print(f"{'overall (' + convention + ')':31s} {o['mean']:8.3f} {o['recall']:9.3f} {o['decay']:+8.3f}")


def _video(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from slopekp.predict import Reconstructor
    from slopekp.utils import check_device_name
    from slopekp.video.boxes import open_boxes, parse_box_spec
    from slopekp.video.online import run_sequence
    from slopekp.video.report import open_video_dataset, select_sequences, summarise, write_tables

    missing = [f"--{k}" for k in ("checkpoint", "data", "out") if not getattr(args, k)]
    if missing:
        raise ValueError(f"slopekp video needs {', '.join(missing)} (or `slopekp video score` to score masks)")
    kind, arg = parse_box_spec(args.boxes)
    out = Path(args.out)
    if kind == "masks":
        src, dst = Path(arg).resolve(), (out / "masks").resolve()
        if src == dst or dst in src.parents or src in dst.parents:
            raise ValueError(f"--boxes masks:{arg} would be overwritten by the predicted masks in {out / 'masks'}; "
                             "choose another --out")  # fmt: skip
    if not 0 <= args.smooth < 1:
        raise ValueError(f"--smooth must be in [0, 1), got {args.smooth}")
    check_device_name(args.device)
    dataset = open_video_dataset(args.data, args.split)
    names = select_sequences(dataset, args.sequences)
    rec = Reconstructor.from_checkpoint(args.checkpoint, device=args.device)
    sequences = [dataset[n] for n in names]
    for seq in sequences:  # bad input (a short video, a mask folder with missing frames ...) fails before any work
        if len(seq) < 2:
            raise ValueError(f"sequence {seq.name!r}: a video needs at least 2 frames, got {len(seq)}")
        open_boxes(args.boxes, seq)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=sum(len(s) for s in sequences), unit="frame", desc="video", disable=args.quiet,
               dynamic_ncols=True)  # fmt: skip
    results = []
    for seq in sequences:
        bar.set_postfix_str(seq.name)
        results.append(run_sequence(rec, seq, args.boxes, out, smoothing=args.smooth, video=not args.no_video,
                                    progress=bar))  # fmt: skip
    bar.close()
    summary = summarise(results)
    meta = {"title": f"Online reconstruction: {rec.head} head, {args.boxes} boxes", "checkpoint": args.checkpoint,
            "head": rec.head, "boxes": args.boxes, "smoothing": args.smooth, "data": str(args.data),
            "sequences": names}  # fmt: skip
    jpath, mpath = write_tables(out, summary, meta)
    _print_summary(summary, "all")
    print(f"{summary['frames']} frames at {summary['fps']:.1f} frames per second; wrote {mpath}, {jpath}, "
          f"{out / 'masks'}/" + ("" if args.no_video else f", {out / 'videos'}/"))  # fmt: skip
    return 0


def _score(args: argparse.Namespace) -> int:
    from slopekp.video.report import open_video_dataset, score_mask_folder, summarise, write_tables

    pred = Path(args.pred)
    if not pred.is_dir():
        raise ValueError(f"--pred {pred}: not a folder")
    dataset = open_video_dataset(args.gt, args.split)
    results = score_mask_folder(dataset, pred, args.sequences, progress=sys.stderr.isatty())
    summary = summarise(results)
    summary["fps"] = None
    out = Path(args.out) if args.out else pred
    meta = {"title": f"J scores of {pred}", "predictions": str(pred), "data": str(args.gt),
            "sequences": [r.name for r in results]}  # fmt: skip
    jpath, mpath = write_tables(out, summary, meta)
    _print_summary(summary, "drop-first-last" if args.drop_first_last else "all")
    print(f"wrote {jpath} and {mpath}")
    return 0
