"""Small shared helpers: atomic file writes, seeding, device choice, input checks and size bounds.

Everything that writes user-visible files goes through :func:`atomic_write` so that a killed run never leaves a
half-written checkpoint, store or dataset file behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import json
import multiprocessing
import os
import random
import re
import stat
import tempfile
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------------------
# Documented size bounds: checked up front (library functions and config validation), before anything is
# allocated, so that a typo is a clear error instead of an OOM kill.
# ------------------------------------------------------------------------------------------------------------
MAX_IMAGE_SIZE = 1024
"""Largest side in pixels of a rendered or cropped square image (``train.render_size``,
``multiplex.image_size``, ``model.image_size``): Stage I renders ``batch_size × P`` silhouettes of this size per
step, so 1024 is already far beyond the paper's 64 (Stage I) and 256 (training)."""

MAX_SYNTH_SIZE = 2048
"""Largest side in pixels of a SynthBirds image (``generate_synthbirds(size=)``, ``synth.size``): the renderer
works on a batch of 8 images of ``size²`` pixels (with float buffers per pixel) and every mask stays in memory
until the ``.mat`` files are written. ``size=100000`` would need tens of GB at once."""

MAX_SYNTH_COUNT = 1_000_000
"""Most SynthBirds images per split (``n_train``, ``n_test``; CUB has 5,994 train images): the generator lists
all instances up front and keeps each instance's mask (``size²`` bytes) in memory until the split's ``.mat``
file is written, so a count of 10^10 would exhaust memory before the first image is drawn."""

#: Accepted device names, for messages.
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


# ------------------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------------------
_UMASK_LOCK = threading.Lock()

