"""Brute-force references of the DAVIS measures, written from their definitions in words (not from slopekp's code
nor the toolkit's), and a writer of tiny DAVIS folders, for the tests of tests/video."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from slopekp.data.video import save_label_png


def reference_boundary(mask: np.ndarray) -> np.ndarray:
    """A pixel is on the boundary when it differs from one of its right, lower, lower-right neighbours that lie in
    the image."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1)):
                if y + dy < h and x + dx < w and mask[y + dy, x + dx] != mask[y, x]:
                    out[y, x] = True
    return out


def reference_pr(gt, pred, void=None, radius=None) -> tuple[float, float]:
    """Boundary precision and recall: the share of one boundary's pixels with a pixel of the other at a distance
    of at most ``radius`` (default ``ceil(0.008 · diagonal)``), every pair compared; void removed from both masks."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    if radius is None:
        h, w = gt.shape
        radius = math.ceil(0.008 * math.sqrt(h * h + w * w))
    g = np.argwhere(reference_boundary(gt))
    p = np.argwhere(reference_boundary(pred))
    if len(g) == 0 and len(p) == 0:
        return 1.0, 1.0
    if len(p) == 0:
        return 1.0, 0.0
    if len(g) == 0:
        return 0.0, 1.0
    d2 = ((p[:, None, :] - g[None, :, :]) ** 2).sum(-1)  # every pair of a predicted and a ground-truth pixel
    near = d2 <= radius * radius
    return float(near.any(axis=1).mean()), float(near.any(axis=0).mean())


def reference_f(gt, pred, void=None, radius=None) -> float:
    p, r = reference_pr(gt, pred, void, radius)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def reference_j(gt, pred, void=None) -> float:
    keep = np.ones(gt.shape, bool) if void is None else ~void
    union = int(((gt | pred) & keep).sum())
    return 1.0 if union == 0 else int((gt & pred & keep).sum()) / union


def blobs(rng, shape, n) -> np.ndarray:
    """A mask of ``n`` random discs and rectangles, some cut by the image edge."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.integers(-3, h + 3), rng.integers(-3, w + 3)
        if rng.random() < 0.5:
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(2, 12) ** 2
        else:
            m[max(cy, 0) : max(cy + rng.integers(1, 15), 0), max(cx, 0) : max(cx + rng.integers(1, 15), 0)] = True
    return m


def write_davis(root: Path, labels: list[np.ndarray], name: str = "hand", split: str = "val") -> Path:
    """A DAVIS folder ``root/DAVIS`` with one sequence whose annotations are ``labels`` (frames: grey, the objects
    lighter); returns ``root``."""
    img_dir = root / "DAVIS" / "JPEGImages" / "480p" / name
    ann_dir = root / "DAVIS" / "Annotations" / "480p" / name
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t, lab in enumerate(labels):
        frame = np.full((*lab.shape, 3), 90, np.uint8)
        frame[(lab > 0) & (lab < 255)] = 200
        Image.fromarray(frame).save(img_dir / f"{t:05d}.jpg")
        save_label_png(ann_dir / f"{t:05d}.png", lab)
    sets = root / "DAVIS" / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{split}.txt").write_text(f"{name}\n")
    return root


def write_masks(folder: Path, labels: list[np.ndarray], name: str = "hand") -> Path:
    """Predicted masks ``folder/<name>/<frame>.png`` (palette PNGs of ids); returns ``folder``."""
    (folder / name).mkdir(parents=True)
    for t, lab in enumerate(labels):
        save_label_png(folder / name / f"{t:05d}.png", lab)
    return folder
