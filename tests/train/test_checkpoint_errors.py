"""Bad checkpoints get messages that say what is wrong without advising unsafe loading (issue 4), and a run whose
``last.pt`` a kill damaged resumes from the complete newer checkpoint that the interrupted save left beside it, or
says how to start over (issue 5)."""

from __future__ import annotations

import random
import shutil

import pytest
import torch

from slopekp import checkpoint as C
from slopekp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from slopekp.cli import main
from slopekp.manifest import Manifest


def _checkpoint(path, step: int = 7, manifest: Manifest | None = None):
    """A small real checkpoint (tensors, containers) of a Stage II run."""
    net = torch.nn.Linear(3, 2)
    return save_checkpoint(path, {
        "kind": "stage2", "head": "keypoints", "template_fingerprint": "fp", "config": "seed: 0\n",
        "manifest": (manifest or _manifest()).to_dict(), "model": net.state_dict(), "epoch": 0, "step": step,
        "batch_in_epoch": step, "metrics": {"total": 0.5},
    })  # fmt: skip


def _manifest(seed: int = 0) -> Manifest:
    return Manifest("train stage2", {"data": {"fingerprint": "dd", "path": "/d"}}, {"seed": seed})


def _error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message and "unpickling" not in message, message
    return message


def _one_error_line(capsys) -> str:
    """The single stderr line of a failed command, without its ``slopekp: error: `` prefix."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slopekp: error: "), err
    return lines[0].removeprefix("slopekp: error: ")


# ------------------------------------------------------------------------------------- what a bad file is


def _random_bytes(n: int = 4096) -> bytes:
    return b"\x13" + random.Random(0).randbytes(n - 1)  # (not the zip signature PK by chance)


def test_random_bytes_are_not_a_pytorch_file(tmp_path):
    p = tmp_path / "noise.pt"
    p.write_bytes(_random_bytes())
    assert _error(p) == f"{p}: not a slopekp checkpoint (not a PyTorch file)"
    (tmp_path / "notes.txt").write_text("hello")
    assert _error(tmp_path / "notes.txt") == f"{tmp_path / 'notes.txt'}: not a slopekp checkpoint (not a PyTorch file)"


def test_an_empty_file(tmp_path):
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    assert _error(p) == f"{p}: not a slopekp checkpoint (an empty file)"


def test_a_zip_archive_of_something_else(tmp_path):
    import zipfile

    p = tmp_path / "archive.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("notes.txt", "hello")
    assert _error(p) == f"{p}: not a slopekp checkpoint (a zip archive, not a PyTorch file)"


@pytest.mark.parametrize("keep", [0.5, 10])
def test_a_truncated_checkpoint_is_named_in_one_short_line(tmp_path, keep):
    data = _checkpoint(tmp_path / "last.pt").read_bytes()
    p = tmp_path / "trunc.pt"
    p.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    message = _error(p)
    assert message.startswith(f"{p}: truncated or corrupt checkpoint (RuntimeError: PytorchStreamReader failed")
    assert message.endswith(")") and "miniz" not in message and "If you are seeing" not in message, message


def _touch(path: str) -> None:
    """What a malicious checkpoint would call on loading: it leaves a marker file."""
    with open(path, "w") as f:
        f.write("ran")


class _Malicious:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _touch, (self.marker,)


class _Instance:
    """A class that unpickling would have to import and build."""


@pytest.mark.parametrize("how", ["zip", "zip, pickle protocol 4", "legacy format"])
def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, how):
    marker = tmp_path / "marker"
    p = tmp_path / "evil.pt"
    kwargs = {"pickle_protocol": 4} if "protocol 4" in how else {}
    if how == "legacy format":
        kwargs["_use_new_zipfile_serialization"] = False
    torch.save({"format": "slopekp.checkpoint/1", "model": {"w": torch.zeros(2)}, "x": _Malicious(marker)}, p,
               **kwargs)  # fmt: skip
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(p)
    message = str(info.value)
    assert message.startswith(f"{p}: refused: it would run code when loaded (it refers to ")
    assert "_touch" in message and "weights_only" not in message and "\n" not in message, message
    assert info.value.__cause__ is None  # torch's advice (load with weights_only=False) is not passed on
    assert not marker.exists()


def test_a_class_instance_is_refused(tmp_path):
    p = tmp_path / "obj.pt"
    torch.save({"format": "slopekp.checkpoint/1", "x": _Instance()}, p)
    message = _error(p)
    assert message.startswith(f"{p}: refused: it would run code when loaded (it refers to ")
    assert "_Instance" in message, message


def test_a_folder_is_named_as_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(empty) == f"{empty}: a folder, not a checkpoint file"
    run = tmp_path / "run"
    ck = _checkpoint(run / "checkpoints" / "last.pt")
    assert _error(run) == f"{run}: a folder, not a checkpoint file; it holds the checkpoint {ck}"
    folder = run / "checkpoints"
    assert _error(folder) == f"{folder}: a folder, not a checkpoint file; it holds the checkpoint {ck}"
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_slopekp_info_says_what_is_wrong_on_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    ck = _checkpoint(run / "checkpoints" / "last.pt")
    assert main(["info", str(run)]) == 2
    assert _one_error_line(capsys) == f"{run}: a folder, not a checkpoint file; it holds the checkpoint {ck}"
    noise = tmp_path / "noise.pt"
    noise.write_bytes(_random_bytes())
    assert main(["info", str(noise)]) == 2
    assert _one_error_line(capsys) == f"{noise}: not a slopekp checkpoint (not a PyTorch file)"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Malicious(tmp_path / "marker")}, evil)
    assert main(["info", str(evil)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"{evil}: refused: it would run code when loaded") and "weights_only" not in line
    assert not (tmp_path / "marker").exists()
    assert main(["info", str(ck)]) == 0


# ------------------------------------------------------------- the choice among last.pt and its temporaries


def _temporary(last, name: str = "k9x2"):
    return last.parent / f".{last.name}.{name}.tmp"


def test_resume_prefers_the_newest_intact_checkpoint_of_the_same_run(tmp_path):
    last = _checkpoint(tmp_path / "last.pt", step=68)
    newer = _temporary(last, "a")
    shutil.copy(_checkpoint(tmp_path / "s70.pt", step=70), newer)
    older = _temporary(last, "b")
    shutil.copy(_checkpoint(tmp_path / "s60.pt", step=60), older)
    foreign = _temporary(last, "c")
    shutil.copy(_checkpoint(tmp_path / "other.pt", step=90, manifest=_manifest(seed=1)), foreign)
    cut = _temporary(last, "d")
    cut.write_bytes((tmp_path / "s70.pt").read_bytes()[:300])
    said = []
    ck = C.resume_checkpoint(last, _manifest(), kind="stage2", template_fingerprint="fp", log=said.append)
    assert ck["step"] == 70 and load_checkpoint(last)["step"] == 70 and not newer.exists()
    assert said == [f"{last} holds step 68; resuming from step 70, the complete checkpoint that an interrupted save "
                    f"left in {newer.name} (now moved onto last.pt)"]  # fmt: skip
    assert older.exists() and foreign.exists() and cut.exists()  # left for the next save to remove
    # nothing newer: last.pt as it is, nothing said
    said.clear()
    assert C.resume_checkpoint(last, _manifest(), kind="stage2", log=said.append)["step"] == 70 and said == []


def test_resume_from_a_temporary_when_last_pt_is_missing_or_corrupt(tmp_path):
    last = tmp_path / "last.pt"
    assert C.resume_checkpoint(last, _manifest(), kind="stage2") is None  # a new run
    tmp = _temporary(last)
    shutil.copy(_checkpoint(tmp_path / "s3.pt", step=3), tmp)
    said = []
    assert C.resume_checkpoint(last, _manifest(), kind="stage2", log=said.append)["step"] == 3
    assert said and said[0].startswith(f"{last} is missing; resuming from step 3") and not tmp.exists()
    last.write_bytes(b"")
    shutil.copy(tmp_path / "s3.pt", tmp)
    said.clear()
    assert C.resume_checkpoint(last, _manifest(), kind="stage2", log=said.append)["step"] == 3
    assert said[0].startswith(f"{last} is truncated or corrupt (an empty file); resuming from step 3")


def test_resume_from_a_corrupt_last_pt_without_a_usable_temporary_names_force_new(tmp_path):
    last = _checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as info:
        C.resume_checkpoint(last, _manifest(), kind="stage2")
    message = str(info.value)
    assert message.startswith(f"{last}: truncated or corrupt (RuntimeError: PytorchStreamReader")
    assert "no complete newer copy" in message and "rerun the same command with --force-new" in message
    assert "run.old-<time>" in message
    tmp = _temporary(last)
    shutil.copy(_checkpoint(tmp_path / "other.pt", manifest=_manifest(seed=1)), tmp)
    with pytest.raises(CheckpointError, match=rf"temporary file\(s\) beside it \({tmp.name}\) are incomplete or of "
                                              "another run.*--force-new"):  # fmt: skip
        C.resume_checkpoint(last, _manifest(), kind="stage2")
    assert tmp.exists()  # nothing is deleted


# --------------------------------------------------------------------------------- a real run, killed


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, smoke_overrides):
    from slopekp.config import load_config
    from slopekp.data.synth.writer import generate_synthbirds
    from slopekp.train.stage1 import run_stage1

    root = tmp_path_factory.mktemp("ckpt_errors")
    data = generate_synthbirds(root / "sb", n_train=4, n_test=0, size=32, seed=3, deform=0.0, progress=False)
    over = [*smoke_overrides, "train.epochs=50"]
    run_stage1(load_config(overrides=over), data, root / "s1", progress=False, report=False)
    return data, root / "s1" / "multiplex.npz", over


@pytest.mark.parametrize("last_pt", ["truncated", "intact and older"])
def test_stage2_resumes_exactly_from_the_newer_temporary_of_a_killed_save(stage1, tmp_path, capsys, last_pt):
    """A kill between the temporary file's fsync and its rename: ``.last.pt.<random>.tmp`` holds step 2 while
    ``last.pt`` holds step 1 (and a truncated write of it, in the first case). The rerun moves the temporary onto
    last.pt, says so, and goes on exactly as the run that was not interrupted."""
    from slopekp.config import load_config
    from slopekp.train.stage2 import run_stage2

    data, mp, over = stage1
    cfg = load_config(overrides=over)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_stage2(cfg, data, mp, ref, progress=False, max_steps=2)
    run_stage2(cfg, data, mp, cut, progress=False, max_steps=1)
    last = cut / "checkpoints" / "last.pt"
    tmp = _temporary(last)
    shutil.copy(ref / "checkpoints" / "last.pt", tmp)  # the same run's step 2, complete
    if last_pt == "truncated":
        last.write_bytes(last.read_bytes()[:2000])
    capsys.readouterr()
    again = run_stage2(cfg, data, mp, cut, progress=False, max_steps=1)
    out = capsys.readouterr().out
    assert f"{last} {'is truncated or corrupt' if last_pt == 'truncated' else 'holds step 1'}" in out, out
    assert f"resuming from step 2, the complete checkpoint that an interrupted save left in {tmp.name}" in out, out
    assert again.steps == 3 and not tmp.exists()
    run_stage2(cfg, data, mp, ref, progress=False, max_steps=1)
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["step"] == b["step"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k in ("offsets", "exp_avg", "scores"):
        assert torch.equal(a["multiplex"][k], b["multiplex"][k]), k


def test_stage2_with_a_truncated_last_pt_alone_says_to_use_force_new(stage1, tmp_path, capsys):
    from slopekp.config import load_config
    from slopekp.train.stage2 import run_stage2

    data, mp, over = stage1
    out = tmp_path / "run"
    run_stage2(load_config(overrides=over), data, mp, out, progress=False, max_steps=1)
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:2000])
    cut = _temporary(last)
    cut.write_bytes(last.read_bytes()[:1000])  # a save killed mid-write: incomplete too
    cmd = ["train", "--stage", "2", "--data", str(data), "--multiplex", str(mp), "--out", str(out), "--quiet",
           "--max-steps", "1", *over]  # fmt: skip
    capsys.readouterr()
    assert main(cmd) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"{last}: truncated or corrupt (RuntimeError: PytorchStreamReader"), line
    assert f"the temporary file(s) beside it ({cut.name}) are incomplete" in line, line
    assert "rerun the same command with --force-new to start over" in line, line
    assert cut.exists() and len(last.read_bytes()) == 2000  # nothing was touched
    assert main([*cmd, "--force-new"]) == 0
    assert torch.load(last, weights_only=True)["step"] == 1
    assert len(list(tmp_path.glob("run.old-*"))) == 1
