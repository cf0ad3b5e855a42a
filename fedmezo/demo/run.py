"""`run_demo`: a whole federation on localhost, from an empty dir to an evaluated, exported model.

Steps, top to bottom: work dir → data (non-IID split) and a fixed held-out subset → tokens (and TLS
with --tls) → server (converts the model into the cache once, then evaluates θ_0 on the subset) →
clients → dashboard → one line per closed round → the server evaluates the last round → clients exit →
`fedmezo export` → a quick check that the export loads and answers → summary.

Every process is a real `fedmezo` subcommand started exactly as a user would start it (the command
lines are in logs/commands.txt), and stopped, process group by process group, whatever happens. The
evaluation before and after is the server's own (`--eval-data`), read through the status API, so the
dashboard's eval chart and the summary show the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from fedmezo.data import EvalResult, Example, generate_answers, write_jsonl
from fedmezo.demo.errors import DemoError, Interrupted
from fedmezo.demo.monitor import POLL_S, StatusReader
from fedmezo.demo.processes import Supervisor, free_port
from fedmezo.demo.report import Summary, eval_subset, format_bytes, format_duration
from fedmezo.demo.workdir import TlsFiles, Workdir, make_tls, write_data, write_tokens
from fedmezo.fl.config import FROZEN_LORA_A, measured_lr, measured_settings
from fedmezo.zo.estimators import forwards_per_step

__all__ = ["PRESETS", "DemoConfig", "Schedule", "run_demo", "schedule_for"]

logger = logging.getLogger("fedmezo.demo")

HOST = "127.0.0.1"  # everything stays on loopback: the demo's tokens never leave the machine
SERVER_START_S = 300.0  # a cold start imports torch, converts the GGUF once (~20 s) and loads the model
DASHBOARD_START_S = 60.0
CLIENT_EXIT_S = 120.0  # after the last round: apply the final delta, report the fingerprint, exit
EVAL_WAIT_S = 600.0  # the server's evaluation of the last round (64 examples: ~20-60 s on 2 cores)
EXPORT_S = 300.0
READER_IDS = ("dashboard", "demo")  # status-only identities in the tokens file


@dataclass(frozen=True)
class Schedule:
    """The run's training hyperparameters (the server sends them to every client) and token length."""

    rounds: int
    local_steps: int
    lr: float
    eps: float
    batch_size: int
    max_length: int
    estimator: str = "mezo"  # docs/estimators.md; fzoo's lr is on its own (normalised) scale
    perturbations: int = 1  # P per local step
    # Spelled out rather than the server's defaults (a cosine rate, shared seeds), which were chosen over
    # 1,008 forward passes per client: the preset was measured at a constant rate with per-client seeds.
    # freeze: what the mode freezes; schedule_for gives LoRA mode the A factors (LoRA-FA), full mode
    # nothing (at 144 forward passes every weight at a constant rate was ahead of the frozen embedding).
    lr_schedule: str = "constant"
    freeze: str = ""
    seed_scheme: str = "per-client"

    @property
    def forward_passes(self) -> int:
        """Forward passes each client spends over the whole run (docs/estimators.md)."""
        return self.rounds * self.local_steps * forwards_per_step(self.estimator, self.perturbations)


# smollm2-135m: full-parameter FZOO, P = 8, lr 1e-2 (eps 1e-3, batch 8), 4 rounds x 4 steps = 144 forward
# passes per client. In the estimator sweep (RESULTS.md, issue #13: 4 rates per method, pilots of 360
# forward passes) 1e-2 was FZOO's best rate over 360 forward passes and was at 2.53 after 144, ahead of
# MeZO's best (3e-5: 2.81); it drifts up past ~400 (3e-3 is the rate that held over 1,008), so a longer
# demo takes that one (MEASURED_LR). Measured on a 2-core CPU: held-out loss 5.39 -> 2.49, exact match
# 0 -> 20%, in 7.7 min. The MeZO preset it replaced (lr 1e-5, 5 rounds x 16 steps = 160 forward passes)
# reached 3.35, MeZO at its searched 3e-5 on that schedule 2.69 (RESULTS.md, "The demo's defaults").
# The default mode is LoRA: the same schedule on the LoRA B factors at their measured 1e-1 (MEASURED_LR) took
# held-out loss to 2.11 (0.38 +- 0.14 below the full model's, paired), exact match 14%, in 6.3 min.
PRESETS = {
    "smollm2-135m": Schedule(
        rounds=4,
        local_steps=4,
        lr=1e-2,
        eps=1e-3,
        batch_size=8,
        max_length=64,
        estimator="fzoo",
        perturbations=8,
    ),
    "tiny-random": Schedule(rounds=3, local_steps=10, lr=1e-4, eps=1e-3, batch_size=2, max_length=64),
}


