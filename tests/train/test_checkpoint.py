"""Checkpoints load safely (weights_only) and refuse truncated, foreign and mismatched files by name."""

from __future__ import annotations

import pytest
import torch

from slopekp.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from slopekp.train.multiplex import CameraMultiplex


class _Payload:
    """A class that unpickling would have to import and build: a stand-in for code in a foreign file."""


def _payload():
    store = CameraMultiplex(2, "fp", data_fingerprint="dd")
    store.add(torch.tensor([0, 3]), torch.randn(2, 2, 7), torch.full((2, 2), 0.5), torch.rand(2, 3))
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {
        "kind": "stage2", "head": "keypoints", "template_fingerprint": "fp", "config": "seed: 0\n",
        "manifest": {"command": "x"}, "model": net.state_dict(), "optimizer": opt.state_dict(),
        "multiplex": store.state_dict(), "epoch": 1, "step": 7, "batch_in_epoch": 2, "rng": rng_state(),
        "metrics": {"total": 0.5},
    }  # fmt: skip


def test_roundtrip_with_store_and_rng(tmp_path):
    p = save_checkpoint(tmp_path / "c" / "last.pt", _payload())
    ck = load_checkpoint(p, kind="stage2", head="keypoints", template_fingerprint="fp")
    store = CameraMultiplex.from_state_dict(ck["multiplex"])
    assert store.ids.tolist() == [0, 3] and store.data_fingerprint == "dd" and store.num_hypotheses == 2
    assert ck["step"] == 7 and ck["metrics"] == {"total": 0.5}
    set_rng_state(ck["rng"])
    a = torch.rand(3)
    set_rng_state(ck["rng"])
    assert torch.equal(a, torch.rand(3))
    assert not list(p.parent.glob(".*.tmp"))


def test_mismatches_are_named(tmp_path):
    p = save_checkpoint(tmp_path / "last.pt", _payload())
    with pytest.raises(CheckpointError, match="pose head 'keypoints', expected 'svd'"):
        load_checkpoint(p, head="svd")
    with pytest.raises(CheckpointError, match=r"template \(fingerprint\) 'fp', expected 'other'"):
        load_checkpoint(p, template_fingerprint="other")
    with pytest.raises(CheckpointError, match="stage 'stage2', expected 'stage3'"):
        load_checkpoint(p, kind="stage3")


def test_truncated_foreign_and_missing_files(tmp_path):
    p = save_checkpoint(tmp_path / "last.pt", _payload())
    data = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt: truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a slopekp checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    # an object that would need unpickling (code) is refused, not run
    torch.save({"format": "slopekp.checkpoint/1", "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: refused: it would run code when loaded"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pt: not a slopekp checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_store_state_is_checked():
    state = CameraMultiplex(2, "fp").state_dict()
    state["scores"] = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="scores has shape"):
        CameraMultiplex.from_state_dict(state)
