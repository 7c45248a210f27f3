"""Pose heads: image features (and the predicted shape) → weak-perspective camera (METHOD §4.5–4.6).

Four variants behind one interface, :class:`PoseHead`, chosen by name from :data:`POSE_HEADS`
(:func:`pose_head_class`): ``for_network(encoder, template_verts, cfg)`` builds a head for a network,
``forward(enc, verts=None) -> PoseOutput`` predicts cameras, and ``target_size(encoder)`` and
``loss(enc, verts, target, ctx) -> PoseLoss`` say how Stage III trains it, so that no caller branches on a name:

* ``"quaternion"`` (:class:`QuaternionPoseHead`, U-CMR's default): ``Linear(→4)``, L2-normalised.
* ``"gramschmidt"`` (:class:`GramSchmidtPoseHead`): ``Linear(→6)`` → Gram–Schmidt (Zhou et al. 2019).
* ``"svd"`` (:class:`SVDPoseHead`): ``Linear(→9)`` → SVD special orthogonalisation (Levinson et al. 2020).
* ``"keypoints"`` (:class:`KeypointPoseHead`, SLOPE-KP): heatmaps → soft-argmax → weighted orthographic PnP
  against FPS keypoint vertices of the predicted shape (machinery in :mod:`slopekp.models.keypoints`).

Every head returns ``PoseOutput(camera (B, 7), extras)`` with ``camera = [s, tx, ty, qw, qx, qy, qz]`` in the
NDC of the input crop (x right, y down), a unit quaternion (scalar first) and ``s > 0``.

The 6D and 9D heads convert their rotation matrix to a quaternion with the differentiable Shepperd map
:func:`~slopekp.geometry.rotations.rotmat_to_quat`, so the camera has gradients w.r.t. every rotation logit
(the reference code rebuilt the quaternion with ``torch.tensor([...])``, which cut the axis off the graph,
METHOD §10 item 4).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slopekp.config import CHOICES, ModelConfig
from slopekp.geometry.rotations import quat_normalize, rot6d_to_rotmat, rot9d_to_rotmat, rotmat_to_quat
from slopekp.mesh.template import farthest_point_sampling
from slopekp.models.base import EncoderOutput, PoseLoss, PoseLossContext, PoseOutput
from slopekp.models.encoder import ResNetEncoder
from slopekp.models.keypoints import (
    CONFIDENCE_SIGMA,
    TARGET_SIGMA,
    HeatmapDecoder,
    PnPSettings,
    heatmap_targets,
    keypoint_visibility,  # fmt: skip
    soft_argmax,
)
from slopekp.models.pose_losses import camera_loss, coordinate_loss, heatmap_kl_loss, heatmap_loss
from slopekp.models.shape import fc_stack

__all__ = [
    "POSE_HEADS",
    "GramSchmidtPoseHead",
    "KeypointPoseHead",
    "PoseHead",
    "QuaternionPoseHead",
    "SVDPoseHead",
    "build_pose_head",
    "pose_head_class",
]


class PoseHead(nn.Module, ABC):
    """Interface of every pose head: built for a network (:meth:`for_network`), it predicts cameras
    (:meth:`forward`) and says how it is trained (:meth:`target_size`, :meth:`loss`), so that Stage III and the
    network never branch on a head's name."""

    @classmethod
    @abstractmethod
    def for_network(cls, encoder: ResNetEncoder, template_verts: Tensor, cfg: ModelConfig) -> PoseHead:
        """The head for ``encoder`` (its feature sizes), the template's vertices ``(V, 3)`` and the model config."""

    def target_size(self, encoder: ResNetEncoder) -> int:
        """Side of the renders that Stage III makes of its targets for this head (the hard renderer of
        :class:`~slopekp.models.base.PoseLossContext`): the input side, unless the head needs another."""
        return encoder.image_size

    @abstractmethod
    def loss(self, enc: EncoderOutput, verts: Tensor, target: Tensor, ctx: PoseLossContext) -> PoseLoss:
        """The head's training loss against target cameras ``(B, 7)``, with ``verts (B, V, 3)`` the predicted
        shape."""

    @abstractmethod
    def forward(self, enc: EncoderOutput, verts: Tensor | None = None) -> PoseOutput:
        """Predict cameras.

        Args:
            enc: the encoder's output (the regression heads read ``enc.flat (B, D)``, the keypoint head
                ``enc.features``).
            verts: ``(B, V, 3)`` the predicted shape (object frame); required by the keypoint head, ignored by
                the regression heads.
        Returns:
            :class:`~slopekp.models.base.PoseOutput` with ``camera (B, 7)``: unit quaternion, ``s > 0``.
        """


