"""Stage III's self-supervised pose targets, and their re-selection by the network itself (self-training).

Each training image's target is one hypothesis of its camera multiplex, possibly replaced by that hypothesis's
depth mirror (:func:`~slopekp.geometry.camera.depth_mirror_cameras`). It starts as the best-scoring hypothesis
(METHOD §5.6), mirrored where the appearance choice says so (``train.mirror_by_appearance``).

**Self-training** (``train.reselect_every``; slopekp's addition, not in U-CMR or SLOPE-KP). Every few epochs the
network in eval mode predicts a camera for every unaugmented training image, and each image's target becomes the
candidate whose rotation is nearest that prediction, among its ``train.reselect_top`` best-scoring hypotheses and
their depth mirrors. A mask scores a camera, its depth mirror and other near-symmetric views almost alike, so one
image alone cannot tell them apart; a network shared by every image answers the same way for images that look
alike, and so breaks those ties consistently. The candidates stay each image's own best-scoring hypotheses: the
network never invents a target, it only chooses among what the masks allow. No ground truth is read.

Conventions: rows are the store's (:attr:`CameraMultiplex.ids <slopekp.train.multiplex.CameraMultiplex.ids>`);
cameras are ``(B, 7)`` ``[s, tx, ty, q]`` in the NDC of the requested crops, as :meth:`CameraMultiplex.cameras
<slopekp.train.multiplex.CameraMultiplex.cameras>` gives them. A rotation does not depend on the crop, so the
predictions of :meth:`PoseTargets.reselect` may come from any unflipped crop of each image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from slopekp.geometry.camera import depth_mirror_cameras
from slopekp.geometry.rotations import quat_geodesic_angle
from slopekp.train.multiplex import CameraMultiplex, split_image_ids
from slopekp.train.scores import best_hypothesis

__all__ = ["PoseTargets", "Reselection"]


@dataclass(frozen=True)
class Reselection:
    """What one :meth:`PoseTargets.reselect` did."""

    images: int
    """Images re-selected."""
    changed: int
    """Of them, those whose target changed."""
    mirrored_share: float
    """Share of all targets that are now a depth mirror."""
    best_share: float
    """Share of all targets that are now the best-scoring hypothesis itself (not mirrored)."""
    mean_shift_deg: float
    """Mean rotation between the new and the previous targets of the images re-selected (degrees)."""

    def summary(self) -> dict[str, float]:
        return {"images": self.images, "changed": self.changed, "mirrored_share": round(self.mirrored_share, 4),
                "best_share": round(self.best_share, 4), "mean_shift_deg": round(self.mean_shift_deg, 3)}  # fmt: skip


class PoseTargets:
    """Each store row's target: a hypothesis index ``choice (N,)`` int64 and ``mirrored (N,)`` bool.

    Args:
        store: the multiplex whose hypotheses are the candidates.
        mirrored: ``(N,)`` bool per store row, the initial depth-mirror choice (default: none mirrored).
    """

    def __init__(self, store: CameraMultiplex, mirrored: Tensor | None = None) -> None:
        self.store = store
        n = len(store)
        self.choice = best_hypothesis(store.scores).to(torch.int64)
        if mirrored is None:
            mirrored = torch.zeros(n, dtype=torch.bool, device=store.device)
        if not isinstance(mirrored, Tensor) or tuple(mirrored.shape) != (n,):
            shape = tuple(mirrored.shape) if isinstance(mirrored, Tensor) else type(mirrored).__name__
            raise ValueError(f"mirrored must be a (N,) = ({n},) bool tensor, one per store row, got {shape}")
        self.mirrored = mirrored.to(store.device, torch.bool).clone()

    @classmethod
    def from_id_mirrors(cls, store: CameraMultiplex, mirror_of: Tensor | None) -> PoseTargets:
        """The best hypotheses, mirrored where ``mirror_of[id]`` (indexed by unflipped image id) is True; ids past
        its end (images of the store that the data set does not use) are not mirrored."""
        if mirror_of is None:
            return cls(store)
        ids = store.ids
        inside = ids < mirror_of.numel()
        flags = mirror_of.to(store.device)[ids.clamp(max=max(mirror_of.numel() - 1, 0))] & inside
        return cls(store, flags)

    def cameras(self, ids: Tensor, crops: Tensor) -> Tensor:
        """``(B, 7)``: the targets of image ids ``ids (B,)`` (mirrored ids give the reflected camera) for their
        crops ``(B, 3)``, as :meth:`CameraMultiplex.best_cameras` expresses them."""
        # the depth mirror commutes with the horizontal reflection of a mirrored sample (both are symmetries of the
        # bird), so flipping the target after reading it reflected is the reflection of the flipped target
        return self._pick(self.store.cameras(ids, crops), self.store.rows(ids))

    def _pick(self, cams: Tensor, rows: Tensor) -> Tensor:
        """``(B, 7)``: the targets of store rows ``rows (B,)`` among their hypotheses ``cams (B, P, 7)``."""
        picked = cams[torch.arange(cams.shape[0], device=cams.device), self.choice[rows]]
        return torch.where(self.mirrored[rows][:, None], depth_mirror_cameras(picked), picked)

    @torch.no_grad()
    def reselect(self, ids: Tensor, predicted: Tensor, crops: Tensor, top: int) -> Reselection:
        """Make each image's target its candidate nearest the network's prediction.

        Args:
            ids: ``(B,)`` unflipped image ids.
            predicted: ``(B, 7)`` the network's cameras for those images (the rotation is what counts).
            crops: ``(B, 3)`` the crops the predictions were made in.
            top: candidates are the ``top`` best-scoring hypotheses of each image, and the depth mirror of each.
        Returns:
            :class:`Reselection`.
        """
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise ValueError(f"top must be a positive int, got {top!r}")
        if bool(split_image_ids(ids).flipped.any()):
            raise ValueError("reselect needs the predictions for unflipped images")
        if not isinstance(predicted, Tensor) or tuple(predicted.shape) != (ids.numel(), 7):
            shape = tuple(predicted.shape) if isinstance(predicted, Tensor) else type(predicted).__name__
            raise ValueError(f"predicted must have shape (B, 7) = ({ids.numel()}, 7), got {shape}")
        rows = self.store.rows(ids)
        k = min(top, self.store.num_hypotheses)
        scores = self.store.scores[rows]
        # the best one first (ties as best_hypothesis breaks them), then the others by score, stable
        order = torch.argsort(scores, dim=-1, descending=True, stable=True)
        best = best_hypothesis(scores)
        order = torch.cat([best[:, None], order[order != best[:, None]].view(len(rows), -1)], dim=1)[:, :k]
        cams = self.store.cameras(ids, crops)  # (B, P, 7)
        cand = cams.gather(1, order[..., None].expand(-1, -1, 7))  # (B, k, 7)
        cand = torch.cat([cand, depth_mirror_cameras(cand)], dim=1)  # (B, 2k, 7): plain, then mirrored
        pred = predicted.to(cand.device, cand.dtype)
        angle = quat_geodesic_angle(cand[..., 3:], pred[:, None, 3:].expand_as(cand[..., 3:]))  # (B, 2k)
        pick = angle.argmin(-1)  # the first (plain, better-scored) of equally near candidates
        previous = self._pick(cams, rows)
        new_choice = order.gather(1, (pick % k)[:, None])[:, 0]
        new_mirror = pick >= k
        chosen = cand[torch.arange(len(rows), device=cand.device), pick]
        changed = (new_choice != self.choice[rows]) | (new_mirror != self.mirrored[rows])
        self.choice[rows] = new_choice
        self.mirrored[rows] = new_mirror
        shift = quat_geodesic_angle(chosen[:, 3:], previous[:, 3:]).rad2deg()
        return Reselection(
            images=int(rows.numel()),
            changed=int(changed.sum()),
            mirrored_share=float(self.mirrored.float().mean()),
            best_share=float(((self.choice == best_hypothesis(self.store.scores)) & ~self.mirrored).float().mean()),
            mean_shift_deg=float(shift.mean()) if shift.numel() else 0.0,
        )

    def state_dict(self) -> dict[str, Tensor]:
        """``{"choice", "mirrored"}`` per store row, on the CPU (a checkpoint's ``targets_state``)."""
        return {"choice": self.choice.cpu().clone(), "mirrored": self.mirrored.cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`; refuses one of another store size."""
        n = len(self.store)
        choice, mirrored = state.get("choice"), state.get("mirrored")
        if not (isinstance(choice, Tensor) and isinstance(mirrored, Tensor)) or choice.shape != (n,) or \
                mirrored.shape != (n,):  # fmt: skip
            raise ValueError(f"pose targets state does not match the multiplex ({n} images)")
        if choice.numel() and (int(choice.min()) < 0 or int(choice.max()) >= self.store.num_hypotheses):
            raise ValueError(f"pose targets state names hypotheses outside 0..{self.store.num_hypotheses - 1}")
        self.choice = choice.to(self.store.device, torch.int64).clone()
        self.mirrored = mirrored.to(self.store.device, torch.bool).clone()
