"""``slopekp train``: Stage II (shape, texture and encoder with the live multiplex) and Stage III (a pose head).

* ``slopekp train --stage 2 --data DIR --multiplex STAGE1_DIR/multiplex.npz --out OUT [key=value ...]``
* ``slopekp train --stage 3 --head keypoints|quaternion|gramschmidt|svd --data DIR --from STAGE2_DIR --out OUT``
  (``--supervised``: the ablation that trains the head on the ground-truth SfM cameras instead of the multiplex)

Rerunning the same command resumes from ``OUT/checkpoints/last.pt``; Ctrl-C (or SIGTERM) writes a checkpoint first.
Both stages run on several processes with ``torchrun --nproc_per_node N -m slopekp.cli train --stage 2|3 ...``
(``train.batch_size`` is then per process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slopekp.commands import add_command, add_config_args, add_output_dir_args, config_from_args, data_dir_arg

HEADS = ("keypoints", "quaternion", "gramschmidt", "svd")


def register(sub) -> None:
    p = add_command(
        sub, "train", doc=__doc__,
        help="Stage II (shape + texture with the live multiplex) or Stage III (a pose head); resumable",
    )
    p.add_argument("--stage", type=int, choices=(2, 3), required=True)
    p.add_argument("--data", required=True, help="CMR-format data folder (e.g. made by `slopekp data synth`)")
    p.add_argument("--multiplex", help="Stage II: the Stage I store (OUT/multiplex.npz of `slopekp multiplex init`)")
    p.add_argument("--from", dest="stage2", help="Stage III: the Stage II output folder")
    p.add_argument("--head", choices=HEADS, help="Stage III: the pose head to train (default: model.pose_head)")
    p.add_argument("--out", default=None, help="output folder (default: the config's out_dir)")
    p.add_argument("--supervised", action="store_true",
                   help="Stage III ablation: train on the data's ground-truth SfM cameras (labelled in every output)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_output_dir_args(p)
    add_config_args(p)
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    data = data_dir_arg(args)
    out = Path(args.out) if args.out else Path(cfg.out_dir)
    from slopekp.train import distributed as D
    from slopekp.utils import resolve_device

    common = dict(
        progress=not args.quiet, overwrite=args.overwrite, force_new=args.force_new, max_steps=args.max_steps
    )
    if args.supervised and args.stage != 3:
        raise ValueError("--supervised applies to --stage 3 only")
    if args.stage == 2:
        from slopekp.train.stage2 import run_stage2

        if not args.multiplex:
            raise ValueError("--stage 2 needs --multiplex STAGE1_DIR (run `slopekp multiplex init` first)")
        from slopekp.commands.multiplex import store_file

        mp = store_file(args.multiplex)
        dist = D.init_distributed(resolve_device(cfg.device))  # torchrun: one process per rank
        try:
            res = run_stage2(cfg, data, mp, out, dist=dist, **common)
        finally:
            D.cleanup()
        if not dist.is_main:
            return 0
        print(f"Stage II: {res.steps} step(s), {res.seconds:.0f} s this run; checkpoint {res.checkpoint}; "
              f"pose targets {res.store_path}")  # fmt: skip
        for name in ("targets_stage1", "targets_stage2"):
            t = res.metrics.get(name)
            if t:
                print(f"  {name}: best camera median {t['median_deg']:.1f}° ({t['pct_under_30deg']:.0f}% < 30°), "
                      f"up to the depth mirror {t['median_deg_up_to_mirror']:.1f}°; best is the depth mirror for "
                      f"{t['pct_best_is_depth_mirror']:.0f}%")  # fmt: skip
        return 0
    from slopekp.train.stage3 import run_stage3

    if not args.stage2:
        raise ValueError("--stage 3 needs --from STAGE2_DIR (the output folder of `slopekp train --stage 2`)")
    head = args.head or cfg.model.pose_head
    dist = D.init_distributed(resolve_device(cfg.device))
    try:
        res = run_stage3(cfg, data, Path(args.stage2), out, head, supervised=args.supervised, dist=dist, **common)
    finally:
        D.cleanup()
    if not dist.is_main:
        return 0
    label = f"{head}, SUPERVISED by ground-truth cameras" if args.supervised else head
    print(f"Stage III ({label}): {res.steps} step(s), {res.seconds:.0f} s this run; checkpoint {res.checkpoint}")
    test = res.metrics.get("test")
    if test:
        rot, mir = test["rotation_error"], test["rotation_error_up_to_mirror"]
        print(f"  test ({test['num_images']} images): mask IoU {test['mask_iou_soft']:.3f} (soft), "
              f"{test['mask_iou_0.5']:.3f} (at 0.5); rotation error median {rot['median_deg']:.1f}°, "
              f"{rot['pct_under_30deg']:.0f}% < 30°; up to the depth mirror {mir['median_deg']:.1f}°")
    return 0
