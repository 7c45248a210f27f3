import json

import numpy as np
import pytest
import trimesh

from slopekp.cli import main
from slopekp.mesh import load_template, procedural_bird


@pytest.mark.parametrize("suffix", [".obj", ".glb", ".ply"])
def test_export_procedural(tmp_path, capsys, suffix):
    out = tmp_path / f"bird{suffix}"
    assert main(["mesh", "export", "--template", "procedural", "--out", str(out)]) == 0
    assert "642 vertices, 1280 faces" in capsys.readouterr().out
    m = trimesh.load(out, process=False, force="mesh")
    b = procedural_bird()
    assert np.abs(np.asarray(m.vertices) - b.verts.numpy()).max() < 1e-6
    assert np.array_equal(np.asarray(m.faces), b.faces.numpy())


def test_export_file_template_colors_and_checker(tmp_path, ucmr_template_path):
    out = tmp_path / "ucmr.ply"
    assert main(["mesh", "export", "--template", str(ucmr_template_path), "--out", str(out), "--colors",
                 "symmetry"]) == 0
    m = trimesh.load(out, process=False, force="mesh")
    t = load_template(str(ucmr_template_path))
    assert np.abs(np.asarray(m.vertices) - t.verts.numpy()).max() < 1e-6
    assert m.volume == pytest.approx(0.696, abs=1e-3)  # re-wound outward
    col = np.asarray(m.visual.vertex_colors)[:, :3]
    sym = t.symmetry()
    assert (col[sym.left.numpy(), 0] > 200).all() and (col[sym.right.numpy(), 2] > 200).all()
    out2 = tmp_path / "ico.obj"
    assert main(["mesh", "export", "--template", "icosphere", "--out", str(out2), "--checker", "4"]) == 0
    assert (tmp_path / "ico.png").is_file() and (tmp_path / "ico.mtl").is_file()


def test_export_errors(tmp_path, capsys):
    assert main(["mesh", "export", "--template", "procedural", "--out", str(tmp_path / "a.stl")]) == 2
    assert "suffix must be one of" in capsys.readouterr().err
    assert main(["mesh", "export", "--template", str(tmp_path / "missing.npz"), "--out",
                 str(tmp_path / "a.obj")]) == 2
    assert "neither a built-in name" in capsys.readouterr().err
    assert main(["mesh", "export", "--template", "procedural", "--out", str(tmp_path / "a.obj"),
                 "--checker", "4", "--colors", "uv"]) == 2
    assert not list(tmp_path.iterdir())


def test_export_overwrite(tmp_path, capsys):
    """An existing output (or the .obj's texture files) is kept unless --overwrite."""
    out = tmp_path / "ico.obj"
    cmd = ["mesh", "export", "--template", "icosphere", "--out", str(out), "--checker", "4"]
    assert main(cmd) == 0
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert sorted(before) == ["ico.mtl", "ico.obj", "ico.png"]
    assert main(cmd) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert main([*cmd, "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ico.mtl", "ico.obj", "ico.png"]


def test_info_ucmr_npy(shared_data, capsys):
    p = shared_data / "template_shape" / "bird_template.npy"
    if not p.is_file():
        pytest.skip("bird_template.npy not present")
    assert main(["mesh", "info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vertices"] == 555 and info["faces"] == 1106 and info["edges"] == 1659
    assert info["closed"] and info["genus"] == 0
    assert info["winding_consistent_outward"] is False and info["faces_reoriented"] > 0
    assert info["volume"] == pytest.approx(0.696, abs=1e-3)
    assert info["symmetry_pairs"] == 237 and info["symmetry_indep"] == 81 and info["symmetry_on_plane"] == 51


def test_info_text(capsys):
    assert main(["mesh", "info", "procedural", "--tol", "1e-7"]) == 0
    out = capsys.readouterr().out
    assert "winding_consistent_outward  True" in out and "genus" in out
    assert main(["mesh", "info", "procedural", "--tol", "0"]) == 2
