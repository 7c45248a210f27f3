"""The PnP pipeline of the keypoint pose head: robust initialisation, inlier filtering, differentiable refinement
(:func:`solve_pnp`; see :mod:`slopekp.geometry.pnp`)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from slopekp.geometry.pnp.ransac import _RANSAC_DEFAULTS, _check_init_options, _robust_init_batch
from slopekp.geometry.pnp.refine import _check_batch, weighted_ortho_pnp
from slopekp.geometry.pnp.theta import _TRIVIAL_THETA, project_theta, theta_to_camera

__all__ = ["PnPResult", "solve_pnp"]


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
