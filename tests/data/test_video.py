"""DAVIS 2017 / YouTube-VOS readers on hand-made fixtures (DATA.md §9): multi-object, void, missing
objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slopekp.data.video import (
    VOID_LABEL,
    DavisDataset,
    YouTubeVOSDataset,
    davis_object_ids,
    read_label_png,
    read_ytvos_meta,
)

H, W = 12, 16


def _palette() -> list[int]:
    pal = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [7] * (3 * 251)
    pal[3 * 255 : 3 * 256] = [224, 224, 192]
    return pal


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """A 'P'-mode PNG exactly as DATA.md §9 describes (frombytes + putpalette)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.astype(np.uint8).tobytes())
    im.putpalette(_palette())
    im.save(path)


def write_jpeg(path: Path, h: int = H, w: int = W, value: int = 100, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((h, w, 3), value, np.uint8)
    arr[:, : w // 2, 0] = 200  # left half reddish: checks RGB order and orientation
    img = Image.fromarray(arr[..., 0] if gray else arr)
    img.save(path, quality=95)


def davis_labels(t: int) -> np.ndarray:
    """Frame t of the multi-object sequence: object 1 everywhere, object 2 absent in frame 2, a void band,
    object 3 never present after frame 0... (object ids 1..3 present in frame 0)."""
    lab = np.zeros((H, W), np.uint8)
    lab[1:5, 1:5] = 1
    if t != 2:
        lab[6:10, 8 + t : 12 + t] = 2
    if t == 0:
        lab[0, 10:12] = 3
    lab[11, :] = VOID_LABEL  # a void band
    if t == 3:
        lab[2, 14] = 7  # an id > K that appears later: ignored by the official rule
    return lab


def make_davis(root: Path, n_frames: int = 4) -> Path:
    davis = root / "DAVIS"
    for t in range(n_frames):
        write_jpeg(davis / "JPEGImages" / "480p" / "birds" / f"{t:05d}.jpg", gray=(t == 1))
        write_label_png(davis / "Annotations" / "480p" / "birds" / f"{t:05d}.png", davis_labels(t))
        write_jpeg(davis / "JPEGImages" / "480p" / "solo" / f"{t:05d}.jpg")
        lab = np.zeros((H, W), np.uint8)
        lab[3:6, 3:6] = 1
        write_label_png(davis / "Annotations" / "480p" / "solo" / f"{t:05d}.png", lab)
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("birds\nsolo\n")
    (davis / "ImageSets" / "2017" / "train.txt").write_text("solo\n")
    return davis


def test_davis_multi_object_void_and_missing(tmp_path):
    make_davis(tmp_path)
    ds = DavisDataset(tmp_path, split="val")  # the parent of DAVIS/ is accepted
    assert ds.sequences == ("birds", "solo")
    seq = ds["birds"]
    assert len(seq) == 4 and seq.frame_names == ("00000", "00001", "00002", "00003")
    assert seq.object_ids == (1, 2, 3)  # max id of the first frame; the later id 7 is ignored
    for t in range(4):
        fm = seq.load_masks(t)
        ref = davis_labels(t)
        assert fm.masks.shape == (3, H, W) and fm.masks.dtype == torch.float32
        for k, oid in enumerate(fm.object_ids):
            np.testing.assert_array_equal(fm.masks[k].numpy(), (ref == oid).astype(np.float32))
        np.testing.assert_array_equal(fm.void.numpy(), ref == VOID_LABEL)
        assert fm.masks[:, fm.void].sum() == 0  # void pixels belong to no object
    assert seq.load_masks(2).present() == (True, False, False)
    assert seq.load_masks(0).present() == (True, True, True)
    assert seq.load_masks(1).present() == (True, True, False)
    assert ds[1].object_ids == (1,)
    assert all(o.first_frame == 0 and o.category is None for o in seq.objects)


def test_davis_images_are_rgb_lazy_float(tmp_path):
    make_davis(tmp_path)
    seq = DavisDataset(tmp_path / "DAVIS", split="val")["birds"]
    img = seq.load_image(0)
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # left half is red-dominant (R=200 vs G=B=100): channel order is RGB, not BGR
    assert img[0, :, : W // 4].mean() > img[2, :, : W // 4].mean() + 0.2
    gray = seq.load_image(1)  # a grayscale JPEG expands to 3 equal channels
    assert gray.shape == (3, H, W) and torch.equal(gray[0], gray[1])
    assert seq.frame_size(0) == (H, W)


def test_davis_object_count_rule():
    lab = np.zeros((4, 4), np.uint8)
    lab[0, 0] = 3
    lab[1, 1] = VOID_LABEL
    assert davis_object_ids(lab) == (1, 2, 3)  # 1 and 2 absent but still objects; void is not an id
    assert davis_object_ids(np.full((2, 2), VOID_LABEL, np.uint8)) == ()


def test_davis_errors_name_the_file(tmp_path):
    davis = make_davis(tmp_path)
    with pytest.raises(ValueError, match="sequence list not found: .*test.txt"):
        DavisDataset(davis, split="test")
    with pytest.raises(ValueError, match="frames folder not found"):
        DavisDataset(davis, resolution="Full-Resolution")
    # frame / annotation count mismatch
    (davis / "Annotations" / "480p" / "solo" / "00003.png").unlink()
    with pytest.raises(ValueError, match=r"solo: 3 annotations for 4 frames"):
        DavisDataset(davis)["solo"]
    seq = DavisDataset(davis, require_all_annotations=False)["solo"]
    assert seq.annotated == (True, True, True, False)
    with pytest.raises(ValueError, match="frame 00003 has no annotation"):
        seq.load_masks(3)
    # same counts, different names
    (davis / "JPEGImages" / "480p" / "solo" / "00002.jpg").rename(
        davis / "JPEGImages" / "480p" / "solo" / "00009.jpg"
    )
    with pytest.raises(ValueError, match=r"solo/00002\.png: annotation without a matching frame"):
        DavisDataset(davis, require_all_annotations=False)["solo"]
    # a non-palette PNG (RGB rendering of the masks)
    bad = davis / "Annotations" / "480p" / "birds" / "00001.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(bad)
    seq = DavisDataset(davis)["birds"]
    with pytest.raises(ValueError, match=r"00001\.png: annotation must be a palette \('P' mode\) PNG"):
        seq.load_masks(1)
    # an annotation whose size differs from its frame
    write_label_png(davis / "Annotations" / "480p" / "birds" / "00002.png", np.zeros((H + 2, W), np.uint8))
    with pytest.raises(
        ValueError, match=r"00002\.png: annotation size 14x16 .* differs from its frame's 12x16"
    ):
        seq.load_masks(2)
    # a missing sequence folder
    (davis / "ImageSets" / "2017" / "val.txt").write_text("birds\nghost\n")
    with pytest.raises(ValueError, match="frames of DAVIS sequence 'ghost' not found"):
        DavisDataset(davis)["ghost"]


def test_read_label_png_keeps_ids_not_colours(tmp_path):
    lab = np.arange(H * W, dtype=np.int64).reshape(H, W) % 5
    lab[0, 0] = VOID_LABEL
    write_label_png(tmp_path / "a.png", lab)
    np.testing.assert_array_equal(read_label_png(tmp_path / "a.png"), lab.astype(np.uint8))


# ------------------------------------------------------------------------------------------------------------
# YouTube-VOS
# ------------------------------------------------------------------------------------------------------------


def ytvos_labels(t: int) -> np.ndarray:
    """Video 'a1b2': object 1 in frames 0..3, object 2 enters at frame 2 (names step by 5 from 00010)."""
    lab = np.zeros((H, W), np.uint8)
    lab[2:6, 2:6] = 1
    if t >= 2:
        lab[7:10, 9:13] = 2
    return lab


def make_ytvos(root: Path, start: int = 10, n: int = 4) -> Path:
    names = [f"{start + 5 * t:05d}" for t in range(n)]
    for split in ("train", "valid"):
        d = root / split
        for t, name in enumerate(names):
            write_jpeg(d / "JPEGImages" / "a1b2" / f"{name}.jpg")
            full = ytvos_labels(t)
            if split == "train":
                write_label_png(d / "Annotations" / "a1b2" / f"{name}.png", full)
            elif t in (0, 2):  # valid: only the first appearance of each object, holding only that object
                first = np.where(full == (1 if t == 0 else 2), full, 0).astype(np.uint8)
                write_label_png(d / "Annotations" / "a1b2" / f"{name}.png", first)
        meta = {
            "videos": {
                "a1b2": {
                    "objects": {
                        "1": {"category": "duck", "frames": names},
                        "2": {"category": "person", "frames": names[2:]},
                    }
                }
            }
        }
        (d / "meta.json").write_text(json.dumps(meta))
    return root


def test_ytvos_train_full_annotations(tmp_path):
    make_ytvos(tmp_path)
    ds = YouTubeVOSDataset(tmp_path, "train")
    seq = ds["a1b2"]
    assert seq.frame_names == ("00010", "00015", "00020", "00025")
    assert np.all(np.diff(seq.frame_numbers) == 5) and seq.frame_numbers[0] == 10
    assert seq.object_ids == (1, 2)
    assert [(o.category, o.first_frame) for o in seq.objects] == [("duck", 0), ("person", 2)]
    for t in range(4):
        fm = seq.load_masks(t)
        np.testing.assert_array_equal(fm.masks[1].numpy(), (ytvos_labels(t) == 2).astype(np.float32))
        assert fm.present() == (True, t >= 2)


def test_ytvos_valid_first_appearance_only(tmp_path):
    make_ytvos(tmp_path)
    seq = YouTubeVOSDataset(tmp_path / "valid", "valid")["a1b2"]  # the split folder itself works too
    assert seq.annotated == (True, False, True, False)
    starts = seq.first_appearances()
    assert [(s.object_id, s.frame_index) for s in starts] == [(1, 0), (2, 2)]
    for s in starts:
        ref = (ytvos_labels(s.frame_index) == s.object_id).astype(np.float32)
        np.testing.assert_array_equal(s.mask.numpy(), ref)
    # object 1 is not repeated in the annotation of frame 2 (valid-style)
    assert seq.load_masks(2).present() == (False, True)
    with pytest.raises(ValueError, match="frame 00015 has no annotation"):
        seq.load_masks(1)


def test_ytvos_category_filter_and_errors(tmp_path):
    make_ytvos(tmp_path)
    assert YouTubeVOSDataset(tmp_path, "train", categories=["duck"]).sequences == ("a1b2",)
    assert YouTubeVOSDataset(tmp_path, "train", categories=["owl"]).sequences == ()
    meta = tmp_path / "valid" / "meta.json"
    # first-appearance annotation missing
    (tmp_path / "valid" / "Annotations" / "a1b2" / "00020.png").unlink()
    with pytest.raises(ValueError, match=r"no annotation 00020\.png for the first frame of object 2"):
        YouTubeVOSDataset(tmp_path, "valid")["a1b2"]
    meta.write_text("{not json")
    with pytest.raises(ValueError, match=r"meta\.json: not valid JSON"):
        YouTubeVOSDataset(tmp_path, "valid")
    meta.write_text(json.dumps({"videos": {"a1b2": {"objects": {"0": {"category": "x", "frames": []}}}}}))
    with pytest.raises(ValueError, match=r"meta\.json: video 'a1b2' has object id '0'"):
        read_ytvos_meta(meta)
    with pytest.raises(ValueError, match="YouTube-VOS split folder not found"):
        YouTubeVOSDataset(tmp_path / "nowhere", "train")
    # an annotation without a frame
    write_label_png(tmp_path / "train" / "Annotations" / "a1b2" / "00030.png", np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match=r"00030\.png: annotation without a matching frame"):
        YouTubeVOSDataset(tmp_path, "train")["a1b2"]
