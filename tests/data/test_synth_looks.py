"""SynthBirds looks (slopekp.data.synth.style): the default look is the original generator draw for draw, every kind
renders deterministically from a seed, and each kind looks like what its name says."""

from __future__ import annotations

import numpy as np
import pytest

from slopekp.data.synth import background as B
from slopekp.data.synth import texture as TX
from slopekp.data.synth.options import SynthOptions
from slopekp.data.synth.scene import random_lighting, styled_lighting
from slopekp.data.synth.style import BACKGROUNDS, HELD_OUT, LIGHTINGS, PLUMAGES, Look, pick_kind
from slopekp.data.synth.writer import generate_synthbirds

EYES = np.array([[0.3, -0.9, 0.2], [-0.3, -0.9, 0.2]])


def _mirror_pairs(n: int = 400):
    """Indices of texels and of the texel nearest to each one's mirror direction (x -> −x), where that is close."""
    d = TX.texel_directions(*TX.TEXTURE_HW).reshape(-1, 3)
    idx = np.random.default_rng(0).integers(0, len(d), n)
    mirrored = d[idx] * [-1, 1, 1]
    nn = np.argmin(((d[None] - mirrored[:, None]) ** 2).sum(-1), axis=1)
    close = np.linalg.norm(d[nn] - mirrored, axis=1) < 0.02
    return idx[close], nn[close]


@pytest.mark.parametrize("seed", [0, 7])
def test_default_kinds_draw_exactly_what_the_original_functions_draw(seed):
    """``natural`` / ``lambert`` / ``random`` return the original functions' values and leave the RNG where they
    left it (so every later draw of an instance, and every file, is the same as before looks existed)."""
    pairs = (
        (lambda r: B.styled_background(r, "natural", 40, 48), lambda r: B.random_background(r, 40, 48)),
        (lambda r: styled_lighting(r, "lambert"), random_lighting),
        (lambda r: TX.styled_texture(r, "random", EYES), lambda r: TX.random_texture(r, EYES)),
    )
    for styled, original in pairs:
        ra, rb = np.random.default_rng(seed), np.random.default_rng(seed)
        a, b = styled(ra), original(rb)
        if isinstance(a, tuple):  # texture: (image, style)
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1] == b[1]
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b
        assert ra.uniform() == rb.uniform()


@pytest.mark.parametrize("kind", [k for k in PLUMAGES if k != "mixed"])
def test_every_plumage_is_mirror_symmetric_and_deterministic(kind):
    tex, style = TX.styled_texture(np.random.default_rng(3), kind, EYES)
    again, _ = TX.styled_texture(np.random.default_rng(3), kind, EYES)
    np.testing.assert_array_equal(tex, again)
    assert tex.shape == (3, *TX.TEXTURE_HW) and tex.dtype == np.float32 and 0 <= tex.min() and tex.max() <= 1
    assert 0 <= style < len(TX.STYLES)
    i, j = _mirror_pairs()
    flat = tex.reshape(3, -1).T
    assert len(i) > 100 and np.abs(flat[i] - flat[j]).mean() < 0.03


def test_plumage_kinds_look_like_their_names():
    quant = lambda t: {tuple(c) for c in np.round(t.reshape(3, -1).T * 20).astype(int)}  # noqa: E731
    for seed in range(4):
        rng = np.random.default_rng(seed)
        flat = TX.flat_part_texture(rng, eye_dirs=None)
        # five part colours, with thin blended borders: few distinct colours, each part's colour on many texels
        counts = np.unique(np.round(flat.reshape(3, -1).T * 50).astype(int), axis=0, return_counts=True)[1]
        assert np.sort(counts)[::-1][:5].sum() > 0.8 * flat[0].size
        cs = TX.countershaded_texture(np.random.default_rng(seed))
        top = TX._body_coordinates(TX.TEXTURE_HW)[2]
        lum = cs.transpose(1, 2, 0) @ np.array([0.299, 0.587, 0.114])
        assert lum[top > 0.8].mean() < lum[top < -0.8].mean()  # dark back, light belly
        pat = TX.patterned_texture(np.random.default_rng(seed))
        assert pat.std(axis=(1, 2)).max() > 0.05 and len(quant(pat)) > 2


