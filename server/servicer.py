"""Thin grpc.aio servicers: identify the caller, convert the request, call the coordinator, convert
the response, count the bytes. Our exceptions become status codes in `_refuse`, the one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fedmezo.fl import errors, vocabulary, wire
from fedmezo.fl.records import DeltaRecord, TaskStatus
from fedmezo.fl.vocabulary import REASON_METADATA_KEY
from fedmezo.server import convert
from fedmezo.server.auth import Authenticator
from fedmezo.server.config import MAX_STREAMS_PER_CLIENT
from fedmezo.server.coordinator import Coordinator
from fedmezo.server.limits import RateLimiter, StreamSlots, peer_host
from fedmezo.server.signals import wait_or_timeout, watch_call
from fedmezo.server.status_codes import grpc_code
from fedmezo.server.status_view import StatusSource, client_views, round_views, status_view
from fedmezo.v1 import common_pb2, federation_pb2, federation_pb2_grpc, status_pb2, status_pb2_grpc

__all__ = [
    "CHECKPOINT_CHUNK_BYTES",
    "REASON_METADATA_KEY",
    "FederationServicer",
    "StatusServicer",
    "run_config_pb",
]

logger = logging.getLogger("fedmezo.server.servicer")

CHECKPOINT_CHUNK_BYTES = 1 << 20  # 1 MiB: well under the 4 MiB message limit
EVENT_POLL_S = 1.0
DELTA_MESSAGES_KEPT = 4  # built round-delta messages kept for followers (the newest rounds)
EVENTS_PAGE = 1000  # also the most events one ListEvents answers: a reply stays far below 4 MiB
# One ListRounds page: rounds decoded per call (bounds its event-loop time) and the bytes they may
# take (a round lists every selected client, so a long run outgrows the 4 MiB message limit).
ROUNDS_PAGE = 256
CLIENTS_PAGE = 1000  # ~200 B per ClientInfo: a page stays far below the 4 MiB message limit
ROUNDS_PAGE_BYTES = 2 << 20

Resp = TypeVar("Resp")


async def _refuse(context: grpc.aio.ServicerContext, exc: errors.FedmezoError, coord: StatusSource) -> None:
    """The single mapping from our exceptions to gRPC status codes (aborts the RPC)."""
    if isinstance(exc, errors.Refusal):
        context.set_trailing_metadata(((REASON_METADATA_KEY, exc.reason),))
        await context.abort(grpc_code(exc), str(exc))
    if isinstance(exc, errors.StoreError):  # nothing was kept: the server stops, the client retries later
        coord.fail(exc)
        context.set_trailing_metadata(((REASON_METADATA_KEY, vocabulary.STORE_FAILED),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"server cannot store state: {exc}")
    logger.error("internal error: %s", exc, exc_info=exc)
    context.set_trailing_metadata(((REASON_METADATA_KEY, vocabulary.INTERNAL),))
    await context.abort(grpc.StatusCode.INTERNAL, f"server state error: {exc}")


def unary(fn: Callable[..., Awaitable[Resp]]) -> Callable[..., Awaitable[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await fn(self, request, context)
        except errors.FedmezoError as exc:
            await _refuse(context, exc, self._coord)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[Resp]]) -> Callable[..., AsyncIterator[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except errors.FedmezoError as exc:
            await _refuse(context, exc, self._coord)

    return wrapper


def run_config_pb(coord: Coordinator) -> common_pb2.RunConfig:
    """The run config both services send (built once: it never changes while the server runs)."""
    return wire.run_config_to_pb(
        coord.config,
        coord.run_id,
        coord.replica.manifest_sha256,
        heartbeat_interval_s=coord.config.heartbeat_interval_s,
        heartbeat_timeout_s=coord.config.heartbeat_timeout_s,
        trainable_params=coord.replica.trainable_params,
        model_weight_bytes=coord.replica.weight_bytes(),
    )


class _Servicer:
    """What both services hold: the authenticator, the per-client limits, the run config."""

    def __init__(
        self,
        auth: Authenticator,
        rate: RateLimiter | None,
        slots: StreamSlots | None,
        unauthenticated: RateLimiter | None,
        config_pb: common_pb2.RunConfig,
    ) -> None:
        self._auth = auth
        self._rate = rate if rate is not None else RateLimiter(0.0, 1)
        self._slots = slots if slots is not None else StreamSlots(MAX_STREAMS_PER_CLIENT)
        self._unauthenticated = unauthenticated if unauthenticated is not None else RateLimiter(0.0, 1)
        self._config_pb = config_pb

    def _authenticated(self, context: grpc.aio.ServicerContext, authenticate: Callable[[], str]) -> str:
        """`authenticate()`, with the caller's peer address charged for each failure: once its bucket
        is empty, a failure is RateLimited (RESOURCE_EXHAUSTED) instead. A valid token is never charged,
        so a client behind the same address as a token guesser is still served."""
        try:
            return authenticate()
        except errors.Unauthenticated:
            self._unauthenticated.admit(peer_host(context.peer() or ""))
            raise


class FederationServicer(_Servicer, federation_pb2_grpc.FederationServiceServicer):
    def __init__(
        self,
        coord: Coordinator,
        auth: Authenticator,
        rate: RateLimiter | None = None,
        slots: StreamSlots | None = None,
        unauthenticated: RateLimiter | None = None,
    ) -> None:
        super().__init__(auth, rate, slots, unauthenticated, run_config_pb(coord))
        self._coord = coord
        self._delta_messages: dict[int, federation_pb2.StreamRoundDeltasResponse] = {}

    def _delta_message(self, record: DeltaRecord) -> federation_pb2.StreamRoundDeltasResponse:
        """A round's delta message, built once and sent to every follower (a round's delta never
        changes; with N clients each message lists N participants, so building it per follower is
        O(N²) work at every round close)."""
        message = self._delta_messages.get(record.round_id)
        if message is None:
            message = wire.delta_to_pb(record, seed_scheme=self._coord.config.seed_scheme)
            if len(self._delta_messages) >= DELTA_MESSAGES_KEPT:
                del self._delta_messages[min(self._delta_messages)]
            self._delta_messages[record.round_id] = message
        return message

    def _who(self, context: grpc.aio.ServicerContext, claimed: str) -> str:
        """The caller's identity, charged one request of its rate budget."""
        metadata = context.invocation_metadata()
        client = self._authenticated(context, lambda: self._auth.identify(metadata, claimed))
        self._rate.admit(client)
        return client

    def _still_allowed(self, context: grpc.aio.ServicerContext, claimed: str) -> Callable[[], None]:
        """A check for a call that waits or streams: after each tokens reload (which wakes it) the
        caller's token is checked again, and a revoked one ends the call (Unauthenticated)."""
        generation = self._auth.generation

        def check() -> None:
            nonlocal generation
            if self._auth.generation != generation:
                self._auth.identify(context.invocation_metadata(), claimed)
                generation = self._auth.generation

        return check

    def _count(self, client: str, round_id: int, request: Any, response: Any) -> None:
        up = request.ByteSize() if request is not None else 0
        down = response.ByteSize() if response is not None else 0
        self._coord.traffic.record(client, round_id, up, down)

    def _open_round(self) -> int:
        rec = self._coord.store.open_round_record()
        return rec.round_id if rec else 0

    @unary
    async def Join(self, request: Any, context: Any) -> federation_pb2.JoinResponse:
        client = self._who(context, request.client_id)
        result = await self._coord.join(client, wire.join_info_from_pb(request))
        response = wire.join_result_to_pb(result, self._config_pb)
        self._count(client, 0, request, response)
        return response

    @unary
    async def Heartbeat(self, request: Any, context: Any) -> federation_pb2.HeartbeatResponse:
        client = self._who(context, request.client_id)
        done, state = self._coord.heartbeat(
            client, request.model_version, wire.activity_from_pb(request.activity)
        )
        response = federation_pb2.HeartbeatResponse(
            rounds_completed=done, run_state=wire.run_state_to_pb(state)
        )
        self._count(client, self._open_round(), request, response)
        return response

    @unary
    async def GetTask(self, request: Any, context: Any) -> federation_pb2.GetTaskResponse:
        client = self._who(context, request.client_id)
        still_allowed = self._still_allowed(context, request.client_id)
        watch_call(context.add_done_callback)  # a round change wakes polls a chunk at a time, by their end
        with self._slots.hold(client):
            result = await self._coord.get_task(
                client,
                request.known_version,
                request.wait_s,
                max_deltas=request.max_deltas,
                fingerprint=request.fingerprint,
                still_allowed=still_allowed,
            )
        response = wire.task_result_to_pb(result, [self._delta_message(d) for d in result.deltas])
        round_id = (
            result.task.round_id
            if result.status == TaskStatus.ASSIGNED and result.task
            else self._open_round()
        )
        self._count(client, round_id, request, response)
        return response

    @unary
    async def SubmitUpdate(self, request: Any, context: Any) -> federation_pb2.SubmitUpdateResponse:
        client = self._who(context, request.client_id)
        config = self._coord.config
        update = wire.update_from_pb(
            request, max_steps=config.local_steps, perturbations=config.perturbations
        )
        round_id = await self._coord.submit_update(client, update, base_fingerprint=request.base_fingerprint)
        response = federation_pb2.SubmitUpdateResponse(
            status=federation_pb2.UPDATE_STATUS_ACCEPTED, round_id=round_id
        )
        self._count(client, round_id, request, response)
        return response

    @unary
    async def ReportFingerprint(self, request: Any, context: Any) -> federation_pb2.ReportFingerprintResponse:
        client = self._who(context, request.client_id)
        in_sync = await self._coord.report_fingerprint(client, request.model_version, request.fingerprint)
        response = federation_pb2.ReportFingerprintResponse(
            in_sync=in_sync, action=wire.sync_action_to_pb(in_sync)
        )
        self._count(client, request.model_version, request, response)
        return response

    @streaming
    async def StreamRoundDeltas(
        self, request: Any, context: Any
    ) -> AsyncIterator[federation_pb2.StreamRoundDeltasResponse]:
        client = self._who(context, request.client_id)
        if request.from_round < 1:  # rounds are numbered from 1 (federation.proto)
            raise errors.InvalidRequest(f"from_round must be >= 1, got {request.from_round}")
        self._coord.check_joined(client)  # refused before the request is counted
        still_allowed = self._still_allowed(context, request.client_id)
        with self._slots.hold(client):
            # The request's bytes go to the first round it can get, never to a made-up round id.
            first = min(request.from_round, self._coord.rounds_completed + 1)
            self._count(client, first, request, None)
            deltas = self._coord.round_deltas(
                client, request.from_round, request.follow, still_allowed=still_allowed
            )
            async for record in deltas:
                self._auth.refresh()
                still_allowed()
                message = self._delta_message(record)
                self._count(client, record.round_id, None, message)
                yield message

    @streaming
    async def DownloadCheckpoint(
        self, request: Any, context: Any
    ) -> AsyncIterator[federation_pb2.DownloadCheckpointResponse]:
        client = self._who(context, request.client_id)
        round_id, path, sha256, size, fingerprint = self._coord.checkpoint_for(client)
        self._count(client, 0, request, None)
        still_allowed = self._still_allowed(context, request.client_id)
        offset = 0
        with self._slots.hold(client), open(path, "rb") as fh:
            while True:
                still_allowed()  # a revoked token gets no further chunk
                data = await asyncio.to_thread(fh.read, CHECKPOINT_CHUNK_BYTES)
                if not data and offset > 0:
                    return
                message = federation_pb2.DownloadCheckpointResponse(offset=offset, data=data)
                if offset == 0:
                    message.round_id, message.total_size = round_id, size
                    message.sha256, message.fingerprint = sha256, fingerprint
                self._count(client, 0, None, message)
                yield message
                offset += len(data)
                if not data:
                    return


