"""Video benchmark: frames per second of online reconstruction (``slopekp video``) by box source (JSON lines).

Cases (each in a fresh subprocess, so ``peak_mb`` is per case; a randomly initialised model of the SynthBirds
size, since speed does not depend on the weights; of four SynthBirds videos of 24 frames at 480p generated into a
temporary folder, the one with the most birds):

* ``online_gt_480p``: boxes from the ground truth; reconstruction, masks pasted at 480p, J, DAVIS PNGs written;
* ``online_csrt_480p`` / ``online_kcf_480p``: the same with OpenCV's CSRT / KCF tracker;
* ``online_gt_video_480p``: ``online_gt_480p`` plus the MP4 figure (textured overlays);
* ``tracker_csrt_480p`` / ``tracker_kcf_480p``: the trackers alone (``fps`` of ``BoxTrack.step``).

Keys: ``case``, ``seconds`` (the median over ``--runs`` after a warm-up), ``fps``, ``frames``, ``objects``,
``peak_mb`` (resident-set growth), ``threads``, ``device``.

Usage: ``python benchmarks/video.py [--cases ...] [--runs 3] [--threads N] [--device cpu]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _cases import median_seconds, peak_mb_since, rss_mb, standard_main

CASES = ["online_gt_480p", "online_csrt_480p", "online_kcf_480p", "online_gt_video_480p", "tracker_csrt_480p",
         "tracker_kcf_480p"]  # fmt: skip
OVERRIDES = ["model.image_size=64", "model.encoder_width=16", "model.uv_height=32", "model.texture_width=8",
             "model.pose_head=keypoints"]  # fmt: skip


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import numpy as np
    import torch

    from slopekp.config import load_config
    from slopekp.data.synth.video import VideoSynthSettings
    from slopekp.data.synth.video_writer import generate_synth_videos
    from slopekp.data.video import DavisDataset
    from slopekp.mesh import load_template
    from slopekp.models.reconstructor import build_model
    from slopekp.predict import Reconstructor
    from slopekp.video.boxes import open_boxes
    from slopekp.video.online import run_sequence

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(overrides=OVERRIDES)
    torch.manual_seed(0)
    template = load_template("procedural").to(device)
    rec = Reconstructor(build_model(cfg.model, template).to(device).eval(), template, cfg, "keypoints")
    with tempfile.TemporaryDirectory() as tmp:
        settings = VideoSynthSettings(min_frames=24, max_frames=24, max_birds=3, p_leave_enter=0.0, val_fraction=0.0)
        root = generate_synth_videos(Path(tmp) / "v", 4, seed=1, settings=settings, progress=False)
        ds = DavisDataset(root, split="train")
        seq = max((ds[n] for n in ds.sequences), key=lambda s: len(s.objects))  # the most birds
        frames = [(seq.load_image(t).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for t in range(len(seq))]
        kind = name.split("_")[1]
        spec = {"gt": "gt", "csrt": "tracker:csrt", "kcf": "tracker:kcf"}[kind]

        if name.startswith("tracker_"):
            def work():
                track = open_boxes(spec, seq)
                for t, f in enumerate(frames):
                    track.step(t, f)
        else:
            def work():
                run_sequence(rec, seq, spec, Path(tmp) / "out", video=name.startswith("online_gt_video"))

        rss0 = rss_mb()
        s = median_seconds(work, args.runs, device)
    queue.put({
        "case": name, "seconds": round(s, 3), "fps": round(len(seq) / s, 2), "frames": len(seq),
        "objects": len(seq.objects), "frame_size": list(frames[0].shape[:2]),
        "peak_mb": peak_mb_since(rss0),
        "threads": torch.get_num_threads(), "device": str(device),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return standard_main(__doc__, CASES, _run_case, argv)


if __name__ == "__main__":
    sys.exit(main())
