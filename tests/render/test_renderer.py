"""Renderer API: known answers, camera conventions, batching, shading, bad input, silhouette fitting."""

from __future__ import annotations

import math

import pytest
import torch
from render_reference import uv_sphere_mesh

from slopekp.geometry.camera import reflect_camera
from slopekp.render import Lighting, Renderer, RenderSettings

IDENTITY = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def cams(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def random_cameras(n, *, seed, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g)
    q = q / q.norm(dim=1, keepdim=True)
    s = torch.full((n, 1), scale)
    t = (torch.rand(n, 2, generator=g) - 0.5) * 0.3
    return torch.cat([s, t, q], 1)


def square_mesh():
    """Axis-aligned square x in [-0.5, 0.5], y in [-0.25, 0.75], z = 0, two CCW triangles facing -z (the
    camera)."""
    verts = torch.tensor([[-0.5, -0.25, 0.0], [0.5, -0.25, 0.0], [0.5, 0.75, 0.0], [-0.5, 0.75, 0.0]])
    # seen from the camera (looking along +z, y down) the front side has A < 0
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    return verts, faces


def test_square_covers_expected_pixels_hard():
    verts, faces = square_mesh()
    out = Renderer(RenderSettings(image_size=8)).forward(verts, faces, cams(IDENTITY), mode="hard")
    # pixel centres (2j+1)/8 - 1 = -.875 -.625 -.375 -.125 .125 .375 .625 .875: x in [-.5,.5] -> cols 2..5,
    # y in [-.25,.75] -> rows 3..6 (row 0 is the top, y down)
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert out.alpha.shape == (1, 8, 8)
    assert torch.equal(out.alpha[0], expected)
    assert torch.equal(out.face_index[0] >= 0, expected.bool())
    assert torch.all(out.depth[0][expected.bool()] == 5.0)  # z = s·0 + z_offset
    assert torch.all(out.depth[0][~expected.bool()] == 100.0)  # far where empty
    torch.testing.assert_close(out.bary[0][expected.bool()].sum(-1), torch.ones(16))
    # single-sided rendering keeps the square (it faces the camera) and drops it when rotated by 180° about y
    single = Renderer(RenderSettings(image_size=8, double_sided=False))
    assert torch.equal(single(verts, faces, cams(IDENTITY), mode="hard").alpha[0], expected)
    back = cams([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # 180° about y: x -> -x, the square shows its back
    assert single(verts, faces, back, mode="hard").alpha.sum() == 0
    assert Renderer(RenderSettings(image_size=8))(verts, faces, back, mode="hard").alpha.sum() == 16


def test_orientation_single_triangle():
    """A non-symmetric triangle in the top-left corner (y down) lands in the top-left pixels, with its right
    angle at the top-left."""
    verts = torch.tensor([[-1.0, -1.0, 0.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
    faces = torch.tensor([[0, 1, 2]])
    a = Renderer(RenderSettings(image_size=4)).forward(verts, faces, cams(IDENTITY), mode="hard").alpha[0]
    expected = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(a, expected)
    soft = Renderer(RenderSettings(image_size=4, sigma=1e-4))(verts, faces, cams(IDENTITY)).alpha[0]
    assert soft[0, 0] > 0.99 and soft[3, 3] == 0 and soft[1, 1] < 0.01
    # pixel (0, 1) has its centre (-0.25, -0.75) exactly on the hypotenuse x + y = -1: d = 0, D = sigmoid(0)
    assert soft[0, 1] == pytest.approx(0.5, abs=1e-6)


def test_sphere_area_converges_to_pi_r2():
    verts, faces = uv_sphere_mesh(48, 96, dtype=torch.float32)
    r = 0.7
    cam = cams([r, 0.05, -0.03, 0.9, 0.3, -0.2, 0.25])
    errors = []
    for size in (16, 48, 160):
        alpha = Renderer(RenderSettings(image_size=size))(verts, faces, cam, mode="hard").alpha
        errors.append(abs(alpha.sum().item() * (2 / size) ** 2 - math.pi * r * r) / (math.pi * r * r))
    assert errors[0] > errors[2] and errors[1] > errors[2]
    assert errors[2] < 4e-3  # polygon (cos²(pi/96) area deficit ~1e-3) plus pixel boundary error
    # the soft area is a little smaller: near each vertex the pixels sit within sqrt(sigma) of several edges,
    # so alpha < 1 there (SoftRas behaviour, not a bug); the deficit shrinks with sigma
    soft = Renderer(RenderSettings(image_size=160, sigma=1e-6))(verts, faces, cam).alpha
    assert abs(soft.sum().item() * (2 / 160) ** 2 - math.pi * r * r) / (math.pi * r * r) < 1e-2


def _mirror_symmetric_blob(seed):
    v, f = uv_sphere_mesh(6, 10)
    g = torch.Generator().manual_seed(seed)
    v = (v * (1 + 0.2 * torch.rand(v.shape[0], 1, generator=g, dtype=torch.float64))).float()
    v = v + torch.tensor([0.4, 0.0, 0.0])
    mirrored = v * torch.tensor([-1.0, 1.0, 1.0])
    verts = torch.cat([v, mirrored])
    faces = torch.cat([f, f[:, [0, 2, 1]] + v.shape[0]])  # mirror flips the winding
    return verts, faces


def test_reflect_camera_mirrors_the_image(device):
    verts, faces = _mirror_symmetric_blob(0)
    verts, faces = verts.to(device), faces.to(device)
    cam = random_cameras(3, seed=1, scale=0.5).to(device)
    r = Renderer(RenderSettings(image_size=32, sigma=3e-4))
    for mode in ("silhouette", "hard"):
        a = r(verts, faces, cam, mode=mode).alpha
        b = r(verts, faces, reflect_camera(cam), mode=mode).alpha
        assert a.sum() > 50
        torch.testing.assert_close(b, a.flip(-1), rtol=0, atol=1e-5)


def test_multiplex_broadcast_matches_individual_renders(device):
    verts, faces = uv_sphere_mesh(6, 10, dtype=torch.float32)
    b, p = 2, 3
    g = torch.Generator().manual_seed(2)
    vb = (verts * (1 + 0.2 * torch.rand(b, verts.shape[0], 1, generator=g))).to(device)
    cam = random_cameras(b * p, seed=3).view(b, p, 7).to(device)
    uv = (torch.rand(verts.shape[0], 2, generator=g) * 2 - 1).to(device)
    tex = torch.rand(b, 3, 8, 16, generator=g).to(device)
    r = Renderer(RenderSettings(image_size=24, sigma=3e-4, gamma=1e-3))
    faces = faces.to(device)
    out = r(vb, faces, cam, mode="rgb", uv_image=tex, verts_uv=uv)
    assert out.alpha.shape == (b, p, 24, 24) and out.rgb.shape == (b, p, 3, 24, 24)
    flat = r(
        vb.repeat_interleave(p, 0), faces, cam.view(b * p, 7), mode="rgb",
        uv_image=tex.repeat_interleave(p, 0), verts_uv=uv,
    )
    torch.testing.assert_close(out.alpha.view(b * p, 24, 24), flat.alpha)
    torch.testing.assert_close(out.rgb.view(b * p, 3, 24, 24), flat.rgb)
    hard = r(vb, faces, cam, mode="hard")
    assert hard.face_index.shape == (b, p, 24, 24) and hard.bary.shape == (b, p, 24, 24, 3)
    # one mesh (V, 3) shared by all cameras
    shared = r(verts.to(device), faces, cam.view(b * p, 7))
    each = torch.stack([r(verts.to(device), faces, c[None]).alpha[0] for c in cam.view(b * p, 7)])
    torch.testing.assert_close(shared.alpha, each)


def test_constant_texture_and_lighting():
    verts, faces = square_mesh()
    colour = torch.tensor([0.2, 0.6, 0.9])
    tex = colour.view(1, 3, 1, 1).expand(1, 3, 4, 8)
    uv = torch.rand(4, 2) * 2 - 1
    r = Renderer(RenderSettings(image_size=8, sigma=1e-3, background=(1.0, 0.0, 0.0)))
    out = r(verts, faces, cams(IDENTITY), mode="rgb", uv_image=tex, verts_uv=uv)
    rgb = out.rgb[0].permute(1, 2, 0)
    near = out.alpha[0] > 0
    # pure texture colour near the mesh
    torch.testing.assert_close(rgb[near], colour.expand(int(near.sum()), 3))
    torch.testing.assert_close(rgb[~near], torch.tensor([1.0, 0.0, 0.0]).expand(int((~near).sum()), 3))
    # Lambert: the square faces the camera, light at the camera -> ambient + directional; light from the side
    # -> ambient
    white = torch.ones(4, 3)
    lit = r(verts, faces, cams(IDENTITY), mode="hard", verts_rgb=white, lighting=Lighting(0.3, 0.6))
    assert torch.allclose(lit.rgb[0][:, 4, 4], torch.full((3,), 0.9))
    side = Lighting(0.3, 0.6, direction=(1.0, 0.0, 0.0))
    lit = r(verts, faces, cams(IDENTITY), mode="hard", lighting=side)
    assert torch.allclose(lit.rgb[0][:, 4, 4], torch.full((3,), 0.3))
    assert torch.equal(lit.rgb[0][:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # background


def test_bad_input_raises():
    verts, faces = square_mesh()
    r = Renderer()
    with pytest.raises(ValueError, match="faces index 7 out of range"):
        r(verts, torch.tensor([[0, 1, 7]]), cams(IDENTITY))
    with pytest.raises(ValueError, match="faces index -1"):
        r(verts, torch.tensor([[0, 1, -1]]), cams(IDENTITY))
    with pytest.raises(ValueError, match="faces must be an integer"):
        r(verts, faces.float(), cams(IDENTITY))
    bad = verts.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="verts contains 1 non-finite"):
        r(bad, faces, cams(IDENTITY))
    with pytest.raises(ValueError, match="cameras contains"):
        r(verts, faces, cams([float("nan")] + IDENTITY[1:]))
    with pytest.raises(ValueError, match="image_size"):
        RenderSettings(image_size=0)
    with pytest.raises(ValueError, match="image_size"):
        RenderSettings(image_size=(16, 0))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        RenderSettings(sigma=0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        RenderSettings(sigma=-1e-4)
    with pytest.raises(ValueError, match="near < far"):
        RenderSettings(near=5.0, far=1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        r(verts, faces, cams(IDENTITY), mode="soft")
    with pytest.raises(ValueError, match="mode='rgb' needs"):
        r(verts, faces, cams(IDENTITY), mode="rgb")
    with pytest.raises(ValueError, match="uv_image needs verts_uv"):
        r(verts, faces, cams(IDENTITY), mode="rgb", uv_image=torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="verts has batch 2 but cameras has batch 1"):
        r(verts.expand(2, 4, 3), faces, cams(IDENTITY))
    with pytest.raises(ValueError, match="cameras must have shape"):
        r(verts, faces, torch.zeros(1, 6))
    with pytest.raises(ValueError, match="texture batch 2"):
        r(verts, faces, cams(IDENTITY, IDENTITY, IDENTITY), mode="rgb", verts_rgb=torch.rand(2, 4, 3))


def test_fit_sphere_to_target_silhouette(one_thread):
    """Gradient descent on a sphere's vertices through the soft silhouette reaches a target mask (IoU err <
    0.05).

    Single-sided: with both sides, a closed mesh puts two sheets on its outline (alpha 0.75 there instead of
    0.5), which biases the soft outline outwards and the fitted hard mask inwards (measured: IoU error ~0.04
    vs ~0.02).
    """
    verts, faces = uv_sphere_mesh(8, 16, dtype=torch.float32)
    target_verts = verts * torch.tensor([1.3, 0.6, 0.8]) + torch.tensor([0.15, -0.1, 0.0])
    cam = cams([0.7, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.7, 0.0, 0.0, 0.92388, 0.0, 0.0, 0.38268])
    hard = Renderer(RenderSettings(image_size=32))
    target = hard(target_verts, faces, cam, mode="hard").alpha
    soft = Renderer(RenderSettings(image_size=32, sigma=1e-4, double_sided=False))
    offset = torch.zeros_like(verts, requires_grad=True)
    opt = torch.optim.Adam([offset], lr=0.01)
    for _ in range(250):
        opt.zero_grad()
        alpha = soft(verts + offset, faces, cam).alpha
        loss = (alpha - target).square().mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = hard(verts + offset, faces, cam, mode="hard").alpha
    iou = (pred * target).sum() / ((pred + target) > 0).sum()
    iou0 = (hard(verts, faces, cam, mode="hard").alpha * target).sum() / target.sum().clamp(min=1)
    assert iou0 < 0.9
    assert 1 - iou < 0.05


def test_value_checks_off_an_accelerator_check_a_mesh_once_and_again_after_a_change(monkeypatch):
    """As on an accelerator (``SLOPEKP_CHECK_VALUES=0``): a render checks the faces' index range once per faces
    tensor, not per call (a host synchronisation each), and again after the tensor changes in place; a NaN vertex
    passes unchecked (its faces are not drawn)."""
    from slopekp.devtools import host_syncs

    monkeypatch.setenv("SLOPEKP_CHECK_VALUES", "0")
    verts, faces = square_mesh()
    faces = faces.clone()
    r = Renderer(RenderSettings(image_size=8))
    with pytest.raises(ValueError, match="faces index 7 out of range"):
        r(verts, torch.tensor([[0, 1, 7]]), cams(IDENTITY))
    r(verts, faces, cams(IDENTITY))
    with host_syncs() as syncs:
        Renderer.render_screen(r, torch.zeros(1, 4, 3) + 5, faces)  # checked above: no index check now
    assert not [s for s in syncs if s.where.startswith("renderer.py")], syncs
    faces[0, 0] = 9  # in place: the version counter moves
    with pytest.raises(ValueError, match="faces index 9 out of range"):
        r(verts, faces, cams(IDENTITY))
    bad = verts.clone()
    bad[1, 0] = float("nan")
    fine = faces.clamp(max=3)
    no_nan_faces = fine[~(fine == 1).any(1)]
    assert 0 < len(no_nan_faces) < len(fine)
    torch.testing.assert_close(r(bad, fine, cams(IDENTITY)).alpha, r(verts, no_nan_faces, cams(IDENTITY)).alpha)
    monkeypatch.setenv("SLOPEKP_CHECK_VALUES", "1")
    with pytest.raises(ValueError, match="verts contains 1 non-finite"):
        r(bad, faces.clamp(max=3), cams(IDENTITY))


def test_render_settings_follow_the_config_section():
    """One set of defaults (issue 21): every ``render.*`` field is a RenderSettings field, the defaults agree, and
    ``from_config`` carries each field at the stage's own size."""
    import dataclasses

    from slopekp.config import RenderConfig

    names = {f.name for f in dataclasses.fields(RenderConfig)}
    assert names <= {f.name for f in dataclasses.fields(RenderSettings)}
    default = RenderSettings()
    assert all(getattr(default, n) == getattr(RenderConfig(), n) for n in names)
    cfg = RenderConfig(sigma=3e-4, gamma=2e-3, z_offset=7.0, near=0.5, far=50.0, fused="auto")
    got = RenderSettings.from_config(cfg, 32, max_pairs=1000)
    assert got.image_size == 32 and got.max_pairs == 1000
    assert all(getattr(got, n) == getattr(cfg, n) for n in names)
    with pytest.raises(ValueError, match="fused must be one of never, auto, always, got 'yes'"):
        RenderSettings.from_config(RenderConfig(fused="yes"), 32)
