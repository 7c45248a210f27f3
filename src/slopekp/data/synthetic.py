"""SynthBirds: procedurally generated bird images written in CMR's on-disk format (``docs/data.md``).

Per instance: the procedural template with a random *symmetric*, smooth, bounded shape deformation; a
random UV texture (back/belly colour fields, head cap, wings with bars, tail, beak, eyes; plain, striped,
patched or spotted); random Lambertian lighting; a cluttered background (gradient, blurred blobs,
branches, noise); sometimes an occluder in front and a truncated view; and a camera whose rotation is
drawn from the viewpoint distribution fitted to the real CUB SfM rotations (:mod:`slopekp.data.viewpoints`).

Public building blocks (the SynthBirds *video* generator uses them; keep the names):

* :func:`sample_bird` ``(rng, template, deform=1.0) -> BirdInstance(verts (V, 3), uv_image (3, Hu, Wu))``
* :func:`random_background` ``(rng, height, width) -> (H, W, 3) float32 in [0, 1]``
* :func:`sample_viewpoint` ``(rng, n) -> (n, 4)`` quaternions (w, x, y, z)
  (from :mod:`slopekp.data.viewpoints`)
* :func:`render_bird` ``(renderer, template, bird, camera (7,) NDC, rng)
  -> BirdRender(rgb (3, H, W), alpha (H, W), face_index (H, W), depth (H, W))``

and the dataset writer :func:`generate_synthbirds`. Determinism: instance ``i`` of split ``s`` uses only
``np.random.default_rng([seed, split_code(s), i])`` and instances are rendered in fixed batches, so any
number of worker processes writes identical files.

Pixel conventions of the written files: the renderer samples pixel *centres*, so a point at NDC ``x``
lands in column ``u = ((x + 1)·W − 1)/2`` (0-based). The stored SfM camera and keypoints use exactly this
map (1-based: ``+1``): ``scale = s·W/2``, ``trans = (t + 1)·W/2 + 1/2``. ``S`` in ``anno_<split>.mat`` is
the 15 keypoints of the *undeformed* template in the template frame (not CMR's normalisation).
"""

from __future__ import annotations

import functools
import io
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from slopekp.data.matfiles import CubRecord, SfmAnnotations, write_cub_cleaned, write_sfm_anno
from slopekp.data.viewpoints import sample_viewpoint
from slopekp.utils import MAX_SYNTH_COUNT, MAX_SYNTH_SIZE, atomic_save_json, atomic_write

__all__ = [
    "BirdInstance",
    "BirdRender",
    "SynthOptions",
    "generate_synthbirds",
    "keypoint_vertices",
    "keypoint_visibility",
    "random_background",
    "random_lighting",
    "random_texture",
    "render_bird",
    "sample_bird",
    "sample_viewpoint",
]

GENERATOR_VERSION = "1.0"
RENDER_BATCH = 8
"""Instances rendered per renderer call (fixed, so the output does not depend on the number of workers)."""
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
TEXTURE_HW = (64, 128)
STYLES = ("Plain", "Striped", "Patched", "Spotted")
#: Class folder names (``class_id`` = index + 1), one per texture style.
CLASS_NAMES = tuple(f"{i + 1:03d}.{s}_Synthbird" for i, s in enumerate(STYLES))


@dataclass
class BirdInstance:
    """One random bird: ``verts (V, 3)`` float32 (object frame, exactly x-symmetric), ``uv_image (3, Hu, Wu)``
    float32 RGB in [0, 1] (sampled through the template's ``verts_uv``), and the texture ``style`` index."""

    verts: Tensor
    uv_image: Tensor
    style: int = 0


@dataclass
class BirdRender:
    """A hard (z-buffer) render: ``rgb (3, H, W)`` shaded colour (0 outside), ``alpha (H, W)`` in {0, 1},
    ``face_index (H, W)`` int64 (−1 outside), ``depth (H, W)`` (smaller is closer; large outside)."""

    rgb: Tensor
    alpha: Tensor
    face_index: Tensor
    depth: Tensor


