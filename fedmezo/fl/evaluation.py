"""Server-side evaluation of the global model: held-out loss and exact match after rounds.

The canonical replica is evaluated with `fedmezo.data.evaluate` on the first `eval_limit` examples of
`--eval-data`: after round 0 (the initial model, so "before" exists), after every `eval_every`-th
round and after the last one. The results are stored as the round's metrics under the names the
dashboard reads: `eval_loss` (token-mean cross-entropy of the response tokens) and `exact_match`
(a fraction in [0, 1]), plus `eval_examples`.

`Evaluator.evaluate` is blocking and only reads the replica; the coordinator runs it in a worker
thread while holding the replica lock, after the round's transaction committed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmezo.data import DataError, Example, evaluate, read_jsonl
from fedmezo.fl.config import RunConfig
from fedmezo.fl.errors import ConfigError
from fedmezo.fl.replica import Replica

__all__ = ["EVAL_BATCH_SIZE", "EVAL_EXAMPLES", "EVAL_LOSS", "EXACT_MATCH", "EvalOutcome", "Evaluator"]

EVAL_BATCH_SIZE = 8  # examples per forward/generate batch; the server holds one replica, this fits it
EVAL_LOSS = "eval_loss"  # metric names: RoundInfo.eval_metrics keys the dashboard reads
EXACT_MATCH = "exact_match"
EVAL_EXAMPLES = "eval_examples"


@dataclass(frozen=True)
class EvalOutcome:
    version: int
    metrics: dict[str, float]
    seconds: float

    def summary(self) -> str:
        return (
            f"eval_loss {self.metrics[EVAL_LOSS]:.4f}, exact_match {self.metrics[EXACT_MATCH]:.3f} "
            f"on {int(self.metrics[EVAL_EXAMPLES])} examples in {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class Evaluator:
    """What to evaluate on and when; `evaluate` does the (slow, blocking) work."""

    examples: Sequence[Example]
    every: int = 1
    max_length: int = 256
    max_new_tokens: int = 8

    @classmethod
    def from_config(cls, config: RunConfig) -> Evaluator | None:
        """None when evaluation is off (no eval_data); ConfigError when the file cannot be used."""
        if not config.eval_data:
            return None
        try:
            examples = read_jsonl(Path(config.eval_data))
        except (DataError, OSError) as exc:
            raise ConfigError(f"eval_data {config.eval_data}: {exc}") from exc
        if not examples:
            raise ConfigError(f"eval_data {config.eval_data} holds no examples")
        return cls(
            examples=tuple(examples[: config.eval_limit]),
            every=config.eval_every,
            max_length=config.max_length,
            max_new_tokens=config.eval_max_new_tokens,
        )

    def due(self, version: int, total_rounds: int) -> bool:
        """Whether the model at `version` is evaluated: the initial model, every K-th, the last."""
        return version == 0 or version % self.every == 0 or version == total_rounds

    def evaluate(self, replica: Replica) -> EvalOutcome:
        """Evaluate the replica as it is now (blocking; the caller keeps it from changing meanwhile)."""
        start = time.perf_counter()
        result = evaluate(
            replica.loaded_model(),
            replica.tokenizer,
            self.examples,
            batch_size=EVAL_BATCH_SIZE,
            max_length=self.max_length,
            max_new_tokens=self.max_new_tokens,
            progress=False,
        )
        metrics = {
            EVAL_LOSS: float(result.loss),
            EXACT_MATCH: float(result.exact_match),
            EVAL_EXAMPLES: float(result.num_examples),
        }
        return EvalOutcome(replica.version, metrics, time.perf_counter() - start)
