"""Report of a camera multiplex (Stage I): how well the hypotheses explain the masks, and — where ground truth
cameras exist (SynthBirds, CUB SfM) — how close they are to the true rotation.

This is the only place in Stage I that reads ground-truth cameras: it opens its own data set with
``return_gt_camera=True`` (no jitter, no flips; the store re-expresses its cameras for those crops).

Output (``out_dir``):
* ``metrics.json`` — see :func:`multiplex_metrics` for the keys;
* ``best_score_hist.png`` — histogram of each image's best hypothesis score;
* ``rotation_error_hist.png`` — histogram of the best hypothesis' rotation error (with ground truth only);
* ``examples.png`` — example crops with the best hypothesis' silhouette outline (red) and the mask outline
  (green), annotated with the best score (and the rotation error with ground truth);
* ``README.md`` — a short summary in words.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from slopekp.data.cub import collate_samples
from slopekp.eval.metrics import mask_iou
from slopekp.geometry.camera import depth_mirror_cameras
from slopekp.train.losses import mask_loss
from slopekp.train.multiplex import CameraMultiplex
from slopekp.train.scores import best_hypothesis, hypothesis_rotation_errors
from slopekp.utils import atomic_save_json, atomic_write
from slopekp.viz.figures import draw_text, histogram_image, make_grid, overlay_mask_outline, save_png, to_uint8

#: Rotation errors below this many degrees count as "right" (the usual viewpoint-accuracy threshold).
ACCURACY_DEG = 30.0


@dataclass
class MultiplexEvaluation:
    """Per-image numbers behind the report (N images of the store that the data set holds)."""

    ids: Tensor
    """``(N,)`` int64 image ids."""
    best_score: Tensor
    """``(N,)`` score of each image's best hypothesis."""
    best_loss: Tensor
    """``(N,)`` mask loss of the best hypothesis' silhouette."""
    best_iou: Tensor
    """``(N,)`` IoU of the best hypothesis' silhouette with the mask (both binarised at 0.5)."""
    best_err: Tensor | None
    """``(N,)`` rotation error (radians) of the best hypothesis, or None without ground truth."""
    closest_err: Tensor | None
    """``(N,)`` smallest rotation error over all hypotheses."""
    best_err_mirror: Tensor | None
    """``(N,)`` best hypothesis' error to the nearer of the GT rotation and its depth mirror."""
    closest_err_mirror: Tensor | None
    """``(N,)`` the same for the closest hypothesis."""


