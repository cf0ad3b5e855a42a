"""Shared by the dashboard tests: the live run's fake-client schedule, and parsers for Prometheus text
and server-sent event streams."""

from __future__ import annotations

import re

LIVE_CLIENTS = ("client-0", "client-1", "client-2")
LIVE_DEVICES = {"client-0": "cpu", "client-1": "cuda:0 NVIDIA H100", "client-2": "cpu"}
LIVE_PEAK_MEMORY = {"client-0": 8_100_000, "client-1": 8_600_000, "client-2": 9_300_000}
LIVE_INFERENCE_MEMORY = {"client-0": 7_400_000, "client-1": 7_900_000, "client-2": 8_500_000}
LIVE_EVAL_EXAMPLES = 8
LIVE_STEPS = 4
LIVE_LOSS_OFFSETS = {"client-0": 0.0, "client-1": 0.11, "client-2": 0.27}
LIVE_CLOSED_ROUNDS = 3
LIVE_TOTAL_ROUNDS = 5


def live_losses(client_id: str, round_id: int) -> list[float]:
    """Training losses a fake client reports: they fall with the round, and differ per client."""
    offset = LIVE_LOSS_OFFSETS.get(client_id, 0.0)
    return [5.6 - 0.15 * round_id + offset - 0.01 * t for t in range(LIVE_STEPS)]


def live_mean_loss(client_id: str, round_id: int) -> float:
    """The mean of `live_losses` (what the server records as the client's mean loss)."""
    return sum(live_losses(client_id, round_id)) / LIVE_STEPS


SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)?\})? (?P<value>[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|NaN|Inf))$'
)
EXPECTED_METRICS = (
    "fedmezo_rounds_completed_total",
    "fedmezo_round_duration_seconds_sum",
    "fedmezo_round_duration_seconds_count",
    "fedmezo_clients_online",
    "fedmezo_updates_accepted_total",
    "fedmezo_updates_rejected_total",
    "fedmezo_bytes_up_total",
    "fedmezo_bytes_down_total",
    "fedmezo_client_peak_memory_bytes",
    "fedmezo_eval_loss",
)


def parse_metrics(text: str) -> dict[str, list[tuple[str, float]]]:
    """name -> [(labels, value)]; fails on any line that is neither a comment nor a sample."""
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (HELP|TYPE) fedmezo_\w+ ", line), line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        samples.setdefault(m["name"], []).append((m["labels"] or "", float(m["value"])))
    return samples


def sse_messages(body: str) -> list[dict[str, str]]:
    """Split an event-stream body into its messages (field -> value; comments under ':')."""
    out = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key or ":"] = value.strip()
        if fields:
            out.append(fields)
    return out
