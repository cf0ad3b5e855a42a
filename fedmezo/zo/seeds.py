"""Deterministic 64-bit seeds (design §1): a hash of (run seed, round, client, local step).

Every participant derives the same seeds, so they never have to travel; 64 bits make collisions
across a long run negligible (unlike `randint(1e9)`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

__all__ = ["derive_round_seeds", "derive_seed", "derive_shared_seed"]

_SEED_DOMAIN = b"fedmezo/seed/v1"
_SHARED_DOMAIN = b"fedmezo/shared1"  # blake2b's personalisation holds at most 16 bytes


def derive_seed(run_seed: int, round_id: int, client_id: str, step: int) -> int:
    """Unsigned 64-bit seed of local step `step` of `client_id` in round `round_id`."""
    if not 0 <= run_seed < 2**64:
        raise ValueError(f"run_seed must be an unsigned 64-bit integer, got {run_seed}")
    if round_id < 0 or step < 0:
        raise ValueError("round_id and step must be non-negative")
    digest = hashlib.blake2b(digest_size=8, person=_SEED_DOMAIN[:16])
    client = client_id.encode()
    digest.update(struct.pack("<QQQI", run_seed, round_id, step, len(client)) + client)
    return int.from_bytes(digest.digest(), "little")


def derive_shared_seed(run_seed: int, round_id: int, step: int, perturbation: int) -> int:
    """Unsigned 64-bit seed of perturbation `perturbation` of local step `step` that every client
    selected in round `round_id` uses (the shared-seed scheme: a delta's size is independent of N)."""
    if not 0 <= run_seed < 2**64:
        raise ValueError(f"run_seed must be an unsigned 64-bit integer, got {run_seed}")
    if round_id < 0 or step < 0 or perturbation < 0:
        raise ValueError("round_id, step and perturbation must be non-negative")
    digest = hashlib.blake2b(digest_size=8, person=_SHARED_DOMAIN)
    digest.update(struct.pack("<QQQQ", run_seed, round_id, step, perturbation))
    return int.from_bytes(digest.digest(), "little")


def derive_round_seeds(
    run_seed: int, round_id: int, participants: Sequence[tuple[str, int]]
) -> tuple[int, ...]:
    """The distinct seeds of a round's delta, ascending (as in RoundDelta.seeds), from who trained how long.

    Lets the downlink carry participants and coefficients only (4 bytes per local step).
    """
    seeds = {
        derive_seed(run_seed, round_id, client, t) for client, steps in participants for t in range(steps)
    }
    return tuple(sorted(seeds))
