import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from slopekp.mesh import export_mesh, icosphere, load_mesh, load_template, procedural_bird, uv_to_texcoords


@pytest.fixture(scope="module")
def bird():
    return procedural_bird()


def _trimesh_load(path):
    return trimesh.load(path, process=False, force="mesh")


@pytest.mark.parametrize("suffix", [".obj", ".glb", ".ply"])
def test_round_trip_plain(tmp_path, bird, suffix):
    p = tmp_path / f"bird{suffix}"
    assert export_mesh(p, bird.verts, bird.faces) == [p]
    m = _trimesh_load(p)  # an independent reader
    assert np.abs(np.asarray(m.vertices) - bird.verts.numpy()).max() < 1e-6
    assert np.array_equal(np.asarray(m.faces), bird.faces.numpy())
    ours = load_mesh(p)
    assert torch.allclose(ours.verts, bird.verts, atol=1e-6) and torch.equal(ours.faces, bird.faces)
    # winding survives: positive volume in the reader's eyes
    assert m.volume > 0.4
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


@pytest.mark.parametrize("suffix", [".obj", ".glb", ".ply"])
def test_round_trip_vertex_colors(tmp_path, bird, suffix):
    g = torch.Generator().manual_seed(0)
    col = torch.randint(0, 256, (bird.num_verts, 3), generator=g).float() / 255.0
    p = tmp_path / f"c{suffix}"
    export_mesh(p, bird.verts, bird.faces, vertex_colors=col)
    m = _trimesh_load(p)
    assert np.array_equal(np.asarray(m.faces), bird.faces.numpy())
    got = np.asarray(m.visual.vertex_colors)[:, :3].astype(np.float64) / 255.0
    assert np.abs(got - col.numpy()).max() < 1e-6
    ours = load_mesh(p)
    assert ours.vertex_colors is not None and torch.allclose(ours.vertex_colors, col, atol=1e-5)


def _uv_texture(h=64, w=128):
    """A texture whose colour encodes the column (red) and row (green)."""
    cols = np.linspace(0, 1, w)[None, :].repeat(h, 0)
    rows = np.linspace(0, 1, h)[:, None].repeat(w, 1)
    return torch.tensor(np.stack([cols, rows, np.zeros_like(cols)]), dtype=torch.float32)


def test_uv_to_texcoords_hand_values():
    uv = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.8, 0.5]])
    st = uv_to_texcoords(uv)
    assert torch.allclose(st, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.9, 0.25]]))
    shifted = uv_to_texcoords(uv, uv_shift=0.5)
    # u' = wrap(u + 0.5): -1 -> -0.5, 0.8 -> -0.7
    assert shifted[:, 0].tolist() == pytest.approx([0.25, 0.25, 0.75, 0.15])


def test_textured_obj(tmp_path):
    ico = icosphere(3)
    tex = _uv_texture()
    p = tmp_path / "ico.obj"
    written = export_mesh(p, ico.verts, ico.faces, verts_uv=ico.verts_uv, texture=tex)
    assert written == [p, tmp_path / "ico.mtl", tmp_path / "ico.png"]
    assert "map_Kd ico.png" in (tmp_path / "ico.mtl").read_text()
    png = np.asarray(Image.open(tmp_path / "ico.png"))
    assert png.shape == (64, 128, 3)
    assert np.array_equal(png, np.round(tex.numpy().transpose(1, 2, 0) * 255).astype(np.uint8))
    ours = load_mesh(p)
    assert torch.equal(ours.faces, ico.faces) and torch.allclose(ours.verts, ico.verts, atol=1e-6)
    # parse the vt lines ourselves: each corner's texcoord must be the vertex's mapped UV, up to s + 1
    # at the seam
    vts, corners = [], []
    for line in p.read_text().splitlines():
        if line.startswith("vt "):
            vts.append([float(x) for x in line.split()[1:]])
        elif line.startswith("f "):
            corners.append([tuple(int(x) - 1 for x in c.split("/")) for c in line.split()[1:]])
    vts = np.array(vts)
    st = uv_to_texcoords(ico.verts_uv).numpy()
    n_shifted = 0
    pole = set(torch.nonzero(ico.verts_uv[:, 1].abs() > 0.999).flatten().tolist())
    assert len(pole) == 2  # (0, 0, +-1), where u is undefined
    for face in corners:
        ss = [vts[t][0] for _, t in face]
        if not pole & {v for v, _ in face}:
            assert max(ss) - min(ss) <= 0.5  # no face spans the whole texture
        for v, t in face:
            d = vts[t] - st[v]
            assert abs(d[1]) < 1e-6 and (abs(d[0]) < 1e-6 or abs(d[0] - 1.0) < 1e-6)
            n_shifted += abs(d[0] - 1.0) < 1e-6
    assert n_shifted > 0  # the icosphere has faces across the seam
    # trimesh sees the same geometry per face corner (it may split vertices at the seam)
    m = trimesh.load(p, process=False, force="mesh")
    a = np.asarray(m.vertices)[np.asarray(m.faces)]
    assert np.abs(a - ico.verts[ico.faces].numpy()).max() < 1e-6


