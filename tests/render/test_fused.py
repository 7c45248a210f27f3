"""The fused Triton silhouette against the pure-PyTorch path, values and gradients, under Triton's interpreter on
the CPU (issue 13; tests/conftest.py sets ``TRITON_INTERPRET=1`` unless the caller set it), or compiled on CUDA with
``TRITON_INTERPRET=0 pytest --device cuda``. Skipped where Triton is not installed (``pip install -e
".[dev,triton]"``, as CI does)."""

from __future__ import annotations

import pytest
import torch

from slopekp.mesh import icosphere, load_template
from slopekp.render import Renderer, RenderSettings
from slopekp.render.fused import fused_available, interpreting, triton_available
from slopekp.render.rasterize import soft_rasterize

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton (pip install -e '.[triton]')")


@pytest.fixture
def dev(device) -> torch.device:
    """``--device``: the CPU under Triton's interpreter, or CUDA with compiled kernels (``TRITON_INTERPRET=0``)."""
    if device.type == "cpu" and not interpreting():
        pytest.skip("on the CPU the kernels run under TRITON_INTERPRET=1 only")
    if device.type == "cuda" and interpreting():
        pytest.skip("set TRITON_INTERPRET=0 to test the compiled kernels on CUDA")
    return device


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
