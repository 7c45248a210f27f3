"""Soft RGB path with analytic backward passes: the RGB pairs of ``soft_rasterize``, ``softmax_rgb_blend`` and
``sample_sphere_uv``, each against plain autograd (gradcheck in float64) and the whole renderer against the dense
reference (values and gradients w.r.t. vertices, cameras and texture, float64 and float32)."""

from __future__ import annotations

import math

import pytest
import torch
from render_reference import dense_soft, uv_colour_fn, uv_sphere_mesh, vertex_colour_fn
from test_rasterize import closed_blob, triangle_soup

from slopekp.geometry.camera import project_points
from slopekp.render import (
    Lighting,
    Renderer,
    RenderSettings,
    sample_bilinear,
    soft_rasterize,
    softmax_rgb_blend,
    sphere_to_uv,
    uv_to_sphere,
)
from slopekp.render.texture import sample_sphere_uv


def _reference_blend(pix, prob, depth, colours, *, num_pixels, gamma, near, far, background, bg_eps):
    """The blend written with plain autograd (the formula of ``softmax_rgb_blend``'s docstring)."""
    zn = (far - depth) / (far - near)
    zmax = torch.full((num_pixels,), bg_eps, dtype=depth.dtype).scatter_reduce(0, pix, zn.detach(), "amax")
    w = prob * torch.exp((zn - zmax[pix]) / gamma)
    w_bg = torch.exp((bg_eps - zmax) / gamma)
    num = (background * w_bg.unsqueeze(1)).index_add(0, pix, colours * w.unsqueeze(1))
    return num / w_bg.index_add(0, pix, w).unsqueeze(1)


def _random_camera(n, *, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=dtype)
    s = 0.5 + 0.2 * torch.rand(n, 1, generator=g, dtype=dtype)
    return torch.cat([s, 0.1 * torch.randn(n, 2, generator=g, dtype=dtype), q / q.norm(dim=1, keepdim=True)], 1)


# ------------------------------------------------------------------------------------------------------------
# the pieces
# ------------------------------------------------------------------------------------------------------------
def test_pairs_gradcheck():
    """``prob``, ``bary`` and ``depth`` of the kept pairs (and ``log_t``) w.r.t. x, y and depth of the vertices,
    including a face crossing ``near`` and pixels outside their triangle (clamped barycentrics)."""
    sv, faces = triangle_soup(1, 4, seed=21, size=0.9, dtype=torch.float64)
    sv[0, 0, 2] = 0.9  # face 0 crosses near = 1 with a corner in front of it
    sv.requires_grad_()

    def f(v):
        log_t, p = soft_rasterize(v, faces, height=7, width=8, sigma=2e-2, eps=1e-3, near=1.0, far=100.0,
                                  return_pairs=True)
        return log_t, p.prob, p.bary, p.depth

    log_t, p = soft_rasterize(sv, faces, height=7, width=8, sigma=2e-2, eps=1e-3, near=1.0, far=100.0,
                              return_pairs=True)
    assert p.prob.shape[0] > 20 and (p.bary == 0).any()  # some pairs lie outside their triangle
    assert torch.autograd.gradcheck(f, (sv,), eps=1e-6, atol=1e-6)


