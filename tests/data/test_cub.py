"""CubDataset on hand-made CMR fixtures (DATA.md §9) and on SynthBirds read back against re-renders."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from slopekp.data.cub import FLIP_ID_BASE, Batch, CubDataset, collate_samples, mask_distance_transform
from slopekp.data.matfiles import MatFileError, SfmAnnotations, write_sfm_anno
from slopekp.data.transforms import KP_FLIP_PERM
from slopekp.geometry.camera import join_camera, project_points

SIZES = [(120, 160), (200, 150), (90, 90)]  # (height, width); entry 1 is stored as a grayscale JPEG
CLEANED_FIELDS = ("id", "rel_path", "train", "test", "bbox", "width", "height", "parts", "mask", "class_id")


def _symmetric_shape(rng) -> np.ndarray:
    """(15, 3) mirror-symmetric keypoint shape in CUB part order (left = +x)."""
    S = rng.normal(scale=0.5, size=(15, 3))
    S[[0, 1, 2, 3, 4, 5, 9, 13, 14], 0] = 0.0
    S[[6, 7, 8], 0] = np.abs(S[[6, 7, 8], 0]) + 0.1
    S[[10, 11, 12]] = S[[6, 7, 8]] * [-1, 1, 1]
    return S


def make_fixture(root, rng_seed=0, n=3, invisible=((0, 4), (2, 11)), write_anno=True):
    """Write ``root/train_cub_cleaned.mat`` (scipy struct arrays, not our writer), the images and
    ``anno_train.mat``. Returns (S (15, 3), list of 0-based pixel cameras (7,) float64)."""
    rng = np.random.default_rng(rng_seed)
    S = _symmetric_shape(rng)
    arr = np.zeros((1, n), dtype=[(f, object) for f in CLEANED_FIELDS])
    rots, scales, trans, cams = [], [], [], []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        R = Rotation.random(random_state=rng_seed * 10 + i).as_matrix()
        s = min(h, w) / 4.5
        t0 = np.array([w / 2 + rng.uniform(-5, 5), h / 2 + rng.uniform(-5, 5)])  # 0-based pixels
        uv = s * (S @ R.T)[:, :2] + t0
        vis = np.ones(15, bool)
        for j, k in invisible:
            if j == i:
                vis[k] = False
        parts = np.zeros((3, 15))
        parts[0, vis], parts[1, vis], parts[2, vis] = uv[vis, 0] + 1, uv[vis, 1] + 1, 1  # 1-based
        yy, xx = np.mgrid[0:h, 0:w]
        c, r = uv.mean(0), np.abs(uv - uv.mean(0)).max(0) + 4
        mask = (((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 <= 1).astype(np.uint8)
        lo, hi = uv.min(0) - 6, uv.max(0) + 6
        bbox = np.zeros((1, 1), dtype=[(k, object) for k in ("x1", "y1", "x2", "y2")])
        for k, v in zip(("x1", "y1", "x2", "y2"), (lo[0] + 1, lo[1] + 1, hi[0] + 1, hi[1] + 1)):
            bbox[0, 0][k] = float(v)
        rel = f"00{i + 1}.Class_{i}/img_{i}.jpg"
        img = (rng.uniform(size=(h, w, 3)) * 255).astype(np.uint8)
        img[mask > 0] = (200, 60, 30)
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        if i == 1:
            Image.fromarray(img[..., 0], mode="L").save(root / "images" / rel, quality=95)
        else:
            Image.fromarray(img).save(root / "images" / rel, quality=95)
        vals = {
            "id": float(i + 1),
            "rel_path": rel,
            "train": 1.0,
            "test": 0.0,
            "bbox": bbox,
            "width": float(w),
            "height": float(h),
            "parts": parts,
            "mask": mask,
            "class_id": float(i + 1),
        }
        for k, v in vals.items():
            arr[0, i][k] = v
        rots.append(R)
        scales.append(s)
        trans.append(t0 + 1)  # the files store 1-based translations
        q = np.roll(Rotation.from_matrix(R).as_quat(), 1)
        cams.append(np.concatenate([[s], t0, q]))
    scipy.io.savemat(root / "train_cub_cleaned.mat", {"images": arr})
    if write_anno:
        anno = SfmAnnotations(np.stack(rots), np.array(scales), np.stack(trans), S=S.T.copy())
        write_sfm_anno(root / "anno_train.mat", anno)
    return S, cams


@pytest.fixture()
def fixture_root(tmp_path):
    S, cams = make_fixture(tmp_path)
    return tmp_path, S, cams


def test_loads_shapes_types_grayscale(fixture_root):
    root, _, _ = fixture_root
    ds = CubDataset(root, "train", img_size=64, flip=False, jitter=False)
    assert len(ds) == 3
    for i in range(3):
        s = ds[i]
        assert s.img.shape == (3, 64, 64) and s.img.dtype == torch.float32
        assert 0 <= s.img.min() and s.img.max() <= 1
        assert s.mask.shape == (64, 64) and 0 <= s.mask.min() and s.mask.max() <= 1
        assert s.kp.shape == (15, 3) and s.crop.shape == (3,) and s.gt_camera is None
        assert s.index == i and s.id == i and not s.flipped
        assert ((s.mask > 0.5) <= (s.mask_dt == 0)).all() and s.mask_dt.max() > 0
    g = ds[1].img
    torch.testing.assert_close(g[0], g[1])  # grayscale -> 3 equal channels
    torch.testing.assert_close(g[0], g[2])
    # soft mask: the bilinear resize leaves intermediate values on the boundary
    assert ((ds[0].mask > 0.05) & (ds[0].mask < 0.95)).any()
    # invisible keypoints are all-zero rows, visible ones have vis 1
    assert ds[0].kp[4].abs().sum() == 0 and ds[2].kp[11].abs().sum() == 0 and ds[0].kp[0, 2] == 1


def test_padding_fill_white_and_rgb(fixture_root):
    root, _, _ = fixture_root
    ds = CubDataset(root, "train", img_size=64, padding_frac=1.0, flip=False, jitter=False)
    s = ds[0]
    # with 100% padding the crop reaches outside the image: white there, mask 0
    assert (s.img[:, 0, 0] == 1).all() and s.mask[0, 0] == 0
    # the mask interior has the fixture's RGB colour (200, 60, 30), red first
    inside = s.mask > 0.99
    mean = s.img[:, inside].mean(1) * 255
    np.testing.assert_allclose(mean.numpy(), [200, 60, 30], atol=12)


def test_camera_bookkeeping_through_jitter_and_flip(fixture_root):
    """Projecting S with gt_camera lands on the loaded keypoints, for any jitter draw and flip."""
    root, S, _ = fixture_root
    St = torch.as_tensor(S)
    ds = CubDataset(
        root, "train", img_size=96, padding_frac=0.1, jitter_frac=0.05, flip=True, return_gt_camera=True
    )
    n_flipped = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            n_flipped += s.flipped
            proj = project_points(St, s.gt_camera.double())[:, :2]
            vis = s.kp[:, 2] > 0
            torch.testing.assert_close(proj[vis].float(), s.kp[vis, :2], atol=1e-5, rtol=0)
            assert s.id == (FLIP_ID_BASE - i if s.flipped else i)
    assert 0 < n_flipped < 12


def test_crop_params_map_original_pixels(fixture_root):
    root, S, cams = fixture_root
    ds = CubDataset(root, "train", img_size=80, flip=False, jitter=True, return_gt_camera=True)
    for i in range(3):
        s = ds[i]
        a, b = s.crop[0].double(), s.crop[1:].double()
        orig = project_points(torch.as_tensor(S), torch.as_tensor(cams[i]))[:, :2]  # 0-based original px
        proj = project_points(torch.as_tensor(S), s.gt_camera.double())[:, :2]
        torch.testing.assert_close(a * orig + b, proj, atol=1e-5, rtol=0)


def test_flip_is_the_mirror_of_the_unflipped_sample(fixture_root):
    root, _, _ = fixture_root
    plain = CubDataset(root, "train", img_size=64, flip=False, jitter=True, seed=3)
    flip = CubDataset(root, "train", img_size=64, flip=True, jitter=True, seed=3)
    seen = False
    for epoch in range(6):
        plain.set_epoch(epoch)
        flip.set_epoch(epoch)
        for i in range(3):
            a, b = plain[i], flip[i]
            torch.testing.assert_close(a.crop, b.crop)  # the crop is that of the unflipped sample
            if b.flipped:
                seen = True
                torch.testing.assert_close(b.img, a.img.flip(-1))
                torch.testing.assert_close(b.mask, a.mask.flip(-1))
                exp = a.kp[KP_FLIP_PERM].clone()
                vis = exp[:, 2] > 0
                exp[vis, 0] = -exp[vis, 0] - 2 / 64  # u' = W − 1 − u in NDC x = 2u/W − 1
                torch.testing.assert_close(b.kp, exp, atol=1e-6, rtol=0)
    assert seen


def test_determinism_and_no_test_time_augmentation(tmp_path):
    make_fixture(tmp_path)
    (tmp_path / "test_cub_cleaned.mat").write_bytes((tmp_path / "train_cub_cleaned.mat").read_bytes())
    a = CubDataset(tmp_path, "train", img_size=48, seed=7)
    b = CubDataset(tmp_path, "train", img_size=48, seed=7)
    torch.testing.assert_close(a[2].img, b[2].img)
    crops = set()
    for e in range(5):
        a.set_epoch(e)
        crops.add(tuple(a[0].crop.tolist()))
    assert len(crops) > 1  # train: the jitter changes with the epoch
    t = CubDataset(tmp_path, "test", img_size=48, seed=7)
    crops, flips = set(), set()
    for e in range(5):
        t.set_epoch(e)
        for i in range(3):
            crops.add((i, tuple(t[i].crop.tolist())))
            flips.add(t[i].flipped)
    assert len(crops) == 3 and flips == {False}  # test split: no jitter, no flip


def test_image_cache_gives_the_same_samples(tmp_path, monkeypatch):
    """``cache_bytes``: each image is decoded once, within the budget, and every sample of every epoch is the one
    an uncached data set gives."""
    from slopekp.data import cub

    make_fixture(tmp_path)
    reads = []
    real = cub.read_image
    monkeypatch.setattr(cub, "read_image", lambda path: reads.append(path) or real(path))
    plain = CubDataset(tmp_path, "train", img_size=48, seed=7)
    cached = CubDataset(tmp_path, "train", img_size=48, seed=7, cache_bytes=1 << 20)
    small = CubDataset(tmp_path, "train", img_size=48, seed=7, cache_bytes=120 * 160 * 3)  # the first image only
    for e in range(3):
        for ds in (plain, cached, small):
            ds.set_epoch(e)
        for i in range(len(plain)):
            want = plain[i]
            for got in (cached[i], small[i]):
                for name in ("img", "mask", "mask_dt", "kp", "crop"):
                    assert torch.equal(getattr(got, name), getattr(want, name)), name
                assert (got.id, got.flipped) == (want.id, want.flipped)
    assert len(reads) == 3 * 3 + 3 + (1 + 2 * 3)  # plain: every time; cached: once each; small: image 0 once
    with pytest.raises(ValueError, match="cache_bytes"):
        CubDataset(tmp_path, "train", img_size=48, cache_bytes=-1)


def test_mask_distance_transform_brute_force():
    rng = np.random.default_rng(0)
    m = (rng.uniform(size=(12, 17)) > 0.85).astype(np.float32)
    dt = mask_distance_transform(m)
    ys, xs = np.nonzero(m > 0.5)
    for r, c in [(0, 0), (5, 9), (11, 16), (3, 2)]:
        ref = np.sqrt((ys - r) ** 2 + (xs - c) ** 2).min() / 17
        assert dt[r, c] == pytest.approx(ref, abs=1e-6)
    assert (dt[m > 0.5] == 0).all()
    assert (mask_distance_transform(np.zeros((4, 4))) == 1).all()


def test_collate_batch(fixture_root):
    root, _, _ = fixture_root
    ds = CubDataset(root, "train", img_size=32, return_gt_camera=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.img.shape == (3, 3, 32, 32) and batch.kp.shape == (3, 15, 3)
    assert batch.gt_camera.shape == (3, 7) and batch.crop.shape == (3, 3)
    assert batch.index.dtype == torch.int64 and batch.flipped.dtype == torch.bool and len(batch.img_path) == 3
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.img, batch.img)
    with pytest.raises(ValueError, match="at least one sample"):
        collate_samples([])


def test_bad_inputs(tmp_path):
    make_fixture(tmp_path)
    ds = CubDataset(tmp_path, "train", img_size=32)
    # missing image
    ds.image_path(0).unlink()
    with pytest.raises(MatFileError, match=r"img_0\.jpg: image file not found"):
        ds[0]
    with pytest.raises(ValueError, match=r"img_0\.jpg"):
        ds.validate()
    # corrupt image
    ds.image_path(2).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"img_2\.jpg: corrupt or unreadable"):
        ds[2]
    # an image whose size differs from its mask
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(ds.image_path(1))
    with pytest.raises(ValueError, match=r"img_1\.jpg: mask size 200x150 differs from the image size 10x10"):
        ds[1]
    with pytest.raises(ValueError, match=r"val_cub_cleaned\.mat: file not found"):
        CubDataset(tmp_path, "val")
    with pytest.raises(ValueError, match="img_size must be positive"):
        CubDataset(tmp_path, "train", img_size=0)


def test_gt_camera_needs_anno(tmp_path):
    make_fixture(tmp_path, write_anno=False)
    CubDataset(tmp_path, "train")  # fine without cameras
    with pytest.raises(ValueError, match=r"anno_train\.mat: file not found \(needed for return_gt_camera"):
        CubDataset(tmp_path, "train", return_gt_camera=True)
    two = SfmAnnotations(np.stack([np.eye(3)] * 2), np.ones(2), np.zeros((2, 2)))
    write_sfm_anno(tmp_path / "anno_train.mat", two)
    with pytest.raises(ValueError, match=r"anno_train\.mat: 2 cameras but .* has 3 images"):
        CubDataset(tmp_path, "train")


def test_sfm_dir_separate_from_root(fixture_root, tmp_path):
    """CMR keeps ``anno_<split>.mat`` in ``cachedir/cub/sfm`` beside ``cachedir/cub/data``."""
    import shutil

    root, _, _ = fixture_root
    sfm = tmp_path / "sfm"
    sfm.mkdir()
    shutil.move(root / "anno_train.mat", sfm / "anno_train.mat")
    with pytest.raises(ValueError, match="anno_train.mat: file not found"):
        CubDataset(root, "train", return_gt_camera=True)
    ds = CubDataset(root, "train", return_gt_camera=True, sfm_dir=sfm)
    assert ds[0].gt_camera is not None and ds[0].gt_camera.shape == (7,)


def test_camera_px_matches_fixture_cameras(fixture_root):
    """The loader's pixel camera from the files is the 0-based one (``trans − 1``)."""
    from slopekp.data.cub import sfm_camera_px

    root, _, cams = fixture_root
    ds = CubDataset(root, "train", return_gt_camera=True)
    for i in range(3):
        c = cams[i]
        q = torch.tensor(c[3:]) * float(np.sign(c[3]))
        expect = join_camera(torch.tensor(c[0]), torch.tensor(c[1:3]), q)
        torch.testing.assert_close(sfm_camera_px(ds.sfm, i), expect)


