import math
import os

import numpy as np
import pytest
import torch

from slopekp.mesh import (
    Template,
    direction_uv,
    farthest_point_sampling,
    icosphere,
    is_closed,
    load_template,
    procedural_bird,
    signed_volume,
    sphere_uv,
)

# METHOD §4.6
FPS_32 = [0, 38, 280, 545, 431, 282, 392, 105, 164, 505, 369, 324, 61, 485, 492, 182, 199, 88, 11, 301, 339]
FPS_32 += [63, 229, 377, 172, 531, 323, 538, 4, 226, 287, 511]


@pytest.fixture(scope="module")
def ucmr(ucmr_template_path):
    return load_template(str(ucmr_template_path))


def test_ucmr_npz_loads_centred(ucmr, ucmr_template_path):
    raw = np.load(ucmr_template_path)
    assert ucmr.num_verts == 555 and ucmr.num_faces == 1106
    assert ucmr.verts.dtype == torch.float32 and ucmr.faces.dtype == torch.int64
    offset = raw["verts"] - ucmr.verts.numpy()
    # only y and z are shifted, by the y/z mean (METHOD §3.1: about (0, 0.509, -0.017))
    assert np.allclose(offset, offset[0], atol=1e-6)
    assert offset[0, 0] == 0.0
    assert offset[0, 1:] == pytest.approx([0.509, -0.017], abs=1e-3)
    lo, hi = ucmr.verts.min(0).values, ucmr.verts.max(0).values
    assert lo.tolist() == pytest.approx([-0.494, -0.996, -0.505], abs=1e-3)
    assert hi.tolist() == pytest.approx([0.494, 1.151, 0.409], abs=1e-3)
    assert torch.equal(ucmr.verts_uv, torch.as_tensor(raw["verts_uv"]))
    assert signed_volume(ucmr.verts, ucmr.faces).item() == pytest.approx(0.696, abs=1e-3)
    assert is_closed(ucmr.faces)


def test_ucmr_npy_matches_npz(ucmr, shared_data):
    p = shared_data / "template_shape" / "bird_template.npy"
    if not p.is_file():
        pytest.skip("bird_template.npy not present")
    t = load_template(str(p))
    assert torch.equal(t.verts, ucmr.verts) and torch.equal(t.faces, ucmr.faces)
    assert torch.equal(t.verts_uv, ucmr.verts_uv)
    # the reference way to read it (trusted file) gives the same arrays
    d = np.load(p, allow_pickle=True, encoding="latin1").item()
    raw = load_template(str(p), mean_centre=False)
    assert np.array_equal(raw.verts.numpy(), d["verts"])


def test_mean_centre_false(ucmr_template_path):
    raw = np.load(ucmr_template_path)
    t = load_template(str(ucmr_template_path), mean_centre=False)
    assert np.array_equal(t.verts.numpy(), raw["verts"])


def test_ucmr_uv_is_sphere_direction(ucmr_template_path):
    # the stored UVs are sphere coordinates of (roughly) each raw vertex direction: an independent check
    # of the (u, v) convention of METHOD §3.4
    raw = np.load(ucmr_template_path)
    uv = direction_uv(torch.as_tensor(raw["verts"]))
    du = (uv[:, 0] - torch.as_tensor(raw["verts_uv"][:, 0])).abs()
    du = torch.minimum(du, 2 - du)
    dv = (uv[:, 1] - torch.as_tensor(raw["verts_uv"][:, 1])).abs()
    assert du.median() < 0.02 and dv.median() < 0.02


