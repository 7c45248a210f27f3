"""Typed experiment configuration: dataclasses + YAML files + ``key=value`` command-line overrides.

One :class:`Config` holds a section per subsystem. A run's config is resolved as

    defaults (the dataclasses)  <-  YAML file (``--config configs/x.yaml``)  <-  CLI overrides (``a.b=value``)

and the resolved config is saved next to every output as ``config.yaml`` (:func:`save_config`). Unknown keys and
values of the wrong type are errors (OmegaConf structured configs), never silently ignored; then every numeric
value is checked against its allowed range (:data:`RULES`, one rule per field), every string that names one of a
fixed set against that set (:data:`CHOICES`) and the device name for its form (:func:`validate_config`), so a bad
value fails up front naming its dotted key (``slopekp config show`` included).

Runtime objects (the device, the template mesh, the dataset) are *not* stored here: commands build them from
the config at the top and pass them down as plain arguments.
"""

from __future__ import annotations

import io
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from slopekp.augment_config import AMOUNTS, AppearanceConfig, background_kinds_error
from slopekp.utils import MAX_IMAGE_SIZE, MAX_SYNTH_COUNT, MAX_SYNTH_SIZE, atomic_write, check_device_name

MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read (a full config is about 2 KiB): a bigger file is a mistake, refused before parsing."""


class ConfigError(ValueError):
    """A config file or override is malformed, names an unknown key, or has a value of the wrong type or out of
    its allowed range."""


@dataclass
class TemplateConfig:
    path: str = "procedural"
    """Template mesh: ``procedural`` (the built-in bird), ``icosphere`` or a ``.npy``/``.npz``/``.obj`` file."""
    symmetry_tol: float = 1e-6
    """Mirror-distance tolerance for detecting left/right vertex pairs (METHOD §3.2)."""


@dataclass
class RenderConfig:
    sigma: float = 1e-4
    """SoftRas silhouette sharpness (squared NDC distance scale)."""
    gamma: float = 1e-4
    """SoftRas depth-softmax temperature for RGB aggregation."""
    z_offset: float = 5.0
    """Depth offset added to weak-perspective depth (METHOD §2.1)."""
    near: float = 1.0
    far: float = 100.0
    fused: str = "never"
    """The soft silhouette and RGB pairs in Triton (:mod:`slopekp.render.fused`, docs/gpu.md): ``never`` (default
    until they are timed on a GPU), ``auto`` (on CUDA after a self-check) or ``always``. Speed only: left out of run
    manifests."""


@dataclass
class DataConfig(AppearanceConfig):
    """The dataset's crops and augmentation (with :class:`AppearanceConfig`'s); the CMR-layout folder is ``--data``."""

    split: str = "train"
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


MIN_SYNTH_SIZE = 16
"""Smallest side in pixels of a SynthBirds image (``synth.size``); the largest: :data:`slopekp.utils.MAX_SYNTH_SIZE`."""


@dataclass
class SynthConfig:
    """The SynthBirds image generator's section; :class:`slopekp.data.synth.options.SynthOptions` extends it with the
    seed and the generator-only options, and checks the values where the generator is called."""

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
    batch_invariant: bool = True
    """Stage I optimises each image in a render call of its own, so that its cameras are bit-identical in any
    batch (``fit_hypotheses``); ``false`` renders whole batches, whose results then depend on ``batch_size``."""
    prune_every: int = 0
    """Successive halving: every this many steps each image keeps fitting ``1/prune_factor`` of its hypotheses (the
    best by the last loss, at least ``keep``); 0 = never. Measured worse (docs/results/stage1_schedules.md)."""
    prune_factor: int = 2
    """How many times fewer hypotheses each pruning keeps."""
    keep: int = 4
    """The fewest hypotheses per image that successive halving keeps fitting."""
    best_iterate: bool = True
    """Each hypothesis ends at its iterate of lowest mask loss, not its last (``fit_hypotheses``)."""
    share_mirrors: bool = False
    """Fit one of each depth-mirrored pair and mirror it (symmetric template, closed grid; ``fit_hypotheses``):
    21 fits of 40, Stage I 1.5-1.7× faster, its best camera 1.4° worse (docs/results/stage1_schedules.md)."""
    workers: int = 0
    """Stage I processes on the CPU: 0 = one per core this process may use, 1 = this process alone. Each worker
    fits whole batches with one thread; the results are bit-identical to one process with one thread. Speed only
    (left out of manifests); on an accelerator Stage I runs in this process."""


@dataclass
class ModelConfig:
    """The reconstruction network (METHOD §4). Defaults are CPU-sized; ``configs/cub_*.yaml`` has the paper's."""

    image_size: int = 64
    """Side of the square network input (256 in the paper)."""
    encoder_width: int = 16
    """ResNet channel width: 64 = ResNet-18 (needed for ``pretrained``), 16 for a small CPU model."""
    pretrained: str = ""
    """A torchvision-format ResNet-18 state dict file for the encoder (``.pth``; loaded with weights_only)."""
    shape_hidden: int = 200
    """Width of the shape head's fc stack (``nz_feat``)."""
    shape_bias_init: str = "uniform"
    """The shape head's deformation-layer bias at initialisation: ``uniform``, PyTorch's default ``±1/√shape_hidden``
    as in U-CMR and METHOD §4.3, or ``zero`` (the mean shape). The quickstart's meshes crumple either way
    (docs/results/shape_texture_baseline.md), so METHOD's stays the default. Only training reads it."""
    uv_height: int = 32
    """Height of the predicted UV texture (its width is twice this; 128 in the paper)."""
    texture_width: int = 16
    """Base width ``nf`` of the texture generator."""
    texture_head: str = "uv"
    """``uv``: METHOD's generated UV image; ``flow``: CMR's texture flow, the UV image sampled from the input at
    positions the generator predicts, symmetric across the mirror (:mod:`slopekp.models.texture`)."""
    texture_from_photo: bool = True
    """At inference (evaluation, predict, video), texture each mesh with the input's own colours through its predicted
    camera (:func:`slopekp.models.texture.photo_texture`; slopekp's addition); false shows the texture head's UV image.
    Training does not read it."""
    pose_head: str = "keypoints"
    """``quaternion``, ``gramschmidt``, ``svd`` or ``keypoints`` (SLOPE-KP: heatmaps → PnP)."""
    num_keypoints: int = 32
    """K keypoint vertices of the keypoint head (farthest-point sampled on the template)."""
    keypoint_width: int = 64
    """Width unit of the keypoint head's heatmap decoder (LWTL and SLOPE-KP: 64, for a ResNet-18 encoder). With the
    CPU-sized encoder (``encoder_width: 16``) a width of 64 makes the decoder 7x the encoder's cost, but 16 is not a
    free saving: one quickstart run with 16 (and 15 pose epochs) ended at chance (mask IoU 0.38, median 83°)."""
    end2end: bool = False
    """Keypoint head: back-propagate a camera loss through PnP into the keypoints and confidences."""
    heatmap_sigma: float = 0.15
    """Keypoint head: width (NDC) of the Gaussian heatmap targets. METHOD §7.7's 0.05 (6.4 px on 256² heatmaps, 3.2 px
    on the 128² heatmaps of a 256² input; ``configs/cub_train.yaml``) is 0.8 px on the 32² heatmaps of a 64² input,
    where the head trained on ground-truth poses reached a 30.1° median error against 24.5°, 23.6° and 24.3° with
    0.1, 0.15 and 0.2 (seed 0; docs/results/head_study.md)."""
    heatmap_occluded: bool = False
    """Keypoint head: the heatmap loss also supervises the keypoints that the target camera does not see, at their
    projections (METHOD §7.7 supervises the visible ones only and leaves the others' maps free)."""
    heatmap_visibility: bool = False
    """Keypoint head: the heatmap loss trains the maps of the keypoints that the target camera does not see towards
    zero, and each keypoint's PnP weight is its map's un-normalised mass near the peak (METHOD §4.6's ``Σ G·H``), so
    PnP leans on the keypoints the network sees. Off: occluded maps are free (METHOD §7.7) and the weight is the
    share of the map's mass near its peak, which cannot tell a seen keypoint from a hidden one."""
    heatmap_loss: str = "mse"
    """Keypoint head: ``mse``, the squared error of the maps against the Gaussian targets (METHOD §7.7), or ``kl``,
    the maps as logits of a spatial softmax trained towards the normalised Gaussians (a classification over pixels;
    the soft-argmax then reads the softmax)."""
    heatmap_size: int = 0
    """Keypoint head: side of the heatmaps (0 = half the input side, twice ``layer1``'s resolution)."""


