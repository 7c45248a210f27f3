"""``slopekp eval``: score a Stage III checkpoint on a CMR-format split (METHOD §9.1) and write metrics, a
per-image CSV, plots and a gallery of the worst cases (:mod:`slopekp.eval.report`).
``slopekp benchmark``: Stage I once, Stage II per seed, Stage III per head and seed, each evaluated, and a Table 1
with mean ± std over seeds (:mod:`slopekp.benchmark`).

* ``slopekp eval --checkpoint RUN/checkpoints/last.pt --data DIR [--split test] [--out OUT]``
* ``slopekp benchmark --data DIR --out OUT [--heads quaternion gramschmidt svd keypoints] [--seeds 3]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slopekp.commands import add_command, add_config_args, add_output_dir_args, config_from_args, data_dir_arg


def register(sub) -> None:
    p = add_command(
        sub, "eval", doc=__doc__,
        help="evaluate a trained model (Stage III checkpoint) on a split: metrics.json, per_image.csv, plots",
    )
    p.add_argument("--checkpoint", required=True, help="a Stage III checkpoint (OUT/checkpoints/last.pt)")
    p.add_argument("--data", required=True,
                   help="CMR-format data folder with <split>_cub_cleaned.mat and anno_<split>.mat")  # fmt: skip
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's run folder / eval_<split>)")
    p.add_argument("--template", default=None,
                   help="the template mesh (path or 'procedural'), when the checkpoint's path no longer resolves; it "
                        "must be the mesh the model was trained with")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gallery", type=int, default=8, help="images in the worst-case gallery (0: none)")
    p.add_argument("--pck-pairs", type=int, default=1000,
                   help="random image pairs for keypoint-transfer PCK@0.1 (0: skip)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    add_output_dir_args(p)
    p.set_defaults(func=_eval)

    from slopekp.eval.table1 import HEADS

    b = add_command(
        sub, "benchmark", doc=__doc__,
        help="Table 1: every pose head trained and evaluated the same way over several seeds (resumable)",
    )
    b.add_argument("--data", required=True, help="CMR-format data folder with train and test splits")
    b.add_argument("--out", required=True, help="output folder (stages resume inside it)")
    b.add_argument("--heads", nargs="+", default=list(HEADS), metavar="HEAD",
                   help=f"pose heads to compare, among {', '.join(HEADS)} (default: all)")  # fmt: skip
    b.add_argument("--seeds", type=int, default=3, help="seeds (seed, seed+1, ...): Stage II and III per seed")
    b.add_argument("--pck-pairs", type=int, default=1000, help="image pairs for keypoint-transfer PCK (0: skip)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    add_output_dir_args(b)
    add_config_args(b)
    b.set_defaults(func=_benchmark)


def _benchmark(args: argparse.Namespace) -> int:
    import shlex

    from slopekp.benchmark import prepare_benchmark_dir, run_benchmark

    # `--heads a b key=value`: argparse hands the trailing overrides to --heads; give them back
    args.overrides = [*(h for h in args.heads if "=" in h), *args.overrides]
    args.heads = [h for h in args.heads if "=" not in h]
    cfg = config_from_args(args)
    data = data_dir_arg(args)
    command = "slopekp " + " ".join(shlex.quote(a) for a in args.argv)
    prepare_benchmark_dir(args.out, data, overwrite=args.overwrite, force_new=args.force_new)
    res = run_benchmark(cfg, data, Path(args.out), heads=tuple(args.heads), seeds=args.seeds,
                        progress=not args.quiet, pck_pairs=args.pck_pairs, command=command)  # fmt: skip
    print(f"wrote {res.out_dir / 'report.md'} and report.json")
    for head, m in res.summary.items():
        iou, med = m["mask IoU (at 0.5)"], m["rotation error median (°)"]
        print(f"  {head:12s} mask IoU {iou['mean']:.3f} ± {iou['std']:.3f}, rotation error median "
              f"{med['mean']:.1f}° ± {med['std']:.1f}° over {med['n']} seed(s)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from slopekp.eval.report import evaluate_checkpoint
    from slopekp.utils import check_device_name, resolve_device

    check_device_name(args.device)
    device = resolve_device(args.device)
    ckpt = Path(args.checkpoint)
    data = data_dir_arg(args)
    out = Path(args.out) if args.out else ckpt.resolve().parent.parent / f"eval_{args.split}"
    m = evaluate_checkpoint(ckpt, data, out, split=args.split, template=args.template, batch_size=args.batch_size,
                            device=device, gallery=args.gallery, pck_pairs=args.pck_pairs, overwrite=args.overwrite,
                            force_new=args.force_new)  # fmt: skip
    rot, mir = m["rotation_error"], m["rotation_error_up_to_mirror"]
    print(f"{m['head']} head on {m['num_images']} {args.split} images: mask IoU {m['mask_iou_soft']:.3f} (soft), "
          f"{m['mask_iou_0.5']:.3f} (at 0.5); rotation error mean {rot['mean_deg']:.1f}°, median "
          f"{rot['median_deg']:.1f}°, {rot['pct_under_15deg']:.0f}% / {rot['pct_under_30deg']:.0f}% / "
          f"{rot['pct_under_45deg']:.0f}% under 15° / 30° / 45°; up to the depth mirror: median "
          f"{mir['median_deg']:.1f}°")  # fmt: skip
    if "keypoint_transfer" in m:
        kt = m["keypoint_transfer"]
        print(f"keypoint transfer PCK@{kt['alpha']:g}: {kt['pck']:.3f} ({kt['num_keypoints']} keypoints, "
              f"{kt['num_pairs']} pairs)")
    print(f"wrote {out}/: metrics.json, per_image.csv, rotation_error.png, viewpoints.png"
          + (", worst.png, examples.png" if args.gallery else ""))
    return 0
