"""Where a keypoint pose head loses its accuracy (issue 23): one JSON line per case.

Cases:

* ``trained`` — a keypoint head saved by ``benchmarks/head_study.py --save`` on a SynthBirds test split. Against
  the true camera's projections of the head's own 3D keypoints (the predicted shape's keypoint vertices), it
  reports the 2D error of the visible keypoints (NDC: the image spans 2), the share of the visible keypoints off the
  symmetry plane that are more than 0.1 off and nearer their mirror partner's projection (``mirror_swap_share``:
  left taken for right), how well the head's PnP weights tell a
  visible keypoint from a hidden one (``visibility_auc``: 0.5 = not at all, 1 = perfectly), and the median rotation
  error of PnP fed with: the head's own points and weights (``head``, what the evaluation scores); its points with
  the true visibility as weights (``true_visibility``); the same without the points more than 0.1 off
  (``true_visibility_inliers``); and the head's points and weights without RANSAC (``no_ransac``).
* ``ceiling`` — no network: random SynthBirds shapes (:func:`slopekp.data.synth.bird.sample_bird`) under random
  rotations, their keypoints projected exactly (visible ones only) and solved by the head's PnP against the
  **template's** keypoints, as the head does with an untrained shape. The error is what the shape difference
  alone costs (``median_deg``), also with Gaussian noise of ``--noise`` NDC on the 2D points (``noisy_median_deg``);
  ``shape_shift_median_ndc`` is how far the shape difference moves a visible keypoint's projection (scale 0.7).

Keys: ``case``, the numbers above, ``images``, ``seconds``, ``peak_mb``, ``threads``, ``device``.

Usage::

    python benchmarks/head_study.py --data DATA --cases kp_default --save MODELS
    python benchmarks/keypoint_errors.py --data DATA --state MODELS/kp_default_seed0.pt [--set model.x=y ...]
    python benchmarks/keypoint_errors.py --cases ceiling [--images 200] [--noise 0.05]

``--set`` repeats the overrides the head was trained with (its architecture). Results: docs/results/head_study.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _cases import peak_mb_since, rss_mb, run_each, selected_cases

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthbirds_train.yaml")
CASES = ("trained", "ceiling")
INLIER_NDC = 0.1


def auc(labels, scores) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (the rank-sum form; ties get mean ranks)."""
    import torch

    labels, scores = labels.flatten().bool(), scores.flatten().double()
    n1 = int(labels.sum())
    n0 = labels.numel() - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.double)
    for v in scores.unique():  # mean rank within ties
        tie = scores == v
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _trained(args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from slopekp.config import load_config
    from slopekp.data.cub import collate_samples
    from slopekp.eval.evaluate import benchmark_dataset
    from slopekp.eval.metrics import rotation_error
    from slopekp.geometry.camera import project_points
    from slopekp.mesh import load_template
    from slopekp.models.encoder import normalize_image
    from slopekp.models.keypoints import PnPSettings, keypoint_visibility
    from slopekp.models.reconstructor import build_model
    from slopekp.render.renderer import Renderer, RenderSettings

    cfg = load_config(CONFIG, ["model.pose_head=keypoints", *args.set, "device=cpu"])
    template = load_template(cfg.template.path)
    model = build_model(cfg.model, template, cfg.template.symmetry_tol)
    model.load_state_dict(torch.load(args.state, map_location="cpu", weights_only=True))
    model.eval()
    head = model.pose
    hard = Renderer(RenderSettings(image_size=head.target_size(model.encoder)))
    data = benchmark_dataset(args.data, "test", cfg.model.image_size)
    sym = template.symmetry()
    mirror = torch.arange(template.verts.shape[0])
    mirror[sym.left], mirror[sym.right] = sym.right, sym.left
    partner = mirror[head.keypoint_index]  # each keypoint's mirror vertex (itself on the plane)
    parts: dict[str, list] = {k: [] for k in ("p2", "conf", "true2", "vis", "p3", "gt", "cam", "partner2")}
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=32, collate_fn=collate_samples):
            pred = model(normalize_image(batch.img))
            vis = keypoint_visibility(pred.verts, template.faces, batch.gt_camera, head.keypoint_index, hard)
            for k, v in (("p2", pred.pose_extras["points2d"]), ("conf", pred.pose_extras["confidence"]),
                         ("true2", vis.points2d), ("vis", vis.visible), ("p3", pred.verts[:, head.keypoint_index]),
                         ("gt", batch.gt_camera), ("cam", pred.camera)):  # fmt: skip
                parts[k].append(v)
            parts["partner2"].append(project_points(pred.verts[:, partner], batch.gt_camera)[..., :2])
    p = {k: torch.cat(v) for k, v in parts.items()}
    err2d = (p["p2"] - p["true2"]).norm(dim=-1)
    seen = err2d[p["vis"]]
    # left/right swaps: a visible keypoint off the symmetry plane, > INLIER_NDC off, nearer its mirror partner
    off_plane = p["vis"] & (partner != head.keypoint_index)[None]
    swapped = (err2d > INLIER_NDC) & ((p["p2"] - p["partner2"]).norm(dim=-1) < err2d)

    def median_deg(camera) -> float:
        return round(float(rotation_error(camera, p["gt"]).rad2deg().median()), 2)

    pnp = head.pnp
    vis = p["vis"].to(p["conf"].dtype)
    tiny = 1e-6  # every weight positive, as the head's own

    def solved(weights, settings: PnPSettings = pnp):
        return settings.solve(p["p2"], p["p3"], weights + tiny).camera

    return {
        "images": len(data),
        "visible_share": round(float(vis.mean()), 3),
        "err2d_visible_median": round(float(seen.median()), 4),
        "err2d_visible_p90": round(float(seen.quantile(0.9)), 4),
        "err2d_hidden_median": round(float(err2d[~p["vis"]].median()), 4),
        "mirror_swap_share": round(float(swapped[off_plane].float().mean()), 3),
        "visibility_auc": round(auc(p["vis"], p["conf"]), 3),
        "head": median_deg(p["cam"]),
        "true_visibility": median_deg(solved(vis)),
        "true_visibility_inliers": median_deg(solved(vis * (err2d < INLIER_NDC))),
        "no_ransac": median_deg(PnPSettings(robust=False).solve(p["p2"], p["p3"], p["conf"]).camera),
    }


