"""The demo's child processes: each in its own process group, logged to a file, stopped as a whole.

Every child runs in a new session, so a terminal's Ctrl-C reaches only the demo, which then stops the
children in order (SIGTERM to each group, SIGKILL to any group still alive after the grace period).
A process group also takes whatever a child started itself, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmezo.demo.errors import DemoError

__all__ = ["FEDMEZO_COMMAND", "STOP_GRACE_S", "Child", "Supervisor", "free_port", "tail"]

logger = logging.getLogger("fedmezo.demo")

FEDMEZO_COMMAND = (sys.executable, "-m", "fedmezo.cli.main")  # this interpreter: no PATH lookup
STOP_GRACE_S = 20.0  # SIGTERM → SIGKILL; a client finishes its current MeZO step (a few s on a CPU)
TAIL_LINES = 15  # lines of a failed child's log shown in the error


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (the OS picks it); the tiny race before the child binds is accepted."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log file, for error messages ('' when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Child:
    """One started process: its name in messages, its log, and whether it may exit on its own."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    exits_when_done: bool  # clients exit 0 when the run finishes; server and dashboard never should

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Starts `fedmezo` subcommands and guarantees that `stop_all` leaves none of them running."""

    def __init__(
        self,
        log_dir: Path,
        env: Mapping[str, str],
        commands_file: Path | None = None,
        *,
        command: Sequence[str] = FEDMEZO_COMMAND,
    ) -> None:
        self.log_dir = log_dir
        self.env = dict(env)
        self.commands_file = commands_file
        self.command = tuple(command)  # a seam: tests start plain Python scripts instead
        self.children: list[Child] = []

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        *,
        exits_when_done: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start `fedmezo ARGS` in a new session with stdout and stderr appended to logs/NAME.log.

        `env` adds to (and overrides) the supervisor's environment for this child only.
        """
        log = self.log_dir / f"{name}.log"
        argv = [*self.command, *args]
        if self.commands_file is not None:
            with open(self.commands_file, "a") as out:
                out.write(f"# {name}\nfedmezo {shlex.join(args)}\n")
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                start_new_session=True,  # own process group: killpg reaches its descendants too
            )
        child = Child(name, process, log, exits_when_done)
        self.children.append(child)
        logger.debug("started %s (pid %d): %s", name, process.pid, shlex.join(argv))
        return child

    def check(self) -> None:
        """Raise DemoError when a child failed, or when one that must keep running has exited."""
        for child in self.children:
            code = child.process.poll()
            if code is None or (code == 0 and child.exits_when_done):
                continue
            raise DemoError(
                f"{child.name} exited with code {code} (log: {child.log})\n{tail(child.log)}",
            )

    def wait_exit(self, child: Child, timeout_s: float) -> int:
        """Wait for a child that exits by itself; a non-zero code or the timeout is a DemoError."""
        deadline = time.monotonic() + timeout_s
        while child.process.poll() is None:
            if time.monotonic() > deadline:
                raise DemoError(f"{child.name} did not exit within {timeout_s:.0f} s (log: {child.log})")
            self.check()
            time.sleep(0.2)
        code = int(child.process.returncode)
        if code != 0:
            raise DemoError(f"{child.name} exited with code {code} (log: {child.log})\n{tail(child.log)}")
        return code

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every child's process group, wait up to `grace_s`, then SIGKILL what is left."""
        for child in reversed(self.children):  # dashboard and clients before the server
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for child in self.children:
            if child.process.poll() is None:
                logger.warning("%s did not stop within %.0f s: killing it", child.name, grace_s)
            _signal_group(child, signal.SIGKILL)  # also reaps any grandchild left in the group
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5.0)


def _signal_group(child: Child, sig: signal.Signals) -> None:
    """Signal the child's whole process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)
