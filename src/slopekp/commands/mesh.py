"""``slopekp mesh ...``: export and inspect template meshes.

- ``export``: write a template (built-in name or file) as OBJ / GLB / PLY, optionally painted (vertex colours
  by UV, normal or symmetry class) or with a checkerboard UV texture to inspect the sphere parametrisation.
- ``info``: vertex / face / edge counts, closedness, Euler characteristic, winding, volume, area, bounds and
  mirror-symmetry pairs of a mesh.
"""

from __future__ import annotations

import argparse
import json

from slopekp.commands import add_group

COLOR_MODES = ("none", "uv", "normal", "symmetry")

MAX_CHECKER = 1024
"""Most rows of squares of the ``--checker N`` texture (an ``N × 2N`` RGB image, one texel per square: 1024 makes
a 3 × 1024 × 2048 float texture of 25 MB; ``N = 100000`` would need 240 GB)."""


def register(sub) -> None:
    g = add_group(sub, "mesh", "export and inspect template meshes")
    p = g.add_parser(
        "export",
        help="write a template mesh as OBJ, GLB or PLY",
        description="Write a template (a built-in name or a .npz/.npy/.obj/.ply/.glb file) to FILE; the "
        "suffix of FILE (.obj, .glb, .ply) picks the format. File templates are re-wound outward and "
        "mean-centred in y and z, as the model uses them. An existing output file is kept unless --overwrite.",
    )
    p.add_argument("--template", required=True, help="procedural, icosphere, or a mesh file")
    p.add_argument("--out", required=True, help="output file: .obj, .glb or .ply")
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (the .obj's .mtl/.png included)"
    )
    p.add_argument(
        "--colors", choices=COLOR_MODES, default="none",
        help="paint vertex colours: sphere UV, normal direction, or symmetry class "
        "(left red, right blue, independent grey)",
    )
    p.add_argument(
        "--checker", type=int, default=0, metavar="N",
        help=f"attach an N x 2N checkerboard UV texture (.obj/.glb; 0 = none; N <= {MAX_CHECKER})",
    )
    p.add_argument(
        "--no-centre", action="store_true", help="keep the file's coordinates (no y/z mean removal)"
    )
    p.set_defaults(func=_export)

    p = g.add_parser(
        "info",
        help="print counts, closedness, winding, volume and symmetry of a mesh",
        description="Inspect a template or mesh file as stored (winding is reported before any "
        "re-orientation; the volume is that of the consistently re-oriented mesh).",
    )
    p.add_argument("template", help="procedural, icosphere, or a mesh file")
    p.add_argument("--tol", type=float, default=1e-6, help="mirror-partner tolerance (default 1e-6)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)


def _vertex_colors(template, mode: str):
    import torch

    from slopekp.mesh import vertex_normals

    if mode == "uv":
        uv = template.verts_uv
        return torch.stack([(uv[:, 0] + 1) / 2, (uv[:, 1] + 1) / 2, torch.full_like(uv[:, 0], 0.5)], dim=1)
    if mode == "normal":
        return (vertex_normals(template.verts, template.faces) + 1.0) / 2.0
    sym = template.symmetry()
    col = torch.full((template.num_verts, 3), 0.6)
    col[sym.left] = torch.tensor([0.9, 0.15, 0.15])
    col[sym.right] = torch.tensor([0.15, 0.25, 0.9])
    return col


def checker_texture(n: int):
    """``(3, n, 2n)`` float checkerboard texture in [0, 1] (one texel per square) with a green column ramp that
    shows the u direction and the seam.

    Raises:
        ValueError: ``n`` outside ``1..MAX_CHECKER``.
    """
    import torch

    if n < 1:
        raise ValueError(f"checker must be >= 1, got {n}")
    if n > MAX_CHECKER:
        raise ValueError(f"checker must be <= {MAX_CHECKER}, got {n}")
    rows = torch.arange(n)[:, None]
    cols = torch.arange(2 * n)[None, :]
    on = ((rows + cols) % 2).float()
    ramp = cols.float() / (2 * n - 1)  # column ramp in green: shows the u direction and the seam
    return torch.stack([0.15 + 0.8 * on, 0.15 + 0.8 * (1 - on) * ramp, torch.full_like(on, 0.5)])


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slopekp import mesh
    from slopekp.manifest import prepare_output_file

    out = Path(args.out)
    if out.suffix.lower() not in mesh.EXPORT_FORMATS:
        raise ValueError(f"--out {args.out}: the suffix must be one of {', '.join(mesh.EXPORT_FORMATS)}")
    if args.checker < 0:
        raise ValueError(f"--checker must be >= 0, got {args.checker}")
    if args.checker and args.colors != "none":
        raise ValueError("--checker and --colors cannot be combined: a mesh gets a texture or colours")
    texture = checker_texture(args.checker) if args.checker else None
    outputs = [out]
    if texture is not None and out.suffix.lower() == ".obj":  # the OBJ's material and texture files
        outputs += [out.with_suffix(".mtl"), out.with_suffix(".png")]
    for path in outputs:
        prepare_output_file(path, overwrite=args.overwrite)
    t = mesh.load_template(args.template, mean_centre=not args.no_centre)
    kwargs = {}
    if args.colors != "none":
        kwargs["vertex_colors"] = _vertex_colors(t, args.colors)
    if texture is not None:
        kwargs["texture"] = texture
        kwargs["verts_uv"] = t.verts_uv
    written = mesh.export_mesh(out, t.verts, t.faces, **kwargs)
    print(f"wrote {', '.join(map(str, written))} ({t.num_verts} vertices, {t.num_faces} faces)")
    return 0


def mesh_info(path_or_name: str, tol: float = 1e-6) -> dict:
    """Facts about a mesh as stored (not centred, winding as in the file); used by ``slopekp mesh info``."""
    import torch

    from slopekp.mesh import (
        edges,
        euler_characteristic,
        face_normals,
        is_closed,
        load_template,
        orient_outward,
        signed_volume,
    )

    t = load_template(path_or_name, mean_centre=False, reorient=False)
    f = t.faces
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    consistent = torch.unique(directed, dim=0).shape[0] == directed.shape[0]
    closed = is_closed(f)
    chi = euler_characteristic(f, t.num_verts)
    fixed = orient_outward(t.verts, f)
    sym = t.symmetry(tol)
    on_plane = int((t.verts[sym.indep, 0] == 0).sum())
    lo, hi = t.verts.min(0).values, t.verts.max(0).values
    return {
        "name": t.name,
        "vertices": t.num_verts,
        "faces": t.num_faces,
        "edges": int(edges(f).shape[0]),
        "closed": closed,
        "euler_characteristic": chi,
        "genus": (2 - chi) // 2 if closed else None,
        "winding_consistent_outward": bool(consistent and signed_volume(t.verts, f).item() > 0),
        "faces_reoriented": int((fixed != f).any(dim=1).sum()),
        "volume": float(signed_volume(t.verts, fixed)) if closed else None,
        "area": float(face_normals(t.verts, f, normalize=False).norm(dim=-1).sum() / 2),
        "bbox_min": [round(float(x), 6) for x in lo],
        "bbox_max": [round(float(x), 6) for x in hi],
        "centroid": [round(float(x), 6) for x in t.verts.mean(0)],
        "symmetry_tol": tol,
        "symmetry_pairs": sym.num_pairs,
        "symmetry_indep": int(sym.indep.numel()),
        "symmetry_on_plane": on_plane,
    }


def _info(args: argparse.Namespace) -> int:
    if not args.tol > 0:
        raise ValueError(f"--tol must be > 0, got {args.tol}")
    info = mesh_info(args.template, args.tol)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for k, v in info.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        print(f"{k:<{width}}  {v}")
    return 0