# The demo's rates are the server's (fedmezo.fl.config.MEASURED_LR: the rate the estimator sweep accepted
# on smollm2-135m for the estimator, mode and frozen parts, held over 1,008 forward passes per client),
# except where the sweep measured a better one for a short budget (most forward passes per client, rate):
# full-parameter FZOO's 1e-2 was the 360-forward pilots' best and is the demo's measured preset; it drifts
# up past ~400 forward passes, so a longer demo gets MEASURED_LR's 3e-3.
SHORT_BUDGET_LR: dict[tuple[str, str, str], tuple[int, float]] = {
    ("fzoo", "full", ""): (360, 1e-2),
}
# The P each estimator was measured with: switching the estimator brings its own (unless --perturbations).
MEASURED_P = {"fzoo": 8, "mezo": 1, "adamezo": 1}
SMOKE_MODELS = frozenset({"tiny-random"})  # random weights: its preset rate serves every estimator


def measured_demo_lr(schedule: Schedule, mode: str) -> float | None:
    """The measured rate for this schedule's estimator, mode, frozen parts and budget; None if never measured.

    Each estimator's rate is on its own scale (fzoo's and adamezo's steps are normalised), so a combination
    the sweep did not run has none rather than another's."""
    key = (schedule.estimator, mode, schedule.freeze)
    short = SHORT_BUDGET_LR.get(key)
    if short is not None and schedule.forward_passes <= short[0]:
        return short[1]
    return measured_lr(*key) or None


def schedule_for(model: str, mode: str = "lora", **overrides: Any) -> Schedule:
    """The preset for a built-in model (others start from the smollm2 schedule) with `overrides` applied.

    Without an `lr` override the rate is the measured one for the mode, estimator, frozen parts and forward
    passes (measured_demo_lr; another estimator also brings its measured P unless `perturbations` is
    given); a combination never measured raises DemoError asking for --lr."""
    known = model if model in PRESETS else "smollm2-135m"
    if mode == "lora":  # LoRA-FA, as the server's default (fedmezo.fl.config.AUTO_FREEZE)
        overrides = {"freeze": FROZEN_LORA_A, **overrides}
    schedule = dataclasses.replace(PRESETS[known], **overrides)
    if known in SMOKE_MODELS:
        return schedule
    if schedule.estimator in MEASURED_P and "perturbations" not in overrides:
        schedule = dataclasses.replace(schedule, perturbations=MEASURED_P[schedule.estimator])
    if "lr" in overrides:
        return schedule
    lr = measured_demo_lr(schedule, mode)
    if lr is None:
        raise DemoError(
            f"no measured learning rate for {schedule.estimator} in {mode} mode with freeze "
            f"{schedule.freeze!r} on {known} (measured: {measured_settings()}); choose one with --lr"
        )
    return dataclasses.replace(schedule, lr=lr)


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path
    model: str
    mode: str  # full | lora
    clients: int
    schedule: Schedule
    eval_examples: int
    max_new_tokens: int
    device: str  # clients' --device
    threads: int  # torch CPU threads per client (0 = share the cores evenly)
    dashboard: bool
    dashboard_port: int  # 0 = a free port
    server_port: int  # 0 = a free port
    tls: bool
    keep_running: bool
    timeout_s: float  # the whole run, training included
    seed: int

    def client_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.clients)


