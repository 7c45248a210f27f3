"""Photos, masks and boxes → the network's crop, and pasting a crop back (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from slopekp.data import transforms as T
from slopekp.predict.inputs import crop_photo, mask_box, object_box, parse_bbox, read_mask, read_photo


def test_read_photo_accepts_files_arrays_and_tensors(tmp_path):
    import torch

    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    np.testing.assert_allclose(read_photo(tmp_path / "a.png"), rgb / 255.0, atol=1e-6)
    assert read_photo(tmp_path / "grey.png").shape == (20, 30, 3)
    np.testing.assert_allclose(read_photo(rgb), rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_photo(torch.from_numpy(rgb / 255.0).permute(2, 0, 1)), rgb / 255.0, atol=1e-6)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="bad.jpg.*unreadable"):
        read_photo(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match="missing.png"):
        read_photo(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        read_photo(np.full((4, 4, 3), 2.0))


def test_read_mask_formats_size_and_emptiness(tmp_path):
    ids = np.zeros((10, 12), np.uint8)
    ids[2:5, 3:6] = 1
    ids[6:8, 1:3] = 2
    ids[0, :] = 255  # void in the DAVIS format
    pal = Image.fromarray(ids, mode="P")
    pal.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [255, 255, 255] * 253)
    pal.save(tmp_path / "davis.png")
    m = read_mask(tmp_path / "davis.png", (10, 12))
    np.testing.assert_array_equal(m, (ids > 0) & (ids != 255))
    Image.fromarray((ids == 1).astype(np.uint8) * 255).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png", (10, 12)), ids == 1)
    with pytest.raises(ValueError, match=r"grey.png: mask size 10x12 differs from the image size 11x12"):
        read_mask(tmp_path / "grey.png", (11, 12))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="empty.png: the mask has no foreground"):
        read_mask(tmp_path / "empty.png", (10, 12))
    (tmp_path / "junk.png").write_bytes(b"\x89PNG junk")
    with pytest.raises(ValueError, match="junk.png: corrupt or unreadable mask"):
        read_mask(tmp_path / "junk.png", (10, 12))


def test_boxes_are_parsed_and_checked_against_the_photo():
    np.testing.assert_array_equal(parse_bbox("1, 2,30,40"), [1, 2, 30, 40])
    for bad in ("1,2,3", "a,b,c,d", "5,5,4,9", "1,2,3,nan"):
        with pytest.raises(ValueError, match="box"):
            parse_bbox(bad)
    with pytest.raises(ValueError, match=r"p.jpg: box \[100.0, 5.0, 120.0, 20.0\] lies outside the 50x40 image"):
        object_box((40, 50), bbox="100,5,120,20", name="p.jpg")
    box, src = object_box((40, 50), bbox="40,30,80,90")  # overlapping the photo is enough
    assert src == "bbox" and box.tolist() == [40, 30, 80, 90]
    m = np.zeros((40, 50), bool)
    m[5:9, 20:31] = True
    assert mask_box(m).tolist() == [20, 5, 30, 8]
    assert object_box((40, 50), mask=m)[1] == "mask"
    assert object_box((40, 50))[0].tolist() == [0, 0, 49, 39]
    with pytest.raises(ValueError, match="not both"):
        object_box((40, 50), mask=m, bbox="1,1,2,2")


def test_crop_matches_a_direct_crop_and_its_affine_maps_the_box():
    rng = np.random.default_rng(1)
    photo = rng.uniform(size=(60, 90, 3)).astype(np.float32)
    box = np.array([30.0, 10.0, 69.0, 29.0])  # 40 x 20
    c = crop_photo(photo, box, size=40, padding_frac=0.0, source="bbox")
    # squared about the centre: 40 x 40 from row 0 to 39, so a 1:1 crop of the photo
    assert c.box.tolist() == [30, 0, 69, 39]
    np.testing.assert_allclose(c.image, photo[0:40, 30:70], atol=1e-6)
    np.testing.assert_allclose(c.affine.apply(np.array([[30.0, 0.0], [69.0, 39.0]])), [[0, 0], [39, 39]])
    # padding grows the box by that fraction of its size on each side; outside the photo the crop is white
    p = crop_photo(photo, box, size=32, padding_frac=0.25, source="bbox")
    assert p.box[2] - p.box[0] + 1 == 60 and p.image.shape == (32, 32, 3)
    assert np.allclose(p.image[0, :, :], 1.0)  # row -10 of the photo


def test_paste_crop_inverts_the_crop_map_like_a_direct_resampling():
    yy, xx = np.mgrid[0:50, 0:70].astype(np.float64)
    frame = np.sin(xx / 9.0) + np.cos(yy / 7.0)
    box = T.square_bbox(np.array([12.0, 6.0, 51.0, 41.0]))
    side, size = int(box[2] - box[0] + 1), 96
    affine = T.crop_affine(box).then(T.resize_affine(side, size))
    crop = T.resize_square(T.crop(frame.astype(np.float32), box, fill=0.0), size)
    back = T.paste_crop(crop, affine, frame.shape)
    # reference: sample the crop at each frame pixel's crop coordinates (bilinear, scipy)
    u, v = affine.k * xx + affine.ox, affine.k * yy + affine.oy
    ref = ndimage.map_coordinates(crop.astype(np.float64), [v, u], order=1, mode="constant", cval=0.0)
    inside = (u >= 0) & (v >= 0) & (u <= size - 1) & (v <= size - 1)
    np.testing.assert_allclose(back[inside], ref[inside], atol=1e-3)
    assert np.abs(back[inside] - frame[inside]).max() < 0.05  # and it is the frame again, up to resampling
    assert np.all(back[~inside & ((u < -1) | (v < -1) | (u > size) | (v > size))] == 0)


def test_photos_are_read_upright_in_range_and_on_white(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5] = 255  # a white band at the top of the upright photo
    im = PILImage.fromarray(rgb).rotate(90, expand=True)  # stored sideways (30 x 20) ...
    exif = im.getexif()
    exif[0x0112] = 6  # ... with "rotate 90° clockwise to view"
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    up = read_photo(tmp_path / "phone.jpg")
    assert up.shape == (20, 30, 3) and up[:4].mean() > 0.9 and up[6:].mean() < 0.1
    # 16 bits keep their range (not clipped to white)
    a16 = (np.linspace(0, 65535, 20 * 30).reshape(20, 30)).astype(np.uint16)
    PILImage.fromarray(a16).save(tmp_path / "deep.png")
    got = read_photo(tmp_path / "deep.png")
    np.testing.assert_allclose(got[..., 0], a16 / 65535.0, atol=1e-3)
    np.testing.assert_allclose(read_photo(a16), np.repeat((a16 / 65535.0)[..., None], 3, 2), atol=1e-6)
    # transparency over white, as the network was trained
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[:4, :, 3] = 255
    PILImage.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    got = read_photo(tmp_path / "cut.png")
    assert np.allclose(got[:4], 0.0) and np.allclose(got[4:], 1.0)
    np.testing.assert_allclose(read_photo(rgba), got, atol=1e-6)
    # a decompression bomb is a clear error naming the file
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="phone.jpg: image too large to decode safely"):
        read_photo(tmp_path / "phone.jpg")


def test_label_masks_with_values_0_and_1(tmp_path):
    m = np.zeros((10, 12), np.uint8)
    m[3:6, 4:9] = 1
    Image.fromarray(m).save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.png", (10, 12)), m > 0)
    Image.fromarray(m.astype(np.uint16) * 40000).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "deep.png", (10, 12)), m > 0)
    with pytest.raises(ValueError, match="is a folder"):
        read_mask(tmp_path, (10, 12))


def test_crop_resize_equals_crop_then_resize():
    rng = np.random.default_rng(2)
    img = rng.uniform(size=(120, 200, 3)).astype(np.float32)
    for box, size in (([30, 10, 129, 109], 64), ([-20, -30, 229, 219], 64), ([150, 80, 249, 179], 32)):
        box = np.array(box, dtype=np.float64)
        side = int(box[2] - box[0] + 1)
        affine = T.crop_affine(box).then(T.resize_affine(side, size))
        ref = T.resize_square(T.crop(img, box, fill=1.0), size)
        np.testing.assert_allclose(T.crop_resize(img, affine, size, fill=1.0), ref, atol=2e-3)
    # a box far larger than the image: no side² canvas, and the image lands where the map puts it
    big = np.array([-5000.0, -5000.0, 5199.0, 5199.0])
    affine = T.crop_affine(big).then(T.resize_affine(10200, 51))
    out = T.crop_resize(img, affine, 51, fill=1.0)
    assert out.shape == (51, 51, 3) and np.allclose(out[0], 1.0) and out[25, 25].std() > 0  # photo near the centre
