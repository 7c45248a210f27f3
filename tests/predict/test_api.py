"""``Reconstructor.from_checkpoint(path).predict(photo)`` against independent computations (issue 11)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from slopekp.predict import CropWarning, Reconstructor
from slopekp.predict.api import OBJECT_TO_FILE, TEXTURE_SIDE


def _test_image(tiny_model, i: int = 0, scale: int = 4):
    """A SynthBirds test photo and its mask, enlarged ``scale`` times (nearest neighbour)."""
    from slopekp.data.cub import CubDataset

    ds = CubDataset(tiny_model.data, split="test", img_size=64)
    rec = ds.records[i]
    img = np.asarray(Image.open(ds.image_path(i)).convert("RGB"))
    return np.kron(img, np.ones((scale, scale, 1), np.uint8)), np.kron(rec.mask, np.ones((scale, scale), np.uint8))


@pytest.fixture(scope="module")
def reconstructor(tiny_model, device) -> Reconstructor:
    return Reconstructor.from_checkpoint(tiny_model.checkpoint, device=device)


def test_the_checkpoint_carries_its_template_and_model_card(tiny_model, reconstructor):
    from slopekp.checkpoint import load_checkpoint
    from slopekp.mesh import load_template

    ck = load_checkpoint(tiny_model.checkpoint)
    tpl = load_template(reconstructor.cfg.template.path)
    torch.testing.assert_close(ck["template"]["verts"], tpl.verts)
    torch.testing.assert_close(ck["template"]["faces"], tpl.faces)
    card = reconstructor.card
    assert card["head"] == "keypoints" and card["kind"] == "stage3"
    assert card["data"]["name"] == "SynthBirds" and card["data"]["images"] == 4
    assert card["template"]["embedded"] and card["template"]["num_verts"] == tpl.num_verts
    # the test split's metrics, as Stage III's report wrote them
    import json

    report = json.loads((tiny_model.checkpoint.parents[1] / "report" / "metrics.json").read_text())
    assert card["metrics"]["num_images"] == 3
    assert card["metrics"]["mask_iou_0.5"] == pytest.approx(report["test"]["mask_iou_0.5"])


def test_the_model_loads_without_its_template_file(tiny_model, tmp_path, monkeypatch):
    # the checkpoint's config names a template path that does not exist here: the embedded mesh is used
    from slopekp.checkpoint import load_checkpoint
    from slopekp.config import config_from_yaml, config_to_yaml

    ck = load_checkpoint(tiny_model.checkpoint)
    cfg = config_from_yaml(ck["config"], "ck")
    import dataclasses

    cfg = dataclasses.replace(cfg, template=dataclasses.replace(cfg.template, path=str(tmp_path / "gone.npz")))
    ck["config"] = config_to_yaml(cfg)
    torch.save(ck, tmp_path / "moved.pt")
    rec = Reconstructor.from_checkpoint(tmp_path / "moved.pt", device="cpu")
    assert rec.template.num_verts == ck["template"]["verts"].shape[0]


def test_predict_equals_the_network_on_an_independently_made_crop(tiny_model, reconstructor):
    from slopekp.models.encoder import normalize_image

    img, mask = _test_image(tiny_model)
    r = reconstructor.predict(img, mask=mask)
    assert r.crop.source == "mask"
    # reference crop: tight box of the mask, padded by data.padding_frac per side, squared, cut and resized
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
    pad = reconstructor.cfg.data.padding_frac
    w, h = x2 - x1 + 1, y2 - y1 + 1
    bx1, by1, bx2, by2 = np.round([x1 - pad * w, y1 - pad * h, x2 + pad * w, y2 + pad * h])
    side = max(bx2 - bx1 + 1, by2 - by1 + 1)
    bx1 -= np.round((side - (bx2 - bx1 + 1)) / 2)
    by1 -= np.round((side - (by2 - by1 + 1)) / 2)
    big = np.pad(img, ((200, 200), (200, 200), (0, 0)), constant_values=255)  # white outside the photo
    cut = big[int(by1) + 200 : int(by1 + side) + 200, int(bx1) + 200 : int(bx1 + side) + 200]
    s = reconstructor.image_size
    crop = cv2.resize(cut.astype(np.float32) / 255.0, (s, s), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(r.crop.image, crop, atol=1e-5)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].to(reconstructor.device)
    with torch.no_grad():
        ref = reconstructor.net(normalize_image(x))
    torch.testing.assert_close(r.camera, ref.camera[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r.verts, ref.verts[0], atol=1e-5, rtol=1e-5)
    # the photo texture is read from the same square at TEXTURE_SIDE, not from the network's small input
    sharp = cv2.resize(cut.astype(np.float32) / 255.0, (TEXTURE_SIDE, TEXTURE_SIDE), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(r.crop.texture_image, sharp, atol=1e-5)
    hi = torch.from_numpy(sharp).permute(2, 0, 1)[None].to(reconstructor.device)
    torch.testing.assert_close(r.texture, reconstructor.net.photo_texture(normalize_image(hi), ref)[0])
    assert tuple(r.texture.shape) == (3, TEXTURE_SIDE, 2 * TEXTURE_SIDE)
    assert r.keypoints.shape == (reconstructor.cfg.model.num_keypoints, 2)
    # deterministic
    torch.testing.assert_close(reconstructor.predict(img, mask=mask).camera, r.camera, atol=0, rtol=0)


def test_photo_mask_matches_a_render_at_the_photo_resolution(tiny_model, reconstructor):
    from slopekp.render import Renderer, RenderSettings

    img, mask = _test_image(tiny_model, 1)
    r = reconstructor.predict(img, bbox=[10, 20, 150, 170])
    got = r.photo_mask(512)
    # reference: the camera moved from the crop's NDC to the photo's, rendered at the photo's size; renderer pixel
    # u samples NDC (2u + 1)/W - 1, which must be the crop NDC of photo pixel u: 2(k u + o)/S - 1
    a, S, H = r.crop.affine, r.crop.image.shape[0], img.shape[0]
    scale = a.k * H / S
    off = np.array([(a.k * H - a.k + 2 * a.ox) / S - 1, (a.k * H - a.k + 2 * a.oy) / S - 1])
    cam = r.camera.detach().double().cpu().clone()
    cam[0] /= scale
    cam[1:3] = (cam[1:3] - torch.from_numpy(off)) / scale
    ref = Renderer(RenderSettings(image_size=H, z_offset=r.z_offset))(r.verts[None].double().cpu(),
                                                                         r.faces.cpu(), cam[None], mode="hard")
    ref = ref.alpha[0].numpy() > 0.5
    assert ref.sum() > 500
    iou = (got & ref).sum() / (got | ref).sum()
    assert iou > 0.97, iou


def test_render_export_and_mesh(reconstructor, tiny_model, tmp_path):
    import trimesh

    img, mask = _test_image(tiny_model, 2)
    r = reconstructor.predict(img, mask=mask)
    front = r.render(size=64)
    assert front.shape == (4, 64, 64) and 0 <= float(front.min()) and float(front.max()) <= 1
    assert front[3].sum() > 20  # the mesh is seen
    torch.testing.assert_close(r.mask(64), front[3])
    side = r.render(azimuth=90, size=64)
    assert not torch.equal(side[3], front[3])
    plain = r.render(r.camera, textured=False, size=64)
    torch.testing.assert_close(plain[3], front[3])
    with pytest.raises(ValueError, match="camera"):
        r.render(torch.zeros(6))
    files = r.export(tmp_path / "m.obj") + r.export(tmp_path / "m.glb") + r.export(tmp_path / "m.ply")
    assert [f.name for f in files] == ["m.obj", "m.mtl", "m.png", "m.glb", "m.ply"]
    mesh = r.mesh
    assert isinstance(mesh, trimesh.Trimesh)
    glb = trimesh.load(tmp_path / "m.glb", force="mesh")
    assert len(glb.vertices) == len(mesh.vertices) and len(glb.faces) == r.faces.shape[0]
    np.testing.assert_allclose(np.asarray(glb.visual.material.baseColorTexture.size),
                               [r.texture.shape[2], r.texture.shape[1]])  # fmt: skip
    # files are upright: glTF's +Y is the bird's back (+z), +Z its beak (-y); object-frame coordinates on request
    M = np.array(OBJECT_TO_FILE)
    np.testing.assert_allclose(M @ M.T, np.eye(3), atol=0)
    assert np.linalg.det(M) == pytest.approx(1.0)
    v = r.verts.cpu().numpy()
    ply = trimesh.load(tmp_path / "m.ply", process=False)
    np.testing.assert_allclose(ply.vertices, np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1), atol=1e-5)
    r.export(tmp_path / "raw.ply", y_up=False)
    np.testing.assert_allclose(trimesh.load(tmp_path / "raw.ply", process=False).vertices, v, atol=1e-5)
    d = r.camera_dict()
    R = np.array(d["rotation"])
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert d["box_source"] == "mask" and d["photo_size"] == list(img.shape[:2])
    # the exported file's coordinates under file_rotation land where the object frame's do under rotation
    np.testing.assert_allclose(np.array(d["file_rotation"]) @ ply.vertices.T, R @ v.T, atol=1e-5)


def test_a_whole_photo_is_read_with_a_warning(reconstructor, tiny_model):
    img, _ = _test_image(tiny_model)
    with pytest.warns(CropWarning, match="whole image"):
        r = reconstructor.predict(Image.fromarray(img))
    assert r.crop.source == "whole image" and r.crop.box.tolist() == [0, 0, img.shape[1] - 1, img.shape[0] - 1]


def test_bad_checkpoints_are_refused_with_the_file_named(tiny_model, tmp_path):
    from slopekp.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"last.pt: a 'stage2' checkpoint has no trained pose head"):
        Reconstructor.from_checkpoint(tiny_model.stage2, device="cpu")
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"x.pt: (not a slopekp checkpoint|truncated or corrupt)"):
        Reconstructor.from_checkpoint(tmp_path / "x.pt", device="cpu")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a slopekp checkpoint"):
        Reconstructor.from_checkpoint(tmp_path / "foreign.pt", device="cpu")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        Reconstructor.from_checkpoint(tmp_path / "nope.pt", device="cpu")


def test_the_top_level_import(tiny_model):
    import slopekp

    assert slopekp.Reconstructor is Reconstructor
    with pytest.raises(AttributeError):
        slopekp.NoSuchThing  # noqa: B018


def test_the_camera_in_photo_pixels_projects_like_the_crop_camera(tiny_model, reconstructor):
    from slopekp.geometry.camera import project_points

    img, _ = _test_image(tiny_model, 1)
    r = reconstructor.predict(img, bbox="20 30 150 160")  # spaces work as separators too
    verts = r.verts.detach().double().cpu()
    in_crop = project_points(verts, r.camera.detach().double().cpu())[:, :2]
    in_photo = project_points(verts, r.photo_camera())[:, :2]
    # photo pixels -> crop pixels (u_c = k u + o) -> crop NDC (2 u_c / S - 1)
    a, S = r.crop.affine, r.crop.image.shape[0]
    to_ndc = 2 * (a.k * in_photo + torch.tensor([a.ox, a.oy], dtype=torch.float64)) / S - 1
    torch.testing.assert_close(to_ndc, in_crop, atol=1e-9, rtol=0)
    torch.testing.assert_close(r.crop_camera(r.photo_camera()), r.camera, atol=1e-6, rtol=0)  # the inverse
    d = r.camera_dict()
    np.testing.assert_allclose(d["camera_photo_px"], r.photo_camera().numpy())
    kp_px = torch.tensor(d["keypoints_photo_px"], dtype=torch.float64)
    kp_ndc = 2 * (a.k * kp_px + torch.tensor([a.ox, a.oy], dtype=torch.float64)) / S - 1
    torch.testing.assert_close(kp_ndc, r.keypoints.detach().double().cpu(), atol=1e-6, rtol=0)


def test_a_tiny_box_gets_a_warning(reconstructor, tiny_model):
    img, _ = _test_image(tiny_model)
    with pytest.warns(CropWarning, match="under 16 pixels"):
        r = reconstructor.predict(img, bbox=[40, 40, 45, 60])
    assert torch.isfinite(r.camera).all()


def test_the_glb_of_a_green_bird_is_green(tiny_model, tmp_path):
    # issue 24: the texture is the photo's (model.texture_from_photo): a photo painted green (bird and background, so
    # that the tiny model's rough pose does not matter) exports a green GLB; the texture head's own colour does not
    import trimesh

    rec = Reconstructor.from_checkpoint(tiny_model.checkpoint, device="cpu")
    img, mask = _test_image(tiny_model, 0)
    photo = np.empty_like(img)
    photo[:] = (40, 170, 60)
    colours = {}
    for mode in (True, False):
        rec.net.texture_from_photo = mode
        r = rec.predict(photo, mask=mask)
        r.export(tmp_path / f"{mode}.glb")
        tex = np.asarray(trimesh.load(tmp_path / f"{mode}.glb", force="mesh").visual.material.baseColorTexture)
        seen = r.render(size=64)  # under the predicted camera: the bird's colours where its silhouette is
        colours[mode] = (tex[..., :3].reshape(-1, 3).astype(float), seen[:3, seen[3] > 0.99].T.numpy())
    tex, seen = colours[True]
    green = (tex[:, 1] > tex[:, 0] + 60) & (tex[:, 1] > tex[:, 2] + 60)
    assert green.mean() > 0.5, green.mean()  # most texels: the side the camera sees and its mirror copy
    assert np.median(seen[:, 1] - seen[:, 0]) > 0.3  # rendered green where the photo is
    head_tex, _ = colours[False]
    assert ((head_tex[:, 1] > head_tex[:, 0] + 60) & (head_tex[:, 1] > head_tex[:, 2] + 60)).mean() < 0.1