def _ceiling(args) -> dict:
    import numpy as np
    import torch

    from slopekp.data.synth.bird import sample_bird
    from slopekp.eval.metrics import rotation_error
    from slopekp.geometry.camera import join_camera, project_points
    from slopekp.geometry.rotations import random_quat
    from slopekp.mesh import farthest_point_sampling, load_template
    from slopekp.models.keypoints import PnPSettings, keypoint_visibility
    from slopekp.render.renderer import Renderer, RenderSettings

    template = load_template("procedural")
    rng = np.random.default_rng(args.seed)
    verts = torch.stack([sample_bird(rng, template).verts for _ in range(args.images)]).float()
    gen = torch.Generator().manual_seed(args.seed)
    n = args.images
    cams = join_camera(torch.full((n,), 0.7), torch.zeros(n, 2), random_quat(n, generator=gen))
    idx = farthest_point_sampling(template.verts, 32)
    vis = keypoint_visibility(verts, template.faces, cams, idx, Renderer(RenderSettings(image_size=32)))
    weights = vis.visible.float() + 1e-6
    p3 = template.verts.float()[idx].expand(n, -1, -1)
    pnp = PnPSettings()
    noise = args.noise * torch.randn(vis.points2d.shape, generator=gen)
    exact = pnp.solve(vis.points2d, p3, weights).camera
    noisy = pnp.solve(vis.points2d + noise, p3, weights).camera
    truth = pnp.solve(vis.points2d, verts[:, idx], weights).camera  # the true shape: exact up to PnP itself
    shift = (vis.points2d - project_points(p3, cams)[..., :2]).norm(dim=-1)[vis.visible]  # true vs template
    return {
        "images": n,
        "visible_share": round(float(vis.visible.float().mean()), 3),
        "shape_shift_median_ndc": round(float(shift.median()), 4),
        "median_deg": round(float(rotation_error(exact, cams).rad2deg().median()), 2),
        "noise_ndc": args.noise,
        "noisy_median_deg": round(float(rotation_error(noisy, cams).rad2deg().median()), 2),
        "true_shape_median_deg": round(float(rotation_error(truth, cams).rad2deg().median()), 3),
    }


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    row = _trained(args) if name == "trained" else _ceiling(args)
    queue.put({"case": name, **row, "seconds": round(time.perf_counter() - t0, 1), "peak_mb": peak_mb_since(rss0),
               "threads": torch.get_num_threads(), "device": "cpu"})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="trained", help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--data", help="a SynthBirds folder with a test split (case trained)")
    p.add_argument("--state", help="a state dict written by head_study.py --save (case trained)")
    p.add_argument("--set", nargs="*", default=[], help="the overrides the head was trained with")
    p.add_argument("--images", type=int, default=200, help="random birds of the ceiling case")
    p.add_argument("--noise", type=float, default=0.05, help="2D noise (NDC) of the ceiling case's second number")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    names = selected_cases(p, args.cases, CASES)
    if "trained" in names:
        if not args.data or not os.path.isdir(args.data):
            p.error(f"--data {args.data}: no such folder (case trained needs a SynthBirds folder)")
        if not args.state or not os.path.isfile(args.state):
            p.error(f"--state {args.state}: no such file (case trained needs head_study.py --save's output)")
    return run_each(names, _run_case, args)


if __name__ == "__main__":
    sys.exit(main())
