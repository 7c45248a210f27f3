"""The weak-perspective camera (pure functions on ``(..., 7)`` tensors).

A camera is ``cam = [s, tx, ty, qw, qx, qy, qz]`` (see ``docs/conventions.md``). A 3D point ``X``
(object frame) projects to

    ``p_xy = s·(R(q) X)_xy + t``,    depth ``z = s·(R(q) X)_z + z_offset``  (``z_offset = 5``).

``s`` and ``t`` are in the units of some image: NDC of a square crop (x right, y down, ``[−1, 1]``,
``x_ndc = 2u/W − 1`` for the 0-based pixel column ``u``) or pixels of an image ("pixel cameras", e.g.
the CMR SfM cameras). Image-space changes act on ``(s, t)`` only and never on the rotation:

* an isotropic image map ``u' = k·u + offset`` gives ``s' = k·s``, ``t' = k·t + offset``
  (:func:`affine_camera`); crops are offsets, resizes are scalings, pixel↔NDC is ``k = 2/W, offset = −1``;
* a crop is described by ``crop = [a, bx, by]`` (``(..., 3)``): the map from ORIGINAL-image 0-based pixel
  coordinates to the crop's NDC, ``ndc = a·u + b`` (:func:`crop_from_box`, :func:`recrop_camera`);
* a mirror about the vertical image axis negates ``tx, qy, qz`` (:func:`reflect_camera`), which equals
  conjugating ``R`` by ``diag(−1, 1, 1)``; exact for x-mirror-symmetric objects after the left/right
  keypoint permutation.

Functions broadcast over leading dimensions and keep the dtype and device of their inputs. They check shapes
(cheap) but not values; call :func:`check_camera` on cameras that come from users or files.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from slopekp.geometry.rotations import check_rotmat, quat_about_axis, quat_multiply, quat_to_rotmat, rotmat_to_quat
from slopekp.utils import check_shape, device_constant

__all__ = [
    "CameraParts",
    "affine_camera",
    "camera_from_sfm",
    "check_camera",
    "crop_around_points",
    "crop_from_box",
    "depth_mirror_cameras",
    "join_camera",
    "ndc_to_px",
    "ndc_to_px_camera",
    "project_points",
    "px_to_ndc",
    "px_to_ndc_camera",
    "recrop_camera",
    "reflect_camera",
    "reflect_camera_px",
    "rotate_camera",
    "split_camera",
    "turn_camera",
]

# Default depth offset of the weak-perspective renderer (METHOD §2.1: keeps the mesh between near=1
# and far=100).
DEFAULT_Z_OFFSET = 5.0


class CameraParts(NamedTuple):
    """A camera split into its parts: ``s (...)``, ``t (..., 2)``, ``q (..., 4)`` (``(w, x, y, z)``)."""

    s: torch.Tensor
    t: torch.Tensor
    q: torch.Tensor


def _check_cam_shape(name: str, cam: torch.Tensor) -> None:
    if not isinstance(cam, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., 7), got {type(cam).__name__}")
    if cam.dim() < 1 or cam.shape[-1] != 7:
        raise ValueError(
            f"{name} must have shape (..., 7) = [s, tx, ty, qw, qx, qy, qz], got {tuple(cam.shape)}"
        )
    if not cam.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {cam.dtype}")


def _as_like(name: str, x: float | torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor with ``ref``'s dtype and device (Python numbers and sequences accepted)."""
    t = torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a real number or floating-point tensor")
    return t


# ----------------------------------------------------------------------------------------------------
# packing and validation
# ----------------------------------------------------------------------------------------------------
def split_camera(cam: torch.Tensor) -> CameraParts:
    """Split ``cam (..., 7)`` into ``CameraParts(s (...), t (..., 2), q (..., 4))`` (views, no copies)."""
    _check_cam_shape("cam", cam)
    return CameraParts(cam[..., 0], cam[..., 1:3], cam[..., 3:7])


