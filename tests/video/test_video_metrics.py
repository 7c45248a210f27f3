"""DAVIS J statistics against hand-computed cases (issue 12, DATA.md §8)."""

from __future__ import annotations

import numpy as np
import pytest

from slopekp.eval.video_metrics import (
    JStats,
    aggregate,
    decay_bins,
    j_per_frame,
    region_similarity,
    sequence_statistics,
)


def test_region_similarity_hand_cases():
    z = np.zeros((4, 5), bool)
    a = z.copy()
    a[1:3, 1:4] = True  # 6 pixels
    assert region_similarity(z, z) == 1.0  # both empty
    assert region_similarity(a, z) == 0.0 and region_similarity(z, a) == 0.0  # one empty
    b = z.copy()
    b[1:3, 2:5] = True  # 6 pixels, 4 shared -> 4 / 8
    assert region_similarity(a, b) == pytest.approx(0.5)
    void = z.copy()
    void[:, 4] = True  # drops 2 of b's pixels from the union: 4 / 6
    assert region_similarity(a, b, void) == pytest.approx(4 / 6)
    # void covering everything that differs: both "empty" outside void only if nothing is left
    assert region_similarity(a, a, void) == 1.0
    frames = j_per_frame(np.stack([z, a, a]), np.stack([z, z, b]), np.stack([z, z, void]))
    np.testing.assert_allclose(frames, [1.0, 0.0, 4 / 6])
    with pytest.raises(ValueError, match="differ in size"):
        region_similarity(a, np.zeros((5, 5), bool))


def test_recall_is_strict_and_nan_is_a_miss():
    s = sequence_statistics([0.5, 0.5000001, 1.0, 0.2])
    assert s.recall == pytest.approx(0.5) and s.mean == pytest.approx((0.5 + 0.5000001 + 1.2) / 4)
    s = sequence_statistics([np.nan, 0.9, 0.9, 0.9])
    assert s.recall == pytest.approx(0.75) and s.mean == pytest.approx(0.9)  # NaN: out of the mean, a miss


@pytest.mark.parametrize(("n", "bins"), [
    (3, [(0, 1), (1, 1), (1, 2), (2, 2)]),          # linspace(1, 3, 5) = 1, 1.5, 2, 2.5, 3: halves round up
    (7, [(0, 2), (2, 3), (3, 5), (5, 6)]),          # 1, 2.5, 4, 5.5, 7
    (13, [(0, 3), (3, 6), (6, 9), (9, 12)]),        # 1, 4, 7, 10, 13
    (300, [(0, 75), (75, 150), (150, 224), (224, 299)]),  # 1, 75.75, 150.5, 225.25, 300
])  # fmt: skip
def test_decay_bins_by_hand(n, bins):
    assert decay_bins(n) == bins


def test_decay_over_300_frames_is_not_the_toolkits_uint8_overflow():
    v = np.concatenate([np.full(150, 0.9), np.full(150, 0.3)])
    s = sequence_statistics(v)
    # bin 0 = frames 0..75 (all 0.9), bin 3 = frames 224..299 (all 0.3)
    assert s.decay == pytest.approx(0.6)
    ids_uint8 = np.round(np.linspace(1, 300, 5) + 1e-10).astype(np.uint8) - 1  # the toolkit's cast
    assert ids_uint8[-1] != 299  # it would score frames 222..43, an empty slice


def test_decay_and_frame_conventions_hand_case():
    v = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.9]
    s = sequence_statistics(v)  # 7 frames: bins (0,2) and (5,6)
    assert s.decay == pytest.approx(np.mean([1.0, 0.8, 0.6]) - np.mean([0.0, 0.9]))
    assert s.frames == 7
    d = sequence_statistics(v, "drop-first-last")  # 0.8 .. 0.0: 5 frames, bins (0,1) and (3,4)
    assert d.frames == 5 and d.mean == pytest.approx(0.4)
    assert d.decay == pytest.approx(np.mean([0.8, 0.6]) - np.mean([0.2, 0.0]))
    assert d.recall == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="at least 3 frames"):
        sequence_statistics([1.0, 1.0], "drop-first-last")
    with pytest.raises(ValueError, match="unknown frame convention"):
        sequence_statistics(v, "first")


def test_aggregate_is_the_mean_over_objects():
    a = JStats(0.8, 1.0, 0.1, 10)
    b = JStats(0.4, 0.0, -0.1, 20)
    g = aggregate([a, b])
    assert (g.mean, g.recall, g.decay, g.frames) == (pytest.approx(0.6), 0.5, pytest.approx(0.0), 30)
    with pytest.raises(ValueError):
        aggregate([])
