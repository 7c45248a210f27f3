"""What every training stage sets up the same way: seeding, device, threads, deterministic resumable batches,
TensorBoard, and a SIGINT/SIGTERM guard that lets the loop write a checkpoint before it stops.

The stages (:mod:`slopekp.train.stage2`, :mod:`slopekp.train.stage3`) read top to bottom with these.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from slopekp.config import Config
from slopekp.utils import resolve_device, seed_everything


def setup(cfg: Config) -> torch.device:
    """Seed everything, set the thread count and return the device (:func:`slopekp.utils.resolve_device`)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return device


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The dataset order of ``epoch``: a permutation of ``range(n)`` that depends on ``(seed, epoch)`` only, so a
    resumed run sees the same batches as an uninterrupted one."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


def summary_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter  # a declared dependency; imported late (slow import)

    return SummaryWriter(str(path))


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast for the network on CUDA when ``enabled`` (``train.amp``); a no-op context elsewhere."""
    on = enabled and device.type == "cuda"
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def image_row(*images: torch.Tensor) -> torch.Tensor:
    """Tile ``(3, H, W)`` or ``(H, W)`` images in [0, 1] side by side (resized to the first one's height) into one
    ``(3, H, ΣW)`` image for TensorBoard."""
    h = images[0].shape[-2]
    out = []
    for im in images:
        im = im.detach().float().cpu()
        im = im.expand(3, *im.shape) if im.dim() == 2 else im
        if im.shape[-2] != h:
            w = round(im.shape[-1] * h / im.shape[-2])
            im = torch.nn.functional.interpolate(im[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        out.append(im.clamp(0, 1))
    return torch.cat(out, dim=-1)


class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the loop saved a checkpoint and stops (rerun the command to resume)."""


@contextlib.contextmanager
def stop_guard() -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM only record themselves in the yielded list, so the training loop can
    finish its step, write a checkpoint and raise :class:`StopRequested`. The old handlers come back after."""
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield received
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
