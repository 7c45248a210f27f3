"""``slopekp benchmark``: the paper's Table 1 on any CMR-format folder, the same protocol for every pose head.

Stage I runs once; for each seed, Stage II runs once and Stage III once per head; each trained head is evaluated on
the test split (:func:`slopekp.eval.report.evaluate_checkpoint`) and the heads are compared over the seeds
(:mod:`slopekp.eval.table1`). ``OUT/`` holds::

    manifest.json                made by `slopekp benchmark`, with the training data's fingerprint
    stage1/                      the camera multiplex (seed ``cfg.seed``)
    seed<S>/stage2/              Stage II of seed S
    seed<S>/stage3_<head>/       Stage III of one head
    seed<S>/eval_<head>/         its evaluation (metrics.json, per_image.csv, plots, worst cases)
    report.json, report.md       Table 1: mean ± std over the seeds, the paper's numbers beside

One seed's heads train at once in ``cfg.jobs`` processes on the CPU (0: one per core, at most one per head), each
with the results of a run alone. Every stage resumes (rerun the same command after an interruption); finished
stages are reused. ``slopekp benchmark`` writes only into an empty folder or one it made (each stage's own manifest
checks the settings): :func:`prepare_benchmark_dir`. This module sits above training and evaluation: it runs both.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from slopekp.config import Config
from slopekp.eval.report import evaluate_checkpoint
from slopekp.eval.table1 import HEADS, summarise, write_report
from slopekp.manifest import MANIFEST_NAME, Manifest, cmr_data_fingerprint, prepare_output_dir
from slopekp.train.stage1 import run_stage1
from slopekp.train.stage2 import run_stage2
from slopekp.train.stage3 import run_stage3
from slopekp.utils import resolve_device, spawned_map, usable_cores, worker_processes

__all__ = ["BENCHMARK_COMMAND", "BenchmarkResult", "head_jobs", "prepare_benchmark_dir", "run_benchmark"]

BENCHMARK_COMMAND = "benchmark"
#: What a benchmark folder holds (the module docstring), to recognise one made before benchmarks had a manifest.
_BENCHMARK_ENTRIES = re.compile(r"stage1|seed\d+|report\.(json|md)|\.report\.(json|md)\..*\.tmp")


@dataclass
class BenchmarkResult:
    out_dir: Path
    summary: dict[str, dict[str, dict[str, float]]]
    """head -> metric -> ``{"mean", "std", "n"}``."""
    runs: dict[str, dict[int, dict[str, Any]]]
    """head -> seed -> evaluation metrics."""


def run_benchmark(
    cfg: Config,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    heads: tuple[str, ...] = HEADS,
    seeds: int = 3,
    progress: bool = True,
    pck_pairs: int = 1000,
    command: str = "",
) -> BenchmarkResult:
    """Run (or resume) the benchmark; see the module docstring. ``cfg.seed`` is the first seed."""
    bad = [h for h in heads if h not in HEADS]
    if bad or not heads:
        raise ValueError(f"heads must be among {HEADS}, got {list(heads)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    device = resolve_device(cfg.device)
    s1 = out_dir / "stage1"
    _say(progress, f"Stage I -> {s1}")
    run_stage1(cfg, data_dir, s1, progress=progress)
    runs: dict[str, dict[int, dict[str, Any]]] = {h: {} for h in heads}
    jobs = head_jobs(cfg.jobs, len(heads), device)
    for k in range(seeds):
        seed = cfg.seed + k
        cfg_s = dataclasses.replace(cfg, seed=seed)
        root = out_dir / f"seed{seed}"
        _say(progress, f"seed {seed}: Stage II -> {root / 'stage2'}")
        run_stage2(cfg_s, data_dir, s1 / "multiplex.npz", root / "stage2", progress=progress)
        job = _HeadJob(cfg_s, data_dir, root, str(device), pck_pairs, progress)
        if jobs <= 1:
            for head in heads:
                _say(progress, f"seed {seed}: Stage III {head} -> {root / f'stage3_{head}'}")
                runs[head][seed] = job.run(head)
            continue
        _say(progress, f"seed {seed}: Stage III of {', '.join(heads)} in {jobs} processes -> {root}/stage3_<head>")
        for head, metrics in zip(heads, _run_in_processes(job, heads, jobs)):
            runs[head][seed] = metrics
    summary = summarise(runs)
    write_report(out_dir, summary, runs, data_dir=data_dir, command=command)
    return BenchmarkResult(out_dir, summary, runs)


def head_jobs(requested: int, num_heads: int, device: torch.device) -> int:
    """How many heads train at once (``cfg.jobs``): ``requested``, or for 0 one per core this process may use, at
    most ``num_heads``; 1 on an accelerator (one process drives it)."""
    return max(1, min(num_heads, worker_processes(requested, device)))


@dataclass(frozen=True)
class _HeadJob:
    """What one seed's Stage III and evaluation of a head need (sent once to each worker process)."""

    cfg: Config
    data_dir: Path
    root: Path
    device: str
    pck_pairs: int
    progress: bool

    def run(self, head: str, bar_position: int | None = None) -> dict[str, Any]:
        """Stage III of ``head`` from this seed's Stage II, then its evaluation on the test split: the metrics."""
        root = self.root
        res = run_stage3(self.cfg, self.data_dir, root / "stage2", root / f"stage3_{head}", head,
                         progress=self.progress, bar_position=bar_position)  # fmt: skip
        return evaluate_checkpoint(res.checkpoint, self.data_dir, root / f"eval_{head}", split="test",
                                   device=self.device, pck_pairs=self.pck_pairs)  # fmt: skip


