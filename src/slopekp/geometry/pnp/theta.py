"""The pose parametrisation of the PnP solver: ``theta = [r (axis-angle, 3), s, tx, ty]`` (``(..., 6)``), its
weak-perspective projection ``p = s·P·R(r)·X + t`` and its conversion to and from the ``(..., 7)`` camera
(conventions: :mod:`slopekp.geometry.pnp`)."""

from __future__ import annotations

import torch

from slopekp.geometry.rotations import axis_angle_to_quat, axis_angle_to_rotmat, quat_to_axis_angle

__all__ = ["camera_to_theta", "project_theta", "theta_to_camera"]

#: The trivial pose ``[0, 0, 0, 1, 0, 0]`` (identity rotation, unit scale, no shift): the start without a robust
#: initialisation and the fallback where it fails.
_TRIVIAL_THETA = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0)


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
