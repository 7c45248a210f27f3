"""CMR ``.mat`` I/O: fixtures built independently per DATA.md §9, the real SfM files, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from slopekp.data.matfiles import (
    CubRecord,
    MatFileError,
    SfmAnnotations,
    check_mask_matches_image,
    cub_record_problems,
    read_cub_cleaned,
    read_image,
    read_sfm_anno,
    sfm_anno_problems,
    write_cub_cleaned,
    write_sfm_anno,
)

FIELDS = ("id", "rel_path", "train", "test", "bbox", "width", "height", "parts", "mask", "class_id")


def _manual_cleaned(path, n=2, drop=None, bad_mask=False, masks=None):
    """A ``*_cub_cleaned.mat`` written directly with scipy (DATA.md §9), not with our writer; ``masks``
    ``{i: (20 + i, 30 + i) array}`` replaces entry i's all-ones mask."""
    fields = [f for f in FIELDS if f != drop]
    arr = np.zeros((1, n), dtype=[(f, object) for f in fields])
    for i in range(n):
        h, w = 20 + i, 30 + i
        bbox = np.zeros((1, 1), dtype=[(k, object) for k in ("x1", "y1", "x2", "y2")])
        bbox[0, 0]["x1"], bbox[0, 0]["y1"], bbox[0, 0]["x2"], bbox[0, 0]["y2"] = 3.0, 4.0, 20.0 + i, 15.0
        parts = np.zeros((3, 15))
        parts[:, 1] = [10.0 + i, 8.0, 1.0]
        vals = {
            "id": float(100 + i),
            "rel_path": f"001.Foo/img_{i}.jpg",
            "train": 1.0,
            "test": 0.0,
            "bbox": bbox,
            "width": float(w),
            "height": float(h),
            "parts": parts,
            "mask": (masks or {}).get(i, np.ones((h, w + (1 if bad_mask else 0)), np.uint8)),
            "class_id": 1.0,
        }
        for f in fields:
            arr[0, i][f] = vals[f]
    scipy.io.savemat(path, {"images": arr})


def test_reads_manual_cmr_fixture(tmp_path):
    p = tmp_path / "train_cub_cleaned.mat"
    _manual_cleaned(p, n=3)
    recs = read_cub_cleaned(p)
    assert len(recs) == 3
    r = recs[2]
    assert (r.id, r.rel_path, r.train, r.test) == (102, "001.Foo/img_2.jpg", 1, 0)
    assert (r.width, r.height, r.class_id) == (32, 22, 1)
    np.testing.assert_array_equal(r.bbox, [3, 4, 22, 15])
    assert r.parts.shape == (3, 15) and r.parts[0, 1] == 12 and r.parts[2, 0] == 0
    assert r.mask.shape == (22, 32) and r.mask.dtype == np.uint8


@pytest.mark.parametrize("n", [1, 2, 4])
def test_cleaned_roundtrip(tmp_path, n):
    rng = np.random.default_rng(n)
    recs = []
    for i in range(n):
        h, w = int(rng.integers(10, 30)), int(rng.integers(10, 30))
        mask = (rng.uniform(size=(h, w)) > 0.5).astype(np.uint8)
        recs.append(
            CubRecord(
                id=i + 1,
                rel_path=f"c/{i}.jpg",
                train=1,
                test=0,
                bbox=rng.uniform(1, 9, 4),
                width=w,
                height=h,
                parts=rng.uniform(0, 9, (3, 15)),
                mask=mask,
                class_id=3,
            )
        )
    p = tmp_path / "x.mat"
    write_cub_cleaned(p, recs)
    back = read_cub_cleaned(p)
    assert len(back) == n  # N = 1 comes back as a list of one, not a bare struct
    for a, b in zip(recs, back):
        assert (a.id, a.rel_path, a.width, a.height) == (b.id, b.rel_path, b.width, b.height)
        assert a.class_id == b.class_id
        np.testing.assert_array_equal(a.bbox, b.bbox)
        np.testing.assert_array_equal(a.parts, b.parts)
        np.testing.assert_array_equal(a.mask, b.mask)
    # the raw file reads like CMR's: attribute access on loadmat(struct_as_record=False, squeeze_me=True)
    raw = scipy.io.loadmat(p, struct_as_record=False, squeeze_me=True)["images"]
    first = np.atleast_1d(raw)[0]
    assert first.bbox.x1 == recs[0].bbox[0] and first.parts.shape == (3, 15)


