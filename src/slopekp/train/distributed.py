"""Multi-process (``torchrun``) training: process groups, sharded batches, and a camera multiplex kept identical
on every rank.

How Stage II runs on W ranks (``torchrun --nproc_per_node W ...``):
* **Process group** (:func:`init_distributed`): read from the torchrun environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); backend ``nccl`` for CUDA, ``gloo`` otherwise. Without
  torchrun (``WORLD_SIZE`` unset or 1) nothing is initialised and every helper here is a no-op, so one code path
  serves both.
* **Batches** (:func:`shard_indices`, :func:`shard_loader`): a *global* batch is ``batch_size · W`` consecutive
  items of the epoch order; rank ``r`` takes its positions ``r, r + W, ...`` (``batch_size`` per rank). Every
  rank gets the same number of batches, and within one step no two ranks hold the same image. With ``W = 1``
  the batches are exactly those of a single-process loader.
* **Network**: wrapped in ``DistributedDataParallel``; gradients are averaged over ranks (each rank's loss is a
  mean over its own batch, so the result is the mean of the per-rank means).
* **Camera multiplex** (:func:`sync_store_rows`): after each step's per-image Adam step and score update, every
  rank all-gathers the rows the ranks changed and writes them into its store. The ranks' images are disjoint,
  so this is exactly the single store that applied every rank's update.

Communication runs on the store's device for ``nccl`` and on the CPU for ``gloo`` (tensors are moved there and
back). See :func:`sync_store_rows` for what is exchanged.
"""

from __future__ import annotations

import gc
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from slopekp.data.cub import collate_samples
from slopekp.train.multiplex import CameraMultiplex, split_image_ids

#: The torchrun variables a multi-process run needs (``WORLD_SIZE`` > 1).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run. The default is a single process (nothing initialised)."""

    rank: int = 0
    """Global rank in ``[0, world_size)``."""
    world_size: int = 1
    local_rank: int = 0
    """Rank on this machine: the CUDA device index under ``nccl``."""
    backend: str | None = None
    """``"nccl"``, ``"gloo"``, or ``None`` for a single process."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files (checkpoints, TensorBoard, reports) and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process (collectives are real, not no-ops)."""
        return self.world_size > 1


SINGLE = DistInfo()


def _device_type(device_kind: str | torch.device) -> str:
    if str(device_kind) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device_kind).type


