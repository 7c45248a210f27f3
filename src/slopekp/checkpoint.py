"""Checkpoints of trained models: one file that resumes a run exactly, written atomically, loaded without unpickling.

A checkpoint is a ``torch.save`` of plain containers (dicts, lists, strings, numbers and tensors only), so it
loads with ``torch.load(weights_only=True)``: a file from elsewhere cannot run code. It holds

========================  ==================================================================================
``format``                ``"slopekp.checkpoint/1"``
``kind``                  ``"stage2"`` or ``"stage3"``
``head``                  the pose head's name (``quaternion``, ``gramschmidt``, ``svd``, ``keypoints``)
``template_fingerprint``  :func:`slopekp.mesh.template_fingerprint` of the template
``config``                the resolved config as YAML text
``manifest``              the run's :class:`slopekp.manifest.Manifest` as a dict
``model``                 ``model.state_dict()``
``optimizer``             ``optimizer.state_dict()``
``multiplex``             :meth:`CameraMultiplex.state_dict` (Stage II) or None
``epoch``, ``step``       the next epoch and the global step; ``batch_in_epoch`` batches of that epoch are done
``rng``                   ``{"torch": ByteTensor, "cuda": [ByteTensor, ...]}``
``metrics``               last logged losses (for model cards and ``slopekp info``)
``template``              Stage III: the template mesh itself (:func:`template_payload`), so that the model
                          loads where the template file is not
``card``                  Stage III: the model card (:func:`model_card`): the training data's name, path and
                          fingerprint, slopekp's version and the test split's metrics
========================  ==================================================================================
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from slopekp.manifest import Manifest
from slopekp.mesh.template import Template
from slopekp.utils import atomic_temporaries, atomic_write

CHECKPOINT_FORMAT = "slopekp.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, foreign, or made for another head, template or stage."""


class UnreadableCheckpointError(CheckpointError):
    """A file that cannot be read as a checkpoint at all: empty, not a PyTorch file, truncated or corrupt.

    ``detail`` is the short reason (``"not a PyTorch file"``, ``"an empty file"``, what the reader tripped on).
    """

    def __init__(self, path: str | os.PathLike, what: str, detail: str):
        super().__init__(f"{path}: {what} ({detail})")
        self.path, self.detail = Path(path), detail


class UnsafeCheckpointError(CheckpointError):
    """A PyTorch file whose pickled data refers to functions or classes: loading it would run code, so it is
    refused (and never unpickled)."""


#: How ``torch.save`` files begin: the zip format (PyTorch >= 1.6, an empty archive: the second), and the
#: legacy format's first pickle, the magic number ``0x1950a86a20f9469cfc6c`` (after the protocol opcodes).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

#: pickletools opcodes that push a string (STACK_GLOBAL takes its module and name from the last two pushes).
_STRING_OPS = frozenset(
    ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8")
)


def _pytorch_format(head: bytes) -> str | None:
    """``"zip"``, ``"legacy"`` or None (not a ``torch.save`` file) from a file's first bytes."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head[:1] == b"\x80" and _LEGACY_MAGIC in head[:32]:
        return "legacy"
    return None


def _check_is_a_file(path: Path) -> None:
    """FileNotFoundError for a missing path, CheckpointError for a folder or another non-file."""
    if path.is_file():
        return
    if path.is_dir():
        hint = ""
        for inner in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if inner.is_file():
                hint = f"; it holds the checkpoint {inner}"
                break
        raise CheckpointError(f"{path}: a folder, not a checkpoint file{hint}")
    if path.exists():
        raise CheckpointError(f"{path}: not a regular file, not a checkpoint file")
    raise FileNotFoundError(f"checkpoint not found: {path}")


def _short_reason(e: BaseException) -> str:
    """``Type: first sentence`` of a reader's error, without PyTorch's advice (its notes on ``torch.load``
    options are about other files than checkpoints, and some would have the user unpickle untrusted code)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text, flags=re.S)
    if found:
        text = found.group(1)
    for line in text.splitlines():
        sentences = [s for s in re.split(r"(?<=\.)\s+", line.strip()) if s and "weights_only" not in s]
        if sentences:
            return f"{type(e).__name__}: {sentences[0].rstrip('.')}"
    return type(e).__name__


