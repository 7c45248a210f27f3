"""DAVIS boundary measure F against hand-made boundary maps and a brute-force reference (the davis2017-evaluation
toolkit's definition: ``seg2bmap``, a disk of ``ceil(0.008 · diagonal)`` pixels, P, R and their edge cases)."""

from __future__ import annotations

import numpy as np
import pytest
from video_reference import blobs, reference_boundary, reference_f, reference_pr

from slopekp.eval.video_metrics import (
    boundary_map,
    boundary_measure,
    boundary_precision_recall,
    boundary_radius,
    disk,
    f_per_frame,
    jf_mean,
)


def picture(text: str) -> np.ndarray:
    """``#`` → True, ``.`` → False, one row per line."""
    return np.array([[c == "#" for c in line] for line in text.strip().splitlines()], bool)


# ---------------------------------------------------------------------------------------------------------------
# (a) boundary maps by hand
# ---------------------------------------------------------------------------------------------------------------
def test_boundary_of_a_5x6_rectangle_is_the_ring_counted_by_hand():
    m = np.zeros((10, 12), bool)
    m[2:7, 3:9] = True  # 5 rows, 6 columns
    # the rectangle's last row and column, and the background row above it and column left of it
    expected = picture("""
        ............
        ..#######...
        ..#.....#...
        ..#.....#...
        ..#.....#...
        ..#.....#...
        ..#######...
        ............
        ............
        ............
    """.replace(" ", ""))  # fmt: skip
    b = boundary_map(m)
    assert b.dtype == bool and b.shape == m.shape
    np.testing.assert_array_equal(b, expected)
    assert b.sum() == 22 == 2 * (5 + 6)


def test_the_image_edge_is_no_boundary():
    m = np.zeros((4, 5), bool)
    m[2:, 3:] = True  # a 2x2 square in the bottom-right corner
    expected = picture("""
        .....
        ..###
        ..#..
        ..#..
    """.replace(" ", ""))  # fmt: skip
    np.testing.assert_array_equal(boundary_map(m), expected)
    m = np.zeros((4, 5), bool)
    m[0, 0] = True  # the top-left pixel: no background above or left of it in the image, so only itself
    np.testing.assert_array_equal(boundary_map(m), picture("#....\n.....\n.....\n....."))
    assert not boundary_map(np.ones((4, 5), bool)).any()  # a mask filling the frame has no boundary
    assert not boundary_map(np.zeros((4, 5), bool)).any()
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    np.testing.assert_array_equal(boundary_map(one), picture(".....\n.##..\n.##..\n.....\n....."))
    np.testing.assert_array_equal(boundary_map(np.array([[True, False, False, True]])), [[True, False, True, False]])
    np.testing.assert_array_equal(boundary_map(np.array([[True], [False]])), [[True], [False]])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        boundary_map(np.zeros((2, 3, 4), bool))


@pytest.mark.parametrize("seed", range(6))
def test_boundary_map_matches_the_brute_force(seed):
    rng = np.random.default_rng(seed)
    m = blobs(rng, (23, 31), 4) if seed else rng.random((23, 31)) < 0.5  # seed 0: noise
    np.testing.assert_array_equal(boundary_map(m), reference_boundary(m))


# ---------------------------------------------------------------------------------------------------------------
# the disk and the tolerance
# ---------------------------------------------------------------------------------------------------------------
def test_disk_is_skimages_disk():
    # skimage.morphology.disk(r): the offsets with dx² + dy² <= r², written out by hand for r = 0 .. 3
    assert disk(0).tolist() == [[1]]
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    assert disk(3).tolist() == [[0, 0, 0, 1, 0, 0, 0],
                                [0, 1, 1, 1, 1, 1, 0],
                                [0, 1, 1, 1, 1, 1, 0],
                                [1, 1, 1, 1, 1, 1, 1],
                                [0, 1, 1, 1, 1, 1, 0],
                                [0, 1, 1, 1, 1, 1, 0],
                                [0, 0, 0, 1, 0, 0, 0]]  # fmt: skip
    assert disk(3).dtype == np.uint8
    for r in range(9):
        d = disk(r)
        assert d.shape == (2 * r + 1, 2 * r + 1) and d.sum() == sum(
            1 for y in range(-r, r + 1) for x in range(-r, r + 1) if x * x + y * y <= r * r
        )
    assert disk(8.0).shape == (17, 17)  # the toolkit passes a float radius
    with pytest.raises(ValueError):
        disk(2.5)


def test_tolerance_is_0_8_percent_of_the_diagonal_rounded_up():
    assert boundary_radius((480, 854)) == 8  # 0.008 * 979.6 = 7.84
    assert boundary_radius((300, 400)) == 4  # exactly 4.0: not rounded up to 5
    assert boundary_radius((48, 64)) == 1
    assert boundary_radius((1080, 1920)) == 18  # 17.6
    assert boundary_radius((10, 10), tolerance=3) == 3  # a tolerance >= 1 is in pixels, as in the toolkit
    with pytest.raises(ValueError):
        boundary_radius((10, 10), tolerance=0)


