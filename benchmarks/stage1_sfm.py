"""Stage I's fit on real CUB SfM viewpoints, by schedule: prints one JSON object per line and case, with speed and
accuracy side by side.

The masks are the U-CMR bird template rendered from ``--views`` real CUB SfM cameras (``anno_train.mat``, evenly
spaced through the file) in a square crop around the projected template, at the quickstart's Stage I size; every
case fits them with the quickstart's ``multiplex.*`` settings and the case's overrides
(``quickstart`` and the schedule cases of ``benchmarks/stage1.py``), in this process, one
image per render call, with ``--threads`` threads. Needs ``../shared/data`` (or ``--shared``): the template
``template_shape/bird_template_arrays.npz`` and ``cub/sfm/anno_train.mat``.

Keys: ``case``; ``settings``; ``views``; ``fit_s``; ``images_per_s``; ``best_median_deg`` and
``closest_median_deg`` (median rotation error of each view's best-scored and closest hypothesis against its SfM
camera), ``best_mirror_median_deg`` (best, up to the depth mirror), ``best_iou_mean`` (its mask IoU);
``peak_mb``; ``threads``; ``device``.

Usage: ``python benchmarks/stage1_sfm.py [--cases quickstart,halve_4] [--views 100] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _cases import peak_mb_since, rss_mb, run_each, selected_cases
from stage1 import SCHEDULE_CASES

SCHEDULES = {"quickstart": (), **SCHEDULE_CASES}


def _views(shared: Path, template, n: int):
    """``n`` SfM cameras re-expressed in the NDC of a square crop (10% margin) around the projected template."""
    import numpy as np
    import torch

    from slopekp.data.matfiles import read_sfm_anno
    from slopekp.geometry.camera import affine_camera, camera_from_sfm, crop_around_points, project_points

    anno = read_sfm_anno(shared / "cub" / "sfm" / "anno_train.mat")
    idx = np.linspace(0, len(anno) - 1, n).round().astype(int)
    cam_px = camera_from_sfm(*(torch.tensor(a[idx], dtype=torch.float32) for a in (anno.rot, anno.scale, anno.trans)))
    crop = crop_around_points(project_points(template.verts[None], cam_px)[..., :2], 0.1)
    return affine_camera(cam_px, crop[:, 0], crop[:, 1:])


def _run_case(name: str, args: argparse.Namespace, queue) -> None:
    import numpy as np
    import torch
    from scipy.ndimage import distance_transform_edt

    from slopekp.commands.quickstart import QUICKSTART_DEFAULTS
    from slopekp.config import load_config
    from slopekp.eval.metrics import mask_iou
    from slopekp.geometry.camera import depth_mirror_cameras
    from slopekp.mesh import load_template
    from slopekp.render import Renderer, RenderSettings
    from slopekp.train.hypotheses import OffsetSettings, hypothesis_cameras_from_config
    from slopekp.train.scores import best_hypothesis, hypothesis_rotation_errors
    from slopekp.train.stage1 import fit_hypotheses, pruning_schedule

    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    template = load_template(str(shared / "template_shape" / "bird_template_arrays.npz"))
    gt = _views(shared, template, args.views)
    cfg = load_config(overrides=[*(o for o in QUICKSTART_DEFAULTS if o.startswith("multiplex.")), *SCHEDULES[name]])
    mp = cfg.multiplex
    renderer = Renderer(RenderSettings.from_config(cfg.render, mp.image_size))
    with torch.no_grad():
        mask = renderer(template.verts, template.faces, gt[:, None]).alpha[:, 0]
    side = max(mask.shape[-2:])
    dt = torch.from_numpy(np.stack([distance_transform_edt(m.numpy() <= 0.5) / side for m in mask])).float()
    init = hypothesis_cameras_from_config(mp)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    fit = fit_hypotheses(template.verts, template.faces, renderer, mask, dt, init,
                         settings=OffsetSettings.from_config(mp), steps=mp.steps, lr=mp.lr, peakiness=mp.peakiness,
                         prune=pruning_schedule(mp, init.shape[0]), best_iterate=mp.best_iterate)  # fmt: skip
    seconds = time.perf_counter() - t0
    n = torch.arange(args.views)
    b = best_hypothesis(fit.scores)
    err = torch.rad2deg(hypothesis_rotation_errors(fit.cameras, gt))
    err_m = torch.minimum(err, torch.rad2deg(hypothesis_rotation_errors(fit.cameras, depth_mirror_cameras(gt))))
    with torch.no_grad():
        best_mask = renderer(template.verts, template.faces, fit.cameras[n, b][:, None]).alpha[:, 0]
    queue.put({
        "case": name,
        "settings": list(SCHEDULES[name]),
        "views": args.views,
        "fit_s": round(seconds, 3),
        "images_per_s": round(args.views / seconds, 4),
        "best_median_deg": round(err[n, b].median().item(), 2),
        "closest_median_deg": round(err.amin(-1).median().item(), 2),
        "best_mirror_median_deg": round(err_m[n, b].median().item(), 2),
        "best_iou_mean": round(mask_iou(best_mask, mask).mean().item(), 3),
        "peak_mb": peak_mb_since(rss0),
        "threads": torch.get_num_threads(),
        "device": "cpu",
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(SCHEDULES), help=f"comma-separated subset of {', '.join(SCHEDULES)}")
    p.add_argument("--views", type=int, default=100, help="real SfM viewpoints to fit")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
                   help="the shared data folder (default ../shared/data beside the repository)")  # fmt: skip
    args = p.parse_args(argv)
    if not (Path(args.shared) / "cub" / "sfm" / "anno_train.mat").is_file():
        p.error(f"{args.shared}: no cub/sfm/anno_train.mat (pass --shared)")
    return run_each(selected_cases(p, args.cases, SCHEDULES), _run_case, args)


if __name__ == "__main__":
    sys.exit(main())
