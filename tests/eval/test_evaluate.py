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
