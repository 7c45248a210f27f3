"""Renderer benchmark: prints one JSON object per line and case.

Keys: ``case``, ``forward_s`` and ``backward_s`` (medians over ``--runs`` timed runs after one warm-up;
backward is ``loss.backward()`` of a random linear function of the outputs w.r.t. the vertices (and the
texture for ``rgb`` cases); 0 for hard mode), ``peak_mb`` (CPU: peak resident-set growth of a fresh subprocess
per case, ``ru_maxrss`` at the end minus the RSS before the warm-up, so it covers warm-up and timed runs;
CUDA: ``torch.cuda.max_memory_allocated`` growth), ``threads`` (``torch.get_num_threads()``), ``renders``,
``image``, ``faces``, ``device``, ``fused`` (``RenderSettings.fused``), and from one more forward + backward under
``torch.profiler``: ``kernels`` and ``gpu_busy_s`` (the CUDA kernels launched and their summed duration) on CUDA,
``aten_ops`` (the operators called) on the CPU.

Cases: ``soft16_64`` / ``soft16_128`` (16 level-3 icospheres, 642 verts / 1280 faces, sigma 1e-4, random
views), ``multiplex12x40_64`` (12 meshes x 40 cameras of the bird template, the real U-CMR one when
``../shared/data`` has it, else the procedural bird), ``hard16_256`` (hard mode, 16 icospheres at 256²),
``rgb16_64`` (soft RGB from a 128 x 256 UV image per mesh, the soft16_64 meshes and views; backward also w.r.t.
the texture).

Usage: ``python benchmarks/render.py [--cases soft16_64,hard16_256] [--runs 5] [--device cpu] [--threads N]
[--fused never|auto|always]`` (on a GPU, run it twice, ``--fused never`` and ``--fused always``, to compare
the two paths).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from _cases import count_launches  # also sets OMP_WAIT_POLICY=PASSIVE for the workers, as ``import slopekp`` does

CASES = ("soft16_64", "soft16_128", "multiplex12x40_64", "hard16_256", "rgb16_64")
REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _random_cameras(n: int, gen, torch, scale=(0.6, 0.9)):
    q = torch.randn(n, 4, generator=gen)
    q = q / q.norm(dim=1, keepdim=True)
    s = torch.rand(n, 1, generator=gen) * (scale[1] - scale[0]) + scale[0]
    t = (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
    return torch.cat([s, t, q], 1)


def _setup(case: str, device, torch, fused: str = "never"):
    from slopekp.mesh import icosphere, load_template
    from slopekp.render import Renderer, RenderSettings

    gen = torch.Generator().manual_seed(0)
    if case.startswith("multiplex"):
        real = REPO.parent / "shared" / "data" / "template_shape" / "bird_template.npy"
        tpl = load_template(real) if real.is_file() else load_template("procedural")
        verts = tpl.verts.unsqueeze(0).repeat(12, 1, 1)
        verts = verts + 0.01 * torch.randn(verts.shape, generator=gen)
        cams = _random_cameras(12 * 40, gen, torch, scale=(0.5, 0.8)).view(12, 40, 7)
        size, mode, extra = 64, "silhouette", {}
    else:
        tpl = icosphere(3)
        verts = tpl.verts.unsqueeze(0).repeat(16, 1, 1)
        cams = _random_cameras(16, gen, torch)
        size = int(case.split("_")[1])
        mode = "hard" if case.startswith("hard") else "rgb" if case.startswith("rgb") else "silhouette"
        extra = {}
        if mode == "rgb":
            extra = {"uv_image": torch.rand(16, 3, 128, 256, generator=gen), "verts_uv": tpl.verts_uv}
    renderer = Renderer(RenderSettings(image_size=size, sigma=1e-4, fused=fused))
    verts = verts.to(device)
    extra = {k: v.to(device) for k, v in extra.items()}
    return renderer, verts, tpl.faces.to(device), cams.to(device), mode, extra


def _run_case(case: str, runs: int, device_name: str, threads: int | None, out_q, fused: str = "never") -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    renderer, verts, faces, cams, mode, extra = _setup(case, device, torch, fused)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    base_rss = _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    fwd, bwd = [], []
    for i in range(runs + 1):
        v = verts.clone().requires_grad_(mode != "hard")
        ex = {k: (t.clone().requires_grad_() if k == "uv_image" else t) for k, t in extra.items()}
        sync()
        t0 = time.perf_counter()
        out = renderer(v, faces, cams, mode=mode, **ex)
        sync()
        t1 = time.perf_counter()
        if mode != "hard":
            loss = (out.alpha * torch.randn_like(out.alpha)).sum()
            if out.rgb is not None:
                loss = loss + (out.rgb * torch.randn_like(out.rgb)).sum()
            sync()
            t1 = time.perf_counter()
            loss.backward()
            sync()
        t2 = time.perf_counter()
        if i > 0:  # run 0 is the warm-up
            fwd.append(t1 - t0)
            bwd.append(t2 - t1 if mode != "hard" else 0.0)
        del out
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss

    def step():
        v = verts.clone().requires_grad_(mode != "hard")
        out = renderer(v, faces, cams, mode=mode, **extra)
        if mode != "hard":
            loss = out.alpha.sum() + (out.rgb.sum() if out.rgb is not None else 0)
            loss.backward()

    launches = count_launches(step, torch, cuda)
    out_q.put(
        {
            "case": case,
            "forward_s": round(statistics.median(fwd), 5),
            "backward_s": round(statistics.median(bwd), 5),
            "total_s": round(statistics.median(f + b for f, b in zip(fwd, bwd)), 5),
            "peak_mb": round(peak, 1),
            "peak_mb_kind": "cuda_max_allocated" if cuda else "rss_growth",
            "threads": torch.get_num_threads(),
            "renders": int(cams[..., 0].numel()),
            "image": renderer.settings.image_size,
            "faces": int(faces.shape[0]),
            "device": str(device),
            "runs": runs,
            "fused": fused,
            **launches,
        }
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    p.add_argument("--runs", type=int, default=5, help="timed runs per case (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--fused", default="never", choices=("never", "auto", "always"),
                   help="RenderSettings.fused: the silhouette's Triton kernels (CUDA; always: forced)")  # fmt: skip
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {CASES}")
    if args.runs < 1:
        p.error("--runs must be >= 1")
    ctx = mp.get_context("spawn")
    for case in cases:
        q = ctx.Queue()
        proc = ctx.Process(target=_run_case, args=(case, args.runs, args.device, args.threads, q, args.fused))
        proc.start()
        result = q.get()
        proc.join()
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