#: errnos of a failed write that name no file (the disk or quota is full, the file too large).
_WRITE_ERRNOS = frozenset(
    e for e in (getattr(errno, n, None) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EIO")) if e is not None
)


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``) where the system allows; else
    set and restored at once under a lock (a thread of this process that creates files outside
    :func:`atomic_write` at that very moment could see umask 0)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def usable_cores() -> int:
    """How many cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that is missing)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_processes(requested: int, device: torch.device) -> int:
    """How many processes share work that runs on ``device`` (a ``workers``/``jobs`` setting): ``requested``, or for 0
    one per core this process may use (:func:`usable_cores`); 1 on an accelerator (one process drives it)."""
    if device.type != "cpu":
        return 1
    return requested if requested > 0 else usable_cores()


@contextlib.contextmanager
def spawned_map(fn, items, workers: int, initializer, initargs: tuple = ()) -> Iterator[Iterator[Any]]:
    """``map(fn, items)`` in ``workers`` spawned processes, each set up once by ``initializer(*initargs)``; yields
    the results' iterator, in the order of ``items``. Spawned, never forked: the caller may hold OpenMP threads.
    Work not started yet is cancelled when the caller stops early (an error, Ctrl-C); leaving waits for the rest.
    A worker whose parent dies (``kill -9``) ends itself within :data:`ORPHAN_POLL_S` seconds."""
    ctx = multiprocessing.get_context("spawn")
    setup = (os.getpid(), initializer, initargs)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_spawned_worker, initargs=setup) as pool:
        try:
            yield pool.map(fn, items)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


ORPHAN_POLL_S = 0.5
"""How often a :func:`spawned_map` worker checks that the process that started it is still alive."""


def _start_spawned_worker(parent: int, initializer, initargs: tuple) -> None:
    """A :func:`spawned_map` worker's set-up: ``initializer(*initargs)``, and a watch that ends this process when
    its parent is gone (a ``kill -9`` of the main process would otherwise leave the workers waiting forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(ORPHAN_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="slopekp-orphan-watch", daemon=True).start()
    initializer(*initargs)


def atomic_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporaries ``.NAME.*.tmp`` of :func:`atomic_write` beside ``path``, sorted: what killed writes left
    (a complete one when the kill came between its fsync and its rename)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the :func:`atomic_temporaries` of ``path`` that killed atomic writes left behind."""
    for stale in atomic_temporaries(path):
        with contextlib.suppress(OSError):
            stale.unlink()


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` (same errno, hence the same OSError subclass) naming ``path`` instead of the temporary file."""
    new = OSError(e.errno, e.strerror or str(e), str(path))
    new.__cause__ = e
    return new


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync and rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. The file gets the mode
    ``open()`` would give it (``0o666`` minus the umask), or keeps the mode of the file it replaces.
    Temporaries of ``path`` that a killed write left behind (``.NAME.*.tmp``) are removed first, so two
    processes must not write the same ``path`` at the same time (the earlier one fails). OSErrors of the
    temporary file (no permission, disk full) name ``path``.

    >>> with atomic_write("out.json", "w") as f:  # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        try:
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.filename is None and e.errno in _WRITE_ERRNOS:
                raise _naming(e, path) from e
            raise
        try:
            file_mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            file_mode = 0o666 & ~current_umask()
        try:
            os.chmod(tmp, file_mode)
            os.replace(tmp, path)
        except OSError as e:
            raise _naming(e, path) from e
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays to an uncompressed ``.npz`` atomically (loadable with ``np.load(path)``, no pickle)."""
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 -- seeding the legacy global RNG is the point here
    torch.manual_seed(seed)


def check_device_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a device name slopekp accepts (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``, ``mps``), whether or not this machine has that device: a config saved on a GPU machine stays
    loadable elsewhere, and :func:`resolve_device` says what is missing when the device is used."""
    if re.fullmatch(r"auto|cpu(?::\d+)?|mps|cuda(?::\d+)?", str(name)) is None:
        raise ValueError(f"device must be one of {DEVICE_NAMES}, got {str(name)!r}")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a device name: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``.

    Raises:
        ValueError: starting ``device must be ...`` for an unknown name (``meta``, a typo), or ``device
            'NAME' was requested but ...`` for one this machine lacks (no CUDA, no GPU N, no MPS).
    """
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = re.fullmatch(r"cpu(?::\d+)?|mps|cuda(?::(\d+))?", name)
    if m is None:
        raise ValueError(f"device must be one of {DEVICE_NAMES}, got {name!r}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {name!r} was requested but MPS (Apple GPU) is not available; use device=cpu or device=auto"
        )
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was requested but CUDA is not available; use device=cpu or device=auto"
            )
        n = torch.cuda.device_count()
        if m.group(1) is not None and int(m.group(1)) >= n:
            raise ValueError(
                f"device {name!r} was requested but this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})"
            )
    return torch.device(name)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty), for one-line
    errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def checks_values(t: torch.Tensor) -> bool:
    """Whether the hot paths (renderer, rotations) check the values of ``t`` (finite, non-zero norms, index
    ranges) eagerly: always on the CPU, where it costs little. On an accelerator a check reads a value back, which
    makes the host wait for every queued kernel (a *host synchronisation*, issue 13), so there they are skipped.
    ``SLOPEKP_CHECK_VALUES=1`` checks on every device, ``=0`` on none (as on an accelerator: tests audit the host
    synchronisations on the CPU so). Shapes and dtypes are always checked."""
    forced = os.environ.get("SLOPEKP_CHECK_VALUES", "")
    return forced == "1" if forced in ("0", "1") else t.device.type == "cpu"


@functools.lru_cache(maxsize=256)
def device_constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor of ``values`` on ``device``, made once per ``(values, dtype, device)``: building it
    from Python data in every call would copy it to an accelerator every time, and wait for the copy. Treat it as
    read-only."""
    return torch.tensor(values, dtype=dtype).to(device)


def tensor_memo(fn):
    """Cache ``fn(t, *args)`` per tensor ``t`` (the same object, unchanged since: its version counter moves on any
    in-place change) and hashable ``args``; an entry leaves when its tensor is freed. For what a run computes from a
    fixed tensor at every step (a mesh's edges, a check of its face indices) and would otherwise read back from an
    accelerator each time. Results are shared: treat them as read-only."""
    cache: dict[tuple, tuple[weakref.ref, int, Any]] = {}

    @functools.wraps(fn)
    def cached(t: torch.Tensor, *args):
        key = (id(t), *args)
        hit = cache.get(key)
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        out = fn(t, *args)
        cache[key] = (weakref.ref(t, lambda _, key=key: cache.pop(key, None)), t._version, out)
        return out

    cached.cache = cache
    return cached


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``; a copy from the host to an accelerator does not wait for the device's queue (the host's
    data is staged before the call returns), a copy to the host does (its values must be there)."""
    device = torch.device(device)
    return t.to(device, non_blocking=t.device.type == "cpu" and device.type != "cpu")


def check_finite(name: str, t: torch.Tensor | np.ndarray) -> None:
    """Raise ``ValueError`` naming ``name`` if ``t`` (a tensor or a NumPy array) holds NaN or infinite values."""
    finite = np.isfinite(t) if isinstance(t, np.ndarray) else torch.isfinite(t)
    if not finite.all():
        raise ValueError(f"{name} contains {int((~finite).sum())} non-finite value(s) (NaN or inf)")


def check_shape(name: str, t: torch.Tensor | np.ndarray, shape: tuple[Any, ...]) -> None:
    """Check ``t.shape`` (a tensor or a NumPy array) against ``shape``: ints must match, a str or None matches any
    one size, and a leading ``...`` any number of leading dimensions (none included).

    Raises ``ValueError`` naming the argument, the expected and the actual shape.

    >>> check_shape("verts", torch.zeros(2, 5, 3), ("B", "V", 3))
    >>> check_shape("q", torch.zeros(4), (..., 4))
    """
    got = tuple(t.shape)
    if shape and shape[0] is Ellipsis:
        tail, skip = shape[1:], len(got) - len(shape) + 1  # skip: the leading dimensions ``...`` stands for
        ok = skip >= 0
    else:
        tail, skip = shape, 0
        ok = len(got) == len(shape)
    if ok:  # a plain loop: this runs on the hot paths (rotations), where a generator costs more than the check
        for e, a in zip(tail, got[skip:]):
            if isinstance(e, int) and e != a:
                ok = False
                break
    if not ok:
        want = "(" + ", ".join("..." if e is Ellipsis else str(e) for e in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {got}")
