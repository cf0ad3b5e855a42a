"""`fedmezo demo`: a server, clients and the dashboard on localhost, trained, evaluated and exported."""

from fedmezo.demo.errors import EXIT_FAILED, EXIT_OK, DemoError, Interrupted
from fedmezo.demo.report import Summary
from fedmezo.demo.run import PRESETS, DemoConfig, Schedule, run_demo, schedule_for

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "PRESETS",
    "DemoConfig",
    "DemoError",
    "Interrupted",
    "Schedule",
    "Summary",
    "run_demo",
    "schedule_for",
]
