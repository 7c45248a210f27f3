"""The fused Triton silhouette against the pure-PyTorch path, values and gradients, under Triton's interpreter on
the CPU (issue 13; tests/conftest.py sets ``TRITON_INTERPRET=1`` unless the caller set it), or compiled on CUDA with
``TRITON_INTERPRET=0 pytest --device cuda``. Skipped where Triton is not installed (``pip install -e
".[dev,triton]"``, as CI does)."""

from __future__ import annotations

import pytest
import torch

from slopekp.mesh import icosphere, load_template
from slopekp.render import Renderer, RenderSettings
from slopekp.render.fused import fused_available, triton_available
from slopekp.render.rasterize import soft_rasterize

pytestmark = [pytest.mark.triton,
              pytest.mark.skipif(not triton_available(), reason="needs triton (pip install -e '.[triton]')")]


@pytest.fixture
def dev(triton_device) -> torch.device:
    return triton_device


def _meshes(template, n: int, dtype, seed: int, z: float = 5.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    v = template.verts[None].to(dtype) * 0.7 + 0.04 * torch.randn(n, template.num_verts, 3, generator=g, dtype=dtype)
    v = v + torch.tensor([0.15, -0.1, z], dtype=dtype)
    return v.to(device).requires_grad_(True)


def _compare(verts, faces, *, atol, rtol, **kw):
    faces = faces.to(verts.device)
    ref, _ = soft_rasterize(verts, faces, **kw)
    got, _ = soft_rasterize(verts, faces, fused="always", **kw)
    torch.testing.assert_close(got, ref, atol=atol, rtol=rtol)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=ref.dtype).to(ref.device)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), verts)
    (g_got,) = torch.autograd.grad((got * w).sum(), verts)
    scale = g_ref.abs().max()
    assert scale > 0
    torch.testing.assert_close(g_got / scale, g_ref / scale, atol=atol, rtol=0)
    return ref


KW = dict(sigma=1e-3, eps=1e-3, near=1.0, far=100.0)


def _pair_loss(log_t, pairs):
    """A loss of the silhouette and of every pair output, with weights keyed by (pixel, face): the fused path lists
    the pairs in another order."""
    key = (pairs.pix * 7919 + pairs.face).to(log_t.dtype)
    wb = torch.cos(key[:, None] * torch.tensor([0.11, 0.23, 0.31], dtype=log_t.dtype, device=log_t.device))
    return (log_t.sin().sum() + (pairs.prob * torch.sin(0.37 * key)).sum() + (pairs.bary * wb).sum()
            + (pairs.depth * torch.sin(0.05 * key)).sum())  # fmt: skip


def _compare_pairs(verts, faces, *, atol, rtol, **kw):
    """The fused pairs against the reference's, matched by (pixel, face), then the gradients of
    :func:`_pair_loss` w.r.t. all vertex coordinates (x, y through the distances and barycentrics, depth through
    the interpolated depth)."""
    faces = faces.to(verts.device)
    ref_lt, ref = soft_rasterize(verts, faces, return_pairs=True, **kw)
    got_lt, got = soft_rasterize(verts, faces, return_pairs=True, fused="always", **kw)
    torch.testing.assert_close(got_lt, ref_lt, atol=atol, rtol=rtol)
    k_ref, k_got = ref.pix * (1 << 32) + ref.face, got.pix * (1 << 32) + got.face
    i, j = k_ref.argsort(), k_got.argsort()
    assert torch.equal(k_ref[i], k_got[j])  # the same pairs are kept
    for name in ("prob", "bary", "depth"):
        torch.testing.assert_close(getattr(got, name)[j], getattr(ref, name)[i], atol=atol, rtol=rtol)
    (g_ref,) = torch.autograd.grad(_pair_loss(ref_lt, ref), verts)
    (g_got,) = torch.autograd.grad(_pair_loss(got_lt, got), verts)
    scale = g_ref.abs().max()
    assert scale > 0 and g_ref[..., 2].abs().max() > 0  # the depths get gradients too
    torch.testing.assert_close(g_got / scale, g_ref / scale, atol=atol, rtol=0)
    return ref


@pytest.mark.parametrize(("h", "w"), [(16, 16), (24, 20), (13, 29)])  # tile multiples and not, non-square
def test_values_and_gradients_match_in_float64(h, w, dev):
    ico = icosphere(1)
    verts = _meshes(ico, 3, torch.float64, seed=h * w, device=dev)
    ref = _compare(verts, ico.faces, atol=1e-9, rtol=1e-9, height=h, width=w, **KW)
    assert (ref < -1).any() and (ref == 0).any()  # covered and empty pixels both occur


