"""Multi-process training helpers: torchrun env, sharded batches, camera multiplex synced across ranks (gloo)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from slopekp.train import distributed as D
from slopekp.train.multiplex import CameraMultiplex

WORKER = Path(__file__).with_name("_ddp_worker.py")


def _load_worker():
    spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------- torchrun env
def test_init_distributed_without_torchrun_is_single_process(monkeypatch):
    for k in D.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    info = D.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.backend) == (0, 1, 0, None)
    assert info.is_main and not info.distributed
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.init_distributed("cuda") == D.DistInfo()  # no CUDA needed: nothing is initialised
    assert not torch.distributed.is_initialized()


def test_init_distributed_names_missing_torchrun_variables(monkeypatch):
    for k in D.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        D.init_distributed("cpu")
    assert not torch.distributed.is_initialized()


def test_single_process_helpers_are_no_ops():
    info = D.DistInfo()
    store = _load_worker().make_store()
    before = store.state_dict()
    assert D.sync_store_rows(store, torch.tensor([0, 1]), info) == 0
    assert D.stores_equal(before, store.state_dict())
    assert D.broadcast_object({"a": 1}, info) == {"a": 1}
    assert D.all_reduce_mean({"x": 2.5}, info) == {"x": 2.5}
    assert D.any_rank(True, info) and not D.any_rank(False, info)
    assert D.stores_in_sync(store, info)
    D.barrier(info)
    assert D.rank_device("cuda", D.DistInfo(1, 2, 1, "nccl")) == torch.device("cuda", 1)
    assert D.rank_device("cpu", D.DistInfo(1, 2, 1, "gloo")) == torch.device("cpu")
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    net(torch.randn(4, 3)).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    D.average_gradients(list(net.parameters()), info)
    D.broadcast_buffers(net, info)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters()))
    assert D.modules_in_sync(net, info)


def test_module_checksum_sees_a_change_of_any_parameter_or_buffer():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ref = D.module_checksum(net)
    for t in [*net.parameters(), *net.buffers()]:
        if t.dtype.is_floating_point:
            with torch.no_grad():
                t.view(-1)[0] += 1e-3
            assert not torch.equal(D.module_checksum(net), ref)
            with torch.no_grad():
                t.view(-1)[0] -= 1e-3
    with torch.no_grad():  # swapping two values keeps the plain sum; the position-weighted one sees it
        w = net[0].weight.view(-1)
        w[[0, 1]] = w[[1, 0]].clone()
    assert not torch.equal(D.module_checksum(net), ref)


# ------------------------------------------------------------------------------------------ shard_indices
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 10, 16, 17, 23])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_indices_disjoint_equal_counts_and_covering(n, batch_size, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
    if n < world:
        with pytest.raises(ValueError, match="cannot be shared"):
            D.shard_indices(order, batch_size, 0, world)
        return
    shards = [D.shard_indices(order, batch_size, r, world) for r in range(world)]
    steps = D.num_steps(n, batch_size, world)
    assert all(len(s) == steps for s in shards)  # the ranks step together
    seen = []
    for step in range(steps):
        local = [s[step] for s in shards]
        assert all(1 <= len(b) <= batch_size for b in local)  # never empty, never above the per-rank size
        # disjoint across ranks within a step
        per_rank = [set(b) for b in local]
        assert sum(len(x) for x in per_rank) == len(set().union(*per_rank))
        seen += [i for b in local for i in b]
    assert set(seen) == set(order)  # every item, and repeats only from padding:
    tail = n % (batch_size * world)
    assert len(seen) - n == (world - tail if 0 < tail < world else 0)
    if world == 1:  # consecutive slices of the epoch order
        assert shards[0] == [order[i : i + batch_size] for i in range(0, n, batch_size)]


def test_shard_indices_layout_and_padding():
    order = [10, 11, 12, 13, 14, 15, 16, 17, 18]  # B=2, W=2: global batches of 4, tail of 1
    assert D.shard_indices(order, 2, 0, 2) == [[10, 12], [14, 16], [18]]
    assert D.shard_indices(order, 2, 1, 2) == [[11, 13], [15, 17], [17]]  # pads with its own previous item
    assert D.shard_indices([], 2, 0, 2) == []
    with pytest.raises(ValueError):
        D.shard_indices(order, 0, 0, 2)
    with pytest.raises(ValueError):
        D.shard_indices(order, 2, 2, 2)


def test_shard_loader_for_one_process_gives_consecutive_slices():
    from slopekp.train.distributed import epoch_order

    class Items(list):
        epoch = -1

    ds = Items(range(11))
    batches = list(D.shard_loader(ds, 3, seed=5, epoch=2, info=D.DistInfo(), skip_batches=1, collate_fn=list))
    order = epoch_order(11, 5, 2)
    assert ds.epoch == 2
    assert batches == [order[i : i + 3] for i in range(3, 11, 3)]
    r1 = list(D.shard_loader(ds, 2, seed=5, epoch=2, info=D.DistInfo(1, 2, 1, "gloo"), collate_fn=list))
    assert r1 == D.shard_indices(order, 2, 1, 2)


# ------------------------------------------------------------------------------------------ stores_equal
def test_stores_equal_ignores_row_order_and_sees_changes():
    w = _load_worker()
    a = w.make_store()
    b = CameraMultiplex.from_state_dict(a.state_dict())
    perm = torch.tensor([3, 0, 8, 1, 2, 7, 4, 6, 5])
    s = a.state_dict()
    shuffled = {k: (v[perm] if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
    assert D.stores_equal(a, b) and D.stores_equal(s, shuffled)
    assert torch.equal(D.store_checksum(a), D.store_checksum(CameraMultiplex.from_state_dict(shuffled)))
    b.offsets[4, 1, 2] += 1e-4
    assert not D.stores_equal(a, b)
    assert D.stores_equal(a, b, atol=2e-4)
    assert not torch.equal(D.store_checksum(a), D.store_checksum(b))
    b.offsets[4, 1, 2] -= 1e-4
    b.adam_step_count[0] += 1
    assert not D.stores_equal(a, b, atol=1.0)


# ------------------------------------------------------------------------------- 2 processes under torchrun
def test_two_ranks_train_in_step_with_a_synced_store(tmp_path, run_torchrun):
    """torchrun, 2 CPU processes (gloo on 127.0.0.1): DDP network + camera multiplex synced each step. Both ranks
    end with identical stores and networks, equal to one process applying both ranks' updates."""
    run_torchrun([str(WORKER), str(tmp_path)], timeout=120)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert tuple(r0["info"]) == (0, 2, 0, "gloo", True)
    assert tuple(r1["info"]) == (1, 2, 1, "gloo", False)
    w = _load_worker()
    steps = w.EPOCHS * D.num_steps(w.N, w.BATCH, 2)
    for r in (r0, r1):
        assert len(r["synced"]) == steps
        assert not r["in_sync_before"][0]  # each rank's own update alone: the stores differ before a sync
        assert all(r["in_sync_after"])
        assert r["broadcast"] == {"from": 0}
        assert r["mean"] == {"a": 1.0, "b": 1.0}
        assert r["any_some"] and not r["any_none"]
        assert "different keys" in r["key_mismatch"]
        assert r["saw_main_file"]
    # 4 distinct images per full step (2 per rank), 1 in the last (rank 1 repeats an image rank 0 does not hold)
    assert r0["synced"] == r1["synced"] == [4, 4, 2] * w.EPOCHS
    # the ranks agree exactly, store and network
    assert D.stores_equal(r0["store"], r1["store"])
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    # and equal one process that applied both ranks' updates (float rounding: all-reduce vs one backward)
    ref_store, ref_model = w.reference(world=2)
    start = w.make_store().state_dict()
    assert not D.stores_equal(start, ref_store, atol=1e-3)  # training moved the cameras
    assert torch.equal(r0["store"]["adam_step"].sort().values, ref_store["adam_step"].sort().values)
    assert D.stores_equal(r0["store"], ref_store, atol=1e-5)
    for k in ref_model:
        torch.testing.assert_close(r0["model"][k], ref_model[k], rtol=1e-5, atol=1e-6)
