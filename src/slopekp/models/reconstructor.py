"""The composite network: image → shape, texture and camera (METHOD §4).

``ReconstructionNet(img) -> Prediction``: the encoder's features feed the shape head (template + symmetric
deformation, learned mean shape), the texture head (a UV image) and the pose head chosen by name
(:data:`slopekp.models.pose.POSE_HEADS`). The keypoint head reads the predicted shape: its 3D keypoints are
vertices of ``verts``.
"""

from __future__ import annotations

from torch import Tensor, nn

from slopekp.models.base import Prediction
from slopekp.models.encoder import ResNetEncoder
from slopekp.models.pose import pose_head_class
from slopekp.models.shape import ShapeHead
from slopekp.models.texture import TextureHead

#: Parameter-name prefixes of the parts that Stage II trains (the pose head is Stage III's).
BACKBONE = ("encoder.", "shape.", "texture.")


class ReconstructionNet(nn.Module):
    """Encoder + shape, texture and pose heads.

    Args:
        encoder, shape, texture, pose: the modules (see :func:`build_model`).
        pose_head: the pose head's registry name, recorded for checkpoints and model cards.
    """

    def __init__(
        self, encoder: ResNetEncoder, shape: ShapeHead, texture: TextureHead, pose: nn.Module, pose_head: str
    ) -> None:
        super().__init__()
        self.encoder, self.shape, self.texture, self.pose = encoder, shape, texture, pose
        self.pose_head = pose_head

    def forward(self, img: Tensor, pose: bool = True) -> Prediction:
        """``img (B, 3, S, S)`` ImageNet-normalised RGB (:func:`~slopekp.models.encoder.normalize_image`) →
        :class:`~slopekp.models.base.Prediction`; ``pose=False`` skips the pose head (``camera = None``)."""
        enc = self.encoder(img)
        sh = self.shape(enc.flat)
        uv = self.texture(enc.conv)
        camera, extras = None, {}
        if pose:
            out = self.pose(enc, sh.verts)
            camera, extras = out.camera, out.extras
        return Prediction(sh.verts, sh.delta_v, sh.mean_shape, uv, camera, extras)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith(BACKBONE)]


def build_model(cfg, template, symmetry_tol: float = 1e-6) -> ReconstructionNet:
    """The network of a :class:`slopekp.config.ModelConfig` for ``template`` (a :class:`slopekp.mesh.Template`).

    Raises:
        ValueError: an unknown pose head (listing the valid names) or sizes the modules cannot honour.
    """
    enc = ResNetEncoder(image_size=cfg.image_size, width=cfg.encoder_width)
    if cfg.pretrained:
        enc.load_pretrained(cfg.pretrained)
    shape = ShapeHead.from_template(enc.flat_dim, template, symmetry_tol, nz_feat=cfg.shape_hidden,
                                    bias_init=cfg.shape_bias_init)  # fmt: skip
    texture = TextureHead(enc.conv_channels, enc.conv_size, uv_size=(cfg.uv_height, 2 * cfg.uv_height),
                          nf=cfg.texture_width)  # fmt: skip
    pose = pose_head_class(cfg.pose_head).for_network(enc, template.verts, cfg)
    return ReconstructionNet(enc, shape, texture, pose, cfg.pose_head)
