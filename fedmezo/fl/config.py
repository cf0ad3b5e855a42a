"""The run's configuration: what the server, its clients and `fedmezo simulate` must all agree on.

`RunConfig` is the run part of the server's configuration (the server adds its process settings in a
subclass) and the whole of a simulation's. Valid strategy and weighting names are the registries'
keys, so a new strategy is one row in `fedmezo.fl.lr` and nothing here changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self, get_args

import numpy as np

from fedmezo.fl.aggregation import WEIGHT_RULES
from fedmezo.fl.errors import ConfigError
from fedmezo.fl.lr import SCHEDULES, STRATEGIES
from fedmezo.fl.seeds import SEED_SCHEMES, SeedPlan
from fedmezo.settings import setting
from fedmezo.trainable import TrainMode
from fedmezo.zo.estimators import ESTIMATORS

__all__ = [
    "DEFAULTS_BEFORE_FZOO",
    "ESTIMATOR_NAMES",
    "FP32_FIELDS",
    "FREEZE_AUTO",
    "LR_SCHEDULES",
    "LR_STRATEGIES",
    "MAX_LENGTH",
    "MAX_MAX_LENGTH",
    "MEASURED_LR",
    "MIN_MAX_LENGTH",
    "MODES",
    "RUN_DEFINING_FIELDS",
    "RUN_FIELDS_BEFORE_THEY_EXISTED",
    "WEIGHTINGS",
    "RunConfig",
    "fp32",
]

MODES: tuple[str, ...] = get_args(TrainMode)
LR_STRATEGIES = tuple(STRATEGIES)
LR_SCHEDULES = SCHEDULES
WEIGHTINGS = tuple(WEIGHT_RULES)
MAX_LENGTH = 256
MIN_MAX_LENGTH = 8  # room for a chat template's few special tokens plus an answer
MAX_MAX_LENGTH = 1 << 20
ESTIMATOR_NAMES = tuple(ESTIMATORS)
# Changing these would make the stored deltas meaningless (their seeds are derived from them), so a
# restart must keep them.
RUN_DEFINING_FIELDS = (
    "model", "mode", "lora_rank", "lora_alpha", "run_seed", "seed_scheme", "perturbations", "base_dtype",
    "weights", "freeze",
)  # fmt: skip
# The training defaults before issue #13 made the best measured ones (FZOO's) the defaults: two-point
# MeZO, one scalar per local step, every weight trained. The one place they are written: benchmarks whose
# recorded numbers ran with them and tests of the protocol's mechanics name them from here.
DEFAULTS_BEFORE_FZOO: dict[str, object] = {
    "estimator": "mezo", "perturbations": 1, "seed_scheme": "per-client", "local_steps": 20, "lr": 2e-6,
    "lr_schedule": "constant", "freeze": "", "mode": "full",
}  # fmt: skip
# What a run-defining field meant in a state dir written before the field existed: its default then,
# which is not always today's. A restart compares with it.
RUN_FIELDS_BEFORE_THEY_EXISTED: dict[str, object] = {
    **{k: DEFAULTS_BEFORE_FZOO[k] for k in ("seed_scheme", "perturbations", "freeze")},
    "base_dtype": "fp32", "weights": "fp32",
}  # fmt: skip
BASE_DTYPE_NAMES = ("fp32", "bf16", "fp16", "int8", "nf4")  # fedmezo.trainable.BASES, without torch
WEIGHT_FORMAT_NAMES = ("fp32", "bf16-sr")  # fedmezo.zo.weights.WEIGHT_FORMATS, without torch
# Sent to clients as fp32 and used there as-is: rounded once here, so the server and a simulation
# compute with exactly the value a client trains with.
FP32_FIELDS = ("eps", "clip")
_AT_LEAST_ONE = (
    "rounds",
    "local_steps",
    "min_clients",
    "batch_size",
    "checkpoint_every",
    "eval_every",
    "eval_limit",
    "eval_max_new_tokens",
)


def fp32(value: float) -> float:
    """The fp32 nearest to `value`, as a Python float (overflow gives inf, which validation refuses)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


