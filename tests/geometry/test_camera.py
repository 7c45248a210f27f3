"""Tests for slopekp.geometry.camera: projection, mirror, pixel/NDC and crop bookkeeping, checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from slopekp.geometry import camera as cm
from slopekp.geometry import rotations as rot

FLIP_PERM = [0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14]


def random_cams(n: int, seed: int = 0, dtype=torch.float64, pixel_size: float | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = rot.random_quat(n, generator=g, dtype=dtype)
    if pixel_size is None:
        s = 0.5 + torch.rand(n, generator=g, dtype=dtype)
        t = torch.rand(n, 2, generator=g, dtype=dtype) - 0.5
    else:
        s = pixel_size * (0.2 + 0.3 * torch.rand(n, generator=g, dtype=dtype))
        t = pixel_size * torch.rand(n, 2, generator=g, dtype=dtype)
    return cm.join_camera(s, t, q)


def scipy_project(points: np.ndarray, cam: np.ndarray, z_offset: float = 5.0) -> np.ndarray:
    """Independent reference: ``(N, 3)`` points, one ``(7,)`` camera -> ``(N, 3)``."""
    R = Rotation.from_quat(cam[[4, 5, 6, 3]]).as_matrix()  # SciPy is scalar-last
    X = points @ R.T
    return np.concatenate([cam[0] * X[:, :2] + cam[1:3], cam[0] * X[:, 2:] + z_offset], axis=1)


def mirror_symmetric_points(n_pairs: int = 6, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Points symmetric about x = 0 (pairs, then 3 on the plane) and the left/right permutation."""
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(n_pairs, 3, generator=g, dtype=torch.float64)
    right = left * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    centre = torch.randn(3, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [0.0, 1, 1], dtype=torch.float64
    )
    pts = torch.cat([left, right, centre])
    perm = (
        list(range(n_pairs, 2 * n_pairs)) + list(range(n_pairs)) + list(range(2 * n_pairs, 2 * n_pairs + 3))
    )
    return pts, perm


# ------------------------------------------------------------------------------------------------
# packing / validation
# ------------------------------------------------------------------------------------------------
def test_split_join_round_trip():
    cam = random_cams(10)
    s, t, q = cm.split_camera(cam)
    assert s.shape == (10,) and t.shape == (10, 2) and q.shape == (10, 4)
    torch.testing.assert_close(cm.join_camera(s, t, q), cam, rtol=0, atol=0)
    # broadcasting: a number for s, one t for all
    out = cm.join_camera(0.8, torch.zeros(2, dtype=torch.float64), q)
    assert out.shape == (10, 7) and out.dtype == torch.float64
    assert (out[:, 0] == 0.8).all() and (out[:, 1:3] == 0).all()


def test_check_camera_errors():
    cam = random_cams(4)
    cm.check_camera(cam)
    with pytest.raises(ValueError, match=r"pose must have shape \(\.\.\., 7\)"):
        cm.check_camera(cam[:, :6], name="pose")
    bad = cam.clone()
    bad[2, 4] = float("nan")
    with pytest.raises(ValueError, match=r"cam contains non-finite"):
        cm.check_camera(bad)
    bad = cam.clone()
    bad[1, 0] = 0.0
    with pytest.raises(ValueError, match=r"my_cam has a non-positive scale"):
        cm.check_camera(bad, name="my_cam")
    bad = cam.clone()
    bad[0, 3:] = 0.0
    with pytest.raises(ValueError, match=r"all-zero quaternion"):
        cm.check_camera(bad)
    with pytest.raises(ValueError, match="floating-point"):
        cm.check_camera(torch.ones(7, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"points must have shape \(\.\.\., N, 3\)"):
        cm.project_points(torch.zeros(5, 2), cam)


# ------------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------------
def test_project_points_matches_reference():
    cams = random_cams(50)
    pts = torch.randn(20, 3, dtype=torch.float64)
    out = cm.project_points(pts, cams)  # (N, 3) with (B, 7) -> (B, N, 3)
    assert out.shape == (50, 20, 3)
    for b in range(50):
        np.testing.assert_allclose(out[b].numpy(), scipy_project(pts.numpy(), cams[b].numpy()), atol=1e-12)
    out2 = cm.project_points(pts, cams, z_offset=-1.5)
    torch.testing.assert_close(out2[..., 2], out[..., 2] - 6.5)
    torch.testing.assert_close(out2[..., :2], out[..., :2])


def test_project_points_hand_values():
    # identity rotation: xy = s·X_xy + t, z = s·X_z + 5
    cam = torch.tensor([2.0, 0.1, -0.2, 1.0, 0.0, 0.0, 0.0])
    pts = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(
        cm.project_points(pts, cam), torch.tensor([[2.1, 3.8, 11.0], [0.1, -0.2, 5.0]])
    )
    # +90° about z: +x (object) lands on image +y, which is DOWN; the quaternion need not be unit
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    cam = torch.tensor([1.0, 0.0, 0.0, 3 * c, 0.0, 0.0, 3 * s])
    out = cm.project_points(torch.tensor([[1.0, 0.0, 0.0]]), cam)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 5.0]]), atol=1e-6, rtol=0)


