"""What the page shows that the status service does not say directly: progress, how many clients a
round still waits for, the model's size, cumulative bytes and the FedAvg comparison.
Pure functions over `schemas` models."""

from __future__ import annotations

from fedmezo.dashboard.schemas import ModelSize, RoundInfo, RunConfigInfo, ServerStatus

__all__ = [
    "EVAL_LOSS",
    "EXACT_MATCH",
    "FEDAVG_DIRECTIONS",
    "FP32_BYTES",
    "deadline_at_ms",
    "derive_rounds",
    "fedavg_round_bytes",
    "model_size",
    "progress",
    "waiting_for_clients",
]

FEDAVG_DIRECTIONS = 2  # FedAvg sends the full model down to each participant and a full update back up
FP32_BYTES = 4  # canonical trainable weights are fp32 on every participant (design §3)
EVAL_LOSS = "eval_loss"  # RoundInfo.eval_metrics keys written by the server's evaluator
EXACT_MATCH = "exact_match"  # a fraction in [0, 1]


def progress(status: ServerStatus) -> float:
    """Fraction of rounds completed, in [0, 1]."""
    if status.total_rounds <= 0:
        return 0.0
    return min(1.0, status.rounds_completed / status.total_rounds)


def waiting_for_clients(status: ServerStatus, config: RunConfigInfo) -> int:
    """Clients still needed before the next round opens; 0 unless the run is waiting for clients."""
    if status.run_state != "waiting_for_clients":
        return 0
    return max(0, config.min_clients - status.clients_online)


def deadline_at_ms(open_round: RoundInfo | None) -> int | None:
    """The open round's deadline (after extensions), or None when no round is open."""
    if open_round is None or open_round.state != "open" or open_round.deadline_at_unix_ms <= 0:
        return None
    return open_round.deadline_at_unix_ms


def model_size(config: RunConfigInfo) -> ModelSize:
    """The model's size as the server reports it (older servers do not: the page then says so)."""
    reported = config.trainable_params is not None or config.model_weight_bytes is not None
    return ModelSize(
        trainable_params=config.trainable_params,
        weight_bytes=config.model_weight_bytes,
        source="reported by the server" if reported else "not reported by this server",
    )


def fedavg_round_bytes(round_: RoundInfo, trainable_params: int) -> int:
    """FedAvg with full fp32 tensors: 2 directions x 4 B x trainable params x clients that submitted."""
    participants = round_.num_submitted  # also in a summary, which has no per-client rows
    return FEDAVG_DIRECTIONS * FP32_BYTES * trainable_params * participants


def derive_rounds(rounds: list[RoundInfo], trainable_params: int | None) -> list[RoundInfo]:
    """Copies of `rounds` (oldest first) with the dashboard's fields set: cumulative bytes, the FedAvg
    comparison, and the eval metrics as plain fields."""
    out = []
    ours = fedavg = 0
    for r in sorted(rounds, key=lambda r: r.round_id):
        ours += r.bytes_up + r.bytes_down
        if trainable_params:
            fedavg += fedavg_round_bytes(r, trainable_params)
        update = {
            "cumulative_bytes": ours,
            "fedavg_cumulative_bytes": fedavg if trainable_params else None,
            "eval_loss": r.eval_metrics.get(EVAL_LOSS),
            "eval_exact_match": r.eval_metrics.get(EXACT_MATCH),
        }
        out.append(r.model_copy(update=update))
    return out
