import torch

from slopekp.mesh import (
    edges,
    euler_characteristic,
    face_normals,
    find_symmetry,
    is_closed,
    procedural_bird,
    signed_volume,
)
from slopekp.mesh.procedural import icosphere_arrays


def test_icosphere_bitwise_mirror_symmetric():
    v, _ = icosphere_arrays(3)
    keys = {tuple(r) for r in (v + 0.0).tolist()}
    for axis in range(3):
        m = v.copy()
        m[:, axis] = -m[:, axis] + 0.0
        assert {tuple(r) for r in m.tolist()} == keys


def test_bird_topology_and_size():
    b = procedural_bird()
    assert 500 <= b.num_verts <= 1000
    assert is_closed(b.faces)
    assert euler_characteristic(b.faces, b.num_verts) == 2  # genus 0
    # consistent winding: each directed edge once
    d = torch.cat([b.faces[:, [0, 1]], b.faces[:, [1, 2]], b.faces[:, [2, 0]]]).tolist()
    assert len(set(map(tuple, d))) == len(d) == 2 * edges(b.faces).shape[0]
    vol = signed_volume(b.verts, b.faces).item()
    assert 0.4 < vol < 0.9
    lo, hi = b.verts.min(0).values, b.verts.max(0).values
    assert -0.6 < lo[0] < -0.35 and 0.35 < hi[0] < 0.6
    assert -1.2 < lo[1] < -0.9 and 1.0 < hi[1] < 1.25
    assert -0.6 < lo[2] < -0.35 and 0.3 < hi[2] < 0.5
    assert b.verts[:, 1:].mean(0).abs().max() < 1e-6
    assert torch.equal(b.verts, procedural_bird().verts)  # deterministic


def test_bird_exactly_symmetric():
    b = procedural_bird()
    s = find_symmetry(b.verts, tol=1e-7)
    on_plane = b.verts[s.indep, 0]
    assert torch.equal(on_plane, torch.zeros_like(on_plane))
    assert torch.equal(b.verts[s.right], b.verts[s.left] * torch.tensor([-1.0, 1.0, 1.0]))
    assert 2 * s.num_pairs + s.indep.numel() == b.num_verts and s.num_pairs > 250


def test_bird_outward_normals():
    b = procedural_bird()
    n = face_normals(b.verts, b.faces)
    centre = b.verts[b.faces].mean(1)
    out = ((n * (centre - b.verts.mean(0))).sum(-1) > 0).float().mean()
    assert out > 0.9
    # no degenerate faces
    assert face_normals(b.verts, b.faces, normalize=False).norm(dim=-1).min() > 1e-6


def test_bird_parts_in_object_frame():
    b = procedural_bird()
    v = b.verts
    beak, tail = v[v[:, 1].argmin()], v[v[:, 1].argmax()]
    assert beak[0] == 0 and tail[0] == 0  # tips on the symmetry plane
    head = v[v[:, 1] < -0.55]
    body = v[(v[:, 1] > -0.2) & (v[:, 1] < 0.4)]
    # head sits higher (+z, the back) than the body's centre, the body is wider than head and tail
    assert head[:, 2].mean() > body[:, 2].mean()
    assert body[:, 0].abs().max() > 1.5 * head[:, 0].abs().max()
    tailv = v[v[:, 1] > 0.9]
    assert tailv[:, 2].max() - tailv[:, 2].min() < 0.2 < 2 * tailv[:, 0].abs().max() + 0.1  # flat tail fan
    assert b.verts_uv.abs().max() <= 1.0


def test_bird_levels():
    for level, nv in ((2, 162), (4, 2562)):
        b = procedural_bird(level)
        assert b.num_verts == nv and is_closed(b.faces) and signed_volume(b.verts, b.faces) > 0
