"""What the benchmark scripts share: choosing cases and running each in a fresh process (so that its peak
memory is its own), printing one JSON object per case."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import time

# Same default as ``import slopekp`` sets (slopekp/__init__.py): the spawned case processes inherit it, so it holds
# even where a case imports torch before slopekp (busy-waiting OpenMP threads slow the renderer many times over
# when anything else uses a core).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def rss_mb() -> float:
    """Resident set size of this process now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def selected_cases(parser, spec: str, cases) -> list[str]:
    """The comma-separated ``spec`` as a list of case names; an unknown name is a usage error."""
    names = [c for c in spec.split(",") if c]
    unknown = [c for c in names if c not in cases]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(cases)}")
    return names


def run_each(names: list[str], target, args) -> int:
    """``target(name, args, queue)`` in a fresh spawned process per case; prints each result as a JSON line.
    A case whose process fails prints ``{"case", "error"}`` and stops the run (exit status 1)."""
    ctx = mp.get_context("spawn")
    for name in names:
        q = ctx.Queue()
        proc = ctx.Process(target=target, args=(name, args, q))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or q.empty():
            print(json.dumps({"case": name, "error": f"case process exited with {proc.exitcode}"}), flush=True)
            return 1
        print(json.dumps(q.get()), flush=True)
    return 0


def peak_mb_since(rss0: float) -> float:
    """This process's peak resident set size, less ``rss0`` (MB): a case's own memory."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0, 1)


def standard_main(doc: str, cases: list[str], target, argv: list[str] | None = None) -> int:
    """The command line every case-by-case benchmark shares: ``--cases``, ``--runs``, ``--threads``, ``--device``;
    runs the chosen cases with :func:`run_each`."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(cases), help=f"comma-separated subset of {', '.join(cases)}")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    return run_each(selected_cases(p, args.cases, cases), target, args)


def count_launches(step, torch, cuda: bool) -> dict:
    """One profiled ``step()``: the CUDA kernels it launched and the GPU's busy time (their summed durations) on
    CUDA, or the aten operators it called on the CPU (each one a launch of its own)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(getattr(e, "device_time", 0.0) or getattr(e, "cuda_time", 0.0) for e in kernels) / 1e6
        return {"kernels": len(kernels), "gpu_busy_s": round(busy, 6)}
    return {"aten_ops": sum(1 for e in events if e.name.startswith("aten::"))}


def median_seconds(fn, runs: int, device) -> float:
    """The median wall time of ``runs`` calls of ``fn()`` after one warm-up call, synchronising CUDA around each."""

    def sync():
        if getattr(device, "type", str(device)) == "cuda":
            import torch

            torch.cuda.synchronize()

    fn()  # warm-up
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
