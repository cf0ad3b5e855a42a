"""Keeping the local replica bit-identical to the server's: apply round deltas, catch up, resync.

A client that missed rounds replays the stored round deltas in order (a few hundred bytes each), or
downloads the latest checkpoint when replaying would cost more time than the download (design §1
step 5). Every replayed round and every checkpoint is verified against the server's fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors

from fedmezo.client.errors import SyncFailed
from fedmezo.client.link import Checkpoint, DeltaMessage, ServerLink
from fedmezo.zo import Backend, RoundDelta, TrainableParams, apply_round_delta, derive_seed

__all__ = [
    "ASSUMED_APPLY_ELEMENTS_PER_S",
    "ASSUMED_DOWNLOAD_BYTES_PER_S",
    "Replica",
    "checkpoint_is_cheaper",
    "load_checkpoint",
    "to_round_delta",
]

logger = logging.getLogger("fedmezo.client")

# Cost model for "replay or download": replaying one seed is one pass over every trainable element;
# a download moves the checkpoint once. Conservative CPU/edge-link figures; the choice only has to be
# right by an order of magnitude (tiny models always replay, 100M+ models download after a few rounds).
ASSUMED_APPLY_ELEMENTS_PER_S = 1e9  # fused numba/Triton regenerate-and-add, elements per second
ASSUMED_DOWNLOAD_BYTES_PER_S = 50e6  # 400 Mbit/s


def to_round_delta(message: DeltaMessage, run_seed: int) -> RoundDelta:
    """Rebuild the (seed, coefficient) list: packed pairs, or seeds derived from the participants."""
    if message.packed:
        return RoundDelta.from_bytes(message.packed)
    seeds = sorted(
        {
            derive_seed(run_seed, message.round_id, client_id, t)
            for client_id, local_steps in message.participants
            for t in range(local_steps)
        }
    )
    if len(seeds) != len(message.coefficients):
        raise SyncFailed(
            f"round {message.round_id}: {len(seeds)} derived seeds, {len(message.coefficients)} coefficients"
        )
    return RoundDelta(tuple(seeds), tuple(message.coefficients))


def _flat_from_tensors(tensors: dict[str, torch.Tensor], params: TrainableParams) -> torch.Tensor:
    """Accept one flat fp32 tensor, or one tensor per trainable name (concatenated in manifest order)."""
    if len(tensors) == 1:
        (flat,) = tensors.values()
        return flat.reshape(-1)
    if set(params.names) <= set(tensors):
        return torch.cat([tensors[name].reshape(-1) for name in params.names])
    raise SyncFailed(f"checkpoint holds tensors {sorted(tensors)[:5]}..., not this model's")


def load_checkpoint(params: TrainableParams, checkpoint: Checkpoint) -> None:
    """Verify the file's sha256, load it into θ, and verify the resulting fingerprint."""
    digest = hashlib.sha256(checkpoint.data).hexdigest()
    if digest != checkpoint.sha256:
        raise SyncFailed(f"checkpoint sha256 {digest[:12]} != announced {checkpoint.sha256[:12]}")
    flat = _flat_from_tensors(load_safetensors(checkpoint.data), params)
    if flat.dtype != torch.float32 or flat.numel() != params.numel:
        raise SyncFailed(
            f"checkpoint holds {flat.numel()} {flat.dtype} values, the model {params.numel} fp32"
        )
    params.restore(flat.contiguous())
    if checkpoint.fingerprint and params.fingerprint() != checkpoint.fingerprint:
        raise SyncFailed(f"checkpoint of round {checkpoint.round_id} does not match its fingerprint")


def checkpoint_is_cheaper(*, seeds_to_replay: int, numel: int, checkpoint_size_bytes: int) -> bool:
    replay_s = seeds_to_replay * numel / ASSUMED_APPLY_ELEMENTS_PER_S
    download_s = checkpoint_size_bytes / ASSUMED_DOWNLOAD_BYTES_PER_S
    return download_s < replay_s


@dataclass
class Replica:
    """The canonical local model: θ at `version` (rounds applied), never holding local drift."""

    params: TrainableParams
    run_seed: int
    version: int = 0
    backend: Backend | None = None

    def apply(self, message: DeltaMessage) -> None:
        """Apply round `version + 1`'s delta and check the server's fingerprint when it came along."""
        if message.round_id != self.version + 1:
            raise SyncFailed(f"got round {message.round_id}'s delta at model version {self.version}")
        apply_round_delta(self.params, to_round_delta(message, self.run_seed), backend=self.backend)
        self.version = message.round_id
        if message.fingerprint and self.params.fingerprint() != message.fingerprint:
            raise SyncFailed(f"fingerprint differs from the server's after round {message.round_id}")

    def replay(self, link: ServerLink, *, until: int | None = None, follow: bool = False) -> None:
        """Apply stored deltas from version+1 in order (all stored ones, or up to round `until`)."""
        if until is not None and self.version >= until:
            return
        stream = link.stream_deltas(from_round=self.version + 1, follow=follow)
        try:
            for message in stream:
                if message.round_id <= self.version:
                    continue  # already applied (e.g. a reconnect re-sent it)
                self.apply(message)
                logger.debug(
                    "applied round %d (%d coefficients)", message.round_id, len(message.coefficients)
                )
                if until is not None and self.version >= until:
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # cancels a follow stream we no longer need

    def resync(self, link: ServerLink) -> None:
        """Download the latest checkpoint (becoming its version), then replay what came after it."""
        checkpoint = link.download_checkpoint()
        load_checkpoint(self.params, checkpoint)
        self.version = checkpoint.round_id
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
        if self.version >= target:
            return
        missed = checkpoint_round - self.version
        if missed > 0 and checkpoint_is_cheaper(
            seeds_to_replay=missed * seeds_per_round,
            numel=self.params.numel,
            checkpoint_size_bytes=checkpoint_size_bytes,
        ):
            self.resync(link)
        else:
            logger.info("catching up from version %d to %d by replay", self.version, target)
            try:
                self.replay(link, until=None)
            except SyncFailed as exc:
                logger.warning("replay failed (%s); resyncing from the checkpoint", exc)
                self.resync(link)
        if self.version < target:
            raise SyncFailed(f"server promised version {target}, its stream ended at {self.version}")
