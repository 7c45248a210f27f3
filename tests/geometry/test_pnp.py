"""Tests for ``slopekp.geometry.pnp`` against independent references (SciPy rotations, OpenCV projection,
finite differences, real CUB SfM cameras)."""

from __future__ import annotations

import doctest
import inspect
import math

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from scipy.spatial.transform import Rotation

from slopekp.geometry import pnp
from slopekp.geometry.pnp.ransac import _RANSAC_DEFAULTS

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The solves are many tiny ops: intra-op threads only add contention on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------------------
# Fixtures and independent reference helpers
# ------------------------------------------------------------------------------------------------------------


def _fps(verts: np.ndarray, k: int) -> np.ndarray:
    """Greedy farthest-point sampling from vertex 0 (METHOD §4.6)."""
    idx = [0]
    d = ((verts - verts[0]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(d.argmax())
        idx.append(i)
        d = np.minimum(d, ((verts - verts[i]) ** 2).sum(1))
    return np.array(idx)


@pytest.fixture(scope="module")
def template_keypoints(request) -> torch.Tensor:
    """(32, 3) FPS keypoints of the mean-centred U-CMR bird template (skips without the shared data)."""
    path = request.getfixturevalue("ucmr_template_path")
    verts = np.load(path)["verts"].astype(np.float64)
    verts = verts - verts.mean(0)
    return torch.from_numpy(verts[_fps(verts, 32)])


def _points(kind: str, n: int, k: int, gen: torch.Generator, template=None) -> torch.Tensor:
    """(n, k, 3) point sets: ``"random"`` Gaussian, ``"ellipsoid"`` (elongated, bird-like), ``"template"``."""
    if kind == "random":
        return 0.5 * torch.randn(n, k, 3, generator=gen, dtype=F64)
    if kind == "ellipsoid":
        d = torch.randn(n, k, 3, generator=gen, dtype=F64)
        return d / d.norm(dim=-1, keepdim=True) * torch.tensor([0.35, 1.0, 0.3], dtype=F64)
    return template.expand(n, k, 3).clone()


def _random_cameras(n: int, seed: int) -> tuple[torch.Tensor, Rotation]:
    """(n, 6) ground-truth thetas: uniform rotation, s in [0.5, 1.5], t in [-0.3, 0.3]^2."""
    rots = Rotation.random(n, random_state=seed)
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.5, 1.5, (n, 1))
    t = rng.uniform(-0.3, 0.3, (n, 2))
    return torch.from_numpy(np.concatenate([rots.as_rotvec(), s, t], 1)), rots


def _project_ref(x: torch.Tensor, rots: Rotation, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Reference weak-perspective projection with SciPy matrices: (n, K, 3) -> (n, K, 2)."""
    mats = torch.from_numpy(rots.as_matrix())
    return s[:, None, None] * torch.einsum("nij,nkj->nki", mats, x)[..., :2] + t[:, None, :]


def _rot_err_deg(theta: torch.Tensor, rots: Rotation) -> np.ndarray:
    """Geodesic angle (degrees) between the rotations of ``theta (n, 6)`` and SciPy ``rots``."""
    est = Rotation.from_rotvec(theta[:, :3].detach().double().numpy())
    return np.degrees((est * rots.inv()).magnitude())


def _outlier_problem(kind, n, sigma, frac, seed, template=None):
    gen = torch.Generator().manual_seed(seed)
    theta, rots = _random_cameras(n, seed)
    x = _points(kind, n, 32, gen, template)
    noise = sigma * torch.randn(n, 32, 2, generator=gen, dtype=F64)
    b = _project_ref(x, rots, theta[:, 3], theta[:, 4:]) + noise
    is_out = torch.zeros(n, 32, dtype=torch.bool)
    n_out = round(frac * 32)
    for i in range(n):
        sel = torch.randperm(32, generator=gen)[:n_out]
        b[i, sel] = 2 * torch.rand(n_out, 2, generator=gen, dtype=F64) - 1
        is_out[i, sel] = True
    return x, b, theta, rots, is_out


# ------------------------------------------------------------------------------------------------------------
# Parametrisation and conventions
# ------------------------------------------------------------------------------------------------------------


def test_module_docstring_example():
    result = doctest.testmod(pnp, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0
    for module in (pnp.theta, pnp.refine, pnp.ransac, pnp.solve):  # examples the package's modules may hold
        assert doctest.testmod(module, extraglobs={"torch": torch}).failed == 0


def test_theta_to_camera_matches_scipy_quaternion():
    theta, rots = _random_cameras(20, seed=1)
    cam = pnp.theta_to_camera(theta)
    q_ref = torch.from_numpy(rots.as_quat()[:, [3, 0, 1, 2]])  # SciPy is scalar-last
    q_ref = torch.where(q_ref[:, :1] < 0, -q_ref, q_ref)
    q = torch.where(cam[:, 3:4] < 0, -cam[:, 3:], cam[:, 3:])
    torch.testing.assert_close(q, q_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(cam[:, :3], theta[:, 3:], atol=0, rtol=0)
    torch.testing.assert_close(pnp.camera_to_theta(cam), theta, atol=1e-12, rtol=0)


def test_theta_to_camera_small_angle_and_gradient_at_zero():
    theta = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.1, -0.2], [1e-4, -2e-4, 3e-4, 1.0, 0.0, 0.0]], dtype=F64)
    theta.requires_grad_(True)
    cam = pnp.theta_to_camera(theta)
    q_ref = Rotation.from_rotvec(theta[1, :3].detach().numpy()).as_quat()[[3, 0, 1, 2]]
    np.testing.assert_allclose(cam[1, 3:].detach().numpy(), q_ref, atol=1e-15)
    cam.sum().backward()
    assert torch.isfinite(theta.grad).all()
    # d q_xyz / d r = I/2 at r = 0
    torch.testing.assert_close(theta.grad[0, :3], torch.full((3,), 0.5, dtype=F64))


def test_project_theta_matches_reference_and_y_down_convention():
    theta, rots = _random_cameras(5, seed=2)
    x = torch.randn(5, 7, 3, dtype=F64)
    torch.testing.assert_close(pnp.project_theta(x, theta), _project_ref(x, rots, theta[:, 3], theta[:, 4:]))
    # identity pose: a point at +y (tail side) projects to +y in NDC (down in the image), +x to +x (right)
    ident = torch.tensor([0.0, 0.0, 0.0, 2.0, 0.1, 0.2], dtype=F64)
    p = pnp.project_theta(torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, -5.0]], dtype=F64), ident)
    torch.testing.assert_close(p, torch.tensor([[2.1, 0.2], [0.1, 2.2]], dtype=F64))


def test_project_theta_matches_camera_module_when_available():
    camera = pytest.importorskip("slopekp.geometry.camera")
    if not hasattr(camera, "project_points"):
        pytest.skip("slopekp.geometry.camera.project_points not available yet")
    theta, _ = _random_cameras(4, seed=3)
    x = torch.randn(4, 9, 3, dtype=F64)
    p = camera.project_points(x, pnp.theta_to_camera(theta))
    torch.testing.assert_close(p[..., :2], pnp.project_theta(x, theta))


# ------------------------------------------------------------------------------------------------------------
# Accuracy: noise-free, noise, outliers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "ellipsoid", "template"])
@pytest.mark.parametrize("robust", [True, False])
def test_noise_free_recovery(kind, robust, request):
    template = request.getfixturevalue("template_keypoints") if kind == "template" else None
    n = 12
    gen = torch.Generator().manual_seed(4)
    theta, rots = _random_cameras(n, seed=4)
    x = _points(kind, n, 32, gen, template)
    b = _project_ref(x, rots, theta[:, 3], theta[:, 4:])
    w = torch.rand(n, 32, generator=gen, dtype=F64) + 0.1
    res = pnp.solve_pnp(b, x, w, robust=robust)
    assert _rot_err_deg(res.theta, rots).max() < 0.01
    torch.testing.assert_close(res.theta[:, 3:], theta[:, 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.camera[:, :3], theta[:, 3:], atol=1e-5, rtol=0)
    assert res.residual.max() < 1e-8
    assert (res.theta[:, 3] > 0).all() and (res.theta[:, :3].norm(dim=-1) <= math.pi + 1e-12).all()
    if robust:
        assert res.init_ok.all() and res.inliers.all()


def test_noise_free_recovery_float32():
    n = 8
    gen = torch.Generator().manual_seed(5)
    theta, rots = _random_cameras(n, seed=5)
    x = _points("ellipsoid", n, 32, gen)
    b = _project_ref(x, rots, theta[:, 3], theta[:, 4:])
    res = pnp.solve_pnp(b.float(), x.float(), torch.ones(n, 32))
    assert res.theta.dtype == torch.float32 and res.camera.dtype == torch.float32
    assert _rot_err_deg(res.theta, rots).max() < 0.01
    torch.testing.assert_close(res.theta[:, 3:].double(), theta[:, 3:], atol=1e-5, rtol=0)


def _first_order_rotation_std(x: torch.Tensor, rots: Rotation, s: torch.Tensor, sigma: float) -> np.ndarray:
    """Predicted RMS rotation error (rad) of the least-squares pose under isotropic 2D noise σ (unit weights).

    First-order propagation: with ``J = ∂p/∂(δ, s, t)`` at the truth (``δ`` a left rotation increment,
    ``∂p/∂δ = −s·P·[R X]×``, ``∂p/∂s = P·R X``, ``∂p/∂t = I``), ``cov = σ²(JᵀJ)⁻¹`` and the expected squared
    geodesic error is the trace of its rotation block.
    """
    y = torch.einsum("nij,nkj->nki", torch.from_numpy(rots.as_matrix()), x)  # (n, K, 3) = R X
    zero = torch.zeros_like(y[..., 0])
    # rows 0 and 1 of [y]×
    skew_xy = torch.stack(
        [torch.stack([zero, -y[..., 2], y[..., 1]], -1), torch.stack([y[..., 2], zero, -y[..., 0]], -1)], -2
    )
    eye = torch.eye(2, dtype=F64).expand(*y.shape[:2], 2, 2)
    jac = torch.cat([-s[:, None, None, None] * skew_xy, y[..., :2, None], eye], -1).flatten(1, 2)  # (n,2K,6)
    cov = torch.linalg.inv(jac.transpose(1, 2) @ jac)
    return sigma * cov[:, :3, :3].diagonal(dim1=1, dim2=2).sum(-1).sqrt().numpy()


def test_noise_degrades_smoothly():
    """The rotation error grows linearly with σ and matches first-order noise propagation (efficient LS)."""
    n = 16
    med = []
    for sigma in (0.0025, 0.005, 0.01, 0.02):
        x, b, theta, rots, _ = _outlier_problem("ellipsoid", n, sigma, 0.0, seed=6)
        res = pnp.solve_pnp(b, x, torch.ones(n, 32, dtype=F64))
        err_deg = _rot_err_deg(res.theta, rots)
        ratio = np.radians(err_deg) / _first_order_rotation_std(x, rots, theta[:, 3], sigma)
        assert 0.6 < np.median(ratio) < 1.2 and ratio.max() < 3.0, (sigma, ratio)
        # weighted RMS of ‖e_k‖ over K points with 6 fitted parameters: E = σ·sqrt((2K − 6)/K)
        expected = sigma * math.sqrt((2 * 32 - 6) / 32)
        assert torch.allclose(res.residual, torch.full_like(res.residual, expected), rtol=0.25)
        med.append(float(np.median(err_deg)))
    assert med[2] < 1.0, med  # σ = 0.01 NDC (1.3 px at 256²): well under a degree
    ratios = np.array(med[1:]) / np.array(med[:-1])
    assert ((ratios > 1.6) & (ratios < 2.5)).all(), med  # doubling σ doubles the error


@pytest.mark.parametrize("kind", ["random", "template"])
def test_outliers_robust_init_beats_trivial_init(kind, request):
    template = request.getfixturevalue("template_keypoints") if kind == "template" else None
    n = 24
    x, b, theta, rots, is_out = _outlier_problem(kind, n, 0.01, 0.3, seed=7, template=template)
    w = torch.ones(n, 32, dtype=F64)
    robust = pnp.solve_pnp(b, x, w)
    plain = pnp.solve_pnp(b, x, w, robust=False)
    err_r = _rot_err_deg(robust.theta, rots)
    err_p = _rot_err_deg(plain.theta, rots)
    assert np.median(err_r) < 2.0 and np.percentile(err_r, 90) < 5.0, err_r
    assert np.median(err_p) > 5.0, err_p
    assert robust.init_ok.all()
    # outliers are uniform in [-1, 1]^2: nearly all must be rejected, nearly all true points kept
    assert (robust.inliers & is_out).sum() <= 0.05 * is_out.sum()
    assert (robust.inliers | is_out).float().mean() > 0.95


def test_near_planar_points_mirror_ambiguity_is_resolved():
    """Thin point sets are nearly ambiguous under weak perspective (R vs. its depth mirror): the affine fit of
    the robust init still reads the small depth signal, while a start from identity often lands on the mirror.
    """
    n = 30
    gen = torch.Generator().manual_seed(19)
    theta, rots = _random_cameras(n, seed=19)
    x = torch.randn(n, 32, 3, generator=gen, dtype=F64) * torch.tensor([0.5, 0.5, 0.03], dtype=F64)
    b = _project_ref(x, rots, theta[:, 3], theta[:, 4:]) + 0.005 * torch.randn(
        n, 32, 2, generator=gen, dtype=F64
    )
    w = torch.ones(n, 32, dtype=F64)
    err_r = _rot_err_deg(pnp.solve_pnp(b, x, w).theta, rots)
    err_p = _rot_err_deg(pnp.solve_pnp(b, x, w, robust=False).theta, rots)
    assert err_r.max() < 5.0, err_r
    assert (err_p > 20).mean() > 0.15, err_p


def test_ortho_init_is_the_better_default():
    """The measurement behind the default: OpenCV's focal-1 perspective RANSAC is a poor start on
    weak-perspective data (METHOD §10 calls it "strongly perspective"); the own orthographic RANSAC is close
    to the truth.
    """
    n = 12
    x, b, theta, rots, _ = _outlier_problem("random", n, 0.005, 0.0, seed=8)
    w = torch.ones(n, 32, dtype=F64)
    err = {}
    for method in ("ortho", "sqpnp"):
        inits = [pnp.ransac_init(b[i], x[i], w[i], method=method) for i in range(n)]
        err[method] = _rot_err_deg(torch.stack([r.theta0 for r in inits]), rots)
    assert np.median(err["ortho"]) < 1.0
    assert np.median(err["sqpnp"]) > 3 * np.median(err["ortho"])


# ------------------------------------------------------------------------------------------------------------
# OpenCV initialiser: the perspective -> weak-perspective conversion (hand-derived reference)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sqpnp", "p3p", "ap3p"])
def test_cv2_init_converts_a_perspective_pose(method):
    rng = np.random.default_rng(9)
    x = rng.uniform(-0.5, 0.5, (20, 3))
    rvec = np.array([0.2, -0.4, 0.3])
    tvec = np.array([0.3, -0.2, 4.0])
    uv = cv2.projectPoints(x, rvec, tvec, np.eye(3), None)[0].reshape(-1, 2)  # focal 1: NDC bearings
    w = torch.ones(20, dtype=F64)
    init = pnp.ransac_init(torch.from_numpy(uv), torch.from_numpy(x), w, method=method)
    assert init.ok
    rot = Rotation.from_rotvec(rvec).as_matrix()
    zbar = (x @ rot.T + tvec)[:, 2].mean()
    expected = np.concatenate([rvec, [1 / zbar], tvec[:2] / zbar])
    np.testing.assert_allclose(init.theta0.numpy(), expected, atol=1e-6)
    assert init.theta0.dtype == F64 and init.inliers.shape == (20,)


def test_ransac_init_failure_falls_back_with_flag():
    # all 3D points on one line: no pose can be fitted by either initialiser
    t = torch.linspace(-1, 1, 10, dtype=F64)[:, None]
    x = t * torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    b = torch.rand(10, 2, dtype=F64)
    for method in ("ortho", "sqpnp"):
        init = pnp.ransac_init(b, x, torch.ones(10, dtype=F64), method=method)
        if method == "ortho":
            assert not init.ok
        if not init.ok:
            torch.testing.assert_close(init.theta0, torch.tensor([0.0, 0, 0, 1, 0, 0], dtype=F64))
            assert init.inliers.all()
        assert torch.isfinite(init.theta0).all()


def test_ransac_init_is_deterministic_and_uses_top_k():
    x, b, _, _, is_out = _outlier_problem("random", 1, 0.0, 0.25, seed=10)
    w = torch.rand(32, dtype=F64)
    a1 = pnp.ransac_init(b[0], x[0], w, seed=3)
    a2 = pnp.ransac_init(b[0], x[0], w, seed=3)
    torch.testing.assert_close(a1.theta0, a2.theta0, atol=0, rtol=0)
    assert torch.equal(a1.inliers, a2.inliers)
    # the 8 top-confidence points are exactly the outliers: RANSAC on them alone cannot find the pose
    w_bad = torch.where(is_out[0], 10.0, 1.0).to(F64)
    top8 = pnp.ransac_init(b[0], x[0], w_bad, top_k=8)
    assert not top8.ok or top8.inliers[~is_out[0]].float().mean() < 0.5


def test_batched_init_in_solve_pnp_equals_per_sample_ransac_init():
    x, b, _, _, _ = _outlier_problem("random", 4, 0.01, 0.3, seed=18)
    w = torch.rand(4, 32, dtype=F64) + 0.1
    for method in ("ortho", "p3p"):
        res = pnp.solve_pnp(b, x, w, method=method, seed=5)
        for i in range(4):
            one = pnp.ransac_init(b[i], x[i], w[i], method=method, seed=5)
            theta0_i = pnp.camera_to_theta(res.init_camera[i])
            torch.testing.assert_close(theta0_i, one.theta0, atol=1e-12, rtol=0)
            assert torch.equal(res.inliers[i], one.inliers) and bool(res.init_ok[i]) == one.ok
    # solve_pnp's defaults are ransac_init's defaults
    sig = inspect.signature(pnp.ransac_init).parameters
    assert {k: sig[k].default for k in _RANSAC_DEFAULTS} == _RANSAC_DEFAULTS


def test_inlier_filtering_zeroes_outlier_weights():
    # 20 % gross outliers with *high* confidence: without filtering they would pull the weighted LS off
    x, b, theta, rots, is_out = _outlier_problem("random", 6, 0.0, 0.2, seed=11)
    w = torch.where(is_out, 1.0, 0.5).to(F64)
    res = pnp.solve_pnp(b, x, w, top_k=32)
    assert _rot_err_deg(res.theta, rots).max() < 0.01
    assert torch.equal(res.inliers, ~is_out)


# ------------------------------------------------------------------------------------------------------------
# Real data: CUB SfM cameras of the 15 mean-shape keypoints
# ------------------------------------------------------------------------------------------------------------


def test_recovers_real_cub_sfm_cameras(sfm_dir):
    mat = scipy.io.loadmat(str(sfm_dir / "anno_train.mat"), struct_as_record=False, squeeze_me=True)
    s_mean = np.asarray(mat["S"], dtype=np.float64).T  # (15, 3)
    annos = mat["sfm_anno"][:40]
    rots = np.stack([a.rot for a in annos])
    scale = np.array([float(a.scale) for a in annos])
    trans = np.stack([np.asarray(a.trans, dtype=np.float64).reshape(2) for a in annos])
    uv = scale[:, None, None] * np.einsum("nij,kj->nki", rots, s_mean)[..., :2] + trans[:, None]
    b = torch.from_numpy(2 * uv / 500.0 - 1)  # any similarity to NDC-like units will do
    x = torch.from_numpy(s_mean).expand(len(annos), 15, 3)
    res = pnp.solve_pnp(b, x, torch.ones(len(annos), 15, dtype=F64))
    err = _rot_err_deg(res.theta, Rotation.from_matrix(rots))
    assert err.max() < 0.01, err
    np.testing.assert_allclose(res.theta[:, 3].numpy(), 2 * scale / 500.0, rtol=1e-6)
    np.testing.assert_allclose(res.theta[:, 4:].numpy(), 2 * trans / 500.0 - 1, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Implicit gradients
# ------------------------------------------------------------------------------------------------------------


def _noisy_instance(n=3, k=10, seed=12):
    gen = torch.Generator().manual_seed(seed)
    theta, rots = _random_cameras(n, seed)
    x = _points("random", n, k, gen)
    noise = 0.03 * torch.randn(n, k, 2, generator=gen, dtype=F64)
    b = _project_ref(x, rots, theta[:, 3], theta[:, 4:]) + noise
    w = torch.rand(n, k, generator=gen, dtype=F64) + 0.2
    theta0 = pnp.weighted_ortho_pnp(b, x, w, theta)  # the local minimum near the truth
    return b, x, w, theta0


def test_implicit_gradients_match_central_differences():
    b, x, w, theta0 = _noisy_instance()
    upstream = torch.randn(theta0.shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    inputs = [t.clone().requires_grad_(True) for t in (b, x, w)]
    out = pnp.weighted_ortho_pnp(*inputs, theta0)
    grads = torch.autograd.grad((out * upstream).sum(), inputs)
    h = 1e-6
    for which, (inp, g) in enumerate(zip((b, x, w), grads)):
        # samples are solved independently, so every ±h perturbation becomes one row of a single big batch
        idx = list(np.ndindex(*inp.shape))
        rows = torch.tensor([i[0] for i in idx])
        args = [t[rows].repeat(2, *([1] * (t.dim() - 1))) for t in (b, x, w)]
        for j, i in enumerate(idx):
            args[which][(j, *i[1:])] += h
            args[which][(len(idx) + j, *i[1:])] -= h
        sol = pnp.weighted_ortho_pnp(*args, theta0[rows].repeat(2, 1))
        proj = (sol * upstream[rows].repeat(2, 1)).sum(-1)
        fd = ((proj[: len(idx)] - proj[len(idx) :]) / (2 * h)).reshape(inp.shape)
        torch.testing.assert_close(g, fd, atol=1e-6, rtol=1e-5)
        assert g.abs().max() > 1e-3  # the check is not vacuous


def test_gradcheck_tiny_instance():
    b, x, w, theta0 = _noisy_instance(n=2, k=4, seed=13)
    inputs = tuple(t.clone().requires_grad_(True) for t in (b, x, w))
    fn = lambda *z: pnp.weighted_ortho_pnp(*z, theta0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_gradcheck_near_identity_rotation():
    """θ* with ‖r‖ ~ 1e-4: the second derivatives of R(r) on its small-angle branch enter the Hessian."""
    gen = torch.Generator().manual_seed(16)
    x = torch.randn(1, 6, 3, generator=gen, dtype=F64)
    theta_true = torch.tensor([[0.0, 0.0, 0.0, 0.9, 0.1, -0.05]], dtype=F64)
    b = pnp.project_theta(x, theta_true) + 1e-4 * torch.randn(1, 6, 2, generator=gen, dtype=F64)
    w = torch.rand(1, 6, generator=gen, dtype=F64) + 0.5
    theta0 = pnp.weighted_ortho_pnp(b, x, w)
    assert 0 < theta0[0, :3].norm() < 1e-3
    inputs = tuple(t.clone().requires_grad_(True) for t in (b, x, w))
    fn = lambda *z: pnp.weighted_ortho_pnp(*z, theta0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_gradient_flows_through_solve_pnp_to_weights_and_points():
    x, b, _, _, _ = _outlier_problem("random", 2, 0.01, 0.0, seed=14)
    w = torch.rand(2, 32, dtype=F64).requires_grad_(True)
    b = b.clone().requires_grad_(True)
    res = pnp.solve_pnp(b, x, w)
    (res.camera.sum() + res.residual.sum()).backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    assert res.init_camera.grad_fn is None


def test_exact_fit_residual_has_finite_gradient():
    theta, _ = _random_cameras(2, seed=21)
    x = torch.randn(2, 8, 3, dtype=F64)
    b = pnp.project_theta(x, theta)
    w = torch.ones(2, 8, dtype=F64, requires_grad=True)
    res = pnp.solve_pnp(b, x, w, robust=False)
    res.residual.sum().backward()
    assert torch.isfinite(w.grad).all()


def test_double_backward_is_refused():
    b, x, w, theta0 = _noisy_instance(n=1, k=6, seed=20)
    w = w.clone().requires_grad_(True)
    loss = (pnp.weighted_ortho_pnp(b, x, w, theta0) ** 2).sum()  # upstream gradient depends on θ*
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        g.sum().backward()


def test_singular_hessian_gives_finite_forward_and_gradients():
    # collinear 3D points: rotation about the line and depth are unobservable -> singular Hessian
    t = torch.linspace(-1, 1, 8, dtype=F64)[:, None]
    x = (t * torch.tensor([[0.3, 1.0, 0.2]], dtype=F64))[None]
    b = (0.8 * x[..., :2] + 0.1).clone().requires_grad_(True)
    w = torch.ones(1, 8, dtype=F64, requires_grad=True)
    theta = pnp.weighted_ortho_pnp(b, x, w)
    assert torch.isfinite(theta).all()
    torch.testing.assert_close(pnp.project_theta(x, theta.detach()), b.detach(), atol=1e-8, rtol=0)
    theta.sum().backward()
    assert torch.isfinite(b.grad).all() and torch.isfinite(w.grad).all()


def test_solve_pnp_on_device(device):
    """Runs where the tensors live (``pytest --device cuda`` reruns it on a GPU), float32 in and out."""
    x, b, _, rots, _ = _outlier_problem("random", 3, 0.0, 0.0, seed=17)
    w = torch.ones(3, 32, device=device, requires_grad=True)
    res = pnp.solve_pnp(b.float().to(device), x.float().to(device), w)
    assert res.camera.device.type == device.type and res.camera.dtype == torch.float32
    assert res.inliers.device.type == device.type and res.init_ok.device.type == device.type
    assert _rot_err_deg(res.theta.cpu(), rots).max() < 0.01
    res.camera.sum().backward()
    assert w.grad.device.type == device.type and torch.isfinite(w.grad).all()


def test_batch_samples_are_independent():
    b, x, w, theta0 = _noisy_instance(n=4, k=12, seed=15)
    batch = pnp.weighted_ortho_pnp(b, x, w)
    for i in range(4):
        single = pnp.weighted_ortho_pnp(b[i : i + 1], x[i : i + 1], w[i : i + 1])
        torch.testing.assert_close(single, batch[i : i + 1], atol=1e-10, rtol=0)
    # weights' scale does not matter
    torch.testing.assert_close(pnp.weighted_ortho_pnp(b, x, 7.0 * w), batch, atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------------------


def _valid(n=2, k=6):
    return torch.rand(n, k, 2), torch.randn(n, k, 3), torch.ones(n, k)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b, x, w: (b[..., :1], x, w), r"points2d must have shape \(B, K, 2\)"),
        (lambda b, x, w: (b[:0], x[:0], w[:0]), r"points2d must have shape \(B, K, 2\) with B >= 1"),
        (lambda b, x, w: (b, x[:, :5], w), r"points3d must have shape \(B, K, 3\) = \(2, 6, 3\)"),
        (lambda b, x, w: (b, x, w[0]), r"weights must have shape \(B, K\) = \(2, 6\)"),
        (lambda b, x, w: (b[:, :3], x[:, :3], w[:, :3]), r"K >= 4"),
        (lambda b, x, w: (b, x, w.index_fill(1, torch.tensor([2]), float("nan"))), r"weights contains"),
        (lambda b, x, w: (b, x.clone().fill_(float("inf")), w), r"points3d contains .* non-finite"),
        (lambda b, x, w: (b, x, torch.zeros_like(w)), r"weights of sample 0 have only 0 positive"),
        (lambda b, x, w: (b, x, w * torch.tensor([1.0, 0, 0, 0, 0, 1])), r"only 2 positive entries"),
        (lambda b, x, w: (b, x, -w), r"weights must be non-negative"),
        (lambda b, x, w: (b, x.double(), w), r"points3d has dtype/device"),
        (lambda b, x, w: (b.numpy(), x, w), r"points2d must be a torch.Tensor"),
        (lambda b, x, w: (b, x, w.long()), r"weights must be a floating-point tensor"),
    ],
)
def test_bad_inputs_raise_value_error(mutate, match):
    args = mutate(*_valid())
    with pytest.raises(ValueError, match=match):
        pnp.weighted_ortho_pnp(*args)
    with pytest.raises(ValueError, match=match):
        pnp.solve_pnp(*args)


def test_bad_options_raise_value_error():
    b, x, w = _valid(k=8)
    with pytest.raises(ValueError, match=r"theta0 must be a tensor of shape \(B, 6\)"):
        pnp.weighted_ortho_pnp(b, x, w, torch.zeros(2, 7))
    with pytest.raises(ValueError, match="theta0 contains non-finite"):
        pnp.weighted_ortho_pnp(b, x, w, torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="max_iter must be a positive int"):
        pnp.weighted_ortho_pnp(b, x, w, max_iter=0)
    with pytest.raises(ValueError, match="method must be one of"):
        pnp.ransac_init(b[0], x[0], w[0], method="epnp")
    with pytest.raises(ValueError, match=r"top_k must be an int in \[4, K=8\]"):
        pnp.ransac_init(b[0], x[0], w[0], top_k=3)
    with pytest.raises(ValueError, match="weights must have shape"):
        pnp.ransac_init(b[0], x[0], w)
    with pytest.raises(ValueError, match="points2d contains"):
        pnp.ransac_init(b[0] * float("nan"), x[0], w[0])
    with pytest.raises(ValueError, match=r"unknown RANSAC option\(s\) \['threshold'\]"):
        pnp.solve_pnp(b, x, w, threshold=0.1)
    with pytest.raises(ValueError, match="top_k must be an int"):
        pnp.solve_pnp(b, x, w, top_k=9)
    with pytest.raises(ValueError, match="robust=False"):
        pnp.solve_pnp(b, x, w, robust=False, top_k=4)
    with pytest.raises(ValueError, match=r"theta must have shape \(\.\.\., 6\)"):
        pnp.theta_to_camera(torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"cam must have shape \(\.\.\., 7\)"):
        pnp.camera_to_theta(torch.zeros(3, 6))
