"""Stage I's fit variants: each hypothesis at its best iterate (``multiplex.best_iterate``) and one fit per pair of
depth-mirrored hypotheses (``multiplex.share_mirrors``), each against a brute-force or full-fit reference."""

from __future__ import annotations

import pytest
import torch
from stage1_testing import mask_dt, perturbed, pruning_case, render_masks

from slopekp.config import load_config
from slopekp.geometry.rotations import quat_geodesic_angle
from slopekp.mesh import load_template
from slopekp.render import Renderer, RenderSettings
from slopekp.train.hypotheses import OffsetSettings, hypothesis_cameras, hypothesis_mirrors, mirror_representatives
from slopekp.train.stage1 import fit_hypotheses, stage1_mirror_pairs


@pytest.fixture(scope="module")
def bird():
    return load_template("procedural")


def test_best_iterate_ends_each_hypothesis_at_its_lowest_loss_against_brute_force(bird):
    """Each hypothesis ends at the iterate of lowest loss: the same as fitting 0, 1, ..., N steps without it (each an
    independent, bit-identical run: same shapes) and keeping, per hypothesis, the run of lowest final loss."""
    init, r, mask, dt = pruning_case(bird)
    kw = dict(settings=OffsetSettings(gain=1.0), lr=0.4)  # a large step: the loss goes up and down
    n = 8
    runs = [fit_hypotheses(bird.verts, bird.faces, r, mask, dt, init, steps=k, best_iterate=False, **kw)
            for k in range(n + 1)]  # fmt: skip
    losses = torch.stack([f.loss[0] for f in runs])  # (n + 1, P)
    at = losses.argmin(0)
    fit = fit_hypotheses(bird.verts, bird.faces, r, mask, dt, init, steps=n, **kw)
    torch.testing.assert_close(fit.loss[0], losses.amin(0), atol=1e-6, rtol=0)
    want = torch.stack([runs[int(k)].cameras[0, p] for p, k in enumerate(at)])
    torch.testing.assert_close(fit.cameras[0], want, atol=1e-5, rtol=0)
    assert (at < n).any()  # the test can fail: some hypothesis was at its best before its last step
    torch.testing.assert_close(runs[n].loss, fit_hypotheses(bird.verts, bird.faces, r, mask, dt, init, steps=n,
                                                            best_iterate=False, **kw).loss)  # fmt: skip


def test_sharing_depth_mirrors_gives_the_fit_of_every_hypothesis(bird):
    """Issue 22: fitting one hypothesis of each depth-mirrored pair and mirroring it gives what fitting both does
    (few steps: the pair's trajectories differ only in float summation order, which Adam amplifies about tenfold a
    step: 0.6° apart after 6 steps)."""
    init = hypothesis_cameras(4, 3)  # az 0/90/180/270, el −45/0/45: pairs (az, el) ↔ (180° − az, −el)
    mirror_of = hypothesis_mirrors(init)
    assert mirror_of is not None and len(mirror_representatives(mirror_of)) == 7
    gt = perturbed(init[4], 0.08, (0.04, -0.03), (9.0, -6.0, 5.0))[None]
    mask = render_masks(bird, gt, 24)
    r = Renderer(RenderSettings(image_size=24))
    kw = dict(settings=OffsetSettings(gain=1.0), lr=0.1, steps=3, best_iterate=False)  # 0.002°, 5e-5 apart
    full = fit_hypotheses(bird.verts, bird.faces, r, mask, mask_dt(mask), init, **kw)
    shared = fit_hypotheses(bird.verts, bird.faces, r, mask, mask_dt(mask), init, mirror_of=mirror_of, **kw)
    angle = torch.rad2deg(quat_geodesic_angle(shared.cameras[0, :, 3:], full.cameras[0, :, 3:]))
    assert angle.max() < 0.02
    torch.testing.assert_close(shared.cameras[0, :, :3], full.cameras[0, :, :3], atol=5e-4, rtol=0)
    torch.testing.assert_close(shared.loss, full.loss, atol=2e-4, rtol=0)
    assert torch.equal(shared.loss, shared.loss[:, mirror_of])  # a pair's scores tie exactly
    assert torch.allclose(shared.scores.sum(-1), torch.ones(1))
    # the test can fail: the hypotheses moved, and a pair's two cameras are far apart
    assert torch.rad2deg(quat_geodesic_angle(full.cameras[0, :, 3:], init[:, 3:])).max() > 1.0
    assert torch.rad2deg(quat_geodesic_angle(init[0, 3:], init[int(mirror_of[0]), 3:])) > 30
    # a pairing that is not the grid's depth mirror is refused
    with pytest.raises(ValueError, match="depth mirror"):
        fit_hypotheses(bird.verts, bird.faces, r, mask, mask_dt(mask), init, mirror_of=torch.arange(12), **kw)
    for bad in (torch.zeros(12, dtype=torch.long), torch.full((12,), 12), torch.arange(6)):
        with pytest.raises(ValueError, match="involution"):
            fit_hypotheses(bird.verts, bird.faces, r, mask, mask_dt(mask), init, mirror_of=bad, **kw)


def test_stage1_shares_mirrors_only_for_a_symmetric_template_and_a_closed_grid(bird):
    cfg = load_config(overrides=["multiplex.num_az=4", "multiplex.num_el=3", "multiplex.share_mirrors=true"])
    init = hypothesis_cameras(4, 3)
    assert torch.equal(stage1_mirror_pairs(cfg.multiplex, bird.verts, bird.faces, init), hypothesis_mirrors(init))
    lopsided = bird.verts + torch.tensor([0.0, 0.0, 0.1]) * (bird.verts[:, :1] > 0)  # the left half raised
    assert stage1_mirror_pairs(cfg.multiplex, lopsided, bird.faces, init) is None
    assert stage1_mirror_pairs(cfg.multiplex, bird.verts, bird.faces, hypothesis_cameras(4, 3, az_bias_deg=5)) is None
    off = load_config().multiplex  # off by default
    assert stage1_mirror_pairs(off, bird.verts, bird.faces, init) is None
