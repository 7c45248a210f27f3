"""The README's main job, end to end at a tiny size: data -> Stage I -> report, then a resumed rerun."""

import json

from slopekp.cli import main


def test_quickstart_end_to_end_and_resume(tmp_path, capsys):
    args = [
        "quickstart",
        f"out_dir={tmp_path}",
        "synth.n_train=3",
        "synth.n_test=1",
        "multiplex.num_az=4",
        "multiplex.num_el=1",
        "multiplex.steps=3",
    ]
    assert main(args) == 0
    report = tmp_path / "stage1" / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and metrics["num_hypotheses"] == 4
    assert metrics["has_ground_truth"] is True
    assert 0.0 <= metrics["rotation_error_closest"]["mean_deg"] <= metrics["rotation_error_best"]["mean_deg"]
    for name in ("README.md", "examples.png", "best_score_hist.png", "rotation_error_hist.png"):
        assert (report / name).stat().st_size > 0, name
    assert (tmp_path / "stage1" / "config.yaml").read_text().count("steps: 3") == 1
    store = (tmp_path / "stage1" / "multiplex.npz").read_bytes()
    # a rerun finds every image in the store and fits nothing again
    assert main(args) == 0
    assert (tmp_path / "stage1" / "multiplex.npz").read_bytes() == store
