"""Config precedence (defaults < TOML < FEDMEZO_* env < flags), validation, and secret redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmezo.client.config import ClientConfig, load_config
from fedmezo.client.errors import ConfigError

BASE = {"server": "h:1", "data": "d.jsonl", "client_id": "c1"}


def test_flags_beat_env_beat_toml_beat_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "client.toml"
    toml.write_text(
        '[client]\nserver = "toml:1"\ndata = "toml.jsonl"\nclient-id = "t"\nlong_poll_s = 5\ndevice = "cpu"\n'
    )
    env = {"FEDMEZO_DATA": "env.jsonl", "FEDMEZO_CLIENT_ID": "e", "FEDMEZO_INSECURE": "true"}
    config = load_config({"client_id": "flag", "device": None}, config_file=str(toml), environ=env)
    assert config.server == "toml:1"  # only in TOML
    assert config.data == "env.jsonl"  # env beats TOML
    assert config.client_id == "flag"  # flag beats env
    assert config.device == "cpu"  # a flag left unset (None) does not override
    assert config.long_poll_s == 5.0 and config.insecure is True
    assert config.max_length == 256  # default


def test_config_file_from_env_and_top_level_keys(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('server = "a:2"\ndata = "x"\nclient_id = "z"\n')
    config = load_config({}, environ={"FEDMEZO_CONFIG": str(toml)})
    assert (config.server, config.client_id) == ("a:2", "z")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"server": ""}, "--server"),
        ({"token": "a", "token_file": "f"}, "either"),
        ({"insecure": True, "tls_ca": "ca.pem"}, "--insecure"),
        ({"tls_cert": "c.pem"}, "mTLS"),
        ({"device": "tpu"}, "--device"),
        ({"max_length": 2}, "max-length"),
        ({"compile": "yes"}, "--compile"),
        ({"compile": "on", "device": "cpu"}, "needs CUDA"),
    ],
)
def test_invalid_combinations_are_rejected_at_load(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({**BASE, **changes}, environ={})


def test_unknown_toml_key_and_bad_env_value(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("servr = 'x'\n")
    with pytest.raises(ConfigError, match="servr"):
        load_config(BASE, config_file=str(toml), environ={})
    with pytest.raises(ConfigError, match="FEDMEZO_LONG_POLL_S"):
        load_config(BASE, environ={"FEDMEZO_LONG_POLL_S": "soon"})


def test_secrets_are_redacted_and_token_file_is_read(tmp_path: Path) -> None:
    config = ClientConfig(**BASE, token="s3cret")  # type: ignore[arg-type]
    assert config.redacted()["token"] == "***"
    assert "s3cret" not in repr(config.redacted()) and "s3cret" not in repr(config)
    token_file = tmp_path / "tok"
    token_file.write_text("abc123\n")
    assert ClientConfig(**BASE, token_file=str(token_file)).resolved_token() == "abc123"  # type: ignore[arg-type]
