"""``slopekp predict`` and ``slopekp info``: the files per photo on real bird photos, and a batch that goes on past
bad input (issue 11)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from slopekp.cli import main

DEMO = ("cmr_img1.jpg", "cmr_img2.jpg", "ucmr_birdie1.png", "ucmr_birdie2.png")


@pytest.fixture(scope="module")
def demo_images(shared_data):
    folder = shared_data / "demo_images"
    missing = [n for n in DEMO if not (folder / n).is_file()]
    if missing:
        pytest.skip(f"demo photos missing in {folder}: {missing}")
    return folder


def test_predict_on_the_real_bird_photos(tiny_model, demo_images, tmp_path, capsys):
    import torch
    import trimesh

    from slopekp.mesh.io import textured_trimesh
    from slopekp.predict import Reconstructor
    from slopekp.predict.api import TEXTURE_SIDE

    out = tmp_path / "pred"
    code = main(["predict", str(demo_images), "--checkpoint", str(tiny_model.checkpoint), "--out", str(out),
                 "--quiet", "--turntable-frames", "6", "--size", "96", "--batch-size", "3"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "wrote 4 of 4 reconstruction(s)" in captured.out
    assert captured.err.count("no mask or box given") == 4  # each photo read whole, with a warning
    index = json.loads((out / "predictions.json").read_text())
    assert [e["name"] for e in index["images"]] == [n.rsplit(".", 1)[0] for n in DEMO]
    assert all(e["status"] == "ok" and e["error"] is None for e in index["images"])
    assert index["model"]["head"] == "keypoints" and index["model"]["data"]["name"] == "SynthBirds"
    rec = Reconstructor.from_checkpoint(tiny_model.checkpoint, device="cpu")
    t = rec.template  # the template's vertices, plus copies of those on the UV seam (one UV per vertex)
    nverts = len(textured_trimesh(t.verts, t.faces, t.verts_uv, torch.zeros(3, 4, 8)).vertices)
    assert t.num_verts < nverts < 1.2 * t.num_verts
    for name in DEMO:
        d = out / name.rsplit(".", 1)[0]
        glb = trimesh.load(d / "mesh.glb", force="mesh")
        obj = trimesh.load(d / "mesh.obj", force="mesh")
        assert len(glb.vertices) == len(obj.vertices) == nverts, name
        assert len(glb.faces) == len(obj.faces) == rec.template.num_faces
        for m in (glb, obj):  # textured, with the photo texture (as large as the input: one texel per pixel)
            assert isinstance(m.visual, trimesh.visual.TextureVisuals) and m.visual.uv.shape == (nverts, 2)
        side = max(rec.cfg.model.uv_height, TEXTURE_SIDE)
        assert np.asarray(obj.visual.material.image).shape[:2] == (side, 2 * side)
        photo = Image.open(demo_images / name)
        mask = Image.open(d / "mask.png")
        assert mask.size == photo.size and set(np.unique(np.asarray(mask))) <= {0, 255}
        cam = json.loads((d / "camera.json").read_text())
        assert len(cam["camera"]) == 7 and cam["box_source"] == "whole image" and cam["head"] == "keypoints"
        fig = Image.open(d / "figure.png")
        assert fig.size[0] > 5 * fig.size[1] / 2 and np.asarray(fig.convert("L")).std() > 5
        gif = Image.open(d / "turntable.gif")
        assert gif.n_frames == 6 and gif.size == (96, 96)
        assert Image.open(d / "input.png").size == (96, 96)


def test_info_prints_the_model_card(tiny_model, capsys):
    assert main(["info", str(tiny_model.checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "pose head   keypoints" in text and "SynthBirds" in text and "embedded" in text
    assert "metrics     on 3 test images: mask IoU" in text
    assert main(["info", str(tiny_model.checkpoint), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["kind"] == "stage3" and card["metrics"]["num_images"] == 3
    assert main(["info", str(tiny_model.stage2)]) == 0  # a Stage II file has a card too, without test metrics
    assert "kind        stage2" in capsys.readouterr().out


def _photo(path, size=(60, 80), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _mask(path, size=(60, 80)):
    m = np.zeros(size, np.uint8)
    m[10:40, 20:60] = 255
    Image.fromarray(m).save(path)


def test_a_batch_goes_on_past_bad_photos_masks_and_boxes(tiny_model, tmp_path, capsys):
    ck = str(tiny_model.checkpoint)
    _photo(tmp_path / "good.png")
    _photo(tmp_path / "other.png", seed=1)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    _mask(tmp_path / "m_good.png")
    _mask(tmp_path / "m_small.png", size=(30, 40))
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "good.png"), str(tmp_path / "broken.jpg"), str(tmp_path / "other.png"),
            "--checkpoint", ck, "--out", str(out), "--quiet", "--turntable-frames", "2", "--size", "32",
            "--mask", str(tmp_path / "m_good.png"), str(tmp_path / "m_good.png"), str(tmp_path / "m_small.png")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken.jpg: corrupt or unreadable image" in err
    assert "m_small.png: mask size 30x40 differs from the image size 60x80" in err
    index = json.loads((out / "predictions.json").read_text())
    status = {e["name"]: e["status"] for e in index["images"]}
    assert status == {"good": "ok", "broken": "error", "other": "error"}
    assert (out / "good" / "mesh.glb").is_file() and not (out / "broken").exists()

    # boxes: one outside the photo, one fine
    out2 = tmp_path / "out2"
    assert main(["predict", str(tmp_path / "good.png"), str(tmp_path / "other.png"), "--checkpoint", ck, "--out",
                 str(out2), "--quiet", "--turntable-frames", "0", "--size", "32",
                 "--bbox", "500,500,600,600", "10,5,50,40"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "good.png: box [500.0, 500.0, 600.0, 600.0] lies outside the 80x60 image" in err
    assert (out2 / "other" / "mesh.obj").is_file() and not (out2 / "other" / "turntable.gif").exists()
    cam = json.loads((out2 / "other" / "camera.json").read_text())
    assert cam["box_source"] == "bbox"
    # negative corners: --bbox=..., repeated (argparse would read "-5,..." as an option)
    assert main(["predict", str(tmp_path / "good.png"), str(tmp_path / "other.png"), "--checkpoint", ck, "--out",
                 str(tmp_path / "out4"), "--quiet", "--turntable-frames", "0", "--size", "32",
                 "--bbox=-5,-5,50,40", "--bbox=10,5,50,40"]) == 0  # fmt: skip
    cams = [json.loads((tmp_path / "out4" / n / "camera.json").read_text()) for n in ("good", "other")]
    assert cams[0]["crop_box"][0] < -5 and cams[1]["crop_box"][0] > 0

    # a mask folder: <stem>.png per photo; a missing one fails that photo only
    masks = tmp_path / "masks"
    masks.mkdir()
    _mask(masks / "good.png")
    assert main(["predict", str(tmp_path / "good.png"), str(tmp_path / "other.png"), "--checkpoint", ck, "--out",
                 str(tmp_path / "out3"), "--quiet", "--turntable-frames", "0", "--size", "32",
                 "--mask", str(masks)]) == 1  # fmt: skip
    assert "other.png: mask file not found" in capsys.readouterr().err.replace(str(masks / ""), "")


def test_whole_command_errors(tiny_model, tmp_path, capsys):
    _photo(tmp_path / "a.png")
    base = ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*base, "--checkpoint", str(tiny_model.stage2)]) == 2
    assert "has no trained pose head" in capsys.readouterr().err
    (tmp_path / "w.pt").write_bytes(b"nope")
    assert main([*base, "--checkpoint", str(tmp_path / "w.pt")]) == 2
    assert "w.pt: " in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(tiny_model.checkpoint), "--bbox", "1,2,3,4", "5,6,7,8"]) == 2
    assert "2 box(es) for 1 image(s)" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--out", str(tmp_path / "o"), "--checkpoint", str(tiny_model.checkpoint)]) == 2
    assert "a folder with no images" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --mask and --bbox exclude each other
        main([*base, "--checkpoint", "x", "--mask", "m.png", "--bbox", "1,2,3,4"])


def test_names_are_unique_and_a_photo_that_now_fails_leaves_nothing_stale(tiny_model, tmp_path, capsys):
    from pathlib import Path

    from slopekp.predict.outputs import unique_names

    assert unique_names([Path("a/bird.jpg"), Path("b/bird.jpg"), Path("bird-2.png"), Path("c/Bird.jpg")]) == [
        "bird", "bird-2", "bird-2-2", "Bird-3"]  # fmt: skip
    _photo(tmp_path / "p.png")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "p.png"), "--checkpoint", str(tiny_model.checkpoint), "--out", str(out),
            "--quiet", "--turntable-frames", "0", "--size", "32"]  # fmt: skip
    assert main(args) == 0 and (out / "p" / "mesh.glb").is_file()
    (tmp_path / "p.png").write_bytes(b"now broken")
    assert main(args) == 1
    assert not (out / "p" / "mesh.glb").exists() and not (out / "p" / "figure.png").exists()
    assert "p.png: corrupt or unreadable image" in capsys.readouterr().err


def _other_checkpoint(ckpt, path):
    """A second Stage III checkpoint of the same head: ``ckpt`` with one weight nudged (another file, another
    fingerprint)."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key] + 1e-3
    torch.save(state, path)
    return path


