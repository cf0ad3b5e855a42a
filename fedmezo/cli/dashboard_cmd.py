"""`fedmezo dashboard`: serve the web dashboard (FastAPI + uvicorn) over a server's StatusService.

Connection options are those of `fedmezo status` (TLS by default, --insecure for plaintext, bearer
token); the channel is built by the same code. The server may be down at start: the page shows a banner
and recovers when it comes back.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from fedmezo.cli.status_cmd import add_connection_arguments

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "GRACEFUL_SHUTDOWN_S", "register", "run"]

logger = logging.getLogger("fedmezo.dashboard")

DEFAULT_HOST = "127.0.0.1"  # loopback: the dashboard has no auth of its own; bind 0.0.0.0 deliberately
DEFAULT_PORT = 8080
GRACEFUL_SHUTDOWN_S = 3  # in-flight requests get this long on Ctrl-C (event streams end within ~1 s)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard for a running server",
        description="Web dashboard (charts, client table, JSON API, /metrics) over a server's StatusService.",
    )
    parser.add_argument("--server", required=True, help="fedmezo server address HOST:PORT")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    add_connection_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from fedmezo.cli.status_cmd import channel_from_args, token_from_args  # shared TLS/token options
    from fedmezo.dashboard.app import create_app
    from fedmezo.dashboard.source import GrpcStatusSource

    if not args.insecure and not args.tls_ca:
        logger.info("no --tls-ca: using the system trust store (pass --insecure for plaintext servers)")
    source = GrpcStatusSource(channel_from_args(args), args.server, token=token_from_args(args))
    try:
        app = create_app(source)
        shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
        logger.info("dashboard at http://%s:%d/ reading %s", shown, args.port, args.server)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        stopping = app.state.stopping

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                stopping.set()  # end open event streams, or shutdown waits for them
                super().handle_exit(sig, frame)

        Server(config).run()
    finally:
        source.close()
    return 0
