"""Differentiable mesh renderer in pure PyTorch: soft silhouette, soft RGB, hard z-buffer (CPU and CUDA)."""

from slopekp.render.rasterize import (
    HardFragments,
    SoftPairs,
    hard_rasterize,
    pixel_centres,
    soft_cutoff_radius,
    soft_rasterize,
)
from slopekp.render.renderer import MODES, Renderer, RenderResult, RenderSettings
from slopekp.render.shade import (
    Lighting,
    SoftmaxWeights,
    camera_facing_normals,
    lambert_factor,
    softmax_rgb_blend,
    softmax_weights,
)
from slopekp.render.texture import UV_SHIFT, sample_bilinear, sphere_to_uv, uv_to_sphere

__all__ = [
    "MODES",
    "UV_SHIFT",
    "HardFragments",
    "Lighting",
    "RenderResult",
    "RenderSettings",
    "Renderer",
    "SoftPairs",
    "SoftmaxWeights",
    "camera_facing_normals",
    "hard_rasterize",
    "lambert_factor",
    "pixel_centres",
    "sample_bilinear",
    "soft_cutoff_radius",
    "soft_rasterize",
    "softmax_rgb_blend",
    "softmax_weights",
    "sphere_to_uv",
    "uv_to_sphere",
]
