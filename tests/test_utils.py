"""``slopekp.utils``: atomic writes (permissions, stale temporaries, error paths) and device names."""

import errno
import os
import stat
import tempfile

import pytest
import torch

from slopekp.utils import atomic_save_json, atomic_write, resolve_device


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_honours_umask(tmp_path, umask, mask, want):
    umask(mask)
    atomic_save_json({"a": 1}, tmp_path / "out.json")
    assert _mode(tmp_path / "out.json") == want
    assert os.umask(mask) == mask  # reading the umask left it as it was


def test_atomic_write_keeps_the_mode_of_an_existing_file(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "out.json"
    p.write_text("{}")
    os.chmod(p, 0o640)
    atomic_save_json({"a": 1}, p)
    assert _mode(p) == 0o640 and p.read_text() == '{\n  "a": 1\n}\n'


def test_atomic_write_removes_stale_temporaries_of_its_target(tmp_path):
    stale = [tmp_path / ".out.json.k3j_9x.tmp", tmp_path / ".out.json.abc.tmp"]
    keep = [tmp_path / ".other.json.k3j_9x.tmp", tmp_path / "out.json.k3j_9x.tmp", tmp_path / ".out.jsonx.tmp"]
    for p in stale + keep:
        p.write_text("half-written")
    atomic_save_json({"a": 1}, tmp_path / "out.json")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json"] + [p.name for p in keep])


def test_atomic_write_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "x.bin") as f:
        f.write(b"abc")
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())


def test_atomic_write_errors_name_the_target(tmp_path, monkeypatch):
    """An OSError of the temporary file (no permission, disk full) names the file the user asked for."""
    target = tmp_path / "out.json"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".out.json.xyz.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError) as e:
        atomic_save_json({}, target)
    assert e.value.filename == str(target) and e.value.strerror == "Permission denied"
    monkeypatch.undo()

    with pytest.raises(OSError) as e, atomic_write(target, "w"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_atomic_write_into_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError) as e:
            atomic_save_json({}, ro / "out.json")
        assert e.value.filename == str(ro / "out.json")
    finally:
        ro.chmod(0o700)


def test_resolve_device_accepts():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.parametrize("name", ["foo", "meta", "cuda:x", "cpu:0:1", "", "CPU"])
def test_resolve_device_rejects_unknown(name):
    with pytest.raises(ValueError, match=r"device must be one of auto, cpu, cuda, cuda:N"):
        resolve_device(name)


def test_resolve_device_rejects_unavailable(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'mps' .*not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda:1' .*CUDA is not available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"'cuda:2' .*2 CUDA device\(s\) \(cuda:0\.\.cuda:1\)"):
        resolve_device("cuda:2")



def test_tensor_memo_caches_per_tensor_until_it_changes_or_goes():
    import gc

    from slopekp.utils import tensor_memo

    calls = []

    @tensor_memo
    def total(t, scale):
        calls.append(scale)
        return float(t.sum()) * scale

    a = torch.ones(3)
    assert total(a, 2) == 6.0 and total(a, 2) == 6.0 and calls == [2]  # cached
    assert total(a, 3) == 9.0 and calls == [2, 3]  # other args: computed
    assert total(a.clone(), 2) == 6.0 and len(calls) == 3  # an equal but other tensor: computed
    a.add_(1)  # in place: the version counter moves
    assert total(a, 2) == 12.0 and len(calls) == 4
    n = len(total.cache)
    del a
    gc.collect()
    assert len(total.cache) == n - 2  # the freed tensor's entries left


def test_to_device_and_device_constant():
    from slopekp.utils import device_constant, to_device

    c = device_constant((1.0, 2.0), torch.float64, torch.device("cpu"))
    assert c is device_constant((1.0, 2.0), torch.float64, torch.device("cpu"))  # made once
    assert c.dtype == torch.float64 and c.tolist() == [1.0, 2.0]
    t = torch.arange(3)
    assert torch.equal(to_device(t, "cpu"), t)


_ORPHAN_JOB = """
import os, sys, time
sys.path.insert(0, {folder!r})
from slopekp.utils import spawned_map
from orphan_job_fns import init, work

if __name__ == "__main__":
    with spawned_map(work, range(4), 2, init, ({folder!r},)) as results:
        list(results)
"""

_ORPHAN_FNS = """
import os, time

def init(folder):
    open(os.path.join(folder, f"worker-{os.getpid()}"), "w").close()

def work(i):
    time.sleep(60)
    return i
"""


def test_spawned_workers_end_when_their_parent_is_killed(tmp_path):
    """A ``kill -9`` of the process running :func:`spawned_map` does not leave its workers behind (issue 22)."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "orphan_job_fns.py").write_text(_ORPHAN_FNS)
    (tmp_path / "job.py").write_text(_ORPHAN_JOB.format(folder=str(tmp_path)))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "job.py")])
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("worker-*"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, "the job ended before its workers started"
        time.sleep(0.05)
    pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
    assert len(pids) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:  # a zombie waiting to be reaped by init counts as gone
            return f.read().split(")")[-1].split()[0] != "Z"

    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), "workers outlived their killed parent"
