"""``slopekp multiplex ...``: Stage I initialisation of the camera multiplex, and store tools.

* ``slopekp multiplex init --data DIR [--out OUT] [--config FILE] [key=value ...]`` — fit P hypotheses per
  image (METHOD §5.3), write ``OUT/multiplex.npz``, ``OUT/config.yaml`` and ``OUT/report/``; resumable.
* ``slopekp multiplex info STORE`` — print what a store holds.
* ``slopekp multiplex topk STORE --k K --out OUT`` — keep each image's K best hypotheses.
* ``slopekp multiplex merge A B --out OUT [--on-conflict error|keep_first|keep_second]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slopekp.commands import add_config_args, add_group, add_output_dir_args, config_from_args, data_dir_arg


def register(sub) -> None:
    g = add_group(sub, "multiplex", "camera multiplex: Stage I initialisation and store tools")

    p = g.add_parser(
        "init",
        help="Stage I: fit P camera hypotheses per image to its mask (resumable)",
        description="Fit the camera multiplex of every image of a CMR-format data folder to its mask "
        "(METHOD §5.3) and write OUT/multiplex.npz, OUT/config.yaml and a report in OUT/report/. "
        "Rerun the same command to resume an interrupted run.",
    )
    p.add_argument("--data", required=True, help="data folder in CMR format (e.g. made by `slopekp data synth`)")
    p.add_argument("--out", default=None, help="output folder (default: the config's out_dir)")
    p.add_argument("--no-report", action="store_true", help="skip the report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_output_dir_args(p)
    add_config_args(p)
    p.set_defaults(func=_init)

    p = g.add_parser("info", help="print the contents of a multiplex store (.npz)")
    p.add_argument("store", help="multiplex .npz, or a Stage I / Stage II folder holding one")
    p.set_defaults(func=_info)

    p = g.add_parser("topk", help="keep each image's K best-scoring hypotheses")
    p.add_argument("store", help="multiplex .npz, or a Stage I / Stage II folder holding one")
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_topk)

    p = g.add_parser("merge", help="merge two multiplex stores of the same template and P")
    p.add_argument("first", help="multiplex .npz or a folder holding one")
    p.add_argument("second", help="multiplex .npz or a folder holding one")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--on-conflict", default="error", choices=["error", "keep_first", "keep_second"])
    p.add_argument(
        "--allow-different-data",
        action="store_true",
        help="merge stores fitted to different data folders (refused by default: their ids name other images)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_merge)


def _init(args: argparse.Namespace) -> int:
    from slopekp.train.stage1 import run_stage1

    cfg = config_from_args(args)
    data = data_dir_arg(args)
    out = Path(args.out) if args.out else Path(cfg.out_dir)
    res = run_stage1(
        cfg, data, out, progress=not args.quiet, report=not args.no_report,
        overwrite=args.overwrite, force_new=args.force_new,
    )  # fmt: skip
    rate = f" ({res.images_per_s:.3f} images/s)" if res.num_fitted else ""
    print(
        f"Stage I: {res.num_fitted} image(s) fitted ({res.num_images} in the store) in {res.seconds:.1f} s"
        f"{rate}; store: {res.store_path}"
    )
    if res.metrics is not None:
        m = res.metrics
        line = f"best IoU mean {m.best_iou_mean:.3f}"
        if m.has_ground_truth:
            b, c = m.rotation_error_best, m.rotation_error_closest
            line += (
                f"; rotation error best: median {b.median_deg:.1f}°, {b.pct_under_30deg:.0f}% < 30°; "
                f"closest: median {c.median_deg:.1f}°, {c.pct_under_30deg:.0f}% < 30°"
            )
        print(f"{line}; report: {res.report_dir}")
    return 0


def store_file(path: str) -> Path:
    """A store path as given, or the ``multiplex.npz`` inside a Stage I / Stage II folder."""
    from slopekp.train.stage2 import STORE_NAME

    p = Path(path)
    return p / STORE_NAME if p.is_dir() else p


def _info(args: argparse.Namespace) -> int:
    from slopekp.train.multiplex import CameraMultiplex

    path = store_file(args.store)
    s = CameraMultiplex.load(path)
    print(f"{path}: {len(s)} images × {s.num_hypotheses} hypotheses, template fingerprint {s.fingerprint}, "
          f"data fingerprint {s.data_fingerprint or 'unknown'}")  # fmt: skip
    print(f"offset settings: {s.settings}")
    if len(s):
        best = s.scores.amax(-1)
        print(f"best score: mean {best.mean():.3f}, min {best.min():.3f}, max {best.max():.3f}")
        steps = s.adam_step_count.max().item()
        print(f"ids: {s.ids.min().item()}..{s.ids.max().item()}; Adam steps per image: max {steps}")
    return 0


def _topk(args: argparse.Namespace) -> int:
    from slopekp.manifest import prepare_output_file
    from slopekp.train.multiplex import CameraMultiplex

    store = CameraMultiplex.load(store_file(args.store))
    prepare_output_file(args.out, overwrite=args.overwrite)
    store.top_k(args.k).save(args.out)
    print(f"wrote {args.out}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from slopekp.manifest import prepare_output_file
    from slopekp.train.multiplex import CameraMultiplex

    a, b = CameraMultiplex.load(store_file(args.first)), CameraMultiplex.load(store_file(args.second))
    merged = a.merge(b, on_conflict=args.on_conflict, allow_different_data=args.allow_different_data)
    prepare_output_file(args.out, overwrite=args.overwrite)
    merged.save(args.out)
    print(f"wrote {args.out}")
    return 0
