"""`fedmezo server`: run the aggregation server (flags > FEDMEZO_* env > --config TOML)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable

__all__ = ["EXIT_CONFIG", "EXIT_STATE", "exit_code_of", "register"]

logger = logging.getLogger("fedmezo.server")

EXIT_CONFIG = 2  # invalid configuration (nothing was started)
EXIT_STATE = 3  # the state dir cannot be used: corrupt, read-only or full (at start or while serving)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from fedmezo.server.config import add_arguments

    parser = subparsers.add_parser(
        "server",
        help="run the aggregation server",
        description="Aggregation server: opens rounds, aggregates seed-scalar updates, keeps the model.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmezo.server.app import serve
    from fedmezo.server.config import load_config

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose")}
    return exit_code_of(lambda: asyncio.run(serve(load_config(flags))))


def exit_code_of(start: Callable[[], int]) -> int:
    """`start()`'s code, or EXIT_CONFIG / EXIT_STATE with the error as one log line."""
    from fedmezo.fl.errors import ConfigError, StoreError

    try:
        return start()
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_CONFIG
    except StoreError as exc:
        logger.error("state error: %s", exc)
        return EXIT_STATE
