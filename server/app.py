"""Build and run the grpc.aio server: services, health, limits, keepalive, TLS, graceful shutdown.

Transport limits: every call gets a status in bounded time (its request message within
REQUEST_TIMEOUT_S, a unary answer within max_wait_s + UNARY_LIMIT_SLACK_S), and every connection ends
in bounded time (idle, age + grace), holds at most max_streams_per_connection calls and cannot flood
pings; requests failing authentication are throttled per peer address (servicer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from fedmezo.fl.errors import StoreError
from fedmezo.fl.evaluation import Evaluator
from fedmezo.fl.replica import Replica
from fedmezo.fl.vocabulary import MAX_MESSAGE_BYTES
from fedmezo.server import grpc_logs
from fedmezo.server.auth import TOKENS_CHECK_S, Authenticator, server_credentials
from fedmezo.server.call_meter import CallMeter
from fedmezo.server.collector import serving_collector, work_done
from fedmezo.server.config import ServerConfig
from fedmezo.server.coordinator import Coordinator
from fedmezo.server.interceptors import REQUEST_TIMEOUT_S, RequestInterceptor
from fedmezo.server.limits import RateLimiter, StreamSlots
from fedmezo.server.model_state import CHECKPOINTS_DIR
from fedmezo.server.presence import PresenceRecord
from fedmezo.server.servicer import FederationServicer, StatusServicer, run_config_pb
from fedmezo.server.sqlite_store import SqliteStore
from fedmezo.server.store import STATUS_CONFIG_KEY, STATUS_STARTED_KEY, Store
from fedmezo.v1 import federation_pb2, federation_pb2_grpc, status_pb2, status_pb2_grpc

__all__ = ["GRACE_S", "MAX_RECEIVE_MESSAGE_BYTES", "ServerApp", "build_app", "serve"]

logger = logging.getLogger("fedmezo.server.app")

# The proto's message limit (ProtocolLimits), both ways: an update is < 1 KiB, so a request near it is
# abuse -> RESOURCE_EXHAUSTED; checkpoint chunks are 1 MiB.
MAX_RECEIVE_MESSAGE_BYTES = MAX_MESSAGE_BYTES
GRACE_S = 5.0  # in-flight RPCs get this long to finish on SIGTERM
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),  # ping idle connections: notice dead edge clients
    ("grpc.keepalive_timeout_ms", 10_000),
    # Client pings: allowed without calls, at most one per 10 s while no data flows; the third ping
    # too early ends the connection (GOAWAY too_many_pings) instead of being answered forever.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
)
# Every connection ends in bounded time. Idle (no call open) for 5 minutes: closed (a client heartbeats
# every few seconds). Older than 2 hours (±10% jitter): GOAWAY, so the client opens a new one for its next
# call, and the calls still open get 10 minutes (a following delta stream is reopened every 5; a client
# retries a cut call); a checkpoint download (the client allows 30 minutes) always fits a new connection.
CONNECTION_IDLE_MS = 5 * 60_000
CONNECTION_AGE_MS = 2 * 3_600_000
CONNECTION_AGE_GRACE_MS = 10 * 60_000
# Every unary call is answered within max_wait_s (the longest long-poll) plus this, whatever deadline its
# client set; its request message must arrive within REQUEST_TIMEOUT_S (server.interceptors).
UNARY_LIMIT_SLACK_S = 60.0
PENDING_RPCS_PER_CLIENT = 4  # calls one client can have waiting for the event loop: a burst, not abuse
STATE_DB = "state.sqlite"
SERVICE_NAMES = (
    federation_pb2.DESCRIPTOR.services_by_name["FederationService"].full_name,
    status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
)


def transport_options(config: ServerConfig) -> tuple[tuple[str, int], ...]:
    """The per-connection limits: concurrent calls, idle and age (then grace), keepalive enforcement."""
    return (
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", CONNECTION_IDLE_MS),
        ("grpc.max_connection_age_ms", CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
        *KEEPALIVE_OPTIONS,
    )


def pending_rpc_options(max_clients: int) -> tuple[tuple[str, int], ...]:
    """Room for every client's calls to arrive at once. gRPC cancels (CANCELLED) calls that arrive
    while 1,000 (soft limit, random early drop) to 3,000 (hard limit) are already waiting for the
    Python event loop: every client syncing after a round close at 3,000 clients exceeds that."""
    limit = max(1000, PENDING_RPCS_PER_CLIENT * max_clients)
    return (
        ("grpc.server.max_pending_requests", limit),
        ("grpc.server.max_pending_requests_hard_limit", limit),
    )


@dataclass
class ServerApp:
    server: grpc.aio.Server
    coordinator: Coordinator
    health: health_aio.HealthServicer
    port: int
    auth: Authenticator | None = None
    calls: CallMeter = field(default_factory=CallMeter)  # server-side latency per method
    _ticker: asyncio.Task[None] | None = None
    _token_watch: asyncio.Task[None] | None = None
    _publisher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        loop = asyncio.get_running_loop()
        self._ticker = loop.create_task(self.coordinator.run())
        if self.auth is not None and self.auth.watches_file:
            self._token_watch = loop.create_task(self._watch_tokens(self.auth))
        if self.coordinator.config.status_publish_s > 0:
            self._publisher = loop.create_task(self._publish_status(self.coordinator.config.status_publish_s))
        logger.info("serving on port %d", self.port)

    async def _publish_status(self, every_s: float) -> None:
        """Every `every_s`, who is online and the byte counts, for `fedmezo status-server` (a read
        replica). Best effort: a failed publication is logged and retried (its presence rows again);
        a store that cannot take writes stops the server at its next essential write, with that
        write's error."""
        failing = False
        changes: list[PresenceRecord] = []
        while True:
            await asyncio.sleep(every_s)
            changes += self.coordinator.presence.take_changes()  # on the loop, which changes them
            try:  # the writes (one with an fsync) off the loop
                await asyncio.to_thread(self.coordinator.publish_status, changes)
            except StoreError as exc:
                if not failing:
                    logger.warning("cannot publish status for read replicas (will retry): %s", exc)
                failing = True
                continue
            failing, changes = False, []

    async def _watch_tokens(self, auth: Authenticator) -> None:
        """Notice a changed tokens file even when no call arrives: its reload wakes the waiting calls,
        and those whose token was revoked end (auth.on_reload, wired in build_app)."""
        while True:
            await asyncio.sleep(TOKENS_CHECK_S)
            auth.refresh()

    async def stop(self, grace: float = GRACE_S) -> None:
        """Stop taking work, let in-flight RPCs finish, flush accounting, close the store."""
        await self.health.enter_graceful_shutdown()
        for task in (self._token_watch, self._publisher, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.server.stop(grace)
        await self.coordinator.idle()
        if self.coordinator.config.status_publish_s > 0:
            self.coordinator.publish_status()  # the byte counts, and for a replica how presence ended
        else:
            self.coordinator.traffic.flush()
        self.coordinator.store.close()
        logger.info("server stopped")


def build_app(
    config: ServerConfig,
    *,
    store: Store | None = None,
    replica: Replica | None = None,
    clock: Callable[[], float] = time.time,
) -> ServerApp:
    """Everything wired but not started; `store`/`replica`/`clock` are seams for tests."""
    grpc_logs.install()  # a client's malformed header or dropped stream is no traceback (and no token)
    evaluator = Evaluator.from_config(config)  # first: a bad eval file fails before anything is loaded
    state_dir = config.state_path
    store = store or SqliteStore(state_dir / STATE_DB)
    if replica is None:
        replica = Replica.for_run(config)
    coordinator = Coordinator(
        config, store, replica, clock=clock, checkpoint_dir=state_dir / CHECKPOINTS_DIR, evaluator=evaluator
    )
    coordinator.start()
    # What a status replica serves as GetRunConfig, and the start time: it has no model to build them
    coordinator.status_meta = {
        STATUS_CONFIG_KEY: run_config_pb(coordinator).SerializeToString().hex(),
        STATUS_STARTED_KEY: repr(coordinator.started_at),
    }  # written with the first publication (none when publishing is off)
    if config.tokens:
        auth = Authenticator.from_file(config.tokens, readers=config.status_reader_ids)
    else:
        logger.warning("no tokens file: clients are identified by the client_id they send (development only)")
        auth = Authenticator(None)
    auth.on_reload(coordinator.signals.wake_all)  # revoked tokens end their long-polls and streams now
    # One budget per identity, shared by both services: a client cannot dodge it by switching service.
    rate = RateLimiter(config.rate_limit_rps, config.rate_limit_burst)
    slots = StreamSlots(config.max_streams_per_client)
    unauthenticated = RateLimiter(config.unauthenticated_rps, config.unauthenticated_burst)  # per peer
    calls = CallMeter()

    def finished(method: str, seconds: float) -> None:
        work_done()
        calls.record(method, seconds)

    server = grpc.aio.server(
        interceptors=[
            RequestInterceptor(REQUEST_TIMEOUT_S, config.max_wait_s + UNARY_LIMIT_SLACK_S, finished)
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *transport_options(config),
            *pending_rpc_options(config.max_clients),
        ],
    )
    federation_pb2_grpc.add_FederationServiceServicer_to_server(
        FederationServicer(coordinator, auth, rate, slots, unauthenticated), server
    )
    status_pb2_grpc.add_StatusServiceServicer_to_server(
        StatusServicer(coordinator, auth, rate, slots, unauthenticated), server
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return ServerApp(server, coordinator, health, bind(server, config), auth, calls)


def bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Listen on config.host:port, plaintext with --insecure, else TLS (mutual with a client CA);
    returns the port (the one chosen, for port 0)."""
    address = f"{config.host}:{config.port}"
    if config.insecure:
        return server.add_insecure_port(address)
    return server.add_secure_port(
        address, server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    )


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code.

    Raises the StoreError that stopped it when the store failed while serving (see Coordinator.fail):
    the caller exits non-zero with that one line."""
    app = build_app(config)
    with serving_collector() as collector:  # the model and imports frozen, few long pauses
        try:
            return await _serve_app(app)
        finally:
            logger.info("%s", collector.summary())
            logger.info("%s", app.calls.summary())


async def _serve_app(app: ServerApp) -> int:
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if app.auth is not None:  # SIGHUP: re-read the tokens file now (revocation without a restart)
        loop.add_signal_handler(signal.SIGHUP, app.auth.reload)
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(app.coordinator.failed.wait())}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    failure = app.coordinator.failure
    if failure is not None:
        with contextlib.suppress(StoreError):  # flushing accounting may fail the same way
            await app.stop()
        raise failure
    logger.info("signal received: shutting down (grace %.0f s)", GRACE_S)
    await app.stop()
    return 0
