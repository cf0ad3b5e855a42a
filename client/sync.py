"""Keeping the client's replica bit-identical to the server's: follow round deltas, catch up, resync.

A client that missed rounds replays the stored round deltas in order (a few hundred bytes each), or
downloads the latest checkpoint when replaying would cost more time than the download (design §1
step 5). Every replayed round and every checkpoint is verified against the server's fingerprint by
the replica itself (`fedmezo.fl.replica.Replica`); this module only decides what to fetch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedmezo.client.link import ServerLink
from fedmezo.fl.aggregation import delta_from_participants
from fedmezo.fl.errors import SyncFailed
from fedmezo.fl.records import DeltaRecord
from fedmezo.fl.replica import Replica
from fedmezo.fl.seeds import SeedPlan

__all__ = [
    "ASSUMED_APPLY_ELEMENTS_PER_S",
    "ASSUMED_DOWNLOAD_BYTES_PER_S",
    "ReplicaSync",
    "checkpoint_is_cheaper",
]

logger = logging.getLogger("fedmezo.client")

# Cost model for "replay or download": replaying one seed is one pass over every trainable element;
# a download moves the checkpoint once. Conservative CPU/edge-link figures; the choice only has to be
# right by an order of magnitude (tiny models always replay, 100M+ models download after a few rounds).
ASSUMED_APPLY_ELEMENTS_PER_S = 1e9  # fused numba/Triton regenerate-and-add, elements per second
ASSUMED_DOWNLOAD_BYTES_PER_S = 50e6  # 400 Mbit/s


def checkpoint_is_cheaper(*, seeds_to_replay: int, numel: int, checkpoint_size_bytes: int) -> bool:
    replay_s = seeds_to_replay * numel / ASSUMED_APPLY_ELEMENTS_PER_S
    download_s = checkpoint_size_bytes / ASSUMED_DOWNLOAD_BYTES_PER_S
    return download_s < replay_s


@dataclass
class ReplicaSync:
    """Moves `replica` forward with what the server sends (the seed plan names every delta's seeds)."""

    replica: Replica
    seeds: SeedPlan
    local_steps: int = 0  # τ: what names a shared-seed round's seeds (per-client rounds list theirs)

    def apply(self, message: DeltaRecord) -> None:
        """Apply round `version + 1`'s delta and check the server's fingerprint when it came along."""
        delta = delta_from_participants(
            self.seeds, message.round_id, message.participants, message.coefficients, self.local_steps
        )
        self.replica.apply_round(message.round_id, delta, message.fingerprint)

    def replay(self, link: ServerLink, *, until: int | None = None, follow: bool = False) -> None:
        """Apply stored deltas from version+1 in order (all stored ones, or up to round `until`)."""
        if until is not None and self.replica.version >= until:
            return
        stream = link.stream_deltas(from_round=self.replica.version + 1, follow=follow)
        try:
            for message in stream:
                if message.round_id <= self.replica.version:
                    continue  # already applied (e.g. a reconnect re-sent it)
                self.apply(message)
                logger.debug(
                    "applied round %d (%d coefficients)", message.round_id, len(message.coefficients)
                )
                if until is not None and self.replica.version >= until:
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # cancels a follow stream we no longer need

    def resync(self, link: ServerLink) -> None:
        """Download the latest checkpoint (becoming its version), then replay what came after it."""
        checkpoint = link.download_checkpoint()
        self.replica.load_checkpoint_bytes(
            checkpoint.data,
            version=checkpoint.round_id,
            sha256=checkpoint.sha256,
            fingerprint=checkpoint.fingerprint,
        )
        logger.info("loaded checkpoint of round %d (%d bytes)", checkpoint.round_id, len(checkpoint.data))
        self.replay(link)

    def catch_up(
        self,
        link: ServerLink,
        *,
        target: int,
        checkpoint_round: int,
        checkpoint_size_bytes: int,
        seeds_per_round: int,
    ) -> None:
        """Reach at least model version `target`, replaying or downloading, whichever is cheaper."""
        if self.replica.version >= target:
            return
        missed = checkpoint_round - self.replica.version
        if missed > 0 and checkpoint_is_cheaper(
            seeds_to_replay=missed * seeds_per_round,
            numel=self.replica.params.numel,
            checkpoint_size_bytes=checkpoint_size_bytes,
        ):
            self.resync(link)
        else:
            logger.info("catching up from version %d to %d by replay", self.replica.version, target)
            try:
                self.replay(link, until=None)
            except SyncFailed as exc:
                logger.warning("replay failed (%s); resyncing from the checkpoint", exc)
                self.resync(link)
        if self.replica.version < target:
            raise SyncFailed(f"server promised version {target}, its stream ended at {self.replica.version}")
