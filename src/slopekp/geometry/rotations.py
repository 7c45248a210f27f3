"""Rotation representations and conversions (pure functions on tensors).

Conventions (binding, see ``docs/conventions.md``):

* Quaternions are ``(..., 4)`` tensors, **scalar first** ``(w, x, y, z)``, Hamilton product,
  *active* rotation: ``R(q)·X = q ⊗ (0, X) ⊗ q*``. Libraries that are scalar-last (SciPy, roma)
  are converted at the boundary.
* Rotation matrices are ``(..., 3, 3)`` and act on column vectors: ``X' = R @ X``.
* Axis-angle values are rotation vectors ``(..., 3)`` = angle · unit axis, angle in radians.
* 6D (Zhou et al. 2019, "On the Continuity of Rotation Representations in Neural Networks"): the
  first two *columns* of ``R``, stored row-major as ``R[..., :, :2].reshape(..., 6)``.
* 9D (Levinson et al. 2020, "An Analysis of SVD for Deep Rotation Estimation"): a ``3 × 3``
  matrix (or its row-major ``(..., 9)`` flattening) projected onto SO(3) by SVD special
  orthogonalisation.

Every function accepts arbitrary leading dimensions, float32 and float64, any device, and is
differentiable. The numerically delicate spots (``sqrt``/``norm`` at zero, ``atan2(0, 0)``,
``torch.where`` whose unused branch has an infinite derivative) are guarded with the "double where"
trick: the unused branch is fed a harmless value, so its gradient is finite and then discarded.
"""

from __future__ import annotations

from typing import NamedTuple

import roma
import torch

from slopekp.utils import check_shape, checks_values

__all__ = [
    "axis_angle_to_quat",
    "axis_angle_to_rotmat",
    "azelcr_to_quat",
    "check_rotmat",
    "quat_about_axis",
    "quat_canonical",
    "quat_conjugate",
    "quat_geodesic_angle",
    "quat_inverse",
    "quat_multiply",
    "quat_normalize",
    "quat_to_axis_angle",
    "quat_to_azelcr",
    "quat_to_rotmat",
    "random_quat",
    "rot6d_to_rotmat",
    "rot9d_to_rotmat",
    "rotmat_geodesic_angle",
    "rotmat_to_axis_angle",
    "rotmat_to_quat",
    "rotmat_to_rot6d",
    "rotmat_to_rot9d",
    "AzElCr",
]

_AXES = {"x": 0, "y": 1, "z": 2}


# ----------------------------------------------------------------------------------------------------
# small private helpers
# ----------------------------------------------------------------------------------------------------
def _check_float_tensor(name: str, t: torch.Tensor, shape: tuple) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``t`` is a floating-point tensor of ``shape`` (as in
    :func:`slopekp.utils.check_shape`, e.g. ``(..., 4)`` or ``(..., 3, 3)``)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_shape(name, t, shape)
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf/NaN) where ``x <= 0``."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis, ``(..., n) -> (...)``, with a zero (not NaN) gradient at 0."""
    return _safe_sqrt((v * v).sum(-1))


