"""Resumable, checksum-verified downloads and safe atomic archive extraction (DATA.md §10).

``slopekp data fetch NAME --root DIR`` calls :func:`fetch`, which

1. downloads the archive of :data:`SOURCES` ``[NAME]`` into ``DIR/.downloads/<file>.part``, resuming an
   interrupted transfer with an HTTP ``Range`` request (a server that ignores ``Range`` restarts it);
2. checks the byte count against ``Content-Length`` and the checksum against the published one (CUB's MD5,
   DATA.md §2). Where no checksum is published (the U-CMR cachedir, DAVIS) the SHA-256 computed after the
   download is printed, and recorded in ``DIR/slopekp_fetch.json`` once the archive is installed, so a second
   machine can compare;
3. renames the ``.part`` file to the archive name, then extracts it (tar or zip) into a temporary folder
   beside the target and renames the top-level entries into ``DIR``. An archive member with an absolute path,
   a ``..`` component or a link leaving the archive is refused; a truncated or corrupt archive raises an
   error naming the file and leaves no partial dataset folder behind;
4. only then writes the record ``DIR/slopekp_fetch.json`` (archive, URL, size, checksums, what it extracted)
   and says so. A failed fetch writes no record and removes the folders it created that are left empty
   (``DIR/.downloads`` when offline; a ``.part`` file to resume keeps it).

Nothing here runs at import time. Network errors become :class:`DownloadError` (a ``ValueError``), whose
message says what to do: when the host cannot be reached, download the URL by hand and rerun with
``--archive FILE``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from slopekp.utils import atomic_save_json

_CHUNK = 1 << 20
#: Bookkeeping file written in the fetch root: one entry per installed archive.
RECORD_NAME = "slopekp_fetch.json"


class DownloadError(ValueError):
    """A download, checksum or extraction failed; the message names the URL or file and the next step."""


@dataclass(frozen=True)
class Source:
    """A downloadable dataset archive.

    Attributes:
        name: the ``slopekp data fetch`` name.
        url: where to download it.
        filename: the archive's file name.
        md5, sha256: published checksums (lower-case hex), ``None`` when none is published.
        creates: the top-level folder the archive extracts to (checked after extraction).
        size_note: approximate size, for messages.
    """

    name: str
    url: str
    filename: str
    md5: str | None
    sha256: str | None
    creates: str
    size_note: str


#: The archives users need (DATA.md §10). Only CUB has a published checksum (its MD5, DATA.md §2).
SOURCES: dict[str, Source] = {
    "cub": Source(
        "cub",
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
        "CUB_200_2011.tgz",
        md5="97eceeb196236b17998738112f37df78",
        sha256=None,
        creates="CUB_200_2011",
        size_note="about 1.15 GB",
    ),
    "ucmr-annotations": Source(
        "ucmr-annotations",
        "https://people.eecs.berkeley.edu/~shubham-goel/projects/ucmr/cachedir.tar.gz",
        "cachedir.tar.gz",
        md5=None,
        sha256=None,
        creates="cachedir",
        size_note="CMR cleaned annotations, SfM and template",
    ),
    "davis2017": Source(
        "davis2017",
        "https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip",
        "DAVIS-2017-trainval-480p.zip",
        md5=None,
        sha256=None,
        creates="DAVIS",
        size_note="about 0.8 GB",
    ),
}


@dataclass(frozen=True)
class Digests:
    """Checksums of a file: lower-case hex ``md5`` and ``sha256`` and its size in bytes."""

    md5: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DownloadResult:
    """A completed download.

    Attributes:
        path: the downloaded file (the ``.part`` suffix removed).
        digests: its checksums and size.
        resumed_from: bytes already present in the ``.part`` file and not downloaded again (0 = fresh).
        verified: whether a published checksum was checked (False = none was published).
    """

    path: Path
    digests: Digests
    resumed_from: int
    verified: bool


@dataclass(frozen=True)
class FetchResult:
    """An installed dataset: the archive, its checksums, whether they were verified, the extracted folders."""

    archive: Path
    digests: Digests
    verified: bool
    extracted: tuple[Path, ...]


def file_digests(path: str | Path, chunk_size: int = _CHUNK) -> Digests:
    """MD5 and SHA-256 of ``path``, read in chunks."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return Digests(md5.hexdigest(), sha.hexdigest(), size)


