"""Training-step benchmark: seconds per Stage II step and per Stage III step of each pose head (JSON lines).

Cases (each in a fresh subprocess, so ``peak_mb`` is per case; synthetic inputs, nothing read from disk):

* ``stage2_b12_p40_64``: one Stage II step: the network on B = 12 images at 64², the B·P = 480 renders
  (silhouette + texture) of the live multiplex at 64², the losses, both backward passes, the network's Adam step
  and the multiplex's per-image Adam step;
* ``stage3_<head>_b12_64``: one Stage III step of each head (frozen backbone; the keypoint head's heatmap targets
  include the hard render that decides visibility).

Keys: ``case``, ``step_s`` (median over ``--runs`` after a warm-up), ``peak_mb`` (resident-set growth),
``threads``, ``device``, and the sizes. The model is the CPU config (``configs/synthbirds_train.yaml``'s sizes).

Usage: ``python benchmarks/train_step.py [--cases ...] [--runs 3] [--threads N] [--device cpu]``
"""

from __future__ import annotations

import argparse
import sys

from _cases import median_seconds, peak_mb_since, rss_mb, standard_main

HEADS = ("quaternion", "gramschmidt", "svd", "keypoints")
CASES = ["stage2_b12_p40_64", *(f"stage3_{h}_b12_64" for h in HEADS)]
OVERRIDES = ["model.image_size=64", "model.encoder_width=16", "model.uv_height=32", "model.texture_width=8",
             "train.render_size=64", "train.batch_size=12"]  # fmt: skip


class _Batch:
    """The fields of :class:`slopekp.data.cub.Batch` the steps read."""

    def __init__(self, img, mask, mask_dt, crop, ids):
        self.img, self.mask, self.mask_dt, self.crop, self.id = img, mask, mask_dt, crop, ids
        self.gt_camera = None


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import torch

    from slopekp.config import load_config
    from slopekp.mesh import load_template, template_fingerprint
    from slopekp.models.reconstructor import build_model
    from slopekp.render import Renderer, RenderSettings
    from slopekp.train.hypotheses import OffsetSettings, hypothesis_cameras
    from slopekp.train.multiplex import CameraMultiplex
    from slopekp.train.stage2 import build_renderer, stage2_losses
    from slopekp.train.stage3 import set_train_modes, stage3_loss

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    head = name.split("_")[1] if name.startswith("stage3") else "keypoints"
    cfg = load_config(overrides=[*OVERRIDES, f"model.pose_head={head}"])
    torch.manual_seed(0)
    template = load_template("procedural").to(device)
    model = build_model(cfg.model, template).to(device)
    B, S = cfg.train.batch_size, cfg.model.image_size
    g = torch.Generator().manual_seed(0)
    img = torch.rand(B, 3, S, S, generator=g).to(device)
    cams = hypothesis_cameras(4, 3)[torch.randint(0, 12, (B,), generator=g)].to(device)
    with torch.no_grad():
        mask = Renderer(RenderSettings(image_size=S))(template.verts, template.faces, cams).alpha
    batch = _Batch(img, mask, torch.zeros_like(mask), torch.tensor([[2.0 / S, -1.0, -1.0]] * B, device=device),
                   torch.arange(B, device=device))  # fmt: skip

    if name.startswith("stage2"):
        store = CameraMultiplex(40, template_fingerprint(template.verts, template.faces), OffsetSettings(1.0),
                                device=device)  # fmt: skip
        init = hypothesis_cameras().to(device)
        store.add(batch.id, init.expand(B, 40, 7), torch.full((B, 40), 1 / 40, device=device), batch.crop)
        renderer = build_renderer(cfg)
        params = [p for n, p in model.named_parameters() if not n.startswith("pose.")]
        opt = torch.optim.Adam(params, lr=1e-4)

        def step():
            net, cam, lk, q, logs, _, _ = stage2_losses(model, store, renderer, template, batch, cfg)
            opt.zero_grad(set_to_none=True)
            net.backward(inputs=params, retain_graph=True)
            opt.step()
            (lk.offsets.grad,) = torch.autograd.grad(cam, lk.offsets)
            store.adam_step(lk, lr=1e-4)

    else:
        params = [p for n, p in model.named_parameters() if n.startswith("pose.")]
        opt = torch.optim.Adam(params, lr=1e-4)
        set_train_modes(model, cfg)  # as Stage III sets them (frozen backbone and BatchNorm statistics)
        hard_size = model.pose.heatmap_side(model.encoder.feature_sizes["layer1"]) if head == "keypoints" else S
        hard = Renderer(RenderSettings(image_size=hard_size))

        def step():
            loss, _ = stage3_loss(model, batch, cams, cfg, template.faces, hard)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    rss0 = rss_mb()
    seconds = median_seconds(step, args.runs, device)
    queue.put({
        "case": name, "step_s": round(seconds, 4), "batch": B, "image_size": S,
        "hypotheses": 40 if name.startswith("stage2") else 1,
        "peak_mb": peak_mb_since(rss0),
        "threads": torch.get_num_threads(), "device": str(device),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return standard_main(__doc__, CASES, _run_case, argv)


if __name__ == "__main__":
    sys.exit(main())
