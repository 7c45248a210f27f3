import itertools

import numpy as np
import pytest
import torch
from mesh_testing import cube, tetrahedron

from slopekp.mesh import (
    adjacent_faces,
    check_faces,
    edges,
    euler_characteristic,
    face_normals,
    icosphere,
    is_closed,
    load_template,
    orient_outward,
    signed_volume,
    vertex_neighbors,
    vertex_normals,
)


def _directed_edges_unique(faces: torch.Tensor) -> bool:
    """Consistent winding of a closed mesh: every directed edge occurs exactly once."""
    d = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()
    return len(set(map(tuple, d))) == len(d)


def test_edges_tetrahedron():
    _, f = tetrahedron()
    e = edges(f)
    assert e.tolist() == [list(p) for p in itertools.combinations(range(4), 2)]


def test_vertex_neighbors_brute_force():
    t = icosphere(2)
    nb = vertex_neighbors(t.faces, t.num_verts)
    ref = [set() for _ in range(t.num_verts)]
    for a, b, c in t.faces.tolist():
        ref[a] |= {b, c}
        ref[b] |= {a, c}
        ref[c] |= {a, b}
    assert [sorted(r) for r in ref] == [n.tolist() for n in nb]
    # icosphere: 12 valence-5 vertices, all others valence 6
    deg = torch.tensor([len(n) for n in nb])
    assert int((deg == 5).sum()) == 12 and int((deg == 6).sum()) == t.num_verts - 12


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_icosphere_counts_closed_euler(level):
    t = icosphere(level)
    assert t.num_verts == 10 * 4**level + 2 and t.num_faces == 20 * 4**level
    assert edges(t.faces).shape[0] == 30 * 4**level
    assert is_closed(t.faces)
    assert euler_characteristic(t.faces) == 2


def test_open_mesh_not_closed():
    _, f = cube()
    assert is_closed(f)
    assert not is_closed(f[1:])


def test_signed_volume_cube_and_tetra():
    v, f = cube()
    assert signed_volume(v, f).item() == pytest.approx(1.0, abs=1e-6)
    assert signed_volume(v, f.flip(1)).item() == pytest.approx(-1.0, abs=1e-6)
    # translation invariance of a closed mesh, and batching
    vb = torch.stack([v, v + torch.tensor([3.0, -2.0, 5.0]), 2 * v])
    assert torch.allclose(signed_volume(vb, f), torch.tensor([1.0, 1.0, 8.0]), atol=1e-5)
    tv, tf = tetrahedron()
    assert signed_volume(tv, tf).item() == pytest.approx(1 / 6, abs=1e-7)


def test_icosphere_volume_and_outward():
    t = icosphere(3)
    vol = signed_volume(t.verts, t.faces).item()
    assert 0.97 * 4 / 3 * np.pi < vol < 4 / 3 * np.pi
    n = face_normals(t.verts, t.faces)
    centre = t.verts[t.faces].mean(1)
    assert bool(((n * centre).sum(-1) > 0).all())
    assert torch.allclose(t.verts.norm(dim=-1), torch.ones(t.num_verts), atol=1e-6)


def test_face_normal_orientation_hand():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    f = torch.tensor([[0, 1, 2]])
    assert face_normals(v, f).tolist() == [[0.0, 0.0, 1.0]]
    assert face_normals(v, f, normalize=False).tolist() == [[0.0, 0.0, 1.0]]  # 2 x area 0.5


def test_vertex_normals_sphere_batched():
    t = icosphere(3)
    vb = torch.stack([t.verts, 2.0 * t.verts])
    n = vertex_normals(vb, t.faces)
    assert n.shape == (2, t.num_verts, 3)
    cos = (n * t.verts).sum(-1)
    assert bool((cos > 0.99).all())


