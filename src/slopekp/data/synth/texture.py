"""SynthBirds textures: a random, left/right-symmetric bird plumage as a UV image of the procedural template, in
each plumage kind of :mod:`slopekp.data.synth.style`.

The colours are functions of each texel's sphere direction (the point the renderer maps to it, inverted with
:func:`slopekp.render.texture.uv_to_sphere`), so the texture is symmetric whatever the template's UV layout.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from slopekp.data.synth.colour import hsv_colour
from slopekp.data.synth.style import PLUMAGES, pick_kind
from slopekp.render.texture import UV_SHIFT, uv_to_sphere

__all__ = [
    "STYLES",
    "TEXTURE_HW",
    "countershaded_texture",
    "flat_part_texture",
    "patterned_texture",
    "random_texture",
    "styled_texture",
    "texel_directions",
]

TEXTURE_HW = (64, 128)
"""``(Hu, Wu)`` of the UV images."""
STYLES = ("Plain", "Striped", "Patched", "Spotted")
"""Texture styles; a bird's ``style`` is an index into it (and its class, see ``writer.CLASS_NAMES``)."""

_PALETTES = {
    # name: (hue range in degrees, saturation range, value range)
    "brown": ((18, 38), (0.35, 0.7), (0.25, 0.65)),
    "buff": ((25, 45), (0.2, 0.45), (0.65, 0.9)),
    "grey": ((0, 360), (0.0, 0.08), (0.3, 0.75)),
    "black": ((0, 360), (0.0, 0.15), (0.05, 0.18)),
    "white": ((30, 60), (0.0, 0.08), (0.85, 0.98)),
    "yellow": ((45, 58), (0.65, 0.95), (0.75, 1.0)),
    "red": ((0, 12), (0.65, 0.95), (0.55, 0.9)),
    "orange": ((18, 30), (0.7, 0.95), (0.75, 1.0)),
    "blue": ((200, 230), (0.45, 0.85), (0.45, 0.85)),
    "olive": ((60, 95), (0.3, 0.6), (0.3, 0.55)),
}
_BACK = ("brown", "grey", "black", "blue", "olive", "brown", "grey")
_BELLY = ("white", "buff", "grey", "yellow", "red", "white", "buff", "orange")
_BEAK = ("black", "grey", "orange", "yellow", "black")


def _colour(rng: np.random.Generator, names: tuple[str, ...]) -> np.ndarray:
    (h0, h1), (s0, s1), (v0, v1) = _PALETTES[names[rng.integers(len(names))]]
    return hsv_colour(rng.uniform(h0, h1) / 360.0, rng.uniform(s0, s1), rng.uniform(v0, v1))