# ----------------------------------------------------------------------------------------------------
# quaternion algebra
# ----------------------------------------------------------------------------------------------------
def quat_normalize(q: torch.Tensor) -> torch.Tensor:
    """Scale quaternions to unit norm.

    Args:
        q: ``(..., 4)`` quaternions ``(w, x, y, z)``, any non-zero norm.
    Returns:
        ``(..., 4)`` unit quaternions (same sign as ``q``).
    Raises:
        ValueError: if ``q`` has the wrong shape or any quaternion has zero (or non-finite) norm (the values are
            checked where :func:`slopekp.utils.checks_values` says; elsewhere such a quaternion gives NaN).
    """
    _check_float_tensor("q", q, (..., 4))
    n = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    bad = ~(torch.isfinite(n) & (n > 0)) if checks_values(q) else None  # off an accelerator's hot path
    if bad is not None and bool(bad.any()):
        raise ValueError(
            f"q contains {int(bad.sum())} quaternion(s) with zero or non-finite norm; "
            "a rotation quaternion must be non-zero and finite"
        )
    return q / n


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a ⊗ b`` (apply ``b`` first, then ``a``: ``R(a ⊗ b) = R(a) R(b)``).

    Args:
        a, b: ``(..., 4)`` quaternions ``(w, x, y, z)``; leading dims broadcast.
    Returns:
        ``(..., 4)`` product (not renormalised).
    """
    _check_float_tensor("a", a, (..., 4))
    _check_float_tensor("b", b, (..., 4))
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """Conjugate ``(w, -x, -y, -z)``, the inverse rotation of a unit quaternion.

    ``q: (..., 4) -> (..., 4)``.
    """
    _check_float_tensor("q", q, (..., 4))
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_inverse(q: torch.Tensor) -> torch.Tensor:
    """Multiplicative inverse ``q* / |q|²`` (the conjugate for unit quaternions).

    ``q: (..., 4) -> (..., 4)``.

    Raises:
        ValueError: if any quaternion has zero norm.
    """
    _check_float_tensor("q", q, (..., 4))
    n2 = (q * q).sum(-1, keepdim=True)
    if bool((n2 == 0).any()):
        raise ValueError("q contains a zero quaternion, which has no inverse")
    return quat_conjugate(q) / n2


def quat_canonical(q: torch.Tensor) -> torch.Tensor:
    """Pick the sign of ``q`` with ``w >= 0`` (``q`` and ``-q`` are the same rotation).

    ``q: (..., 4) -> (..., 4)``.

    Quaternions with ``w == 0`` exactly (180° rotations) are returned unchanged.
    """
    _check_float_tensor("q", q, (..., 4))
    return torch.where(q[..., :1] < 0, -q, q)


# ----------------------------------------------------------------------------------------------------
# quaternion <-> rotation matrix
# ----------------------------------------------------------------------------------------------------
def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of a quaternion (normalised first).

    Args:
        q: ``(..., 4)`` quaternions ``(w, x, y, z)`` of any non-zero norm.
    Returns:
        ``(..., 3, 3)`` rotation matrices ``R`` with ``R @ X = q ⊗ (0, X) ⊗ q*``.
    Raises:
        ValueError: on a wrong shape or a zero-norm / non-finite quaternion.
    """
    w, x, y, z = quat_normalize(q).unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    R = torch.stack(
        (
            1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
            2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
            2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
        ),
        dim=-1,
    )  # fmt: skip
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternion of a rotation matrix (Shepperd's method), canonical sign ``w >= 0``.

    The four quantities ``d_i = 4 q_i²`` come from the diagonal; the row ``4 q_i · q`` of the
    largest one (``d_i >= 1`` for a rotation) is normalised, so the result is accurate and
    differentiable everywhere, including at the identity and at 180°. Slightly non-orthonormal
    inputs still give unit quaternions. (Where the branch changes, the gradient is continuous only
    for exact rotations.)

    Args:
        R: ``(..., 3, 3)`` rotation matrices.
    Returns:
        ``(..., 4)`` unit quaternions ``(w, x, y, z)`` with ``w >= 0``.
    """
    _check_float_tensor("R", R, (..., 3, 3))
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # d[i] = 4 q_i^2 ; candidates[i] = 4 q_i * q  (row i), exact for a rotation matrix.
    d = torch.stack(
        (1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22), dim=-1
    )
    candidates = torch.stack(
        (
            torch.stack((d[..., 0], r21 - r12, r02 - r20, r10 - r01), dim=-1),
            torch.stack((r21 - r12, d[..., 1], r01 + r10, r02 + r20), dim=-1),
            torch.stack((r02 - r20, r01 + r10, d[..., 2], r12 + r21), dim=-1),
            torch.stack((r10 - r01, r02 + r20, r12 + r21, d[..., 3]), dim=-1),
        ),
        dim=-2,
    )  # (..., 4, 4)
    idx = d.argmax(dim=-1, keepdim=True)  # (..., 1)
    num = torch.gather(candidates, -2, idx[..., None].expand(*idx.shape[:-1], 1, 4)).squeeze(-2)  # 4 q_i q
    # |num| = 4 |q_i| = 2 sqrt(d_i) >= 2 for a rotation, so normalising is safe and also absorbs small
    # departures from orthonormality.
    q = num / torch.linalg.vector_norm(num, dim=-1, keepdim=True).clamp_min(1e-12)
    return quat_canonical(q)


# ----------------------------------------------------------------------------------------------------
# axis-angle (rotation vectors)
# ----------------------------------------------------------------------------------------------------
def axis_angle_to_quat(r: torch.Tensor) -> torch.Tensor:
    """Quaternion of a rotation vector ``r = θ·n̂``: ``(cos θ/2, sin(θ/2)·n̂)``.

    Stable and differentiable at ``r = 0`` (Taylor series of ``sin(θ/2)/θ`` below ``θ² < 1e-4``).

    Args:
        r: ``(..., 3)`` rotation vectors (radians).
    Returns:
        ``(..., 4)`` unit quaternions ``(w, x, y, z)`` (``w >= 0`` when ``θ <= π``).
    """
    _check_float_tensor("r", r, (..., 3))
    t2 = (r * r).sum(-1, keepdim=True)  # θ²
    small = t2 < 1e-4
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    half = 0.5 * t
    sinc_half = torch.where(small, 0.5 - t2 / 48 + t2 * t2 / 3840, torch.sin(half) / t)  # sin(θ/2)/θ
    cos_half = torch.where(small, 1 - t2 / 8 + t2 * t2 / 384, torch.cos(half))
    return torch.cat((cos_half, r * sinc_half), dim=-1)


def quat_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``θ·n̂`` of a quaternion, with ``θ ∈ [0, π]``.

    ``q`` is normalised and made ``w >= 0`` first. Stable and differentiable at the identity (series
    of ``atan2(‖v‖, w)/‖v‖`` below ``‖v‖² < 1e-8``). At exactly 180° the sign of the axis is that
    of ``q``'s vector part.

    Args:
        q: ``(..., 4)`` quaternions ``(w, x, y, z)`` of non-zero norm.
    Returns:
        ``(..., 3)`` rotation vectors.
    """
    q = quat_canonical(quat_normalize(q))
    w, v = q[..., :1], q[..., 1:]
    n2 = (v * v).sum(-1, keepdim=True)
    small = n2 < 1e-8
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    w_small = torch.where(small, w, torch.ones_like(w))
    # θ/|v| = 2·atan2(|v|, w)/|v| ; series around |v| = 0: (2/w)(1 - n²/(3w²))
    factor = torch.where(small, (2 / w_small) * (1 - n2 / (3 * w_small * w_small)), 2 * torch.atan2(n, w) / n)
    return v * factor


def axis_angle_to_rotmat(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of a rotation vector. ``r: (..., 3) -> (..., 3, 3)``."""
    return quat_to_rotmat(axis_angle_to_quat(r))


def rotmat_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation vector (angle in ``[0, π]``) of a rotation matrix. ``R: (..., 3, 3) -> (..., 3)``."""
    return quat_to_axis_angle(rotmat_to_quat(R))


# ----------------------------------------------------------------------------------------------------
# 6D and 9D network outputs
# ----------------------------------------------------------------------------------------------------
def rot6d_to_rotmat(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Gram–Schmidt map from 6D to SO(3) (Zhou et al. 2019, METHOD §4.5b).

    ``x`` is viewed as a ``(..., 3, 2)`` matrix with columns ``a1, a2``; ``b1 = a1/‖a1‖``,
    ``b2 = normalise(a2 − (b1·a2) b1)``, ``b3 = b1 × b2``, and ``R = [b1 b2 b3]`` (as **columns**).
    Inverse of :func:`rotmat_to_rot6d` on rotations.

    Args:
        x: ``(..., 6)`` raw network output.
        eps: floor on the norms. Colinear or zero columns give a non-rotation; no error is
            raised, so that training never stops (use :func:`check_rotmat` where needed).
    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    _check_float_tensor("x", x, (..., 6))
    m = x.reshape(x.shape[:-1] + (3, 2))
    a1, a2 = m[..., 0], m[..., 1]
    b1 = a1 / torch.linalg.vector_norm(a1, dim=-1, keepdim=True).clamp_min(eps)
    u2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = u2 / torch.linalg.vector_norm(u2, dim=-1, keepdim=True).clamp_min(eps)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def rotmat_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """The 6D representation: first two columns of ``R``, row-major. ``(..., 3, 3) -> (..., 6)``."""
    _check_float_tensor("R", R, (..., 3, 3))
    return R[..., :, :2].reshape(R.shape[:-2] + (6,))


def rot9d_to_rotmat(x: torch.Tensor, gradient_eps: float = 1e-5) -> torch.Tensor:
    """SVD special orthogonalisation (Levinson et al. 2020, METHOD §4.5c).

    ``M = U Σ Vᵀ``, ``R = U diag(1, 1, det(U Vᵀ)) Vᵀ``: the rotation nearest to ``M`` in
    Frobenius norm. Uses ``roma.special_procrustes(method="svd")``, whose backward pass damps
    ``1/t`` with ``t = σ_i + σ_j`` to ``t/(t² + gradient_eps²)``, so gradients stay finite when
    singular values are repeated or vanish.

    Args:
        x: ``(..., 9)`` (row-major) or ``(..., 3, 3)`` matrices.
        gradient_eps: damping of the backward pass (METHOD: 1e-5).
    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() >= 2 and x.shape[-2:] == (3, 3):
        M = x
    elif x.dim() >= 1 and x.shape[-1] == 9:
        M = x.reshape(x.shape[:-1] + (3, 3))
    else:
        raise ValueError(f"x must have shape (..., 9) or (..., 3, 3), got {tuple(x.shape)}")
    if not M.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {M.dtype}")
    return roma.special_procrustes(M, gradient_eps=gradient_eps, method="svd")


def rotmat_to_rot9d(R: torch.Tensor) -> torch.Tensor:
    """The 9D representation: ``R`` flattened row-major. ``(..., 3, 3) -> (..., 9)``."""
    _check_float_tensor("R", R, (..., 3, 3))
    return R.reshape(R.shape[:-2] + (9,))


# ----------------------------------------------------------------------------------------------------
# elementary rotations and the multiplex's azimuth / elevation / cyclo-rotation
# ----------------------------------------------------------------------------------------------------
def quat_about_axis(axis: str, angle: torch.Tensor) -> torch.Tensor:
    """Quaternion of a rotation by ``angle`` (radians, right-hand rule) about a coordinate axis.

    Example: ``quat_about_axis("z", π/2)`` maps ``+x`` to ``+y``.

    Args:
        axis: ``"x"``, ``"y"`` or ``"z"``.
        angle: ``(...)`` angles in radians (a Python float is accepted and gives float32).
    Returns:
        ``(..., 4)`` unit quaternions ``(cos(a/2), sin(a/2)·e_axis)``.
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be one of 'x', 'y', 'z', got {axis!r}")
    angle = torch.as_tensor(angle)
    if not angle.is_floating_point():
        angle = angle.to(torch.get_default_dtype())
    half = 0.5 * angle
    c, s = torch.cos(half), torch.sin(half)
    zero = torch.zeros_like(half)
    comps = [c, zero, zero, zero]
    comps[1 + _AXES[axis]] = s
    return torch.stack(comps, dim=-1)


def azelcr_to_quat(
    az: torch.Tensor, el: torch.Tensor, cr: torch.Tensor, base: torch.Tensor | None = None
) -> torch.Tensor:
    """``q = q_z(cr) ⊗ q_x(el) ⊗ q_y(az) ⊗ base`` (METHOD §5.1–5.2).

    After ``base``: azimuth about y, then elevation about x, then cyclo-rotation (in-plane roll)
    about the camera's z axis.

    Args:
        az, el, cr: ``(...)`` angles in radians (broadcast together).
        base: optional ``(..., 4)`` base quaternion(s) applied first; identity when ``None``.
    Returns:
        ``(..., 4)`` quaternions (unit when ``base`` is unit).
    """
    az, el, cr = torch.as_tensor(az), torch.as_tensor(el), torch.as_tensor(cr)
    q = quat_multiply(
        quat_about_axis("z", cr), quat_multiply(quat_about_axis("x", el), quat_about_axis("y", az))
    )
    if base is not None:
        q = quat_multiply(q, base)
    return q


class AzElCr(NamedTuple):
    """Euler angles of :func:`quat_to_azelcr`, each ``(...)`` in radians."""

    az: torch.Tensor
    el: torch.Tensor
    cr: torch.Tensor


def quat_to_azelcr(q: torch.Tensor, base: torch.Tensor | None = None, gimbal_eps: float = 1e-6) -> AzElCr:
    """Inverse of :func:`azelcr_to_quat`: the Z-X-Y Euler angles of ``M = R(q)·R(base)ᵀ``.

    With ``M = R_z(cr) R_x(el) R_y(az)``: ``M[2,1] = sin el``,
    ``(M[2,0], M[2,2]) = cos el·(−sin az, cos az)`` and ``(M[0,1], M[1,1]) = cos el·(−sin cr, cos cr)``.

    Ranges: ``az ∈ (−π, π]``, ``el ∈ [−π/2, π/2]``, ``cr ∈ (−π, π]``. Gimbal lock
    (``cos el < gimbal_eps``, i.e. ``el = ±90°``): only ``az + cr`` (at +90°) or ``az − cr`` (at
    −90°) is determined; we return ``cr = 0`` and put the whole turn in ``az``. Not differentiable
    at gimbal lock.

    Args:
        q: ``(..., 4)`` quaternions.
        base: optional ``(..., 4)`` base quaternion(s) (identity when ``None``).
        gimbal_eps: threshold on ``cos el`` for the gimbal-lock branch.
    Returns:
        ``AzElCr(az, el, cr)``, a named tuple of ``(...)`` tensors in radians.
    """
    M = quat_to_rotmat(q)
    if base is not None:
        M = M @ quat_to_rotmat(base).transpose(-1, -2)
    sin_el = M[..., 2, 1].clamp(-1.0, 1.0)
    cos_el = _safe_norm(torch.stack((M[..., 2, 0], M[..., 2, 2]), dim=-1))
    el = torch.atan2(sin_el, cos_el)
    lock = cos_el < gimbal_eps
    az_free = torch.atan2(-M[..., 2, 0], M[..., 2, 2])
    cr_free = torch.atan2(-M[..., 0, 1], M[..., 1, 1])
    az_lock = torch.atan2(M[..., 0, 2], M[..., 0, 0])
    az = torch.where(lock, az_lock, az_free)
    cr = torch.where(lock, torch.zeros_like(cr_free), cr_free)
    return AzElCr(az, el, cr)


# ----------------------------------------------------------------------------------------------------
# distances, checks, sampling
# ----------------------------------------------------------------------------------------------------
def quat_geodesic_angle(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Angle (radians, in ``[0, π]``) of the relative rotation ``R(q1)ᵀ R(q2)``.

    Computed as ``2·atan2(‖v‖, |w|)`` of ``d = q1* ⊗ q2``: accurate near 0 and near π, invariant
    to the sign and the scale of either quaternion, and equal to ``arccos((tr(R1ᵀR2) − 1)/2)``.
    The gradient is finite everywhere (zero at an angle of exactly 0, where the angle has a kink).

    Args:
        q1, q2: ``(..., 4)`` quaternions ``(w, x, y, z)``; leading dims broadcast.
    Returns:
        ``(...)`` angles in radians.
    """
    d = quat_multiply(quat_conjugate(q1), q2)
    return 2 * torch.atan2(_safe_norm(d[..., 1:]), d[..., 0].abs())


def rotmat_geodesic_angle(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle (radians, in ``[0, π]``) of ``R1ᵀ R2``, equal to ``arccos((tr(R1ᵀR2) − 1)/2)``.

    Uses ``atan2(sin θ, cos θ)`` with ``sin θ = ‖vee(R − Rᵀ)‖/2`` and ``cos θ = (tr R − 1)/2``,
    which is accurate at both ends (``arccos`` loses half the digits near 0 and π) and has finite
    gradients everywhere.

    Args:
        R1, R2: ``(..., 3, 3)`` rotation matrices; leading dims broadcast.
    Returns:
        ``(...)`` angles in radians.
    """
    _check_float_tensor("R1", R1, (..., 3, 3))
    _check_float_tensor("R2", R2, (..., 3, 3))
    R = R1.transpose(-1, -2) @ R2
    cos = (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1) / 2
    vee = torch.stack(
        (R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]), -1
    )
    sin = _safe_norm(vee) / 2
    return torch.atan2(sin, cos)


def check_rotmat(R: torch.Tensor, atol: float = 1e-4, name: str = "R") -> None:
    """Raise ``ValueError`` naming ``name`` unless every ``R`` is a proper rotation within ``atol``.

    Checks the shape ``(..., 3, 3)``, finiteness, ``max |RᵀR − I| <= atol`` and
    ``|det R − 1| <= atol``.
    """
    _check_float_tensor(name, R, (..., 3, 3))
    if not bool(torch.isfinite(R).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf); expected rotation matrices")
    if R.numel() == 0:
        return
    Rd = R.detach()
    eye = torch.eye(3, dtype=Rd.dtype, device=Rd.device)
    orth_err = float((Rd.transpose(-1, -2) @ Rd - eye).abs().amax())
    det_err = float((torch.linalg.det(Rd) - 1).abs().amax())
    if orth_err > atol:
        raise ValueError(f"{name} is not orthonormal: max |RᵀR − I| = {orth_err:.3g} > atol = {atol:g}")
    if det_err > atol:
        raise ValueError(
            f"{name} is not a proper rotation: max |det R − 1| = {det_err:.3g} > atol = {atol:g} "
            "(a reflection?)"
        )


def random_quat(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` rotations drawn uniformly (Haar measure) on SO(3), as unit quaternions with ``w >= 0``.

    Normalised 4D Gaussians are uniform on S³, and the 2:1 covering S³ → SO(3) maps that to the
    Haar measure.

    Args:
        n: number of samples (>= 0).
        generator: optional ``torch.Generator`` for reproducibility (must live on ``device``).
        dtype, device: of the result.
    Returns:
        ``(n, 4)`` unit quaternions ``(w, x, y, z)``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    while True:
        g = torch.randn(n, 4, generator=generator, dtype=dtype, device=device)
        norms = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        if bool((norms > 1e-6).all()):  # probability of a retry is ~1e-24 per sample
            break
    return quat_canonical(g / norms)
