"""Mesh export (OBJ + MTL + PNG, GLB, PLY) and loading; every file is written atomically.

Texture coordinates: our sphere UVs ``(u, v) ∈ [−1, 1]²`` (METHOD §3.4) index a UV image whose column runs
with ``u`` and whose row 0 is ``v = −1`` (``grid_sample`` convention). Files use the OBJ convention (``s``
to the right, ``t = 0`` at the *bottom* row), so ``s = (wrap(u + uv_shift) + 1)/2`` and ``t = (1 − v)/2``.
Pass ``uv_shift=0.5`` for UV images sampled with U-CMR's ``texture_uvshift``.

Seam: ``u`` jumps from +1 to −1 across the azimuth seam, so a face straddling it would interpolate through
the whole texture. For such faces the corners with small ``s`` get ``s + 1`` (the texture repeats, the
default wrap mode of OBJ viewers and glTF). OBJ stores this with extra ``vt`` entries and keeps the
vertices as they are; GLB stores one UV per vertex, so textured GLB export duplicates the seam vertices.
Faces at the two poles, where ``u`` is undefined, still show some smearing.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from slopekp.mesh.topology import check_faces
from slopekp.utils import atomic_write, check_shape

__all__ = ["MeshData", "export_mesh", "load_mesh", "textured_trimesh", "uv_to_texcoords", "EXPORT_FORMATS"]

#: File suffixes :func:`export_mesh` writes.
EXPORT_FORMATS = (".obj", ".glb", ".ply")


@dataclass(eq=False)
class MeshData:
    """A mesh read from a file.

    Attributes:
        verts: ``(V, 3)`` float32.
        faces: ``(F, 3)`` int64 (polygons are fan-triangulated).
        vertex_colors: ``(V, 3)`` float32 in [0, 1], or None when the file has none.
    """

    verts: Tensor
    faces: Tensor
    vertex_colors: Tensor | None = None


def uv_to_texcoords(verts_uv: Tensor, uv_shift: float = 0.0) -> Tensor:
    """Map sphere UVs in ``[−1, 1]`` to OBJ texture coordinates in ``[0, 1]`` (module docstring).

    Args:
        verts_uv: ``(..., 2)``.
        uv_shift: added to ``u`` and wrapped into ``[−1, 1)`` first (0.5 for U-CMR's ``texture_uvshift``).

    Returns:
        ``(..., 2)`` with ``s = (u' + 1)/2`` and ``t = (1 − v)/2``.
    """
    u = verts_uv[..., 0]
    if uv_shift:
        u = torch.remainder(u + uv_shift + 1.0, 2.0) - 1.0
    return torch.stack([(u + 1.0) / 2.0, (1.0 - verts_uv[..., 1]) / 2.0], dim=-1)


def _seam_split(st: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texcoords for seam-straddling faces.

    A face whose corners' ``s`` spread over more than 0.5 straddles the seam; its corners with ``s < 0.5``
    use a copy of their vertex's texcoord with ``s + 1``.

    Returns:
        ``texcoords (V + K, 2)``: ``st`` followed by the ``K`` shifted copies, and ``corner_tc (F, 3)``
        int64 indices into it for every face corner.
    """
    s = st[faces][..., 0]
    straddle = (s.max(1) - s.min(1)) > 0.5
    moved = straddle[:, None] & (s < 0.5)
    extra = np.unique(faces[moved])
    copy_id = np.full(st.shape[0], -1, dtype=np.int64)
    copy_id[extra] = st.shape[0] + np.arange(extra.size)
    corner_tc = faces.copy()
    corner_tc[moved] = copy_id[faces[moved]]
    return np.concatenate([st, st[extra] + np.array([1.0, 0.0])]), corner_tc


def _to_numpy(name: str, t, shape_tail: tuple[int, ...], dtype) -> np.ndarray:
    a = t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)
    check_shape(name, a, ("N", *shape_tail))
    return a.astype(dtype)


def _check_unit(name: str, a: np.ndarray) -> None:
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"{name} must be finite and in [0, 1] (got range [{a.min():.3g}, {a.max():.3g}])")


def _texture_image(texture) -> Image.Image:
    tex = texture.detach().cpu().numpy() if isinstance(texture, Tensor) else np.asarray(texture)
    if tex.ndim != 3 or tex.shape[0] != 3:
        raise ValueError(f"texture must have shape (3, H, W), got {tex.shape}")
    _check_unit("texture", tex)
    return Image.fromarray(np.round(tex.transpose(1, 2, 0) * 255.0).astype(np.uint8))


