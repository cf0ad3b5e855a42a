"""`fedmezo demo`: one command from nothing to a trained, evaluated, exported model on localhost.

Only wiring lives here; the steps are in `fedmezo.demo`. Schedule flags left out take the model's
preset (`fedmezo.demo.PRESETS`), sized for the 15-minute budget of a 2-core CPU; without --lr the rate is
the one the estimator sweep measured for the mode, estimator and budget (the server's
`fedmezo.fl.config.MEASURED_LR`, or the demo's short-budget `fedmezo.demo.run.SHORT_BUDGET_LR`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_WORKDIR", "register", "run"]

logger = logging.getLogger("fedmezo.demo")

DEFAULT_WORKDIR = Path("demo-run")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(subparsers: Any) -> None:
    from fedmezo.fl.config import ESTIMATOR_NAMES  # the server's own list (its parser imports it too)

    parser = subparsers.add_parser(
        "demo",
        help="run a whole federation on localhost: server, 3 clients, dashboard; evaluate and export",
        description="Write the demo data, split it non-IID over the clients, start a server, the clients "
        "and the dashboard on localhost, train, evaluate the global model before and after, export it and "
        "print a summary. Ctrl-C stops every process it started. Schedule flags default to the model's "
        "preset.",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="work dir, cleared on reuse (default ./demo-run)",
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="model (default smollm2-135m; tiny-random: fast)"
    )
    parser.add_argument(
        "--mode",
        choices=("full", "lora"),
        default="lora",
        help="what trains (default lora: the LoRA B factors, A frozen, as the server's default)",
    )
    parser.add_argument("--clients", type=_positive_int, default=3, help="number of clients (default 3)")
    schedule = parser.add_argument_group("schedule (default: the model's preset)")
    schedule.add_argument("--rounds", type=_positive_int, help="federated rounds")
    schedule.add_argument(
        "--local-steps", dest="local_steps", type=_positive_int, help="zeroth-order steps per round"
    )
    schedule.add_argument(
        "--lr",
        type=_positive_float,
        help="learning rate eta (default: the measured one for the estimator and budget)",
    )
    schedule.add_argument("--eps", type=_positive_float, help="MeZO perturbation scale epsilon")
    schedule.add_argument(
        "--estimator",
        choices=ESTIMATOR_NAMES,
        help="zeroth-order estimator (docs/estimators.md); fzoo's lr is on its own scale",
    )
    schedule.add_argument("--perturbations", type=_positive_int, help="P: perturbations per local step")
    schedule.add_argument("--batch-size", dest="batch_size", type=_positive_int, help="examples per step")
    schedule.add_argument("--max-length", dest="max_length", type=_positive_int, help="tokens per example")
    parser.add_argument(
        "--eval-examples",
        dest="eval_examples",
        type=_positive_int,
        default=64,
        help="held-out examples evaluated before and after (default 64: ~30 s on a 2-core CPU)",
    )
    parser.add_argument(
        "--max-new-tokens",
        dest="max_new_tokens",
        type=_positive_int,
        default=8,
        help="generated tokens per answer for exact match (default 8: demo answers are 1-3 tokens)",
    )
    parser.add_argument("--device", default="auto", help="clients' device: auto | cpu | cuda (default auto)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per client (default 0: cores / clients)"
    )
    parser.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="do not start it")
    parser.add_argument(
        "--dashboard-port", dest="dashboard_port", type=int, default=0, help="HTTP port (default: a free one)"
    )
    parser.add_argument(
        "--server-port", dest="server_port", type=int, default=0, help="gRPC port (default: a free one)"
    )
    parser.add_argument(
        "--tls", action="store_true", help="serve TLS with a self-signed cert (needs openssl)"
    )
    parser.add_argument(
        "--keep-running",
        dest="keep_running",
        action="store_true",
        help="after the summary, keep the server and dashboard up until Ctrl-C",
    )
    parser.add_argument(
        "--timeout-s", dest="timeout_s", type=_positive_float, default=3600.0, help="give up after (s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="data split, eval subset and run seed (default 0)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmezo.demo import (
        EXIT_FAILED,
        EXIT_OK,
        DemoConfig,
        DemoError,
        Interrupted,
        Schedule,
        run_demo,
        schedule_for,
    )

    fields = dataclasses.fields(Schedule)
    overrides = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name, None) is not None}
    try:  # without --lr: the rate measured for this mode, estimator and budget
        schedule = schedule_for(args.model, args.mode, **overrides)
    except DemoError as exc:
        print(f"[demo] {exc}", file=sys.stderr)
        return EXIT_FAILED
    config = DemoConfig(
        workdir=args.workdir,
        model=args.model,
        mode=args.mode,
        clients=args.clients,
        schedule=schedule,
        eval_examples=args.eval_examples,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        threads=args.threads,
        dashboard=args.dashboard,
        dashboard_port=args.dashboard_port,
        server_port=args.server_port,
        tls=args.tls,
        keep_running=args.keep_running,
        timeout_s=args.timeout_s,
        seed=args.seed,
    )
    try:
        run_demo(config)
    except Interrupted as exc:
        print(f"[demo] {exc}: every process the demo started was stopped", file=sys.stderr)
        return exc.exit_code
    except DemoError as exc:
        print(f"[demo] failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
