"""``slopekp quickstart``: the README's main job on the embedded default dataset.

Generates a small SynthBirds set (the package renders it itself), runs Stage I of the camera multiplex on it and
writes the report (figures + numbers). Until training lands (see ROADMAP), this is the end-to-end job.
"""

from __future__ import annotations

import time
from pathlib import Path

from slopekp.commands import add_config_args

#: Overrides applied before the user's own: small enough for a few minutes on a 2-core laptop.
QUICKSTART_DEFAULTS = (
    "out_dir=outputs/quickstart",
    "synth.n_train=32",
    "synth.n_test=8",
    "synth.size=128",
    "synth.deform=0.0",  # Stage I fits the template itself: give it birds of the template's shape
    # Stage I at 32² and 60 steps (the paper's defaults are 64² and 150, about 10x slower on a laptop CPU);
    # a larger offset gain lets the angles move as far in fewer steps.
    "multiplex.image_size=32",
    "multiplex.steps=60",
    "multiplex.offset_gain=0.25",
)


def register(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="generate a small SynthBirds set, run Stage I (camera multiplex) and write its report",
        description=__doc__,
    )
    add_config_args(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slopekp.config import load_config
    from slopekp.data.synthetic import generate_synthbirds
    from slopekp.train.stage1 import run_stage1

    cfg = load_config(args.config, [*QUICKSTART_DEFAULTS, *args.overrides])
    out = Path(cfg.out_dir)
    data_dir = out / "synthbirds"
    t0 = time.perf_counter()
    print(f"[1/2] SynthBirds: {cfg.synth.n_train} train + {cfg.synth.n_test} test images -> {data_dir}")
    generate_synthbirds(
        data_dir,
        n_train=cfg.synth.n_train,
        n_test=cfg.synth.n_test,
        size=cfg.synth.size,
        seed=cfg.seed,
        deform=cfg.synth.deform,
        workers=cfg.synth.workers,
        occlusion_prob=cfg.synth.occlusion_prob,
        truncation_prob=cfg.synth.truncation_prob,
    )
    print(f"[2/2] Stage I camera multiplex ({cfg.multiplex.num_az * cfg.multiplex.num_el * cfg.multiplex.num_cr} "
          f"hypotheses per image) -> {out / 'stage1'}")
    result = run_stage1(cfg, data_dir, out / "stage1", progress=True)
    print(f"done in {time.perf_counter() - t0:.0f} s; report: {result.report_dir}")
    return 0
