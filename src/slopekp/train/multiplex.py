"""The camera multiplex: P weak-perspective camera hypotheses per training image (U-CMR; METHOD §5).

Conventions
-----------
* A camera is a ``(..., 7)`` tensor ``[s, tx, ty, qw, qx, qy, qz]`` in the NDC of an image crop
  (``docs/conventions.md``).
* **Hypothesis grid** (METHOD §5.1): ``q_{a,e,c} = q_z(cr_c) ⊗ q_x(el_e) ⊗ q_y(az_a) ⊗ q_x(base_bias)``
  with ``az_a = 2π·a/num_az + az_bias``, ``el_e = −90° + 180°·(e+1)/(num_el+1) + el_bias``
  (``{−60, −30, 0, 30, 60}°`` for 5 bins) and ``cr_c = 2π·c/num_cr``; flattened index
  ``(a·num_el + e)·num_cr + c`` (azimuth-major). Initial cameras are ``[scale_bias, 0, 0, q]``.
* **Offsets** (METHOD §5.2): each hypothesis is a fixed *base* camera plus a learnable ``(..., 6)`` offset
  ``[δs, δtx, δty, α_az, α_el, α_cr]``: ``s = s_b + δs``, ``t = t_b + δt`` and
  ``q = q_z(cr) ⊗ q_x(el) ⊗ q_y(az) ⊗ q_b`` with ``az = tanh(c·α_az)·az_range`` (likewise el, cr); see
  :class:`OffsetSettings` and :func:`apply_offsets`.
* **Image ids** (METHOD §0): a sample of dataset index ``i`` has id ``i``, its horizontal mirror has id
  ``10**6 − i``. The store is keyed by the *unflipped* id and holds the unflipped cameras; a mirrored
  id reads the reflected cameras (:func:`slopekp.geometry.camera.reflect_camera`) and writes are
  reflected back.
* **Crops** (METHOD §5.5): cameras are stored in the NDC of the crop they were fitted in, recorded per
  image as the crop affine ``[a, bx, by]`` (original-image pixel ``u`` → NDC ``a·u + b``, always of the
  *unflipped* crop). Reads re-express them for the caller's current crop with
  :func:`slopekp.geometry.camera.recrop_camera`; that map is affine in ``(s, t)``, so the offsets are
  re-expressed with them (``δs·k``, ``δt·k``).
* **Optimiser**: a per-image Adam (:func:`adam_update`) with its own first/second moments *and step
  count per image*: a step only touches the rows of the images in the batch (the intent of U-CMR's
  ``Adam_NonZeroGradOnly``; METHOD §5.4, §10 item 8).
* **Scores** (METHOD §5.3/§5.4): per image, losses are min–max rescaled over the hypotheses and turned
  into a distribution with ``softmin(peakiness · L̃)`` (:func:`hypothesis_scores`).

File format (``.npz``, written atomically, read with ``allow_pickle=False``) — see
:meth:`CameraMultiplex.save`.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from slopekp.geometry.camera import recrop_camera, reflect_camera
from slopekp.geometry.rotations import azelcr_to_quat, quat_about_axis, quat_geodesic_angle, quat_multiply
from slopekp.utils import atomic_save_npz, checks_values, device_constant, to_device

#: A mirrored sample of dataset index ``i`` has id ``FLIP_ID_BASE − i`` (METHOD §0).
FLIP_ID_BASE = 10**6
#: ``format`` entry of the ``.npz`` store; bump on incompatible changes.
STORE_FORMAT = "slopekp.camera_multiplex/1"
NUM_OFFSETS = 6


# ----------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OffsetSettings:
    """How learnable ``(..., 6)`` offsets ``[δs, δtx, δty, α_az, α_el, α_cr]`` map to a camera (§5.2)."""

    gain: float = 0.1
    """``c`` in ``tanh(c·α)``: 0.1 in Stage I and SLOPE-KP, 1 in U-CMR's Stage II."""
    az_range_deg: float = 30.0
    el_range_deg: float = 30.0
    cr_range_deg: float = 60.0

    def as_array(self) -> np.ndarray:
        """``(4,)`` float64 ``[gain, az_range_deg, el_range_deg, cr_range_deg]`` (the ``.npz`` record)."""
        return np.array([self.gain, self.az_range_deg, self.el_range_deg, self.cr_range_deg], dtype=np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> OffsetSettings:
        return cls(*(float(x) for x in np.asarray(a, dtype=np.float64).reshape(4)))

    @classmethod
    def from_config(cls, cfg) -> OffsetSettings:
        """From a :class:`slopekp.config.MultiplexConfig`."""
        return cls(cfg.offset_gain, cfg.az_range_deg, cfg.el_range_deg, cfg.cr_range_deg)


def hypothesis_cameras(
    num_az: int = 8,
    num_el: int = 5,
    num_cr: int = 1,
    *,
    scale: float = 0.8,
    base_bias_deg: float = 90.0,
    az_bias_deg: float = 0.0,
    el_bias_deg: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The initial hypothesis grid of METHOD §5.1 (``P = num_az·num_el·num_cr``).

    Returns:
        ``(P, 7)`` cameras ``[scale, 0, 0, q_{a,e,c}]``, index ``(a·num_el + e)·num_cr + c``.

    Raises:
        ValueError: if a bin count is < 1 or ``scale`` is not positive.
    """
    for name, n in (("num_az", num_az), ("num_el", num_el), ("num_cr", num_cr)):
        if int(n) != n or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    kw = {"dtype": torch.float64, "device": device}
    az = 2 * math.pi * torch.arange(num_az, **kw) / num_az + math.radians(az_bias_deg)
    el = torch.deg2rad(-90.0 + 180.0 * (torch.arange(num_el, **kw) + 1) / (num_el + 1) + el_bias_deg)
    cr = 2 * math.pi * torch.arange(num_cr, **kw) / num_cr
    az, el, cr = torch.meshgrid(az, el, cr, indexing="ij")
    base = quat_about_axis("x", torch.tensor(math.radians(base_bias_deg), **kw))
    q = azelcr_to_quat(az.reshape(-1), el.reshape(-1), cr.reshape(-1), base.expand(az.numel(), 4))
    st = torch.tensor([scale, 0.0, 0.0], **kw).expand(q.shape[0], 3)
    return torch.cat([st, q], dim=-1).to(dtype)


def hypothesis_cameras_from_config(cfg, *, dtype=torch.float32, device=None) -> Tensor:
    """:func:`hypothesis_cameras` with the fields of a :class:`slopekp.config.MultiplexConfig`; ``(P, 7)``."""
    return hypothesis_cameras(
        cfg.num_az,
        cfg.num_el,
        cfg.num_cr,
        scale=cfg.scale_bias,
        base_bias_deg=cfg.base_bias_deg,
        az_bias_deg=cfg.az_bias_deg,
        el_bias_deg=cfg.el_bias_deg,
        dtype=dtype,
        device=device,
    )


def apply_offsets(base: Tensor, offsets: Tensor, settings: OffsetSettings) -> Tensor:
    """Compose base cameras with offsets (METHOD §5.2); differentiable in ``offsets``.

    Args:
        base: ``(..., 7)`` base cameras ``[s_b, t_b, q_b]``.
        offsets: ``(..., 6)`` ``[δs, δtx, δty, α_az, α_el, α_cr]`` (broadcast against ``base``).
        settings: the gain ``c`` and the angle ranges.

    Returns:
        ``(..., 7)``: ``[s_b + δs, t_b + δt, q_z(cr) ⊗ q_x(el) ⊗ q_y(az) ⊗ q_b]`` with
        ``az = tanh(c·α_az)·range_az`` (likewise el, cr). Zero offsets give back ``base``.
    """
    if base.shape[-1] != 7 or offsets.shape[-1] != NUM_OFFSETS:
        raise ValueError(
            f"base must be (..., 7) and offsets (..., 6); got {tuple(base.shape)} and {tuple(offsets.shape)}"
        )
    ranges = device_constant(
        tuple(math.radians(a) for a in (settings.az_range_deg, settings.el_range_deg, settings.cr_range_deg)),
        offsets.dtype, offsets.device,
    )  # fmt: skip
    ang = torch.tanh(settings.gain * offsets[..., 3:]) * ranges
    shape = torch.broadcast_shapes(base.shape[:-1], offsets.shape[:-1])
    q_base = base[..., 3:].expand(*shape, 4)
    ang = ang.expand(*shape, 3)
    q = azelcr_to_quat(ang[..., 0], ang[..., 1], ang[..., 2], q_base)
    st = base[..., :3].expand(*shape, 3) + offsets[..., :3].expand(*shape, 3)
    return torch.cat([st, q], dim=-1)


def positive_scale_cameras(cameras: Tensor) -> Tensor:
    """Replace cameras of negative scale by the silhouette-equivalent camera of positive scale.

    ``p = s·(RX)_xy + t`` with ``s < 0`` equals ``|s|·(R_z(π)·R·X)_xy + t`` (a half turn about the viewing
    axis negates x and y); only the sign of the depth differs, which a silhouette does not see. Additive
    scale offsets (METHOD §5.2) can cross zero, and the rest of the package expects ``s > 0``.

    Args:
        cameras: ``(..., 7)``.

    Returns:
        ``(..., 7)`` with ``s ≥ 0``; rows with ``s ≥ 0`` are unchanged.
    """
    neg = cameras[..., :1] < 0
    half_turn = device_constant((0.0, 0.0, 0.0, 1.0), cameras.dtype, cameras.device)
    q = torch.where(neg, quat_multiply(half_turn.expand_as(cameras[..., 3:]), cameras[..., 3:]), cameras[..., 3:])
    return torch.cat([cameras[..., :1].abs(), cameras[..., 1:3], q], dim=-1)


class AdamResult(NamedTuple):
    """New values of the rows that :func:`adam_update` stepped."""

    param: Tensor
    """``(R, ...)`` updated parameters."""
    exp_avg: Tensor
    """``(R, ...)`` first moments ``m``."""
    exp_avg_sq: Tensor
    """``(R, ...)`` second moments ``v``."""
    step: Tensor
    """``(R,)`` int64 per-row step counts (each incremented by one)."""


def adam_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> AdamResult:
    """One Adam step (Kingma & Ba 2015; ``torch.optim.Adam`` without weight decay) counted *per row*.

    Every row (leading index) is an independent parameter with its own bias correction, so rows can advance at
    different rates: pass only the rows of the images in the batch and write the result back.

    Args:
        param, grad, exp_avg, exp_avg_sq: ``(R, ...)`` the rows' parameters, gradients and moments.
        step: ``(R,)`` int64 steps already taken by each row.
        lr, betas, eps: the usual Adam hyper-parameters.

    Returns:
        :class:`AdamResult` with new tensors (the inputs are not modified).
    """
    b1, b2 = betas
    t = (step + 1).to(param.dtype).reshape((-1,) + (1,) * (param.dim() - 1))
    m = exp_avg * b1 + grad * (1 - b1)
    v = exp_avg_sq * b2 + grad.square() * (1 - b2)
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    new = param - lr * m_hat / (v_hat.sqrt() + eps)
    return AdamResult(new, m, v, step + 1)


#: Offset-gradient components at most this fraction of the largest one of their group are float rounding noise.
GRAD_NOISE_FLOOR = 1e-5


def suppress_gradient_noise(grad: Tensor, rel: float = GRAD_NOISE_FLOOR) -> Tensor:
    """Zero the offset-gradient components that are float32 rounding noise, so that Adam does not amplify them.

    A hypothesis of the grid often starts on a symmetry of the problem: a side view of a mirror-symmetric bird
    (turning it left or right changes its silhouette the same way) or a front view whose silhouette lies
    inside the mask. There the true gradient of some offsets is exactly zero, and the computed one is
    rounding noise (``~1e-8`` of the others) whose sign depends on the summation order: on which other
    images share the batch, or on the device. Adam's first step is ``lr·g/(|g| + eps)``, a full step in the
    noise's direction, and the hypothesis then rolls off the symmetry to a side chosen by chance. That made
    Stage I depend on the batch size (issue 8). Components no larger than ``rel`` times the largest of their
    group (``[δs, δtx, δty]`` or ``[α_az, α_el, α_cr]``: each group shares its units) are set to zero, which
    is what exact arithmetic gives there; a hypothesis on a symmetry then stays on it.

    Args:
        grad: ``(..., 6)`` gradients of offsets ``[δs, δtx, δty, α_az, α_el, α_cr]``.
        rel: the relative noise floor (``1e-5`` leaves a margin of ~100 over float32 summation noise).

    Returns:
        ``(..., 6)``, a new tensor.
    """
    if grad.shape[-1] != NUM_OFFSETS:
        raise ValueError(f"grad must be (..., {NUM_OFFSETS}), got {tuple(grad.shape)}")
    g = grad.unflatten(-1, (2, 3))
    floor = rel * g.abs().amax(-1, keepdim=True)
    return torch.where(g.abs() <= floor, torch.zeros_like(g), g).flatten(-2)


def best_hypothesis(scores: Tensor, rtol: float = 1e-4) -> Tensor:
    """Index of each image's best hypothesis, ties broken towards the lower index.

    Mirror-symmetric hypotheses (e.g. a camera and its depth mirror, METHOD §2.3) fit a symmetric mask
    equally well, so their scores agree up to rounding; a plain ``argmax`` would pick between them by float
    noise (batch size, device). Scores within ``rtol`` (relative) of the row's maximum count as tied.

    Args:
        scores: ``(..., P)``.

    Returns:
        ``(...)`` int64.
    """
    top = scores.amax(-1, keepdim=True)
    tied = scores >= top - rtol * top.abs()
    return tied.to(torch.int8).argmax(-1)  # the first True


def minmax_rescale(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``(x − min) / (max − min + eps)`` over the last dim; ``(..., P)`` → ``(..., P)`` in [0, 1)."""
    lo = x.amin(-1, keepdim=True)
    hi = x.amax(-1, keepdim=True)
    return (x - lo) / (hi - lo + eps)


def hypothesis_scores(loss: Tensor, peakiness: float = 20.0, power: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Scores of P hypotheses from their losses (METHOD §5.3): ``softmin_p(peakiness · L̃^power)``.

    ``L̃`` is the per-image min–max rescaled loss, so the weighting ignores the absolute loss level: the best
    hypothesis gets weight ``1 / Σ_p exp(−peakiness·L̃_p)`` (the worst ``≈ e^{−peakiness}`` times less). Equal
    losses give uniform scores.

    Args:
        loss: ``(..., P)`` per-hypothesis losses (detached by the caller if needed).
        peakiness: the softmin temperature (``quatScorePeakiness = 20``).
        power: ``lossToScorePower`` (1).

    Returns:
        ``(..., P)`` non-negative scores summing to 1 over the last dim.
    """
    if checks_values(loss) and not torch.isfinite(loss).all():
        raise ValueError("hypothesis losses contain NaN or inf; cannot score them")
    rescaled = minmax_rescale(loss, eps).clamp_min(0).pow(power)
    return torch.softmax(-peakiness * rescaled, dim=-1)


def hypothesis_rotation_errors(cameras: Tensor, gt_cameras: Tensor) -> Tensor:
    """Geodesic rotation error of every hypothesis against a reference camera, in radians.

    Args:
        cameras: ``(B, P, 7)`` hypotheses.
        gt_cameras: ``(B, 7)`` references (e.g. ground truth).

    Returns:
        ``(B, P)`` angles in ``[0, π]``.
    """
    return quat_geodesic_angle(cameras[..., 3:], gt_cameras[:, None, 3:].expand_as(cameras[..., 3:]))


def depth_mirror_cameras(cameras: Tensor) -> Tensor:
    """The silhouette-equivalent "depth-mirrored" cameras of a mirror-symmetric object (METHOD §2.3).

    For an object symmetric about x = 0 (``D·X`` is on the object when ``X`` is, ``D = diag(−1, 1, 1)``),
    ``R' = Z·R·D`` with ``Z = diag(1, 1, −1)`` projects the object to the same image points as ``R`` under
    weak perspective, only with depth reversed: the ambiguity a silhouette cannot resolve.
    ``Z·R·D = R_y(π)·(D·R·D)``, i.e. ``q' = q_y(π) ⊗ (w, x, −y, −z)``; scale and translation are unchanged.

    Args:
        cameras: ``(..., 7)``.

    Returns:
        ``(..., 7)``.
    """
    q = cameras[..., 3:] * cameras.new_tensor([1.0, 1.0, -1.0, -1.0])
    half_turn_y = cameras.new_tensor([0.0, 0.0, 1.0, 0.0]).expand_as(q)
    return torch.cat([cameras[..., :3], quat_multiply(half_turn_y, q)], dim=-1)


class ImageIds(NamedTuple):
    """Ids split into the store key and the mirror flag."""

    canonical: Tensor
    """``(B,)`` int64 unflipped ids (dataset indices)."""
    flipped: Tensor
    """``(B,)`` bool: the sample is the horizontal mirror of ``canonical``."""


def split_image_ids(ids: Tensor) -> ImageIds:
    """``id → (min(id, 10**6 − id), id > 10**6 / 2)`` (METHOD §0).

    Raises:
        ValueError: for ids outside ``[0, 10**6]``.
    """
    ids = torch.as_tensor(ids).to(torch.int64).reshape(-1)
    if ids.numel() and checks_values(ids) and (ids.min() < 0 or ids.max() > FLIP_ID_BASE):
        raise ValueError(f"image ids must lie in [0, {FLIP_ID_BASE}], got min {ids.min()} and max {ids.max()}")
    flipped = ids > FLIP_ID_BASE // 2
    return ImageIds(torch.where(flipped, FLIP_ID_BASE - ids, ids), flipped)


def template_fingerprint(verts: Tensor, faces: Tensor) -> str:
    """A short hash identifying a template mesh (its vertices to 1e-6 and its faces): 16 hex digits.

    Args:
        verts: ``(V, 3)`` template vertices.
        faces: ``(F, 3)`` integer faces.
    """
    v = np.round(verts.detach().to("cpu", torch.float64).numpy(), 6).astype("<f8")
    f = faces.detach().to("cpu", torch.int64).numpy().astype("<i8")
    h = hashlib.sha256()
    h.update(np.asarray(v.shape, dtype="<i8").tobytes() + v.tobytes())
    h.update(np.asarray(f.shape, dtype="<i8").tobytes() + f.tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------------------


class MultiplexLookup(NamedTuple):
    """A batch's cameras read from a :class:`CameraMultiplex`, ready for a loss and an optimiser step."""

    rows: Tensor
    """``(B,)`` int64 store rows of the images (a mirrored pair shares one row)."""
    flipped: Tensor
    """``(B,)`` bool: the cameras were reflected for a mirrored sample."""
    offsets: Tensor
    """``(B, P, 6)`` leaf copy of the rows' offsets with ``requires_grad=True``; its ``.grad`` feeds
    :meth:`CameraMultiplex.adam_step`."""
    cameras: Tensor
    """``(B, P, 7)`` the hypotheses in the NDC of the requested crops (reflected when flipped),
    differentiable w.r.t. ``offsets``."""


_ON_CONFLICT = ("error", "keep_first", "keep_second")


class CameraMultiplex:
    """Per-image camera hypotheses with per-image Adam state, keyed by unflipped image id.

    Holds for N images (rows, in insertion order): ``ids (N,)`` int64, ``base (N, P, 7)`` base cameras and
    ``offsets (N, P, 6)`` learnable offsets in the NDC of the image's stored crop ``crops (N, 3)``,
    ``scores (N, P)``, and the Adam state ``exp_avg, exp_avg_sq (N, P, 6)``, ``adam_step_count (N,)``. See
    the module docstring for the conventions. The store is a plain container (no autograd graph is kept):
    read with :meth:`lookup`, compute a loss, ``backward()``, then :meth:`adam_step`.

    Args:
        num_hypotheses: P.
        fingerprint: :func:`template_fingerprint` of the mesh the cameras were fitted for (checked
            on load and merge).
        settings: the offset parametrisation.
        device: where the tensors live.
        data_fingerprint: the fingerprint of the data the cameras were fitted to
            (:func:`slopekp.manifest.cmr_data_fingerprint`; ``""`` = unknown). Merging refuses stores of
            different data.
    """

    def __init__(
        self,
        num_hypotheses: int,
        fingerprint: str,
        settings: OffsetSettings | None = None,
        *,
        device: torch.device | str | None = None,
        data_fingerprint: str = "",
    ) -> None:
        if int(num_hypotheses) != num_hypotheses or num_hypotheses < 1:
            raise ValueError(f"num_hypotheses must be a positive integer, got {num_hypotheses!r}")
        self.num_hypotheses = int(num_hypotheses)
        self.fingerprint = str(fingerprint)
        self.data_fingerprint = str(data_fingerprint)
        self.settings = settings or OffsetSettings()
        self.device = torch.device(device or "cpu")
        self._n = 0
        self._row_of: dict[int, int] = {}
        self._alloc(16)

    # -- storage ----------------------------------------------------------------------------------------
    def _alloc(self, capacity: int) -> None:
        P, f32, dev = self.num_hypotheses, torch.float32, self.device
        fresh = {
            "_ids": torch.zeros(capacity, dtype=torch.int64, device=dev),
            "_base": torch.zeros(capacity, P, 7, dtype=f32, device=dev),
            "_offsets": torch.zeros(capacity, P, NUM_OFFSETS, dtype=f32, device=dev),
            "_scores": torch.zeros(capacity, P, dtype=f32, device=dev),
            "_crops": torch.zeros(capacity, 3, dtype=f32, device=dev),
            "_m": torch.zeros(capacity, P, NUM_OFFSETS, dtype=f32, device=dev),
            "_v": torch.zeros(capacity, P, NUM_OFFSETS, dtype=f32, device=dev),
            "_step": torch.zeros(capacity, dtype=torch.int64, device=dev),
        }
        for name, t in fresh.items():
            old = getattr(self, name, None)
            if old is not None:
                t[: self._n] = old[: self._n]
            setattr(self, name, t)

    ids = property(lambda self: self._ids[: self._n], doc="``(N,)`` int64 unflipped ids, one per row.")
    base = property(lambda self: self._base[: self._n], doc="``(N, P, 7)`` base cameras (stored crop NDC).")
    offsets = property(lambda self: self._offsets[: self._n], doc="``(N, P, 6)`` learnable offsets.")
    scores = property(lambda self: self._scores[: self._n], doc="``(N, P)`` hypothesis scores (sum to 1).")
    crops = property(lambda self: self._crops[: self._n], doc="``(N, 3)`` stored (unflipped) crop affines.")
    exp_avg = property(lambda self: self._m[: self._n], doc="``(N, P, 6)`` Adam first moments.")
    exp_avg_sq = property(lambda self: self._v[: self._n], doc="``(N, P, 6)`` Adam second moments.")
    adam_step_count = property(lambda self: self._step[: self._n], doc="``(N,)`` Adam steps taken per image.")

    def __len__(self) -> int:
        return self._n

    def __contains__(self, image_id: int) -> bool:
        canonical = split_image_ids(torch.tensor([int(image_id)])).canonical.item()
        return canonical in self._row_of

    def __repr__(self) -> str:
        return (
            f"CameraMultiplex(N={self._n}, P={self.num_hypotheses}, fingerprint={self.fingerprint!r}, "
            f"settings={self.settings}, device={self.device})"
        )

    def rows(self, ids: Tensor) -> Tensor:
        """Store rows of (possibly mirrored) ids; ``(B,)`` → ``(B,)`` int64 on the store's device.

        The rows come from a dictionary on the host: pass ids that live there (a batch's ids before it moves to an
        accelerator), or reading them makes the host wait for the device's queue.

        Raises:
            MissingImageError: (a ValueError) naming the ids that are not in the store.
        """
        canonical = split_image_ids(ids).canonical.tolist()
        missing = [i for i in canonical if i not in self._row_of]
        if missing:
            shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise MissingImageError(
                f"{len(missing)} image id(s) not in the camera multiplex ({self._n} images): {shown}"
            )
        return to_device(torch.tensor([self._row_of[i] for i in canonical], dtype=torch.int64), self.device)

    def computed_cameras(self) -> Tensor:
        """``(N, P, 7)`` ``base ∘ offsets`` of every row, in each row's stored crop NDC (no grad)."""
        with torch.no_grad():
            return apply_offsets(self.base, self.offsets, self.settings)

    # -- writing ----------------------------------------------------------------------------------------
    def add(self, ids: Tensor, cameras: Tensor, scores: Tensor, crops: Tensor, *, overwrite: bool = False) -> None:
        """Insert images: their cameras become the base cameras (zero offsets, fresh Adam state).

        Args:
            ids: ``(B,)`` image ids; a mirrored id ``10**6 − i`` is stored under ``i``, its cameras
                reflected.
            cameras: ``(B, P, 7)`` cameras in the NDC of each sample's crop (mirrored for mirrored ids).
            scores: ``(B, P)`` scores.
            crops: ``(B, 3)`` the *unflipped* crop affines ``[a, bx, by]`` of the samples.
            overwrite: replace images already in the store (else that is an error).

        Raises:
            ValueError: on shape mismatches, non-finite values, repeated ids, or ids already stored
                (without ``overwrite``).
        """
        info = split_image_ids(ids)
        B, P = info.canonical.numel(), self.num_hypotheses
        _check("cameras", cameras, (B, P, 7))
        _check("scores", scores, (B, P))
        _check("crops", crops, (B, 3))
        canonical = info.canonical.tolist()
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"ids contain repeated images (after unflipping): {canonical}")
        present = [i for i in canonical if i in self._row_of]
        if present and not overwrite:
            raise ValueError(f"image id(s) {present[:10]} already in the camera multiplex (use overwrite=True)")
        dev = self.device
        # clone: the inputs may be views of this store's own buffers (overwrite from a read)
        cameras = cameras.detach().to(dev, torch.float32).clone()
        scores = scores.detach().to(dev, torch.float32).clone()
        crops = crops.detach().to(dev, torch.float32).clone()
        flipped = info.flipped.to(dev)
        cameras = torch.where(flipped[:, None, None], reflect_camera(cameras), cameras)
        if len(self._row_of) + B - len(present) > self._ids.shape[0]:
            self._alloc(max(2 * self._ids.shape[0], self._n + B))
        rows = []
        for i in canonical:
            if i not in self._row_of:
                self._row_of[i] = self._n
                self._n += 1
            rows.append(self._row_of[i])
        r = torch.tensor(rows, dtype=torch.int64, device=dev)
        self._ids[r] = info.canonical.to(dev)
        self._base[r] = cameras
        self._offsets[r] = 0
        self._scores[r] = scores
        self._crops[r] = crops
        self._m[r] = 0
        self._v[r] = 0
        self._step[r] = 0

    def set_scores(self, ids: Tensor, scores: Tensor) -> None:
        """Overwrite the scores of stored images; ``scores (B, P)`` (the order is mirror-invariant)."""
        r = self.rows(ids)
        _check("scores", scores, (r.numel(), self.num_hypotheses))
        self._scores[r] = scores.detach().to(self.device, torch.float32)

    # -- reading ----------------------------------------------------------------------------------------
    def lookup(self, ids: Tensor, crops: Tensor) -> MultiplexLookup:
        """The hypotheses of a batch, re-expressed for the batch's crops, with a differentiable offset leaf.

        Args:
            ids: ``(B,)`` image ids (mirrored ids read reflected cameras).
            crops: ``(B, 3)`` the samples' unflipped crop affines (``Batch.crop``).

        Returns:
            :class:`MultiplexLookup`; ``cameras (B, P, 7)``.
        """
        info = split_image_ids(ids)
        rows = self.rows(info.canonical)
        _check("crops", crops, (rows.numel(), 3))
        offsets = self._offsets[rows].clone().requires_grad_(True)
        cams = self._express(apply_offsets(self._base[rows], offsets, self.settings), rows, crops, info.flipped)
        return MultiplexLookup(rows, to_device(info.flipped, self.device), offsets, cams)

    def cameras(self, ids: Tensor, crops: Tensor) -> Tensor:
        """``(B, P, 7)`` hypotheses of ``ids`` for ``crops (B, 3)`` (no grad); see :meth:`lookup`."""
        with torch.no_grad():
            return self.lookup(ids, crops).cameras.detach()

    def get_scores(self, ids: Tensor) -> Tensor:
        """``(B, P)`` scores of ``ids``."""
        return self._scores[self.rows(ids)].clone()

    def best_cameras(self, ids: Tensor, crops: Tensor) -> Tensor:
        """``(B, 7)``: each image's highest-scoring hypothesis for its crop (METHOD §5.6's pose target)."""
        cams = self.cameras(ids, crops)
        best = best_hypothesis(self.get_scores(ids))
        return cams[torch.arange(cams.shape[0], device=cams.device), best]

    def _express(self, cams: Tensor, rows: Tensor, crops: Tensor, flipped: Tensor) -> Tensor:
        crops = crops.to(self.device, torch.float32)
        cams = recrop_camera(cams, self._crops[rows][:, None], crops[:, None])
        return torch.where(to_device(flipped, self.device)[:, None, None], reflect_camera(cams), cams)

    # -- optimisation -----------------------------------------------------------------------------------
    def adam_step(
        self, lookup: MultiplexLookup, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        """Advance the per-image Adam of the rows in ``lookup`` with ``lookup.offsets.grad``.

        Rows of images not in ``lookup`` are untouched (offsets, moments and step counts). Gradients of
        samples sharing a row (an image and its mirror in one batch) are summed; that row takes one step.

        Raises:
            ValueError: if ``lookup.offsets`` has no gradient (``backward()`` was not called).
        """
        grad = lookup.offsets.grad
        if grad is None:
            raise ValueError("lookup.offsets has no gradient: call backward() on a loss of lookup.cameras first")
        # each sample's row gradient summed over the samples sharing the row, in a buffer of all rows (no unique():
        # its size would have to be read on the host); samples sharing a row compute and write the same update
        rows = lookup.rows
        g = torch.zeros_like(self._offsets).index_add_(0, rows, grad.to(self._offsets.dtype)).index_select(0, rows)
        g = suppress_gradient_noise(g)  # else Adam turns rounding noise into steps: see its docstring
        res = adam_update(self._offsets[rows], g, self._m[rows], self._v[rows], self._step[rows], lr, betas, eps)
        self._offsets[rows] = res.param
        self._m[rows] = res.exp_avg
        self._v[rows] = res.exp_avg_sq
        self._step[rows] = res.step

    # -- derived stores ---------------------------------------------------------------------------------
    def _derived(self, num_hypotheses: int, settings: OffsetSettings | None = None) -> CameraMultiplex:
        return CameraMultiplex(
            num_hypotheses, self.fingerprint, settings or self.settings, device=self.device,
            data_fingerprint=self.data_fingerprint,
        )  # fmt: skip

    def _fill(self, ids, base, offsets, scores, crops, m, v, step) -> None:
        self._alloc(max(16, ids.shape[0]))
        n = ids.shape[0]
        self._ids[:n], self._base[:n], self._offsets[:n], self._scores[:n] = ids, base, offsets, scores
        self._crops[:n], self._m[:n], self._v[:n], self._step[:n] = crops, m, v, step
        self._n = n
        self._row_of = {int(i): r for r, i in enumerate(ids.tolist())}
        if len(self._row_of) != n:
            raise ValueError("image ids are not unique")

    def top_k(self, k: int) -> CameraMultiplex:
        """A new store with each image's ``k`` best-scoring hypotheses (best first), scores renormalised.

        Offsets and Adam moments follow their hypotheses (U-CMR ``trim_cameras --topK``).
        """
        if int(k) != k or not 1 <= k <= self.num_hypotheses:
            raise ValueError(f"k must be an integer in [1, {self.num_hypotheses}], got {k!r}")
        out = self._derived(int(k))
        if self._n == 0:
            return out
        sc, idx = self.scores.topk(int(k), dim=-1)

        def take(t: Tensor) -> Tensor:
            return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

        sc = sc / sc.sum(-1, keepdim=True).clamp_min(1e-12)
        out._fill(
            self.ids, take(self.base), take(self.offsets), sc, self.crops,
            take(self.exp_avg), take(self.exp_avg_sq), self.adam_step_count,
        )  # fmt: skip
        return out

    def rebase(self, settings: OffsetSettings | None = None) -> CameraMultiplex:
        """A new store whose base cameras are the current ``base ∘ offsets``, with zero offsets and fresh
        Adam state, optionally under new offset ``settings`` (e.g. Stage I's gain 0.1 → Stage II's 1)."""
        out = self._derived(self.num_hypotheses, settings)
        z = torch.zeros_like(self.offsets)
        out._fill(self.ids, self.computed_cameras(), z, self.scores, self.crops, z, z, torch.zeros_like(self.ids))
        return out

    def merge(
        self,
        other: CameraMultiplex,
        on_conflict: Literal["error", "keep_first", "keep_second"] = "error",
        *,
        allow_different_data: bool = False,
    ) -> CameraMultiplex:
        """The union of two stores (this one's rows first).

        Args:
            other: a store for the same template, P and offset settings.
            on_conflict: what to do with ids present in both: ``"error"``, keep this store's entry
                (``"keep_first"``) or ``other``'s (``"keep_second"``).
            allow_different_data: merge stores fitted to different data folders (their image ids then
                name different images: only for data that share their ids, e.g. a re-exported folder).
                The result's data fingerprint is then unknown (``""``).

        Raises:
            ValueError: on a different template fingerprint, P or settings, on different data (unless
                ``allow_different_data``), or on ids in both stores with ``on_conflict="error"``.
        """
        if on_conflict not in _ON_CONFLICT:
            raise ValueError(f"on_conflict must be one of {_ON_CONFLICT}, got {on_conflict!r}")
        _check_compatible(self, other.fingerprint, other.num_hypotheses, "the other store")
        if other.settings != self.settings:
            raise ValueError(f"cannot merge stores with different offset settings: {self.settings} vs {other.settings}")
        same_data = self.data_fingerprint == other.data_fingerprint
        if not same_data and not allow_different_data:
            a, b = self.data_fingerprint or "unknown", other.data_fingerprint or "unknown"
            raise ValueError(
                f"the stores were fitted to different data (data fingerprints {a} and {b}): their image ids name "
                "different images; merge stores of one data folder, or allow it explicitly (--allow-different-data)"
            )
        common = sorted(set(self._row_of) & set(other._row_of))
        if common and on_conflict == "error":
            raise ValueError(
                f"{len(common)} image id(s) are in both stores, e.g. {common[:5]} "
                "(pass on_conflict / --on-conflict keep_first or keep_second)"
            )
        keep_self = torch.ones(self._n, dtype=torch.bool, device=self.device)
        keep_other = torch.ones(other._n, dtype=torch.bool, device=self.device)
        if common and on_conflict == "keep_second":
            keep_self[[self._row_of[i] for i in common]] = False
        if common and on_conflict == "keep_first":
            keep_other[[other._row_of[i] for i in common]] = False
        o = other.to(self.device)
        fields = []
        for a, b in zip(self._fields(), o._fields()):
            fields.append(torch.cat([a[keep_self], b[keep_other]]))
        out = self._derived(self.num_hypotheses)
        out.data_fingerprint = self.data_fingerprint if same_data else ""
        out._fill(*fields)
        return out

    _STATE_KEYS = ("ids", "base", "offsets", "scores", "crops", "exp_avg", "exp_avg_sq", "adam_step")

    def state_dict(self) -> dict:
        """The whole store as plain tensors, strings and numbers (what a checkpoint saves; loadable with
        ``torch.load(weights_only=True)``); :meth:`from_state_dict` rebuilds it."""
        return {
            "num_hypotheses": self.num_hypotheses,
            "fingerprint": self.fingerprint,
            "data_fingerprint": self.data_fingerprint,
            "settings": list(self.settings.as_array().tolist()),
            **{k: t.detach().cpu().clone() for k, t in zip(self._STATE_KEYS, self._fields())},
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str | None = None) -> CameraMultiplex:
        """Inverse of :meth:`state_dict`. Raises ``ValueError`` for a malformed state."""
        try:
            store = cls(
                int(state["num_hypotheses"]), str(state["fingerprint"]),
                OffsetSettings.from_array(np.asarray(state["settings"], dtype=np.float64)), device=device,
                data_fingerprint=str(state.get("data_fingerprint", "")),
            )  # fmt: skip
            fields = [state[k] for k in cls._STATE_KEYS]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed camera multiplex state: {e}") from e
        n, P = fields[0].shape[0], store.num_hypotheses
        want = [(n,), (n, P, 7), (n, P, 6), (n, P), (n, 3), (n, P, 6), (n, P, 6), (n,)]
        for k, t, shape in zip(cls._STATE_KEYS, fields, want):
            if tuple(t.shape) != shape:
                raise ValueError(f"malformed camera multiplex state: {k} has shape {tuple(t.shape)}, expected {shape}")
        store._fill(*(t.to(store.device) for t in fields))
        return store

    def _fields(self) -> tuple[Tensor, ...]:
        return (self.ids, self.base, self.offsets, self.scores, self.crops, self.exp_avg, self.exp_avg_sq,
                self.adam_step_count)  # fmt: skip

    def to(self, device: torch.device | str) -> CameraMultiplex:
        """A copy on ``device`` (``self`` when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        out = CameraMultiplex(
            self.num_hypotheses, self.fingerprint, self.settings, device=device, data_fingerprint=self.data_fingerprint
        )
        out._fill(*(t.to(device) for t in self._fields()))
        return out

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the store to ``path`` (``.npz``, atomically; no pickled objects).

        Arrays (N images, P hypotheses):

        ========================= =============== ==========================================================
        ``format``                str             ``"slopekp.camera_multiplex/1"``
        ``template_fingerprint``  str             :func:`template_fingerprint` of the mesh
        ``data_fingerprint``      str             fingerprint of the data folder fitted (``""`` unknown;
                                                  optional on load)
        ``num_hypotheses``        int64 ()        P
        ``offset_settings``       float64 (4,)    ``[gain, az_range_deg, el_range_deg, cr_range_deg]``
        ``ids``                   int64 (N,)      unflipped image ids (dataset indices)
        ``cameras``               float32 (N,P,7) ``base ∘ offsets``: the hypotheses in the NDC of ``crops``
        ``scores``                float32 (N,P)   hypothesis scores (each row sums to 1)
        ``crops``                 float32 (N,3)   unflipped crop affine ``[a, bx, by]`` of the cameras
        ``base_cameras``          float32 (N,P,7) base cameras (same crop)
        ``offsets``               float32 (N,P,6) ``[δs, δtx, δty, α_az, α_el, α_cr]``
        ``adam_exp_avg``          float32 (N,P,6) per-image Adam first moments
        ``adam_exp_avg_sq``       float32 (N,P,6) per-image Adam second moments
        ``adam_step``             int64 (N,)      per-image Adam step counts
        ========================= =============== ==========================================================
        """
        atomic_save_npz(
            path,
            format=np.array(STORE_FORMAT),
            template_fingerprint=np.array(self.fingerprint),
            data_fingerprint=np.array(self.data_fingerprint),
            num_hypotheses=np.array(self.num_hypotheses, dtype=np.int64),
            offset_settings=self.settings.as_array(),
            ids=_np(self.ids),
            cameras=_np(self.computed_cameras()),
            scores=_np(self.scores),
            crops=_np(self.crops),
            base_cameras=_np(self.base),
            offsets=_np(self.offsets),
            adam_exp_avg=_np(self.exp_avg),
            adam_exp_avg_sq=_np(self.exp_avg_sq),
            adam_step=_np(self.adam_step_count),
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        fingerprint: str | None = None,
        num_hypotheses: int | None = None,
        device: torch.device | str | None = None,
    ) -> CameraMultiplex:
        """Read a store written by :meth:`save` (``np.load(..., allow_pickle=False)``).

        Args:
            fingerprint, num_hypotheses: when given, the store must match them (template and P of the run).

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: naming the file for a wrong format, missing/inconsistent arrays, or a mismatch.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"camera multiplex file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except ValueError as e:
            raise ValueError(f"{path}: not a camera multiplex .npz file ({e})") from e
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: cannot read: {e}") from e
        fmt = str(data.get("format", ""))
        if fmt != STORE_FORMAT:
            raise ValueError(f"{path}: not a camera multiplex store (format {fmt!r}, expected {STORE_FORMAT!r})")
        need = ("template_fingerprint", "num_hypotheses", "offset_settings", "ids", "scores", "crops",
                "base_cameras", "offsets", "adam_exp_avg", "adam_exp_avg_sq", "adam_step")  # fmt: skip
        missing = [k for k in need if k not in data]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}")
        P = int(data["num_hypotheses"])
        store = cls(P, str(data["template_fingerprint"]), OffsetSettings.from_array(data["offset_settings"]),
                    device=device, data_fingerprint=str(data.get("data_fingerprint", "")))  # fmt: skip
        _check_compatible(store, fingerprint, num_hypotheses, str(path))
        ids = data["ids"]
        N = ids.shape[0]
        shapes = {"ids": (N,), "scores": (N, P), "crops": (N, 3), "base_cameras": (N, P, 7),
                  "offsets": (N, P, 6), "adam_exp_avg": (N, P, 6), "adam_exp_avg_sq": (N, P, 6),
                  "adam_step": (N,)}  # fmt: skip
        for k, shape in shapes.items():
            if data[k].shape != shape:
                raise ValueError(f"{path}: array {k!r} has shape {data[k].shape}, expected {shape}")
        dev = store.device

        def t(k: str, dtype=torch.float32) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(data[k])).to(dev, dtype)

        store._fill(t("ids", torch.int64), t("base_cameras"), t("offsets"), t("scores"), t("crops"),
                    t("adam_exp_avg"), t("adam_exp_avg_sq"), t("adam_step", torch.int64))  # fmt: skip
        return store


class MissingImageError(ValueError):
    """An image id was asked of a camera multiplex that does not hold it."""


def _check(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.is_floating_point() and checks_values(t) and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")


def _check_compatible(store: CameraMultiplex, fingerprint: str | None, num_hypotheses: int | None, what: str):
    if fingerprint is not None and fingerprint != store.fingerprint:
        raise ValueError(
            f"{what}: camera multiplex was fitted for template fingerprint {store.fingerprint!r}, "
            f"but this one has {fingerprint!r} (a different template mesh)"
        )
    if num_hypotheses is not None and int(num_hypotheses) != store.num_hypotheses:
        raise ValueError(
            f"{what}: camera multiplex has P={store.num_hypotheses} hypotheses per image, expected P={num_hypotheses}"
        )


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