def join_camera(s: torch.Tensor, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_camera`: ``s (...)``, ``t (..., 2)``, ``q (..., 4)`` → ``(..., 7)``.

    Leading dimensions broadcast; ``s`` may be a Python number.
    """
    if not isinstance(q, torch.Tensor):
        raise ValueError(f"q must be a torch.Tensor of shape (..., 4), got {type(q).__name__}")
    check_shape("q", q, (..., 4))
    s = _as_like("s", s, q)
    t = _as_like("t", t, q)
    check_shape("t", t, (..., 2))
    lead = torch.broadcast_shapes(s.shape, t.shape[:-1], q.shape[:-1])
    return torch.cat(
        (s.expand(lead)[..., None], t.expand(lead + (2,)), q.expand(lead + (4,))),
        dim=-1,
    )


def check_camera(cam: torch.Tensor, name: str = "cam") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``cam`` is a valid ``(..., 7)`` camera.

    Valid: floating point, finite, scale ``s > 0`` and a non-zero quaternion.
    """
    _check_cam_shape(name, cam)
    if not bool(torch.isfinite(cam).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    s, _, q = split_camera(cam)
    if bool((s <= 0).any()):
        raise ValueError(f"{name} has a non-positive scale s (min {float(s.min()):.4g}); s must be > 0")
    if bool(((q * q).sum(-1) == 0).any()):
        raise ValueError(f"{name} has an all-zero quaternion; q = cam[..., 3:7] must be non-zero")


# ----------------------------------------------------------------------------------------------------
# projection
# ----------------------------------------------------------------------------------------------------
def project_points(
    points: torch.Tensor, cam: torch.Tensor, z_offset: float = DEFAULT_Z_OFFSET
) -> torch.Tensor:
    """Weak-perspective projection ``xy = s·(R X)_xy + t``, ``z = s·(R X)_z + z_offset``.

    Leading dimensions broadcast: ``points (B, 1, N, 3)`` with ``cam (B, P, 7)`` gives ``(B, P, N, 3)``;
    ``points (N, 3)`` with ``cam (B, 7)`` gives ``(B, N, 3)``.

    Args:
        points: ``(..., N, 3)`` points in the object frame.
        cam: ``(..., 7)`` cameras (the quaternion is normalised, so it need not be unit).
        z_offset: depth added after scaling (the renderer's default 5).
    Returns:
        ``(..., N, 3)``: ``x, y`` in the camera's image units (NDC or pixels) and the depth ``z``.
    """
    if not isinstance(points, torch.Tensor) or points.dim() < 2 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"points must have shape (..., N, 3), got {shape}")
    _check_cam_shape("cam", cam)
    s, t, q = split_camera(cam)
    R = quat_to_rotmat(q)  # (..., 3, 3)
    X = points @ R.transpose(-1, -2)  # (..., N, 3) rotated
    X = X * s[..., None, None]
    offset = torch.cat((t, t.new_full(t.shape[:-1] + (1,), float(z_offset))), dim=-1)  # (..., 3)
    return X + offset[..., None, :]


# ----------------------------------------------------------------------------------------------------
# mirror
# ----------------------------------------------------------------------------------------------------
def reflect_camera(cam: torch.Tensor) -> torch.Tensor:
    """NDC camera of the horizontally mirrored image: ``cam ⊙ [1, −1, 1, 1, 1, −1, −1]``.

    Equals ``R' = D R D`` with ``D = diag(−1, 1, 1)`` and ``x_ndc' = −x_ndc``. ``(..., 7) -> (..., 7)``.
    (Uses ``x_ndc = 2u/W − 1``, so the mirror ``u' = W − 1 − u`` is ``x' = −x − 2/W``; the CMR family
    ignores the ``2/W`` term, and so do we, to stay interchangeable with their stored cameras.)
    """
    _check_cam_shape("cam", cam)
    return cam * cam.new_tensor([1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0])


def reflect_camera_px(cam_px: torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """Pixel camera of the horizontally mirrored image (``u' = W − 1 − u``): ``tx' = W − 1 − tx``, ``qy, qz``
    negated (CMR's flip of the SfM camera).

    Args:
        cam_px: ``(..., 7)`` pixel cameras of an image ``width`` pixels wide.
        width: image width in pixels, a number or ``(...)`` tensor.
    Returns:
        ``(..., 7)`` mirrored pixel cameras.
    """
    _check_cam_shape("cam_px", cam_px)
    w = _as_like("width", width, cam_px)
    out = cam_px * cam_px.new_tensor([1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    tx = w - 1 - cam_px[..., 1]
    return torch.cat(
        (out[..., :1].expand(tx.shape + (1,)), tx[..., None], out[..., 2:].expand(tx.shape + (5,))), -1
    )


# ----------------------------------------------------------------------------------------------------
# image-space maps: affine, pixel <-> NDC, crops
# ----------------------------------------------------------------------------------------------------
def affine_camera(
    cam: torch.Tensor, k: float | torch.Tensor, offset: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Camera after the isotropic image-space map ``u' = k·u + offset``: ``s' = k·s``, ``t' = k·t + offset``.

    Crops are offsets (``k = 1, offset = −corner``), resizes are scalings; compose them by calling twice.

    Args:
        cam: ``(..., 7)`` cameras.
        k: scale, a number or ``(...)`` tensor (must be > 0 to keep ``s > 0``; not checked).
        offset: ``(..., 2)`` tensor, a pair, or a number used for both axes.
    Returns:
        ``(..., 7)`` cameras with the rotation unchanged.
    """
    _check_cam_shape("cam", cam)
    k = _as_like("k", k, cam)
    off = _as_like("offset", offset, cam)
    if off.dim() == 0:
        off = off.expand(2)
    check_shape("offset", off, (..., 2))
    s, t, q = split_camera(cam)
    return join_camera(k * s, k[..., None] * t + off, q)


def px_to_ndc_camera(cam_px: torch.Tensor, size: float | torch.Tensor) -> torch.Tensor:
    """Pixel camera of a square ``size × size`` image → its NDC camera: ``s = 2 s_px/size``,
    ``t = 2 t_px/size − 1``. ``(..., 7) -> (..., 7)``; ``size`` a number or ``(...)`` tensor."""
    size = _as_like("size", size, cam_px)
    return affine_camera(cam_px, 2.0 / size, -1.0)


def ndc_to_px_camera(cam_ndc: torch.Tensor, size: float | torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`px_to_ndc_camera`: ``s_px = s·size/2``, ``t_px = (t + 1)·size/2``.

    ``(..., 7) -> (..., 7)``; ``size`` a number or ``(...)`` tensor.
    """
    size = _as_like("size", size, cam_ndc)
    half = size / 2
    return affine_camera(cam_ndc, half, half[..., None].expand(half.shape + (2,)))


def px_to_ndc(points_px: torch.Tensor, size: float | torch.Tensor) -> torch.Tensor:
    """0-based pixel coordinates of a square ``size``-pixel image → NDC: ``2·p/size − 1``.

    ``points_px (..., 2) -> (..., 2)``; ``size`` a number or a tensor broadcastable against ``points_px``.
    """
    check_shape("points_px", points_px, (..., 2))
    return 2 * points_px / _as_like("size", size, points_px) - 1


def ndc_to_px(points_ndc: torch.Tensor, size: float | torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`px_to_ndc`: ``(p + 1)·size/2``. ``(..., 2) -> (..., 2)``."""
    check_shape("points_ndc", points_ndc, (..., 2))
    return (points_ndc + 1) * _as_like("size", size, points_ndc) / 2


def crop_from_box(
    x0: float | torch.Tensor,
    y0: float | torch.Tensor,
    side: float | torch.Tensor,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop descriptor ``[a, bx, by]`` of the square box with 0-based top-left pixel ``(x0, y0)`` and side
    ``side`` (in original-image pixels), for any output resolution: ``ndc = a·u + b`` with ``a = 2/side``,
    ``b = −2·(x0, y0)/side − 1`` (a crop followed by a resize to ``S`` pixels and ``ndc = 2u_S/S − 1``).

    Args:
        x0, y0, side: numbers or ``(...)`` tensors (``side > 0``).
        like: optional tensor whose dtype/device the result takes (default: ``x0``'s when it is a
            floating tensor, else float32 on the CPU).
    Returns:
        ``(..., 3)`` crop descriptors.
    Raises:
        ValueError: if any ``side <= 0``.
    """
    ref = like if like is not None else (x0 if isinstance(x0, torch.Tensor) else torch.zeros(()))
    if not ref.is_floating_point():
        ref = ref.float()
    x0, y0, side = _as_like("x0", x0, ref), _as_like("y0", y0, ref), _as_like("side", side, ref)
    if bool((side <= 0).any()):
        raise ValueError(f"side must be > 0, got min {float(side.min()):.4g}")
    a = 2 / side
    x0, y0, a = torch.broadcast_tensors(x0, y0, a)
    return torch.stack((a, -a * x0 - 1, -a * y0 - 1), dim=-1)


def crop_around_points(points: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Crop descriptor (:func:`crop_from_box`) of the square box centred on the bounding box of ``points``, its side
    the longer extent grown by ``margin`` of it on each side (``side = extent·(1 + 2·margin)``).

    Args:
        points: ``(..., N, 2)`` pixel coordinates ``(u, v)`` (e.g. projected vertices), not all coincident.
        margin: ``>= 0``.
    Returns:
        ``(..., 3)`` crop descriptors.
    Raises:
        ValueError: a negative margin, or points with no extent.
    """
    check_shape("points", points, (..., None, 2))
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    lo, hi = points.amin(-2), points.amax(-2)
    side = (hi - lo).amax(-1) * (1 + 2 * margin)
    corner = (lo + hi) / 2 - side[..., None] / 2
    return crop_from_box(corner[..., 0], corner[..., 1], side)


def recrop_camera(cam: torch.Tensor, crop_from: torch.Tensor, crop_to: torch.Tensor) -> torch.Tensor:
    """Re-express a camera stored in the NDC of ``crop_from`` for the NDC of ``crop_to`` (METHOD §5.5).

    With ``crop = [a, bx, by]`` (``ndc = a·u + b`` from original-image pixels ``u``): ``k = a_to/a_from``,
    ``s' = s·k``, ``t' = (t − b_from)·k + b_to``. The rotation is unchanged.

    Args:
        cam: ``(..., 7)`` cameras in ``crop_from``'s NDC.
        crop_from, crop_to: ``(..., 3)`` crop descriptors (see :func:`crop_from_box`).
    Returns:
        ``(..., 7)`` cameras in ``crop_to``'s NDC.
    """
    _check_cam_shape("cam", cam)
    for name, c in (("crop_from", crop_from), ("crop_to", crop_to)):
        if not isinstance(c, torch.Tensor):
            raise ValueError(f"{name} must be a (..., 3) tensor [a, bx, by], got {type(c).__name__}")
        check_shape(name, c, (..., 3))
    k = crop_to[..., 0] / crop_from[..., 0]
    s, t, q = split_camera(cam)
    return join_camera(s * k, (t - crop_from[..., 1:]) * k[..., None] + crop_to[..., 1:], q)


# ----------------------------------------------------------------------------------------------------
# rotation of the object, SfM cameras
# ----------------------------------------------------------------------------------------------------
def rotate_camera(cam: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Camera whose rotation is ``q ⊗ q_cam`` (the object turned by ``q`` in camera space; novel views).

    Args:
        cam: ``(..., 7)`` cameras. q: ``(..., 4)`` quaternions; leading dims broadcast.
    Returns:
        ``(..., 7)`` cameras, same ``s`` and ``t``.
    """
    _check_cam_shape("cam", cam)
    s, t, qc = split_camera(cam)
    return join_camera(s, t, quat_multiply(q, qc))


def turn_camera(cam: torch.Tensor, azimuth_deg: float = 0.0, elevation_deg: float = 0.0) -> torch.Tensor:
    """A novel view: the object turned by ``azimuth_deg`` about the image's vertical axis (camera y), then tilted by
    ``elevation_deg`` about its horizontal axis (camera x; positive shows more of the object's top, which faces
    image-up). Scale and translation are kept, so the object stays where it was in the image.

    Args:
        cam: ``(..., 7)`` cameras.
    Returns:
        ``(..., 7)`` cameras (:func:`rotate_camera` by ``R_x(elevation) R_y(azimuth)``).
    """
    _check_cam_shape("cam", cam)
    rad = torch.pi / 180.0
    az = quat_about_axis("y", torch.tensor(azimuth_deg * rad, dtype=cam.dtype, device=cam.device))
    el = quat_about_axis("x", torch.tensor(elevation_deg * rad, dtype=cam.dtype, device=cam.device))
    return rotate_camera(cam, quat_multiply(el, az).expand(cam.shape[:-1] + (4,)))


def camera_from_sfm(rot: torch.Tensor, scale: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """Pixel-space camera from CMR SfM values (``anno_<split>.mat``: ``uv = scale·(rot @ X)[:2] + trans``).

    The values are used as they are: CMR's ``trans`` is in the data's 1-based pixel coordinates and is not
    shifted here (the reference pipeline does not shift it either; subtract 1 for 0-based pixels).

    Args:
        rot: ``(..., 3, 3)`` proper rotation matrices. scale: ``(...)`` positive scales. trans: ``(..., 2)``.
    Returns:
        ``(..., 7)`` cameras ``[scale, tx, ty, q(rot)]`` with ``w >= 0``.
    Raises:
        ValueError: if ``rot`` is not a rotation (atol 1e-4) or ``scale <= 0``.
    """
    check_rotmat(rot, name="rot")
    scale = _as_like("scale", scale, rot)
    trans = _as_like("trans", trans, rot)
    check_shape("trans", trans, (..., 2))
    if bool((scale <= 0).any()) or not bool(torch.isfinite(scale).all()):
        raise ValueError("scale must be finite and > 0")
    return join_camera(scale, trans, rotmat_to_quat(rot))


def depth_mirror_cameras(cameras: torch.Tensor) -> torch.Tensor:
    """The silhouette-equivalent "depth-mirrored" cameras of a mirror-symmetric object (METHOD §2.3).

    For an object symmetric about x = 0 (``D·X`` is on the object when ``X`` is, ``D = diag(−1, 1, 1)``),
    ``R' = Z·R·D`` with ``Z = diag(1, 1, −1)`` projects the object to the same image points as ``R`` under
    weak perspective, only with depth reversed: the ambiguity a silhouette cannot resolve.
    ``Z·R·D = R_y(π)·(D·R·D)``, i.e. ``q' = q_y(π) ⊗ (w, x, −y, −z)``; scale and translation are unchanged.

    Args:
        cameras: ``(..., 7)``.

    Returns:
        ``(..., 7)``.
    """
    s, t, q = split_camera(cameras)
    q = q * device_constant((1.0, 1.0, -1.0, -1.0), q.dtype, q.device)
    half_turn_y = device_constant((0.0, 0.0, 1.0, 0.0), q.dtype, q.device).expand_as(q)
    return join_camera(s, t, quat_multiply(half_turn_y, q))
