"""Ctrl-C (SIGINT) or SIGTERM to `fedmezo demo` stops every process it started: no orphans.

The demo runs a long tiny-random schedule; once its children are up (and, for SIGINT, training), the
test records every process in their process groups, signals the demo, and checks that all are gone.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

FEDMEZO = [sys.executable, "-m", "fedmezo.cli.main"]
UP_TIMEOUT_S = 150.0
STOP_TIMEOUT_S = 60.0  # the demo's grace (20 s) plus SIGKILL and reaping, with margin


def _stat(pid: str) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2]), fields[0]


def _processes() -> dict[int, tuple[int, int, str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(entry)) is not None:
            out[int(entry)] = info
    return out


def _live_in_groups(groups: set[int]) -> list[int]:
    return [pid for pid, (_, pgid, state) in _processes().items() if pgid in groups and state != "Z"]


def _reader(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


@pytest.mark.parametrize(
    ("sig", "wait_for", "exit_code"),
    [
        (signal.SIGINT, "clients joined", 130),  # Ctrl-C in the middle of a round
        (signal.SIGTERM, "dashboard:", 143),  # as soon as everything is up, before training
    ],
)
def test_signal_stops_every_process_the_demo_started(
    tmp_path: Path, sig: signal.Signals, wait_for: str, exit_code: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMEZO_") or k == "FEDMEZO_CACHE_DIR"}
    demo = subprocess.Popen(
        [
            *FEDMEZO,
            "demo",
            "--model=tiny-random",
            f"--workdir={tmp_path / 'demo-run'}",
            "--rounds=500",
            "--eval-examples=8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(demo.stdout, lines), daemon=True).start()
    seen: list[str] = []
    groups: set[int] = set()
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not any(wait_for in line for line in seen):
            assert demo.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1.0))
        children = [pid for pid, (ppid, _, _) in _processes().items() if ppid == demo.pid]
        groups = {_stat(str(pid))[1] for pid in children if _stat(str(pid)) is not None}  # type: ignore[index]
        assert len(groups) >= 5, f"expected server, 3 clients and dashboard, got {children}"
        assert os.getpgid(demo.pid) not in groups  # children live in their own groups

        demo.send_signal(sig)
        code = demo.wait(timeout=STOP_TIMEOUT_S)
        assert code == exit_code
        deadline = time.monotonic() + 10
        while left := _live_in_groups(groups):
            assert time.monotonic() < deadline, f"left running: {left}"
            time.sleep(0.1)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pgid in groups:  # never leave anything behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
