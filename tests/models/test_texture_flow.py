"""The texture-flow head (CMR's texture flow, ``model.texture_head=flow``): where it samples, its mirror symmetry,
and the loss that keeps its samples on the bird."""

from __future__ import annotations

import pytest
import torch

from slopekp.config import load_config
from slopekp.geometry.camera import reflect_camera
from slopekp.mesh import load_template
from slopekp.mesh.symmetry import find_symmetry
from slopekp.models.encoder import denormalize_image, normalize_image
from slopekp.models.reconstructor import build_model
from slopekp.models.texture import (
    TextureFlowHead,
    TextureHead,
    mirror_uv,
    sample_image,
    texture_head_class,
)
from slopekp.render import Renderer, RenderSettings
from slopekp.render.texture import sphere_to_uv, uv_to_sphere
from slopekp.train.losses import texture_flow_loss


def _ramp(h: int, w: int) -> torch.Tensor:
    """``(1, 2, H, W)``: each pixel's NDC centre, ``x_j = (2j+1)/W − 1`` and ``y_i = (2i+1)/H − 1``."""
    x = (2 * torch.arange(w) + 1) / w - 1
    y = (2 * torch.arange(h) + 1) / h - 1
    return torch.stack([x[None].expand(h, w), y[:, None].expand(h, w)])[None]


def test_sample_image_reads_the_pixel_at_each_ndc_position():
    # a linear image is read back exactly by bilinear sampling between pixel centres: the colour is the position
    h, w = 12, 20
    img = _ramp(h, w)
    g = torch.Generator().manual_seed(0)
    flow = torch.rand(1, 2, 5, 7, generator=g) * 2 - 1
    flow[:, 0] *= 1 - 1 / w  # inside the outermost pixel centres
    flow[:, 1] *= 1 - 1 / h
    torch.testing.assert_close(sample_image(img, flow), flow, atol=1e-5, rtol=0)
    # pixel (row 3, col 5) exactly at its centre
    one = torch.tensor([(2 * 5 + 1) / w - 1, (2 * 3 + 1) / h - 1]).view(1, 2, 1, 1)
    spot = torch.zeros(1, 1, h, w)
    spot[0, 0, 3, 5] = 1.0
    assert float(sample_image(spot, one)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["procedural", "ucmr"])
def test_mirror_uv_is_the_meshs_mirror(name, request):
    # every mirror pair of vertices lands on mirrored UV columns: u -> -u (after U-CMR's shift), v unchanged
    path = request.getfixturevalue("ucmr_template_path") if name == "ucmr" else "procedural"
    template = load_template(path)
    sym = find_symmetry(template.verts, 1e-4)
    assert sym.left.numel() > 10
    uv = sphere_to_uv(uv_to_sphere(template.verts_uv))  # what the renderer samples at each vertex
    left, right = uv[sym.left], uv[sym.right]
    assert torch.allclose(left[:, 1], right[:, 1], atol=1e-4)
    du = torch.remainder(left[:, 0] + right[:, 0] + 1, 2) - 1  # u_left + u_right, wrapped
    assert float(du.abs().max()) < 1e-3
    # in columns: u = -1 + 2j/(W-1), so -u is column W-1-j, which mirror_uv swaps
    wu = 64
    col = (uv[..., 0] + 1) * (wu - 1) / 2
    ref = torch.arange(wu, dtype=torch.float32).view(1, 1, wu)
    assert torch.allclose(mirror_uv(ref)[0, 0, (col[sym.left].round()).long()],
                          col[sym.right].round(), atol=1.01)  # fmt: skip