def init_distributed(
    device_kind: str | torch.device = "cpu", *, timeout: timedelta = timedelta(minutes=30)
) -> DistInfo:
    """Join the torchrun process group, or return a single-process :class:`DistInfo` outside torchrun.

    Args:
        device_kind: the training device (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"`` or a
            ``torch.device``); only its type matters. CUDA uses ``nccl`` and makes ``cuda:LOCAL_RANK`` the current
            device (use :func:`rank_device` for the device to train on); anything else uses ``gloo``.
        timeout: how long a collective (and the start-up rendezvous) may wait for the other ranks.

    Returns:
        :class:`DistInfo`. With ``WORLD_SIZE`` unset or 1: ``DistInfo()`` (rank 0 of 1), nothing initialised.
        If a process group is already initialised it is reused.

    Raises:
        ValueError: ``WORLD_SIZE`` > 1 but a torchrun variable is missing or malformed, or ``LOCAL_RANK`` names a
            CUDA device this machine lacks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or "1")
    if world <= 1:
        return SINGLE
    missing = [k for k in TORCHRUN_ENV if not os.environ.get(k)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start multi-process training with torchrun "
            "(python -m torch.distributed.run --nproc_per_node N ...)"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    kind = _device_type(device_kind)
    backend = "nccl" if kind == "cuda" else "gloo"
    kw: dict[str, Any] = {}
    if kind == "cuda":
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ValueError(f"LOCAL_RANK={local_rank} but this machine has {n} CUDA device(s)")
        torch.cuda.set_device(local_rank)
        kw["device_id"] = torch.device("cuda", local_rank)
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise ValueError(
                f"a process group is already initialised as rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but the environment says rank {rank} of {world}"
            )
        return DistInfo(rank, world, local_rank, dist.get_backend())
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout, **kw)
    return DistInfo(rank, world, local_rank, backend)


def cleanup() -> None:
    """Destroy the process group if one is initialised (call once at the end, on every rank).

    Drop every ``DistributedDataParallel`` wrapper first (``del ddp``, or let the function that made it return):
    a DDP reducer that outlives the process group destroys it later while holding the GIL, and gloo's worker
    thread can then wait for the GIL forever (a hang at exit: pytorch/pytorch#56297).
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # wrappers kept alive only by reference cycles go first (see above)
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` for a multi-process run (``device_ids`` set on CUDA), else
    ``model`` itself. Parameters with ``requires_grad=False`` are left out of the gradient averaging: freeze
    what the loss does not reach (e.g. a head the stage does not run) before wrapping, or DDP waits for its
    gradients and fails at the next step. Keep ``model`` for ``state_dict()``; drop the wrapper before
    :func:`cleanup`."""
    if not info.distributed:
        return model

    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def rank_device(device: torch.device | str, info: DistInfo) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for CUDA in a multi-process run, else ``device``."""
    device = torch.device(device)
    if info.distributed and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def _comm_device(info: DistInfo) -> torch.device:
    """Where collective tensors must live: the current CUDA device for nccl, the CPU for gloo."""
    if info.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------
# Thin wrappers (no-ops for a single process)
# ----------------------------------------------------------------------------------------------------------


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (e.g. rank 0 wrote a file the others read next)."""
    if not info.distributed:
        return
    if info.backend == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; small ones: it pickles through a tensor)."""
    if not info.distributed:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device(info) if info.backend == "nccl" else None)
    return box[0]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on some rank.

    For decisions all ranks must take together: a SIGINT/SIGTERM that reached only some ranks, or reached them
    at different steps, must stop every rank after the same step (else the others block in the next
    collective).
    """
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """The mean over ranks of each value (e.g. a step's logged losses), on every rank.

    Every rank must pass the same keys (they are sorted, so the order may differ). One ``all_reduce`` in
    float64. Per-rank means over batches of different sizes are averaged with equal weight.

    Raises:
        ValueError: if the ranks passed different keys.
    """
    if not info.distributed:
        return dict(values)
    keys = sorted(values)
    # a checksum of the keys rides along, so a key mismatch is an error rather than silently mixed values
    key_hash = float(zlib.crc32("\0".join(keys).encode()))  # not hash(): salted per process
    dev = _comm_device(info)
    t = torch.tensor([float(values[k]) for k in keys] + [float(len(keys)), key_hash], dtype=torch.float64, device=dev)
    lo, hi = t[-2:].clone(), t[-2:].clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise ValueError(f"ranks logged different keys (rank {info.rank}: {keys})")
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t[: len(keys)].tolist())}


def average_gradients(params: Sequence[torch.nn.Parameter], info: DistInfo) -> None:
    """Replace each ``p.grad`` by its mean over the ranks (one ``all_reduce`` of a flat buffer), for a model
    whose forward is not one ``DistributedDataParallel`` call. A missing gradient counts as zeros (and is then
    set), so every rank reduces the same buffer."""
    if not info.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params]).to(_comm_device(info))
    dist.all_reduce(flat)
    flat.div_(info.world_size)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_buffers(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Rank ``src``'s buffers (e.g. BatchNorm running statistics) on every rank, as DDP does before a forward."""
    if not info.distributed:
        return
    for b in module.buffers():
        t = b.detach().to(_comm_device(info))
        dist.broadcast(t, src=src)
        b.data.copy_(t)


def module_checksum(module: torch.nn.Module) -> Tensor:
    """``(2,)`` float64 sums of a module's parameters and buffers (plain and position-weighted), to compare ranks."""
    total, weighted = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for t in [*module.parameters(), *module.buffers()]:
        v = t.detach().double().reshape(-1).cpu()
        total += v.sum()
        weighted += (v * torch.linspace(1, 2, v.numel(), dtype=torch.float64)).sum()
    return torch.stack([total, weighted])


def modules_in_sync(module: torch.nn.Module, info: DistInfo) -> bool:
    """True when every rank holds the same parameters and buffers (checksums equal); True for one process."""
    return _same_on_every_rank(module_checksum(module), info) if info.distributed else True


def _same_on_every_rank(values: Tensor, info: DistInfo) -> bool:
    """Collective: True on every rank when ``values`` is equal on all ranks (min and max all-reduces agree)."""
    c = values.to(_comm_device(info))
    lo, hi = c.clone(), c.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


# ----------------------------------------------------------------------------------------------------------
# Sharded batches
# ----------------------------------------------------------------------------------------------------------


def num_steps(n: int, batch_size: int, world_size: int) -> int:
    """Steps per epoch of ``n`` items with ``batch_size`` per rank: ``ceil(n / (batch_size · world_size))``."""
    return -(-int(n) // (int(batch_size) * int(world_size)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The dataset order of ``epoch``: a permutation of ``range(n)`` that depends on ``(seed, epoch)`` only, so a
    resumed run sees the same batches as an uninterrupted one."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


def shard_indices(order: Sequence[int], batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Rank ``rank``'s batches of one epoch.

    Global batch ``g`` is ``order[g·G : (g+1)·G]`` with ``G = batch_size · world_size``; rank ``r`` takes its
    positions ``r, r + W, r + 2W, ...``, i.e. ``batch_size`` items (the last global batch may be short: its
    ``L`` items are dealt out the same way, so local sizes differ by at most one). Properties:
    * every rank gets ``ceil(len(order) / G)`` batches (:func:`num_steps`), so the ranks step together;
    * within one step the ranks' items are disjoint (``order`` is a permutation: no image is updated by two
      ranks in one step, so :func:`sync_store_rows` never meets a conflict);
    * every item of ``order`` is in exactly one rank's batches, in exactly one step;
    * padding: when the last global batch has fewer items than ranks (``0 < L < W``), ranks ``L..W−1`` would be
      empty; each of them instead repeats **its own last item of the previous step** (an image that no other
      rank holds in this step). Such an image takes one more camera step and counts once more in the network
      gradient: at most ``W − 1`` items per epoch, and only when ``len(order) mod G`` is in ``1..W−1``. No batch
      is empty (a zero-sized forward would break the loss means and DDP's gradient reduction);
    * with ``world_size = 1`` the batches are ``order`` cut into ``batch_size`` chunks, as
      a single-process loader cuts them.

    Raises:
        ValueError: for ``batch_size`` < 1, ``rank`` outside ``[0, world_size)``, or a non-empty ``order``
            shorter than ``world_size`` (some rank would have nothing at all).
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if int(world_size) != world_size or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size) with world_size >= 1, got rank={rank}, world={world_size}")
    order = [int(i) for i in order]
    if not order:
        return []
    if len(order) < world_size:
        raise ValueError(f"{len(order)} item(s) cannot be shared by {world_size} ranks: use fewer processes")
    G = batch_size * world_size
    steps = num_steps(len(order), batch_size, world_size)
    batches = [order[g * G : (g + 1) * G][rank::world_size] for g in range(steps)]
    if not batches[-1]:  # 0 < L < W and rank >= L; then there are >= 2 global batches (len(order) >= W)
        batches[-1] = [batches[-2][-1]]
    return batches


def shard_loader(
    dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    info: DistInfo,
    skip_batches: int = 0,
    num_workers: int = 0,
    collate_fn=None,
):
    """This rank's DataLoader of ``epoch``: :func:`shard_indices` of :func:`epoch_order`,
    without the first ``skip_batches`` steps (global steps: the same count on every rank).

    The drop-in replacement of a single-process loader (identical batches for a single process).
    Sets ``dataset.epoch`` like it. ``collate_fn`` defaults to :func:`slopekp.data.cub.collate_samples`.
    """
    if collate_fn is None:
        collate_fn = collate_samples
    if hasattr(dataset, "epoch"):
        dataset.epoch = epoch
    order = epoch_order(len(dataset), seed, epoch)
    batches = shard_indices(order, batch_size, info.rank, info.world_size)[skip_batches:]
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_fn)


# ----------------------------------------------------------------------------------------------------------
# The camera multiplex across ranks
# ----------------------------------------------------------------------------------------------------------


def sync_store_rows(store: CameraMultiplex, ids_changed: Tensor, info: DistInfo) -> int:
    """Make every rank's store hold every rank's latest rows of the images changed this step.

    Each rank passes the image ids it changed since the last sync (e.g. ``batch.id`` after
    :meth:`~CameraMultiplex.adam_step` and :meth:`~CameraMultiplex.set_scores`; mirrored ids and repeats are
    fine, they are reduced to unique canonical ids). Exchanged per image: the id, ``offsets``, ``exp_avg``,
    ``exp_avg_sq`` (``(P, 6)`` each), ``scores`` ``(P,)`` and the Adam step count: what a training step
    changes. Base cameras and crops (fixed during training) are not exchanged.

    Collective: every rank must call it at the same point, with its own (possibly empty) ids. Three
    ``all_gather`` calls: the per-rank counts, then the rows padded to the largest count (one float32 and one
    int64 tensor); the padding is dropped. Every rank then writes all gathered rows, its own included, in rank
    order; should two ranks report the same image (not with :func:`shard_indices`), the highest rank's row wins
    on every rank, so the stores still agree.

    Precondition: the stores held the same rows before the step (same start, synced every step).

    Args:
        store: this rank's store (any device; gloo exchanges through the CPU).
        ids_changed: ``(B,)`` image ids.
        info: from :func:`init_distributed`.

    Returns:
        The number of distinct images written (this rank's and the others'); 0 for a single process.

    Raises:
        MissingImageError: an id is not in the store.
    """
    if not info.distributed:
        return 0
    P = store.num_hypotheses
    ids = split_image_ids(ids_changed.detach().cpu()).canonical.unique()
    rows = store.rows(ids)
    k = ids.numel()
    cdev = _comm_device(info)
    floats = torch.cat(
        [store.offsets[rows].reshape(k, -1), store.exp_avg[rows].reshape(k, -1),
         store.exp_avg_sq[rows].reshape(k, -1), store.scores[rows]], dim=1,
    ).to(cdev, torch.float32)  # fmt: skip
    ints = torch.stack([ids.to(store.device), store.adam_step_count[rows]], dim=1).to(cdev, torch.int64)

    count = torch.tensor([k], dtype=torch.int64, device=cdev)
    counts = [torch.zeros_like(count) for _ in range(info.world_size)]
    dist.all_gather(counts, count)
    counts_l = [int(c.item()) for c in counts]
    kmax = max(counts_l)
    if kmax == 0:
        return 0

    def gather(t: Tensor) -> Tensor:
        padded = torch.zeros(kmax, t.shape[1], dtype=t.dtype, device=cdev)
        padded[:k] = t
        out = [torch.empty_like(padded) for _ in range(info.world_size)]
        dist.all_gather(out, padded)
        return torch.cat([o[:c] for o, c in zip(out, counts_l)])

    all_f, all_i = gather(floats), gather(ints)
    last: dict[int, int] = {}  # id -> its last (highest-rank) position
    for j, i in enumerate(all_i[:, 0].tolist()):
        last[i] = j
    keep = torch.tensor(sorted(last.values()), dtype=torch.int64, device=cdev)
    all_f, all_i = all_f[keep].to(store.device), all_i[keep].to(store.device)
    r = store.rows(all_i[:, 0])
    n6 = P * 6
    # the store's properties are views of its buffers: indexed assignment writes into the store
    store.offsets[r] = all_f[:, :n6].reshape(-1, P, 6)
    store.exp_avg[r] = all_f[:, n6 : 2 * n6].reshape(-1, P, 6)
    store.exp_avg_sq[r] = all_f[:, 2 * n6 : 3 * n6].reshape(-1, P, 6)
    store.scores[r] = all_f[:, 3 * n6 :]
    store.adam_step_count[r] = all_i[:, 1]
    return int(keep.numel())


def _state(store_or_state) -> dict:
    return store_or_state.state_dict() if isinstance(store_or_state, CameraMultiplex) else store_or_state


#: The tensors of :meth:`CameraMultiplex.state_dict` (``ids`` first).
_STORE_TENSORS = ("ids", "base", "offsets", "scores", "crops", "exp_avg", "exp_avg_sq", "adam_step")


def stores_equal(a, b, *, atol: float = 0.0) -> bool:
    """Whether two stores (or their :meth:`~CameraMultiplex.state_dict`) hold the same images with the same
    values, whatever their row order: the metadata (P, fingerprints, settings) must match, the ids as sets, and
    every tensor, row by row, exactly (``atol=0``) or within ``atol``; the Adam step counts always exactly."""
    a, b = _state(a), _state(b)
    for key in ("num_hypotheses", "fingerprint", "data_fingerprint", "settings"):
        if a.get(key) != b.get(key):
            return False
    ia, ib = a["ids"].argsort(), b["ids"].argsort()
    if not torch.equal(a["ids"][ia], b["ids"][ib]):
        return False
    for key in _STORE_TENSORS[1:]:
        x, y = a[key][ia], b[key][ib]
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if atol == 0 or not x.is_floating_point():
            if not torch.equal(x, y):
                return False
        elif not torch.allclose(x, y, rtol=0, atol=atol):
            return False
    return True


def store_checksum(store: CameraMultiplex) -> Tensor:
    """``(8,)`` float64 order-independent sums of the store's fields (a cheap fingerprint for sync checks)."""
    out = []
    order = store.ids.argsort()
    fields = (store.ids, store.base, store.offsets, store.scores, store.crops, store.exp_avg, store.exp_avg_sq,
              store.adam_step_count)  # fmt: skip
    for t in fields:
        t = t[order].double().reshape(t.shape[0], -1) if t.numel() else t.double().reshape(0, 1)
        w = torch.arange(1, t.shape[0] + 1, dtype=torch.float64, device=t.device)[:, None]
        out.append((t * w).sum() + math.pi * t.abs().sum())
    return torch.stack(out)


def stores_in_sync(store: CameraMultiplex, info: DistInfo) -> bool:
    """Collective: True on every rank when every rank's store has the same :func:`store_checksum` (a debugging
    and checkpoint-time check that :func:`sync_store_rows` is called where it must be)."""
    return _same_on_every_rank(store_checksum(store), info) if info.distributed else True