class StatusServicer(_Servicer, status_pb2_grpc.StatusServiceServicer):
    """Read-only: nothing here changes the run. Serves from the running server's coordinator, or from a
    read replica of its store (`config_pb`: the run config that replica read)."""

    def __init__(
        self,
        source: StatusSource,
        auth: Authenticator,
        rate: RateLimiter | None = None,
        slots: StreamSlots | None = None,
        unauthenticated: RateLimiter | None = None,
        *,
        config_pb: common_pb2.RunConfig | None = None,
    ) -> None:
        if config_pb is None:
            if not isinstance(source, Coordinator):
                raise TypeError("a status source other than the coordinator must bring its config_pb")
            config_pb = run_config_pb(source)
        super().__init__(auth, rate, slots, unauthenticated, config_pb)
        self._coord = source

    def _check(self, context: Any, *, per_client: bool = False) -> str:
        """The reader's identity ("" without tokens: nothing to key a limit by), charged one request."""
        metadata = context.invocation_metadata()
        reader = self._authenticated(
            context, lambda: self._auth.check_reader(metadata, per_client=per_client)
        )
        if reader:
            self._rate.admit(reader)
        return reader

    @unary
    async def GetRunConfig(self, request: Any, context: Any) -> status_pb2.GetRunConfigResponse:
        self._check(context)
        return status_pb2.GetRunConfigResponse(config=self._config_pb)

    @unary
    async def GetStatus(self, request: Any, context: Any) -> status_pb2.GetStatusResponse:
        self._check(context)
        return convert.status_view_to_pb(status_view(self._coord))

    @unary
    async def ListRounds(self, request: Any, context: Any) -> status_pb2.ListRoundsResponse:
        self._check(context, per_client=True)
        wanted = request.limit
        views = round_views(
            self._coord,
            request.from_round,
            min(wanted or ROUNDS_PAGE, ROUNDS_PAGE),
            with_clients=not request.summary,
        )
        reply = status_pb2.ListRoundsResponse()
        size = 0
        for view in views:
            info = convert.round_view_to_pb(view)
            size += info.ByteSize() + 8  # + the field's tag and length prefix
            if reply.rounds and size > ROUNDS_PAGE_BYTES:
                break  # a page always holds one round, however large
            reply.rounds.append(info)
        if reply.rounds and (not wanted or len(reply.rounds) < wanted):
            after = reply.rounds[-1].round_id + 1
            if self._coord.store.list_rounds(after, 1):
                reply.next_from_round = after
        return reply

    @unary
    async def ListClients(self, request: Any, context: Any) -> status_pb2.ListClientsResponse:
        self._check(context, per_client=True)
        wanted = request.limit
        page = min(wanted or CLIENTS_PAGE, CLIENTS_PAGE)
        views = client_views(self._coord, request.after_client_id, page + 1)  # one more: is there a next?
        reply = status_pb2.ListClientsResponse(clients=[convert.client_view_to_pb(v) for v in views[:page]])
        if len(views) > page and (not wanted or page < wanted):
            reply.next_after_client_id = views[page - 1].client_id
        return reply

    @unary
    async def ListEvents(self, request: Any, context: Any) -> status_pb2.ListEventsResponse:
        self._check(context, per_client=True)
        after = convert.cursor_from_pb(request.after_cursor)
        events = self._coord.store.list_events(after, min(request.limit or EVENTS_PAGE, EVENTS_PAGE))
        next_cursor = events[-1].cursor if events else request.after_cursor
        return status_pb2.ListEventsResponse(
            events=[convert.event_to_pb(e) for e in events], next_cursor=next_cursor
        )

    @streaming
    async def StreamEvents(
        self, request: Any, context: Any
    ) -> AsyncIterator[status_pb2.StreamEventsResponse]:
        reader = self._check(context, per_client=True)
        generation = self._auth.generation
        cursor = convert.cursor_from_pb(request.after_cursor)
        # Readers without an identity (no tokens file, development) are not limited.
        with self._slots.hold(reader) if reader else contextlib.nullcontext():
            while True:
                self._auth.refresh()
                if self._auth.generation != generation:  # tokens reloaded: is this one still valid?
                    self._auth.check_reader(context.invocation_metadata(), per_client=True)
                    generation = self._auth.generation
                for event in self._coord.store.list_events(cursor, EVENTS_PAGE):
                    cursor = event.cursor
                    yield status_pb2.StreamEventsResponse(event=convert.event_to_pb(event))
                await wait_or_timeout(self._coord.changed(), EVENT_POLL_S)
