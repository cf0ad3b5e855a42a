"""Configuration of `fedmezo simulate`: the server's run keys plus a few simulation-only options.

A sweep is only worth something if its settings mean what they mean in a real federation, so the
run keys (`lr`, `local_steps`, `lr_strategy`, …) are the server's own fields: same names, defaults,
help and validation, read from the same TOML file (`[server]` table) with the same `FEDMEZO_*`
environment names. What only a simulation has (how many clients, which baseline, how to split the
data) lives in `SimOptions` and in a `[simulate]` table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args

from fedmezo.data.partition import Scheme
from fedmezo.server.config import ENV_PREFIX, ServerConfig, coerce_field
from fedmezo.fl.errors import ConfigError

__all__ = [
    "DEMO_DATA",
    "METHODS",
    "OPTIMIZERS",
    "RUN_KEYS",
    "SimOptions",
    "add_arguments",
    "load_sim_config",
]

# The ServerConfig fields that define a run (everything but the process: host, port, TLS, state dir…).
RUN_KEYS = (
    "model",
    "mode",
    "lora_rank",
    "lora_alpha",
    "rounds",
    "local_steps",
    "clients_per_round",
    "fraction",
    "lr",
    "lr_spread",
    "lr_strategy",
    "eps",
    "batch_size",
    "aggregation",
    "clip",
    "outlier_k",
    "run_seed",
    "max_length",
    "eval_data",
    "eval_every",
    "eval_limit",
    "eval_max_new_tokens",
)
METHODS = ("fedmezo", "fedmezo-full", "fedavg")
OPTIMIZERS = ("sgd", "adamw")
DEMO_DATA = "demo"


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SimOptions:
    """What a simulation adds to the server's run keys."""

    method: str = _f(
        "fedmezo",
        "fedmezo: seeds and scalars (what the daemons do) | fedmezo-full: the same MeZO steps, local "
        "models averaged as full tensors (FedMeZO's reference code) | fedavg: backprop local steps, "
        "full tensors averaged",
    )
    num_clients: int = _f(3, "simulated clients; each gets one part of the training data")
    data: str = _f(DEMO_DATA, "training JSONL (Alpaca/Dolly fields), or 'demo' for the built-in dataset")
    partition: str = _f("category", "iid | category (non-IID: each client a few task categories) | dirichlet")
    dirichlet_alpha: float = _f(0.5, "Dirichlet concentration of partition=dirichlet (smaller = more skewed)")
    optimizer: str = _f("adamw", "local optimizer of method=fedavg: sgd | adamw (fresh state every round)")
    fedavg_lr: float = _f(1e-5, "learning rate of method=fedavg's optimizer (backprop needs its own scale)")
    device: str = _f("cpu", "torch device the clients and the server's replica share")
    output: str = _f("", "write one JSON object per evaluated round to this JSONL file (empty = none)")

    def validate(self) -> SimOptions:
        problems: list[str] = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {METHODS}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}")
        if self.partition not in get_args(Scheme):
            problems.append(f"partition must be one of {get_args(Scheme)}")
        if self.num_clients < 1:
            problems.append("num_clients must be >= 1")
        if not (math.isfinite(self.fedavg_lr) and self.fedavg_lr > 0):
            problems.append("fedavg_lr must be a finite number > 0")
        if not (math.isfinite(self.dirichlet_alpha) and self.dirichlet_alpha > 0):
            problems.append("dirichlet_alpha must be a finite number > 0")
        if self.data != DEMO_DATA and not Path(self.data).exists():
            problems.append(f"data {self.data!r} does not exist (JSONL file, directory of them, or 'demo')")
        if problems:
            raise ConfigError("invalid simulate config: " + "; ".join(problems))
        return self


_SERVER_FIELDS = {f.name: f for f in fields(ServerConfig)}
_SIM_FIELDS = {f.name: f for f in fields(SimOptions)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per run key (exactly the server's flag) and per simulation option."""
    parser.add_argument(
        "--config", default=argparse.SUPPRESS, help="TOML file: the server's [server] table plus [simulate]"
    )
    run = parser.add_argument_group("run (the server's keys: flags > FEDMEZO_* env > --config TOML)")
    for name in RUN_KEYS:
        f = _SERVER_FIELDS[name]
        run.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{f.metadata['help']} (default: {f.default})",
        )
    sim = parser.add_argument_group("simulation")
    for f in fields(SimOptions):
        sim.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{f.metadata['help']} (default: {f.default})",
        )


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def load_sim_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    toml_path: str | Path | None = None,
) -> tuple[ServerConfig, SimOptions]:
    """Merge TOML < env < flags; the server's process keys in the TOML are accepted and ignored.

    The ServerConfig comes back validated as the server would validate it (plaintext assumed: a
    simulation listens on nothing).
    """
    flags = dict(flags or {})
    env = os.environ if env is None else env
    toml_path = toml_path or flags.pop("config", None)
    run_values: dict[str, Any] = {}
    sim_values: dict[str, Any] = {}
    if toml_path:
        data = _read_toml(toml_path)
        server_table = data.get("server", {k: v for k, v in data.items() if not isinstance(v, dict)})
        for key, value in server_table.items():
            name = key.replace("-", "_")
            if name not in _SERVER_FIELDS:
                raise ConfigError(f"unknown key {key!r} in {toml_path}")
            if name in RUN_KEYS:
                run_values[name] = value
        for key, value in data.get("simulate", {}).items():
            name = key.replace("-", "_")
            if name not in _SIM_FIELDS:
                raise ConfigError(f"unknown key {key!r} in [simulate] of {toml_path}")
            sim_values[name] = value
    for name in RUN_KEYS:
        if (value := env.get(ENV_PREFIX + name.upper())) is not None:
            run_values[name] = value
    for name, value in flags.items():
        if value is None:
            continue
        if name in RUN_KEYS:
            run_values[name] = value
        elif name in _SIM_FIELDS:
            sim_values[name] = value
    run = {n: coerce_field(n, _SERVER_FIELDS[n].type, v) for n, v in run_values.items()}
    sim = {n: coerce_field(n, _SIM_FIELDS[n].type, v) for n, v in sim_values.items()}
    try:
        config = dataclasses.replace(ServerConfig(insecure=True), **run).validate()
    except ConfigError as exc:
        raise ConfigError(
            str(exc).replace("invalid server config", "invalid simulate config (run keys)")
        ) from exc
    return config, dataclasses.replace(SimOptions(), **sim).validate()
