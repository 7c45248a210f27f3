"""What every training stage sets up the same way: seeding, device, threads, deterministic resumable batches,
TensorBoard, a SIGINT/SIGTERM guard that lets the loop write a checkpoint before it stops, and the loop itself
(:func:`train_loop`).

The stages (:mod:`slopekp.train.stage2`, :mod:`slopekp.train.stage3`) read top to bottom with these.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from slopekp.checkpoint import CheckpointError, load_checkpoint
from slopekp.checkpoint import resume_checkpoint as pick_checkpoint
from slopekp.config import CHOICES, Config, save_config
from slopekp.manifest import prepare_output_dir
from slopekp.train import distributed as D
from slopekp.utils import resolve_device, seed_everything


def setup(cfg: Config) -> torch.device:
    """Seed everything, set the thread count and return the device (:func:`slopekp.utils.resolve_device`)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return device


def prepare_run_dir(out_dir: Path, manifest, cfg: Config, dist, *, inputs, overwrite: bool, force_new: bool,
                    results: tuple[str, ...]) -> str | None:
    """Rank 0 checks or prepares ``out_dir`` for ``manifest`` (:func:`slopekp.manifest.prepare_output_dir`) and
    writes ``config.yaml``; every rank gets its answer (``"resume"``, ...), after which the folder is ready (a
    barrier). The number of ranks joins the manifest of a multi-process run: the global batch depends on it."""

    if dist.distributed:
        manifest.settings["world_size"] = dist.world_size
    state = None
    if dist.is_main:
        state = prepare_output_dir(out_dir, manifest, overwrite=overwrite, force_new=force_new, results=results,
                                   inputs=[p for p in inputs if p])  # fmt: skip
        save_config(cfg, out_dir / "config.yaml")
    return D.broadcast_object(state, dist)


def resume_checkpoint(path: Path, manifest, dist, *, map_location, **checks) -> dict[str, Any] | None:
    """The checkpoint a resumed run continues from, or None (no checkpoint yet: it starts afresh).

    Rank 0 looks at ``path`` and what an interrupted save left beside it, and moves a complete newer temporary
    onto ``path`` when ``path`` is damaged or older (:func:`slopekp.checkpoint.resume_checkpoint`); then
    every other rank reads ``path``. ``checks`` (``kind``, ``head``, ``template_fingerprint``) go to the loader.

    Raises:
        CheckpointError: on every rank: ``path`` is truncated or corrupt and nothing complete can replace it (the
            message says to rerun with ``--force-new``), or it is of another stage, head or template.
    """

    ck, error = None, None
    if dist.is_main:
        try:
            ck = pick_checkpoint(path, manifest, map_location=map_location, **checks)
        except Exception as e:
            if not dist.distributed:
                raise
            error = e
    found, message = D.broadcast_object((ck is not None, None if error is None else str(error)), dist)
    if error is not None:
        raise error
    if message is not None:
        raise CheckpointError(message)
    if found and not dist.is_main:
        ck = load_checkpoint(path, map_location=map_location, **checks)
    return ck


def adam(params, lr: float) -> torch.optim.Adam:
    """The network's Adam: the multi-tensor (``foreach``) implementation everywhere. It does the same arithmetic,
    tensor by tensor, as the single-tensor loop that PyTorch picks on a CPU (bit for bit: a test checks it) with
    one call per operation for all tensors instead of about ten Python-dispatched ones per tensor; on CUDA it is
    already PyTorch's default. (``fused`` would be faster still on a CPU, but rounds differently.)"""
    return torch.optim.Adam(params, lr=lr, foreach=True)


LR_SCHEDULES = CHOICES["train.pose_lr_schedule"]


def scheduled_lr(base: float, step: int, total: int, schedule: str) -> float:
    """The learning rate of step ``step`` (0-based) of ``total``: ``base`` throughout (``constant``), or
    ``base · ½(1 + cos(π·step/total))`` (``cosine``: from ``base`` down towards 0 at the last step). A function of
    the step alone, so a resumed run sets the same rates as an uninterrupted one."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"learning-rate schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if schedule == "constant" or total <= 0:
        return float(base)
    return float(base) * 0.5 * (1.0 + math.cos(math.pi * min(max(step, 0), total) / total))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in opt.param_groups:
        group["lr"] = lr


def summary_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter  # slow to import (TensorBoard): only when a run logs

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


@dataclass
class LoopState:
    """Where a training loop stands: ``epoch`` (epochs done), ``step`` (steps done, all epochs) and
    ``in_epoch`` (steps done in the current epoch). Checkpoints store the three; a resumed loop starts from them."""

    epoch: int = 0
    step: int = 0
    in_epoch: int = 0


@dataclass(frozen=True)
class LoopSettings:
    """What a training stage asks of :func:`train_loop`: its length, names and the stage's own callbacks."""

    epochs: int
    """Epochs in all (a resumed loop continues to this many)."""
    tag: str
    """TensorBoard prefix of the logs (``stage2`` -> ``stage2/total``)."""
    step_fn: Callable[[Any], dict[str, Any]]
    """Trains on one batch and returns the step's logs (the same on every rank; numbers, or 0-dim tensors left on
    the device)."""
    checkpoint: Callable[[dict[str, float]], None]
    """Writes a checkpoint, given the latest logs."""
    on_epoch_end: Callable[[int], None] | None = None
    """Called with the number of epochs done, before that epoch's checkpoint (e.g. pruning the multiplex)."""
    max_steps: int | None = None
    """At most this many steps in this call (None: to the end)."""
    progress: bool = True
    """Show a progress bar (rank 0)."""
    desc: str | None = None
    """The bar's label (default: ``tag``)."""
    bar_position: int | None = None
    """The bar's line when several processes show one each (tqdm's ``position``; None: the next free line)."""
    postfix: tuple[str, ...] = ()
    """Log keys shown on the bar beside ``total``."""
    checkpoint_path: Path | None = None
    """Named in the message of a stop by a signal."""


