"""Watching the run through the server's public surfaces only: gRPC health and the status service.

The demo reads exactly what an operator (or the dashboard) can read, with its own bearer token, so
what it prints is what a remote `fedmezo status` would show.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedmezo.data import EvalResult
from fedmezo.demo.errors import DemoError
from fedmezo.v1 import common_pb2, status_pb2, status_pb2_grpc

__all__ = ["POLL_S", "RPC_DEADLINE_S", "RoundReport", "StatusReader"]

RPC_DEADLINE_S = 10.0
# RoundInfo.eval_metrics keys written by the server's evaluator (fedmezo.fl.evaluation)
EVAL_LOSS = "eval_loss"
EXACT_MATCH = "exact_match"
EVAL_EXAMPLES = "eval_examples"
POLL_S = 0.5  # status polling period: cheap (one small unary call) and quick to notice a closed round


@dataclass(frozen=True)
class RoundReport:
    """One closed round, as the demo prints and sums it."""

    round_id: int
    state: str  # closed | aborted
    mean_loss: float | None
    participants: int
    bytes_up: int
    bytes_down: int
    duration_s: float


class StatusReader:
    """A status-service client with the demo's token; plaintext or TLS against a self-signed CA."""

    def __init__(self, target: str, token: str, tls_ca: Path | None = None) -> None:
        if tls_ca is None:
            self._channel = grpc.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
            self._channel = grpc.secure_channel(target, credentials)
        self._stub = status_pb2_grpc.StatusServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    def close(self) -> None:
        self._channel.close()

    def wait_serving(self, timeout_s: float, check: Callable[[], None]) -> None:
        """Block until the health service says SERVING; `check` raises if the server process died."""
        deadline = time.monotonic() + timeout_s
        while True:
            check()
            try:
                reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet: a cold start imports torch and loads the model
            if time.monotonic() > deadline:
                raise DemoError(f"the server did not become healthy within {timeout_s:.0f} s")
            time.sleep(POLL_S)

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=RPC_DEADLINE_S, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise DemoError(f"status service: {code}: {details}") from exc

    def status(self) -> Any:
        """GetStatusResponse: run state, rounds completed, clients online, bytes so far."""
        return self._call(self._stub.GetStatus, status_pb2.GetStatusRequest())

    def finished(self, status: Any) -> bool:
        return bool(status.run_state == common_pb2.RUN_STATE_FINISHED)

    def closed_rounds(self, from_round: int) -> list[RoundReport]:
        """Rounds from `from_round` on that are no longer open, in order."""
        reply = self._call(self._stub.ListRounds, status_pb2.ListRoundsRequest(from_round=from_round))
        reports = []
        for info in reply.rounds:
            if info.state == status_pb2.ROUND_STATE_OPEN:
                break
            reports.append(
                RoundReport(
                    round_id=info.round_id,
                    state=status_pb2.RoundState.Name(info.state).removeprefix("ROUND_STATE_").lower(),
                    mean_loss=None if math.isnan(info.mean_loss) else float(info.mean_loss),
                    participants=sum(1 for c in info.clients if c.accepted),
                    bytes_up=int(info.bytes_up),
                    bytes_down=int(info.bytes_down),
                    duration_s=float(info.duration_s),
                )
            )
        return reports

    def run_config(self) -> Any:
        """The RunConfig: schedule, model, trainable_params (for the FedAvg comparison)."""
        return self._call(self._stub.GetRunConfig, status_pb2.GetRunConfigRequest()).config

    def eval_of(self, version: int) -> EvalResult | None:
        """The server's evaluation of model `version` (0 = θ_0), None until it is stored."""
        request = status_pb2.ListRoundsRequest(from_round=version, limit=1)
        for info in self._call(self._stub.ListRounds, request).rounds:
            metrics = info.eval_metrics
            if info.round_id == version and EVAL_LOSS in metrics and EXACT_MATCH in metrics:
                return EvalResult(
                    loss=float(metrics[EVAL_LOSS]),
                    exact_match=float(metrics[EXACT_MATCH]),
                    num_examples=int(metrics.get(EVAL_EXAMPLES, 0)),
                )
        return None

    def clients(self) -> list[Any]:
        """ClientInfo per client: device, peak memory, sync state."""
        return list(self._call(self._stub.ListClients, status_pb2.ListClientsRequest()).clients)
