"""Flat-colour baselines for the evaluation's texture numbers (issue 24): what a render of one colour would score.

For each test image of a CMR-format split (the evaluation's crops, at ``--size``), the masked L1 over the
ground-truth mask (``slopekp.eval.reconstruction.masked_l1``, as ``metrics.json``'s ``texture`` section) of a
perfect silhouette painted

* ``own_colour``: in the image's own per-channel median colour over its mask (the best single colour per bird, up
  to the L1's own minimiser);
* ``one_colour``: in one colour for every bird, the per-channel median over all the split's masked pixels.

A texture head that does better than ``own_colour`` reproduces more than each bird's average colour. One JSON line
per case: ``case``, ``l1`` (mean over images), ``images``, ``seconds``, ``peak_mb``, ``threads``, ``device``.

Usage::

    python benchmarks/texture_baselines.py --data DATA [--split test] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _cases import peak_mb_since, rss_mb, run_each, selected_cases

CASES = ("own_colour", "one_colour")


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import torch

    from slopekp.eval.evaluate import benchmark_dataset
    from slopekp.eval.reconstruction import masked_l1

    torch.set_num_threads(args.threads)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    ds = benchmark_dataset(args.data, args.split, args.size)
    samples = [ds[i] for i in range(len(ds))]
    if name == "own_colour":
        colours = [s.img[:, s.mask > 0.5].median(dim=1).values for s in samples]
    else:
        shared = torch.cat([s.img[:, s.mask > 0.5] for s in samples], dim=1).median(dim=1).values
        colours = [shared] * len(samples)
    l1 = torch.cat([masked_l1(c.view(1, 3, 1, 1).expand(1, *s.img.shape), s.img[None], s.mask[None])
                    for c, s in zip(colours, samples)])  # fmt: skip
    queue.put({"case": name, "l1": round(float(l1.nanmean()), 4), "images": len(ds),
               "seconds": round(time.perf_counter() - t0, 1), "peak_mb": peak_mb_since(rss0),
               "threads": torch.get_num_threads(), "device": "cpu"})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a CMR-format folder with ground-truth cameras")
    p.add_argument("--split", default="test")
    p.add_argument("--size", type=int, default=64, help="the evaluation's crop side (the model's input size)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder")
    return run_each(selected_cases(p, args.cases, CASES), _run_case, args)


if __name__ == "__main__":
    sys.exit(main())
