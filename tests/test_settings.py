"""The one config loader (fedmezo.settings): flags > env > TOML > defaults, on a toy dataclass."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedmezo import settings
from fedmezo.fl.errors import ConfigError
from fedmezo.settings import setting


@dataclass(frozen=True)
class Toy:
    rounds: int = setting(3, "how many")
    lr: float = setting(0.5, "how fast")
    name: str = setting("toy", "what")
    verbose: bool = setting(False, "talk")
    progress: bool = setting(True, "show a bar")
    password: str | None = setting(None, "keep quiet", secret=True)


def _parse(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    settings.add_config_argument(parser, "[toy] table or top level")
    settings.add_arguments(parser, Toy)
    return vars(parser.parse_args(argv))


def test_precedence_flags_env_toml_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "toy.toml"
    toml.write_text('[toy]\nrounds = 7\nlr = 0.25\nname = "file"\n')
    env = {"FEDMEZO_LR": "0.125", "FEDMEZO_NAME": "env"}
    flags = _parse("--config", str(toml), "--name", "flag")
    toy = settings.load(Toy, "toy", flags=flags, env=env)
    assert (toy.rounds, toy.lr, toy.name) == (7, 0.125, "flag")  # TOML < env < flags
    assert toy.verbose is False and toy.progress is True  # untouched: defaults


def test_config_file_from_env_and_top_level_keys(tmp_path: Path) -> None:
    toml = tmp_path / "toy.toml"
    toml.write_text('rounds = 4\n[client]\nserver = "x"\n')
    toy = settings.load(Toy, "toy", env={"FEDMEZO_CONFIG": str(toml)})
    assert toy.rounds == 4  # top level; the [client] table is another program's


def test_flags_given_override_flags_absent_do_not() -> None:
    assert _parse() == {}  # SUPPRESSed defaults: nothing masks the env or the file
    flags = _parse("--verbose", "--no-progress", "--rounds", "9")
    assert flags == {"verbose": True, "progress": False, "rounds": "9"}
    toy = settings.load(Toy, "toy", flags={**flags, "lr": None, "func": print}, env={"FEDMEZO_LR": "2"})
    assert (toy.rounds, toy.verbose, toy.progress, toy.lr) == (9, True, False, 2.0)


def test_unknown_toml_key_is_refused_naming_key_and_file(tmp_path: Path) -> None:
    toml = tmp_path / "toy.toml"
    toml.write_text("[toy]\nroundz = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'roundz' in \[toy\] of .*toy.toml"):
        settings.load(Toy, "toy", env={}, toml_path=toml)
    toml.write_text("[tyo]\nrounds = 3\n")  # a misspelt table is an unknown key, not silence
    with pytest.raises(ConfigError, match="unknown key 'tyo'"):
        settings.load(Toy, "toy", env={}, toml_path=toml)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        settings.load(Toy, "toy", env={}, toml_path=tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("rounds = \n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        settings.load(Toy, "toy", env={}, toml_path=tmp_path / "bad.toml")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"flags": {"rounds": "many"}}, r"rounds: cannot read 'many' as int \(from flag --rounds\)"),
        ({"env": {"FEDMEZO_LR": "fast"}}, r"lr: cannot read 'fast' as float \(from env FEDMEZO_LR\)"),
        ({"env": {"FEDMEZO_VERBOSE": "maybe"}}, "verbose: cannot read 'maybe' as bool"),
        ({"toml": "rounds = 2.5\n"}, r"rounds: cannot read 2.5 as int \(from .*toy.toml\)"),
        ({"toml": "rounds = true\n"}, "rounds: cannot read True as int"),
        ({"toml": "name = [1]\n"}, "name: cannot read"),
    ],
)
def test_bad_value_names_the_field_and_its_source(
    tmp_path: Path, source: dict[str, object], message: str
) -> None:
    path = None
    if "toml" in source:
        path = tmp_path / "toy.toml"
        path.write_text(str(source["toml"]))
    with pytest.raises(ConfigError, match=message):
        settings.load(
            Toy,
            "toy",
            flags=source.get("flags"),  # type: ignore[arg-type]
            env=source.get("env", {}),  # type: ignore[arg-type]
            toml_path=path,
        )


def test_coercion_accepts_what_the_sources_hold() -> None:
    env = {"FEDMEZO_ROUNDS": " 5 ", "FEDMEZO_VERBOSE": "yes", "FEDMEZO_PROGRESS": "0"}
    toy = settings.load(Toy, "toy", env=env)
    assert (toy.rounds, toy.verbose, toy.progress) == (5, True, False)
    assert settings.coerce("rounds", int, 7.0, "t") == 7  # an integral TOML float is fine


def test_collect_takes_only_named_fields_and_accepts_ignored_keys() -> None:
    values = settings.collect(
        Toy,
        toml={"rounds": 2, "name": "t", "port": 1},
        toml_source="f",
        env={"FEDMEZO_LR": "1", "FEDMEZO_NAME": "e"},
        flags={"verbose": True},
        names=("rounds", "lr"),
        ignore=("port",),
    )
    assert values == {"rounds": 2, "lr": 1.0}  # name and verbose are known but not taken
    with pytest.raises(ConfigError, match="unknown key 'port' in f"):
        settings.collect(Toy, toml={"port": 1}, toml_source="f")


def test_secrets_redacted_and_out_of_repr() -> None:
    toy = Toy(password="hunter2", name="visible")
    assert settings.redacted(toy)["password"] == settings.REDACTED
    assert settings.redacted(toy)["name"] == "visible"
    assert settings.redacted(Toy())["password"] is None  # nothing set, nothing to hide
    assert "hunter2" not in repr(toy)
    assert settings.secret_fields(Toy) == {"password"}


def test_help_shows_defaults_but_not_secret_ones() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, Toy)
    text = parser.format_help()
    assert "how many (default: 3)" in text and "--no-progress" in text
    assert "talk\n" in text  # a switch: no "(default: False)"
    assert "keep quiet (default" not in text


def test_a_key_named_like_a_program_is_still_a_key(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('server = "h:1"\n[simulate]\nx = 1\n')
    table, source = settings.toml_table(settings.read_toml(toml), "client", toml)
    assert (table, source) == ({"server": "h:1"}, str(toml))
