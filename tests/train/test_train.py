"""Stages II and III end to end at a smoke size: every head trains (its loss decreases), a resumed run takes
exactly the step an uninterrupted one takes, and no ground truth is read (issue 9)."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch

from slopekp.checkpoint import CheckpointError
from slopekp.cli import main
from slopekp.config import load_config
from slopekp.train.stage2 import run_stage2
from slopekp.train.stage3 import run_stage3

TINY_STAGE1 = ["multiplex.num_az=2", "multiplex.num_el=2", "multiplex.steps=4", "multiplex.image_size=16"]
SMOKE = [
    *TINY_STAGE1,
    "model.image_size=64",
    "model.encoder_width=8",
    "model.shape_hidden=16",
    "model.uv_height=8",
    "model.texture_width=4",
    "model.num_keypoints=8",
    "train.render_size=16",
    "train.batch_size=4",
    "train.epochs=50",
    "train.pose_epochs=50",
    "train.lr=1e-3",
    "train.multiplex_lr=1e-2",
    "data.flip=false",
    "data.jitter_frac=0",
    "threads=1",
]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    from slopekp.data.synth.writer import generate_synthbirds
    from slopekp.train.stage1 import run_stage1

    root = tmp_path_factory.mktemp("train")
    data = generate_synthbirds(root / "sb", n_train=4, n_test=2, size=32, seed=3, deform=0.0, progress=False)
    run_stage1(load_config(overrides=SMOKE), data, root / "s1", progress=False, report=False)
    return data, root / "s1" / "multiplex.npz"


@pytest.fixture(scope="module")
def stage2(stage1, tmp_path_factory):
    data, mp = stage1
    out = tmp_path_factory.mktemp("s2") / "run"
    res = run_stage2(load_config(overrides=SMOKE), data, mp, out, progress=False, max_steps=8)
    return data, out, res


def _losses(out) -> list[float]:
    """Per-step totals from the TensorBoard log (an independent record of what the loop computed)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tag = next(t for t in acc.Tags()["scalars"] if t.endswith("/total"))
    return [e.value for e in acc.Scalars(tag)]


def test_stage2_trains_and_writes_its_outputs(stage2):
    data, out, res = stage2
    assert res.steps == 8
    for name in ("manifest.json", "config.yaml", "checkpoints/last.pt", "multiplex.npz", "report/metrics.json"):
        assert (out / name).is_file(), name
    losses = _losses(out)
    assert len(losses) == 8 and losses[-1] < losses[0]  # the same 4 images every step: the fit improves
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert any(t.startswith("stage2/input") for t in acc.Tags()["images"])  # example renders are logged
    for term in ("mask", "texture", "deform", "laplacian", "grad_norm", "best_score"):
        assert f"stage2/{term}" in acc.Tags()["scalars"], term
    assert "targets_stage2" in res.metrics and res.metrics["targets_stage2"]["num_images"] == 4


