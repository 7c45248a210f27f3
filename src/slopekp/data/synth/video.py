"""SynthBirds videos: textured birds moving and turning over a background (the scene of one sequence).

:func:`synthesize_video` builds one sequence in memory (:class:`SynthVideo`);
:func:`slopekp.data.synth.video_writer.generate_synth_videos` writes sequences in the DAVIS 2017 / YouTube-VOS
layouts. Each sequence (20–80 frames by default) shows 1..``max_birds`` birds of the SynthBirds image generator
(:func:`~slopekp.data.synth.bird.sample_bird`, :func:`~slopekp.data.synth.background.random_background`,
:func:`~slopekp.data.viewpoints.sample_viewpoint`, :func:`~slopekp.data.synth.scene.random_lighting`) over a
static background. Each bird

- glides along a straight path with a sinusoidal bob, approaches/recedes a little (scale oscillation) and
  turns smoothly about the camera's vertical axis (plus a small rocking about the horizontal axis);
- with probability ``p_leave_enter``, one bird per sequence leaves the frame (or, time-reversed, enters it),
  so it is absent from some frames;
- birds occlude each other (a fixed depth order) and, with probability ``p_occluder``, a static post in front
  of everything occludes them as they pass.

A bird is rendered (hard z-buffer) in a square patch that follows it and is composited into the frame at its
position. Every bird is its own object; ids are assigned so that the birds visible in the first frame get
the highest ids, which makes the official DAVIS rule (``K = max id in the first annotation``) count every
object. Deterministic per ``(seed, sequence index)``: ``n_seq`` does not change earlier sequences.

Cameras (:attr:`SynthVideo.cameras_px`) are weak-perspective ``[s, tx, ty, qw, qx, qy, qz]`` in **pixels of the
frame** (``u = s·(R X)_x + tx``, ``v = s·(R X)_y + ty``) with pixel *centres* at integer coordinates, as the
SynthBirds images (the renderer samples pixel centres, so this map is exact: pixel ``(u, v)`` shows the surface
point projecting to ``(u, v)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from slopekp.data.synth.background import random_background
from slopekp.data.synth.bird import sample_bird
from slopekp.data.synth.scene import random_lighting
from slopekp.data.viewpoints import sample_viewpoint
from slopekp.geometry.camera import affine_camera
from slopekp.geometry.rotations import quat_about_axis, quat_multiply
from slopekp.render import Renderer, RenderSettings

__all__ = ["MAX_VIDEO_HEIGHT", "MAX_VIDEO_WIDTH", "SynthVideo", "VideoSynthSettings", "synthesize_video"]

#: DAVIS frame aspect (854×480).
DAVIS_ASPECT = 854 / 480
#: Frames rendered per renderer call (one bird, fixed patch size).
_RENDER_CHUNK = 16
MAX_VIDEO_HEIGHT = 2160
"""Largest frame height in pixels (4K UHD); DAVIS is 480."""
MAX_VIDEO_WIDTH = 4096
"""Largest frame width in pixels (DCI 4K; 2160 rows at the DAVIS aspect are 3843 wide)."""
MAX_SEQUENCE_PIXELS = 2**30
"""Largest ``max_frames · height · width``: a sequence is built in memory (frames and labels, 4 bytes per pixel,
plus each bird's rendered patches) before it is written, so this bounds it to a few GB (480p: up to 2,619
frames; 2160p: up to 129)."""


@dataclass(frozen=True)
class VideoSynthSettings:
    """Settings of the video generator (all sizes in pixels of the frame).

    Attributes:
        height: frame height; width is ``round(height·854/480)`` unless ``width`` is given.
        width: frame width (``None`` = DAVIS aspect).
        min_frames, max_frames: sequence length range (inclusive).
        max_birds: birds per sequence are drawn uniformly from ``1..max_birds``.
        deform: SynthBirds shape deformation scale (0 = the procedural template itself).
        bird_length: range of a bird's beak-to-tail length as a fraction of the frame height.
        p_leave_enter: probability that one bird of a sequence leaves or enters the frame.
        p_occluder: probability of a static post occluding the birds.
        max_turn_deg: largest total turn of a bird over a sequence (degrees).
        val_fraction: fraction of sequences in the ``val``/``valid`` split (the last ones).
        jpeg_quality: JPEG quality of the frames.
    """

    height: int = 480
    width: int | None = None
    min_frames: int = 20
    max_frames: int = 80
    max_birds: int = 3
    deform: float = 1.0
    bird_length: tuple[float, float] = (0.25, 0.45)
    p_leave_enter: float = 0.7
    p_occluder: float = 0.6
    max_turn_deg: float = 180.0
    val_fraction: float = 1 / 3
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not (isinstance(self.height, int) and self.height >= 16):
            raise ValueError(f"height must be an integer >= 16, got {self.height!r}")
        if self.height > MAX_VIDEO_HEIGHT:
            raise ValueError(f"height must be <= {MAX_VIDEO_HEIGHT} pixels, got {self.height}")
        if self.width is not None and not (isinstance(self.width, int) and self.width >= 16):
            raise ValueError(f"width must be an integer >= 16, got {self.width!r}")
        if self.width is not None and self.width > MAX_VIDEO_WIDTH:
            raise ValueError(f"width must be <= {MAX_VIDEO_WIDTH} pixels, got {self.width}")
        if not (isinstance(self.min_frames, int) and 2 <= self.min_frames <= self.max_frames):
            raise ValueError(
                f"need 2 <= min_frames <= max_frames, got min_frames={self.min_frames}, "
                f"max_frames={self.max_frames}"
            )
        if self.max_frames > 99999:
            raise ValueError(f"max_frames must be <= 99999 (5-digit frame names), got {self.max_frames}")
        h, w = self.frame_size
        if self.max_frames * h * w > MAX_SEQUENCE_PIXELS:
            raise ValueError(
                f"max_frames · height · width must be <= 2**30 pixels (a sequence is built in memory), got "
                f"{self.max_frames} · {h} · {w}; lower max_frames or height"
            )
        if not (isinstance(self.max_birds, int) and 1 <= self.max_birds <= 254):
            raise ValueError(f"max_birds must be in 1..254, got {self.max_birds!r}")
        lo, hi = self.bird_length
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"bird_length must satisfy 0 < lo <= hi <= 1, got {self.bird_length}")
        for name in ("p_leave_enter", "p_occluder"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames."""
        return self.height, self.width if self.width is not None else int(round(self.height * DAVIS_ASPECT))


