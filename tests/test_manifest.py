"""Run manifests and the output-folder gate (issue 8): resume only what was made from the same inputs and
settings, never write into somebody else's folder, and leave no stale file behind after --overwrite."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from slopekp.cli import main
from slopekp.manifest import (
    MANIFEST_NAME,
    Manifest,
    OutputExistsError,
    RunMismatchError,
    cmr_data_fingerprint,
    prepare_output_dir,
    prepare_output_file,
)


def _m(**settings) -> Manifest:
    return Manifest("demo", inputs={"data": {"fingerprint": "aa", "path": "/d"}}, settings=settings)


# ------------------------------------------------------------------------------------------- the gate
def test_new_resume_and_mismatch(tmp_path):
    out = tmp_path / "run"
    assert prepare_output_dir(out, _m(lr=0.1, steps=5), log=lambda s: None) == "new"
    assert json.loads((out / MANIFEST_NAME).read_text())["settings"] == {"lr": 0.1, "steps": 5}
    (out / "result.txt").write_text("old")
    assert prepare_output_dir(out, _m(lr=0.1, steps=5)) == "resume"
    with pytest.raises(RunMismatchError) as e:
        prepare_output_dir(out, _m(lr=0.1, steps=50))
    msg = str(e.value)
    assert "steps: 5 in the folder, 50 now" in msg and "lr" not in msg.split("\n", 1)[1].split("Rerun")[0]
    assert "--force-new" in msg
    other_data = Manifest(
        "demo", inputs={"data": {"fingerprint": "bb", "path": "/e"}}, settings={"lr": 0.1, "steps": 5}
    )
    with pytest.raises(RunMismatchError, match=r"input data: fingerprint aa \(/d\) in the folder, bb \(/e\) now"):
        prepare_output_dir(out, other_data)
    assert (out / "result.txt").read_text() == "old"  # nothing was touched by the refusals


def test_force_new_moves_the_old_run_aside(tmp_path):
    out = tmp_path / "run"
    prepare_output_dir(out, _m(steps=5))
    (out / "result.txt").write_text("old")
    said = []
    assert prepare_output_dir(out, _m(steps=50), force_new=True, log=said.append) == "new"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "result.txt").read_text() == "old"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]
    assert str(aside[0]) in said[0]
    # a second move in the same second gets its own name
    prepare_output_dir(out, _m(steps=7), force_new=True, log=said.append)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]) == 2


def test_restart_on_mismatch_is_for_self_contained_demos(tmp_path):
    out = tmp_path / "run"
    prepare_output_dir(out, _m(seed=0))
    said = []
    assert prepare_output_dir(out, _m(seed=5), restart_on_mismatch=True, log=said.append) == "new"
    assert "seed: 0 in the folder, 5 now" in said[0]
    assert Manifest.load(out).settings == {"seed": 5}
    assert any(p.name.startswith("run.old-") for p in tmp_path.iterdir())


def test_foreign_folders_are_refused_then_emptied_by_overwrite(tmp_path):
    out = tmp_path / "somebody"
    (out / "sub").mkdir(parents=True)
    (out / "anno_train.mat").write_bytes(b"precious")
    (out / "sub" / "x.jpg").write_bytes(b"img")
    with pytest.raises(OutputExistsError, match="no slopekp run manifest.*--overwrite"):
        prepare_output_dir(out, _m())
    assert (out / "anno_train.mat").read_bytes() == b"precious"
    # a folder of another command is somebody else's too
    made = tmp_path / "made"
    prepare_output_dir(made, Manifest("other"))
    with pytest.raises(OutputExistsError, match="made by `slopekp other`"):
        prepare_output_dir(made, _m())
    assert prepare_output_dir(out, _m(), overwrite=True, log=lambda s: None) == "new"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]
    # an empty folder is fine, a file is not
    (tmp_path / "empty").mkdir()
    assert prepare_output_dir(tmp_path / "empty", _m()) == "new"
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        prepare_output_dir(tmp_path / "f", _m())


def test_output_file_gate(tmp_path):
    p = tmp_path / "a" / "b.png"
    assert prepare_output_file(p) == p and p.parent.is_dir()
    p.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        prepare_output_file(p)
    assert prepare_output_file(p, overwrite=True) == p
    with pytest.raises(OutputExistsError, match="is a folder"):
        prepare_output_file(tmp_path / "a")
    with pytest.raises(OutputExistsError, match="is a file"):
        prepare_output_file(p / "c.png")


def test_manifest_roundtrip_and_bad_files(tmp_path):
    m = _m(steps=5, size=(1, 2))
    m.save(tmp_path)
    back = Manifest.load(tmp_path)
    assert back.differences(m) == [] and back.argv == m.argv and back.version == m.version
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a slopekp run manifest"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{")
    with pytest.raises(ValueError, match="unreadable run manifest"):
        Manifest.load(tmp_path)
    assert Manifest.load(tmp_path / "nowhere") is None


# ------------------------------------------------------------------------------------ data fingerprints
@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    from slopekp.data.synth.writer import generate_synthbirds

    root = tmp_path_factory.mktemp("fp")
    kw = dict(n_train=3, n_test=1, size=32, deform=0.0, progress=False)
    return (
        generate_synthbirds(root / "a", seed=1, **kw),
        generate_synthbirds(root / "a_again", seed=1, **kw),
        generate_synthbirds(root / "b", seed=2, **kw),
    )


def test_data_fingerprint_follows_content_not_dates_or_paths(tiny_synth):
    a, a_again, b = tiny_synth
    fa = cmr_data_fingerprint(a, "train")
    assert fa["fingerprint"] == cmr_data_fingerprint(a_again, "train")["fingerprint"]  # .mat headers hold dates
    assert fa["path"] == str(a.resolve()) and fa["split"] == "train"
    assert fa["fingerprint"] != cmr_data_fingerprint(b, "train")["fingerprint"]
    assert fa["fingerprint"] != cmr_data_fingerprint(a, "test")["fingerprint"]
    with pytest.raises(FileNotFoundError, match="no val_cub_cleaned.mat"):
        cmr_data_fingerprint(a, "val")


def test_data_fingerprint_sees_an_added_image(tiny_synth, tmp_path):
    a = shutil.copytree(tiny_synth[0], tmp_path / "copy")
    before = cmr_data_fingerprint(a, "train")["fingerprint"]
    jpg = next(a.rglob("*.jpg"))
    shutil.copy(jpg, jpg.with_name("extra.jpg"))
    assert cmr_data_fingerprint(a, "train")["fingerprint"] != before


# ------------------------------------------------------------------------------------------ commands
SYNTH = ["data", "synth", "--n-train", "3", "--n-test", "1", "--size", "32", "--no-progress"]


def test_data_synth_never_clobbers(tmp_path, capsys):
    out = tmp_path / "sb"
    assert main([*SYNTH, "--out", str(out)]) == 0
    def contents():  # .mat files carry their creation time in the first 128 bytes
        return {p.relative_to(out): p.read_bytes()[128 if p.suffix == ".mat" else 0 :]
                for p in out.rglob("*") if p.is_file() and p.suffix != ".json"}  # fmt: skip

    first = contents()
    # the same command again regenerates the same files
    assert main([*SYNTH, "--out", str(out)]) == 0
    again = contents()
    assert again == first
    # other options: refused with the difference, nothing touched
    capsys.readouterr()
    assert main([*SYNTH, "--out", str(out), "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "synth.seed: 0 in the folder, 5 now" in err and "Traceback" not in err
    # an older/foreign folder with extra images: refused; --overwrite leaves no stale file
    stale = out / "images" / "stale.jpg"
    stale.write_bytes(b"old")
    (out / MANIFEST_NAME).unlink()
    assert main([*SYNTH, "--out", str(out), "--n-train", "2"]) == 2
    assert "no slopekp run manifest" in capsys.readouterr().err and stale.exists()
    assert main([*SYNTH, "--out", str(out), "--n-train", "2", "--overwrite"]) == 0
    assert not stale.exists()
    assert len(list((out / "images").rglob("*.jpg"))) == 3  # 2 train + 1 test, nothing left of the first run


def test_a_synth_folder_of_the_previous_release_is_the_same_run(tmp_path, capsys):
    """A ``data synth`` folder made before the generator's settings became one ``SynthOptions``
    (``tests/data/synth_manifest_0.1.0.json``, written by slopekp 0.1.0 for the options below) is the same run for
    today's code: the settings' keys and values are unchanged, so the gate resumes it and the command regenerates
    it in place instead of refusing it."""
    from pathlib import Path

    from slopekp.commands.data_images import synth_manifest
    from slopekp.data.synth.options import SynthOptions

    fixture = Path(__file__).parent / "data" / "synth_manifest_0.1.0.json"
    old = Manifest.from_dict(json.loads(fixture.read_text()), str(fixture))
    now = synth_manifest(SynthOptions(n_train=3, n_test=1, size=32, seed=2, deform=0.5, occlusion_prob=0.3))
    assert json.dumps(now.settings) == json.dumps(old.settings)  # same keys, order, values and types
    assert old.differences(now) == [] and now.command == old.command
    out = tmp_path / "sb"
    out.mkdir()
    shutil.copy(fixture, out / MANIFEST_NAME)
    (out / "meta.json").write_text("{}")  # a finished run (its result file)
    assert prepare_output_dir(out, now, log=lambda s: None) == "resume"
    # through the command: other options are refused, the same ones regenerate the folder in place
    argv = [*SYNTH, "--out", str(out), "--seed", "2", "--deform", "0.5", "--occlusion-prob", "0.3"]
    assert main([*argv, "--size", "48"]) == 2
    assert "synth.size: 32 in the folder, 48 now" in capsys.readouterr().err
    assert main(argv) == 0
    assert Manifest.load(out).settings == old.settings
    assert len(list((out / "images").rglob("*.jpg"))) == 4


def test_data_synth_refuses_a_real_cmr_folder(tmp_path, capsys):
    sfm = tmp_path / "sfm"
    sfm.mkdir()
    (sfm / "anno_train.mat").write_bytes(b"real SfM cameras")
    assert main([*SYNTH, "--out", str(sfm)]) == 2
    assert (sfm / "anno_train.mat").read_bytes() == b"real SfM cameras"
    assert str(sfm) in capsys.readouterr().err


TINY = ["multiplex.num_az=2", "multiplex.num_el=1", "multiplex.steps=2", "multiplex.image_size=16"]


def test_multiplex_init_on_other_data_is_refused(tiny_synth, tmp_path, capsys):
    a, _, b = tiny_synth
    out = tmp_path / "run"
    def init(data, *extra):
        flags = [x for x in extra if x.startswith("--")]
        overrides = [x for x in extra if not x.startswith("--")]
        return main(["multiplex", "init", "--data", str(data), "--out", str(out), "--quiet", "--no-report", *flags,
                     *TINY, *overrides])  # fmt: skip

    assert init(a) == 0
    capsys.readouterr()
    assert init(b) == 2
    err = capsys.readouterr().err
    assert "input data: fingerprint" in err and str(b.resolve()) in err and "--force-new" in err
    assert init(a, "multiplex.steps=50") == 2
    assert "multiplex.steps: 2 in the folder, 50 now" in capsys.readouterr().err
    # the batch size does not change results (Stage I is batch-invariant): resuming with another is fine
    assert init(a, "multiplex.batch_size=1") == 0
    assert "0 image(s) fitted (3 in the store)" in capsys.readouterr().out
    # --force-new: the old run is kept aside, the new one fitted on the other data
    assert init(b, "--force-new") == 0
    assert "3 image(s) fitted (3 in the store)" in capsys.readouterr().out
    assert len(list(tmp_path.glob("run.old-*/multiplex.npz"))) == 1
    assert Manifest.load(out).inputs["data"]["path"] == str(b.resolve())


def test_quickstart_with_another_seed_fits_fresh_cameras(tmp_path, capsys, smoke_overrides):
    args = ["quickstart", "--quiet", f"out_dir={tmp_path / 'qs'}", "synth.n_train=2", "synth.n_test=1",
            "synth.size=32", *smoke_overrides, *TINY]  # fmt: skip
    assert main(args) == 0
    store = tmp_path / "qs" / "stage1" / "multiplex.npz"
    with np.load(store) as z:
        first = z["cameras"].copy()
    assert main([*args, "seed=5"]) == 0
    out = capsys.readouterr().out
    assert "seed: 0 in the folder, 5 now" in out
    with np.load(store) as z:
        assert not np.allclose(z["cameras"], first)  # fitted afresh on the new images
    old = list(tmp_path.glob("qs.old-*/stage1/multiplex.npz"))
    assert len(old) == 1
    with np.load(old[0]) as z:
        np.testing.assert_array_equal(z["cameras"], first)  # the first run is kept, intact


def test_data_synth_video_never_clobbers(tmp_path, capsys):
    out = tmp_path / "v"
    argv = ["data", "synth-video", "--out", str(out), "--n-seq", "1", "--height", "48", "--min-frames", "3",
            "--max-frames", "3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "synth_video.seed: 0 in the folder, 3 now" in err and "--overwrite" in err
    stale = out / "stale.txt"
    stale.write_text("x")
    assert main([*argv, "--seed", "3", "--overwrite"]) == 0 and not stale.exists()


def test_overwrite_never_deletes_the_input_data(tiny_synth, tmp_path, capsys):
    data = shutil.copytree(tiny_synth[0], tmp_path / "AA")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for out in (data, tmp_path):  # the data folder itself, or a folder holding it
        argv = ["multiplex", "init", "--data", str(data), "--out", str(out), "--quiet", "--overwrite", *TINY]
        assert main(argv) == 2
        assert "is, or contains, the input" in capsys.readouterr().err
        assert main([*argv[:-len(TINY)], "--force-new", *TINY]) == 2
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_a_run_that_failed_before_its_first_result_does_not_block_the_fixed_rerun(tiny_synth, tmp_path, capsys):
    data = shutil.copytree(tiny_synth[0], tmp_path / "data")
    jpgs = sorted((data / "images").rglob("synth_train_*.jpg"))
    good = jpgs[0].read_bytes()
    jpgs[0].write_bytes(good[: len(good) // 3])  # the first image is truncated: Stage I fails on its batch
    out = tmp_path / "run"
    argv = ["multiplex", "init", "--data", str(data), "--out", str(out), "--quiet", "--no-report", *TINY,
            "multiplex.batch_size=8"]  # fmt: skip
    assert main(argv) == 2
    assert (out / MANIFEST_NAME).exists() and not (out / "multiplex.npz").exists()
    jpgs[0].write_bytes(good)  # fixed: the data fingerprint is the same again, but even another one is fine
    (data / "images" / "extra.txt").write_text("changes the image listing")
    capsys.readouterr()
    assert main(argv) == 0
    assert "no results yet: starting over" in capsys.readouterr().out


def test_resume_without_report_removes_the_stale_report(tiny_synth, tmp_path):
    a = tiny_synth[0]
    out = tmp_path / "run"
    base = ["multiplex", "init", "--data", str(a), "--out", str(out), "--quiet"]
    assert main([*base, *TINY, "data.max_items=1"]) == 0
    assert (out / "report" / "metrics.json").exists()
    assert main([*base, "--no-report", *TINY, "data.max_items=3"]) == 0
    assert not (out / "report").exists()


def test_synth_seed_checked_before_the_folder_is_made_and_video_folders_honour_the_umask(tmp_path, capsys):
    import os
    import stat

    assert main([*SYNTH, "--out", str(tmp_path / "sz"), "--seed", "-1"]) == 2
    assert "seed must be an integer in [0, 2**32 - 1], got -1" in capsys.readouterr().err
    assert not (tmp_path / "sz").exists()
    old = os.umask(0o022)
    try:
        assert main(["data", "synth-video", "--out", str(tmp_path / "v"), "--n-seq", "1", "--height", "48",
                     "--min-frames", "2", "--max-frames", "2", "--no-progress"]) == 0  # fmt: skip
    finally:
        os.umask(old)
    seq = next((tmp_path / "v").rglob("birds-000"))
    assert stat.S_IMODE(seq.stat().st_mode) == 0o755


def test_a_setting_added_later_counts_as_unchanged_at_its_default():
    """A folder made before ``train.mirror_by_appearance`` existed resumes when it is asked for at its default
    (False), not when it is turned on; a key that is not a config field, or that the folder has and the new run
    lacks, still counts."""
    from slopekp.manifest import config_defaults

    assert config_defaults()["train.mirror_by_appearance"] is False and config_defaults()["seed"] == 0
    def made(**settings):
        return Manifest("train stage3 keypoints", settings={"seed": 0, **settings})

    old = made()
    assert old.differences(made(**{"train.mirror_by_appearance": False})) == []
    diff = old.differences(made(**{"train.mirror_by_appearance": True}))
    assert diff == ["train.mirror_by_appearance: '<unset>' in the folder, True now"]
    assert old.differences(made(heads=["svd"]))
    newer = made(**{"train.mirror_by_appearance": False})
    assert newer.differences(old) == ["train.mirror_by_appearance: False in the folder, '<unset>' now"]


def test_a_setting_added_later_with_a_new_default_counts_as_its_earlier_value():
    """``multiplex.best_iterate`` came with the default True, but Stage I stores made before it ended each
    hypothesis at its last iterate: their manifests stand for False (``EARLIER_DEFAULTS``), so such a folder resumes
    only when False is asked for."""
    from slopekp.config import EARLIER_DEFAULTS
    from slopekp.manifest import config_defaults

    assert EARLIER_DEFAULTS["multiplex.best_iterate"] is False and config_defaults()["multiplex.best_iterate"] is True
    old = Manifest("multiplex init", settings={"seed": 0})
    assert old.differences(Manifest("multiplex init", settings={"seed": 0, "multiplex.best_iterate": False})) == []
    diff = old.differences(Manifest("multiplex init", settings={"seed": 0, "multiplex.best_iterate": True}))
    assert diff == ["multiplex.best_iterate: False in the folder, True now"]
