"""The settings of the appearance augmentation (:mod:`slopekp.data.augment`): the fields the ``data`` config section
takes from :class:`AppearanceConfig` and the check of ``data.background_kinds``, kept apart from
:mod:`slopekp.config` so that the augmentation's :class:`~slopekp.data.augment.Augment` extends the same fields
instead of repeating them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AMOUNTS", "AUGMENT_BACKGROUNDS", "AppearanceConfig", "background_kinds", "background_kinds_error"]

AUGMENT_BACKGROUNDS = ("other", "flat", "noise", "pattern")
"""The replacement backgrounds of the appearance augmentation (:mod:`slopekp.data.augment`)."""


@dataclass
class AppearanceConfig:
    """Appearance augmentation of Stage III's crops, part of the ``data`` section (0 = off; what each does:
    :class:`slopekp.data.augment.Augment`, which extends this with its checks)."""

    colour_jitter: float = 0.0
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    noise_std: float = 0.0
    background_prob: float = 0.0
    background_kinds: str = ",".join(AUGMENT_BACKGROUNDS)
    shading: float = 0.0


AMOUNTS = ("colour_jitter", "grayscale_prob", "blur_prob", "noise_std", "background_prob", "shading")
"""The numeric fields of :class:`AppearanceConfig`: strengths and probabilities, each in [0, 1]."""


def background_kinds(value: str) -> tuple[str, ...]:
    """The names in ``background_kinds`` (comma-separated; blanks dropped), unchecked."""
    return tuple(k.strip() for k in str(value).split(",") if k.strip())


def background_kinds_error(value: str) -> str | None:
    """Why ``background_kinds`` (comma-separated names of :data:`AUGMENT_BACKGROUNDS`) is bad, or None."""
    kinds = background_kinds(value)
    if kinds and not set(kinds) - set(AUGMENT_BACKGROUNDS):
        return None
    return f"background_kinds must name some of {', '.join(AUGMENT_BACKGROUNDS)} (comma-separated), got {value!r}"
