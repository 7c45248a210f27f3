"""Expected failures of the ``slopekp`` CLI: one ``slopekp: error: ...`` line on stderr, exit 2, no traceback
(unless ``--debug``)."""

import errno
import os

import pytest
import torch

import slopekp.mesh
from slopekp.cli import main

ROOT = os.geteuid() == 0


def _one_error_line(capsys) -> str:
    """The single stderr line of a failed command, without its ``slopekp: error: `` prefix."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("slopekp: error: "), err
    return lines[0].removeprefix("slopekp: error: ")


def _export(out, *extra) -> list[str]:
    return ["mesh", "export", "--template", "icosphere", "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------- output paths
def test_export_refuses_an_existing_file(tmp_path, capsys):
    out = tmp_path / "a.obj"
    out.write_text("keep me")
    assert main(_export(out)) == 2
    assert _one_error_line(capsys) == f"{out}: exists; pass --overwrite to replace it, or choose another name"
    assert out.read_text() == "keep me"
    assert main(_export(out, "--overwrite")) == 0
    assert out.read_text().startswith("# slopekp mesh export")


def test_export_refuses_existing_texture_companions(tmp_path, capsys):
    (tmp_path / "a.png").write_text("keep me")
    assert main(_export(tmp_path / "a.obj", "--checker", "4")) == 2
    assert _one_error_line(capsys).startswith(f"{tmp_path / 'a.png'}: exists; pass --overwrite")
    assert not (tmp_path / "a.obj").exists()


def test_export_to_a_folder(tmp_path, capsys):
    out = tmp_path / "dir.obj"
    out.mkdir()
    assert main(_export(out)) == 2
    assert _one_error_line(capsys) == f"{out}: is a folder; give a file name for the output"
    assert main(_export(out, "--overwrite")) == 2
    assert _one_error_line(capsys) == f"{out}: is a folder; give a file name for the output"


def test_export_below_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    out = tmp_path / "f" / "a.obj"
    assert main(_export(out)) == 2
    assert _one_error_line(capsys) == f"{out}: cannot create it, {tmp_path / 'f'} is a file"


@pytest.mark.skipif(ROOT, reason="root ignores file permissions (the mapping is tested by the next test)")
def test_export_into_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(_export(ro / "a.obj")) == 2
        assert _one_error_line(capsys) == f"{ro / 'a.obj'}: Permission denied"
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize(
    "exc, want",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/out/a.obj"), "/data/out/a.obj: Permission denied"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/data/a.obj"), "/data/a.obj: Is a directory"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/a.obj"), "/f/a.obj: Not a directory"),
        (FileExistsError(errno.EEXIST, "File exists", "/data/f"), "/data/f: File exists"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/d/a.obj"), "/d/a.obj: No space left on device"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), "/a -> /b: Invalid cross-device link"),
        (FileNotFoundError("/data/x: no train_cub_cleaned.mat"), "/data/x: no train_cub_cleaned.mat"),
        (MemoryError(), "out of memory while running `slopekp mesh export`; try a smaller size"),
        (
            MemoryError("Unable to allocate 160. GiB for an array with shape (3, 100000, 200000)"),
            "out of memory while running `slopekp mesh export` (Unable to allocate 160. GiB for an array with "
            "shape (3, 100000, 200000)); try a smaller size",
        ),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 160000000000 bytes. Error code 12 (Cannot allocate memory)"),
            "out of memory while running `slopekp mesh export`; try a smaller size",
        ),
    ],
)
def test_os_and_memory_errors_are_one_line(tmp_path, capsys, monkeypatch, exc, want):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(slopekp.mesh, "export_mesh", fail)
    assert main(_export(tmp_path / "a.obj")) == 2
    assert _one_error_line(capsys) == want
    with pytest.raises(type(exc)):  # --debug: the traceback shows
        main(["--debug", *_export(tmp_path / "a.obj")])


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(slopekp.mesh, "export_mesh", bug)
    with pytest.raises(TypeError):
        main(_export(tmp_path / "a.obj"))


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("name", ["foo", "meta", "mps"])
def test_unknown_or_unavailable_device(capsys, monkeypatch, tmp_path, name):
    """Unknown names fail when the config is read; a known device this machine lacks fails when a command is
    about to use it, before it writes anything (a config naming it stays loadable: `config show` prints it)."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    out = tmp_path / "out"
    assert main(["multiplex", "init", "--data", str(tmp_path), "--out", str(out), f"device={name}"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("device ") and repr(name) in line
    assert not out.exists()
    assert main(["config", "show", f"device={name}"]) == (0 if name == "mps" else 2)


def test_yaml_top_level_list(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("- seed: 1\n- device: cpu\n")
    assert main(["config", "show", "--config", "bad.yaml"]) == 2
    assert _one_error_line(capsys) == "bad.yaml: top level must be a mapping of sections, got a list"
    (tmp_path / "bad.yaml").write_text("42\n")
    assert main(["config", "show", "--config", "bad.yaml"]) == 2
    assert _one_error_line(capsys) == "bad.yaml: top level must be a mapping of sections, got an int"


def test_config_file_is_a_folder(tmp_path, capsys):
    assert main(["config", "show", "--config", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == f"{tmp_path}: is a folder, not a config file"


def test_config_errors_with_debug_raise():
    from slopekp.config import ConfigError

    with pytest.raises(ConfigError, match="multiplex.lr must be > 0"):
        main(["--debug", "config", "show", "multiplex.lr=-1"])


def test_out_of_range_config_value_names_the_key(capsys):
    assert main(["config", "show", "multiplex.peakiness=-20"]) == 2
    assert _one_error_line(capsys) == "multiplex.peakiness must be >= 0, got -20.0"


# ---------------------------------------------------------------------------------------------------- sizes
def test_synth_size_bound(tmp_path, capsys):
    from slopekp.data.synth.writer import generate_synthbirds
    from slopekp.utils import MAX_SYNTH_SIZE

    assert MAX_SYNTH_SIZE == 2048
    with pytest.raises(ValueError, match=r"^size must be <= 2048 pixels, got 100000$"):
        generate_synthbirds(tmp_path / "s", 1, 1, size=100000, progress=False)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--size", "100000", "--no-progress"]) == 2
    assert _one_error_line(capsys) == "size must be <= 2048 pixels, got 100000"
    assert not (tmp_path / "s").exists()  # checked before the output folder is made


def test_synth_count_bound(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n-train", "10000000000", "--no-progress"]) == 2
    assert _one_error_line(capsys) == "n_train must be <= 1000000 per split, got 10000000000"


def test_synth_video_height_bound(tmp_path, capsys):
    from slopekp.data.synth.video import VideoSynthSettings

    with pytest.raises(ValueError, match=r"^height must be <= 2160 pixels, got 100000$"):
        VideoSynthSettings(height=100000)
    with pytest.raises(ValueError, match=r"^width must be <= 4096 pixels, got 5000$"):
        VideoSynthSettings(width=5000)
    with pytest.raises(ValueError, match=r"max_frames · height · width must be <= 2\*\*30 pixels"):
        VideoSynthSettings(height=2160, max_frames=1000)
    assert main(["data", "synth-video", "--out", str(tmp_path / "v"), "--height", "100000", "--no-progress"]) == 2
    assert _one_error_line(capsys) == "height must be <= 2160 pixels, got 100000"
    assert not (tmp_path / "v").exists()


def test_checker_bound(tmp_path, capsys):
    from slopekp.commands.mesh import MAX_CHECKER, checker_texture

    assert MAX_CHECKER == 1024
    with pytest.raises(ValueError, match=r"^checker must be <= 1024, got 100000$"):
        checker_texture(100000)
    with pytest.raises(ValueError, match=r"^checker must be >= 1, got 0$"):
        checker_texture(0)
    assert checker_texture(2).shape == (3, 2, 4)
    assert main(_export(tmp_path / "a.obj", "--checker", "100000")) == 2
    assert _one_error_line(capsys) == "checker must be <= 1024, got 100000"
    assert not list(tmp_path.iterdir())