@dataclass
class TrainConfig:
    """Stages II and III (METHOD §5.4, §5.6, §8)."""

    batch_size: int = 8
    epochs: int = 10
    """Stage II epochs."""
    pose_epochs: int = 10
    """Stage III epochs."""
    lr: float = 1e-4
    """Adam learning rate of the network."""
    multiplex_lr: float = 1e-4
    """Adam learning rate of the live multiplex offsets in Stage II (U-CMR's ``optimizeLR``)."""
    multiplex_gain: float = 1.0
    """Offset gain ``c`` of the multiplex in Stage II (U-CMR: 1; Stage I's store is rebased to it)."""
    render_size: int = 64
    """Side of the silhouettes and textures rendered for the losses."""
    score_texture_weight: float = 0.5
    """Share of the texture loss in Stage II's hypothesis scores ``T = (1 − w)·minmax(L_mask) + w·minmax(L_tex)``
    (METHOD §5.4: 0.5). An under-trained texture makes these scores noisy; 0 scores by the mask alone."""
    top_k: int = 0
    """Stage II: after ``top_k_after`` epochs keep each image's ``top_k`` best hypotheses (U-CMR: 4 after 21; 0 = no)"""
    top_k_after: int = 0
    """Epochs before the pruning to ``top_k`` (0: from the start, by the Stage I scores)."""
    mask_weight: float = 10.0
    texture_weight: float = 1.0
    texture_flow_weight: float = 0.5
    """Texture-flow head: weight of the mask's distance transform at the sampled positions (CMR's ``tex_dt_loss``)."""
    flow_projection_weight: float = 1.0
    """Texture-flow head: weight of the L1 pull of each texel's flow to where the image's best camera sees it
    (:func:`slopekp.train.losses.flow_projection_loss`; slopekp's addition)."""
    ssim_weight: float = 1.0
    """Weight of ``1 − SSIM`` inside the texture loss (beside L1)."""
    deform_weight: float = 1.0
    laplacian_weight: float = 0.5
    laplacian_of: str = "mesh"
    """What the graph Laplacian prior smooths: ``mesh``, the predicted vertices (METHOD §7.4, U-CMR; it also flattens
    the template's own beak and tail), or ``deformation``, the vertices minus the template's (detail costs nothing)."""
    edge_weight: float = 0.0
    camera_weight: float = 1.0
    heatmap_weight: float = 10.0
    coordinate_weight: float = 0.0
    """Keypoint head: weight of the L1 distance between each visible keypoint's soft-argmax position and its
    target (NDC), beside the heatmap loss (integral regression: it trains the position PnP reads, not only the
    map's shape)."""
    grad_clip: float = 100.0
    """Gradient-norm clipping of the network (0 = off)."""
    checkpoint_every: int = 50
    """Write ``checkpoints/last.pt`` every this many steps (and at each epoch's end and on SIGINT/SIGTERM)."""
    freeze_backbone: bool = True
    """Stage III: train the pose head only (U-CMR); false also trains the encoder with the pose loss."""
    frozen_batchnorm: bool = True
    """Stage III: every BatchNorm layer normalises with its running statistics (eval mode; affine weights still
    train). A batch of 8 normalises the 1×1 feature over the batch alone: on true poses the quaternion head stayed at
    78° on its own training images in training mode, 28° frozen (docs/training.md). U-CMR's batch is 128."""
    pose_targets: str = "stage2"
    """Stage III: which multiplex gives the pose targets, ``stage2`` (the Stage II run's own, METHOD §5.6) or
    ``stage1`` (the Stage I store Stage II started from; better after a short Stage II, docs/training.md)."""
    mirror_by_appearance: bool = False
    """Stage III: replace each image's best camera by its depth mirror where a colouring shared by the whole
    training set says so (:mod:`slopekp.train.appearance`; slopekp's addition, not in U-CMR or SLOPE-KP). A mask
    cannot tell the two apart."""
    pose_lr_schedule: str = "constant"
    """Stage III's learning rate: ``constant`` (``train.lr`` throughout) or ``cosine`` (towards 0 at the last step)."""
    reselect_every: int = 0
    """Stage III self-training: every this many epochs, the network's own predictions re-choose each image's pose
    target among its ``reselect_top`` best hypotheses and their depth mirrors (:mod:`slopekp.train.targets`;
    slopekp's addition; 0 = never, the targets stay the best-scoring hypotheses)."""
    reselect_top: int = 4
    """Stage III self-training: the best-scoring hypotheses (each with its depth mirror) a target is chosen from."""
    num_workers: int = 0
    """DataLoader worker processes."""
    amp: bool = True
    """On CUDA, run the network under bf16 autocast (the renderer and the losses stay float32); no effect on CPU."""
    image_every: int = 100
    """Write example images to TensorBoard every this many steps."""
    sync_every: int = 1
    """Read the steps' logged losses back every this many steps (TensorBoard still gets every step's values). On
    a GPU each read makes the host wait for the device; with more steps between reads it queues steps ahead."""


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA if present), ``cpu`` or ``cuda[:N]``."""
    out_dir: str = "outputs/run"
    threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""
    jobs: int = 0
    """``slopekp benchmark`` and ``quickstart``: how many of one seed's pose heads train (and are evaluated) at once,
    each in its own process on the CPU: 0 = one per core this process may use (at most one per head), 1 = one after
    another in this process. A process's results are those of a run alone with the same ``threads``; with
    ``threads: 0`` each takes an equal share of the cores. Speed only (left out of manifests); on an accelerator the
    heads run one after another."""
    template: TemplateConfig = field(default_factory=TemplateConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    multiplex: MultiplexConfig = field(default_factory=MultiplexConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ------------------------------------------------------------------------------------------------ allowed values
@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric config field: ``lo``/``hi`` (None = unbounded), inclusive unless
    ``lo_open``/``hi_open``; a float must also be finite. ``hi_text`` prints ``hi`` (e.g. ``2**32 - 1``)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    hi_text: str | None = None

    def describe(self) -> str:
        """``"> 0"``, ``">= 1"``, ``"in [0, 1)"``, ``"finite"``."""
        lo, hi = _fmt(self.lo), self.hi_text or _fmt(self.hi)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return "finite"

    def contains(self, v: float) -> bool:
        if self.lo is not None and not (v > self.lo if self.lo_open else v >= self.lo):
            return False
        if self.hi is not None and not (v < self.hi if self.hi_open else v <= self.hi):
            return False
        return v == v  # NaN is in no range

    def check(self, key: str, v: float) -> None:
        """Raise :class:`ConfigError` ``"<key> must be <range>, got <v>"`` unless ``v`` is allowed."""
        if not self.contains(v):
            raise ConfigError(f"{key} must be {self.describe()}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key} must be finite, got {v!r}")


def _fmt(x: float | None) -> str:
    return "" if x is None else str(x) if isinstance(x, int) else f"{x:g}"


_POSITIVE = Range(0, lo_open=True)
_NON_NEGATIVE = Range(0)
_AT_LEAST_ONE = Range(1)
_PROBABILITY = Range(0, 1)
_FRACTION = Range(0, 1, hi_open=True)
_ANGLE_RANGE = Range(0, 180, lo_open=True)
_FINITE = Range()
_IMAGE_SIDE = Range(8, MAX_IMAGE_SIZE)

RULES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1, hi_text="2**32 - 1"),
    "threads": _NON_NEGATIVE,
    "jobs": _NON_NEGATIVE,
    "template.symmetry_tol": _POSITIVE,
    "render.sigma": _POSITIVE,
    "render.gamma": _POSITIVE,
    "render.z_offset": _POSITIVE,
    "render.near": _FINITE,
    "render.far": _FINITE,
    "data.padding_frac": _FRACTION,
    "data.jitter_frac": _FRACTION,
    "data.max_items": _NON_NEGATIVE,
    **{f"data.{k}": _PROBABILITY for k in AMOUNTS},
    "synth.n_train": Range(0, MAX_SYNTH_COUNT),
    "synth.n_test": Range(0, MAX_SYNTH_COUNT),
    "synth.size": Range(MIN_SYNTH_SIZE, MAX_SYNTH_SIZE),
    "synth.deform": _NON_NEGATIVE,
    "synth.workers": _NON_NEGATIVE,
    "synth.occlusion_prob": _PROBABILITY,
    "synth.truncation_prob": _PROBABILITY,
    "multiplex.num_az": _AT_LEAST_ONE,
    "multiplex.num_el": _AT_LEAST_ONE,
    "multiplex.num_cr": _AT_LEAST_ONE,
    "multiplex.base_bias_deg": _FINITE,
    "multiplex.el_bias_deg": _FINITE,
    "multiplex.az_bias_deg": _FINITE,
    "multiplex.scale_bias": _POSITIVE,
    "multiplex.az_range_deg": _ANGLE_RANGE,
    "multiplex.el_range_deg": _ANGLE_RANGE,
    "multiplex.cr_range_deg": _ANGLE_RANGE,
    "multiplex.offset_gain": _POSITIVE,
    "multiplex.steps": _NON_NEGATIVE,
    "multiplex.lr": _POSITIVE,
    "multiplex.peakiness": _NON_NEGATIVE,
    "multiplex.batch_size": _AT_LEAST_ONE,
    "multiplex.image_size": _IMAGE_SIDE,
    "multiplex.save_every": _AT_LEAST_ONE,
    "multiplex.workers": _NON_NEGATIVE,
    "multiplex.prune_every": _NON_NEGATIVE,
    "multiplex.prune_factor": Range(2),
    "multiplex.keep": _AT_LEAST_ONE,
    "model.image_size": Range(64, MAX_IMAGE_SIZE),
    "model.encoder_width": Range(4, 256),
    "model.shape_hidden": _AT_LEAST_ONE,
    "model.uv_height": Range(4, MAX_IMAGE_SIZE),
    "model.texture_width": _AT_LEAST_ONE,
    "model.keypoint_width": Range(2, 512),
    "model.num_keypoints": Range(4, 1024),
    "model.heatmap_sigma": _POSITIVE,
    "model.heatmap_size": Range(0, MAX_IMAGE_SIZE),
    "train.batch_size": _AT_LEAST_ONE,
    "train.epochs": _NON_NEGATIVE,
    "train.pose_epochs": _NON_NEGATIVE,
    "train.lr": _POSITIVE,
    "train.multiplex_lr": _NON_NEGATIVE,
    "train.multiplex_gain": _POSITIVE,
    "train.render_size": _IMAGE_SIDE,
    "train.score_texture_weight": _PROBABILITY,
    "train.top_k": _NON_NEGATIVE,
    "train.top_k_after": _NON_NEGATIVE,
    "train.mask_weight": _NON_NEGATIVE,
    "train.texture_weight": _NON_NEGATIVE,
    "train.texture_flow_weight": _NON_NEGATIVE,
    "train.flow_projection_weight": _NON_NEGATIVE,
    "train.ssim_weight": _NON_NEGATIVE,
    "train.deform_weight": _NON_NEGATIVE,
    "train.laplacian_weight": _NON_NEGATIVE,
    "train.edge_weight": _NON_NEGATIVE,
    "train.camera_weight": _NON_NEGATIVE,
    "train.heatmap_weight": _NON_NEGATIVE,
    "train.coordinate_weight": _NON_NEGATIVE,
    "train.grad_clip": _NON_NEGATIVE,
    "train.checkpoint_every": _AT_LEAST_ONE,
    "train.num_workers": _NON_NEGATIVE,
    "train.reselect_every": _NON_NEGATIVE,
    "train.reselect_top": _AT_LEAST_ONE,
    "train.image_every": _AT_LEAST_ONE,
    "train.sync_every": _AT_LEAST_ONE,
}
"""The allowed range of every numeric field of :class:`Config`, by dotted key (a test keeps it complete)."""

CHOICES: dict[str, tuple[str, ...]] = {
    "data.split": ("train", "val", "test"),
    "render.fused": ("never", "auto", "always"),
    "model.pose_head": ("keypoints", "quaternion", "gramschmidt", "svd"),
    "model.heatmap_loss": ("mse", "kl"),
    "model.shape_bias_init": ("zero", "uniform"),
    "model.texture_head": ("uv", "flow"),
    "train.laplacian_of": ("mesh", "deformation"),
    "train.pose_targets": ("stage2", "stage1"),
    "train.pose_lr_schedule": ("constant", "cosine"),
}
"""The allowed values of every string field that names one of a fixed set, by dotted key (CMR's splits, the pose
heads of :data:`slopekp.models.pose.POSE_HEADS`, ...; a test keeps them in step with the code that reads them)."""

ORDERED: tuple[tuple[str, str], ...] = (("render.near", "render.far"),)
"""Pairs of keys whose values must satisfy ``first < second``."""

EARLIER_DEFAULTS: dict[str, Any] = {"multiplex.best_iterate": False}
"""Settings added later whose default changes results: the value that a manifest made before them stands for."""

REMOVED_SETTINGS: tuple[str, ...] = ("render.image_size", "data.img_size", "data.root")
"""Keys of earlier releases that nothing read (the renderers' sizes come from the stage, the data folder from
``--data``): a config file that sets one is read with a warning, a checkpoint's or a manifest's copy silently."""


def _get(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def validate_config(cfg: Config) -> None:
    """Check every value of ``cfg`` against :data:`RULES`, :data:`CHOICES` and :data:`ORDERED`, and its device name
    (:func:`slopekp.utils.check_device_name`; whether this machine has it is checked where it is used).

    Raises:
        ConfigError: naming the first bad dotted key, its value and what is allowed, e.g.
            ``multiplex.lr must be > 0, got -1.0``.
    """
    for key, rule in RULES.items():
        rule.check(key, _get(cfg, key))
    for a, b in ORDERED:
        if not _get(cfg, a) < _get(cfg, b):
            raise ConfigError(f"{a} must be < {b} ({_get(cfg, b)!r}), got {_get(cfg, a)!r}")
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {_get(cfg, key)!r}")
    if problem := background_kinds_error(cfg.data.background_kinds):
        raise ConfigError(f"data.{problem}")
    try:
        check_device_name(cfg.device)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve defaults <- YAML ``path`` <- ``overrides`` (``["multiplex.steps=10", ...]``) into a :class:`Config`.

    Raises:
        ConfigError: naming the file or override and the problem (unknown key, wrong type, bad YAML), or the
            dotted key of a value out of its range (:func:`validate_config`).
        OSError: the file cannot be read (no permission), naming it.
    """
    base = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a config file")
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size / 2**20:.1f} MiB is too large for a config file (at most "
                              f"{MAX_CONFIG_BYTES // 2**20} MiB; a full slopekp config is about 2 KiB)")  # fmt: skip
        text = path.read_text(encoding="utf-8")
        try:
            file_cfg = OmegaConf.load(io.StringIO(text))
        except OSError:  # OmegaConf's answer to a scalar top level ("Invalid loaded object type")
            file_cfg = yaml.safe_load(text)
        except Exception as e:  # yaml errors come in several types
            if "node expansion exceeds" in str(e):  # OmegaConf's guard against huge documents and alias bombs
                raise ConfigError(f"{path}: too many YAML nodes for a config file (over OmegaConf's limit of 10000 "
                                  "after expanding aliases; a full slopekp config has about 200)") from e  # fmt: skip
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(file_cfg, DictConfig):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {_kind(file_cfg)}")
        _drop_removed(file_cfg, path)
        try:
            base = OmegaConf.merge(base, file_cfg)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None)
            raise ConfigError(f"{path}: {f'{key}: ' if key else ''}{_first_line(e)}") from e
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form key=value")
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist([ov]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {ov!r}: {_first_line(e)}") from e
    cfg = OmegaConf.to_object(base)
    assert isinstance(cfg, Config)
    validate_config(cfg)
    return cfg


class ConfigWarning(UserWarning):
    """A config file sets a key that an earlier release had and that nothing reads any more."""


def _drop_removed(file_cfg: DictConfig, path: Path) -> None:
    """Remove the :data:`REMOVED_SETTINGS` from a loaded file, with a :class:`ConfigWarning` each."""
    for key in REMOVED_SETTINGS:
        section, name = key.split(".")
        node = file_cfg.get(section)
        if isinstance(node, DictConfig) and name in node:
            del node[name]
            warnings.warn(f"{path}: {key} is no longer read (the data folder is --data; render sizes come from each "
                          "stage); ignored", ConfigWarning, stacklevel=3)  # fmt: skip


def config_from_yaml(text: str, source: str = "<string>") -> Config:
    """A :class:`Config` from YAML text (e.g. the copy a checkpoint carries), validated like :func:`load_config`;
    errors name ``source``."""

    with tempfile.TemporaryDirectory() as tmp:  # one reader for files and text: load_config's
        p = Path(tmp) / "config.yaml"
        p.write_text(text, encoding="utf-8")
        try:
            with warnings.catch_warnings():  # a checkpoint of an earlier release carries the removed keys
                warnings.simplefilter("ignore", ConfigWarning)
                return load_config(p)
        except ConfigError as e:
            msg = str(e).replace(str(p), source)
            raise ConfigError(msg if source in msg else f"{source}: {msg}") from e


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as plain YAML (atomically); reload it with :func:`load_config`."""
    with atomic_write(path, "w") as f:
        f.write(config_to_yaml(cfg))


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _kind(obj: Any) -> str:
    """``"a list"``, ``"an int"``, ``"a str"`` ... for messages about a YAML document's top level."""
    name = "list" if isinstance(obj, (list, ListConfig)) else type(obj).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]
