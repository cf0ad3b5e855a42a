"""`fedmezo.sim.Simulation` on tiny-random: the daemons' engine, three methods, the server's decisions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.run_settings import PROTOCOL_RUN

from fedmezo.data import generate_demo_dataset, write_jsonl
from fedmezo.fl.lr import LrContext, personalized_lrs, schedule_factor
from fedmezo.fl.selection import sample_clients
from fedmezo.sim import SimResult, Simulation, load_sim_config
from fedmezo.sim.wire import full_state_round_bytes

BASE: dict[str, Any] = {
    "model": "tiny-random",
    "batch_size": 4,
    "max_length": 48,
    "lr": 3e-4,
    "lr_spread": 0.0,
    "eval_limit": 16,
    "num_clients": 3,
    **PROTOCOL_RUN,  # the engine at MeZO's scale (defaults: tests/e2e/test_simulate_matches_federation.py)
}


def simulate(exact_match: bool = False, **flags: Any) -> tuple[Simulation, SimResult]:
    config, options = load_sim_config({**BASE, **flags}, env={})
    sim = Simulation(config, options, exact_match=exact_match)
    return sim, sim.run(progress=False)


def losses(result: SimResult) -> list[float]:
    return [loss for _, loss in result.eval_losses()]


@pytest.fixture(scope="module")
def seed_scalar_and_full_state() -> tuple[tuple[Simulation, SimResult], tuple[Simulation, SimResult]]:
    shape = {"rounds": 5, "local_steps": 4}
    return simulate(method="fedmezo", **shape), simulate(method="fedmezo-full", **shape)


def test_seed_scalar_follows_full_state_fedmezo(
    seed_scalar_and_full_state: tuple[tuple[Simulation, SimResult], tuple[Simulation, SimResult]],
) -> None:
    """Issue #5: the same trajectory (held-out loss within 1e-4 relative at every round)."""
    (seed_sim, seed), (full_sim, full) = seed_scalar_and_full_state
    a, b = losses(seed), losses(full)
    assert len(a) == len(b) == 6  # round 0 + 5 rounds
    assert a[0] == b[0]  # the same θ_0
    assert a[-1] < a[0]  # and it trains
    for r, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) / abs(y) <= 1e-4, f"round {r}: {x} vs {y}"
    # Equal in real arithmetic, not bit for bit: the seed-scalar path never carries local drift.
    theta_seed, theta_full = seed_sim.replica.params.flat, full_sim.replica.params.flat
    assert not torch.equal(theta_seed, theta_full)
    assert float((theta_seed - theta_full).abs().max()) <= 1e-5 * float(theta_full.abs().max())


def test_bytes_per_round(
    seed_scalar_and_full_state: tuple[tuple[Simulation, SimResult], tuple[Simulation, SimResult]],
) -> None:
    (seed_sim, seed), (_, full) = seed_scalar_and_full_state
    for r in seed.rounds[1:]:
        per_client = (r.bytes_up + r.bytes_down) / len(r.selected)
        assert 100 < per_client < 1024  # issue #3's budget: a round costs < 1 KiB per client
    up, down = full_state_round_bytes(seed_sim.replica.trainable_params)
    assert up == down == 4 * seed_sim.replica.trainable_params
    assert all(r.bytes_up == 3 * up and r.bytes_down == 3 * down for r in full.rounds[1:])


def test_simulation_is_deterministic_to_the_bit() -> None:
    """Same config, same fingerprints every round: sweeps are reproducible and comparable."""
    _, result = simulate(rounds=2, local_steps=3)
    fingerprints = [r.fingerprint for r in result.rounds]
    assert len(set(fingerprints)) == 3  # the model moved every round
    again = simulate(rounds=2, local_steps=3)[1]
    assert [r.fingerprint for r in again.rounds] == fingerprints  # deterministic to the bit


def test_fedavg_backprop_trains_and_restores_between_clients() -> None:
    _sim, result = simulate(method="fedavg", fedavg_lr=1e-3, optimizer="adamw", rounds=2, local_steps=3)
    curve = losses(result)
    assert curve[-1] < curve[0] - 0.1  # first-order steps move a tiny model fast
    assert all(r.peak_memory_bytes > 0 for r in result.rounds[1:])
    sgd = simulate(method="fedavg", fedavg_lr=1e-2, optimizer="sgd", rounds=1, local_steps=2)[1]
    assert losses(sgd)[-1] < losses(sgd)[0]


