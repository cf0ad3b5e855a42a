"""`fedmezo simulate`: N clients and the server in one process (no gRPC), for research sweeps."""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

__all__ = ["EXIT_CONFIG", "register"]

logger = logging.getLogger("fedmezo.sim")

EXIT_CONFIG = 2  # invalid configuration or data (nothing was trained)
LISTED_CLIENTS = 8  # the start line names each client's example count up to this many clients


def register(subparsers: Any) -> None:
    from fedmezo.sim.config import add_arguments

    parser = subparsers.add_parser(
        "simulate",
        help="simulate a federation in one process (fedmezo, full-state FedMeZO or FedAvg baselines)",
        description=(
            "Run N clients and the server in one process with the daemons' own engine: same sampling, "
            "personalized learning rates, MeZO steps, aggregation and evaluation as a real run, and "
            "the same config keys as `fedmezo server`."
        ),
    )
    add_arguments(parser)
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (for log files)"
    )
    parser.set_defaults(func=run)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _client_sizes(sizes: dict[str, int], listed: int = LISTED_CLIENTS) -> str:
    """Each client's examples for a few clients; the range and the total for a crowd."""
    if len(sizes) <= listed:
        return ", ".join(f"{c} {n:,}" for c, n in sizes.items()) + " examples"
    return f"{min(sizes.values()):,}–{max(sizes.values()):,} examples each, {sum(sizes.values()):,} in all"


def run(args: argparse.Namespace) -> int:
    from fedmezo.fl.errors import ConfigError, StoreError
    from fedmezo.sim import RoundResult, Simulation, load_sim_config, write_jsonl_rounds

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose", "progress")}
    try:
        config, options = load_sim_config(flags)
        simulation = Simulation(config, options)
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_CONFIG
    sizes = _client_sizes({c: d.num_examples for c, d in simulation.datasets.items()})
    print(
        f"{options.method}: {len(simulation.datasets)} clients ({sizes}), "
        f"{simulation.replica.trainable_params:,} trainable parameters, {config.rounds} rounds x "
        f"{config.local_steps} local steps"
    )
    header = ("round", "train loss", "eval loss", "exact", "bytes up", "bytes down", "s")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (5, 10, 9, 6, 12, 12, 7))))

    def show(r: RoundResult) -> None:
        print(
            f"{r.round_id:>5} {_fmt(r.train_loss, '.4f'):>10} {_fmt(r.eval_loss, '.4f'):>9} "
            f"{_fmt(r.exact_match, '.3f'):>6} {r.bytes_up:>12,} {r.bytes_down:>12,} {r.round_seconds:>7.1f}",
            flush=True,
        )

    if options.resume_dir:
        print(f"progress kept in {options.resume_dir} after every round (rerun to continue)")
    try:
        result = simulation.run(progress=args.progress, on_round=show)
    except (ConfigError, StoreError) as exc:  # a stored state of other settings, or a failed save
        logger.error("%s", exc)
        return EXIT_CONFIG
    final = result.rounds[-1]
    print(f"done in {result.wall_seconds:.1f} s; model fingerprint {final.fingerprint}")
    if options.output:
        write_jsonl_rounds(options.output, result)
        print(f"rounds written to {options.output}")
    return 0
