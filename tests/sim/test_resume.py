"""`fedmezo simulate --resume-dir`: a stopped run continues to exactly the uninterrupted run's result."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from fedmezo.cli.main import main as cli_main
from fedmezo.fl.errors import ConfigError
from fedmezo.sim import RoundResult, SimResult, Simulation, load_sim_config
from fedmezo.sim.resume import STATE_FILE

BASE: dict[str, Any] = {
    "model": "tiny-random",
    "batch_size": 2,
    "max_length": 32,
    "eval_limit": 8,
    "eval_every": 1,
    "num_clients": 3,
    "rounds": 4,
    "local_steps": 2,
    "lr": 3e-4,
    # the learning rates of round r read the history of rounds < r: a resume must restore it
    "lr_strategy": "model-diff",
    "lr_spread": 1e-4,
}
TIMINGS = {"client_seconds", "server_seconds", "round_seconds", "peak_memory_bytes"}


class Stop(Exception):
    """Raised from the round callback: the process 'dies' right after a round was saved."""


def simulate(on_round: Any = None, **flags: Any) -> SimResult:
    config, options = load_sim_config({**BASE, **flags}, env={})
    return Simulation(config, options, exact_match=False).run(progress=False, on_round=on_round)


def stop_after(round_id: int) -> Any:
    def check(record: RoundResult) -> None:
        if record.round_id == round_id:
            raise Stop

    return check


def records(result: SimResult) -> list[str]:
    """Every round's record but its timings: fingerprint, losses, lrs, bytes, forward passes."""
    return [
        json.dumps({k: v for k, v in asdict(r).items() if k not in TIMINGS}, sort_keys=True)
        for r in result.rounds
    ]


@pytest.fixture(scope="module")
def uninterrupted() -> SimResult:
    return simulate()


@pytest.mark.parametrize("stopped_after", [0, 2])
def test_a_stopped_run_continues_to_the_uninterrupted_result(
    uninterrupted: SimResult, tmp_path: Path, stopped_after: int
) -> None:
    with pytest.raises(Stop):
        simulate(on_round=stop_after(stopped_after), resume_dir=tmp_path)
    assert (tmp_path / STATE_FILE).exists()
    seen: list[int] = []
    resumed = simulate(on_round=lambda r: seen.append(r.round_id), resume_dir=tmp_path)
    assert records(resumed) == records(uninterrupted)
    assert seen == [0, 1, 2, 3, 4]  # the stored rounds are reported again, then the new ones
    assert len({r.fingerprint for r in resumed.rounds}) == 5  # it trained every round
    assert len({tuple(r.lrs.values()) for r in resumed.rounds[1:]}) > 1  # history-driven lrs


def test_a_finished_run_is_returned_without_training_again(uninterrupted: SimResult, tmp_path: Path) -> None:
    first = simulate(resume_dir=tmp_path)
    state = tmp_path / STATE_FILE
    written = state.stat().st_mtime_ns
    again = simulate(resume_dir=tmp_path)
    assert records(again) == records(first) == records(uninterrupted)
    assert again.wall_seconds >= 0.9 * first.wall_seconds  # the stored compute time, not this process's
    assert state.stat().st_mtime_ns == written  # no round ran, nothing was saved


def test_other_settings_are_refused_and_the_state_is_kept(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        simulate(on_round=stop_after(1), resume_dir=tmp_path)
    state = tmp_path / STATE_FILE
    before = state.read_bytes()
    with pytest.raises(ConfigError, match=r"other settings: config\.lr \(stored 0\.0003, now 0\.001\)"):
        simulate(resume_dir=tmp_path, lr=1e-3)
    with pytest.raises(ConfigError, match=r"options\.num_clients"):
        simulate(resume_dir=tmp_path, num_clients=4)
    assert state.read_bytes() == before
    # where the clients train does not change a bit: those options may differ
    assert len(simulate(resume_dir=tmp_path, output=str(tmp_path / "rounds.jsonl")).rounds) == 5


def test_a_corrupt_or_tampered_state_is_refused_untouched(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        simulate(on_round=stop_after(1), resume_dir=tmp_path)
    state = tmp_path / STATE_FILE
    with safe_open(str(state), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
    (name,) = tensors
    tensors[name][0] += 1.0  # θ no longer matches the fingerprint stored with it
    save_file(tensors, str(state), metadata=meta)
    tampered = state.read_bytes()
    with pytest.raises(ConfigError, match="does not match its fingerprint"):
        simulate(resume_dir=tmp_path)
    assert state.read_bytes() == tampered

    state.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable fedmezo simulation state"):
        simulate(resume_dir=tmp_path)
    assert state.read_bytes() == b"not a safetensors file"


def test_cli_resumes_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedmezo.sim")
    argv = ["simulate", "--no-progress", f"--resume-dir={tmp_path}"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in {**BASE, "rounds": 2}.items()]
    assert cli_main(argv) == 0
    first = capsys.readouterr().out
    assert f"progress kept in {tmp_path}" in first
    assert cli_main(argv) == 0  # finished: the same table and model at once
    again = capsys.readouterr().out
    fingerprint = first.split("model fingerprint ")[1].split()[0]
    assert f"model fingerprint {fingerprint}" in again
    assert again.count("\n    2 ") == first.count("\n    2 ") == 1  # round 2's row, shown again
    assert "after round 2 of 2" in caplog.text  # "resuming from <dir> after round 2 of 2"
    assert cli_main([*argv, "--lr=0.01"]) == 2  # other settings: refused, exit 2
    assert "belongs to a run with other settings" in caplog.text
