"""`fedmezo status-server`: the status service served from another process's state database, read-only.

Operators' dashboards and `fedmezo status` polls then never take the event loop, the GIL or the SQLite
lock of the server the clients talk to (issue #15: horizontal reads). Everything the status views read
is in the store already, except two things the server keeps in memory and publishes for this: who is
online and the byte counts (both every `--status-publish-s`, 2 s by default: `Coordinator.publish_status`).
So a replica is a few seconds behind on those two (status_publish_s + REFRESH_S); rounds,
updates, clients, fingerprints and events are read as the server committed them (SQLite WAL readers
see every committed transaction and never block the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from fedmezo.fl.errors import ConfigError, StoreError
from fedmezo.fl.records import RoundState, RunState
from fedmezo.server import grpc_logs
from fedmezo.server.app import (
    MAX_RECEIVE_MESSAGE_BYTES,
    STATE_DB,
    UNARY_LIMIT_SLACK_S,
    bind,
    transport_options,
)
from fedmezo.server.auth import TOKENS_CHECK_S, Authenticator
from fedmezo.server.config import ServerConfig
from fedmezo.server.interceptors import REQUEST_TIMEOUT_S, RequestInterceptor
from fedmezo.server.limits import RateLimiter, StreamSlots
from fedmezo.server.presence import Presence
from fedmezo.server.servicer import StatusServicer
from fedmezo.server.signals import Signals
from fedmezo.server.sqlite_store import SqliteStore
from fedmezo.server.store import STATUS_CONFIG_KEY, STATUS_STARTED_KEY, TRAFFIC_FLUSHES_KEY
from fedmezo.server.traffic import TrafficMeter
from fedmezo.v1 import common_pb2, status_pb2, status_pb2_grpc

__all__ = ["REFRESH_S", "NotPublished", "ReplicaRun", "StatusReplicaApp", "build_status_app", "serve_status"]

logger = logging.getLogger("fedmezo.server.status_replica")

REFRESH_S = 1.0  # how often presence, byte counts and the event cursor are re-read
FIRST_PUBLICATION_WAIT_S = 30.0  # a replica started with its server waits this long for its config
STATUS_SERVICE = status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name


class NotPublished(ConfigError):
    """The state database exists, but its server has not published what a replica needs (yet)."""


class ReplicaRun:
    """The status views' RunReader over a state database that another process writes."""

    def __init__(self, state_dir: str | Path, clock: Callable[[], float] = time.time) -> None:
        path = Path(state_dir) / STATE_DB
        if not path.exists():
            raise ConfigError(f"no state database at {path}: point --state-dir at a server's state dir")
        self.store = SqliteStore(path, read_only=True)
        stored_pb = self.store.get_meta(STATUS_CONFIG_KEY)
        stored_config = self.store.get_meta("config")
        if stored_pb is None or stored_config is None:
            raise NotPublished(
                f"{path} holds no published run config: its server has not published yet (every "
                "--status-publish-s, 2 s by default; 0 turns it off), or predates status replicas"
            )
        self.config_pb = common_pb2.RunConfig.FromString(bytes.fromhex(stored_pb))
        known = {f.name for f in dataclasses.fields(ServerConfig)}
        self.config = ServerConfig(**{k: v for k, v in json.loads(stored_config).items() if k in known})
        self.started_at = float(self.store.get_meta(STATUS_STARTED_KEY) or 0.0)
        self.clock = clock
        self.presence = Presence(clock, self.config.heartbeat_timeout_s)
        self.traffic = TrafficMeter(self.store)
        self._initial = bytes.fromhex(self.store.get_meta("initial_fingerprint") or "")
        self._fingerprints: dict[int, bytes] = {}
        self._traffic_at = self.store.get_meta(TRAFFIC_FLUSHES_KEY)
        self._cursor = self.store.last_event_cursor()
        self._signals = Signals()
        self.refresh()

    # --- RunReader ---
    @property
    def rounds_completed(self) -> int:
        return self.store.rounds_completed()

    def fingerprint_at(self, version: int) -> bytes | None:
        """θ's fingerprint after `version` rounds; a closed round's never changes, so it is kept (a
        ListClients page asks once per client)."""
        if version == 0:
            return self._initial or None
        known = self._fingerprints.get(version)
        if known is None:
            rec = self.store.get_round(version)
            if rec is None or rec.state == RoundState.OPEN:
                return None
            known = self._fingerprints[version] = rec.fingerprint
        return known

    def run_state(self) -> RunState:
        if self.rounds_completed >= self.config.rounds:
            return RunState.FINISHED
        return RunState.ROUND_OPEN if self.store.open_round_record() else RunState.WAITING_FOR_CLIENTS

    def changed(self) -> asyncio.Event:
        return self._signals.changed()

    def fail(self, exc: StoreError) -> None:
        """A read failed (the file went away, a damaged page): that call fails, the replica goes on."""
        logger.error("reading the state database failed: %s", exc)

    # --- following the writer ---
    def refresh(self) -> None:
        """Re-read presence, and the byte counts when the server flushed some; wake event streams on
        new events."""
        records, published_at = self.store.list_presence()
        # A publication older than the heartbeat timeout: the server may be gone, and a long-poll it
        # published as open proves nothing any more; heartbeats still count by their own age.
        fresh = self.clock() - published_at <= self.config.heartbeat_timeout_s
        self.presence.load(records, polls_hold=fresh)
        marker = self.store.get_meta(TRAFFIC_FLUSHES_KEY)
        if marker != self._traffic_at:
            self.traffic = TrafficMeter(self.store)
            self._traffic_at = marker
        cursor = self.store.last_event_cursor()
        if cursor != self._cursor:
            self._cursor = cursor
            self._signals.notify()

    async def follow(self) -> None:
        """Refresh every REFRESH_S until cancelled; a failed read is logged and retried."""
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await asyncio.to_thread(self.refresh)
            except StoreError as exc:
                self.fail(exc)


