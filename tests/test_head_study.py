"""``benchmarks/head_study.py`` (issue 23's study of the pose heads on ground-truth poses) at smoke size: every case
it runs trains on the true cameras and is scored by the product's evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slopekp.data.synth.options import SynthOptions
from slopekp.data.synth.writer import generate_synthbirds

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "head_study.py"
ERRORS = SCRIPT.with_name("keypoint_errors.py")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("head_study") / "sb"
    return Path(generate_synthbirds(out, options=SynthOptions(n_train=24, n_test=8, size=64, seed=0), progress=False))


def _study(*args: str, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)


def test_head_study_smoke_run_trains_and_scores_each_case(synth):
    res = _study("--data", str(synth), "--cases", "kp_occ_sigma10,quat_base", "--calibrate", "2", "--train-eval", "4",
                 "--set", "train.pose_epochs=2", "data.max_items=16")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["case"] for r in rows] == ["kp_occ_sigma10", "quat_base"]
    assert [r["head"] for r in rows] == ["keypoints", "quaternion"]
    for r in rows:
        assert r["images"] == 16 and r["steps"] == 2 * 16 // 8  # two epochs of two batches of 8
        assert 0.0 <= r["median_deg"] <= 180.0 and 0.0 <= r["train_median_deg"] <= 180.0
        assert 0.0 <= r["acc15"] <= r["acc30"] <= 1.0 and 0.0 <= r["iou"] <= 1.0
        assert r["threads"] == 1 and r["device"] == "cpu" and r["train_s"] > 0
    assert rows[0]["settings"][-2:] == ["train.pose_epochs=2", "data.max_items=16"]


def test_head_study_rejects_unknown_case_and_missing_data(synth, tmp_path):
    res = _study("--data", str(synth), "--cases", "kp_nonsense")
    assert res.returncode != 0 and "kp_nonsense" in res.stderr
    res = _study("--data", str(tmp_path / "absent"))
    assert res.returncode != 0 and "absent" in res.stderr


def test_saved_head_is_diagnosed_by_keypoint_errors(synth, tmp_path):
    """``--save`` writes each case's state dict (it loads with ``weights_only=True``), and
    ``benchmarks/keypoint_errors.py`` reads it back with the same overrides and splits its error; its ``ceiling``
    case solves exact projections of the true shapes without error."""
    import torch

    over = ["model.heatmap_visibility=true", "model.keypoint_width=4"]
    res = _study("--data", str(synth), "--cases", "kp_default", "--calibrate", "1", "--train-eval", "2",
                 "--save", str(tmp_path / "models"), "--set", "train.pose_epochs=1", "data.max_items=8",
                 *over)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    state = tmp_path / "models" / "kp_default_seed0.pt"
    assert "pose.decoder.out_conv.weight" in torch.load(state, weights_only=True)
    res = _study("--cases", "trained,ceiling", "--data", str(synth), "--state", str(state), "--images", "6",
                 "--set", *over, script=ERRORS)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    trained, ceiling = (json.loads(line) for line in res.stdout.splitlines())
    assert trained["case"] == "trained" and trained["images"] == 8
    assert 0.0 <= trained["visibility_auc"] <= 1.0 and 0.0 < trained["visible_share"] < 1.0
    for key in ("head", "true_visibility", "true_visibility_inliers", "no_ransac"):
        assert 0.0 <= trained[key] <= 180.0
    assert ceiling["true_shape_median_deg"] < 0.1 and ceiling["median_deg"] < 30.0
    res = _study("--cases", "trained", "--data", str(synth), "--state", str(tmp_path / "none.pt"), script=ERRORS)
    assert res.returncode != 0 and "none.pt" in res.stderr