@dataclass
class SynthOptions:
    """Generator options (all recorded in ``meta.json``)."""

    size: int = 128
    """Side of the square images in pixels."""
    deform: float = 1.0
    """Scale of the random symmetric shape deformation (0: exactly the template)."""
    occlusion_prob: float = 0.2
    """Probability of an occluder (branch or leaf) drawn in front of the bird (removed from the mask)."""
    truncation_prob: float = 0.1
    """Probability that the camera places part of the bird outside the image."""
    supersample: int = 1
    """1: render at ``size`` (the mask is exactly the hard render at pixel centres; the composited edge
    is softened with a 0.6 px Gaussian). N > 1: render at ``N·size`` and area-average (mask: coverage
    >= 1/2)."""
    fill_min: float = 0.5
    fill_max: float = 0.85
    """Range of the bird's larger projected side as a fraction of the image side."""


# ------------------------------------------------------------------------------------------------ keypoints
# CUB part targets on the swept body: (y in the procedural bird's construction frame, beak tip −1.01 ...
# tail tip 1.22; angle ψ around the body axis in degrees, 90 = top/back, −90 = bottom/belly, 0 = bird-left
# side).
_KP_TARGETS = (
    ("back", 0.05, 90.0),
    ("beak", -0.95, 90.0),
    ("belly", 0.30, -90.0),
    ("breast", -0.30, -90.0),
    ("crown", -0.62, 90.0),
    ("forehead", -0.77, 90.0),
    ("left_eye", -0.70, 35.0),
    ("left_leg", 0.40, -50.0),
    ("left_wing", 0.30, 15.0),
    ("nape", -0.42, 90.0),
    ("right_eye", None, None),
    ("right_leg", None, None),
    ("right_wing", None, None),
    ("tail", 1.15, 90.0),
    ("throat", -0.68, -90.0),
)
_MIRROR_OF = {10: 6, 11: 7, 12: 8}
_Y_TIP, _Y_TAIL = -1.01, 1.22


def _uv_directions(verts_uv: np.ndarray) -> np.ndarray:
    """(V, 2) sphere UV -> (V, 3) unit directions ``(sinθcosφ, sinθsinφ, cosθ)`` (METHOD §3.4)."""
    phi = np.pi * verts_uv[:, 0]
    theta = np.pi * (verts_uv[:, 1] + 1) / 2
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)


def keypoint_vertices(template) -> np.ndarray:
    """Indices (15,) int64 of the template vertices used as the 15 CUB keypoints (CUB part order).

    Each centre part (back, beak, ...) is the on-plane vertex (|x| < 1e-6) closest to its target (position
    along the body, angle around it from the vertex's sphere-UV direction); the left parts (+x) are chosen
    among x > 0 vertices and the right parts are their exact mirrors, so the set is mirror-consistent.
    """
    v = template.verts.detach().cpu().double().numpy()
    d = _uv_directions(template.verts_uv.detach().cpu().double().numpy())
    y0, y1 = v[:, 1].min(), v[:, 1].max()
    ty = _Y_TIP + (v[:, 1] - y0) / (y1 - y0) * (_Y_TAIL - _Y_TIP)  # vertex y in the target frame
    psi = np.degrees(np.arctan2(d[:, 2], d[:, 0]))
    on_plane = np.abs(v[:, 0]) < 1e-6
    out = np.zeros(15, dtype=np.int64)
    for k, (_, y, a) in enumerate(_KP_TARGETS):
        if y is None:
            continue
        allowed = on_plane if abs(abs(a) - 90.0) < 1e-9 else v[:, 0] > 1e-6
        dpsi = (psi - a + 180.0) % 360.0 - 180.0
        cost = ((ty - y) / 0.05) ** 2 + (dpsi / 20.0) ** 2
        cost[~allowed] = np.inf
        out[k] = int(np.argmin(cost))
    for k, src in _MIRROR_OF.items():
        m = v[out[src]] * np.array([-1.0, 1.0, 1.0])
        out[k] = int(np.argmin(np.linalg.norm(v - m, axis=1)))
    return out