@dataclasses.dataclass
class StatusReplicaApp:
    server: grpc.aio.Server
    run: ReplicaRun
    health: health_aio.HealthServicer
    port: int
    auth: Authenticator
    _tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    async def start(self) -> None:
        await self.server.start()
        for name in ("", STATUS_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.run.follow()))
        if self.auth.watches_file:
            self._tasks.append(loop.create_task(self._watch_tokens()))
        logger.info("status replica of %s serving on port %d", self.run.store.path, self.port)

    async def _watch_tokens(self) -> None:
        while True:
            await asyncio.sleep(TOKENS_CHECK_S)
            self.auth.refresh()

    async def stop(self, grace: float = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop(grace)
        self.run.store.close()


def build_status_app(config: ServerConfig, clock: Callable[[], float] = time.time) -> StatusReplicaApp:
    """The status service (and health) over `config.state_dir`, on config.host:port with its TLS,
    tokens and reader list; the run's own settings come from the state database."""
    grpc_logs.install()
    run = ReplicaRun(config.state_path, clock)
    if config.tokens:
        auth = Authenticator.from_file(config.tokens, readers=config.status_reader_ids)
    else:
        logger.warning("no tokens file: every caller may read every status view (development only)")
        auth = Authenticator(None)
    server = grpc.aio.server(
        interceptors=[RequestInterceptor(REQUEST_TIMEOUT_S, UNARY_LIMIT_SLACK_S)],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            *transport_options(config),
        ],
    )
    status_pb2_grpc.add_StatusServiceServicer_to_server(
        StatusServicer(
            run,
            auth,
            RateLimiter(config.rate_limit_rps, config.rate_limit_burst),
            StreamSlots(config.max_streams_per_client),
            RateLimiter(config.unauthenticated_rps, config.unauthenticated_burst),
            config_pb=run.config_pb,
        ),
        server,
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return StatusReplicaApp(server, run, health, bind(server, config), auth)


async def serve_status(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code."""
    give_up = time.monotonic() + FIRST_PUBLICATION_WAIT_S
    while True:
        try:
            app = build_status_app(config)
            break
        except NotPublished as exc:
            if time.monotonic() > give_up:
                raise
            logger.info("waiting for the server's first publication: %s", exc)
            await asyncio.sleep(1.0)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.auth.reload)
    await stop.wait()
    await app.stop()
    return 0