def _pickle_globals(stream, count: int = 1) -> list[str]:
    """The functions and classes (``module.name``) that the next ``count`` pickles of ``stream`` refer to, read with
    :mod:`pickletools` (which only parses: nothing is imported or run). Raises on a malformed or cut-off stream."""
    names: list[str] = []
    for _ in range(count):
        memo: dict[int, Any] = {}
        pushed: list[Any] = []  # what each opcode pushed, approximately (strings; None for anything else)
        for op, arg, _pos in pickletools.genops(stream):
            name = op.name
            if name in _STRING_OPS:
                pushed.append(arg)
            elif name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                mod, attr = pushed[-2:] if len(pushed) >= 2 else [None, None]
                names.append(f"{mod}.{attr}" if isinstance(mod, str) and isinstance(attr, str) else "<unknown>")
                pushed.append(None)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed[-1] if pushed else None
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg)))
            elif name.startswith("EXT"):
                names.append(f"<extension {arg}>")
                pushed.append(None)
            elif op.stack_after:
                pushed.append(None)
    return names


def _allowed_globals() -> set[str]:
    """What ``torch.load(weights_only=True)`` accepts (torch's allow-list and ``add_safe_globals``); empty if this
    torch does not say."""
    try:
        from torch import _weights_only_unpickler as wu  # private: another torch may lack it (see below)

        return set(wu._get_allowed_globals()) | set(wu._get_user_allowed_globals())
    except Exception:  # a private API: another torch may lack it
        return set()