@pytest.mark.parametrize("seed", [0, 1])
def test_orient_outward_recovers_icosphere(seed):
    t = icosphere(2)
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(t.num_faces, generator=g) < 0.5
    scrambled = t.faces.clone()
    scrambled[flip] = scrambled[flip][:, [0, 2, 1]]
    fixed = orient_outward(t.verts, scrambled)
    assert torch.equal(fixed, t.faces)
    # fully inverted input is flipped back as a whole
    assert torch.equal(orient_outward(t.verts, t.faces.flip(1)), t.faces.flip(1)[:, [0, 2, 1]])


def test_orient_outward_two_components():
    v, f = cube()
    t = icosphere(1)
    verts = torch.cat([v, t.verts + 5.0])
    faces = torch.cat([f.flip(1), t.faces + v.shape[0]])
    out = orient_outward(verts, faces)
    assert _directed_edges_unique(out)
    assert signed_volume(verts, out[:12]).item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(out[12:], faces[12:])  # the sphere was already outward
    assert signed_volume(verts, out[12:]).item() > 3.0


def test_orient_outward_mobius_raises():
    # Möbius strip: a closed band of 5 quads whose ends are glued with a half twist
    n = 5
    verts = []
    for i in range(n):
        a = 2 * np.pi * i / n
        verts += [[np.cos(a), np.sin(a), -0.2], [np.cos(a), np.sin(a), 0.2]]
    faces = []
    for i in range(n):
        a0, a1 = 2 * i, 2 * i + 1
        if i < n - 1:
            b0, b1 = 2 * i + 2, 2 * i + 3
        else:
            b0, b1 = 1, 0  # half twist
        faces += [(a0, b0, b1), (a0, b1, a1)]
    with pytest.raises(ValueError, match="not orientable"):
        orient_outward(torch.tensor(verts, dtype=torch.float32), torch.tensor(faces))


def test_ucmr_raw_winding_inconsistent_then_fixed(ucmr_template_path):
    z = np.load(ucmr_template_path)
    v, f = torch.as_tensor(z["verts"]), torch.as_tensor(z["faces"])
    assert not _directed_edges_unique(f)  # the file's x > 0 half is wound inward
    fixed = orient_outward(v, f)
    assert _directed_edges_unique(fixed)
    assert signed_volume(v, fixed).item() == pytest.approx(0.696, abs=1e-3)
    area = face_normals(v, fixed, normalize=False).norm(dim=-1).sum().item() / 2
    assert area == pytest.approx(4.53, abs=0.01)
    t = load_template(str(ucmr_template_path))
    assert is_closed(t.faces) and euler_characteristic(t.faces, t.num_verts) == 2
    assert edges(t.faces).shape[0] == 1659


def test_check_faces_errors():
    with pytest.raises(ValueError, match="index 7 out of range for 4 vertices"):
        check_faces(torch.tensor([[0, 1, 7]]), 4)
    with pytest.raises(ValueError, match="negative"):
        check_faces(torch.tensor([[0, 1, -1]]), 4)
    with pytest.raises(ValueError, match=r"shape \(F, 3\)"):
        check_faces(torch.tensor([0, 1, 2]), 4)
    with pytest.raises(ValueError, match="integer"):
        check_faces(torch.tensor([[0.0, 1.0, 2.0]]), 4)
    with pytest.raises(ValueError, match="repeats a vertex"):
        check_faces(torch.tensor([[0, 1, 2], [1, 1, 2]]), 4)
    check_faces(torch.tensor([[0, 1, 2]]), 3)


def test_adjacent_faces_pair_every_shared_edge_once():
    """A closed mesh: one pair per edge (E = 3F/2 rows), each pair of distinct faces sharing exactly two vertices
    (checked by brute force over all face pairs); an open single triangle has none."""
    _, f = cube()
    pairs = adjacent_faces(f)
    assert pairs.shape == (edges(f).shape[0], 2) == (3 * f.shape[0] // 2, 2)
    brute = {(i, j) for i, j in itertools.combinations(range(f.shape[0]), 2)
             if len(set(f[i].tolist()) & set(f[j].tolist())) == 2}  # fmt: skip
    assert {tuple(sorted(p)) for p in pairs.tolist()} == brute
    assert adjacent_faces(torch.tensor([[0, 1, 2]])).shape == (0, 2)
