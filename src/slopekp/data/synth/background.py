"""SynthBirds clutter: the background behind the bird, in each kind of :mod:`slopekp.data.synth.style`, and the
occluder (a branch or leaves) in front of it."""

from __future__ import annotations

import cv2
import numpy as np

from slopekp.data.synth.colour import hsv_colour
from slopekp.data.synth.style import BACKGROUNDS, pick_kind

__all__ = [
    "flat_background",
    "noise_background",
    "pattern_background",
    "random_background",
    "random_occluder",
    "styled_background",
]


def _natural_colour(rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(5)
    h, s, v = [
        (rng.uniform(190, 215), rng.uniform(0.2, 0.6), rng.uniform(0.7, 0.95)),  # sky
        (rng.uniform(70, 140), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.7)),  # foliage
        (rng.uniform(20, 45), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.6)),  # bark / soil
        (rng.uniform(0, 360), rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.9)),  # grey
        (rng.uniform(35, 60), rng.uniform(0.2, 0.5), rng.uniform(0.5, 0.85)),  # sand / straw
    ][kind]
    return hsv_colour(h / 360.0, s, v)


def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A cluttered natural-looking background (H, W, 3) float32 in [0, 1]: a colour gradient, blurred blobs,
    low-frequency colour noise, sometimes branches, fine noise and a final blur. Public; never plain black."""
    if height <= 0 or width <= 0:
        raise ValueError(f"background size must be positive, got {height}x{width}")
    # the smooth layers (gradient, blobs, coarse noise) are built at 1/4 resolution and upsampled
    h4, w4 = max(2, (height + 3) // 4), max(2, (width + 3) // 4)
    yy, xx = np.mgrid[0:h4, 0:w4].astype(np.float32)
    yy, xx = (yy + 0.5) * height / h4, (xx + 0.5) * width / w4
    ang = rng.uniform(0, 2 * np.pi)
    t = np.cos(ang) * xx / width + np.sin(ang) * yy / height
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    # one coherent scene: a few colours and their variations
    palette = [_natural_colour(rng) for _ in range(3)]
    img = palette[0][None, None] * (1 - t[..., None]) + palette[1][None, None] * t[..., None]
    side = max(height, width)
    for _ in range(int(rng.integers(3, 10))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.08, 0.4) * side
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.uniform(0.3, 0.8)
        colour = np.clip(palette[rng.integers(3)] * rng.uniform(0.7, 1.3) + rng.normal(0, 0.04, 3), 0, 1)
        img = img * (1 - w[..., None]) + w[..., None] * colour
    # low-frequency noise, mostly luminance (per-channel noise looks like confetti)
    coarse = (rng.normal(0, 0.06, size=(6, 6, 1)) + rng.normal(0, 0.015, size=(6, 6, 3))).astype(np.float32)
    img = img.astype(np.float32) + cv2.resize(coarse, (w4, h4), interpolation=cv2.INTER_CUBIC)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(0, 3))):  # branches
        p0 = (rng.uniform(-0.2, 1.2) * width, rng.uniform(0.3, 1.1) * height)
        a = rng.uniform(-0.6, 0.6) + (np.pi if rng.uniform() < 0.5 else 0.0)
        p1 = (p0[0] + np.cos(a) * 2 * side, p0[1] + np.sin(a) * 2 * side)
        layer = np.zeros((height, width), np.float32)
        thick = max(1, int(rng.uniform(0.015, 0.05) * side))
        cv2.line(layer, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1.0, thick, cv2.LINE_AA)
        colour = hsv_colour(rng.uniform(20, 40) / 360, rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.45))
        img = img * (1 - layer[..., None]) + layer[..., None] * colour
    img = img + rng.normal(0, 0.02, size=img.shape).astype(np.float32)
    sigma = rng.uniform(0.5, 1.5) * side / 128
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    return np.clip(img, 0, 1).astype(np.float32)


def random_occluder(rng: np.random.Generator, size: int, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A branch or leaf cluster crossing the bird's box: coverage (H, W) in [0, 1] and its colour image."""
    layer = np.zeros((size, size), np.float32)
    x1, y1, x2, y2 = bbox
    cx, cy = rng.uniform(x1, x2), rng.uniform(y1, y2)
    if rng.uniform() < 0.5:  # branch
        a = rng.uniform(0, np.pi)
        dx, dy = np.cos(a) * 2 * size, np.sin(a) * 2 * size
        thick = max(2, int(rng.uniform(0.04, 0.1) * size))
        cv2.line(layer, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1.0, thick, cv2.LINE_AA)
        colour = hsv_colour(rng.uniform(20, 40) / 360, rng.uniform(0.3, 0.6), rng.uniform(0.15, 0.4))
    else:  # leaves
        for _ in range(int(rng.integers(1, 4))):
            c = (int(cx + rng.normal(0, 0.08 * size)), int(cy + rng.normal(0, 0.08 * size)))
            axes = (max(2, int(rng.uniform(0.06, 0.16) * size)), max(1, int(rng.uniform(0.03, 0.07) * size)))
            cv2.ellipse(layer, c, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
        colour = hsv_colour(rng.uniform(80, 130) / 360, rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.6))
    shade = 1 + 0.15 * rng.normal(size=(size, size, 1)).astype(np.float32)
    return layer, np.clip(colour[None, None] * shade, 0, 1).astype(np.float32)