def test_stage2_resume_takes_the_same_next_step(stage1, tmp_path):
    data, mp = stage1
    cfg = load_config(overrides=SMOKE)
    ref = run_stage2(cfg, data, mp, tmp_path / "ref", progress=False, max_steps=3)
    run_stage2(cfg, data, mp, tmp_path / "cut", progress=False, max_steps=2)
    again = run_stage2(cfg, data, mp, tmp_path / "cut", progress=False, max_steps=1)
    assert again.steps == 3
    assert again.metrics["last_losses"]["total"] == ref.metrics["last_losses"]["total"]
    a = torch.load(tmp_path / "ref/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["multiplex"]["offsets"], b["multiplex"]["offsets"])


def test_stage2_with_sync_every_3_logs_every_step_the_same(stage1, stage2, tmp_path):
    """``train.sync_every=3`` keeps the losses on the device between reads (a GPU queues steps ahead meanwhile);
    TensorBoard still gets every step, with the values of the run that read them at every step, and the manifest
    does not change (a speed setting)."""
    import json

    data, mp = stage1
    _, out, _ = stage2
    cfg = load_config(overrides=[*SMOKE, "train.sync_every=3"])
    res = run_stage2(cfg, data, mp, tmp_path / "run", progress=False, max_steps=8)
    assert res.steps == 8
    assert _losses(tmp_path / "run") == _losses(out)
    settings = [json.loads((d / "manifest.json").read_text())["settings"] for d in (tmp_path / "run", out)]
    assert settings[0] == settings[1]


def test_read_back_keeps_steps_keys_and_values():
    from slopekp.train.run import read_back

    pending = [(1, {"total": torch.tensor(0.5), "n": 3, "grad_norm": torch.tensor([2.0])}),
               (2, {"total": torch.tensor(0.25, dtype=torch.float64), "n": 4.5, "grad_norm": torch.tensor(1.0)})]
    got = read_back(pending)
    assert got == [(1, {"total": 0.5, "n": 3.0, "grad_norm": 2.0}), (2, {"total": 0.25, "n": 4.5, "grad_norm": 1.0})]
    assert [list(v) for _, v in got] == [["total", "n", "grad_norm"]] * 2
    assert read_back([]) == []


def test_network_adam_is_the_default_adam_bit_for_bit():
    """:func:`slopekp.train.run.adam` (multi-tensor) takes the very steps of ``torch.optim.Adam``'s default (the
    single-tensor loop on a CPU): a faster implementation of the same arithmetic, not another optimiser."""
    import copy

    from slopekp.train.run import adam

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 6 * 6, 5))  # fmt: skip
    nets = [net, copy.deepcopy(net)]
    opts = [torch.optim.Adam(nets[0].parameters(), lr=1e-2), adam(nets[1].parameters(), 1e-2)]
    for step in range(12):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        for n, o in zip(nets, opts):
            o.zero_grad(set_to_none=True)
            n(x).square().mean().backward()
            torch.nn.utils.clip_grad_norm_(n.parameters(), 0.5)
            o.step()
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
        assert torch.equal(a, b)


def test_a_step_that_ends_the_epoch_is_checkpointed_once(stage1, tmp_path, monkeypatch):
    """``train.checkpoint_every`` falling on an epoch's last step (or the call's) writes one checkpoint, after the
    epoch's end, not two."""
    from slopekp.train import stage2 as s2

    saved = []
    real = s2.save_checkpoint
    monkeypatch.setattr(s2, "save_checkpoint", lambda path, ck: (saved.append((ck["step"], ck["epoch"])),
                                                                 real(path, ck)))  # fmt: skip
    data, mp = stage1
    cfg = load_config(overrides=[*SMOKE, "train.checkpoint_every=1"])  # one batch per epoch: every step ends one
    res = run_stage2(cfg, data, mp, tmp_path / "run", progress=False, max_steps=3)
    assert res.steps == 3
    assert saved == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("head", ["quaternion", "gramschmidt", "svd", "keypoints"])
def test_stage3_every_head_trains(stage2, tmp_path, head):
    data, s2, _ = stage2
    res = run_stage3(load_config(overrides=SMOKE), data, s2, tmp_path / head, head, progress=False, max_steps=6)
    losses = _losses(tmp_path / head)
    assert res.steps == 6 and len(losses) == 6
    assert min(losses[-2:]) < losses[0], losses
    ck = torch.load(res.checkpoint, weights_only=True)
    assert ck["head"] == head and ck["kind"] == "stage3"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / head / "tb"))
    acc.Reload()
    images = [t for t in acc.Tags()["images"] if t.startswith("stage3/input|mesh_pred|mesh_target")]
    assert images and (("heatmaps" in images[0]) == (head == "keypoints")), images
    test = res.metrics["test"]  # the report evaluates the test split (it has ground truth)
    assert test["num_images"] == 2 and 0 <= test["mask_iou_0.5"] <= 1
    assert set(test["rotation_error"]) == {"mean_deg", "median_deg", "pct_under_15deg", "pct_under_30deg",
                                           "pct_under_45deg"}  # fmt: skip


