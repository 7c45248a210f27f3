"""Sub-commands of ``slopekp data`` for image datasets (see :mod:`slopekp.commands.data`).

- ``synth``: write a SynthBirds image dataset in CMR format
  (:func:`slopekp.data.synth.writer.generate_synthbirds`).
- ``contact-sheet``: a PNG grid of a CMR-format dataset's images with mask outlines and keypoints.
"""

from __future__ import annotations

import argparse
import time

from slopekp.commands import add_output_dir_args
from slopekp.data.synth.options import SynthOptions
from slopekp.data.synth.style import BACKGROUNDS, LIGHTINGS, PLUMAGES
from slopekp.manifest import Manifest, prepare_output_dir, prepare_output_file


def register(g) -> None:
    """Add the ``synth`` and ``contact-sheet`` sub-parsers to the ``data`` group."""
    d = SynthOptions()
    p = g.add_parser(
        "synth",
        help="generate a SynthBirds image dataset in CMR format",
        description="Render random textured birds (procedural template + symmetric deformation) on "
        "cluttered backgrounds with cameras drawn from the CUB viewpoint distribution, and write "
        "images/<class>/*.jpg, <split>_cub_cleaned.mat, anno_<split>.mat and meta.json (CMR's format; "
        "docs/data.md), and the test birds' true meshes in meshes_test.npz (for the evaluation's shape accuracy).",
    )
    p.add_argument("--out", required=True, help="output folder (created; an existing one must be empty or "
                   "made by `data synth` with the same options, unless --overwrite)")
    p.add_argument("--n-train", type=int, default=d.n_train, help=f"train images (default {d.n_train})")
    p.add_argument("--n-test", type=int, default=d.n_test, help=f"test images (default {d.n_test})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    p.add_argument("--deform", type=float, default=d.deform, help="shape deformation scale (0 = template)")
    p.add_argument("--occlusion-prob", type=float, default=d.occlusion_prob)
    p.add_argument("--truncation-prob", type=float, default=d.truncation_prob)
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (0 = in-process)")
    p.add_argument("--fill-min", type=float, default=d.fill_min,
                   help=f"smallest bird: its larger side as a fraction of the image side (default {d.fill_min})")
    p.add_argument("--fill-max", type=float, default=d.fill_max, help=f"largest bird (default {d.fill_max})")
    p.add_argument("--background", choices=BACKGROUNDS, default=d.background,
                   help=f"the look's background kind (default {d.background}; mixed = one kind per image)")
    p.add_argument("--lighting", choices=LIGHTINGS, default=d.lighting,
                   help=f"the look's lighting kind (default {d.lighting})")
    p.add_argument("--plumage", choices=PLUMAGES, default=d.plumage,
                   help=f"the look's plumage kind (default {d.plumage}); docs/data.md shows each")
    p.add_argument("--no-progress", action="store_true")
    add_output_dir_args(p)
    p.set_defaults(func=_synth)

    p = g.add_parser(
        "contact-sheet",
        help="PNG grid of dataset images with mask outlines and keypoints",
        description="Draw the first N images of a CMR-format dataset (SynthBirds or CUB) with the mask "
        "outline in red and the visible keypoints in the CUB part colours.",
    )
    p.add_argument("--data", required=True, help="dataset folder (with <split>_cub_cleaned.mat, images/)")
    p.add_argument("--out", required=True, help="output PNG file (.png)")
    p.add_argument("--n", type=int, default=24, help="number of images (default 24)")
    p.add_argument("--split", default="train")
    p.add_argument("--ncols", type=int, default=6)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_contact_sheet)


SYNTH_COMMAND = "data synth"


def synth_manifest(options: SynthOptions) -> Manifest:
    """The run manifest of a SynthBirds folder: the generator options that change its files
    (:meth:`SynthOptions.result_settings <slopekp.data.synth.options.SynthOptions.result_settings>`, as
    ``synth.<name>``; ``workers`` is not one: the output is byte-identical for any number)."""
    return Manifest(SYNTH_COMMAND, settings={f"synth.{k}": v for k, v in sorted(options.result_settings().items())})


def write_synthbirds(
    out, options: SynthOptions, *, overwrite: bool = False, force_new: bool = False, progress: bool = True
):
    """Generate SynthBirds into ``out`` behind the output-folder gate (:func:`slopekp.manifest.prepare_output_dir`):
    a folder of the same options is regenerated in place (identically), any other non-empty folder is refused
    unless ``overwrite`` (emptied first, so no stale image stays) or ``force_new`` (moved aside). ``options`` were
    checked when they were built, before the output folder is touched."""
    # heavy (torch, OpenCV, the renderer): imported when the command runs, so that the CLI starts fast
    from slopekp.data.synth.writer import generate_synthbirds

    prepare_output_dir(out, synth_manifest(options), overwrite=overwrite, force_new=force_new, resumable=False,
                       results=("meta.json",))  # fmt: skip
    return generate_synthbirds(out, options=options, progress=progress)


def _synth(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    options = SynthOptions(  # checks every value before the output folder is touched
        n_train=args.n_train,
        n_test=args.n_test,
        size=args.size,
        seed=args.seed,
        deform=args.deform,
        workers=args.workers,
        occlusion_prob=args.occlusion_prob,
        truncation_prob=args.truncation_prob,
        fill_min=args.fill_min,
        fill_max=args.fill_max,
        background=args.background,
        lighting=args.lighting,
        plumage=args.plumage,
    )
    out = write_synthbirds(
        args.out, options, overwrite=args.overwrite, force_new=args.force_new, progress=not args.no_progress
    )
    n = args.n_train + args.n_test
    print(f"wrote {n} SynthBirds images to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _contact_sheet(args: argparse.Namespace) -> int:
    from slopekp.viz.figures import contact_sheet, save_png

    if not str(args.out).lower().endswith(".png"):
        raise ValueError(f"--out {args.out}: the contact sheet is a PNG; give a file name ending in .png")
    prepare_output_file(args.out, overwrite=args.overwrite)
    save_png(args.out, contact_sheet(args.data, n=args.n, split=args.split, ncols=args.ncols))
    print(f"wrote {args.out}")
    return 0
