"""The settings of the SynthBirds image generator: one dataclass, its defaults written once, checked once.

:class:`SynthOptions` is the ``synth`` config section (:class:`~slopekp.config.SynthConfig`: counts, image size,
deformation, occlusion and truncation probabilities, workers) plus the seed and the options only the generator
has (supersampling, the bird's fill range). Every field's default is written once: the section's in
:class:`~slopekp.config.SynthConfig`, the rest here. Building one checks every field (:meth:`SynthOptions.validate`),
so a bad value fails before anything is written or allocated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from slopekp.config import MIN_SYNTH_SIZE, SynthConfig
from slopekp.data.synth.style import Look
from slopekp.utils import MAX_SYNTH_COUNT, MAX_SYNTH_SIZE

__all__ = ["SynthOptions"]

#: Fields that only change how the work is spread, never the files (the output is byte-identical for any value).
_NOT_RESULT_FIELDS = ("workers",)


@dataclass
class SynthOptions(SynthConfig):
    """Everything :func:`~slopekp.data.synth.writer.generate_synthbirds` needs (the ``synth`` section's fields
    with their defaults, and the fields below).

    Build it from a config with :meth:`from_config`; the constructor checks every value (``ValueError`` naming the
    option) and stores ``size``/``supersample`` as ``int`` and ``deform`` and the probabilities as ``float``.
    """

    seed: int = 0
    """Master seed: instance ``i`` of split ``s`` draws only from ``np.random.default_rng([seed, split_code(s),
    i])``."""
    supersample: int = 1
    """1: render at ``size`` (the mask is exactly the hard render at pixel centres; the composited edge is softened
    with a 0.6 px Gaussian). N > 1: render at ``N·size`` and area-average (mask: coverage >= 1/2)."""
    fill_min: float = 0.5
    fill_max: float = 0.85
    """Range of the bird's larger projected side as a fraction of the image side (the camera's distance)."""
    background: str = "natural"
    lighting: str = "lambert"
    plumage: str = "random"
    """The look (:mod:`slopekp.data.synth.style`): one kind per axis, or ``mixed``; the defaults are the original
    generator's, draw for draw."""

    def __post_init__(self) -> None:
        self.validate()
        self.size = int(self.size)
        self.deform = float(self.deform)
        self.occlusion_prob = float(self.occlusion_prob)
        self.truncation_prob = float(self.truncation_prob)
        self.supersample = int(self.supersample)

    @classmethod
    def from_config(cls, section: SynthConfig, seed: int) -> SynthOptions:
        """The options of a config's ``synth`` section with the run's ``seed`` (``cfg.seed``)."""
        return cls(**asdict(section), seed=seed)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option the generator cannot honour."""
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
        n_train, n_test = self.n_train, self.n_test
        if n_train < 0 or n_test < 0 or n_train + n_test == 0:
            raise ValueError(f"n_train and n_test must be >= 0 and not both 0, got {n_train}, {n_test}")
        for name, n in (("n_train", n_train), ("n_test", n_test)):
            if n > MAX_SYNTH_COUNT:
                raise ValueError(f"{name} must be <= {MAX_SYNTH_COUNT} per split, got {n}")
        if self.size < MIN_SYNTH_SIZE:
            raise ValueError(f"size must be >= {MIN_SYNTH_SIZE} pixels, got {self.size}")
        if self.size > MAX_SYNTH_SIZE:
            raise ValueError(f"size must be <= {MAX_SYNTH_SIZE} pixels, got {self.size}")
        occ, trunc = self.occlusion_prob, self.truncation_prob
        if not (0 <= occ <= 1 and 0 <= trunc <= 1):
            raise ValueError(f"occlusion_prob/truncation_prob must be in [0, 1], got {occ}, {trunc}")
        if self.deform < 0 or not math.isfinite(self.deform):
            raise ValueError(f"deform must be a finite number >= 0, got {self.deform}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        if not 0 < self.fill_min <= self.fill_max <= 1:
            raise ValueError(f"need 0 < fill_min <= fill_max <= 1, got {self.fill_min}, {self.fill_max}")
        self.look()  # names the axis whose kind is unknown

    def look(self) -> Look:
        """The background, lighting and plumage kinds as a :class:`~slopekp.data.synth.style.Look`."""
        return Look(self.background, self.lighting, self.plumage)

    def instance_options(self) -> dict[str, Any]:
        """The options every instance is drawn and rendered with, as ``meta.json`` records them (``options``)."""
        names = ("size", "deform", "occlusion_prob", "truncation_prob", "supersample", "fill_min", "fill_max",
                 "background", "lighting", "plumage")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def result_settings(self) -> dict[str, Any]:
        """``name -> value`` of the options that change the files (a run manifest's settings): the ``synth``
        section's fields but ``workers``, the seed, and each generator-only option where it is not at its default
        (so a folder made before one existed, or with it at its default, keeps its settings)."""
        section = {f.name for f in fields(SynthConfig)}
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NOT_RESULT_FIELDS:
                continue
            if f.name in section or f.name == "seed" or value != f.default:
                out[f.name] = value
        return out