def _refusal(path: Path, fmt: str, e: pickle.UnpicklingError) -> CheckpointError:
    """Why the safe reader refused ``path``: it would run code (its pickle refers to functions or classes beyond
    tensors and plain containers), the file is damaged (its pickle does not parse), or it uses pickle features
    the safe reader lacks."""
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as z:
                member = next(n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
                with z.open(member) as f:
                    names = _pickle_globals(io.BytesIO(f.read()))
        else:  # magic number, protocol version, system info, then the data
            with open(path, "rb") as f:
                names = _pickle_globals(f, 4)
    except Exception:  # a pickle that does not parse, a member that is missing or damaged
        return UnreadableCheckpointError(path, "truncated or corrupt checkpoint", _short_reason(e))
    allowed = _allowed_globals()
    named = re.findall(r"GLOBAL\s+([\w.<>]+)", re.sub(r"\x1b\[[0-9;]*m", "", str(e)))
    unsafe = list(dict.fromkeys([*named, *(n for n in names if n not in allowed)]))
    if unsafe:
        shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
        return UnsafeCheckpointError(
            f"{path}: refused: it would run code when loaded (it refers to {shown}; a slopekp checkpoint holds "
            "only tensors and plain data)"
        )
    return UnreadableCheckpointError(
        path, "not a slopekp checkpoint", f"its pickled data uses features the safe reader lacks: {_short_reason(e)}"
    )


def _damage(path: Path, e: Exception) -> CheckpointError:
    """A reader's failure on a PyTorch file: a zip archive that is not a PyTorch file, or a truncated or corrupt
    one."""
    with contextlib.suppress(Exception):
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("/data.pkl") and n.count("/") == 1 for n in z.namelist()):
                return UnreadableCheckpointError(path, "not a slopekp checkpoint", "a zip archive, not a PyTorch file")
    return UnreadableCheckpointError(path, "truncated or corrupt checkpoint", _short_reason(e))


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU and every CUDA device) as tensors."""
    cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def template_payload(template) -> dict[str, Any]:
    """A :class:`slopekp.mesh.Template` as plain tensors for a checkpoint (loads with ``weights_only=True``)."""
    return {"name": template.name, "verts": template.verts.detach().cpu(), "faces": template.faces.detach().cpu(),
            "verts_uv": template.verts_uv.detach().cpu()}  # fmt: skip


def template_from_payload(payload: Any, path: str | os.PathLike):
    """The :class:`slopekp.mesh.Template` of :func:`template_payload`; ``path`` (the checkpoint) names the file in
    errors.

    Raises:
        CheckpointError: the entry is not a template (missing arrays, bad shapes or values).
    """
    if not isinstance(payload, dict) or not all(isinstance(payload.get(k), torch.Tensor)
                                                for k in ("verts", "faces", "verts_uv")):  # fmt: skip
        raise CheckpointError(f"{path}: the checkpoint's template entry is not a mesh (verts, faces, verts_uv)")
    try:
        return Template(payload["verts"], payload["faces"], payload["verts_uv"], str(payload.get("name", "")))
    except ValueError as e:
        raise CheckpointError(f"{path}: the checkpoint's template is damaged: {e}") from e


def model_card(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says about itself, for people (``slopekp info``) and for predict's outputs.

    Works for every checkpoint of :data:`CHECKPOINT_FORMAT`; entries an older file lacks are absent or None.
    """
    manifest = ckpt.get("manifest") if isinstance(ckpt.get("manifest"), dict) else {}
    card = ckpt.get("card") if isinstance(ckpt.get("card"), dict) else {}
    tpl = ckpt.get("template") if isinstance(ckpt.get("template"), dict) else None
    cfg_tpl = manifest.get("inputs", {}).get("template", {})
    template = {"path": cfg_tpl.get("path"), "fingerprint": ckpt.get("template_fingerprint"),
                "embedded": tpl is not None}  # fmt: skip
    if tpl is not None and isinstance(tpl.get("verts"), torch.Tensor) and isinstance(tpl.get("faces"), torch.Tensor):
        template.update(num_verts=int(tpl["verts"].shape[0]), num_faces=int(tpl["faces"].shape[0]))
    data = card.get("data") or {k: v for k, v in manifest.get("inputs", {}).get("data", {}).items()}
    return {
        "kind": ckpt.get("kind"),
        "head": ckpt.get("head"),
        "targets": ckpt.get("targets"),
        "template": template,
        "data": data,
        "trained": {"epochs": ckpt.get("epoch"), "steps": ckpt.get("step")},
        "slopekp_version": card.get("slopekp_version", manifest.get("version")),
        "created": manifest.get("created"),
        "command": manifest.get("command"),
        "metrics": card.get("metrics"),
        "last_losses": ckpt.get("metrics"),
    }


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (the table above, without ``format``) atomically to ``path``."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    head: str | None = None,
    template_fingerprint: str | None = None,
    map_location: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check what it is for.

    Nothing in the file is ever unpickled beyond tensors and plain containers: a file that would need more (a
    class instance, a pickle that calls a function) is refused without running any of it.

    Args:
        kind, head, template_fingerprint: when given, the checkpoint must match them.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: naming the file: a folder (``PATH: a folder, not a checkpoint file``);
            :class:`UnreadableCheckpointError`: ``PATH: not a slopekp checkpoint (REASON)`` (empty, not a PyTorch
            file, a PyTorch file of something else) or ``PATH: truncated or corrupt checkpoint (REASON)``;
            :class:`UnsafeCheckpointError`: ``PATH: refused: it would run code when loaded (...)``; or made for
            another stage, head or template.
        OSError: the file cannot be read (no permission ...).
    """
    path = Path(path)
    _check_is_a_file(path)
    with open(path, "rb") as f:
        head_bytes = f.read(64)
    fmt = _pytorch_format(head_bytes)
    if not head_bytes:
        raise UnreadableCheckpointError(path, "not a slopekp checkpoint", "an empty file")
    if fmt is None:
        raise UnreadableCheckpointError(path, "not a slopekp checkpoint", "not a PyTorch file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the errors below say what matters
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, fmt, e) from None  # torch's message advises unsafe loading: not passed on
    except Exception as e:  # a damaged file breaks the reader in many ways (EOFError, KeyError, RuntimeError ...)
        raise _damage(path, e) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a slopekp checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r})")
    for key, want in (("kind", kind), ("head", head), ("template_fingerprint", template_fingerprint)):
        if want is not None and ckpt.get(key) != want:
            what = {"kind": "stage", "head": "pose head", "template_fingerprint": "template (fingerprint)"}[key]
            raise CheckpointError(f"{path}: checkpoint is for {what} {ckpt.get(key)!r}, expected {want!r}")
    return ckpt


def resume_checkpoint(
    path: str | os.PathLike,
    manifest,
    *,
    kind: str,
    head: str | None = None,
    template_fingerprint: str | None = None,
    map_location: torch.device | str = "cpu",
    log=print,
) -> dict[str, Any] | None:
    """The checkpoint a rerun of a training run resumes from: ``path`` (``OUT/checkpoints/last.pt``), or a complete
    newer one that an interrupted save left beside it; None when there is neither (the run starts afresh).

    A save writes ``.last.pt.<random>.tmp``, fsyncs it and renames it onto ``last.pt``
    (:func:`slopekp.utils.atomic_write`); a ``kill -9`` between the two leaves a complete checkpoint in the
    temporary file, newer than ``last.pt``. Such a file is used when it is *intact*: it loads fully with
    ``weights_only=True``, passes the checks of :func:`load_checkpoint` (``kind``, ``head``,
    ``template_fingerprint``), belongs to the same run (its manifest has no :meth:`~slopekp.manifest.Manifest.
    differences` to ``manifest``, the :class:`~slopekp.manifest.Manifest` of this run) and holds a later step than
    ``last.pt`` (any step when ``last.pt`` is missing, truncated or corrupt). The newest intact one is moved onto
    ``path`` (``os.replace``; one line to ``log``) and resumed from: it is a checkpoint like any other, so the run
    continues exactly as an uninterrupted one. Other temporaries are left for the next save to remove; this is
    called before anything writes ``path`` again.

    Raises:
        CheckpointError: ``path`` is truncated or corrupt and no intact newer temporary is beside it (naming the
            file and ``--force-new``), or a checkpoint of another stage, head or template; or a refusal of
            :func:`load_checkpoint`.
    """

    path = Path(path)
    current: dict[str, Any] | None = None
    damaged: UnreadableCheckpointError | None = None
    if path.exists():
        try:
            current = load_checkpoint(path, kind=kind, head=head, template_fingerprint=template_fingerprint,
                                      map_location=map_location)  # fmt: skip
        except UnreadableCheckpointError as e:
            damaged = e
    temporaries = atomic_temporaries(path)
    best, best_path, rejected = None, None, []
    floor = int(current["step"]) if current is not None else -1
    for tmp in temporaries:
        ck = _intact_temporary(tmp, manifest, kind=kind, head=head, template_fingerprint=template_fingerprint,
                               map_location=map_location)  # fmt: skip
        if ck is None:
            rejected.append(tmp.name)
        elif int(ck["step"]) > max(floor, int(best["step"]) if best is not None else -1):
            best, best_path = ck, tmp
    if best is not None:
        if damaged is not None:
            was = f"is truncated or corrupt ({damaged.detail})"
        elif current is not None:
            was = f"holds step {floor}"
        else:
            was = "is missing"
        os.replace(best_path, path)
        log(f"{path} {was}; resuming from step {int(best['step'])}, the complete checkpoint that an interrupted "
            f"save left in {best_path.name} (now moved onto {path.name})")  # fmt: skip
        return best
    if damaged is not None:
        others = (f"; the temporary file(s) beside it ({', '.join(rejected)}) are incomplete or of another run"
                  if rejected else "; no complete newer copy of it was left beside it")  # fmt: skip
        raise CheckpointError(
            f"{path}: truncated or corrupt ({damaged.detail}){others}. The run cannot resume: rerun the same "
            f"command with --force-new to start over (the old run folder is moved aside to "
            f"{path.parent.parent.name}.old-<time>)"
        ) from damaged
    return current


def _intact_temporary(tmp: Path, manifest, **checks) -> dict[str, Any] | None:
    """The checkpoint in ``tmp`` if it is complete, passes ``checks`` and was made by the run of ``manifest``."""
    try:
        ck = load_checkpoint(tmp, **checks)
        made_by = Manifest.from_dict(ck.get("manifest"), str(tmp))
        if made_by.differences(manifest) or not isinstance(ck.get("step"), int):
            return None
    except (CheckpointError, OSError, ValueError, TypeError):
        return None
    return ck