@dataclass(frozen=True)
class SynthVideo:
    """One generated sequence (everything the writers of :mod:`slopekp.data.synth.video_writer` need).

    Attributes:
        name: sequence name.
        frames: ``(T, H, W, 3)`` uint8 RGB frames.
        labels: ``(T, H, W)`` uint8 annotations (object ids, 0 background).
        object_ids: ``(K,)`` int64, object ``k`` is the bird with id ``object_ids[k]`` (= k + 1).
        cameras_px: ``(T, K, 7)`` float32 frame-pixel cameras (module docstring).
        verts: ``(K, V, 3)`` float32 bird shapes; ``faces``: ``(F, 3)`` int64.
        area_px, visible_px: ``(T, K)`` int64 pixels before / after occlusion (inside the frame).
        truncated: ``(T, K)`` bool, part of the bird lies outside the frame.
        depth_order: ``(K,)`` int64 object indices from back to front.
    """

    name: str
    frames: np.ndarray
    labels: np.ndarray
    object_ids: np.ndarray
    cameras_px: np.ndarray
    verts: np.ndarray
    faces: np.ndarray
    area_px: np.ndarray
    visible_px: np.ndarray
    truncated: np.ndarray
    depth_order: np.ndarray

    @property
    def frame_names(self) -> list[str]:
        return [f"{t:05d}" for t in range(len(self.frames))]

    def first_visible(self) -> np.ndarray:
        """``(K,)`` index of the first frame where each object is visible, -1 if never."""
        vis = self.visible_px > 0
        return np.where(vis.any(0), vis.argmax(0), -1)


# ------------------------------------------------------------------------------------------------------------
# motion
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Track:
    """Per-frame pose of one bird: centre ``(T, 2)`` px, scale ``(T,)`` px per unit, quats ``(T, 4)``."""

    centre: np.ndarray
    scale: np.ndarray
    quat: torch.Tensor


