"""fc_stack and ShapeHead (METHOD §4.2–4.3): exact mirror symmetry, mean-shape init, shapes, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slopekp.mesh import find_symmetry, load_template
from slopekp.models.shape import ShapeHead, ShapeOutput, fc_stack

FLIP = torch.tensor([-1.0, 1.0, 1.0])
IN_DIM = 32


@pytest.fixture(scope="module")
def bird():
    return load_template("procedural")


def _excite(head: ShapeHead) -> None:
    """Scale up the prediction layer so Δv is far from its near-constant init (a stronger symmetry test)."""
    with torch.no_grad():
        head.pred.weight.normal_(0.0, 0.1)


def _check_symmetric(verts: torch.Tensor, sym, on_plane: torch.Tensor) -> None:
    """``verts (..., V, 3)``: right == left ⊙ (−1, 1, 1) bit for bit, plane vertices at x == 0."""
    assert torch.equal(verts[..., sym.right, :], verts[..., sym.left, :] * FLIP)
    assert torch.equal(verts[..., on_plane, 0], torch.zeros_like(verts[..., on_plane, 0]))


def test_fc_stack_layout_and_init():
    stack = fc_stack(64, 20, 2)
    kinds = [type(m) for m in stack]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU] * 2
    assert stack[0].in_features == 64 and stack[3].in_features == 20 and stack[3].out_features == 20
    assert stack[2].negative_slope == 0.2
    w = torch.cat([stack[0].weight.detach().flatten(), stack[3].weight.detach().flatten()])
    assert abs(float(w.std()) - 0.02) < 0.002
    assert torch.equal(stack[0].bias, torch.zeros(20)) and torch.equal(stack[3].bias, torch.zeros(20))
    assert tuple(stack(torch.randn(3, 64)).shape) == (3, 20)
    assert len(fc_stack(8, 4, 3)) == 9
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        fc_stack(8, 4, 0)


def test_output_shapes_and_sizes(bird):
    head = ShapeHead.from_template(IN_DIM, bird, nz_feat=16)
    sym = bird.symmetry()
    out = head(torch.randn(3, IN_DIM))
    assert isinstance(out, ShapeOutput)
    v = bird.num_verts
    assert tuple(out.verts.shape) == (3, v, 3) and tuple(out.delta_v.shape) == (3, v, 3)
    assert tuple(out.mean_shape.shape) == (v, 3)
    assert head.num_rows == sym.num_rows and tuple(head.mean_rows.shape) == (sym.num_rows, 3)
    assert head.pred.out_features == 3 * sym.num_rows
    torch.testing.assert_close(out.verts, out.mean_shape + out.delta_v, rtol=0, atol=0)
    # METHOD §4.3 init: pred weights N(0, 1e-4), PyTorch's default bias (uniform ±1/sqrt(nz_feat))
    assert float(head.pred.weight.detach().std()) < 2e-4
    assert float(head.pred.bias.detach().abs().max()) <= 1 / 16**0.5


def test_shape_bias_init_zero_starts_smooth_uniform_crumples():
    """``bias_init="zero"``: an untrained head predicts the template up to the tiny weights (its normal consistency);
    ``"uniform"`` (the default, U-CMR's PyTorch default ±1/√nz_feat) moves every vertex by a fixed random offset
    and crumples the mesh; an unknown name is refused."""
    from slopekp.eval.reconstruction import normal_consistency

    t = load_template("procedural")
    torch.manual_seed(0)
    feats = torch.randn(2, IN_DIM)
    smooth = float(normal_consistency(t.verts[None], t.faces)[0])
    zero = ShapeHead.from_template(IN_DIM, t, nz_feat=16, bias_init="zero").eval()
    uniform = ShapeHead.from_template(IN_DIM, t, nz_feat=16).eval()  # the default, METHOD's
    with torch.no_grad():
        nz, nu = (normal_consistency(h(feats).verts, t.faces) for h in (zero, uniform))
        assert float(zero(feats).delta_v.abs().max()) < 1e-2
    assert float(nz.min()) > smooth - 0.01 and float(nu.max()) < smooth - 0.2
    assert 0 < float(uniform.pred.bias.abs().max()) <= 1 / 16**0.5
    with pytest.raises(ValueError, match="bias_init"):
        ShapeHead.from_template(IN_DIM, t, bias_init="normal")


@pytest.mark.parametrize("name", ["procedural", "icosphere"])
def test_exact_mirror_symmetry(name):
    t = load_template(name)
    sym = t.symmetry()
    on_plane = sym.indep[t.verts[sym.indep, 0] == 0]
    assert on_plane.numel() > 0
    head = ShapeHead.from_template(IN_DIM, t, nz_feat=16)
    _excite(head)
    with torch.no_grad():
        head.mean_rows.add_(torch.randn_like(head.mean_rows) * 0.1)  # as if trained: still symmetric
    out = head(torch.randn(4, IN_DIM))
    assert float(out.delta_v.detach().abs().max()) > 0.1
    _check_symmetric(out.delta_v, sym, on_plane)
    _check_symmetric(out.mean_shape, sym, on_plane)
    _check_symmetric(out.verts, sym, on_plane)


def test_mean_shape_at_init_is_the_template(bird):
    head = ShapeHead.from_template(IN_DIM, bird, nz_feat=16)
    assert torch.equal(head.mean_shape(), bird.verts)  # the procedural bird is exactly symmetric


def test_asymmetric_template_snaps_to_its_symmetric_version(bird):
    verts = bird.verts.clone()
    sym0 = bird.symmetry()
    # right partners off by 2e-7 (within the 1e-6 tolerance): still paired, snapped by the head
    verts[sym0.right] += torch.tensor([2e-7, -2e-7, 0.0])
    # one pair broken (0.01 apart): both become independent off-plane vertices, free in x
    broken_left, broken_right = int(sym0.left[5]), int(sym0.right[5])
    verts[broken_right, 1] += 0.01
    sym = find_symmetry(verts)
    assert sym.num_pairs == sym0.num_pairs - 1
    head = ShapeHead(IN_DIM, verts, sym, nz_feat=16)
    mean = head.mean_shape().detach()
    assert torch.equal(mean, sym.symmetrize(sym.to_rows(verts)))
    assert not torch.equal(mean, verts)
    assert float((mean - verts).abs().max()) < 1e-6
    assert torch.equal(mean[sym.indep], verts[sym.indep])  # independent vertices keep their own coordinates

    _excite(head)
    out = head(torch.randn(3, IN_DIM))
    on_plane = sym.indep[verts[sym.indep, 0] == 0]
    _check_symmetric(out.verts, sym, on_plane)
    # the off-plane independent vertices move in x
    assert bool((out.delta_v[:, [broken_left, broken_right], 0] != 0).all())


def test_gradients_reach_mean_shape_and_head(bird):
    head = ShapeHead.from_template(IN_DIM, bird, nz_feat=16)
    flat = torch.randn(3, IN_DIM, requires_grad=True)
    out = head(flat)
    (out.verts.square().sum() + out.delta_v.sum()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert head.mean_rows.grad.abs().sum() > 0 and head.pred.weight.grad.abs().sum() > 0
    assert head.fc[0].weight.grad.abs().sum() > 0 and flat.grad.abs().sum() > 0
    # plane vertices are pinned: no gradient on their x
    assert torch.equal(head.mean_rows.grad[~head.free], torch.zeros(int((~head.free).sum())))
    assert int((~head.free).sum()) > 0


def test_state_dict_and_device_move(bird):
    head = ShapeHead.from_template(IN_DIM, bird, nz_feat=16)
    assert "mean_rows" in head.state_dict() and "template_rows" not in head.state_dict()
    moved = head.to(torch.float64)
    assert moved is head and head.mean_rows.dtype == torch.float64
    head.eval()
    out = head(torch.randn(1, IN_DIM, dtype=torch.float64))
    assert out.verts.dtype == torch.float64
    assert head.symmetry.left.device == head.mean_rows.device


def test_checks(bird):
    head = ShapeHead.from_template(IN_DIM, bird, nz_feat=16)
    with pytest.raises(ValueError, match=f"flat must have shape \\(B, {IN_DIM}\\), got \\(2, 7\\)"):
        head(torch.randn(2, 7))
    with pytest.raises(ValueError, match="symmetry is for 642 vertices but template_verts has 10"):
        ShapeHead(IN_DIM, torch.zeros(10, 3), bird.symmetry())
    with pytest.raises(ValueError, match="symmetry must be a Symmetry"):
        ShapeHead(IN_DIM, bird.verts, None)