def test_pairs_match_direct_formulas():
    """Each kept pair's ``D``, clamped barycentrics and depth equal the formulas evaluated directly at its pixel
    (float64), and the pairs are exactly those of the dense reference's ``D >= eps`` cut-off."""
    sv, faces = triangle_soup(2, 9, seed=22, dtype=torch.float64)
    h, w, sigma, eps = 12, 14, 1e-3, 1e-3
    _, p = soft_rasterize(sv, faces, height=h, width=w, sigma=sigma, eps=eps, near=1.0, far=100.0,
                          return_pairs=True)
    from render_reference import dense_geometry

    geo = dense_geometry(sv, faces, h, w)
    n, f = p.face // faces.shape[0], p.face % faces.shape[0]
    i, j = (p.pix // w) % h, p.pix % w
    d2, inside = geo.d2[n, f, i, j], geo.inside[n, f, i, j]
    torch.testing.assert_close(p.prob, torch.sigmoid(torch.where(inside, d2, -d2) / sigma))
    bc = geo.bary[n, f, i, j].clamp(0, 1)
    bc = bc / bc.sum(-1, keepdim=True)
    torch.testing.assert_close(p.bary, bc)
    torch.testing.assert_close(p.depth, (bc * geo.z[n, f]).sum(-1))
    # the same pairs as the dense cut-off (each once)
    bcd = geo.bary.clamp(0, 1)
    depth = (bcd / bcd.sum(-1, keepdim=True) * geo.z[:, :, None, None]).sum(-1)
    keep = (geo.inside | (geo.d2 < sigma * math.log(1 / eps - 1))) & (depth >= 1) & (depth <= 100)
    assert int(keep.sum()) == p.pix.shape[0]
    assert torch.unique(p.face * (h * w * 2) + p.pix).shape[0] == p.pix.shape[0]


def test_softmax_blend_matches_autograd_and_gradcheck():
    g = torch.Generator().manual_seed(23)
    m, num_pixels = 40, 9
    pix = torch.randint(0, num_pixels - 2, (m,), generator=g)  # the last two pixels are empty
    prob = torch.rand(m, generator=g, dtype=torch.float64).requires_grad_()
    depth = (2 + 0.02 * torch.rand(m, generator=g, dtype=torch.float64)).requires_grad_()
    colours = torch.rand(m, 3, generator=g, dtype=torch.float64).requires_grad_()
    background = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    kw = dict(num_pixels=num_pixels, gamma=3e-3, near=1.0, far=3.0, bg_eps=0.45)
    ours = softmax_rgb_blend(pix, prob, depth, colours, background=background, **kw)
    ref = _reference_blend(pix, prob, depth, colours, background=background, **kw)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours[-2:], background.detach().expand(2, 3))
    up = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    inputs = (prob, depth, colours, background)
    for a, b in zip(torch.autograd.grad((ours * up).sum(), inputs), torch.autograd.grad((ref * up).sum(), inputs)):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b)

    def f(p, d, c, bg):
        return softmax_rgb_blend(pix, p, d, c, background=bg, **kw)

    assert torch.autograd.gradcheck(f, inputs)


def test_softmax_blend_flushes_only_negligible_weights():
    """Pairs far behind the front one (weight below float32's smallest normal number) contribute exactly 0;
    the result equals the autograd formula, which underflows them."""
    pix = torch.tensor([0, 0, 0, 1])
    prob = torch.tensor([1e-3, 0.9, 0.5, 0.7], requires_grad=True)
    depth = torch.tensor([2.0, 2.9405, 51.5, 2.0], requires_grad=True)  # (zn - m)/gamma = 0, -95, -4950, 0
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.3, 0.3, 0.3]], requires_grad=True)
    kw = dict(num_pixels=2, gamma=1e-4, near=1.0, far=100.0, background=torch.zeros(3), bg_eps=1e-3)
    ours = softmax_rgb_blend(pix, prob, depth, colours, **kw)
    torch.testing.assert_close(ours, torch.tensor([[1.0, 0, 0], [0.3, 0.3, 0.3]]))
    ref = _reference_blend(pix, prob, depth, colours, **kw)
    torch.testing.assert_close(ours, ref)
    ga = torch.autograd.grad(ours.sum() + ours[0, 0], (prob, depth, colours))
    gb = torch.autograd.grad(ref.sum() + ref[0, 0], (prob, depth, colours))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("tex_shape", [(2, 3, 5, 7), (1, 2, 1, 4), (2, 3, 6, 1)])
