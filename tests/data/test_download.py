"""Downloads against a loopback HTTP server with Range support (never the internet).

Full download, resume after a dropped connection, servers that ignore Range, checksum mismatch, truncated
archives, unsafe members, offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from slopekp import cli
from slopekp.data import download
from slopekp.data.download import DownloadError, Source, download_file, extract_archive, fetch

# ------------------------------------------------------------------------------------------------------------
# a tiny HTTP/1.1 file server with byte ranges and fault injection
# ------------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng is not None and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if srv.drop_after is not None:  # announce everything, send part, hang up (a dropped connection)
            cut, srv.drop_after = srv.drop_after, None
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: int | None = None
        self.ignore_range = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


# ------------------------------------------------------------------------------------------------------------
# small archives
# ------------------------------------------------------------------------------------------------------------

CONTENT = {
    "CUB_200_2011/images.txt": b"1 001.Black_footed_Albatross/a.jpg\n",
    "CUB_200_2011/images/001.Black_footed_Albatross/a.jpg": bytes(range(256)) * 40,
    "CUB_200_2011/README": b"test archive\n",
}


def make_tgz(content: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_zip(content: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in content.items():
            zf.writestr(name, data)
    return buf.getvalue()


def assert_installed(root: Path, content: dict[str, bytes]) -> None:
    for name, data in content.items():
        assert (root / name).read_bytes() == data


def assert_clean(root: Path, top: str) -> None:
    """No dataset folder and no temporary extraction folder left behind."""
    assert not (root / top).exists()
    assert not list(root.glob(".extract-*"))


@pytest.fixture
def cub_source(monkeypatch):
    """Point ``cub`` at the test archive's MD5 (the real one is CUB's published checksum)."""
    data = make_tgz(CONTENT)
    md5 = hashlib.md5(data).hexdigest()
    src = Source("cub", "https://unused.invalid/x.tgz", "CUB_200_2011.tgz", md5, None, "CUB_200_2011", "tiny")
    monkeypatch.setitem(download.SOURCES, "cub", src)
    return data


def test_known_sources_match_data_md():
    assert download.SOURCES["cub"].md5 == "97eceeb196236b17998738112f37df78"
    assert download.SOURCES["cub"].url.endswith("/CUB_200_2011.tgz")
    assert download.SOURCES["davis2017"].url.endswith("DAVIS-2017-trainval-480p.zip")
    assert download.SOURCES["ucmr-annotations"].url.endswith("ucmr/cachedir.tar.gz")


def test_full_download_verifies_and_extracts(server, tmp_path, cub_source):
    server.files["/CUB_200_2011.tgz"] = cub_source
    logs: list[str] = []
    res = fetch("cub", tmp_path, url=server.base, progress=False, log=logs.append)
    assert res.verified and res.digests.md5 == hashlib.md5(cub_source).hexdigest()
    assert res.extracted == (tmp_path / "CUB_200_2011",)
    assert_installed(tmp_path, CONTENT)
    assert (tmp_path / ".downloads" / "CUB_200_2011.tgz").read_bytes() == cub_source
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.glob(".extract-*"))
    assert any("checksum verified" in m for m in logs)
    record = json.loads((tmp_path / "slopekp_fetch.json").read_text())["cub"]
    assert record["checksum_verified"] is True and record["sha256"] == hashlib.sha256(cub_source).hexdigest()
    assert server.requests == [("/CUB_200_2011.tgz", None)]
    # a second fetch refuses to overwrite the installed folder
    with pytest.raises(DownloadError, match=r"CUB_200_2011 already exists"):
        fetch("cub", tmp_path, url=server.base, progress=False, log=logs.append)
    # after removing it, the kept archive (checksum verified) is reinstalled without a new request
    shutil.rmtree(tmp_path / "CUB_200_2011")
    res = fetch("cub", tmp_path, url=server.base, progress=False, log=logs.append)
    assert res.verified and len(server.requests) == 1
    assert_installed(tmp_path, CONTENT)


def test_unknown_checksum_prints_and_records_sha256(server, tmp_path):
    content = {"DAVIS/ImageSets/2017/val.txt": b"blackswan\n", "DAVIS/README.md": b"x" * 5000}
    data = make_zip(content)
    server.files["/mirror/DAVIS-2017-trainval-480p.zip"] = data
    logs: list[str] = []
    res = fetch("davis2017", tmp_path, url=server.base + "mirror/", progress=False, log=logs.append)
    sha = hashlib.sha256(data).hexdigest()
    assert not res.verified and res.digests.sha256 == sha
    assert any("no published checksum" in m and sha in m for m in logs)
    assert json.loads((tmp_path / "slopekp_fetch.json").read_text())["davis2017"]["sha256"] == sha
    assert_installed(tmp_path, content)


def test_resume_after_dropped_connection(server, tmp_path, cub_source):
    server.files["/CUB_200_2011.tgz"] = cub_source
    half = len(cub_source) // 2
    server.drop_after = half
    with pytest.raises(
        DownloadError, match=r"stopped after \d+ of \d+ bytes.*rerun the same command to resume"
    ):
        fetch("cub", tmp_path, url=server.base, progress=False, log=lambda m: None)
    part = tmp_path / ".downloads" / "CUB_200_2011.tgz.part"
    assert part.stat().st_size == half
    assert_clean(tmp_path, "CUB_200_2011")
    res = fetch("cub", tmp_path, url=server.base, progress=False, log=lambda m: None)
    assert server.requests[-1] == ("/CUB_200_2011.tgz", f"bytes={half}-")
    assert res.verified
    assert_installed(tmp_path, CONTENT)
    assert not part.exists()


def test_download_file_restarts_when_server_ignores_range(server, tmp_path):
    data = bytes(range(256)) * 100
    server.files["/f.bin"] = data
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"garbage!" * 10)  # not a prefix of the file
    res = download_file(server.base + "f.bin", dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data and res.resumed_from == 0 and res.verified


def test_download_file_url_and_http_errors(server, tmp_path):
    src = tmp_path / "local.bin"
    src.write_bytes(b"abc" * 1000)
    res = download_file(
        src.as_uri(), tmp_path / "copy.bin", md5=hashlib.md5(src.read_bytes()).hexdigest(), progress=False
    )
    assert res.verified and (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
    with pytest.raises(DownloadError, match=r"cannot read file://.*missing\.bin"):
        download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "m.bin", progress=False)
    with pytest.raises(DownloadError, match=r"downloading http://127\.0\.0\.1:\d+/nothing\.zip: HTTP 404"):
        download_file(server.base + "nothing.zip", tmp_path / "n.zip", progress=False)
    assert not list(tmp_path.glob("*.part"))


def test_download_file_part_already_complete(server, tmp_path):
    data = b"0123456789" * 50
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data)  # the server answers 416 to bytes=500-
    res = download_file(server.base + "f.bin", dest, md5=hashlib.md5(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data and res.resumed_from == len(data)
    assert server.requests == [("/f.bin", "bytes=500-")]


def test_checksum_mismatch_names_file_and_leaves_nothing(server, tmp_path, cub_source):
    server.files["/CUB_200_2011.tgz"] = make_tgz({"CUB_200_2011/other": b"not the expected archive"})
    with pytest.raises(
        DownloadError, match=r"CUB_200_2011\.tgz: MD5 checksum mismatch: expected [0-9a-f]{32}"
    ):
        fetch("cub", tmp_path, url=server.base, progress=False, log=lambda m: None)
    assert_clean(tmp_path, "CUB_200_2011")
    assert not (tmp_path / ".downloads").exists()  # neither the archive nor a .part to resume: removed


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_truncated_archive_is_a_clear_error(server, tmp_path, kind):
    content = {f"DAVIS/JPEGImages/480p/s/{i:05d}.jpg": bytes([i]) * 3000 for i in range(8)}
    data = make_tgz(content) if kind == "tgz" else make_zip(content)
    server.files["/DAVIS-2017-trainval-480p.zip"] = data[: len(data) * 2 // 3]  # complete transfer, bad file
    with pytest.raises(
        DownloadError, match=r"DAVIS-2017-trainval-480p\.zip: (truncated or corrupt|not a tar or zip)"
    ):
        fetch("davis2017", tmp_path, url=server.base, progress=False, log=lambda m: None)
    assert_clean(tmp_path, "DAVIS")
    assert not (tmp_path / "slopekp_fetch.json").exists()


def test_local_archive_install_and_checksum(tmp_path, cub_source):
    arch = tmp_path / "dl" / "CUB_200_2011.tgz"
    arch.parent.mkdir()
    arch.write_bytes(cub_source)
    res = fetch("cub", tmp_path / "root", archive=arch, progress=False, log=lambda m: None)
    assert res.verified and res.archive == arch
    assert_installed(tmp_path / "root", CONTENT)
    bad = tmp_path / "dl" / "bad.tgz"
    bad.write_bytes(cub_source[:-10])
    with pytest.raises(DownloadError, match=r"bad\.tgz: MD5 checksum mismatch"):
        fetch("cub", tmp_path / "root2", archive=bad, progress=False, log=lambda m: None)
    assert_clean(tmp_path / "root2", "CUB_200_2011")
    with pytest.raises(DownloadError, match="--archive: file not found"):
        fetch("cub", tmp_path / "root3", archive=tmp_path / "nope.tgz", log=lambda m: None)
    with pytest.raises(DownloadError, match="unknown dataset 'imagenet'"):
        fetch("imagenet", tmp_path)


@pytest.mark.parametrize(
    ("name", "why"),
    [("../evil.txt", "'..' component"), ("/etc/evil", "absolute path"), ("a/../../b", "'..'")],
)
def test_unsafe_members_are_refused(tmp_path, name, why):
    for kind, data in (
        ("tgz", make_tgz({"ok/x": b"1", name: b"2"})),
        ("zip", make_zip({"ok/x": b"1", name: b"2"})),
    ):
        arch = tmp_path / f"a.{kind}"
        arch.write_bytes(data)
        root = tmp_path / f"root_{kind}"
        with pytest.raises(DownloadError, match=rf"a\.{kind}: refusing to extract member .*{why}"):
            extract_archive(arch, root)
        assert not (root / "ok").exists() and not list(root.glob(".extract-*"))
    assert not (tmp_path / "evil.txt").exists()


def _tar_with_link(path: Path, name: str, target: str, hard: bool = False) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("data/sub/file.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize(
    ("target", "hard"), [("../../outside", False), ("/etc/passwd", False), ("../data/sub/file.txt", True)]
)
def test_links_leaving_archive_are_refused(tmp_path, target, hard):
    arch = _tar_with_link(tmp_path / "l.tar", "data/link", target, hard)
    with pytest.raises(DownloadError, match=r"l\.tar: refusing to extract member 'data/link': a link to"):
        extract_archive(arch, tmp_path / "root")
    assert not (tmp_path / "root" / "data").exists()


def test_links_inside_archive_are_kept(tmp_path):
    arch = _tar_with_link(tmp_path / "ok.tar", "data/sub/link", "file.txt")
    extract_archive(arch, tmp_path / "root")
    assert (tmp_path / "root" / "data" / "sub" / "link").read_bytes() == b"hi"
    arch = _tar_with_link(tmp_path / "ok2.tar", "data/link2", "sub/file.txt")
    extract_archive(arch, tmp_path / "root2")
    assert (tmp_path / "root2" / "data" / "link2").read_bytes() == b"hi"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_message(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/CUB_200_2011.tgz"
    with pytest.raises(DownloadError) as info:
        fetch("cub", tmp_path, url=url, progress=False, log=lambda m: None, timeout=5)
    msg = str(info.value)
    assert msg.startswith("could not reach 127.0.0.1: are you offline? download " + url + " by hand and run")
    assert f"`slopekp data fetch cub --root {tmp_path} --archive FILE`" in msg
    assert_clean(tmp_path, "CUB_200_2011")
    assert not (tmp_path / ".downloads").exists()  # no empty folder left behind
    assert tmp_path.is_dir()  # the root existed before: kept
    new = tmp_path / "new" / "root"
    with pytest.raises(DownloadError, match="are you offline"):
        fetch("cub", new, url=url, progress=False, log=lambda m: None, timeout=5)
    assert not (tmp_path / "new").exists()  # the folders fetch created, empty: removed


def test_cli_fetch_and_offline_exit_status(server, tmp_path, capsys):
    content = {"cachedir/cub/data/README": b"annotations"}
    server.files["/cachedir.tar.gz"] = make_tgz(content)
    rc = cli.main(
        ["data", "fetch", "ucmr-annotations", "--root", str(tmp_path), "--url", server.base, "--no-progress"]
    )
    assert rc == 0
    assert_installed(tmp_path, content)
    assert "computed SHA-256" in capsys.readouterr().out
    url = f"http://127.0.0.1:{_closed_port()}/x.zip"
    rc = cli.main(
        ["data", "fetch", "davis2017", "--root", str(tmp_path / "r"), "--url", url, "--no-progress"]
    )
    assert rc == 2
    assert "could not reach 127.0.0.1: are you offline?" in capsys.readouterr().err


@pytest.mark.parametrize("local", [True, False])
def test_record_announced_only_after_successful_extraction(server, tmp_path, local):
    """A failed extraction neither writes ROOT/slopekp_fetch.json nor says it did; a successful one does both."""
    content = {f"DAVIS/JPEGImages/480p/s/{i:05d}.jpg": bytes([i]) * 3000 for i in range(8)}
    data = make_zip(content)
    bad = tmp_path / "DAVIS-2017-trainval-480p.zip"
    bad.write_bytes(data[: len(data) * 2 // 3])
    server.files["/DAVIS-2017-trainval-480p.zip"] = bad.read_bytes()
    root = tmp_path / "root"
    kwargs = {"archive": bad} if local else {"url": server.base}
    logs: list[str] = []
    with pytest.raises(DownloadError, match="DAVIS-2017-trainval-480p.zip: "):
        fetch("davis2017", root, progress=False, log=logs.append, **kwargs)
    assert not (root / "slopekp_fetch.json").exists()
    assert not any("slopekp_fetch.json" in m or "recorded" in m for m in logs), logs
    assert any("computed SHA-256" in m for m in logs)  # the checksum is still printed
    if local:
        assert not root.exists()  # created by fetch, empty after the failure: removed
    else:
        assert [p.name for p in root.iterdir()] == [".downloads"]  # the archive, kept for inspection
    logs.clear()
    bad.write_bytes(data)
    server.files["/DAVIS-2017-trainval-480p.zip"] = data
    fetch("davis2017", root, progress=False, log=logs.append, **kwargs)
    sha = hashlib.sha256(data).hexdigest()
    assert json.loads((root / "slopekp_fetch.json").read_text())["davis2017"]["sha256"] == sha
    recorded = [i for i, m in enumerate(logs) if m.startswith("recorded ") and f"in {root / 'slopekp_fetch.json'}" in m]
    extracting = [i for i, m in enumerate(logs) if m.startswith("extracting ")]
    assert len(recorded) == 1 and recorded[0] > extracting[0]


def test_cli_fetch_failed_extraction_message(tmp_path, capsys):
    data = make_zip({"DAVIS/README.md": b"x" * 5000})
    bad = tmp_path / "trunc.zip"
    bad.write_bytes(data[: len(data) // 2])
    rc = cli.main(["data", "fetch", "davis2017", "--root", str(tmp_path / "r"), "--archive", str(bad)])
    assert rc == 2
    out = capsys.readouterr()
    assert "slopekp_fetch.json" not in out.out and "recorded" not in out.out
    assert "trunc.zip: " in out.err
    assert not (tmp_path / "r").exists()
