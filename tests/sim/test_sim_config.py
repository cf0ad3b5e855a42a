"""`fedmezo simulate`'s configuration: the server's run keys, same names, same validation."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from fedmezo.cli.main import build_parser, main
from fedmezo.cli.simulate_cmd import EXIT_CONFIG, _client_sizes
from fedmezo.fl.config import RunConfig
from fedmezo.fl.errors import ConfigError
from fedmezo.server.config import ServerConfig
from fedmezo.server.config import add_arguments as add_server_arguments
from fedmezo.sim import RUN_KEYS, SimOptions, load_sim_config
from fedmezo.sim.config import NOT_SIMULATED, SERVER_PROCESS_KEYS


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_run_flags_are_the_servers_flags() -> None:
    server = argparse.ArgumentParser()
    add_server_arguments(server)
    subparsers = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    simulate = _flags(subparsers["simulate"])
    run_flags = {"--" + k.replace("_", "-") for k in RUN_KEYS}
    assert run_flags <= _flags(server)
    assert run_flags <= simulate
    assert "--port" not in simulate and "--tls-cert" not in simulate  # nothing listens


def test_key_sets_follow_the_dataclasses() -> None:
    run = {f.name for f in fields(RunConfig)}
    assert {f.name for f in fields(ServerConfig)} - run == SERVER_PROCESS_KEYS
    assert set(RUN_KEYS) == run - NOT_SIMULATED and run >= NOT_SIMULATED


def test_server_toml_is_accepted_and_process_keys_ignored(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        '[server]\nmodel = "tiny-random"\nlocal_steps = 7\nlr = 3e-5\nport = 6000\ntls_cert = "x.pem"\n'
        '[simulate]\nmethod = "fedavg"\nnum_clients = 5\n'
    )
    config, options = load_sim_config({"lr": "4e-5"}, env={"FEDMEZO_ROUNDS": "4"}, toml_path=toml)
    assert (config.local_steps, config.lr, config.rounds) == (7, 4e-5, 4)  # toml < env < flags
    assert not hasattr(config, "port")  # a process key: read, never used (a RunConfig has none)
    assert (options.method, options.num_clients) == ("fedavg", 5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"method": "sgd"}, "method must be one of"),
        ({"num_clients": "0"}, "num_clients must be >= 1"),
        ({"lr": "1e-6", "lr_spread": "1e-6"}, "lr_spread must be in [0, lr)"),
        ({"data": "/no/such.jsonl"}, "does not exist"),
        ({"local_steps": "many"}, "local_steps: cannot read"),
        ({"partition": "random"}, "partition must be one of"),
        ({"compile": "maybe"}, "compile must be auto, on or off"),
        ({"compile": "on"}, "compile on needs a cuda device"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        load_sim_config(flags, env={})


def test_unknown_toml_keys_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("[simulate]\nclients = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'clients'"):
        load_sim_config(env={}, toml_path=toml)


def test_defaults() -> None:
    assert SimOptions().validate().method == "fedmezo"


def test_cli_runs_and_writes_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rounds.jsonl"
    argv = ["simulate", "--model", "tiny-random", "--rounds", "2", "--local-steps", "2", "--batch-size", "2"]
    argv += ["--max-length", "32", "--eval-limit", "4", "--lr", "1e-3", "--lr-spread", "0", "--no-progress"]
    assert main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fedmezo: 3 clients (client-1 " in printed and "fingerprint" in printed
    assert "object at" not in printed  # each client's example count, not its dataset's repr
    assert re.search(r"\(client-1 [\d,]+, client-2 [\d,]+, client-3 [\d,]+ examples\)", printed)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["run"]["method"] == "fedmezo"
    assert [r["round_id"] for r in lines[1:]] == [0, 1, 2]
    assert all(r["eval_loss"] > 0 for r in lines[1:])


def test_start_line_lists_a_few_clients_and_summarizes_a_crowd() -> None:
    few = {"client-1": 1206, "client-2": 12}
    assert _client_sizes(few) == "client-1 1,206, client-2 12 examples"
    crowd = {f"client-{i}": 10 + i for i in range(1, 101)}
    assert _client_sizes(crowd) == "11–110 examples each, 6,050 in all"


def test_cli_bad_config_exits_2(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["simulate", "--model", "tiny-random", "--method", "nope"]) == EXIT_CONFIG
    assert "method must be one of" in caplog.text
