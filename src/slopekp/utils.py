"""Small shared helpers: atomic file writes, seeding, device choice, input checks.

Everything that writes user-visible files goes through :func:`atomic_write` so that a killed run never leaves a
half-written checkpoint, store or dataset file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync and rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.

    >>> with atomic_write("out.json", "w") as f:  # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; otherwise ``name`` is passed to :class:`torch.device`.

    Raises:
        ValueError: if a CUDA device is asked for and none is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available; use device=cpu or device=auto")
    return dev


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` if ``t`` holds NaN or infinite values."""
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int | str | None, ...]) -> None:
    """Check ``t.shape`` against ``shape`` where ints must match and str/None are wildcards.

    Raises ``ValueError`` naming the argument, the expected and the actual shape.

    >>> check_shape("verts", torch.zeros(2, 5, 3), ("B", "V", 3))
    """
    if t.dim() != len(shape) or any(isinstance(e, int) and e != a for e, a in zip(shape, t.shape)):
        want = "(" + ", ".join(str(e) for e in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
