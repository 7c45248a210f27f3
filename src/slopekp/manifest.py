"""Run manifests: every output folder records what it was made from, and a rerun checks it.

A command that writes a folder which a later command resumes or reads (``slopekp data synth``, Stage I's
``multiplex init``, ``quickstart``; the training checkpoints next) writes ``manifest.json`` into it:
* ``command``: which command made the folder (``"multiplex init"``);
* ``inputs``: fingerprints of what it read (the data folder: its annotation files and image list; the
  template mesh), each with the path it was read from;
* ``settings``: the settings that change the results, as flat ``dotted.key -> value`` pairs (settings that
  only change speed — device, threads, batch size of the batch-invariant Stage I, save frequency — are left
  out on purpose: changing them and resuming is fine);
* provenance that is recorded but never compared: the package version, the command line, the time.

:func:`prepare_output_dir` is the one gate every such command goes through before it writes:
=================================================  =====================================================
the folder                                          what happens
=================================================  =====================================================
missing or empty                                    created; the manifest is written → ``"new"``
made by the same command with the same manifest     → ``"resume"`` (the command continues where it stopped)
made by this command from other inputs/settings     :class:`RunMismatchError` naming every difference,
                                                    unless ``force_new`` (the old folder is moved aside to
                                                    ``<out>.old-<time>``) or ``overwrite`` (emptied)
not empty and not made by this command              :class:`OutputExistsError`, unless ``overwrite``
                                                    (its contents are removed first, so nothing stale
                                                    stays) or ``force_new`` (moved aside)
a file                                              :class:`OutputExistsError`
=================================================  =====================================================

Single-file outputs (a PNG, an ``.npz`` store, a mesh) go through :func:`prepare_output_file`: an existing
file is kept unless ``overwrite``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from slopekp.config import EARLIER_DEFAULTS, REMOVED_SETTINGS, Config
from slopekp.utils import atomic_save_json
from slopekp.version import __version__

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "slopekp.run_manifest/1"


class RunMismatchError(ValueError):
    """An output folder was made from other inputs or settings than the command now asks for."""


class OutputExistsError(ValueError):
    """An output path exists and holds something this command would destroy."""


@dataclass(frozen=True)
class Manifest:
    """What an output folder was made from. ``command``, ``inputs`` and ``settings`` are compared on resume;
    ``version``, ``argv`` and ``created`` are provenance only. A config setting that the folder's manifest lacks
    (added by a later slopekp) counts as unchanged while it is asked for at its default."""

    command: str
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``name -> {"fingerprint": str, "path": str, ...}``; only the fingerprints are compared."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Flat ``dotted.key -> value`` of the settings that change results."""
    version: str = __version__
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    created: str = field(default_factory=lambda: _dt.datetime.now().isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "command": self.command,
            "inputs": self.inputs,
            "settings": self.settings,
            "version": self.version,
            "argv": self.argv,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "manifest") -> Manifest:
        if not isinstance(d, Mapping) or d.get("format") != MANIFEST_FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f"{source}: not a slopekp run manifest (format {got!r}, expected {MANIFEST_FORMAT!r})")
        try:
            return cls(
                command=str(d["command"]),
                inputs={str(k): dict(v) for k, v in dict(d.get("inputs", {})).items()},
                settings=dict(d.get("settings", {})),
                version=str(d.get("version", "?")),
                argv=[str(a) for a in d.get("argv", [])],
                created=str(d.get("created", "?")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: malformed run manifest: {e}") from e

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / MANIFEST_NAME
        atomic_save_json(self.to_dict(), path)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Manifest | None:
        """The manifest of ``folder``, or None if it has none. Raises ValueError for an unreadable one."""
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable run manifest: {e}") from e
        return cls.from_dict(d, str(path))

    def differences(self, other: Manifest) -> list[str]:
        """Human-readable differences that matter for resuming ``self`` (stored) as ``other`` (asked for)."""
        out = []
        if self.command != other.command:
            out.append(f"command: made by `slopekp {self.command}`, now `slopekp {other.command}`")
        for name in sorted(set(self.inputs) | set(other.inputs)):
            a, b = self.inputs.get(name), other.inputs.get(name)
            if a is None or b is None:
                out.append(f"input {name}: {'absent' if a is None else 'present'} in the folder, "
                           f"{'absent' if b is None else 'present'} now")
            elif a.get("fingerprint") != b.get("fingerprint"):
                out.append(
                    f"input {name}: fingerprint {a.get('fingerprint')} ({a.get('path', '?')}) in the folder, "
                    f"{b.get('fingerprint')} ({b.get('path', '?')}) now"
                )
        defaults = config_defaults()
        for key in sorted(set(self.settings) | set(other.settings)):
            if key in REMOVED_SETTINGS:
                continue  # a setting that an earlier release recorded and nothing read: it changed no result
            a, b = self.settings.get(key, EARLIER_DEFAULTS.get(key, "<unset>")), other.settings.get(key, "<unset>")
            added_later = key not in self.settings and key not in EARLIER_DEFAULTS and key in defaults
            if added_later and _norm(b) == _norm(defaults[key]):
                continue  # a setting added by a later slopekp, asked for at its default: the run it made is the same
            if _norm(a) != _norm(b):
                out.append(f"{key}: {a!r} in the folder, {b!r} now")
        return out


def flat_config(cfg: Any) -> dict[str, Any]:
    """``dotted.key -> value`` of every field of a :class:`~slopekp.config.Config` (sections flattened one level,
    top-level fields such as ``seed`` as they are)."""

    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        out.update(flat_settings(value, f.name) if is_dataclass(value) else {f.name: value})
    return out


def config_defaults() -> dict[str, Any]:
    """:func:`flat_config` of the default :class:`~slopekp.config.Config`."""

    return flat_config(Config())


def _norm(v: Any) -> Any:
    """JSON round trip, so that tuples and lists (and ints and floats that JSON equates) compare equal."""
    return json.loads(json.dumps(v))


# -------------------------------------------------------------------------------------------------------
# Fingerprints
# -------------------------------------------------------------------------------------------------------
_MAT_HEADER = 128
"""A MATLAB 5 file starts with 116 bytes of text that hold its creation time, 8 of subsystem offset and 4 of
version/endianness: fingerprints skip it, so the same data written twice has the same fingerprint."""


def file_digest(path: str | os.PathLike, h: Any | None = None) -> Any:
    """Feed ``path``'s bytes into a sha256 (skipping a ``.mat`` file's dated header) and return the hash."""
    h = h or hashlib.sha256()
    path = Path(path)
    with open(path, "rb") as f:
        if path.suffix.lower() == ".mat":
            f.seek(_MAT_HEADER)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def file_input(path: str | os.PathLike) -> dict[str, str]:
    """A manifest input for one file: ``{"fingerprint": 16 hex digits of its content, "path": absolute path}``."""
    return {"fingerprint": file_digest(path).hexdigest()[:16], "path": str(Path(path).resolve())}


def tree_listing_digest(root: str | os.PathLike, h: Any | None = None, *, exclude: Iterable[str] = ()) -> Any:
    """Feed the sorted ``(relative path, size)`` of every file under ``root`` into a sha256 (content is not
    read: a listing of CUB's 11,788 images takes well under a second)."""
    h = h or hashlib.sha256()
    root = Path(root)
    skip = set(exclude)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel in skip or name.startswith("."):
                continue
            entries.append((rel, p.stat().st_size))
    for rel, size in sorted(entries):
        h.update(f"{rel}\t{size}\n".encode())
    return h


def cmr_data_fingerprint(
    data_dir: str | os.PathLike,
    split: str,
    *,
    images_dir: str | os.PathLike | None = None,
    sfm_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fingerprint of a CMR-format data folder's ``split``: its annotation files and its image list.

    Hashes ``<split>_cub_cleaned.mat`` and (when present) ``anno_<split>.mat`` (content, without the dated
    MAT header) and the ``(relative path, size)`` listing of the images folder.

    Returns:
        ``{"fingerprint": 16 hex digits, "path": absolute data folder, "split": split}``.

    Raises:
        FileNotFoundError: naming the missing annotation file or images folder.
    """
    data_dir = Path(data_dir)
    images = Path(images_dir) if images_dir else data_dir / "images"
    sfm = Path(sfm_dir) if sfm_dir else data_dir
    h = hashlib.sha256(f"split={split}\n".encode())
    ann = data_dir / f"{split}_cub_cleaned.mat"
    if not ann.is_file():
        raise FileNotFoundError(f"{data_dir}: no {ann.name} (is this a CMR-format folder with a {split!r} split?)")
    file_digest(ann, h)
    anno = sfm / f"anno_{split}.mat"
    if anno.is_file():
        file_digest(anno, h)
    if not images.is_dir():
        raise FileNotFoundError(f"{data_dir}: images folder {images} not found")
    tree_listing_digest(images, h)
    return {"fingerprint": h.hexdigest()[:16], "path": str(data_dir.resolve()), "split": split}


def flat_settings(section: Any, prefix: str, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``{"prefix.field": value}`` of a config dataclass section (one level), minus ``exclude`` field names."""

    if not is_dataclass(section):
        raise TypeError(f"expected a config dataclass, got {type(section).__name__}")
    skip = set(exclude)
    return {f"{prefix}.{f.name}": getattr(section, f.name) for f in fields(section) if f.name not in skip}


# -------------------------------------------------------------------------------------------------------
# The gate
# -------------------------------------------------------------------------------------------------------
def prepare_output_dir(
    out: str | os.PathLike,
    manifest: Manifest,
    *,
    overwrite: bool = False,
    force_new: bool = False,
    resumable: bool = True,
    restart_on_mismatch: bool = False,
    results: Sequence[str] = (),
    inputs: Sequence[str | os.PathLike] = (),
    log=print,
) -> Literal["new", "resume"]:
    """Make ``out`` ready for a command described by ``manifest``; see the module docstring's table.

    Args:
        out: the output folder.
        manifest: what this run is made from; written to ``out/manifest.json`` for a new run.
        overwrite: empty a folder that was made otherwise (or by anything else) and start afresh there.
        force_new: move such a folder aside to ``<out>.old-<time>`` and start afresh.
        resumable: whether the command can continue a run with an equal manifest (else an equal manifest
            also starts afresh: the command simply redoes its deterministic work in place).
        restart_on_mismatch: a folder of the same command made from other inputs or settings is moved aside
            (as with ``force_new``) instead of refused: for self-contained demos (``quickstart``) whose
            outputs follow from their settings alone.
        results: the command's result files, relative to ``out`` (``multiplex.npz``, a checkpoint). A folder
            of the same command that holds none of them produced nothing (it failed before its first save,
            e.g. on a bad image): it is emptied and started afresh whatever its manifest says.
        inputs: folders and files this command reads. ``out`` must not be one of them or contain one, since
            ``overwrite`` and ``force_new`` would delete or move it (and a run written into its input changes it).
        log: where to say that a folder was moved aside or emptied.

    Returns:
        ``"new"`` or ``"resume"``.

    Raises:
        OutputExistsError, RunMismatchError: with the paths, the differences and the options to go on.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: is a file, not a folder; choose another output folder")
    _check_not_an_input(out, inputs)
    if out.is_dir() and any(out.iterdir()):
        try:
            old = Manifest.load(out)
        except ValueError:
            old = None
        if old is not None and old.command == manifest.command:
            diffs = old.differences(manifest)
            if diffs and results and not any((out / r).exists() for r in results):
                log(f"{out} held an unfinished run of `slopekp {manifest.command}` with no results yet: starting over")
                _empty_folder(out)
                _write_manifest(out, manifest)
                return "new"
            if not diffs and not (overwrite or force_new):
                if resumable:
                    return "resume"
                _write_manifest(out, manifest)
                return "new"
            if diffs and restart_on_mismatch and not overwrite:
                force_new = True
                log(f"{out} was made with other settings ({'; '.join(diffs)}): starting over")
            if diffs and not (overwrite or force_new):
                listed = "\n  ".join(diffs)
                if resumable:
                    options = (
                        f"Rerun with the same ones to resume, pass --force-new to start over there (the old "
                        f"folder is kept as {out.name}.old-<time>), --overwrite to replace it, or choose another "
                        "output folder."
                    )
                else:
                    options = (
                        f"Pass --overwrite to replace it, --force-new to keep the old folder aside as "
                        f"{out.name}.old-<time>, or choose another output folder."
                    )
                raise RunMismatchError(
                    f"{out} holds a run of `slopekp {manifest.command}` made from other inputs or settings:\n"
                    f"  {listed}\n{options}"
                )
        elif not (overwrite or force_new):
            what = f"was made by `slopekp {old.command}`" if old is not None else "has no slopekp run manifest"
            raise OutputExistsError(
                f"{out}: folder is not empty and {what}; refusing to write into it. Choose another "
                f"output folder, or pass --overwrite to delete its contents first."
            )
        if force_new:
            aside = _aside_name(out)
            out.rename(aside)
            log(f"moved the previous contents of {out} aside to {aside}")
        else:
            _empty_folder(out)
            log(f"--overwrite: removed the previous contents of {out}")
    _write_manifest(out, manifest)
    return "new"


def _check_not_an_input(out: Path, inputs: Sequence[str | os.PathLike]) -> None:
    here = out.resolve()
    for inp in inputs:
        p = Path(inp).resolve()
        if p == here or here in p.parents:
            raise OutputExistsError(
                f"{out}: is, or contains, the input {inp}; choose an output folder outside the data the command reads"
            )


def _write_manifest(out: Path, manifest: Manifest) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise OutputExistsError(f"{out}: a parent of the output folder is a file") from e
    manifest.save(out)


def prepare_output_file(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check that a single output file can be written: refuse to replace an existing one without
    ``overwrite``, and name a folder or a file where a folder is needed on the way.

    Returns:
        ``path`` as a :class:`~pathlib.Path`; its parent folder exists afterwards.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; give a file name for the output")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass --overwrite to replace it, or choose another name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{path}: cannot create it, {parent} is a file")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _aside_name(out: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cand = out.with_name(f"{out.name}.old-{stamp}")
    n = 1
    while cand.exists():
        n += 1
        cand = out.with_name(f"{out.name}.old-{stamp}-{n}")
    return cand


def _empty_folder(out: Path) -> None:
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
