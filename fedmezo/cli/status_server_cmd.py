"""`fedmezo status-server`: a read replica of a server's status service, from its state dir.

Dashboards and `fedmezo status` pointed at it read the same views as from the server, without taking
any of the server's time; it can run on any machine that sees the state dir's files (same host, or a
filesystem with working SQLite locks: not NFS).
"""

from __future__ import annotations

import argparse
import asyncio

from fedmezo.cli.server_cmd import exit_code_of

__all__ = ["DEFAULT_PORT", "register"]


DEFAULT_PORT = 50052


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status-server",
        help="serve a server's status read-only from its state dir (for dashboards at scale)",
        description="Read replica of the StatusService: reads the server's state.sqlite (WAL readers "
        "never block the writer), so operators' polling never competes with clients' RPCs. Presence "
        "and byte counts lag the server by about 3 s.",
    )
    parser.add_argument("--state-dir", required=True, help="the server's --state-dir")
    parser.add_argument("--host", default="[::]", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0 = any free port)")
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    parser.add_argument("--tls-cert", default="", help="PEM server certificate chain")
    parser.add_argument("--tls-key", default="", help="PEM server private key")
    parser.add_argument("--tls-client-ca", default="", help="PEM CA of client certificates (mTLS)")
    parser.add_argument("--tokens", default="", help="tokens file (the server's: readers and admins read)")
    parser.add_argument(
        "--status-readers", default="", help="identities allowed the per-client views, as on the server"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmezo.server.config import ServerConfig
    from fedmezo.server.status_replica import serve_status

    def start() -> int:
        config = ServerConfig(
            state_dir=args.state_dir,
            host=args.host,
            port=args.port,
            insecure=args.insecure,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            tokens=args.tokens,
            status_readers=args.status_readers,
        ).validate()
        return asyncio.run(serve_status(config))

    return exit_code_of(start)
