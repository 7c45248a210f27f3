"""Typed experiment configuration: dataclasses + YAML files + ``key=value`` command-line overrides.

One :class:`Config` holds a section per subsystem. A run's config is resolved as

    defaults (the dataclasses)  <-  YAML file (``--config configs/x.yaml``)  <-  CLI overrides (``a.b=value``)

and the resolved config is saved next to every output as ``config.yaml`` (:func:`save_config`). Unknown keys and
values of the wrong type are errors (OmegaConf structured configs), never silently ignored.

Runtime objects (the device, the template mesh, the dataset) are *not* stored here: commands build them from
the config at the top and pass them down as plain arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from slopekp.utils import atomic_write


class ConfigError(ValueError):
    """A config file or override is malformed, names an unknown key or has a value of the wrong type."""


@dataclass
class TemplateConfig:
    path: str = "procedural"
    """Template mesh: ``procedural`` (the built-in bird), ``icosphere`` or a ``.npy``/``.npz``/``.obj`` file."""
    symmetry_tol: float = 1e-6
    """Mirror-distance tolerance for detecting left/right vertex pairs (METHOD §3.2)."""


@dataclass
class RenderConfig:
    image_size: int = 64
    """Side of the square rendered image in pixels."""
    sigma: float = 1e-4
    """SoftRas silhouette sharpness (squared NDC distance scale)."""
    gamma: float = 1e-4
    """SoftRas depth-softmax temperature for RGB aggregation."""
    z_offset: float = 5.0
    """Depth offset added to weak-perspective depth (METHOD §2.1)."""
    near: float = 1.0
    far: float = 100.0


@dataclass
class DataConfig:
    root: str = "outputs/synthbirds"
    """Dataset folder in CMR layout (``images/``, ``<split>_cub_cleaned.mat``, ``anno_<split>.mat``)."""
    split: str = "train"
    img_size: int = 256
    padding_frac: float = 0.05
    jitter_frac: float = 0.05
    flip: bool = True
    """Random horizontal mirroring with p = 0.5 (train split only; build ``CubDataset(flip=None)``)."""
    images_dir: str = ""
    """Images folder (empty = ``<root>/images``; for real CUB e.g. ``CUB_200_2011/images``)."""
    sfm_dir: str = ""
    """Folder of ``anno_<split>.mat`` SfM cameras (empty = ``<root>``; CMR's is ``cachedir/cub/sfm``)."""
    max_items: int = 0
    """Use only the first ``max_items`` samples (0 = all)."""


@dataclass
class SynthConfig:
    n_train: int = 200
    n_test: int = 100
    size: int = 128
    """Side of the generated square images in pixels."""
    deform: float = 1.0
    """Scale of the random symmetric shape deformation (0 = the template itself)."""
    workers: int = 0
    """Worker processes for generation (0 = in-process)."""
    occlusion_prob: float = 0.2
    """Probability of an occluder (branch, leaves) in front of the bird; it is cut out of the mask."""
    truncation_prob: float = 0.1
    """Probability that 10–35% of the bird lies outside the image."""


@dataclass
class MultiplexConfig:
    num_az: int = 8
    num_el: int = 5
    num_cr: int = 1
    base_bias_deg: float = 90.0
    """Base rotation about x applied to every hypothesis (head view, METHOD §5.1)."""
    el_bias_deg: float = 0.0
    az_bias_deg: float = 0.0
    scale_bias: float = 0.8
    az_range_deg: float = 30.0
    el_range_deg: float = 30.0
    cr_range_deg: float = 60.0
    offset_gain: float = 0.1
    """Gain ``c`` in ``tanh(c·α)`` for the angle offsets (0.1 in Stage I, METHOD §5.2)."""
    steps: int = 150
    lr: float = 0.1
    peakiness: float = 20.0
    batch_size: int = 12
    image_size: int = 64
    """Side of the silhouettes Stage I renders and compares (pixels)."""
    save_every: int = 1
    """Stage I rewrites its store (atomically) after every this many batches, so a killed run resumes."""


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA if present), ``cpu`` or ``cuda[:N]``."""
    out_dir: str = "outputs/run"
    threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""
    template: TemplateConfig = field(default_factory=TemplateConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    multiplex: MultiplexConfig = field(default_factory=MultiplexConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve defaults <- YAML ``path`` <- ``overrides`` (``["multiplex.steps=10", ...]``) into a :class:`Config`.

    Raises:
        ConfigError: naming the file or override and the problem (unknown key, wrong type, bad YAML).
    """
    base = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as e:  # yaml errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        try:
            base = OmegaConf.merge(base, file_cfg)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{path}: {_first_line(e)}") from e
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form key=value")
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist([ov]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {ov!r}: {_first_line(e)}") from e
    cfg = OmegaConf.to_object(base)
    assert isinstance(cfg, Config)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as plain YAML (atomically); reload it with :func:`load_config`."""
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    with atomic_write(path, "w") as f:
        f.write(text)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]
