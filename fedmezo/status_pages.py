"""Reading a whole list from StatusService, page after page (the server bounds every reply's size)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ListRoundsCall = Callable[[Any], Any]  # ListRoundsRequest -> ListRoundsResponse, however it is sent
ListClientsCall = Callable[[Any], Any]  # ListClientsRequest -> ListClientsResponse


def list_all_rounds(
    call: ListRoundsCall, from_round: int = 0, limit: int = 0, *, summary: bool = False
) -> list[Any]:
    """Every RoundInfo from `from_round` on (at most `limit`, 0 = all), following `next_from_round`;
    `summary`: without per-client rows (a large run's whole history in a few KiB).

    A server that predates paging answers in one reply without `next_from_round`: that is the whole list.
    """
    from fedmezo.v1 import status_pb2

    def request(start: int, left: int) -> Any:
        return status_pb2.ListRoundsRequest(from_round=start, limit=left, summary=summary)

    return _all_pages("ListRounds", call, request, from_round, limit, "rounds", "next_from_round")


def list_all_clients(call: ListClientsCall, after: str = "", limit: int = 0) -> list[Any]:
    """Every ClientInfo with an id above `after` (at most `limit`, 0 = all), following
    `next_after_client_id`. A server that predates paging answers in one reply: the whole list."""
    from fedmezo.v1 import status_pb2

    def request(start: str, left: int) -> Any:
        return status_pb2.ListClientsRequest(after_client_id=start, limit=left)

    return _all_pages("ListClients", call, request, after, limit, "clients", "next_after_client_id")


def _all_pages(
    rpc: str, call: Callable[[Any], Any], request: Callable[[Any, int], Any], start: Any, limit: int,
    items: str, next_field: str,
) -> list[Any]:  # fmt: skip
    """Ask from `start`, then from each reply's `next_field` (empty/0 = the end) until `limit` items (0 =
    all) are read; a cursor that does not move forward is an error, not an endless loop."""
    out: list[Any] = []
    while True:
        reply = call(request(start, limit - len(out) if limit else 0))
        out.extend(getattr(reply, items))
        cursor = getattr(reply, next_field)
        if not cursor or (limit and len(out) >= limit):
            return out[:limit] if limit else out
        if cursor <= start:
            raise RuntimeError(f"{rpc} paging did not advance (from {start!r} → {next_field} {cursor!r})")
        start = cursor