def test_a_symmetric_uv_image_shows_the_visible_side_on_the_hidden_one():
    # rendered under a camera and under its reflection, a texture with mirror_uv(U) == U gives mirrored images: the
    # side the first camera cannot see carries the colours of the side it sees
    template = load_template("procedural")
    g = torch.Generator().manual_seed(1)
    u = torch.rand(1, 3, 16, 32, generator=g)
    u_sym = 0.5 * (u + mirror_uv(u))
    cam = torch.tensor([[1.4, 0.05, -0.02, 0.9, 0.1, 0.4, 0.1]])
    cam[:, 3:] = torch.nn.functional.normalize(cam[:, 3:], dim=-1)
    r = Renderer(RenderSettings(image_size=48))
    a = r(template.verts[None], template.faces, cam, mode="rgb", uv_image=u_sym, verts_uv=template.verts_uv)
    b = r(template.verts[None], template.faces, reflect_camera(cam), mode="rgb", uv_image=u_sym,
          verts_uv=template.verts_uv)  # fmt: skip
    inside = (a.alpha > 0.9) & (b.alpha.flip(-1) > 0.9)
    assert int(inside.sum()) > 100
    diff = (a.rgb - b.rgb.flip(-1)).abs().amax(1)[inside]
    # the same with the texture before symmetrising: the hidden side then shows other colours
    c = r(template.verts[None], template.faces, reflect_camera(cam), mode="rgb", uv_image=u, verts_uv=template.verts_uv)
    diff_u = (a.rgb - c.rgb.flip(-1)).abs().amax(1)[inside]
    assert float(diff.median()) < 0.02 and float(diff_u.median()) > 5 * float(diff.median())


def test_flow_head_is_symmetric_and_samples_the_input():
    head = TextureFlowHead(64, 1, uv_size=(16, 32), nf=4)
    with torch.no_grad():
        head.conv_img.weight.normal_(0, 0.5)  # a far from trivial flow
    img = torch.rand(3, 3, 24, 24)
    out = head(torch.randn(3, 64, 1, 1), img)
    assert tuple(out.uv_image.shape) == (3, 3, 16, 32) and tuple(out.flow.shape) == (3, 2, 16, 32)
    assert torch.equal(out.flow, mirror_uv(out.flow)) and torch.equal(out.uv_image, mirror_uv(out.uv_image))
    assert float(out.flow.detach().abs().max()) <= 1.0 and float(out.flow.detach().std()) > 0.05
    torch.testing.assert_close(out.uv_image, sample_image(img, out.flow))
    out.uv_image.sum().backward()  # the sampled colours train the flow
    assert head.conv_img.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="image must have shape"):
        head(torch.randn(3, 64, 1, 1), img[:2])


def test_heads_by_name_and_the_network_passes_the_image():
    assert texture_head_class("uv") is TextureHead and texture_head_class("flow") is TextureFlowHead
    with pytest.raises(ValueError, match="unknown texture head 'paint'; choose one of uv, flow"):
        texture_head_class("paint")
    cfg = load_config(overrides=["model.texture_head=flow", "model.image_size=64", "model.encoder_width=8",
                                 "model.uv_height=8", "model.texture_width=4", "model.num_keypoints=8"])  # fmt: skip
    net = build_model(cfg.model, load_template("procedural")).eval()
    img = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(denormalize_image(normalize_image(img)), img)
    with torch.no_grad():
        pred = net(normalize_image(img), pose=False)
    assert pred.texture_flow is not None and tuple(pred.uv_image.shape) == (2, 3, 8, 16)
    torch.testing.assert_close(pred.uv_image, sample_image(img, pred.texture_flow), atol=1e-5, rtol=0)
    cfg_uv = load_config(overrides=["model.image_size=64", "model.encoder_width=8", "model.uv_height=8",
                                    "model.texture_width=4", "model.num_keypoints=8"])  # fmt: skip
    assert build_model(cfg_uv.model, load_template("procedural"))(normalize_image(img), pose=False).texture_flow is None


def test_texture_flow_loss_pulls_samples_onto_the_mask():
    h = w = 16
    mask = torch.zeros(1, h, w)
    mask[:, :, :8] = 1  # the left half
    xs = (2 * torch.arange(w) + 1) / w - 1
    dt = (xs - xs[7]).clamp_min(0).expand(1, h, w).clone() / 2  # distance to the mask, in image widths
    inside = torch.tensor([[-0.5, 0.2]]).T.reshape(1, 2, 1, 1)
    outside = torch.tensor([[0.6, 0.2]]).T.reshape(1, 2, 1, 1).requires_grad_(True)
    assert float(texture_flow_loss(inside, dt)) == 0.0
    loss = texture_flow_loss(outside, dt)
    assert float(loss) == pytest.approx((0.6 - float(xs[7])) / 2, abs=1e-5)
    loss.sum().backward()
    assert float(outside.grad[0, 0]) > 0 and float(outside.grad[0, 1]) == 0.0  # descent moves it left, onto the mask
    with pytest.raises(ValueError, match="expected flow"):
        texture_flow_loss(outside.detach()[:, :1], dt)