def test_predict_never_writes_over_what_it_did_not_make(tiny_model, tmp_path, capsys):
    """Issue 20: the probe's reproduction (a user's mesh.obj in OUT/photos/ was replaced), a rerun with another
    checkpoint (refused unless --overwrite or --force-new) and a rerun with the same one (photos added)."""
    ck = str(tiny_model.checkpoint)
    inp = tmp_path / "in"
    inp.mkdir()
    _photo(inp / "photos.png")
    out = tmp_path / "out"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "mesh.obj").write_text("mine")
    (out / "notes.txt").write_text("notes")
    base = ["--quiet", "--turntable-frames", "0", "--size", "32"]
    assert main(["predict", str(inp / "photos.png"), "--checkpoint", ck, "--out", str(out), *base]) == 2
    err = capsys.readouterr().err
    assert f"{out}: folder is not empty and has no slopekp run manifest" in err and "--overwrite" in err
    assert (out / "photos" / "mesh.obj").read_text() == "mine" and (out / "notes.txt").read_text() == "notes"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "photos"]

    # its own folder: the same checkpoint adds photos; a photo predicted again keeps its name and is replaced
    own = tmp_path / "own"
    _photo(tmp_path / "p.png", seed=2)
    assert main(["predict", str(inp / "photos.png"), "--checkpoint", ck, "--out", str(own), *base]) == 0
    assert main(["predict", str(tmp_path / "p.png"), str(inp / "photos.png"), "--checkpoint", ck, "--out", str(own),
                 *base]) == 0  # fmt: skip
    sub = tmp_path / "sub"
    sub.mkdir()
    _photo(sub / "p.png", seed=3)  # another photo with a name in use: a new folder, the first p/ stays
    assert main(["predict", str(sub / "p.png"), "--checkpoint", ck, "--out", str(own), *base]) == 0
    assert "also lists 2 photo(s) of earlier runs" in capsys.readouterr().out
    index = json.loads((own / "predictions.json").read_text())
    assert sorted((e["name"], e["image"]) for e in index["images"]) == [
        ("p", str(tmp_path / "p.png")), ("p-2", str(sub / "p.png")), ("photos", str(inp / "photos.png"))]
    assert all((own / n / "mesh.glb").is_file() for n in ("p", "p-2", "photos"))

    # another checkpoint: refused, the earlier results untouched; --force-new moves them aside; --overwrite empties
    other = str(_other_checkpoint(ck, tmp_path / "other.pt"))
    before = (own / "predictions.json").read_bytes()
    assert main(["predict", str(tmp_path / "p.png"), "--checkpoint", other, "--out", str(own), *base]) == 2
    err = capsys.readouterr().err
    assert f"{own} holds a run of `slopekp predict` made from other inputs" in err and "input checkpoint" in err
    assert "--overwrite" in err and (own / "predictions.json").read_bytes() == before
    assert main(["predict", str(tmp_path / "p.png"), "--checkpoint", other, "--out", str(own), *base,
                 "--force-new"]) == 0  # fmt: skip
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("own.old-")]
    assert len(aside) == 1 and (aside[0] / "predictions.json").read_bytes() == before
    assert [e["name"] for e in json.loads((own / "predictions.json").read_text())["images"]] == ["p"]
    assert main(["predict", str(sub / "p.png"), "--checkpoint", ck, "--out", str(own), *base, "--overwrite"]) == 0
    index = json.loads((own / "predictions.json").read_text())
    assert [e["name"] for e in index["images"]] == ["p"] and index["checkpoint"] == ck


