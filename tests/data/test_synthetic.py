"""SynthBirds generator and the CUB-fitted viewpoint distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from slopekp.data import viewpoints as vp
from slopekp.data.synth.background import random_background
from slopekp.data.synth.bird import keypoint_vertices, sample_bird
from slopekp.data.synth.options import SynthOptions
from slopekp.data.synth.scene import keypoint_visibility, render_bird
from slopekp.data.synth.texture import TEXTURE_HW, random_texture, texel_directions
from slopekp.data.synth.writer import CLASS_NAMES, GENERATOR_VERSION, _make_batch, _prepare, generate_synthbirds
from slopekp.mesh import load_template


@pytest.fixture(scope="module")
def template():
    return load_template("procedural")


# ------------------------------------------------------------------------------------------- viewpoints
def _geodesic_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    return np.degrees(2 * np.arccos(np.clip(np.abs((q1 * q2).sum(-1)), 0, 1)))


def _tv(a: np.ndarray, b: np.ndarray, bins: int, lo: float, hi: float) -> float:
    """Total-variation distance between the histograms of ``a`` and ``b``."""
    ha = np.histogram(a, bins=bins, range=(lo, hi))[0] / len(a)
    hb = np.histogram(b, bins=bins, range=(lo, hi))[0] / len(b)
    return 0.5 * np.abs(ha - hb).sum()


def _quat_to_R(q: np.ndarray) -> np.ndarray:
    return Rotation.from_quat(np.roll(q, -1, axis=-1)).as_matrix()


def test_viewpoint_parametrisation_matches_geometry_module():
    """Independent check against slopekp.geometry.rotations.azelcr_to_quat with base Rx(90°)."""
    from slopekp.geometry.rotations import azelcr_to_quat, quat_about_axis

    rng = np.random.default_rng(0)
    a = rng.uniform(-1.2, 1.2, size=(50, 3))
    q = vp.viewpoint_to_quat(a)
    base = quat_about_axis("x", torch.tensor(np.pi / 2, dtype=torch.float64))
    ref = azelcr_to_quat(*(torch.as_tensor(a[:, k]) for k in range(3)), base=base).numpy()
    assert _geodesic_deg(q, ref).max() < 1e-5
    np.testing.assert_allclose(vp.rotations_to_azelcr(_quat_to_R(q)), a, atol=1e-9)


def test_convention_head_view():
    """az = el = cr = 0: the bird's back (+z) points image-up (−y), its tail (+y) away from the camera."""
    R = _quat_to_R(vp.viewpoint_to_quat(np.zeros((1, 3))))[0]
    np.testing.assert_allclose(R @ [0, 0, 1], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [0, 1, 0], [0, 0, 1], atol=1e-12)


def test_fitted_numbers_reproduce_from_real_sfm(sfm_dir):
    from slopekp.data.matfiles import read_sfm_anno

    rot = read_sfm_anno(sfm_dir / "anno_train.mat").rot
    fit = vp.fit_viewpoint_distribution(rot)
    stored = vp.CUB_VIEWPOINTS
    for name in ("az_probs", "el_coef", "el_resid_probs", "cr_coef", "cr_resid_probs"):
        np.testing.assert_allclose(getattr(fit, name), getattr(stored, name), atol=6e-5, err_msg=name)


def test_sampled_viewpoints_match_real_rotations(sfm_dir):
    """az/el/cr histograms (total variation) and the mean pairwise geodesic angle (≈ 98.7° on CUB)."""
    from slopekp.data.matfiles import read_sfm_anno

    rot = read_sfm_anno(sfm_dir / "anno_train.mat").rot
    real = vp.rotations_to_azelcr(rot)
    q = vp.sample_viewpoint(np.random.default_rng(1), 6000)
    assert q.shape == (6000, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-12)
    fake = vp.rotations_to_azelcr(_quat_to_R(q))
    ranges = [(-np.pi, np.pi), (-np.pi / 2, np.pi / 2), (-np.pi, np.pi)]
    for k, (lo, hi) in enumerate(ranges):
        # a bootstrap resample of the real angles scores about 0.015
        assert _tv(real[:, k], fake[:, k], 18, lo, hi) < 0.05, k
    # a uniform distribution on SO(3) fails the same test
    uni = vp.rotations_to_azelcr(Rotation.random(6000, random_state=2).as_matrix())
    assert _tv(real[:, 1], uni[:, 1], 18, -np.pi / 2, np.pi / 2) > 0.15
    rng = np.random.default_rng(3)
    i, j = rng.integers(0, len(rot), 4000), rng.integers(0, len(rot), 4000)
    qr = np.roll(Rotation.from_matrix(rot).as_quat(), 1, axis=-1)
    real_mean = _geodesic_deg(qr[i], qr[j]).mean()
    k, m = rng.integers(0, 6000, 4000), rng.integers(0, 6000, 4000)
    fake_mean = _geodesic_deg(q[k], q[m]).mean()
    assert abs(real_mean - 98.7) < 2.0
    assert abs(fake_mean - real_mean) < 2.5


