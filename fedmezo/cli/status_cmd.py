"""`fedmezo status`: read a running server's StatusService and print it (one JSON object with --json).

Talks only to the status API (same TLS / --insecure / token options as the client), so it works
from any machine that can reach the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXIT_UNAVAILABLE", "RPC_DEADLINE_S", "register", "status_json"]

logger = logging.getLogger("fedmezo.status")

RPC_DEADLINE_S = 10.0
EXIT_UNAVAILABLE = 69  # the server could not be reached or refused the request
EXIT_USAGE = 2  # neither TLS nor --insecure was chosen


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="show a running server's progress", description="Query a server's StatusService."
    )
    parser.add_argument("--server", required=True, help="server address HOST:PORT")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="counts instead of per-client rows: rounds without their clients, no client list "
        "(a few KiB and one page per 1,000 rounds, whatever the number of clients)",
    )
    add_connection_arguments(parser)
    parser.set_defaults(func=run)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The status service's token and TLS options, shared by `status` and `dashboard`."""
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", help="bearer token for the status service (or FEDMEZO_TOKEN)")
    auth.add_argument("--token-file", dest="token_file", help="file holding the bearer token")
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    parser.add_argument("--tls-ca", dest="tls_ca", help="PEM CA bundle that signed the server certificate")
    parser.add_argument("--tls-cert", dest="tls_cert", help="PEM client certificate (mTLS)")
    parser.add_argument("--tls-key", dest="tls_key", help="PEM client key (mTLS)")


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def status_json(
    status: Any, config: Any, rounds: Sequence[Any], clients: Sequence[Any] | None
) -> dict[str, Any]:
    """The JSON document of `fedmezo status --json` from StatusService's replies (`rounds`: every
    RoundInfo, all pages of ListRounds). `clients` None: the --summary document, which has no client
    list and no per-client rows in its rounds (they were not read)."""
    from google.protobuf.json_format import MessageToDict

    from fedmezo.v1 import common_pb2

    doc = {
        "run_state": common_pb2.RunState.Name(status.run_state).removeprefix("RUN_STATE_").lower(),
        "rounds_completed": status.rounds_completed,
        "current_round": status.current_round,
        "total_rounds": status.total_rounds,
        "fingerprint": status.fingerprint.hex(),
        "clients_online": status.clients_online,
        "clients_total": status.clients_total,
        "bytes_up": status.bytes_up,
        "bytes_down": status.bytes_down,
        "config": MessageToDict(config, preserving_proto_field_name=True),
        "clients": [
            {
                "id": c.client_id,
                "online": c.online,
                "fingerprint": c.fingerprint.hex(),
                "fingerprint_version": c.fingerprint_version,
                "in_sync": c.in_sync,
                "model_version": c.model_version,
                "activity": c.activity,
                "rounds_participated": c.rounds_participated,
                "last_loss": _nan_to_none(c.last_loss),
                "device": c.device,
                "peak_memory_bytes": c.peak_memory_bytes,
                "inference_peak_memory_bytes": c.inference_peak_memory_bytes,
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "last_heartbeat_unix_ms": c.last_heartbeat_unix_ms,
            }
            for c in clients or ()
        ],
        "rounds": [
            {
                "round": r.round_id,
                "state": status_round_state(r.state),
                "mean_loss": _nan_to_none(r.mean_loss),
                "bytes_up": r.bytes_up,
                "bytes_down": r.bytes_down,
                "participants": [c.client_id for c in r.clients if c.accepted],
                "num_selected": r.num_selected,
                "num_submitted": r.num_submitted,
                "duration_s": r.duration_s,
                "num_seeds": r.num_seeds,
                "fingerprint": r.fingerprint.hex(),
                "deadline_at_unix_ms": r.deadline_at_unix_ms,
                # server-side eval (eval_loss, exact_match in [0, 1]); round 0 = the initial model
                "eval_metrics": {k: _nan_to_none(v) for k, v in sorted(r.eval_metrics.items())},
                "clients": [
                    {
                        "id": c.client_id,
                        "accepted": c.accepted,
                        "mean_loss": _nan_to_none(c.mean_loss),
                        "lr": c.lr,
                        "weight": c.weight,
                        "bytes_up": c.bytes_up,
                        "bytes_down": c.bytes_down,
                    }
                    for c in r.clients
                ],
            }
            for r in rounds
        ],
    }
    if clients is None:
        del doc["clients"]
        for r in doc["rounds"]:
            del r["participants"], r["clients"]
    return doc


def status_round_state(state: int) -> str:
    from fedmezo.v1 import status_pb2

    return status_pb2.RoundState.Name(state).removeprefix("ROUND_STATE_").lower()  # type: ignore[arg-type]


def channel_from_args(args: argparse.Namespace) -> Any:
    """A gRPC channel from the shared --insecure / --tls-* options (status, dashboard)."""
    import grpc

    if args.insecure:
        return grpc.insecure_channel(args.server)
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    return grpc.secure_channel(args.server, creds)


def token_from_args(args: argparse.Namespace) -> str | None:
    """--token, else --token-file's contents, else $FEDMEZO_TOKEN."""
    token = args.token or (Path(args.token_file).read_text().strip() if args.token_file else None)
    return token or os.environ.get("FEDMEZO_TOKEN") or None


def run(args: argparse.Namespace) -> int:
    import grpc

    from fedmezo.status_pages import list_all_clients, list_all_rounds
    from fedmezo.v1 import status_pb2, status_pb2_grpc

    if not args.insecure and not args.tls_ca:
        logger.info("no --tls-ca: using the system trust store (pass --insecure for plaintext servers)")
    token = token_from_args(args)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with channel_from_args(args) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        try:
            kw: dict[str, Any] = {"timeout": RPC_DEADLINE_S, "metadata": metadata}
            status = stub.GetStatus(status_pb2.GetStatusRequest(), **kw)
            config = stub.GetRunConfig(status_pb2.GetRunConfigRequest(), **kw).config
            rounds = list_all_rounds(lambda request: stub.ListRounds(request, **kw), summary=args.summary)
            clients = (
                None if args.summary else list_all_clients(lambda request: stub.ListClients(request, **kw))
            )
        except grpc.RpcError as exc:
            print(f"fedmezo status: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return EXIT_UNAVAILABLE
    doc = status_json(status, config, rounds, clients)
    if args.json:
        print(json.dumps(doc, sort_keys=True))
        return 0
    print(
        f"{doc['run_state']}: {doc['rounds_completed']}/{doc['total_rounds']} rounds, "
        f"fingerprint {doc['fingerprint'][:16]}, {doc['clients_online']} of {doc['clients_total']} "
        "clients online"
    )
    for r in doc["rounds"]:
        loss = "-" if r["mean_loss"] is None else f"{r['mean_loss']:.4f}"
        evaluated = r["eval_metrics"]
        ev = ""
        if evaluated.get("eval_loss") is not None and evaluated.get("exact_match") is not None:
            ev = f"  eval loss {evaluated['eval_loss']:.4f} exact match {evaluated['exact_match']:.1%}"
        print(
            f"  round {r['round']:>4} {r['state']:<8} loss {loss:>8}  "
            f"{r['num_submitted']}/{r['num_selected']} submitted  "
            f"up {r['bytes_up']} B  down {r['bytes_down']} B{ev}"
        )
    for c in doc.get("clients", ()):
        sync = "in sync" if c["in_sync"] else "NOT in sync"
        print(
            f"  client {c['id']:<16} {'online' if c['online'] else 'offline':<8} "
            f"{sync} @ v{c['fingerprint_version']}"
        )
    return 0
