"""evaluate_model on a SynthBirds test split with a stand-in model whose camera is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from slopekp.eval.evaluate import benchmark_dataset, evaluate_model
from slopekp.mesh import load_template
from slopekp.models.base import Prediction


class FixedCamera(torch.nn.Module):
    """Predicts the template and one fixed camera for every image."""

    def __init__(self, verts, camera):
        super().__init__()
        self.register_buffer("verts", verts)
        self.register_buffer("camera", camera)

    def forward(self, img, pose=True):
        b = img.shape[0]
        v = self.verts.expand(b, -1, -1)
        return Prediction(v, torch.zeros_like(v), self.verts, torch.zeros(b, 3, 4, 8), self.camera.expand(b, 7))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from slopekp.data.synth.writer import generate_synthbirds

    return generate_synthbirds(tmp_path_factory.mktemp("ev") / "sb", n_train=1, n_test=5, size=64, seed=2,
                               deform=0.0, progress=False)  # fmt: skip


def test_rotation_errors_match_scipy_and_ious_are_valid(synth):
    t = load_template("procedural")
    q = Rotation.from_euler("x", 90, degrees=True).as_quat()  # the head view
    cam = torch.tensor([0.8, 0.0, 0.0, q[3], q[0], q[1], q[2]], dtype=torch.float32)
    ds = benchmark_dataset(synth, "test", 64)
    ev = evaluate_model(FixedCamera(t.verts, cam), ds, t.faces, batch_size=2)
    assert ev.metrics["num_images"] == 5
    gt = torch.stack([ds[i].gt_camera for i in range(5)]).double().numpy()
    ref = []
    for g in gt:
        r_gt = Rotation.from_quat([g[4], g[5], g[6], g[3]])
        ref.append(np.degrees((Rotation.from_quat(q) * r_gt.inv()).magnitude()))
    np.testing.assert_allclose(ev.per_image["rotation_error_deg"].numpy(), ref, atol=1e-3)
    assert ev.metrics["rotation_error"]["median_deg"] == pytest.approx(float(np.median(ref)), abs=1e-3)
    assert (ev.per_image["rotation_error_up_to_mirror_deg"] <= ev.per_image["rotation_error_deg"] + 1e-4).all()
    for k in ("iou", "iou_soft"):
        assert ((ev.per_image[k] >= 0) & (ev.per_image[k] <= 1)).all()
    # the hard silhouette is binary: both IoU conventions agree up to the GT mask's soft edge
    assert abs(ev.metrics["mask_iou_soft"] - ev.metrics["mask_iou_0.5"]) < 0.1


def test_errors_for_empty_split_and_missing_cameras(synth, tmp_path):
    import shutil

    t = load_template("procedural")
    model = FixedCamera(t.verts, torch.tensor([0.8, 0, 0, 1.0, 0, 0, 0]))
    ds = benchmark_dataset(synth, "test", 64)
    ds.return_gt_camera = False
    with pytest.raises(ValueError, match="ground-truth cameras"):
        evaluate_model(model, ds, t.faces)
    blind = shutil.copytree(synth, tmp_path / "blind")
    (blind / "anno_test.mat").unlink()
    with pytest.raises((FileNotFoundError, ValueError), match="anno_test.mat"):
        benchmark_dataset(blind, "test", 64)


class TrueCamera(torch.nn.Module):
    """Predicts ``scale ×`` the template, a UV image of one colour and each image's true camera (read from the
    dataset by the test, in order)."""

    def __init__(self, verts, cameras, colour, scale=1.0):
        super().__init__()
        self.verts, self.cameras, self.colour, self.scale, self.seen = verts, cameras, colour, scale, 0

    def forward(self, img, pose=True):
        b = img.shape[0]
        v = (self.scale * self.verts).expand(b, -1, -1)
        cam = self.cameras[self.seen : self.seen + b]
        self.seen += b
        uv = self.colour.view(1, 3, 1, 1).expand(b, 3, 8, 16)
        return Prediction(v, torch.zeros_like(v), self.verts, uv, cam)


def test_shape_and_texture_metrics_against_the_true_meshes(synth):
    """SynthBirds' test meshes (deform 0: the template itself): a model predicting the template scores a Chamfer
    distance of exactly 0 and the true meshes' smoothness; twice the template is far off. A render of one flat
    colour under the true camera is off by that colour's mean distance to the photo over the mask, and the
    true-camera numbers do not depend on the predicted camera."""
    from slopekp.data.meshes import read_true_meshes

    t = load_template("procedural")
    ds = benchmark_dataset(synth, "test", 64)
    truth = read_true_meshes(synth, "test")
    assert len(truth) == 5 and np.allclose(truth.verts, t.verts.numpy()[None], atol=1e-6)
    cams = torch.stack([ds[i].gt_camera for i in range(len(ds))])
    grey = torch.tensor([0.5, 0.5, 0.5])

    def run(scale):
        model = TrueCamera(t.verts, cams, grey, scale)
        return evaluate_model(model, ds, t.faces, batch_size=2, verts_uv=t.verts_uv, true_meshes=truth)

    same, double = run(1.0), run(2.0)
    assert same.metrics["shape"]["chamfer"] == pytest.approx(0.0, abs=1e-4)  # float32 distances
    assert double.metrics["shape"]["chamfer"] > 0.2
    shape = same.metrics["shape"]
    assert shape["normal_consistency"] == pytest.approx(shape["normal_consistency_true"])
    # texture: the flat grey render under the true camera; the masked L1 by hand (the renderer's coverage at the
    # mask's edge differs by a pixel, so compare loosely), and the GT-camera and predicted-camera keys agree here
    tex = same.metrics["texture"]
    by_hand = np.mean([float(((ds[i].img - 0.5).abs() * ds[i].mask).sum() / (3 * ds[i].mask.sum())) for i in range(5)])
    assert tex["l1_gt_camera"] == pytest.approx(by_hand, abs=0.03)
    assert tex["l1_pred_camera"] == pytest.approx(tex["l1_gt_camera"]) and 0 < tex["ssim_gt_camera"] < 1
    # other images' cameras: the predicted-camera numbers move, the true-camera ones do not
    wrong = evaluate_model(TrueCamera(t.verts, cams.roll(1, 0), grey), ds, t.faces, batch_size=2, verts_uv=t.verts_uv)
    assert "chamfer" not in wrong.metrics["shape"]  # no true meshes given
    assert wrong.metrics["texture"]["l1_gt_camera"] == pytest.approx(tex["l1_gt_camera"])
    assert abs(wrong.metrics["texture"]["l1_pred_camera"] - tex["l1_pred_camera"]) > 0.01
