"""Augmentation benchmark: seconds per training sample of :class:`slopekp.data.cub.CubDataset` with each appearance
augmentation alone and all together (JSON lines).

Cases (each in a fresh subprocess, so ``peak_mb`` is per case; a 400-image SynthBirds set generated once into a
temporary folder, decoded images cached as Stage III caches them, 64² crops; the mean over the 400 samples of an
epoch, median over ``--runs`` epochs after a warm-up epoch):

* ``none``: crop, resize, flip, distance transform (the data path without augmentation);
* ``colour``, ``grayscale``, ``blur``, ``noise``, ``shading``: one operation at full strength / probability 1;
* ``background_<kind>``: background replacement with one kind (``other``, ``flat``, ``noise``, ``pattern``);
* ``all``: the transfer study's setting C+S (docs/results/transfer.md).

Keys: ``case``, ``per_sample_s``, ``added_s`` (over ``none``, measured in the same process), ``peak_mb``,
``threads``, ``device``.

Usage: ``python benchmarks/augment.py [--cases ...] [--runs 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from _cases import median_seconds, peak_mb_since, rss_mb, standard_main

SETTINGS = {
    "none": {},
    "colour": {"colour_jitter": 0.5},
    "grayscale": {"grayscale_prob": 1.0},
    "blur": {"blur_prob": 1.0},
    "noise": {"noise_std": 0.1},
    "shading": {"shading": 1.0},
    **{f"background_{k}": {"background_prob": 1.0, "background_kinds": k}
       for k in ("other", "flat", "noise", "pattern")},
    "all": {"colour_jitter": 0.3, "grayscale_prob": 0.1, "blur_prob": 0.2, "noise_std": 0.05, "background_prob": 0.8,
            "background_kinds": "other,flat,pattern", "shading": 0.8},
}  # fmt: skip
CASES = list(SETTINGS)


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import torch

    from slopekp.data.augment import Augment
    from slopekp.data.cub import CubDataset
    from slopekp.data.synth.writer import generate_synthbirds

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthbirds(tmp, 400, 1, size=128, deform=0.0, progress=False)

        def epoch_seconds(settings: dict) -> float:
            augment = Augment(**settings) if settings else None
            ds = CubDataset(data, "train", img_size=64, cache_bytes=2**30, augment=augment)
            epoch = iter(range(1, 1000))

            def one_epoch():
                ds.set_epoch(next(epoch))
                for i in range(len(ds)):
                    ds[i]

            return median_seconds(one_epoch, args.runs, "cpu") / len(ds)

        rss0 = rss_mb()
        base = epoch_seconds({})
        per_sample = epoch_seconds(SETTINGS[name]) if name != "none" else base
        queue.put({"case": name, "per_sample_s": round(per_sample, 6), "added_s": round(per_sample - base, 6),
                   "peak_mb": peak_mb_since(rss0), "threads": torch.get_num_threads(), "device": "cpu"})


if __name__ == "__main__":
    sys.exit(standard_main(__doc__, CASES, _run_case))
