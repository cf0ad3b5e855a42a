"""`fedmezo client`: run a client daemon. Only wiring lives here; the logic is in `fedmezo.client`.

The daemon runs in a worker thread so the main thread can take SIGINT/SIGTERM at any moment: it sets
the stop flag (training abandons its step and restores θ_r) and closes the channel (a blocked
long-poll or delta stream returns at once), then waits for the worker to finish cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONFIG",
    "EXIT_INCOMPATIBLE",
    "EXIT_OK",
    "EXIT_SERVER_REFUSED",
    "EXIT_SYNC",
    "register",
]

logger = logging.getLogger("fedmezo.client")

EXIT_OK = 0  # the run finished, or the client was stopped cleanly (SIGINT/SIGTERM)
EXIT_SERVER_REFUSED = 69  # the server refused a request for a reason the client cannot fix itself
EXIT_SYNC = 70  # the replica could not be made to match the server's
EXIT_INCOMPATIBLE = 76  # model manifest or rng spec differs from the server's (EX_PROTOCOL)
EXIT_AUTH = 77  # missing/invalid token or identity (EX_NOPERM)
EXIT_CONFIG = 78  # invalid flags, config file, data or model (EX_CONFIG)
STOP_GRACE_S = 30.0  # after a stop request, how long the worker may take to finish its step


def register(subparsers: Any) -> None:
    from fedmezo import settings
    from fedmezo.client.config import ClientConfig

    parser = subparsers.add_parser(
        "client",
        help="run a client daemon: sync, train locally with MeZO, upload seeds' scalars",
        description="Join a fedmezo server, train each assigned round with MeZO on local data, and keep "
        "a replica bit-identical to the server's. Flags win over FEDMEZO_* variables, which win over "
        "--config.",
    )
    settings.add_config_argument(parser, "a [client] table or top level")
    settings.add_arguments(parser, ClientConfig)
    parser.set_defaults(func=run)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def run(args: argparse.Namespace) -> int:
    from fedmezo.client.config import load_config
    from fedmezo.client.errors import AuthFailed, Incompatible, RpcFailed, SyncFailed
    from fedmezo.fl.errors import ConfigError

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose")}
    try:
        config = load_config(flags)  # a `config` flag names the TOML file
        token = config.resolved_token()
        channel = _channel_settings(config, token)
    except (ConfigError, OSError) as exc:
        logger.error("configuration error: %s", exc)
        return EXIT_CONFIG
    logger.info("effective config: %s", json.dumps(config.redacted(), sort_keys=True))
    try:
        return _serve(config, channel)
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except AuthFailed as exc:
        logger.error("the server refused our credentials: %s", exc)
        return EXIT_AUTH
    except Incompatible as exc:
        logger.error("this client cannot join this run: %s", exc)
        return EXIT_INCOMPATIBLE
    except SyncFailed as exc:
        logger.error("could not sync with the server: %s", exc)
        return EXIT_SYNC
    except RpcFailed as exc:
        logger.error("the server refused a request: %s", exc)
        return EXIT_SERVER_REFUSED


def _channel_settings(config: Any, token: str | None) -> Any:
    from fedmezo.client.connection import ChannelSettings

    return ChannelSettings(
        target=config.server,
        client_id=config.client_id,
        token=token,
        insecure=config.insecure,
        tls_ca=_read(config.tls_ca),
        tls_cert=_read(config.tls_cert),
        tls_key=_read(config.tls_key),
        rpc_deadline_s=config.rpc_deadline_s,
    )


def _set_numba_threads(threads: int) -> None:
    """The CPU kernel's threads follow --threads too (several clients may share one machine)."""
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(threads, int(getattr(numba.config, "NUMBA_NUM_THREADS", threads))))


def _serve(config: Any, channel: Any) -> int:
    import torch

    from fedmezo.client.connection import GrpcServerLink
    from fedmezo.client.daemon import Daemon
    from fedmezo.client.retry import RetryPolicy
    from fedmezo.client.workload import Workload, build_workload, resolve_device
    from fedmezo.fl.records import RunSettings

    if config.threads > 0:
        torch.set_num_threads(config.threads)
        _set_numba_threads(config.threads)
    resolve_device(config.device)  # fail on a missing GPU before connecting
    link = GrpcServerLink(channel)
    stop = threading.Event()

    def factory(settings: RunSettings) -> Workload:
        return build_workload(
            settings,
            data=config.data,
            device=config.device,
            compute_dtype=config.compute_dtype,
            compile=config.compile,
            model_name=config.model,
            max_length=config.max_length,
        )

    daemon = Daemon(
        link=link,
        client_id=config.client_id,
        workload_factory=factory,
        retry=RetryPolicy(sleep=stop.wait),
        stop=stop,
        long_poll_s=config.long_poll_s,
        progress_bar=config.progress,
        state_dir=config.resolved_state_dir(),
    )
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append(daemon.run())
        except BaseException as exc:  # handed to the main thread, which maps it to an exit code
            outcome.append(exc)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s; finishing cleanly", signal.Signals(signum).name)
        daemon.request_stop()  # training abandons its step; the heartbeat stops at once
        link.close()  # a blocked long-poll or stream returns now

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker = threading.Thread(target=work, name="fedmezo-client", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(timeout=0.5)
            if stop.is_set():
                worker.join(timeout=STOP_GRACE_S)
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        link.close()
    if not outcome:
        logger.warning("the worker did not finish within %.0f s; exiting anyway", STOP_GRACE_S)
        return EXIT_OK
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    logger.info(
        "client %s: %s after %d trained rounds", config.client_id, result.value, daemon.rounds_trained
    )
    return EXIT_OK
