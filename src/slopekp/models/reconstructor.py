"""The composite network: image → shape, texture and camera (METHOD §4).

``ReconstructionNet(img) -> Prediction``: the encoder's features feed the shape head (template + symmetric
deformation, learned mean shape), the texture head chosen by name (a generated UV image, or one sampled from the input
by a texture flow: :data:`slopekp.models.texture.TEXTURE_HEADS`) and the pose head chosen by name
(:data:`slopekp.models.pose.POSE_HEADS`). The keypoint head reads the predicted shape: its 3D keypoints are
vertices of ``verts``. At inference (the module in eval mode) with ``texture_from_photo``, the UV image is the photo
texture: the input's colours through the predicted camera and shape (:func:`slopekp.models.texture.photo_texture`),
the head's own UV image kept beside it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from slopekp.models.base import Prediction
from slopekp.models.encoder import ResNetEncoder, denormalize_image
from slopekp.models.pose import pose_head_class
from slopekp.models.shape import ShapeHead
from slopekp.models.texture import TextureHead, photo_texture, texture_head_class
from slopekp.render import Renderer, RenderSettings
from slopekp.render.uv_atlas import TexelSurface, project_texels_both, texel_surface

#: Parameter-name prefixes of the parts that Stage II trains (the pose head is Stage III's).
BACKBONE = ("encoder.", "shape.", "texture.")


class ReconstructionNet(nn.Module):
    """Encoder + shape, texture and pose heads.

    Args:
        encoder, shape, texture, pose: the modules (see :func:`build_model`).
        pose_head: the pose head's registry name, recorded for checkpoints and model cards.
        faces, verts_uv: the template's ``(F, 3)`` faces and ``(V, 2)`` sphere UVs, for the photo texture (buffers
            that follow the module's device, not saved in its state dict).
        texture_from_photo: in eval mode, replace the UV image by the photo texture wherever a camera was predicted.
    """

    def __init__(
        self, encoder: ResNetEncoder, shape: ShapeHead, texture: TextureHead, pose: nn.Module, pose_head: str,
        faces: Tensor | None = None, verts_uv: Tensor | None = None, texture_from_photo: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder, self.shape, self.texture, self.pose = encoder, shape, texture, pose
        self.pose_head = pose_head
        if texture_from_photo and (faces is None or verts_uv is None):
            raise ValueError("texture_from_photo needs the template's faces and verts_uv")
        self.texture_from_photo = texture_from_photo
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("verts_uv", verts_uv, persistent=False)
        self._atlas: TexelSurface | None = None  # made on first use (a fraction of a second)

    def forward(self, img: Tensor, pose: bool = True, photo: bool | None = None) -> Prediction:
        """``img (B, 3, S, S)`` ImageNet-normalised RGB (:func:`~slopekp.models.encoder.normalize_image`) →
        :class:`~slopekp.models.base.Prediction`; ``pose=False`` skips the pose head (``camera = None``);
        ``photo=False`` skips the photo texture (callers that read the camera only), ``None`` follows
        ``texture_from_photo`` (in eval mode)."""
        enc = self.encoder(img)
        sh = self.shape(enc.flat)
        if self.texture.reads_image:
            uv, flow = self.texture(enc.conv, denormalize_image(img))
        else:
            uv, flow = self.texture(enc.conv), None
        camera, extras = None, {}
        if pose:
            out = self.pose(enc, sh.verts)
            camera, extras = out.camera, out.extras
        pred = Prediction(sh.verts, sh.delta_v, sh.mean_shape, uv, camera, extras, flow)
        if photo is None:
            photo = self.texture_from_photo and not self.training
        if camera is not None and photo:
            pred = dataclasses.replace(pred, uv_image=self.photo_texture(img, pred), uv_image_head=uv)
        return pred

    def photo_texture(self, img: Tensor, pred: Prediction) -> Tensor:
        """:func:`~slopekp.models.texture.photo_texture` of the normalised input ``img (B, 3, S, S)`` under ``pred``'s
        camera and mesh (visibility from a hard render at ``S``): ``(B, 3, H, 2H)`` with ``H = max(Hu, S)`` (the head's
        UV height ``Hu``), so that the texture keeps the input's detail. Computed in float32 whatever the caller's
        autocast (projections to a fraction of a pixel)."""
        if self.faces is None or self.verts_uv is None:
            raise ValueError("this network was built without its template's faces and UVs (build_model passes them)")
        side = max(pred.uv_image.shape[-2], img.shape[-1])
        hw = (side, 2 * side)
        dev = self.faces.device
        if self._atlas is None or tuple(self._atlas.face.shape) != hw or self._atlas.face.device != dev:
            self._atlas = texel_surface(self.verts_uv, self.faces, hw)
        renderer = Renderer(RenderSettings(image_size=img.shape[-1]))
        with torch.autocast(dev.type, enabled=False):
            verts, camera = pred.verts.detach().float(), pred.camera.detach().float()
            view, mirror = project_texels_both(verts, self.faces, self._atlas, camera, renderer)
            return photo_texture(denormalize_image(img.float()), view, mirror)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith(BACKBONE)]


def build_model(cfg, template, symmetry_tol: float = 1e-6) -> ReconstructionNet:
    """The network of a :class:`slopekp.config.ModelConfig` for ``template`` (a :class:`slopekp.mesh.Template`).

    Raises:
        ValueError: an unknown pose or texture head (listing the valid names) or sizes the modules cannot honour.
    """
    enc = ResNetEncoder(image_size=cfg.image_size, width=cfg.encoder_width)
    if cfg.pretrained:
        enc.load_pretrained(cfg.pretrained)
    shape = ShapeHead.from_template(enc.flat_dim, template, symmetry_tol, nz_feat=cfg.shape_hidden,
                                    bias_init=cfg.shape_bias_init)  # fmt: skip
    texture = texture_head_class(cfg.texture_head)(enc.conv_channels, enc.conv_size,
                                                   uv_size=(cfg.uv_height, 2 * cfg.uv_height), nf=cfg.texture_width)
    pose = pose_head_class(cfg.pose_head).for_network(enc, template.verts, cfg)
    return ReconstructionNet(enc, shape, texture, pose, cfg.pose_head, faces=template.faces,
                             verts_uv=template.verts_uv, texture_from_photo=cfg.texture_from_photo)  # fmt: skip
