"""Stage I (camera-multiplex initialisation) benchmark: prints one JSON object per line and case.

Each case fits P hypotheses per image to B masks with :func:`slopekp.train.stage1.fit_hypotheses` (the
Stage I inner loop: render B·P silhouettes, mask loss, backward, per-image Adam). The masks are silhouettes
of the template under random upright-ish views (no data set on disk is needed).

Keys: ``case``; ``batch``, ``hypotheses``, ``image_size``, ``steps`` (the configured Stage I steps);
timings in seconds: ``step_s`` (wall time of one optimisation step — forward, backward, Adam —: the median
over ``--runs`` runs of a ``k``-step fit divided by ``k = --timed-steps``, after a warm-up; it includes
``1/k`` of the final scoring render) and ``fit_s`` (predicted time to fit one batch: ``steps · step_s``);
``images_per_s`` (``batch / fit_s``); ``peak_mb`` (peak resident-set growth of a fresh subprocess per case:
``ru_maxrss`` at the end minus the RSS before the warm-up); ``threads`` (``torch.get_num_threads()``);
``template``; ``device``; ``fused`` (``RenderSettings.fused``); and from a one-step fit (one optimisation step
and the scoring render) under ``torch.profiler``: ``kernels`` and ``gpu_busy_s`` on CUDA, ``aten_ops`` on the CPU;
``host_syncs_per_step``: operations per optimisation step that make the host wait for a CUDA device
(:func:`slopekp.devtools.host_syncs`; on the CPU it also counts the value checks that an accelerator skips).
With ``--full`` a case also runs one complete fit and reports the measured ``full_fit_s`` and
``full_images_per_s``.

Cases: ``stage1_p40_64`` (the defaults: P = 40, 64² masks, B = 12, 150 steps), ``stage1_p40_64_b4``
(B = 4), ``stage1_p40_32`` (32² masks); ``*_batched``: the same with ``multiplex.batch_invariant=false`` (one
render call per batch rather than per image; results then depend on the batch); ``stage1_p40_64_b60_batched``
(B = 60 in one call, the GPU's configuration: ``configs/cub_stage1_gpu.yaml``). Key ``batch_invariant``.

Usage: ``python benchmarks/multiplex.py [--cases stage1_p40_64] [--runs 3] [--threads N]
[--timed-steps 10] [--template procedural] [--full] [--fused never|auto|always]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

from _cases import count_launches, rss_mb, run_each, selected_cases

CASES = {
    "stage1_p40_64": {"batch": 12, "image_size": 64},
    "stage1_p40_64_b4": {"batch": 4, "image_size": 64},
    "stage1_p40_32": {"batch": 12, "image_size": 32},
    # one render call per batch instead of per image: faster where launches dominate, but not batch-invariant
    "stage1_p40_64_batched": {"batch": 12, "image_size": 64, "batch_invariant": False},
    "stage1_p40_32_batched": {"batch": 12, "image_size": 32, "batch_invariant": False},
    # the GPU's batch (configs/cub_stage1_gpu.yaml): 2,400 renders per step in one call
    "stage1_p40_64_b60_batched": {"batch": 60, "image_size": 64, "batch_invariant": False},
}


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import torch
    from scipy.ndimage import distance_transform_edt

    from slopekp.config import load_config
    from slopekp.geometry.rotations import azelcr_to_quat, quat_about_axis
    from slopekp.mesh import load_template
    from slopekp.render import Renderer, RenderSettings
    from slopekp.train.hypotheses import OffsetSettings, hypothesis_cameras_from_config
    from slopekp.train.stage1 import fit_hypotheses

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    spec = CASES[name]
    B, size = spec["batch"], spec["image_size"]
    invariant = spec.get("batch_invariant", True)
    cfg = load_config(overrides=[f"multiplex.image_size={size}", f"multiplex.batch_size={B}"]).multiplex
    device = torch.device(args.device)
    tpl = load_template(args.template)
    verts, faces = tpl.verts.to(device), tpl.faces.to(device)
    renderer = Renderer(RenderSettings(image_size=size, fused=args.fused))
    gen = torch.Generator().manual_seed(0)
    # upright-ish random views: azimuth anywhere, elevation ±45°, roll ±20°, on the head-view base
    az = (torch.rand(B, generator=gen) * 2 - 1) * torch.pi
    el = (torch.rand(B, generator=gen) * 2 - 1) * torch.pi / 4
    cr = (torch.rand(B, generator=gen) * 2 - 1) * torch.pi / 9
    q = azelcr_to_quat(az, el, cr, quat_about_axis("x", torch.tensor(torch.pi / 2)).expand(B, 4))
    st = torch.cat([0.7 + 0.2 * torch.rand(B, 1, generator=gen), 0.1 * torch.randn(B, 2, generator=gen)], 1)
    with torch.no_grad():
        mask = renderer(verts, faces, torch.cat([st, q], 1).to(device)[:, None]).alpha[:, 0]
    dt = torch.stack(
        [torch.from_numpy(distance_transform_edt(1.0 - (m > 0.5).cpu().numpy()) / size).float() for m in mask]
    ).to(device)
    init = hypothesis_cameras_from_config(cfg, device=device)
    settings = OffsetSettings.from_config(cfg)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def fit(steps: int):
        return fit_hypotheses(
            verts,
            faces,
            renderer,
            mask,
            dt,
            init,
            settings=settings,
            steps=steps,
            lr=cfg.lr,
            peakiness=cfg.peakiness,
            batch_invariant=invariant,
        )

    rss0 = rss_mb()
    fit(1)  # warm-up
    k = max(1, args.timed_steps)
    times = []
    for _ in range(args.runs):
        sync()
        t0 = time.perf_counter()
        fit(k)
        sync()
        times.append(time.perf_counter() - t0)
    # a fit of k steps renders k + 1 times (the last render scores): per step, an upper bound by 1/k render
    step_s = statistics.median(times) / k
    fit_s = cfg.steps * step_s
    out = {
        "case": name,
        "batch": B,
        "hypotheses": int(init.shape[0]),
        "image_size": size,
        "steps": cfg.steps,
        "batch_invariant": invariant,
        "step_s": round(step_s, 4),
        "fit_s": round(fit_s, 2),
        "images_per_s": round(B / fit_s, 4),
        "threads": torch.get_num_threads(),
        "template": args.template,
        "device": str(device),
    }
    if args.full:
        sync()
        t0 = time.perf_counter()
        fit(cfg.steps)
        sync()
        full = time.perf_counter() - t0
        out["full_fit_s"] = round(full, 2)
        out["full_images_per_s"] = round(B / full, 4)
    out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0, 1)
    out["fused"] = args.fused
    out.update(count_launches(lambda: fit(1), torch, device.type == "cuda"))
    # operations that make the host wait for the device, per optimisation step (slopekp.devtools; on the CPU the
    # value checks that an accelerator skips count too)
    from slopekp.devtools import host_syncs

    counts = []
    for steps in (1, 2):
        with host_syncs() as syncs:
            fit(steps)
        counts.append(len(syncs))
    out["host_syncs_per_step"] = (counts[1] - counts[0]) / (B if invariant else 1)
    queue.put(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timed-steps", type=int, default=10, help="optimisation steps per timed run")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--template", default="procedural", help="procedural, or a template file")
    p.add_argument("--full", action="store_true", help="also time one complete Stage I fit per case")
    p.add_argument("--fused", default="never", choices=("never", "auto", "always"),
                   help="RenderSettings.fused: the silhouette's Triton kernels (CUDA)")  # fmt: skip
    args = p.parse_args(argv)
    return run_each(selected_cases(p, args.cases, CASES), _run_case, args)


if __name__ == "__main__":
    sys.exit(main())
