"""`fedmezo simulate --ray`: the clients on Ray actors of a real local Ray instance started by the test.

The run must be the in-process simulation's, round for round (same fingerprints, losses and scalars'
effect), and each actor's replica must follow the driver's (checked inside the pool every round).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from fedmezo.cli.main import main as cli_main
from fedmezo.fl.errors import ConfigError
from fedmezo.sim import SimResult, Simulation, load_sim_config

ray = pytest.importorskip("ray", reason="Ray is a dev dependency: `make install` has it")

BASE: dict[str, Any] = {
    "model": "tiny-random",
    "batch_size": 2,
    "max_length": 32,
    "lr": 3e-4,
    "lr_spread": 0.0,
    "eval_limit": 8,
}


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """One local Ray instance for the module (starting one costs seconds); the pool reuses it."""
    ray.init(num_cpus=2, object_store_memory=128 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def simulate(**flags: Any) -> SimResult:
    config, options = load_sim_config({**BASE, **flags}, env={})
    return Simulation(config, options, exact_match=False).run(progress=False)


TIMINGS = {"client_seconds", "server_seconds", "round_seconds", "peak_memory_bytes"}


def _same_rounds(a: SimResult, b: SimResult) -> None:
    """Every round's record but its timings and memory: fingerprint, losses, lrs, bytes, forwards."""
    assert len(a.rounds) == len(b.rounds)
    for x, y in zip(a.rounds, b.rounds, strict=True):
        here, there = (
            json.dumps({k: v for k, v in asdict(r).items() if k not in TIMINGS}, sort_keys=True)
            for r in (x, y)
        )
        assert here == there, f"round {x.round_id}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "shape",
    [
        {"estimator": "mezo", "lr_strategy": "model-diff", "lr_spread": 1e-4},  # history-driven lrs
        {"estimator": "fzoo", "perturbations": 3, "seed_scheme": "shared"},
    ],
    ids=["mezo-model-diff", "fzoo-shared"],
)
def test_ray_actors_end_every_round_on_the_in_process_fingerprint(
    local_ray: Any, shape: dict[str, Any]
) -> None:
    flags = {**shape, "num_clients": 5, "rounds": 3, "local_steps": 2, "clients_per_round": 4}
    here = simulate(**flags)
    on_ray = simulate(**flags, ray="local", ray_workers=2)
    _same_rounds(here, on_ray)
    assert here.rounds[-1].fingerprint != here.rounds[0].fingerprint  # it trained
    assert local_ray.is_initialized()  # the pool used the running instance and left it running


@pytest.mark.timeout(600)
def test_a_run_stopped_in_process_resumes_on_ray_actors(local_ray: Any, tmp_path: Path) -> None:
    """The actors start from the stored θ (not θ_0), and the run ends where the uninterrupted one does."""
    flags = {"estimator": "fzoo", "perturbations": 3, "num_clients": 4, "rounds": 3, "local_steps": 2}
    config, options = load_sim_config({**BASE, **flags, "resume_dir": str(tmp_path)}, env={})

    def stop(record: Any) -> None:
        if record.round_id == 1:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        Simulation(config, options, exact_match=False).run(progress=False, on_round=stop)
    resumed = simulate(**flags, resume_dir=str(tmp_path), ray="local", ray_workers=2)
    _same_rounds(simulate(**flags), resumed)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_hundred_clients_on_local_ray(local_ray: Any, tmp_path: Path) -> None:
    """Issue #15: 100 simulated clients through `fedmezo simulate --ray`, every round on the actors'
    common fingerprint (the pool checks it), equal to the in-process run's final model."""
    out = tmp_path / "rounds.jsonl"
    flags = {**BASE, "num_clients": 100, "rounds": 2, "local_steps": 1, "clients_per_round": 100}
    argv = ["simulate", "--no-progress", "--ray=local", "--ray-workers=2", f"--output={out}"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    assert cli_main(argv) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 3  # the run header, round 0 and two rounds
    here = simulate(**{k: v for k, v in flags.items() if k not in BASE})
    assert lines[-1].count(here.rounds[-1].fingerprint) == 1


def test_ray_refuses_the_full_tensor_baselines_and_bad_resources() -> None:
    with pytest.raises(ConfigError, match="ray runs method fedmezo only"):
        load_sim_config({**BASE, "method": "fedavg", "ray": "local"}, env={})
    with pytest.raises(ConfigError, match="ray_cpus_per_worker > 0"):
        load_sim_config({**BASE, "ray": "local", "ray_cpus_per_worker": 0}, env={})
    with pytest.raises(ConfigError, match="needs device cuda"):
        load_sim_config({**BASE, "ray": "local", "ray_gpus_per_worker": 0.5}, env={})
