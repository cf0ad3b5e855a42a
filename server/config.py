"""Server configuration: one dataclass; TOML file < `FEDMEZO_*` environment < command-line flags.

Every field documents its meaning, unit and why its default; `validate` rejects invalid combinations
at load time so a bad run never starts. `add_arguments` derives the flags from the fields, so the CLI,
the TOML keys (`[server]` table or top level) and the environment names can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedmezo.fl.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_TIMEOUT_S",
    "MAX_LENGTH",
    "ServerConfig",
    "add_arguments",
    "load_config",
]

logger = logging.getLogger("fedmezo.server.config")

ENV_PREFIX = "FEDMEZO_"
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TIMEOUT_S = 30.0
MAX_LENGTH = 256
MIN_MAX_LENGTH = 8  # room for a chat template's few special tokens plus an answer
MAX_MAX_LENGTH = 1 << 20
RATE_LIMIT_RPS = 50.0
RATE_LIMIT_BURST = 500  # a client's start-up catch-up (a delta stream, a report, a few polls) fits easily
MAX_STREAMS_PER_CLIENT = 8
MAX_CLIENTS = 10_000
LR_STRATEGIES = ("frozen", "random", "round-wise", "five-round", "model-diff")
AGGREGATIONS = ("examples", "equal")
MODES = ("full", "lora")


def _f(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


@dataclass
class ServerConfig:
    """Everything `fedmezo server` needs; the run-defining part is frozen into the state dir."""

    # --- the run (stored at first start; a restart must agree) ---
    model: str = _f("tiny-random", "model name for fedmezo.models.load_model (every client loads the same)")
    mode: str = _f("full", "full: train every weight; lora: train LoRA adapters only")
    lora_rank: int = _f(8, "LoRA rank (mode=lora)")
    lora_alpha: float = _f(16.0, "LoRA alpha (mode=lora); 2x rank is the usual scale")
    rounds: int = _f(10, "total federated rounds")
    local_steps: int = _f(20, "MeZO steps per client per round (tau); 20 keeps a round < 1 KiB/client")
    clients_per_round: int = _f(0, "clients sampled per round; 0 = use --fraction")
    fraction: float = _f(1.0, "fraction of online clients sampled per round (used when clients-per-round=0)")
    min_clients: int = _f(1, "online clients needed before a round opens")
    quorum: float = _f(0.5, "fraction of selected clients whose updates close a round at its deadline")
    deadline_s: float = _f(600.0, "seconds a round waits for its selected clients (seconds)")
    max_extensions: int = _f(3, "times a round's deadline is extended without quorum before it aborts")
    lr: float = _f(2e-6, "base learning rate eta_0; design section 6: 1e-6..5e-6 for full-parameter ZO")
    lr_spread: float = _f(1e-6, "personalized-LR spread delta (design section 4); must be < lr")
    lr_strategy: str = _f("frozen", "frozen | random | round-wise | five-round | model-diff")
    eps: float = _f(1e-3, "MeZO perturbation scale epsilon; 1e-3 is the MeZO paper's default")
    batch_size: int = _f(8, "examples per MeZO step on each client")
    aggregation: str = _f("examples", "client weights: examples (by local example count) | equal")
    clip: float = _f(0.0, "clip |projected grad| to this value on clients and at aggregation; 0 = off")
    outlier_k: float = _f(0.0, "reject a client whose scalar RMS > k x the round median (k >= 1); 0 = off")
    run_seed: int = _f(0, "64-bit root of all derived seeds and of client sampling")
    checkpoint_every: int = _f(10, "rounds between safetensors checkpoints; bounds catch-up replay")
    max_length: int = _f(
        MAX_LENGTH,
        "tokens every example is truncated to, on clients (sent in the run config) and in evaluation; "
        "256 fits instruction data with short answers and keeps a CPU step fast",
    )
    # --- server-side evaluation of the global model (off without eval_data) ---
    eval_data: str = _f("", "held-out JSONL (Alpaca/Dolly fields) evaluated after rounds; empty = off")
    eval_every: int = _f(1, "evaluate after every K-th round (plus the initial model and the last round)")
    eval_limit: int = _f(64, "evaluate the first N examples of eval_data; bounds the time one eval takes")
    eval_max_new_tokens: int = _f(8, "greedy tokens generated per answer for exact match; short answers")
    # --- this process ---
    host: str = _f("[::]", "address to listen on")
    port: int = _f(50051, "TCP port to listen on (0 = any free port, reported in the log)")
    state_dir: str = _f("fedmezo-state", "directory holding state.sqlite and checkpoints/")
    device: str = _f("cpu", "device of the server's canonical replica (cpu is enough: it only adds)")
    tokens: str = _f("", "tokens file, one client_id:token per line; empty = no client authentication")
    insecure: bool = _f(False, "serve plaintext (no TLS); required explicitly when no certificate is set")
    tls_cert: str = _f("", "PEM server certificate chain")
    tls_key: str = _f("", "PEM server private key", secret=True)
    tls_client_ca: str = _f("", "PEM CA that signs client certificates; set = mutual TLS required")
    heartbeat_interval_s: float = _f(HEARTBEAT_INTERVAL_S, "how often clients should heartbeat (seconds)")
    heartbeat_timeout_s: float = _f(HEARTBEAT_TIMEOUT_S, "silence after which a client is offline (s)")
    max_wait_s: float = _f(30.0, "cap of one GetTask long-poll (seconds); below typical proxy idle limits")
    # --- abuse limits, per client identity: a well-behaved client never comes near them ---
    rate_limit_rps: float = _f(
        RATE_LIMIT_RPS,
        "sustained requests per second one client (or status reader) may make, a token bucket; "
        "0 = off. A client makes about 5 per round plus a heartbeat every few seconds",
    )
    rate_limit_burst: int = _f(
        RATE_LIMIT_BURST, "requests one client may make at once before the sustained rate applies"
    )
    max_streams_per_client: int = _f(
        MAX_STREAMS_PER_CLIENT,
        "GetTask long-polls and streams one client may hold open at once; a client uses 2",
    )
    max_clients: int = _f(
        MAX_CLIENTS, "distinct client ids that may join; bounds what a flood of invented ids can store"
    )
    status_readers: str = _f(
        "",
        "comma-separated token identities that may list rounds, clients and events (every client's "
        "losses and devices); empty = every token holder. Run config and status stay open to all tokens",
    )

    def validate(self) -> ServerConfig:
        """Reject invalid values and combinations; returns self for chaining."""
        problems: list[str] = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}")
        if self.lr_strategy not in LR_STRATEGIES:
            problems.append(f"lr_strategy must be one of {LR_STRATEGIES}")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"aggregation must be one of {AGGREGATIONS}")
        for name in (
            "rounds",
            "local_steps",
            "min_clients",
            "batch_size",
            "checkpoint_every",
            "eval_every",
            "eval_limit",
            "eval_max_new_tokens",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
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
        for name in ("deadline_s", "lr", "eps", "heartbeat_interval_s", "heartbeat_timeout_s", "max_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a finite number > 0")
        if not (0.0 <= self.lr_spread < self.lr):
            problems.append("lr_spread must be in [0, lr) so every personalized lr stays positive")
        if self.clip < 0 or not math.isfinite(self.clip):
            problems.append("clip must be >= 0")
        if self.outlier_k != 0.0 and not self.outlier_k >= 1.0:
            problems.append("outlier_k must be 0 (off) or >= 1 (k < 1 would reject the median client)")
        if self.max_extensions < 0:
            problems.append("max_extensions must be >= 0")
        if not (math.isfinite(self.rate_limit_rps) and self.rate_limit_rps >= 0):
            problems.append("rate_limit_rps must be a finite number >= 0 (0 = off)")
        for name in ("rate_limit_burst", "max_streams_per_client", "max_clients"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.status_readers and not self.tokens:
            problems.append("status_readers names token identities: it needs a tokens file")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            problems.append("heartbeat_timeout_s must exceed heartbeat_interval_s")
        if not 0 <= self.run_seed < 2**64:
            problems.append("run_seed must be an unsigned 64-bit integer")
        if not 0 <= self.port < 65536:
            problems.append("port must be in 0..65535 (0 = any free port)")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            problems.append("tls_client_ca (mTLS) needs tls_cert and tls_key")
        if self.insecure and self.tls_cert:
            problems.append("insecure and tls_cert contradict each other")
        if not self.insecure and not self.tls_cert:
            problems.append("no TLS certificate: pass tls_cert/tls_key, or --insecure for plaintext")
        if problems:
            raise ConfigError("invalid server config: " + "; ".join(problems))
        return self

    def redacted(self) -> dict[str, Any]:
        """The effective config for logs, secrets replaced by '***'."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata.get("secret") and value else value
        return out

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def status_reader_ids(self) -> frozenset[str] | None:
        """Identities allowed to read per-client status views; None = every token holder."""
        ids = frozenset(x.strip() for x in self.status_readers.split(",") if x.strip())
        return ids or None