def test_sample_sphere_uv_matches_autograd(tex_shape):
    """Values and gradients (bary, texture) equal ``sample_bilinear(sphere_to_uv(...))`` with autograd, also for
    one-texel-wide textures, samples at the poles and at the v clamp."""
    g = torch.Generator().manual_seed(24)
    t = tex_shape[0]
    images = torch.rand(*tex_shape, generator=g, dtype=torch.float64, requires_grad=True)
    uv = torch.rand(10, 2, generator=g, dtype=torch.float64) * 2 - 1
    uv[0, 1], uv[1, 1], uv[2, 1] = -1.0, 1.0, 0.999  # poles and close to one
    table = uv_to_sphere(uv).T.contiguous().view(3, 10)
    tri = torch.tensor([[0, 3, 4], [1, 5, 6], [2, 7, 8], [9, 3, 5], [4, 6, 8]])
    corners = table[:, tri.T.reshape(-1)].view(3, 3, 5).transpose(0, 1).reshape(9, 5)  # (9, triangles)
    m = 12
    prim = torch.randint(0, 5, (m,), generator=g)
    prim[:3] = torch.tensor([0, 1, 2])
    bary = torch.rand(3, m, generator=g, dtype=torch.float64)
    bary[:, :2] = torch.tensor([1.0, 0, 0], dtype=torch.float64).view(3, 1)  # exactly at a pole corner
    bary = (bary / bary.sum(0)).requires_grad_()
    row = torch.randint(0, t, (m,), generator=g)
    ours = sample_sphere_uv(images, row, corners, prim, bary)
    pts = (corners[:, prim].view(3, 3, m) * bary.unsqueeze(1)).sum(0).T
    ref = sample_bilinear(images, row, sphere_to_uv(pts)).T
    torch.testing.assert_close(ours, ref)
    up = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((ours * up).sum(), (bary, images))
    gb = torch.autograd.grad((ref * up).sum(), (bary, images))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    # finite differences away from the poles (where u jumps)
    keep = torch.arange(3, m)
    sub = bary.detach()[:, keep].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda b, im: sample_sphere_uv(im, row[keep], corners, prim[keep], b), (sub, images)
    )


