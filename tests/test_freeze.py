"""`freeze`: named weights (in lora mode, adapter factors) stay out of θ, on every replica alike, and wrong
names are refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedmezo.fl.config import FREEZE_INPUT_EMBEDDINGS, RunConfig, freeze_parts
from fedmezo.fl.errors import ConfigError
from fedmezo.fl.replica import Replica
from fedmezo.fl.wire import run_config_to_pb, run_settings_from_pb
from fedmezo.sim import Simulation, load_sim_config
from fedmezo.trainable import INPUT_EMBEDDINGS, prepare_trainable


def test_frozen_weights_leave_theta_and_change_the_manifest() -> None:
    full = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze=""))
    frozen = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze="embed_tokens"))
    model = frozen.loaded_model()
    embedding = model.get_input_embeddings().weight
    assert not embedding.requires_grad
    assert frozen.trainable_params == full.trainable_params - embedding.numel()
    assert not any("embed_tokens" in name for name in frozen.params.names)
    assert frozen.manifest_sha256 != full.manifest_sha256  # a client that trains other weights is refused
    # every replica of the run builds the same θ (the server, each client, a simulation)
    again = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze=" embed_tokens "))
    assert again.manifest_sha256 == frozen.manifest_sha256 and again.fingerprint() == frozen.fingerprint()


def test_input_embeddings_names_the_embedding_whatever_the_architecture_calls_it() -> None:
    by_name = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze="embed_tokens"))
    by_role = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze="input-embeddings"))
    assert by_role.manifest_sha256 == by_name.manifest_sha256
    assert not by_role.loaded_model().get_input_embeddings().weight.requires_grad
    with pytest.raises(ValueError, match="has no input embedding"):
        prepare_trainable(torch.nn.Sequential(torch.nn.Linear(2, 2)), "full", freeze=("input-embeddings",))


def test_a_tied_output_head_is_frozen_under_either_name() -> None:
    replica = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze="lm_head"))
    model = replica.loaded_model()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as SmolLM2
    assert not model.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "lora", "freeze": "embed_tokens"}, "freeze in mode lora names adapter weights"),
        ({"mode": "lora", "freeze": "lora_A, norm"}, "freeze in mode lora names adapter weights"),
        ({"freeze": "embed_tokens,,norm"}, "comma-separated non-empty"),
    ],
)
def test_bad_freeze_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(model="tiny-random", **settings).validate()


@pytest.mark.parametrize(
    ("freeze", "message"), [("no_such_weight", "matches no weight"), ("model", "leaves no weight to train")]
)
def test_freeze_must_name_some_weights_and_leave_some(freeze: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze=freeze))


def test_freeze_travels_to_clients_in_the_run_config() -> None:
    config = RunConfig(model="tiny-random", mode="full", freeze="embed_tokens, norm")
    settings = run_settings_from_pb(run_config_to_pb(config, "run", b"\0" * 32))
    assert freeze_parts(settings.freeze) == ("embed_tokens", "norm")
    assert (
        run_config_to_pb(RunConfig(model="tiny-random", mode="full", freeze=""), "run", b"\0" * 32).freeze
        == ""
    )
    full = RunConfig(model="tiny-random", mode="full")
    assert run_config_to_pb(full, "run", b"\0" * 32).freeze == "input-embeddings"  # resolved, never "auto"
    assert run_config_to_pb(RunConfig(model="tiny-random"), "run", b"\0" * 32).freeze == "lora_A"


def test_freeze_auto_is_each_modes_measured_default_and_empty_trains_everything() -> None:
    assert RunConfig().freeze == "lora_A" and RunConfig().mode == "lora"  # LoRA-FA
    assert RunConfig(mode="full").freeze == FREEZE_INPUT_EMBEDDINGS == INPUT_EMBEDDINGS
    assert RunConfig(mode="full", freeze=" auto ").freeze == FREEZE_INPUT_EMBEDDINGS  # spelled out
    lora = RunConfig(model="tiny-random", mode="lora", freeze="")
    assert lora.freeze == "" and not lora.problems()  # A and B both train
    assert RunConfig(model="tiny-random", mode="lora", freeze="norm").problems()  # a base part is refused
    refused = RunConfig(model="tiny-random", mode="lora", freeze="input-embeddings").problems()
    assert refused and "adapter weights" in refused[0]


def test_a_simulation_never_moves_a_frozen_weight() -> None:
    config, options = load_sim_config(
        {"model": "tiny-random", "mode": "full", "freeze": "embed_tokens", "rounds": 2, "local_steps": 2,
         "lr": 1e-3, "lr_spread": 0.0, "batch_size": 2, "max_length": 32, "num_clients": 2, "eval_limit": 4},
        env={},
    )  # fmt: skip
    simulation = Simulation(config, options, exact_match=False)
    embedding = simulation.replica.loaded_model().get_input_embeddings().weight
    before = embedding.detach().clone()
    result = simulation.run(progress=False)
    assert result.rounds[-1].fingerprint != result.rounds[0].fingerprint  # the rest trained
    assert torch.equal(embedding.detach(), before)


def test_lora_with_a_frozen_trains_only_b_and_keeps_a_at_its_seeded_init() -> None:
    """LoRA-FA: the A factors stay the seeded projection on every replica; θ holds the B factors only."""
    both = Replica.for_run(RunConfig(model="tiny-random", mode="lora", freeze=""))
    b_only = Replica.for_run(RunConfig(model="tiny-random"))  # the default: LoRA-FA
    names = b_only.params.names
    assert names and all("lora_B" in name for name in names)
    b_numel = sum(p.numel() for n, p in both.loaded_model().named_parameters() if "lora_B" in n)
    assert b_only.trainable_params == b_numel < both.trainable_params
    assert b_only.manifest_sha256 != both.manifest_sha256  # a client that also trains A is refused
    a_of = lambda replica: {  # noqa: E731
        n: p.detach().clone() for n, p in replica.loaded_model().named_parameters() if "lora_A" in n
    }
    assert a_of(b_only).keys() == a_of(both).keys()
    assert all(torch.equal(a_of(b_only)[n], a_of(both)[n]) for n in a_of(both))  # the same seeded A
    config, options = load_sim_config(
        {"model": "tiny-random", "mode": "lora", "freeze": "lora_A", "rounds": 2, "local_steps": 2,
         "lr": 1e-2, "lr_spread": 0.0, "batch_size": 2, "max_length": 32, "num_clients": 2, "eval_limit": 4},
        env={},
    )  # fmt: skip
    simulation = Simulation(config, options, exact_match=False)
    before = a_of(simulation.replica)
    result = simulation.run(progress=False)
    assert result.rounds[-1].fingerprint != result.rounds[0].fingerprint  # B trained
    after = a_of(simulation.replica)
    assert all(torch.equal(after[n], before[n]) for n in before)


@pytest.mark.parametrize(
    ("freeze", "message"),
    [("lora_", "leaves no weight to train"), ("lora_C", "matches no adapter"),
     ("input-embeddings", "the base is frozen already")],
)  # fmt: skip
def test_lora_freeze_must_name_some_adapters_and_leave_some(freeze: str, message: str) -> None:
    model = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze="")).loaded_model()
    with pytest.raises(ValueError, match=message):
        prepare_trainable(model, "lora", freeze=(freeze,))
