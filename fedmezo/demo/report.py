"""What the demo measures and prints: held-out loss and exact match before and after, bytes, time.

The "FedAvg with full tensors" figure is what the same rounds would have cost if every participant
downloaded the global trainable weights and uploaded its local ones in fp32: 2 × 4 bytes × trainable
parameters per participant per round. fedmezo sends the round's seeds' scalars instead.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedmezo.data import EvalResult, Example

__all__ = [
    "FP32_BYTES",
    "Summary",
    "eval_subset",
    "fedavg_bytes",
    "format_bytes",
    "format_duration",
]

FP32_BYTES = 4


def eval_subset(examples: Sequence[Example], size: int, seed: int) -> list[Example]:
    """A fixed random sample of the held-out set: every category shows up, and before/after compare."""
    if size >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), size)


def fedavg_bytes(trainable_params: int, participations: int) -> int:
    """Bytes FedAvg moves for `participations` (client, round) pairs: full fp32 weights down and up."""
    return 2 * FP32_BYTES * trainable_params * participations


def format_bytes(num: float) -> str:
    """1023 B, 14.2 KiB, 3.1 GiB: binary units, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.3g} {unit}"
        num /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@dataclass
class Summary:
    """Everything the demo reports; written to summary.json as well as printed."""

    model: str
    mode: str
    clients: int
    rounds: int
    local_steps: int
    lr: float
    eps: float
    batch_size: int
    estimator: str = "mezo"
    perturbations: int = 1
    forward_passes: int = 0  # per client over the run (the schedule's budget)
    trainable_params: int = 0  # as the server reports it (RunConfig.trainable_params)
    eval_examples: int = 0
    before: EvalResult | None = None  # the server's evaluation of θ_0
    after: EvalResult | None = None  # ... and of the final model
    round_losses: list[float | None] = field(default_factory=list)
    participations: int = 0  # accepted (client, round) updates
    bytes_on_wire: int = 0  # up + down, as the server counted them
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    wall_clock_s: float = 0.0
    training_s: float = 0.0
    export_dir: str = ""
    dashboard_url: str = ""

    @property
    def fedavg_bytes(self) -> int:
        return fedavg_bytes(self.trainable_params, self.participations)

    @property
    def loss_dropped(self) -> bool:
        return self.after is not None and self.before is not None and self.after.loss < self.before.loss

    def to_json(self) -> str:
        doc = asdict(self)
        doc["fedavg_bytes"] = self.fedavg_bytes
        doc["loss_dropped"] = self.loss_dropped
        return json.dumps(doc, indent=2, sort_keys=True)

    def write(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")

    def lines(self) -> list[str]:
        """The summary block printed at the end of the demo."""
        ratio = self.fedavg_bytes / self.bytes_on_wire if self.bytes_on_wire else float("nan")
        before, after = self.before, self.after
        out = [
            f"training: {self.estimator} (P = {self.perturbations}, lr {self.lr:g}) on {self.mode} "
            f"parameters, {self.rounds} rounds x {self.local_steps} steps = {self.forward_passes} forward "
            "passes per client",
            f"held-out evaluation ({self.eval_examples} examples)   before    after",
            f"  loss                                 {_cell(before, 'loss')}  {_cell(after, 'loss')}",
            f"  exact match                          {_cell(before, 'exact_match')}  "
            f"{_cell(after, 'exact_match')}",
            f"bytes on the wire: {format_bytes(self.bytes_on_wire)} for {self.participations} client "
            f"updates ({self.rounds} rounds x {self.clients} clients)",
            f"FedAvg with full fp32 tensors ({self.trainable_params:,} trainable parameters) would send "
            f"{format_bytes(self.fedavg_bytes)}: {ratio:,.0f}x more",
        ]
        if self.peak_memory_bytes:
            peaks = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(self.peak_memory_bytes.items()))
            out.append(f"peak memory while training: {peaks}")
        out.append(
            f"wall-clock: {format_duration(self.wall_clock_s)} in all, "
            f"{format_duration(self.training_s)} of federated training"
        )
        if self.export_dir:
            out.append(f"global model exported to {self.export_dir}")
        return out


def _cell(result: EvalResult | None, metric: str) -> str:
    """One right-aligned table cell: a loss, a percentage, or '-' when not measured."""
    if result is None:
        return "      -"
    return f"{result.loss:7.4f}" if metric == "loss" else f"{result.exact_match:7.1%}"
