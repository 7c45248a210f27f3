"""A tiny SynthBirds-trained model (keypoint head) shared by the predict and viewer tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from slopekp.config import load_config


@dataclass
class TinyModel:
    data: Path
    """A SynthBirds folder: 4 train, 3 test images."""
    checkpoint: Path
    """Stage III (keypoints) ``last.pt``."""
    stage2: Path
    """Stage II ``last.pt`` (a checkpoint without a trained pose head)."""


@pytest.fixture(scope="package")
def tiny_model(tmp_path_factory, smoke_overrides) -> TinyModel:
    from slopekp.data.synthetic import generate_synthbirds
    from slopekp.train.stage1 import run_stage1
    from slopekp.train.stage2 import run_stage2
    from slopekp.train.stage3 import run_stage3

    root = tmp_path_factory.mktemp("predict")
    data = generate_synthbirds(root / "sb", n_train=4, n_test=3, size=48, seed=3, progress=False)
    cfg = load_config(overrides=smoke_overrides)
    run_stage1(cfg, data, root / "s1", progress=False, report=False)
    run_stage2(cfg, data, root / "s1" / "multiplex.npz", root / "s2", progress=False, max_steps=1)
    s3 = run_stage3(cfg, data, root / "s2", root / "s3", "keypoints", progress=False, max_steps=2)
    return TinyModel(data, s3.checkpoint, root / "s2" / "checkpoints" / "last.pt")
