import subprocess
import sys
from pathlib import Path

import pytest

from slopekp.cli import main
from slopekp.config import Config, ConfigError, load_config, save_config
from slopekp.manifest import flat_config


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
    cfg = load_config(overrides=["multiplex.num_az=4", "data.split=val"])
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


# ------------------------------------------------------------------------------------------- value ranges
def test_default_config_is_valid():
    from slopekp.config import Config, validate_config

    validate_config(Config())
    assert load_config() == Config()


def _numeric_fields(obj, prefix=""):
    from dataclasses import fields, is_dataclass

    for f in fields(obj):
        v = getattr(obj, f.name)
        if is_dataclass(v):
            yield from _numeric_fields(v, f"{prefix}{f.name}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{f.name}"


def test_every_numeric_field_has_exactly_one_rule():
    from slopekp.config import RULES, Config

    assert set(RULES) == set(_numeric_fields(Config()))


@pytest.mark.parametrize(
    "override, message",
    [
        ("multiplex.lr=-1", "multiplex.lr must be > 0, got -1.0"),
        ("multiplex.lr=.inf", "multiplex.lr must be finite, got inf"),
        ("multiplex.lr=.nan", "multiplex.lr must be > 0, got nan"),
        ("multiplex.peakiness=-20", "multiplex.peakiness must be >= 0, got -20.0"),
        ("seed=-1", "seed must be in [0, 2**32 - 1], got -1"),
        ("seed=4294967296", "seed must be in [0, 2**32 - 1], got 4294967296"),
        ("threads=-2", "threads must be >= 0, got -2"),
        ("train.render_size=4", "train.render_size must be in [8, 1024], got 4"),
        ("multiplex.image_size=100000", "multiplex.image_size must be in [8, 1024], got 100000"),
        ("model.image_size=0", "model.image_size must be in [64, 1024], got 0"),
        ("multiplex.steps=-1", "multiplex.steps must be >= 0, got -1"),
        ("multiplex.batch_size=0", "multiplex.batch_size must be >= 1, got 0"),
        ("multiplex.num_el=0", "multiplex.num_el must be >= 1, got 0"),
        ("multiplex.save_every=0", "multiplex.save_every must be >= 1, got 0"),
        ("synth.size=100000", "synth.size must be in [16, 2048], got 100000"),
        ("synth.n_test=-1", "synth.n_test must be in [0, 1000000], got -1"),
        ("synth.workers=-1", "synth.workers must be >= 0, got -1"),
        ("data.max_items=-5", "data.max_items must be >= 0, got -5"),
        ("render.sigma=0", "render.sigma must be > 0, got 0.0"),
        ("render.gamma=-1e-4", "render.gamma must be > 0, got -0.0001"),
        ("render.near=200", "render.near must be < render.far (100.0), got 200.0"),
        ("synth.occlusion_prob=1.5", "synth.occlusion_prob must be in [0, 1], got 1.5"),
        ("data.padding_frac=1", "data.padding_frac must be in [0, 1), got 1.0"),
        ("data.jitter_frac=-0.1", "data.jitter_frac must be in [0, 1), got -0.1"),
        ("synth.deform=-1", "synth.deform must be >= 0, got -1.0"),
        ("multiplex.scale_bias=0", "multiplex.scale_bias must be > 0, got 0.0"),
        ("multiplex.offset_gain=-0.1", "multiplex.offset_gain must be > 0, got -0.1"),
        ("multiplex.az_range_deg=0", "multiplex.az_range_deg must be in (0, 180], got 0.0"),
        ("multiplex.cr_range_deg=270", "multiplex.cr_range_deg must be in (0, 180], got 270.0"),
        ("multiplex.base_bias_deg=-.inf", "multiplex.base_bias_deg must be finite, got -inf"),
        ("template.symmetry_tol=0", "template.symmetry_tol must be > 0, got 0.0"),
        ("device=foo", "device must be one of auto, cpu, cuda, cuda:N"),
    ],
)
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert str(e.value).startswith(message), str(e.value)


def test_range_checked_after_the_file(tmp_path):
    """Validation runs on the resolved config: a bad file value fixed by an override is fine."""
    f = tmp_path / "c.yaml"
    f.write_text("multiplex:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"^multiplex.lr must be > 0, got -1.0$"):
        load_config(f)
    assert load_config(f, ["multiplex.lr=0.05"]).multiplex.lr == 0.05


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: top level must be a mapping of sections, got a list$"):
        load_config(bad)
    bad.write_text("")  # an empty file is an empty mapping
    assert load_config(bad) == load_config()


def test_config_from_yaml_round_trips_and_names_its_source():
    from slopekp.config import ConfigError, config_from_yaml, config_to_yaml, load_config

    cfg = load_config(overrides=["train.lr=0.003", "model.pose_head=svd", "seed=7"])
    assert config_from_yaml(config_to_yaml(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"^run.pt \(its config\): train.lr must be > 0"):
        config_from_yaml("train:\n  lr: -1\n", "run.pt (its config)")
    with pytest.raises(ConfigError, match=r"^run.pt: .*nope"):
        config_from_yaml("train:\n  nope: 1\n", "run.pt")


def test_render_fused_setting_is_checked_passed_on_and_left_out_of_manifests(tmp_path, monkeypatch):
    from slopekp.config import ConfigError, load_config
    from slopekp.train import stage1, stage2
    from slopekp.train.stage1 import build_stage1_renderer, stage1_manifest
    from slopekp.train.stage2 import build_renderer, stage2_manifest

    with pytest.raises(ConfigError, match="render.fused must be one of never, auto, always"):
        load_config(overrides=["render.fused=maybe"])
    off, on = load_config(), load_config(overrides=["render.fused=always"])
    assert build_stage1_renderer(on).settings.fused == "always" and build_renderer(on).settings.fused == "always"
    assert build_stage1_renderer(off).settings.fused == "never"
    # a speed setting: a run made without it resumes with it
    for mod in (stage1, stage2):
        monkeypatch.setattr(mod, "cmr_data_fingerprint", lambda *a, **k: {"fingerprint": "data"})
    assert "render.fused" not in stage1_manifest(on, tmp_path, "fp").settings
    store = tmp_path / "m.npz"
    store.write_bytes(b"x")
    s_off = stage2_manifest(off, tmp_path, store, "fp").settings
    assert s_off == stage2_manifest(on, tmp_path, store, "fp").settings and "render.sigma" in s_off


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)  # fmt: skip
def test_shipped_configs_load(path):
    """Every config in configs/ has only known keys and values in range."""
    cfg = load_config(path)
    if path.name == "cub_stage1_gpu.yaml":
        assert (cfg.multiplex.batch_invariant, cfg.multiplex.batch_size, cfg.render.fused) == (False, 60, "auto")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.pose_head=foo", "model.pose_head must be one of keypoints, quaternion, gramschmidt, svd, got 'foo'"),
        ("train.pose_targets=xyz", "train.pose_targets must be one of stage2, stage1, got 'xyz'"),
        ("data.split=nonsense", "data.split must be one of train, val, test, got 'nonsense'"),
        ("render.fused=sometimes", "render.fused must be one of never, auto, always, got 'sometimes'"),
    ],
)
def test_config_show_refuses_a_name_outside_its_set(override, message, capsys):
    """Issue 20: ``config show`` exited 0 for these; now every command refuses them up front, naming the key."""
    assert main(["config", "show", override]) == 2
    assert f"slopekp: error: {message}" in capsys.readouterr().err