def export_mesh(
    path: str | os.PathLike,
    verts: Tensor,
    faces: Tensor,
    verts_uv: Tensor | None = None,
    texture: Tensor | None = None,
    vertex_colors: Tensor | None = None,
    uv_shift: float = 0.0,
) -> list[Path]:
    """Write a mesh as ``.obj`` (plus ``.mtl`` and ``.png`` when textured), ``.glb`` or ``.ply``.

    Args:
        path: output file; the suffix picks the format.
        verts: ``(V, 3)`` float.
        faces: ``(F, 3)`` int64, counter-clockwise seen from outside.
        verts_uv: ``(V, 2)`` sphere UVs in [−1, 1]; needed with ``texture`` (only OBJ also stores them
            without one).
        texture: ``(3, H, W)`` float RGB UV image in [0, 1] (row 0 is ``v = −1``).
        vertex_colors: ``(V, 3)`` float RGB in [0, 1]; not together with ``texture``.
        uv_shift: see :func:`uv_to_texcoords`.

    Returns:
        The files written (the mesh first). Each is written atomically; the OBJ's material and image are
        named ``<stem>.mtl`` and ``<stem>.png`` beside it.

    Raises:
        ValueError: unknown suffix, bad shapes or ranges, a texture without UVs, UVs or a texture for
            PLY, UVs without a texture for GLB, or both a texture and vertex colours.
    """
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"{path}: unsupported mesh format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    v = _to_numpy("verts", verts, (3,), np.float64)
    if not np.isfinite(v).all():
        raise ValueError("verts contains NaN or Inf")
    faces_t = faces if isinstance(faces, Tensor) else torch.as_tensor(np.asarray(faces))
    check_faces(faces_t, v.shape[0])
    f = faces_t.detach().cpu().numpy().astype(np.int64)
    uv = None if verts_uv is None else _to_numpy("verts_uv", verts_uv, (2,), np.float64)
    if uv is not None and uv.shape[0] != v.shape[0]:
        raise ValueError(f"verts_uv has {uv.shape[0]} rows for {v.shape[0]} vertices")
    col = None
    if vertex_colors is not None:
        col = _to_numpy("vertex_colors", vertex_colors, (3,), np.float64)
        if col.shape[0] != v.shape[0]:
            raise ValueError(f"vertex_colors has {col.shape[0]} rows for {v.shape[0]} vertices")
        _check_unit("vertex_colors", col)
    img = None
    if texture is not None:
        img = _texture_image(texture)
        if uv is None:
            raise ValueError("texture export needs verts_uv")
        if col is not None:
            raise ValueError("give either texture or vertex_colors, not both")
    st = None if uv is None else uv_to_texcoords(torch.as_tensor(uv), uv_shift).numpy()

    if fmt == ".obj":
        return _write_obj(path, v, f, st, img, col)
    if fmt == ".ply" and (st is not None or img is not None):
        raise ValueError(f"{path}: PLY export stores no UVs or texture; use .obj or .glb")
    if fmt == ".glb" and st is not None and img is None:
        raise ValueError(f"{path}: GLB export stores UVs only together with a texture; use .obj for bare UVs")
    import trimesh  # heavy (~0.8 s to import), needed only for non-OBJ files and textured_trimesh

    if img is not None and st is not None:
        mesh = _textured(v, f, st, img)
    elif col is not None:
        alpha = np.full((v.shape[0], 1), 255.0)
        rgba = np.concatenate([np.round(col * 255.0), alpha], axis=1).astype(np.uint8)
        mesh = trimesh.Trimesh(v, f, vertex_colors=rgba, process=False)
    else:
        mesh = trimesh.Trimesh(v, f, process=False)
    with atomic_write(path, "wb") as fh:
        mesh.export(file_obj=fh, file_type=fmt[1:])
    return [path]


def _textured(v: np.ndarray, f: np.ndarray, st: np.ndarray, img: Image.Image):
    import trimesh  # heavy (~0.8 s to import), needed only for non-OBJ files and textured_trimesh

    texcoords, corner_tc = _seam_split(st, f)
    # one UV per vertex (GLB, trimesh): duplicate the seam vertices (the copies get the shifted texcoords)
    vidx = np.concatenate([np.arange(v.shape[0]), np.unique(f[corner_tc != f])])
    visual = trimesh.visual.TextureVisuals(uv=texcoords, image=img)
    return trimesh.Trimesh(v[vidx], corner_tc, visual=visual, process=False)