def test_missing_field_names_file_and_field(tmp_path):
    p = tmp_path / "train_cub_cleaned.mat"
    _manual_cleaned(p, drop="mask")
    with pytest.raises(MatFileError, match=r"train_cub_cleaned\.mat: entry 0 has no field 'mask'"):
        read_cub_cleaned(p)
    assert issubclass(MatFileError, ValueError)


def test_mask_size_mismatch_in_mat(tmp_path):
    p = tmp_path / "train_cub_cleaned.mat"
    _manual_cleaned(p, bad_mask=True)
    with pytest.raises(
        ValueError, match=r"train_cub_cleaned\.mat: entry 0 .*mask has shape \(20, 31\).*20x30"
    ):
        read_cub_cleaned(p)


def test_missing_and_garbage_mat(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.mat: file not found"):
        read_cub_cleaned(tmp_path / "nothere.mat")
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"this is not a mat file at all" * 10)
    with pytest.raises(ValueError, match=r"bad\.mat: not a readable MATLAB"):
        read_sfm_anno(bad)
    other = tmp_path / "other.mat"
    scipy.io.savemat(other, {"foo": np.zeros(3)})
    with pytest.raises(ValueError, match=r"other\.mat: variable 'images' missing"):
        read_cub_cleaned(other)


def test_read_image_rgb_gray_missing_corrupt(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[1, 2] = (255, 0, 0)  # pure red must stay in channel 0 (RGB, not BGR)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1, 2], [255, 0, 0])
    gray = (np.arange(35, dtype=np.uint8).reshape(5, 7)) * 7
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png")
    assert g.shape == (5, 7, 3)
    np.testing.assert_array_equal(g[..., 0], gray)
    np.testing.assert_array_equal(g[..., 2], gray)
    with pytest.raises(ValueError, match=r"nope\.jpg: image file not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ValueError, match=r"bad\.jpg: corrupt or unreadable image"):
        read_image(tmp_path / "bad.jpg")
    # a truncated JPEG (valid header, cut in half)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t\.jpg: corrupt"):
        read_image(tmp_path / "t.jpg")


def test_check_mask_matches_image():
    check_mask_matches_image(np.zeros((4, 5)), np.zeros((4, 5, 3)), "ok.jpg")
    with pytest.raises(ValueError, match=r"img\.jpg: mask size 4x6 differs from the image size 4x5"):
        check_mask_matches_image(np.zeros((4, 6)), np.zeros((4, 5, 3)), "img.jpg")


def test_sfm_roundtrip_synthetic(tmp_path):
    from scipy.spatial.transform import Rotation

    rot = Rotation.random(5, random_state=1).as_matrix()
    anno = SfmAnnotations(
        rot=rot,
        scale=np.arange(1.0, 6.0),
        trans=np.arange(10.0).reshape(5, 2),
        S=np.arange(45.0).reshape(3, 15),
    )
    write_sfm_anno(tmp_path / "anno_x.mat", anno)
    back = read_sfm_anno(tmp_path / "anno_x.mat")
    np.testing.assert_array_equal(back.rot, rot)
    np.testing.assert_array_equal(back.scale, anno.scale)
    np.testing.assert_array_equal(back.trans, anno.trans)
    np.testing.assert_array_equal(back.S, anno.S)
    assert back.conv_tri is None


def test_sfm_missing_field(tmp_path):
    arr = np.zeros((1, 2), dtype=[("rot", object), ("scale", object)])
    for i in range(2):
        arr[0, i]["rot"], arr[0, i]["scale"] = np.eye(3), 1.0
    scipy.io.savemat(tmp_path / "anno_train.mat", {"sfm_anno": arr})
    with pytest.raises(ValueError, match=r"anno_train\.mat: entry 0 has no field 'trans'"):
        read_sfm_anno(tmp_path / "anno_train.mat")


def test_real_sfm_files_load_and_roundtrip(sfm_dir, tmp_path):
    from slopekp.geometry.rotations import quat_to_rotmat, rotmat_to_quat

    train = read_sfm_anno(sfm_dir / "anno_train.mat")
    assert len(train) == 5964 and train.S.shape == (3, 15) and train.conv_tri.shape == (144, 3)
    # known values from shared/data/README.md
    assert train.scale[0] == pytest.approx(81.96122641611444, abs=1e-10)
    np.testing.assert_allclose(train.trans[0], [234.26822526, 151.87673119], atol=1e-6)
    np.testing.assert_allclose(train.rot[0][0], [-0.30360028, -0.80688336, 0.50672093], atol=1e-7)
    val = read_sfm_anno(sfm_dir / "anno_val.mat")
    assert len(val) == 2874 and val.S is None
    # every rotation survives matrix -> quaternion -> matrix, and write -> read is bit exact
    R = torch.as_tensor(train.rot)
    np.testing.assert_allclose(quat_to_rotmat(rotmat_to_quat(R)).numpy(), train.rot, atol=1e-9)
    q0 = rotmat_to_quat(R[0]).numpy()
    q0 = q0 * np.sign(q0[0])
    np.testing.assert_allclose(q0, [0.076370, -0.585122, 0.733520, -0.337266], atol=2e-6)
    sub = SfmAnnotations(
        rot=train.rot[:50], scale=train.scale[:50], trans=train.trans[:50], S=train.S, conv_tri=train.conv_tri
    )
    write_sfm_anno(tmp_path / "anno_sub.mat", sub)
    back = read_sfm_anno(tmp_path / "anno_sub.mat")
    np.testing.assert_array_equal(back.rot, sub.rot)
    np.testing.assert_array_equal(back.trans, sub.trans)
    np.testing.assert_array_equal(back.S, sub.S)
    np.testing.assert_array_equal(back.conv_tri, sub.conv_tri)


def test_cub_record_problems_raw_mask_values_and_fatal_only(tmp_path):
    """Mask values are checked as stored (before the reader binarises them); ``fatal_only`` keeps what breaks
    the loader."""
    p = tmp_path / "train_cub_cleaned.mat"
    nan_mask = np.ones((22, 32))
    nan_mask[3, 4] = np.nan
    _manual_cleaned(p, n=4, masks={1: np.full((21, 31), 255, np.uint8), 2: nan_mask, 3: np.zeros((23, 33))})
    recs = read_cub_cleaned(p)
    assert recs[0].mask_range == (1.0, 1.0) and recs[1].mask_range == (255.0, 255.0)
    assert recs[1].mask.max() == 1  # the loader still sees a 0/1 mask
    recs[0].parts[:, 1] = [31.5, 8.0, 1.0]  # 1-based x = 31.5 in a 30 px wide image: within the 1 px margin
    assert cub_record_problems(p, recs[:1]) == []
    recs[0].parts[:, 1] = [33.0, 8.0, 1.0]
    assert cub_record_problems(p, recs) == [
        f"{p}: record 0 (001.Foo/img_0.jpg): visible keypoint 1 at (33.0, 8.0) lies outside the 30x20 image",
        f"{p}: record 1 (001.Foo/img_1.jpg): mask values outside 0..1 (min 255, max 255): CMR masks are 0/1",
        f"{p}: record 2 (001.Foo/img_2.jpg): mask has NaN or infinite values",
        f"{p}: record 3 (001.Foo/img_3.jpg): mask is empty (no foreground pixel)",
    ]
    assert cub_record_problems(p, recs, fatal_only=True) == [
        f"{p}: record 3 (001.Foo/img_3.jpg): mask is empty (no foreground pixel)"
    ]
    assert cub_record_problems(p, []) == []


def test_sfm_anno_problems(tmp_path):
    rot = np.stack([np.eye(3)] * 4)
    rot[1, 2, 2] = np.nan
    rot[2] *= 2.0  # not a rotation
    anno = SfmAnnotations(rot, np.array([1.0, 1.0, 1.0, -3.0]), np.zeros((4, 2)))
    p = tmp_path / "anno_train.mat"
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert sfm_anno_problems(p, anno, names) == [
        f"{p}: camera 1 (b.jpg): rot is not finite",
        f"{p}: camera 2 (c.jpg): rot is not a rotation (R·Rᵀ differs from I by 3; det 8)",
        f"{p}: camera 3 (d.jpg): scale -3 is not positive",
    ]
    assert sfm_anno_problems(p, anno, fatal_only=True) == [f"{p}: camera 1: rot is not finite"]
