"""The pose heads' ceiling (issue 23): each head trained on the **ground-truth** cameras of a SynthBirds folder,
by case, printing one JSON object per line and case, with cost and accuracy side by side.

A case is a list of config overrides on ``configs/synthbirds_train.yaml``. Each case builds the network from
scratch (no Stage II: the shape comes from an untrained shape head, close to the template), then

1. sets the BatchNorm running statistics from ``--calibrate`` batches of training images (train mode, no
   gradient), as a Stage II run leaves them; with ``train.frozen_batchnorm`` (the default) they then stay;
2. trains the pose head and the encoder (``train.freeze_backbone=false``, as the quickstart) for
   ``train.pose_epochs`` epochs with Stage III's loss (:func:`slopekp.train.stage3.stage3_loss`) and learning-rate
   schedule against the true camera of each (jittered, flipped) crop;
3. evaluates on the test split with the product's evaluation (:func:`slopekp.eval.evaluate.evaluate_model`).

Keys: ``case``; ``settings`` (the case's overrides, then ``--set``'s); ``head``; ``seed``; ``images`` (training);
``steps``; ``train_s`` and ``eval_s`` (wall time); ``median_deg``, ``mean_deg``, ``acc15`` and ``acc30`` (test
rotation error; share of images under 15° and 30°); ``mirror_median_deg`` (up to the depth mirror); ``iou`` (mask
IoU at 0.5 of the template under the predicted camera); ``train_median_deg`` (the same network on the first
``--train-eval`` training images, no augmentation: over- or under-fitting); ``peak_mb``; ``threads``; ``device``.

Usage::

    python benchmarks/head_study.py --data DATA [--cases kp_base,quat_base] [--seed 0] [--threads 1] \
        [--set train.pose_epochs=2 ...] [--save FOLDER]

``DATA`` is a SynthBirds folder (``slopekp data synth --out DATA --n-train 2000 --n-test 400``). The results and
commands are in docs/results/head_study.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _cases import peak_mb_since, rss_mb, run_each, selected_cases

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthbirds_train.yaml")
#: the settings before this study (configs/synthbirds_train.yaml's defaults then); every case starts from them
BEFORE = ("model.heatmap_sigma=0.05", "train.pose_lr_schedule=constant")
KP = ("model.pose_head=keypoints", *BEFORE)
QUAT = ("model.pose_head=quaternion", *BEFORE)
#: case -> overrides on configs/synthbirds_train.yaml (a later override wins)
CASES = {
    "kp_base": KP,
    "quat_base": QUAT,
    "kp_default": ("model.pose_head=keypoints",),  # today's configs/synthbirds_train.yaml
    "quat_default": ("model.pose_head=quaternion",),
    "kp_sigma10": (*KP, "model.heatmap_sigma=0.1"),
    "kp_sigma15": (*KP, "model.heatmap_sigma=0.15"),
    "kp_sigma20": (*KP, "model.heatmap_sigma=0.2"),
    "kp_sigma15_cos": (*KP, "model.heatmap_sigma=0.15", "train.pose_lr_schedule=cosine"),
    "kp_sigma15_lr2e-3": (*KP, "model.heatmap_sigma=0.15", "train.lr=0.002"),
    "kp_sigma15_cos_lr2e-3": (*KP, "model.heatmap_sigma=0.15", "train.pose_lr_schedule=cosine", "train.lr=0.002"),
    "kp_sigma15_cos_ep20": (*KP, "model.heatmap_sigma=0.15", "train.pose_lr_schedule=cosine", "train.pose_epochs=20"),
    "kp_occ": (*KP, "model.heatmap_occluded=true"),
    "kp_occ_sigma10": (*KP, "model.heatmap_occluded=true", "model.heatmap_sigma=0.1"),
    "kp_hm64": (*KP, "model.heatmap_size=64"),
    "kp_in128": (*KP, "model.image_size=128"),
    "kp_w32": (*KP, "model.encoder_width=32"),
    "kp_kw32": (*KP, "model.keypoint_width=32"),
    "kp_ep20": (*KP, "train.pose_epochs=20"),
    "kp_bn_train": (*KP, "train.frozen_batchnorm=false"),
    "kp_end2end": (*KP, "model.end2end=true"),
    "kp_hmw100": (*KP, "train.heatmap_weight=100"),
    "kp_k16": (*KP, "model.num_keypoints=16"),
    "kp_k64": (*KP, "model.num_keypoints=64"),
    "quat_cos": (*QUAT, "train.pose_lr_schedule=cosine"),
    "quat_cos_lr2e-3": (*QUAT, "train.pose_lr_schedule=cosine", "train.lr=0.002"),
    "quat_cos_ep20": (*QUAT, "train.pose_lr_schedule=cosine", "train.pose_epochs=20"),
    "quat_in128": (*QUAT, "model.image_size=128"),
    "quat_w32": (*QUAT, "model.encoder_width=32"),
    "quat_ep20": (*QUAT, "train.pose_epochs=20"),
    "quat_bn_train": (*QUAT, "train.frozen_batchnorm=false"),
    "quat_lr3e-4": (*QUAT, "train.lr=0.0003"),
    "quat_lr2e-3": (*QUAT, "train.lr=0.002"),
}


def _median(x) -> float:
    return float(x.median()) if x.numel() else float("nan")


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import torch
    from torch.utils.data import DataLoader

    from slopekp.config import load_config
    from slopekp.data.cub import collate_samples
    from slopekp.eval.evaluate import benchmark_dataset, evaluate_model
    from slopekp.mesh import load_template
    from slopekp.models.encoder import normalize_image
    from slopekp.models.reconstructor import build_model
    from slopekp.train import run
    from slopekp.train.stage2 import build_train_dataset
    from slopekp.train.stage3 import pose_training, set_train_modes, stage3_loss

    overrides = [*CASES[name], *args.set, f"seed={args.seed}", "device=cpu"]
    cfg = load_config(CONFIG, overrides)
    torch.set_num_threads(args.threads)
    run.setup(cfg)
    template = load_template(cfg.template.path)
    model = build_model(cfg.model, template, cfg.template.symmetry_tol)
    dataset = build_train_dataset(cfg, args.data, return_gt_camera=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_samples, generator=gen)  # fmt: skip
    rss0 = rss_mb()
    t0 = time.perf_counter()

    # 1. BatchNorm statistics as a Stage II run would leave them: cumulative averages over a few batches
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        model.train()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        for i, batch in enumerate(loader):
            if i >= args.calibrate:
                break
            model.encoder(normalize_image(batch.img))
        for m in bns:
            m.momentum = 0.1

    # 2. the pose head and the encoder on the true cameras
    params, opt, hard = pose_training(model, cfg)
    steps, total = 0, cfg.train.pose_epochs * len(loader)
    set_train_modes(model, cfg)
    for _ in range(cfg.train.pose_epochs):
        for batch in loader:
            loss, _ = stage3_loss(model, batch, batch.gt_camera, cfg, template.faces, hard)
            run.set_lr(opt, run.scheduled_lr(cfg.train.lr, steps, total, cfg.train.pose_lr_schedule))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            opt.step()
            steps += 1
    train_s = time.perf_counter() - t0
    if args.save:  # the trained network, for diagnostics (a plain state dict: loads with weights_only=True)
        os.makedirs(args.save, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(args.save, f"{name}_seed{args.seed}.pt"))

    # 3. the product's evaluation, on the test split and on training images without augmentation
    t1 = time.perf_counter()
    test = evaluate_model(model, benchmark_dataset(args.data, "test", cfg.model.image_size), template.faces)
    eval_s = time.perf_counter() - t1
    seen = evaluate_model(model, benchmark_dataset(args.data, "train", cfg.model.image_size,
                                                   max_items=args.train_eval), template.faces)  # fmt: skip
    err = test.per_image["rotation_error_deg"]
    queue.put({
        "case": name,
        "settings": [*CASES[name], *args.set],
        "head": cfg.model.pose_head,
        "seed": cfg.seed,
        "images": len(dataset),
        "steps": steps,
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "median_deg": round(_median(err), 2),
        "mean_deg": round(float(err.mean()), 2),
        "acc15": round(float((err < 15).double().mean()), 3),
        "acc30": round(float((err < 30).double().mean()), 3),
        "mirror_median_deg": round(_median(test.per_image["rotation_error_up_to_mirror_deg"]), 2),
        "iou": round(test.metrics["mask_iou_0.5"], 3),
        "train_median_deg": round(_median(seen.per_image["rotation_error_deg"]), 2),
        "peak_mb": peak_mb_since(rss0),
        "threads": torch.get_num_threads(),
        "device": "cpu",
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a SynthBirds folder with train and test splits")
    p.add_argument("--cases", default="kp_base,quat_base", help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each case (default 1)")
    p.add_argument("--calibrate", type=int, default=20, help="batches that set the BatchNorm statistics")
    p.add_argument("--train-eval", type=int, default=200, help="training images evaluated without augmentation")
    p.add_argument("--save", default="", help="folder to write each case's trained state dict into (CASE_seedS.pt)")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every case (e.g. train.pose_epochs=2)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder")
    return run_each(selected_cases(p, args.cases, CASES), _run_case, args)


if __name__ == "__main__":
    sys.exit(main())