@pytest.mark.parametrize("kind", [k for k in BACKGROUNDS if k != "mixed"])
def test_every_background_kind_is_deterministic_and_in_range(kind):
    a = B.styled_background(np.random.default_rng(2), kind, 48, 64)
    b = B.styled_background(np.random.default_rng(2), kind, 48, 64)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (48, 64, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert not np.array_equal(a, B.styled_background(np.random.default_rng(3), kind, 48, 64))


def test_background_kinds_look_like_their_names():
    for seed in range(5):
        flat = B.flat_background(np.random.default_rng(seed), 64, 64)
        assert flat.std(axis=(0, 1)).max() < 0.06  # one colour (a faint gradient)
        noise = B.noise_background(np.random.default_rng(seed), 64, 64)
        # colour noise: neighbouring pixels differ far more than in the natural (blurred) background
        step = lambda im: np.abs(np.diff(im, axis=1)).mean()  # noqa: E731
        assert noise.std() > 0.08
        pattern = B.pattern_background(np.random.default_rng(seed), 64, 64)
        assert pattern.std() > 0.03
        natural = B.random_background(np.random.default_rng(seed), 64, 64)
        assert step(natural) < step(noise)


def test_lighting_kinds():
    for seed in range(10):
        flat = styled_lighting(np.random.default_rng(seed), "flat")
        assert flat.directional == 0 and flat.ambient >= 0.8
        harsh = styled_lighting(np.random.default_rng(seed), "harsh")
        assert harsh.ambient <= 0.2 and harsh.directional >= 0.8 and abs(harsh.direction[0]) >= 0.7


def test_mixed_draws_every_other_kind_and_fixed_kinds_draw_nothing():
    for kinds in (BACKGROUNDS, LIGHTINGS, PLUMAGES):
        seen = {pick_kind(np.random.default_rng(s), "mixed", kinds) for s in range(60)}
        assert seen == set(kinds) - {"mixed"}
        rng = np.random.default_rng(1)
        assert pick_kind(rng, kinds[1], kinds) == kinds[1] and rng.uniform() == np.random.default_rng(1).uniform()


def test_bad_look_names_the_axis(tmp_path):
    from slopekp.data.synth.bird import restyle_plumage, sample_bird
    from slopekp.mesh import load_template

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="background must be one of natural, noise, flat, pattern, mixed; got 'sky'"):
        B.styled_background(rng, "sky", 8, 8)
    with pytest.raises(ValueError, match="lighting must be one of .*; got 'neon'"):
        styled_lighting(rng, "neon")
    template = load_template("procedural")
    with pytest.raises(ValueError, match="plumage must be one of .*; got 'tartan'"):
        restyle_plumage(sample_bird(rng, template, 0.0), template, "tartan", rng)
    with pytest.raises(ValueError, match="plumage must be one of random, flat, countershaded, patterned, mixed; "
                                         "got 'tartan'"):  # fmt: skip
        SynthOptions(plumage="tartan")
    with pytest.raises(ValueError, match="background must be one of"):
        generate_synthbirds(tmp_path / "x", 1, 1, background="sky", progress=False)
    assert not (tmp_path / "x").exists()
    assert Look() == SynthOptions().look() and HELD_OUT != Look()


def test_a_look_renders_deterministically_and_is_recorded(tmp_path):
    """A whole dataset in the held-out look: the same files from the same seed, other files from another seed or
    the default look, and meta.json names the look."""
    import json

    kw = dict(size=32, background=HELD_OUT.background, lighting=HELD_OUT.lighting, plumage=HELD_OUT.plumage,
              progress=False)  # fmt: skip
    a = generate_synthbirds(tmp_path / "a", 4, 1, seed=5, **kw)
    b = generate_synthbirds(tmp_path / "b", 4, 1, seed=5, **kw)
    c = generate_synthbirds(tmp_path / "c", 4, 1, seed=5, size=32, progress=False)
    imgs = sorted(p.relative_to(a) for p in (a / "images").rglob("*.jpg"))
    assert len(imgs) == 5
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in imgs)
    default = sorted(p.relative_to(c) for p in (c / "images").rglob("*.jpg"))
    assert [(a / p).read_bytes() for p in imgs] != [(c / p).read_bytes() for p in default]
    meta = json.loads((a / "meta.json").read_text())["options"]
    assert (meta["background"], meta["lighting"], meta["plumage"]) == ("noise", "harsh", "flat")
    # the camera placement draws the same whatever the look: the same birds' poses
    from slopekp.data.matfiles import read_sfm_anno

    np.testing.assert_array_equal(read_sfm_anno(a / "anno_train.mat").rot, read_sfm_anno(c / "anno_train.mat").rot)


def test_cli_synth_takes_a_look(tmp_path):
    import json

    from slopekp.cli import main

    out = tmp_path / "ds"
    args = ["data", "synth", "--out", str(out), "--n-train", "2", "--n-test", "1", "--size", "32",
            "--background", "pattern", "--lighting", "flat", "--plumage", "mixed", "--fill-min", "0.3",
            "--fill-max", "0.4", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    opts = json.loads((out / "meta.json").read_text())["options"]
    look = (opts["background"], opts["lighting"], opts["plumage"], opts["fill_max"])
    assert look == ("pattern", "flat", "mixed", 0.4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["synth.background"] == "pattern"
