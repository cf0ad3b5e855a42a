"""The demo's parts without a federation: work dir, tokens, TLS, summary, CLI presets, process groups."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedmezo.cli.main import build_parser
from fedmezo.data import EvalResult, read_jsonl
from fedmezo.demo import PRESETS, DemoError, Summary, schedule_for
from fedmezo.demo.processes import Supervisor
from fedmezo.demo.report import eval_subset, fedavg_bytes, format_bytes
from fedmezo.demo.workdir import MARKER, Workdir, make_tls, write_data, write_tokens
from fedmezo.fl.config import ESTIMATOR_NAMES, MEASURED_LR, measured_settings


def test_workdir_refuses_a_foreign_dir_and_clears_a_previous_demo(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DemoError, match="not a demo work dir"):
        Workdir(foreign).prepare()
    assert (foreign / "thesis.tex").exists()

    workdir = Workdir(tmp_path / "demo")
    workdir.prepare()
    (workdir.server_state).mkdir()
    (workdir.server_state / "state.sqlite").write_text("old run")
    (workdir.root / "notes.txt").write_text("the user's, not ours")
    workdir.prepare()
    assert (workdir.root / MARKER).exists()
    assert not workdir.server_state.exists()  # the server must not resume the previous run
    assert (workdir.root / "notes.txt").exists()  # only what the demo owns is cleared


def test_data_is_split_by_category_over_the_clients(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "demo")
    workdir.prepare()
    held_out, sizes = write_data(workdir, 3, seed=0)
    assert len(sizes) == 3 and all(size > 0 for size in sizes)
    categories = [{ex.category for ex in read_jsonl(workdir.client_data(n))} for n in (1, 2, 3)]
    assert not (categories[0] & categories[1]) and not (categories[1] & categories[2])
    assert sum(sizes) == len(read_jsonl(workdir.train))
    assert held_out == read_jsonl(workdir.eval)


def test_tokens_are_private_and_the_server_accepts_them(tmp_path: Path) -> None:
    from fedmezo.server.auth import load_tokens

    workdir = Workdir(tmp_path / "demo")
    workdir.prepare()
    write_tokens(workdir, ["client-1", "client-2", "dashboard"])
    tokens = load_tokens(workdir.tokens)
    assert sorted(tokens.values()) == ["client-1", "client-2", "dashboard"]
    for name in ("client-1", "dashboard"):
        token = workdir.token_file(name).read_text().strip()
        assert tokens[token] == name
        assert stat.S_IMODE(workdir.token_file(name).stat().st_mode) == 0o600
    assert stat.S_IMODE(workdir.tokens.stat().st_mode) == 0o600


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_material_is_a_self_signed_localhost_certificate(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "demo")
    workdir.prepare()
    files = make_tls(workdir)
    assert b"BEGIN CERTIFICATE" in files.cert.read_bytes()
    assert b"PRIVATE KEY" in files.key.read_bytes()
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600


def test_eval_subset_is_fixed_by_the_seed() -> None:
    items = list(range(100))
    assert eval_subset(items, 10, seed=3) == eval_subset(items, 10, seed=3)  # type: ignore[arg-type]
    assert eval_subset(items, 500, seed=3) == items  # type: ignore[arg-type]


def test_summary_reports_bytes_against_fedavg_and_writes_json(tmp_path: Path) -> None:
    summary = Summary(
        model="tiny-random",
        mode="full",
        clients=3,
        rounds=2,
        local_steps=10,
        lr=1e-4,
        eps=1e-3,
        batch_size=2,
        forward_passes=40,
        trainable_params=1_000_000,
        eval_examples=16,
        before=EvalResult(loss=5.0, exact_match=0.0, num_examples=16),
        after=EvalResult(loss=4.5, exact_match=0.125, num_examples=16),
        participations=6,
        bytes_on_wire=4096,
    )
    assert summary.fedavg_bytes == fedavg_bytes(1_000_000, 6) == 6 * 2 * 4 * 1_000_000
    assert summary.loss_dropped
    text = "\n".join(summary.lines())
    assert "5.0000" in text and "4.5000" in text and "12.5%" in text
    assert "4 KiB" in text and "45.8 MiB" in text
    assert "mezo (P = 1, lr 0.0001) on full parameters, 2 rounds x 10 steps = 40 forward passes" in text
    summary.write(tmp_path / "summary.json")
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["before"]["loss"] == 5.0 and doc["after"]["loss"] == 4.5
    assert doc["fedavg_bytes"] == summary.fedavg_bytes and doc["loss_dropped"] is True


@pytest.mark.parametrize(
    ("num", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * 2**30, "3 GiB")]
)
def test_format_bytes(num: int, text: str) -> None:
    assert format_bytes(num) == text


def test_cli_takes_the_models_preset_and_flag_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = {}

    def fake_run_demo(config: object) -> None:
        captured["config"] = config

    monkeypatch.setattr("fedmezo.demo.run_demo", fake_run_demo)
    args = build_parser().parse_args(["demo", "--model", "tiny-random", "--rounds", "7", "--lr", "0.5"])
    assert args.func(args) == 0
    config = captured["config"]
    expected = PRESETS["tiny-random"]
    assert config.schedule.rounds == 7 and config.schedule.lr == 0.5  # type: ignore[attr-defined]
    assert config.schedule.local_steps == expected.local_steps  # type: ignore[attr-defined]
    assert schedule_for("some/local-model", "full") == PRESETS["smollm2-135m"]


def test_the_demo_defaults_to_lora_fa_at_its_own_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    full, lora = schedule_for("smollm2-135m", "full"), schedule_for("smollm2-135m")
    assert lora.freeze == "lora_A" and full.freeze == ""  # LoRA-FA, as the server's default
    assert lora.lr == MEASURED_LR["fzoo", "lora", "lora_A"] != full.lr
    assert dataclasses.replace(lora, lr=full.lr, freeze="") == full  # only the rate and freeze differ
    tiny = schedule_for("tiny-random", "lora")  # no LoRA rate of its own, but LoRA-FA too
    assert tiny == dataclasses.replace(PRESETS["tiny-random"], freeze="lora_A")
    captured = {}
    monkeypatch.setattr("fedmezo.demo.run_demo", lambda config: captured.setdefault("config", config))
    for argv, mode, lr in (
        ([], "lora", lora.lr),
        (["--mode", "lora", "--lr", "0.5"], "lora", 0.5),
        (["--mode", "full"], "full", full.lr),
    ):
        captured.clear()
        args = build_parser().parse_args(["demo", *argv])
        assert args.func(args) == 0
        config = captured["config"]
        assert (config.mode, config.schedule.lr) == (mode, lr)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "lr"),
    [
        ([], 1e-1),  # the preset on LoRA-FA: 4 x 4 FZOO steps = 144 forward passes per client
        (["--rounds", "12"], 1e-1),  # it held over 1,008
        (["--mode", "full"], 1e-2),  # full mode: 144 forward passes
        (["--mode", "full", "--rounds", "10"], 1e-2),  # 360: the budget its pilot measured
        (["--mode", "full", "--rounds", "12"], 3e-3),  # 432: past where 1e-2 drifts up; 3e-3 held
        (["--mode", "full", "--estimator", "mezo"], 3e-5),  # each estimator's rate is on its own scale
        (["--mode", "full", "--estimator", "adamezo", "--perturbations", "2"], 1e-3),
        (["--estimator", "mezo", "--lr", "1e-6"], 1e-6),  # --lr always wins
    ],
)
def test_without_lr_the_demo_takes_the_rate_measured_for_its_estimator_and_budget(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], lr: float
) -> None:
    captured: dict[str, Any] = {}
    monkeypatch.setattr("fedmezo.demo.run_demo", lambda config: captured.setdefault("config", config))
    args = build_parser().parse_args(["demo", *argv])
    assert args.func(args) == 0
    assert captured["config"].schedule.lr == lr  # type: ignore[attr-defined]
    if argv[2:4] == ["--estimator", "mezo"]:  # with MeZO's measured P too: 2 forwards per step
        assert captured["config"].schedule.perturbations == 1  # type: ignore[attr-defined]
    if "--perturbations" in argv:
        assert captured["config"].schedule.perturbations == 2  # type: ignore[attr-defined]


def test_an_unmeasured_estimator_and_mode_asks_for_a_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[object] = []
    monkeypatch.setattr("fedmezo.demo.run_demo", started.append)
    args = build_parser().parse_args(["demo", "--mode", "lora", "--estimator", "mezo"])
    assert args.func(args) == 1 and not started
    err = capsys.readouterr().err
    assert "no measured learning rate for mezo in lora mode" in err and "--lr" in err
    assert measured_settings() in err  # the same list the server's config error gives
    with pytest.raises(DemoError, match="choose one with --lr"):
        schedule_for("smollm2-135m", "lora", estimator="adamezo")
    # tiny-random is a smoke model with random weights: its preset rate serves every estimator
    assert schedule_for("tiny-random", "lora", estimator="fzoo").lr == PRESETS["tiny-random"].lr


def test_cli_estimator_flags_reach_the_schedule_and_name_every_estimator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured = {}
    monkeypatch.setattr("fedmezo.demo.run_demo", lambda config: captured.setdefault("config", config))
    argv = ["demo", "--model", "tiny-random", "--estimator", "adamezo", "--perturbations", "3"]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    schedule = captured["config"].schedule  # type: ignore[attr-defined]
    assert (schedule.estimator, schedule.perturbations) == ("adamezo", 3)
    # 2P forwards per adamezo step: the budget the summary prints
    assert schedule.forward_passes == schedule.rounds * schedule.local_steps * 6
    choices = next(a.choices for a in _demo_parser()._actions if "--estimator" in a.option_strings)
    assert tuple(choices) == ESTIMATOR_NAMES  # a new estimator cannot be left out of the demo
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--estimator", "sgd"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--perturbations", "0"])


def _demo_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["demo"]
    return parser


def test_cli_maps_a_demo_error_to_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def failing(config: object) -> None:
        raise DemoError("client-2 exited with code 77")

    monkeypatch.setattr("fedmezo.demo.run_demo", failing)
    args = build_parser().parse_args(["demo", "--model", "tiny-random"])
    assert args.func(args) == 1
    assert "client-2 exited with code 77" in capsys.readouterr().err


# A child that starts a grandchild in its own process group, then ignores SIGTERM: only SIGKILL of the
# group ends both. Prints the grandchild's pid so the test can check it is gone.
_STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(grandchild.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_stop_all_kills_the_whole_process_group_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, dict(os.environ), command=[sys.executable, "-c", _STUBBORN])
    child = supervisor.spawn("stubborn", [])
    deadline = time.monotonic() + 30
    while not child.log.read_text().strip():
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    grandchild = int(child.log.read_text().split()[0])
    assert os.getpgid(child.pid) == child.pid != os.getpgid(0)  # its own group, not the test's
    started = time.monotonic()
    supervisor.stop_all(grace_s=1.0)
    assert time.monotonic() - started < 10
    assert child.process.poll() == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(grandchild):
        assert time.monotonic() < deadline, "the grandchild survived"
        time.sleep(0.05)


def test_check_names_the_failed_child_and_shows_its_log(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, dict(os.environ), command=[sys.executable, "-c"])
    child = supervisor.spawn(
        "client-2", ["import sys; print('bad token'); sys.exit(77)"], exits_when_done=True
    )
    child.process.wait(timeout=30)
    with pytest.raises(DemoError, match=r"client-2 exited with code 77(.|\n)*bad token"):
        supervisor.check()
    healthy = Supervisor(tmp_path, dict(os.environ), command=[sys.executable, "-c"])
    done = healthy.spawn("client-3", ["pass"], exits_when_done=True)
    assert healthy.wait_exit(done, 30) == 0
    healthy.check()  # a client that finished with 0 is not a failure


def test_the_demo_takes_the_servers_measured_rates_beyond_its_short_budget() -> None:
    """One table of measured rates (fedmezo.fl.config.MEASURED_LR) for the server and the demo; only
    full-model FZOO's short-budget 1e-2 is the demo's own."""
    for (estimator, mode, freeze), lr in MEASURED_LR.items():
        long = schedule_for("smollm2-135m", mode, estimator=estimator, freeze=freeze, rounds=12)
        assert long.lr == lr, (estimator, mode, freeze)
    assert schedule_for("smollm2-135m", "lora", freeze="").lr == MEASURED_LR["fzoo", "lora", ""]  # A and B
    assert schedule_for("smollm2-135m", "full").lr == 1e-2 != MEASURED_LR["fzoo", "full", ""]