def test_textured_glb_duplicates_seam_vertices(tmp_path):
    ico = icosphere(3)
    p = tmp_path / "ico.glb"
    export_mesh(p, ico.verts, ico.faces, verts_uv=ico.verts_uv, texture=_uv_texture())
    m = trimesh.load(p, process=False, force="mesh")
    v = np.asarray(m.vertices)
    assert ico.num_verts < v.shape[0] < ico.num_verts + 60
    assert np.abs(v[: ico.num_verts] - ico.verts.numpy()).max() < 1e-6
    assert np.abs(v[np.asarray(m.faces)] - ico.verts[ico.faces].numpy()).max() < 1e-6
    uv = np.asarray(m.visual.uv)
    st = uv_to_texcoords(ico.verts_uv).numpy()
    assert np.abs(uv[: ico.num_verts] - st).max() < 1e-6
    spread = uv[np.asarray(m.faces)][..., 0]
    spread = spread.max(1) - spread.min(1)
    near_pole = np.abs(v[np.asarray(m.faces)][..., 2]).max(1) > 0.999
    assert near_pole.sum() == 12  # two valence-6 pole vertices
    assert spread[~near_pole].max() <= 0.5 + 1e-6
    assert np.asarray(m.visual.material.baseColorTexture).shape[:2] == (64, 128)


def test_load_template_from_exported_obj(tmp_path, bird):
    p = tmp_path / "b.obj"
    export_mesh(p, bird.verts, bird.faces)
    t = load_template(str(p), mean_centre=False)
    assert torch.allclose(t.verts, bird.verts, atol=1e-6) and torch.equal(t.faces, bird.faces)
    assert t.symmetry(1e-6).num_pairs == bird.symmetry(1e-6).num_pairs


def test_export_errors(tmp_path, bird):
    uv = bird.verts_uv
    with pytest.raises(ValueError, match="unsupported mesh format '.stl'"):
        export_mesh(tmp_path / "a.stl", bird.verts, bird.faces)
    with pytest.raises(ValueError, match="texture export needs verts_uv"):
        export_mesh(tmp_path / "a.obj", bird.verts, bird.faces, texture=_uv_texture())
    with pytest.raises(ValueError, match=r"texture must have shape \(3, H, W\)"):
        export_mesh(tmp_path / "a.obj", bird.verts, bird.faces, verts_uv=uv, texture=torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"texture must be finite and in \[0, 1\]"):
        export_mesh(tmp_path / "a.obj", bird.verts, bird.faces, verts_uv=uv, texture=_uv_texture() * 2)
    with pytest.raises(ValueError, match="GLB export stores UVs only together with a texture"):
        export_mesh(tmp_path / "a.glb", bird.verts, bird.faces, verts_uv=uv)
    with pytest.raises(ValueError, match="PLY export stores no UVs"):
        export_mesh(tmp_path / "a.ply", bird.verts, bird.faces, verts_uv=bird.verts_uv)
    with pytest.raises(ValueError, match="index 642 out of range for 642 vertices"):
        export_mesh(tmp_path / "a.obj", bird.verts, bird.faces.clamp(max=641) + (bird.faces == 641).long())
    with pytest.raises(ValueError, match="vertex_colors has 3 rows"):
        export_mesh(tmp_path / "a.ply", bird.verts, bird.faces, vertex_colors=torch.zeros(3, 3))
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_mesh(tmp_path / "none.obj")
    p = tmp_path / "bad.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n")
    with pytest.raises(ValueError, match=r"bad\.obj:4: cannot parse"):
        load_mesh(p)
    p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n")
    with pytest.raises(ValueError, match="index 3 out of range for 3 vertices"):
        load_mesh(p)
    p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 4 3\nf -4/1/1 -3/2/2 -1/3/3\n")
    m = load_mesh(p)
    assert m.faces.tolist() == [[0, 1, 3], [0, 3, 2], [0, 1, 3]]
