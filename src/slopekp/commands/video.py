"""``slopekp video``: reconstruct the objects of videos online and score them with DAVIS J and F (METHOD §9.2,
Table 2); ``slopekp video score``: score any folder of predicted DAVIS masks.

* ``slopekp video --checkpoint CKPT --data DIR --out OUT [--boxes tracker|tracker:kcf|masks:DIR|gt]
  [--smooth 0.5] [--sequences ...] [--overwrite | --force-new]``
* ``slopekp video score --gt DIR --pred MASKS_DIR [--sequences ...] [--drop-first-last] [--out FOLDER]
  [--overwrite]``

DIR is a DAVIS folder (``JPEGImages/480p``, ``Annotations/480p``, ``ImageSets``; ``--split val`` by default) or a
YouTube-VOS one (``<split>/meta.json``; ``--split train``, the split with every frame annotated).
``slopekp data synth-video --out DIR [--layout davis|youtubevos|both]`` makes SynthBirds videos.

``OUT/`` receives ``masks/<sequence>/<frame>.png`` (DAVIS format), ``videos/<sequence>.mp4`` (the frame with
the textured reconstructions overlaid, beside the crops), ``results.json`` and ``results.md`` (J-Mean, J-Recall,
J-Decay, F-Mean, F-Recall, F-Decay and J&F-Mean per object and overall, all frames and first/last dropped, beside
the paper's Table 2) and ``manifest.json`` (what the run was made from).

Output folders: ``slopekp video`` writes into OUT only when it is missing or empty, or when ``slopekp video`` made
it from the same checkpoint, data, sequences, boxes and smoothing (its ``manifest.json`` says so; the run is then
redone in place). Anything else is refused, naming the folder: ``--overwrite`` deletes its contents first,
``--force-new`` moves it aside to ``OUT.old-<time>``, or choose another ``--out``. ``slopekp video score`` writes
``results.json`` and ``results.md`` into ``--out`` (default: the PRED folder) and never replaces an existing file
of those names (one of ``slopekp video``'s, or of an earlier score) unless given ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slopekp.commands import add_command, add_output_dir_args


def register(sub) -> None:
    p = add_command(
        sub, "video", doc=__doc__,
        help="online reconstruction of the birds of videos, scored with DAVIS J and F (Table 2); `video score` scores "
             "any folder of DAVIS masks",
    )
    p.set_defaults(func=_video, group_parser=p)
    p.add_argument("--checkpoint", help="a trained model (Stage III OUT/checkpoints/last.pt)")
    p.add_argument("--data", help="a DAVIS or YouTube-VOS folder")
    p.add_argument("--out", help="output folder (missing, empty, or made by `slopekp video` with the same settings)")
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
    add_output_dir_args(p)
    s = p.add_subparsers(dest="video_command", metavar="SUBCOMMAND")
    sc = add_command(
        s, "score", doc=__doc__,
        help="score predicted DAVIS-format masks against ground truth (J and F per object)",
    )
    sc.add_argument("--gt", required=True, help="DAVIS or YouTube-VOS folder with the ground truth")
    sc.add_argument("--pred", required=True, help="predicted masks: PRED/<sequence>/<frame>.png palette PNGs")
    sc.add_argument("--split", default=None, help="the ground truth's split (default: val / train)")
    sc.add_argument("--sequences", nargs="+", default=None, help="only these sequences (default: all of the split)")
    sc.add_argument("--drop-first-last", action="store_true",
                    help="print the official DAVIS 2017 semi-supervised convention (first and last frame dropped, "
                         "void counted as background) instead of all frames with void excluded; results.json and "
                         "results.md hold both")  # fmt: skip
    sc.add_argument("--out", default=None, help="where results.json and results.md go (default: PRED)")
    sc.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results.json and results.md when --out already holds them (refused otherwise)",
    )
    sc.set_defaults(func=_score)


def _stats_cells(s: dict | None) -> str:
    if s is None:
        return f"{'–':>8s} {'–':>9s} {'–':>8s}"
    return f"{s['mean']:8.3f} {s['recall']:9.3f} {s['decay']:+8.3f}"


def _mean_cell(v: float | None) -> str:
    return f"{'–':>9s}" if v is None else f"{v:9.3f}"


def _print_summary(summary: dict, convention: str) -> None:
    print(f"{'sequence':24s} {'object':>6s} {'J-Mean':>8s} {'J-Recall':>9s} {'J-Decay':>8s} {'F-Mean':>8s} "
          f"{'F-Recall':>9s} {'F-Decay':>8s} {'J&F-Mean':>9s}")  # fmt: skip
    for row in summary["objects"]:
        s = row[convention]
        if s is None:
            print(f"{row['sequence']:24s} {row['object']:6d} {'(too few annotated frames)':>27s}")
            continue
        f = (row.get("F") or {}).get(convention)
        jf = (row.get("J&F") or {}).get(convention)
        print(f"{row['sequence']:24s} {row['object']:6d} {_stats_cells(s)} {_stats_cells(f)} {_mean_cell(jf)}")
    if summary.get("not_scored"):
        print(f"note: not scored (not annotated in every frame): {', '.join(summary['not_scored'])}")
    o = summary["overall"][convention]
    if o is not None:
        f = (summary.get("overall_F") or {}).get(convention)
        jf = (summary.get("overall_J&F") or {}).get(convention)
        print(f"{'overall (' + convention + ')':31s} {_stats_cells(o)} {_stats_cells(f)} {_mean_cell(jf)}")


def _digest_files(h, tag: str, paths, content: bool) -> None:
    """Feed ``tag/<file name>`` and the size of each file, and its bytes when ``content``, into the hash ``h`` (the
    names only, so that a moved or copied folder keeps its fingerprint)."""
    from slopekp.manifest import file_digest

    for path in paths:
        path = Path(path)
        h.update(f"{tag}/{path.name}\t{path.stat().st_size}\n".encode())
        if content:
            file_digest(path, h)


def _video_manifest(args: argparse.Namespace, rec, dataset, sequences, names: list[str], kind: str, arg: str):
    """The run manifest of ``slopekp video`` (:mod:`slopekp.manifest`): the checkpoint (its bytes), the data (its
    split, the frames' names and sizes and the annotations' bytes of the chosen sequences) and, for
    ``--boxes masks:DIR``, the chosen sequences' mask PNGs (their bytes); settings: head, boxes, smoothing,
    split, sequences. Device, --no-video and --quiet change no result and are left out."""
    import hashlib

    from slopekp.manifest import Manifest, file_input

    h = hashlib.sha256(f"split={dataset.split}\n".encode())
    for seq in sequences:
        _digest_files(h, f"frames/{seq.name}", seq.image_paths, content=False)
        _digest_files(h, f"annotations/{seq.name}", [a for a in seq.annotation_paths if a is not None], content=True)
    inputs = {
        "checkpoint": file_input(args.checkpoint),
        "data": {"fingerprint": h.hexdigest()[:16], "path": str(Path(args.data).resolve()), "split": dataset.split},
    }  # fmt: skip
    if kind == "masks":
        hm = hashlib.sha256()
        folder = Path(arg)
        for seq in sequences:
            _digest_files(hm, seq.name, [folder / seq.name / f"{n}.png" for n in seq.frame_names], content=True)
        inputs["box_masks"] = {"fingerprint": hm.hexdigest()[:16], "path": str(folder.resolve())}
    boxes = "masks" if kind == "masks" else f"{kind}:{arg}" if arg else kind  # the masks' folder is an input
    settings = {"video.head": rec.head, "video.boxes": boxes, "video.smoothing": float(args.smooth),
                "video.split": dataset.split, "video.sequences": list(names)}  # fmt: skip
    return Manifest("video", inputs=inputs, settings=settings)


def _video(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from slopekp.manifest import prepare_output_dir
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
    manifest = _video_manifest(args, rec, dataset, sequences, names, kind, arg)
    # the output-folder gate (slopekp.manifest), after every check of the input and before anything is written
    inputs = [args.data, args.checkpoint] + ([arg] if kind == "masks" else [])
    prepare_output_dir(out, manifest, overwrite=args.overwrite, force_new=args.force_new, resumable=False,
                       results=("results.json",), inputs=inputs)  # fmt: skip
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


def _check_score_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing ``results.json`` / ``results.md`` without ``overwrite``."""
    from slopekp.manifest import OutputExistsError, prepare_output_file

    for path in paths:
        if path.exists():  # a folder, or a file without --overwrite: refused before anything is created
            try:
                prepare_output_file(path, overwrite=overwrite)
            except OutputExistsError as e:
                raise OutputExistsError(
                    f"{e} (`slopekp video score` writes results.json and results.md into --out, by default the "
                    "--pred folder)"
                ) from e


def _score(args: argparse.Namespace) -> int:
    from slopekp.manifest import prepare_output_file
    from slopekp.video.report import open_video_dataset, score_mask_folder, summarise, write_tables

    pred = Path(args.pred)
    if not pred.is_dir():
        raise ValueError(f"--pred {pred}: not a folder")
    out = Path(args.out) if args.out else pred
    targets = [out / "results.json", out / "results.md"]
    _check_score_outputs(targets, args.overwrite)
    dataset = open_video_dataset(args.gt, args.split)
    results = score_mask_folder(dataset, pred, args.sequences, progress=sys.stderr.isatty())
    summary = summarise(results)
    summary["fps"] = None
    meta = {"title": f"J and F scores of {pred}", "command": "video score", "predictions": str(pred),
            "data": str(args.gt), "sequences": [r.name for r in results]}  # fmt: skip
    _check_score_outputs(targets, args.overwrite)  # again: nothing may have appeared while scoring
    for t in targets:
        prepare_output_file(t, overwrite=True)  # checked above; creates --out
    jpath, mpath = write_tables(out, summary, meta)
    _print_summary(summary, "drop-first-last" if args.drop_first_last else "all")
    print(f"wrote {jpath} and {mpath}")
    return 0
