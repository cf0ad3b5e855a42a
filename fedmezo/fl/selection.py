"""The round state machine as plain functions over typed values (no I/O, no clock of its own).

Design §1 step 1 and 3: a round opens when at least `min_clients` are online; it samples a
deterministic subset of them; it closes when every selected client answered, or at its deadline
once a quorum answered; without quorum the deadline is extended a bounded number of times and then
the round aborts (an empty delta: the model does not move, the run goes on).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable
from enum import StrEnum

__all__ = [
    "CloseDecision",
    "decide_close",
    "quorum_size",
    "sample_clients",
    "sample_size",
]

_SAMPLING_DOMAIN = b"fedmezo/sample1"


class CloseDecision(StrEnum):
    WAIT = "wait"  # keep collecting updates
    CLOSE = "close"  # aggregate what was accepted
    EXTEND = "extend"  # deadline passed without quorum: give stragglers another deadline
    ABORT = "abort"  # no quorum after every extension: close with an empty delta


def quorum_size(num_selected: int, quorum_fraction: float) -> int:
    """Accepted updates that let a round close at its deadline (at least one)."""
    return max(1, math.ceil(quorum_fraction * num_selected - 1e-9))


def sample_size(num_online: int, clients_per_round: int, fraction: float) -> int:
    """How many of the online clients a round selects (never more than are online, at least one)."""
    wanted = clients_per_round if clients_per_round > 0 else math.ceil(fraction * num_online - 1e-9)
    return max(1, min(num_online, wanted))


def _rank(run_seed: int, round_id: int, client_id: str) -> bytes:
    digest = hashlib.blake2b(digest_size=8, person=_SAMPLING_DOMAIN)
    digest.update(struct.pack("<QQ", run_seed, round_id) + client_id.encode())
    return digest.digest()


def sample_clients(online: Iterable[str], k: int, run_seed: int, round_id: int) -> tuple[str, ...]:
    """The k online clients with the smallest hash of (run_seed, round, id); sorted by id.

    Deterministic given the online set, independent of arrival order, and a fresh draw every round.
    """
    ranked = sorted(set(online), key=lambda c: (_rank(run_seed, round_id, c), c))
    return tuple(sorted(ranked[:k]))


def decide_close(
    *,
    num_selected: int,
    num_answered: int,
    now: float,
    deadline_at: float,
    quorum_fraction: float,
    extensions: int,
    max_extensions: int,
) -> CloseDecision:
    """What to do with the open round now."""
    if num_answered >= num_selected:
        return CloseDecision.CLOSE
    if now < deadline_at:
        return CloseDecision.WAIT
    if num_answered >= quorum_size(num_selected, quorum_fraction):
        return CloseDecision.CLOSE
    if extensions < max_extensions:
        return CloseDecision.EXTEND
    return CloseDecision.ABORT