# ---------------------------------------------------------------------------------------------------------------
# (b) F against the brute force
# ---------------------------------------------------------------------------------------------------------------
def test_f_of_shifted_rectangles_by_hand():
    gt = np.zeros((30, 40), bool)
    gt[5:15, 5:20] = True
    assert boundary_radius(gt.shape) == 1
    for shift, expected in ((0, 1.0), (1, 1.0)):  # within the 1-pixel tolerance: a perfect boundary
        assert boundary_measure(gt, np.roll(gt, shift, axis=1)) == expected
    # moved right by 2 (radius 1: a pixel matches one at most 1 step up, down, left or right). The predicted ring
    # (rows 4..14, columns 6..21, 50 pixels): of its top and bottom rows (16 each) all but column 21 lie on or next
    # to the ground truth's rows (columns 4..19); of its left side (column 6, rows 5..13) only rows 5 and 13 touch
    # those rows; its right side (column 21) nothing. P = (15 + 15 + 2) / 50, and R the same by symmetry
    pred = np.roll(gt, 2, axis=1)
    p, r = boundary_precision_recall(gt, pred)
    assert p == pytest.approx(32 / 50) and r == pytest.approx(32 / 50)
    assert boundary_measure(gt, pred) == pytest.approx(32 / 50)
    assert (p, r) == pytest.approx(reference_pr(gt, pred))
    far = np.roll(gt, 12, axis=0)  # rows 17..26: its ring starts 2 rows below the ground truth's
    assert boundary_measure(gt, far) == 0.0  # no boundary pixel near the other's: P = R = 0 → F = 0


@pytest.mark.parametrize("seed", range(8))
def test_f_matches_the_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    shape = [(40, 60), (75, 130), (64, 64), (33, 47)][seed % 4]  # default radius 1 or 2
    gt = blobs(rng, shape, 3)
    pred = gt.copy() if seed == 7 else blobs(rng, shape, 3)
    if seed % 2:  # a prediction near the ground truth: shifted and with a hole
        pred = np.roll(gt, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
        pred[rng.integers(0, shape[0]) :, : rng.integers(0, shape[1])] = False
    void = None
    if seed in (2, 3):
        void = np.zeros(shape, bool)
        void[: shape[0] // 3, shape[1] // 2 :] = True
    for radius in (None, 1, 2, 5):
        tol = 0.008 if radius is None else radius
        assert boundary_precision_recall(gt, pred, void, tol) == pytest.approx(reference_pr(gt, pred, void, radius),
                                                                               abs=1e-12)  # fmt: skip
        assert boundary_measure(gt, pred, void, tol) == pytest.approx(reference_f(gt, pred, void, radius), abs=1e-12)


def test_f_per_frame_and_jf_mean():
    rng = np.random.default_rng(5)
    gt = np.stack([blobs(rng, (40, 50), 3) for _ in range(3)])
    pred = np.stack([np.roll(g, 3, axis=1) for g in gt])
    void = np.zeros_like(gt)
    void[1, :20] = True
    got = f_per_frame(gt, pred, void)
    np.testing.assert_allclose(got, [reference_f(gt[t], pred[t], void[t]) for t in range(3)], atol=1e-12)
    assert got[0] < 1
    assert jf_mean({"mean": 0.5}, {"mean": 0.7}) == pytest.approx(0.6) and jf_mean(None, {"mean": 1.0}) is None
    with pytest.raises(ValueError):
        f_per_frame(gt[0], pred[0])


# ---------------------------------------------------------------------------------------------------------------
# (c) edge cases and void
# ---------------------------------------------------------------------------------------------------------------
def test_empty_boundaries_follow_the_toolkit():
    z = np.zeros((20, 30), bool)
    a = z.copy()
    a[5:10, 5:12] = True
    assert boundary_precision_recall(z, z) == (1.0, 1.0) and boundary_measure(z, z) == 1.0  # both empty
    assert boundary_precision_recall(a, z) == (1.0, 0.0) and boundary_measure(a, z) == 0.0  # nothing predicted
    assert boundary_precision_recall(z, a) == (0.0, 1.0) and boundary_measure(z, a) == 0.0  # nothing to find
    full = np.ones((20, 30), bool)
    assert boundary_measure(full, z) == 1.0  # a mask filling the frame has no boundary either (as the toolkit)
    with pytest.raises(ValueError, match="one size"):
        boundary_measure(a, np.zeros((20, 31), bool))


def test_void_pixels_are_removed_from_both_masks():
    gt = np.zeros((40, 60), bool)
    gt[10:30, 10:30] = True
    pred = gt.copy()
    pred[10:30, 30:50] = True  # spills 20 columns to the right ...
    void = np.zeros_like(gt)
    void[:, 29:] = True  # ... all of it into void (from the object's last column on)
    assert boundary_measure(gt, pred) < 0.9  # void as background: the spill costs
    assert boundary_measure(gt, pred, void) == 1.0  # void removed from both: the same masks
    assert boundary_measure(gt, pred, void) == reference_f(gt, pred, void)
    assert boundary_measure(gt, gt, np.ones_like(gt)) == 1.0  # all void: both empty
