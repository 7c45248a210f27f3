import pytest
import torch

from slopekp.mesh import Symmetry, find_symmetry, load_template, mirror_permutation, procedural_bird

FLIP = torch.tensor([-1.0, 1.0, 1.0])


def _brute_force(verts: torch.Tensor, tol: float):
    """METHOD §3.2 by brute force over all vertex pairs."""
    v = verts.double()
    m = v * FLIP.double()
    d = torch.cdist(m, v)
    dist, nn = d.min(dim=1)
    left, right = [], []
    for i in range(v.shape[0]):
        if v[i, 0] < 0 and dist[i] < tol and int(nn[i]) != i:
            left.append(i)
            right.append(int(nn[i]))
    indep = sorted(set(range(v.shape[0])) - set(left) - set(right))
    return indep, left, right


def test_ucmr_counts(ucmr_template_path):
    t = load_template(str(ucmr_template_path))
    s = t.symmetry(1e-6)
    assert s.num_pairs == 237 and s.indep.numel() == 81 and s.num_rows == 318
    on_plane = int((t.verts[s.indep, 0] == 0).sum())
    assert on_plane == 51
    indep, left, right = _brute_force(t.verts, 1e-6)
    assert s.indep.tolist() == indep and s.left.tolist() == left and s.right.tolist() == right
    assert (t.verts[s.right] * FLIP - t.verts[s.left]).abs().max() < 1e-6


def test_random_cloud_against_brute_force():
    g = torch.Generator().manual_seed(1)
    half = torch.randn(40, 3, generator=g, dtype=torch.float64)
    half[:, 0] = -half[:, 0].abs() - 0.01
    plane = torch.randn(6, 3, generator=g, dtype=torch.float64)
    plane[:, 0] = 0
    lonely = torch.randn(5, 3, generator=g, dtype=torch.float64)  # no partner
    pts = torch.cat([half, half * FLIP.double() + 1e-8, plane, lonely])
    pts = pts[torch.randperm(pts.shape[0], generator=g)]
    s = find_symmetry(pts, tol=1e-6)
    indep, left, right = _brute_force(pts, 1e-6)
    assert s.indep.tolist() == indep and s.left.tolist() == left and s.right.tolist() == right
    assert s.num_pairs == 40  # lonely points never pair
    # a tighter tolerance than the 1e-8 jitter rejects every pair
    assert find_symmetry(pts, tol=1e-10).num_pairs == 0


def test_symmetrize_round_trip_and_exactness(ucmr_template_path):
    t = load_template(str(ucmr_template_path))
    s = t.symmetry()
    rows = torch.randn(2, 4, s.num_rows, 3)
    v = s.symmetrize(rows)
    assert v.shape == (2, 4, t.num_verts, 3)
    assert torch.equal(v[..., s.right, :], v[..., s.left, :] * FLIP)
    assert torch.equal(v[..., s.indep, :], rows[..., : s.indep.numel(), :])
    assert torch.equal(s.to_rows(v), rows)
    # the symmetrised template stays within 0 of the original on the paired vertices
    sym_t = s.symmetrize(s.to_rows(t.verts))
    assert (sym_t - t.verts).abs().max() < 1e-6


def test_symmetrize_gradient():
    b = procedural_bird()
    s = b.symmetry()
    rows = torch.zeros(s.num_rows, 3, requires_grad=True)
    w = torch.randn(b.num_verts, 3)
    (s.symmetrize(rows) * w).sum().backward()
    n_i = s.indep.numel()
    expect_left = w[s.left] + w[s.right] * FLIP
    assert torch.allclose(rows.grad[n_i:], expect_left)
    assert torch.allclose(rows.grad[:n_i], w[s.indep])


def test_errors():
    s = find_symmetry(torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]]))
    assert s.left.tolist() == [0] and s.right.tolist() == [1] and s.indep.tolist() == [2]
    with pytest.raises(ValueError, match=r"rows must have shape \(\.\.\., 2, 3\)"):
        s.symmetrize(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"verts must have shape \(\.\.\., 3, 3\)"):
        s.to_rows(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        find_symmetry(torch.tensor([[float("nan"), 0, 0], [1.0, 0, 0]]))
    with pytest.raises(ValueError, match="permutation"):
        Symmetry(torch.tensor([0]), torch.tensor([1]), torch.tensor([1]), 3)


def test_mirror_permutation_of_exactly_symmetric_meshes_and_not_of_others():
    bird = load_template("procedural")
    perm = mirror_permutation(bird.verts, bird.faces)
    assert perm is not None
    assert torch.equal(bird.verts[perm], bird.verts * FLIP)  # the partner of each vertex is its exact mirror
    assert torch.equal(perm[perm], torch.arange(bird.verts.shape[0]))
    # the vertex order does not matter
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(bird.verts.shape[0], generator=g)
    inverse = torch.argsort(order)
    assert mirror_permutation(bird.verts[order], inverse[bird.faces]) is not None
    # one vertex off its mirror by 1 % of the bird: not symmetric
    moved = bird.verts.clone()
    i = int(torch.argmax(moved[:, 0]))
    moved[i, 1] += 0.01 * float((moved.max(0).values - moved.min(0).values).max())
    assert mirror_permutation(moved, bird.faces) is None
    # the same vertices, one quad split along its other diagonal on one side only: not symmetric
    faces = bird.faces.clone()
    edge_faces = {}
    for f, tri in enumerate(faces.tolist()):
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            edge_faces.setdefault((min(a, b), max(a, b)), []).append(f)
    (a, b), (f1, f2) = next((e, fs) for e, fs in edge_faces.items() if bird.verts[list(e), 0].max() < -0.05)
    c = next(v for v in faces[f1].tolist() if v not in (a, b))
    d = next(v for v in faces[f2].tolist() if v not in (a, b))
    faces[f1], faces[f2] = torch.tensor([a, d, c]), torch.tensor([b, c, d])  # the flipped diagonal c-d
    assert mirror_permutation(bird.verts, faces) is None


def test_the_ucmr_template_is_not_exactly_mirror_symmetric(ucmr_template_path):
    """U-CMR's CUB template is symmetric only approximately (some vertices 1 % of its size off their mirror), so
    Stage I fits all its hypotheses."""
    t = load_template(str(ucmr_template_path))
    assert mirror_permutation(t.verts, t.faces) is None
