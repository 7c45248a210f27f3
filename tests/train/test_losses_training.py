"""Stage II/III losses (METHOD §5.4, §7.2, §7.7, §7.8) against hand-computed values and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from slopekp.models.pose_losses import camera_loss, heatmap_loss
from slopekp.train.losses import hypothesis_weights, texture_loss


def _cam(q_xyzw, s=1.0, t=(0.0, 0.0)):
    x, y, z, w = q_xyzw
    return torch.tensor([[s, *t, w, x, y, z]], dtype=torch.float64)


def test_camera_loss_hand_values():
    ident = _cam([0, 0, 0, 1])
    assert camera_loss(ident, ident).item() == pytest.approx(0.0, abs=1e-12)
    # q and -q are the same rotation
    assert camera_loss(ident, _cam([0, 0, 0, -1])).item() == pytest.approx(0.0, abs=1e-12)
    # a half turn: <q, q*> = 0 -> 1; a 90° turn: cos(45°)
    half = _cam(Rotation.from_euler("y", 180, degrees=True).as_quat())
    quarter = _cam(Rotation.from_euler("x", 90, degrees=True).as_quat())
    assert camera_loss(ident, half).item() == pytest.approx(1.0, abs=1e-12)
    assert camera_loss(ident, quarter).item() == pytest.approx(1 - math.cos(math.pi / 4), abs=1e-12)
    # scale/translation: mean of squared differences over (s, tx, ty)
    assert camera_loss(_cam([0, 0, 0, 1], 1.5, (0.3, -0.6)), ident).item() == pytest.approx(
        (0.25 + 0.09 + 0.36) / 3, abs=1e-12
    )
    with pytest.raises(ValueError, match=r"\(B, 7\)"):
        camera_loss(ident[:, :6], ident[:, :6])


def test_texture_loss_is_zero_for_the_target_and_ignores_the_background():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 24, 24, generator=g)
    mask = torch.zeros(2, 24, 24)
    mask[:, 6:18, 6:18] = 1
    other_bg = img.clone()
    other_bg[..., :4, :] = torch.rand(2, 3, 4, 24, generator=g)  # differs only outside the mask
    assert texture_loss(img, img, mask).abs().max() < 1e-6
    assert texture_loss(other_bg, img, mask).abs().max() < 1e-6
    # (B, P) form: one hypothesis right, one wrong
    stack = torch.stack([img, 1 - img], 1)
    out = texture_loss(stack, img, mask)
    assert out.shape == (2, 2) and (out[:, 0] < 1e-6).all() and (out[:, 1] > 0.1).all()
    # the L1 part equals a hand computation
    l1 = texture_loss(1 - img, img, mask, ssim_weight=0.0)
    ref = ((1 - 2 * img).abs() * mask[:, None]).flatten(1).mean(1)
    torch.testing.assert_close(l1, ref)


def test_texture_loss_ssim_term_matches_an_independent_formula():
    """The structural term against a direct NumPy SSIM with the same 11-px Gaussian window (σ 1.5)."""
    from scipy.ndimage import gaussian_filter1d

    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)).clamp(0, 1)
    mask = torch.ones(1, 32, 32, dtype=torch.float64)
    ours = (texture_loss(a, b, mask) - texture_loss(a, b, mask, ssim_weight=0.0)).item()

    def filt(x):  # 'valid' separable Gaussian, 11 taps
        for ax in (-1, -2):
            x = gaussian_filter1d(x, 1.5, axis=ax, mode="constant", truncate=5 / 1.5)
        return x[..., 5:-5, 5:-5]

    x, y = a.numpy()[0], b.numpy()[0]
    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    assert ours == pytest.approx(1 - ssim.mean(), abs=1e-6)


def test_heatmap_loss_counts_only_visible_keypoints():
    pred = torch.ones(1, 2, 4, 4)
    target = torch.zeros(1, 2, 4, 4)
    vis = torch.tensor([[True, False]])
    assert heatmap_loss(pred, target, vis, weight=10.0).item() == pytest.approx(10 * 16 / 32)
    assert heatmap_loss(pred, target, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def test_hypothesis_weights_follow_method_5_4():
    lm = torch.tensor([[0.1, 0.3, 0.2]])
    lt = torch.tensor([[0.5, 0.1, 0.3]])
    q = hypothesis_weights(lm, lt)
    tm = (lm - 0.1) / (0.2 + 1e-4)
    tt = (lt - 0.1) / (0.4 + 1e-4)
    t = 0.5 * tm + 0.5 * tt
    ref = torch.softmax(-20 * (t - t.min()) / (t.max() - t.min() + 1e-6), -1)
    torch.testing.assert_close(q, ref)
    assert not q.requires_grad
    only_mask = hypothesis_weights(lm)
    assert only_mask.argmax().item() == 0
    np.testing.assert_allclose(only_mask.sum(-1).numpy(), 1.0, rtol=1e-6)


def test_hypothesis_weights_texture_share():
    lm = torch.tensor([[0.1, 0.3, 0.2]])
    lt = torch.tensor([[0.5, 0.1, 0.3]])
    torch.testing.assert_close(hypothesis_weights(lm, lt, texture_share=0.0), hypothesis_weights(lm))
    assert hypothesis_weights(lm, lt, texture_share=1.0).argmax().item() == 1  # the texture's best
    assert hypothesis_weights(lm, lt, texture_share=0.0).argmax().item() == 0  # the mask's best


def test_heatmap_kl_loss_is_zero_exactly_at_its_targets():
    """KL(target ‖ softmax): 0 when the logits are the log of the normalised Gaussian (any offset), positive for
    a peak a pixel off; a zero target map asks for the uniform distribution; untrained maps add nothing."""
    from slopekp.models.keypoints import heatmap_targets
    from slopekp.models.pose_losses import heatmap_kl_loss

    pts = torch.tensor([[[0.1, -0.2], [0.0, 0.0]]])
    vis = torch.tensor([[True, False]])
    goal = heatmap_targets(pts, vis, 16, 0.15)
    exact = torch.log(goal[:, :1].clamp_min(1e-30)) + 3.0  # an offset does not change a softmax
    flat = torch.zeros(1, 1, 16, 16)
    logits = torch.cat([exact, flat], dim=1)
    assert float(heatmap_kl_loss(logits, goal, torch.ones_like(vis))) == pytest.approx(0.0, abs=1e-5)
    shifted = torch.cat([torch.roll(exact, 1, dims=-1), flat], dim=1)
    assert float(heatmap_kl_loss(shifted, goal, vis)) > 0.05
    # the second map is trained towards uniform: a peaked one costs, a flat one does not
    assert float(heatmap_kl_loss(torch.cat([exact, exact], 1), goal, torch.ones_like(vis))) > 0.5
    assert float(heatmap_kl_loss(logits, goal, torch.zeros_like(vis))) == 0.0
    with pytest.raises(ValueError, match="disagree"):
        heatmap_kl_loss(logits, goal[:, :1], vis)


def test_shape_priors_laplacian_of_the_mesh_or_of_its_deformation():
    """``train.laplacian_of``: ``mesh`` smooths the vertices themselves (the template's own curvature costs), while
    ``deformation`` smooths their displacement from the template (a translated template costs nothing). Checked
    against a brute-force graph Laplacian over the faces' edges."""
    from types import SimpleNamespace

    from slopekp.config import TrainConfig
    from slopekp.mesh import procedural_bird
    from slopekp.train.stage2 import shape_priors

    tmpl = procedural_bird()
    verts, faces = tmpl.verts, tmpl.faces

    def brute(x):  # mean over vertices of ||deg(v) x_v - sum of neighbours||
        nbrs = [set() for _ in range(x.shape[0])]
        for a, b, c in faces.tolist():
            for u, v in ((a, b), (b, c), (c, a)):
                nbrs[u].add(v)
                nbrs[v].add(u)
        return float(torch.stack([len(n) * x[i] - x[list(n)].sum(0) for i, n in enumerate(nbrs)]).norm(dim=1).mean())

    bump = torch.zeros_like(verts)
    bump[7] = torch.tensor([0.0, 0.05, 0.0])
    for shift in (torch.tensor([0.1, -0.2, 0.3]), bump):
        moved = (verts + shift)[None]
        pred = SimpleNamespace(verts=moved, delta_v=torch.zeros_like(moved))
        for of, want in (("mesh", brute(verts + shift)), ("deformation", brute(shift.expand_as(verts)))):
            w = TrainConfig(laplacian_weight=2.0, laplacian_of=of)
            got = float(shape_priors(pred, faces, verts, w)["laplacian"])
            assert got == pytest.approx(2.0 * want, rel=1e-5, abs=1e-7), (of, shift)
    # the translated template: nothing to smooth in its deformation, the template's curvature in the mesh
    pred = SimpleNamespace(verts=(verts + 0.1)[None], delta_v=torch.zeros(1, *verts.shape))
    assert float(shape_priors(pred, faces, verts, TrainConfig(laplacian_of="deformation"))["laplacian"]) < 1e-6
    assert float(shape_priors(pred, faces, verts, TrainConfig(laplacian_of="mesh"))["laplacian"]) > 1e-3
