"""PIL figure helpers: conversions, grids, outlines, points, text, histograms, PNG output, contact sheets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from slopekp.viz import figures as F


def test_to_uint8_layouts_and_values():
    chw = torch.zeros(3, 4, 5)
    chw[0, 1, 2] = 0.5
    chw[2] = 1.0
    out = F.to_uint8(chw)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[1, 2, 0] == 128 and out[0, 0, 2] == 255 and out[0, 0, 1] == 0
    hwc = np.full((2, 3, 3), 2.0)  # clipped
    assert (F.to_uint8(hwc) == 255).all()
    gray = F.to_uint8(np.array([[0.0, 1.0]]))
    assert gray.shape == (1, 2, 3) and gray[0, 1].tolist() == [255, 255, 255]
    u8 = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    np.testing.assert_array_equal(F.to_uint8(u8), u8)  # (3, 3, 3) uint8 is taken as HWC
    with pytest.raises(ValueError, match="image must be"):
        F.to_uint8(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        F.to_uint8(np.full((2, 2, 3), np.nan))


def test_make_grid_layout():
    a = np.zeros((4, 6, 3), np.uint8)
    b = np.full((2, 3, 3), 200, np.uint8)
    g = F.make_grid([a, b, a], ncols=2, pad=1, bg=7)
    assert g.shape == (1 + 2 * (4 + 1), 1 + 2 * (6 + 1), 3)
    assert (g[1:5, 1:7] == 0).all()  # tile 0
    assert (g[1:3, 8:11] == 200).all() and (g[3:5, 8:14] == 7).all()  # tile 1 top-left, padded with bg
    assert (g[6:10, 1:7] == 0).all() and (g[0] == 7).all()
    with pytest.raises(ValueError, match="at least one image"):
        F.make_grid([], 2)


def test_mask_outline_square():
    img = np.zeros((10, 10, 3), np.float32)
    mask = np.zeros((10, 10))
    mask[2:7, 3:8] = 1  # 5x5 square
    out = F.overlay_mask_outline(img, mask, color=(0, 255, 0))
    edge = out[..., 1] == 255
    assert edge.sum() == 4 * 5 - 4  # the square's boundary ring
    assert not edge[4, 5] and edge[2, 3] and edge[6, 7]
    with pytest.raises(ValueError, match="mask shape"):
        F.overlay_mask_outline(img, np.zeros((3, 3)))


def test_overlay_mask_blend():
    out = F.overlay_mask(
        np.zeros((2, 2, 3)), np.array([[1.0, 0.0], [0.5, 0.0]]), color=(100, 0, 0), alpha=0.5
    )
    assert out[0, 0, 0] == 50 and out[1, 0, 0] == 25 and out[0, 1, 0] == 0


def test_draw_points_and_visibility():
    img = np.zeros((20, 20, 3), np.uint8)
    out = F.draw_points(
        img, np.array([[5.0, 10.0], [15.0, 3.0]]), visible=[1, 0], colors=[(255, 0, 0)], radius=2
    )
    assert out[10, 5].tolist() == [255, 0, 0]  # (u, v) = (column, row)
    assert out[3, 15].tolist() == [0, 0, 0]  # invisible point not drawn
    assert img.max() == 0  # input untouched


def test_draw_text_and_histogram():
    img = F.draw_text(np.zeros((20, 60, 3)), "abc", (2, 2), color=(255, 255, 0))
    assert (img[..., 0] > 150).sum() > 5 and (img[..., 2] > 150).sum() == 0
    h = F.histogram_image(np.r_[np.zeros(30), np.ones(10)], bins=2, range=(0, 1), title="t", size=(100, 80))
    assert h.shape == (80, 100, 3)
    bar = (h[..., 2] == 190) & (h[..., 0] == 70)  # bar colour
    cols = bar.sum(0)
    assert cols[:50].max() > 2 * cols[50:].max() > 0  # the first bin holds 3x the second
    assert F.histogram_image([], bins=3).shape == (240, 320, 3)


def test_save_png_roundtrip(tmp_path):
    img = (np.random.default_rng(0).uniform(size=(7, 9, 3))).astype(np.float32)
    F.save_png(tmp_path / "sub" / "x.png", img)
    back = np.asarray(Image.open(tmp_path / "sub" / "x.png"))
    np.testing.assert_array_equal(back, F.to_uint8(img))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]  # no temporary left behind


def test_contact_sheet_on_synthbirds(tmp_path):
    from slopekp.data.synth.writer import generate_synthbirds

    root = generate_synthbirds(tmp_path / "ds", n_train=3, n_test=0, size=32, seed=0, progress=False)
    sheet = F.contact_sheet(root, n=3, ncols=3)
    assert sheet.shape == (2 + 34, 2 + 3 * 34, 3)
    assert (sheet[..., 0] == 255).sum() > 20  # red outlines drawn
    with pytest.raises(ValueError, match="n must be >= 1"):
        F.contact_sheet(root, n=0)
    with pytest.raises(ValueError, match=r"val_cub_cleaned\.mat: file not found"):
        F.contact_sheet(root, split="val")
