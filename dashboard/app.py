"""The dashboard's FastAPI app: JSON API, server-sent events, Prometheus metrics and the static page.

Everything it shows comes from one `StatusSource` (the server's StatusService in production, a fake in
tests). Handlers are plain `def`s, so FastAPI runs the blocking gRPC calls in its worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from fedmezo.dashboard import views
from fedmezo.dashboard.metrics import CONTENT_TYPE, render_metrics
from fedmezo.dashboard.schemas import (
    ApiError,
    ClientsResponse,
    HealthResponse,
    RoundsResponse,
    StatusResponse,
)
from fedmezo.dashboard.source import SourceError, SourceUnavailable, StatusSource
from fedmezo.fl.vocabulary import MAX_CLIENT_ID_CHARS, MAX_EVENT_CURSOR

__all__ = ["EVENT_POLL_S", "HEARTBEAT_S", "RETRY_MS", "STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
EVENT_POLL_S = 1.0  # ListEvents polling period behind /api/events: the page lags events by at most this
HEARTBEAT_S = 15.0  # SSE comment sent when idle, so proxies keep the connection open
RETRY_MS = 3000  # EventSource reconnect delay the browser is told to use
# Runs with more clients than this get rounds without per-client rows (one loss line per client stops
# being readable long before, and a 10,000-client round's rows are megabytes on every refresh).
PER_CLIENT_ROWS_MAX = 64
CLIENTS_PAGE_DEFAULT = 100  # clients per /api/clients page (the table shows one page at a time)
CLIENTS_PAGE_MAX = 1000  # the server's own ListClients page
_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    503: {"model": ApiError, "description": "the fedmezo server is unreachable"},
    502: {"model": ApiError, "description": "the fedmezo server refused the request"},
}


def _sse(data: object, *, event: str | None = None, event_id: int | None = None) -> str:
    head = (f"id: {event_id}\n" if event_id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


def create_app(
    source: StatusSource,
    *,
    event_poll_s: float = EVENT_POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
    retry_ms: int = RETRY_MS,
) -> FastAPI:
    """The dashboard app over `source` (the server's StatusService, or a fake in tests). Setting
    `app.state.stopping` (a threading.Event) ends open event streams, so a server can shut down."""
    app = FastAPI(
        title="fedmezo dashboard",
        version="1",
        description="Read-only view of a fedmezo run, from the server's StatusService.",
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    stopping = threading.Event()  # set on shutdown: open event streams end within one poll
    app.state.stopping = stopping

    @app.exception_handler(SourceError)
    async def _source_error(request: Request, exc: SourceError) -> JSONResponse:
        unavailable = isinstance(exc, SourceUnavailable)
        body = ApiError(
            error="status_service_unavailable" if unavailable else "status_service_error",
            detail=str(exc),
            server=source.address,
        )
        return JSONResponse(body.model_dump(), status_code=503 if unavailable else 502)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", response_model=HealthResponse, tags=["ops"])
    def healthz() -> HealthResponse:
        """Liveness of the dashboard itself (does not call the server)."""
        return HealthResponse(status="ok")

    @app.get("/api/status", response_model=StatusResponse, responses=_ERROR_RESPONSES, tags=["api"])
    def api_status() -> StatusResponse:
        """Run header: configuration, progress, the open round's deadline, the model's size."""
        status = source.status()
        config = source.run_config()
        open_round = None
        if status.current_round:
            found = source.rounds(from_round=status.current_round, limit=1, summary=True)
            open_round = found[0] if found else None
        return StatusResponse(
            server=source.address,
            server_time_unix_ms=int(time.time() * 1000),
            status=status,
            config=config,
            model_size=views.model_size(config),
            progress=views.progress(status),
            waiting_for_clients=views.waiting_for_clients(status, config),
            deadline_at_unix_ms=views.deadline_at_ms(open_round),
        )

    @app.get("/api/rounds", response_model=RoundsResponse, responses=_ERROR_RESPONSES, tags=["api"])
    def api_rounds(
        clients: Annotated[str, Query(pattern="^(auto|true|false)$")] = "auto",
    ) -> RoundsResponse:
        """Every round, oldest first (round 0 = the initial model's eval), with cumulative bytes and the
        FedAvg comparison. `clients`: per-client rows always, never, or (auto) while the run has at most
        PER_CLIENT_ROWS_MAX clients."""
        if clients == "auto":
            with_rows = source.status().clients_total <= PER_CLIENT_ROWS_MAX
        else:
            with_rows = clients == "true"
        rounds = source.rounds(summary=not with_rows)
        size = views.model_size(source.run_config())
        params = size.trainable_params
        note = (
            f"FedAvg with full fp32 tensors: 2 x 4 B x {params:,} trainable parameters x clients that "
            "submitted, per round"
            if params
            else f"FedAvg comparison unavailable: trainable parameter count {size.source}"
        )
        return RoundsResponse(
            rounds=views.derive_rounds(rounds, params), trainable_params=params, fedavg_note=note
        )

    @app.get("/api/clients", response_model=ClientsResponse, responses=_ERROR_RESPONSES, tags=["api"])
    def api_clients(
        after: Annotated[str, Query(max_length=MAX_CLIENT_ID_CHARS)] = "",
        limit: Annotated[int, Query(ge=1, le=CLIENTS_PAGE_MAX)] = CLIENTS_PAGE_DEFAULT,
    ) -> ClientsResponse:
        """One page of the clients that ever joined, in client id order: those above `after`."""
        page = source.clients_page(after, limit)
        total = source.status().clients_total
        return ClientsResponse(clients=page.clients, next_after=page.next_after, total=total)

    @app.get("/metrics", response_class=PlainTextResponse, responses=_ERROR_RESPONSES, tags=["ops"])
    def metrics() -> PlainTextResponse:
        """Prometheus text exposition; every name starts with `fedmezo_`."""
        text = render_metrics(source.status(), source.run_config(), source.rounds(), source.clients())
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    async def event_stream(after: int | None, limit: int | None, follow: bool) -> AsyncIterator[str]:
        cursor, remaining, failing = after, limit, False
        if cursor is None:  # a fresh page only needs what happens from now on: pin "now" first
            with contextlib.suppress(SourceError):  # unreachable: reported by the loop below
                cursor = (await asyncio.to_thread(source.status)).last_event_cursor
        yield f"retry: {retry_ms}\n" + (
            _sse({"cursor": cursor}, event="ready") if cursor is not None else "\n"
        )
        last_write = time.monotonic()
        while (remaining is None or remaining > 0) and not stopping.is_set():
            try:
                if cursor is None:
                    cursor = (await asyncio.to_thread(source.status)).last_event_cursor
                    yield _sse({"cursor": cursor}, event="ready")
                page = await asyncio.to_thread(source.events, cursor)
            except SourceError as exc:
                if not failing:
                    yield _sse(
                        {"error": "status_service_unavailable", "detail": str(exc), "server": source.address},
                        event="unavailable",
                    )
                    last_write, failing = time.monotonic(), True
                if not follow:
                    return
            else:
                if failing:
                    yield _sse({"server": source.address}, event="available")
                    last_write, failing = time.monotonic(), False
                events = page.events if remaining is None else page.events[:remaining]
                for event in events:
                    yield _sse(event.model_dump(), event_id=event.cursor)
                    last_write = time.monotonic()
                if remaining is not None:
                    remaining -= len(events)
                cursor = events[-1].cursor if events else max(cursor, page.next_cursor)
                if events:
                    continue  # more may be waiting: drain before sleeping
                if not follow:
                    return  # caught up
            if time.monotonic() - last_write >= heartbeat_s:
                yield ": heartbeat\n\n"
                last_write = time.monotonic()
            await asyncio.sleep(event_poll_s)

    @app.get(
        "/api/events",
        tags=["api"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
    )
    def api_events(
        after: Annotated[
            int | None, Query(ge=0, le=MAX_EVENT_CURSOR, description="replay events after this cursor")
        ] = None,
        limit: Annotated[int | None, Query(ge=1, description="close the stream after this many")] = None,
        follow: Annotated[bool, Query(description="false: close once caught up (replay only)")] = True,
        last_event_id: Annotated[
            int | None, Header(ge=0, le=MAX_EVENT_CURSOR, include_in_schema=False)
        ] = None,
    ) -> StreamingResponse:
        """Server-sent events: `ready` once the start cursor is pinned (data = {"cursor": n}), then one
        `message` per run event (data = the Event as JSON, id = its cursor), `unavailable`/`available`
        when the server goes away/comes back, heartbeat comments when idle.
        Without `after` (or a Last-Event-ID header on reconnect) only new events are sent; with
        `follow=false` the stream closes once it has caught up."""
        start = after if after is not None else last_event_id
        return StreamingResponse(
            event_stream(start, limit, follow),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app