def evaluate_multiplex(
    store: CameraMultiplex,
    dataset,
    verts: Tensor,
    faces: Tensor,
    renderer,
    batch_size: int = 32,
    examples: int = 0,
) -> tuple[MultiplexEvaluation, list[np.ndarray]]:
    """Evaluate the store on ``dataset`` (a :class:`~slopekp.data.cub.CubDataset` at the renderer's size).

    Args:
        store: the camera multiplex.
        dataset: items with ``mask``, ``mask_dt``, ``crop``, ``id`` and optionally ``gt_camera``; only items
            whose id is in the store are evaluated.
        verts, faces: ``(V, 3)`` and ``(F, 3)`` template mesh.
        renderer: silhouette renderer of the masks' size.
        examples: how many annotated example tiles to return (first images of the data set).

    Returns:
        ``(MultiplexEvaluation, tiles)`` where ``tiles`` are ``(H, W, 3)`` uint8 images.
    """


    keep = [i for i in range(len(dataset)) if i in store]
    if not keep:
        raise ValueError(f"none of the {len(dataset)} images of the data set is in the camera multiplex")
    loader = DataLoader(Subset(dataset, keep), batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    parts: dict[str, list[Tensor]] = {k: [] for k in ("ids", "score", "loss", "iou", "b", "c", "bm", "cm")}
    tiles: list[np.ndarray] = []
    dev = store.device
    for batch in loader:
        batch = batch.to(dev)
        cams = store.cameras(batch.id, batch.crop)  # (B, P, 7)
        scores = store.get_scores(batch.id)
        best = best_hypothesis(scores)
        ar = torch.arange(len(batch), device=dev)
        best_cams = cams[ar, best]
        with torch.no_grad():
            sil = renderer(verts, faces, best_cams[:, None], mode="silhouette").alpha[:, 0]  # (B, H, W)
        parts["ids"].append(batch.id.cpu())
        parts["score"].append(scores[ar, best].cpu())
        parts["loss"].append(mask_loss(sil, batch.mask, batch.mask_dt).cpu())
        parts["iou"].append(mask_iou(sil, batch.mask).cpu())
        err = None
        if batch.gt_camera is not None:
            err = hypothesis_rotation_errors(cams, batch.gt_camera)
            err_m = torch.minimum(err, hypothesis_rotation_errors(cams, depth_mirror_cameras(batch.gt_camera)))
            parts["b"].append(err[ar, best].cpu())
            parts["c"].append(err.amin(-1).cpu())
            parts["bm"].append(err_m[ar, best].cpu())
            parts["cm"].append(err_m.amin(-1).cpu())
        for j in range(min(len(batch), examples - len(tiles))):
            text = f"{scores[j, best[j]]:.2f}" + (f" {math.degrees(err[j, best[j]]):.0f}deg" if err is not None else "")
            tiles.append(_example_tile(batch.img[j], batch.mask[j], sil[j], text))
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
    ev = MultiplexEvaluation(
        ids=cat["ids"],
        best_score=cat["score"],
        best_loss=cat["loss"],
        best_iou=cat["iou"],
        best_err=cat["b"],
        closest_err=cat["c"],
        best_err_mirror=cat["bm"],
        closest_err_mirror=cat["cm"],
    )
    return ev, tiles


@dataclass(frozen=True)
class ErrorStats:
    """Summary of rotation errors over images."""

    mean_deg: float
    median_deg: float
    pct_under_30deg: float
    """Percentage of images with an error under :data:`ACCURACY_DEG` (30°)."""

    @classmethod
    def from_errors(cls, err: Tensor) -> ErrorStats:
        """From ``(N,)`` errors in radians."""
        deg = torch.rad2deg(err.double())
        return cls(float(deg.mean()), float(deg.median()), float(100.0 * (deg < ACCURACY_DEG).double().mean()))


@dataclass(frozen=True)
class MultiplexMetrics:
    """The report's numbers (``metrics.json`` is :meth:`to_json`)."""

    num_images: int
    num_hypotheses: int
    best_score_mean: float
    best_score_median: float
    best_mask_loss_mean: float
    best_mask_loss_median: float
    best_iou_mean: float
    best_iou_median: float
    best_iou_pct_at_least_0_9: float
    rotation_error_best: ErrorStats | None = None
    """Best (argmax-score) hypothesis vs ground truth; None without ground truth."""
    rotation_error_closest: ErrorStats | None = None
    """Closest hypothesis vs ground truth: is the right answer in the multiplex at all?"""
    rotation_error_best_up_to_depth_mirror: ErrorStats | None = None
    rotation_error_closest_up_to_depth_mirror: ErrorStats | None = None

    @property
    def has_ground_truth(self) -> bool:
        return self.rotation_error_best is not None

    def to_json(self) -> dict:
        """The ``metrics.json`` layout: ``best_score`` / ``best_mask_loss`` / ``best_iou`` as ``{mean, median}``
        (``best_iou`` also ``pct_at_least_0.9``), ``has_ground_truth``, and the four rotation-error entries
        (``{mean_deg, median_deg, pct_under_30deg}``) when there is ground truth."""
        out = {
            "num_images": self.num_images,
            "num_hypotheses": self.num_hypotheses,
            "best_score": {"mean": self.best_score_mean, "median": self.best_score_median},
            "best_mask_loss": {"mean": self.best_mask_loss_mean, "median": self.best_mask_loss_median},
            "best_iou": {
                "mean": self.best_iou_mean,
                "median": self.best_iou_median,
                "pct_at_least_0.9": self.best_iou_pct_at_least_0_9,
            },
            "has_ground_truth": self.has_ground_truth,
        }
        for name in (
            "rotation_error_best",
            "rotation_error_closest",
            "rotation_error_best_up_to_depth_mirror",
            "rotation_error_closest_up_to_depth_mirror",
        ):
            stats = getattr(self, name)
            if stats is not None:
                out[name] = asdict(stats)
        return out


def multiplex_metrics(ev: MultiplexEvaluation, num_hypotheses: int) -> MultiplexMetrics:
    """Summarise an evaluation (means, medians, percentages)."""

    def stats(e: Tensor | None) -> ErrorStats | None:
        return None if e is None else ErrorStats.from_errors(e)

    score, loss, iou = ev.best_score.double(), ev.best_loss.double(), ev.best_iou.double()
    return MultiplexMetrics(
        num_images=int(ev.ids.numel()),
        num_hypotheses=int(num_hypotheses),
        best_score_mean=float(score.mean()),
        best_score_median=float(score.median()),
        best_mask_loss_mean=float(loss.mean()),
        best_mask_loss_median=float(loss.median()),
        best_iou_mean=float(iou.mean()),
        best_iou_median=float(iou.median()),
        best_iou_pct_at_least_0_9=float(100.0 * (ev.best_iou >= 0.9).double().mean()),
        rotation_error_best=stats(ev.best_err),
        rotation_error_closest=stats(ev.closest_err),
        rotation_error_best_up_to_depth_mirror=stats(ev.best_err_mirror),
        rotation_error_closest_up_to_depth_mirror=stats(ev.closest_err_mirror),
    )


def write_multiplex_report(
    store: CameraMultiplex,
    dataset,
    out_dir: str | os.PathLike,
    *,
    template,
    renderer,
    info: dict | None = None,
    num_examples: int = 24,
) -> MultiplexMetrics:
    """Evaluate ``store`` on ``dataset`` and write the report files into ``out_dir``.

    Args:
        dataset: the data set at the renderer's size without jitter or flips, returning ground-truth cameras
            when they exist (``CubDataset(..., return_gt_camera=True)``); the rotation errors need them.
        info: extra entries for ``metrics.json`` (the data folder, split, template, mask size).

    Returns the metrics (also written to ``out_dir/metrics.json``).
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = store.device
    ev, tiles = evaluate_multiplex(
        store, dataset, template.verts.to(dev), template.faces.to(dev), renderer, examples=num_examples
    )
    metrics = multiplex_metrics(ev, store.num_hypotheses)
    record = metrics.to_json()
    record.update(info or {})
    atomic_save_json(record, out_dir / "metrics.json")
    save_png(
        out_dir / "best_score_hist.png",
        histogram_image(ev.best_score.numpy(), bins=20, range=(0.0, 1.0), title="best hypothesis score"),
    )
    if ev.best_err is not None:
        save_png(
            out_dir / "rotation_error_hist.png",
            histogram_image(
                torch.rad2deg(ev.best_err).numpy(),
                bins=18,
                range=(0.0, 180.0),
                title="best rotation error (deg)",
            ),
        )
    if tiles:
        save_png(out_dir / "examples.png", make_grid(tiles, ncols=min(6, len(tiles))))
    with atomic_write(out_dir / "README.md", "w") as f:
        f.write(_summary_markdown(record, has_examples=bool(tiles)))
    return metrics


def _example_tile(img: Tensor, mask: Tensor, sil: Tensor, text: str, min_side: int = 128) -> np.ndarray:
    """Image with mask (green) and silhouette (red) outlines, upscaled (nearest) to at least ``min_side`` px."""

    scale = max(1, -(-min_side // img.shape[-1]))

    def up(a: np.ndarray) -> np.ndarray:
        im = Image.fromarray(a)
        return np.asarray(im.resize((im.width * scale, im.height * scale), Image.NEAREST)).copy()

    base = up(to_uint8(img))
    m = up(to_uint8(mask.clamp(0, 1)))[..., 0] / 255.0
    s = up(to_uint8(sil.clamp(0, 1)))[..., 0] / 255.0
    tile = overlay_mask_outline(base, m, color=(0, 200, 0))
    tile = overlay_mask_outline(tile, s, color=(255, 0, 0))
    return draw_text(tile, text)


def _summary_markdown(m: dict, has_examples: bool) -> str:
    lines = [
        "# Camera multiplex report",
        "",
        f"- images: {m['num_images']}, hypotheses per image: {m['num_hypotheses']}, "
        f"masks {m['image_size']}² px, template `{m['template']}`, data `{m['data_dir']}` ({m['split']})",
        f"- best hypothesis: score mean {m['best_score']['mean']:.3f}; silhouette IoU with the mask mean "
        f"{m['best_iou']['mean']:.3f}, median {m['best_iou']['median']:.3f}, "
        f"{m['best_iou']['pct_at_least_0.9']:.1f}% of images ≥ 0.9",
    ]
    if m["has_ground_truth"]:
        key = f"pct_under_{ACCURACY_DEG:g}deg"
        for name, label in (
            ("rotation_error_best", "best hypothesis vs ground truth"),
            (
                "rotation_error_closest",
                "closest hypothesis vs ground truth (is the answer in the multiplex?)",
            ),
            ("rotation_error_best_up_to_depth_mirror", "best hypothesis, up to the depth-mirror ambiguity"),
            ("rotation_error_closest_up_to_depth_mirror", "closest hypothesis, up to the depth mirror"),
        ):
            r = m[name]
            lines.append(
                f"- {label}: mean {r['mean_deg']:.1f}°, median {r['median_deg']:.1f}°, "
                f"{r[key]:.1f}% under {ACCURACY_DEG:g}°"
            )
        lines += [
            "",
            "Weak perspective cannot tell a rotation from its depth mirror "
            "`R' = diag(1,1,−1)·R·diag(−1,1,1)` for a mirror-symmetric shape (METHOD §2.3): both give the "
            "same silhouette, so masks alone cannot decide between them; the `up_to_depth_mirror` rows count "
            "either as right.",
        ]
    else:
        lines.append("- no ground-truth cameras (`anno_<split>.mat`) in the data folder: rotation errors skipped")
    lines += ["", "Files: `metrics.json`, `best_score_hist.png`"]
    if m["has_ground_truth"]:
        lines[-1] += ", `rotation_error_hist.png`"
    if has_examples:
        lines[-1] += ", `examples.png` (red: best hypothesis silhouette, green: mask; label: score [and error])"
    return "\n".join(lines) + "\n"
