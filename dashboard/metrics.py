"""GET /metrics: the run as Prometheus text exposition (format 0.0.4), written by hand.

Every name starts with `fedmezo_`. Values are read from the status service at scrape time, so counters
are the server's own running totals (they survive dashboard restarts).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from fedmezo.dashboard.schemas import ClientInfo, RoundInfo, RunConfigInfo, ServerStatus
from fedmezo.dashboard.views import EVAL_LOSS, EXACT_MATCH

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KNOWN_REJECT_REASONS = ("outlier",)  # always exported (0 until seen), so rate() works from the start


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass
class _Family:
    name: str
    kind: str  # counter | gauge | summary
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((suffix, labels, value))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for suffix, labels, value in self.samples:
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            labelled = f"{{{body}}}" if body else ""
            lines.append(f"{self.name}{suffix}{labelled} {_number(value)}")
        return lines


def render_metrics(
    status: ServerStatus, config: RunConfigInfo, rounds: list[RoundInfo], clients: list[ClientInfo]
) -> str:
    """The exposition text for one scrape."""
    fams: list[_Family] = []

    def family(name: str, kind: str, help_: str) -> _Family:
        fams.append(_Family(f"fedmezo_{name}", kind, help_))
        return fams[-1]

    family("run_info", "gauge", "Constant 1, labelled with the run's configuration.").add(
        1, run_id=config.run_id, model=config.model, mode=config.mode, lr_strategy=config.lr_strategy
    )
    family("rounds_completed_total", "counter", "Rounds closed (aggregated or aborted).").add(
        status.rounds_completed
    )
    family("rounds_planned", "gauge", "Rounds the run is configured for.").add(status.total_rounds)
    family("current_round", "gauge", "The open round, 0 when none.").add(status.current_round)

    finished = [r for r in rounds if r.round_id > 0 and r.state in ("closed", "aborted")]  # 0: θ_0 eval
    duration = family("round_duration_seconds", "summary", "Wall time from a round's opening to its close.")
    duration.add(math.fsum(r.duration_s for r in finished), "_sum")
    duration.add(len(finished), "_count")
    last = max(finished, key=lambda r: r.round_id, default=None)
    family("last_round_duration_seconds", "gauge", "Duration of the latest closed round.").add(
        last.duration_s if last else math.nan
    )

    family("clients_online", "gauge", "Clients that heartbeated within the timeout.").add(
        status.clients_online
    )
    family("clients_known", "gauge", "Clients that ever joined.").add(status.clients_total)

    accepted = sum(1 for r in rounds for c in r.clients if c.accepted)
    rejected = Counter(
        c.rejected_reason or "unspecified"
        for r in rounds
        for c in r.clients
        if c.submitted and not c.accepted
    )
    family("updates_accepted_total", "counter", "Client updates counted in an aggregation.").add(accepted)
    rej = family("updates_rejected_total", "counter", "Submitted client updates not aggregated, by reason.")
    for reason in KNOWN_REJECT_REASONS:
        rejected.setdefault(reason, 0)
    for reason, n in sorted(rejected.items()):
        rej.add(n, reason=reason)

    family("bytes_up_total", "counter", "Serialized gRPC bytes sent by all clients.").add(status.bytes_up)
    family("bytes_down_total", "counter", "Serialized gRPC bytes sent to all clients.").add(status.bytes_down)

    per_client = (  # (metric, kind, help, ClientInfo field)
        ("client_online", "gauge", "1 when the client is online.", "online"),
        ("client_in_sync", "gauge", "1 when the client's last fingerprint matches.", "in_sync"),
        ("client_rounds_participated", "gauge", "Accepted updates of the client.", "rounds_participated"),
        ("client_peak_memory_bytes", "gauge", "Client's peak memory while training.", "peak_memory_bytes"),
        (
            "client_inference_peak_memory_bytes",
            "gauge",
            "Client's peak memory of one plain forward pass (0 = not reported).",
            "inference_peak_memory_bytes",
        ),
        ("client_bytes_up_total", "counter", "Bytes the client sent.", "bytes_up"),
        ("client_bytes_down_total", "counter", "Bytes sent to the client.", "bytes_down"),
    )
    for name, kind, help_, attr in per_client:
        fam = family(name, kind, help_)
        for c in clients:
            fam.add(getattr(c, attr), client_id=c.client_id)
    loss = family("client_last_loss", "gauge", "Mean training loss of the client's last update.")
    for c in clients:
        if c.last_loss is not None:
            loss.add(c.last_loss, client_id=c.client_id)

    trained = [r.mean_loss for r in sorted(finished, key=lambda r: r.round_id) if r.mean_loss is not None]
    train = family("train_loss", "gauge", "Mean training loss of the latest closed round.")
    if trained:
        train.add(trained[-1])
    evaluated = sorted((r for r in rounds if EVAL_LOSS in r.eval_metrics), key=lambda r: r.round_id)
    for name, key, help_ in (
        ("eval_loss", EVAL_LOSS, "Held-out loss of the global model at the latest evaluated round."),
        ("eval_exact_match", EXACT_MATCH, "Exact match (fraction) at the latest evaluated round."),
        ("eval_round", None, "The latest evaluated round (0 = the initial model)."),
    ):
        fam = family(name, "gauge", help_)
        if evaluated:
            latest = evaluated[-1]
            fam.add(latest.round_id if key is None else latest.eval_metrics.get(key, math.nan))
    return "\n".join(line for fam in fams for line in fam.render()) + "\n"
