"""The weighted orthographic PnP refinement: a batched Levenberg–Marquardt solve per sample (forward, no autograd
graph) and its implicit-function-theorem backward (:func:`weighted_ortho_pnp`; see :mod:`slopekp.geometry.pnp`)."""

from __future__ import annotations

import torch

from slopekp.geometry.pnp.theta import _TRIVIAL_THETA, project_theta
from slopekp.geometry.rotations import axis_angle_to_rotmat, rotmat_to_axis_angle
from slopekp.utils import check_finite

__all__ = ["weighted_ortho_pnp"]


# ------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix ``[v]×`` with ``[v]× u = v × u``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


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
        check_finite(name, t)
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