def _sample_track(
    rng: np.random.Generator, n_frames: int, hw: tuple[int, int], s_px: float, radius: float,
    q0: torch.Tensor, settings: VideoSynthSettings, leave: int,
) -> _Track:  # fmt: skip
    """A smooth trajectory. ``leave``: 0 stays in the frame, +1 leaves it, -1 enters it."""
    h, w = hw
    tau = np.linspace(0.0, 1.0, n_frames)
    scale = s_px * (
        1.0 + rng.uniform(0.0, 0.12) * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * tau + rng.uniform(0, 6.3))
    )
    r = s_px * radius * 0.6  # keep most of a staying bird inside the frame
    lo, hi = np.array([r, r]), np.array([w - r, h - r])
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    p0 = rng.uniform(lo, hi)
    if leave == 0:
        p1 = rng.uniform(lo, hi)
        path = p0[None] + (p1 - p0)[None] * tau[:, None]
    else:
        # head for a random border and be fully outside (bird radius + margin) at tau_exit, then keep going
        out = 1.2 * s_px * radius + 2.0
        side = rng.integers(4)
        target = {0: (-out, p0[1]), 1: (w + out, p0[1]), 2: (p0[0], -out), 3: (p0[0], h + out)}[int(side)]
        target = np.asarray(target) + rng.uniform(-0.2, 0.2, 2) * np.array([w, h]) * (
            np.arange(2) != side // 2
        )
        tau_exit = rng.uniform(0.45, 0.8)
        path = p0[None] + (target - p0)[None] * (tau[:, None] / tau_exit)
        if leave < 0:
            path = path[::-1].copy()
    bob_amp = rng.uniform(0.0, 0.05) * h * (leave == 0)  # a leaving bird flies straight: it stays out
    bob = bob_amp * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * tau + rng.uniform(0, 6.3))
    centre = path + np.stack([np.zeros_like(bob), bob], axis=1)
    # turning about the camera's vertical (y) axis, plus a small rocking about its x axis
    turn = math.radians(settings.max_turn_deg) * rng.uniform(0.15, 1.0) * rng.choice([-1.0, 1.0])
    yaw = torch.tensor(
        turn * tau + 0.1 * np.sin(2 * np.pi * tau * rng.uniform(0.5, 1.5)), dtype=torch.float32
    )
    rock = torch.tensor(
        rng.uniform(0.0, 0.2) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * tau), dtype=torch.float32
    )
    q = quat_multiply(quat_multiply(quat_about_axis("y", yaw), quat_about_axis("x", rock)), q0[None].float())
    return _Track(centre.astype(np.float64), scale.astype(np.float64), q)


# ------------------------------------------------------------------------------------------------------------
# one sequence
# ------------------------------------------------------------------------------------------------------------


def _post_occluder(
    rng: np.random.Generator, hw: tuple[int, int], avoid_x: float, avoid_r: float
) -> tuple[int, int, np.ndarray] | None:
    """A static vertical post ``(x0, x1, texture (H, x1 - x0, 3) float32)`` clear of ``avoid_x ± avoid_r``,
    or ``None`` when there is no room."""
    h, w = hw
    pw = max(2, int(round(rng.uniform(0.04, 0.08) * w)))
    candidates = [x for x in range(0, w - pw) if abs(x + pw / 2 - avoid_x) > avoid_r + pw / 2]
    if not candidates:
        return None
    x0 = int(candidates[rng.integers(len(candidates))])
    base = rng.uniform(0.25, 0.6) * np.array([1.0, 0.75, 0.5]) * rng.uniform(0.9, 1.1, 3)  # bark brown/grey
    shade = 0.85 + 0.3 * np.linspace(0, 1, pw)[None, :, None] * np.ones((h, 1, 1))
    grain = rng.normal(0, 0.03, (h, pw, 1))
    tex = np.clip(base[None, None] * shade + grain, 0, 1).astype(np.float32)
    return x0, x0 + pw, tex


