"""The camera multiplex store: P weak-perspective camera hypotheses per training image (U-CMR; METHOD §5), with
their offsets, scores, per-image optimiser state and crops, and its file format.

Conventions
-----------
* A camera is a ``(..., 7)`` tensor ``[s, tx, ty, qw, qx, qy, qz]`` in the NDC of an image crop
  (``docs/conventions.md``). The hypotheses and their offsets: :mod:`slopekp.train.hypotheses`; the per-image
  Adam: :mod:`slopekp.train.camera_adam`; the scores: :mod:`slopekp.train.scores`.
* **Image ids** (METHOD §0): a sample of dataset index ``i`` has id ``i``, its horizontal mirror has id
  ``10**6 − i`` (:data:`slopekp.data.cub.FLIP_ID_BASE`). The store is keyed by the *unflipped* id and holds the
  unflipped cameras; a mirrored id reads the reflected cameras (:func:`slopekp.geometry.camera.reflect_camera`)
  and writes are reflected back.
* **Crops** (METHOD §5.5): cameras are stored in the NDC of the crop they were fitted in, recorded per
  image as the crop affine ``[a, bx, by]`` (original-image pixel ``u`` → NDC ``a·u + b``, always of the
  *unflipped* crop). Reads re-express them for the caller's current crop with
  :func:`slopekp.geometry.camera.recrop_camera`; that map is affine in ``(s, t)``, so the offsets are
  re-expressed with them (``δs·k``, ``δt·k``).

File format (``.npz``, written atomically, read with ``allow_pickle=False``) — see
:meth:`CameraMultiplex.save`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from slopekp.data.cub import FLIP_ID_BASE
from slopekp.geometry.camera import recrop_camera, reflect_camera
from slopekp.train.camera_adam import adam_update, suppress_gradient_noise
from slopekp.train.hypotheses import NUM_OFFSETS, OffsetSettings, apply_offsets
from slopekp.train.scores import best_hypothesis
from slopekp.utils import atomic_save_npz, checks_values, to_device

#: ``format`` entry of the ``.npz`` store; bump on incompatible changes.
STORE_FORMAT = "slopekp.camera_multiplex/1"


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
        fingerprint: :func:`~slopekp.mesh.template_fingerprint` of the mesh the cameras were fitted for (checked
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
        ``template_fingerprint``  str             :func:`~slopekp.mesh.template_fingerprint` of the mesh
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
