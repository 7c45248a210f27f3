"""Shape and texture metrics (issue 24) against hand-derived values, SciPy and trimesh."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from slopekp.eval.reconstruction import (
    chamfer_distance,
    masked_l1,
    masked_ssim,
    mesh_length,
    normal_consistency,
    sample_surface,
)


def _mesh(m: trimesh.Trimesh) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(m.vertices, dtype=torch.float64)[None], torch.tensor(m.faces, dtype=torch.int64)


def test_chamfer_hand_derived_and_against_scipy():
    a = torch.tensor([[[0.0, 0, 0]]])
    b = torch.tensor([[[1.0, 0, 0], [3.0, 0, 0]]])
    assert float(chamfer_distance(a, b)[0]) == pytest.approx(1.0 + (1.0 + 3.0) / 2)  # 1 + mean(1, 3)
    assert float(chamfer_distance(b, b)[0]) == 0.0
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(300, 3)), rng.normal(size=(200, 3))
    ref = cKDTree(q).query(p)[0].mean() + cKDTree(p).query(q)[0].mean()
    got = chamfer_distance(torch.tensor(p)[None], torch.tensor(q)[None])
    assert float(got[0]) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="batch size"):
        chamfer_distance(a, b.expand(2, -1, -1))


def test_surface_samples_are_uniform_over_area_and_on_the_surface():
    """Two triangles of areas 1/2 and 3/2 side by side in z = 0: a quarter of the samples in the first, none off
    the plane or outside the triangles; on a sphere every sample is at radius ~1 (inside the facets)."""
    verts = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [4, 0, 0], [0, -1, 0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 4, 3]])  # areas 0.5 and 2.0 (legs 1,1 and 4,1)
    gen = torch.Generator().manual_seed(0)
    pts = sample_surface(verts, faces, 20000, gen)[0]
    assert float(pts[:, 2].abs().max()) == 0.0
    first = (pts[:, 1] >= 0) & (pts[:, 0] + pts[:, 1] <= 1 + 1e-9)
    second = (pts[:, 1] <= 0) & (pts[:, 0] / 4 - pts[:, 1] <= 1 + 1e-9) & (pts[:, 0] >= 0)
    assert bool((first | second).all())
    assert float(first.double().mean()) == pytest.approx(0.5 / 2.5, abs=0.01)
    assert float(pts[second][:, 0].mean()) == pytest.approx(4 / 3, abs=0.03)  # a triangle's centroid
    sphere = trimesh.creation.icosphere(subdivisions=3)
    v, f = _mesh(sphere)
    r = sample_surface(v, f, 2000, gen).norm(dim=-1)
    assert float(r.max()) <= 1 + 1e-9 and float(r.min()) > 0.98
    again = sample_surface(v, f, 5, torch.Generator().manual_seed(3))
    assert torch.equal(again, sample_surface(v, f, 5, torch.Generator().manual_seed(3)))  # deterministic


def test_chamfer_of_scaled_sphere_and_length():
    """A unit sphere against itself scaled by 1.1: every nearest point is about 0.1 away in each direction."""
    v, f = _mesh(trimesh.creation.icosphere(subdivisions=3))
    gen = torch.Generator().manual_seed(1)
    a, b = sample_surface(v, f, 3000, gen), sample_surface(1.1 * v, f, 3000, gen)
    assert float(chamfer_distance(a, b)[0]) == pytest.approx(0.2, abs=0.02)
    box = trimesh.creation.box(extents=(1.0, 2.5, 0.5))
    assert float(mesh_length(torch.tensor(box.vertices)[None])[0]) == pytest.approx(2.5)


def test_normal_consistency_hand_derived():
    """A cube: the 6 diagonals join coplanar faces (cos 1), the 12 cube edges perpendicular ones (cos 0), so
    6/18 = 1/3; a flat grid is 1; a sphere of many faces is close to 1; a crumpled sphere lower."""
    v, f = _mesh(trimesh.creation.box())
    assert float(normal_consistency(v, f)[0]) == pytest.approx(1 / 3, abs=1e-9)
    n = 5  # an n x n grid of squares, each split into two triangles wound the same way
    xy = torch.stack(torch.meshgrid(torch.arange(n + 1.0), torch.arange(n + 1.0), indexing="ij"), -1).reshape(-1, 2)
    gv = torch.cat([xy, torch.zeros(len(xy), 1)], 1).double()[None]
    k = lambda i, j: i * (n + 1) + j  # noqa: E731
    gf = torch.tensor([t for i in range(n) for j in range(n) for t in (
        [k(i, j), k(i + 1, j), k(i, j + 1)], [k(i + 1, j), k(i + 1, j + 1), k(i, j + 1)])])  # fmt: skip
    assert float(normal_consistency(gv, gf)[0]) == pytest.approx(1.0, abs=1e-9)
    sv, sf = _mesh(trimesh.creation.icosphere(subdivisions=3))
    smooth = float(normal_consistency(sv, sf)[0])
    noisy = sv * (1 + 0.1 * torch.randn(sv.shape[:2], generator=torch.Generator().manual_seed(0))[..., None])
    assert smooth > 0.98 and float(normal_consistency(noisy, sf)[0]) < smooth - 0.05


def test_masked_l1_and_ssim():
    img = torch.zeros(2, 3, 16, 16)
    render = torch.full_like(img, 0.5)
    mask = torch.zeros(2, 16, 16)
    mask[0, :8] = 1
    l1 = masked_l1(render, img, mask)
    assert float(l1[0]) == pytest.approx(0.5) and math.isnan(float(l1[1]))  # an empty mask has no error
    rng = torch.Generator().manual_seed(0)
    pic = torch.rand(1, 3, 32, 32, generator=rng)
    full = torch.ones(1, 32, 32)
    assert float(masked_ssim(pic, pic, full)[0]) == pytest.approx(1.0, abs=1e-6)
    worse = (pic + 0.3 * torch.randn(pic.shape, generator=rng)).clamp(0, 1)
    assert float(masked_ssim(worse, pic, full)[0]) < 0.8
    with pytest.raises(ValueError, match="mask"):
        masked_l1(render, img, mask[:1])