def test_sample_viewpoint_deterministic():
    a = vp.sample_viewpoint(np.random.default_rng(9), 5)
    b = vp.sample_viewpoint(np.random.default_rng(9), 5)
    np.testing.assert_array_equal(a, b)
    assert (a[:, 0] >= 0).all()
    assert vp.sample_viewpoint(np.random.default_rng(9), 0).shape == (0, 4)


# ------------------------------------------------------------------------------------------- bird pieces
def test_keypoints_semantic_and_mirror_consistent(template):
    kp = keypoint_vertices(template)
    v = template.verts[kp].numpy()
    centre = [0, 1, 2, 3, 4, 5, 9, 13, 14]
    assert np.abs(v[centre, 0]).max() < 1e-6
    np.testing.assert_allclose(v[[10, 11, 12]], v[[6, 7, 8]] * [-1, 1, 1], atol=1e-6)  # right = mirror(left)
    assert (v[[6, 7, 8], 0] > 0).all()  # left = +x
    y, z = v[:, 1], v[:, 2]
    assert y[1] == y.min() and y[13] == y.max()  # beak frontmost, tail hindmost
    assert z[0] > z[2] and z[4] > z[14] and z[9] > z[3]  # back/belly, crown/throat, nape/breast
    assert y[4] < y[9] < y[0]  # crown, nape, back from front to rear
    assert z[7] < z[8]  # leg below wing
    assert len(set(kp.tolist())) == 15


def test_sample_bird_deform_zero_is_template_and_symmetric(template):
    b0 = sample_bird(np.random.default_rng(0), template, deform=0.0)
    assert torch.equal(b0.verts, template.verts)
    b = sample_bird(np.random.default_rng(0), template, deform=1.0)
    sym = template.symmetry()
    mirrored = b.verts[sym.left] * torch.tensor([-1.0, 1, 1])
    torch.testing.assert_close(b.verts[sym.right], mirrored, atol=0, rtol=0)
    assert (b.verts[sym.indep, 0] == 0).all()
    delta = (b.verts - template.verts).norm(dim=1)
    assert 0.005 < delta.mean() and delta.max() < 0.5  # deformed, bounded
    # smooth: neighbouring vertices move alike
    f = template.faces
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    d = b.verts - template.verts
    assert (d[e[:, 0]] - d[e[:, 1]]).norm(dim=1).mean() < 0.3 * d.norm(dim=1).mean()
    # same texture whatever the deformation scale (the RNG draws do not depend on it)
    torch.testing.assert_close(b0.uv_image, b.uv_image)
    assert b.uv_image.shape == (3, *TEXTURE_HW) and 0 <= b.uv_image.min() and b.uv_image.max() <= 1
    assert b.uv_image.std() > 0.02
    with pytest.raises(ValueError, match="deform must be a finite number >= 0"):
        sample_bird(np.random.default_rng(0), template, deform=-1)


def test_texture_is_mirror_symmetric():
    """Texels whose sphere directions are mirror images (x -> −x) get the same colour."""
    eyes = np.array([[0.3, -0.9, 0.2], [-0.3, -0.9, 0.2]])
    tex, _ = random_texture(np.random.default_rng(4), eye_dirs=eyes)
    d = texel_directions(*TEXTURE_HW).reshape(-1, 3)
    flat = tex.reshape(3, -1).T
    idx = np.random.default_rng(0).integers(0, len(d), 300)
    mirrored = d[idx] * [-1, 1, 1]
    nn = np.argmin(((d[None] - mirrored[:, None]) ** 2).sum(-1), axis=1)
    close = np.linalg.norm(d[nn] - mirrored, axis=1) < 0.02
    assert close.sum() > 100
    assert np.abs(flat[idx][close] - flat[nn][close]).mean() < 0.03


