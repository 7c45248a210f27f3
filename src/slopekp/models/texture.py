"""The texture head (METHOD §4.4): a SPADE-style generator without SPADE modulation, conv feature → UV image.

The UV image is sampled on the template through the sphere-UV mapping by
:class:`~slopekp.render.renderer.Renderer` (``mode="rgb", uv_image=..., verts_uv=template.verts_uv``).

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

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResBlock", "TextureHead"]


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
        return self.conv_img(self.act(x)).sigmoid()
