"""Config precedence and validation; tokens file and the identity matrix."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from fedmezo.fl.errors import ConfigError, PermissionDenied, Unauthenticated
from fedmezo.server.auth import Authenticator, load_tokens
from fedmezo.server.config import ServerConfig, add_arguments, load_config


def test_precedence_toml_env_flags(tmp_path: Path) -> None:
    toml = tmp_path / "server.toml"
    toml.write_text("[server]\nrounds = 7\nlocal_steps = 5\nlr = 3e-6\ninsecure = true\nport = 1234\n")
    env = {"FEDMEZO_LOCAL_STEPS": "9", "FEDMEZO_PORT": "2345"}
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = vars(parser.parse_args(["--config", str(toml), "--port", "3456"]))
    config = load_config(flags, env=env)
    assert (config.rounds, config.local_steps, config.port, config.lr, config.insecure) == (
        7,
        9,
        3456,
        3e-6,
        True,
    )
    assert ServerConfig().eps == float(np.float32(1e-3))  # untouched: the documented default, as fp32


@pytest.mark.parametrize(
    "bad",
    [
        {"clients_per_round": 3, "fraction": 0.5},
        {"lr_spread": 1e-5, "lr": 1e-6},
        {"outlier_k": 0.5},
        {"lr_strategy": "nope"},
        {"aggregation": "median"},
        {"quorum": 0.0},
        {"insecure": False},  # no TLS material and no --insecure
        {"tls_client_ca": "ca.pem"},
        {"heartbeat_timeout_s": 1.0, "heartbeat_interval_s": 5.0},
        {"local_steps": 0},
        {"wake_chunk": -1},
    ],
)
def test_invalid_combinations_rejected(bad: dict[str, object]) -> None:
    values = {"insecure": True, **bad}
    with pytest.raises(ConfigError):
        ServerConfig(**values).validate()  # type: ignore[arg-type]


def test_unknown_toml_key_and_bad_type(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text("roundz = 3\n")
    with pytest.raises(ConfigError, match="roundz"):
        load_config({"insecure": True}, env={}, toml_path=toml)
    with pytest.raises(ConfigError, match="rounds"):
        load_config({"insecure": True, "rounds": "many"}, env={})


def test_secrets_redacted() -> None:
    config = ServerConfig(tls_cert="c.pem", tls_key="k.pem")
    assert config.redacted()["tls_key"] == "***" and config.redacted()["tls_cert"] == "c.pem"


def test_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# clients\nalice: tok-a\n\nbob:tok-b\n")
    assert load_tokens(path) == {"tok-a": "alice", "tok-b": "bob"}
    for text in ("alice\n", "alice:t\nbob:t\n", "alice:t\nalice:u\n", "\n"):
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_tokens(path)


@pytest.mark.parametrize(
    ("metadata", "claimed", "outcome"),
    [
        ((("authorization", "Bearer tok-a"),), "alice", "alice"),
        ((("authorization", "Bearer tok-a"),), "", PermissionDenied),  # must equal the identity (proto)
        ((("Authorization", "bearer tok-a"),), "alice", "alice"),
        ((("authorization", "Bearer tok-a"),), "bob", PermissionDenied),
        ((("authorization", "Bearer nope"),), "alice", Unauthenticated),
        ((("authorization", "tok-a"),), "alice", Unauthenticated),
        ((), "alice", Unauthenticated),
        (None, "alice", Unauthenticated),
    ],
)
def test_identity_matrix(metadata: object, claimed: str, outcome: object) -> None:
    auth = Authenticator({"tok-a": "alice", "tok-b": "bob"})
    if isinstance(outcome, str):
        assert auth.identify(metadata, claimed) == outcome  # type: ignore[arg-type]
    else:
        with pytest.raises(outcome):  # type: ignore[call-overload]
            auth.identify(metadata, claimed)  # type: ignore[arg-type]


def test_open_mode_trusts_payload_but_needs_an_id() -> None:
    auth = Authenticator(None)
    assert auth.identify(None, "carol") == "carol"
    with pytest.raises(Unauthenticated):
        auth.identify(None, "")
    auth.check_reader(None)
    with pytest.raises(Unauthenticated):
        Authenticator({"t": "a"}).check_reader(None)
