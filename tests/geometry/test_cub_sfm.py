"""Rotation and camera code on the real CMR SfM cameras of CUB (``../shared/data/cub/sfm``).

Known values come from ``../shared/data/README.md`` (computed there with numpy/scipy, independently of
this code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.io
import torch

from slopekp.geometry import camera as cm
from slopekp.geometry import rotations as rot

FLIP_PERM = [0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14]


@dataclass(frozen=True)
class SfmSplit:
    rot: np.ndarray  # (N, 3, 3)
    scale: np.ndarray  # (N,)
    trans: np.ndarray  # (N, 2)
    S: np.ndarray  # (3, 15)


@pytest.fixture(scope="module")
def train(sfm_dir) -> SfmSplit:
    m = scipy.io.loadmat(sfm_dir / "anno_train.mat", struct_as_record=False, squeeze_me=True)
    anno = m["sfm_anno"]
    return SfmSplit(
        rot=np.stack([a.rot for a in anno]).astype(np.float64),
        scale=np.array([a.scale for a in anno], dtype=np.float64),
        trans=np.stack([a.trans for a in anno]).astype(np.float64),
        S=np.asarray(m["S"], dtype=np.float64),
    )


@pytest.fixture(scope="module")
def cams_px(train) -> torch.Tensor:
    return cm.camera_from_sfm(
        torch.from_numpy(train.rot), torch.from_numpy(train.scale), torch.from_numpy(train.trans)
    )


def test_shapes(train, cams_px):
    assert train.rot.shape == (5964, 3, 3) and train.S.shape == (3, 15)
    assert cams_px.shape == (5964, 7) and cams_px.dtype == torch.float64


def test_projection_reproduces_sfm_formula(train, cams_px):
    S = torch.from_numpy(train.S.T)  # (15, 3)
    got = cm.project_points(S, cams_px)[..., :2].numpy()  # (N, 15, 2)
    expected = train.scale[:, None, None] * np.einsum("nij,jk->nki", train.rot, train.S)[..., :2]
    expected = expected + train.trans[:, None, :]
    err = np.abs(got - expected).max(axis=(1, 2)) / train.scale
    assert err.max() < 1e-6


def test_rotations_round_trip_and_entry0(train, cams_px):
    R = torch.from_numpy(train.rot)
    rot.check_rotmat(R, atol=1e-12, name="sfm rot")
    q = cams_px[:, 3:]
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(rot.quat_to_rotmat(q).numpy(), train.rot, atol=1e-6, rtol=0)
    np.testing.assert_allclose(rot.rotmat_to_quat(rot.quat_to_rotmat(q)).numpy(), q.numpy(), atol=1e-12)
    # entry 0 (Black_Footed_Albatross_0009_34): README values
    np.testing.assert_allclose(train.scale[0], 81.96122641611444, rtol=1e-12)
    np.testing.assert_allclose(train.trans[0], [234.26822526, 151.87673119], atol=1e-6)
    rows = np.array(
        [
            [-0.30360028, -0.80688336, 0.50672093],
            [-0.90991105, 0.08776815, -0.40541169],
            [0.28264599, -0.58415408, -0.76083852],
        ]
    )
    np.testing.assert_allclose(train.rot[0], rows, atol=1e-8)
    q0 = np.array([0.076370, -0.585122, 0.733520, -0.337266])
    got = q[0].numpy()
    assert min(np.abs(got - q0).max(), np.abs(got + q0).max()) < 1e-6
    # and the quaternion of the README's rows gives back the rows
    np.testing.assert_allclose(
        rot.quat_to_rotmat(rot.rotmat_to_quat(torch.from_numpy(rows))).numpy(), rows, atol=1e-7
    )


def test_known_geodesic_angles(train, cams_px):
    q = cams_px[:, 3:]
    R = torch.from_numpy(train.rot)
    for j, deg in ((1, 154.4222), (2, 156.7714)):
        assert math.degrees(rot.quat_geodesic_angle(q[0], q[j]).item()) == pytest.approx(deg, abs=1e-4)
        assert math.degrees(rot.rotmat_geodesic_angle(R[0], R[j]).item()) == pytest.approx(deg, abs=1e-4)
    # many pairs against the arccos formula on the raw matrices (NumPy)
    g = torch.Generator().manual_seed(0)
    i, j = torch.randint(0, len(q), (2, 2000), generator=g)
    tr = np.einsum("nij,nij->n", train.rot[i.numpy()], train.rot[j.numpy()])
    ref = np.arccos(np.clip((tr - 1) / 2, -1, 1))
    np.testing.assert_allclose(rot.quat_geodesic_angle(q[i], q[j]).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(rot.rotmat_geodesic_angle(R[i], R[j]).numpy(), ref, atol=1e-6)
    # README: "the mean over 2000 random pairs is about 98.7°". That is one sample (standard error ≈ 1.1°,
    # the mean over 200k pairs is ≈ 97.4°), so only a loose check against it.
    assert math.degrees(ref.mean()) == pytest.approx(98.7, abs=4.0)


def test_entry0_lands_near_annotated_parts(train, cams_px):
    """README: S projected with the entry-0 camera lands 1.5 to 21 px (mean ≈ 9.4 px) from the visible
    1-based CUB parts, so the SfM ``trans`` is in 1-based pixels and used as is."""
    x = np.array([228, 282, 0, 248, 266, 272, 0, 0, 208, 256, 270, 0, 234, 163, 260], dtype=np.float64)
    y = np.array([138, 154, 0, 158, 141, 144, 0, 0, 102, 141, 146, 0, 193, 155, 155], dtype=np.float64)
    vis = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1], dtype=bool)
    uv = cm.project_points(torch.from_numpy(train.S.T), cams_px[0])[:, :2].numpy()
    d = np.hypot(uv[vis, 0] - x[vis], uv[vis, 1] - y[vis])
    assert d.min() == pytest.approx(1.5, abs=0.1) and d.max() == pytest.approx(21, abs=1.0)
    assert d.mean() == pytest.approx(9.4, abs=0.1)


def test_mirror_consistency_all_cameras(train, cams_px):
    W = 500
    S = torch.from_numpy(train.S.T)
    # S is exactly mirror-symmetric in x with this permutation
    torch.testing.assert_close(S[FLIP_PERM] * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64), S)
    proj = cm.project_points(S, cams_px)
    proj_flip = cm.project_points(S, cm.reflect_camera_px(cams_px, W))
    expected = proj[:, FLIP_PERM].clone()
    expected[..., 0] = W - 1 - expected[..., 0]
    torch.testing.assert_close(proj_flip[..., :2], expected[..., :2], atol=1e-9, rtol=0)
    # the flipped rotation is D R D (README)
    D = np.diag([-1.0, 1.0, 1.0])
    R_flip = rot.quat_to_rotmat(cm.reflect_camera_px(cams_px, W)[:, 3:]).numpy()
    np.testing.assert_allclose(R_flip, D @ train.rot @ D, atol=1e-12)


def test_ndc_conversion_commutes_with_projection(train, cams_px):
    S = torch.from_numpy(train.S.T)
    for size in (256, 500):
        ndc = cm.px_to_ndc_camera(cams_px, size)
        torch.testing.assert_close(
            cm.project_points(S, ndc)[..., :2], cm.px_to_ndc(cm.project_points(S, cams_px)[..., :2], size)
        )
        torch.testing.assert_close(cm.ndc_to_px_camera(ndc, size), cams_px)
    # METHOD §2.1: s = 2·s_px/256, t = 2·t_px/256 − 1
    ndc = cm.px_to_ndc_camera(cams_px, 256)
    np.testing.assert_allclose(ndc[:, 0].numpy(), 2 * train.scale / 256, rtol=1e-12)
    np.testing.assert_allclose(ndc[:, 1:3].numpy(), 2 * train.trans / 256 - 1, rtol=1e-12)
