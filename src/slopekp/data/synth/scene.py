"""SynthBirds scene: lighting, camera placement, the hard render, compositing over the background, and which
keypoints are visible.

* :func:`render_bird` ``(renderer, template, bird, camera (7,) NDC, rng)
  -> BirdRender(rgb (3, H, W), alpha (H, W), face_index (H, W), depth (H, W))``
* :func:`place_camera` ``(rng, verts, quat, opts, truncate) -> (7,)`` NDC camera
* :func:`keypoint_visibility` ``(points, depth, face_index, tol) -> (K,)`` z-buffer visibility

Pixel conventions: the renderer samples pixel *centres*, so a point at NDC ``x`` lands in column
``u = ((x + 1)·W − 1)/2`` (0-based).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from slopekp.data.synth.bird import BirdInstance
from slopekp.data.synth.options import SynthOptions
from slopekp.data.synth.style import LIGHTINGS, pick_kind
from slopekp.geometry.camera import project_points
from slopekp.geometry.rotations import quat_to_rotmat
from slopekp.render import Lighting
from slopekp.render.shade import camera_facing_normals, lambert_factor

__all__ = [
    "BirdRender",
    "composite",
    "keypoint_parts",
    "keypoint_visibility",
    "mask_bbox",
    "place_camera",
    "random_lighting",
    "render_bird",
    "render_birds",
    "rotation_matrix",
    "styled_lighting",
]


@dataclass
class BirdRender:
    """A hard (z-buffer) render: ``rgb (3, H, W)`` shaded colour (0 outside), ``alpha (H, W)`` in {0, 1},
    ``face_index (H, W)`` int64 (−1 outside), ``depth (H, W)`` (smaller is closer; large outside)."""

    rgb: Tensor
    alpha: Tensor
    face_index: Tensor
    depth: Tensor


# ------------------------------------------------------------------------------------------------ lighting, camera
def random_lighting(rng: np.random.Generator) -> Lighting:
    """Ambient + one directional light from the camera's side, mostly from above (camera frame, y down)."""
    direction = (rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 0.3), -1.0)
    return Lighting(ambient=rng.uniform(0.35, 0.6), directional=rng.uniform(0.35, 0.7), direction=direction)


def styled_lighting(rng: np.random.Generator, kind: str) -> Lighting:
    """The lighting of one instance in ``kind`` (:data:`slopekp.data.synth.style.LIGHTINGS`): ``lambert`` is
    :func:`random_lighting`, draw for draw; ``flat`` ambient only (0.8-1.05: no shading); ``harsh`` a little
    ambient (0.05-0.2) and a strong light (0.8-1.2) from one side, level or from below."""
    kind = pick_kind(rng, kind, LIGHTINGS)
    if kind == "lambert":
        return random_lighting(rng)
    if kind == "flat":
        return Lighting(ambient=rng.uniform(0.8, 1.05), directional=0.0)
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    direction = (side * rng.uniform(0.7, 1.5), rng.uniform(-0.2, 1.0), -rng.uniform(0.1, 0.6))
    return Lighting(ambient=rng.uniform(0.05, 0.2), directional=rng.uniform(0.8, 1.2), direction=direction)


def rotation_matrix(quat: np.ndarray) -> np.ndarray:
    """(3, 3) float64 rotation matrix of a quaternion ``(w, x, y, z)`` (any non-zero norm), by
    :func:`slopekp.geometry.rotations.quat_to_rotmat` in float64."""
    return quat_to_rotmat(torch.as_tensor(quat, dtype=torch.float64)).numpy()


def place_camera(
    rng: np.random.Generator, verts: Tensor, quat: np.ndarray, opts: SynthOptions, truncate: bool
) -> np.ndarray:
    """A (7,) NDC camera with rotation ``quat``: scale so that the bird's larger projected side is a random
    fraction of the image, a random position inside the image, or (``truncate``) 10–35% outside one border."""
    R = rotation_matrix(quat)
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