def test_sampling_and_personalized_lrs_are_the_servers() -> None:
    flags = {"num_clients": 4, "clients_per_round": 2, "rounds": 3, "local_steps": 2}
    sim, result = simulate(lr_strategy="round-wise", lr_spread=1e-4, **flags)
    ids = sorted(sim.datasets)
    for r in result.rounds[1:]:
        assert r.selected == sample_clients(ids, 2, 0, r.round_id)
    first = result.rounds[1]
    assert set(first.lrs.values()) == {float(np.float32(3e-4))}  # no history yet: η_0 (fp32) for all
    # From round 2 on, the loss signal spreads the learning rates exactly as the coordinator would.
    history = {c: [s for s in stats if s.round_id < 3] for c, stats in sim.history.items()}
    ctx = LrContext(3, 0, 3e-4, 1e-4, result.rounds[3].selected, history)
    assert result.rounds[3].lrs == personalized_lrs("round-wise", ctx)


def test_a_cosine_schedule_decays_every_round_lr_like_the_server() -> None:
    flags = {"num_clients": 2, "rounds": 3, "local_steps": 1, "eval_limit": 2}
    _sim, result = simulate(lr_schedule="cosine", **flags)
    for r in result.rounds[1:]:
        factor = schedule_factor("cosine", r.round_id, 3)
        assert set(r.lrs.values()) == {float(np.float32(3e-4 * factor))}
    assert set(result.rounds[3].lrs.values()) == {float(np.float32(3e-4 * 0.1))}
    constant = simulate(**flags)[1]
    assert result.rounds[1].fingerprint == constant.rounds[1].fingerprint  # round 1: η_0 either way
    assert result.rounds[2].fingerprint != constant.rounds[2].fingerprint
    # FedAvg's optimizer follows the same schedule, so a comparison of methods decays them alike
    fedavg = {"method": "fedavg", "fedavg_lr": 1e-3, "optimizer": "adamw", **flags}
    decayed, flat = simulate(lr_schedule="cosine", **fedavg)[1], simulate(**fedavg)[1]
    assert decayed.rounds[1].fingerprint == flat.rounds[1].fingerprint
    assert decayed.rounds[2].fingerprint != flat.rounds[2].fingerprint


def test_data_directory_gives_client_ids(tmp_path: Path) -> None:
    train, held_out = generate_demo_dataset(0)
    for name, part in (("alice", train[:20]), ("bob", train[20:50])):
        write_jsonl(tmp_path / f"{name}.jsonl", part)
    write_jsonl(tmp_path.parent / "held-out.jsonl", held_out[:8])
    _sim, result = simulate(data=str(tmp_path), eval_data=str(tmp_path.parent / "held-out.jsonl"), rounds=1)
    assert result.clients == {"alice": 20, "bob": 30}
    assert result.rounds[1].selected == ("alice", "bob")


def test_exact_match_is_optional() -> None:
    _, with_em = simulate(exact_match=True, rounds=1, local_steps=1, eval_limit=4)
    _, without = simulate(exact_match=False, rounds=1, local_steps=1, eval_limit=4)
    assert all(r.exact_match is not None and 0.0 <= r.exact_match <= 1.0 for r in with_em.rounds)
    assert all(r.exact_match is None for r in without.rounds)
    assert [r.eval_loss for r in with_em.rounds] == [r.eval_loss for r in without.rounds]
    assert all(r.eval_loss is not None and math.isfinite(r.eval_loss) for r in without.rounds)


def test_cpu_simulation_keeps_the_plain_eager_loss() -> None:
    config, options = load_sim_config({**BASE, "compile": "auto"}, env={})
    assert Simulation(config, options).loss_of is None  # the CPU path is unchanged


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_clients_end_every_round_on_the_eager_fingerprints() -> None:
    torch._dynamo.reset()
    shape = {"rounds": 2, "local_steps": 3, "device": "cuda", "estimator": "fzoo", "perturbations": 2}
    _, graphed = simulate(compile="auto", **shape)
    _, eager = simulate(compile="off", **shape)
    assert [r.fingerprint for r in graphed.rounds] == [r.fingerprint for r in eager.rounds]


def test_bf16_sr_weights_train_at_half_the_bytes() -> None:
    """weights=bf16-sr: θ is bf16 and moves by stochastically rounded adds; it learns like fp32 here."""
    shape = {"rounds": 3, "local_steps": 4}
    bf16_sim, bf16 = simulate(weights="bf16-sr", **shape)
    _, fp32 = simulate(**shape)
    params = bf16_sim.replica.params
    assert params.flat.dtype == torch.bfloat16
    assert '"weights":"bf16-sr"' in params.manifest().to_json()
    a, b = losses(bf16), losses(fp32)
    assert a[-1] < a[0] - 0.1  # it trains (tiny-random starts at ~5.57)
    assert abs(a[-1] - b[-1]) < 0.3 * (b[0] - b[-1])  # and ends near fp32's loss (0.02 apart here)
    assert bf16.rounds[-1].fingerprint != fp32.rounds[-1].fingerprint
