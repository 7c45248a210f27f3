"""HSV colours for the SynthBirds textures, backgrounds and occluders."""

from __future__ import annotations

import numpy as np

__all__ = ["hsv_colour"]


def hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    """RGB ``(3,)`` float64 in [0, 1] of hue ``h`` (turns, wrapped into [0, 1)), saturation ``s`` and value ``v``
    (both clamped to [0, 1])."""
    return np.array(_hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
