"""``slopekp benchmark`` at a smoke size: every stage runs once per seed and head, the report's Table 1 holds the
mean ± std over seeds of the evaluations it points at, and a rerun reuses every stage."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from slopekp.cli import main


def test_benchmark_runs_every_head_and_seed_and_reports_them(tmp_path, capsys, smoke_overrides):
    from slopekp.data.synth.writer import generate_synthbirds
    from slopekp.eval.table1 import summarise, verdict

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


def test_heads_in_processes_train_as_they_would_alone(tmp_path, capsys, smoke_overrides):
    """``jobs=2``: the two heads train in two processes at once, each exactly as Stage III alone in this process."""
    import torch

    from slopekp.checkpoint import load_checkpoint
    from slopekp.config import load_config
    from slopekp.data.synth.writer import generate_synthbirds
    from slopekp.train.stage3 import run_stage3

    data = generate_synthbirds(tmp_path / "sb", n_train=4, n_test=2, size=32, seed=3, progress=False)
    out = tmp_path / "bench"
    overrides = [*smoke_overrides, "jobs=2"]
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--heads", "quaternion", "keypoints",
                 "--seeds", "1", "--pck-pairs", "10", *overrides]) == 0  # fmt: skip
    assert "in 2 processes" in capsys.readouterr().out
    cfg = load_config(None, overrides)
    alone = run_stage3(cfg, data, out / "seed0" / "stage2", tmp_path / "alone", "keypoints", progress=False)
    together = load_checkpoint(out / "seed0" / "stage3_keypoints" / "checkpoints" / "last.pt")["model"]
    weights = load_checkpoint(alone.checkpoint)["model"]
    assert weights.keys() == together.keys()
    assert all(torch.equal(weights[k], together[k]) for k in weights)


@pytest.mark.parametrize(("requested", "heads", "device", "expected"), [
    (1, 4, "cpu", 1), (3, 2, "cpu", 2), (2, 4, "cpu", 2), (0, 4, "cuda", 1), (5, 1, "cpu", 1),
])  # fmt: skip
def test_head_jobs(requested, heads, device, expected):
    import torch

    from slopekp.benchmark import head_jobs

    assert head_jobs(requested, heads, torch.device(device)) == expected


def test_head_jobs_zero_is_one_per_core_up_to_the_heads():
    import torch

    from slopekp.benchmark import head_jobs
    from slopekp.utils import usable_cores

    assert head_jobs(0, 64, torch.device("cpu")) == min(64, usable_cores())
    assert head_jobs(0, 1, torch.device("cpu")) == 1


def test_verdict_names_the_leader_and_calls_a_tie():
    from slopekp.eval.table1 import verdict

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
    from slopekp.eval.table1 import _fmt, verdict

    one = {"mean": 0.5, "std": 0.0, "n": 1}
    assert _fmt(one) == "0.500" and _fmt({**one, "n": 3}) == "0.500 ± 0.000"
    s = {h: {"mask IoU (at 0.5)": {**one, "mean": v}, "rotation error median (°)": {**one, "mean": 50.0}}
         for h, v in (("keypoints", 0.7), ("svd", 0.5))}  # fmt: skip
    assert "One seed: no spread" in verdict(s)


def test_benchmark_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    """Issue 20: a non-empty folder that the benchmark did not make (one holding thesis.txt) is refused before Stage I
    starts, and nothing in it changes."""
    from slopekp.data.synth.writer import generate_synthbirds

    data = generate_synthbirds(tmp_path / "sb", n_train=2, n_test=1, size=32, seed=2, progress=False)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("chapter 1")
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: folder is not empty and has no slopekp run manifest" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["thesis.txt"] and (out / "thesis.txt").read_text() == "chapter 1"


def test_benchmark_folder_gate_takes_its_own_and_older_folders(tmp_path):
    from slopekp.benchmark import prepare_benchmark_dir
    from slopekp.data.synth.writer import generate_synthbirds
    from slopekp.manifest import Manifest, OutputExistsError, RunMismatchError

    data = generate_synthbirds(tmp_path / "sb", n_train=2, n_test=1, size=32, seed=2, progress=False)
    other = generate_synthbirds(tmp_path / "sb2", n_train=3, n_test=1, size=32, seed=2, progress=False)
    out = tmp_path / "bench"
    assert prepare_benchmark_dir(out, data) == "new" and Manifest.load(out).command == "benchmark"
    assert prepare_benchmark_dir(out, data) == "resume"
    with pytest.raises(RunMismatchError, match="input data: fingerprint"):
        prepare_benchmark_dir(out, other)
    # a benchmark folder from before benchmarks had a manifest: Stage I's manifest, seed folders and the reports
    old = tmp_path / "old"
    (old / "seed0").mkdir(parents=True)
    Manifest("multiplex init").save(old / "stage1")
    (old / "report.md").write_text("table")
    assert prepare_benchmark_dir(old, data) == "resume" and (old / "report.md").read_text() == "table"
    assert Manifest.load(old).command == "benchmark"
    # ... but not when anything else is there
    (old / "manifest.json").unlink()
    (old / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        prepare_benchmark_dir(old, data)
