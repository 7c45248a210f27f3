"""CameraMultiplex store: grid, offsets, per-image Adam, scores, ids/flips/crops, top-k, merge, I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from slopekp.data.cub import FLIP_ID_BASE
from slopekp.geometry.camera import project_points
from slopekp.geometry.rotations import quat_to_rotmat
from slopekp.mesh import template_fingerprint
from slopekp.train.camera_adam import adam_update, suppress_gradient_noise
from slopekp.train.hypotheses import (
    OffsetSettings,
    apply_offsets,
    hypothesis_cameras,
    hypothesis_mirrors,
    mirror_representatives,
)
from slopekp.train.multiplex import CameraMultiplex, MissingImageError, split_image_ids
from slopekp.train.scores import best_hypothesis, hypothesis_rotation_errors, hypothesis_scores, minmax_rescale


def _rot(axis: str, deg: float) -> Rotation:
    v = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}[axis]
    return Rotation.from_rotvec(np.radians(deg) * np.asarray(v, dtype=float))


def _random_store(n=5, P=4, seed=0, fingerprint="fp") -> CameraMultiplex:
    g = torch.Generator().manual_seed(seed)
    store = CameraMultiplex(P, fingerprint)
    q = torch.randn(n, P, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    s = 0.5 + torch.rand(n, P, 1, generator=g)
    t = 0.2 * torch.randn(n, P, 2, generator=g)
    scores = torch.softmax(torch.randn(n, P, generator=g), -1)
    crops = torch.cat([0.01 + 0.01 * torch.rand(n, 1, generator=g), -torch.rand(n, 2, generator=g) - 0.5], -1)
    store.add(torch.arange(n) * 3, torch.cat([s, t, q], -1), scores, crops)
    return store


# ------------------------------------------------------------------------------------------------ grid
def test_hypothesis_grid_matches_scipy_composition():
    cams = hypothesis_cameras(8, 5, 1, scale=0.8, base_bias_deg=90)
    assert cams.shape == (40, 7)
    assert torch.allclose(cams[:, 0], torch.full((40,), 0.8)) and (cams[:, 1:3] == 0).all()
    R = quat_to_rotmat(cams[:, 3:].double()).numpy()
    for a in range(8):
        for e, el in enumerate([-60, -30, 0, 30, 60]):
            ref = (_rot("x", el) * _rot("y", 45 * a) * _rot("x", 90)).as_matrix()
            np.testing.assert_allclose(R[a * 5 + e], ref, atol=1e-6)


def test_hypothesis_grid_cyclo_and_biases():
    cams = hypothesis_cameras(2, 1, 3, scale=1.0, base_bias_deg=0, az_bias_deg=10, el_bias_deg=20)
    R = quat_to_rotmat(cams[:, 3:].double()).numpy()
    for a in range(2):
        for c in range(3):
            ref = (_rot("z", 120 * c) * _rot("x", 20) * _rot("y", 10 + 180 * a)).as_matrix()
            np.testing.assert_allclose(R[a * 3 + c], ref, atol=1e-6)


def test_convention_head_view_base_rotation():
    # az = el = 0 is the +90° x rotation: the beak (−y) comes towards the camera (smaller depth), back up
    cam = hypothesis_cameras(8, 5)[2]  # a = 0, e = 2 (el = 0)
    pts = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    p = project_points(pts, cam)
    assert p[0, 2] < 5.0 - 0.7  # beak closer than the centre
    assert p[1, 1] < -0.7  # back projects upwards (y down in NDC)


def test_hypothesis_mirrors_pair_each_grid_view_with_its_silhouette_twin():
    """The depth mirror of ``R`` is ``Z·R·D`` (METHOD §2.3): on the default grid that is the view at
    ``(180° − az, −el)``; the two side views at zero elevation are their own mirrors. Checked on rotation matrices."""
    cams = hypothesis_cameras(8, 5)
    mirror_of = hypothesis_mirrors(cams)
    R = quat_to_rotmat(cams[:, 3:].double()).numpy()
    Z, D = np.diag([1.0, 1.0, -1.0]), np.diag([-1.0, 1.0, 1.0])
    for a in range(8):
        for e in range(5):
            i, j = a * 5 + e, ((4 - a) % 8) * 5 + (4 - e)
            assert int(mirror_of[i]) == j
            np.testing.assert_allclose(R[j], Z @ R[i] @ D, atol=1e-6)
    assert [i for i in range(40) if int(mirror_of[i]) == i] == [2 * 5 + 2, 6 * 5 + 2]  # az 90° and 270°, el 0
    assert mirror_representatives(mirror_of).tolist() == [*range(13), *range(25, 33)]
    # grids that are not closed under the mirror: an odd number of azimuths, an azimuth or elevation bias
    assert hypothesis_mirrors(hypothesis_cameras(7, 5)) is None
    assert hypothesis_mirrors(hypothesis_cameras(8, 5, az_bias_deg=10)) is None
    assert hypothesis_mirrors(hypothesis_cameras(8, 5, el_bias_deg=5)) is None
    # roll bins keep their roll
    cams = hypothesis_cameras(4, 3, 2)
    mirror_of = hypothesis_mirrors(cams)
    R = quat_to_rotmat(cams[:, 3:].double()).numpy()
    for i in range(cams.shape[0]):
        np.testing.assert_allclose(R[int(mirror_of[i])], Z @ R[i] @ D, atol=1e-6)


@pytest.mark.parametrize("bad", [{"num_az": 0}, {"num_el": 2.5}, {"scale": 0.0}])
def test_hypothesis_grid_bad_input(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        hypothesis_cameras(**bad)


# --------------------------------------------------------------------------------------------- offsets
def test_apply_offsets_zero_is_identity_and_matches_scipy():
    base = _random_store(n=2, P=3).base
    settings = OffsetSettings(gain=0.5, az_range_deg=30, el_range_deg=20, cr_range_deg=60)
    assert torch.allclose(apply_offsets(base, torch.zeros(2, 3, 6), settings), base, atol=1e-7)
    off = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))
    out = apply_offsets(base, off, settings)
    assert torch.allclose(out[..., :3], base[..., :3] + off[..., :3])
    ang = np.tanh(0.5 * off[..., 3:].double().numpy()) * np.array([30, 20, 60])
    Rb = quat_to_rotmat(base[..., 3:].double()).numpy()
    R = quat_to_rotmat(out[..., 3:].double()).numpy()
    for i in range(2):
        for p in range(3):
            az, el, cr = ang[i, p]
            ref = (_rot("z", cr) * _rot("x", el) * _rot("y", az)).as_matrix() @ Rb[i, p]
            np.testing.assert_allclose(R[i, p], ref, atol=1e-5)


def test_offset_angles_are_bounded_by_ranges():
    base = hypothesis_cameras(1, 1, base_bias_deg=0)  # identity rotation
    off = torch.tensor([[0.0, 0, 0, 1e4, 0, 0]])
    q = apply_offsets(base, off, OffsetSettings(gain=0.1, az_range_deg=30))[0, 3:]
    assert math.degrees(2 * math.acos(float(q[0]))) == pytest.approx(30.0, abs=1e-3)


# ------------------------------------------------------------------------------------------------ Adam
def test_adam_update_matches_torch_adam():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    p, m, v, step = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0), torch.zeros(3, dtype=torch.int64)
    for _ in range(7):
        grad = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
        ref.grad = grad.clone()
        opt.step()
        p, m, v, step = adam_update(p, grad, m, v, step, lr=0.05)
    assert (step == 7).all()
    torch.testing.assert_close(p, ref.detach(), rtol=1e-10, atol=1e-12)


def test_per_image_adam_only_advances_batch_rows():
    store = _random_store(n=5, P=4)
    crops = store.crops
    before = [t.clone() for t in (store.offsets, store.exp_avg, store.exp_avg_sq, store.adam_step_count)]
    # an independent reference: torch.optim.Adam on row 1 alone, fed the same gradients
    ref = store.offsets[1].clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.1)
    g = torch.Generator().manual_seed(3)
    for it in range(4):
        ids = torch.tensor([3, 9]) if it == 0 else torch.tensor([3])  # rows 1 and 3, then row 1 only
        lk = store.lookup(ids, crops[store.rows(ids)])
        w = torch.randn(lk.cameras.shape, generator=g)
        (lk.cameras * w).sum().backward()
        ref.grad = lk.offsets.grad[0].clone()
        opt.step()
        store.adam_step(lk, lr=0.1)
    assert store.adam_step_count.tolist() == [0, 4, 0, 1, 0]
    for b, a in zip(before, (store.offsets, store.exp_avg, store.exp_avg_sq, store.adam_step_count)):
        for row in (0, 2, 4):
            assert torch.equal(a[row], b[row])
    assert not torch.equal(store.offsets[3], before[0][3])
    torch.testing.assert_close(store.offsets[1], ref.detach(), rtol=1e-5, atol=1e-6)


def test_adam_step_sums_mirrored_pair_into_one_step():
    store = _random_store(n=2, P=2)
    ids = torch.tensor([3, FLIP_ID_BASE - 3])
    lk = store.lookup(ids, store.crops[[1, 1]])
    lk.cameras[..., 0].sum().backward()  # d/d(δs) is the crop scale factor k = 1 for both samples
    store.adam_step(lk, lr=0.1)
    assert store.adam_step_count.tolist() == [0, 1]
    # Adam's first step moves each coordinate by lr·sign(grad): the summed scale gradient is positive
    torch.testing.assert_close(store.offsets[1, :, 0], torch.full((2,), -0.1))


def test_adam_step_without_backward_is_an_error():
    store = _random_store(n=1, P=2)
    lk = store.lookup(torch.tensor([0]), store.crops)
    with pytest.raises(ValueError, match="no gradient"):
        store.adam_step(lk, lr=0.1)


# ---------------------------------------------------------------------------------------------- scores
def test_scores_hand_values():
    loss = torch.tensor([[0.2, 0.4, 0.3], [1.0, 1.0, 1.0]])
    sc = hypothesis_scores(loss, peakiness=20.0)
    w = np.exp(-20 * np.array([0.0, 1.0, 0.5]) * (0.2 / (0.2 + 1e-6)))
    np.testing.assert_allclose(sc[0].numpy(), w / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(sc[1].numpy(), np.full(3, 1 / 3), rtol=1e-6)
    assert torch.allclose(sc.sum(-1), torch.ones(2))
    assert torch.allclose(minmax_rescale(torch.tensor([2.0, 4.0]), eps=0.0), torch.tensor([0.0, 1.0]))


def test_scores_reject_nan():
    with pytest.raises(ValueError, match="NaN"):
        hypothesis_scores(torch.tensor([[0.1, float("nan")]]))


def test_rotation_errors_against_scipy():
    store = _random_store(n=3, P=4)
    gt = store.base[:, 0]
    err = hypothesis_rotation_errors(store.base, gt).numpy()
    for i in range(3):
        for p in range(4):
            qa, qb = store.base[i, p, 3:].double().numpy(), gt[i, 3:].double().numpy()
            ref = (Rotation.from_quat(qa[[1, 2, 3, 0]]).inv() * Rotation.from_quat(qb[[1, 2, 3, 0]])).magnitude()
            assert err[i, p] == pytest.approx(ref, abs=1e-3)


# ----------------------------------------------------------------------------------- ids, flips, crops
def test_split_ids():
    info = split_image_ids(torch.tensor([0, 5, FLIP_ID_BASE - 5, FLIP_ID_BASE]))
    assert info.canonical.tolist() == [0, 5, 5, 0] and info.flipped.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="image ids"):
        split_image_ids(torch.tensor([-1]))


def test_mirrored_id_reads_reflected_cameras_and_projects_mirrored_points():
    store = _random_store(n=3, P=4)
    pts = torch.randn(10, 3, generator=torch.Generator().manual_seed(4))
    crop = store.crops[2:3]
    cams = store.cameras(torch.tensor([6]), crop)[0]
    cams_f = store.cameras(torch.tensor([FLIP_ID_BASE - 6]), crop)[0]
    p, pf = (
        project_points(pts, cams[:, None]),
        project_points(pts * torch.tensor([-1.0, 1, 1]), cams_f[:, None]),
    )
    # the mirrored image of the mirrored object: x → −x, y and depth unchanged
    torch.testing.assert_close(pf, p * torch.tensor([-1.0, 1, 1]), atol=1e-5, rtol=1e-5)
    assert 6 in store and FLIP_ID_BASE - 6 in store and 7 not in store


def test_add_through_mirrored_id_stores_unflipped_cameras():
    a, b = _random_store(n=1, P=3), CameraMultiplex(3, "fp")
    crop = a.crops
    b.add(torch.tensor([FLIP_ID_BASE]), a.cameras(torch.tensor([FLIP_ID_BASE]), crop), a.scores, crop)
    torch.testing.assert_close(b.base, a.base)


def test_recrop_reexpresses_cameras_through_original_pixels():
    store = _random_store(n=1, P=3)
    pts = torch.randn(7, 3, generator=torch.Generator().manual_seed(5))
    crop_from = store.crops[0]
    crop_to = torch.tensor([0.02, -1.3, -0.7])
    p_from = project_points(pts, store.cameras(torch.tensor([0]), crop_from[None])[0][:, None])[..., :2]
    p_to = project_points(pts, store.cameras(torch.tensor([0]), crop_to[None])[0][:, None])[..., :2]
    u = (p_from - crop_from[1:]) / crop_from[0]  # original-image pixels
    torch.testing.assert_close(p_to, crop_to[0] * u + crop_to[1:], atol=1e-4, rtol=1e-4)


def test_missing_id_is_a_clear_error():
    store = _random_store(n=2, P=2)
    with pytest.raises(MissingImageError, match="not in the camera multiplex.*: 7"):
        store.lookup(torch.tensor([0, 7]), torch.zeros(2, 3) + 0.01)
    assert issubclass(MissingImageError, ValueError)


def test_add_validates_input():
    store = _random_store(n=2, P=2)
    cam, sc, cr = store.base[:1], store.scores[:1], store.crops[:1]
    with pytest.raises(ValueError, match="already in the camera multiplex"):
        store.add(torch.tensor([3]), cam, sc, cr)
    store.add(torch.tensor([3]), cam, sc, cr, overwrite=True)  # allowed with overwrite
    with pytest.raises(ValueError, match="cameras must have shape"):
        store.add(torch.tensor([100]), cam[:, :1], sc, cr)
    with pytest.raises(ValueError, match="repeated"):
        store.add(torch.tensor([100, FLIP_ID_BASE - 100]), store.base, store.scores, store.crops)
    with pytest.raises(ValueError, match="NaN"):
        store.add(torch.tensor([100]), cam * float("nan"), sc, cr)


def test_store_grows_past_initial_capacity():
    store = CameraMultiplex(2, "fp")
    cams = hypothesis_cameras(2, 1).expand(1, 2, 7)
    for i in range(40):
        store.add(torch.tensor([i]), cams + i, torch.full((1, 2), 0.5), torch.tensor([[0.01, -1.0, -1.0]]))
    assert len(store) == 40 and store.rows(torch.tensor([39, 0])).tolist() == [39, 0]
    assert torch.allclose(store.base[17], cams[0] + 17)


# -------------------------------------------------------------------------------------- pruning, merge
def test_best_camera_and_top_k():
    store = _random_store(n=4, P=5)
    crops = store.crops
    ids = store.ids
    best = store.best_cameras(ids, crops)
    order = store.scores.argsort(-1, descending=True)
    for i in range(4):
        torch.testing.assert_close(best[i], store.base[i, order[i, 0]])
    top = store.top_k(2)
    assert top.num_hypotheses == 2 and len(top) == 4
    for i in range(4):
        torch.testing.assert_close(top.base[i], store.base[i, order[i, :2]])
        sc = store.scores[i, order[i, :2]]
        torch.testing.assert_close(top.scores[i], sc / sc.sum())
    torch.testing.assert_close(top.best_cameras(ids, crops), best)
    with pytest.raises(ValueError, match="k must be"):
        store.top_k(6)


def test_merge():
    a, b = _random_store(n=3, seed=0), _random_store(n=4, seed=1)
    with pytest.raises(ValueError, match="in both stores"):
        a.merge(b)
    m = a.merge(b, on_conflict="keep_first")
    assert sorted(m.ids.tolist()) == [0, 3, 6, 9] and len(m) == 4
    torch.testing.assert_close(m.base[m.rows(torch.tensor([3]))], a.base[1:2])
    torch.testing.assert_close(m.base[m.rows(torch.tensor([9]))], b.base[3:4])
    m2 = a.merge(b, on_conflict="keep_second")
    torch.testing.assert_close(m2.base[m2.rows(torch.tensor([3]))], b.base[1:2])
    with pytest.raises(ValueError, match="fingerprint"):
        a.merge(_random_store(n=1, fingerprint="other"))
    with pytest.raises(ValueError, match="P=5"):
        a.merge(_random_store(n=1, P=5))


def test_merge_refuses_stores_of_different_data(tmp_path):
    a, b = _random_store(n=2, seed=0), _random_store(n=1, seed=1)
    a.data_fingerprint, b.data_fingerprint = "aaaa", "bbbb"
    b2 = b.top_k(2)  # derived stores keep the data fingerprint
    assert b2.data_fingerprint == "bbbb"
    with pytest.raises(ValueError, match="different data .*aaaa and bbbb"):
        a.merge(b, on_conflict="keep_first")
    merged = a.merge(b, on_conflict="keep_first", allow_different_data=True)
    assert merged.data_fingerprint == "" and len(merged) == 2
    b.data_fingerprint = "aaaa"
    assert a.merge(b, on_conflict="keep_first").data_fingerprint == "aaaa"
    # the CLI: refused, then allowed; the output file is not replaced without --overwrite
    from slopekp.cli import main

    b.data_fingerprint = "bbbb"
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    argv = ["multiplex", "merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--on-conflict", "keep_first"]
    assert main([*argv, "--out", str(tmp_path / "m.npz")]) == 2
    assert main([*argv, "--out", str(tmp_path / "m.npz"), "--allow-different-data"]) == 0
    assert main([*argv, "--out", str(tmp_path / "m.npz"), "--allow-different-data"]) == 2  # exists
    assert main([*argv, "--out", str(tmp_path / "m.npz"), "--allow-different-data", "--overwrite"]) == 0


def test_gradient_noise_floor_zeroes_only_rounding_noise():
    g = torch.tensor(
        [
            [0.3, 7e-9, -0.1, 2e-3, -4e-11, 5e-3],  # tx and α_el are noise of their groups
            [1e-9, 2e-9, 3e-9, 1e-12, 0.0, 0.0],  # all noise-sized but no larger reference: kept
            [0.2, -0.2, 1e-4, -3e-3, 3e-3, 1e-7],  # 5e-4 and 3e-5 of the group's largest: real
        ]
    )
    out = suppress_gradient_noise(g)
    expect = g.clone()
    expect[0, 1] = expect[0, 4] = 0
    expect[1, 3:] = torch.tensor([1e-12, 0.0, 0.0])  # 1e-12 is the largest of its group
    expect[1, :3] = g[1, :3]
    assert torch.equal(out, expect)
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        suppress_gradient_noise(torch.zeros(2, 5))


def test_noise_floor_keeps_a_symmetric_hypothesis_on_its_symmetry():
    """A side view of a mirror-symmetric bird: turning left or right changes the silhouette alike, so the
    azimuth gradient is zero in exact arithmetic. Without the floor, Adam's first step turns the rounding noise
    into a full step of lr to one side; with it, the azimuth offset stays 0."""
    from slopekp.mesh import load_template
    from slopekp.render import Renderer, RenderSettings
    from slopekp.train.losses import mask_loss

    bird = load_template("procedural")
    side = hypothesis_cameras(4, 1)[1:2]  # az 90°, el 0: a side view
    r = Renderer(RenderSettings(image_size=32))
    with torch.no_grad():  # target: the same view, a little larger and shifted (breaks nothing symmetric)
        target = side.clone()
        target[:, 0] *= 1.1
        target[:, 2] += 0.05
        mask = r(bird.verts, bird.faces, target[:, None]).alpha[:, 0]
    dt = torch.zeros_like(mask)
    off = torch.zeros(1, 1, 6, requires_grad=True)
    st = OffsetSettings()
    loss = mask_loss(r(bird.verts, bird.faces, apply_offsets(side[:, None], off, st)).alpha, mask, dt).sum()
    (g,) = torch.autograd.grad(loss, off)
    # the azimuth gradient is zero up to rounding (whose size and sign depend on the machine) ...
    assert g[0, 0, 3].abs() < 1e-6 * g[0, 0, 3:].abs().max()
    # ... and Adam would turn any rounding noise g into a step lr·g/(|g| + 1e-8); with the floor it stays put
    fl = suppress_gradient_noise(g)
    zeros, step0 = torch.zeros_like(g), torch.zeros(1, dtype=torch.long)
    new = adam_update(off.detach(), fl, zeros, zeros, step0, 0.1)
    assert new.param[0, 0, 3] == 0 and new.param[0, 0, 0].abs() > 0.09  # while the scale takes a full step


def test_best_hypothesis_breaks_ties_by_index():
    s = torch.tensor([[0.1, 0.45, 0.45 * (1 + 1e-6), 0.0], [0.5, 0.1, 0.2, 0.6], [0.25, 0.25, 0.25, 0.25]])
    assert best_hypothesis(s).tolist() == [1, 3, 0]
    assert torch.equal(best_hypothesis(s[:, [0, 2, 1, 3]]), torch.tensor([1, 3, 0]))  # same winner by index


def test_rebase_keeps_cameras_and_resets_offsets():
    store = _random_store(n=2, P=3)
    lk = store.lookup(store.ids, store.crops)
    lk.cameras.square().sum().backward()
    store.adam_step(lk, lr=0.3)
    before = store.computed_cameras()
    new = store.rebase(OffsetSettings(gain=1.0))
    torch.testing.assert_close(new.base, before)
    assert (new.offsets == 0).all() and (new.adam_step_count == 0).all() and new.settings.gain == 1.0


# ----------------------------------------------------------------------------------------- persistence
def test_save_load_roundtrip(tmp_path):
    store = _random_store(n=3, P=4)
    lk = store.lookup(store.ids[:2], store.crops[:2])
    lk.cameras.square().sum().backward()
    store.adam_step(lk, lr=0.1)
    path = tmp_path / "mp.npz"
    store.save(path)
    loaded = CameraMultiplex.load(path, fingerprint="fp", num_hypotheses=4)
    for a, b in zip(store._fields(), loaded._fields()):
        assert torch.equal(a, b)
    assert loaded.settings == store.settings
    with np.load(path, allow_pickle=False) as z:  # the documented arrays, no pickle needed
        np.testing.assert_allclose(z["cameras"], store.computed_cameras().numpy())
        assert str(z["template_fingerprint"]) == "fp" and int(z["num_hypotheses"]) == 4
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


def test_data_fingerprint_roundtrip_and_older_stores(tmp_path):
    store = _random_store(n=2)
    store.data_fingerprint = "0123abcd"
    store.save(tmp_path / "a.npz")
    assert CameraMultiplex.load(tmp_path / "a.npz").data_fingerprint == "0123abcd"
    with np.load(tmp_path / "a.npz") as z:  # a store written before the field existed
        np.savez(tmp_path / "old.npz", **{k: z[k] for k in z.files if k != "data_fingerprint"})
    assert CameraMultiplex.load(tmp_path / "old.npz").data_fingerprint == ""


def test_load_rejects_other_template_other_P_and_garbage(tmp_path):
    path = tmp_path / "mp.npz"
    _random_store(n=2, P=4).save(path)
    with pytest.raises(ValueError, match="template fingerprint 'fp'.*'xyz'"):
        CameraMultiplex.load(path, fingerprint="xyz")
    with pytest.raises(ValueError, match="P=4 hypotheses.*P=40"):
        CameraMultiplex.load(path, num_hypotheses=40)
    with pytest.raises(FileNotFoundError, match="not found"):
        CameraMultiplex.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        CameraMultiplex.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", format=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        CameraMultiplex.load(tmp_path / "obj.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a camera multiplex"):
        CameraMultiplex.load(tmp_path / "other.npz")


def test_template_fingerprint_distinguishes_meshes():
    v = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    f = torch.tensor([[0, 1, 2], [2, 3, 4]])
    fp = template_fingerprint(v, f)
    assert len(fp) == 16 and fp == template_fingerprint(v.clone(), f.clone())
    assert fp != template_fingerprint(v * 1.01, f) and fp != template_fingerprint(v, f.flip(-1))