def train_loop(
    dataset, cfg: Config, dist, state: LoopState, loop: LoopSettings, writer=None
) -> tuple[dict[str, float], int]:
    """The epoch / step / checkpoint / stop skeleton shared by the training stages.

    Each step takes this rank's next batch of :func:`slopekp.train.distributed.shard_loader` (deterministic in
    ``(cfg.seed, epoch)``, skipping the ``state.in_epoch`` batches already done) and calls ``loop.step_fn(batch)``.
    The loop then advances ``state``; every ``cfg.train.sync_every`` steps, before each checkpoint and at the end
    it reads the pending logs back (:func:`read_back`) and logs them as ``tag/KEY`` scalars at their own steps to
    ``writer`` (rank 0 passes one, the others None); it calls ``loop.checkpoint(logs)`` every
    ``cfg.train.checkpoint_every`` steps, at each epoch's end and after a SIGINT/SIGTERM, which stops every rank
    after the same step (:class:`StopRequested`); a step that ends the epoch or the call is saved once.
    ``loop.on_epoch_end(epochs_done)`` runs before that epoch's checkpoint. ``loop.max_steps`` bounds the steps of
    this call.

    Returns the last logs and the number of steps this call took.
    """

    B = cfg.train.batch_size
    per_epoch = D.num_steps(len(dataset), B, dist.world_size)
    total = loop.epochs * per_epoch
    bar = tqdm(total=total, initial=min(state.step, total), unit="step", desc=loop.desc or loop.tag,
               disable=not loop.progress or not dist.is_main, dynamic_ncols=True,
               position=loop.bar_position)  # fmt: skip
    logs: dict[str, float] = {}
    pending: list[tuple[int, dict]] = []  # steps whose logs are still on the device

    def read_logs() -> dict[str, float]:
        """Write the pending steps' logs to TensorBoard and the bar, read back in one transfer per device."""
        nonlocal logs
        for step, values in read_back(pending):
            if writer is not None:
                for k, v in values.items():
                    writer.add_scalar(f"{loop.tag}/{k}", v, step)
            logs = values
        if pending:
            shown = {k: f"{logs[k]:.4f}" for k in ("total", *loop.postfix) if k in logs}
            bar.set_postfix(**shown, epoch=state.epoch)
        pending.clear()
        return logs

    steps_now = 0
    try:
        with stop_guard() as stop:
            while state.epoch < loop.epochs and (loop.max_steps is None or steps_now < loop.max_steps):
                loader = D.shard_loader(dataset, B, cfg.seed, state.epoch, dist, state.in_epoch, cfg.train.num_workers)
                for batch in loader:
                    pending.append((state.step + 1, loop.step_fn(batch)))
                    state.step, state.in_epoch, steps_now = state.step + 1, state.in_epoch + 1, steps_now + 1
                    bar.update(1)
                    if state.step % cfg.train.sync_every == 0:
                        read_logs()
                    last = state.in_epoch >= per_epoch or (loop.max_steps is not None and steps_now >= loop.max_steps)
                    if state.step % cfg.train.checkpoint_every == 0 and not last:  # the last one is saved below
                        loop.checkpoint(read_logs())
                    if D.any_rank(bool(stop), dist):  # every rank stops after the same step
                        loop.checkpoint(read_logs())
                        raise StopRequested(f"stopped by a signal; checkpoint {loop.checkpoint_path or 'written'}")
                    if loop.max_steps is not None and steps_now >= loop.max_steps:
                        break
                if state.in_epoch >= per_epoch:
                    state.epoch, state.in_epoch = state.epoch + 1, 0
                    if loop.on_epoch_end is not None:
                        loop.on_epoch_end(state.epoch)
                loop.checkpoint(read_logs())
    finally:
        bar.close()
    return read_logs(), steps_now


def read_back(pending: list[tuple[int, dict]]) -> list[tuple[int, dict[str, float]]]:
    """Steps' logs (``(step, {key: 0-dim tensor or number})``) as floats, keys in their order. The tensors are
    read back in one transfer per device, so a GPU run waits for its device once per call, not once per value."""
    by_device: dict[torch.device, list[tuple[int, str, torch.Tensor]]] = {}
    out = [(step, dict(values)) for step, values in pending]
    for i, (_, values) in enumerate(out):
        for k, v in values.items():
            if isinstance(v, torch.Tensor):
                by_device.setdefault(v.device, []).append((i, k, v))
            else:
                values[k] = float(v)
    for items in by_device.values():
        read = torch.stack([v.detach().reshape(()).to(torch.float64) for _, _, v in items]).tolist()
        for (i, k, _), x in zip(items, read):
            out[i][1][k] = x
    return out
