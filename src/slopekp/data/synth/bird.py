"""SynthBirds shapes: the procedural template with a random symmetric deformation, its 15 CUB keypoints, and a
random bird (shape and texture).

* :func:`sample_bird` ``(rng, template, deform=1.0) -> BirdInstance(verts (V, 3), uv_image (3, Hu, Wu))``
* :func:`keypoint_vertices` ``(template) -> (15,)`` the template vertices used as the CUB keypoints
* :func:`restyle_plumage` ``(bird, template, kind, rng) -> BirdInstance``: the same bird in another plumage
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from slopekp.data.synth.texture import styled_texture
from slopekp.render.texture import uv_to_sphere

__all__ = ["BirdInstance", "keypoint_vertices", "restyle_plumage", "sample_bird"]


@dataclass
class BirdInstance:
    """One random bird: ``verts (V, 3)`` float32 (object frame, exactly x-symmetric), ``uv_image (3, Hu, Wu)``
    float32 RGB in [0, 1] (sampled through the template's ``verts_uv``), and the texture ``style`` index."""

    verts: Tensor
    uv_image: Tensor
    style: int = 0


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


def _uv_directions(template, index=None) -> np.ndarray:
    """(V, 3) float64 unit sphere directions of the template's vertex UVs (``verts_uv``, all or ``index``)."""
    uv = template.verts_uv.detach().cpu().double()
    return uv_to_sphere(uv if index is None else uv[torch.as_tensor(index)]).numpy()


def keypoint_vertices(template) -> np.ndarray:
    """Indices (15,) int64 of the template vertices used as the 15 CUB keypoints (CUB part order).

    Each centre part (back, beak, ...) is the on-plane vertex (|x| < 1e-6) closest to its target (position
    along the body, angle around it from the vertex's sphere-UV direction); the left parts (+x) are chosen
    among x > 0 vertices and the right parts are their exact mirrors, so the set is mirror-consistent.
    """
    v = template.verts.detach().cpu().double().numpy()
    d = _uv_directions(template)
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


def sample_bird(rng: np.random.Generator, template, deform: float = 1.0) -> BirdInstance:
    """A random bird: the template with a random symmetric deformation scaled by ``deform`` (0 = the template
    exactly) and a random texture. Public; deterministic for a given ``rng`` state."""
    if deform < 0 or not math.isfinite(deform):
        raise ValueError(f"deform must be a finite number >= 0, got {deform}")
    verts = _deform_verts(rng, template, float(deform))
    kp = keypoint_vertices(template)
    eye_dirs = _uv_directions(template, kp[[6, 10]])
    tex, style = styled_texture(rng, "random", eye_dirs)
    return BirdInstance(verts=verts, uv_image=torch.from_numpy(tex), style=style)


def restyle_plumage(bird: BirdInstance, template, kind: str, rng: np.random.Generator) -> BirdInstance:
    """``bird`` with a texture of plumage ``kind`` (:data:`slopekp.data.synth.style.PLUMAGES`) drawn from ``rng``
    (the same shape; ``random``: the bird itself)."""
    if kind == "random":
        return bird
    eye_dirs = _uv_directions(template, keypoint_vertices(template)[[6, 10]])
    tex, style = styled_texture(rng, kind, eye_dirs)
    return BirdInstance(verts=bird.verts, uv_image=torch.from_numpy(tex), style=style)
