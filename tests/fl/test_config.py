"""RunConfig: fp32 scalars as a client uses them, names from the registries, one clear error per value."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from fedmezo.fl.aggregation import WEIGHT_RULES
from fedmezo.fl.config import (
    DEFAULTS_BEFORE_FZOO,
    LR_STRATEGIES,
    MEASURED_LR,
    MODES,
    RUN_DEFINING_FIELDS,
    RUN_FIELDS_BEFORE_THEY_EXISTED,
    WEIGHTINGS,
    RunConfig,
    fp32,
)
from fedmezo.fl.errors import ConfigError
from fedmezo.fl.lr import STRATEGIES


def test_defaults_are_valid() -> None:
    assert RunConfig().validate() == RunConfig()


@pytest.mark.parametrize("value", [1e-3, 0.1, 3e-7, 1.0])
def test_eps_and_clip_are_the_fp32_a_client_trains_with(value: float) -> None:
    config = RunConfig(eps=value, clip=value)
    expected = float(np.float32(value))
    assert config.eps == expected and config.clip == expected
    assert float(np.float32(config.eps)) == config.eps  # already fp32: the wire changes nothing
    assert RunConfig().eps == float(np.float32(1e-3)) != 1e-3
    assert dataclasses.replace(config, rounds=2).eps == expected  # rounding twice changes nothing


def test_lr_is_not_rounded() -> None:
    config = RunConfig(lr=2e-6, lr_spread=1e-6)  # a formula's inputs; its result is rounded later
    assert (config.lr, config.lr_spread) == (2e-6, 1e-6)


def test_fp32_overflow_is_refused_by_validation() -> None:
    assert fp32(1e300) == float("inf")
    with pytest.raises(ConfigError, match="eps must be a finite number > 0"):
        RunConfig(eps=1e300).validate()
    with pytest.raises(ConfigError, match=r"eps: 'x' is not a number"):
        RunConfig(eps="x")  # type: ignore[arg-type]


def test_the_defaults_before_fzoo_are_a_valid_run_and_name_what_changed() -> None:
    config = RunConfig(**DEFAULTS_BEFORE_FZOO).validate()  # type: ignore[arg-type]
    assert (config.estimator, config.perturbations, config.freeze) == ("mezo", 1, "")
    today = RunConfig()
    assert all(getattr(today, k) != v for k, v in DEFAULTS_BEFORE_FZOO.items())  # each entry changed
    # a stored run without a field meant the value of the defaults then
    shared = set(RUN_FIELDS_BEFORE_THEY_EXISTED) & set(DEFAULTS_BEFORE_FZOO)
    assert shared == {"seed_scheme", "perturbations", "freeze"}
    assert all(RUN_FIELDS_BEFORE_THEY_EXISTED[k] == DEFAULTS_BEFORE_FZOO[k] for k in shared)
    assert set(RUN_FIELDS_BEFORE_THEY_EXISTED) <= set(RUN_DEFINING_FIELDS)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().eps = 0.5  # type: ignore[misc]


def test_names_come_from_the_registries() -> None:
    assert tuple(STRATEGIES) == LR_STRATEGIES and tuple(WEIGHT_RULES) == WEIGHTINGS
    assert MODES == ("full", "lora")
    for strategy in STRATEGIES:
        RunConfig(lr_strategy=strategy).validate()
    for rule in WEIGHT_RULES:
        RunConfig(aggregation=rule).validate()
    for mode in MODES:
        RunConfig(mode=mode).validate()
    help_text = next(f for f in dataclasses.fields(RunConfig) if f.name == "lr_strategy").metadata["help"]
    assert all(name in help_text for name in STRATEGIES)


def test_run_defining_fields_are_fields() -> None:
    names = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(RUN_DEFINING_FIELDS) <= names
    # the seed scheme and P name every stored delta's seeds: a restart must keep them too; freeze
    # decides which weights θ holds (the deltas' tensor ids)
    assert RUN_DEFINING_FIELDS == (
        "model", "mode", "lora_rank", "lora_alpha", "run_seed", "seed_scheme", "perturbations", "base_dtype",
        "weights", "freeze",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"mode": "half"}, "mode must be one of"),
        ({"mode": "lora", "base_dtype": "int3"}, "base_dtype must be one of"),
        ({"mode": "full", "base_dtype": "bf16"}, "needs mode lora"),
        ({"weights": "bf16"}, "weights must be one of"),
        ({"mode": "lora", "weights": "bf16-sr"}, "weights bf16-sr needs mode full"),
        ({"lr_strategy": "nope"}, "lr_strategy must be one of"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of"),
        ({"aggregation": "median"}, "aggregation must be one of"),
        ({"local_steps": 0}, "local_steps must be >= 1"),
        ({"eval_limit": 0}, "eval_limit must be >= 1"),
        ({"max_length": 4}, "max_length must be in"),
        ({"eval_data": "/no/such.jsonl"}, "eval_data '/no/such.jsonl' is not a file"),
        ({"clients_per_round": 3, "fraction": 0.5}, "set either clients_per_round or fraction"),
        ({"fraction": 0.0}, "fraction must be in"),
        ({"quorum": 1.5}, "quorum must be in"),
        ({"deadline_s": float("nan")}, "deadline_s must be a finite number > 0"),
        ({"lr": -1e-3, "lr_spread": 0.0}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
        ({"estimator": "mezo"}, "lr: no measured rate for mezo in mode lora with freeze 'lora_A'"),
        ({"lr": 2e-6, "lr_spread": 5e-6}, r"lr_spread must be in \[0, lr\)"),
        ({"eps": 0.0}, "eps must be a finite number > 0"),
        ({"clip": -1.0}, "clip must be >= 0"),
        ({"outlier_k": 0.5}, "outlier_k must be 0"),
        ({"max_extensions": -1}, "max_extensions must be >= 0"),
        ({"run_seed": 2**64}, "run_seed must be an unsigned 64-bit integer"),
    ],
)
def test_bad_value_is_a_config_error_naming_it(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid run config: .*{message}"):
        RunConfig(**bad).validate()  # type: ignore[arg-type]


def test_an_unmeasured_rate_error_lists_every_measured_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        RunConfig(estimator="mezo").validate()
    for estimator, mode, freeze in MEASURED_LR:
        assert f"{estimator} in mode {mode} with freeze {freeze!r}" in str(caught.value)


def test_the_estimators_doc_table_is_measured_lr() -> None:
    """docs/estimators.md says which rate `lr = 0` takes: its table must be MEASURED_LR, row for row."""
    doc = (Path(__file__).parents[2] / "docs" / "estimators.md").read_text()
    rows = re.findall(
        r"^\| `(\w+)` \| (\w+) \| (?:`([\w,-]+)`(?: \(auto\))?|empty) \| ([\d.e-]+) \|$", doc, re.M
    )
    assert {(e, m, f): float(lr) for e, m, f, lr in rows} == MEASURED_LR


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        RunConfig(rounds=0, quorum=0.0).validate()
    assert "rounds must be >= 1" in str(caught.value) and "quorum must be in" in str(caught.value)
    data = tmp_path / "eval.jsonl"
    data.write_text("{}\n")
    assert RunConfig(eval_data=str(data)).validate().eval_data == str(data)