def run_demo(config: DemoConfig, out: TextIO = sys.stdout) -> Summary:
    """Run the demo; returns the summary, raises DemoError (Interrupted on SIGINT/SIGTERM)."""
    started = time.monotonic()
    say = _printer(out, started)
    workdir = Workdir(config.workdir.resolve())
    summary = Summary(
        model=config.model,
        mode=config.mode,
        clients=config.clients,
        rounds=config.schedule.rounds,
        local_steps=config.schedule.local_steps,
        lr=config.schedule.lr,
        eps=config.schedule.eps,
        batch_size=config.schedule.batch_size,
        estimator=config.schedule.estimator,
        perturbations=config.schedule.perturbations,
        forward_passes=config.schedule.forward_passes,
    )
    with _signals_raise():
        workdir.prepare()
        say(f"work dir {workdir.root} (logs in {workdir.logs})")
        held_out, sizes = write_data(workdir, config.clients, config.seed)
        say(f"data: {sum(sizes)} training examples split by category over {config.clients} clients {sizes}")
        subset = eval_subset(held_out, config.eval_examples, config.seed)
        write_jsonl(workdir.eval_subset, subset)
        summary.eval_examples = len(subset)
        client_ids = [f"client-{n}" for n in range(1, config.clients + 1)]
        write_tokens(workdir, [*client_ids, *READER_IDS])
        tls = make_tls(workdir) if config.tls else None
        supervisor = Supervisor(workdir.logs, _child_env(), workdir.commands)
        try:
            _Federation(config, workdir, tls, supervisor, summary, say).run(client_ids)
            say("checking that the export loads and answers")
            question, answer = _ask_export(workdir, subset[0], config)
            say(f"export answers {question.instruction!r} with {answer!r} (reference {question.output!r})")
            summary.export_dir = str(workdir.export)
            summary.wall_clock_s = time.monotonic() - started
            summary.write(workdir.summary)
            print("", file=out)
            for line in summary.lines():
                print(f"  {line}", file=out)
            print("", file=out, flush=True)
            if not summary.loss_dropped:
                say("note: the held-out loss did not drop; try more --rounds or another --lr")
            if config.keep_running:
                _hold(supervisor, summary.dashboard_url, say)
        finally:
            with _signals_ignored():  # a second Ctrl-C must not leave children behind
                running = [c.name for c in supervisor.children if c.process.poll() is None]
                if running:
                    say(f"stopping {', '.join(running)}")
                supervisor.stop_all()
    return summary