def test_choices_follow_the_code_that_reads_them():
    from slopekp.config import CHOICES
    from slopekp.data.verify import CMR_SPLITS
    from slopekp.models.pose import HEATMAP_LOSSES, POSE_HEADS
    from slopekp.models.shape import SHAPE_BIAS_INITS
    from slopekp.models.texture import TEXTURE_HEADS
    from slopekp.render.fused import FUSED_MODES
    from slopekp.train.run import LR_SCHEDULES
    from slopekp.train.stage3 import POSE_TARGETS

    assert set(CHOICES["model.pose_head"]) == set(POSE_HEADS)
    assert CHOICES["model.heatmap_loss"] == HEATMAP_LOSSES == ("mse", "kl")
    assert CHOICES["model.shape_bias_init"] == SHAPE_BIAS_INITS
    assert CHOICES["model.texture_head"] == TEXTURE_HEADS
    assert CHOICES["render.fused"] == FUSED_MODES and CHOICES["data.split"] == CMR_SPLITS
    assert CHOICES["train.pose_targets"] == POSE_TARGETS
    assert CHOICES["train.pose_lr_schedule"] == LR_SCHEDULES
    str_fields = {k for k, v in flat_config(Config()).items() if isinstance(v, str)}
    assert set(CHOICES) <= str_fields