def test_predict_reports_broken_links_and_warns_on_tiny_photos(tiny_model, tmp_path, capsys):
    """Issue 20: broken symbolic links and link loops in an input folder are failed photos (exit 1), not silently
    skipped; a 1x1 photo is reconstructed with a warning, kept in the index."""
    inp = tmp_path / "in"
    inp.mkdir()
    _photo(inp / "a.png")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(inp / "dot.png")
    (inp / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (inp / "loop.png").symlink_to(inp / "loop.png")
    out = tmp_path / "out"
    assert main(["predict", str(inp), "--checkpoint", str(tiny_model.checkpoint), "--out", str(out), "--quiet",
                 "--turntable-frames", "0", "--size", "32"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "gone.jpg: image file not found (a broken symbolic link to " in err
    assert "nowhere.jpg, which does not exist)" in err
    assert "loop.png: image file not found (a symbolic link loop)" in err
    assert "dot.png: the photo is only 1x1 pixels, under 16 on a side" in err
    entries = {e["name"]: e for e in json.loads((out / "predictions.json").read_text())["images"]}
    assert {n: e["status"] for n, e in entries.items()} == {"a": "ok", "dot": "ok", "gone": "error", "loop": "error"}
    assert any("only 1x1 pixels" in w for w in entries["dot"]["warnings"])


def test_a_photo_the_network_fails_on_fails_alone(tiny_model, tmp_path, monkeypatch, capsys):
    # a batch whose forward pass raises is run again photo by photo, and a non-finite prediction is an error: only
    # the photo at fault fails, named, and its batch-mates are written
    import dataclasses

    import torch

    from slopekp.predict.api import Reconstructor

    original = Reconstructor.predict_crops

    def flaky(self, crops):
        if any(c.photo_size == (61, 80) for c in crops):  # this photo breaks any batch it is in
            raise RuntimeError("simulated failure")
        results = original(self, crops)
        return [dataclasses.replace(r, camera=torch.full_like(r.camera, float("nan")))  # and this one gives NaN
                if c.photo_size == (62, 80) else r for c, r in zip(crops, results)]  # fmt: skip

    monkeypatch.setattr(Reconstructor, "predict_crops", flaky)
    _photo(tmp_path / "good.png")
    _photo(tmp_path / "breaks.png", size=(61, 80), seed=2)
    _photo(tmp_path / "nan_pose.png", size=(62, 80), seed=3)
    _photo(tmp_path / "other.png", seed=1)
    out = tmp_path / "out"
    photos = [str(tmp_path / f"{n}.png") for n in ("good", "breaks", "nan_pose", "other")]
    assert main(["predict", *photos, "--checkpoint", str(tiny_model.checkpoint), "--out", str(out), "--quiet",
                 "--turntable-frames", "0", "--size", "32", "--batch-size", "4"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "breaks.png: the network failed on this photo (RuntimeError: simulated failure)" in err
    assert "nan_pose.png: the network's prediction is not finite" in err
    index = json.loads((out / "predictions.json").read_text())
    assert {e["name"]: e["status"] for e in index["images"]} == {
        "good": "ok", "breaks": "error", "nan_pose": "error", "other": "ok"}
    assert (out / "good" / "mesh.glb").is_file() and (out / "other" / "mesh.glb").is_file()
    assert not (out / "breaks").exists() and not (out / "nan_pose").exists()
