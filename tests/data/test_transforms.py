"""Geometric transforms of the loader: boxes, crop, resize, flip, and exact camera bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slopekp.data import transforms as T
from slopekp.geometry.camera import affine_camera, join_camera, project_points, reflect_camera_px


def test_perturb_bbox_padding_and_jitter_bounds():
    box = np.array([10.0, 20.0, 29.0, 59.0])  # w = 20, h = 40
    np.testing.assert_allclose(T.perturb_bbox(box, 0.1, 0.0), [8, 16, 31, 63])
    np.testing.assert_allclose(T.perturb_bbox(box, 0.1, 0.5, rng=None), [8, 16, 31, 63])  # no rng: no jitter
    rng = np.random.default_rng(0)
    outs = np.stack([T.perturb_bbox(box, 0.05, 0.05, rng) for _ in range(500)])
    dev = outs - T.perturb_bbox(box, 0.05, 0.0)
    assert np.abs(dev[:, [0, 2]]).max() <= 0.05 * 20 + 1e-9
    assert np.abs(dev[:, [1, 3]]).max() <= 0.05 * 40 + 1e-9
    assert np.abs(dev[:, 0]).max() > 0.8 and dev.std(0).min() > 0.2  # it does jitter, on every side
    a = T.perturb_bbox(box, 0.05, 0.05, np.random.default_rng(5))
    b = T.perturb_bbox(box, 0.05, 0.05, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="padding_frac and jitter_frac must be >= 0"):
        T.perturb_bbox(box, -0.1, 0.0)


def test_square_bbox_cub_example():
    # CUB id 2, 0-based: x = 138, y = 29, w = 153, h = 264 -> side 264, grown by 55.5 -> 56 (half to even)
    sq = T.square_bbox(np.array([138.0, 29.0, 290.0, 292.0]))
    assert sq[2] - sq[0] == sq[3] - sq[1] == 263
    np.testing.assert_array_equal(sq, [138 - 56, 29, 138 - 56 + 263, 292])
    sq = T.square_bbox(np.array([0.0, 0.0, 9.0, 3.0]))  # w 10, h 4: grow by 3 each side
    np.testing.assert_array_equal(sq, [0, -3, 9, 6])


def test_crop_matches_padded_reference():
    rng = np.random.default_rng(1)
    img = rng.uniform(size=(7, 9, 3)).astype(np.float32)
    for box in ([-3, -2, 4, 5], [2, 1, 6, 4], [5, 3, 12, 10], [-4, -4, -1, -1]):
        out = T.crop(img, np.array(box, float), fill=1.0)
        pad = 20
        ref = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=1.0)
        x1, y1, x2, y2 = box
        np.testing.assert_array_equal(out, ref[y1 + pad : y2 + pad + 1, x1 + pad : x2 + pad + 1])
    m = T.crop(np.ones((7, 9), np.float32), np.array([-1.0, -1, 3, 3]), fill=0.0)
    assert m.shape == (5, 5) and m[0].sum() == 0 and m[1:, 1:].min() == 1
    with pytest.raises(ValueError, match="empty"):
        T.crop(img, np.array([3.0, 3, 2, 5]), fill=0)


@pytest.mark.parametrize("src,dst", [(40, 100), (100, 40), (64, 256)])
def test_resize_affine_moves_content_exactly(src, dst):
    """A smooth blob centred at a sub-pixel point is found at ``resize_affine(src, dst).apply(point)``."""
    u0, v0 = 0.37 * src + 0.3, 0.58 * src - 0.2
    yy, xx = np.mgrid[0:src, 0:src].astype(np.float64)
    sig = src / 8
    img = np.exp(-((xx - u0) ** 2 + (yy - v0) ** 2) / (2 * sig**2)).astype(np.float32)
    out = T.resize_square(img, dst).astype(np.float64)
    assert out.shape == (dst, dst)
    yy, xx = np.mgrid[0:dst, 0:dst]
    w = np.clip(out - 0.05, 0, None)  # ignore the far tails (border effects)
    centroid = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
    expect = T.resize_affine(src, dst).apply(np.array([u0, v0]))
    np.testing.assert_allclose(centroid, expect, atol=0.03 * max(1, dst / src))
    naive = np.array([u0, v0]) * dst / src  # CMR's map, off by (k - 1)/2
    assert np.abs(naive - expect).max() > 0.25


def test_flip_image_and_keypoints():
    img = np.zeros((4, 6), np.float32)
    img[1, 4] = 1
    f = T.flip_image(img)
    assert f[1, 1] == 1
    kp = np.zeros((15, 3))
    kp[6] = [4, 1, 1]  # left eye at the marker
    kp[10] = [2, 3, 1]  # right eye
    fk = T.flip_keypoints(kp, width=6)
    np.testing.assert_array_equal(fk[10], [1, 1, 1])  # the left eye becomes the right eye, mirrored
    np.testing.assert_array_equal(fk[6], [3, 3, 1])
    np.testing.assert_array_equal(T.flip_keypoints(fk, 6), kp)


def test_keypoints_to_ndc_and_clip():
    kp = np.array([[0.0, 0.0, 1.0], [63.0, 32.0, 1.0], [5.0, 5.0, 0.0]])
    ndc = T.keypoints_to_ndc(kp, 64)
    np.testing.assert_allclose(ndc, [[-1, -1, 1], [2 * 63 / 64 - 1, 0, 1], [0, 0, 0]])
    clipped = T.clip_keypoints(np.array([[-3.0, 70, 1], [-3, 70, 0]]), 64, 64)
    np.testing.assert_array_equal(clipped, [[0, 63, 1], [-3, 70, 0]])


def _pose(rng):
    from scipy.spatial.transform import Rotation

    q = np.roll(Rotation.random(random_state=rng.integers(1 << 30)).as_quat(), 1)
    return torch.as_tensor(q)


@pytest.mark.parametrize("trial", range(6))
def test_chain_camera_bookkeeping(trial):
    """After perturb/square/crop/resize(/flip), projecting the shape with the moved camera lands on the
    moved keypoints (projected with the original camera and moved as points)."""
    rng = np.random.default_rng(trial)
    X = torch.as_tensor(rng.normal(size=(15, 3)))
    X[:, 0] -= X[:, 0].mean()
    s = torch.tensor(rng.uniform(40, 120), dtype=torch.float64)
    cam = join_camera(s, torch.as_tensor(rng.uniform(100, 300, 2)), _pose(rng))
    kp = np.concatenate([project_points(X, cam)[:, :2].numpy(), np.ones((15, 1))], 1)
    box = np.concatenate([kp[:, :2].min(0), kp[:, :2].max(0)])
    box = T.square_bbox(T.perturb_bbox(box, 0.1, 0.05, rng))
    side, size = int(box[2] - box[0] + 1), int(rng.choice([64, 128, 256]))
    aff = T.crop_affine(box).then(T.resize_affine(side, size))
    kp2 = T.transform_keypoints(kp, aff)
    cam2 = affine_camera(cam, aff.k, torch.tensor([aff.ox, aff.oy], dtype=torch.float64))
    np.testing.assert_allclose(project_points(X, cam2)[:, :2].numpy(), kp2[:, :2], atol=1e-8)
    # flip: reflect_camera_px of the camera <-> mirrored, permuted points of a symmetric shape
    Xs = X.clone()
    Xs[10:13] = X[6:9] * torch.tensor([-1.0, 1, 1], dtype=torch.float64)
    Xs[[0, 1, 2, 3, 4, 5, 9, 13, 14], 0] = 0.0
    kps = np.concatenate([project_points(Xs, cam)[:, :2].numpy(), np.ones((15, 1))], 1)
    flipped = T.flip_keypoints(T.transform_keypoints(kps, aff), size)
    proj = project_points(Xs, reflect_camera_px(cam2, size))[:, :2].numpy()
    np.testing.assert_allclose(proj, flipped[:, :2], atol=1e-8)
    # crop params: ndc = a·u + b for original pixels
    abc = T.crop_to_ndc_params(aff, size)
    np.testing.assert_allclose(abc[0] * kp[:, :2] + abc[1:], 2 * kp2[:, :2] / size - 1, atol=1e-10)