# The `freeze` keyword for the model's input embedding (fedmezo.trainable.INPUT_EMBEDDINGS, which
# resolves it; kept here as text so this module stays free of torch).
FREEZE_INPUT_EMBEDDINGS = "input-embeddings"
LORA_PART = "lora_"  # every adapter weight's name holds it (PEFT's lora_A / lora_B)
FROZEN_LORA_A = "lora_A"  # LoRA-FA: every A factor keeps its seeded init, only B trains
# `freeze = auto` (the default) is what each mode's best measured run froze (benchmarks/RESULTS.md,
# issue #13): the input embedding in full mode, the LoRA A factors in LoRA mode.
FREEZE_AUTO = "auto"
AUTO_FREEZE: dict[str, str] = {"full": FREEZE_INPUT_EMBEDDINGS, "lora": FROZEN_LORA_A}
# `lr = 0` (the default) takes the rate the estimator sweep accepted on smollm2-135m for the estimator,
# mode and frozen parts (benchmarks/RESULTS.md, issue #13: 4 candidates per method, 360-forward pilots, a
# rate kept only if it held over 1,008 forward passes per client). The two `freeze = auto` rows ran with
# the cosine schedule, the others at a constant rate (a cosine from the same start never steps further).
# A combination the sweep never ran has no rate: such a run must name its own.
MEASURED_LR: dict[tuple[str, str, str], float] = {
    ("fzoo", "lora", FROZEN_LORA_A): 1e-1,
    ("fzoo", "lora", ""): 3e-2,
    ("fzoo", "full", FREEZE_INPUT_EMBEDDINGS): 1e-2,
    ("fzoo", "full", ""): 3e-3,
    ("mezo", "full", ""): 3e-5,
    ("adamezo", "full", ""): 1e-3,
}


def freeze_parts(text: str) -> tuple[str, ...]:
    """The name parts of a `freeze` setting ("embed_tokens, norm" -> ("embed_tokens", "norm"))."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def measured_lr(estimator: str, mode: str, freeze: str) -> float:
    """MEASURED_LR's rate for this run (`freeze` as parts, in any order), or 0.0 where none was measured."""
    parts = ",".join(sorted(freeze_parts(freeze)))
    return MEASURED_LR.get((estimator, mode, parts), 0.0)


def measured_settings() -> str:
    """MEASURED_LR's rows in words, for errors that ask a run to name its rate."""
    return ", ".join(f"{e} in mode {m} with freeze {f!r}" for e, m, f in MEASURED_LR)