def test_project_points_broadcasting():
    B, P, N = 3, 4, 7
    cams = random_cams(B * P).view(B, P, 7)
    pts = torch.randn(B, 1, N, 3, dtype=torch.float64)
    out = cm.project_points(pts, cams)
    assert out.shape == (B, P, N, 3)
    for b in range(B):
        for p in range(P):
            torch.testing.assert_close(out[b, p], cm.project_points(pts[b, 0], cams[b, p]))
    # float32 stays float32
    out32 = cm.project_points(pts.float(), cams.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, out.float(), atol=1e-5, rtol=1e-5)


def test_project_points_gradients():
    cams = random_cams(3).requires_grad_(True)
    pts = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cm.project_points, (pts, cams))


# ------------------------------------------------------------------------------------------------
# mirror
# ------------------------------------------------------------------------------------------------
def test_reflect_camera_mirrors_projection_of_symmetric_points():
    pts, perm = mirror_symmetric_points()
    cams = random_cams(30)
    proj = cm.project_points(pts, cams)
    proj_ref = cm.project_points(pts, cm.reflect_camera(cams))
    # mirror image: x -> −x, and left/right parts swap; depth is unchanged
    expected = proj[:, perm] * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(proj_ref, expected)
    # D R D with D = diag(−1, 1, 1)
    D = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    R = rot.quat_to_rotmat(cams[:, 3:])
    torch.testing.assert_close(rot.quat_to_rotmat(cm.reflect_camera(cams)[:, 3:]), D @ R @ D)
    torch.testing.assert_close(cm.reflect_camera(cm.reflect_camera(cams)), cams, rtol=0, atol=0)


def test_reflect_camera_px():
    pts, perm = mirror_symmetric_points()
    W = 321
    cams = random_cams(30, pixel_size=W)
    proj = cm.project_points(pts, cams)
    proj_ref = cm.project_points(pts, cm.reflect_camera_px(cams, W))
    expected = proj[:, perm].clone()
    expected[..., 0] = W - 1 - expected[..., 0]
    torch.testing.assert_close(proj_ref, expected)
    # widths per camera
    widths = torch.arange(30, dtype=torch.float64) + 100
    out = cm.reflect_camera_px(cams, widths)
    torch.testing.assert_close(out[:, 1], widths - 1 - cams[:, 1])
    torch.testing.assert_close(cm.reflect_camera_px(out, widths), cams)


# ------------------------------------------------------------------------------------------------
# image-space maps
# ------------------------------------------------------------------------------------------------
def test_affine_camera_equals_image_map():
    cams = random_cams(20)
    pts = torch.randn(9, 3, dtype=torch.float64)
    k = torch.rand(20, dtype=torch.float64) + 0.5
    off = torch.randn(20, 2, dtype=torch.float64)
    got = cm.project_points(pts, cm.affine_camera(cams, k, off))
    proj = cm.project_points(pts, cams)
    torch.testing.assert_close(got[..., :2], k[:, None, None] * proj[..., :2] + off[:, None, :])
    # composition: crop (offset) then resize (scale)
    two = cm.affine_camera(cm.affine_camera(cams, 1.0, torch.tensor([-10.0, -20.0])), 0.5)
    proj2 = cm.project_points(pts, two)[..., :2]
    torch.testing.assert_close(proj2, 0.5 * (proj[..., :2] - torch.tensor([10.0, 20.0], dtype=torch.float64)))
    # the rotation is untouched
    torch.testing.assert_close(two[:, 3:], cams[:, 3:], rtol=0, atol=0)


