"""PnP for the keypoint pose head: robust initialisation and a differentiable weighted orthographic PnP.

Conventions (``docs/conventions.md``, METHOD §2 and §4.6):

* 2D points ``b_k`` are NDC, x right, y **down**, in about ``[-1, 1]``; 3D points ``X_k`` are in the
  object frame.
* The pose parameter vector is ``theta = [r (axis-angle, 3), s, tx, ty]`` (``(..., 6)``) and projects
  ``p_k = s·P·R(r)·X_k + t`` with ``P = [[1, 0, 0], [0, 1, 0]]`` (weak perspective, active rotation).
* The camera is the ``(..., 7)`` weak-perspective vector ``[s, tx, ty, qw, qx, qy, qz]`` with
  ``q = q(r)``; :func:`theta_to_camera` / :func:`camera_to_theta` convert. Returned solutions have
  ``s > 0`` and ``‖r‖ ≤ π``.

Pipeline (:func:`solve_pnp`): a robust per-sample initialisation (:func:`ransac_init`, NumPy / OpenCV, no
gradient), inlier filtering, then :func:`weighted_ortho_pnp`, which solves

    θ* = argmin_θ f(θ; b, X, w),   f = Σ_k w_k ‖b_k − (s·P·R(r)·X_k + t)‖²

independently per sample by Levenberg–Marquardt (forward pass, no autograd graph) and differentiates the
solution by the implicit function theorem: ``dθ*/dz = −H⁻¹ ∂²f/∂θ∂z`` with ``H = ∂²f/∂θ²`` (Gould et al.,
"Deep Declarative Networks", TPAMI 2021; Campbell et al., "Solving the blind perspective-n-point problem
end-to-end", ECCV 2020). Gradients flow to the weights, the 2D points and the 3D points.

Default initialiser: ``method="ortho"``, an own RANSAC in the weak-perspective model. OpenCV's
``solvePnPRansac`` with focal 1 in NDC (the original recipe, ``method="sqpnp" | "p3p" | "ap3p"``) models
the nearly orthographic data as strongly perspective; measured on K = 32, its converted start is ~17–25°
off even without noise, and with 30 % outliers the refined median error is 5–11° against ~0.5° for
``"ortho"``.

Example:
    >>> X = torch.randn(1, 8, 3, dtype=torch.float64)
    >>> theta_gt = torch.tensor([[0.3, -0.2, 0.1, 0.8, 0.05, -0.1]], dtype=torch.float64)
    >>> b = project_theta(X, theta_gt)
    >>> res = solve_pnp(b, X, torch.ones(1, 8, dtype=torch.float64))
    >>> bool(torch.allclose(res.theta, theta_gt, atol=1e-8))
    True
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import cv2
import numpy as np
import torch

from slopekp.geometry.rotations import (
    axis_angle_to_quat,
    axis_angle_to_rotmat,
    quat_to_axis_angle,
    rotmat_to_axis_angle,
)

__all__ = [
    "PnPResult",
    "RansacInit",
    "camera_to_theta",
    "project_theta",
    "ransac_init",
    "solve_pnp",
    "theta_to_camera",
    "weighted_ortho_pnp",
]

InitMethod = Literal["ortho", "sqpnp", "p3p", "ap3p"]
_CV2_FLAGS = {"sqpnp": cv2.SOLVEPNP_SQPNP, "p3p": cv2.SOLVEPNP_P3P, "ap3p": cv2.SOLVEPNP_AP3P}
_TRIVIAL_THETA = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
_RANSAC_DEFAULTS = {"reproj_error": 0.08, "iterations": 1000, "method": "ortho", "seed": 0}


class PnPResult(NamedTuple):
    """Result of :func:`solve_pnp` (B samples, K points)."""

    camera: torch.Tensor
    """(B, 7) ``[s, tx, ty, qw, qx, qy, qz]`` from the refined ``theta`` (differentiable)."""
    init_camera: torch.Tensor
    """(B, 7) camera of the initialisation ``theta0`` (no gradient)."""
    theta: torch.Tensor
    """(B, 6) refined ``[r, s, tx, ty]`` (differentiable w.r.t. weights, 2D and 3D points)."""
    inliers: torch.Tensor
    """(B, K) bool: points kept by the robust init (all True when ``robust=False``)."""
    residual: torch.Tensor
    """(B,) weighted RMS reprojection error (NDC) of ``theta`` over the weights actually used."""
    init_ok: torch.Tensor
    """(B,) bool: False where the robust init failed and the trivial init ``[0, 0, 0, 1, 0, 0]`` was used."""


class RansacInit(NamedTuple):
    """Result of :func:`ransac_init` for one sample of K points."""

    theta0: torch.Tensor
    """(6,) float64 ``[r, s, tx, ty]``; the trivial ``[0, 0, 0, 1, 0, 0]`` when ``ok`` is False."""
    inliers: torch.Tensor
    """(K,) bool: points reprojected within ``reproj_error`` by ``theta0`` (all True on failure)."""
    ok: bool
    """False when the solver failed or gave a non-finite / behind-camera pose (then the fallback is used)."""


# ------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix ``[v]×`` with ``[v]× u = v × u``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


# ------------------------------------------------------------------------------------------------------------
# Parametrisation
# ------------------------------------------------------------------------------------------------------------


def theta_to_camera(theta: torch.Tensor) -> torch.Tensor:
    """``theta (..., 6) = [r, s, tx, ty]`` -> camera ``(..., 7) = [s, tx, ty, qw, qx, qy, qz]``
    (differentiable).

    ``q = [cos(‖r‖/2), sin(‖r‖/2)·r/‖r‖]`` (METHOD §4.6 "Output camera"); smooth at ``r = 0``.
    """
    if theta.shape[-1:] != (6,):
        raise ValueError(f"theta must have shape (..., 6), got {tuple(theta.shape)}")
    return torch.cat([theta[..., 3:6], axis_angle_to_quat(theta[..., :3])], dim=-1)


def camera_to_theta(cam: torch.Tensor) -> torch.Tensor:
    """Camera ``(..., 7) = [s, tx, ty, q]`` -> ``theta (..., 6) = [r, s, tx, ty]`` with ``‖r‖ ≤ π``.

    The quaternion is normalised first; ``q`` and ``−q`` give the same ``r``.
    """
    if cam.shape[-1:] != (7,):
        raise ValueError(f"cam must have shape (..., 7), got {tuple(cam.shape)}")
    return torch.cat([quat_to_axis_angle(cam[..., 3:7]), cam[..., :3]], dim=-1)


def project_theta(points3d: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Weak-perspective projection ``points3d (..., N, 3)``, ``theta (..., 6)`` -> NDC ``(..., N, 2)``.

    ``p = s·P·R(r)·X + t`` (the same model as ``camera.project_points`` without the depth channel).
    """
    rot = axis_angle_to_rotmat(theta[..., :3])
    xy = (points3d @ rot.transpose(-1, -2))[..., :2]
    return theta[..., 3, None, None] * xy + theta[..., None, 4:6]


