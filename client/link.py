"""The seam between the daemon and the server: a small `ServerLink` protocol over the protocol's types.

The daemon's logic never sees protobuf or gRPC; `connection.GrpcServerLink` is the real link and a
40-line fake is enough to test the daemon (style §13). The task, update and delta types are the
protocol's own (`fedmezo.fl.records`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from fedmezo.fl.records import (
    Activity,
    Checkpoint,
    DeltaRecord,
    JoinResult,
    RunSettings,
    TaskResult,
    Update,
)

__all__ = ["ServerLink"]


class ServerLink(Protocol):
    """Every call has a deadline; failures raise `errors.RpcFailed` subclasses, never grpc errors."""

    def get_run_config(self) -> RunSettings: ...

    def join(
        self,
        *,
        manifest_sha256: str,
        rng_spec: str,
        num_examples: int,
        device: str,
        model_version: int,
        inference_peak_memory_bytes: int = 0,
    ) -> JoinResult: ...

    def heartbeat(self, *, model_version: int, activity: Activity, round_id: int = 0, step: int = 0) -> int:
        """Returns the server's rounds_completed."""
        ...

    def get_task(
        self, *, known_version: int, wait_s: float, max_deltas: int = 0, fingerprint: bytes = b""
    ) -> TaskResult:
        """Long-poll for work; with max_deltas > 0 the answer carries the rounds closed since
        known_version (at most that many), and `fingerprint` (of known_version) is checked on the way."""
        ...

    def submit(self, update: Update, *, base_fingerprint: bytes = b"") -> None:
        """`base_fingerprint`: of the θ the update was trained from (refused as "diverged" if not the
        server's)."""
        ...

    def report_fingerprint(self, *, model_version: int, fingerprint: bytes) -> bool:
        """True when the server finds this replica in sync; False: resync from a checkpoint."""
        ...

    def stream_deltas(self, *, from_round: int, follow: bool) -> Iterator[DeltaRecord]: ...

    def download_checkpoint(self) -> Checkpoint: ...

    def close(self) -> None: ...
