"""Mask loss (METHOD §7.1), mask IoU, scale canonicalisation and the report's metrics, on hand-made values."""

from __future__ import annotations

import math

import pytest
import torch

from slopekp.eval.metrics import mask_iou
from slopekp.geometry.camera import project_points
from slopekp.train.hypotheses import hypothesis_cameras, positive_scale_cameras
from slopekp.train.losses import mask_loss
from slopekp.train.report import MultiplexEvaluation, multiplex_metrics


def test_mask_loss_hand_values():
    mask = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    dt = torch.tensor([[[0.0, 0.5], [0.0, 1.0]]])
    sil = torch.tensor([[[[1.0, 1.0], [0.0, 0.2]], [[0.0, 0.0], [0.0, 0.0]]]])  # (B=1, P=2, 2, 2)
    loss = mask_loss(sil, mask, dt)
    # P0: pixels D·S + (S−M)²: 0+0, 0.5+1, 0+0.25, 0.2+0.04 -> 1.99/4 ; P1: 1 + 0 + 0.25 + 0 -> 1.25/4
    torch.testing.assert_close(loss, torch.tensor([[1.99 / 4, 1.25 / 4]]))
    torch.testing.assert_close(mask_loss(sil[:, 0], mask, dt), torch.tensor([1.99 / 4]))


def test_mask_loss_shape_errors():
    with pytest.raises(ValueError, match="mask and mask_dt"):
        mask_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="silhouette"):
        mask_loss(torch.zeros(2, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="silhouette must have shape"):
        mask_loss(torch.zeros(4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))


def test_mask_iou_hand_values():
    a = torch.zeros(2, 4, 4)
    b = torch.zeros(2, 4, 4)
    a[0, :2] = 1  # 8 px
    b[0, 1:3] = 0.9  # 8 px, 4 shared
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([4 / 12, 1.0]))  # both empty -> 1


def test_positive_scale_cameras_keep_the_projection():
    cams = hypothesis_cameras(4, 2)[:3].clone()
    cams[0, 0] = -0.7
    cams[2, 0] = -0.3
    out = positive_scale_cameras(cams)
    assert (out[:, 0] > 0).all() and torch.equal(out[1], cams[1])
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        project_points(x, out[:, None])[..., :2], project_points(x, cams[:, None])[..., :2], atol=1e-5, rtol=1e-5
    )


def test_report_metrics_hand_values():
    deg = torch.deg2rad(torch.tensor([10.0, 40.0, 100.0, 20.0]))
    ev = MultiplexEvaluation(
        ids=torch.arange(4),
        best_score=torch.tensor([0.5, 0.3, 0.2, 0.4]),
        best_loss=torch.tensor([0.01, 0.02, 0.03, 0.04]),
        best_iou=torch.tensor([0.95, 0.85, 0.9, 0.5]),
        best_err=deg,
        closest_err=deg / 2,
        best_err_mirror=deg / 4,
        closest_err_mirror=deg / 8,
    )
    m = multiplex_metrics(ev, num_hypotheses=40)
    assert m.num_images == 4 and m.num_hypotheses == 40 and m.has_ground_truth
    assert m.best_iou_pct_at_least_0_9 == pytest.approx(50.0)
    assert m.rotation_error_best.mean_deg == pytest.approx(42.5, abs=1e-4)
    assert m.rotation_error_best.pct_under_30deg == pytest.approx(50.0)
    assert m.rotation_error_closest.pct_under_30deg == pytest.approx(75.0)  # 5, 20, 50, 10
    assert m.rotation_error_best_up_to_depth_mirror.pct_under_30deg == pytest.approx(100.0)
    assert math.isclose(m.best_score_mean, 0.35, abs_tol=1e-6)
    j = m.to_json()
    assert j["best_iou"]["pct_at_least_0.9"] == pytest.approx(50.0) and j["has_ground_truth"]
    assert j["rotation_error_closest"] == {
        "mean_deg": pytest.approx(21.25, abs=1e-4),
        "median_deg": m.rotation_error_closest.median_deg,
        "pct_under_30deg": 75.0,
    }
    no_gt = multiplex_metrics(
        MultiplexEvaluation(ev.ids, ev.best_score, ev.best_loss, ev.best_iou, None, None, None, None), 40
    )
    assert not no_gt.has_ground_truth and "rotation_error_best" not in no_gt.to_json()