def test_px_ndc_conversions():
    size = 256
    cams_px = random_cams(20, pixel_size=size)
    ndc = cm.px_to_ndc_camera(cams_px, size)
    # the documented formulas
    torch.testing.assert_close(ndc[:, 0], 2 * cams_px[:, 0] / size)
    torch.testing.assert_close(ndc[:, 1:3], 2 * cams_px[:, 1:3] / size - 1)
    torch.testing.assert_close(cm.ndc_to_px_camera(ndc, size), cams_px)
    # conversion commutes with projection
    pts = torch.randn(11, 3, dtype=torch.float64)
    torch.testing.assert_close(
        cm.project_points(pts, ndc)[..., :2], cm.px_to_ndc(cm.project_points(pts, cams_px)[..., :2], size)
    )
    # points: pixel column 0 -> −1, column size -> +1 (x = 2u/W − 1), and the round trip
    p = torch.tensor([[0.0, 128.0], [256.0, 64.0]])
    torch.testing.assert_close(cm.px_to_ndc(p, 256), torch.tensor([[-1.0, 0.0], [1.0, -0.5]]))
    torch.testing.assert_close(cm.ndc_to_px(cm.px_to_ndc(p, 256), 256), p)
    # per-sample sizes
    sizes = torch.arange(20, dtype=torch.float64) + 100
    torch.testing.assert_close(cm.ndc_to_px_camera(cm.px_to_ndc_camera(cams_px, sizes), sizes), cams_px)


def test_crop_from_box_maps_box_corners_to_ndc_corners():
    crop = cm.crop_from_box(torch.tensor([10.0, 0.0]), torch.tensor([20.0, 5.0]), torch.tensor([100.0, 50.0]))
    assert crop.shape == (2, 3)
    a, b = crop[:, :1], crop[:, 1:]
    top_left = torch.tensor([[10.0, 20.0], [0.0, 5.0]])
    bottom_right = top_left + torch.tensor([[100.0], [50.0]])
    torch.testing.assert_close(a * top_left + b, -torch.ones(2, 2))
    torch.testing.assert_close(a * bottom_right + b, torch.ones(2, 2))
    # identical to: shift by the corner, resize to S pixels, then x = 2u/S − 1 (for any S)
    u = torch.tensor([[37.0, 61.5], [12.0, 40.0]])
    for S in (64, 256):
        resized = (u - top_left) * S / torch.tensor([[100.0], [50.0]])
        torch.testing.assert_close(a * u + b, cm.px_to_ndc(resized, S))
    with pytest.raises(ValueError, match="side must be > 0"):
        cm.crop_from_box(0.0, 0.0, torch.tensor([10.0, 0.0]))


def test_crop_around_points_is_the_square_box_around_them_with_a_margin():
    # points spanning x 10..50 and y 20..40: centre (30, 30), longer extent 40, side 40·(1 + 2·0.1) = 48
    pts = torch.tensor([[[10.0, 25.0], [50.0, 20.0], [30.0, 40.0]]])
    crop = cm.crop_around_points(pts, 0.1)
    torch.testing.assert_close(crop, cm.crop_from_box(torch.tensor([6.0]), torch.tensor([6.0]), torch.tensor([48.0])))
    ndc = crop[:, None, :1] * pts + crop[:, None, 1:]
    torch.testing.assert_close(ndc[0, :, 0].aminmax(), (torch.tensor(-40 / 48), torch.tensor(40 / 48)))
    torch.testing.assert_close(cm.crop_around_points(pts)[0, 0], torch.tensor(2 / 40.0))  # no margin: side 40
    with pytest.raises(ValueError, match="margin"):
        cm.crop_around_points(pts, -0.1)
    with pytest.raises(ValueError, match="side must be > 0"):
        cm.crop_around_points(torch.ones(1, 3, 2))


def test_recrop_camera():
    pts = torch.randn(13, 3, dtype=torch.float64)
    W = 500
    cams_px = random_cams(8, pixel_size=W)  # cameras in original-image pixels
    g = torch.Generator().manual_seed(1)
    box_a = (torch.rand(8, 2, generator=g, dtype=torch.float64) * 100, 150 + 200 * torch.rand(8, generator=g))
    box_b = (torch.rand(8, 2, generator=g, dtype=torch.float64) * 100, 150 + 200 * torch.rand(8, generator=g))
    crop_a = cm.crop_from_box(box_a[0][:, 0], box_a[0][:, 1], box_a[1].double())
    crop_b = cm.crop_from_box(box_b[0][:, 0], box_b[0][:, 1], box_b[1].double())

    def cam_in_crop(crop):  # ndc = a·u + b applied to a pixel camera
        return cm.affine_camera(cams_px, crop[:, 0], crop[:, 1:])

    cam_a, cam_b = cam_in_crop(crop_a), cam_in_crop(crop_b)
    torch.testing.assert_close(cm.recrop_camera(cam_a, crop_a, crop_b), cam_b)
    torch.testing.assert_close(cm.recrop_camera(cam_b, crop_b, crop_a), cam_a)
    # the projections agree with mapping the original pixels into each crop
    u = cm.project_points(pts, cams_px)[..., :2]
    torch.testing.assert_close(
        cm.project_points(pts, cm.recrop_camera(cam_a, crop_a, crop_b))[..., :2],
        crop_b[:, None, :1] * u + crop_b[:, None, 1:],
    )
    # METHOD §5.5 bookkeeping: the (s, t) of one pixel camera seen in each crop's NDC works as a crop
    # descriptor, and recrop reduces to k = s0/s1, t = (t_c − t1)·k + t0
    proxy_a, proxy_b = cam_a[:, :3], cam_b[:, :3]
    stored = random_cams(8, seed=3)
    k = proxy_b[:, 0] / proxy_a[:, 0]
    expected_t = (stored[:, 1:3] - proxy_a[:, 1:3]) * k[:, None] + proxy_b[:, 1:3]
    out = cm.recrop_camera(stored, proxy_a, proxy_b)
    torch.testing.assert_close(out, cm.recrop_camera(stored, crop_a, crop_b))
    torch.testing.assert_close(out[:, 0], stored[:, 0] * k)
    torch.testing.assert_close(out[:, 1:3], expected_t)
    with pytest.raises(ValueError, match=r"crop_to must have shape \(\.\.\., 3\)"):
        cm.recrop_camera(stored, proxy_a, proxy_b[:, :2])


