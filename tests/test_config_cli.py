import subprocess
import sys

import pytest

from slopekp.cli import main
from slopekp.config import ConfigError, load_config, save_config


def test_defaults_and_overrides():
    cfg = load_config(overrides=["multiplex.steps=7", "render.sigma=2e-4", "seed=3"])
    assert cfg.multiplex.steps == 7 and cfg.render.sigma == 2e-4 and cfg.seed == 3


@pytest.mark.parametrize(
    "override, match",
    [("multiplex.stepz=3", "stepz"), ("multiplex.steps=abc", "abc"), ("nokey", "key=value"), ("x.y=1", "x")],
)
def test_bad_overrides_are_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_yaml_roundtrip_and_unknown_key_in_file(tmp_path):
    cfg = load_config(overrides=["multiplex.num_az=4", "data.root=/tmp/x"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("multiplex:\n  nonsense: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("config", "data", "multiplex", "mesh"):
        assert name in out


def test_cli_bad_override_exit_code(capsys):
    assert main(["config", "show", "multiplex.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_console_script_runs():
    cmd = [sys.executable, "-m", "slopekp.cli", "config", "show", "seed=5"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "seed: 5" in r.stdout
