"""Stage III's pose targets and their self-training re-selection (:mod:`slopekp.train.targets`, issue 23)."""

from __future__ import annotations

import pytest
import torch

from slopekp.geometry.camera import depth_mirror_cameras, reflect_camera
from slopekp.geometry.rotations import quat_geodesic_angle, quat_multiply, random_quat
from slopekp.train.multiplex import FLIP_ID_BASE, CameraMultiplex
from slopekp.train.targets import PoseTargets

P = 6


def _store(n: int = 5, seed: int = 0) -> CameraMultiplex:
    """``n`` images with ``P`` random hypotheses each; scores ``P, P-1, ..., 1`` (hypothesis 0 best), except
    image 1 whose hypothesis 3 is best; a crop of its own per image."""
    g = torch.Generator().manual_seed(seed)
    q = random_quat(n * P, generator=g).view(n, P, 4)
    st = torch.cat([0.5 + 0.2 * torch.rand(n, P, 1, generator=g), 0.1 * torch.randn(n, P, 2, generator=g)], -1)
    scores = torch.arange(P, 0, -1, dtype=torch.float32).expand(n, P).clone()
    scores[1] = torch.tensor([1.0, 2, 3, 9, 4, 5])
    crops = torch.cat([1 + 0.1 * torch.rand(n, 1, generator=g), 0.05 * torch.randn(n, 2, generator=g)], -1)
    store = CameraMultiplex(P, "fp")
    store.add(torch.arange(10, 10 + n), torch.cat([st, q], -1), scores / scores.sum(-1, keepdim=True), crops)
    return store


def _near(q: torch.Tensor, deg: float, seed: int) -> torch.Tensor:
    """``q`` turned by ``deg`` degrees about a random axis."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(q.shape[0], 3, generator=g), dim=-1)
    half = torch.deg2rad(torch.tensor(deg / 2))
    return quat_multiply(q, torch.cat([half.cos().expand(q.shape[0], 1), half.sin() * axis], -1))


def test_targets_start_as_the_best_cameras_with_the_chosen_mirrors():
    store = _store()
    ids, crops = store.ids, store.crops + 0.01
    torch.testing.assert_close(PoseTargets(store).cameras(ids, crops), store.best_cameras(ids, crops))
    mirror_of = torch.zeros(20, dtype=torch.bool)
    mirror_of[[11, 13]] = True
    t = PoseTargets.from_id_mirrors(store, mirror_of)
    cams, best = t.cameras(ids, crops), store.best_cameras(ids, crops)
    flagged = torch.tensor([False, True, False, True, False])
    short = PoseTargets.from_id_mirrors(store, mirror_of[:12])  # ids 12.. are not in the data set's flags
    assert short.mirrored.tolist() == [False, True, False, False, False]
    torch.testing.assert_close(cams[flagged], depth_mirror_cameras(best[flagged]))
    torch.testing.assert_close(cams[~flagged], best[~flagged])
    # a mirrored sample reads the reflection of its image's target (the depth mirror commutes with it)
    flipped = FLIP_ID_BASE - ids
    seen, want = t.cameras(flipped, crops), reflect_camera(cams)
    torch.testing.assert_close(seen[:, :3], want[:, :3])
    assert quat_geodesic_angle(seen[:, 3:], want[:, 3:]).max() < 1e-5  # the same rotation (q or -q)


def test_reselect_picks_the_candidate_nearest_a_planted_prediction():
    store = _store()
    ids, crops = store.ids, store.crops
    hyp = store.cameras(ids, crops)  # (5, P, 7)
    t = PoseTargets(store)
    # image 0: near its 2nd-ranked hypothesis (index 1); image 1: near the depth mirror of its 3rd-ranked (index 4);
    # image 2: near its 5th-ranked (index 4), outside the top 3, so not a candidate; image 3: near the best one's
    # depth mirror; image 4: its best hypothesis exactly
    planted = torch.stack([hyp[0, 1], depth_mirror_cameras(hyp[1, 4]), hyp[2, 4], depth_mirror_cameras(hyp[3, 0]),
                           hyp[4, 0]])  # fmt: skip
    planted = torch.cat([planted[:, :3], _near(planted[:, 3:], 2.0, seed=1)], -1)
    done = t.reselect(ids, planted, crops, top=3)
    assert t.choice.tolist()[:2] == [1, 4] and t.mirrored.tolist()[:2] == [False, True]
    assert t.choice[2] in (0, 1, 2)  # the nearest of the top three (and their mirrors), never hypothesis 4
    cand = torch.cat([hyp[2, :3], depth_mirror_cameras(hyp[2, :3])])
    nearest = quat_geodesic_angle(cand[:, 3:], planted[2:3, 3:].expand(6, 4)).argmin()
    assert (int(t.choice[2]), bool(t.mirrored[2])) == (int(nearest) % 3, bool(nearest >= 3))
    assert (int(t.choice[3]), bool(t.mirrored[3])) == (0, True)
    assert (int(t.choice[4]), bool(t.mirrored[4])) == (0, False)
    assert done.images == 5 and done.changed == 4 and done.mirrored_share == pytest.approx(2 / 5)
    # the training cameras follow the new choice, in any crop
    new = t.cameras(ids, crops + 0.02)
    assert quat_geodesic_angle(new[:, 3:], planted[:, 3:]).rad2deg()[[0, 1, 3, 4]].max() < 2.5
    # with top=1, only the best hypothesis and its mirror remain
    t1 = PoseTargets(store)
    t1.reselect(ids, planted, crops, top=1)
    assert (t1.choice == torch.tensor([0, 3, 0, 0, 0])).all()


def test_reselect_state_round_trip_and_bad_input():
    store = _store()
    t = PoseTargets(store)
    t.reselect(store.ids, store.cameras(store.ids, store.crops)[:, 2], store.crops, top=4)
    other = PoseTargets(store)
    other.load_state_dict(t.state_dict())
    assert torch.equal(other.choice, t.choice) and torch.equal(other.mirrored, t.mirrored)
    with pytest.raises(ValueError, match="5 images"):
        other.load_state_dict({"choice": t.choice[:3], "mirrored": t.mirrored[:3]})
    with pytest.raises(ValueError, match="outside"):
        other.load_state_dict({"choice": t.choice + P, "mirrored": t.mirrored})
    with pytest.raises(ValueError, match="unflipped"):
        t.reselect(FLIP_ID_BASE - store.ids, torch.zeros(5, 7), store.crops, top=2)
    with pytest.raises(ValueError, match="top"):
        t.reselect(store.ids, torch.zeros(5, 7), store.crops, top=0)
    with pytest.raises(ValueError, match=r"\(B, 7\)"):
        t.reselect(store.ids, torch.zeros(4, 7), store.crops, top=2)