def test_rotate_camera():
    cams = random_cams(10)
    q = rot.random_quat(10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pts = torch.randn(6, 3, dtype=torch.float64)
    out = cm.project_points(pts, cm.rotate_camera(cams, q))
    # reference: rotate the object into the camera frame, then turn it by q there
    R_cam = Rotation.from_quat(cams[:, [4, 5, 6, 3]].numpy()).as_matrix()
    R_q = Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix()
    X = np.einsum("bij,bjk,nk->bni", R_q, R_cam, pts.numpy())
    s, t = cams[:, 0].numpy(), cams[:, 1:3].numpy()
    np.testing.assert_allclose(out[..., :2].numpy(), s[:, None, None] * X[..., :2] + t[:, None], atol=1e-12)
    torch.testing.assert_close(cm.rotate_camera(cams, q)[:, :3], cams[:, :3], rtol=0, atol=0)


def test_turn_camera_against_scipy():
    cams = random_cams(6)
    out = cm.turn_camera(cams, azimuth_deg=35.0, elevation_deg=-20.0)
    R_cam = Rotation.from_quat(cams[:, [4, 5, 6, 3]].numpy())
    ref = Rotation.from_euler("x", -20.0, degrees=True) * Rotation.from_euler("y", 35.0, degrees=True) * R_cam
    got = Rotation.from_quat(out[:, [4, 5, 6, 3]].numpy())
    np.testing.assert_allclose((got.inv() * ref).magnitude(), 0.0, atol=1e-9)
    torch.testing.assert_close(out[:, :3], cams[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(cm.turn_camera(cams), cams)
    # a point on the object's top (image-up is -y) comes towards the viewer (smaller z) with positive elevation
    top = torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)
    ident = torch.tensor([[1.0, 0, 0, 1, 0, 0, 0]], dtype=torch.float64)
    z = cm.project_points(top, cm.turn_camera(ident, elevation_deg=30.0))[0, 0, 2] - cm.DEFAULT_Z_OFFSET
    assert float(z) < -0.4


def test_camera_from_sfm_validation():
    R = rot.quat_to_rotmat(rot.random_quat(3, dtype=torch.float64))
    cam = cm.camera_from_sfm(R, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, 2))
    assert cam.shape == (3, 7) and cam.dtype == torch.float64
    torch.testing.assert_close(rot.quat_to_rotmat(cam[:, 3:]), R)
    with pytest.raises(ValueError, match="rot is not a proper rotation"):
        cm.camera_from_sfm(
            R * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64), torch.ones(3), torch.zeros(3, 2)
        )
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        cm.camera_from_sfm(R, torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"trans must have shape \(\.\.\., 2\)"):
        cm.camera_from_sfm(R, torch.ones(3), torch.zeros(3, 3))


def test_device(device):
    cams = random_cams(4, dtype=torch.float32).to(device)
    pts = torch.randn(2, 1, 5, 3, device=device)
    out = cm.project_points(pts, cams.view(2, 2, 7))
    assert out.device.type == device.type and out.shape == (2, 2, 5, 3)
    for c in (
        cm.reflect_camera(cams),
        cm.reflect_camera_px(cams, 256),
        cm.px_to_ndc_camera(cams, 256),
        cm.ndc_to_px_camera(cams, 256),
        cm.affine_camera(cams, 2.0, torch.ones(2, device=device)),
        cm.recrop_camera(
            cams, torch.tensor([1.0, 0, 0], device=device), torch.tensor([2.0, 1, 1], device=device)
        ),
        cm.rotate_camera(cams, rot.random_quat(4, device=device)),
    ):
        assert c.device.type == device.type and c.dtype == torch.float32