def check_digests(path: Path, digests: Digests, md5: str | None, sha256: str | None) -> bool:
    """Compare ``digests`` of ``path`` with the expected checksums; return whether any was checked.

    Raises:
        DownloadError: naming ``path``, the expected and the actual checksum, on a mismatch.
    """
    checked = False
    for algo, want, got in (("MD5", md5, digests.md5), ("SHA-256", sha256, digests.sha256)):
        if want is None:
            continue
        checked = True
        if want.lower() != got:
            raise DownloadError(
                f"{path}: {algo} checksum mismatch: expected {want.lower()}, got {got} "
                f"({digests.size} bytes); the file is corrupt or not the expected archive"
            )
    return checked


def _offline_error(url: str, err: BaseException, hint: str) -> DownloadError:
    host = urllib.parse.urlsplit(url).hostname or url
    return DownloadError(
        f"could not reach {host}: are you offline? download {url} by hand and run {hint} ({err})"
    )


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes a-b/total`` → ``(a, total)``; ``bytes */total`` → ``(None, total)``; unknown parts → None."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def download_file(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    offline_hint: str = "with --archive FILE",
) -> DownloadResult:
    """Download ``url`` to ``dest`` through ``dest + ".part"``, resuming a previous partial download.

    Resumes with ``Range: bytes=<n>-`` when ``dest.part`` holds ``n`` bytes: a ``206`` reply whose
    ``Content-Range`` starts at ``n`` is appended; a ``200`` reply (Range ignored) restarts from zero; a
    ``416`` reply whose total equals ``n`` means the part file is already complete. The file is renamed to
    ``dest`` only after the byte count matches ``Content-Length`` and the checksums (if given) match.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: final path of the file.
        md5, sha256: expected checksums (hex); ``None`` skips the check.
        progress: show a tqdm progress bar (on stderr).
        timeout: socket timeout in seconds.
        offline_hint: the command to suggest when the host cannot be reached.

    Raises:
        DownloadError: host unreachable (the message says how to install by hand), HTTP error, a transfer
            that stopped early (the ``.part`` file is kept: rerun to resume), or a checksum mismatch (the
            ``.part`` file is deleted, since resuming it could not fix it).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    resumed_from = 0
    request = urllib.request.Request(url, headers={"User-Agent": "slopekp"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            _, total = _parse_content_range(e.headers.get("Content-Range"))
            e.close()
            if total == have:  # the part file already holds everything
                return _finish(part, dest, md5, sha256, have)
            part.unlink()  # longer than the server's file: it cannot be resumed, start again
            kwargs = dict(
                md5=md5, sha256=sha256, progress=progress, timeout=timeout, offline_hint=offline_hint
            )
            return download_file(url, dest, **kwargs)
        raise DownloadError(f"downloading {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        if urllib.parse.urlsplit(url).scheme == "file":
            raise DownloadError(f"cannot read {url}: {getattr(e, 'reason', e)}") from e
        raise _offline_error(url, getattr(e, "reason", e), offline_hint) from e

    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if have and status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != have:
                raise DownloadError(
                    f"downloading {url}: asked to resume at byte {have}, the server answered "
                    f"{response.headers.get('Content-Range')!r}; delete {part} and rerun"
                )
            resumed_from = have
            mode = "ab"
        else:  # a fresh download, or a server that ignored Range: start from zero
            total = length
            have = 0
            mode = "wb"
        if total is None and length is not None:
            total = have + length
        written = have
        bar = tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
            disable=not progress, leave=False,
        )  # fmt: skip
        with open(part, mode) as f, bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.IncompleteRead, TimeoutError, OSError) as e:
                    raise DownloadError(
                        f"downloading {url}: the transfer stopped after {written} of "
                        f"{total if total is not None else '?'} bytes ({type(e).__name__}); the partial file "
                        f"{part} is kept: rerun the same command to resume"
                    ) from e
                if not chunk:
                    break
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    if total is not None and written != total:
        raise DownloadError(
            f"downloading {url}: the transfer stopped after {written} of {total} bytes; the partial file "
            f"{part} is kept: rerun the same command to resume"
        )
    return _finish(part, dest, md5, sha256, resumed_from)


def _finish(part: Path, dest: Path, md5: str | None, sha256: str | None, resumed_from: int) -> DownloadResult:
    digests = file_digests(part)
    try:
        verified = check_digests(dest, digests, md5, sha256)
    except DownloadError:
        part.unlink()  # a wrong file cannot be repaired by resuming it
        raise
    os.replace(part, dest)
    return DownloadResult(dest, digests, resumed_from, verified)


# ------------------------------------------------------------------------------------------------------------
# extraction
# ------------------------------------------------------------------------------------------------------------


def _unsafe_member_name(name: str) -> str | None:
    """Why an archive member name is unsafe (absolute, ``..``, drive letter), or ``None`` if it is fine."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "an absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "a '..' component"
    return None


