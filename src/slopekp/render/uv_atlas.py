"""Where each texel of a UV image lies on the mesh: the inverse of the renderer's sphere-UV look-up.

The renderer colours a surface point with barycentrics ``b`` in face ``(a, b, c)`` by interpolating the vertices'
unit-sphere points ``s_i = uv_to_sphere(verts_uv_i)``, mapping ``Σ b_i s_i`` back to ``(u, v)`` and reading the UV
image there (:mod:`slopekp.render.texture`, with U-CMR's shift of ``u``). A texel at ``(u, v)`` therefore sits where
the ray from the origin along its sphere direction ``d`` meets the flat triangle ``(s_a, s_b, s_c)``:
``t·d = Σ b_i s_i``. :func:`texel_surface` solves that for every texel once per template (Möller–Trumbore with the
ray's origin at 0), :func:`texel_points` gives each texel's 3D point on any mesh of the template's topology,
``Σ b_i X_i`` (the same barycentrics the renderer uses: the camera is affine), and :func:`project_texels` where a
camera sees each of them: its projection, and whether the mesh hides it (a hard z-buffer test, like the keypoints'
visibility). Stage II pulls the texture flow there (:func:`slopekp.train.losses.flow_projection_loss`) and the
photo texture reads the input there (:func:`slopekp.models.texture.photo_texture`).

Texel centres follow the renderer's ``align_corners=True`` sampling: column ``j`` is ``u = −1 + 2j/(Wu − 1)``, row ``i``
is ``v = −1 + 2i/(Hu − 1)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from slopekp.geometry.camera import project_points
from slopekp.render.texture import UV_SHIFT, uv_to_sphere

__all__ = ["TexelSurface", "TexelView", "project_texels", "project_texels_both", "texel_points", "texel_surface"]


class TexelSurface(NamedTuple):
    """Each texel's place on the mesh (:func:`texel_surface`)."""

    face: Tensor
    """``(Hu, Wu)`` int64 face index, −1 for a texel no face covers (e.g. a hole in the sphere map)."""
    bary: Tensor
    """``(Hu, Wu, 3)`` barycentrics in that face (0 where ``face`` is −1)."""


@torch.no_grad()
def texel_surface(verts_uv: Tensor, faces: Tensor, hw: tuple[int, int], *, chunk: int = 4096) -> TexelSurface:
    """The face and barycentrics of every texel of an ``hw = (Hu, Wu)`` UV image (module docstring).

    Args:
        verts_uv: ``(V, 2)`` the template's sphere UVs (:attr:`slopekp.mesh.Template.verts_uv`).
        faces: ``(F, 3)`` int64.
        hw: the UV image's ``(Hu, Wu)``.
        chunk: texels per batch of the cone test (memory ``chunk × F``).

    Returns:
        :class:`TexelSurface`. Where several faces' triangles meet a texel's ray (a fold of the sphere map), the
        one that contains it most clearly (largest smallest barycentric) wins.
    """
    hu, wu = hw
    if hu < 2 or wu < 2:
        raise ValueError(f"hw must be at least (2, 2), got {hw!r}")
    out_dev = verts_uv.device  # computed in float64 on the CPU (an MPS device has none), returned on this device
    verts_uv, faces = verts_uv.cpu(), faces.cpu()
    dev, dt = verts_uv.device, torch.float64
    u = -1 + 2 * torch.arange(wu, device=dev, dtype=dt) / (wu - 1)
    v = -1 + 2 * torch.arange(hu, device=dev, dtype=dt) / (hu - 1)
    u0 = torch.remainder(u - UV_SHIFT + 1, 2) - 1  # undo the renderer's shift of u
    uv = torch.stack([u0[None].expand(hu, wu), v[:, None].expand(hu, wu)], -1).reshape(-1, 2)
    d = uv_to_sphere(uv)  # (T, 3) texel directions
    s = uv_to_sphere(verts_uv.to(dt))[faces.to(dev).long()]  # (F, 3, 3) the faces' sphere triangles
    # a bounding cone per face (axis, cosine of its half-angle) keeps the exact test to the few faces near each ray
    axis = torch.nn.functional.normalize(s.sum(1), dim=-1)
    cos_half = (s * axis[:, None]).sum(-1).amin(1) - 1e-6
    face = torch.full((d.shape[0],), -1, dtype=torch.long, device=dev)
    bary = torch.zeros(d.shape[0], 3, dtype=dt, device=dev)
    margin_best = torch.full((d.shape[0],), -torch.inf, dtype=dt, device=dev)
    for lo in range(0, d.shape[0], chunk):
        t_idx, f_idx = torch.nonzero(d[lo : lo + chunk] @ axis.T >= cos_half, as_tuple=True)
        t_idx = t_idx + lo
        dc, a = d[t_idx], s[f_idx, 0]
        e1, e2 = s[f_idx, 1] - a, s[f_idx, 2] - a
        p = torch.linalg.cross(dc, e2)
        det = (e1 * p).sum(-1)
        ok = det.abs() > 1e-12
        inv = 1 / torch.where(ok, det, torch.ones_like(det))
        tvec = -a  # the ray starts at the origin
        beta = (tvec * p).sum(-1) * inv
        q = torch.linalg.cross(tvec, e1)
        gamma = (dc * q).sum(-1) * inv
        t = (e2 * q).sum(-1) * inv
        alpha = 1 - beta - gamma
        margin = torch.minimum(alpha, torch.minimum(beta, gamma))
        margin = torch.where(ok & (t > 0), margin, torch.full_like(margin, -torch.inf))
        # per texel, the candidate with the largest margin (ties: the lowest face index)
        best = torch.full((d.shape[0],), -torch.inf, dtype=dt, device=dev).scatter_reduce(
            0, t_idx, margin, reduce="amax"
        )
        win = (margin == best[t_idx]) & (margin > -1e-9) & (margin > margin_best[t_idx])
        first = torch.full((d.shape[0],), f_idx.numel() + faces.shape[0], dtype=torch.long, device=dev)
        first = first.scatter_reduce(0, t_idx[win], f_idx[win], reduce="amin")
        win &= f_idx == first[t_idx]  # one winner per texel (ties on a shared edge: the lowest face index)
        b = torch.stack([alpha, beta, gamma], -1)[win].clamp_min(0)
        face[t_idx[win]] = f_idx[win]
        bary[t_idx[win]] = b / b.sum(-1, keepdim=True)
        margin_best = torch.maximum(margin_best, best)
    return TexelSurface(face.view(hu, wu).to(out_dev), bary.to(verts_uv.dtype).view(hu, wu, 3).to(out_dev))


