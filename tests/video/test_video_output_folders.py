"""``slopekp video`` writes only into a folder it made itself (slopekp.manifest's gate), and ``slopekp video score``
never replaces a results.json / results.md without ``--overwrite``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from video_reference import write_davis

from slopekp.cli import main


def _labels() -> list[np.ndarray]:
    """Four 48x64 frames with two objects."""
    out = []
    for t in range(4):
        lab = np.zeros((48, 64), np.uint8)
        lab[10:30, 5 + 2 * t : 30 + 2 * t] = 1
        lab[32:44, 40:60] = 2
        out.append(lab)
    return out


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    return write_davis(tmp_path_factory.mktemp("davis"), _labels())


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


def _video(tiny_model, davis, out, *extra):
    return ["video", "--checkpoint", str(tiny_model.checkpoint), "--data", str(davis), "--boxes", "gt", "--out",
            str(out), "--quiet", "--no-video", *extra]  # fmt: skip


def test_video_refuses_a_folder_it_did_not_make(tiny_model, davis, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, cap = _run(_video(tiny_model, davis, out), capsys)
    assert code == 2
    assert cap.err.startswith(f"slopekp: error: {out}: folder is not empty") and "--overwrite" in cap.err, cap.err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written, nothing removed
    assert (out / "notes.txt").read_text() == "my notes"
    # --overwrite empties it first
    code, cap = _run(_video(tiny_model, davis, out, "--overwrite"), capsys)
    assert code == 0, cap.err
    assert not (out / "notes.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "masks", "results.json", "results.md"]
    assert json.loads((out / "manifest.json").read_text())["command"] == "video"


def test_video_reruns_in_its_own_folder_and_names_other_settings(tiny_model, davis, tmp_path, capsys):
    out = tmp_path / "run"
    code, cap = _run(_video(tiny_model, davis, out), capsys)
    assert code == 0, cap.err
    first = json.loads((out / "results.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["video.boxes"] == "gt" and manifest["settings"]["video.sequences"] == ["hand"]
    assert set(manifest["inputs"]) == {"checkpoint", "data"}
    # the same settings: the run is redone in place
    (out / "results.json").write_text("{}")
    code, cap = _run(_video(tiny_model, davis, out), capsys)
    assert code == 0, cap.err
    assert json.loads((out / "results.json").read_text())["overall"] == first["overall"]
    # other settings: refused, naming the difference and the ways on
    code, cap = _run(_video(tiny_model, davis, out, "--smooth", "0.5"), capsys)
    assert code == 2 and f"{out} holds a run of `slopekp video`" in cap.err
    assert "video.smoothing: 0.0 in the folder, 0.5 now" in cap.err and "--overwrite" in cap.err
    assert "--force-new" in cap.err
    assert json.loads((out / "manifest.json").read_text())["settings"]["video.smoothing"] == 0.0
    # --force-new keeps the old run aside
    code, cap = _run(_video(tiny_model, davis, out, "--smooth", "0.5", "--force-new"), capsys)
    assert code == 0, cap.err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "results.json").is_file()
    assert json.loads((out / "results.json").read_text())["smoothing"] == 0.5


def test_video_keeps_its_inputs_out_of_the_output_folder(tiny_model, davis, tmp_path, capsys):
    out = tmp_path / "out"
    boxes = out / "lwl"  # box masks inside OUT: --overwrite or --force-new would take them away
    boxes.mkdir(parents=True)
    (boxes / "hand").mkdir()
    src = davis / "DAVIS" / "Annotations" / "480p" / "hand"
    for p in src.iterdir():
        (boxes / "hand" / p.name).write_bytes(p.read_bytes())
    args = _video(tiny_model, davis, out, "--overwrite")
    args[args.index("gt")] = f"masks:{boxes}"
    code, cap = _run(args, capsys)
    assert code == 2 and "is, or contains, the input" in cap.err, cap.err
    assert len(list((boxes / "hand").iterdir())) == 4


def test_score_never_replaces_tables_it_was_not_asked_to(tiny_model, davis, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(_video(tiny_model, davis, out), capsys)[0] == 0
    video_results = (out / "results.json").read_bytes()
    score = ["video", "score", "--gt", str(davis), "--pred", str(out / "masks")]
    # into the run's folder: its results.json is not replaced
    code, cap = _run([*score, "--out", str(out)], capsys)
    assert code == 2
    assert f"{out / 'results.json'}: exists; pass --overwrite to replace it" in cap.err, cap.err
    assert (out / "results.json").read_bytes() == video_results
    assert not (out / "results.md").read_text().startswith("# J and F scores of")
    # by default into PRED: written the first time, refused the second, replaced with --overwrite
    code, cap = _run(score, capsys)
    assert code == 0, cap.err
    assert json.loads((out / "masks" / "results.json").read_text())["command"] == "video score"
    (out / "masks" / "results.md").write_text("edited")
    code, cap = _run(score, capsys)
    assert code == 2 and f"{out / 'masks' / 'results.json'}: exists" in cap.err
    assert "--pred folder" in cap.err
    assert (out / "masks" / "results.md").read_text() == "edited"
    code, cap = _run([*score, "--overwrite"], capsys)
    assert code == 0, cap.err
    assert (out / "masks" / "results.md").read_text().startswith("# J and F scores of")
    # a results.md alone is protected as well, and nothing is created in a new --out before the scoring works
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "results.md").write_text("mine")
    code, cap = _run([*score, "--out", str(lone)], capsys)
    assert code == 2 and f"{lone / 'results.md'}: exists" in cap.err
    assert sorted(p.name for p in lone.iterdir()) == ["results.md"]
    # the check comes before the scoring (here a --pred without the sequence would fail only after it)
    code, cap = _run(["video", "score", "--gt", str(davis), "--pred", str(tmp_path), "--out", str(lone)], capsys)
    assert code == 2 and f"{lone / 'results.md'}: exists" in cap.err, cap.err
    code, cap = _run(["video", "score", "--gt", str(davis), "--pred", str(tmp_path), "--out", str(tmp_path / "new")],
                     capsys)  # fmt: skip
    assert code == 2 and "no predicted masks" in cap.err
    assert not (tmp_path / "new").exists()
    # with --overwrite, into the run's folder: replaced
    code, cap = _run([*score, "--out", str(out), "--overwrite"], capsys)
    assert code == 0, cap.err
    assert json.loads((out / "results.json").read_text())["command"] == "video score"


def test_other_data_or_box_masks_are_other_inputs(tiny_model, davis, tmp_path, capsys):
    import shutil

    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(davis, data)
    out = tmp_path / "run"
    masks = data / "DAVIS" / "Annotations" / "480p"
    base = _video(tiny_model, data, out)
    base[base.index("gt")] = f"masks:{masks}"
    code, cap = _run(base, capsys)
    assert code == 0, cap.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["inputs"]) == {"checkpoint", "data", "box_masks"}
    assert manifest["settings"]["video.boxes"] == "masks"
    assert _run(base, capsys)[0] == 0  # unchanged: the same run
    # one annotation changed (the box masks are the same files here): both fingerprints differ
    png = masks / "hand" / "00002.png"
    im = Image.open(png)
    lab = np.array(im)
    lab[0, 0] = 1
    edited = Image.fromarray(lab, "P")
    edited.putpalette(im.getpalette())
    edited.save(png)
    code, cap = _run(base, capsys)
    assert code == 2 and "input data: fingerprint" in cap.err and "input box_masks: fingerprint" in cap.err, cap.err
