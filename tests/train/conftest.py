"""Fixtures of the training tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_torchrun():
    """``run_torchrun(args, timeout) -> log``: ``torchrun --nproc_per_node 2 ARGS`` on CPU, gloo on 127.0.0.1
    (its traffic kept on the loopback interface), one thread per process. Fails the test, with the log's end, on a
    non-zero exit or when it runs past ``timeout`` seconds (then torchrun is stopped with its workers)."""
    from slopekp.train import distributed as D

    def run(args: list[str], timeout: float = 120) -> str:
        env = {k: v for k, v in os.environ.items() if k not in D.TORCHRUN_ENV}
        env.update(OMP_NUM_THREADS="1", TORCH_NCCL_ASYNC_ERROR_HANDLING="1")
        loopback = next((name for _, name in socket.if_nameindex() if name in ("lo", "lo0")), None)
        if loopback:
            env.setdefault("GLOO_SOCKET_IFNAME", loopback)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--max_restarts", "0",
               *args]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun stops its workers on SIGTERM
            try:
                out, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            pytest.fail(f"torchrun did not finish in {timeout} s:\n" + out.decode(errors="replace")[-4000:])
        log = out.decode(errors="replace")
        assert proc.returncode == 0, log[-4000:]
        return log

    return run
