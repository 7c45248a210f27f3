"""Keypoint transfer and PCK against constructions whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from slopekp.eval.metrics import mask_bbox_side
from slopekp.eval.transfer import lift_to_surface, pck, transfer_keypoints


def test_lift_to_surface_uses_the_pixel_or_the_nearest_covered_one():
    face = torch.full((4, 4), -1, dtype=torch.long)
    face[1, 2] = 7
    face[3, 0] = 9
    bary = torch.zeros(4, 4, 3)
    bary[1, 2] = torch.tensor([0.2, 0.3, 0.5])
    bary[3, 0] = torch.tensor([1.0, 0.0, 0.0])
    # pixel (row 1, col 2) spans x in [0, 0.5), y in [-0.5, 0); pixel (3, 0): x in [-1, -0.5), y in [0.5, 1]
    pts = torch.tensor([[0.25, -0.25], [0.9, -0.9], [-0.9, 0.9], [-0.6, 0.2]])
    f, b, hit = lift_to_surface(pts, face, bary)
    assert f.tolist() == [7, 7, 9, 9] and hit.tolist() == [True, False, True, False]
    torch.testing.assert_close(b[0], torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="covers no pixel"):
        lift_to_surface(pts, torch.full((4, 4), -1), bary)


def test_pck_and_bbox_side_by_hand():
    pred = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.3]]])
    gt = torch.zeros(1, 3, 2)
    vis = torch.tensor([[True, True, False]])
    assert pck(pred, gt, vis, torch.tensor([0.5])) == (1, 2)
    assert pck(pred, gt, torch.ones(1, 3, dtype=torch.bool), torch.tensor([0.31])) == (2, 3)
    mask = torch.zeros(2, 10, 10)
    mask[0, 2:6, 1:9] = 1  # 4 rows x 8 columns: the larger side is 8 px = 1.6 NDC
    torch.testing.assert_close(mask_bbox_side(mask), torch.tensor([1.6, 0.0]))


def _view(az_deg: float, el_deg: float, s: float = 0.8) -> torch.Tensor:
    from slopekp.geometry.rotations import azelcr_to_quat

    q = azelcr_to_quat(torch.tensor(math.radians(az_deg)), torch.tensor(math.radians(el_deg)), torch.tensor(0.0))
    return torch.cat([torch.tensor([s, 0.05, -0.03]), q.float()])


def test_transfer_with_the_true_meshes_and_cameras_lands_on_the_keypoints():
    """Keypoints are projections of known template vertices in two views; carried from view a to view b through
    the true mesh and cameras, they land on b's keypoints (PCK@0.1 = 1); through a wrong camera they do not."""
    from slopekp.mesh import load_template
    from slopekp.models.keypoints import keypoint_visibility
    from slopekp.render import Renderer, RenderSettings

    tpl = load_template("procedural")
    verts, faces = tpl.verts, tpl.faces
    idx = torch.arange(0, verts.shape[0], max(1, verts.shape[0] // 40))
    r = Renderer(RenderSettings(image_size=128))
    cams = torch.stack([_view(30, 20), _view(75, -10)])
    vis = keypoint_visibility(verts.expand(2, -1, -1), faces, cams, idx, r)
    both = vis.visible[0] & vis.visible[1]
    assert int(both.sum()) >= 10
    ra = r(verts[None], faces, cams[:1], mode="hard")
    moved = transfer_keypoints(vis.points2d[0, both], (ra.face_index[0], ra.bary[0]), verts, cams[1], faces, 5.0)
    err = (moved - vis.points2d[1, both]).norm(dim=-1)
    # within a pixel or so (2/128 NDC); a keypoint on the silhouette's edge may be lifted onto a neighbouring
    # surface at its pixel's centre (inherent to lifting through a raster)
    assert float(err.median()) < 0.02 and int((err > 0.06).sum()) <= max(1, int(0.1 * err.numel()))
    mask_b = r(verts[None], faces, cams[1:], mode="hard").alpha
    thr = 0.1 * mask_bbox_side(mask_b)
    ones = torch.ones(1, int(both.sum()), dtype=torch.bool)
    c, t = pck(moved[None], vis.points2d[1, both][None], ones, thr)
    assert t == int(both.sum()) and c >= 0.9 * t
    wrong = transfer_keypoints(vis.points2d[0, both], (ra.face_index[0], ra.bary[0]), verts, _view(165, -10), faces,
                               5.0)  # fmt: skip
    c, t = pck(wrong[None], vis.points2d[1, both][None], ones, thr)
    assert c < 0.5 * t
