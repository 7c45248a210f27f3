"""TextureHead (METHOD §4.4): layout, output shape and range, gradients, and the renderer reading its output.

(Named ``test_texture_head.py``: ``tests/render/test_texture.py`` exists and pytest's default import mode needs
unique test-file basenames across the package-less ``tests/`` folders.)
"""

from __future__ import annotations

import pytest
import torch

from slopekp.mesh import load_template
from slopekp.models.texture import ResBlock, TextureHead
from slopekp.render import Renderer, RenderSettings


def test_method_layout_256x4x4_to_128x256():
    head = TextureHead(256, 4)  # METHOD defaults: uv (128, 256), nf 16
    assert head.num_upsamplings == 5 and head.start_size == (4, 8) and head.uv_size == (128, 256)
    assert not head.head_0.learned_shortcut and head.head_0.conv_0.out_channels == 256
    assert head.middle_0.conv_1.out_channels == 256 and head.middle_1.conv_1.out_channels == 256
    assert [(b.conv_0.in_channels, b.conv_1.out_channels) for b in head.up_blocks] == [
        (256, 128),
        (128, 64),
        (64, 32),
        (32, 16),
    ]
    assert head.conv_img.in_channels == 16 and head.conv_img.out_channels == 3
    with torch.no_grad():
        out = head(torch.randn(2, 256, 4, 4))
    assert tuple(out.shape) == (2, 3, 128, 256)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_small_config_64x1x1_to_32x64():
    head = TextureHead(64, 1, uv_size=(32, 64), nf=4)
    assert head.num_upsamplings == 5 and head.start_size == (1, 2)
    with torch.no_grad():
        out = head(torch.randn(3, 64, 1, 1) * 10)
    assert tuple(out.shape) == (3, 3, 32, 64)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0  # not a constant image


@pytest.mark.parametrize(("uv_size", "blocks", "last"), [((8, 16), [], 64), ((16, 16), [(64, 4)], 4)])
def test_few_upsamplings_end_at_nf(uv_size, blocks, last):
    head = TextureHead(8, 4, uv_size=uv_size, nf=4)
    assert [(b.conv_0.in_channels, b.conv_1.out_channels) for b in head.up_blocks] == blocks
    assert head.conv_img.in_channels == last
    assert tuple(head(torch.randn(2, 8, 4, 4)).shape) == (2, 3, *uv_size)


def test_init():
    head = TextureHead(64, 1, uv_size=(32, 64), nf=4)
    w = head.up_blocks[0].conv_0.weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.004
    assert torch.equal(head.conv_img.bias, torch.zeros(3)) and head.up_blocks[0].conv_s.bias is None
    assert torch.equal(head.head_0.norm_0.weight, torch.ones(64))


def test_resblock_identity_and_learned_shortcut():
    same, proj = ResBlock(8, 8), ResBlock(8, 4)
    assert not same.learned_shortcut and proj.learned_shortcut
    assert proj.conv_0.out_channels == 4  # middle width min(fin, fout)
    with torch.no_grad():
        same.conv_1.weight.zero_()
        same.conv_1.bias.zero_()
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(same(x), x)  # zero residual: out == x
    assert tuple(proj(x).shape) == (2, 4, 5, 5)


def test_gradients_flow():
    head = TextureHead(64, 1, uv_size=(32, 64), nf=4)
    conv = torch.randn(2, 64, 1, 1, requires_grad=True)
    head(conv).mean().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert conv.grad.abs().sum() > 0 and head.head_0.conv_0.weight.grad.abs().sum() > 0


def test_checks():
    with pytest.raises(ValueError, match="height 96 must be the conv feature height 4 times a power of two"):
        TextureHead(16, 4, uv_size=(96, 192))
    with pytest.raises(ValueError, match="power of two >= 2"):
        TextureHead(16, 4, uv_size=(4, 8))
    with pytest.raises(ValueError, match="width 100 must be a multiple of 2\\^5 = 32"):
        TextureHead(16, 4, uv_size=(128, 100))
    with pytest.raises(ValueError, match="nf must be a positive int"):
        TextureHead(16, 4, nf=0)
    head = TextureHead(64, 1, uv_size=(32, 64), nf=4)
    with pytest.raises(ValueError, match="conv must have shape \\(B, 64, 1, 1\\), got \\(2, 64, 2, 2\\)"):
        head(torch.randn(2, 64, 2, 2))


def test_output_plugs_into_the_renderer():
    template = load_template("procedural")
    head = TextureHead(64, 1, uv_size=(32, 64), nf=4)
    uv_image = head(torch.randn(2, 64, 1, 1))[:1]  # one mesh
    camera = torch.tensor([[0.7, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    renderer = Renderer(RenderSettings(image_size=32))
    out = renderer(
        template.verts[None], template.faces, camera, mode="rgb", uv_image=uv_image, verts_uv=template.verts_uv
    )
    assert tuple(out.rgb.shape) == (1, 3, 32, 32) and tuple(out.alpha.shape) == (1, 32, 32)
    assert bool(torch.isfinite(out.rgb).all()) and float(out.alpha.max()) > 0.9
    out.rgb.sum().backward()  # the rendered colours train the head
    assert head.conv_img.weight.grad.abs().sum() > 0
