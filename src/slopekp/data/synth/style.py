"""SynthBirds looks: the named kinds of background, lighting and plumage a dataset is rendered in.

A *look* is one kind per axis. The default look (``natural`` / ``lambert`` / ``random``) is the generator as it
always was, draw for draw, so folders made before looks existed are made again byte for byte. Another kind draws
from a stream of its own (:mod:`slopekp.data.synth.writer`), so a dataset made with the same seed in another look
has the same birds' shapes, cameras, occluders and keypoints: it differs in appearance only. The three axes share
that stream, so changing one axis's kind changes the others' draws too (not their kinds). ``mixed`` draws one of
the axis's other kinds per instance.

* backgrounds (:func:`slopekp.data.synth.background.styled_background`):
  ``natural`` (gradient, blurred blobs, branches, noise), ``noise`` (colour noise of several scales, smooth or
  blocky), ``flat`` (one colour of any hue with a faint gradient), ``pattern`` (stripes, checks or cells in two or
  more colours);
* lighting (:func:`slopekp.data.synth.scene.styled_lighting`): ``lambert`` (ambient + one light from the camera's
  side, mostly from above), ``flat`` (ambient only: no shading), ``harsh`` (little ambient, a strong light from the
  side or below);
* plumage (:func:`slopekp.data.synth.texture.styled_texture`): ``random`` (back/belly fields, head, wings, bars,
  stripes, patches or spots in bird-like palettes), ``flat`` (each part one flat colour of any hue),
  ``countershaded`` (one hue, dark back to light belly, no parts), ``patterned`` (two colours in a high-frequency
  pattern over the whole body).

:data:`HELD_OUT` is the look of the transfer study (docs/results/transfer.md): every axis at a kind the default
never draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BACKGROUNDS", "HELD_OUT", "LIGHTINGS", "PLUMAGES", "Look", "pick_kind"]

BACKGROUNDS = ("natural", "noise", "flat", "pattern", "mixed")
LIGHTINGS = ("lambert", "flat", "harsh", "mixed")
PLUMAGES = ("random", "flat", "countershaded", "patterned", "mixed")


@dataclass(frozen=True)
class Look:
    """One kind per axis (see the module docstring); the defaults are the original generator's."""

    background: str = "natural"
    lighting: str = "lambert"
    plumage: str = "random"

    def __post_init__(self) -> None:
        for axis, kinds in (("background", BACKGROUNDS), ("lighting", LIGHTINGS), ("plumage", PLUMAGES)):
            if getattr(self, axis) not in kinds:
                raise ValueError(f"{axis} must be one of {', '.join(kinds)}; got {getattr(self, axis)!r}")


HELD_OUT = Look(background="noise", lighting="harsh", plumage="flat")
"""The transfer study's held-out look: colour-noise backgrounds, harsh side light, flat part colours."""


_AXES = {BACKGROUNDS: "background", LIGHTINGS: "lighting", PLUMAGES: "plumage"}


def pick_kind(rng: np.random.Generator, kind: str, kinds: tuple[str, ...]) -> str:
    """``kind`` itself, or for ``mixed`` one of ``kinds`` but ``mixed`` drawn uniformly from ``rng`` (the only
    draw a look adds; none for a fixed kind, so the default look draws exactly what it always drew).

    Raises:
        ValueError: ``kind`` is not one of ``kinds`` (naming the axis).
    """
    if kind not in kinds:
        raise ValueError(f"{_AXES.get(kinds, 'kind')} must be one of {', '.join(kinds)}; got {kind!r}")
    if kind != "mixed":
        return kind
    fixed = [k for k in kinds if k != "mixed"]
    return fixed[int(rng.integers(len(fixed)))]