def texel_points(verts: Tensor, faces: Tensor, atlas: TexelSurface) -> Tensor:
    """``verts (B, V, 3)`` → ``(B, Hu·Wu, 3)``: each texel's point on each mesh (row-major texels; a texel without
    a face gets vertex 0 of face 0 with zero weights, i.e. the origin)."""
    b, v, _ = verts.shape
    face = atlas.face.to(verts.device).reshape(-1)
    f = faces.to(verts.device).long()[face.clamp_min(0)]  # (T, 3)
    w = atlas.bary.to(verts.device, verts.dtype).reshape(-1, 3) * (face >= 0)[:, None]  # (T, 3)
    rows = verts.permute(1, 0, 2).reshape(v, b * 3)  # one row per vertex: a gather of whole rows is cheap
    corners = rows.index_select(0, f.reshape(-1)).view(-1, 3, b * 3)  # (T, 3 corners, B·3)
    return torch.einsum("tc,tcx->tx", w, corners).view(-1, b, 3).permute(1, 0, 2)


class TexelView(NamedTuple):
    """Where a camera sees each texel (:func:`project_texels`)."""

    points2d: Tensor
    """``(B, 2, Hu, Wu)`` each texel's projection (NDC ``x right, y down``), laid out like a texture flow."""
    visible: Tensor
    """``(B, Hu, Wu)`` bool: the texel's point is inside the image and not hidden by the mesh."""


@torch.no_grad()
def project_texels(verts: Tensor, faces: Tensor, atlas: TexelSurface, cameras: Tensor, renderer,
                   depth_tol: float | None = None, mirrored: bool = False) -> TexelView:  # fmt: skip
    """Project every texel's point on ``verts (B, V, 3)`` with ``cameras (B, 7)`` and test it against the hard
    z-buffer of ``renderer`` (a :class:`~slopekp.render.Renderer`; its size sets the pixel grid). ``depth_tol``: NDC
    depth, default two pixel widths (as :func:`slopekp.models.keypoints.keypoint_visibility`). ``mirrored``: project
    each texel's mirror point ``(−x, y, z)`` instead, the point of the bird's other side that shows the same
    texture on a symmetric bird (exact for any triangulation of a mirror-symmetric mesh)."""
    return _project(verts, faces, atlas, cameras, renderer, depth_tol, (mirrored,))[0]


@torch.no_grad()
def project_texels_both(verts: Tensor, faces: Tensor, atlas: TexelSurface, cameras: Tensor, renderer,
                        depth_tol: float | None = None) -> tuple[TexelView, TexelView]:  # fmt: skip
    """:func:`project_texels` of each texel's point and of its mirror point, ``(view, mirror view)``, from one render
    and one evaluation of the texel points."""
    view, mirror = _project(verts, faces, atlas, cameras, renderer, depth_tol, (False, True))
    return view, mirror


def _project(verts: Tensor, faces: Tensor, atlas: TexelSurface, cameras: Tensor, renderer, depth_tol: float | None,
             mirrored: tuple[bool, ...]) -> list[TexelView]:  # fmt: skip
    """The views of :func:`project_texels`, one per entry of ``mirrored``, from one render and one evaluation of the
    texel points."""
    b = verts.shape[0]
    hu, wu = atlas.face.shape
    h, w = renderer.settings.hw
    tol = 4.0 / min(h, w) if depth_tol is None else depth_tol
    points = texel_points(verts, faces, atlas)
    depth_map = renderer(verts, faces, cameras, mode="hard").depth.reshape(b, -1)
    has_face = atlas.face.to(verts.device).reshape(1, -1) >= 0
    views = []
    for mirror in mirrored:
        pts3 = points * points.new_tensor([-1.0, 1.0, 1.0]) if mirror else points
        pts = project_points(pts3, cameras.to(verts.dtype), renderer.settings.z_offset)
        col = torch.floor((pts[..., 0] + 1) * (w / 2)).long()
        row = torch.floor((pts[..., 1] + 1) * (h / 2)).long()
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        depth = depth_map.gather(1, row.clamp(0, h - 1) * w + col.clamp(0, w - 1))
        visible = inside & (pts[..., 2] <= depth + tol) & has_face
        views.append(TexelView(pts[..., :2].transpose(1, 2).reshape(b, 2, hu, wu), visible.view(b, hu, wu)))
    return views