# ------------------------------------------------------------------------------------------------ shape
def _deform_verts(rng: np.random.Generator, template, deform: float) -> Tensor:
    """Template verts plus a smooth, bounded, symmetric deformation: an anisotropic scale and 6 Gaussian
    RBF bumps (the displacement field is symmetrised and each vertex moves at most 0.15)."""
    v = template.verts.detach().cpu().double().numpy()
    scale = 1.0 + rng.uniform(-0.12, 0.12, size=3)
    n_bumps = 6
    centres = v[rng.integers(0, len(v), size=n_bumps)]
    amps = rng.normal(0.0, 0.06, size=(n_bumps, 3))
    radii = rng.uniform(0.25, 0.5, size=n_bumps)
    if deform == 0:
        return template.verts.detach().cpu().clone().float()

    def field(p: np.ndarray) -> np.ndarray:
        w = np.exp(-((p[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * radii**2))  # (V, K)
        return w @ amps

    mirror = np.array([-1.0, 1.0, 1.0])
    disp = 0.5 * (field(v) + field(v * mirror) * mirror)
    norm = np.linalg.norm(disp, axis=1, keepdims=True)
    disp = disp * np.minimum(1.0, 0.15 / np.maximum(norm, 1e-12))  # bounded: |δ| <= 0.15
    verts = v * (1.0 + deform * (scale - 1.0)) + deform * disp
    sym = template.symmetry()
    verts_t = sym.symmetrize(sym.to_rows(torch.as_tensor(verts)))  # exact mirror symmetry
    return verts_t.float()


# ------------------------------------------------------------------------------------------------ texture
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(_hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


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
    return _hsv(rng.uniform(h0, h1) / 360.0, rng.uniform(s0, s1), rng.uniform(v0, v1))


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
    """(Hu, Wu, 3) unit sphere point that the renderer maps to each texel of a (Hu, Wu) UV image.

    Inverts :mod:`slopekp.render.texture`: texel column ``j`` is ``u = 2j/(Wu − 1) − 1`` (align-corners),
    which the renderer reached from azimuth ``π·(u − UV_SHIFT)``; row ``i`` is the inclination
    ``π·i/(Hu − 1)``.
    """
    from slopekp.render.texture import UV_SHIFT

    u = 2 * np.arange(wu) / (wu - 1) - 1
    v = 2 * np.arange(hu) / (hu - 1) - 1
    u = (u - UV_SHIFT + 1) % 2 - 1
    uu, vv = np.meshgrid(u, v)
    return _uv_directions(np.stack([uu.ravel(), vv.ravel()], -1)).reshape(hu, wu, 3)


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


def sample_bird(rng: np.random.Generator, template, deform: float = 1.0) -> BirdInstance:
    """A random bird: the template with a random symmetric deformation scaled by ``deform`` (0 = the template
    exactly) and a random texture. Public; deterministic for a given ``rng`` state."""
    if deform < 0 or not math.isfinite(deform):
        raise ValueError(f"deform must be a finite number >= 0, got {deform}")
    verts = _deform_verts(rng, template, float(deform))
    kp = keypoint_vertices(template)
    eye_dirs = _uv_directions(template.verts_uv[kp[[6, 10]]].detach().cpu().double().numpy())
    tex, style = random_texture(rng, eye_dirs)
    return BirdInstance(verts=verts, uv_image=torch.from_numpy(tex), style=style)


# ------------------------------------------------------------------------------------------------ background
def _natural_colour(rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(5)
    h, s, v = [
        (rng.uniform(190, 215), rng.uniform(0.2, 0.6), rng.uniform(0.7, 0.95)),  # sky
        (rng.uniform(70, 140), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.7)),  # foliage
        (rng.uniform(20, 45), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.6)),  # bark / soil
        (rng.uniform(0, 360), rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.9)),  # grey
        (rng.uniform(35, 60), rng.uniform(0.2, 0.5), rng.uniform(0.5, 0.85)),  # sand / straw
    ][kind]
    return _hsv(h / 360.0, s, v)


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
        colour = _hsv(rng.uniform(20, 40) / 360, rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.45))
        img = img * (1 - layer[..., None]) + layer[..., None] * colour
    img = img + rng.normal(0, 0.02, size=img.shape).astype(np.float32)
    sigma = rng.uniform(0.5, 1.5) * side / 128
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    return np.clip(img, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------ rendering
def random_lighting(rng: np.random.Generator):
    """Ambient + one directional light from the camera's side, mostly from above (camera frame, y down)."""
    from slopekp.render import Lighting

    direction = (rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 0.3), -1.0)
    return Lighting(ambient=rng.uniform(0.35, 0.6), directional=rng.uniform(0.35, 0.7), direction=direction)


