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


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("head_study") / "sb"
    return Path(generate_synthbirds(out, options=SynthOptions(n_train=24, n_test=8, size=64, seed=0), progress=False))


def _study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


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