# ------------------------------------------------------------------------------------------------------------
# regression heads (METHOD §4.5 a–c)
# ------------------------------------------------------------------------------------------------------------
class _RegressionPoseHead(PoseHead):
    """Shared tail of the regression heads: its own :func:`~slopekp.models.shape.fc_stack` ``(D → hidden)`` on
    ``enc.flat`` (METHOD §4.2: each head has its own stack), then

    * scale ``s = relu(Linear(→1) + scale_bias) + 1e-12`` (METHOD: bias 0.75; relu, not softplus, as in the
      method, so ``s`` equals the linear output exactly where it is positive; where the pre-activation is
      negative, ``s = 1e-12`` and its gradient is 0 — with the +0.75 bias this needs a large negative logit);
    * translation ``t = Linear(→2)``;
    * rotation ``Linear(→rotation_dim)`` mapped to a unit quaternion by :meth:`logits_to_quat`.

    The three output layers keep PyTorch's default initialisation (as U-CMR's predictors).
    """

    rotation_dim: ClassVar[int]

    def __init__(self, in_dim: int, hidden: int = 200, layers: int = 2, scale_bias: float = 0.75) -> None:
        """
        Args:
            in_dim: ``D`` of ``enc.flat`` (4096 for a 256² input).
            hidden: fc_stack width (METHOD: ``nz_feat = 200``).
            layers: fc_stack depth (METHOD: 2).
            scale_bias: added to the scale logit before the relu (METHOD: 0.75; 3 for the unused perspective
                variant).
        """
        super().__init__()
        for name, v in (("in_dim", in_dim), ("hidden", hidden), ("layers", layers)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_dim = in_dim
        self.scale_bias = float(scale_bias)
        self.trunk = fc_stack(in_dim, hidden, layers)
        self.scale = nn.Linear(hidden, 1)
        self.translation = nn.Linear(hidden, 2)
        self.rotation = nn.Linear(hidden, self.rotation_dim)

    @staticmethod
    @abstractmethod
    def logits_to_quat(logits: Tensor) -> Tensor:
        """``(B, rotation_dim)`` raw rotation output -> ``(B, 4)`` unit quaternions ``(w, x, y, z)``
        (differentiable)."""

    @classmethod
    def for_network(cls, encoder: ResNetEncoder, template_verts: Tensor, cfg: ModelConfig) -> PoseHead:
        """On the encoder's flat feature ``(B, encoder.flat_dim)``, with the default trunk."""
        return cls(in_dim=encoder.flat_dim)

    def loss(self, enc: EncoderOutput, verts: Tensor, target: Tensor, ctx: PoseLossContext) -> PoseLoss:
        """``camera_weight ·`` the mean :func:`~slopekp.models.pose_losses.camera_loss` of the predicted cameras."""
        loss = ctx.camera_weight * camera_loss(self(enc, verts).camera, target).mean()
        return PoseLoss(loss, {"camera": loss.detach()})

    def forward(self, enc: EncoderOutput, verts: Tensor | None = None) -> PoseOutput:
        """``enc.flat (B, D)`` -> ``PoseOutput(camera (B, 7), extras={})``; ``verts`` is ignored."""
        flat = enc.flat
        if not isinstance(flat, Tensor) or flat.dim() != 2 or flat.shape[1] != self.in_dim:
            shape = tuple(flat.shape) if isinstance(flat, Tensor) else type(flat).__name__
            raise ValueError(f"enc.flat must have shape (B, {self.in_dim}), got {shape}")
        f = self.trunk(flat)
        s = F.relu(self.scale(f) + self.scale_bias) + 1e-12  # (B, 1)
        t = self.translation(f)  # (B, 2)
        q = self.logits_to_quat(self.rotation(f))  # (B, 4)
        return PoseOutput(torch.cat((s, t, q), dim=-1), {})


class QuaternionPoseHead(_RegressionPoseHead):
    """(a) Unit quaternion (U-CMR ``pred_pose_quat``): ``Linear(→4)``, L2-normalised (sign as predicted)."""

    rotation_dim = 4

    @staticmethod
    def logits_to_quat(logits: Tensor) -> Tensor:
        return quat_normalize(logits)


class GramSchmidtPoseHead(_RegressionPoseHead):
    """(b) 6D + Gram–Schmidt (Zhou et al. 2019): ``Linear(→6)`` as the two columns ``a₁, a₂`` of a 3×2 matrix
    (row-major, :func:`~slopekp.geometry.rotations.rot6d_to_rotmat`), then Shepperd's ``rotmat_to_quat``
    (canonical ``w ≥ 0``)."""

    rotation_dim = 6

    @staticmethod
    def logits_to_quat(logits: Tensor) -> Tensor:
        return rotmat_to_quat(rot6d_to_rotmat(logits))


class SVDPoseHead(_RegressionPoseHead):
    """(c) 9D + SVD special orthogonalisation (Levinson et al. 2020): ``Linear(→9)`` as a row-major 3×3 matrix,
    projected onto SO(3) (:func:`~slopekp.geometry.rotations.rot9d_to_rotmat`, roma's damped backward,
    gradient eps 1e-5), then Shepperd's ``rotmat_to_quat`` (canonical ``w ≥ 0``)."""

    rotation_dim = 9

    @staticmethod
    def logits_to_quat(logits: Tensor) -> Tensor:
        return rotmat_to_quat(rot9d_to_rotmat(logits))


# ------------------------------------------------------------------------------------------------------------
# keypoint head (METHOD §4.6)
# ------------------------------------------------------------------------------------------------------------
HEATMAP_LOSSES = CHOICES["model.heatmap_loss"]
"""The keypoint head's heatmap losses (``model.heatmap_loss``): ``mse`` and ``kl``."""


class KeypointPoseHead(PoseHead):
    """(d) SLOPE-KP: heatmaps of K keypoint vertices → soft-argmax → robust weighted orthographic PnP.

    * Keypoints: ``keypoint_index (K,)`` (a buffer) = farthest-point sampling of the template vertices from
      vertex 0 (METHOD §4.6). Their 3D positions are taken from the **predicted** shape ``verts`` given to
      :meth:`forward`.
    * Heatmaps: :class:`~slopekp.models.keypoints.HeatmapDecoder` on ``enc.features`` (layer4 → layer1).
    * 2D points and confidences: :func:`~slopekp.models.keypoints.soft_argmax` (NDC, confidences sum to 1).
    * Camera: :meth:`PnPSettings.solve <slopekp.models.keypoints.PnPSettings.solve>` (RANSAC init, inlier
      filtering, Levenberg–Marquardt refinement with implicit-function gradients).

    ``end2end=False`` (METHOD's default): PnP sees detached inputs, so the camera carries no gradient; the
    decoder is trained by the heatmap loss on ``extras["heatmaps"]`` only. ``end2end=True``: a loss on the camera
    back-propagates through PnP into the confidences, the 2D points (so the heatmaps and the decoder) and the 3D
    keypoints (so the shape). METHOD lets gradients reach the confidences only; our PnP also differentiates
    w.r.t. the points.

    ``extras``: ``heatmaps (B, K, H, W)`` raw decoder output, ``points2d (B, K, 2)`` NDC, ``confidence (B, K)``,
    ``init_camera (B, 7)`` the robust initialisation's camera (no gradient).
    """

    def __init__(
        self,
        template_verts: Tensor,
        in_channels: tuple[int, int, int, int] = (64, 128, 256, 512),
        num_keypoints: int = 32,
        base_width: int = 64,
        heatmap_size: int | tuple[int, int] | None = None,
        end2end: bool = False,
        pnp: PnPSettings | None = None,
        confidence_sigma: float = CONFIDENCE_SIGMA,
        target_sigma: float = TARGET_SIGMA,
        supervise_occluded: bool = False,
        occluded_zero: bool = False,
        heatmap_loss: str = "mse",
    ) -> None:
        """
        Args:
            template_verts: ``(V, 3)`` template vertices (mean-centred); only used to pick the keypoints.
            in_channels: encoder channels of ``layer1 .. layer4`` (``width·(1, 2, 4, 8)``; 64·… for ResNet-18).
            num_keypoints: ``K`` (METHOD: 32).
            base_width: decoder width unit (LWTL: 64).
            heatmap_size: heatmap side or ``(H, W)``; ``None`` = 2× layer1's resolution = half the input side.
            end2end: let camera losses reach the network through PnP (see the class docstring).
            pnp: PnP settings; default :class:`~slopekp.models.keypoints.PnPSettings()`.
            confidence_sigma: soft-argmax confidence window in NDC (13.5 px at 256²).
            target_sigma: width (NDC) of the Gaussian heatmap targets of :meth:`loss` (METHOD: 0.05).
            supervise_occluded: :meth:`loss` also supervises the keypoints that the target camera does not see,
                at their projections (METHOD: visible ones only; an occluded keypoint's map is then free).
            occluded_zero: :meth:`loss` trains the occluded keypoints' maps towards zero, and the confidences are
                the maps' un-normalised mass near their peaks (:func:`~slopekp.models.keypoints.soft_argmax`'s
                ``scaled``), so a keypoint the network does not see weighs little in PnP. Excludes
                ``supervise_occluded``. With ``heatmap_loss="kl"`` the hidden maps are trained towards the uniform
                distribution instead, and a flat map has little mass near its mean.
            heatmap_loss: ``"mse"``, the squared error against the Gaussians (METHOD §7.7), the maps read through a
                ReLU; or ``"kl"``, :func:`~slopekp.models.pose_losses.heatmap_kl_loss`, the maps read as logits
                of a spatial softmax (for training and for the soft-argmax alike).
        """
        super().__init__()
        if not isinstance(template_verts, Tensor) or template_verts.dim() != 2 or template_verts.shape[1] != 3:
            shape = tuple(template_verts.shape) if isinstance(template_verts, Tensor) else type(template_verts)
            raise ValueError(f"template_verts must have shape (V, 3), got {shape}")
        if pnp is not None and not isinstance(pnp, PnPSettings):
            raise ValueError(f"pnp must be a PnPSettings, got {type(pnp).__name__}")
        if not (isinstance(num_keypoints, int) and num_keypoints >= 4):
            raise ValueError(f"num_keypoints must be an int >= 4 (PnP needs 4 points), got {num_keypoints!r}")
        self.end2end = bool(end2end)
        self.pnp = pnp if pnp is not None else PnPSettings()
        self.confidence_sigma = float(confidence_sigma)
        if not (target_sigma > 0 and math.isfinite(target_sigma)):
            raise ValueError(f"target_sigma must be a positive finite number (NDC), got {target_sigma!r}")
        self.target_sigma = float(target_sigma)
        self.supervise_occluded = bool(supervise_occluded)
        self.occluded_zero = bool(occluded_zero)
        if heatmap_loss not in HEATMAP_LOSSES:
            raise ValueError(f"heatmap_loss must be one of {HEATMAP_LOSSES}, got {heatmap_loss!r}")
        self.heatmap_loss = heatmap_loss
        if self.supervise_occluded and self.occluded_zero:
            raise ValueError(
                "supervise_occluded (targets at the occluded keypoints' projections) and occluded_zero (zero maps "
                "for them) contradict each other: choose one (model.heatmap_occluded, model.heatmap_visibility)"
            )
        self.num_verts = int(template_verts.shape[0])
        self.register_buffer("keypoint_index", farthest_point_sampling(template_verts.detach().cpu(), num_keypoints))
        self.decoder = HeatmapDecoder(in_channels, num_keypoints, base_width, heatmap_size)

    @classmethod
    def for_network(cls, encoder: ResNetEncoder, template_verts: Tensor, cfg: ModelConfig) -> PoseHead:
        """On the encoder's ``layer1 .. layer4`` features, with ``cfg.num_keypoints`` keypoints, the decoder width
        ``cfg.keypoint_width``, the heatmaps' side ``cfg.heatmap_size`` (0: half the input's), the targets' width
        ``cfg.heatmap_sigma``, ``cfg.heatmap_occluded``, ``cfg.heatmap_visibility``, ``cfg.heatmap_loss`` and
        ``cfg.end2end``."""
        chans = tuple(encoder.feature_channels[f"layer{i}"] for i in range(1, 5))
        return cls(template_verts=template_verts, in_channels=chans, num_keypoints=cfg.num_keypoints,
                   base_width=cfg.keypoint_width, heatmap_size=cfg.heatmap_size or None, end2end=cfg.end2end,
                   target_sigma=cfg.heatmap_sigma, supervise_occluded=cfg.heatmap_occluded,
                   occluded_zero=cfg.heatmap_visibility, heatmap_loss=cfg.heatmap_loss)  # fmt: skip

    def heatmap_side(self, layer1_side: int) -> int:
        """Side of the (square) heatmaps for a ``layer1`` feature map of side ``layer1_side``."""
        out = self.decoder.out_size
        return out[0] if out is not None else 2 * layer1_side

    def target_size(self, encoder: ResNetEncoder) -> int:
        """The heatmaps' side: keypoint visibility is rendered at the heatmaps' resolution."""
        return self.heatmap_side(encoder.feature_sizes["layer1"])

    def loss(self, enc: EncoderOutput, verts: Tensor, target: Tensor, ctx: PoseLossContext) -> PoseLoss:
        """The heatmap loss against Gaussians at the target camera's projections of the visible keypoints (METHOD
        §7.7); end to end (``end2end`` and ``camera_weight > 0``), plus the camera loss of the head's own camera
        (:meth:`pose_from_heatmaps` of the same heatmaps, as :meth:`forward` computes it). Without ``end2end`` no
        PnP runs: the camera would carry no gradient."""
        heat = self.decoder(enc.features)
        with torch.no_grad():
            vis = keypoint_visibility(verts.detach(), ctx.faces, target, self.keypoint_index, ctx.hard_renderer)
            supervised = torch.ones_like(vis.visible) if self.supervise_occluded else vis.visible
            goal = heatmap_targets(vis.points2d, supervised, tuple(heat.shape[-2:]), self.target_sigma)
        trained = torch.ones_like(vis.visible) if self.occluded_zero else supervised  # zero maps for the hidden
        kl = self.heatmap_loss == "kl"
        loss = (heatmap_kl_loss if kl else heatmap_loss)(heat, goal, trained, weight=ctx.heatmap_weight)
        logs = {"heatmap": loss.detach(), "visible_keypoints": vis.visible.float().mean()}
        if ctx.coordinate_weight > 0:
            points2d, _ = soft_argmax(heat, self.confidence_sigma, window=2 * self.confidence_sigma, softmax=kl)
            l_xy = ctx.coordinate_weight * coordinate_loss(points2d, vis.points2d, supervised)
            logs["coordinate"] = l_xy.detach()
            loss = loss + l_xy
        if self.end2end and ctx.camera_weight > 0:
            l_cam = ctx.camera_weight * camera_loss(self.pose_from_heatmaps(heat, verts).camera, target).mean()
            logs["camera"] = l_cam.detach()
            loss = loss + l_cam
        return PoseLoss(loss, logs)

    def forward(self, enc: EncoderOutput, verts: Tensor | None = None) -> PoseOutput:
        """``enc.features`` and ``verts (B, V, 3)`` (required) -> ``PoseOutput(camera (B, 7), extras)``."""
        if verts is None:
            raise ValueError(
                "the keypoint pose head needs the predicted shape: call forward(enc, verts) with verts (B, V, 3)"
            )
        return self.pose_from_heatmaps(self.decoder(enc.features), verts)

    def pose_from_heatmaps(self, heatmaps: Tensor, verts: Tensor) -> PoseOutput:
        """The head after its decoder: ``heatmaps (B, K, H, W)``, ``verts (B, V, 3)`` -> ``PoseOutput``."""
        k = self.keypoint_index.shape[0]
        if not isinstance(heatmaps, Tensor) or heatmaps.dim() != 4 or heatmaps.shape[1] != k:
            shape = tuple(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
            raise ValueError(f"heatmaps must have shape (B, {k}, H, W), got {shape}")
        bsz = heatmaps.shape[0]
        if not isinstance(verts, Tensor) or tuple(verts.shape) != (bsz, self.num_verts, 3):
            shape = tuple(verts.shape) if isinstance(verts, Tensor) else type(verts).__name__
            raise ValueError(f"verts must have shape (B, V, 3) = ({bsz}, {self.num_verts}, 3), got {shape}")
        points2d, confidence = soft_argmax(
            heatmaps,
            self.confidence_sigma,
            window=2 * self.confidence_sigma,
            scaled=self.occluded_zero,
            softmax=self.heatmap_loss == "kl",
        )
        points3d = verts[:, self.keypoint_index].to(points2d.dtype)  # (B, K, 3)
        p2d, p3d, w = points2d, points3d, confidence
        if not self.end2end:
            p2d, p3d, w = p2d.detach(), p3d.detach(), w.detach()
        res = self.pnp.solve(p2d, p3d, w)
        extras = {
            "heatmaps": heatmaps,
            "points2d": points2d,
            "confidence": confidence,
            "init_camera": res.init_camera,
        }
        return PoseOutput(res.camera, extras)


# ------------------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------------------
POSE_HEADS: dict[str, type[PoseHead]] = {
    "quaternion": QuaternionPoseHead,
    "gramschmidt": GramSchmidtPoseHead,
    "svd": SVDPoseHead,
    "keypoints": KeypointPoseHead,
}
"""Pose head classes by name."""


def pose_head_class(name: str) -> type[PoseHead]:
    """``POSE_HEADS[name]``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones).
    """
    cls = POSE_HEADS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown pose head {name!r}; valid names: {', '.join(repr(n) for n in POSE_HEADS)}")
    return cls


def build_pose_head(name: str, **kwargs) -> PoseHead:
    """``POSE_HEADS[name](**kwargs)``; the keyword arguments are those of the chosen class's constructor
    (``in_dim, hidden, layers, scale_bias`` for the regression heads; ``template_verts, in_channels, …`` for
    ``"keypoints"``). A network builds its head with :meth:`PoseHead.for_network` instead.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones).
    """
    return pose_head_class(name)(**kwargs)
