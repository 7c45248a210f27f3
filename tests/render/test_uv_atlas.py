"""Where each texel lies on the mesh (slopekp.render.uv_atlas), checked against the renderer's own texture look-up."""

from __future__ import annotations

import pytest
import torch

from slopekp.mesh import load_template
from slopekp.mesh.symmetry import find_symmetry
from slopekp.models.texture import mirror_uv
from slopekp.render.texture import sphere_to_uv, uv_to_sphere
from slopekp.render.uv_atlas import texel_points, texel_surface


def _template(name, request):
    return load_template(request.getfixturevalue("ucmr_template_path") if name == "ucmr" else "procedural")


def _texel_uv(hu: int, wu: int) -> torch.Tensor:
    u = -1 + 2 * torch.arange(wu) / (wu - 1)
    v = -1 + 2 * torch.arange(hu) / (hu - 1)
    return torch.stack([u[None].expand(hu, wu), v[:, None].expand(hu, wu)], -1)


@pytest.mark.parametrize("name", ["procedural", "ucmr"])
def test_every_texel_maps_back_to_itself_through_the_renderers_look_up(name, request):
    t = _template(name, request)
    hu, wu = 16, 40
    atlas = texel_surface(t.verts_uv, t.faces, (hu, wu))
    assert int((atlas.face < 0).sum()) == 0 and torch.allclose(atlas.bary.sum(-1), torch.ones(hu, wu))
    assert float(atlas.bary.min()) >= 0
    s = uv_to_sphere(t.verts_uv)[t.faces[atlas.face]]  # the face's sphere points, as the renderer interpolates them
    uv = sphere_to_uv((atlas.bary[..., None] * s).sum(-2))
    want = _texel_uv(hu, wu)
    du = torch.remainder(uv[..., 0] - want[..., 0] + 1, 2) - 1
    assert float(du[1:-1].abs().max()) < 1e-4  # the poles' rows have no azimuth
    assert float((uv[..., 1] - want[..., 1]).abs().max()) < 1e-3
    # texel points on the template itself lie on its surface, inside the faces found
    pts = texel_points(t.verts[None], t.faces, atlas)[0]
    tri = t.verts[t.faces[atlas.face.reshape(-1)]]
    assert torch.allclose(pts, (atlas.bary.reshape(-1, 3, 1) * tri).sum(1), atol=1e-6)


def test_mirror_pairs_of_vertices_get_mirrored_texel_points():
    t = load_template("procedural")
    sym = find_symmetry(t.verts, 1e-4)
    atlas = texel_surface(t.verts_uv, t.faces, (16, 32))
    pts = texel_points(t.verts[None], t.faces, atlas)[0].view(16, 32, 3)
    mirrored = mirror_uv(pts.permute(2, 0, 1)).permute(1, 2, 0) * torch.tensor([-1.0, 1.0, 1.0])
    assert sym.left.numel() > 10
    assert float((pts - mirrored)[1:-1].norm(dim=-1).max()) < 1e-4  # exact: the triangulation is symmetric
