"""Rasterisation of projected triangle meshes: the public entry points.

Conventions (docs/conventions.md):

* Screen vertices are ``(N, V, 3)`` = ``[x_ndc, y_ndc, depth]``; x right, y **down**, both in [-1, 1];
  smaller depth is closer to the camera.
* Pixel ``(row i, col j)`` of an ``H x W`` image samples the NDC point ``x = (2j+1)/W - 1``,
  ``y = (2i+1)/H - 1``.
* Face ``f`` has vertices ``v0, v1, v2``; the edge opposite vertex ``k`` runs ``v1->v2`` (k=0), ``v2->v0``
  (k=1), ``v0->v1`` (k=2). Its edge function at ``p`` is ``w_k = cross(b - a, p - a)``; barycentrics are
  ``w_k / A`` with ``A = cross(v1 - v0, v2 - v0)`` (twice the signed screen area). A face seen from outside
  (counter-clockwise winding in the object frame) has ``A < 0`` in this y-down screen frame: it is
  *front-facing*. A pixel centre is inside when all ``w_k`` are ``>= 0`` or all ``<= 0`` (closed triangle).
* Faces with ``A == 0`` exactly (edge-on) are ignored, as are faces entirely nearer than ``near`` or farther
  than ``far``.

The modules behind these entry points (no dense ``N·F·H·W`` tensor anywhere):

* :mod:`slopekp.render.plan`: face tensors, the soft cut-off radius, each face's pixel window, and the planner
  that groups faces into dense blocks of equal window shape (the algorithm is documented there);
* :mod:`slopekp.render.soft`: the pure-PyTorch soft silhouette and soft RGB pairs over those blocks, with their
  analytic backward (the reference path, and the CPU path);
* :mod:`slopekp.render.fused`: the same silhouette and pairs in Triton kernels (``fused=`` below);
* :mod:`slopekp.render.hard`: the hard z-buffer (plain autograd; no fused path).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from slopekp.render.fused import fused_available, fused_soft_pairs, fused_soft_silhouette
from slopekp.render.hard import HardFragments, hard_rasterize
from slopekp.render.plan import check_screen, face_tensors, pixel_centres, soft_cutoff_radius
from slopekp.render.soft import soft_pairs, soft_silhouette

__all__ = [
    "HardFragments",
    "SoftPairs",
    "hard_rasterize",
    "pixel_centres",
    "soft_cutoff_radius",
    "soft_rasterize",
]


class SoftPairs(NamedTuple):
    """Face-pixel pairs that pass the soft cut-off (``D >= eps``), flattened over all images.

    ``M`` is the number of kept pairs (block by block, the pairs of a face consecutive). ``pix`` indexes the
    flattened ``(N, H, W)`` image stack, ``face`` the flattened ``(N, F)`` face stack (``n * F + f``). ``prob``
    is ``D``, ``depth`` the depth interpolated with the clamped barycentrics ``bary`` (``(M, 3)``, clamped to
    [0, 1] and renormalised, as SoftRas does for pixels outside the triangle; a transposed view of a
    component-major ``(3, M)`` tensor). ``prob``, ``bary`` and ``depth`` are differentiable (analytic backward).
    """

    pix: Tensor  # (M,) int64
    face: Tensor  # (M,) int64
    prob: Tensor  # (M,)
    bary: Tensor  # (M, 3)
    depth: Tensor  # (M,)


def soft_rasterize(
    screen_verts: Tensor,
    faces: Tensor,
    *,
    height: int,
    width: int,
    sigma: float,
    eps: float,
    near: float,
    far: float,
    double_sided: bool = True,
    max_pairs: int = 2_000_000,
    return_pairs: bool = False,
    fused: str = "never",
) -> tuple[Tensor, SoftPairs | None]:
    """Soft silhouette of ``N`` projected meshes sharing ``faces`` (SoftRas ``prod`` aggregation).

    Args:
        screen_verts: ``(N, V, 3)`` ``[x_ndc, y_ndc, depth]``.
        faces: ``(F, 3)`` int64 vertex indices in ``[0, V)`` (the caller validates them).
        height, width: image size in pixels.
        sigma: sharpness (a squared NDC distance).
        eps: cut-off probability; pairs with ``D < eps`` are dropped.
        near, far: pairs whose clamped-barycentric depth is outside ``[near, far]`` are dropped.
        double_sided: if False, back-facing faces (``A > 0``) are culled.
        max_pairs: bound on the face-pixel pairs evaluated in one dense block.
        return_pairs: also return the kept pairs (``SoftPairs``) for RGB aggregation.
        fused: ``never``, ``auto`` or ``always``: the silhouette (and the pairs) in the fused Triton kernels of
            :mod:`slopekp.render.fused` (:func:`~slopekp.render.fused.fused_available` decides); the pairs then
            come tile by tile, not face by face.

    Returns:
        ``(log_transmittance, pairs)``: ``log_transmittance: (N, H, W)`` = ``sum_j log(1 - D_j)`` (so
        ``alpha = 1 - exp(log_transmittance)``), differentiable w.r.t. the vertices' x, y; ``pairs`` or None
        (``prob``, ``bary``, ``depth`` differentiable w.r.t. the vertices' x, y and depth).
    """
    check_screen(screen_verts, faces, height, width)
    soft_cutoff_radius(sigma, eps)  # sigma and eps are checked before any work, on either path
    n_images = screen_verts.shape[0]
    fxy, fz, area2 = face_tensors(screen_verts, faces)
    kw = dict(height=height, width=width, sigma=sigma, eps=eps, near=near, far=far, double_sided=double_sided)
    if fused_available(screen_verts.device, fused):
        silhouette, with_pairs = fused_soft_silhouette, fused_soft_pairs
        kw.update(n_images=n_images)
    else:
        silhouette, with_pairs = soft_silhouette, soft_pairs
        kw.update(faces_per_image=faces.shape[0], max_pairs=max_pairs)
    pairs = None
    if return_pairs:
        log_t, pix, face, prob, bary, depth = with_pairs(fxy, fz, area2, **kw)
        pairs = SoftPairs(pix, face, prob, bary.T, depth)
    else:
        log_t = silhouette(fxy, fz.detach(), area2.detach(), **kw)
    return log_t.view(n_images, height, width), pairs
