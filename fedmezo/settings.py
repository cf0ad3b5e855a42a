"""One configuration loader for every fedmezo program: flags > `FEDMEZO_*` env > TOML file > defaults.

A program's settings are one dataclass whose fields carry their help text (`setting`). The flags
(`--local-steps`), the TOML keys (`local_steps`, or `local-steps`) and the environment names
(`FEDMEZO_LOCAL_STEPS`) are all derived from the field names, so they cannot drift apart, and the
server, the client and `fedmezo simulate` read a file, the environment and their flags the same way.
Only stdlib here: the client loads its config before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import os
import tomllib
import types
from collections.abc import Collection, Iterable, Mapping
from dataclasses import Field, field, fields
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from fedmezo.fl.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "PROGRAM_TABLES",
    "REDACTED",
    "add_arguments",
    "add_config_argument",
    "coerce",
    "collect",
    "config_path",
    "env_name",
    "flag_name",
    "load",
    "read_toml",
    "redacted",
    "secret_fields",
    "setting",
    "toml_table",
]

ENV_PREFIX = "FEDMEZO_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # the TOML file, when --config is not given
REDACTED = "***"
# One file may configure several programs; each reads its own table and skips the others'.
PROGRAM_TABLES = ("server", "client", "simulate")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_KINDS = (bool, int, float, str)

T = TypeVar("T")


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    """A dataclass field that documents itself; a secret one stays out of repr() and of the logs."""
    return field(default=default, repr=not secret, metadata={"help": help, "secret": secret})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _kinds(cls: type) -> dict[str, type]:
    """Each field's scalar type (`str | None` -> str): what a TOML, env or flag value is converted to."""
    hints = get_type_hints(cls)
    kinds: dict[str, type] = {}
    for f in fields(cls):
        hint = hints[f.name]
        options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
        options = tuple(o for o in options if o is not type(None))
        if len(options) != 1 or options[0] not in _KINDS:
            raise TypeError(f"{cls.__name__}.{f.name}: a setting is a bool, int, float or str (or None)")
        kinds[f.name] = options[0]
    return kinds


def _pick(cls: type, names: Iterable[str] | None) -> list[Field[Any]]:
    by_name = {f.name: f for f in fields(cls)}
    if names is None:
        return list(by_name.values())
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    return [by_name[n] for n in names]


def add_config_argument(parser: argparse._ActionsContainer, where: str) -> None:
    """`--config FILE`; `where` says which part of the file the program reads."""
    parser.add_argument(
        "--config", default=argparse.SUPPRESS, help=f"TOML file ({where}); default: ${CONFIG_ENV}"
    )


def add_arguments(parser: argparse._ActionsContainer, cls: type, names: Iterable[str] | None = None) -> None:
    """One flag per field of `cls` (or of `names`), `--local-steps` for `local_steps`.

    Defaults are SUPPRESSed, so the parsed namespace holds only the flags actually given and an absent
    flag cannot mask the environment or the file. A bool is a switch: `--NAME` turns on a setting off
    by default, `--no-NAME` turns off one that is on by default.
    """
    kinds = _kinds(cls)
    for f in _pick(cls, names):
        help_text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if kinds[f.name] is bool and f.default is True:
            parser.add_argument(
                "--no-" + f.name.replace("_", "-"),
                dest=f.name,
                action="store_false",
                default=argparse.SUPPRESS,
                help=f"turn off: {help_text}",
            )
            continue
        if f.default not in (None, "") and kinds[f.name] is not bool and not f.metadata.get("secret"):
            help_text = f"{help_text} (default: {f.default})"
        action = "store_true" if kinds[f.name] is bool else "store"
        parser.add_argument(
            flag_name(f.name), dest=f.name, action=action, default=argparse.SUPPRESS, help=help_text
        )


def coerce(name: str, kind: type, value: Any, source: str) -> Any:
    """`value` as the field's type; a ConfigError names the field and where the value came from."""
    try:
        return _convert(kind, value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {kind.__name__} (from {source})") from exc


def _convert(kind: type, value: Any) -> Any:
    if isinstance(value, list | dict):
        raise TypeError(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(value)
    if isinstance(value, bool):
        raise TypeError(value)  # `rounds = true` is a mistake, not 1
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if kind is float:
        return float(value)
    return str(value)


def config_path(
    toml_path: str | Path | None, flags: Mapping[str, Any] | None, env: Mapping[str, str]
) -> str | None:
    """The TOML file to read: the argument, else a `config` flag, else $FEDMEZO_CONFIG; None = none."""
    path = toml_path or (flags or {}).get("config") or env.get(CONFIG_ENV)
    return str(path) if path else None


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def toml_table(
    doc: Mapping[str, Any], table: str, path: str | Path, *, top_level: bool = True
) -> tuple[dict[str, Any], str]:
    """The `[table]` of a parsed file and how to name it in errors.

    Without that table the program reads the top-level keys (when `top_level`), the other programs'
    tables aside, so one file can serve several programs; any other table is an unknown key.
    """
    if table in doc:
        value = doc[table]
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{table}] must be a table")
        return value, f"[{table}] of {path}"
    if not top_level:
        return {}, f"[{table}] of {path}"
    others = {k for k, v in doc.items() if k in PROGRAM_TABLES and isinstance(v, dict)}
    return {k: v for k, v in doc.items() if k not in others}, str(path)  # `server = "h:1"` is a key


def collect(
    cls: type,
    *,
    toml: Mapping[str, Any] | None = None,
    toml_source: str = "",
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    names: Collection[str] | None = None,
    ignore: Collection[str] = (),
) -> dict[str, Any]:
    """The values given for `cls`'s fields, coerced and merged TOML < env < flags.

    Only the fields in `names` (default: all) are taken; a field nobody set is absent, so the
    dataclass default applies. A TOML key that is neither a field nor in `ignore` is refused: a typo
    must not silently run with a default. `env=None` reads no environment; a flag that is None or not
    a field (argparse's `func`, `command`, ...) is not a setting.
    """
    kinds = _kinds(cls)
    wanted = set(kinds) if names is None else set(names)
    values: dict[str, Any] = {}
    for key, value in (toml or {}).items():
        name = key.replace("-", "_")
        if name not in kinds and name not in ignore:
            raise ConfigError(f"unknown key {key!r} in {toml_source}")
        if name in wanted:
            values[name] = coerce(name, kinds[name], value, toml_source)
    for name in sorted(wanted):
        if env is not None and (text := env.get(env_name(name))) is not None:
            values[name] = coerce(name, kinds[name], text, f"env {env_name(name)}")
    for name, value in (flags or {}).items():
        if name in wanted and value is not None:
            values[name] = coerce(name, kinds[name], value, f"flag {flag_name(name)}")
    return values


def load(
    cls: type[T],
    table: str,
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    toml_path: str | Path | None = None,
) -> T:
    """`cls` built from flags > env (default os.environ) > TOML `[table]` or top level > defaults."""
    env = os.environ if env is None else env
    path = config_path(toml_path, flags, env)
    toml, source = toml_table(read_toml(path), table, path) if path else ({}, "")
    return cls(**collect(cls, toml=toml, toml_source=source, env=env, flags=flags))


def secret_fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls) if f.metadata.get("secret"))


def redacted(config: Any) -> dict[str, Any]:
    """The settings as a dict for the log, the value of every secret that is set replaced by `***`."""
    return {
        f.name: REDACTED if f.metadata.get("secret") and getattr(config, f.name) else getattr(config, f.name)
        for f in fields(config)
    }
