"""Results of the reconstruction network's modules, shared by training, evaluation, predict and video.

Shapes use ``B`` for the batch, ``V`` for the template's vertices, ``K`` for keypoints. Cameras are the
weak-perspective ``[s, tx, ty, qw, qx, qy, qz]`` of ``docs/conventions.md`` in the NDC of the input crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor


class EncoderOutput(NamedTuple):
    """What the image encoder gives every head (METHOD §4.1)."""

    features: dict[str, Tensor]
    """Multi-scale ResNet features ``layer1 .. layer4``, each ``(B, C_l, H_l, W_l)`` (strides 4, 8, 16, 32)."""
    conv: Tensor
    """``(B, C, h, w)`` the ``enc_conv1`` feature (4x4 for a 256² input): the texture head's input."""
    flat: Tensor
    """``(B, D)`` ``conv`` flattened (4096 for a 256² input): the shape and regression pose heads' input."""


class PoseOutput(NamedTuple):
    """What a pose head returns."""

    camera: Tensor
    """``(B, 7)`` the predicted camera (unit quaternion, ``s > 0``)."""
    extras: dict[str, Tensor]
    """Head-specific tensors, e.g. for the keypoint head ``heatmaps (B, K, H, W)``, ``points2d (B, K, 2)`` (NDC),
    ``confidence (B, K)`` and ``init_camera (B, 7)``; empty for the regression heads."""


class PoseLoss(NamedTuple):
    """A pose head's training loss on a batch (:meth:`slopekp.models.pose.PoseHead.loss`)."""

    loss: Tensor
    """Scalar, the weighted sum of the head's terms."""
    logs: dict[str, Tensor]
    """0-dim detached tensors on the device, by name (``camera``, ``heatmap``, ``visible_keypoints``)."""


@dataclass(frozen=True)
class PoseLossContext:
    """What a pose head's loss needs beside its input and the target cameras (Stage III builds it once)."""

    faces: Tensor
    """``(F, 3)`` the template's faces (the keypoint head renders keypoint visibility under the target camera)."""
    hard_renderer: Any
    """A hard (z-buffer) :class:`slopekp.render.Renderer` of side :meth:`~slopekp.models.pose.PoseHead.target_size`."""
    camera_weight: float
    """Weight of the camera loss (``train.camera_weight``)."""
    heatmap_weight: float
    """Weight of the heatmap loss (``train.heatmap_weight``)."""
    coordinate_weight: float = 0.0
    """Weight of the keypoint head's coordinate loss (``train.coordinate_weight``)."""


@dataclass(frozen=True)
class Prediction:
    """The network's reconstruction of a batch of images."""

    verts: Tensor
    """``(B, V, 3)`` predicted shape in the object frame: mean shape + symmetric deformation."""
    delta_v: Tensor
    """``(B, V, 3)`` the per-image deformation (symmetric)."""
    mean_shape: Tensor
    """``(V, 3)`` the learned mean shape."""
    uv_image: Tensor
    """``(B, 3, Hu, Wu)`` UV texture in [0, 1], sampled through the template's sphere UVs."""
    camera: Tensor | None
    """``(B, 7)`` the pose head's camera (None when the pose head was not run, as in Stage II)."""
    pose_extras: dict[str, Tensor] = field(default_factory=dict)
    """:attr:`PoseOutput.extras` of the pose head."""
    texture_flow: Tensor | None = None
    """``(B, 2, Hu, Wu)`` where each texel was sampled in the input (NDC), for the texture-flow head; else None."""
    uv_image_head: Tensor | None = None
    """The texture head's own UV image where :attr:`uv_image` is the photo texture (``model.texture_from_photo``,
    inference only); else None."""
