"""The texture heads: a UV image generated from the encoder (METHOD §4.4) or sampled from the input by a flow (CMR).

Both give a UV image that the renderer samples on the template through the sphere-UV mapping
(:class:`~slopekp.render.renderer.Renderer`, ``mode="rgb", uv_image=..., verts_uv=template.verts_uv``); they are
chosen by name (``model.texture_head``, :data:`TEXTURE_HEADS`):

* ``uv`` (:class:`TextureHead`, METHOD's): a SPADE-style generator without SPADE modulation paints the UV image.
* ``flow`` (:class:`TextureFlowHead`, CMR's texture flow): the same generator predicts, for every texel, where to
  sample the input image (NDC ``x right, y down``, ``grid_sample`` with ``align_corners=False``, i.e. the pixel-centre
  convention of ``docs/conventions.md``); the UV image is the input's colours there. The flow is symmetric across the
  template's mirror: with U-CMR's ``texture_uvshift`` the sphere UV maps ``x → −x`` to ``u → −u``, i.e. column ``j`` to
  ``Wu − 1 − j`` of the UV image (:func:`mirror_uv`), and the flow is averaged with its mirror, so a texel and its
  mirror partner sample the same pixel: the side the camera cannot see copies the side it sees.

And, whichever head: the **photo texture** (:func:`photo_texture`, slopekp's addition, ``model.texture_from_photo``):
once the pose head has a camera, every texel that camera sees on the predicted mesh takes the input's colour at its
projection (:func:`slopekp.render.uv_atlas.project_texels`), a hidden texel the colour of its mirror point when that
is visible, and a texel hidden on both sides the colour in front of it. No learning: the bird's own colours, through
its predicted shape and pose.

Layout for ``n`` upsamplings (``2^n = Hu / h``; METHOD's default is ``n = 5``, ``nf = 16``, ``4×4 → 128×256``)::

    conv (B, C, h, w) ─ bilinear resize ─► (Hu/2^n, Wu/2^n)
    head_0      C → 16·nf
    up×2, middle_0, middle_1    16·nf → 16·nf
    (up×2, up_blocks[k]) for k < n − 1, halving the channels down to nf   (16·nf → 8·nf → 4·nf → 2·nf → nf)
    LeakyReLU(0.2), Conv3×3(→ 3), sigmoid     → (B, 3, Hu, Wu) in [0, 1]

Up block ``k`` has ``nf·2^min(3, n − 2 − k)`` output channels, so the last one always has ``nf``: for ``n > 5``
the extra blocks keep ``8·nf`` at the coarse end, for ``n < 5`` the first block drops straight to
``2^(n−2)·nf`` (``n = 1``: no up blocks, the output conv reads ``16·nf``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slopekp.render.uv_atlas import TexelView

__all__ = [
    "TEXTURE_HEADS",
    "ResBlock",
    "TextureFlow",
    "TextureFlowHead",
    "TextureHead",
    "mirror_uv",
    "photo_texture",
    "sample_image",
    "texture_head_class",
]

TEXTURE_HEADS = ("uv", "flow")
"""``model.texture_head`` names: METHOD's generated UV image, CMR's texture flow."""


class ResBlock(nn.Module):
    """SPADE's residual block with BatchNorm in place of SPADE (METHOD §4.4).

    ``out = x_s + conv_1(act(norm_1(conv_0(act(norm_0(x))))))`` with ``act = LeakyReLU(0.2)``, 3×3 convs
    (padding 1, with bias) of middle width ``min(fin, fout)``, and ``x_s = conv_s(norm_s(x))`` (1×1, no bias)
    when ``fin != fout``, else ``x_s = x``. Shapes: ``(B, fin, H, W) → (B, fout, H, W)``.
    """

    def __init__(self, fin: int, fout: int) -> None:
        super().__init__()
        mid = min(fin, fout)
        self.norm_0 = nn.BatchNorm2d(fin)
        self.conv_0 = nn.Conv2d(fin, mid, 3, padding=1)
        self.norm_1 = nn.BatchNorm2d(mid)
        self.conv_1 = nn.Conv2d(mid, fout, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.norm_s = nn.BatchNorm2d(fin)
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x_s = self.conv_s(self.norm_s(x)) if self.learned_shortcut else x
        dx = self.conv_0(self.act(self.norm_0(x)))
        dx = self.conv_1(self.act(self.norm_1(dx)))
        return x_s + dx


def _as_pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """``value`` as ``(H, W)`` of positive ints."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (H, W) of positive ints, got {value!r}")
    return pair