@dataclass(frozen=True)
class RunConfig:
    """One federated run. Frozen: eps and clip stay the fp32 values every participant uses."""

    config_name: ClassVar[str] = "run"  # names the config in validation errors

    # --- the run (stored at first start; a restart must agree) ---
    model: str = setting(
        "tiny-random", "model name for fedmezo.models.load_model (every client loads the same)"
    )
    mode: str = setting(
        "lora",
        "lora (the default): train LoRA adapters of the frozen base (with freeze auto: only their B "
        "factors, LoRA-FA); full: train every weight",
    )
    lora_rank: int = setting(8, "LoRA rank (mode=lora)")
    lora_alpha: float = setting(16.0, "LoRA alpha (mode=lora); 2x rank is the usual scale")
    base_dtype: str = setting(
        "fp32",
        "fp32 | bf16 | fp16 | int8 | nf4: the frozen base weights (mode=lora; the adapters stay fp32): bf16 "
        "halves the model's memory, int8 and nf4 (bitsandbytes) quantize its linear layers to 8 and 4 bits; "
        "part of the manifest, so every replica runs the same base",
    )
    weights: str = setting(
        "fp32",
        "fp32 | bf16-sr: the trained weights (mode=full); bf16-sr keeps them in bf16 (2 bytes per parameter, "
        "half of fp32) and rounds each round delta stochastically (once per weight) so small updates "
        "survive in expectation; "
        "part of the manifest",
    )
    freeze: str = setting(
        FREEZE_AUTO,
        "comma-separated parts of weight names kept frozen; auto (the default) = what the mode's best "
        "measured run froze (RESULTS.md): lora_A in mode lora (the A factors keep their seeded init and "
        "only B trains: LoRA-FA), input-embeddings in mode full (the keyword for the model's input "
        "embedding whatever its name, tied to the output head in SmolLM2 and Llama-style models); empty = "
        "train every weight of the mode; mode lora takes adapter parts only (the base is frozen anyway); "
        "part of the manifest",
    )
    rounds: int = setting(10, "total federated rounds")
    local_steps: int = setting(
        4,
        "local steps per client per round (tau); with fzoo's P = 8 that is 36 forward passes (the budget per "
        "round of the estimator sweep) and tau*P = 32 scalars each way, well under 1 KiB per client",
    )
    clients_per_round: int = setting(0, "clients sampled per round; 0 = use --fraction")
    fraction: float = setting(
        1.0, "fraction of online clients sampled per round (used when clients-per-round=0)"
    )
    min_clients: int = setting(1, "online clients needed before a round opens")
    quorum: float = setting(0.5, "fraction of selected clients whose updates close a round at its deadline")
    deadline_s: float = setting(600.0, "seconds a round waits for its selected clients (seconds)")
    max_extensions: int = setting(3, "times a round's deadline is extended without quorum before it aborts")
    lr: float = setting(
        0.0,
        "base learning rate eta_0, on the estimator's scale; 0 (the default) = the rate measured on "
        "smollm2-135m for the estimator, mode and freeze (docs/estimators.md: fzoo 1e-1 on LoRA-FA, 1e-2 "
        "in full mode with the input embedding frozen; mezo 3e-5, adamezo 1e-3 in full mode); a "
        "combination never measured must name its rate",
    )
    lr_spread: float = setting(1e-6, "personalized-LR spread delta (design section 4); must be < lr")
    lr_strategy: str = setting("frozen", " | ".join(LR_STRATEGIES))
    lr_schedule: str = setting(
        "cosine",
        "constant | cosine: eta_0 (and the spread) decay from round 1 to 0.1x at the last round",
    )
    eps: float = setting(1e-3, "MeZO perturbation scale epsilon; 1e-3 is the MeZO paper's default")
    estimator: str = setting(
        "fzoo",
        "zeroth-order estimator of a local step (docs/estimators.md): mezo (2P forwards) | "
        "fzoo (P + 1 forwards, normalised by the loss spread; its lr is on another scale) | "
        "adamezo (2P forwards, momentum over the last 8 steps' seeds, normalised step like fzoo's)",
    )
    perturbations: int = setting(
        8, "P: seeded perturbations (and uploaded scalars) per local step; fzoo's measured P is 8"
    )
    seed_scheme: str = setting(
        "shared",
        "per-client: every client its own seeds | shared: one set per round for every client (a "
        "round delta of tau*P coefficients whatever the number of clients)",
    )
    batch_size: int = setting(8, "examples per MeZO step on each client")
    aggregation: str = setting("examples", "client weights: examples (by local example count) | equal")
    clip: float = setting(0.0, "clip |projected grad| to this value on clients and at aggregation; 0 = off")
    outlier_k: float = setting(
        10.0,
        "reject a client whose scalar RMS > k x the round median (k >= 1; needs >= 3 clients); 0 = off",
    )
    norm_k: float = setting(
        10.0,
        "poisoning bound: scale a client's scalars down to RMS <= k x the run's typical RMS (lower "
        "median of the last rounds; k >= 1); 0 = off",
    )
    max_step: float = setting(
        0.1, "poisoning ceiling: |lr x scalar| (what one seed moves each weight) <= this; 0 = off"
    )
    run_seed: int = setting(0, "64-bit root of all derived seeds and of client sampling")
    checkpoint_every: int = setting(10, "rounds between safetensors checkpoints; bounds catch-up replay")
    max_length: int = setting(
        MAX_LENGTH,
        "tokens every example is truncated to, on clients (sent in the run config) and in evaluation; "
        "256 fits instruction data with short answers and keeps a CPU step fast",
    )
    # --- server-side evaluation of the global model (off without eval_data) ---
    eval_data: str = setting("", "held-out JSONL (Alpaca/Dolly fields) evaluated after rounds; empty = off")
    eval_every: int = setting(
        1, "evaluate after every K-th round (plus the initial model and the last round)"
    )
    eval_limit: int = setting(
        64, "evaluate the first N examples of eval_data; bounds the time one eval takes"
    )
    eval_max_new_tokens: int = setting(8, "greedy tokens generated per answer for exact match; short answers")

    def __post_init__(self) -> None:
        # Resolved here, so what is stored, compared on restart and sent to clients is always concrete.
        if self.freeze.strip() == FREEZE_AUTO:
            object.__setattr__(self, "freeze", AUTO_FREEZE.get(self.mode, ""))
        if self.lr == 0.0:  # stays 0 where nothing was measured; validation then asks for a rate
            object.__setattr__(self, "lr", measured_lr(self.estimator, self.mode, self.freeze))
        for name in FP32_FIELDS:
            value = getattr(self, name)
            try:
                rounded = fp32(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{name}: {value!r} is not a number") from exc
            object.__setattr__(self, name, rounded)

    def problems(self) -> list[str]:
        """Every invalid value or combination, one message each (a subclass adds its own)."""
        problems: list[str] = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}")
        if self.base_dtype not in BASE_DTYPE_NAMES:
            problems.append(f"base_dtype must be one of {BASE_DTYPE_NAMES}")
        elif self.base_dtype != "fp32" and self.mode != "lora":
            problems.append(
                "a base_dtype other than fp32 needs mode lora (full-parameter mode trains fp32 weights)"
            )
        if self.weights not in WEIGHT_FORMAT_NAMES:
            problems.append(f"weights must be one of {WEIGHT_FORMAT_NAMES}")
        elif self.weights != "fp32" and self.mode != "full":
            problems.append("weights bf16-sr needs mode full (LoRA adapters stay fp32; see base_dtype)")
        if self.freeze and not all(part.strip() for part in self.freeze.split(",")):
            problems.append("freeze must be comma-separated non-empty name parts, e.g. embed_tokens")
        elif self.mode == "lora" and not all(LORA_PART in part for part in freeze_parts(self.freeze)):
            problems.append(f"freeze in mode lora names adapter weights (parts with {LORA_PART!r}, e.g. "
                            "lora_A): the base is frozen already")  # fmt: skip
        if self.lr_strategy not in LR_STRATEGIES:
            problems.append(f"lr_strategy must be one of {LR_STRATEGIES}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}")
        if self.estimator not in ESTIMATOR_NAMES:
            problems.append(f"estimator must be one of {ESTIMATOR_NAMES}")
        if self.seed_scheme not in SEED_SCHEMES:
            problems.append(f"seed_scheme must be one of {SEED_SCHEMES}")
        if self.perturbations < 1:
            problems.append("perturbations must be >= 1")
        if self.aggregation not in WEIGHTINGS:
            problems.append(f"aggregation must be one of {WEIGHTINGS}")
        problems += [f"{name} must be >= 1" for name in _AT_LEAST_ONE if getattr(self, name) < 1]
        if not MIN_MAX_LENGTH <= self.max_length <= MAX_MAX_LENGTH:
            problems.append(f"max_length must be in {MIN_MAX_LENGTH}..{MAX_MAX_LENGTH} tokens")
        if self.eval_data and not Path(self.eval_data).is_file():
            problems.append(f"eval_data {self.eval_data!r} is not a file")
        if self.clients_per_round < 0:
            problems.append("clients_per_round must be >= 0")
        if not 0.0 < self.fraction <= 1.0:
            problems.append("fraction must be in (0, 1]")
        if self.clients_per_round > 0 and self.fraction != 1.0:
            problems.append("set either clients_per_round or fraction, not both")
        if not 0.0 < self.quorum <= 1.0:
            problems.append("quorum must be in (0, 1]")
        for name in ("deadline_s", "eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a finite number > 0")
        if self.lr == 0.0:  # `lr = 0` found no measured rate in __post_init__
            problems.append(f"lr: no measured rate for {self.estimator} in mode {self.mode} with freeze "
                            f"{self.freeze!r} (measured: {measured_settings()}); set lr")  # fmt: skip
        elif not (math.isfinite(self.lr) and self.lr > 0):
            problems.append("lr must be a finite number > 0")
        elif not (0.0 <= self.lr_spread < self.lr):
            problems.append("lr_spread must be in [0, lr) so every personalized lr stays positive")
        if self.clip < 0 or not math.isfinite(self.clip):
            problems.append("clip must be >= 0")
        if self.outlier_k != 0.0 and not self.outlier_k >= 1.0:
            problems.append("outlier_k must be 0 (off) or >= 1 (k < 1 would reject the median client)")
        if self.norm_k != 0.0 and not (math.isfinite(self.norm_k) and self.norm_k >= 1.0):
            problems.append("norm_k must be 0 (off) or a finite number >= 1 (k < 1 bounds the median client)")
        if not (math.isfinite(self.max_step) and self.max_step >= 0):
            problems.append("max_step must be a finite number >= 0 (0 = off)")
        if self.max_extensions < 0:
            problems.append("max_extensions must be >= 0")
        if not 0 <= self.run_seed < 2**64:
            problems.append("run_seed must be an unsigned 64-bit integer")
        return problems

    @property
    def seeds(self) -> SeedPlan:
        return SeedPlan(self.run_seed, self.seed_scheme, self.perturbations)

    def validate(self) -> Self:
        """Raise one ConfigError listing every problem, so a bad run never starts; returns self."""
        problems = self.problems()
        if problems:
            raise ConfigError(f"invalid {self.config_name} config: " + "; ".join(problems))
        return self