def noise_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Colour noise of several scales (H, W, 3) float32 in [0, 1]: 2-4 octaves of random colour grids from a few
    cells to a few pixels across, each upsampled smoothly or blocky, with a random contrast per channel."""
    img = np.zeros((height, width, 3), np.float32)
    total = 0.0
    for _ in range(int(rng.integers(2, 5))):
        cells = int(rng.integers(2, max(3, min(height, width) // 3)))
        grid = rng.uniform(0, 1, size=(cells, cells, 3)).astype(np.float32)
        interp = cv2.INTER_NEAREST if rng.uniform() < 0.4 else cv2.INTER_CUBIC
        amp = rng.uniform(0.3, 1.0)
        img += amp * cv2.resize(grid, (width, height), interpolation=interp)
        total += amp
    img /= total
    lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
    img = (img - lo) / np.maximum(hi - lo, 1e-6)
    span = rng.uniform(0.4, 1.0, size=3).astype(np.float32)
    base = rng.uniform(0, 1 - span).astype(np.float32)
    return np.clip(base + span * img, 0, 1).astype(np.float32)


def flat_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One colour of any hue (H, W, 3) float32 in [0, 1], with a faint linear gradient and fine noise."""
    colour = hsv_colour(rng.uniform(), rng.uniform(0, 1), rng.uniform(0.1, 1)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    t = (np.cos(ang) * xx / width + np.sin(ang) * yy / height)[..., None]
    img = colour * (1 + rng.uniform(-0.15, 0.15) * (t - t.mean()))
    return np.clip(img + rng.normal(0, 0.01, size=img.shape), 0, 1).astype(np.float32)


def pattern_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Stripes, checks or cells (H, W, 3) float32 in [0, 1] in random colours of any hue, at a random
    orientation and period (6-40% of the side)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = max(height, width)
    kind = int(rng.integers(3))
    colours = [hsv_colour(rng.uniform(), rng.uniform(0, 1), rng.uniform(0.1, 1)) for _ in range(6)]
    if kind < 2:  # stripes (one direction) or checks (two)
        period = rng.uniform(0.06, 0.4) * side
        ang = rng.uniform(0, np.pi)
        a = np.cos(ang) * xx + np.sin(ang) * yy
        label = np.floor(a / period).astype(int) % 2
        if kind == 1:
            b = -np.sin(ang) * xx + np.cos(ang) * yy
            label = (label + np.floor(b / period).astype(int)) % 2
    else:  # cells: each pixel takes the colour of its nearest random site
        sites = rng.uniform(0, 1, size=(int(rng.integers(6, 30)), 2)) * (width, height)
        d = (xx[..., None] - sites[:, 0]) ** 2 + (yy[..., None] - sites[:, 1]) ** 2
        label = np.argmin(d, axis=-1) % len(colours)
    img = np.stack(colours).astype(np.float32)[label]
    img = cv2.GaussianBlur(img, (0, 0), 0.5 * side / 128)
    return np.clip(img + rng.normal(0, 0.01, size=img.shape), 0, 1).astype(np.float32)


def styled_background(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """The background of one instance in ``kind`` (:data:`slopekp.data.synth.style.BACKGROUNDS`; ``natural`` is
    :func:`random_background`, draw for draw)."""
    kind = pick_kind(rng, kind, BACKGROUNDS)
    make = {
        "natural": random_background,
        "noise": noise_background,
        "flat": flat_background,
        "pattern": pattern_background,
    }[kind]
    return make(rng, height, width)
