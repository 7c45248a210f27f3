"""Shared fixtures. Real data in ``../shared/data`` is optional: tests that need it skip cleanly without it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Triton decides between compiling and interpreting when it is first imported, and torch may import it while the
# test modules are collected: the fused renderer's tests (tests/render/test_fused.py) run it under its interpreter
# on the CPU, so say so before anything loads. TRITON_INTERPRET=0 (set by the caller) tests the compiled kernels
# on CUDA instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

# isort: off
import slopekp  # noqa: F401  -- sets OMP_WAIT_POLICY before torch loads OpenMP (see slopekp/__init__.py)
import torch

# isort: on

# Under pytest-xdist (`-n 2` in pyproject.toml's addopts) each worker process takes an equal share of the cores for
# torch's intra-op threads, so that the workers do not oversubscribe the machine between them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SLOPEKP_SHARED_DATA", REPO.parent / "shared" / "data"))


#: Config overrides that run every stage of the method (Stage I to evaluation) in seconds on one CPU thread.
SMOKE_OVERRIDES = (
    "multiplex.num_az=2", "multiplex.num_el=2", "multiplex.steps=2", "multiplex.image_size=16",
    "model.image_size=64", "model.encoder_width=8", "model.shape_hidden=16", "model.uv_height=8",
    "model.texture_width=4", "model.num_keypoints=8", "train.render_size=16", "train.batch_size=4",
    "train.epochs=1", "train.pose_epochs=1", "data.flip=false", "data.jitter_frac=0", "threads=1",
    "multiplex.workers=1",  # Stage I in the test process (tests/train/test_stage1.py runs it in workers too)
    "jobs=1",  # the heads one after another in the test process (tests/eval/test_benchmark.py runs them in two)
)  # fmt: skip


@pytest.fixture(scope="session")
def smoke_overrides() -> list[str]:
    """:data:`SMOKE_OVERRIDES` as a fresh list."""
    return list(SMOKE_OVERRIDES)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for device-parametrised tests (cpu, cuda)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA requested but not available")
    return torch.device(name)


@pytest.fixture
def triton_device(device) -> torch.device:
    """``--device`` for the Triton kernels: the CPU under Triton's interpreter, or CUDA with compiled kernels
    (``TRITON_INTERPRET=0 pytest --device cuda -m triton``)."""
    from slopekp.render.fused import interpreting

    if device.type == "cpu" and not interpreting():
        pytest.skip("on the CPU the kernels run under TRITON_INTERPRET=1 only")
    if device.type == "cuda" and interpreting():
        pytest.skip("set TRITON_INTERPRET=0 to test the compiled kernels on CUDA")
    return device


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$SLOPEKP_SHARED_DATA``); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sfm_dir(shared_data) -> Path:
    p = shared_data / "cub" / "sfm"
    if not (p / "anno_train.mat").is_file():
        pytest.skip(f"CUB SfM files not found in {p}")
    return p


@pytest.fixture(scope="session")
def ucmr_template_path(shared_data) -> Path:
    p = shared_data / "template_shape" / "bird_template_arrays.npz"
    if not p.is_file():
        pytest.skip(f"U-CMR template not found at {p}")
    return p


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------ a tiny trained model (predict, viewer, video)


@dataclass
class TinyModel:
    """A SynthBirds-trained model (keypoint head) in seconds, shared by the predict, viewer and video tests."""

    data: Path
    """A SynthBirds folder: 4 train, 3 test images."""
    checkpoint: Path
    """Stage III (keypoints) ``last.pt``."""
    stage2: Path
    """Stage II ``last.pt`` (a checkpoint without a trained pose head)."""


def train_tiny(root: Path, head: str, *, size: int, seed: int):
    """SynthBirds (4 train, 3 test images of ``size``²) in ``root/sb``, then Stages I-III at the smoke sizes
    (:data:`SMOKE_OVERRIDES`; Stage II one step, Stage III two with ``head``). Returns ``(data, stage3 result)``;
    the stages' folders are ``root/s1``, ``root/s2`` and ``root/s3``."""
    from slopekp.config import load_config
    from slopekp.data.synth.writer import generate_synthbirds
    from slopekp.train.stage1 import run_stage1
    from slopekp.train.stage2 import run_stage2
    from slopekp.train.stage3 import run_stage3

    data = generate_synthbirds(root / "sb", n_train=4, n_test=3, size=size, seed=seed, progress=False)
    cfg = load_config(overrides=list(SMOKE_OVERRIDES))
    run_stage1(cfg, data, root / "s1", progress=False, report=False)
    run_stage2(cfg, data, root / "s1" / "multiplex.npz", root / "s2", progress=False, max_steps=1)
    return data, run_stage3(cfg, data, root / "s2", root / "s3", head, progress=False, max_steps=2)


@pytest.fixture(scope="session")
def tiny_pipeline():
    """:func:`train_tiny`, for fixtures that train a tiny model of their own (another head, size or seed)."""
    return train_tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    root = tmp_path_factory.mktemp("tiny_model")
    data, s3 = train_tiny(root, "keypoints", size=48, seed=3)
    return TinyModel(data, s3.checkpoint, root / "s2" / "checkpoints" / "last.pt")
