"""Figures and visualisation helpers (PIL-based; see :mod:`slopekp.viz.figures`)."""

from slopekp.viz.figures import (
    KEYPOINT_COLORS,
    draw_points,
    draw_text,
    histogram_image,
    make_grid,
    mask_outline,
    overlay_mask,
    overlay_mask_outline,
    save_png,
    to_uint8,
)

__all__ = [
    "KEYPOINT_COLORS",
    "draw_points",
    "draw_text",
    "histogram_image",
    "make_grid",
    "mask_outline",
    "overlay_mask",
    "overlay_mask_outline",
    "save_png",
    "to_uint8",
]
