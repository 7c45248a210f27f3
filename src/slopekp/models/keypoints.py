"""Keypoint pose machinery (METHOD §4.6, §7.7): heatmap decoder, soft-argmax, PnP settings, visibility, targets.

The keypoint pose head itself (:class:`slopekp.models.pose.KeypointPoseHead`) is a thin shell over this module:
``decoder(features) -> heatmaps -> soft_argmax -> (points2d, confidence) -> solve_pnp -> camera``. This module
does not import :mod:`slopekp.models.pose`, so there is no import cycle.

Conventions (``docs/conventions.md``):

* ``K`` keypoints are template *vertices* (farthest-point sampling,
  :func:`~slopekp.mesh.template.farthest_point_sampling`); heatmap channel ``k`` belongs to vertex
  ``keypoint_index[k]`` (correspondences are known).
* NDC: x right, y **down**, both in ``[-1, 1]``. Pixel ``(row i, col j)`` of an ``H × W`` heatmap is the NDC point
  ``x_j = (2j+1)/W − 1``, ``y_i = (2i+1)/H − 1`` (pixel centres, as the renderer's
  :func:`~slopekp.render.rasterize.pixel_centres`). METHOD §7.7 writes the target grid as ``2j/W − 1``; we use
  the renderer's pixel centres everywhere (targets, soft-argmax, visibility), so the three agree exactly.
* Gaussian widths are in NDC, so they do not depend on the heatmap size: the targets use ``σ = 0.05``
  (≈ 6.4 px at 256², METHOD §7.7 item 5) and the confidence window ``σ = 27/256`` (13.5 px at 256², METHOD §4.6).

Example:
    >>> pts = torch.tensor([[[0.25, -0.5]]])
    >>> hm = heatmap_targets(pts, torch.tensor([[True]]), (64, 64))
    >>> res = soft_argmax(hm)
    >>> bool(torch.allclose(res.points2d, pts, atol=1e-4)), float(res.confidence.sum())
    (True, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slopekp.geometry.camera import project_points
from slopekp.geometry.pnp import PnPResult, solve_pnp

if TYPE_CHECKING:
    from slopekp.render.renderer import Renderer

__all__ = [
    "CONFIDENCE_SIGMA",
    "FEATURE_LEVELS",
    "TARGET_SIGMA",
    "HeatmapDecoder",
    "KeypointVisibility",
    "PnPSettings",
    "SoftArgmax",
    "heatmap_grid",
    "heatmap_targets",
    "keypoint_visibility",
    "soft_argmax",
]

FEATURE_LEVELS = ("layer1", "layer2", "layer3", "layer4")
"""Encoder feature keys, fine to coarse (strides 4, 8, 16, 32)."""
TARGET_SIGMA = 0.05
"""Width (NDC) of the proxy ground-truth Gaussians (METHOD §7.7 item 5: ≈ 6.4 px at 256²)."""
CONFIDENCE_SIGMA = 27.0 / 256.0
"""Width (NDC) of the soft-argmax confidence window: 13.5 px at 256² (METHOD §4.6), the same NDC at any size."""


# ------------------------------------------------------------------------------------------------------------
# pixel grid, soft-argmax and targets (pure functions)
# ------------------------------------------------------------------------------------------------------------
def heatmap_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """NDC pixel centres of an ``H × W`` heatmap: ``x (W,)`` with ``x_j = (2j+1)/W − 1`` and ``y (H,)``."""
    x = (2 * torch.arange(width, device=device, dtype=dtype) + 1) / width - 1
    y = (2 * torch.arange(height, device=device, dtype=dtype) + 1) / height - 1
    return x, y


def _check_heatmaps(heatmaps: Tensor) -> None:
    if not isinstance(heatmaps, Tensor) or heatmaps.dim() != 4 or not heatmaps.is_floating_point():
        shape = tuple(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
        raise ValueError(f"heatmaps must be a floating-point tensor of shape (B, K, H, W), got {shape}")
    if heatmaps.shape[1] == 0 or heatmaps.shape[2] == 0 or heatmaps.shape[3] == 0:
        raise ValueError(f"heatmaps must have K, H, W >= 1, got {tuple(heatmaps.shape)}")


class SoftArgmax(NamedTuple):
    """Result of :func:`soft_argmax`."""

    points2d: Tensor
    """``(B, K, 2)`` expected positions in NDC ``(x right, y down)``."""
    confidence: Tensor
    """``(B, K)`` non-negative, summing to 1 over ``K`` for each sample."""


def soft_argmax(
    heatmaps: Tensor,
    confidence_sigma: float = CONFIDENCE_SIGMA,
    eps: float = 1e-6,
    floor: float = 1e-8,
    window: float | None = None,
    scaled: bool = False,
    softmax: bool = False,
) -> SoftArgmax:
    """Differentiable 2D keypoints and confidences from raw heatmaps (METHOD §4.6, the ``is_training`` path).

    1. ``Hₖ = relu(heatmapₖ)``, ``Ĥₖ = Hₖ / (Σ_xy Hₖ + eps)`` (a distribution over pixels, or 0 if ``Hₖ ≡ 0``).
    2. ``pₖ = Σ_xy (x, y)·Ĥₖ(x, y)`` on the pixel-centre grid (:func:`heatmap_grid`).
    3. ``cₖ = Σ_xy Gₖ·Ĥₖ`` with ``Gₖ = exp(−‖(x, y) − pₖ‖² / 2σ²)``: the fraction of the heatmap's mass within
       about σ of its mean, in ``[0, 1]`` (1 for a peak much narrower than σ, small for a diffuse or
       multi-modal map). METHOD's ``Σ G·H / σ²`` uses the un-normalised ``H`` instead, i.e. also the height of
       the map; we take the shape only, so a confidence does not depend on the decoder's output scale (the
       heatmap loss does not constrain the scale of occluded keypoints' channels, METHOD §7.7 item 6).
    4. ``confidence = (c + floor) / Σₖ (c + floor)``. The tiny ``floor`` keeps every weight positive, so PnP
       always has ≥ 3 positive weights; if all maps are zero the weights are uniform (no evidence either way).

    Args:
        heatmaps: ``(B, K, H, W)`` raw decoder output (no activation).
        confidence_sigma: window width in NDC (default 13.5 px at 256²; the same NDC at any heatmap size).
        eps: added to each channel's mass before normalising (METHOD: 1e-6).
        floor: added to each raw confidence before normalising over keypoints.
        window: if given (NDC), step 1 first keeps only the pixels within ``window`` (Chebyshev distance) of each
            channel's maximum: a *local* soft-argmax. A decoder early in training outputs low, wide maps whose
            background mass pulls the global expectation towards the image centre (the 2D points, and then the
            PnP scale, collapse); around the peak the position is the peak's, as in METHOD's argmax inference,
            and still differentiable. The confidence is then the mass near the peak relative to the whole map.
        scaled: step 3 on the un-normalised ``Hₖ`` (METHOD's ``Σ G·H``, up to the constant ``1/σ²``): the map's
            mass near its mean, so a low map weighs little. Meant for decoders trained to output zero maps for the
            keypoints they cannot see (``KeypointPoseHead(occluded_zero=True)``).
        softmax: step 1 is a spatial softmax, ``Ĥₖ = softmax_xy(heatmapₖ)``, for decoders trained with
            :func:`~slopekp.models.pose_losses.heatmap_kl_loss` (the maps are logits); ``scaled`` then has no
            effect (every map sums to 1).
    Returns:
        :class:`SoftArgmax` ``(points2d (B, K, 2), confidence (B, K))``, differentiable w.r.t. ``heatmaps``.
    """
    _check_heatmaps(heatmaps)
    if not (confidence_sigma > 0 and math.isfinite(confidence_sigma)):
        raise ValueError(f"confidence_sigma must be a positive finite number, got {confidence_sigma!r}")
    _, _, h, w = heatmaps.shape
    gx, gy = heatmap_grid(h, w, device=heatmaps.device, dtype=heatmaps.dtype)
    if softmax:
        hm = torch.softmax(heatmaps.flatten(-2), dim=-1).view_as(heatmaps)
        total = 1.0  # every map sums to 1
    else:
        hm = F.relu(heatmaps)
        total = hm.sum(dim=(-2, -1), keepdim=True) + eps
    if window is not None:
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"window must be a positive finite number (NDC), got {window!r}")
        with torch.no_grad():
            flat = heatmaps.flatten(-2).argmax(-1)  # (B, K)
            cx, cy = gx[flat % w], gy[flat // w]
            keep_x = ((gx - cx[..., None]).abs() <= window).to(hm.dtype)  # (B, K, W)
            keep_y = ((gy - cy[..., None]).abs() <= window).to(hm.dtype)  # (B, K, H)
        local = hm * keep_y[..., :, None] * keep_x[..., None, :]
        lp = local / (local.sum(dim=(-2, -1), keepdim=True) + eps)
        px = (lp.sum(-2) * gx).sum(-1)
        py = (lp.sum(-1) * gy).sum(-1)
        prob = hm / total
    else:
        prob = hm / total  # (B, K, H, W)
        px = (prob.sum(-2) * gx).sum(-1)  # marginal over rows, then E[x]  (B, K)
        py = (prob.sum(-1) * gy).sum(-1)  # (B, K)
    # separable Gaussian window centred at the expected position: G = gx_win(x) · gy_win(y)
    inv = -0.5 / confidence_sigma**2
    wx = torch.exp(inv * (gx - px[..., None]) ** 2)  # (B, K, W)
    wy = torch.exp(inv * (gy - py[..., None]) ** 2)  # (B, K, H)
    mass = torch.einsum("bkhw,bkh,bkw->bk", hm if scaled else prob, wy, wx)
    conf = mass + floor
    return SoftArgmax(torch.stack((px, py), dim=-1), conf / conf.sum(-1, keepdim=True))


@torch.no_grad()
def heatmap_targets(
    points2d: Tensor, visible: Tensor, size: int | tuple[int, int], sigma: float = TARGET_SIGMA
) -> Tensor:
    """Proxy ground-truth heatmaps (METHOD §7.7 item 5): one Gaussian per visible keypoint, no gradient.

    ``G_bk(y_i, x_j) = visible_bk · exp(−((x_j − u_bk)² + (y_i − v_bk)²) / 2σ²)`` on the pixel-centre grid of
    :func:`heatmap_grid` (peak value 1 when the point sits on a pixel centre). Inputs are detached: the targets
    supervise the decoder only, never the shape or camera that produced them (METHOD §7.7, last note).

    Args:
        points2d: ``(B, K, 2)`` NDC keypoints ``(x right, y down)``.
        visible: ``(B, K)`` bool; invisible keypoints get an all-zero map.
        size: heatmap side, or ``(H, W)``.
        sigma: Gaussian width in NDC (METHOD: 0.05 ≈ 6.4 px at 256²).
    Returns:
        ``(B, K, H, W)`` targets with ``points2d``'s dtype and device.
    """
    if not isinstance(points2d, Tensor) or points2d.dim() != 3 or points2d.shape[-1] != 2:
        shape = tuple(points2d.shape) if isinstance(points2d, Tensor) else type(points2d).__name__
        raise ValueError(f"points2d must have shape (B, K, 2), got {shape}")
    if not isinstance(visible, Tensor) or tuple(visible.shape) != tuple(points2d.shape[:2]):
        shape = tuple(visible.shape) if isinstance(visible, Tensor) else type(visible).__name__
        raise ValueError(f"visible must have shape (B, K) = {tuple(points2d.shape[:2])}, got {shape}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    pts = points2d.detach()
    gx, gy = heatmap_grid(h, w, device=pts.device, dtype=pts.dtype)
    inv = -0.5 / sigma**2
    ex = torch.exp(inv * (gx - pts[..., 0, None]) ** 2)  # (B, K, W)
    ey = torch.exp(inv * (gy - pts[..., 1, None]) ** 2)  # (B, K, H)
    return ey[..., :, None] * ex[..., None, :] * visible.to(pts.dtype)[..., None, None]


# ------------------------------------------------------------------------------------------------------------
# visibility (self-supervision block, METHOD §7.7 items 1–4, with a z-buffer instead of colour codes)
# ------------------------------------------------------------------------------------------------------------
class KeypointVisibility(NamedTuple):
    """Result of :func:`keypoint_visibility`."""

    visible: Tensor
    """``(B, K)`` bool."""
    points2d: Tensor
    """``(B, K, 2)`` projected keypoints in NDC (x right, y down)."""


@torch.no_grad()
def keypoint_visibility(
    verts: Tensor,
    faces: Tensor,
    camera: Tensor,
    keypoint_index: Tensor,
    renderer: Renderer,
    depth_tol: float | None = None,
) -> KeypointVisibility:
    """Which keypoint vertices the camera sees, from the hard renderer's z-buffer (no gradient).

    A keypoint is **visible** iff its projection lies inside the image and, at the pixel containing it
    (``j = ⌊(x+1)·W/2⌋``, ``i = ⌊(y+1)·H/2⌋``, the pixel whose centre is nearest), either

    * the front-most face is incident to the keypoint vertex (METHOD's test, as an index buffer instead of
      a colour-coded label render, so no palette collisions, §10 item 11), or
    * the front-most surface is not in front of the keypoint by more than ``depth_tol``:
      ``z_k ≤ depth(i, j) + depth_tol`` (an empty pixel has depth ``far``, so it passes).

    Why both: the renderer samples pixel *centres*, up to half a pixel from the vertex. Where the faces around a
    vertex are small, the centre can fall in a neighbouring non-incident face of the same surface (the depth
    test accepts it: the surface is continuous); where the surface is steep (near the silhouette), its depth
    at the centre can differ from the vertex's by more than the tolerance, but then the centre lies in one of
    the vertex's own faces (the incidence test accepts it). An occluder (a wing in front of the body) is
    non-incident *and* in front by more than the tolerance. Depth is ``s·(R X)_z + z_offset`` (weak
    perspective), so depth differences are in NDC units, like ``x`` and ``y``.

    Args:
        verts: ``(B, V, 3)`` object-frame vertices (e.g. the predicted shape).
        faces: ``(F, 3)`` int64.
        camera: ``(B, 7)`` weak-perspective cameras (e.g. the best multiplex camera).
        keypoint_index: ``(K,)`` int64 vertex indices.
        renderer: a :class:`~slopekp.render.renderer.Renderer`; its ``image_size`` sets the test's pixel grid and
            its ``z_offset`` the depths.
        depth_tol: NDC depth tolerance; ``None`` = two pixel widths, ``4 / min(H, W)`` (0.016 at 256², 0.0625 at
            64²): above the depth change across half a pixel diagonal for surfaces up to ~60° from the image
            plane, well below the gap between a wing and the body.
    Returns:
        :class:`KeypointVisibility` ``(visible (B, K) bool, points2d (B, K, 2) NDC)``.
    """
    if not isinstance(verts, Tensor) or verts.dim() != 3 or verts.shape[-1] != 3:
        shape = tuple(verts.shape) if isinstance(verts, Tensor) else type(verts).__name__
        raise ValueError(f"verts must have shape (B, V, 3), got {shape}")
    if not isinstance(camera, Tensor) or tuple(camera.shape) != (verts.shape[0], 7):
        shape = tuple(camera.shape) if isinstance(camera, Tensor) else type(camera).__name__
        raise ValueError(f"camera must have shape (B, 7) = ({verts.shape[0]}, 7), got {shape}")
    if not isinstance(keypoint_index, Tensor) or keypoint_index.dim() != 1 or keypoint_index.dtype != torch.long:
        raise ValueError("keypoint_index must be a (K,) int64 tensor")
    h, w = renderer.settings.hw
    if depth_tol is None:
        depth_tol = 4.0 / min(h, w)
    if not (depth_tol >= 0 and math.isfinite(depth_tol)):
        raise ValueError(f"depth_tol must be a non-negative finite number, got {depth_tol!r}")
    faces = faces.to(verts.device).long()
    kp = project_points(verts[:, keypoint_index], camera.to(verts.dtype), renderer.settings.z_offset)  # (B,K,3)
    frag = renderer(verts, faces, camera, mode="hard")
    col = torch.floor((kp[..., 0] + 1) * (w / 2)).long()
    row = torch.floor((kp[..., 1] + 1) * (h / 2)).long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    pix = row.clamp(0, h - 1) * w + col.clamp(0, w - 1)  # (B, K)
    face = frag.face_index.reshape(verts.shape[0], -1).gather(1, pix)  # (B, K), -1 = empty
    depth = frag.depth.reshape(verts.shape[0], -1).gather(1, pix)
    incident = (faces[face.clamp_min(0)] == keypoint_index[None, :, None]).any(-1) & (face >= 0)
    in_front = kp[..., 2] <= depth + depth_tol
    return KeypointVisibility(inside & (incident | in_front), kp[..., :2])


# ------------------------------------------------------------------------------------------------------------
# PnP settings
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PnPSettings:
    """How the keypoint head turns 2D–3D correspondences into a camera (:func:`~slopekp.geometry.pnp.solve_pnp`)."""

    robust: bool = True
    """Robust per-sample initialisation (RANSAC) and inlier filtering; else start from the identity rotation."""
    top_k: int | None = None
    """Keypoints RANSAC samples from (most confident first); ``None`` = ``max(K // 2, 4)`` (16 of 32)."""
    method: Literal["ortho", "sqpnp", "p3p", "ap3p"] = "ortho"
    """RANSAC solver: the weak-perspective ``"ortho"`` (default) or OpenCV's perspective ones (focal 1 in NDC)."""
    reproj_error: float = 0.2
    """RANSAC inlier threshold in NDC; the points beyond it get no weight in the refinement. 0.2 (a tenth of the image
    width) suits heads whose keypoints are about 0.13 off (median, NDC; docs/results/head_study.md): on six quickstart
    models it takes the rotation median from 44.2° to 39.2°, and on two heads trained on true poses from 23.4° and 23.9°
    to 22.1° and 22.9°, against 0.08, the geometry module's default for near-exact points, which discards good points
    with the bad (docs/results/pnp_threshold.md)."""
    iterations: int = 1000
    """RANSAC hypotheses per sample (about 30 ms per sample for 1000 on a CPU core)."""
    seed: int = 0
    """RANSAC seed (deterministic results)."""
    max_iter: int = 100
    """Levenberg–Marquardt iterations of the weighted orthographic refinement."""

    def __post_init__(self) -> None:
        if self.method not in ("ortho", "sqpnp", "p3p", "ap3p"):
            raise ValueError(f"PnPSettings.method must be one of 'ortho', 'sqpnp', 'p3p', 'ap3p', got {self.method!r}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"PnPSettings.iterations must be a positive int, got {self.iterations!r}")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"PnPSettings.max_iter must be a positive int, got {self.max_iter!r}")
        if not (self.reproj_error > 0 and math.isfinite(self.reproj_error)):
            raise ValueError(f"PnPSettings.reproj_error must be a positive finite number, got {self.reproj_error!r}")

    def solve(self, points2d: Tensor, points3d: Tensor, weights: Tensor) -> PnPResult:
        """:func:`~slopekp.geometry.pnp.solve_pnp` with these settings. Shapes ``(B, K, 2)``, ``(B, K, 3)``,
        ``(B, K)``; gradients flow to all three (implicit function theorem)."""
        if self.robust:
            return solve_pnp(
                points2d,
                points3d,
                weights,
                robust=True,
                top_k=self.top_k,
                max_iter=self.max_iter,
                reproj_error=self.reproj_error,
                iterations=self.iterations,
                method=self.method,
                seed=self.seed,
            )
        return solve_pnp(points2d, points3d, weights, robust=False, max_iter=self.max_iter)


# ------------------------------------------------------------------------------------------------------------
# heatmap decoder
# ------------------------------------------------------------------------------------------------------------
def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


class _Refine(nn.Module):
    """Residual refinement (LWTL's RRB): ``g = conv1×1(x)``, ``relu(g + conv3×3(relu(conv3×3(g))))``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, kernel_size=1)
        self.body = nn.Sequential(_conv3x3(cout, cout), nn.ReLU(inplace=True), _conv3x3(cout, cout))

    def forward(self, x: Tensor) -> Tensor:
        g = self.proj(x)
        return F.relu(g + self.body(g))


class HeatmapDecoder(nn.Module):
    """Top-down multi-scale heatmap decoder, a compact version of LWTL's (METHOD §4.6).

    Levels are visited coarse to fine, ``layer4 → layer3 → layer2 → layer1``, with widths
    ``base_width·(4, 2, 2, 1)`` (256, 128, 128, 64 for ``base_width = 64``, as LWTL). Per level ``L``:

    * ``h = relu(conv1×1(f_L))`` (reduce the encoder feature to the level's width);
    * at the deepest level, global context: ``h = h + GAP(h)`` (LWTL's TSE pools globally there);
      otherwise the coarser state is mapped and upsampled: ``h = h + up(relu(conv1×1(x)))`` (bilinear);
    * ``x = RRB(h)`` (residual 1×1 + two 3×3 convs).

    Output head (LWTL's ``Upsampler``): bilinear ×2, conv3×3 (→ ``base_width/2``), relu, bilinear to the
    heatmap size (skipped when already there), conv3×3 (→ K). No final activation.

    Simplifications against LWTL: no TSE transform convs and no channel attention (CAB); fusion is addition.

    Heatmap size: ``out_size=None`` gives **twice the layer1 resolution**, i.e. half the input side (128² for a
    256² image). METHOD's decoder upsamples to the full input size (256²); the targets' σ = 0.05 NDC is 3.2 px at
    128², ample for sub-pixel soft-argmax, and the last conv costs 4× less.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_keypoints: int,
        base_width: int = 64,
        out_size: int | tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            in_channels: channels of ``(layer1, layer2, layer3, layer4)``, e.g. ``(64, 128, 256, 512)`` for
                ResNet-18/34 (``width·(1, 2, 4, 8)``).
            num_keypoints: ``K``, the output channels.
            base_width: decoder width unit (LWTL: 64).
            out_size: heatmap side or ``(H, W)``; ``None`` = 2× the layer1 resolution.
        """
        super().__init__()
        if len(in_channels) != 4 or not all(isinstance(c, int) and c > 0 for c in in_channels):
            raise ValueError(f"in_channels must be 4 positive ints (layer1..layer4), got {in_channels!r}")
        if not (isinstance(num_keypoints, int) and num_keypoints >= 1):
            raise ValueError(f"num_keypoints must be a positive int, got {num_keypoints!r}")
        if not (isinstance(base_width, int) and base_width >= 2):
            raise ValueError(f"base_width must be an int >= 2, got {base_width!r}")
        if out_size is not None:
            out_size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
            if len(out_size) != 2 or not all(isinstance(s, int) and s > 0 for s in out_size):
                raise ValueError(f"out_size must be a positive int, (H, W) or None, got {out_size!r}")
        self.out_size = out_size
        widths = [base_width * m for m in (1, 2, 2, 4)]  # layer1..layer4
        coarse_to_fine = list(reversed(range(4)))  # 3, 2, 1, 0
        self.reduce = nn.ModuleDict(
            {
                FEATURE_LEVELS[i]: nn.Sequential(nn.Conv2d(in_channels[i], widths[i], 1), nn.ReLU(inplace=True))
                for i in coarse_to_fine
            }
        )
        self.lateral = nn.ModuleDict(
            {
                FEATURE_LEVELS[i]: nn.Sequential(nn.Conv2d(widths[i + 1], widths[i], 1), nn.ReLU(inplace=True))
                for i in coarse_to_fine[1:]
            }
        )
        self.refine = nn.ModuleDict({FEATURE_LEVELS[i]: _Refine(widths[i], widths[i]) for i in coarse_to_fine})
        mid = base_width // 2
        self.up_conv = _conv3x3(widths[0], mid)
        self.out_conv = _conv3x3(mid, num_keypoints)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """``features`` ``{layer1..layer4: (B, C_l, H_l, W_l)}`` -> heatmaps ``(B, K, H, W)``."""
        missing = [k for k in FEATURE_LEVELS if k not in features]
        if missing:
            raise ValueError(f"features lacks {missing}; the decoder needs {list(FEATURE_LEVELS)}")
        x = None
        for name in reversed(FEATURE_LEVELS):
            h = self.reduce[name](features[name])
            if x is None:
                h = h + h.mean(dim=(-2, -1), keepdim=True)
            else:
                h = h + F.interpolate(self.lateral[name](x), size=h.shape[-2:], mode="bilinear", align_corners=False)
            x = self.refine[name](h)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.relu(self.up_conv(x))
        if self.out_size is not None and tuple(x.shape[-2:]) != self.out_size:
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return self.out_conv(x)
