"""Where a camera sees each texel (slopekp.render.uv_atlas.project_texels: the texture flow's Stage II target) and
the photo texture built from it (slopekp.models.texture.photo_texture), checked against the renderer's own texture
look-up on a constructed image; and the network showing the photo texture at inference only."""

from __future__ import annotations

import pytest
import torch

from slopekp.config import load_config
from slopekp.mesh import load_template
from slopekp.models.encoder import normalize_image
from slopekp.models.reconstructor import build_model
from slopekp.models.texture import mirror_uv, photo_texture, sample_image
from slopekp.render import Renderer, RenderSettings
from slopekp.render.uv_atlas import project_texels, texel_surface
from slopekp.train.losses import flow_projection_loss


def _texel_uv(hu: int, wu: int) -> torch.Tensor:
    u = -1 + 2 * torch.arange(wu) / (wu - 1)
    v = -1 + 2 * torch.arange(hu) / (hu - 1)
    return torch.stack([u[None].expand(hu, wu), v[:, None].expand(hu, wu)], -1)


def test_a_camera_sees_each_visible_texel_where_it_projects():
    # render the template with a UV image whose colours code each texel's (u, v); where projected_texels says a texel
    # is visible, the rendered image shows that texel's code at its projection, so sampling the image there (the
    # texture flow's job) recovers the texture; a hidden texel takes its visible mirror partner's pixel
    t = load_template("procedural")
    hu, wu = 16, 32
    code = _texel_uv(hu, wu).permute(2, 0, 1)[None] * 0.5 + 0.5  # (1, 2, Hu, Wu) in [0, 1]
    uv_image = torch.cat([code, torch.zeros(1, 1, hu, wu)], 1)
    cam = torch.tensor([[1.3, 0.02, -0.03, 0.95, 0.1, -0.25, 0.1]])
    cam[:, 3:] = torch.nn.functional.normalize(cam[:, 3:], dim=-1)
    size = 96
    r = Renderer(RenderSettings(image_size=size, sigma=1e-5))
    img = r(t.verts[None], t.faces, cam, mode="rgb", uv_image=uv_image, verts_uv=t.verts_uv).rgb
    atlas = texel_surface(t.verts_uv, t.faces, (hu, wu))
    tgt = project_texels(t.verts[None], t.faces, atlas, cam, Renderer(RenderSettings(image_size=size)))
    vis = tgt.visible[0]
    assert 0.25 < float(vis.float().mean()) < 0.75  # about half the bird faces the camera
    got = sample_image(img, tgt.points2d)[0, :2]  # (2, Hu, Wu)
    err = (got - code[0]).abs().amax(0)
    inner = torch.zeros(hu, wu, dtype=torch.bool)
    inner[2:-2, 2:-2] = True  # away from the poles and the seam, where the code jumps
    inner[:, wu // 2 - 2 : wu // 2 + 2] = False
    texel = 1 / (wu - 1)
    assert float(err[vis & inner].median()) < texel and float((err[vis & inner] > 4 * texel).float().mean()) < 0.1
    # the hidden texels' own projections land on other texels
    hidden = ~vis & inner
    assert float(err[hidden].median()) > 4 * texel
    # the photo texture: a visible texel's own pixel, a hidden one its visible mirror point's (the partner's code), and
    # a texel hidden on both sides the pixel in front of it
    hard = Renderer(RenderSettings(image_size=size))
    mirror = project_texels(t.verts[None], t.faces, atlas, cam, hard, mirrored=True)
    # the mirror view is the view of the mirror texel (the procedural template's triangulation is symmetric)
    torch.testing.assert_close(mirror.points2d, mirror_uv(tgt.points2d), atol=1e-5, rtol=0)
    assert torch.equal(mirror.visible, mirror_uv(tgt.visible))
    photo = photo_texture(img, tgt, mirror)[0]
    own = sample_image(img, tgt.points2d)[0]
    torch.testing.assert_close(photo[:, vis], own[:, vis])
    both = hidden & mirror_uv(vis[None])[0]
    assert int(both.sum()) > 20
    assert float((photo[:2] - mirror_uv(code)[0]).abs().amax(0)[both].median()) < texel
    unseen = ~vis & ~mirror_uv(vis[None])[0]
    assert int(unseen.sum()) > 0
    torch.testing.assert_close(photo[:, unseen], own[:, unseen])
    # the loss is 0 at the target and the mean L1 over visible texels elsewhere
    assert float(flow_projection_loss(tgt.points2d, tgt)) == 0.0
    assert float(flow_projection_loss(tgt.points2d + 0.1, tgt)) == pytest.approx(0.2, abs=1e-6)


def test_the_network_shows_the_photo_texture_at_inference_only():
    over = ["model.image_size=64", "model.encoder_width=8", "model.uv_height=8", "model.texture_width=4",
            "model.num_keypoints=8", "model.pose_head=quaternion"]  # fmt: skip
    net = build_model(load_config(overrides=over).model, load_template("procedural"))
    img = normalize_image(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        net.train()
        trained = net(img)
        net.eval()
        shown = net(img)
        no_pose = net(img, pose=False)
    assert trained.uv_image_head is None and no_pose.uv_image_head is None  # training, or no camera: the head's
    torch.testing.assert_close(shown.uv_image_head, no_pose.uv_image)
    torch.testing.assert_close(shown.uv_image, net.photo_texture(img, no_pose.__class__(**{**no_pose.__dict__,
                                                                   "camera": shown.camera})))  # fmt: skip
    assert not torch.equal(shown.uv_image, shown.uv_image_head)
    off = build_model(load_config(overrides=[*over, "model.texture_from_photo=false"]).model,
                      load_template("procedural")).eval()  # fmt: skip
    off.load_state_dict(net.state_dict())
    with torch.no_grad():
        plain = off(img)
    assert plain.uv_image_head is None
    torch.testing.assert_close(plain.uv_image, shown.uv_image_head)