# ------------------------------------------------------------------------------------------------ rendering
def render_birds(
    renderer, template, verts: Tensor, uv_images: Tensor, cameras: Tensor, lightings
) -> list[BirdRender]:
    """Hard-render a batch: ``verts (B, V, 3)``, ``uv_images (B, 3, Hu, Wu)``, ``cameras (B, 7)`` NDC, one
    :class:`~slopekp.render.Lighting` per bird (flat Lambertian shading, as the renderer's own
    ``lighting``)."""
    out = renderer(
        verts, template.faces, cameras, mode="hard", uv_image=uv_images, verts_uv=template.verts_uv
    )
    screen = project_points(verts, cameras.to(verts.dtype))  # (B, V, 3)
    normals = camera_facing_normals(screen, template.faces)  # (B, F, 3)
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


def composite(
    render: BirdRender, background: np.ndarray, size: int, supersample: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rendered bird over ``background (size, size, 3)``: the image ``(size, size, 3)`` and the bird's mask
    ``(size, size)`` bool.

    ``supersample`` 1: the mask is the hard render (pixel centres) and only the composited edge is softened (0.6 px
    Gaussian); N > 1: the ``N·size`` render is area-averaged and the mask is coverage >= 1/2.
    """
    alpha_hi = render.alpha.numpy().astype(np.float32)
    rgb_hi = render.rgb.numpy().transpose(1, 2, 0) * alpha_hi[..., None]
    if supersample > 1:  # area-average the supersampled render; the mask is coverage >= 1/2
        alpha = cv2.resize(alpha_hi, (size, size), interpolation=cv2.INTER_AREA)
        rgb = cv2.resize(rgb_hi, (size, size), interpolation=cv2.INTER_AREA)
        bird_mask = alpha >= 0.5
        img = rgb + (1 - alpha[..., None]) * background
    else:  # the mask is the hard render (pixel centres); soften only the composited edge
        bird_mask = alpha_hi > 0.5
        soft = cv2.GaussianBlur(alpha_hi, (0, 0), 0.6)
        filled = (
            cv2.GaussianBlur(rgb_hi, (0, 0), 1.0)
            / np.maximum(cv2.GaussianBlur(alpha_hi, (0, 0), 1.0), 1e-3)[..., None]
        )
        colour = np.where(bird_mask[..., None], rgb_hi, np.clip(filled, 0, 1))
        img = soft[..., None] * colour + (1 - soft[..., None]) * background
    return img, bird_mask


def mask_bbox(mask: np.ndarray) -> np.ndarray | None:
    """``[x1, y1, x2, y2]`` float64 (0-based, inclusive) of a mask's pixels, None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


# ------------------------------------------------------------------------------------------------ visibility
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


def keypoint_parts(
    keypoints: Tensor, camera: np.ndarray, render: BirdRender, size: int, occluder: np.ndarray
) -> np.ndarray:
    """CUB ``parts (3, K)`` of the keypoints ``(K, 3)`` (object frame) seen by ``camera (7,)`` NDC in a
    ``size``-pixel image: 1-based pixel ``u, v`` and 1 where visible, zeros elsewhere.

    A keypoint is visible when the z-buffer test passes in ``render`` (any resolution), it lies inside the image
    and the ``occluder (size, size)`` coverage at its pixel is below 1/2.
    """
    pts = project_points(keypoints.double(), torch.as_tensor(camera)).numpy()  # (K, 3)
    vis = keypoint_visibility(pts, render.depth.numpy(), render.face_index.numpy(), tol=0.05 * camera[0])
    u = ((pts[:, 0] + 1) * size - 1) / 2  # 0-based pixel coordinates in the output image
    v = ((pts[:, 1] + 1) * size - 1) / 2
    vis &= (u >= 0) & (u <= size - 1) & (v >= 0) & (v <= size - 1)
    for k in np.nonzero(vis)[0]:
        vis[k] = occluder[int(round(v[k])), int(round(u[k]))] < 0.5
    parts = np.zeros((3, len(pts)))
    parts[0, vis], parts[1, vis], parts[2, vis] = u[vis] + 1, v[vis] + 1, 1
    return parts
