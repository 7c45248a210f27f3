"""``slopekp benchmark`` at a smoke size: every stage runs once per seed and head, the report's Table 1 holds the
mean ± std over seeds of the evaluations it points at, and a rerun reuses every stage."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from slopekp.cli import main


def test_benchmark_runs_every_head_and_seed_and_reports_them(tmp_path, capsys, smoke_overrides):
    from slopekp.data.synthetic import generate_synthbirds
    from slopekp.eval.benchmark import summarise, verdict

    data = generate_synthbirds(tmp_path / "sb", n_train=4, n_test=3, size=32, seed=2, progress=False)
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(data), "--out", str(out), "--heads", "svd", "keypoints", "--seeds", "2",
            "--pck-pairs", "20", "--quiet", *smoke_overrides]  # the overrides after --heads go to the config
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "svd" in printed and "keypoints" in printed and "over 2 seed(s)" in printed
    rep = json.loads((out / "report.json").read_text())
    assert rep["seeds"] == [0, 1]
    for head in ("svd", "keypoints"):
        for seed in (0, 1):
            ev = json.loads((out / f"seed{seed}" / f"eval_{head}" / "metrics.json").read_text())
            assert ev["head"] == head and ev["num_images"] == 3
            assert rep["runs"][head][str(seed)]["mask_iou_0.5"] == ev["mask_iou_0.5"]
        vals = [rep["runs"][head][s]["rotation_error"]["median_deg"] for s in ("0", "1")]
        entry = rep["summary"][head]["rotation error median (°)"]
        assert entry["mean"] == pytest.approx(statistics.fmean(vals)) and entry["n"] == 2
        assert entry["std"] == pytest.approx(statistics.stdev(vals))
    md = (out / "report.md").read_text()
    assert "Command: `slopekp benchmark --data" in md
    assert "| svd |" in md and "| keypoints |" in md and "40.5°" in md  # the paper's keypoint number beside ours
    assert verdict(summarise({h: {int(s): m for s, m in r.items()} for h, r in rep["runs"].items()})) in md
    assert "![keypoints, seed 0: examples](seed0/eval_keypoints/examples.png)" in md
    assert (out / "seed0" / "eval_keypoints" / "examples.png").is_file()
    assert "Pose targets: multiplex best cameras (self-supervised)." in md
    assert " ± " in md.split("| svd |")[1].splitlines()[0]  # two seeds: a spread
    # a rerun finds every stage done and writes the same report
    assert main(args) == 0
    assert json.loads((out / "report.json").read_text())["summary"] == rep["summary"]


def test_verdict_names_the_leader_and_calls_a_tie():
    from slopekp.eval.benchmark import verdict

    def entry(mean, std):
        return {"mean": mean, "std": std, "n": 3}

    s = {
        "keypoints": {"mask IoU (at 0.5)": entry(0.70, 0.01), "rotation error median (°)": entry(20.0, 2.0)},
        "quaternion": {"mask IoU (at 0.5)": entry(0.69, 0.02), "rotation error median (°)": entry(40.0, 3.0)},
    }
    text = verdict(s)
    assert "keypoints and quaternion are level on mask IoU (at 0.5) (0.7 and 0.69, within one standard" in text
    assert "keypoints is best on rotation error median (°) (20; next quaternion, 40)" in text
    assert math.isnan(entry(math.nan, 0)["mean"])


def test_one_seed_reports_values_without_a_spread():
    from slopekp.eval.benchmark import _fmt, verdict

    one = {"mean": 0.5, "std": 0.0, "n": 1}
    assert _fmt(one) == "0.500" and _fmt({**one, "n": 3}) == "0.500 ± 0.000"
    s = {h: {"mask IoU (at 0.5)": {**one, "mean": v}, "rotation error median (°)": {**one, "mean": 50.0}}
         for h, v in (("keypoints", 0.7), ("svd", 0.5))}  # fmt: skip
    assert "One seed: no spread" in verdict(s)