def render_birds(
    renderer, template, verts: Tensor, uv_images: Tensor, cameras: Tensor, lightings
) -> list[BirdRender]:
    """Hard-render a batch: ``verts (B, V, 3)``, ``uv_images (B, 3, Hu, Wu)``, ``cameras (B, 7)`` NDC, one
    :class:`~slopekp.render.Lighting` per bird (flat Lambertian shading, as the renderer's own
    ``lighting``)."""
    from slopekp.geometry.camera import project_points
    from slopekp.render.shade import face_normals, lambert_factor

    out = renderer(
        verts, template.faces, cameras, mode="hard", uv_image=uv_images, verts_uv=template.verts_uv
    )
    screen = project_points(verts, cameras.to(verts.dtype))  # (B, V, 3)
    normals = face_normals(screen, template.faces)  # (B, F, 3), turned towards the camera
    renders = []
    for b, light in enumerate(lightings):
        fi = out.face_index[b]
        shade = lambert_factor(normals[b], light)[fi.clamp(min=0)] * (fi >= 0)
        renders.append(
            BirdRender(rgb=out.rgb[b] * shade, alpha=out.alpha[b], face_index=fi, depth=out.depth[b])
        )
    return renders


def render_bird(
    renderer, template, bird: BirdInstance, camera: Tensor, rng: np.random.Generator
) -> BirdRender:
    """Render ``bird`` with ``camera`` (7,) NDC in hard (z-buffer) mode with random lighting drawn from
    ``rng``.

    Public. Returns :class:`BirdRender` at the renderer's image size.
    """
    camera = torch.as_tensor(camera, dtype=torch.float32).reshape(1, 7)
    return render_birds(
        renderer, template, bird.verts[None], bird.uv_image[None], camera, [random_lighting(rng)]
    )[0]


