"""`fedmezo` entry point: registers each subcommand module and dispatches; no logic lives here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# Each module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
SUBCOMMAND_MODULES = (
    "fedmezo.cli.data_cmd",
    "fedmezo.cli.client_cmd",
    "fedmezo.cli.server_cmd",
    "fedmezo.cli.status_cmd",
    "fedmezo.cli.status_server_cmd",
    "fedmezo.cli.export_cmd",
    "fedmezo.cli.dashboard_cmd",
    "fedmezo.cli.demo_cmd",
    "fedmezo.cli.simulate_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmezo",
        description="Federated MeZO fine-tuning: only seeds and scalars travel.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
