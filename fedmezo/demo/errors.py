"""The demo's one exception tree and its exit codes (one line of help each).

DemoError            something the demo started or needed failed: the message says what and where
└── Interrupted      SIGINT / SIGTERM: every child process was stopped
"""

from __future__ import annotations

import signal

__all__ = ["EXIT_FAILED", "EXIT_OK", "DemoError", "Interrupted"]

EXIT_OK = 0  # the run finished, the model was evaluated and exported
EXIT_FAILED = 1  # a step failed; the message names the process and its log file


class DemoError(Exception):
    """A failure the user can act on; the message names the process and its log when there is one."""


class Interrupted(DemoError):
    """A stop signal arrived; the exit code is the shell's 128 + signal number (130 for Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum
