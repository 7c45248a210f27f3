"""Worker of ``test_distributed.py``: a miniature Stage II loop under torchrun (gloo, CPU).

``python -m torch.distributed.run --nproc_per_node 2 ... _ddp_worker.py OUT`` trains a tiny network wrapped in
DistributedDataParallel and a camera multiplex (per-image Adam on the rows of its batch, scores) exactly as
:func:`slopekp.train.stage2.run_stage2` orders its steps, on :func:`shard_indices` batches, syncing the store
after every step; each rank saves ``OUT/rank{r}.pt``. :func:`reference` runs the same training in one process,
applying every rank's share of each step (the network loss averaged over the ranks, as DDP averages the
gradients), for the test to compare with.
"""

from __future__ import annotations

import faulthandler
import sys
from datetime import timedelta
from pathlib import Path

import torch

from slopekp.data.cub import FLIP_ID_BASE
from slopekp.train import distributed as D
from slopekp.train.distributed import epoch_order
from slopekp.train.hypotheses import OffsetSettings
from slopekp.train.multiplex import CameraMultiplex
from slopekp.train.scores import hypothesis_scores

N, P, BATCH, EPOCHS, SEED = 9, 4, 2, 2, 3  # 9 = 2·(2·2) + 1: the last step pads rank 1 (shard_indices)
NET_LR, CAM_LR = 0.05, 0.1
WATCHDOG_S = 100


def make_store() -> CameraMultiplex:
    g = torch.Generator().manual_seed(SEED)
    q = torch.randn(N, P, 4, generator=g)
    cams = torch.cat([0.5 + torch.rand(N, P, 1, generator=g), 0.2 * torch.randn(N, P, 2, generator=g), q / q.norm(
        dim=-1, keepdim=True)], -1)  # fmt: skip
    crops = torch.cat([0.01 + 0.01 * torch.rand(N, 1, generator=g), -torch.rand(N, 2, generator=g) - 0.5], -1)
    store = CameraMultiplex(P, "fp", OffsetSettings(gain=1.0))
    store.add(torch.arange(N), cams, torch.full((N, P), 1.0 / P), crops)
    return store


class TinyNet(torch.nn.Module):
    """A body the steps train and a ``pose`` head they do not (like Stage II's network)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        self.pose = torch.nn.Linear(5, 4)

    def forward(self, x, pose: bool = True):
        return self.body(x) if not pose else (self.body(x), self.pose(x))


def make_model() -> tuple[TinyNet, list[torch.nn.Parameter], torch.optim.Optimizer]:
    torch.manual_seed(SEED)
    model = TinyNet()
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith("pose."))  # what DDP must not wait for
    params = [p for n, p in model.named_parameters() if not n.startswith("pose.")]
    return model, params, torch.optim.Adam(params, lr=NET_LR)


def batch_data(epoch: int, items: list[int]):
    """``(ids, crops, x)`` of dataset items: some mirrored (id ``10**6 − i``), crops jittered per epoch."""
    ids, crops, xs = [], [], []
    for i in items:
        g = torch.Generator().manual_seed(1000 * epoch + i)
        ids.append(FLIP_ID_BASE - i if (i + epoch) % 3 == 0 else i)
        crops.append(torch.cat([0.01 + 0.01 * torch.rand(1, generator=g), -torch.rand(2, generator=g) - 0.5]))
        xs.append(torch.randn(5, generator=torch.Generator().manual_seed(i)) + 0.1 * epoch)
    return torch.tensor(ids), torch.stack(crops), torch.stack(xs)


def losses(model, store: CameraMultiplex, ids, crops, x):
    """Stage II's structure: ``net = mean_b Σ_p q·L``, ``cam = mean L``, ``q`` the detached scores."""
    pred = model(x, pose=False)  # (B, 3)
    lk = store.lookup(ids, crops)
    cams = lk.cameras  # (B, P, 7)
    per_hyp = ((cams[..., :3] - pred[:, None]) ** 2).sum(-1) + (cams[..., 3:6] * pred[:, None].tanh()).sum(-1)
    q = hypothesis_scores(per_hyp.detach(), peakiness=5.0)
    return (q * per_hyp).sum(-1).mean(), per_hyp.mean(), lk, q


def train(info: D.DistInfo, out: Path) -> dict:
    record: dict = {"info": (info.rank, info.world_size, info.local_rank, info.backend, info.is_main)}
    model, params, opt = make_model()
    ddp = D.wrap_ddp(model, info)
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    store = make_store()
    synced, in_sync_before, in_sync_after = [], [], []
    for epoch in range(EPOCHS):
        order = epoch_order(N, SEED, epoch)
        for items in D.shard_indices(order, BATCH, info.rank, info.world_size):
            ids, crops, x = batch_data(epoch, items)
            net, cam, lk, q = losses(ddp, store, ids, crops, x)
            opt.zero_grad(set_to_none=True)
            net.backward(inputs=params, retain_graph=True)  # as stage2: network first, then the cameras
            opt.step()
            (lk.offsets.grad,) = torch.autograd.grad(cam, lk.offsets)
            store.adam_step(lk, lr=CAM_LR)
            store.set_scores(ids, q)
            in_sync_before.append(D.stores_in_sync(store, info))
            synced.append(D.sync_store_rows(store, ids, info))
            in_sync_after.append(D.stores_in_sync(store, info))
    record.update(synced=synced, in_sync_before=in_sync_before, in_sync_after=in_sync_after)
    record["store"] = store.state_dict()
    record["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record["broadcast"] = D.broadcast_object({"from": info.rank}, info)
    record["mean"] = D.all_reduce_mean({"b": 2.0 * info.rank, "a": 1.0}, info)
    record["any_some"] = D.any_rank(info.rank == 1, info)
    record["any_none"] = D.any_rank(False, info)
    try:
        D.all_reduce_mean({f"k{info.rank}": 0.0}, info)
        record["key_mismatch"] = "no error"
    except ValueError as e:
        record["key_mismatch"] = str(e)
    if info.is_main:
        (out / "main_wrote").write_text("x")
    D.barrier(info)  # rank 1 sees rank 0's file after the barrier
    record["saw_main_file"] = (out / "main_wrote").exists()
    return record  # the DDP wrapper dies here, before cleanup() (see its docstring)


def main(out: str) -> None:
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)  # never outlive a killed test run
    torch.set_num_threads(1)
    info = D.init_distributed("cpu", timeout=timedelta(seconds=60))
    try:
        record = train(info, Path(out))
        torch.save(record, Path(out) / f"rank{info.rank}.pt")
    finally:
        D.cleanup()


def reference(world: int = 2) -> tuple[dict, dict]:
    """The same training in one process: ``(store state, model state)``."""
    model, params, opt = make_model()
    store = make_store()
    for epoch in range(EPOCHS):
        order = epoch_order(N, SEED, epoch)
        shards = [D.shard_indices(order, BATCH, r, world) for r in range(world)]
        for step in range(len(shards[0])):
            parts = [(batch_data(epoch, s[step]), losses(model, store, *batch_data(epoch, s[step]))) for s in shards]
            opt.zero_grad(set_to_none=True)
            (sum(p[1][0] for p in parts) / world).backward(inputs=params, retain_graph=True)
            opt.step()
            for (ids, _, _), (_, cam, lk, q) in parts:
                (lk.offsets.grad,) = torch.autograd.grad(cam, lk.offsets)
                store.adam_step(lk, lr=CAM_LR)
                store.set_scores(ids, q)
    return store.state_dict(), {k: v.detach().clone() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    main(sys.argv[1])
