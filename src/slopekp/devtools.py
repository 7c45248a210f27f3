"""Tools for developers: where a step makes the host wait for the device (issue 13).

On CUDA, PyTorch queues kernels and returns at once; the host only waits where it needs a value back
(``bool(t)``, ``t.item()``, ``t.tolist()``, a ``nonzero`` whose size it must know, a copy to or from the CPU).
Each such point drains the queue, so a training step with a few of them runs at the speed of its launches, not of
the GPU. ``torch.cuda.set_sync_debug_mode`` finds them on a GPU; :func:`host_syncs` finds the same points on the
CPU, where no GPU is needed: it records every operation that *would* synchronise on CUDA, with the line of
slopekp that made it, so a test can require a step to have none.

    with host_syncs() as syncs:
        step()
    assert not syncs, syncs
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["HostSync", "host_syncs"]

#: Tensor methods and functions that read a device value on the host, or whose output size depends on values.
SYNCING = frozenset({
    "__bool__", "__int__", "__float__", "__index__", "__complex__", "__repr__", "__format__", "item", "tolist",
    "numpy", "cpu", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "equal",
    "allclose", "is_nonzero",
})  # fmt: skip

_PACKAGE = str(Path(__file__).resolve().parent)


class HostSync(NamedTuple):
    """One operation that synchronises on CUDA: its name and the ``file:line`` of slopekp that called it."""

    op: str
    where: str


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _syncs(name: str, args: tuple, kwargs: dict) -> bool:
    if name in SYNCING:
        return True
    if name in ("__getitem__", "__setitem__"):  # a boolean mask index is a nonzero
        return len(args) > 1 and _is_bool_index(args[1])
    if name == "where":  # torch.where(cond) alone is a nonzero
        return len(args) + len(kwargs) == 1
    if name == "repeat_interleave":  # tensor repeats (or repeat_interleave(repeats) alone): the output size
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats", args[0] if args else None)
        return isinstance(repeats, torch.Tensor) and "output_size" not in kwargs
    if name in ("tensor", "as_tensor"):  # Python data copied to the device
        device = kwargs.get("device")
        return device is not None and not (len(args) and isinstance(args[0], torch.Tensor))
    if name == "to" and args and isinstance(args[0], torch.Tensor):  # a copy between devices
        targets = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
        return any(torch.device(a).type != args[0].device.type for a in targets)
    return False


class _Recorder(TorchFunctionMode):
    def __init__(self, found: list[HostSync]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _syncs(name, args, kwargs):
            stack = traceback.extract_stack()[:-1]
            # Triton's interpreter moves tensors itself: not the code under test
            if not any("/triton/" in f.filename for f in stack):
                ours = [f for f in stack if f.filename.startswith(_PACKAGE)]
                f = ours[-1] if ours else stack[-1]
                self.found.append(HostSync(name, f"{Path(f.filename).name}:{f.lineno}"))
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_syncs() -> Iterator[list[HostSync]]:
    """Record the operations in the block that would make the host wait for a CUDA device (module docstring).

    Yields:
        The list that the block's synchronising operations are appended to.
    """
    found: list[HostSync] = []
    with _Recorder(found):
        yield found
