"""``slopekp quickstart``: the README's main job, the whole method end to end on the embedded default dataset.

1. generates a small SynthBirds set (the package renders it itself);
2. Stage I: fits the camera multiplex to every training mask;
3. a short Stage II: trains the shape, texture and encoder with the multiplex;
4. Stage III: trains two pose heads, the keypoint head (SLOPE-KP) and the quaternion head it is compared with,
   on Stage I's best cameras, each one's depth mirror chosen by a colouring shared by the training set
   (``train.pose_targets=stage1``, ``train.mirror_by_appearance=true``; docs/training.md);
5. evaluates both on the test split and writes the comparison (``report.md``, figures per head).

This is :func:`slopekp.benchmark.run_benchmark` with two heads and one seed on a set sized for
8 to 9.5 minutes on a 2-core laptop CPU (docs/training.md gives the minutes per stage). ``--full`` runs the complete
benchmark instead: 2,000 + 400 SynthBirds images of random shapes, all four heads, three seeds, the settings of
``configs/synthbirds_train.yaml`` (hours on a laptop CPU; every stage resumes).

The output folder (``out_dir``, default ``outputs/quickstart``) has a run manifest (:mod:`slopekp.manifest`):
rerunning with the same settings resumes; with other settings (``seed=5``) the previous run is moved aside to
``outputs/quickstart.old-<time>`` and everything is made afresh, so no result is mixed with another's.
"""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path

from slopekp.commands import add_command, add_config_args
from slopekp.eval.table1 import HEADS

#: Overrides applied before the user's own: a 2-core laptop CPU runs the whole method in 8 to 9.5 minutes.
QUICKSTART_DEFAULTS = (
    "out_dir=outputs/quickstart",
    "synth.n_train=400",
    "synth.n_test=100",
    "synth.size=128",
    "synth.deform=0.0",  # birds of the template's shape: Stage I fits the template itself
    # Stage I at 32² and 30 steps (the paper's defaults are 64² and 150, about 20x slower on a laptop CPU); a larger
    # offset gain lets the angles move as far in fewer steps (40 steps at 0.25 put the closest hypothesis 0.9° and
    # 1.0° nearer on SynthBirds and CUB SfM views, at a third more time: docs/results/stage1_schedules.md)
    "multiplex.image_size=32",
    "multiplex.steps=30",
    "multiplex.offset_gain=0.333",
    # the network of configs/synthbirds_train.yaml, trained briefly
    "model.texture_width=8",
    "train.epochs=2",
    "train.top_k=8",  # Stage II renders each image's 8 best Stage I hypotheses, not all 40 (U-CMR: 4 after 21 epochs)
    "train.top_k_after=0",
    "train.pose_epochs=30",
    "train.pose_lr_schedule=cosine",  # on true poses the quaternion head: 39° -> 29° (docs/results/head_study.md)
    "train.lr=0.001",
    "train.multiplex_lr=0.001",
    "train.render_size=32",
    "train.score_texture_weight=0.0",
    # the graph Laplacian smooths the deformation from the template, not the mesh, and 40 times harder: the meshes
    # stay birds (normal consistency 0.45 -> 0.92, Chamfer distance to the true bird 0.045 -> 0.021 of its length,
    # five seeds; docs/results/shapes.md)
    "train.laplacian_of=deformation",
    "train.laplacian_weight=20",
    "train.freeze_backbone=false",
    # Stage III's targets: Stage I's best cameras (a short Stage II's re-scoring makes them worse), each one's
    # depth mirror chosen by the colouring shared by the training set (slopekp's addition; the mask alone leaves
    # it a coin flip). Measured in docs/training.md.
    "train.pose_targets=stage1",
    "train.mirror_by_appearance=true",
    # Stages II and III on one thread: a second one measured no faster at these sizes, and one thread gives the same
    # numbers on any number of cores (Stage I uses every core with one process each, and the two heads train at once
    # in two processes, `jobs`; neither changes the results)
    "threads=1",
)
QUICKSTART_HEADS = ("keypoints", "quaternion")

#: ``--full``: the complete benchmark, with the settings of ``configs/synthbirds_train.yaml`` (a test keeps the two
#: in step) on 2,000 + 400 images of random shapes.
FULL_DEFAULTS = (
    "out_dir=outputs/quickstart_full",
    "synth.n_train=2000",
    "synth.n_test=400",
    "synth.size=128",
    "synth.deform=1.0",
    "multiplex.image_size=32",
    "multiplex.steps=60",
    "multiplex.offset_gain=0.25",
    "model.texture_width=8",
    "train.epochs=6",
    "train.pose_epochs=10",
    "train.pose_lr_schedule=cosine",
    "train.lr=0.001",
    "train.multiplex_lr=0.001",
    "train.render_size=32",
    "train.score_texture_weight=0.0",
    "train.freeze_backbone=false",
    "train.checkpoint_every=25",
)
FULL_HEADS = HEADS  # every head, in the benchmark's order
FULL_SEEDS = 3

QUICKSTART_COMMAND = "quickstart"
#: Settings that do not change the results (speed, where the output goes).
_NOT_RESULT_SETTINGS = ("device", "threads", "jobs", "out_dir", "multiplex.workers", "synth.workers",
                        "multiplex.save_every", "train.checkpoint_every", "train.image_every", "train.num_workers",
                        "render.fused")  # fmt: skip