class _Federation:
    """Server, clients and dashboard of one demo run, followed through the status API to the export."""

    def __init__(
        self,
        config: DemoConfig,
        workdir: Workdir,
        tls: TlsFiles | None,
        supervisor: Supervisor,
        summary: Summary,
        say: Callable[[str], None],
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.tls = tls
        self.supervisor = supervisor
        self.summary = summary
        self.say = say
        self.target = f"{HOST}:{config.server_port or free_port(HOST)}"
        # the clients' and the dashboard's transport flags: verify the demo's certificate, or plaintext
        self.transport = [f"--tls-ca={tls.cert}"] if tls else ["--insecure"]
        self._training_started = time.monotonic()  # reset when the first round opens

    def run(self, client_ids: list[str]) -> None:
        self._start_server()
        reader = StatusReader(
            self.target,
            self.workdir.token_file("demo").read_text().strip(),
            self.tls.cert if self.tls else None,
        )
        try:
            reader.wait_serving(SERVER_START_S, self.supervisor.check)
            self.summary.trainable_params = int(reader.run_config().trainable_params)
            self._start_clients(client_ids)
            if self.config.dashboard:
                self.summary.dashboard_url = self._start_dashboard()
                self.say(f"dashboard: {self.summary.dashboard_url}")
            self._follow(reader)
            self.say("waiting for the server's evaluation of the final model")
            self.summary.after = self._wait_eval(reader, self.config.schedule.rounds)
            for client in self.supervisor.children:
                if client.name in client_ids:
                    self.supervisor.wait_exit(client, CLIENT_EXIT_S)
            status = reader.status()
            self.summary.bytes_on_wire = int(status.bytes_up + status.bytes_down)
            self.summary.peak_memory_bytes = {c.client_id: int(c.peak_memory_bytes) for c in reader.clients()}
        finally:
            reader.close()
        self.say(f"exporting the global model to {self.workdir.export}")
        export = self.supervisor.spawn(
            "export",
            ["export", f"--state-dir={self.workdir.server_state}", f"--out={self.workdir.export}"],
            exits_when_done=True,
        )
        self.supervisor.wait_exit(export, EXPORT_S)

    def _start_server(self) -> None:
        config, schedule, workdir, tls = self.config, self.config.schedule, self.workdir, self.tls
        self.say(
            f"starting the server on {self.target} ({'TLS' if tls else 'plaintext on loopback'}, "
            f"bearer tokens); it converts {config.model} into the cache on first use, then evaluates it"
        )
        self.supervisor.spawn(
            "server",
            [
                "server",
                f"--model={config.model}",
                f"--mode={config.mode}",
                f"--rounds={schedule.rounds}",
                f"--local-steps={schedule.local_steps}",
                f"--lr={schedule.lr}",
                "--lr-spread=0",
                f"--eps={schedule.eps}",
                f"--estimator={schedule.estimator}",
                f"--perturbations={schedule.perturbations}",
                f"--lr-schedule={schedule.lr_schedule}",
                f"--freeze={schedule.freeze}",
                f"--seed-scheme={schedule.seed_scheme}",
                f"--batch-size={schedule.batch_size}",
                f"--max-length={schedule.max_length}",
                f"--min-clients={config.clients}",
                f"--run-seed={config.seed}",
                f"--eval-data={workdir.eval_subset}",
                f"--eval-limit={self.summary.eval_examples}",
                f"--eval-every={schedule.rounds}",  # θ_0 and the final model: before and after
                f"--eval-max-new-tokens={config.max_new_tokens}",
                f"--host={HOST}",
                f"--port={self.target.rsplit(':', 1)[1]}",
                f"--state-dir={workdir.server_state}",
                f"--tokens={workdir.tokens}",
                f"--status-readers={','.join(READER_IDS)}",  # clients never see each other's metrics
                *([f"--tls-cert={tls.cert}", f"--tls-key={tls.key}"] if tls else ["--insecure"]),
            ],
        )

    def _start_clients(self, client_ids: list[str]) -> None:
        threads = self.config.client_threads()
        for number, client_id in enumerate(client_ids, start=1):
            self.supervisor.spawn(
                client_id,
                [
                    "client",
                    f"--server={self.target}",
                    f"--data={self.workdir.client_data(number)}",
                    f"--client-id={client_id}",
                    f"--token-file={self.workdir.token_file(client_id)}",
                    *self.transport,
                    f"--device={self.config.device}",
                    f"--state-dir={self.workdir.client_state(number)}",
                    f"--threads={threads}",
                    "--no-progress",
                ],
                exits_when_done=True,
                env={"OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)},
            )
        self.say(f"started {len(client_ids)} clients ({threads} CPU thread(s) each): {', '.join(client_ids)}")

    def _start_dashboard(self) -> str:
        port = self.config.dashboard_port or free_port(HOST)
        self.supervisor.spawn(
            "dashboard",
            [
                "dashboard",
                f"--server={self.target}",
                f"--host={HOST}",
                f"--port={port}",
                f"--token-file={self.workdir.token_file('dashboard')}",
                *self.transport,
            ],
        )
        deadline = time.monotonic() + DASHBOARD_START_S
        while True:
            self.supervisor.check()
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2.0) as reply,
            ):
                if reply.status == 200:
                    return f"http://localhost:{port}/"
            if time.monotonic() > deadline:
                raise DemoError(f"the dashboard did not answer within {DASHBOARD_START_S:.0f} s")
            time.sleep(POLL_S)

    def _follow(self, reader: StatusReader) -> None:
        """One line per event worth a line (θ_0 evaluated, clients joined, a round closed) until the end."""
        deadline = time.monotonic() + self.config.timeout_s
        total = self.config.schedule.rounds
        reported = 0
        joined = False
        while True:
            self.supervisor.check()
            status = reader.status()
            if self.summary.before is None and (before := reader.eval_of(0)) is not None:
                self.summary.before = before
                self.say(
                    f"before training: held-out loss {before.loss:.4f}, exact match {before.exact_match:.1%}"
                )
            if not joined and (status.current_round >= 1 or status.rounds_completed > 0):
                self.say(f"all {self.config.clients} clients joined: training {total} rounds")
                joined = True
                self._training_started = time.monotonic()
            if status.rounds_completed > reported:
                for report in reader.closed_rounds(reported + 1):
                    loss = "-" if report.mean_loss is None else f"{report.mean_loss:.4f}"
                    self.say(
                        f"round {report.round_id}/{total} {report.state} in "
                        f"{format_duration(report.duration_s)}: mean training loss {loss}, "
                        f"{report.participants} clients, "
                        f"{format_bytes(report.bytes_up + report.bytes_down)} on the wire"
                    )
                    self.summary.round_losses.append(report.mean_loss)
                    self.summary.participations += report.participants
                    reported = report.round_id
            if reader.finished(status) and reported >= status.rounds_completed:
                self.summary.training_s = time.monotonic() - self._training_started
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the run did not finish within {self.config.timeout_s:.0f} s "
                    f"({status.rounds_completed}/{total} rounds); see the logs in {self.supervisor.log_dir}"
                )
            time.sleep(POLL_S)

    def _wait_eval(self, reader: StatusReader, version: int) -> EvalResult:
        deadline = time.monotonic() + EVAL_WAIT_S
        while (result := reader.eval_of(version)) is None:
            self.supervisor.check()
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the server did not report its evaluation of round {version} within {EVAL_WAIT_S:.0f} s "
                    f"(see {self.supervisor.log_dir / 'server.log'})"
                )
            time.sleep(POLL_S)
        if self.summary.before is None:
            self.summary.before = reader.eval_of(0)
        if self.summary.before is None:
            raise DemoError("the server reported no evaluation of the initial model (round 0)")
        return result


