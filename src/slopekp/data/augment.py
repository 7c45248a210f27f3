"""Appearance augmentation of training crops: colour jitter, grayscale, blur, noise, background replacement and
a light from one side.

Every operation here changes pixel *values* only, never where anything is: the mask, the keypoints, the camera and
the flip of a sample are those of the same sample without augmentation. :class:`~slopekp.data.cub.CubDataset`
applies it after the crop, the resize and the flip, drawing from a stream of its own
(``default_rng([seed, epoch, index, 1])``), so switching augmentation on changes no geometric draw.

* :class:`Augment` — the settings (``data.colour_jitter``, ``data.grayscale_prob``, ``data.blur_prob``,
  ``data.noise_std``, ``data.background_prob``, ``data.shading``; all off by default);
* :func:`augment_appearance` ``(img (H, W, 3), mask (H, W), rng, settings, other=None) -> img (H, W, 3)``;
* :func:`inpaint_background` ``(img, mask) -> img``: an image with its object filled in from around it (the
  ``other`` background).

Background replacement composites the crop over a new background through the soft mask: ``m·img + (1 − m)·bg``.
The new background is one of: another training image's background with its bird filled in (when the dataset gives
one), one flat colour, colour noise of several scales, or a pattern (stripes, checks, cells) — the generators of
:mod:`slopekp.data.synth.background`. Whatever covered the bird (an occluder is not part of the mask) is replaced
too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import cv2
import numpy as np

from slopekp.augment_config import (
    AMOUNTS,
    AUGMENT_BACKGROUNDS,
    AppearanceConfig,
    background_kinds,
    background_kinds_error,
)
from slopekp.data.synth.background import flat_background, noise_background, pattern_background

__all__ = ["APPEARANCE_SETTINGS", "BACKGROUND_KINDS", "Augment", "augment_appearance", "inpaint_background"]

BACKGROUND_KINDS = AUGMENT_BACKGROUNDS
"""The replacement backgrounds (``data.background_kinds`` picks among them), drawn uniformly (``other`` only where
the dataset provides another image)."""

APPEARANCE_SETTINGS = tuple(f.name for f in fields(AppearanceConfig))
"""The ``cfg.data`` fields :class:`Augment` is built from: Stage III's; Stages I and II leave them out of their
manifests (they never apply them)."""

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class Augment(AppearanceConfig):
    """Appearance augmentation settings (each 0 = off).

    Attributes:
        colour_jitter: strength ``c`` of the colour jitter: brightness and contrast factors in ``[1 − c, 1 + c]``,
            saturation in ``[1 − c, 1 + c]``, hue rotated by up to ``±c/2`` turns (applied to every sample).
        grayscale_prob: probability of a grayscale image (3 equal channels).
        blur_prob: probability of a Gaussian blur of σ in [0.5, 1.5] px of a 64-px crop (scaled with the side).
        noise_std: Gaussian pixel noise of σ drawn in ``[0, noise_std]`` (applied to every sample).
        background_prob: probability of replacing the background (see the module docstring).
        background_kinds: the replacement backgrounds drawn from, comma-separated names of
            :data:`BACKGROUND_KINDS` (e.g. ``"other,flat"`` to hold the generated noise and patterns out of training).
        shading: strength ``s`` of a random light across the object (applied to every sample): the object's pixels
            are multiplied by ``1 + s·a·(n·p) − s·b`` (``p`` the pixel's offset from the mask's centroid in units of
            its radius, ``n`` a random direction, ``a`` in [0.4, 1], ``b`` in [0, 0.5]), clipped to [0.05, 2]: one
            side darker, the other brighter, as a strong side light makes it.
    """

    def __post_init__(self) -> None:
        if problem := background_kinds_error(self.background_kinds):
            raise ValueError(problem)
        for name in AMOUNTS:
            v = getattr(self, name)
            if not (np.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")

    @property
    def active(self) -> bool:
        """Whether any operation is on."""
        return any(getattr(self, name) for name in AMOUNTS)

    def kinds(self) -> tuple[str, ...]:
        """``background_kinds`` as a tuple of names."""
        return background_kinds(self.background_kinds)

    @classmethod
    def from_config(cls, data) -> Augment:
        """The settings of a :class:`~slopekp.config.DataConfig` (``cfg.data``)."""
        return cls(**{name: getattr(data, name) for name in APPEARANCE_SETTINGS})


def _push_pull(premult: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Colours ``(H, W, 3)`` from premultiplied colours and their coverage ``weight (H, W)`` in [0, 1]: known pixels
    keep theirs, the rest take the next coarser level's (area-averaged down, bilinear up; recursive)."""
    h, w = weight.shape
    if weight.min() >= 1:
        return premult / weight[..., None]
    if min(h, w) <= 2:  # the coarsest level: a cell with no known pixel takes the mean of all the known ones
        mean = premult.sum(axis=(0, 1)) / max(float(weight.sum()), 1e-6)
        return premult / np.maximum(weight, 1e-6)[..., None] * (weight > 0)[..., None] + (weight <= 0)[..., None] * mean
    size = (max(1, w // 2), max(1, h // 2))
    coarse_p = cv2.resize(premult, size, interpolation=cv2.INTER_AREA)
    coarse_w = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
    # at the coarser level a pixel's coverage is renormalised to 1 where it has any known pixel
    scale = np.where(coarse_w > 0, 1.0 / np.maximum(coarse_w, 1e-6), 0.0).astype(np.float32)
    coarse = _push_pull(coarse_p * scale[..., None], np.minimum(coarse_w * scale, 1.0))
    up = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    return premult + (1.0 - weight)[..., None] * up


def inpaint_background(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``img (H, W, 3)`` float in [0, 1] with the object of the soft ``mask (H, W)`` (dilated by 2 px) filled in
    from its surroundings: a background without the bird.

    The fill is a push-pull pyramid: each hole pixel takes the mean colour of the known pixels at the finest level
    of a halving pyramid that has some near it. Smooth rather than textured, and a tenth of OpenCV's inpainting's
    time, which matters at every training sample.
    """
    hole = cv2.dilate((mask > 0.1).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    out = np.clip(img, 0, 1).astype(np.float32)
    known = (~hole).astype(np.float32)
    if not known.any():
        return np.full_like(out, out.mean())
    return np.clip(_push_pull(out * known[..., None], known), 0, 1).astype(np.float32)


def _new_background(
    rng: np.random.Generator, h: int, w: int, kinds: tuple[str, ...], other: Callable[[], np.ndarray] | None
) -> np.ndarray | None:
    """A replacement background of one of ``kinds`` (None when the only kind is ``other`` and there is none)."""
    kinds = tuple(k for k in kinds if k != "other" or other is not None)
    if not kinds:
        return None
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "other":
        assert other is not None
        return other()
    make = {"flat": flat_background, "noise": noise_background, "pattern": pattern_background}[kind]
    return make(rng, h, w)


def _rotate_hue(img: np.ndarray, turns: float) -> np.ndarray:
    """Rotate the chroma of ``img`` by ``turns`` about the grey axis (YIQ), keeping the luma."""
    a = 2 * np.pi * turns
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = (np.linalg.inv(to_yiq) @ rot @ to_yiq).astype(np.float32)
    return img @ m.T


def augment_appearance(
    img: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    settings: Augment,
    other: Callable[[], np.ndarray] | None = None,
) -> np.ndarray:
    """The augmented ``img (H, W, 3)`` float32 in [0, 1] (a new array; ``img`` is not changed).

    Args:
        img: the crop, float in [0, 1].
        mask: its soft object mask ``(H, W)`` in [0, 1] (used by the background replacement only).
        rng: the sample's augmentation stream. Each operation's coin and amount come from eight draws made first;
            the background's kind and content, the blur's σ, the noise and the light are drawn after them in this
            order, so switching one on changes the draws of those after it (the light is drawn last: switching it on
            changes no other).
        settings: what to do (:class:`Augment`).
        other: returns another image's background ``(H, W, 3)`` with its object filled in, or None (then the
            replacement draws among the generated kinds only).
    """
    h, w = mask.shape
    out = np.asarray(img, dtype=np.float32).copy()
    draws = rng.uniform(size=8)  # each operation's coin and amount, whatever is on
    if settings.background_prob and draws[0] < settings.background_prob:
        bg = _new_background(rng, h, w, settings.kinds(), other)
        if bg is not None:
            m = np.clip(mask, 0, 1)[..., None].astype(np.float32)
            out = m * out + (1 - m) * bg
    c = settings.colour_jitter
    if c:
        grey = (out @ _LUMA)[..., None]
        out = grey + (1 + c * (2 * draws[1] - 1)) * (out - grey)  # saturation
        out = _rotate_hue(out, 0.5 * c * (2 * draws[2] - 1))
        mean = float((out @ _LUMA).mean())
        out = mean + (1 + c * (2 * draws[3] - 1)) * (out - mean)  # contrast
        out = out * (1 + c * (2 * draws[4] - 1))  # brightness
    if settings.grayscale_prob and draws[5] < settings.grayscale_prob:
        out = np.repeat((out @ _LUMA)[..., None], 3, axis=-1)
    if settings.blur_prob and draws[6] < settings.blur_prob:
        sigma = (0.5 + rng.uniform()) * max(h, w) / 64
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if settings.noise_std:
        out = out + rng.normal(0, settings.noise_std * draws[7], size=out.shape).astype(np.float32)
    if settings.shading:  # drawn last, so that the other operations draw the same with it on or off
        out = _shade(out, mask, rng, settings.shading)
    return np.clip(out, 0, 1).astype(np.float32)


def _shade(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """``img`` with the object of ``mask`` lit from one side (see :attr:`Augment.shading`)."""
    m = np.clip(mask, 0, 1).astype(np.float32)
    area = float(m.sum())
    angle, a, b = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0), rng.uniform(0.0, 0.5)
    if area < 1:
        return img
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = float((m * yy).sum() / area), float((m * xx).sum() / area)
    radius = max(np.sqrt(area / np.pi), 1.0)
    along = (np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)) / radius
    light = np.clip(1 + strength * a * along - strength * b, 0.05, 2.0)
    return img * (1 - m[..., None] + (m * light)[..., None])
