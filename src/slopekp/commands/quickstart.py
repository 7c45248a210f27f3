"""``slopekp quickstart``: the README's main job on the embedded default dataset.

Generates a small SynthBirds set (the package renders it itself), runs Stage I of the camera multiplex on it and
writes the report (figures + numbers). Until training lands (see ROADMAP), this is the end-to-end job.

The output folder (``out_dir``, default ``outputs/quickstart``) has a run manifest (:mod:`slopekp.manifest`):
rerunning with the same settings resumes Stage I; with other settings (``seed=5``) the previous run is moved
aside to ``outputs/quickstart.old-<time>`` and everything is made afresh, so no result is mixed with another's.
"""

from __future__ import annotations

import dataclasses
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

QUICKSTART_COMMAND = "quickstart"
#: Settings that do not change the results (speed, where the output goes).
_NOT_RESULT_SETTINGS = ("device", "threads", "out_dir", "data.root", "synth.workers", "multiplex.save_every")


def register(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="generate a small SynthBirds set, run Stage I (camera multiplex) and write its report",
        description=__doc__,
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="use out_dir even if it holds something that quickstart did not make (its contents are deleted)",
    )
    add_config_args(p)
    p.set_defaults(func=_run)


def quickstart_manifest(cfg):
    """Every config field except those in ``_NOT_RESULT_SETTINGS`` (the whole run follows from them)."""
    from slopekp.manifest import Manifest, flat_settings

    settings = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            settings.update(flat_settings(value, f.name))
        else:
            settings[f.name] = value
    if cfg.multiplex.batch_invariant:
        _skip = (*_NOT_RESULT_SETTINGS, "multiplex.batch_size")
    else:
        _skip = _NOT_RESULT_SETTINGS
    return Manifest(QUICKSTART_COMMAND, settings={k: v for k, v in settings.items() if k not in _skip})


def _run(args) -> int:
    from slopekp.commands.data_images import write_synthbirds
    from slopekp.config import load_config
    from slopekp.manifest import prepare_output_dir
    from slopekp.train.stage1 import run_stage1
    from slopekp.utils import resolve_device

    cfg = load_config(args.config, [*QUICKSTART_DEFAULTS, *args.overrides])
    resolve_device(cfg.device)  # a device this machine lacks fails here, before anything is written
    out = Path(cfg.out_dir)
    data_dir = out / "synthbirds"
    t0 = time.perf_counter()
    prepare_output_dir(out, quickstart_manifest(cfg), overwrite=args.overwrite, restart_on_mismatch=True)
    print(f"[1/2] SynthBirds: {cfg.synth.n_train} train + {cfg.synth.n_test} test images -> {data_dir}")
    s = cfg.synth
    options = dict(
        n_train=s.n_train,
        n_test=s.n_test,
        size=s.size,
        seed=cfg.seed,
        deform=s.deform,
        workers=s.workers,
        occlusion_prob=s.occlusion_prob,
        truncation_prob=s.truncation_prob,
    )
    write_synthbirds(data_dir, options)
    print(f"[2/2] Stage I camera multiplex ({cfg.multiplex.num_az * cfg.multiplex.num_el * cfg.multiplex.num_cr} "
          f"hypotheses per image) -> {out / 'stage1'}")
    result = run_stage1(cfg, data_dir, out / "stage1", progress=True)
    print(f"done in {time.perf_counter() - t0:.0f} s; report: {result.report_dir}")
    return 0
