"""Sub-commands of ``slopekp data`` for image datasets (see :mod:`slopekp.commands.data`).

- ``synth``: write a SynthBirds image dataset in CMR format
  (:func:`slopekp.data.synthetic.generate_synthbirds`).
- ``contact-sheet``: a PNG grid of a CMR-format dataset's images with mask outlines and keypoints.
"""

from __future__ import annotations

import argparse
import time

from slopekp.config import SynthConfig


def register(g) -> None:
    """Add the ``synth`` and ``contact-sheet`` sub-parsers to the ``data`` group."""
    d = SynthConfig()
    p = g.add_parser(
        "synth",
        help="generate a SynthBirds image dataset in CMR format",
        description="Render random textured birds (procedural template + symmetric deformation) on "
        "cluttered backgrounds with cameras drawn from the CUB viewpoint distribution, and write "
        "images/<class>/*.jpg, <split>_cub_cleaned.mat, anno_<split>.mat and meta.json (CMR's format; "
        "docs/data.md).",
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--n-train", type=int, default=d.n_train, help=f"train images (default {d.n_train})")
    p.add_argument("--n-test", type=int, default=d.n_test, help=f"test images (default {d.n_test})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    p.add_argument("--deform", type=float, default=d.deform, help="shape deformation scale (0 = template)")
    p.add_argument("--occlusion-prob", type=float, default=d.occlusion_prob)
    p.add_argument("--truncation-prob", type=float, default=d.truncation_prob)
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (0 = in-process)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_synth)

    p = g.add_parser(
        "contact-sheet",
        help="PNG grid of dataset images with mask outlines and keypoints",
        description="Draw the first N images of a CMR-format dataset (SynthBirds or CUB) with the mask "
        "outline in red and the visible keypoints in the CUB part colours.",
    )
    p.add_argument("--data", required=True, help="dataset folder (with <split>_cub_cleaned.mat, images/)")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--n", type=int, default=24, help="number of images (default 24)")
    p.add_argument("--split", default="train")
    p.add_argument("--ncols", type=int, default=6)
    p.set_defaults(func=_contact_sheet)


def _synth(args: argparse.Namespace) -> int:
    from slopekp.data.synthetic import generate_synthbirds

    t0 = time.perf_counter()
    out = generate_synthbirds(
        args.out,
        n_train=args.n_train,
        n_test=args.n_test,
        size=args.size,
        seed=args.seed,
        deform=args.deform,
        workers=args.workers,
        progress=not args.no_progress,
        occlusion_prob=args.occlusion_prob,
        truncation_prob=args.truncation_prob,
    )
    n = args.n_train + args.n_test
    print(f"wrote {n} SynthBirds images to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _contact_sheet(args: argparse.Namespace) -> int:
    from slopekp.viz.figures import contact_sheet, save_png

    save_png(args.out, contact_sheet(args.data, n=args.n, split=args.split, ncols=args.ncols))
    print(f"wrote {args.out}")
    return 0
