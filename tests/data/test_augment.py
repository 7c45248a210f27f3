"""Appearance augmentation (slopekp.data.augment): pixel values change, where things are does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slopekp.data.augment import Augment, augment_appearance, inpaint_background
from slopekp.data.cub import CubDataset
from slopekp.data.synth.writer import generate_synthbirds

EVERYTHING = Augment(colour_jitter=0.4, grayscale_prob=0.3, blur_prob=0.5, noise_std=0.05, background_prob=0.7)


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    return generate_synthbirds(tmp_path_factory.mktemp("aug") / "d", 12, 2, size=48, seed=1, progress=False)


def _dataset(root, **kw):
    return CubDataset(root, "train", img_size=32, seed=4, return_gt_camera=True, **kw)


def test_augmentation_keeps_mask_keypoints_camera_and_flip(birds):
    """Every sample, flipped or not, over two epochs: the same mask, keypoints, camera, crop and flip as without
    augmentation; the image changes."""
    plain, aug = _dataset(birds), _dataset(birds, augment=EVERYTHING)
    flips, changed = set(), 0
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        aug.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], aug[i]
            for name in ("mask", "mask_dt", "kp", "crop", "gt_camera"):
                torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=0, msg=name)
            assert (a.flipped, a.id) == (b.flipped, b.id)
            flips.add(a.flipped)
            changed += not torch.equal(a.img, b.img)
            assert b.img.shape == a.img.shape and 0 <= b.img.min() and b.img.max() <= 1
    assert flips == {True, False} and changed >= 2 * len(plain) - 2


def test_augmentation_is_deterministic_per_epoch(birds):
    a, b = _dataset(birds, augment=EVERYTHING), _dataset(birds, augment=EVERYTHING)
    torch.testing.assert_close(a[3].img, b[3].img, rtol=0, atol=0)
    b.set_epoch(1)
    assert not torch.equal(a[3].img, b[3].img)
    assert _dataset(birds, augment=Augment()).augment is None  # all off: no augmentation at all


def test_background_replacement_keeps_the_bird_and_changes_the_rest(birds):
    plain, aug = _dataset(birds), _dataset(birds, augment=Augment(background_prob=1.0))
    for i in range(6):
        a, b = plain[i], aug[i]
        inside, outside = a.mask == 1, a.mask < 1e-3
        torch.testing.assert_close(b.img[:, inside], a.img[:, inside], rtol=0, atol=1e-6)
        assert (b.img[:, outside] - a.img[:, outside]).abs().mean() > 0.02


def test_grayscale_blur_noise_and_colour():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, size=(64, 64, 3)).astype(np.float32)
    mask = np.zeros((64, 64), np.float32)
    grey = augment_appearance(img, mask, np.random.default_rng(1), Augment(grayscale_prob=1.0))
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_allclose(grey[..., 0], img @ [0.299, 0.587, 0.114], atol=1e-5)
    for s in range(4):  # the weakest blur (σ = 0.5 px) already takes a quarter off white noise's pixel steps
        blurred = augment_appearance(img, mask, np.random.default_rng(s), Augment(blur_prob=1.0))
        assert np.abs(np.diff(blurred, axis=1)).mean() < 0.75 * np.abs(np.diff(img, axis=1)).mean()
    noisy = [augment_appearance(img, mask, np.random.default_rng(s), Augment(noise_std=0.1)) for s in range(6)]
    assert max(np.abs(n - img).mean() for n in noisy) > 0.02
    # colour jitter on a grey image: saturation and hue leave grey alone, so it stays grey
    flat = np.full((8, 8, 3), 0.4, np.float32)
    out = augment_appearance(flat, mask[:8, :8], np.random.default_rng(2), Augment(colour_jitter=0.5))
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)
    assert not np.allclose(out, flat, atol=1e-3)  # brightness moved it
    np.testing.assert_array_equal(img, np.random.default_rng(0).uniform(0, 1, size=(64, 64, 3)).astype(np.float32))


def test_hue_rotation_keeps_luma_and_a_full_turn_is_the_identity():
    from slopekp.data.augment import _rotate_hue

    img = np.random.default_rng(3).uniform(0, 1, size=(10, 3)).astype(np.float32)
    luma = np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(_rotate_hue(img, 0.3) @ luma, img @ luma, atol=1e-5)
    np.testing.assert_allclose(_rotate_hue(img, 1.0), img, atol=1e-5)
    assert np.abs(_rotate_hue(img, 0.25) - img).max() > 0.05


def test_inpainting_removes_the_object():
    img = np.zeros((32, 32, 3), np.float32)
    img[..., 1] = np.linspace(0.2, 0.6, 32)[None, :]  # a green gradient background
    mask = np.zeros((32, 32), np.float32)
    mask[10:20, 12:22] = 1
    bird = img.copy()
    bird[mask > 0] = [1.0, 0.0, 0.0]
    filled = inpaint_background(bird, mask)
    assert np.abs(filled[mask > 0] - img[mask > 0]).max() < 0.1  # no red left, the gradient continues
    far = np.ones((32, 32), bool)
    far[7:23, 9:25] = False  # the mask dilated by 2 px is filled in; every pixel beyond it is kept
    np.testing.assert_array_equal(filled[far], img[far])
    # a hole over a whole half (and over a whole quarter of a larger crop): filled from the known pixels' colours,
    # not from the empty corners of the coarsest pyramid level
    for shape, hole in (((32, 32), np.s_[:, :20]), ((48, 48), np.s_[:34, :34])):
        grey = np.full((*shape, 3), 0.8, np.float32)
        m = np.zeros(shape, np.float32)
        m[hole] = 1
        np.testing.assert_allclose(inpaint_background(grey, m), grey, atol=1e-5)


def test_bad_settings():
    with pytest.raises(ValueError, match="noise_std must be in \\[0, 1\\], got -0.1"):
        Augment(noise_std=-0.1)
    with pytest.raises(ValueError, match="background_prob must be in \\[0, 1\\], got nan"):
        Augment(background_prob=float("nan"))
    with pytest.raises(ValueError, match="background_kinds must name some of other, flat, noise, pattern"):
        Augment(background_kinds="other,sky")


def test_background_kinds_restrict_the_replacement(birds):
    """Only the kinds asked for: with ``flat`` alone every replaced background is one colour (up to its faint
    gradient); with ``other`` alone it is another image's background, so a set of one image keeps its own."""
    ds = _dataset(birds, augment=Augment(background_prob=1.0, background_kinds="flat"))
    for i in range(4):
        s = ds[i]
        outside = s.mask < 1e-3
        assert s.img[:, outside].std(dim=1).max() < 0.06
    one = CubDataset(birds, "train", img_size=32, max_items=1, augment=Augment(background_prob=1.0,
                                                                           background_kinds="other"))  # fmt: skip
    plain = CubDataset(birds, "train", img_size=32, max_items=1)
    torch.testing.assert_close(one[0].img, plain[0].img, rtol=0, atol=0)


