"""Shape and texture quality as pure tensor functions (issue 24): how close the predicted mesh is to the true one,
how smooth it is, and how well its textured render reproduces the photo.

* Shape: :func:`chamfer_distance` between points sampled uniformly on the two surfaces
  (:func:`sample_surface`) in the object frame, divided by the true bird's length (:func:`mesh_length`), and
  :func:`normal_consistency`, the mean cosine between the normals of faces that share an edge (1 = flat; a crumpled
  mesh is lower).
* Texture: :func:`masked_l1` and :func:`masked_ssim` of a render against the input image over the true mask.

Conventions: ``verts (B, V, 3)`` object frame, ``faces (F, 3)`` int64 shared by the batch; images ``(B, 3, H, W)``
RGB in [0, 1]; masks ``(B, H, W)`` in [0, 1].
"""

from __future__ import annotations

import torch
from pytorch_msssim import ssim
from torch import Tensor

from slopekp.mesh.topology import adjacent_faces, check_faces, face_normals

__all__ = [
    "chamfer_distance",
    "masked_l1",
    "masked_ssim",
    "mesh_length",
    "normal_consistency",
    "sample_surface",
]


def _batched_verts(verts: Tensor, name: str = "verts") -> None:
    if not isinstance(verts, Tensor) or verts.dim() != 3 or verts.shape[-1] != 3:
        shape = tuple(verts.shape) if isinstance(verts, Tensor) else type(verts).__name__
        raise ValueError(f"{name} must have shape (B, V, 3), got {shape}")


def sample_surface(verts: Tensor, faces: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points per mesh, uniform over its surface area: a face drawn in proportion to its area, then a
    uniform point of it (barycentric ``(1 − √u, √u(1 − v), √u·v)``). Deterministic for a given ``generator``.

    Returns:
        ``(B, n, 3)``.
    """
    _batched_verts(verts)
    check_faces(faces, verts.shape[1])
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    faces = faces.to(verts.device).long()
    tri = verts[:, faces]  # (B, F, 3, 3)
    area = face_normals(verts, faces, normalize=False).norm(dim=-1)  # (B, F), twice the areas
    bsz = verts.shape[0]
    dev = "cpu" if generator is None else generator.device
    face = torch.multinomial(area.detach().to(dev, torch.float64) + 1e-30, n, replacement=True, generator=generator)
    u, v = torch.rand(2, bsz, n, 1, generator=generator, device=dev, dtype=torch.float64)
    face, u, v = face.to(verts.device), u.to(verts.device, verts.dtype), v.to(verts.device, verts.dtype)
    picked = tri[torch.arange(bsz, device=verts.device)[:, None], face]  # (B, n, 3, 3)
    su = u.sqrt()
    return (1 - su) * picked[:, :, 0] + su * (1 - v) * picked[:, :, 1] + su * v * picked[:, :, 2]


def chamfer_distance(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric Chamfer distance ``mean_{p∈a} min_{q∈b} ‖p − q‖ + mean_{q∈b} min_{p∈a} ‖p − q‖`` (Euclidean, not
    squared) between point sets ``a (B, N, 3)`` and ``b (B, M, 3)``; ``(B,)``. Zero for identical sets."""
    _batched_verts(a, "a")
    _batched_verts(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
    d = torch.cdist(a, b)  # (B, N, M)
    return d.min(dim=2).values.mean(-1) + d.min(dim=1).values.mean(-1)


def mesh_length(verts: Tensor) -> Tensor:
    """A bird's length: the largest side of each mesh's axis-aligned bounding box in the object frame; ``(B,)``."""
    _batched_verts(verts)
    return (verts.amax(dim=1) - verts.amin(dim=1)).amax(dim=-1)


def normal_consistency(verts: Tensor, faces: Tensor) -> Tensor:
    """Mean over the edges shared by two faces of the cosine between their unit normals; ``(B,)`` in [−1, 1].
    1 for a plane; a smooth closed mesh of many faces is near 1, a crumpled one lower."""
    _batched_verts(verts)
    check_faces(faces, verts.shape[1])
    pairs = adjacent_faces(faces).to(verts.device)
    if pairs.numel() == 0:
        raise ValueError("faces share no edge: normal consistency is undefined")
    n = face_normals(verts, faces.to(verts.device).long())  # (B, F, 3) unit
    return (n[:, pairs[:, 0]] * n[:, pairs[:, 1]]).sum(-1).mean(-1)


def _check_images(render: Tensor, image: Tensor, mask: Tensor) -> None:
    if render.shape != image.shape or render.dim() != 4 or render.shape[1] != 3:
        raise ValueError(f"render and image must both be (B, 3, H, W), got {tuple(render.shape)}, {tuple(image.shape)}")
    if tuple(mask.shape) != (render.shape[0], *render.shape[2:]):
        raise ValueError(f"mask must be (B, H, W) = {(render.shape[0], *render.shape[2:])}, got {tuple(mask.shape)}")


def masked_l1(render: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute difference over the mask's pixels and the 3 channels (weighted by the mask); ``(B,)``, NaN for
    an empty mask."""
    _check_images(render, image, mask)
    m = mask[:, None].to(render.dtype)
    return (m * (render - image).abs()).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3)))


def masked_ssim(render: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """SSIM (``pytorch_msssim``, 11-pixel Gaussian window, as the texture loss) of ``render·M`` against
    ``image·M``; ``(B,)``. The background is zero in both, so it counts as agreement: compare values at the same
    mask sizes only. Needs ``H, W ≥ 11``."""
    _check_images(render, image, mask)
    m = mask[:, None].to(render.dtype)
    return ssim((render * m).float(), (image * m).float(), data_range=1.0, size_average=False)
