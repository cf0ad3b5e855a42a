"""Real processes for tests: free loopback ports, `fedmezo` subprocesses with a clean environment,
waiting with a deadline, and stopping whatever was started.

Every subprocess runs single-threaded (OMP/NUMBA/tokenizers) so several of them share a 2-core
machine, with unbuffered output so a log is complete up to the moment of a SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "FEDMEZO",
    "POLL_S",
    "START_TIMEOUT_S",
    "free_port",
    "health_serving",
    "spawn",
    "stop_processes",
    "subprocess_env",
    "tail",
    "wait_for",
    "wait_until_serving",
]

FEDMEZO = [sys.executable, "-m", "fedmezo.cli.main"]
START_TIMEOUT_S = 60.0  # a cold process imports torch + transformers and builds the model
POLL_S = 0.05
STOP_TIMEOUT_S = 10.0
ONE_THREAD_UNBUFFERED = {
    "OMP_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "0",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment minus FEDMEZO_* settings, one thread per library, unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMEZO_")}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "NUMBA_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "0",
        }
    )
    env.update(extra or {})
    return env


def spawn(
    args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start `fedmezo <args>` with stdout and stderr appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*FEDMEZO, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else subprocess_env(),
            **popen,
        )


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log (for failure messages); empty when it does not exist."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, context: Callable[[], str] = lambda: ""
) -> None:
    """Poll `condition` until it holds; fail the test with `context()` (e.g. logs) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{context()}")
        time.sleep(POLL_S)


def health_serving(port: int, timeout_s: float = 1.0) -> bool:
    """The plaintext gRPC health check on 127.0.0.1:port says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def wait_until_serving(
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float = START_TIMEOUT_S
) -> None:
    """Wait for a plaintext server's health check; fail at once if the process exits instead."""

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before serving\n{tail(log, 40)}")
        return health_serving(port)

    try:
        wait_for(up, timeout_s, f"the server on port {port}", lambda: tail(log, 40))
    except BaseException:
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)
        raise


def stop_processes(
    procs: Iterable[subprocess.Popen[bytes] | None], timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, then SIGKILL whoever is left."""
    alive = [p for p in procs if p is not None and p.poll() is None]
    for proc in alive:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    for proc in alive:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