# ------------------------------------------------------------------------------------------------------------
# the renderer against the dense reference
# ------------------------------------------------------------------------------------------------------------
def _rgb_setup(dtype, seed, rings=5, segs=8):
    v, faces = uv_sphere_mesh(rings, segs, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    verts = v.unsqueeze(0) * (1 + 0.2 * torch.rand(2, v.shape[0], 1, generator=g, dtype=dtype))
    cams = _random_camera(2, seed=seed + 1, dtype=dtype)
    verts_uv = torch.rand(v.shape[0], 2, generator=g, dtype=dtype) * 1.8 - 0.9
    uv_image = torch.rand(2, 3, 6, 10, generator=g, dtype=dtype)
    return verts, faces, cams, verts_uv, uv_image, g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rgb_gradients_wrt_verts_cameras_texture_match_dense(dtype):
    verts, faces, cams, verts_uv, uv_image, g = _rgb_setup(dtype, 25)
    kw = dict(sigma=5e-4, gamma=5e-2, eps=1e-4)
    r = Renderer(RenderSettings(image_size=16, **kw))
    inputs = [verts.requires_grad_(), cams.requires_grad_(), uv_image.requires_grad_()]
    out = r(verts, faces, cams, mode="rgb", uv_image=uv_image, verts_uv=verts_uv)
    d_in = [t.detach().double().requires_grad_() for t in inputs]
    fn = uv_colour_fn(faces, verts_uv.double(), d_in[2], torch.tensor([0, 1]))
    alpha, rgb = dense_soft(project_points(d_in[0], d_in[1]), faces, 16, 16, colour_fn=fn, **kw)
    up_a = torch.randn(alpha.shape, generator=g, dtype=torch.float64)
    up_c = torch.randn(rgb.shape, generator=g, dtype=torch.float64)
    ref = torch.autograd.grad((alpha * up_a).sum() + (rgb * up_c).sum(), d_in)
    fast = torch.autograd.grad((out.alpha * up_a.to(dtype)).sum() + (out.rgb * up_c.to(dtype)).sum(), inputs)
    if dtype == torch.float64:
        torch.testing.assert_close(out.rgb, rgb, rtol=0, atol=1e-10)
        for a, b in zip(fast, ref):
            assert b.abs().max() > 1e-3
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    else:
        assert (out.rgb - rgb).abs().max() < 1e-5 and (out.alpha - alpha).abs().max() < 1e-5
        for a, b in zip(fast, ref):
            # float32 rounding limits the vertex and camera gradients (d²/sigma, and samples whose texel cell
            # differs from float64's: the bilinear derivative jumps there); the autograd path had the same
            # errors (up to 1.4e-4 of the largest gradient on such meshes)
            assert (a.double() - b).abs().max() < 3e-4 * b.abs().max()


def test_rgb_vertex_colours_and_lighting_gradients_match_autograd_reference():
    """Per-vertex colours (plain autograd on top of the analytic pairs) vs the dense reference, and lighting:
    gradients through ``col * shade`` match those of the same expression rebuilt from the dense parts."""
    verts, faces, cams, _, _, g = _rgb_setup(torch.float64, 26)
    verts_rgb = torch.rand(2, verts.shape[1], 3, generator=g, dtype=torch.float64).requires_grad_()
    verts.requires_grad_()
    kw = dict(sigma=5e-4, gamma=5e-2, eps=1e-4)
    r = Renderer(RenderSettings(image_size=14, **kw))
    out = r(verts, faces, cams, mode="rgb", verts_rgb=verts_rgb)
    alpha, rgb = dense_soft(project_points(verts, cams), faces, 14, 14,
                            colour_fn=vertex_colour_fn(faces, verts_rgb, torch.tensor([0, 1])), **kw)
    torch.testing.assert_close(out.rgb, rgb, rtol=0, atol=1e-10)
    up = torch.randn(rgb.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((out.rgb * up).sum(), (verts, verts_rgb)),
                    torch.autograd.grad((rgb * up).sum(), (verts, verts_rgb))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    # lighting multiplies each pair's colour by its face's Lambert factor: gradcheck the whole thing
    lit = Lighting(0.4, 0.6, direction=(0.3, -0.2, -1.0))
    small = Renderer(RenderSettings(image_size=6, sigma=2e-2, gamma=0.1, eps=1e-9))
    v = verts[:1].detach().requires_grad_()
    c = cams[:1].detach().requires_grad_()

    def f(vv, cc, col):
        return small(vv, faces, cc, mode="rgb", verts_rgb=col, lighting=lit).rgb

    assert torch.autograd.gradcheck(f, (v, c, verts_rgb[:1].detach().requires_grad_()), atol=1e-5, fast_mode=True)


def test_rgb_gradcheck_uv_texture():
    """End to end in float64: vertices (x, y, depth through the depth softmax), cameras and the UV image."""
    verts, faces, cams, verts_uv, uv_image, _ = _rgb_setup(torch.float64, 27, rings=3, segs=5)
    r = Renderer(RenderSettings(image_size=6, sigma=2e-2, gamma=2e-2, eps=1e-9))

    def f(v, c, tex):
        out = r(v, faces, c, mode="rgb", uv_image=tex, verts_uv=verts_uv)
        return out.alpha, out.rgb

    args = (verts[:1].clone().requires_grad_(), cams[:1].clone().requires_grad_(),
            uv_image[:1, :, :4, :5].clone().requires_grad_())
    assert torch.autograd.gradcheck(f, args, atol=1e-5)


def test_rgb_chunking_and_texture_index():
    """Small ``max_pairs`` (many blocks) gives the same image and gradients; renders may share and swap
    textures (``texture_index``)."""
    sv, faces = closed_blob(3, seed=28, dtype=torch.float64)
    g = torch.Generator().manual_seed(29)
    verts_uv = torch.rand(sv.shape[1], 2, generator=g, dtype=torch.float64) * 2 - 1
    tex = torch.rand(2, 3, 8, 12, generator=g, dtype=torch.float64)
    index = torch.tensor([1, 0, 1])
    results = []
    for max_pairs in (2_000_000, 50):
        s, t = sv.clone().requires_grad_(), tex.clone().requires_grad_()
        r = Renderer(RenderSettings(image_size=20, sigma=3e-4, gamma=1e-3, max_pairs=max_pairs))
        out = r.render_screen(s, faces, mode="rgb", uv_image=t, verts_uv=verts_uv, texture_index=index)
        up = torch.randn(out.rgb.shape, generator=torch.Generator().manual_seed(30), dtype=torch.float64)
        results.append((out.rgb, *torch.autograd.grad((out.rgb * up).sum() + out.alpha.sum(), (s, t))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    fn = uv_colour_fn(faces, verts_uv, tex, index)
    _, rgb = dense_soft(sv, faces, 20, 20, sigma=3e-4, gamma=1e-3, eps=1e-3, colour_fn=fn)
    torch.testing.assert_close(results[0][0], rgb, rtol=0, atol=1e-10)
    assert results[0][2][0].abs().sum() > 0 and results[0][2][1].abs().sum() > 0  # both textures used


def test_rgb_empty_image_and_no_grad():
    """No face near the image: background colour, zero gradients; rendering under no_grad keeps nothing."""
    verts = torch.tensor([[5.0, 5.0, 0.0], [6.0, 5.0, 0.0], [5.0, 6.0, 0.0]], requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    cam = torch.tensor([[1.0, 0, 0, 1, 0, 0, 0]])
    tex = torch.rand(1, 3, 4, 4, requires_grad=True)
    r = Renderer(RenderSettings(image_size=8, background=(0.25, 0.5, 0.75)))
    out = r(verts, faces, cam, mode="rgb", uv_image=tex, verts_uv=torch.zeros(3, 2))
    torch.testing.assert_close(out.rgb[0], torch.tensor([0.25, 0.5, 0.75]).view(3, 1, 1).expand(3, 8, 8))
    gv, gt = torch.autograd.grad(out.rgb.sum() + out.alpha.sum(), (verts, tex))
    assert gv.abs().sum() == 0 and gt.abs().sum() == 0
    with torch.no_grad():
        assert not r(verts, faces, cam, mode="rgb", uv_image=tex, verts_uv=torch.zeros(3, 2)).rgb.requires_grad


def test_rgb_on_device(device):
    """The analytic soft RGB path runs unchanged on the requested device and matches the CPU result."""
    verts, faces, cams, verts_uv, uv_image, _ = _rgb_setup(torch.float32, 31)
    r = Renderer(RenderSettings(image_size=16, sigma=5e-4, gamma=5e-2, eps=1e-4))
    outs, grads = [], []
    for dev in (torch.device("cpu"), device):
        v, c, t = (x.to(dev).requires_grad_() for x in (verts, cams, uv_image))
        out = r(v, faces.to(dev), c, mode="rgb", uv_image=t, verts_uv=verts_uv.to(dev))
        outs.append(out.rgb.cpu())
        grads.append([x.cpu() for x in torch.autograd.grad(out.rgb.square().sum(), (v, c, t))])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max())))


def test_rgb_graph_is_freed_without_the_garbage_collector():
    """No reference cycles through the autograd graph (outputs kept as ctx attributes would make one): the
    outputs and everything saved for backward are freed as soon as they go out of scope."""
    import gc
    import weakref

    verts, faces, cams, verts_uv, uv_image, _ = _rgb_setup(torch.float32, 32)
    r = Renderer(RenderSettings(image_size=12, sigma=5e-4))
    gc.collect()
    gc.disable()
    try:
        for backward in (False, True):
            v = verts.clone().requires_grad_()
            tex = uv_image.clone().requires_grad_()
            log_t, pairs = soft_rasterize(project_points(v, cams), faces, height=12, width=12, sigma=5e-4,
                                          eps=1e-3, near=1.0, far=100.0, return_pairs=True)
            out = r(v, faces, cams, mode="rgb", uv_image=tex, verts_uv=verts_uv)
            refs = [weakref.ref(t) for t in (log_t, pairs.prob, pairs.depth, out.rgb, out.alpha)]
            if backward:
                (log_t.sum() + pairs.prob.sum() + pairs.bary.sum() + out.rgb.sum() + out.alpha.sum()).backward()
            del log_t, pairs, out
            assert all(ref() is None for ref in refs)
    finally:
        gc.enable()


def test_rgb_gradients_stay_finite_with_edge_on_faces():
    """An exact side view of the mirror-symmetric bird puts faces edge-on (A = 0 exactly). They are never
    rendered, and their gradients must be 0, not 0·inf = NaN (a NaN here once reached every Stage II weight)."""
    from slopekp.mesh import load_template
    from slopekp.render import Renderer, RenderSettings
    from slopekp.train.hypotheses import hypothesis_cameras

    bird = load_template("procedural")
    cams = hypothesis_cameras(4, 1)[None].clone().requires_grad_(True)  # az 0, 90, 180, 270 at el 0
    verts = bird.verts[None].clone().requires_grad_(True)
    uv = torch.rand(1, 3, 8, 16, requires_grad=True)
    res = Renderer(RenderSettings(image_size=32))(verts, bird.faces, cams, mode="rgb", uv_image=uv,
                                                  verts_uv=bird.verts_uv)  # fmt: skip
    (res.rgb.sum() + res.alpha.sum()).backward()
    for name, t in (("verts", verts), ("cameras", cams), ("uv", uv)):
        assert torch.isfinite(t.grad).all(), name


# ------------------------------------------------------------------------------------------------------------
# live pairs: colours only where the depth-softmax weight does not underflow
# ------------------------------------------------------------------------------------------------------------
def _stacked_spheres(dtype, *, layers: int, gap: float, seed: int):
    """``(2, V·layers, 3)`` screen vertices of ``layers`` overlapping spheres ``gap`` depth units apart (radius
    1.5 in depth, so each sphere's back also lies far behind its front), shared faces and a UV per vertex."""
    v, f = uv_sphere_mesh(6, 10, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    parts, faces = [], []
    for k in range(layers):
        xy = 0.6 * v[:, :2] + 0.1 * torch.randn(2, 1, 2, generator=g, dtype=dtype)
        z = 5 + gap * k + 1.5 * v[:, 2:].expand(2, -1, 1)
        parts.append(torch.cat([xy, z], -1))
        faces.append(f + k * v.shape[0])
    uv = torch.rand(v.shape[0] * layers, 2, generator=g, dtype=dtype) * 1.8 - 0.9
    return torch.cat(parts, 1), torch.cat(faces), uv, g


def _rgb_every_pair(st: RenderSettings, screen, faces, uv_image, verts_uv):
    """Reference soft RGB that samples the texture at *every* pair (no live selection) and blends with plain
    autograd (``_reference_blend``)."""
    h, w = st.hw
    log_t, p = soft_rasterize(screen, faces, height=h, width=w, sigma=st.sigma, eps=st.eps, near=st.near,
                              far=st.far, return_pairs=True)  # fmt: skip
    nf = faces.shape[0]
    corners = uv_to_sphere(verts_uv)[faces.reshape(-1)].view(nf, 9).T.contiguous()
    col = sample_sphere_uv(uv_image, p.face // nf, corners, p.face % nf, p.bary.T).T
    bg = torch.tensor(st.background, dtype=screen.dtype)
    rgb = _reference_blend(p.pix, p.prob, p.depth, col, num_pixels=screen.shape[0] * h * w, gamma=st.gamma,
                           near=st.near, far=st.far, background=bg, bg_eps=st.bg_eps)  # fmt: skip
    return 1 - torch.exp(log_t), rgb.view(-1, h, w, 3).permute(0, 3, 1, 2), p


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma, mostly_dead", [(1e-4, True), (10.0, False)])
def test_rgb_live_pairs_match_sampling_every_pair(dtype, gamma, mostly_dead):
    """The renderer samples the texture only at live pairs; image and gradients (vertices, UV image) equal a
    reference that samples every pair, with three overlapping spheres (most pairs dead at the default gamma)
    and with a large gamma (every pair live)."""
    from slopekp.render.shade import softmax_weights

    screen, faces, verts_uv, g = _stacked_spheres(dtype, layers=3, gap=10.0, seed=31)
    st = RenderSettings(image_size=(20, 24), sigma=2e-4, gamma=gamma)
    uv_image = torch.rand(2, 3, 8, 16, generator=g, dtype=dtype)
    a_in = [screen.clone().requires_grad_(), uv_image.clone().requires_grad_()]
    b_in = [screen.clone().requires_grad_(), uv_image.clone().requires_grad_()]
    out = Renderer(st).render_screen(a_in[0], faces, mode="rgb", uv_image=a_in[1], verts_uv=verts_uv)
    alpha, rgb, p = _rgb_every_pair(st, b_in[0], faces, b_in[1], verts_uv)
    live = softmax_weights(p.pix, p.depth.detach(), num_pixels=2 * 20 * 24, gamma=gamma, near=st.near,
                           far=st.far, bg_eps=st.bg_eps).index.shape[0]  # fmt: skip
    m = p.pix.shape[0]
    assert m > 1000
    assert live < 0.5 * m if mostly_dead else live == m
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.alpha, alpha, rtol=0, atol=0)
    torch.testing.assert_close(out.rgb, rgb, **tol)
    up_a = torch.randn(alpha.shape, generator=g, dtype=dtype)
    up_c = torch.randn(rgb.shape, generator=g, dtype=dtype)
    ga = torch.autograd.grad((out.alpha * up_a).sum() + (out.rgb * up_c).sum(), a_in)
    gb = torch.autograd.grad((alpha * up_a).sum() + (rgb * up_c).sum(), b_in)
    for x, y in zip(ga, gb):
        assert y.abs().max() > 0
        scale = y.abs().max()
        torch.testing.assert_close(x / scale, y / scale, **tol)


def test_softmax_blend_with_live_weights():
    """``softmax_rgb_blend(..., weights=softmax_weights(...))`` with the live pairs' colours only gives the same
    colours and gradients as the blend of every pair (dead pairs: exactly 0 gradient); wrong sizes raise."""
    from slopekp.render.shade import softmax_weights

    g = torch.Generator().manual_seed(32)
    m, num_pixels = 60, 7
    pix = torch.randint(0, num_pixels - 1, (m,), generator=g)
    prob = torch.rand(m, generator=g, dtype=torch.float64).clamp(min=1e-3).requires_grad_()
    depth = 2 + 10 * (torch.rand(m, generator=g, dtype=torch.float64) < 0.5)  # the far half is dead
    depth = (depth + 1e-3 * torch.rand(m, generator=g, dtype=torch.float64)).requires_grad_()
    colours = torch.rand(m, 3, generator=g, dtype=torch.float64).requires_grad_()
    kw = dict(num_pixels=num_pixels, gamma=1e-4, near=1.0, far=100.0, bg_eps=1e-3)
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    wts = softmax_weights(pix, depth, **kw)
    idx = wts.index
    assert 0 < idx.shape[0] < m // 2 + 10 and idx.shape[0] < m
    ours = softmax_rgb_blend(pix, prob, depth, colours[idx], background=bg, weights=wts, **kw)
    ref = _reference_blend(pix, prob, depth, colours, background=bg, **kw)
    torch.testing.assert_close(ours, ref)
    up = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((ours * up).sum(), (prob, depth, colours))
    gb = torch.autograd.grad((ref * up).sum(), (prob, depth, colours))
    dead = torch.ones(m, dtype=torch.bool)
    dead[idx] = False
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
        assert (a[dead] == 0).all() and a.abs().max() > 0
    with pytest.raises(ValueError, match="live"):
        softmax_rgb_blend(pix, prob, depth, colours, background=bg, weights=wts, **kw)


def test_sample_sphere_uv_bary_index():
    """``bary_index`` samples the chosen columns of ``bary``: same colours and texture gradient as sampling
    ``bary[:, index]``, and the ``bary`` gradient lands in those columns (0 elsewhere)."""
    g = torch.Generator().manual_seed(33)
    images = torch.rand(2, 3, 5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    uv = torch.rand(8, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8
    corners = uv_to_sphere(uv)[torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 0]]).reshape(-1)].view(3, 9).T
    corners = corners.contiguous()
    k = 20
    bary = torch.rand(3, k, generator=g, dtype=torch.float64)
    bary = (bary / bary.sum(0)).requires_grad_()
    index = torch.tensor([3, 0, 7, 7, 19, 11])
    prim = torch.randint(0, 3, (6,), generator=g)
    row = torch.randint(0, 2, (6,), generator=g)
    ours = sample_sphere_uv(images, row, corners, prim, bary, bary_index=index)
    ref = sample_sphere_uv(images, row, corners, prim, bary[:, index])
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    up = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((ours * up).sum(), (bary, images))
    gb = torch.autograd.grad((ref * up).sum(), (bary, images))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    unused = torch.ones(k, dtype=torch.bool)
    unused[index] = False
    assert (ga[0][:, unused] == 0).all() and (ga[0][:, index] != 0).any()
