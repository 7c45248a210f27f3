"""One output-folder rule for every command that writes a folder (issue 20): a command writes into ``--out`` only
when it is empty, missing, or made by the same command; a user's folder is refused with a message that offers
``--overwrite``, and the user's file survives. ``video`` has its own test in ``tests/video``."""

from __future__ import annotations

import pytest

from slopekp.cli import main


def _commands(m, tmp_path) -> dict[str, list[str]]:
    """Every folder-writing command, as a user would call it, with the tiny model's data and checkpoints."""
    root = m.checkpoint.parent.parent.parent  # the tiny model's folder: sb/, s1/, s2/, s3/
    smoke = ["multiplex.num_az=2", "multiplex.num_el=1", "multiplex.steps=2", "multiplex.image_size=16"]
    photo = next((m.data / "images").rglob("*.jpg"))
    return {
        "data synth": ["data", "synth", "--n-train", "2", "--n-test", "1", "--size", "32", "--no-progress"],
        "data synth-video": ["data", "synth-video", "--n-seq", "1", "--min-frames", "2", "--max-frames", "2",
                             "--height", "48", "--no-progress"],
        "multiplex init": ["multiplex", "init", "--data", str(m.data), "--quiet", *smoke],
        "train --stage 2": ["train", "--stage", "2", "--data", str(m.data), "--multiplex",
                            str(root / "s1" / "multiplex.npz"), "--quiet", "--max-steps", "1"],
        "train --stage 3": ["train", "--stage", "3", "--head", "quaternion", "--data", str(m.data), "--from",
                            str(root / "s2"), "--quiet", "--max-steps", "1"],
        "eval": ["eval", "--checkpoint", str(m.checkpoint), "--data", str(m.data), "--pck-pairs", "0"],
        "benchmark": ["benchmark", "--data", str(m.data), "--quiet", "--seeds", "1"],
        "predict": ["predict", str(photo), "--checkpoint", str(m.checkpoint), "--quiet", "--turntable-frames", "0"],
    }


COMMANDS = ["data synth", "data synth-video", "multiplex init", "train --stage 2", "train --stage 3", "eval",
            "benchmark", "predict"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_a_users_file_in_out_survives(command, tiny_model, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    args = _commands(tiny_model, tmp_path)[command]
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
