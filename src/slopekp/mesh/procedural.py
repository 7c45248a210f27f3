"""Built-in meshes: the icosphere (CMR's fallback template) and a procedural, exactly x-symmetric bird.

Both are computed from a few lines of geometry, so the package needs no data file to run. Everything is
computed in float64 and rounded to float32 once at the end; results are deterministic (no randomness).
"""

from __future__ import annotations

import numpy as np
import torch

from slopekp.mesh.template import Template, direction_uv

__all__ = ["icosphere", "procedural_bird", "icosphere_arrays"]

_PHI = (1.0 + 5.0**0.5) / 2.0


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """12 unit vertices ``(0, ±1, ±φ)`` and cyclic permutations, 20 faces wound outward."""
    base = []
    for s1 in (-1.0, 1.0):
        for s2 in (-1.0, 1.0):
            base += [(0.0, s1, s2 * _PHI), (s1, s2 * _PHI, 0.0), (s2 * _PHI, 0.0, s1)]
    v = np.array(base, dtype=np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    # faces: all triples of mutually adjacent vertices (edge length 2 before normalisation)
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    edge = d.min(where=d > 1e-9, initial=np.inf)
    adj = np.abs(d - edge) < 1e-6
    faces = []
    for i in range(12):
        for j in range(i + 1, 12):
            for k in range(j + 1, 12):
                if adj[i, j] and adj[j, k] and adj[i, k]:
                    n = np.cross(v[j] - v[i], v[k] - v[i])
                    faces.append((i, j, k) if n @ (v[i] + v[j] + v[k]) > 0 else (i, k, j))
    return v, np.array(faces, dtype=np.int64)


def icosphere_arrays(level: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere as float64 ``(V, 3)`` vertices and int64 ``(F, 3)`` outward faces.

    ``V = 10·4^level + 2`` and ``F = 20·4^level``. The vertex set is exactly symmetric (bit for bit) under
    each coordinate mirror: the icosahedron is, and midpoints and normalisation commute with negating a
    coordinate.
    """
    if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or not 0 <= level <= 7:
        raise ValueError(f"icosphere level must be an integer in [0, 7], got {level!r}")
    verts, faces = _icosahedron()
    vlist = list(verts)
    for _ in range(int(level)):
        cache: dict[tuple[int, int], int] = {}

        def midpoint(a: int, b: int, cache=cache) -> int:
            key = (a, b) if a < b else (b, a)
            if key not in cache:
                m = vlist[key[0]] + vlist[key[1]]
                cache[key] = len(vlist)
                vlist.append(m / np.sqrt(m @ m))
            return cache[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = np.array(new_faces, dtype=np.int64)
    return np.array(vlist, dtype=np.float64), faces


def icosphere(level: int = 3) -> Template:
    """Unit-radius icosphere template (CMR's fallback template at level 3: 642 vertices, 1280 faces).

    Faces wind counter-clockwise seen from outside; ``verts_uv`` is the sphere UV of each vertex.

    Args:
        level: number of 4-to-1 subdivisions of the icosahedron, 0 to 7.
    """
    v, f = icosphere_arrays(level)
    verts = torch.as_tensor(v)
    return Template(
        verts=verts.float(),
        faces=torch.as_tensor(f),
        verts_uv=direction_uv(verts).float(),
        name=f"icosphere{level}",
    )


# ------------------------------------------------------------------------------------------ procedural bird

# The bird is swept along the y axis (beak tip at −y, tail tip at +y). Its cross-section at each y is an
# ellipse (half-width W in x, top and bottom in z) built from overlapping parts. Each part covers y in
# [c − r_y, c + r_y] with profile k = (1 − u²)^p, u = (y − c)/r_y (p = 1/2: round ends, p = 1: pointed), and
# contributes half-width r_x·k and a z interval of centre z_c and half-height r_z·k.
_PARTS = np.array(
    [
        # y_c    r_y    r_x    z_c    r_z    p
        [0.10, 0.66, 0.43, -0.06, 0.41, 0.50],  # body
        [-0.36, 0.28, 0.29, 0.04, 0.30, 0.50],  # breast / neck
        [-0.62, 0.22, 0.21, 0.17, 0.20, 0.50],  # head
        [-0.86, 0.15, 0.065, 0.12, 0.05, 0.85],  # beak
        [0.82, 0.40, 0.20, 0.13, 0.045, 0.50],  # tail
    ]
)
_SMOOTH_MAX_P = 6.0  # exponent of the p-norm that merges the parts (larger: sharper junctions)
_Y_RANGE = (-1.01, 1.22)  # beak tip and tail tip
# Wings: a bump of the half-width, largest slightly above the horizontal, along y in [_WING_Y0, _WING_Y1].
_WING_Y0, _WING_Y1, _WING_GAIN = -0.25, 0.95, 0.22


def _section(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-width, z centre and z half-height of the cross-section at each ``y`` (all ``(N,)``)."""
    u = (y[:, None] - _PARTS[None, :, 0]) / _PARTS[None, :, 1]
    k = np.clip(1.0 - u * u, 0.0, None) ** _PARTS[None, :, 5]
    wx = _PARTS[None, :, 2] * k
    hz = _PARTS[None, :, 4] * k
    p = _SMOOTH_MAX_P
    width = (wx**p).sum(1) ** (1.0 / p)
    half = (hz**p).sum(1) ** (1.0 / p)
    # z centre: average of the parts' centres weighted by their height, evaluated a hair inside the tips
    # (where every weight vanishes) so the tip vertices continue the sections next to them
    yc = np.clip(y, _Y_RANGE[0] + 1e-3, _Y_RANGE[1] - 1e-3)
    uc = (yc[:, None] - _PARTS[None, :, 0]) / _PARTS[None, :, 1]
    weight = (_PARTS[None, :, 4] * np.clip(1.0 - uc * uc, 0.0, None) ** _PARTS[None, :, 5]) ** p
    centre = (weight * _PARTS[None, :, 3]).sum(1) / weight.sum(1)
    return width, centre, half


def procedural_bird(level: int = 3) -> Template:
    """The built-in bird template: smooth, closed, genus 0, outward-wound and exactly symmetric about x = 0.

    Construction: an icosphere (``level``; 642 vertices at 3) is swept along the y axis. The unit direction
    ``d = (d_x, d_y, d_z)`` with polar angle ``θ = arccos(−d_y)`` goes to the cross-section at
    ``y = y_beak + (y_tail − y_beak)·θ/π``, to the point ``(W·c, y, z_c + H·s)`` with
    ``(c, s) = (d_x, d_z)/‖(d_x, d_z)‖``. The half-width ``W``, centre ``z_c`` and half-height ``H`` of each
    section come from overlapping body, breast, head, beak and tail profiles; the wings bulge ``W`` just
    above the horizontal. The poles ``∓y`` become the beak and tail tips.

    Every section lies in its own plane y = const, so the swept surface is embedded (no self-intersection)
    and the mesh keeps the sphere's topology (genus 0) and outward winding. The map is odd in ``d_x`` bit
    for bit and the icosphere's vertex set is exactly mirror-symmetric, so the mesh is exactly symmetric
    (mirror pairs match to the last bit; plane vertices have x = 0). Finally the mean is removed in y and z.

    Size is close to the centred U-CMR template: x ∈ ±0.49, y ∈ ±1.12, z ∈ [−0.46, 0.38]; volume 0.56.
    ``verts_uv`` is the sphere UV of each vertex's icosphere point.

    Args:
        level: icosphere subdivision level (2: 162 vertices, 3: 642, 4: 2562).
    """
    dirs, faces = icosphere_arrays(level)
    theta = np.arccos(np.clip(-dirs[:, 1], -1.0, 1.0))
    y = _Y_RANGE[0] + (_Y_RANGE[1] - _Y_RANGE[0]) * theta / np.pi
    rho = np.hypot(dirs[:, 0], dirs[:, 2])
    safe = np.maximum(rho, 1e-300)
    c = np.where(rho > 0, dirs[:, 0] / safe, 0.0)
    s = np.where(rho > 0, dirs[:, 2] / safe, 0.0)
    width, centre, half = _section(y)
    # wings: widen the section around 20 degrees above the horizontal, tapering along y
    t = np.clip((y - _WING_Y0) / (_WING_Y1 - _WING_Y0), 0.0, 1.0)
    along = np.sin(np.pi * t**0.7) ** 2
    around = np.exp(-((s - 0.35) ** 2) / 0.06) * c * c
    width = width * (1.0 + _WING_GAIN * along * around)
    verts = np.stack([width * c, y, centre + half * s], axis=1)
    mean = verts.mean(axis=0)
    verts = verts - np.array([0.0, mean[1], mean[2]])
    return Template(
        verts=torch.as_tensor(verts, dtype=torch.float32),
        faces=torch.as_tensor(faces),
        verts_uv=direction_uv(torch.as_tensor(dirs)).float(),
        name="procedural",
    )
