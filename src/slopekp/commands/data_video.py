"""Sub-commands of ``slopekp data`` for videos and downloads (see :mod:`slopekp.commands.data`).

- ``synth-video``: SynthBirds videos in the DAVIS 2017 and/or YouTube-VOS layout
  (:mod:`slopekp.data.synth.video_writer`).
- ``fetch``: resumable, checksum-verified download and atomic extraction of CUB, the U-CMR annotations or
  DAVIS 2017 (:mod:`slopekp.data.download`).
- ``verify``: check a dataset folder (decoding every image unless ``--quick``) and list what is missing or
  broken; exit status 0 when complete, 1 when problems are found or the folder is not a dataset
  (:mod:`slopekp.data.verify`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slopekp.commands import add_output_dir_args


def register(g) -> None:
    """Add the ``synth-video``, ``fetch`` and ``verify`` sub-parsers to the ``data`` group."""
    from slopekp.data.download import SOURCES

    p = g.add_parser(
        "synth-video",
        help="generate SynthBirds videos (DAVIS 2017 / YouTube-VOS layout, ground-truth cameras)",
        description="Generate short videos of textured birds moving and turning over a background, with "
        "occlusions and birds leaving/entering, in the DAVIS 2017 layout (JPEGImages/480p, palette "
        "Annotations/480p, ImageSets/2017) and/or the YouTube-VOS layout (train/valid, meta.json, frame "
        "names stepping by 5). Ground-truth cameras per object per frame go to cameras/<seq>.npz.",
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--n-seq", type=int, default=4, help="number of sequences (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=("davis", "youtubevos", "both"), default="davis")
    p.add_argument("--height", type=int, default=480, help="frame height in px (width = height·854/480)")
    p.add_argument("--min-frames", type=int, default=20)
    p.add_argument("--max-frames", type=int, default=80)
    p.add_argument("--max-birds", type=int, default=3, help="birds per sequence are drawn from 1..max-birds")
    p.add_argument("--deform", type=float, default=1.0, help="shape deformation scale (0 = the template)")
    p.add_argument("--no-progress", action="store_true")
    add_output_dir_args(p)
    p.set_defaults(func=_synth_video)

    p = g.add_parser(
        "fetch",
        help="download, verify and extract a dataset (resumable)",
        description="Download a dataset archive (resuming an interrupted transfer), check its checksum "
        "(CUB's published MD5; for the others the computed SHA-256 is printed), extract it atomically into ROOT "
        "and only then record the archive and its checksums in ROOT/slopekp_fetch.json. A failed fetch writes "
        "no record and removes the folders it created that are left empty.",
    )
    p.add_argument("name", choices=tuple(SOURCES), help="which dataset")
    p.add_argument("--root", required=True, help="folder to install into")
    p.add_argument("--archive", default=None, help="install from this local archive instead of downloading")
    p.add_argument(
        "--url",
        default=None,
        help="download from this URL (a mirror); a URL ending in '/' is a base the file name is appended to",
    )
    p.add_argument("--no-keep-archive", action="store_true", help="delete the downloaded archive afterwards")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_fetch)

    p = g.add_parser(
        "verify",
        help="check a dataset folder and list what is missing or broken (exit 1 if anything is)",
        description="Check a CMR-format folder (SynthBirds), CUB (+ CMR annotations), DAVIS 2017 or YouTube-VOS "
        "folder: expected files, frame/annotation counts, palette PNGs and sizes; every image and annotation "
        "PNG is decoded (a truncated file is found) unless --quick; for the cmr kind every annotation record "
        "too (mask non-empty and 0/1, bbox finite, non-empty and inside the image, visible keypoints finite and "
        "inside it, SfM cameras finite). Exit status: 0 complete (no problem found); 1 problems found or not a "
        "dataset folder (ROOT missing, or --kind auto recognises nothing); 2 invalid command-line arguments.",
    )
    p.add_argument("--root", required=True)
    p.add_argument("--kind", choices=("cmr", "cub", "davis", "youtubevos", "auto"), default="auto")
    p.add_argument("--images-dir", default=None, help="cmr kind: images folder (default ROOT/images)")
    p.add_argument("--max-problems", type=_positive_int, default=20, help="list at most this many problems")
    p.add_argument(
        "--quick",
        action="store_true",
        help="read image headers only (existence, mode, size) instead of decoding every image; the .mat "
        "annotation values are still checked",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar while decoding images")
    p.set_defaults(func=_verify)


def _synth_video(args: argparse.Namespace) -> int:
    import dataclasses

    from slopekp.data.synth.video import VideoSynthSettings
    from slopekp.data.synth.video_writer import check_video_options, generate_synth_videos
    from slopekp.manifest import Manifest, prepare_output_dir

    settings = VideoSynthSettings(
        height=args.height,
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        max_birds=args.max_birds,
        deform=args.deform,
    )
    check_video_options(args.n_seq, args.seed, args.layout)  # before the output folder is touched
    options = {"n_seq": args.n_seq, "seed": args.seed, "layout": args.layout, **dataclasses.asdict(settings)}
    manifest = Manifest("data synth-video", settings={f"synth_video.{k}": v for k, v in sorted(options.items())})
    prepare_output_dir(args.out, manifest, overwrite=args.overwrite, force_new=args.force_new, resumable=False)
    out = generate_synth_videos(
        args.out,
        args.n_seq,
        seed=args.seed,
        layout=args.layout,
        settings=settings,
        progress=not args.no_progress,
    )
    print(f"wrote {args.n_seq} sequences to {out}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _fetch(args: argparse.Namespace) -> int:
    from slopekp.data.download import fetch

    if not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    root = Path(args.root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--root {root}: is a file, not a folder")

    fetch(
        args.name,
        args.root,
        archive=args.archive,
        url=args.url,
        keep_archive=not args.no_keep_archive,
        progress=not args.no_progress,
        timeout=args.timeout,
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from slopekp.data.verify import NotADatasetError, verify_dataset

    try:
        report = verify_dataset(
            args.root,
            kind=args.kind,
            images_dir=args.images_dir,
            quick=args.quick,
            progress=not args.no_progress,
        )
    except NotADatasetError as e:  # exit 1, as documented: the folder is not a (recognised) dataset
        print(f"slopekp: error: {e}", file=sys.stderr)
        return 1
    print(report.format(max_problems=args.max_problems), file=sys.stdout)
    return 0 if report.ok else 1
