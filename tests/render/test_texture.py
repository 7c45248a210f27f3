"""Sphere-UV mapping and bilinear UV sampling (METHOD §3.4) against hand values and ``F.grid_sample``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from slopekp.render import sample_bilinear, sphere_to_uv, uv_to_sphere


def test_uv_to_sphere_known_points():
    uv = torch.tensor([[0.0, -1.0], [0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # theta = pi (v + 1) / 2, phi = pi u: v = -1 is the +z pole, v = 0 the equator, u = 0.5 points along +y
    expected = torch.tensor(
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]
    )
    torch.testing.assert_close(uv_to_sphere(uv), expected, atol=1e-6, rtol=0)


def test_sphere_round_trip_applies_the_uv_shift():
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(200, 2, generator=g, dtype=torch.float64) * 2 - 1
    uv[:, 1] *= 0.9  # away from the poles, where u is undefined
    back = sphere_to_uv(3.0 * uv_to_sphere(uv))  # any radius
    shifted_u = torch.remainder(uv[:, 0] + 0.5 + 1, 2) - 1  # U-CMR texture_uvshift, wrapped into [-1, 1)
    torch.testing.assert_close(back[:, 1], uv[:, 1])
    # compare u on the circle (the wrap point -1 == 1)
    torch.testing.assert_close(torch.cos(math.pi * back[:, 0]), torch.cos(math.pi * shifted_u))
    torch.testing.assert_close(torch.sin(math.pi * back[:, 0]), torch.sin(math.pi * shifted_u))
    assert back[:, 0].min() >= -1 and back[:, 0].max() < 1
    no_shift = sphere_to_uv(uv_to_sphere(uv), shift=0.0)
    torch.testing.assert_close(torch.cos(math.pi * no_shift[:, 0]), torch.cos(math.pi * uv[:, 0]))


def test_sphere_to_uv_gradients_finite_at_poles():
    pts = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -2.0], [1e-30, 0.0, 1.0]], requires_grad=True)
    sphere_to_uv(pts).sum().backward()
    assert torch.isfinite(pts.grad).all()


def test_sample_bilinear_matches_grid_sample():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 2, 2, 1, 0, 1])
    uv = torch.rand(6, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2  # some beyond the border
    uv.requires_grad_()
    ours = sample_bilinear(images, idx, uv)
    ref = F.grid_sample(images[idx], uv.view(6, 1, 1, 2), align_corners=True, padding_mode="border")
    ref = ref.view(6, 2)
    torch.testing.assert_close(ours, ref)
    up = torch.randn(6, 2, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((ours * up).sum(), (images, uv))
    gb = torch.autograd.grad((ref * up).sum(), (images, uv))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    # corners are exact texels (align_corners=True): (-1, -1) is the top-left texel, (1, 1) the bottom-right
    corners = sample_bilinear(images, torch.tensor([0, 0]), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]).double())
    torch.testing.assert_close(corners, torch.stack([images[0, :, 0, 0], images[0, :, -1, -1]]))
