"""Fast candidate-pair renderer vs the naive dense reference (values and gradients), gradcheck, chunking."""

from __future__ import annotations

import pytest
import torch
from render_reference import dense_hard, dense_soft, uv_colour_fn, uv_sphere_mesh, vertex_colour_fn

from slopekp.geometry.camera import project_points
from slopekp.render import Renderer, RenderSettings, hard_rasterize, soft_cutoff_radius, soft_rasterize


def triangle_soup(n_img: int, n_faces: int, *, seed: int, size: float = 0.6, dtype=torch.float32):
    """Random overlapping triangles in screen space, some crossing the image border, plus one crossing
    ``near``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_img, n_faces, 1, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2
    xy = centres + (torch.rand(n_img, n_faces, 3, 2, generator=g, dtype=torch.float64) - 0.5) * size
    z = torch.rand(n_img, n_faces, 1, 1, generator=g, dtype=torch.float64) * 6 + 2
    z = z + (torch.rand(n_img, n_faces, 3, 1, generator=g, dtype=torch.float64) - 0.5)
    z[:, 0, :, 0] = torch.tensor([0.5, 1.5, 1.2], dtype=torch.float64)  # face 0 crosses near = 1
    sv = torch.cat([xy, z], -1).reshape(n_img, n_faces * 3, 3).to(dtype)
    faces = torch.arange(n_faces * 3).view(n_faces, 3)
    return sv, faces


def closed_blob(n_img: int, *, seed: int, rings: int = 5, segs: int = 8, dtype=torch.float32):
    """A closed lat-long sphere (shared vertices), randomly deformed, rotated and placed: ``(N, V, 3)`` screen
    verts."""
    g = torch.Generator().manual_seed(seed)
    v, faces = uv_sphere_mesh(rings, segs)
    out = []
    for _ in range(n_img):
        vv = v * (1 + 0.15 * torch.randn(v.shape[0], 1, generator=g, dtype=torch.float64))
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
        vv = vv @ q.T * 0.6
        vv[:, :2] += (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * 0.4
        vv[:, 2] += 5
        out.append(vv)
    return torch.stack(out).to(dtype), faces


def _soft(sv, faces, h, w, **kw):
    log_t, _ = soft_rasterize(sv, faces, height=h, width=w, **kw)
    return 1 - torch.exp(log_t)


@pytest.mark.parametrize("sigma", [1e-4, 1e-3])
def test_soft_alpha_matches_dense(sigma):
    sv, faces = triangle_soup(2, 14, seed=1)
    kw = dict(sigma=sigma, eps=1e-3, near=1.0, far=100.0)
    fast = _soft(sv, faces, 20, 24, **kw)
    ref, _ = dense_soft(sv.double(), faces, 20, 24, **kw)
    assert fast.shape == (2, 20, 24)
    assert (fast - ref).abs().max() < 1e-5
    assert fast.max() > 0.99 and fast.min() == 0  # both covered and empty pixels exist


def test_soft_alpha_cutoff_bound():
    """With every pair kept in the reference (eps = 0), a tiny eps bounds the difference: each dropped pair
    has D < eps, so |alpha - alpha_dense| <= 1 - (1 - eps)^F <= F·eps = 14e-9."""
    sv, faces = triangle_soup(2, 14, seed=2)
    fast = _soft(sv, faces, 16, 16, sigma=1e-3, eps=1e-9, near=1.0, far=100.0)
    ref, _ = dense_soft(sv.double(), faces, 16, 16, sigma=1e-3, eps=0.0)
    assert (fast - ref).abs().max() < 1e-5
    # and the default eps = 1e-3 is visibly different from the uncut result (the cut-off is real)
    cut = _soft(sv, faces, 16, 16, sigma=1e-3, eps=1e-3, near=1.0, far=100.0)
    assert (cut - ref).abs().max() > 1e-4


def test_soft_alpha_closed_mesh_and_single_sided():
    sv, faces = closed_blob(3, seed=3)
    for double in (True, False):
        kw = dict(sigma=2e-4, eps=1e-4, near=1.0, far=100.0, double_sided=double)
        fast = _soft(sv, faces, 24, 24, **kw)
        ref, _ = dense_soft(sv.double(), faces, 24, 24, **kw)
        assert (fast - ref).abs().max() < 1e-5


@pytest.mark.parametrize("source", ["uv", "vertex"])
def test_soft_rgb_matches_dense(source):
    sv, faces = triangle_soup(2, 10, seed=4)
    n_verts = sv.shape[1]
    g = torch.Generator().manual_seed(5)
    settings = RenderSettings(
        image_size=(16, 20), sigma=1e-3, gamma=1e-2, eps=1e-4, background=(0.2, 0.5, 0.9)
    )
    r = Renderer(settings)
    tex_index = torch.tensor([1, 0])  # renders use swapped textures
    if source == "uv":
        uv_image = torch.rand(2, 3, 8, 12, generator=g)
        verts_uv = torch.rand(n_verts, 2, generator=g) * 2 - 1
        out = r.render_screen(
            sv, faces, mode="rgb", uv_image=uv_image, verts_uv=verts_uv, texture_index=tex_index
        )
        fn = uv_colour_fn(faces, verts_uv.double(), uv_image.double(), tex_index)
    else:
        verts_rgb = torch.rand(2, n_verts, 3, generator=g)
        out = r.render_screen(sv, faces, mode="rgb", verts_rgb=verts_rgb, texture_index=tex_index)
        fn = vertex_colour_fn(faces, verts_rgb.double(), tex_index)
    alpha, rgb = dense_soft(
        sv.double(), faces, 16, 20, sigma=1e-3, gamma=1e-2, eps=1e-4, colour_fn=fn, background=(0.2, 0.5, 0.9)
    )
    assert out.rgb.shape == (2, 3, 16, 20)
    assert (out.alpha - alpha).abs().max() < 1e-5
    assert (out.rgb - rgb).abs().max() < 1e-5
    # background where nothing is near, texture colours elsewhere
    empty = alpha < 1e-12
    assert empty.any() and (~empty).any()


@pytest.mark.parametrize("double_sided", [True, False])
def test_hard_matches_dense(double_sided):
    sv, faces = triangle_soup(2, 16, seed=6)
    frag = hard_rasterize(sv, faces, height=24, width=20, near=1.0, far=100.0, double_sided=double_sided)
    fi, depth, bary = dense_hard(sv.double(), faces, 24, 20, double_sided=double_sided)
    mismatch = frag.face_index != fi
    assert mismatch.sum() <= 2  # only exact edge ties may differ (float32 vs float64 edge functions)
    same = ~mismatch
    assert torch.equal(frag.alpha.bool(), frag.face_index >= 0)
    assert (frag.depth - depth)[same].abs().max() < 1e-5
    assert (frag.bary - bary)[same].abs().max() < 1e-5
    assert (frag.face_index >= 0).any() and (frag.face_index < 0).any()


def test_hard_closed_mesh_exact_in_float64():
    sv, faces = closed_blob(2, seed=7, dtype=torch.float64)
    frag = hard_rasterize(sv, faces, height=32, width=32, near=1.0, far=100.0)
    fi, depth, bary = dense_hard(sv, faces, 32, 32)
    assert torch.equal(frag.face_index, fi)
    torch.testing.assert_close(frag.depth, depth)
    torch.testing.assert_close(frag.bary, bary)


def test_gradients_match_dense():
    sv, faces = triangle_soup(2, 8, seed=8, dtype=torch.float64)
    sv = sv.requires_grad_()
    n_verts = sv.shape[1]
    g = torch.Generator().manual_seed(9)
    uv_image = torch.rand(2, 3, 6, 10, generator=g, dtype=torch.float64).requires_grad_()
    verts_uv = torch.rand(n_verts, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8
    tex_index = torch.tensor([0, 1])
    settings = RenderSettings(image_size=12, sigma=3e-3, gamma=5e-2, eps=1e-4)
    out = Renderer(settings).render_screen(sv, faces, mode="rgb", uv_image=uv_image, verts_uv=verts_uv)
    fn = uv_colour_fn(faces, verts_uv, uv_image, tex_index)
    alpha, rgb = dense_soft(sv, faces, 12, 12, sigma=3e-3, gamma=5e-2, eps=1e-4, colour_fn=fn)
    ga = torch.randn(alpha.shape, generator=g, dtype=torch.float64)
    gr = torch.randn(rgb.shape, generator=g, dtype=torch.float64)
    fast = torch.autograd.grad((out.alpha * ga).sum() + (out.rgb * gr).sum(), (sv, uv_image))
    ref = torch.autograd.grad((alpha * ga).sum() + (rgb * gr).sum(), (sv, uv_image))
    for a, b in zip(fast, ref):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_silhouette_gradients_wrt_verts_and_cameras_match_dense():
    """The analytic backward of the soft silhouette vs autograd through the dense reference (float64)."""
    v, faces = uv_sphere_mesh(5, 8)
    g = torch.Generator().manual_seed(12)
    verts = (v.unsqueeze(0) * (1 + 0.2 * torch.rand(2, v.shape[0], 1, generator=g, dtype=torch.float64)))
    verts.requires_grad_()
    q = torch.randn(2, 4, generator=g, dtype=torch.float64)
    cams = torch.cat([torch.tensor([[0.6], [0.5]], dtype=torch.float64), 0.1 * torch.randn(2, 2, generator=g,
                     dtype=torch.float64), q / q.norm(dim=1, keepdim=True)], 1).requires_grad_()
    r = Renderer(RenderSettings(image_size=20, sigma=5e-4, eps=1e-4))
    fast = r(verts, faces, cams).alpha
    ref, _ = dense_soft(project_points(verts, cams), faces, 20, 20, sigma=5e-4, eps=1e-4)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)
    up = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    gf = torch.autograd.grad((fast * up).sum(), (verts, cams))
    gr = torch.autograd.grad((ref * up).sum(), (verts, cams))
    for a, b in zip(gf, gr):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    # the float32 path (the one used in training) agrees to float32 precision
    v32, c32 = verts.detach().float().requires_grad_(), cams.detach().float().requires_grad_()
    fast32 = r(v32, faces, c32).alpha
    assert (fast32 - ref).abs().max() < 1e-5
    g32 = torch.autograd.grad((fast32 * up.float()).sum(), (v32, c32))
    for a, b in zip(g32, gr):
        assert (a.double() - b).abs().max() < 2e-3 * b.abs().max()


def test_gradcheck_tiny():
    sv, faces = triangle_soup(1, 3, seed=10, size=1.0, dtype=torch.float64)
    sv[:, :3, 2] = 3.0  # keep all faces inside [near, far]
    sv = sv.requires_grad_()
    verts_rgb = torch.rand(1, sv.shape[1], 3, dtype=torch.float64).requires_grad_()
    r = Renderer(RenderSettings(image_size=6, sigma=2e-2, gamma=0.1, eps=1e-12))

    def f(v, c):
        out = r.render_screen(v, faces, mode="rgb", verts_rgb=c)
        return out.alpha, out.rgb

    assert torch.autograd.gradcheck(f, (sv, verts_rgb), eps=1e-6, atol=1e-5)


def test_chunking_does_not_change_results():
    sv, faces = closed_blob(3, seed=11)
    kw = dict(sigma=1e-4, eps=1e-3, near=1.0, far=100.0)
    a = _soft(sv, faces, 32, 32, **kw, max_pairs=2_000_000)
    b = _soft(sv, faces, 32, 32, **kw, max_pairs=60)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    ha = hard_rasterize(sv, faces, height=32, width=32, near=1.0, far=100.0)
    hb = hard_rasterize(sv, faces, height=32, width=32, near=1.0, far=100.0, max_pairs=40)
    assert torch.equal(ha.face_index, hb.face_index)


def test_cutoff_radius_value():
    # hand-derived: ln 999 = 6.90675, sqrt(6.90675e-4) = 0.0262807
    assert soft_cutoff_radius(1e-4, 1e-3) == pytest.approx(0.0262807, rel=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        soft_cutoff_radius(0.0, 1e-3)