def test_real_sfm_anno_with_fake_cleaned_file(sfm_dir, tmp_path):
    """The real train cameras drive the loader: a fake cleaned file of the same length (keypoints at the
    SfM projections of S) loads, and projecting S with gt_camera lands on the loaded keypoints."""
    from slopekp.data.matfiles import CubRecord, read_sfm_anno, write_cub_cleaned

    anno = read_sfm_anno(sfm_dir / "anno_train.mat")
    n = 4
    write_sfm_anno(tmp_path / "anno_train.mat", SfmAnnotations(anno.rot[:n], anno.scale[:n], anno.trans[:n]))
    recs = []
    for i in range(n):
        uv = anno.scale[i] * (anno.rot[i] @ anno.S)[:2] + anno.trans[i][:, None]  # 1-based pixels
        w, h = int(uv[0].max() + 40), int(uv[1].max() + 40)
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(tmp_path / f"r{i}.jpg")
        recs.append(
            CubRecord(
                id=i + 1,
                rel_path=f"r{i}.jpg",
                train=1,
                test=0,
                bbox=np.r_[uv.min(1) - 5, uv.max(1) + 5],
                width=w,
                height=h,
                parts=np.vstack([uv, np.ones(15)]),
                mask=np.ones((h, w), np.uint8),
                class_id=1,
            )
        )
    write_cub_cleaned(tmp_path / "train_cub_cleaned.mat", recs)
    ds = CubDataset(tmp_path, "train", img_size=256, images_dir=tmp_path, return_gt_camera=True, flip=True)
    S = torch.as_tensor(anno.S.T)
    for e in range(2):
        ds.set_epoch(e)
        for i in range(n):
            s = ds[i]
            proj = project_points(S, s.gt_camera.double())[:, :2].float()
            torch.testing.assert_close(proj, s.kp[:, :2], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- SynthBirds
@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from slopekp.data.synth.writer import generate_synthbirds

    root = tmp_path_factory.mktemp("synth")
    generate_synthbirds(
        root, n_train=4, n_test=2, size=96, seed=11, progress=False, occlusion_prob=0.0, truncation_prob=0.0
    )
    return root


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def test_synthbirds_read_back_agrees_with_rerender(synth_root):
    """Masks, keypoints and cameras read by the loader agree with a re-render of the generating shape."""
    from slopekp.data.matfiles import read_cub_cleaned
    from slopekp.data.synth.bird import keypoint_vertices
    from slopekp.data.synth.options import SynthOptions
    from slopekp.data.synth.writer import _prepare
    from slopekp.geometry.camera import recrop_camera
    from slopekp.mesh import load_template
    from slopekp.render import Renderer, RenderSettings

    size = 96
    template = load_template("procedural")
    kp_idx = keypoint_vertices(template)
    renderer = Renderer(RenderSettings(image_size=size))
    ds = CubDataset(
        synth_root, "train", img_size=size, padding_frac=0, jitter_frac=0, flip=False, return_gt_camera=True
    )
    recs = read_cub_cleaned(synth_root / "train_cub_cleaned.mat")
    opts = SynthOptions(size=size, occlusion_prob=0.0, truncation_prob=0.0, seed=11)
    full = torch.tensor([2.0 / size, -1.0, -1.0], dtype=torch.float64)  # the whole original image
    # the renderer samples pixel centres x = (2u + 1)/W − 1; the data convention is x = 2u/W − 1
    centre = torch.tensor([0, 1.0 / size, 1.0 / size, 0, 0, 0, 0])
    for i in range(len(ds)):
        s = ds[i]
        verts = _prepare(template, "train", i, opts).bird.verts  # the generating (deformed) shape
        cam_full = recrop_camera(s.gt_camera.double(), s.crop.double(), full).float() + centre
        alpha = renderer(verts[None], template.faces, cam_full[None], mode="hard").alpha[0] > 0.5
        assert _iou(alpha, torch.from_numpy(recs[i].mask > 0)) >= 0.99
        # in the loader's crop the binary mask has been resampled (bilinear, x1.2–2): a looser bound
        cam_crop = (s.gt_camera + centre)[None]
        alpha_c = renderer(verts[None], template.faces, cam_crop, mode="hard").alpha[0] > 0.5
        assert _iou(alpha_c, s.mask > 0.5) >= 0.96
        # keypoints: projections of the template keypoint vertices of the deformed shape
        proj = project_points(verts[kp_idx].double(), s.gt_camera.double())[:, :2].float()
        proj = proj.clamp(-1.0, 1.0 - 2.0 / size)  # with padding 0 the loader clips points on the box edge
        vis = s.kp[:, 2] > 0
        assert vis.sum() >= 5
        torch.testing.assert_close(proj[vis], s.kp[vis, :2], atol=1e-4, rtol=0)


def test_synthbirds_anno_S_is_template_keypoints(synth_root):
    from slopekp.data.matfiles import read_sfm_anno
    from slopekp.data.synth.bird import keypoint_vertices
    from slopekp.mesh import load_template

    t = load_template("procedural")
    anno = read_sfm_anno(synth_root / "anno_test.mat")
    np.testing.assert_allclose(anno.S.T, t.verts[keypoint_vertices(t)].numpy(), atol=1e-6)
    ds = CubDataset(synth_root, "test", img_size=64, return_gt_camera=True)
    assert len(ds) == 2 and not ds[0].flipped


@pytest.mark.parametrize(
    ("index", "change", "problem"),
    [
        (2, {"bbox": [np.nan, 10, 50, 60]}, r"bbox \[nan, 10, 50, 60\] is not finite"),
        (0, {"bbox": [10, 10, np.inf, 60]}, r"bbox \[10, 10, inf, 60\] is not finite"),
        (1, {"bbox": [30, 10, 20, 60]}, r"bbox \[30, 10, 20, 60\] is empty \(x2 < x1 or y2 < y1"),
        (1, {"mask": 0}, r"mask is empty \(no foreground pixel\)"),
        (2, {"parts": (0, 7, np.nan)}, r"visible keypoint 7 at \(nan, 50\.0\) is not finite"),
    ],
    ids=["nan-bbox", "inf-bbox", "inverted-bbox", "empty-mask", "nan-keypoint"],
)
def test_bad_annotation_values_name_file_and_record_at_load(tmp_path, index, change, problem):
    """A NaN/inf/empty bbox, an empty mask or a NaN keypoint fail in the constructor naming the file, the
    record and its image (not later with ``cannot convert float NaN to integer``)."""
    from slopekp.data.matfiles import read_cub_cleaned, write_cub_cleaned

    make_fixture(tmp_path)
    mat = tmp_path / "train_cub_cleaned.mat"
    recs = read_cub_cleaned(mat)
    rec = recs[index]
    if "bbox" in change:
        rec.bbox[:] = change["bbox"]
    elif "mask" in change:
        rec.mask[:] = 0
    else:
        _, k, value = change["parts"]
        rec.parts[:, k] = [value, 50.0, 1.0]
    write_cub_cleaned(mat, recs)
    rel = rec.rel_path.replace(".", r"\.")
    with pytest.raises(ValueError, match=rf"train_cub_cleaned\.mat: record {index} \({rel}\): {problem}"):
        CubDataset(tmp_path, "train", img_size=32)
    # only the records in use are checked
    if index > 0:
        assert len(CubDataset(tmp_path, "train", img_size=32, max_items=index)) == index


def test_non_finite_camera_fails_at_load_with_return_gt_camera(fixture_root):
    from slopekp.data.matfiles import read_sfm_anno

    root, _, _ = fixture_root
    anno = read_sfm_anno(root / "anno_train.mat")
    anno.rot[1, 0, 0] = np.nan
    write_sfm_anno(root / "anno_train.mat", anno)
    CubDataset(root, "train")  # cameras unused: fine
    with pytest.raises(ValueError, match=r"anno_train\.mat: camera 1 \(002\.Class_1/img_1\.jpg\): rot is not fin"):
        CubDataset(root, "train", return_gt_camera=True)
