"""Predict benchmark: seconds per photo for the network and for each kind of output ``slopekp predict`` writes
(JSON lines).

Cases (each in a fresh subprocess, so ``peak_mb`` is per case; a randomly initialised model, since speed does not
depend on the weights; a smooth synthetic 480x640 photo, outputs written to a temporary folder):

* ``net_<head>_b1_64`` / ``net_<head>_b8_64``: :meth:`Reconstructor.predict_crops` on 1 or 8 prepared crops at 64²
  (the SynthBirds config), for the keypoint head (its PnP included) and the quaternion head; ``per_image_s``;
* ``prepare_640x480``: reading nothing, cropping one in-memory photo from its box (:meth:`Reconstructor.prepare`);
* ``outputs_256``: :func:`slopekp.predict.outputs.write_reconstruction` for one photo with the default sizes:
  meshes (OBJ + GLB), camera, mask, figure (7 panels at 256²) and a 36-frame turntable (``total_s``); apart:
  ``mesh_s`` (the two mesh files), ``without_turntable_s`` (everything but the turntable) and ``turntable_s``
  (its 36 renders at 192²).

Keys: ``case``, the timings in seconds (median over ``--runs`` after a warm-up), ``peak_mb`` (resident-set growth),
``threads``, ``device``.

Usage: ``python benchmarks/predict.py [--cases ...] [--runs 3] [--threads N] [--device cpu]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _cases import median_seconds, peak_mb_since, rss_mb, standard_main

CASES = ["net_keypoints_b1_64", "net_keypoints_b8_64", "net_quaternion_b1_64", "net_quaternion_b8_64",
         "prepare_640x480", "outputs_256"]  # fmt: skip
OVERRIDES = ["model.image_size=64", "model.encoder_width=16", "model.uv_height=32", "model.texture_width=8"]


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from slopekp.config import load_config
    from slopekp.mesh import load_template
    from slopekp.models.reconstructor import build_model
    from slopekp.predict import Reconstructor
    from slopekp.predict.outputs import write_reconstruction

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    head = name.split("_")[1] if name.startswith("net_") else "keypoints"
    cfg = load_config(overrides=[*OVERRIDES, f"model.pose_head={head}"])
    torch.manual_seed(0)
    template = load_template("procedural").to(device)
    rec = Reconstructor(build_model(cfg.model, template).to(device), template, cfg, head)
    # a smooth random photo (an 8x10 grid of colours, bilinearly enlarged): the photo texture copies it into the UV
    # image, and per-pixel noise would make the figure's PNG and the turntable's GIF far slower to encode than any photo
    coarse = torch.from_numpy(np.random.default_rng(0).uniform(size=(1, 3, 8, 10)).astype(np.float32))
    photo = F.interpolate(coarse, size=(480, 640), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    box = [200, 120, 439, 359]

    def timed(fn) -> float:
        return round(median_seconds(fn, args.runs, device), 4)

    rss0 = rss_mb()
    out = {"case": name}
    if name.startswith("net_"):
        batch = int(name.split("_")[2][1:])
        crops = [rec.prepare(photo, bbox=box)] * batch
        s = median_seconds(lambda: rec.predict_crops(crops), args.runs, device)
        out.update(batch_s=round(s, 4), per_image_s=round(s / batch, 4), batch=batch, image_size=rec.image_size)
    elif name == "prepare_640x480":
        out["prepare_s"] = timed(lambda: rec.prepare(photo, bbox=box))
    else:
        r = rec.predict_crops([rec.prepare(photo, bbox=box)])[0]
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            out["mesh_s"] = timed(lambda: (r.export(t / "m.obj"), r.export(t / "m.glb")))
            out["without_turntable_s"] = timed(lambda: write_reconstruction(r, photo, t / "f", turntable_frames=0))
            out["turntable_s"] = timed(lambda: [r.render(azimuth=10.0 * i, size=192) for i in range(36)])
            out["total_s"] = timed(lambda: write_reconstruction(r, photo, t / "a"))
    out.update(peak_mb=peak_mb_since(rss0),
               threads=torch.get_num_threads(), device=str(device))  # fmt: skip
    queue.put(out)


def main(argv: list[str] | None = None) -> int:
    return standard_main(__doc__, CASES, _run_case, argv)


if __name__ == "__main__":
    sys.exit(main())