def test_float32_within_1e_5_on_the_bird_template(dev):
    bird = load_template("procedural")
    verts = _meshes(bird, 2, torch.float32, seed=1, device=dev)
    _compare(verts, bird.faces, atol=1e-5, rtol=1e-5, height=16, width=16, sigma=1e-4, eps=1e-3, near=1.0,
             far=100.0)  # fmt: skip


def test_near_far_crossing_culling_and_faces_off_the_image(dev):
    ico = icosphere(1)
    verts = _meshes(ico, 2, torch.float64, seed=5, z=1.2, device=dev)  # the front of the sphere is nearer than near = 1
    with torch.no_grad():
        verts[1, :, 0] += 1.3  # half of the second mesh lies off the image
    for double_sided in (True, False):
        _compare(verts, ico.faces, atol=1e-9, rtol=1e-9, height=20, width=20, sigma=1e-3, eps=1e-3, near=1.0,
                 far=100.0, double_sided=double_sided)  # fmt: skip


def test_degenerate_faces_are_ignored_like_the_reference(dev):
    ico = icosphere(1)
    verts = _meshes(ico, 1, torch.float64, seed=7, device=dev)
    with torch.no_grad():
        f0 = ico.faces[0]
        verts[0, f0[1]] = verts[0, f0[0]]  # a zero-area face (and its neighbours change shape)
    _compare(verts, ico.faces, atol=1e-9, rtol=1e-9, height=16, width=16, **KW)


def test_renderer_setting_and_modes(dev):
    ico = icosphere(1)
    cams = torch.tensor([[0.6, 0.05, -0.02, 0.9, 0.1, 0.3, 0.2]], dtype=torch.float64)
    cams[:, 3:] = torch.nn.functional.normalize(cams[:, 3:], dim=1)
    v, f, cams = ico.verts.double().to(dev), ico.faces.to(dev), cams.to(dev)
    ref = Renderer(RenderSettings(image_size=16))(v, f, cams).alpha
    got = Renderer(RenderSettings(image_size=16, fused="always"))(v, f, cams).alpha
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="fused must be"):
        RenderSettings(fused="yes")
    assert fused_available(dev, "never") is False
    assert fused_available(dev, "always") is True
    # auto: on CUDA after the self-check against the pure-PyTorch path; never on the CPU
    assert fused_available(dev, "auto") is (dev.type == "cuda")


@pytest.mark.parametrize(("h", "w", "z", "double_sided"), [(16, 16, 5.0, True), (13, 21, 1.2, True),
                                                          (16, 12, 5.0, False)])  # fmt: skip
def test_rgb_pairs_match_in_float64(h, w, z, double_sided, dev):
    """Every kept pair, its D, clamped barycentrics and depth, and the gradients through all of them; with the
    near plane cutting the spheres (z = 1.2) and with back faces culled."""
    ico = icosphere(1)
    verts = _meshes(ico, 2, torch.float64, seed=h + w, z=z, device=dev)
    ref = _compare_pairs(verts, ico.faces, atol=1e-9, rtol=1e-9, height=h, width=w, double_sided=double_sided, **KW)
    assert (ref.bary == 0).any() and ((ref.bary > 0) & (ref.bary < 1)).any()  # clamped and interior pairs


def test_rgb_pairs_of_meshes_off_the_image_are_empty(dev):
    ico = icosphere(1)
    verts = _meshes(ico, 2, torch.float64, seed=2, z=5.0, device=dev)
    with torch.no_grad():
        verts[..., 0] += 5.0  # both meshes far to the right of the image
    log_t, pairs = soft_rasterize(verts, ico.faces.to(dev), return_pairs=True, fused="always", height=8, width=8,
                                  **KW)  # fmt: skip
    assert pairs.pix.shape == (0,) and pairs.bary.shape == (0, 3) and (log_t == 0).all()
    (grad,) = torch.autograd.grad(_pair_loss(log_t, pairs), verts)
    assert (grad == 0).all()