def test_config_turns_it_on_for_training_crops_only(birds):
    from slopekp.config import ConfigError, load_config
    from slopekp.train.stage2 import build_train_dataset

    cfg = load_config(None, ["data.colour_jitter=0.2", "data.background_prob=0.5", "model.image_size=64"])
    ds = build_train_dataset(cfg, birds)
    assert ds.augment == Augment(colour_jitter=0.2, background_prob=0.5)
    assert build_train_dataset(cfg, birds, augment=False).augment is None
    assert build_train_dataset(cfg, birds, appearance=False).augment is None  # Stage II's
    assert build_train_dataset(cfg, birds, appearance=False).flip  # its flips and jitter stay
    assert build_train_dataset(load_config(None, ["model.image_size=64"]), birds).augment is None  # off by default
    with pytest.raises(ConfigError, match="data.grayscale_prob must be in \\[0, 1\\], got 2"):
        load_config(None, ["data.grayscale_prob=2"])
    with pytest.raises(ConfigError, match="data.background_kinds must name some of other, flat, noise, pattern"):
        load_config(None, ["data.background_kinds=noise,photos"])
    assert Augment.from_config(load_config(None, ["data.background_kinds=other, flat"]).data).kinds() == (
        "other", "flat")


def test_stage1_and_stage2_ignore_the_appearance_augmentation(birds):
    """Stage I reads masks and Stage II reconstructs the photo itself: their manifests (what decides whether a run is
    the same, and resumes) leave the appearance settings out, as their data sets do (Stage III's records every
    ``data`` setting)."""
    from slopekp.config import load_config
    from slopekp.train.stage1 import stage1_manifest
    from slopekp.train.stage2 import stage2_manifest

    store = birds / "meta.json"  # any file stands in for the Stage I store: the manifest only fingerprints it
    plain = load_config(None, ["model.image_size=64"])
    aug = load_config(None, ["model.image_size=64", "data.colour_jitter=0.3", "data.background_prob=0.5"])
    assert stage2_manifest(plain, birds, store, "fp").settings == stage2_manifest(aug, birds, store, "fp").settings
    assert stage1_manifest(plain, birds, "fp").settings == stage1_manifest(aug, birds, "fp").settings


def test_shading_lights_the_object_from_one_side_and_leaves_the_rest():
    """On a grey image with a disc, the disc's brightness ratio is a plane in (x, y) (a linear light, clipped), the
    background is untouched, and switching shading on changes no other operation's draw."""
    h = w = 48
    img = np.full((h, w, 3), 0.4, np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (((yy - 22) ** 2 + (xx - 26) ** 2) < 14**2).astype(np.float32)
    for seed in range(4):
        out = augment_appearance(img, mask, np.random.default_rng(seed), Augment(shading=0.8))
        np.testing.assert_array_equal(out[mask == 0], img[mask == 0])
        ratio = out[..., 0][mask > 0] / 0.4
        assert ratio.max() - ratio.min() > 0.2  # one side darker than the other
        free = (ratio > 0.06) & (ratio < 1.99)  # not clipped (by the light's bounds or the [0, 1] range)
        a = np.stack([xx[mask > 0], yy[mask > 0], np.ones(int(mask.sum()))], 1)[free]
        coef, *_ = np.linalg.lstsq(a, ratio[free], rcond=None)
        assert np.abs(a @ coef - ratio[free]).max() < 1e-4
    rnd = np.random.default_rng(9).uniform(0, 1, size=(h, w, 3)).astype(np.float32)
    plain = augment_appearance(rnd, mask, np.random.default_rng(5), Augment(colour_jitter=0.3, noise_std=0.05))
    lit = augment_appearance(rnd, mask, np.random.default_rng(5), Augment(colour_jitter=0.3, noise_std=0.05,
                                                                          shading=0.5))  # fmt: skip
    np.testing.assert_array_equal(plain[mask == 0], lit[mask == 0])
    assert not np.array_equal(plain[mask > 0], lit[mask > 0])