class TextureHead(nn.Module):
    """Conv feature → UV texture image in ``[0, 1]`` (METHOD §4.4; layout in the module docstring).

    Init: conv weights ``N(0, 0.02)``, conv biases 0, BatchNorm ``γ = 1, β = 0``.

    Attributes:
        in_channels, in_size: ``C`` and ``(h, w)`` of the expected conv feature.
        uv_size: ``(Hu, Wu)`` of the UV image.
        num_upsamplings: ``n``, with ``Hu = h·2^n``.
        start_size: ``(Hu/2^n, Wu/2^n)``, the side the conv feature is resized to first.
    """

    reads_image = False
    """Whether :meth:`forward` takes the input image beside the conv feature (the texture-flow head's does)."""

    def __init__(
        self,
        in_channels: int,
        in_size: int | tuple[int, int],
        uv_size: tuple[int, int] = (128, 256),
        nf: int = 16,
    ) -> None:
        """
        Args:
            in_channels: ``C`` of the conv feature (the encoder's ``conv_channels``, 256).
            in_size: ``h`` (square) or ``(h, w)`` of the conv feature (the encoder's ``conv_size``, 4).
            uv_size: ``(Hu, Wu)``; ``Hu / h`` must be a power of two ``2^n >= 2`` and ``Wu`` a multiple of ``2^n``.
            nf: base width; the generator runs at ``16·nf`` channels at its coarsest and ends at ``nf``.
        """
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if isinstance(nf, bool) or not isinstance(nf, int) or nf <= 0:
            raise ValueError(f"nf must be a positive int, got {nf!r}")
        self.in_channels = in_channels
        self.in_size = _as_pair("in_size", in_size)
        self.uv_size = _as_pair("uv_size", uv_size)
        h = self.in_size[0]
        hu, wu = self.uv_size
        ratio = hu // h
        if hu % h or ratio < 2 or ratio & (ratio - 1):
            raise ValueError(
                f"uv_size height {hu} must be the conv feature height {h} times a power of two >= 2 "
                f"(e.g. {h * 32} for 5 upsamplings), got a ratio of {hu / h:g}"
            )
        n = int(math.log2(ratio))
        if wu % 2**n:
            raise ValueError(f"uv_size width {wu} must be a multiple of 2^{n} = {2**n} ({n} upsamplings for height)")
        self.num_upsamplings = n
        self.start_size = (hu // 2**n, wu // 2**n)

        top = 16 * nf
        self.head_0 = ResBlock(in_channels, top)
        self.middle_0 = ResBlock(top, top)
        self.middle_1 = ResBlock(top, top)
        blocks, ch = [], top
        for k in range(n - 1):
            out = nf * 2 ** max(0, min(3, n - 2 - k))
            blocks.append(ResBlock(ch, out))
            ch = out
        self.up_blocks = nn.ModuleList(blocks)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.act = nn.LeakyReLU(0.2)
        self.conv_img = nn.Conv2d(ch, 3, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, conv: Tensor) -> Tensor:
        """Generate the UV image.

        Args:
            conv: ``(B, in_channels, h, w)`` the encoder's conv feature.

        Returns:
            ``(B, 3, Hu, Wu)`` UV image in ``[0, 1]`` (sigmoid).
        """
        return self.conv_img(self.act(self._trunk(conv))).sigmoid()

    def _trunk(self, conv: Tensor) -> Tensor:
        """The generator up to its last convolution: ``(B, nf, Hu, Wu)``."""
        expected = (self.in_channels, *self.in_size)
        if not isinstance(conv, Tensor) or conv.dim() != 4 or tuple(conv.shape[1:]) != expected:
            shape = tuple(conv.shape) if isinstance(conv, Tensor) else type(conv).__name__
            raise ValueError(f"conv must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got {shape}")
        x = F.interpolate(conv, size=self.start_size, mode="bilinear", align_corners=False)
        x = self.head_0(x)
        x = self.up(x)
        x = self.middle_1(self.middle_0(x))
        for block in self.up_blocks:
            x = block(self.up(x))
        return x


def mirror_uv(uv: Tensor) -> Tensor:
    """``(..., Hu, Wu)`` → the same UV map seen through the template's mirror ``x → −x``: its columns reversed.

    With the renderer's UV look-up (:mod:`slopekp.render.texture`: ``u = wrap(atan2(y, x)/π + 0.5)``, sampled with
    ``align_corners=True``) the mirror of a direction has ``u → −u`` (``v`` unchanged), and ``u = −1 + 2j/(Wu − 1)``
    makes that column ``j → Wu − 1 − j``. A test checks this on every mirror pair of a template's vertices.
    """
    return uv.flip(-1)


def sample_image(image: Tensor, flow: Tensor) -> Tensor:
    """Colours of ``image (B, C, H, W)`` at the NDC positions ``flow (B, 2, Hu, Wu)`` (``x, y``; pixel centres at
    ``(2j+1)/W − 1``, bilinear, border colours outside) → ``(B, C, Hu, Wu)``, differentiable in both."""
    return F.grid_sample(image, flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border", align_corners=False)


def photo_texture(image: Tensor, view: TexelView, mirror: TexelView) -> Tensor:
    """The input's colours on the mesh through a camera (module docstring).

    Args:
        image: ``(B, 3, H, W)`` the input, RGB in [0, 1].
        view: :func:`~slopekp.render.uv_atlas.project_texels` of the predicted mesh and camera at the texture's
            ``(Hu, Wu)``; ``mirror``: the same with ``mirrored=True`` (where each texel's mirror point is seen).

    Returns:
        ``(B, 3, Hu, Wu)``: a visible texel's pixel; a hidden texel whose mirror point is visible, that point's pixel
        (the bird's other side); any other texel, the pixel in front of it (measured better than keeping the texture
        head's colour there: docs/results/texture_flow.md).
    """
    partner = (mirror.visible & ~view.visible)[:, None]
    flow = torch.where(partner, mirror.points2d, view.points2d)
    return sample_image(image, flow.to(image.dtype))


class TextureFlow(NamedTuple):
    """What :class:`TextureFlowHead` returns."""

    uv_image: Tensor
    """``(B, 3, Hu, Wu)`` the input's colours at :attr:`flow`, in the input's range."""
    flow: Tensor
    """``(B, 2, Hu, Wu)`` symmetric sampling positions in the input image (NDC ``x right, y down``, in ``[−1, 1]``)."""


class TextureFlowHead(TextureHead):
    """CMR's texture flow on the UV generator of :class:`TextureHead` (module docstring).

    The generator's last convolution gives two channels; ``tanh`` keeps the positions inside the image,
    :func:`mirror_uv` averaging makes them symmetric, and :func:`sample_image` reads the input there. At
    initialisation (small weights) every texel samples near the image centre. Stage II pulls the positions into
    the mask with :func:`slopekp.train.losses.texture_flow_loss` (CMR's ``tex_dt_loss``).
    """

    reads_image = True

    def __init__(self, in_channels: int, in_size: int | tuple[int, int], uv_size: tuple[int, int] = (128, 256),
                 nf: int = 16) -> None:  # fmt: skip
        """Arguments as :class:`TextureHead`."""
        super().__init__(in_channels, in_size, uv_size=uv_size, nf=nf)
        self.conv_img = nn.Conv2d(self.conv_img.in_channels, 2, 3, padding=1)
        nn.init.normal_(self.conv_img.weight, 0.0, 0.02)
        nn.init.zeros_(self.conv_img.bias)

    def forward(self, conv: Tensor, image: Tensor) -> TextureFlow:  # type: ignore[override]
        """``conv (B, C, h, w)`` and the input ``image (B, 3, H, W)`` (RGB in [0, 1], not ImageNet-normalised) →
        :class:`TextureFlow`."""
        if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[0] != conv.shape[0]:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image must have shape (B, C, H, W) with B = {conv.shape[0]}, got {shape}")
        flow = torch.tanh(self.conv_img(self.act(self._trunk(conv))).float())  # positions in float32 under autocast
        flow = 0.5 * (flow + mirror_uv(flow))
        return TextureFlow(sample_image(image.float(), flow), flow)


def texture_head_class(name: str) -> type[TextureHead]:
    """The texture head of a ``model.texture_head`` name (:data:`TEXTURE_HEADS`)."""
    heads = {"uv": TextureHead, "flow": TextureFlowHead}
    if name not in heads:
        raise ValueError(f"unknown texture head {name!r}; choose one of {', '.join(TEXTURE_HEADS)}")
    return heads[name]