def synthesize_video(
    name: str, rng: np.random.Generator, template, settings: VideoSynthSettings, light_seed: int = 0
) -> SynthVideo:
    """Generate one sequence (see the module docstring).

    Args:
        name: sequence name.
        rng: the sequence's random generator (all randomness comes from it).
        template: the mesh template (``slopekp.mesh.load_template("procedural")``).
        settings: sizes, lengths and probabilities.
        light_seed: seed of the per-bird lighting (drawn once per bird, so that it does not flicker).
    """
    h, w = settings.frame_size
    n_frames = int(rng.integers(settings.min_frames, settings.max_frames + 1))
    n_birds = int(rng.integers(1, settings.max_birds + 1))
    background = np.asarray(random_background(rng, h, w), dtype=np.float32)
    birds = [sample_bird(rng, template, deform=settings.deform) for _ in range(n_birds)]
    views = np.asarray(sample_viewpoint(rng, n_birds), dtype=np.float32).reshape(n_birds, 4)
    mover = int(rng.integers(n_birds)) if rng.random() < settings.p_leave_enter else -1
    # bird 0 never enters, so that somebody is in the first frame; the mover may be bird 0 only if it leaves
    direction = int(rng.choice([-1, 1])) if mover > 0 else 1
    tracks, radii = [], []
    for k, bird in enumerate(birds):
        radius = float(bird.verts.norm(dim=-1).max())
        length = rng.uniform(*settings.bird_length) * h
        s_px = length / (2.0 * max(float(bird.verts[:, 1].abs().max()), 1e-3))
        leave = direction if k == mover else 0
        tracks.append(
            _sample_track(rng, n_frames, (h, w), s_px, radius, torch.from_numpy(views[k]), settings, leave)
        )
        radii.append(radius)
    # post: kept away from bird 0's first position so that bird 0 is visible in frame 0
    post = None
    if rng.random() < settings.p_occluder:
        c0 = tracks[0].centre[0]
        post = _post_occluder(rng, (h, w), float(c0[0]), float(tracks[0].scale[0] * radii[0]))
    order = rng.permutation(n_birds)  # back to front

    # camera of every bird in every frame, and the square patch (corner, side) it is rendered in
    cams = np.zeros((n_frames, n_birds, 7), np.float32)
    corners = np.zeros((n_frames, n_birds, 2), np.int64)
    sizes = []
    for k, tr in enumerate(tracks):
        sizes.append(int(math.ceil(2.0 * tr.scale.max() * radii[k] / 0.95)) + 2)  # fits in any pose
        cams[:, k, 0] = tr.scale
        cams[:, k, 1:3] = tr.centre
        cams[:, k, 3:] = tr.quat.numpy()
        corners[:, k] = np.floor(tr.centre - sizes[k] / 2).astype(np.int64)
    # render each bird in all the frames where its patch meets the frame (batched over frames)
    patches: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for k in range(n_birds):
        size = sizes[k]
        x0, y0 = corners[:, k, 0], corners[:, k, 1]
        meets = (x0 < w) & (x0 + size > 0) & (y0 < h) & (y0 + size > 0)
        ts = np.flatnonzero(meets)
        if ts.size == 0:
            continue
        # frame px -> patch px (minus the corner) -> patch NDC with pixel centres, x = (2u + 1)/size - 1
        offset = (1.0 - 2.0 * torch.from_numpy(corners[ts, k]).float()) / size - 1.0
        patch_cams = affine_camera(torch.from_numpy(cams[ts, k]), torch.full((ts.size,), 2.0 / size), offset)
        lighting = random_lighting(np.random.default_rng([light_seed, k]))  # fixed per bird: no flicker
        renderer = Renderer(RenderSettings(image_size=size))
        for c in range(0, ts.size, _RENDER_CHUNK):
            out = renderer(
                birds[k].verts[None],
                template.faces,
                patch_cams[None, c : c + _RENDER_CHUNK],
                mode="hard",
                uv_image=birds[k].uv_image[None],
                verts_uv=template.verts_uv,
                lighting=lighting,
            )
            alpha = out.alpha[0].detach().cpu().numpy() > 0.5
            rgb = out.rgb[0].detach().cpu().permute(0, 2, 3, 1).numpy()
            for j, t_ in enumerate(ts[c : c + _RENDER_CHUNK]):
                patches[int(t_), k] = (alpha[j], rgb[j])

    frames = np.empty((n_frames, h, w, 3), np.uint8)
    labels = np.zeros((n_frames, h, w), np.uint8)
    area = np.zeros((n_frames, n_birds), np.int64)
    trunc = np.zeros((n_frames, n_birds), bool)
    for t in range(n_frames):
        img = background.copy()
        lab = labels[t]
        for k in order:
            if (t, k) not in patches:
                continue
            alpha, rgb = patches.pop((t, k))
            x0, y0 = (int(v) for v in corners[t, k])
            fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + sizes[k], w), min(y0 + sizes[k], h)
            inside = alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
            area[t, k] = int(inside.sum())
            trunc[t, k] = bool(alpha.sum() > area[t, k])
            img[fy0:fy1, fx0:fx1][inside] = rgb[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0][inside]
            lab[fy0:fy1, fx0:fx1][inside] = k + 1
        if post is not None:
            px0, px1, tex = post
            img[:, px0:px1] = tex
            lab[:, px0:px1] = 0
        frames[t] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)

    visible = np.stack([(labels == k + 1).sum(axis=(1, 2)) for k in range(n_birds)], axis=1).astype(np.int64)
    # ids: birds not visible in frame 0 first, then the visible ones, so max id is visible in frame 0 (DAVIS)
    perm = sorted(range(n_birds), key=lambda k: (visible[0, k] > 0, k))
    if visible[0, perm[-1]] == 0:
        raise RuntimeError(f"sequence {name}: no bird visible in the first frame (generator bug)")
    lut = np.zeros(256, np.uint8)
    for new, k in enumerate(perm):
        lut[k + 1] = new + 1
    labels = lut[labels]
    p = np.asarray(perm)
    return SynthVideo(
        name=name,
        frames=frames,
        labels=labels,
        object_ids=np.arange(1, n_birds + 1, dtype=np.int64),
        cameras_px=cams[:, p],
        verts=np.stack([birds[k].verts.detach().cpu().numpy().astype(np.float32) for k in perm]),
        faces=template.faces.detach().cpu().numpy().astype(np.int64),
        area_px=area[:, p],
        visible_px=visible[:, p],
        truncated=trunc[:, p],
        depth_order=np.asarray([perm.index(int(k)) for k in order], dtype=np.int64),
    )