def test_random_background_cluttered_deterministic():
    a = random_background(np.random.default_rng(5), 48, 64)
    b = random_background(np.random.default_rng(5), 48, 64)
    assert a.shape == (48, 64, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 1
    for s in range(10):
        bg = random_background(np.random.default_rng(s), 64, 64)
        assert bg.mean() > 0.08  # never black
        assert bg.std() > 0.01  # not flat
    with pytest.raises(ValueError, match="background size must be positive"):
        random_background(np.random.default_rng(0), 0, 5)


def _visibility(template, renderer, azelcr) -> np.ndarray:
    from slopekp.geometry.camera import project_points

    kp = keypoint_vertices(template)
    q = vp.viewpoint_to_quat(np.array([azelcr]))[0]
    cam = torch.tensor([0.8, 0, 0, *q], dtype=torch.float32)
    out = renderer(template.verts[None], template.faces, cam[None], mode="hard")
    pts = project_points(template.verts[kp].double(), cam.double()).numpy()
    return keypoint_visibility(pts, out.depth[0].numpy(), out.face_index[0].numpy(), tol=0.04)


def test_keypoint_visibility_z_buffer(template):
    """Side views: the near eye/wing are visible, the far ones hidden; from above: back yes, belly no."""
    from slopekp.render import Renderer, RenderSettings

    r = Renderer(RenderSettings(image_size=128))
    for az, near, far in ((np.pi / 2, 6, 10), (-np.pi / 2, 10, 6)):
        vis = _visibility(template, r, (az, 0.0, 0.0))
        assert vis[near] and not vis[far], (az, vis)
        assert vis[near + 2] and not vis[far + 2]  # wings
    vis = _visibility(template, r, (0.3, 1.2, 0.0))  # el = 70°: the back faces the camera
    assert vis[[0, 4, 9]].all() and not vis[[2, 7, 11]].any(), vis


def test_render_bird_public_api(template):
    from slopekp.render import Renderer, RenderSettings

    rng = np.random.default_rng(2)
    bird = sample_bird(rng, template)
    q = vp.sample_viewpoint(rng, 1)[0]
    cam = torch.tensor([0.7, 0.0, 0.0, *q])
    out = render_bird(Renderer(RenderSettings(image_size=48)), template, bird, cam, rng)
    assert out.rgb.shape == (3, 48, 48) and out.alpha.shape == (48, 48) and out.face_index.shape == (48, 48)
    assert ((out.face_index >= 0) == (out.alpha > 0.5)).all()
    assert out.alpha.sum() > 100 and out.rgb[:, out.alpha > 0.5].mean() > 0.02


# ------------------------------------------------------------------------------------------- the dataset
SMALL = {"size": 64, "occlusion_prob": 0.5, "truncation_prob": 0.3}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sb")
    generate_synthbirds(root, n_train=5, n_test=3, seed=4, progress=False, **SMALL)
    return root


def test_dataset_layout_and_meta(small_dataset):
    from slopekp.data.matfiles import read_cub_cleaned, read_sfm_anno

    root = small_dataset
    meta = json.loads((root / "meta.json").read_text())
    assert meta["template"] == "procedural" and meta["options"]["deform"] == 1.0 and meta["seed"] == 4
    assert meta["generator_version"] == GENERATOR_VERSION and meta["splits"]["train"]["n"] == 5
    train = read_cub_cleaned(root / "train_cub_cleaned.mat")
    test = read_cub_cleaned(root / "test_cub_cleaned.mat")
    assert [r.id for r in train] == [1, 2, 3, 4, 5] and [r.id for r in test] == [6, 7, 8]
    assert all(r.train == 1 and r.test == 0 for r in train) and all(r.test == 1 for r in test)
    for r in train + test:
        img = Image.open(root / "images" / r.rel_path)
        assert img.size == (64, 64) and img.mode == "RGB" and r.rel_path.split("/")[0] in CLASS_NAMES
        assert r.mask.shape == (64, 64) and r.mask.sum() > 20
        x1, y1, x2, y2 = r.bbox  # 1-based, inside the image
        assert 1 <= x1 <= x2 <= 64 and 1 <= y1 <= y2 <= 64
        vis = r.parts[2] > 0
        assert (r.parts[:2, ~vis] == 0).all()
        assert (r.parts[:2, vis] >= 1).all() and (r.parts[:2, vis] <= 64).all()
        # visible keypoints lie on (or next to) the mask
        ys, xs = np.nonzero(r.mask)
        for u, v in r.parts[:2, vis].T - 1:
            assert np.min((xs - u) ** 2 + (ys - v) ** 2) <= 2.0**2
    anno = read_sfm_anno(root / "anno_train.mat")
    assert len(anno) == 5 and anno.S.shape == (3, 15)
    # the stored camera (1-based pixels) maps the generating shape's keypoints onto the stored parts
    t = load_template("procedural")
    for i, r in enumerate(train):
        verts = _prepare(t, "train", i, SynthOptions(seed=4, **SMALL)).bird.verts
        X = verts[keypoint_vertices(t)].double().numpy()
        uv = anno.scale[i] * (X @ anno.rot[i].T)[:, :2] + anno.trans[i]
        vis = r.parts[2] > 0
        np.testing.assert_allclose(uv[vis].T, r.parts[:2, vis], atol=1e-6)


def test_occlusion_and_truncation(tmp_path):
    from slopekp.data.matfiles import read_cub_cleaned

    root = generate_synthbirds(
        tmp_path,
        n_train=6,
        n_test=0,
        size=48,
        seed=1,
        progress=False,
        occlusion_prob=1.0,
        truncation_prob=1.0,
    )
    meta = json.loads((root / "meta.json").read_text())
    assert meta["splits"]["train"]["occluded"] == list(range(6))
    touches = 0
    for r in read_cub_cleaned(root / "train_cub_cleaned.mat"):
        x1, y1, x2, y2 = r.bbox
        touches += x1 == 1 or y1 == 1 or x2 == 48 or y2 == 48
    assert touches >= 5  # truncated birds reach the image border


def test_deterministic_and_batch_independent(tmp_path, template):
    """The same (seed, split, index) gives the same instance whatever batch it is rendered in."""
    from slopekp.render import Renderer, RenderSettings

    opts = SynthOptions(size=48, seed=3)
    r = Renderer(RenderSettings(image_size=48))
    kp = torch.as_tensor(keypoint_vertices(template))
    many = _make_batch(template, r, kp, [("train", i) for i in range(4)], opts, tmp_path / "a")
    one = _make_batch(template, r, kp, [("train", 2)], opts, tmp_path / "b")[0]
    np.testing.assert_array_equal(many[2].record.mask, one.record.mask)
    np.testing.assert_array_equal(many[2].record.parts, one.record.parts)
    np.testing.assert_array_equal(many[2].rot, one.rot)
    rel = one.record.rel_path
    assert (tmp_path / "a" / "images" / rel).read_bytes() == (tmp_path / "b" / "images" / rel).read_bytes()
    assert not np.array_equal(many[1].record.mask, many[2].record.mask)


@pytest.mark.slow
def test_workers_give_identical_output(tmp_path):
    from slopekp.data.matfiles import read_cub_cleaned

    a = generate_synthbirds(tmp_path / "a", 10, 2, size=48, seed=2, workers=0, progress=False)
    b = generate_synthbirds(tmp_path / "b", 10, 2, size=48, seed=2, workers=2, progress=False)
    for p in sorted((a / "images").rglob("*.jpg")):
        assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()
    ra_all = read_cub_cleaned(a / "train_cub_cleaned.mat")
    rb_all = read_cub_cleaned(b / "train_cub_cleaned.mat")
    for ra, rb in zip(ra_all, rb_all):
        np.testing.assert_array_equal(ra.mask, rb.mask)
        np.testing.assert_array_equal(ra.parts, rb.parts)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train and n_test must be >= 0"):
        generate_synthbirds(tmp_path, -1, 2, progress=False)
    with pytest.raises(ValueError, match="size must be >= 16"):
        generate_synthbirds(tmp_path, 1, 1, size=8, progress=False)
    with pytest.raises(ValueError, match="occlusion_prob/truncation_prob must be in"):
        generate_synthbirds(tmp_path, 1, 1, occlusion_prob=2, progress=False)
    with pytest.raises(TypeError, match="needs options= or both n_train and n_test"):
        generate_synthbirds(tmp_path, 1, progress=False)
    with pytest.raises(TypeError, match="not both"):
        generate_synthbirds(tmp_path, 1, 1, options=SynthOptions(), progress=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        generate_synthbirds(tmp_path, 1, 1, colour="red", progress=False)
    assert not any(tmp_path.iterdir())  # all refused before anything was written


def test_options_are_the_config_section_plus_the_generator_s_own():
    """One set of defaults: the ``synth`` section's (``SynthConfig``), the seed and the generator-only options;
    every value checked when the options are built; the manifest settings keep the keys of earlier releases."""
    from dataclasses import asdict, fields

    from slopekp.config import SynthConfig, load_config

    section = SynthConfig()
    opts = SynthOptions()
    assert {k: getattr(opts, k) for k in asdict(section)} == asdict(section)
    assert [f.name for f in fields(opts)] == [
        *asdict(section), "seed", "supersample", "fill_min", "fill_max", "background", "lighting", "plumage"
    ]  # fmt: skip
    cfg = load_config(None, ["synth.n_train=5", "synth.deform=0", "synth.workers=2", "seed=9"])
    built = SynthOptions.from_config(cfg.synth, seed=cfg.seed)
    assert (built.n_train, built.deform, built.workers, built.seed) == (5, 0.0, 2, 9)
    assert isinstance(built.deform, float) and built.n_test == section.n_test
    assert built.instance_options() == {
        "size": 128, "deform": 0.0, "occlusion_prob": 0.2, "truncation_prob": 0.1, "supersample": 1,
        "fill_min": 0.5, "fill_max": 0.85, "background": "natural", "lighting": "lambert", "plumage": "random",
    }  # fmt: skip
    assert sorted(built.result_settings()) == [
        "deform", "n_test", "n_train", "occlusion_prob", "seed", "size", "truncation_prob"
    ]  # fmt: skip
    assert SynthOptions(supersample=2).result_settings()["supersample"] == 2  # recorded once it changes files
    assert SynthOptions(plumage="flat").result_settings()["plumage"] == "flat"
    with pytest.raises(ValueError, match="need 0 < fill_min <= fill_max <= 1, got 0.9, 0.5"):
        SynthOptions(fill_min=0.9, fill_max=0.5)
    with pytest.raises(ValueError, match="supersample must be >= 1, got 0"):
        SynthOptions(supersample=0)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32 - 1\], got -1"):
        SynthOptions(seed=-1)


def test_cli_synth_and_contact_sheet(tmp_path):
    from slopekp.cli import main

    out = tmp_path / "ds"
    args = ["data", "synth", "--out", str(out), "--n-train", "3", "--n-test", "1", "--size", "32"]
    assert main([*args, "--no-progress"]) == 0
    assert (out / "train_cub_cleaned.mat").is_file() and (out / "anno_test.mat").is_file()
    png = tmp_path / "sheet.png"
    sheet_args = ["data", "contact-sheet", "--data", str(out), "--out", str(png), "--n", "3", "--ncols", "2"]
    assert main(sheet_args) == 0
    assert Image.open(png).size == (2 + 2 * 34, 2 + 2 * 34)
    assert main(["data", "contact-sheet", "--data", str(tmp_path / "nope"), "--out", str(png)]) == 2


def test_generating_in_this_process_gives_back_the_callers_threads(tmp_path):
    """Issue 22: SynthBirds rendered in the calling process (synth.workers=0) with one thread, as a worker does, and
    left the caller at one thread: the quickstart then ran Stages I-III on one core of two."""
    from slopekp.data.synth.writer import generate_synthbirds

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate_synthbirds(tmp_path / "sb", n_train=1, n_test=0, size=32, seed=0, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_true_meshes_of_the_test_split_fit_its_cameras_and_masks(tmp_path):
    """``meshes_test.npz`` holds each test bird's mesh by record id, in the frame of its ground-truth camera: the
    mesh rendered with that camera covers the image's mask (the occluder aside), a neighbour's mesh does not fit
    as well; the file reads back, and a damaged one is refused by name."""
    from slopekp.data.cub import CubDataset
    from slopekp.data.meshes import meshes_path, read_true_meshes
    from slopekp.eval.metrics import mask_iou
    from slopekp.mesh import load_template
    from slopekp.render import Renderer, RenderSettings

    out = generate_synthbirds(tmp_path / "sb", 2, 6, size=64, seed=4, occlusion_prob=0.0, progress=False)
    truth = read_true_meshes(out, "test")
    ds = CubDataset(out, split="test", img_size=64, padding_frac=0.0, jitter_frac=0.0, flip=False, jitter=False,
                    return_gt_camera=True)  # fmt: skip
    assert read_true_meshes(out, "train") is None and len(truth) == len(ds) == 6
    faces = torch.as_tensor(truth.faces)
    verts = torch.as_tensor(truth.lookup([r.id for r in ds.records]))
    assert torch.equal(faces, load_template("procedural").faces.cpu())
    cams = torch.stack([ds[i].gt_camera for i in range(6)])
    masks = torch.stack([ds[i].mask for i in range(6)])
    r = Renderer(RenderSettings(image_size=64))
    own = mask_iou(r(verts, faces, cams, mode="hard").alpha, masks)
    other = mask_iou(r(verts.roll(1, 0), faces, cams, mode="hard").alpha, masks)
    assert float(own.min()) > 0.9 and float(own.mean()) > float(other.mean())
    meshes_path(out, "test").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="meshes_test.npz"):
        read_true_meshes(out, "test")
    with pytest.raises(KeyError, match="no mesh"):
        truth.lookup([999])