def textured_trimesh(verts: Tensor, faces: Tensor, verts_uv: Tensor, texture: Tensor, uv_shift: float = 0.0):
    """A ``trimesh.Trimesh`` with the UV texture, as :func:`export_mesh` writes it to GLB (seam vertices
    duplicated, so it has more vertices than ``verts``; arguments as there)."""
    v = _to_numpy("verts", verts, (3,), np.float64)
    f = faces.detach().cpu().numpy().astype(np.int64) if isinstance(faces, Tensor) else np.asarray(faces, np.int64)
    check_faces(torch.as_tensor(f), v.shape[0])
    uv = _to_numpy("verts_uv", verts_uv, (2,), np.float64)
    return _textured(v, f, uv_to_texcoords(torch.as_tensor(uv), uv_shift).numpy(), _texture_image(texture))


def _write_obj(
    path: Path, v: np.ndarray, f: np.ndarray, st: np.ndarray | None, img: Image.Image | None, col
) -> list[Path]:
    out = io.StringIO()
    out.write("# slopekp mesh export\n")
    written = [path]
    if img is not None:
        mtl, png = path.with_suffix(".mtl"), path.with_suffix(".png")
        out.write(f"mtllib {mtl.name}\n")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        with atomic_write(png, "wb") as fh:
            fh.write(buf.getvalue())
        with atomic_write(mtl, "w") as fh:
            fh.write(f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {png.name}\n")
        written += [mtl, png]
    for i in range(v.shape[0]):
        x, y, z = v[i]
        if col is None:
            out.write(f"v {x:.9g} {y:.9g} {z:.9g}\n")
        else:
            r, g, b = col[i]
            out.write(f"v {x:.9g} {y:.9g} {z:.9g} {r:.6g} {g:.6g} {b:.6g}\n")
    if st is not None:
        vt, vt_idx = _seam_split(st, f)
        for s, t in vt:
            out.write(f"vt {s:.9g} {t:.9g}\n")
        if img is not None:
            out.write("usemtl material0\n")
        for (a, b, c), (ta, tb, tc) in zip(f + 1, vt_idx + 1, strict=True):
            out.write(f"f {a}/{ta} {b}/{tb} {c}/{tc}\n")
    else:
        for a, b, c in f + 1:
            out.write(f"f {a} {b} {c}\n")
    with atomic_write(path, "w") as fh:
        fh.write(out.getvalue())
    return written


def _read_obj(path: Path) -> MeshData:
    verts, colors, faces = [], [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                if parts[0] == "v":
                    verts.append([float(x) for x in parts[1:4]])
                    if len(parts) >= 7:
                        colors.append([float(x) for x in parts[4:7]])
                elif parts[0] == "f":
                    idx = [int(p.split("/")[0]) for p in parts[1:]]
                    idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                    if len(idx) < 3:
                        raise ValueError("a face needs at least 3 vertices")
                    faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
            except (ValueError, IndexError) as e:
                raise ValueError(f"{path}:{lineno}: cannot parse {line.strip()!r} ({e})") from e
    if not verts or not faces:
        raise ValueError(f"{path}: no vertices or no faces found")
    vt = torch.tensor(verts, dtype=torch.float32)
    if vt.shape[1] != 3:
        raise ValueError(f"{path}: vertices need 3 coordinates")
    col = torch.tensor(colors, dtype=torch.float32) if len(colors) == len(verts) else None
    return MeshData(vt, torch.tensor(faces, dtype=torch.int64), col)


def load_mesh(path: str | os.PathLike) -> MeshData:
    """Read a triangle mesh, keeping the file's vertex order (no merging, no reordering).

    ``.obj`` is parsed directly (``v`` with optional RGB, ``f`` in any ``v/vt/vn`` form, polygons
    fan-triangulated); other formats (``.ply``, ``.glb``, ``.off``, ``.stl``) go through
    ``trimesh.load(..., process=False)``.

    Raises:
        ValueError: missing file, unreadable content, no faces, or out-of-range face indices.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"mesh file {path} does not exist")
    if path.suffix.lower() == ".obj":
        data = _read_obj(path)
    else:
        import trimesh  # heavy (~0.8 s to import), needed only for non-OBJ files and textured_trimesh

        try:
            m = trimesh.load(path, process=False, force="mesh")
        except Exception as e:  # trimesh raises many types for malformed files
            raise ValueError(f"{path}: cannot read mesh ({e})") from e
        if not hasattr(m, "faces") or len(m.faces) == 0:
            raise ValueError(f"{path}: no triangle faces found")
        col = None
        if getattr(m.visual, "kind", None) == "vertex":
            col = torch.as_tensor(np.asarray(m.visual.vertex_colors)[:, :3] / 255.0, dtype=torch.float32)
        data = MeshData(
            torch.as_tensor(np.asarray(m.vertices), dtype=torch.float32),
            torch.as_tensor(np.asarray(m.faces), dtype=torch.int64),
            col,
        )
    check_faces(data.faces, data.verts.shape[0], name=f"{path}: faces")
    return data