def test_a_huge_config_file_is_too_large_not_invalid(tmp_path, capsys):
    """Issue 20: a 55 MB YAML of a million-item list was called invalid YAML; it is refused as too large, before
    it is parsed, and a small file of too many nodes (an alias bomb, or a long list) is named as such."""
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        f.write("multiplex:\n  junk:\n")
        f.writelines(f"  - {i}\n" for i in range(400_000))
    assert main(["config", "show", "--config", str(big)]) == 2
    err = capsys.readouterr().err
    assert f"{big}: " in err and "MiB is too large for a config file (at most 1 MiB" in err and "invalid" not in err
    many = tmp_path / "many.yaml"
    many.write_text("multiplex:\n  junk: [" + ", ".join(["1"] * 20_000) + "]\n")
    assert main(["config", "show", "--config", str(many)]) == 2
    err = capsys.readouterr().err
    assert f"{many}: too many YAML nodes for a config file" in err and "not valid YAML" not in err


def test_settings_of_an_earlier_release_still_load_and_resume(tmp_path):
    """Issue 21: render.image_size, data.img_size and data.root were read by nothing and are gone. A config file of
    an earlier release that sets them loads with a warning naming the key, a checkpoint's copy silently, and a
    manifest that recorded them still resumes (no difference reported)."""
    import warnings

    from slopekp.config import REMOVED_SETTINGS, ConfigWarning, config_from_yaml
    from slopekp.manifest import Manifest

    old = tmp_path / "old.yaml"
    old.write_text("render:\n  image_size: 64\n  sigma: 2.0e-4\ndata:\n  root: outputs/synthbirds\n  img_size: 256\n")
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_config(old)
    said = sorted(str(w.message).split(": ")[1].removesuffix("; ignored") for w in caught)
    assert said == ["data.img_size is no longer read (the data folder is --data; render sizes come from each stage)",
                    "data.root is no longer read (the data folder is --data; render sizes come from each stage)",
                    "render.image_size is no longer read (the data folder is --data; render sizes come from each "
                    "stage)"]  # fmt: skip
    assert cfg.render.sigma == 2e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_from_yaml(old.read_text(), "ckpt").render.sigma == 2e-4
    with pytest.raises(ConfigError, match="render.image_size"):  # an override is a mistake of today: refused
        load_config(overrides=["render.image_size=64"])
    settings = flat_config(Config())
    recorded = {**settings, "render.image_size": 64, "data.img_size": 256, "data.root": "outputs/synthbirds"}
    assert set(REMOVED_SETTINGS) <= set(recorded) and not set(REMOVED_SETTINGS) & set(settings)
    assert Manifest("quickstart", settings=recorded).differences(Manifest("quickstart", settings=settings)) == []
    changed = Manifest("quickstart", settings={**recorded, "seed": 9})
    assert changed.differences(Manifest("quickstart", settings=settings))
