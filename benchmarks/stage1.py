"""Stage I end to end on a small SynthBirds set, by number of worker processes: prints one JSON object per line
and case, with speed and accuracy side by side.

Each case generates (once, in a temporary folder) ``--images`` SynthBirds training images of 64² with their true
cameras, then runs :func:`slopekp.train.stage1.run_stage1` with the quickstart's ``multiplex.*`` settings and
``multiplex.workers`` set by the case, and its report against the true cameras.

Keys: ``case``; ``workers`` (the processes that fitted: ``multiplex.workers`` resolved, 0 = one per core);
``images``; ``fit_s`` (wall time of the fit, report excluded: the worker processes' start-up included);
``images_per_s``; ``best_median_deg`` and ``closest_median_deg`` (median rotation error of each image's best and
closest hypothesis against the true camera: the same for every case, since the results do not depend on the
number of processes); ``peak_mb`` (peak resident-set growth of this case's main process; each worker holds its
own copy of the data set besides); ``threads`` (each worker's intra-op threads: 1; for ``workers_1`` torch's
default in the case process); ``cores`` (``os.sched_getaffinity``); ``device``.

Cases: ``workers_1`` (one process, as before issue 22), ``workers_2``, ``workers_all`` (``multiplex.workers=0``).

Usage: ``python benchmarks/stage1.py [--cases workers_1,workers_all] [--images 48] [--threads N]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from _cases import peak_mb_since, rss_mb, run_each, selected_cases

CASES = {"workers_1": 1, "workers_2": 2, "workers_all": 0}

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
                                                                                 size=64, seed=0), progress=False)
        torch.set_num_threads(threads)  # the generator may have changed it
        stage1 = [o for o in QUICKSTART_DEFAULTS if o.startswith("multiplex.")]
        cfg = load_config(overrides=[*stage1, f"multiplex.workers={CASES[name]}"])
        rss0 = rss_mb()
        t0 = time.perf_counter()
        res = run_stage1(cfg, data, os.path.join(tmp, "s1"), progress=False, report=True)
        total = time.perf_counter() - t0
    m = res.metrics
    workers = stage1_workers(CASES[name], torch.device("cpu"))
    queue.put({
        "case": name,
        "workers": workers,
        "images": res.num_fitted,
        "fit_s": round(res.seconds, 3),
        "total_s": round(total, 3),
        "images_per_s": round(res.images_per_s, 4),
        "best_median_deg": round(m.rotation_error_best.median_deg, 2),
        "closest_median_deg": round(m.rotation_error_closest.median_deg, 2),
        "peak_mb": peak_mb_since(rss0),
        "threads": 1 if workers > 1 else torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)),
        "device": "cpu",
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--images", type=int, default=48, help="SynthBirds training images to fit")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the one-process case (0: torch's default)")
    args = p.parse_args(argv)
    return run_each(selected_cases(p, args.cases, CASES), _run_case, args)


if __name__ == "__main__":
    sys.exit(main())
