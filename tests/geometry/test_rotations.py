"""Tests for slopekp.geometry.rotations against SciPy, NumPy SVD, hand-derived values and autograd checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.transform import Rotation

from slopekp.geometry import rotations as rot

N = 3000  # random rotations per SciPy comparison
TOL = 1e-6  # float64 agreement with SciPy


# ------------------------------------------------------------------------------------------------
# helpers (SciPy quaternions are scalar-last: convert only here)
# ------------------------------------------------------------------------------------------------
def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    return np.asarray(q)[..., [1, 2, 3, 0]]


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    return np.asarray(q)[..., [3, 0, 1, 2]]


def same_rotation_quat(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """max |q1 − ±q2| per row (quaternions are a double cover)."""
    return np.minimum(np.abs(q1 - q2).max(-1), np.abs(q1 + q2).max(-1))


@pytest.fixture(scope="module")
def scipy_rots() -> Rotation:
    return Rotation.random(N, random_state=12345)


@pytest.fixture(scope="module")
def special_rots() -> Rotation:
    """Identity, 180° turns about many axes, and near-180° / near-0 rotations: the hard cases."""
    axes = np.concatenate(
        [np.eye(3), -np.eye(3), np.ones((1, 3)) / math.sqrt(3), Rotation.random(20, 7).as_rotvec()]
    )
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    angles = [0.0, 1e-9, 1e-6, 1e-3, 0.5, math.pi / 2, math.pi - 1e-6, math.pi - 1e-9, math.pi]
    rv = np.concatenate([axes * a for a in angles])
    return Rotation.from_rotvec(rv)


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# agreement with SciPy (float64)
# ------------------------------------------------------------------------------------------------
def test_quat_to_rotmat_matches_scipy(scipy_rots):
    q = t64(xyzw_to_wxyz(scipy_rots.as_quat()))
    R = rot.quat_to_rotmat(q)
    assert R.shape == (N, 3, 3) and R.dtype == torch.float64
    np.testing.assert_allclose(R.numpy(), scipy_rots.as_matrix(), atol=TOL)
    # non-unit quaternions are normalised first
    R_scaled = rot.quat_to_rotmat(q * t64(np.linspace(0.01, 50, N))[:, None])
    np.testing.assert_allclose(R_scaled.numpy(), scipy_rots.as_matrix(), atol=TOL)


@pytest.mark.parametrize("which", ["random", "special"])
def test_rotmat_to_quat_matches_scipy(which, scipy_rots, special_rots):
    rots = scipy_rots if which == "random" else special_rots
    q = rot.rotmat_to_quat(t64(rots.as_matrix())).numpy()
    assert np.all(q[:, 0] >= 0), "canonical sign w >= 0"
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-12)
    assert same_rotation_quat(q, xyzw_to_wxyz(rots.as_quat())).max() < TOL


@pytest.mark.parametrize("which", ["random", "special"])
def test_axis_angle_matches_scipy(which, scipy_rots, special_rots):
    rots = scipy_rots if which == "random" else special_rots
    rv = rots.as_rotvec()  # angle in [0, π]
    # rotation vector -> quaternion / matrix
    q = rot.axis_angle_to_quat(t64(rv)).numpy()
    assert same_rotation_quat(q, xyzw_to_wxyz(rots.as_quat())).max() < TOL
    np.testing.assert_allclose(rot.axis_angle_to_rotmat(t64(rv)).numpy(), rots.as_matrix(), atol=TOL)
    # quaternion / matrix -> rotation vector; compare as rotations (the axis sign is ambiguous at exactly π)
    rv_q = rot.quat_to_axis_angle(t64(xyzw_to_wxyz(rots.as_quat()))).numpy()
    rv_R = rot.rotmat_to_axis_angle(t64(rots.as_matrix())).numpy()
    for got in (rv_q, rv_R):
        assert np.all(np.linalg.norm(got, axis=-1) <= math.pi + 1e-12)
        ang = (Rotation.from_rotvec(got).inv() * rots).magnitude()
        assert ang.max() < TOL
        away_from_pi = np.linalg.norm(rv, axis=-1) < math.pi - 1e-3
        np.testing.assert_allclose(got[away_from_pi], rv[away_from_pi], atol=TOL)


def test_axis_angle_small_angles_exact():
    """Both sides of the series switch-overs (θ² < 1e-4 and ‖v‖² < 1e-8) against closed forms in float64."""
    theta = np.concatenate([np.logspace(-10, -0.5, 300), 1e-2 * (1 + np.linspace(-1e-3, 1e-3, 21))])
    axis = Rotation.random(len(theta), random_state=9).as_rotvec()
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    rv = axis * theta[:, None]
    expected_q = np.concatenate([np.cos(theta / 2)[:, None], axis * np.sin(theta / 2)[:, None]], 1)
    np.testing.assert_allclose(rot.axis_angle_to_quat(t64(rv)).numpy(), expected_q, rtol=1e-13, atol=1e-17)
    np.testing.assert_allclose(rot.quat_to_axis_angle(t64(expected_q)).numpy(), rv, rtol=1e-13, atol=1e-20)
    # and exactly zero
    z = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.equal(rot.axis_angle_to_quat(z), torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64))
    assert torch.equal(rot.quat_to_axis_angle(rot.axis_angle_to_quat(z)), z)


def test_quat_algebra_matches_scipy(scipy_rots):
    a, b = scipy_rots[: N // 2], scipy_rots[N // 2 :]
    qa, qb = t64(xyzw_to_wxyz(a.as_quat())), t64(xyzw_to_wxyz(b.as_quat()))
    # R(a ⊗ b) = R(a) R(b): SciPy's a * b applies b first
    prod = rot.quat_multiply(qa, qb).numpy()
    assert same_rotation_quat(prod, xyzw_to_wxyz((a * b).as_quat())).max() < TOL
    inv = rot.quat_inverse(qa * 3.0).numpy() * 3.0  # inverse of a scaled quaternion scales by 1/3
    assert same_rotation_quat(inv, xyzw_to_wxyz(a.inv().as_quat())).max() < TOL
    conj = rot.quat_conjugate(qa).numpy()
    assert same_rotation_quat(conj, xyzw_to_wxyz(a.inv().as_quat())).max() < TOL
    # q ⊗ q⁻¹ = identity exactly (no renormalisation needed)
    ident = rot.quat_multiply(qa * 2.5, rot.quat_inverse(qa * 2.5))
    np.testing.assert_allclose(ident.numpy(), np.tile([1.0, 0, 0, 0], (len(a), 1)), atol=1e-12)
    # canonical keeps the rotation and makes w >= 0
    can = rot.quat_canonical(-qa)
    assert (can[:, 0] >= 0).all()
    assert same_rotation_quat(can.numpy(), qa.numpy()).max() == 0


def test_quat_normalize():
    q = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [-3.0, 0.0, 4.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [-0.6, 0.0, 0.8, 0.0]])
    torch.testing.assert_close(rot.quat_normalize(q), expected)


def test_geodesic_angles_match_scipy(scipy_rots, special_rots):
    for rots in (scipy_rots, special_rots):
        n = len(rots) // 2
        a, b = rots[:n], rots[n : 2 * n]
        expected = (a.inv() * b).magnitude()
        qa, qb = t64(xyzw_to_wxyz(a.as_quat())), t64(xyzw_to_wxyz(b.as_quat()))
        np.testing.assert_allclose(rot.quat_geodesic_angle(qa, qb).numpy(), expected, atol=TOL)
        # sign and scale invariance
        np.testing.assert_allclose(rot.quat_geodesic_angle(-3 * qa, 0.5 * qb).numpy(), expected, atol=TOL)
        Ra, Rb = t64(a.as_matrix()), t64(b.as_matrix())
        np.testing.assert_allclose(rot.rotmat_geodesic_angle(Ra, Rb).numpy(), expected, atol=TOL)
    # the arccos formula of the brief, away from its ill-conditioned ends
    Ra, Rb = t64(scipy_rots[:100].as_matrix()), t64(scipy_rots[100:200].as_matrix())
    tr = torch.einsum("nij,nij->n", Ra, Rb)
    torch.testing.assert_close(rot.rotmat_geodesic_angle(Ra, Rb), torch.arccos((tr - 1) / 2))
    # tiny angles are resolved (arccos would return 0 here)
    q0 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    q1 = rot.axis_angle_to_quat(torch.tensor([0.0, 0.0, 1e-10], dtype=torch.float64))
    assert rot.quat_geodesic_angle(q0, q1).item() == pytest.approx(1e-10, rel=1e-6)
    R1 = rot.quat_to_rotmat(q1)
    assert rot.rotmat_geodesic_angle(torch.eye(3, dtype=torch.float64), R1).item() == pytest.approx(
        1e-10, rel=1e-6
    )


def test_azelcr_matches_scipy_euler_zxy():
    rng = np.random.default_rng(3)
    az = rng.uniform(-math.pi, math.pi, N)
    el = rng.uniform(-math.pi / 2, math.pi / 2, N)
    cr = rng.uniform(-math.pi, math.pi, N)
    # intrinsic 'ZXY' in SciPy is R = Rz(cr) @ Rx(el) @ Ry(az)
    ref = Rotation.from_euler("ZXY", np.stack([cr, el, az], -1))
    q = rot.azelcr_to_quat(t64(az), t64(el), t64(cr))
    assert same_rotation_quat(q.numpy(), xyzw_to_wxyz(ref.as_quat())).max() < TOL
    out = rot.quat_to_azelcr(q)
    np.testing.assert_allclose(out.az.numpy(), az, atol=TOL)
    np.testing.assert_allclose(out.el.numpy(), el, atol=TOL)
    np.testing.assert_allclose(out.cr.numpy(), cr, atol=TOL)
    # with a base rotation: q = q_zxy ⊗ base, and the inverse removes the base first
    base = Rotation.random(N, random_state=5)
    qb = t64(xyzw_to_wxyz(base.as_quat()))
    q_full = rot.azelcr_to_quat(t64(az), t64(el), t64(cr), base=qb)
    assert same_rotation_quat(q_full.numpy(), xyzw_to_wxyz((ref * base).as_quat())).max() < TOL
    az2, el2, cr2 = rot.quat_to_azelcr(q_full, base=qb)
    np.testing.assert_allclose(np.stack([az2, el2, cr2], -1), np.stack([az, el, cr], -1), atol=1e-5)


def test_quat_to_azelcr_gimbal_lock():
    az = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64)
    el = torch.tensor([math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2], dtype=torch.float64)
    cr = torch.tensor([0.5, -0.4, 1.0, 0.0], dtype=torch.float64)
    q = rot.azelcr_to_quat(az, el, cr)
    out = rot.quat_to_azelcr(q)
    assert torch.all(out.cr == 0), "gimbal lock puts the whole turn into az"
    torch.testing.assert_close(out.el, el)
    back = rot.azelcr_to_quat(*out)
    assert rot.quat_geodesic_angle(back, q).max() < 1e-6
    # el = +90°: only az + cr matters; el = −90°: only az − cr
    expected_az = torch.remainder(torch.where(el > 0, az + cr, az - cr) + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(out.az, expected_az)


# ------------------------------------------------------------------------------------------------
# 6D and 9D
# ------------------------------------------------------------------------------------------------
def test_rot6d_round_trip_and_properties(scipy_rots):
    R = t64(scipy_rots.as_matrix())
    x6 = rot.rotmat_to_rot6d(R)
    assert x6.shape == (N, 6)
    torch.testing.assert_close(x6, R[..., :, :2].reshape(N, 6), rtol=0, atol=0)
    torch.testing.assert_close(rot.rot6d_to_rotmat(x6), R, rtol=0, atol=1e-14)
    # arbitrary 6D input: proper rotation, b1 ∥ a1, b2 in span(a1, a2) on a2's side
    x = torch.randn(500, 6, dtype=torch.float64)
    Rx = rot.rot6d_to_rotmat(x)
    rot.check_rotmat(Rx, atol=1e-12)
    a1, a2 = x.view(-1, 3, 2)[..., 0], x.view(-1, 3, 2)[..., 1]
    torch.testing.assert_close(Rx[..., :, 0], a1 / a1.norm(dim=-1, keepdim=True))
    assert (torch.einsum("ni,ni->n", Rx[..., :, 1], a2) > 0).all()
    assert torch.einsum("ni,ni->n", torch.linalg.cross(a1, a2), Rx[..., :, 2]).gt(0).all()
    assert torch.einsum("ni,ni->n", Rx[..., :, 2], a1).abs().max() < 1e-12


def test_rot9d_matches_numpy_svd(scipy_rots):
    rng = np.random.default_rng(1)
    M = rng.normal(size=(N, 3, 3))
    U, _, Vt = np.linalg.svd(M)
    d = np.linalg.det(U @ Vt)
    D = np.zeros((N, 3, 3))
    D[:, 0, 0] = D[:, 1, 1] = 1
    D[:, 2, 2] = d
    expected = U @ D @ Vt
    np.testing.assert_allclose(rot.rot9d_to_rotmat(t64(M)).numpy(), expected, atol=TOL)
    np.testing.assert_allclose(rot.rot9d_to_rotmat(t64(M.reshape(N, 9))).numpy(), expected, atol=TOL)
    # exact round trip on proper rotations
    R = t64(scipy_rots.as_matrix())
    x9 = rot.rotmat_to_rot9d(R)
    assert x9.shape == (N, 9)
    torch.testing.assert_close(rot.rot9d_to_rotmat(x9), R, rtol=0, atol=1e-12)
    torch.testing.assert_close(x9.view(N, 3, 3), R, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
def _rand_rotmats(n: int, seed: int) -> torch.Tensor:
    return t64(Rotation.random(n, random_state=seed).as_matrix())


GRADCHECK_CASES = {
    "quat_to_rotmat": (rot.quat_to_rotmat, lambda: torch.randn(6, 4, dtype=torch.float64)),
    "rotmat_to_quat": (rot.rotmat_to_quat, lambda: _rand_rotmats(6, 0)),
    "rotmat_to_quat_180": (
        rot.rotmat_to_quat,
        lambda: t64(Rotation.from_rotvec(np.eye(3) * (math.pi - 0.01)).as_matrix()),
    ),
    "axis_angle_to_quat": (rot.axis_angle_to_quat, lambda: torch.randn(6, 3, dtype=torch.float64)),
    "axis_angle_to_quat_near_zero": (
        rot.axis_angle_to_quat,
        lambda: torch.cat(
            [torch.randn(4, 3, dtype=torch.float64) * 1e-3, torch.zeros(1, 3, dtype=torch.float64)]
        ),
    ),
    "axis_angle_to_rotmat_near_zero": (
        rot.axis_angle_to_rotmat,
        lambda: torch.cat(
            [torch.randn(3, 3, dtype=torch.float64) * 1e-4, torch.zeros(1, 3, dtype=torch.float64)]
        ),
    ),
    "quat_to_axis_angle": (rot.quat_to_axis_angle, lambda: torch.randn(6, 4, dtype=torch.float64)),
    "quat_to_axis_angle_near_identity": (
        rot.quat_to_axis_angle,
        lambda: torch.tensor(
            [[1.0, 0, 0, 0], [1.0, 1e-5, -2e-5, 3e-6], [-2.0, 1e-3, 0, 0]], dtype=torch.float64
        ),
    ),
    "rotmat_to_axis_angle": (rot.rotmat_to_axis_angle, lambda: _rand_rotmats(6, 1)),
    "rot6d_to_rotmat": (rot.rot6d_to_rotmat, lambda: torch.randn(6, 6, dtype=torch.float64)),
    "rot9d_to_rotmat": (rot.rot9d_to_rotmat, lambda: torch.randn(6, 9, dtype=torch.float64)),
    "quat_multiply": (rot.quat_multiply, lambda: (torch.randn(5, 4, dtype=torch.float64),) * 1),
    "azelcr_to_quat": (
        rot.azelcr_to_quat,
        lambda: tuple(torch.randn(5, dtype=torch.float64) for _ in range(3)),
    ),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck(name):
    fn, make = GRADCHECK_CASES[name]
    torch.manual_seed(0)
    inputs = make()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if name == "quat_multiply":
        inputs = (inputs[0], torch.randn(5, 4, dtype=torch.float64))
    inputs = tuple(x.clone().requires_grad_(True) for x in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_geodesic_angles_away_from_zero():
    q1 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    q2 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rot.quat_geodesic_angle, (q1, q2))
    R1, R2 = _rand_rotmats(6, 2).requires_grad_(True), _rand_rotmats(6, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(rot.rotmat_geodesic_angle, (R1, R2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_at_identity_and_180(dtype):
    rv = torch.tensor([[0.0, 0.0, 0.0], [math.pi, 0, 0], [0, math.pi, 0], [0, 0, math.pi]], dtype=dtype)
    rv = torch.cat([rv, torch.tensor([[1.0, 1.0, 1.0]], dtype=dtype) * math.pi / math.sqrt(3)])
    q_exact = torch.tensor(
        [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0], [0, *(3 * [1 / math.sqrt(3)])]],
        dtype=dtype,
    )
    R_exact = rot.quat_to_rotmat(q_exact).detach()
    identity_q = torch.tensor([1.0, 0, 0, 0], dtype=dtype)
    fns = {
        "axis_angle_to_quat": (rot.axis_angle_to_quat, rv),
        "axis_angle_to_rotmat": (rot.axis_angle_to_rotmat, rv),
        "quat_to_rotmat": (rot.quat_to_rotmat, q_exact),
        "quat_to_axis_angle": (rot.quat_to_axis_angle, q_exact),
        "rotmat_to_quat": (rot.rotmat_to_quat, R_exact),
        "rotmat_to_axis_angle": (rot.rotmat_to_axis_angle, R_exact),
        "rot6d_to_rotmat": (rot.rot6d_to_rotmat, rot.rotmat_to_rot6d(R_exact)),
        "rot9d_to_rotmat": (rot.rot9d_to_rotmat, R_exact),  # repeated singular values
        "quat_geodesic_self": (lambda q: rot.quat_geodesic_angle(q, q.detach()), q_exact),  # angle 0
        "quat_geodesic_to_identity": (
            lambda q: rot.quat_geodesic_angle(q, identity_q),
            q_exact,
        ),  # 0 and 180°
        "rotmat_geodesic_self": (lambda R: rot.rotmat_geodesic_angle(R, R.detach()), R_exact),
        "rotmat_geodesic_to_identity": (
            lambda R: rot.rotmat_geodesic_angle(R, torch.eye(3, dtype=dtype)),
            R_exact,
        ),
    }
    for name, (fn, x) in fns.items():
        x = x.clone().requires_grad_(True)
        out = fn(x)
        assert torch.isfinite(out).all(), name
        (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
        assert torch.isfinite(g).all(), f"{name}: non-finite gradient {g}"


def test_geodesic_gradient_value_at_180_and_small_angle():
    # d angle / d(rotation about z) = 1 for a rotation about z (away from 0; at 180° from the π side)
    for theta in (1e-4, 1.0, math.pi - 1e-4):
        t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        q = rot.quat_about_axis("z", t)
        ang = rot.quat_geodesic_angle(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), q)
        (g,) = torch.autograd.grad(ang, t)
        assert g.item() == pytest.approx(1.0, abs=1e-8)
        R = rot.quat_to_rotmat(rot.quat_about_axis("z", t))
        (g,) = torch.autograd.grad(rot.rotmat_geodesic_angle(torch.eye(3, dtype=torch.float64), R), t)
        assert g.item() == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# conventions
# ------------------------------------------------------------------------------------------------
def test_convention_quat_about_z_maps_x_to_y():
    q = rot.quat_about_axis("z", torch.tensor(math.pi / 2))
    torch.testing.assert_close(q, torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]))
    R = rot.quat_to_rotmat(q)
    torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1.0, 0.0]))
    # and active rotation through the quaternion sandwich q ⊗ (0, X) ⊗ q*
    X = torch.tensor([0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(
        rot.quat_multiply(rot.quat_multiply(q, X), rot.quat_conjugate(q)), torch.tensor([0.0, 0.0, 1.0, 0.0])
    )
    # right-hand rule about x and y as well: y -> z, z -> x
    Rx = rot.quat_to_rotmat(rot.quat_about_axis("x", torch.tensor(math.pi / 2)))
    Ry = rot.quat_to_rotmat(rot.quat_about_axis("y", torch.tensor(math.pi / 2)))
    torch.testing.assert_close(Rx @ torch.tensor([0.0, 1, 0]), torch.tensor([0.0, 0, 1]))
    torch.testing.assert_close(Ry @ torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0]))


def test_convention_azelcr_order_hand_matrices():
    az, el, cr = 0.3, -0.7, 1.1
    ca, sa, ce, se, cc, sc = (
        math.cos(az),
        math.sin(az),
        math.cos(el),
        math.sin(el),
        math.cos(cr),
        math.sin(cr),
    )
    Rz = torch.tensor([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]], dtype=torch.float64)
    Rx = torch.tensor([[1, 0, 0], [0, ce, -se], [0, se, ce]], dtype=torch.float64)
    Ry = torch.tensor([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]], dtype=torch.float64)
    q = rot.azelcr_to_quat(*(torch.tensor(v, dtype=torch.float64) for v in (az, el, cr)))
    torch.testing.assert_close(rot.quat_to_rotmat(q), Rz @ Rx @ Ry)
    # the multiplex base q_x(90°) turns the bird head-on, back up (METHOD §5.1): beak toward the camera
    # (smaller depth), back (+z) to image up (−y, since y points down)
    base = rot.quat_about_axis("x", torch.tensor(math.pi / 2, dtype=torch.float64))
    Rb = rot.quat_to_rotmat(base)
    beak = Rb @ torch.tensor([0.0, -0.64, -0.05], dtype=torch.float64)
    back = Rb @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert beak[2] < -0.6 and abs(beak[0]) < 1e-12
    torch.testing.assert_close(back, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    # the base is applied first (rightmost), then az, el and cr: R = Rz Rx Ry Rbase
    q_full = rot.azelcr_to_quat(*(torch.tensor(v, dtype=torch.float64) for v in (az, el, cr)), base=base)
    torch.testing.assert_close(rot.quat_to_rotmat(q_full), Rz @ Rx @ Ry @ Rb)


def test_random_quat_is_uniform_and_reproducible():
    g = torch.Generator().manual_seed(0)
    q = rot.random_quat(20000, generator=g, dtype=torch.float64)
    assert q.shape == (20000, 4) and q.dtype == torch.float64
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(20000, dtype=torch.float64))
    assert (q[:, 0] >= 0).all()
    # Haar measure: the rotation angle has CDF (θ − sin θ)/π, and E[R] = 0
    theta = rot.quat_geodesic_angle(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), q).numpy()
    p = stats.kstest(theta, lambda t: (t - np.sin(t)) / np.pi).pvalue
    assert p > 1e-3, p
    assert rot.quat_to_rotmat(q).mean(0).abs().max() < 0.03
    q2 = rot.random_quat(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(q, q2, rtol=0, atol=0)
    assert rot.random_quat(3).dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# shapes, dtypes, devices
# ------------------------------------------------------------------------------------------------
def test_leading_dims_and_float32():
    q = rot.random_quat(2 * 3 * 5).view(2, 3, 5, 4)
    R = rot.quat_to_rotmat(q)
    assert R.shape == (2, 3, 5, 3, 3) and R.dtype == torch.float32
    assert rot.rotmat_to_quat(R).shape == (2, 3, 5, 4)
    assert rot.quat_to_axis_angle(q).shape == (2, 3, 5, 3)
    assert rot.rotmat_to_rot6d(R).shape == (2, 3, 5, 6)
    assert rot.rot6d_to_rotmat(rot.rotmat_to_rot6d(R)).shape == (2, 3, 5, 3, 3)
    assert rot.rot9d_to_rotmat(rot.rotmat_to_rot9d(R)).shape == (2, 3, 5, 3, 3)
    assert rot.quat_geodesic_angle(q, q[:, :1]).shape == (2, 3, 5)  # broadcasting
    assert rot.quat_multiply(q, q[0]).shape == (2, 3, 5, 4)
    assert rot.quat_about_axis("y", torch.zeros(2, 3)).shape == (2, 3, 4)
    # float32 accuracy
    torch.testing.assert_close(rot.rotmat_to_quat(R), rot.quat_canonical(q), atol=1e-6, rtol=0)
    assert rot.quat_geodesic_angle(rot.rotmat_to_quat(R), q).max() < 1e-3  # float32: ~sqrt(eps) at worst
    rot.check_rotmat(R)


def test_device(device):
    q = rot.random_quat(64, device=device)
    assert q.device.type == device.type
    R = rot.quat_to_rotmat(q)
    for out in (
        rot.rotmat_to_quat(R),
        rot.rot6d_to_rotmat(rot.rotmat_to_rot6d(R)),
        rot.rot9d_to_rotmat(R),
        rot.quat_to_axis_angle(q),
        rot.quat_geodesic_angle(q, q),
        rot.azelcr_to_quat(q[:, 0], q[:, 1], q[:, 2], base=q),
        torch.stack(tuple(rot.quat_to_azelcr(q)), -1),
    ):
        assert out.device.type == device.type and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_check_rotmat_errors():
    good = rot.quat_to_rotmat(rot.random_quat(4))
    rot.check_rotmat(good)
    with pytest.raises(ValueError, match=r"cam_R is not a proper rotation.*det"):
        rot.check_rotmat(good * torch.tensor([-1.0, 1.0, 1.0]), name="cam_R")  # a reflection
    with pytest.raises(ValueError, match=r"R is not orthonormal"):
        rot.check_rotmat(good * 1.01)
    bad = good.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"R contains non-finite"):
        rot.check_rotmat(bad)
    with pytest.raises(ValueError, match=r"must have shape \(\.\.\., 3, 3\)"):
        rot.check_rotmat(torch.eye(4))
    rot.check_rotmat(good * 1.00001)  # within atol


def test_value_errors():
    with pytest.raises(ValueError, match="zero or non-finite norm"):
        rot.quat_to_rotmat(torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="zero or non-finite norm"):
        rot.quat_normalize(torch.tensor([float("nan"), 0, 0, 1.0]))
    with pytest.raises(ValueError, match="no inverse"):
        rot.quat_inverse(torch.zeros(4))
    with pytest.raises(ValueError, match=r"q must have shape \(\.\.\., 4\)"):
        rot.quat_to_rotmat(torch.zeros(3))
    with pytest.raises(ValueError, match=r"R must have shape"):
        rot.rotmat_to_quat(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 6\)"):
        rot.rot6d_to_rotmat(torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 9\) or \(\.\.\., 3, 3\)"):
        rot.rot9d_to_rotmat(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="axis must be one of"):
        rot.quat_about_axis("w", torch.tensor(0.1))
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        rot.random_quat(-1)
    with pytest.raises(ValueError, match="floating-point"):
        rot.quat_to_rotmat(torch.ones(4, dtype=torch.int64))