def test_stage3_resume_and_checkpoint_checks(stage2, tmp_path):
    data, s2, _ = stage2
    cfg = load_config(overrides=SMOKE)
    ref = run_stage3(cfg, data, s2, tmp_path / "ref", "keypoints", progress=False, max_steps=3)
    run_stage3(cfg, data, s2, tmp_path / "cut", "keypoints", progress=False, max_steps=2)
    again = run_stage3(cfg, data, s2, tmp_path / "cut", "keypoints", progress=False, max_steps=1)
    assert again.metrics["last_losses"]["total"] == ref.metrics["last_losses"]["total"]
    # another head into the same folder: refused by the manifest
    from slopekp.manifest import OutputExistsError

    with pytest.raises(OutputExistsError, match="made by `slopekp train stage3 keypoints`"):
        run_stage3(cfg, data, s2, tmp_path / "cut", "svd", progress=False, max_steps=1)
    # a truncated checkpoint is named
    ck = tmp_path / "cut" / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="last.pt: truncated or corrupt"):
        run_stage3(cfg, data, s2, tmp_path / "cut", "keypoints", progress=False, max_steps=1)


def test_training_reads_no_ground_truth(stage1, tmp_path):
    """The same runs on a copy of the data without SfM cameras and with every keypoint scrambled and hidden take
    exactly the same steps: nothing of them reaches training."""
    from slopekp.data.matfiles import read_cub_cleaned, write_cub_cleaned
    from slopekp.train.stage1 import run_stage1

    data, _ = stage1
    blind = shutil.copytree(data, tmp_path / "blind")
    (blind / "anno_train.mat").unlink()
    records = read_cub_cleaned(blind / "train_cub_cleaned.mat")
    for r in records:
        r.parts = r.parts * 0
    write_cub_cleaned(blind / "train_cub_cleaned.mat", records)
    cfg = load_config(overrides=[*SMOKE, "train.reselect_every=1"])  # self-training too (one step per epoch)
    runs = {}
    for name, d in (("seen", data), ("blind", blind)):
        run_stage1(cfg, d, tmp_path / name / "s1", progress=False, report=False)
        s2 = run_stage2(cfg, d, tmp_path / name / "s1/multiplex.npz", tmp_path / name / "s2", progress=False,
                        max_steps=2)  # fmt: skip
        run_stage3(cfg, d, tmp_path / name / "s2", tmp_path / name / "s3", "quaternion", progress=False,
                        max_steps=2)  # fmt: skip
        runs[name] = (_losses(tmp_path / name / "s2"), _losses(tmp_path / name / "s3"), s2.metrics)
    assert runs["seen"][:2] == runs["blind"][:2]
    assert "targets_stage2" in runs["seen"][2] and "targets_stage2" not in runs["blind"][2]  # only the report reads GT


def test_cli_train_smoke_and_errors(stage1, tmp_path, capsys):
    data, mp = stage1
    out2, out3 = tmp_path / "s2", tmp_path / "s3"
    base = ["--data", str(data), "--quiet", "--max-steps", "1"]
    assert main(["train", "--stage", "2", *base, "--multiplex", str(mp.parent), "--out", str(out2), *SMOKE]) == 0
    assert "Stage II: 1 step(s)" in capsys.readouterr().out
    assert main(["train", "--stage", "3", "--head", "svd", *base, "--from", str(out2), "--out", str(out3), *SMOKE]) == 0
    assert "Stage III (svd): 1 step(s)" in capsys.readouterr().out
    # bad input: missing --multiplex, a folder that is not a Stage II run, a data folder without the split
    assert main(["train", "--stage", "2", *base, "--out", str(tmp_path / "x"), *SMOKE]) == 2
    assert "--multiplex" in capsys.readouterr().err
    assert main(["train", "--stage", "3", *base, "--from", str(tmp_path), "--out", str(tmp_path / "y"), *SMOKE]) == 2
    assert "not a finished Stage II run" in capsys.readouterr().err
    val = [*SMOKE, "data.split=val"]
    assert main(["train", "--stage", "2", *base, "--multiplex", str(mp), "--out", str(tmp_path / "z"), *val]) == 2
    assert "val_cub_cleaned.mat" in capsys.readouterr().err