def coerce_field(name: str, kind: Any, value: Any) -> Any:
    """Convert a TOML/env/flag value to the field's type, with a message naming the field."""
    try:
        if kind in (bool, "bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind in (int, "int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind in (float, "float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {kind}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field (`--local-steps`); defaults are SUPPRESSed so only given flags override."""
    group = parser.add_argument_group("server configuration (flags > FEDMEZO_* env > --config TOML)")
    group.add_argument("--config", default=argparse.SUPPRESS, help="TOML file ([server] table or top level)")
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if f.type in (bool, "bool"):
            group.add_argument(
                flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_text
            )
        else:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help_text)


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    toml_path: str | Path | None = None,
) -> ServerConfig:
    """Merge TOML < env < flags into a validated ServerConfig and log it (secrets redacted)."""
    flags = dict(flags or {})
    env = os.environ if env is None else env
    toml_path = toml_path or flags.pop("config", None) or env.get(ENV_PREFIX + "CONFIG")
    known = {f.name: f for f in fields(ServerConfig)}
    values: dict[str, Any] = {}
    if toml_path:
        try:
            data = tomllib.loads(Path(toml_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {toml_path}: {exc}") from exc
        table = data.get("server", data)
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown key {key!r} in {toml_path}")
            values[name] = value
    for name in known:
        env_value = env.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    for name, value in flags.items():
        if name in known and value is not None:
            values[name] = value
    coerced = {name: coerce_field(name, known[name].type, value) for name, value in values.items()}
    config = dataclasses.replace(ServerConfig(), **coerced).validate()
    logger.info("effective config: %s", config.redacted())
    return config
