"""`fedmezo simulate` is the federation: same data and config, same fingerprint after every round.

The simulation claims to run exactly the daemons' engine (issue #5). Here a real federation (server
and three client daemons as processes over gRPC) and `fedmezo simulate` on the same per-client files
must end every round on bit-identical canonical weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.federation import Federation

from fedmezo.sim import Simulation, load_sim_config

ROUNDS, STEPS = 2, 3
CLIENTS = ("c1", "c2", "c3")


# round-wise: round 2's learning rates come from round 1's losses, which the server reads as fp32;
# fzoo with shared seeds: another estimator (P scalars per step) and deltas without participants;
# adamezo: uploads that are sums over several steps' moves (momentum over seeded directions);
# cosine: the server decays η_0 per round and the simulation must decay it the same way;
# bf16-sr: bf16 weights, every add stochastically rounded (§7.4), forwards perturbed in module hooks
@pytest.mark.parametrize(
    ("strategy", "spread", "estimator"),
    [("frozen", 0.0, ("mezo", 1, "per-client", "cosine", "fp32")),
     ("round-wise", 5e-5, ("adamezo", 2, "per-client", "constant", "fp32")),
     ("model-diff", 5e-5, ("fzoo", 3, "shared", "constant", "fp32")),
     ("frozen", 0.0, ("mezo", 2, "shared", "constant", "bf16-sr"))],
)  # fmt: skip
def test_simulation_ends_every_round_on_the_federations_fingerprint(
    tmp_path: Path, strategy: str, spread: float, estimator: tuple[str, int, str, str, str]
) -> None:
    name, perturbations, scheme, schedule, weights = estimator
    with Federation(tmp_path) as fed:
        fed.start_server(
            f"--rounds={ROUNDS}", f"--local-steps={STEPS}", "--min-clients=3", "--clients-per-round=3",
            f"--lr-strategy={strategy}", f"--lr-spread={spread}", f"--estimator={name}",
            f"--perturbations={perturbations}", f"--seed-scheme={scheme}", f"--lr-schedule={schedule}",
            f"--weights={weights}",
        )  # fmt: skip
        for client_id in CLIENTS:
            fed.start_client(client_id)
        fed.wait_clients()
        served = {r: fed.grpc_round(r).fingerprint.hex() for r in range(1, ROUNDS + 1)}
        data_dir = tmp_path / "per-client"
        data_dir.mkdir()
        for client_id in CLIENTS:
            shutil.copy(fed.data[client_id], data_dir / f"{client_id}.jsonl")
        held_out = fed.data["c4"]  # any file: the simulation evaluates, the federation does not

    config, options = load_sim_config(
        {
            "model": "tiny-random",
            "rounds": ROUNDS,
            "local_steps": STEPS,
            "batch_size": 2,
            "lr": 1e-4,
            "lr_spread": spread,
            "lr_strategy": strategy,
            "estimator": name,
            "perturbations": perturbations,
            "seed_scheme": scheme,
            "lr_schedule": schedule,
            "weights": weights,
            "freeze": "",  # as the federation's PROTOCOL_RUN
            "mode": "full",
            "max_length": 64,
            "data": str(data_dir),
            "eval_data": str(held_out),
            "eval_limit": 2,
        },
        env={},
    )
    result = Simulation(config, options, exact_match=False).run(progress=False)
    simulated = {r.round_id: r.fingerprint for r in result.rounds[1:]}
    assert all(len(r.selected) == 3 for r in result.rounds[1:])
    assert simulated == served


def test_the_default_run_simulates_to_the_federations_fingerprints(tmp_path: Path) -> None:
    """No training flag on either side: the server's defaults (FZOO, P = 8, shared seeds, cosine, LoRA
    with the A factors frozen, the measured rate) are what `fedmezo simulate` runs by default, round for
    round; the clients build their LoRA-FA θ from what the server sends, or Join would refuse them."""
    with Federation(tmp_path) as fed:
        fed.start_server(f"--rounds={ROUNDS}", "--min-clients=3", "--clients-per-round=3", defaults=True)
        for client_id in CLIENTS:
            fed.start_client(client_id)
        fed.wait_clients()
        doc = fed.status()
        served = {r: fed.grpc_round(r).fingerprint.hex() for r in range(1, ROUNDS + 1)}
        data_dir = tmp_path / "per-client"
        data_dir.mkdir()
        for client_id in CLIENTS:
            shutil.copy(fed.data[client_id], data_dir / f"{client_id}.jsonl")
        held_out = fed.data["c4"]
    config = doc["config"]
    assert (config["estimator"], config["seed_scheme"]) == ("ESTIMATOR_FZOO", "SEED_SCHEME_SHARED")
    assert (int(config["perturbations"]), int(config["local_steps"])) == (8, 4)
    assert (config["lr_schedule"], config["freeze"], config["mode"]) == (
        "cosine",
        "lora_A",
        "TRAINING_MODE_LORA",
    )
    assert float(config["lr"]) == pytest.approx(0.1)  # `lr = 0`: the rate measured for LoRA-FA
    for round_ in doc["rounds"]:  # τ·P = 32 scalars each way: far under issue #3's 1 KiB
        for client in round_["clients"]:
            assert 0 < client["bytes_up"] + client["bytes_down"] <= 1024, (round_["round"], client)
    settings = {"model": "tiny-random", "rounds": ROUNDS, "batch_size": 2, "max_length": 64,
                "data": str(data_dir), "eval_data": str(held_out), "eval_limit": 2}  # fmt: skip
    sim_config, options = load_sim_config(settings, env={})
    result = Simulation(sim_config, options, exact_match=False).run(progress=False)
    assert {r.round_id: r.fingerprint for r in result.rounds[1:]} == served
