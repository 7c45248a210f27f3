"""The README's main job, end to end at a tiny size: data -> Stage I -> Stage II -> Stage III (two heads) ->
evaluation -> report, then a resumed rerun; and the ``--full`` preset kept in step with its YAML config."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from slopekp.cli import main
from slopekp.commands.quickstart import (
    FULL_DEFAULTS,
    QUICKSTART_DEFAULTS,
    QUICKSTART_HEADS,
    summary_table,
)
from slopekp.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_end_to_end_and_resume(tmp_path, capsys, smoke_overrides):
    args = ["quickstart", "--quiet", f"out_dir={tmp_path}", "synth.n_train=4", "synth.n_test=3", "synth.size=32",
            *smoke_overrides]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(report["runs"]) == sorted(QUICKSTART_HEADS) and report["seeds"] == [0]
    for head in QUICKSTART_HEADS:
        ev = json.loads((tmp_path / "seed0" / f"eval_{head}" / "metrics.json").read_text())
        assert ev["head"] == head and ev["num_images"] == 3
        assert report["runs"][head]["0"]["rotation_error"]["median_deg"] == ev["rotation_error"]["median_deg"]
        median = f"{ev['rotation_error']['median_deg']:.1f}°"
        row = next(ln for ln in printed.splitlines() if ln.startswith("rotation error, median"))
        assert median in row, (median, row)
    header = next(ln for ln in printed.splitlines() if "keypoints" in ln and "quaternion" in ln)
    assert header.index("keypoints") < header.index("quaternion")
    assert "report.md" in printed and (tmp_path / "report.md").stat().st_size > 0
    hint = next(ln for ln in printed.splitlines() if ln.startswith("your photos: slopekp predict"))
    assert Path(hint.split("--checkpoint ")[1].split()[0]).is_file()
    stage1 = json.loads((tmp_path / "stage1" / "report" / "metrics.json").read_text())
    assert stage1["num_images"] == 4 and stage1["num_hypotheses"] == 4
    store = (tmp_path / "stage1" / "multiplex.npz").read_bytes()
    ckpt = (tmp_path / "seed0" / "stage3_keypoints" / "checkpoints" / "last.pt").read_bytes()
    # a rerun finds every stage done: nothing is fitted or trained again
    assert main(args) == 0
    assert (tmp_path / "stage1" / "multiplex.npz").read_bytes() == store
    assert (tmp_path / "seed0" / "stage3_keypoints" / "checkpoints" / "last.pt").read_bytes() == ckpt
    assert json.loads((tmp_path / "report.json").read_text())["summary"] == report["summary"]


def test_full_preset_matches_the_synthbirds_config():
    """``quickstart --full`` runs what configs/synthbirds_train.yaml describes (the documented 2,000-image run)."""
    full = load_config(None, list(FULL_DEFAULTS))
    yaml = load_config(REPO / "configs" / "synthbirds_train.yaml", ["synth.n_train=2000", "synth.n_test=400"])
    for section in ("template", "render", "data", "multiplex", "model", "train"):
        assert dataclasses.asdict(getattr(full, section)) == dataclasses.asdict(getattr(yaml, section)), section
    assert full.synth.n_train == 2000 and full.synth.n_test == 400 and full.synth.deform == 1.0


def test_quickstart_defaults_are_valid_and_small():
    cfg = load_config(None, list(QUICKSTART_DEFAULTS))
    assert cfg.synth.n_train <= 500 and cfg.multiplex.image_size <= 32 and cfg.train.epochs <= 3


def test_summary_table_puts_the_heads_side_by_side():
    def entry(v):
        return {"mean": v, "std": 0.0, "n": 1}

    metrics = {"mask IoU (at 0.5)": entry(0.7), "mask IoU (soft)": entry(0.69), "rotation error median (°)":
               entry(31.25), "rotation error mean (°)": entry(40.0), "% < 30°": entry(48.0),
               "median up to the depth mirror (°)": entry(20.0), "PCK@0.1": entry(math.nan)}  # fmt: skip
    text = summary_table({"keypoints": metrics, "quaternion": {**metrics, "rotation error median (°)": entry(90.0)}},
                         ("keypoints", "quaternion"))  # fmt: skip
    lines = text.splitlines()
    assert lines[0].split() == ["keypoints", "quaternion"]
    median = next(ln for ln in lines if ln.startswith("rotation error, median"))
    assert median.split()[-2:] == ["31.2°", "90.0°"]
    pck = next(ln for ln in lines if ln.startswith("keypoint transfer"))
    assert pck.split()[-2:] == ["-", "-"]
    chamfer = next(ln for ln in lines if ln.startswith("shape: Chamfer"))  # not in these metrics at all
    assert chamfer.split()[-2:] == ["-", "-"]


@pytest.mark.parametrize("bad", ["train.epochs=-1", "synth.n_train=0"])
def test_quickstart_bad_settings_fail_before_writing(tmp_path, capsys, bad):
    assert main(["quickstart", f"out_dir={tmp_path / 'q'}", bad]) == 2
    assert "error" in capsys.readouterr().err and not (tmp_path / "q").exists()
