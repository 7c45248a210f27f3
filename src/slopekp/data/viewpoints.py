"""A viewpoint distribution for SynthBirds, fitted once to the real CUB SfM rotations, stored as numbers.

Parametrisation (the camera multiplex's, METHOD §5.1): ``R = Rz(cr) · Rx(el) · Ry(az) · Rx(90°)``,
rotations about the *camera* axes (x right, y down, z forward) applied after the base "head view"
``Rx(90°)``, which turns the object's back (+z) to image-up and its tail (+y) away from the camera. So
``az`` spins the bird about its own up axis (wide range), ``el`` tilts it towards or away from the camera
and ``cr`` rotates the image in-plane. (This equals ``azelcr_to_quat(az, el, cr, base=Rx(90°))`` of
:mod:`slopekp.geometry.rotations`.)

How the numbers below were fitted (:func:`fit_viewpoint_distribution` reproduces them from
``../shared/data/cub/sfm/anno_train.mat``, all 5964 rotations):

* decompose every SfM rotation as above (SciPy intrinsic ``"ZXY"`` Euler angles of ``R·Rx(90°)ᵀ``);
* ``az``: a 36-bin histogram on ``[−180°, 180°)`` (side views dominate: peaks near ±90°);
* ``el`` and ``cr``: the least-squares fit ``a0 + a1·sin(az) + a2·cos(az)`` (birds facing one way tilt
  their body the other way in the image: ``cr`` depends strongly on ``sin(az)``) plus, for each of 8
  azimuth sectors of 45°, a 24-bin histogram of the residual on ``[−90°, 90°)`` (residuals outside are
  dropped: < 1%).

Sampling draws a histogram bin, then a uniform value inside it. The mean pairwise geodesic angle of
samples is ≈ 98°, as for the real rotations (98.7°). Public API: :func:`sample_viewpoint` (used by the
image and video generators), :func:`viewpoint_to_quat`, :func:`rotations_to_azelcr`,
:func:`fit_viewpoint_distribution`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

AZ_BINS = 36
AZ_SECTORS = 8
RESID_BINS = 24
RESID_RANGE = np.pi / 2


@dataclass(frozen=True)
class ViewpointDistribution:
    """az histogram + (el, cr) = harmonic regression on az + residual histograms (angles in radians).

    Attributes:
        az_probs: (36,) bin probabilities on [−π, π).
        el_coef, cr_coef: (3,) ``[a0, a1, a2]`` of ``a0 + a1·sin(az) + a2·cos(az)``.
        el_resid_probs, cr_resid_probs: (8, 24): per azimuth sector ``[−π + k·π/4, −π + (k+1)·π/4)``,
            the bin probabilities of the residual on [−π/2, π/2).
    """

    az_probs: tuple[float, ...]
    el_coef: tuple[float, float, float]
    el_resid_probs: tuple[tuple[float, ...], ...]
    cr_coef: tuple[float, float, float]
    cr_resid_probs: tuple[tuple[float, ...], ...]


# fit_viewpoint_distribution(read_sfm_anno("../shared/data/cub/sfm/anno_train.mat").rot), rounded to 1e-4.
CUB_VIEWPOINTS = ViewpointDistribution(
    az_probs=(
        0.0013, 0.0012, 0.0018, 0.0057, 0.0107, 0.0280, 0.0511, 0.0553, 0.0443, 0.0412, 0.0411, 0.0495,
        0.0580, 0.0394, 0.0344, 0.0216, 0.0127, 0.0107, 0.0080, 0.0132, 0.0206, 0.0292, 0.0409, 0.0555,
        0.0553, 0.0495, 0.0418, 0.0448, 0.0483, 0.0384, 0.0257, 0.0099, 0.0049, 0.0027, 0.0015, 0.0017,
    ),
    el_coef=(-0.0316, -0.0044, -0.4306),
    el_resid_probs=(
        (
            0.0000, 0.0000, 0.0123, 0.0000, 0.0123, 0.0000, 0.0000, 0.0247, 0.0494, 0.0370, 0.0617, 0.0988,
            0.0617, 0.1111, 0.2099, 0.1605, 0.0864, 0.0494, 0.0123, 0.0000, 0.0123, 0.0000, 0.0000, 0.0000,
        ),
        (
            0.0009, 0.0045, 0.0081, 0.0117, 0.0117, 0.0199, 0.0289, 0.0361, 0.0478, 0.0767, 0.1200, 0.0903,
            0.1065, 0.1381, 0.1336, 0.0884, 0.0487, 0.0162, 0.0072, 0.0027, 0.0009, 0.0009, 0.0000, 0.0000,
        ),
        (
            0.0000, 0.0016, 0.0032, 0.0071, 0.0174, 0.0340, 0.0538, 0.0570, 0.0657, 0.0713, 0.0895, 0.0926,
            0.1029, 0.1108, 0.1045, 0.0768, 0.0546, 0.0253, 0.0166, 0.0063, 0.0040, 0.0032, 0.0016, 0.0000,
        ),
        (
            0.0000, 0.0000, 0.0000, 0.0035, 0.0121, 0.0364, 0.0347, 0.0693, 0.0797, 0.0815, 0.0572, 0.0745,
            0.0485, 0.0676, 0.1231, 0.1334, 0.0780, 0.0589, 0.0243, 0.0069, 0.0069, 0.0017, 0.0017, 0.0000,
        ),
        (
            0.0000, 0.0000, 0.0000, 0.0000, 0.0206, 0.0300, 0.0450, 0.0826, 0.0732, 0.0694, 0.0713, 0.0750,
            0.0563, 0.0901, 0.0938, 0.1313, 0.1069, 0.0263, 0.0113, 0.0094, 0.0038, 0.0019, 0.0000, 0.0019,
        ),
        (
            0.0000, 0.0000, 0.0007, 0.0090, 0.0187, 0.0254, 0.0486, 0.0598, 0.0680, 0.0792, 0.0897, 0.0979,
            0.1114, 0.1233, 0.1046, 0.0785, 0.0404, 0.0269, 0.0112, 0.0045, 0.0007, 0.0007, 0.0007, 0.0000,
        ),
        (
            0.0021, 0.0041, 0.0072, 0.0144, 0.0072, 0.0113, 0.0278, 0.0340, 0.0680, 0.0711, 0.0731, 0.0855,
            0.1277, 0.1277, 0.1627, 0.0875, 0.0577, 0.0216, 0.0031, 0.0051, 0.0000, 0.0010, 0.0000, 0.0000,
        ),
        (
            0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0114, 0.0000, 0.0341, 0.0000, 0.1023, 0.0909,
            0.0795, 0.1023, 0.1250, 0.2273, 0.1477, 0.0568, 0.0227, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000,
        ),
    ),
    cr_coef=(-0.0149, 0.7135, 0.0120),
    cr_resid_probs=(
        (
            0.0000, 0.0123, 0.0000, 0.0000, 0.0000, 0.0000, 0.0123, 0.0123, 0.0123, 0.0370, 0.0617, 0.2099,
            0.1975, 0.1481, 0.0864, 0.0123, 0.0123, 0.0123, 0.0494, 0.0247, 0.0370, 0.0247, 0.0123, 0.0247,
        ),
        (
            0.0054, 0.0118, 0.0091, 0.0063, 0.0091, 0.0109, 0.0163, 0.0163, 0.0281, 0.0689, 0.1432, 0.2040,
            0.2058, 0.1269, 0.0535, 0.0308, 0.0236, 0.0082, 0.0091, 0.0027, 0.0063, 0.0036, 0.0000, 0.0000,
        ),
        (
            0.0024, 0.0032, 0.0032, 0.0016, 0.0016, 0.0032, 0.0064, 0.0072, 0.0247, 0.0573, 0.1416, 0.2371,
            0.2538, 0.1058, 0.0652, 0.0302, 0.0239, 0.0080, 0.0127, 0.0048, 0.0048, 0.0008, 0.0000, 0.0008,
        ),
        (
            0.0000, 0.0000, 0.0035, 0.0000, 0.0035, 0.0017, 0.0087, 0.0156, 0.0243, 0.0451, 0.1059, 0.2135,
            0.2309, 0.1285, 0.0469, 0.0382, 0.0347, 0.0191, 0.0191, 0.0174, 0.0226, 0.0122, 0.0017, 0.0069,
        ),
        (
            0.0038, 0.0151, 0.0094, 0.0208, 0.0151, 0.0151, 0.0226, 0.0245, 0.0321, 0.0472, 0.1170, 0.2415,
            0.2113, 0.0962, 0.0660, 0.0264, 0.0113, 0.0094, 0.0019, 0.0019, 0.0038, 0.0038, 0.0019, 0.0019,
        ),
        (
            0.0030, 0.0015, 0.0008, 0.0023, 0.0038, 0.0135, 0.0135, 0.0120, 0.0368, 0.0601, 0.1366, 0.2372,
            0.2455, 0.1216, 0.0608, 0.0225, 0.0075, 0.0030, 0.0045, 0.0053, 0.0038, 0.0015, 0.0015, 0.0015,
        ),
        (
            0.0010, 0.0021, 0.0010, 0.0021, 0.0104, 0.0083, 0.0083, 0.0197, 0.0259, 0.0539, 0.1037, 0.2116,
            0.2293, 0.1442, 0.0726, 0.0405, 0.0114, 0.0083, 0.0062, 0.0093, 0.0062, 0.0093, 0.0093, 0.0052,
        ),
        (
            0.0000, 0.0000, 0.0230, 0.0230, 0.0345, 0.0000, 0.0460, 0.0000, 0.0115, 0.0230, 0.1954, 0.2069,
            0.1954, 0.1149, 0.0345, 0.0345, 0.0230, 0.0000, 0.0115, 0.0000, 0.0000, 0.0115, 0.0115, 0.0000,
        ),
    ),
)  # fmt: skip

_BASE = Rotation.from_euler("x", np.pi / 2)


def rotations_to_azelcr(rot: np.ndarray) -> np.ndarray:
    """rot: (N, 3, 3) object-to-camera rotations -> (N, 3) ``[az, el, cr]`` radians with
    ``R = Rz(cr)Rx(el)Ry(az)Rx(90°)``.

    Ranges: az, cr in (−π, π], el in [−π/2, π/2] (gimbal lock at |el| = π/2, where az and cr mix).
    """
    rel = Rotation.from_matrix(np.asarray(rot, dtype=np.float64)) * _BASE.inv()
    with warnings.catch_warnings():  # SciPy warns at gimbal lock; the convention there is documented above
        warnings.simplefilter("ignore", UserWarning)
        cr, el, az = rel.as_euler("ZXY").T
    return np.stack([az, el, cr], axis=-1)


def viewpoint_to_quat(azelcr: np.ndarray) -> np.ndarray:
    """azelcr: (N, 3) radians -> (N, 4) unit quaternions (w, x, y, z), w >= 0, of
    ``Rz(cr)Rx(el)Ry(az)Rx(90°)``."""
    azelcr = np.asarray(azelcr, dtype=np.float64).reshape(-1, 3)
    r = Rotation.from_euler("ZXY", azelcr[:, [2, 1, 0]]) * _BASE
    q = np.roll(r.as_quat(), 1, axis=-1)  # SciPy is scalar-last
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def _harmonic(az: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(az), np.sin(az), np.cos(az)], axis=-1)


def _sector(az: np.ndarray) -> np.ndarray:
    return np.clip(((az + np.pi) / (2 * np.pi) * AZ_SECTORS).astype(int), 0, AZ_SECTORS - 1)


def _hist(values: np.ndarray, bins: int, lo: float, hi: float) -> tuple[float, ...]:
    counts, _ = np.histogram(values, bins=bins, range=(lo, hi))
    return tuple(float(c) for c in counts / counts.sum())


def fit_viewpoint_distribution(rotations: np.ndarray) -> ViewpointDistribution:
    """Fit the distribution of the module docstring to rotations (N, 3, 3) (e.g. the CUB SfM ``rot``)."""
    rotations = np.asarray(rotations, dtype=np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3) or len(rotations) < 10:
        raise ValueError(f"rotations must be (N, 3, 3) with N >= 10, got {rotations.shape}")
    az, el, cr = rotations_to_azelcr(rotations).T
    X = _harmonic(az)
    out = {}
    sector = _sector(az)
    for name, y in (("el", el), ("cr", cr)):
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        hists = tuple(
            _hist(resid[sector == k], RESID_BINS, -RESID_RANGE, RESID_RANGE) for k in range(AZ_SECTORS)
        )
        out[name] = (tuple(float(c) for c in coef), hists)
    return ViewpointDistribution(
        az_probs=_hist(az, AZ_BINS, -np.pi, np.pi),
        el_coef=out["el"][0],
        el_resid_probs=out["el"][1],
        cr_coef=out["cr"][0],
        cr_resid_probs=out["cr"][1],
    )


def _sample_hist(
    rng: np.random.Generator, probs: tuple[float, ...], lo: float, hi: float, n: int
) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if n == 0:
        return np.zeros(0)
    p = p / p.sum()
    width = (hi - lo) / len(p)
    idx = rng.choice(len(p), size=n, p=p)
    return lo + (idx + rng.uniform(size=n)) * width


def sample_azelcr(
    rng: np.random.Generator, n: int, dist: ViewpointDistribution = CUB_VIEWPOINTS
) -> np.ndarray:
    """Draw ``n`` viewpoints (n, 3) ``[az, el, cr]`` in radians from ``dist``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    az = _sample_hist(rng, dist.az_probs, -np.pi, np.pi, n)
    X = _harmonic(az)
    sector = _sector(az)
    el, cr = X @ np.asarray(dist.el_coef), X @ np.asarray(dist.cr_coef)
    for k in range(AZ_SECTORS):  # residuals drawn from the histogram of each sample's azimuth sector
        m = sector == k
        el[m] += _sample_hist(rng, dist.el_resid_probs[k], -RESID_RANGE, RESID_RANGE, int(m.sum()))
        cr[m] += _sample_hist(rng, dist.cr_resid_probs[k], -RESID_RANGE, RESID_RANGE, int(m.sum()))
    return np.stack([az, np.clip(el, -np.pi / 2, np.pi / 2), cr], axis=-1)


def sample_viewpoint(
    rng: np.random.Generator, n: int, dist: ViewpointDistribution = CUB_VIEWPOINTS
) -> np.ndarray:
    """Draw ``n`` object-to-camera rotations as (n, 4) float64 unit quaternions (w, x, y, z), w >= 0.

    Public (the image and video generators use it). Deterministic for a given ``rng`` state.
    """
    return viewpoint_to_quat(sample_azelcr(rng, n, dist))