def test_smoke_config_is_small():
    cfg = load_config(overrides=SMOKE)
    assert dataclasses.asdict(cfg.model)["image_size"] == 64


def test_kill_9_during_stage2_then_rerun_loses_nothing(stage1, tmp_path):
    """SIGKILL after the first checkpoint, then the same command: the final weights and store equal those of an
    uninterrupted run of the same length, bit for bit."""
    import signal
    import subprocess
    import sys
    import time

    data, mp = stage1
    over = [*SMOKE, "train.checkpoint_every=1", "train.epochs=2"]  # 2 epochs x 1 batch of 4 images
    ref = run_stage2(load_config(overrides=over), data, mp, tmp_path / "ref", progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "slopekp.cli", "train", "--stage", "2", "--data", str(data), "--multiplex",
           str(mp), "--out", str(out), "--quiet", *over]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a = torch.load(ref.checkpoint, weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k in ("offsets", "exp_avg", "scores"):
        assert torch.equal(a["multiplex"][k], b["multiplex"][k]), k


def test_stage2_under_torchrun_with_two_processes(stage1, tmp_path, run_torchrun):
    """`torchrun --nproc_per_node 2` on CPU (gloo on 127.0.0.1): the real Stage II command runs, both ranks keep
    the same camera multiplex (run_stage2 checks it after training and fails otherwise), rank 0 writes."""
    import json

    data, mp = stage1
    out = tmp_path / "ddp"
    log = run_torchrun(["-m", "slopekp.cli", "train", "--stage", "2", "--data", str(data), "--multiplex", str(mp),
                        "--out", str(out), "--quiet", "--max-steps", "2", *SMOKE, "train.batch_size=2"],
                       timeout=150)  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["settings"]["world_size"] == 2
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 2 and (out / "multiplex.npz").is_file()
    assert log.count("Stage II: 2 step(s)") == 1  # rank 0 alone reports


def test_stage3_under_torchrun_with_two_processes(stage2, tmp_path, run_torchrun):
    """`torchrun --nproc_per_node 2`: the real Stage III command trains with the ranks' gradients averaged (run_stage3
    checks that both ranks end with the same model and fails otherwise), rank 0 writes, and the loss decreases."""
    import json

    data, s2, _ = stage2
    out = tmp_path / "ddp"
    log = run_torchrun(["-m", "slopekp.cli", "train", "--stage", "3", "--head", "svd", "--data", str(data),
                        "--from", str(s2), "--out", str(out), "--quiet", "--max-steps", "4", *SMOKE,
                        "train.batch_size=2"], timeout=150)  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["settings"]["world_size"] == 2
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    assert log.count("Stage III (svd): 4 step(s)") == 1  # rank 0 alone reports
    losses = _losses(out)
    assert len(losses) == 4 and min(losses[-2:]) < losses[0], losses
    assert json.loads((out / "report" / "metrics.json").read_text())["test"]["num_images"] == 2


def test_stage2_prunes_to_the_top_k_hypotheses(stage1, tmp_path):
    data, mp = stage1
    cfg = load_config(overrides=[*SMOKE, "train.top_k=2", "train.top_k_after=1", "train.epochs=2"])
    res = run_stage2(cfg, data, mp, tmp_path / "run", progress=False)
    from slopekp.train.multiplex import CameraMultiplex

    store = CameraMultiplex.load(res.store_path)
    assert store.num_hypotheses == 2 and res.steps == 2  # 4 hypotheses in epoch 0, the best 2 in epoch 1


@pytest.mark.parametrize(("after", "fitted"), [(0, 2), (1, 4)])
def test_stage2_top_k_after_zero_prunes_before_the_first_step(stage1, tmp_path, after, fitted):
    """``top_k_after=0``: Stage II starts on each image's ``top_k`` best Stage I hypotheses (``CameraMultiplex.top_k``,
    tested in tests/train/test_multiplex_store.py); 1: on all of them."""
    from slopekp.train.multiplex import CameraMultiplex

    data, mp = stage1
    cfg = load_config(overrides=[*SMOKE, "train.top_k=2", f"train.top_k_after={after}", "train.epochs=2",
                                 "train.batch_size=2"])  # two steps an epoch: the checkpoint after one is mid-epoch
    run_stage2(cfg, data, mp, tmp_path / "run", progress=False, max_steps=1)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    store = CameraMultiplex.from_state_dict(ck["multiplex"])
    assert store.num_hypotheses == fitted


def test_a_no_op_stage2_rerun_does_not_invalidate_stage3(stage1, tmp_path):
    """Rerunning a Stage II command with nothing left to do rewrites its outputs with the same content; the
    Stage III runs made from it still resume."""
    data, mp = stage1
    cfg = load_config(overrides=SMOKE)
    s2 = tmp_path / "s2"
    run_stage2(cfg, data, mp, s2, progress=False, max_steps=1)
    run_stage3(cfg, data, s2, tmp_path / "s3", "svd", progress=False, max_steps=1)
    run_stage2(cfg, data, mp, s2, progress=False, max_steps=0)
    assert run_stage3(cfg, data, s2, tmp_path / "s3", "svd", progress=False, max_steps=1).steps == 2


def test_stage3_supervised_ablation_trains_on_ground_truth_and_says_so(stage2, tmp_path, capsys):
    """``--supervised`` swaps the multiplex targets for the SfM cameras: the same model, batches and seed give
    another first loss; the outputs say so; it needs the annotations; a folder of the other kind is refused."""
    from slopekp.manifest import RunMismatchError

    data, s2, _ = stage2
    cfg = load_config(overrides=SMOKE)
    own = run_stage3(cfg, data, s2, tmp_path / "own", "quaternion", progress=False, max_steps=1)
    sup = run_stage3(cfg, data, s2, tmp_path / "sup", "quaternion", progress=False, max_steps=6, supervised=True)
    assert _losses(tmp_path / "own")[0] != _losses(tmp_path / "sup")[0]
    losses = _losses(tmp_path / "sup")
    assert min(losses[-2:]) < losses[0], losses
    assert "supervised" in sup.metrics["targets"] and "self-supervised" in own.metrics["targets"]
    assert "supervised" in torch.load(sup.checkpoint, weights_only=True)["targets"]
    with pytest.raises(RunMismatchError, match="targets: 'multiplex best cameras"):
        run_stage3(cfg, data, s2, tmp_path / "own", "quaternion", progress=False, max_steps=1, supervised=True)
    blind = shutil.copytree(data, tmp_path / "blind")
    (blind / "anno_train.mat").unlink()
    with pytest.raises(ValueError, match="anno_train.mat"):
        run_stage3(cfg, blind, s2, tmp_path / "b", "quaternion", progress=False, max_steps=1, supervised=True)
    args = ["--data", str(data), "--quiet", "--max-steps", "1", "--from", str(s2), *SMOKE]
    assert main(["train", "--stage", "3", "--head", "svd", "--supervised", *args, "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "Stage III (svd, SUPERVISED by ground-truth cameras)" in out and "rotation error median" in out
    assert main(["train", "--stage", "2", "--supervised", *args, "--out", str(tmp_path / "d")]) == 2
    assert "--supervised applies to --stage 3 only" in capsys.readouterr().err


def test_stage3_frozen_batchnorm_keeps_running_statistics_and_batch_independence(stage2, tmp_path):
    """With ``train.frozen_batchnorm`` (default) Stage III leaves every BatchNorm's running statistics as loaded (the
    Stage II encoder's, the new head's initial ones) while the weights train, and a training-mode prediction of an
    image does not depend on its batch-mates; with it off, the statistics move."""
    from slopekp.mesh import load_template
    from slopekp.models.encoder import normalize_image
    from slopekp.models.reconstructor import build_model
    from slopekp.train.stage3 import set_train_modes, stage3_config

    data, s2, _ = stage2
    over = [*SMOKE, "train.freeze_backbone=false"]
    s2_model = torch.load(s2 / "checkpoints" / "last.pt", weights_only=True)["model"]
    stats = {}
    for flag in ("true", "false"):
        res = run_stage3(load_config(overrides=[*over, f"train.frozen_batchnorm={flag}"]), data, s2, tmp_path / flag,
                         "quaternion", progress=False, max_steps=3)  # fmt: skip
        stats[flag] = torch.load(res.checkpoint, weights_only=True)["model"]
    enc = [k for k in s2_model if k.startswith("encoder.") and k.endswith("running_mean")]
    assert enc and all(torch.equal(stats["true"][k], s2_model[k]) for k in enc)
    assert all(torch.equal(stats["true"][k], torch.zeros_like(v)) for k, v in stats["true"].items()
               if k.startswith("pose.") and k.endswith("running_mean"))  # fmt: skip
    assert not all(torch.equal(stats["false"][k], s2_model[k]) for k in enc)
    w = [k for k in enc if k.replace("running_mean", "weight") in s2_model]
    assert any(not torch.equal(stats["true"][k.replace("running_mean", "weight")],
                               s2_model[k.replace("running_mean", "weight")]) for k in w)  # fmt: skip

    cfg = stage3_config(load_config(overrides=over), s2, "quaternion")
    model = build_model(cfg.model, load_template(cfg.template.path))
    model.load_state_dict(stats["true"])
    img = normalize_image(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    set_train_modes(model, cfg)
    with torch.no_grad():
        together = model(img).camera
        alone = torch.cat([model(img[i : i + 2]).camera[:1] for i in range(0, 4, 2)])
    torch.testing.assert_close(together[::2], alone, rtol=1e-5, atol=1e-6)


def test_stage3_mirror_by_appearance_trains_on_the_chosen_side(stage2, tmp_path, monkeypatch):
    """``train.mirror_by_appearance``: every image the choice flags trains on the depth mirror of its best camera
    (forced all-flagged: another first loss than the plain run; forced none-flagged: the same first loss), and the
    outputs say which targets were used."""
    import slopekp.train.appearance as appearance
    import slopekp.train.stage3 as stage3

    data, s2, _ = stage2
    plain = run_stage3(load_config(overrides=SMOKE), data, s2, tmp_path / "plain", "quaternion", progress=False,
                       max_steps=1)  # fmt: skip
    cfg = load_config(overrides=[*SMOKE, "train.mirror_by_appearance=true"])
    res = run_stage3(cfg, data, s2, tmp_path / "real", "quaternion", progress=False, max_steps=1)
    summary = res.metrics["mirror_by_appearance"]
    assert summary["num_images"] == 4 and 0.0 <= summary["mirrored_share"] <= 1.0
    assert "depth mirror chosen by appearance" in res.metrics["targets"]
    assert "appearance" in torch.load(res.checkpoint, weights_only=True)["targets"]
    real = appearance.choose_depth_mirrors

    def forced(value):
        def choose(*args, **kwargs):
            ids, choice = real(*args, **kwargs)
            return ids, dataclasses.replace(choice, mirrored=torch.full_like(choice.mirrored, value))

        return choose

    firsts = {}
    for value in (True, False):
        monkeypatch.setattr(stage3, "choose_depth_mirrors", forced(value))  # where Stage III calls it
        run_stage3(cfg, data, s2, tmp_path / f"forced{value}", "quaternion", progress=False, max_steps=1)
        firsts[value] = _losses(tmp_path / f"forced{value}")[0]
    assert firsts[False] == pytest.approx(_losses(plain.out_dir)[0], rel=1e-6)
    assert abs(firsts[True] - firsts[False]) > 1e-4 * abs(firsts[False])


def test_stage3_pose_targets_from_the_stage1_store(stage1, stage2, tmp_path):
    """``train.pose_targets=stage1``: the targets come from the Stage I store that Stage II's manifest names (the
    same file, checked by fingerprint); a moved or changed store is refused by name; a bad value is refused."""
    from slopekp.train.stage3 import targets_store

    data, s2, _ = stage2
    _, s1_store = stage1
    cfg = load_config(overrides=[*SMOKE, "train.pose_targets=stage1"])
    assert targets_store(cfg, s2).resolve() == s1_store.resolve()
    assert targets_store(load_config(overrides=SMOKE), s2) == s2 / "multiplex.npz"
    res = run_stage3(cfg, data, s2, tmp_path / "s1t", "keypoints", progress=False, max_steps=1)
    assert res.metrics["targets"] == "Stage I multiplex best cameras (self-supervised)"
    from slopekp.manifest import Manifest

    assert Manifest.load(tmp_path / "s1t").inputs["stage1"]["path"] == str(s1_store.resolve())
    with pytest.raises(ValueError, match="pose_targets must be one of stage2, stage1"):
        targets_store(load_config(overrides=[*SMOKE, "train.pose_targets=stage3"]), s2)
    # a Stage II folder whose Stage I store was replaced afterwards
    moved = shutil.copytree(s2, tmp_path / "s2copy")
    manifest = Manifest.load(moved)
    changed = tmp_path / "changed.npz"
    changed.write_bytes(s1_store.read_bytes() + b"\0")
    manifest.inputs["stage1"]["path"] = str(changed)
    manifest.save(moved)
    with pytest.raises(ValueError, match="changed since"):
        targets_store(cfg, moved)
    changed.unlink()
    with pytest.raises(FileNotFoundError, match="is gone"):
        targets_store(cfg, moved)


def test_stage3_self_training_reselects_and_resumes_exactly(stage2, tmp_path):
    """``train.reselect_every=1``: after each epoch (one step here) the network re-chooses every image's target; the
    outputs say so, the choice is in the checkpoint, and a run cut in two ends where an uncut one does."""
    data, s2, _ = stage2
    cfg = load_config(overrides=[*SMOKE, "train.reselect_every=1", "train.reselect_top=2"])
    ref = run_stage3(cfg, data, s2, tmp_path / "ref", "keypoints", progress=False, max_steps=3)
    done = ref.metrics["reselections"]
    assert [r["epoch"] for r in done] == [1, 2, 3] and all(r["images"] == 4 for r in done)
    assert "re-selected by the network every 1 epoch" in ref.metrics["targets"]
    quality = ref.metrics["targets_train"]  # the report's view against the true cameras
    assert set(quality) == {"initial", "final"} and all(q["num_images"] == 4 for q in quality.values())
    assert all(0 <= q["median_deg_up_to_mirror"] <= q["median_deg"] <= 180 for q in quality.values())
    ck = torch.load(ref.checkpoint, weights_only=True)
    assert ck["targets_state"]["choice"].shape == (4,) and int(ck["targets_state"]["choice"].max()) < 2 * 2
    run_stage3(cfg, data, s2, tmp_path / "cut", "keypoints", progress=False, max_steps=2)
    again = run_stage3(cfg, data, s2, tmp_path / "cut", "keypoints", progress=False, max_steps=1)
    assert again.metrics["last_losses"]["total"] == ref.metrics["last_losses"]["total"]
    assert again.metrics["reselections"] == done
    cut = torch.load(again.checkpoint, weights_only=True)["targets_state"]
    assert torch.equal(cut["choice"], ck["targets_state"]["choice"])
    assert torch.equal(cut["mirrored"], ck["targets_state"]["mirrored"])
    # without self-training the targets stay the best hypotheses: no re-selection is reported
    plain = run_stage3(load_config(overrides=SMOKE), data, s2, tmp_path / "plain", "keypoints", progress=False,
                       max_steps=2)  # fmt: skip
    assert "reselections" not in plain.metrics


def test_stage3_takes_the_pose_head_settings_from_its_own_config(stage2):
    """Every ``model.*`` setting of the pose head comes from Stage III's config (the head is new in Stage III); the
    backbone's come from the Stage II run."""
    from slopekp.train.stage3 import stage3_config

    _, s2, _ = stage2
    cfg = load_config(overrides=[*SMOKE, "model.keypoint_width=6", "model.heatmap_sigma=0.11", "model.heatmap_size=20",
                                 "model.heatmap_occluded=true", "model.num_keypoints=12", "model.encoder_width=32"])
    model = stage3_config(cfg, s2, "keypoints").model
    assert (model.keypoint_width, model.heatmap_sigma, model.heatmap_size) == (6, 0.11, 20)
    assert model.heatmap_occluded and model.num_keypoints == 12 and model.pose_head == "keypoints"
    assert model.encoder_width == 8  # the Stage II run's backbone


def test_scheduled_lr_hand_values_and_resume():
    """``train.pose_lr_schedule``: constant, or a half cosine from the base rate to 0 over the run."""
    from slopekp.train.run import scheduled_lr

    assert scheduled_lr(1e-3, 7, 10, "constant") == 1e-3
    assert scheduled_lr(1e-3, 0, 10, "cosine") == pytest.approx(1e-3)
    assert scheduled_lr(1e-3, 5, 10, "cosine") == pytest.approx(0.5e-3)
    assert scheduled_lr(2.0, 1, 3, "cosine") == pytest.approx(2.0 * 0.5 * (1 + 0.5))  # cos(π/3) = 1/2
    assert scheduled_lr(1e-3, 10, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="cosine"):
        scheduled_lr(1e-3, 0, 10, "linear")


def test_stage3_cosine_schedule_changes_the_steps_and_resumes_exactly(stage2, tmp_path):
    data, s2, _ = stage2
    cfg = load_config(overrides=[*SMOKE, "train.pose_lr_schedule=cosine", "train.pose_epochs=3"])
    ref = run_stage3(cfg, data, s2, tmp_path / "ref", "quaternion", progress=False)
    assert torch.load(ref.checkpoint, weights_only=True)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))  # the last (third) step's rate
    run_stage3(cfg, data, s2, tmp_path / "cut", "quaternion", progress=False, max_steps=2)
    again = run_stage3(cfg, data, s2, tmp_path / "cut", "quaternion", progress=False)
    assert again.metrics["last_losses"]["total"] == ref.metrics["last_losses"]["total"]
    flat = run_stage3(load_config(overrides=[*SMOKE, "train.pose_epochs=3"]), data, s2, tmp_path / "flat",
                      "quaternion", progress=False)  # fmt: skip
    assert _losses(flat.out_dir)[:2] == _losses(ref.out_dir)[:2]  # the first step's rate is the same
    assert _losses(flat.out_dir)[2] != _losses(ref.out_dir)[2]


def test_stage2_trains_the_texture_flow_head(stage1, tmp_path):
    # model.texture_head=flow: the flow's terms are logged and its projection loss shrinks on the same 4 images (the
    # mask-distance term stays 0: the flow starts at the image centre, inside the mask); the evaluation scores the
    # flow-sampled UV image as texture_head beside the photo texture, and a Stage III run told
    # model.texture_from_photo=false shows the head's texture instead
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from slopekp.eval.report import evaluate_checkpoint

    data, mp = stage1
    cfg = load_config(overrides=[*SMOKE, "model.texture_head=flow"])
    run_stage2(cfg, data, mp, tmp_path / "s2", progress=False, max_steps=24)
    acc = EventAccumulator(str(tmp_path / "s2" / "tb"))
    acc.Reload()
    proj = [e.value for e in acc.Scalars("stage2/flow_projection")]
    assert "stage2/texture_flow" in acc.Tags()["scalars"] and len(proj) == 24
    assert sum(proj[-4:]) < 0.9 * sum(proj[:4]), proj  # 0.79 here: 24 steps leave a margin a 16-step run did not
    res = run_stage3(cfg, data, tmp_path / "s2", tmp_path / "s3", "quaternion", progress=False, max_steps=2)
    m = evaluate_checkpoint(res.checkpoint, data, tmp_path / "eval", gallery=0, pck_pairs=10)
    assert 0 < m["texture"]["l1_pred_camera"] < 1 and 0 < m["texture_head"]["l1_pred_camera"] < 1
    off = load_config(overrides=[*SMOKE, "model.texture_head=flow", "model.texture_from_photo=false"])
    res = run_stage3(off, data, tmp_path / "s2", tmp_path / "s3off", "quaternion", progress=False, max_steps=2)
    m = evaluate_checkpoint(res.checkpoint, data, tmp_path / "eval_off", gallery=0, pck_pairs=10)
    assert "texture_head" not in m and 0 < m["texture"]["l1_pred_camera"] < 1
