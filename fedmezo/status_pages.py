"""Reading a whole list from StatusService, page after page (the server bounds every reply's size)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ListRoundsCall = Callable[[Any], Any]  # ListRoundsRequest -> ListRoundsResponse, however it is sent
ListClientsCall = Callable[[Any], Any]  # ListClientsRequest -> ListClientsResponse


def list_all_rounds(call: ListRoundsCall, from_round: int = 0, limit: int = 0) -> list[Any]:
    """Every RoundInfo from `from_round` on (at most `limit`, 0 = all), following `next_from_round`.

    A server that predates paging answers in one reply without `next_from_round`: that is the whole list.
    """
    from fedmezo.v1 import status_pb2

    rounds: list[Any] = []
    request = status_pb2.ListRoundsRequest(from_round=from_round, limit=limit)
    while True:
        reply = call(request)
        rounds.extend(reply.rounds)
        if not reply.next_from_round or (limit and len(rounds) >= limit):
            return rounds[:limit] if limit else rounds
        if reply.next_from_round <= request.from_round:
            raise RuntimeError(
                f"ListRounds paging did not advance (from_round {request.from_round} → "
                f"next_from_round {reply.next_from_round})"
            )
        remaining = limit - len(rounds) if limit else 0
        request = status_pb2.ListRoundsRequest(from_round=reply.next_from_round, limit=remaining)


def list_all_clients(call: ListClientsCall, after: str = "", limit: int = 0) -> list[Any]:
    """Every ClientInfo with an id above `after` (at most `limit`, 0 = all), following
    `next_after_client_id`. A server that predates paging answers in one reply: the whole list."""
    from fedmezo.v1 import status_pb2

    clients: list[Any] = []
    request = status_pb2.ListClientsRequest(after_client_id=after, limit=limit)
    while True:
        reply = call(request)
        clients.extend(reply.clients)
        if not reply.next_after_client_id or (limit and len(clients) >= limit):
            return clients[:limit] if limit else clients
        if reply.next_after_client_id <= request.after_client_id:
            raise RuntimeError(
                f"ListClients paging did not advance (after {request.after_client_id!r} → "
                f"next {reply.next_after_client_id!r})"
            )
        remaining = limit - len(clients) if limit else 0
        request = status_pb2.ListClientsRequest(after_client_id=reply.next_after_client_id, limit=remaining)