def _check_tar_members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        why = _unsafe_member_name(m.name)
        if why is None and (m.issym() or m.islnk()):
            # hard links are relative to the archive root, symlinks to the member's folder
            target = m.linkname if m.islnk() else str(PurePosixPath(m.name).parent / m.linkname)
            if m.linkname.startswith("/") or posixpath.normpath(target).split("/")[0] == "..":
                why = f"a link to {m.linkname!r}, outside the archive"
        if why is None and (m.ischr() or m.isblk() or m.isfifo()):
            why = "a device or FIFO"
        if why is not None:
            raise DownloadError(f"{archive}: refusing to extract member {m.name!r}: {why}")
    return members


def _check_zip_members(archive: Path, zf: zipfile.ZipFile) -> None:
    for name in zf.namelist():
        why = _unsafe_member_name(name)
        if why is not None:
            raise DownloadError(f"{archive}: refusing to extract member {name!r}: {why}")


def extract_archive(archive: str | Path, root: str | Path) -> tuple[Path, ...]:
    """Extract a tar (any compression) or zip ``archive`` into ``root`` atomically.

    Members are extracted into a temporary folder inside ``root``; only when that succeeds are its
    top-level entries renamed into ``root``. Returns the paths of those entries.

    Raises:
        DownloadError: naming ``archive`` when it is not a tar/zip file, is truncated or corrupt, holds an
            unsafe member (absolute path, ``..``, link leaving the archive, device), is empty, or would
            overwrite an existing entry of ``root``. Nothing is left in ``root`` in any of these cases.
    """
    archive, root = Path(archive), Path(root)
    if not archive.is_file():
        raise DownloadError(f"archive not found: {archive}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    _check_zip_members(archive, zf)
                    zf.extractall(tmp)  # raises BadZipFile on a CRC mismatch
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as tar:
                    members = _check_tar_members(archive, tar)
                    tar.extractall(tmp, members=members, filter="data")
            else:
                raise DownloadError(
                    f"{archive}: not a tar or zip archive (or truncated before its first member)"
                )
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise DownloadError(f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e})") from e
        entries = sorted(tmp.iterdir())
        if not entries:
            raise DownloadError(f"{archive}: the archive is empty")
        clash = [root / e.name for e in entries if (root / e.name).exists()]
        if clash:
            raise DownloadError(
                f"{archive}: {clash[0]} already exists; remove it (or choose another --root) and rerun"
            )
        out = []
        for e in entries:
            os.replace(e, root / e.name)
            out.append(root / e.name)
        return tuple(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------------
# fetch = download (or a local archive) + verify + extract + record
# ------------------------------------------------------------------------------------------------------------


def fetch(
    name: str,
    root: str | Path,
    *,
    archive: str | Path | None = None,
    url: str | None = None,
    keep_archive: bool = True,
    progress: bool = True,
    timeout: float = 30.0,
    log=print,
) -> FetchResult:
    """Install dataset ``name`` (a key of :data:`SOURCES`) under ``root``.

    Args:
        name: ``cub``, ``ucmr-annotations`` or ``davis2017``.
        root: the folder to install into (created); the archive goes to ``root/.downloads/``.
        archive: install from this local file instead of downloading (checksums still checked).
        url: download from this URL instead of the known one (a mirror); a URL ending in ``/`` is a base
            to which the archive's file name is appended.
        keep_archive: keep the downloaded archive in ``root/.downloads`` after extraction.
        progress: tqdm progress bar.
        timeout: socket timeout in seconds.
        log: where to print one-line messages (``print`` by default).

    Raises:
        DownloadError: unknown name, unreachable host, interrupted transfer, checksum mismatch, unsafe,
            truncated or corrupt archive, or an existing target folder (see :func:`extract_archive`). Then
            no record is written, and the folders this call created (``root``, ``root/.downloads``) are
            removed when empty.
    """
    if name not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)}")
    src = SOURCES[name]
    root = Path(root)
    if (root / src.creates).exists():
        raise DownloadError(
            f"{root / src.creates} already exists; check it with `slopekp data verify --root {root}` "
            "or remove it to reinstall"
        )
    created = [p for p in (root / ".downloads", root, *root.parents) if not p.exists()]
    try:
        return _fetch(src, root, archive, url, keep_archive, progress, timeout, log)
    except BaseException:
        for folder in created:  # innermost first: what this call created and left empty (nothing to resume)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _fetch(
    src: Source,
    root: Path,
    archive: str | Path | None,
    url: str | None,
    keep_archive: bool,
    progress: bool,
    timeout: float,
    log,
) -> FetchResult:
    """:func:`fetch` after its argument checks."""
    name = src.name
    source_url = None  # None = installed from a local archive
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DownloadError(f"--archive: file not found: {archive}")
        digests = file_digests(archive)
        verified = check_digests(archive, digests, src.md5, src.sha256)
    else:
        source_url = url or src.url
        if source_url.endswith("/"):
            source_url += src.filename
        dest = root / ".downloads" / src.filename
        reused = _reuse_verified(dest, src)
        if reused is not None:
            log(f"{dest} is already downloaded and its checksum matches: not downloading it again")
            archive, digests, verified = dest, reused, True
        else:
            log(f"downloading {source_url} ({src.size_note}) into {dest.parent}")
            hint = f"`slopekp data fetch {name} --root {root} --archive FILE`"
            result = download_file(
                source_url,
                dest,
                md5=src.md5,
                sha256=src.sha256,
                progress=progress,
                timeout=timeout,
                offline_hint=hint,
            )
            if result.resumed_from:
                log(f"resumed from byte {result.resumed_from}")
            archive, digests, verified = result.path, result.digests, result.verified
    if verified:
        log(f"{archive.name}: checksum verified")
    else:
        log(f"{archive.name}: no published checksum for {name}; computed SHA-256 {digests.sha256}")
    log(f"extracting {archive.name} into {root}")
    extracted = extract_archive(archive, root)
    if not (root / src.creates).exists():
        log(
            f"warning: {archive.name} did not create {src.creates}/ "
            f"(it created {', '.join(p.name for p in extracted)})"
        )
    _record(root, src, source_url, archive, digests, verified, extracted)
    if archive.parent == root / ".downloads" and not keep_archive:
        archive.unlink()
        with contextlib.suppress(OSError):
            archive.parent.rmdir()  # only when empty
    log(f"installed {', '.join(str(p) for p in extracted)}")
    log(
        f"recorded {archive.name} and its checksums in {root / RECORD_NAME}"
        + ("" if verified else "; compare its SHA-256 with another download to be sure")
    )
    return FetchResult(archive, digests, verified, extracted)


def _reuse_verified(dest: Path, src: Source) -> Digests | None:
    """Digests of an earlier complete download ``dest`` when a published checksum confirms it, else None.

    Without a published checksum an existing file cannot be trusted (it may be the corrupt file that made
    the last extraction fail), so it is downloaded again.
    """
    if not dest.is_file() or (src.md5 is None and src.sha256 is None):
        return None
    digests = file_digests(dest)
    try:
        check_digests(dest, digests, src.md5, src.sha256)
    except DownloadError:
        return None
    return digests


def _record(
    root: Path, src: Source, url: str | None, archive: Path, digests: Digests, verified: bool, extracted
) -> None:
    path = root / RECORD_NAME
    records = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            records = json.loads(path.read_text())
    records[src.name] = {
        "archive": archive.name,
        "url": url,
        "bytes": digests.size,
        "md5": digests.md5,
        "sha256": digests.sha256,
        "checksum_verified": verified,
        "extracted": [p.name for p in extracted],
    }
    atomic_save_json(records, path)
