"""Metrics against hand-computed values and independent references (SciPy rotations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from slopekp.eval.metrics import (
    mask_iou,
    mask_iou_soft,
    rotation_error,
    rotation_error_stats,
    rotation_error_up_to_mirror,
)


def _cam(rot: Rotation) -> torch.Tensor:
    x, y, z, w = rot.as_quat()
    return torch.tensor([1.0, 0.0, 0.0, w, x, y, z], dtype=torch.float64)


def test_iou_of_known_shapes():
    a = torch.zeros(10, 10)
    b = torch.zeros(10, 10)
    a[0:4, 0:5] = 1  # 20 px
    b[2:6, 0:5] = 1  # 20 px, overlap 2 rows x 5 = 10
    assert mask_iou(a, b).item() == pytest.approx(10 / 30)
    assert mask_iou_soft(a, b).item() == pytest.approx(10 / 30)
    half = a * 0.5  # soft values: thresholding drops them, the soft IoU keeps them
    assert mask_iou(half, a).item() == 0.0
    assert mask_iou_soft(half, a).item() == pytest.approx(10 / 20)
    empty = torch.zeros(10, 10)
    assert mask_iou(empty, empty).item() == 1.0 and mask_iou_soft(empty, empty).item() == 1.0
    assert mask_iou(a, empty).item() == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        mask_iou(a, torch.zeros(5, 5))


def test_rotation_error_of_composed_rotations_and_the_180_fold():
    rng = np.random.default_rng(0)
    for _ in range(20):
        base = Rotation.random(random_state=rng)
        angle = rng.uniform(0, 180)
        axis = rng.normal(size=3)
        delta = Rotation.from_rotvec(np.radians(angle) * axis / np.linalg.norm(axis))
        err = rotation_error(_cam(delta * base), _cam(base)).item()
        assert math.degrees(err) == pytest.approx(angle, abs=1e-6)
    # a 270° turn is a 90° error; q and -q are the same rotation
    r = _cam(Rotation.from_euler("z", 270, degrees=True))
    assert math.degrees(rotation_error(r, _cam(Rotation.identity())).item()) == pytest.approx(90, abs=1e-9)
    neg = r.clone()
    neg[3:] *= -1
    assert rotation_error(neg, r).item() == pytest.approx(0, abs=1e-6)


def test_error_up_to_mirror_is_never_larger_and_zero_for_the_mirror():
    from slopekp.geometry.camera import depth_mirror_cameras

    gt = torch.stack([_cam(Rotation.from_euler("xyz", [30, 40, 50], degrees=True))])
    mirror = depth_mirror_cameras(gt)
    assert math.degrees(rotation_error(mirror, gt).item()) > 30
    assert rotation_error_up_to_mirror(mirror, gt).item() == pytest.approx(0, abs=1e-6)
    assert rotation_error_up_to_mirror(gt, gt).item() == pytest.approx(0, abs=1e-6)


def test_rotation_stats_hand_values():
    err = torch.deg2rad(torch.tensor([10.0, 20.0, 40.0, 100.0]))
    s = rotation_error_stats(err)
    assert s["mean_deg"] == pytest.approx(42.5) and s["median_deg"] == pytest.approx(20.0)
    assert (s["pct_under_15deg"], s["pct_under_30deg"], s["pct_under_45deg"]) == (25.0, 50.0, 75.0)
    assert math.isnan(rotation_error_stats(torch.zeros(0))["mean_deg"])