def _run_in_processes(job: _HeadJob, heads: tuple[str, ...], jobs: int) -> list[dict[str, Any]]:
    """``job.run`` of every head, ``jobs`` at a time in spawned processes, each with ``cfg.threads`` threads (with 0,
    an equal share of the cores); each head's progress bar on its own line."""
    if job.cfg.threads == 0:
        job = dataclasses.replace(job, cfg=dataclasses.replace(job.cfg, threads=max(1, usable_cores() // jobs)))
    lock = multiprocessing.get_context("spawn").RLock()  # the bars' shared write lock (tqdm's own is fork-made)
    items = list(enumerate(heads))
    with spawned_map(_run_head_in_worker, items, jobs, _start_head_worker, (job, lock)) as results:
        return list(results)


_HEAD_WORKER: dict = {}
"""A head worker process's :class:`_HeadJob`."""


def _start_head_worker(job: _HeadJob, lock) -> None:
    tqdm.set_lock(lock)
    _HEAD_WORKER["job"] = job


def _run_head_in_worker(item: tuple[int, str]) -> dict[str, Any]:
    position, head = item
    return _HEAD_WORKER["job"].run(head, bar_position=position)


def prepare_benchmark_dir(out_dir: str | os.PathLike, data_dir: str | os.PathLike, *, overwrite: bool = False,
                          force_new: bool = False) -> str:
    """The output-folder gate of ``slopekp benchmark`` (:func:`slopekp.manifest.prepare_output_dir`): ``out_dir``
    must be empty, missing or a benchmark folder of the same training data; a user's folder is refused unless
    ``overwrite`` (emptied) or ``force_new`` (moved aside). A benchmark folder written before benchmarks had a
    manifest (only ``stage1/``, ``seed<S>/`` and the reports, with Stage I's manifest) is taken as one.

    Returns:
        ``"new"`` or ``"resume"``.
    """
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    manifest = Manifest(BENCHMARK_COMMAND, inputs={"data": cmr_data_fingerprint(data_dir, "train")})
    if out_dir.is_dir() and not (out_dir / MANIFEST_NAME).exists() and not (overwrite or force_new):
        names = [p.name for p in out_dir.iterdir()]
        try:
            stage1 = Manifest.load(out_dir / "stage1")
        except ValueError:
            stage1 = None
        if names and stage1 is not None and all(_BENCHMARK_ENTRIES.fullmatch(n) for n in names):
            manifest.save(out_dir)  # an earlier benchmark's folder: its stages check their own settings
            return "resume"
    return prepare_output_dir(out_dir, manifest, overwrite=overwrite, force_new=force_new, inputs=[data_dir])


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[benchmark] {text}", flush=True)
