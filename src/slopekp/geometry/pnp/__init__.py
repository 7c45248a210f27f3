"""PnP for the keypoint pose head: robust initialisation and a differentiable weighted orthographic PnP.

Modules: :mod:`.theta` (the pose parametrisation ``theta`` and its projection), :mod:`.refine` (the weighted
Levenberg–Marquardt solve and its implicit backward: :func:`weighted_ortho_pnp`), :mod:`.ransac` (the robust
initialisation: :func:`ransac_init`) and :mod:`.solve` (the pipeline: :func:`solve_pnp`, :class:`PnPResult`);
import the public names from this package.

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

from slopekp.geometry.pnp.ransac import InitMethod, RansacInit, ransac_init
from slopekp.geometry.pnp.refine import weighted_ortho_pnp
from slopekp.geometry.pnp.solve import PnPResult, solve_pnp
from slopekp.geometry.pnp.theta import camera_to_theta, project_theta, theta_to_camera

__all__ = [
    "InitMethod",
    "PnPResult",
    "RansacInit",
    "camera_to_theta",
    "project_theta",
    "ransac_init",
    "solve_pnp",
    "theta_to_camera",
    "weighted_ortho_pnp",
]