def _quat_to_rotmat_np(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def place_camera(
    rng: np.random.Generator, verts: Tensor, quat: np.ndarray, opts: SynthOptions, truncate: bool
) -> np.ndarray:
    """A (7,) NDC camera with rotation ``quat``: scale so that the bird's larger projected side is a random
    fraction of the image, a random position inside the image, or (``truncate``) 10–35% outside one border."""
    R = _quat_to_rotmat_np(quat)
    p = verts.detach().cpu().double().numpy() @ R.T
    lo, hi = p[:, :2].min(0), p[:, :2].max(0)
    ext = hi - lo
    s = 2.0 * rng.uniform(opts.fill_min, opts.fill_max) / max(ext.max(), 1e-6)
    half = s * ext / 2
    slack = np.maximum(1.0 - half, 0.0) * 0.9
    centre = rng.uniform(-slack, slack)
    if truncate:
        axis = int(rng.integers(2))
        sign = 1.0 if rng.uniform() < 0.5 else -1.0
        centre[axis] = sign * (1.0 - half[axis] + 2 * half[axis] * rng.uniform(0.1, 0.35))
    t = centre - s * (lo + hi) / 2
    return np.concatenate([[s], t, quat]).astype(np.float64)


def _occluder(rng: np.random.Generator, size: int, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A branch or leaf cluster crossing the bird's box: coverage (H, W) in [0, 1] and its colour image."""
    layer = np.zeros((size, size), np.float32)
    x1, y1, x2, y2 = bbox
    cx, cy = rng.uniform(x1, x2), rng.uniform(y1, y2)
    if rng.uniform() < 0.5:  # branch
        a = rng.uniform(0, np.pi)
        dx, dy = np.cos(a) * 2 * size, np.sin(a) * 2 * size
        thick = max(2, int(rng.uniform(0.04, 0.1) * size))
        cv2.line(layer, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1.0, thick, cv2.LINE_AA)
        colour = _hsv(rng.uniform(20, 40) / 360, rng.uniform(0.3, 0.6), rng.uniform(0.15, 0.4))
    else:  # leaves
        for _ in range(int(rng.integers(1, 4))):
            c = (int(cx + rng.normal(0, 0.08 * size)), int(cy + rng.normal(0, 0.08 * size)))
            axes = (max(2, int(rng.uniform(0.06, 0.16) * size)), max(1, int(rng.uniform(0.03, 0.07) * size)))
            cv2.ellipse(layer, c, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
        colour = _hsv(rng.uniform(80, 130) / 360, rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.6))
    shade = 1 + 0.15 * rng.normal(size=(size, size, 1)).astype(np.float32)
    return layer, np.clip(colour[None, None] * shade, 0, 1).astype(np.float32)


def keypoint_visibility(
    points: np.ndarray, depth: np.ndarray, face_index: np.ndarray, tol: float
) -> np.ndarray:
    """Z-buffer visibility of surface points: (K,) bool.

    Args:
        points: (K, 3) NDC ``x, y`` and depth of points on the rendered surface (e.g. mesh vertices).
        depth, face_index: (H, W) hard-render z-buffer and face index (−1 = empty) of the same camera.
        tol: depth tolerance (camera depth units).

    A point is visible when it falls inside the image and some covered pixel of its 3×3 neighbourhood
    (pixel centres, ``j = ((x + 1)·W − 1)/2``) has a surface depth >= the point's depth − ``tol``
    (nothing in front of it).
    """
    h, w = depth.shape
    ju = np.round(((points[:, 0] + 1) * w - 1) / 2).astype(int)
    jv = np.round(((points[:, 1] + 1) * h - 1) / 2).astype(int)
    vis = np.zeros(len(points), dtype=bool)
    for k in range(len(points)):
        if not (0 <= ju[k] < w and 0 <= jv[k] < h):
            continue
        r0, r1, c0, c1 = max(jv[k] - 1, 0), min(jv[k] + 2, h), max(ju[k] - 1, 0), min(ju[k] + 2, w)
        patch = depth[r0:r1, c0:c1][face_index[r0:r1, c0:c1] >= 0]
        vis[k] = bool(patch.size and (patch >= points[k, 2] - tol).any())
    return vis


def _mask_bbox(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


@dataclass
class _Instance:
    record: CubRecord
    rot: np.ndarray
    scale: float
    trans: np.ndarray
    occluded: bool
    truncated: bool


@dataclass
class _Prepared:
    rng: np.random.Generator
    split: str
    index: int
    bird: BirdInstance
    camera: np.ndarray
    lighting: object
    background: np.ndarray
    occluded: bool
    truncated: bool


def _prepare(template, seed: int, split: str, index: int, opts: SynthOptions) -> _Prepared:
    """Everything random before rendering, drawn from the instance's own RNG."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    bird = sample_bird(rng, template, opts.deform)
    truncated = bool(rng.uniform() < opts.truncation_prob)
    occluded = bool(rng.uniform() < opts.occlusion_prob)
    background = random_background(rng, opts.size, opts.size)
    quat = sample_viewpoint(rng, 1)[0]
    camera = place_camera(rng, bird.verts, quat, opts, truncated)
    lighting = random_lighting(rng)
    return _Prepared(rng, split, index, bird, camera, lighting, background, occluded, truncated)


def _finish(prep: _Prepared, render: BirdRender, kp_idx: Tensor, opts: SynthOptions, out_dir) -> _Instance:
    """Composite, occlude, find visible keypoints and write the image of one prepared, rendered instance."""
    from slopekp.geometry.camera import project_points

    rng, cam, size, ss = prep.rng, prep.camera, opts.size, opts.supersample
    alpha_hi = render.alpha.numpy().astype(np.float32)
    rgb_hi = render.rgb.numpy().transpose(1, 2, 0) * alpha_hi[..., None]
    if ss > 1:  # area-average the supersampled render; the mask is coverage >= 1/2
        alpha = cv2.resize(alpha_hi, (size, size), interpolation=cv2.INTER_AREA)
        rgb = cv2.resize(rgb_hi, (size, size), interpolation=cv2.INTER_AREA)
        bird_mask = alpha >= 0.5
        img = rgb + (1 - alpha[..., None]) * prep.background
    else:  # the mask is the hard render (pixel centres); soften only the composited edge
        bird_mask = alpha_hi > 0.5
        soft = cv2.GaussianBlur(alpha_hi, (0, 0), 0.6)
        filled = (
            cv2.GaussianBlur(rgb_hi, (0, 0), 1.0)
            / np.maximum(cv2.GaussianBlur(alpha_hi, (0, 0), 1.0), 1e-3)[..., None]
        )
        colour = np.where(bird_mask[..., None], rgb_hi, np.clip(filled, 0, 1))
        img = soft[..., None] * colour + (1 - soft[..., None]) * prep.background
    bbox0 = _mask_bbox(bird_mask)
    if bbox0 is None:  # cannot happen: place_camera keeps >= 65% of the bird's extent inside the image
        raise RuntimeError(f"{prep.split} instance {prep.index}: the bird is not visible")
    mask = bird_mask.copy()
    occ = np.zeros((size, size), np.float32)
    if prep.occluded:
        occ, occ_col = _occluder(rng, size, bbox0)
        img = img * (1 - occ[..., None]) + occ[..., None] * occ_col
        mask &= occ < 0.5
    img = np.clip(img + rng.normal(0, 0.01, size=img.shape), 0, 1)

    # keypoints: project, z-buffer test in the high-resolution render, then the occluder and the image bounds
    pts = project_points(prep.bird.verts[kp_idx].double(), torch.as_tensor(cam)).numpy()  # (15, 3)
    vis = keypoint_visibility(pts, render.depth.numpy(), render.face_index.numpy(), tol=0.05 * cam[0])
    u = ((pts[:, 0] + 1) * size - 1) / 2  # 0-based pixel coordinates in the output image
    v = ((pts[:, 1] + 1) * size - 1) / 2
    vis &= (u >= 0) & (u <= size - 1) & (v >= 0) & (v <= size - 1)
    for k in np.nonzero(vis)[0]:
        vis[k] = occ[int(round(v[k])), int(round(u[k]))] < 0.5
    parts = np.zeros((3, 15))
    parts[0, vis], parts[1, vis], parts[2, vis] = u[vis] + 1, v[vis] + 1, 1

    rel_path = f"{CLASS_NAMES[prep.bird.style]}/synth_{prep.split}_{prep.index:06d}.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    with atomic_write(Path(out_dir) / "images" / rel_path, "wb") as f:
        f.write(buf.getvalue())
    record = CubRecord(
        id=0,  # filled in by the caller
        rel_path=rel_path,
        train=int(prep.split == "train"),
        test=int(prep.split != "train"),
        bbox=bbox0 + 1.0,
        width=size,
        height=size,
        parts=parts,
        mask=mask.astype(np.uint8),
        class_id=prep.bird.style + 1,
    )
    return _Instance(
        record=record,
        rot=_quat_to_rotmat_np(cam[3:]),
        scale=float(cam[0] * size / 2),
        trans=(cam[1:3] + 1) * size / 2 + 0.5,
        occluded=prep.occluded,
        truncated=prep.truncated,
    )


def _make_batch(
    template, renderer, kp_idx, seed: int, jobs: list[tuple[str, int]], opts: SynthOptions, out_dir
):
    """Prepare, render (one batched call) and finish the instances ``jobs`` = [(split, index), ...]."""
    preps = [_prepare(template, seed, split, index, opts) for split, index in jobs]
    renders = render_birds(
        renderer,
        template,
        torch.stack([p.bird.verts for p in preps]),
        torch.stack([p.bird.uv_image for p in preps]),
        torch.as_tensor(np.stack([p.camera for p in preps]), dtype=torch.float32),
        [p.lighting for p in preps],
    )
    return [_finish(p, r, kp_idx, opts, out_dir) for p, r in zip(preps, renders)]


# Per-process state of the worker pool (built once per process by the initializer).
_WORKER: dict = {}


def _worker_init(size: int, supersample: int) -> None:
    from slopekp.mesh import load_template
    from slopekp.render import Renderer, RenderSettings

    torch.set_num_threads(1)
    template = load_template("procedural")
    _WORKER.update(
        template=template,
        renderer=Renderer(RenderSettings(image_size=size * supersample)),
        kp=torch.as_tensor(keypoint_vertices(template)),
    )


def _worker_run(args) -> list[_Instance]:
    seed, jobs, opts, out_dir = args
    w = _WORKER
    return _make_batch(w["template"], w["renderer"], w["kp"], seed, jobs, opts, out_dir)


def check_synth_options(
    n_train: int,
    n_test: int,
    size: int = 128,
    deform: float = 1.0,
    workers: int = 0,
    occlusion_prob: float = 0.2,
    truncation_prob: float = 0.1,
    supersample: int = 1,
    seed: int = 0,
) -> None:
    """Raise ``ValueError`` for options :func:`generate_synthbirds` cannot honour (checked before anything is
    written or allocated)."""
    if not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"n_train and n_test must be >= 0 and not both 0, got {n_train}, {n_test}")
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if n > MAX_SYNTH_COUNT:
            raise ValueError(f"{name} must be <= {MAX_SYNTH_COUNT} per split, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if size > MAX_SYNTH_SIZE:
        raise ValueError(f"size must be <= {MAX_SYNTH_SIZE} pixels, got {size}")
    if not (0 <= occlusion_prob <= 1 and 0 <= truncation_prob <= 1):
        raise ValueError(
            f"occlusion_prob/truncation_prob must be in [0, 1], got {occlusion_prob}, {truncation_prob}"
        )
    if deform < 0 or not math.isfinite(deform):
        raise ValueError(f"deform must be a finite number >= 0, got {deform}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")


def generate_synthbirds(
    out_dir: str | os.PathLike,
    n_train: int,
    n_test: int,
    size: int = 128,
    seed: int = 0,
    deform: float = 1.0,
    workers: int = 0,
    progress: bool = True,
    occlusion_prob: float = 0.2,
    truncation_prob: float = 0.1,
    supersample: int = 1,
) -> Path:
    """Write a SynthBirds dataset in CMR format to ``out_dir`` and return its path.

    Files: ``images/<class>/synth_<split>_<index>.jpg``, ``train_cub_cleaned.mat``, ``test_cub_cleaned.mat``,
    ``anno_train.mat``, ``anno_test.mat`` (``S`` = template keypoints) and ``meta.json`` (generator version,
    options, keypoint vertex indices, which instances are occluded / truncated). Ids are 1-based: train
    ``1..n_train``, test ``n_train + 1 ..``. Deterministic for a given ``seed`` whatever ``workers`` is
    (0 = in this process; N = N worker processes).

    Raises:
        ValueError: sizes or counts out of range (``16 <= size <= MAX_SYNTH_SIZE``, counts ``<= MAX_SYNTH_COUNT``
            per split; see :mod:`slopekp.utils`), probabilities outside [0, 1], negative deform.
    """
    from slopekp.mesh import load_template

    check_synth_options(n_train, n_test, size, deform, workers, occlusion_prob, truncation_prob, supersample, seed)
    opts = SynthOptions(
        size=int(size),
        deform=float(deform),
        occlusion_prob=float(occlusion_prob),
        truncation_prob=float(truncation_prob),
        supersample=int(supersample),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # fixed batches of consecutive instances (independent of ``workers``): one renderer call per batch
    flat = [(split, i) for split, n in (("train", n_train), ("test", n_test)) for i in range(n)]
    batches = [(seed, flat[i : i + RENDER_BATCH], opts, str(out)) for i in range(0, len(flat), RENDER_BATCH)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(flat), desc="synthbirds", unit="img")
    results: list[_Instance] = []
    if workers == 0:
        _worker_init(opts.size, opts.supersample)
        outputs = map(_worker_run, batches)
    else:
        ctx = get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(opts.size, opts.supersample))  # fmt: skip
        outputs = pool.map(_worker_run, batches)
    try:
        for res in outputs:
            results.extend(res)
            if bar is not None:
                bar.update(len(res))
    finally:
        if workers:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()

    template = load_template("procedural")
    kp_idx = keypoint_vertices(template)
    S = template.verts[kp_idx].double().numpy().T.copy()  # (3, 15) undeformed template keypoints
    meta_splits = {}
    start = 0
    for split, n in (("train", n_train), ("test", n_test)):
        part = results[start : start + n]
        for i, r in enumerate(part):
            r.record.id = start + i + 1
        start += n
        write_cub_cleaned(out / f"{split}_cub_cleaned.mat", [r.record for r in part])
        write_sfm_anno(
            out / f"anno_{split}.mat",
            SfmAnnotations(
                rot=np.stack([r.rot for r in part]) if part else np.zeros((0, 3, 3)),
                scale=np.array([r.scale for r in part]),
                trans=np.stack([r.trans for r in part]) if part else np.zeros((0, 2)),
                S=S,
            ),
        )
        meta_splits[split] = {
            "n": n,
            "occluded": [i for i, r in enumerate(part) if r.occluded],
            "truncated": [i for i, r in enumerate(part) if r.truncated],
        }
    from slopekp import __version__

    atomic_save_json(
        {
            "generator": "slopekp.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "slopekp_version": __version__,
            "template": "procedural",
            "seed": int(seed),
            "options": asdict(opts),
            "classes": list(CLASS_NAMES),
            "keypoint_vertices": [int(i) for i in kp_idx],
            "pixel_convention": "u0 = ((x_ndc + 1) * W - 1) / 2; .mat values are 1-based (u0 + 1)",
            "splits": meta_splits,
        },
        out / "meta.json",
    )
    return out