def test_sphere_uv_hand_values():
    pts = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [-1, 1e-9, 0], [0, -1, 0]])
    uv = direction_uv(pts)
    assert uv[0].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert uv[1].tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    assert uv[2, 1].item() == pytest.approx(-1.0, abs=1e-6)
    assert uv[3, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert uv[4, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert uv[5, 0].item() == pytest.approx(-0.5, abs=1e-6)
    # sphere_uv works relative to the centroid
    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(50, 3, generator=g)
    cloud = cloud - cloud.mean(0)
    shifted = cloud.double() + torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64)
    assert torch.allclose(sphere_uv(shifted), direction_uv(cloud.double()), atol=1e-9)
    # inclination 45 degrees above the equator: v = 2*(pi/4)/pi - 1 = -0.5
    assert direction_uv(torch.tensor([0.0, 1.0, 1.0]))[1].item() == pytest.approx(-0.5, abs=1e-6)
    assert direction_uv(torch.tensor([-1.0, -1.0, 0.0]))[0].item() == pytest.approx(-0.75, abs=1e-6)


def test_builtin_names():
    p = load_template("procedural")
    assert p.name == "procedural" and 500 <= p.num_verts <= 1000
    assert torch.allclose(p.verts, procedural_bird().verts, atol=1e-6)
    assert p.verts[:, 1:].mean(0).abs().max() < 1e-6
    s = load_template("icosphere")
    assert s.num_verts == 642 and s.num_faces == 1280
    assert torch.equal(s.faces, icosphere(3).faces)


def test_template_to_and_symmetry_cache(ucmr):
    s1 = ucmr.symmetry()
    assert ucmr.symmetry() is s1
    assert ucmr.symmetry(1e-3) is not s1
    t = ucmr.to("cpu")
    assert torch.equal(t.verts, ucmr.verts) and t.symmetry().num_rows == s1.num_rows


def test_fps_matches_method_list(ucmr, ucmr_template_path):
    assert farthest_point_sampling(ucmr.verts, 32).tolist() == FPS_32
    # centring does not matter (FPS only uses differences)
    raw = load_template(str(ucmr_template_path), mean_centre=False)
    assert farthest_point_sampling(raw.verts, 32).tolist() == FPS_32


def test_fps_brute_force_random():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(200, 3, generator=g)
    idx = farthest_point_sampling(v, 20, start=5).tolist()
    vd = v.double()
    chosen = [5]
    while len(chosen) < 20:  # recompute all distances to the whole chosen set every step
        d = torch.cdist(vd, vd[chosen]).min(dim=1).values
        chosen.append(int(torch.argmax(d)))
    assert idx == chosen and len(set(idx)) == 20
    with pytest.raises(ValueError, match="k must be in"):
        farthest_point_sampling(v, 0)
    with pytest.raises(ValueError, match="start"):
        farthest_point_sampling(v, 3, start=200)


# ------------------------------------------------------------------------------------------------ bad input


def _tri_template(**kw):
    base = dict(
        verts=torch.rand(5, 3),
        faces=torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4]]),
        verts_uv=torch.zeros(5, 2),
        name="t",
    )
    base.update(kw)
    return Template(**base)


def test_template_validation():
    _tri_template()
    with pytest.raises(ValueError, match="faces index 812 out of range for 5 vertices"):
        _tri_template(faces=torch.tensor([[0, 1, 812]]))
    v = torch.rand(5, 3)
    v[3, 1] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf .*vertex 3"):
        _tri_template(verts=v)
    with pytest.raises(ValueError, match=r"verts must have shape \(V, 3\)"):
        _tri_template(verts=torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"verts_uv must have shape \(5, 2\)"):
        _tri_template(verts_uv=torch.zeros(4, 2))


def test_load_errors(tmp_path, ucmr_template_path):
    with pytest.raises(ValueError, match="neither a built-in name"):
        load_template(str(tmp_path / "nope.npz"))
    raw = dict(np.load(ucmr_template_path))
    p = tmp_path / "nofaces.npz"
    np.savez(p, verts=raw["verts"], verts_uv=raw["verts_uv"])
    with pytest.raises(ValueError, match=r"nofaces\.npz: missing key\(s\) \['faces'\]"):
        load_template(str(p))
    p = tmp_path / "badidx.npz"
    faces = raw["faces"].copy()
    faces[10, 1] = 555
    np.savez(p, verts=raw["verts"], faces=faces, verts_uv=raw["verts_uv"])
    with pytest.raises(ValueError, match=r"badidx\.npz: faces index 555 out of range for 555 vertices"):
        load_template(str(p))
    p = tmp_path / "nan.npz"
    verts = raw["verts"].copy()
    verts[7, 2] = np.nan
    np.savez(p, verts=verts, faces=raw["faces"], verts_uv=raw["verts_uv"])
    with pytest.raises(ValueError, match=r"nan\.npz: verts contains NaN"):
        load_template(str(p))
    p = tmp_path / "mesh.txt"
    p.write_text("hello")
    with pytest.raises(ValueError, match="unsupported template format '.txt'"):
        load_template(str(p))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _write_object_npy(path, obj):
    """A .npy holding a pickled 0-d object array, like U-CMR's template file."""
    arr = np.empty((), dtype=object)
    arr[()] = obj
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=True)


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.npy"
    _write_object_npy(p, {"verts": _Evil(str(marker)), "faces": np.zeros((1, 3), np.int64)})
    with pytest.raises(ValueError, match=r"evil\.npy: unsafe or corrupt pickled .npy .*refusing to load"):
        load_template(str(p))
    assert not marker.exists()
    # sanity: the unrestricted loader *would* run it
    np.load(p, allow_pickle=True)
    assert marker.exists()


def test_npy_dict_round_trip_and_missing_key(tmp_path):
    ico = icosphere(1)
    d = {"verts": ico.verts.numpy(), "faces": ico.faces.numpy()}
    p = tmp_path / "ok.npy"
    _write_object_npy(p, d)
    t = load_template(str(p), mean_centre=False)
    assert torch.equal(t.verts, ico.verts) and torch.equal(t.faces, ico.faces)
    assert torch.allclose(t.verts_uv, sphere_uv(ico.verts))  # computed when absent
    p2 = tmp_path / "nokey.npy"
    _write_object_npy(p2, {"verts": ico.verts.numpy()})
    with pytest.raises(ValueError, match=r"nokey\.npy: missing key\(s\) \['faces'\]"):
        load_template(str(p2))
    p3 = tmp_path / "plain.npy"
    np.save(p3, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="plain float64 array"):
        load_template(str(p3))