def _rgb_render(fused, dtype, texture, dev):
    """An RGB render of two perturbed bird templates (16²) and its gradients w.r.t. the vertices and the texture."""
    bird = load_template("procedural")
    g = torch.Generator().manual_seed(9)
    verts = (bird.verts + 0.02 * torch.randn(2, bird.num_verts, 3, generator=g)).to(dev, dtype).requires_grad_(True)
    cams = torch.tensor([[0.7, 0.05, -0.02, 0.9, 0.1, 0.3, 0.2], [0.6, -0.1, 0.05, 0.2, 0.9, -0.3, 0.1]])
    cams[:, 3:] = torch.nn.functional.normalize(cams[:, 3:], dim=1)
    if texture == "uv":
        tex = dict(uv_image=torch.rand(2, 3, 8, 16, generator=g).to(dev, dtype).requires_grad_(True),
                   verts_uv=bird.verts_uv.to(dev))  # fmt: skip
    elif texture == "verts_rgb":
        tex = dict(verts_rgb=torch.rand(2, bird.num_verts, 3, generator=g).to(dev, dtype).requires_grad_(True))
    else:
        from slopekp.render import Lighting

        tex = dict(lighting=Lighting(direction=(0.3, -0.5, -1.0)))
    w = torch.randn(2, 3, 16, 16, generator=g).to(dev, dtype)
    inputs = [verts] + [t for t in tex.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    r = Renderer(RenderSettings(image_size=16, fused=fused))(verts, bird.faces.to(dev), cams.to(dev, dtype),
                                                             mode="rgb", **tex)  # fmt: skip
    assert r.rgb.std() > 0.05  # a real image, not the background
    grads = torch.autograd.grad((r.rgb * w).sum() + r.alpha.sum(), inputs)
    return [r.alpha.detach().double(), r.rgb.detach().double()] + [gr.double() for gr in grads]


@pytest.mark.parametrize("texture", ["uv", "verts_rgb", "lighting"])
def test_rgb_renders_match_the_reference(texture, dev):
    """The RGB renderer on the fused pairs against the pure-PyTorch one: images and gradients w.r.t. the vertices
    and the texture. In float64 they agree to 1e-9. In float32, the training dtype, the depth softmax (gamma =
    1e-4 over [near, far] = [1, 100]) multiplies a depth's rounding error by ~100, so both paths are ~3e-5 from
    the exact (float64) image: the fused one must be as close to it as the reference is."""
    ref64 = _rgb_render("never", torch.float64, texture, dev)
    got64 = _rgb_render("always", torch.float64, texture, dev)
    ref32 = _rgb_render("never", torch.float32, texture, dev)
    got32 = _rgb_render("always", torch.float32, texture, dev)
    torch.testing.assert_close(got32[0], ref32[0], atol=1e-5, rtol=1e-5)  # alpha
    for exact, r64, g64, r32, g32 in zip(ref64, ref64, got64, ref32, got32):
        scale = r64.abs().max()
        assert scale > 0
        torch.testing.assert_close(g64 / scale, r64 / scale, atol=1e-9, rtol=0)
        ref_err = float((r32 - exact).abs().max() / scale)
        assert float((g32 - exact).abs().max() / scale) <= 1e-5 + 2 * ref_err


def test_self_check_passes_and_catches_a_wrong_kernel(dev, monkeypatch):
    """``fused="auto"`` trusts the kernels only after this check: it must pass here and fail on a kernel that is
    1% off."""
    from slopekp.render import fused

    assert fused._self_check.__wrapped__(dev.type, dev.index) is True
    real = fused.fused_soft_pairs

    def one_percent_off(*args, **kwargs):
        log_t, *rest = real(*args, **kwargs)
        return (log_t * 1.01, *rest)

    monkeypatch.setattr(fused, "fused_soft_pairs", one_percent_off)
    assert fused._self_check.__wrapped__(dev.type, dev.index) is False


def test_auto_falls_back_with_a_warning_when_the_kernels_fail(monkeypatch):
    """``fused="auto"`` on a device whose kernels do not compile (or disagree) renders with the pure-PyTorch path
    and says so once, instead of failing the run."""
    from slopekp.render import fused

    def broken(device_type, index):
        raise RuntimeError("triton: no kernel for this GPU")

    monkeypatch.setattr(fused, "_self_check", broken)
    fused._checked.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="failed to run on cuda .*no kernel for this GPU"):
            assert fused._checked("cuda", 0) is False
        monkeypatch.setattr(fused, "_self_check", lambda device_type, index: False)
        fused._checked.cache_clear()
        with pytest.warns(RuntimeWarning, match="disagrees"):
            assert fused._checked("cuda", 0) is False
    finally:
        fused._checked.cache_clear()


def test_float64_with_settings_that_float32_cannot_hold(dev):
    """sigma = 3.3e-4 and near = 1.1 are not float32 numbers: a compiled kernel must still get them exactly (they
    are declared float64; passed as Python floats they would be rounded to float32 on the GPU only, an error of
    ~1e-6 here, while the interpreter kept them exact)."""
    ico = icosphere(1)
    verts = _meshes(ico, 2, torch.float64, seed=11, z=1.3, device=dev)
    kw = dict(height=16, width=16, sigma=3.3e-4, eps=1e-3, near=1.1, far=99.7)
    _compare(verts, ico.faces, atol=1e-9, rtol=1e-9, **kw)
    _compare_pairs(verts, ico.faces, atol=1e-9, rtol=1e-9, **kw)