def _ask_export(workdir: Workdir, example: Example, config: DemoConfig) -> tuple[Example, str]:
    """Load the exported folder as a user would and answer one held-out question: the export works."""
    from fedmezo.models import ModelNotFoundError, load_model

    with _to_log(workdir.logs / "demo.log"):
        try:
            loaded = load_model(str(workdir.export))
        except (ModelNotFoundError, OSError, ValueError) as exc:
            raise DemoError(f"the export in {workdir.export} does not load: {exc}") from exc
        answers = generate_answers(
            loaded.model,
            loaded.tokenizer,
            [example],
            max_length=config.schedule.max_length,
            max_new_tokens=config.max_new_tokens,
            progress=False,
        )
    return example, answers[0]


def _hold(supervisor: Supervisor, url: str, say: Callable[[str], None]) -> None:
    """--keep-running: leave server and dashboard up for a look around; Ctrl-C ends the demo normally."""
    say(f"server and dashboard keep running{f' at {url}' if url else ''}; press Ctrl-C to stop them")
    with contextlib.suppress(Interrupted):
        while True:
            supervisor.check()
            time.sleep(1.0)


def _child_env() -> dict[str, str]:
    """The children's environment: no stray FEDMEZO_* settings (the demo passes flags), unbuffered logs."""
    from fedmezo.models.loader import CACHE_DIR_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMEZO_") or k == CACHE_DIR_ENV}
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def _printer(out: TextIO, started: float) -> Callable[[str], None]:
    """Concise terminal lines, each stamped with the time since the demo started (m:ss)."""

    def say(line: str) -> None:
        minutes, seconds = divmod(int(time.monotonic() - started), 60)
        print(f"[demo {minutes}:{seconds:02d}] {line}", file=out, flush=True)

    return say


@contextlib.contextmanager
def _to_log(path: Path) -> Iterator[None]:
    """In-process library output (progress bars, log records) goes to a log file, not the terminal."""
    root = logging.getLogger()
    with open(path, "a") as log, contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        saved = root.handlers[:]
        root.handlers = [handler]
        try:
            yield
        finally:
            root.handlers = saved


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM become `Interrupted`, so the `finally` blocks stop every child."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
