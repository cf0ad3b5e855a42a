"""Configuration of `fedmezo simulate`: the run's keys plus a few simulation-only options.

A sweep is only worth something if its settings mean what they mean in a real federation, so the
run keys (`lr`, `local_steps`, `lr_strategy`, …) are `RunConfig`'s, the very fields the server's
config is made of: same names, defaults, help and validation, read from the same TOML file (`[server]`
table) with the same `FEDMEZO_*` environment names. What only a simulation has (how many clients,
which baseline, how to split the data) lives in `SimOptions` and in a `[simulate]` table.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

from fedmezo import settings
from fedmezo.data.partition import Scheme
from fedmezo.fl.config import RunConfig
from fedmezo.fl.errors import ConfigError
from fedmezo.settings import setting

__all__ = [
    "DEMO_DATA",
    "METHODS",
    "NOT_SIMULATED",
    "OPTIMIZERS",
    "RUN_KEYS",
    "SERVER_PROCESS_KEYS",
    "SimOptions",
    "add_arguments",
    "load_sim_config",
]

# Run fields a simulation has no use for: every sampled client answers at once (no stragglers to wait
# for, quorum or deadline to reach); `resume_dir` keeps its progress after every round, so it needs no
# checkpoint interval. Not offered as flags.
NOT_SIMULATED = frozenset({"min_clients", "quorum", "deadline_s", "max_extensions", "checkpoint_every"})
RUN_KEYS = tuple(f.name for f in fields(RunConfig) if f.name not in NOT_SIMULATED)
# The server's own process keys may sit in a shared `[server]` table: read and ignored, since a
# simulation listens on nothing. Listed here because fedmezo/ must not import the server; a test
# keeps this equal to ServerConfig's fields beyond RunConfig's.
SERVER_PROCESS_KEYS = frozenset(
    {
        "host",
        "port",
        "state_dir",
        "device",
        "tokens",
        "insecure",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "heartbeat_interval_s",
        "heartbeat_timeout_s",
        "max_wait_s",
        "wake_chunk",
        "rate_limit_rps",
        "rate_limit_burst",
        "max_streams_per_client",
        "max_clients",
        "unauthenticated_rps",
        "unauthenticated_burst",
        "max_streams_per_connection",
        "status_readers",
        "status_publish_s",
    }
)
METHODS = ("fedmezo", "fedmezo-full", "fedavg")
OPTIMIZERS = ("sgd", "adamw")
DEMO_DATA = "demo"


@dataclass(frozen=True)
class SimOptions:
    """What a simulation adds to the server's run keys."""

    method: str = setting(
        "fedmezo",
        "fedmezo: seeds and scalars (what the daemons do) | fedmezo-full: the same MeZO steps, local "
        "models averaged as full tensors (FedMeZO's reference code) | fedavg: backprop local steps, "
        "full tensors averaged",
    )
    num_clients: int = setting(3, "simulated clients; each gets one part of the training data")
    data: str = setting(DEMO_DATA, "training JSONL (Alpaca/Dolly fields), or 'demo' for the built-in dataset")
    partition: str = setting(
        "category", "iid | category (non-IID: each client a few task categories) | dirichlet"
    )
    dirichlet_alpha: float = setting(
        0.5, "Dirichlet concentration of partition=dirichlet (smaller = more skewed)"
    )
    optimizer: str = setting(
        "adamw", "local optimizer of method=fedavg: sgd | adamw (fresh state every round)"
    )
    fedavg_lr: float = setting(
        1e-5, "learning rate of method=fedavg's optimizer (backprop needs its own scale)"
    )
    device: str = setting("cpu", "torch device the clients and the server's replica share")
    compile: str = setting(
        "auto",
        "auto | on | off: the ZO clients' forwards as CUDA graphs on bucket-padded batches, as the "
        "client daemon's --compile (same bits as off); auto = on with CUDA; on needs CUDA",
    )
    output: str = setting("", "write one JSON object per evaluated round to this JSONL file (empty = none)")
    resume_dir: str = setting(
        "",
        "keep the run's progress in this folder (θ and the records after every round); rerun with the "
        "same settings to continue after the last finished round (empty = none)",
    )
    ray: str = setting(
        "",
        "train the clients on Ray actors (method fedmezo): local = start a Ray instance here, auto = the "
        "cluster of `ray start`, or its address (HOST:PORT, ray://HOST:10001); empty = in this process",
    )
    ray_workers: int = setting(
        0,
        "Ray actors, each one model replica training the clients dealt to it; 0 = as many as the "
        "cluster's CPUs allow at ray-cpus-per-worker, at most the clients per round",
    )
    ray_cpus_per_worker: float = setting(1.0, "CPUs each Ray actor reserves (and its torch threads)")
    ray_gpus_per_worker: float = setting(
        0.0, "GPU share each Ray actor reserves (0.25: four actors per GPU); needs device cuda"
    )
    ray_object_store_mb: int = setting(
        256, "object store of a local Ray instance, MiB (only seeds, scalars and the data travel)"
    )

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
        if self.compile not in ("auto", "on", "off"):
            problems.append("compile must be auto, on or off")
        elif self.compile == "on" and not self.device.startswith("cuda"):
            problems.append("compile on needs a cuda device (CUDA graphs)")
        if not (math.isfinite(self.fedavg_lr) and self.fedavg_lr > 0):
            problems.append("fedavg_lr must be a finite number > 0")
        if not (math.isfinite(self.dirichlet_alpha) and self.dirichlet_alpha > 0):
            problems.append("dirichlet_alpha must be a finite number > 0")
        if self.ray and self.method != "fedmezo":
            problems.append("ray runs method fedmezo only (the baselines move full tensors)")
        if self.ray_workers < 0 or not (self.ray_cpus_per_worker > 0) or not (self.ray_gpus_per_worker >= 0):
            problems.append("ray_workers must be >= 0, ray_cpus_per_worker > 0, ray_gpus_per_worker >= 0")
        elif self.ray_gpus_per_worker > 0 and not self.device.startswith("cuda"):
            problems.append("ray_gpus_per_worker needs device cuda")
        if self.ray_object_store_mb < 0:
            problems.append("ray_object_store_mb must be >= 0")
        if self.data != DEMO_DATA and not Path(self.data).exists():
            problems.append(f"data {self.data!r} does not exist (JSONL file, directory of them, or 'demo')")
        if problems:
            raise ConfigError("invalid simulate config: " + "; ".join(problems))
        return self


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per run key (exactly the server's flag) and per simulation option."""
    settings.add_config_argument(parser, "the server's [server] table or top level, plus [simulate]")
    run = parser.add_argument_group("run (the server's keys: flags > FEDMEZO_* env > --config TOML)")
    settings.add_arguments(run, RunConfig, RUN_KEYS)
    settings.add_arguments(parser.add_argument_group("simulation"), SimOptions)


def load_sim_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    toml_path: str | Path | None = None,
) -> tuple[RunConfig, SimOptions]:
    """Merge TOML < env < flags into a validated RunConfig and SimOptions.

    The run keys come from the file's `[server]` table (or top level), where the server's process keys
    and the run keys a simulation ignores are accepted and unused; the options come from `[simulate]`
    and flags only (`FEDMEZO_DATA`, `FEDMEZO_DEVICE` are a client's or server's, not a simulation's).
    """
    env = os.environ if env is None else env
    path = settings.config_path(toml_path, flags, env)
    doc = settings.read_toml(path) if path else {}
    server_table, server_source = settings.toml_table(doc, "server", path or "")
    sim_table, sim_source = settings.toml_table(doc, "simulate", path or "", top_level=False)
    run = settings.collect(
        RunConfig,
        toml=server_table,
        toml_source=server_source,
        env=env,
        flags=flags,
        names=RUN_KEYS,
        ignore=SERVER_PROCESS_KEYS,
    )
    options = settings.collect(SimOptions, toml=sim_table, toml_source=sim_source, flags=flags)
    return RunConfig(**run).validate(), SimOptions(**options).validate()