def _smooth_field(rng: np.random.Generator, f: np.ndarray, n: int, freq: tuple[float, float]) -> np.ndarray:
    """A smooth random function of features ``f (..., 3)`` in about [−1, 1]: sum of ``n`` random sinusoids."""
    w = rng.normal(size=(n, 3))
    w *= rng.uniform(*freq, size=(n, 1)) / np.linalg.norm(w, axis=1, keepdims=True)
    b = rng.uniform(0, 2 * np.pi, size=n)
    return np.sin(f @ w.T + b).sum(-1) / math.sqrt(n / 2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


@functools.lru_cache(maxsize=4)
def _texel_directions_cached(hu: int, wu: int) -> np.ndarray:
    d = texel_directions(hu, wu)
    d.setflags(write=False)
    return d


def texel_directions(hu: int, wu: int) -> np.ndarray:
    """(Hu, Wu, 3) float64 unit sphere point that the renderer maps to each texel of a (Hu, Wu) UV image.

    Inverts :mod:`slopekp.render.texture`: texel column ``j`` is ``u = 2j/(Wu − 1) − 1`` (align-corners),
    which the renderer reached from azimuth ``π·(u − UV_SHIFT)``; row ``i`` is the inclination
    ``π·i/(Hu − 1)``.
    """
    u = 2 * np.arange(wu) / (wu - 1) - 1
    v = 2 * np.arange(hu) / (hu - 1) - 1
    u = (u - UV_SHIFT + 1) % 2 - 1
    uu, vv = np.meshgrid(u, v)
    uv = torch.from_numpy(np.stack([uu.ravel(), vv.ravel()], -1))
    return uv_to_sphere(uv).numpy().reshape(hu, wu, 3)


def random_texture(
    rng: np.random.Generator, eye_dirs: np.ndarray | None = None, hw: tuple[int, int] = TEXTURE_HW
) -> tuple[np.ndarray, int]:
    """A random bird texture as a (3, Hu, Wu) float32 UV image in [0, 1], and its style index (see
    ``STYLES``).

    The colours are functions of the texel's sphere direction ``d`` through mirror-symmetric features
    (``|d_x|``, ``d_y``, ``d_z``), so the texture is left/right symmetric: ``along = acos(−d_y)/π`` runs
    from the beak (0) to the tail (1), ``top = d_z/‖(d_x, d_z)‖`` from belly (−1) to back (+1). ``eye_dirs``
    (2, 3): sphere directions of the two eyes (dark spots with a light ring), or None.
    """
    hu, wu = hw
    d = _texel_directions_cached(hu, wu)
    feats = np.stack([np.abs(d[..., 0]), d[..., 1], d[..., 2]], -1)
    along = np.arccos(np.clip(-d[..., 1], -1, 1)) / np.pi
    rho = np.maximum(np.hypot(d[..., 0], d[..., 2]), 1e-9)
    top = d[..., 2] / rho
    side = np.abs(d[..., 0]) / rho
    style = int(rng.integers(len(STYLES)))

    back, belly, head, beak = (
        _colour(rng, _BACK),
        _colour(rng, _BELLY),
        _colour(rng, _BACK + _BELLY),
        _colour(rng, _BEAK),
    )
    wing = np.clip(back * rng.uniform(0.5, 1.0), 0, 1) if rng.uniform() < 0.6 else _colour(rng, _BACK)
    accent = _colour(rng, _BELLY + ("white", "white"))
    n1 = _smooth_field(rng, feats, 6, (1.5, 4.0))
    n2 = _smooth_field(rng, feats, 8, (4.0, 9.0))

    t_top = _sigmoid((top + rng.uniform(-0.3, 0.3) + 0.25 * n1) / 0.15)[..., None]
    col = belly * (1 - t_top) + back * t_top
    if style == 1:  # stripes across the back and flanks
        freq, phase = rng.uniform(6, 14), rng.uniform(0, 2 * np.pi)
        stripes = _sigmoid(4 * np.sin(2 * np.pi * freq * along + phase + 1.5 * n1))[..., None]
        col = col * (1 - 0.6 * stripes * t_top) + 0.6 * stripes * t_top * np.clip(back * 0.4, 0, 1)
    elif style == 2:  # large patches
        patch = _sigmoid((n2 - 0.4) / 0.1)[..., None]
        col = col * (1 - patch) + patch * accent
    elif style == 3:  # spots
        spots = _sigmoid((_smooth_field(rng, feats, 12, (12.0, 20.0)) - 1.1) / 0.08)[..., None]
        col = col * (1 - spots) + spots * accent
    # head: whole head or a cap
    w_head = _sigmoid((rng.uniform(0.2, 0.3) - along + 0.02 * n1) / 0.02)
    if rng.uniform() < 0.5:
        w_head = w_head * _sigmoid((top + rng.uniform(-0.3, 0.4)) / 0.1)
    col = col * (1 - w_head[..., None] * 0.9) + 0.9 * w_head[..., None] * head
    # wings: the flanks between the shoulder and the tail base, with optional wing bars
    w_wing = (
        _sigmoid((along - 0.38) / 0.03) * _sigmoid((0.85 - along) / 0.03) * _sigmoid((side - 0.55) / 0.06)
        * _sigmoid((top + 0.25) / 0.08) * _sigmoid((0.85 - top) / 0.08)
    )  # fmt: skip
    wing_col = np.broadcast_to(wing, col.shape).copy()
    if rng.uniform() < 0.5:
        bars = _sigmoid(6 * np.sin(2 * np.pi * rng.uniform(3, 6) * along + rng.uniform(0, 6)) - 4)[..., None]
        wing_col = wing_col * (1 - bars) + bars * np.array([0.95, 0.95, 0.92])
    col = col * (1 - w_wing[..., None]) + w_wing[..., None] * wing_col
    # tail and beak
    w_tail = _sigmoid((along - 0.82) / 0.02)[..., None]
    col = col * (1 - w_tail) + w_tail * np.clip(wing * 0.8, 0, 1)
    w_beak = _sigmoid((0.085 - along) / 0.008)[..., None]
    col = col * (1 - w_beak) + w_beak * beak
    # eyes: dark pupil with a light ring
    if eye_dirs is not None:
        ring = rng.uniform() < 0.5
        for e in np.asarray(eye_dirs, dtype=np.float64):
            ang = np.arccos(np.clip(d @ (e / np.linalg.norm(e)), -1, 1))
            if ring:
                w_ring = _sigmoid((0.13 - ang) / 0.012)[..., None]
                col = col * (1 - w_ring) + w_ring * np.array([0.95, 0.95, 0.9])
            w_eye = _sigmoid((0.08 - ang) / 0.01)[..., None]
            col = col * (1 - w_eye) + w_eye * np.array([0.03, 0.03, 0.03])
    col = col * (1 + 0.12 * n2[..., None])
    return np.clip(col, 0, 1).transpose(2, 0, 1).astype(np.float32), style


def _any_colour(rng: np.random.Generator) -> np.ndarray:
    """A colour of any hue, saturation and value (not the bird palettes of :func:`random_texture`)."""
    return hsv_colour(rng.uniform(), rng.uniform(0.0, 1.0), rng.uniform(0.08, 1.0))


def _body_coordinates(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per texel: sphere direction ``d (Hu, Wu, 3)``, ``along`` (beak 0 ... tail 1), ``top`` (belly −1 ... back
    +1) and ``side`` (0 on the mid-plane, 1 at the flank), as :func:`random_texture` defines them."""
    d = _texel_directions_cached(*hw)
    along = np.arccos(np.clip(-d[..., 1], -1, 1)) / np.pi
    rho = np.maximum(np.hypot(d[..., 0], d[..., 2]), 1e-9)
    return d, along, d[..., 2] / rho, np.abs(d[..., 0]) / rho


def _paint_eyes(col: np.ndarray, d: np.ndarray, eye_dirs: np.ndarray | None) -> np.ndarray:
    if eye_dirs is None:
        return col
    for e in np.asarray(eye_dirs, dtype=np.float64):
        w_eye = _sigmoid((0.08 - np.arccos(np.clip(d @ (e / np.linalg.norm(e)), -1, 1))) / 0.01)[..., None]
        col = col * (1 - w_eye) + w_eye * np.array([0.03, 0.03, 0.03])
    return col


def flat_part_texture(rng: np.random.Generator, eye_dirs=None, hw: tuple[int, int] = TEXTURE_HW) -> np.ndarray:
    """Each part one flat colour of any hue, with sharp borders: body, head, wings, tail and beak (3, Hu, Wu)."""
    d, along, top, side = _body_coordinates(hw)
    body, head, wing, tail, beak = (_any_colour(rng) for _ in range(5))
    col = np.broadcast_to(body, d.shape).copy()
    parts = (
        (_sigmoid((0.25 - along) / 0.005), head),
        (_sigmoid((along - 0.4) / 0.005) * _sigmoid((0.82 - along) / 0.005) * _sigmoid((side - 0.55) / 0.02), wing),
        (_sigmoid((along - 0.82) / 0.005), tail),
        (_sigmoid((0.085 - along) / 0.004), beak),
    )
    for w, colour in parts:
        col = col * (1 - w[..., None]) + w[..., None] * colour
    return np.clip(_paint_eyes(col, d, eye_dirs), 0, 1).transpose(2, 0, 1).astype(np.float32)


def countershaded_texture(
    rng: np.random.Generator, eye_dirs=None, hw: tuple[int, int] = TEXTURE_HW
) -> np.ndarray:
    """One hue, dark on the back and light on the belly with a smooth gradient, no parts (3, Hu, Wu)."""
    d, _, top, _ = _body_coordinates(hw)
    hue, sat = rng.uniform(), rng.uniform(0.1, 0.9)
    dark, light = hsv_colour(hue, sat, rng.uniform(0.05, 0.4)), hsv_colour(hue, sat * 0.4, rng.uniform(0.7, 1.0))
    t = _sigmoid((top + rng.uniform(-0.3, 0.3)) / rng.uniform(0.2, 0.6))[..., None]
    col = light * (1 - t) + dark * t
    return np.clip(_paint_eyes(col, d, eye_dirs), 0, 1).transpose(2, 0, 1).astype(np.float32)


def patterned_texture(rng: np.random.Generator, eye_dirs=None, hw: tuple[int, int] = TEXTURE_HW) -> np.ndarray:
    """Two colours of any hue in a high-frequency pattern over the whole body: bands, checks or blotches of a
    random frequency (symmetric, as every SynthBirds texture) (3, Hu, Wu)."""
    d, along, top, _ = _body_coordinates(hw)
    a, b = _any_colour(rng), _any_colour(rng)
    kind = int(rng.integers(3))
    freq = rng.uniform(5, 12)
    if kind == 0:  # bands around the body
        field = np.sin(2 * np.pi * freq * along + rng.uniform(0, 2 * np.pi))
    elif kind == 1:  # checks in (along, top)
        field = np.sin(2 * np.pi * freq * along) * np.sin(np.pi * freq / 2 * top + rng.uniform(0, 2 * np.pi))
    else:  # blotches: a symmetric random field thresholded
        feats = np.stack([np.abs(d[..., 0]), d[..., 1], d[..., 2]], -1)
        field = _smooth_field(rng, feats, 10, (freq, 2 * freq))
    w = _sigmoid(field / 0.1)[..., None]
    col = a * (1 - w) + b * w
    return np.clip(_paint_eyes(col, d, eye_dirs), 0, 1).transpose(2, 0, 1).astype(np.float32)


_PLUMAGE_STYLE = {"flat": 0, "countershaded": 0, "patterned": 1}
"""The ``STYLES`` index (class) a plumage kind other than ``random`` is filed under."""


def styled_texture(
    rng: np.random.Generator, kind: str, eye_dirs=None, hw: tuple[int, int] = TEXTURE_HW
) -> tuple[np.ndarray, int]:
    """The texture of one instance in plumage ``kind`` (:data:`slopekp.data.synth.style.PLUMAGES`) and its
    ``STYLES`` index: ``random`` is :func:`random_texture`, draw for draw; ``flat`` and ``countershaded`` are
    filed as Plain, ``patterned`` as Striped."""
    kind = pick_kind(rng, kind, PLUMAGES)
    if kind == "random":
        return random_texture(rng, eye_dirs, hw)
    make = {"flat": flat_part_texture, "countershaded": countershaded_texture, "patterned": patterned_texture}[kind]
    return make(rng, eye_dirs, hw), _PLUMAGE_STYLE[kind]
