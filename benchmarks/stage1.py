"""Stage I end to end on a small SynthBirds set, by number of worker processes and by schedule: prints one JSON
object per line and case, with speed and accuracy side by side.

Each case generates (in a temporary folder) ``--images`` SynthBirds training images of 64² with their true
cameras, then runs :func:`slopekp.train.stage1.run_stage1` with the quickstart's ``multiplex.*`` settings, the
case's own overrides, and its report against the true cameras.

Keys: ``case``; ``workers`` (the processes that fitted: ``multiplex.workers`` resolved, 0 = one per core);
``settings`` (the case's overrides); ``images``; ``fit_s`` (wall time of the fit, report excluded: the worker
processes' start-up included); ``images_per_s``; ``best_median_deg`` and ``closest_median_deg`` (median rotation
error of each image's best and closest hypothesis against the true camera: the same for cases that differ only in
the number of processes); ``best_mirror_median_deg`` (the best hypothesis up to the depth mirror);
``best_iou_mean`` (its mask IoU); ``peak_mb`` (peak resident-set growth of this case's main process; each worker
holds its own copy of the data set besides); ``threads`` (each worker's intra-op threads: 1; for ``workers_1``
torch's default in the case process); ``cores`` (``os.sched_getaffinity``); ``device``.

Cases: ``share_mirrors`` (one hypothesis of each depth-mirrored pair fitted, 21 of 40, and mirrored), ``workers_1``
(one process, as before issue 22), ``workers_2``, ``workers_all`` (``multiplex.workers=0``); then other schedules on
all cores (docs/results/stage1_schedules.md measures them on 400 SynthBirds images and 100 real CUB SfM views):
``last_iterate`` (each hypothesis ends at its last iterate, not its best, as before 2026-12-08), ``steps40_gain025``
(the quickstart's schedule before that study), ``halve_4`` and
``halve_8`` (successive halving every 4 or 8 steps down to 4 hypotheses per image, ``multiplex.prune_every``),
``steps20_gain05``, ``steps30_gain033`` (the quickstart's schedule since) and ``steps32_gain03`` (fewer steps with a
larger offset gain, the same reach in angle as 40 steps at 0.25); ``share_steps36_gain028`` and ``share_grid_10x5``,
``share_grid_8x6``, ``share_grid_12x5`` (mirrors shared, with 36 steps at the 30 steps' reach or with denser grids).

Usage: ``python benchmarks/stage1.py [--cases workers_1,workers_all] [--images 48] [--size 64] [--deform 1]
[--threads N]``; ``--images 400 --size 128 --deform 0`` is the quickstart's Stage I.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from _cases import peak_mb_since, rss_mb, run_each, selected_cases

_STEPS40 = ("multiplex.steps=40", "multiplex.offset_gain=0.25")  # the quickstart's schedule before the study
#: Stage I schedules beside the quickstart's (all 40 hypotheses for 30 steps at gain 0.333): case -> overrides
SCHEDULE_CASES = {
    "last_iterate": ("multiplex.best_iterate=false",),  # each hypothesis ends at its last iterate, as before
    "steps40_gain025": _STEPS40,
    "halve_4": (*_STEPS40, "multiplex.prune_every=4", "multiplex.prune_factor=2", "multiplex.keep=4"),
    "halve_8": (*_STEPS40, "multiplex.prune_every=8", "multiplex.prune_factor=2", "multiplex.keep=4"),
    "steps20_gain05": ("multiplex.steps=20", "multiplex.offset_gain=0.5"),
    "steps30_gain033": ("multiplex.steps=30", "multiplex.offset_gain=0.333"),
    "steps32_gain03": ("multiplex.steps=32", "multiplex.offset_gain=0.3"),
    # mirrors shared with more steps, or with denser grids (each closed under the depth mirror)
    "share_steps36_gain028": ("multiplex.share_mirrors=true", "multiplex.steps=36", "multiplex.offset_gain=0.278"),
    "share_grid_10x5": ("multiplex.share_mirrors=true", "multiplex.num_az=10"),  # 50 hypotheses, 25 fitted
    "share_grid_8x6": ("multiplex.share_mirrors=true", "multiplex.num_el=6"),  # 48 hypotheses, 24 fitted
    "share_grid_12x5": ("multiplex.share_mirrors=true", "multiplex.num_az=12"),  # 60 hypotheses, 32 fitted
}
CASES = {
    "share_mirrors": ("multiplex.share_mirrors=true",),  # one of each depth-mirrored pair fitted: 21 of 40
    "workers_1": ("multiplex.workers=1",),
    "workers_2": ("multiplex.workers=2",),
    "workers_all": ("multiplex.workers=0",),
    **SCHEDULE_CASES,
}

def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import torch

    from slopekp.commands.quickstart import QUICKSTART_DEFAULTS
    from slopekp.config import load_config
    from slopekp.data.synth.options import SynthOptions
    from slopekp.data.synth.writer import generate_synthbirds
    from slopekp.train.stage1 import run_stage1, stage1_workers

    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthbirds(os.path.join(tmp, "sb"), options=SynthOptions(n_train=args.images, n_test=0,
                                 size=args.size, deform=args.deform, seed=0), progress=False)  # fmt: skip
        torch.set_num_threads(threads)  # the generator may have changed it
        stage1 = [o for o in QUICKSTART_DEFAULTS if o.startswith("multiplex.")]
        cfg = load_config(overrides=[*stage1, *CASES[name]])
        rss0 = rss_mb()
        t0 = time.perf_counter()
        res = run_stage1(cfg, data, os.path.join(tmp, "s1"), progress=False, report=True)
        total = time.perf_counter() - t0
    m = res.metrics
    workers = stage1_workers(cfg.multiplex.workers, torch.device("cpu"))
    queue.put({
        "case": name,
        "settings": list(CASES[name]),
        "workers": workers,
        "images": res.num_fitted,
        "fit_s": round(res.seconds, 3),
        "total_s": round(total, 3),
        "images_per_s": round(res.images_per_s, 4),
        "best_median_deg": round(m.rotation_error_best.median_deg, 2),
        "closest_median_deg": round(m.rotation_error_closest.median_deg, 2),
        "best_mirror_median_deg": round(m.rotation_error_best_up_to_depth_mirror.median_deg, 2),
        "best_iou_mean": round(m.best_iou_mean, 3),
        "peak_mb": peak_mb_since(rss0),
        "threads": 1 if workers > 1 else torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)),
        "device": "cpu",
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--images", type=int, default=48, help="SynthBirds training images to fit")
    p.add_argument("--size", type=int, default=64, help="side of the SynthBirds images (the quickstart's: 128)")
    p.add_argument("--deform", type=float, default=1.0, help="SynthBirds shape deformation (the quickstart's: 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the one-process case (0: torch's default)")
    args = p.parse_args(argv)
    return run_each(selected_cases(p, args.cases, CASES), _run_case, args)


if __name__ == "__main__":
    sys.exit(main())