def _objective(theta: torch.Tensor, b: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-sample ``f = Σ_k w_k ‖b_k − proj_k(θ)‖²``: theta (B,6), b (B,K,2), x (B,K,3), w (B,K) -> (B,)."""
    e = b - project_theta(x, theta)
    return (w * (e * e).sum(-1)).sum(-1)


# ------------------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------------------


def _check_batch(points2d, points3d, weights, theta0=None) -> None:
    """Validate the batched inputs of :func:`weighted_ortho_pnp` / :func:`solve_pnp`; raise ``ValueError``."""
    for name, t in (("points2d", points2d), ("points3d", points3d), ("weights", weights)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if points2d.dim() != 3 or points2d.shape[-1] != 2 or points2d.shape[0] == 0:
        raise ValueError(f"points2d must have shape (B, K, 2) with B >= 1, got {tuple(points2d.shape)}")
    bsz, k = points2d.shape[:2]
    if tuple(points3d.shape) != (bsz, k, 3):
        raise ValueError(f"points3d must have shape (B, K, 3) = ({bsz}, {k}, 3), got {tuple(points3d.shape)}")
    if tuple(weights.shape) != (bsz, k):
        raise ValueError(f"weights must have shape (B, K) = ({bsz}, {k}), got {tuple(weights.shape)}")
    if k < 4:
        raise ValueError(
            f"need K >= 4 correspondences per sample, got K = {k} (points2d {tuple(points2d.shape)})"
        )
    for name, t in (("points3d", points3d), ("weights", weights)):
        if t.dtype != points2d.dtype or t.device != points2d.device:
            raise ValueError(
                f"{name} has dtype/device {t.dtype}/{t.device}, "
                f"points2d has {points2d.dtype}/{points2d.device}"
            )
    for name, t in (("points2d", points2d), ("points3d", points3d), ("weights", weights)):
        if not torch.isfinite(t).all():
            n_bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf)")
    if (weights < 0).any():
        raise ValueError(f"weights must be non-negative, got min {float(weights.min()):.3g}")
    n_pos = (weights > 0).sum(-1)
    if (n_pos < 3).any():
        bad = int(torch.nonzero(n_pos < 3)[0, 0])
        raise ValueError(
            f"weights of sample {bad} have only {int(n_pos[bad])} positive entries; at least 3 are "
            "needed for a unique orthographic pose (all-zero weights give no constraint)"
        )
    if theta0 is not None:
        if not isinstance(theta0, torch.Tensor) or tuple(theta0.shape) != (bsz, 6):
            shape = tuple(theta0.shape) if isinstance(theta0, torch.Tensor) else type(theta0).__name__
            raise ValueError(f"theta0 must be a tensor of shape (B, 6) = ({bsz}, 6), got {shape}")
        if not torch.isfinite(theta0).all():
            raise ValueError("theta0 contains non-finite values")


def _work_dtype(device: torch.device) -> torch.dtype:
    """The solver works in float64 (6 unknowns, cheap) except on backends without float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


# ------------------------------------------------------------------------------------------------------------
# Forward solver: batched Levenberg–Marquardt on (R, s, t) with a left-multiplied rotation update
# ------------------------------------------------------------------------------------------------------------


def _lm_solve(
    b: torch.Tensor, x: torch.Tensor, w: torch.Tensor, theta0: torch.Tensor, max_iter: int, n_polish: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise f per sample from ``theta0``. b (B,K,2), x (B,K,3), w (B,K), theta0 (B,6) -> (theta (B,6),
    converged (B,)).

    Parametrisation of a step: ``R ← exp([δ]×)·R``, ``s ← s + Δs``, ``t ← t + Δt``. With ``Y = R X`` the
    residual ``e = b − s·P·Y − t`` has Jacobian ``∂(sPY + t)/∂(δ, s, t) = [−s·P·[Y]×, P·Y, I₂]``. The damped
    normal equations ``(JᵀWJ + λ·(diag(JᵀWJ) + ε)) Δ = JᵀWe`` are solved per sample; a step is kept only if it
    lowers f, and λ adapts per sample. This is invariant to where the rotation sits (no axis-angle singularity
    at ‖r‖ = π). Weights are normalised to sum 1 (θ* does not depend on their scale). ``n_polish`` final
    Gauss–Newton steps land on the stationary point to rounding precision (see below).
    """
    bsz = b.shape[0]
    w = w / w.sum(-1, keepdim=True)
    rot = axis_angle_to_rotmat(theta0[:, :3])
    s = theta0[:, 3].clone()
    t = theta0[:, 4:6].clone()

    def cost_of(rot, s, t):
        e = b - s[:, None, None] * (x @ rot.transpose(-1, -2))[..., :2] - t[:, None, :]
        return (w * (e * e).sum(-1)).sum(-1), e

    cost, e = cost_of(rot, s, t)
    lam = torch.full((bsz,), 1e-3, dtype=b.dtype, device=b.device)
    active = torch.ones(bsz, dtype=torch.bool, device=b.device)
    converged = torch.zeros_like(active)
    eps = torch.finfo(b.dtype).eps
    polished = 0
    for it in range(max_iter + n_polish):
        polish = it >= max_iter or not bool(active.any())
        if polish:
            if polished == n_polish:
                break
            polished += 1
            # Polishing: near θ* f changes only at rounding level (δθ ~ sqrt(eps·f/H)), so the cost tests of
            # LM can stop ~1e-12 short of the stationary point; a few nearly undamped Gauss–Newton steps, kept
            # unless f grows beyond rounding, land on it (exact θ* matters for the implicit gradient).
            active = torch.ones_like(active)
            lam = torch.full_like(lam, 1e-12)
        y = x @ rot.transpose(-1, -2)  # (B, K, 3)
        jrot = -s[:, None, None, None] * _skew(y)[..., :2, :]  # (B, K, 2, 3)
        js = y[..., :2, None]  # (B, K, 2, 1)
        jt = torch.eye(2, dtype=b.dtype, device=b.device).expand(*y.shape[:2], 2, 2)
        jac = torch.cat([jrot, js, jt], dim=-1)  # (B, K, 2, 6)
        jw = jac * w[..., None, None]
        a = torch.einsum("bkio,bkip->bop", jw, jac)  # (B, 6, 6)
        g = torch.einsum("bkio,bki->bo", jw, e)  # (B, 6)
        diag = torch.diagonal(a, dim1=-2, dim2=-1)
        damp = lam[:, None] * (diag + 1e-9 * diag.mean(-1, keepdim=True) + eps)
        step = torch.linalg.solve(a + torch.diag_embed(damp), g[..., None])[..., 0]
        step = torch.where(active[:, None] & torch.isfinite(step).all(-1, keepdim=True), step, 0.0)
        rot_new = axis_angle_to_rotmat(step[:, :3]) @ rot
        s_new, t_new = s + step[:, 3], t + step[:, 4:6]
        cost_new, e_new = cost_of(rot_new, s_new, t_new)
        tol = 1e-10 if polish else 16 * eps  # relative increase of f still counted as "not worse"
        accept = active & (cost_new <= cost * (1 + tol))
        rot = torch.where(accept[:, None, None], rot_new, rot)
        s, t = torch.where(accept, s_new, s), torch.where(accept[:, None], t_new, t)
        e = torch.where(accept[:, None, None], e_new, e)
        cost = torch.where(accept, cost_new, cost)
        if polish:
            continue
        lam = torch.where(accept, (lam / 3).clamp_min(1e-12), lam * 4)
        # converged: tiny step (GN near the minimum, or a saturated damping after rejections), or exact fit.
        # (A relative-decrease test would stop ~sqrt(eps) early: f changes only quadratically near θ*.)
        small_step = step.norm(dim=-1) <= 1e3 * eps * (1 + s.abs() + t.norm(dim=-1))
        done = active & (small_step | (cost <= eps**2) | (lam > 1e12))
        converged = converged | done
        active = active & ~done
    # s < 0 is the same projection as s > 0 with R ← diag(−1, −1, 1)·R (a half turn about the optical axis)
    neg = s < 0
    flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=b.dtype, device=b.device))
    rot = torch.where(neg[:, None, None], flip @ rot, rot)
    s = s.abs()
    r = rotmat_to_axis_angle(rot)
    return torch.cat([r, s[:, None], t], dim=-1), converged


def _pinv_solve_sym(h: torch.Tensor, v: torch.Tensor, rtol: float) -> torch.Tensor:
    """Solve ``H u = v`` for symmetric ``H (B, 6, 6)``, ``v (B, 6)``, dropping eigen-directions with
    ``|λ| ≤ rtol·max|λ|`` (minimum-norm solution). A singular H (fewer than 3 weighted points, collinear 3D
    points) means θ* can move freely along the null space; those directions get zero gradient instead of
    inf/NaN.
    """
    evals, evecs = torch.linalg.eigh(h)
    big = evals.abs().amax(-1, keepdim=True)
    keep = evals.abs() > rtol * big
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    coef = (evecs.transpose(-1, -2) @ v[..., None])[..., 0] * inv
    return (evecs @ coef[..., None])[..., 0]


class _WeightedOrthoPnPFn(torch.autograd.Function):
    """θ* = argmin f(θ; b, X, w): LM forward, implicit-function-theorem backward."""

    @staticmethod
    def forward(ctx, points2d, points3d, weights, theta0, max_iter):
        wd = _work_dtype(points2d.device)
        theta, _ = _lm_solve(points2d.to(wd), points3d.to(wd), weights.to(wd), theta0.to(wd), max_iter)
        # the backward linearises at the work-precision θ* (a float32-rounded θ* is not stationary enough)
        ctx.save_for_backward(points2d, points3d, weights, theta)
        return theta.to(points2d.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_theta):
        points2d, points3d, weights, theta = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        if not any(need):
            return None, None, None, None, None
        wd = _work_dtype(points2d.device)
        with torch.enable_grad():
            th = theta.detach().requires_grad_(True)
            z = [t.detach().to(wd).requires_grad_(n) for t, n in zip((points2d, points3d, weights), need)]
            f = _objective(th, *z).sum()
            g = torch.autograd.grad(f, th, create_graph=True)[0]  # (B, 6) = ∂f/∂θ per sample
            hess = torch.stack(
                [torch.autograd.grad(g[:, i].sum(), th, retain_graph=True)[0] for i in range(6)], dim=1
            )  # (B, 6, 6)
            hess = 0.5 * (hess + hess.transpose(-1, -2))
            rtol = 1e-10 if wd == torch.float64 else 1e-5
            u = _pinv_solve_sym(hess.detach(), grad_theta.to(wd), rtol)
            # ∂L/∂z = −(H⁻¹ ∂L/∂θ*)ᵀ ∂²f/∂θ∂z, i.e. a vector-Jacobian product of ∂f/∂θ with u
            inputs = [t for t, n in zip(z, need) if n]
            grads = iter(torch.autograd.grad(-(u * g).sum(), inputs, allow_unused=True))
        out = []
        for t, n in zip((points2d, points3d, weights), need):
            gr = next(grads) if n else None
            if n:  # finite by construction: finite inputs, pseudo-inverse of H (no silent NaN clean-up here)
                gr = torch.zeros_like(t) if gr is None else gr.to(t.dtype)
            out.append(gr)
        return out[0], out[1], out[2], None, None


def weighted_ortho_pnp(
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    weights: torch.Tensor,
    theta0: torch.Tensor | None = None,
    max_iter: int = 100,
) -> torch.Tensor:
    """Differentiable weighted orthographic PnP, independently per sample.

    Args:
        points2d: (B, K, 2) NDC observations ``b_k`` (x right, y down).
        points3d: (B, K, 3) object-frame points ``X_k``.
        weights: (B, K) non-negative confidences ``w_k``; each sample needs ≥ 3 positive ones. Their scale
            does not matter.
        theta0: (B, 6) initial ``[r, s, tx, ty]``; default the trivial ``[0, 0, 0, 1, 0, 0]`` (identity
            rotation).
        max_iter: Levenberg–Marquardt iterations at most (each sample stops on its own convergence).

    Returns:
        theta: (B, 6) ``[r, s, tx, ty]`` minimising ``Σ_k w_k ‖b_k − (s·P·R(r)·X_k + t)‖²`` (the local minimum
        reached from ``theta0``), with ``s > 0`` and ``‖r‖ ≤ π``, dtype/device of ``points2d``.
        Gradients w.r.t. ``points2d``, ``points3d`` and ``weights`` come from the implicit function theorem
        (``theta0`` gets none). Where the Hessian is singular (e.g. collinear 3D points), the null-space
        directions get zero gradient (pseudo-inverse), never NaN.

    Raises:
        ValueError: bad shapes, K < 4, non-finite values, negative weights, < 3 positive weights in a sample.
    """
    _check_batch(points2d, points3d, weights, theta0)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if theta0 is None:
        theta0 = points2d.new_tensor(_TRIVIAL_THETA).expand(points2d.shape[0], 6)
    return _WeightedOrthoPnPFn.apply(points2d, points3d, weights, theta0.detach(), max_iter)


# ------------------------------------------------------------------------------------------------------------
# Robust initialisation (per sample, NumPy / OpenCV, no gradient)
# ------------------------------------------------------------------------------------------------------------


def _as_numpy(name: str, a, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor or array -> float64 ndarray of ``shape`` (-1 = any), finite; ``ValueError`` naming ``name``."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != len(shape) or any(s not in (-1, d) for s, d in zip(shape, a.shape)):
        want = "(" + ", ".join("K" if s == -1 else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(a)).sum())} non-finite value(s) (NaN or inf)")
    return a


def _ortho_project_np(x: np.ndarray, rot: np.ndarray, s, t) -> np.ndarray:
    """NumPy ``s·P·R·X + t``: x (K, 3), rot (..., 3, 3), s (...,), t (..., 2) -> (..., K, 2)."""
    xy = (x @ np.swapaxes(rot, -1, -2))[..., :2]
    return np.asarray(s)[..., None, None] * xy + np.asarray(t)[..., None, :]


def _nearest_scaled_rotation(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine rows ``A (..., 2, 3)`` -> nearest ``s·P·R``: (R (..., 3, 3), s (...,), valid (...,) bool).

    The nearest matrix with orthonormal rows is the polar factor ``(A Aᵀ)^(-1/2) A`` (= ``U Vᵀ`` of the SVD)
    and ``s`` is the mean singular value. For the 2×2 SPD ``M = A Aᵀ``: ``√M = (M + √det M·I)/τ`` with
    ``τ = √(tr M + 2√det M)``, so ``s = tr(√M)/2 = τ/2`` and ``(√M)⁻¹ = adj(√M)/√det M``. The third row of R
    is ``r₁ × r₂`` (``det R = +1``). Rank-deficient A (degenerate sample) is flagged invalid.
    """
    m = a @ np.swapaxes(a, -1, -2)
    det = np.clip(m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0], 0.0, None)
    sq = np.sqrt(det)
    tau = np.sqrt(m[..., 0, 0] + m[..., 1, 1] + 2 * sq)
    valid = sq > 1e-9 * (tau**2 + 1e-300)
    sq_safe = np.where(valid, sq, 1.0)
    tau_safe = np.where(valid, tau, 1.0)
    root = (m + sq[..., None, None] * np.eye(2)) / tau_safe[..., None, None]
    adj = np.stack([root[..., 1, 1], -root[..., 0, 1], -root[..., 1, 0], root[..., 0, 0]], -1)
    inv_root = adj.reshape(*root.shape) / sq_safe[..., None, None]
    rows = inv_root @ a
    rot = np.concatenate([rows, np.cross(rows[..., 0, :], rows[..., 1, :])[..., None, :]], axis=-2)
    return rot, tau / 2, valid


def _fit_scaled_ortho(b: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Weighted affine least squares ``b ≈ A X + t``, then nearest scaled rotation and the LS ``t`` given it.

    b (K, 2), x (K, 3), w (K,) -> (R (3, 3), s, t (2,)). Needs ≥ 4 non-coplanar weighted points for a unique
    A; the minimum-norm solution is used otherwise.
    """
    xh = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    sw = np.sqrt(w)[:, None]
    m = np.linalg.lstsq(xh * sw, b * sw, rcond=None)[0]  # (4, 2)
    rot, s, _ = _nearest_scaled_rotation(m[:3].T)
    wn = w / w.sum()
    t = (wn[:, None] * (b - s * (x @ rot.T)[:, :2])).sum(0)
    return rot, float(s), t


def _ortho_hypotheses(
    b: np.ndarray, x: np.ndarray, w: np.ndarray, sel: np.ndarray, thr: float, iterations: int, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Own RANSAC with a 4-point affine minimal solver, for one sample; ``None`` when it finds nothing.

    Hypotheses come from random 4-subsets of ``sel`` (the top-k points), each fit exactly as an affine camera
    and projected to the nearest scaled rotation, and are scored by truncated squared error (MSAC) on ``sel``.
    The best one is re-fitted on its inliers by weighted affine LS. Returns two candidates ``(2, 6)``: that
    fit and its depth mirror about the inliers' flattest direction (the near-planar ambiguity of weak
    perspective), plus the fitting weights ``(K,)`` (``w`` on the inliers, 0 elsewhere) with which
    :func:`_rank_candidates` refines both and keeps the better. Measured on thin random sets (depth spread
    0.003–0.03 of the width, σ = 0.005–0.01): the brief LM refinement before the final inlier test matters
    (without it, > 20° failures rose from 8 % to 12 % and from 22 % to 27 % at depth 0.003), the mirror
    candidate itself changes < 1 % of the results; it is kept as a cheap, principled tie-breaker.
    """
    rng = np.random.default_rng(seed)
    n = len(sel)
    idx = sel[np.argsort(rng.random((iterations, n)), axis=1)[:, :4]]  # (I, 4)
    xh = np.concatenate([x[idx], np.ones((iterations, 4, 1))], axis=-1)  # (I, 4, 4)
    # exact affine fit per sample; (near-)coplanar samples have no unique fit and are skipped
    scale = np.abs(x[sel] - x[sel].mean(0)).max() + 1e-300
    ok_fit = np.abs(np.linalg.det(xh)) > 1e-6 * scale**3
    xh[~ok_fit] = np.eye(4)
    m = np.linalg.solve(xh, b[idx])  # (I, 4, 2)
    rot, s, ok_rot = _nearest_scaled_rotation(np.swapaxes(m[:, :3], -1, -2))
    t = (b[idx] - s[:, None, None] * (x[idx] @ np.swapaxes(rot, -1, -2))[..., :2]).mean(1)
    err2 = ((_ortho_project_np(x[sel], rot, s, t) - b[sel]) ** 2).sum(-1)  # (I, n)
    score = np.where(ok_fit & ok_rot, np.minimum(err2, thr**2).sum(-1), np.inf)
    if not np.isfinite(score).any():
        return None
    inl = err2[int(np.argmin(score))] <= thr**2
    if inl.sum() < 4:
        return None
    fit_w = np.zeros_like(w)
    fit_w[sel[inl]] = w[sel[inl]] + 1e-12
    wi = fit_w[sel[inl]]
    rot0, s0, t0 = _fit_scaled_ortho(b[sel[inl]], x[sel[inl]], wi)
    xc = x[sel[inl]] - (wi[:, None] * x[sel[inl]]).sum(0) / wi.sum()
    normal = np.linalg.svd(xc * np.sqrt(wi)[:, None], full_matrices=False)[2][-1]
    rot1 = np.diag([1.0, 1.0, -1.0]) @ rot0 @ (np.eye(3) - 2 * np.outer(normal, normal))
    rvecs = rotmat_to_axis_angle(torch.from_numpy(np.stack([rot0, rot1]))).numpy()
    cands = np.concatenate([rvecs, np.tile([s0, *t0], (2, 1))], axis=1)
    return cands, fit_w


def _rank_candidates(b: np.ndarray, x: np.ndarray, fit_w: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Refine both candidates of each sample briefly and keep the one with the lower weighted residual.

    b (n, K, 2), x (n, K, 3), fit_w (n, K), cands (n, 2, 6) -> theta (n, 6). All samples in one batched
    :func:`_lm_solve`; a few steps are enough to rank, the full refinement follows in weighted_ortho_pnp.
    """
    n = len(cands)
    bt, xt, wt = (torch.from_numpy(a).repeat_interleave(2, dim=0) for a in (b, x, fit_w))
    refined, _ = _lm_solve(bt, xt, wt, torch.from_numpy(cands).reshape(2 * n, 6), max_iter=8, n_polish=0)
    cost = _objective(refined, bt, xt, wt).reshape(n, 2)
    return refined.reshape(n, 2, 6)[torch.arange(n), cost.argmin(-1)].numpy()


def _cv2_ransac(
    b: np.ndarray, x: np.ndarray, sel: np.ndarray, thr: float, iterations: int, flag: int, seed: int
) -> tuple[np.ndarray, bool]:
    """``cv2.solvePnPRansac`` with identity intrinsics (focal 1 in NDC) on ``sel``, then perspective → weak
    perspective (METHOD §4.6): ``z̄ = mean_k (R X_k + t)_z`` over all K points, ``s = 1/z̄``,
    ``t_ortho = t_xy·s``.
    """
    cv2.setRNGSeed(seed)
    try:
        ok, rvec, tvec, _ = cv2.solvePnPRansac(
            x[sel].reshape(-1, 1, 3),
            b[sel].reshape(-1, 1, 2),
            np.eye(3),
            None,
            iterationsCount=iterations,
            reprojectionError=thr,
            flags=flag,
        )
    except cv2.error:
        return np.array(_TRIVIAL_THETA), False
    if not ok or rvec is None or tvec is None:
        return np.array(_TRIVIAL_THETA), False
    rvec, tvec = rvec.reshape(3), tvec.reshape(3)
    rot = cv2.Rodrigues(rvec)[0]
    zbar = float((x @ rot.T + tvec)[:, 2].mean())
    if not (np.isfinite(rvec).all() and np.isfinite(tvec).all() and np.isfinite(zbar) and zbar > 1e-6):
        return np.array(_TRIVIAL_THETA), False
    s = 1.0 / zbar
    return np.concatenate([rvec, [s], tvec[:2] * s]), True


def ransac_init(
    points2d,
    points3d,
    weights,
    top_k: int | None = None,
    reproj_error: float = 0.08,
    iterations: int = 1000,
    method: InitMethod = "ortho",
    seed: int = 0,
) -> RansacInit:
    """Robust initial pose for one sample (no gradient).

    Args:
        points2d: (K, 2) NDC points (tensor or array).
        points3d: (K, 3) object points.
        weights: (K,) non-negative confidences; RANSAC samples only the ``top_k`` most confident points.
        top_k: how many points RANSAC sees; ``None`` = ``max(K // 2, 4)`` (METHOD §4.6 uses the top 16 of 32).
            Must be in ``[4, K]``.
        reproj_error: inlier threshold in NDC units.
        iterations: RANSAC hypotheses.
        method: ``"ortho"`` (default): own RANSAC with a 4-point affine solver + nearest scaled rotation,
            mirror candidate and LM polish, all in the weak-perspective model of the data; ``"sqpnp"``,
            ``"p3p"``, ``"ap3p"``: ``cv2.solvePnPRansac`` with identity intrinsics (focal 1 in NDC, the
            original recipe) and the perspective → weak-perspective conversion of METHOD §4.6.
        seed: RNG seed (NumPy for ``"ortho"``, ``cv2.setRNGSeed`` otherwise), so results are deterministic.

    Returns:
        :class:`RansacInit` ``(theta0 (6,) float64, inliers (K,) bool, ok)``. ``inliers`` are all K points
        whose weak-perspective reprojection error under ``theta0`` is ≤ ``reproj_error``. On failure (solver
        error, non-finite pose, object behind the camera, < 4 inliers) ``theta0`` falls back to the trivial
        ``[0, 0, 0, 1, 0, 0]``, ``inliers`` are all True and ``ok`` is False.

    Raises:
        ValueError: bad shapes, K < 4, non-finite values, negative weights, bad ``top_k`` / ``method`` /
            ``iterations``.
    """
    b = _as_numpy("points2d", points2d, (-1, 2))
    k = b.shape[0]
    x = _as_numpy("points3d", points3d, (k, 3))
    w = _as_numpy("weights", weights, (k,))
    if k < 4:
        raise ValueError(f"need K >= 4 correspondences, got K = {k}")
    if (w < 0).any():
        raise ValueError(f"weights must be non-negative, got min {w.min():.3g}")
    top_k = _check_init_options(k, top_k, reproj_error, iterations, method)
    theta, inliers, ok = _robust_init_batch(
        b[None], x[None], w[None], top_k, reproj_error, iterations, method, seed
    )
    return RansacInit(theta[0], inliers[0], bool(ok[0]))


def _check_init_options(k: int, top_k, reproj_error, iterations, method) -> int:
    """Validate the RANSAC options of :func:`ransac_init`; returns the effective ``top_k``."""
    if method not in ("ortho", *_CV2_FLAGS):
        raise ValueError(f"method must be one of 'ortho', 'sqpnp', 'p3p', 'ap3p', got {method!r}")
    if top_k is None:
        top_k = max(k // 2, 4)
    if not isinstance(top_k, int) or not 4 <= top_k <= k:
        raise ValueError(f"top_k must be an int in [4, K={k}], got {top_k!r}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    if not (isinstance(reproj_error, (int, float)) and reproj_error > 0 and math.isfinite(reproj_error)):
        raise ValueError(f"reproj_error must be a positive finite number, got {reproj_error!r}")
    return top_k


def _robust_init_batch(
    b: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    top_k: int,
    reproj_error: float,
    iterations: int,
    method: str,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """:func:`ransac_init` on validated float64 arrays b (B,K,2), x (B,K,3), w (B,K), every sample with the
    same ``seed`` (so a sample's result does not depend on its batch). -> (theta0 (B,6) float64 tensor,
    inliers (B,K) bool tensor, ok (B,) bool array)."""
    bsz = b.shape[0]
    theta = np.tile(np.array(_TRIVIAL_THETA), (bsz, 1))
    ok = np.zeros(bsz, dtype=bool)
    sels = [np.argsort(-w[i], kind="stable")[:top_k] for i in range(bsz)]
    if method == "ortho":
        found = [
            _ortho_hypotheses(b[i], x[i], w[i], sels[i], reproj_error, iterations, seed) for i in range(bsz)
        ]
        idx = np.array([i for i, f in enumerate(found) if f is not None], dtype=np.int64)
        if len(idx):
            cands = np.stack([found[i][0] for i in idx])
            fit_w = np.stack([found[i][1] for i in idx])
            theta[idx] = _rank_candidates(b[idx], x[idx], fit_w, cands)
            ok[idx] = np.isfinite(theta[idx]).all(-1) & (theta[idx, 3] > 0)
    else:
        for i in range(bsz):
            theta[i], ok[i] = _cv2_ransac(
                b[i], x[i], sels[i], reproj_error, iterations, _CV2_FLAGS[method], seed
            )
    theta_t = torch.from_numpy(np.where(ok[:, None], theta, np.array(_TRIVIAL_THETA)))
    err = (project_theta(torch.from_numpy(x), theta_t) - torch.from_numpy(b)).norm(dim=-1)
    inliers = err <= reproj_error
    ok &= inliers.sum(-1).numpy() >= 4
    theta_t[~torch.from_numpy(ok)] = torch.tensor(_TRIVIAL_THETA, dtype=torch.float64)
    inliers[~torch.from_numpy(ok)] = True
    return theta_t, inliers, ok


def solve_pnp(
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    weights: torch.Tensor,
    robust: bool = True,
    top_k: int | None = None,
    max_iter: int = 100,
    **ransac_kw,
) -> PnPResult:
    """Keypoint pose: robust init per sample, inlier filtering, differentiable weighted ortho-PnP refinement.

    Args:
        points2d: (B, K, 2) NDC keypoints.
        points3d: (B, K, 3) object-frame keypoints (e.g. FPS vertices of the predicted shape).
        weights: (B, K) non-negative confidences (gradients flow to them, to ``points2d`` and ``points3d``).
        robust: run :func:`ransac_init` per sample; otherwise start from ``[0, 0, 0, 1, 0, 0]``.
        top_k: passed to :func:`ransac_init`.
        max_iter: passed to :func:`weighted_ortho_pnp`.
        **ransac_kw: ``reproj_error``, ``iterations``, ``method``, ``seed`` of :func:`ransac_init`.

    Inlier filtering: when the init found more than 6 inliers with positive weight, the weights of the other
    points are zeroed (``weights · inliers``) for the refinement; otherwise all weights are kept.

    Returns:
        :class:`PnPResult`.
    """
    _check_batch(points2d, points3d, weights)
    bsz, k = weights.shape
    if robust:
        unknown = set(ransac_kw) - set(_RANSAC_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown RANSAC option(s) {sorted(unknown)}; see ransac_init")
        opts = {**_RANSAC_DEFAULTS, **ransac_kw}
        top_k = _check_init_options(k, top_k, opts["reproj_error"], opts["iterations"], opts["method"])
        arrays = [t.detach().cpu().double().numpy() for t in (points2d, points3d, weights)]
        theta0, inliers, ok = _robust_init_batch(*arrays, top_k=top_k, **opts)
        theta0, inliers = theta0.to(points2d), inliers.to(points2d.device)
        init_ok = torch.from_numpy(ok).to(points2d.device)
        use = ((inliers & (weights > 0)).sum(-1) > 6)[:, None]
        w_used = torch.where(use, weights * inliers.to(weights.dtype), weights)
    else:
        if top_k is not None or ransac_kw:
            raise ValueError("top_k / RANSAC options were given but robust=False")
        theta0 = points2d.new_tensor(_TRIVIAL_THETA).expand(bsz, 6)
        inliers = torch.ones(bsz, k, dtype=torch.bool, device=points2d.device)
        init_ok = torch.ones(bsz, dtype=torch.bool, device=points2d.device)
        w_used = weights
    theta = weighted_ortho_pnp(points2d, points3d, w_used, theta0, max_iter=max_iter)
    err2 = ((points2d - project_theta(points3d, theta)) ** 2).sum(-1)
    ms = (w_used * err2).sum(-1) / w_used.sum(-1)
    pos = ms > 0  # double where: sqrt has an infinite derivative at an exact fit
    residual = torch.where(pos, torch.where(pos, ms, torch.ones_like(ms)).sqrt(), torch.zeros_like(ms))
    return PnPResult(
        camera=theta_to_camera(theta),
        init_camera=theta_to_camera(theta0),
        theta=theta,
        inliers=inliers,
        residual=residual,
        init_ok=init_ok,
    )
