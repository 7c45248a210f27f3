"""``slopekp eval`` on a tiny trained model: its metrics agree with an independent evaluation, it writes the
per-image table and the figures, and bad input gets a clear error (issue 10)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from slopekp.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pipeline):
    """A SynthBirds folder (4 train, 3 test images) and the Stage II and Stage III (svd) runs on it."""
    root = tmp_path_factory.mktemp("eval")
    data, s3 = tiny_pipeline(root, "svd", size=32, seed=5)
    return data, root, s3


def test_eval_writes_metrics_table_and_figures(trained, tmp_path, capsys):
    data, root, s3 = trained
    out = tmp_path / "ev"
    ck = root / "s3" / "checkpoints" / "last.pt"
    assert main(["eval", "--checkpoint", str(ck), "--data", str(data), "--out", str(out), "--gallery", "2"]) == 0
    printed = capsys.readouterr().out
    assert "svd head on 3 test images" in printed and "up to the depth mirror" in printed
    m = json.loads((out / "metrics.json").read_text())
    # the same protocol as Stage III's own report: the same numbers
    ref = s3.metrics["test"]
    assert m["num_images"] == ref["num_images"] == 3
    assert m["mask_iou_0.5"] == pytest.approx(ref["mask_iou_0.5"], abs=1e-6)
    assert m["rotation_error"]["median_deg"] == pytest.approx(ref["rotation_error"]["median_deg"], abs=1e-4)
    assert m["head"] == "svd" and m["split"] == "test"
    kt = m["keypoint_transfer"]
    assert kt["num_pairs"] == 1000 and kt["num_keypoints"] > 0 and 0 <= kt["pck"] <= 1
    assert "keypoint transfer PCK@0.1" in printed
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 3 and all((data / "images").as_posix() in r["image"].replace("\\", "/") for r in rows)
    assert np.mean([float(r["iou_0.5"]) for r in rows]) == pytest.approx(m["mask_iou_0.5"], abs=1e-4)
    errs = sorted(float(r["rotation_error_deg"]) for r in rows)
    assert errs[1] == pytest.approx(m["rotation_error"]["median_deg"], abs=1e-2)
    for r in rows:  # the ground-truth viewpoints in the table are those of the data's cameras
        assert -180 <= float(r["gt_azimuth_deg"]) <= 180 and -90 <= float(r["gt_elevation_deg"]) <= 90
    for name in ("rotation_error.png", "viewpoints.png", "worst.png", "examples.png"):
        im = Image.open(out / name)
        assert im.size[0] > 200 and im.size[1] > 150, name
        assert np.asarray(im.convert("L")).std() > 5, name  # not blank
    # rerunning the same command rewrites the same numbers; another split into the same folder is refused
    assert main(["eval", "--checkpoint", str(ck), "--data", str(data), "--out", str(out), "--gallery", "2"]) == 0
    assert json.loads((out / "metrics.json").read_text()) == m
    assert main(["eval", "--checkpoint", str(ck), "--data", str(data), "--out", str(out), "--split", "train"]) == 2
    assert "split" in capsys.readouterr().err


def test_viewpoints_round_trip_through_cameras():
    from slopekp.data.viewpoints import viewpoint_to_quat
    from slopekp.eval.report import _viewpoints_deg

    azelcr = np.radians([[30.0, 10.0, 5.0], [-120.0, -40.0, 0.0], [170.0, 60.0, -20.0]])
    q = torch.from_numpy(viewpoint_to_quat(azelcr))
    cams = torch.cat([torch.ones(3, 1, dtype=q.dtype), torch.zeros(3, 2, dtype=q.dtype), q], 1)
    np.testing.assert_allclose(_viewpoints_deg(cams), np.degrees(azelcr), atol=1e-6)


def test_eval_bad_input_is_named(trained, tmp_path, capsys):
    from slopekp.data.matfiles import write_cub_cleaned

    data, root, _ = trained
    ck = root / "s3" / "checkpoints" / "last.pt"
    base = ["eval", "--data", str(data)]
    # a Stage II checkpoint has no trained pose head
    s2 = root / "s2" / "checkpoints" / "last.pt"
    assert main([*base, "--checkpoint", str(s2), "--out", str(tmp_path / "a")]) == 2
    assert "has no trained pose head" in capsys.readouterr().err
    # another template than the model's
    assert main([*base, "--checkpoint", str(ck), "--template", "icosphere", "--out", str(tmp_path / "b")]) == 2
    assert "is not the one" in capsys.readouterr().err
    # a split the folder lacks, and an empty one
    assert main([*base, "--checkpoint", str(ck), "--split", "val", "--out", str(tmp_path / "c")]) == 2
    assert "val_cub_cleaned.mat" in capsys.readouterr().err
    write_cub_cleaned(data / "empty_cub_cleaned.mat", [])
    assert main([*base, "--checkpoint", str(ck), "--split", "empty", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "slopekp: error" in err
    # a damaged checkpoint
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ck.read_bytes()[:500])
    assert main([*base, "--checkpoint", str(bad), "--out", str(tmp_path / "e")]) == 2
    assert "bad.pt: truncated or corrupt" in capsys.readouterr().err