#: the quickstart's side-by-side summary: label -> (report metric, format)
_SUMMARY_ROWS = (
    ("mask IoU (at 0.5)", "mask IoU (at 0.5)", "{:.3f}"),
    ("mask IoU (soft)", "mask IoU (soft)", "{:.3f}"),
    ("rotation error, median", "rotation error median (°)", "{:.1f}°"),
    ("rotation error, mean", "rotation error mean (°)", "{:.1f}°"),
    ("under 30°", "% < 30°", "{:.0f}%"),
    ("median up to the depth mirror", "median up to the depth mirror (°)", "{:.1f}°"),
    ("keypoint transfer PCK@0.1", "PCK@0.1", "{:.3f}"),
    ("shape: Chamfer / bird length", "Chamfer / length", "{:.3f}"),
    ("shape: normal consistency", "normal consistency", "{:.2f}"),
    ("texture: masked L1 under the true camera", "texture L1, true camera", "{:.3f}"),
)


def register(sub) -> None:
    p = add_command(
        sub, "quickstart", doc=__doc__,
        help="the whole method on a small SynthBirds set: Stage I, II, III for two pose heads, evaluation, report",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help=f"the complete benchmark: 2,000 + 400 images, all four heads, {FULL_SEEDS} seeds (hours on a CPU)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="use out_dir even if it holds something that quickstart did not make (its contents are deleted)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(p)
    p.set_defaults(func=_run)


def quickstart_manifest(cfg, heads: tuple[str, ...], seeds: int):
    """Every config field except those in ``_NOT_RESULT_SETTINGS``, with the heads and seeds (the whole run
    follows from them)."""
    from slopekp.manifest import Manifest, flat_config

    settings = flat_config(cfg)
    skip = set(_NOT_RESULT_SETTINGS)
    if cfg.multiplex.batch_invariant:
        skip.add("multiplex.batch_size")
    settings = {k: v for k, v in settings.items() if k not in skip}
    settings.update(heads=list(heads), seeds=seeds)
    return Manifest(QUICKSTART_COMMAND, settings=settings)


def summary_table(summary: dict, heads: tuple[str, ...]) -> str:
    """The heads' main numbers side by side (mean over seeds), one metric per line."""
    width = max(len(label) for label, _, _ in _SUMMARY_ROWS)
    lines = [" " * width + "".join(f"  {h:>12s}" for h in heads)]
    for label, key, fmt in _SUMMARY_ROWS:
        cells = []
        for h in heads:
            mean = summary[h].get(key, {}).get("mean", math.nan)  # absent: an evaluation without that metric
            cells.append(f"  {fmt.format(mean) if mean == mean else '-':>12s}")  # NaN: not measured
        lines.append(f"{label:<{width}s}" + "".join(cells))
    return "\n".join(lines)


def _run(args) -> int:
    from slopekp.benchmark import run_benchmark
    from slopekp.commands.data_images import write_synthbirds
    from slopekp.config import load_config
    from slopekp.data.synth.options import SynthOptions
    from slopekp.manifest import prepare_output_dir
    from slopekp.utils import resolve_device

    defaults, heads, seeds = (
        (FULL_DEFAULTS, FULL_HEADS, FULL_SEEDS) if args.full else (QUICKSTART_DEFAULTS, QUICKSTART_HEADS, 1)
    )
    cfg = load_config(args.config, [*defaults, *args.overrides])
    resolve_device(cfg.device)  # a device this machine lacks fails here, before anything is written
    out = Path(cfg.out_dir)
    data_dir = out / "synthbirds"
    t0 = time.perf_counter()
    s = cfg.synth
    if s.n_train < 1 or s.n_test < 1:
        raise ValueError(f"quickstart trains and evaluates: it needs synth.n_train >= 1 and synth.n_test >= 1, got "
                         f"{s.n_train} and {s.n_test}")  # fmt: skip
    options = SynthOptions.from_config(s, seed=cfg.seed)  # checked here, before anything is written
    prepare_output_dir(out, quickstart_manifest(cfg, heads, seeds), overwrite=args.overwrite,
                       restart_on_mismatch=True)  # fmt: skip
    print(f"[1/2] SynthBirds: {s.n_train} train + {s.n_test} test images -> {data_dir}", flush=True)
    write_synthbirds(data_dir, options, progress=not args.quiet)
    print(f"[2/2] Stage I, Stage II, Stage III ({', '.join(heads)}), evaluation; {seeds} seed(s) -> {out}",
          flush=True)  # fmt: skip
    command = "slopekp " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["quickstart"]))
    res = run_benchmark(cfg, data_dir, out, heads=heads, seeds=seeds, progress=not args.quiet, command=command)
    minutes = (time.perf_counter() - t0) / 60
    over = f"mean over {seeds} seeds" if seeds > 1 else "one seed"
    print(f"\ndone in {minutes:.1f} min. Test split ({cfg.synth.n_test} images), {over}; a random camera is ~90° off:")
    print(summary_table(res.summary, heads))
    print(f"\nreport: {out / 'report.md'}; per head: {out}/seed{cfg.seed}/eval_<head>/ (metrics.json, "
          f"per_image.csv, rotation_error.png, viewpoints.png, worst.png, examples.png)")  # fmt: skip
    head = "keypoints" if "keypoints" in heads else heads[0]
    ckpt = out / f"seed{cfg.seed}" / f"stage3_{head}" / "checkpoints" / "last.pt"
    print(f"your photos: slopekp predict PHOTO... --checkpoint {ckpt} --out predictions/ (docs/predict.md)")
    return 0
