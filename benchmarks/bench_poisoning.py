"""Do the poisoning-safe defaults cost honest clients anything, and what do they stop? (issue #17 item 1)

    python benchmarks/bench_poisoning.py           # smollm2-135m, 3 non-IID clients, mezo and fzoo (~15 min)
    python benchmarks/bench_poisoning.py --quick   # tiny-random, seconds (CI: tests/benchmarks)

For each estimator, five `fedmezo simulate` runs of the same federation (demo data partitioned by
category, the same seeds and learning rate):

  honest, defaults     `outlier_k` 10, `norm_k` 10, `max_step` 0.1
  honest, off          all three 0: the aggregation before these defaults
  attack, defaults     as honest, but client-3 uploads the outside client's scalars
                       (±3.4028235e38, 1e30, repeated over its τ·P slots) in every round: the
                       outlier rule rejects it (3 clients)
  attack, bounds only  `outlier_k` 0: what the norm bound and ceiling alone leave (a federation of
                       1–2 clients, or an attacker that stays under the outlier threshold)
  attack, off

The honest pair answers "no cost": when the bounds never touch an honest client the two runs end every
round on the same fingerprint, bit for bit, so their learning is identical (not merely close). The
attack pair shows what the defaults stop: the held-out loss with the attacker in the federation.
The attacker's upload replaces client-3's real one after it trained (the server sees only scalars, so
this is exactly what a malicious daemon can do). Output: a markdown table on stdout and JSON (--output,
default benchmarks/poisoning.json; none with --quick unless given), with the machine and load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ATTACK = (3.4028235e38, -3.4028235e38, 3.4028235e38, 1e30)
ATTACKER = "client-3"
OFF = {"norm_k": 0.0, "max_step": 0.0, "outlier_k": 0.0}  # the aggregation before the defaults
ESTIMATORS = {  # estimator → (P, lr): rates inside each method's searched range of make experiments
    "mezo": (1, 1e-5),
    "fzoo": (8, 3e-3),
}


def attack_scalars(count: int) -> tuple[float, ...]:
    return tuple(ATTACK[i % len(ATTACK)] for i in range(count))


def run(flags: Mapping[str, Any], *, attack: bool) -> dict[str, Any]:
    """One simulation; with `attack`, ATTACKER's uploads are replaced by the attack's scalars."""
    from fedmezo.sim import Simulation, load_sim_config, methods

    config, options = load_sim_config({k: str(v) for k, v in flags.items()}, env={})
    simulation = Simulation(config, options, exact_match=False)
    train = methods._train_mezo

    def tampered(world: Any, tasks: Any, on_trained: Any = None) -> Any:
        updates, requests, seconds = train(world, tasks, on_trained)
        out = [
            replace(u, projected_grads=attack_scalars(len(u.projected_grads)))
            if u.client_id == ATTACKER
            else u
            for u in updates
        ]
        return out, requests, seconds

    if attack:
        methods._train_mezo = tampered  # type: ignore[assignment]
    try:
        result = simulation.run(progress=False)
    finally:
        methods._train_mezo = train  # type: ignore[assignment]
    rounds = result.rounds
    return {
        "final_loss": rounds[-1].eval_loss,
        "initial_loss": rounds[0].eval_loss,
        "fingerprints": [r.fingerprint for r in rounds],
        "bounded": [list(r.bounded) for r in rounds[1:]],
        "rejected": [list(r.rejected) for r in rounds[1:]],
        "wall_seconds": result.wall_seconds,
    }


def sweep(
    model: str, rounds: int, forwards: int, eval_limit: int, estimators: Sequence[str] = tuple(ESTIMATORS)
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for estimator in estimators:
        perturbations, lr = ESTIMATORS[estimator]
        per_step = 2 * perturbations if estimator == "mezo" else perturbations + 1
        base = {
            "model": model, "num_clients": 3, "rounds": rounds, "local_steps": max(1, forwards // per_step),
            "estimator": estimator, "perturbations": perturbations, "lr": lr, "lr_spread": 0.0,
            "partition": "category", "batch_size": 4, "max_length": 64, "eval_limit": eval_limit,
            "eval_every": rounds, "lr_schedule": "constant", "freeze": "", "seed_scheme": "per-client",
            "mode": "full",  # as recorded in poisoning.json (the default became LoRA-FA later)
        }  # fmt: skip
        runs = {}
        for name, attack, bounds in (
            ("honest-on", False, {}),
            ("honest-off", False, OFF),
            ("attack-on", True, {}),
            ("attack-bounds-only", True, {"outlier_k": 0.0}),
            ("attack-off", True, OFF),
        ):
            start = time.perf_counter()
            runs[name] = run({**base, **bounds}, attack=attack)
            print(f"  {estimator} {name}: final loss {runs[name]['final_loss']} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
        results[estimator] = {"flags": base, "runs": runs}
    return results


def summary_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for estimator, entry in results.items():
        runs = entry["runs"]
        same = runs["honest-on"]["fingerprints"] == runs["honest-off"]["fingerprints"]
        touched = sum(len(b) for b in runs["honest-on"]["bounded"])
        rows.append([
            estimator, f"{runs['honest-on']['initial_loss']:.4f}", f"{runs['honest-on']['final_loss']:.4f}",
            f"{runs['honest-off']['final_loss']:.4f}", "yes" if same else "NO", str(touched),
            _fmt(runs["attack-on"]["final_loss"]), _fmt(runs["attack-bounds-only"]["final_loss"]),
            _fmt(runs["attack-off"]["final_loss"]),
        ])  # fmt: skip
    return rows


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.4f}" if math.isfinite(x) else str(x))


def markdown(results: Mapping[str, Any]) -> str:
    header = [
        "estimator", "initial loss", "honest, defaults", "honest, off", "same fingerprints every round",
        "honest clients bounded", "attack, defaults", "attack, bounds only", "attack, off",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(results)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny-random, 2 rounds (seconds)")
    parser.add_argument("--output", type=Path, help="JSON report (default benchmarks/poisoning.json)")
    parser.add_argument("--estimators", nargs="+", choices=sorted(ESTIMATORS), default=list(ESTIMATORS))
    args = parser.parse_args(argv)
    load = os.getloadavg()
    if args.quick:
        results = sweep("tiny-random", rounds=2, forwards=8, eval_limit=8, estimators=args.estimators)
    else:
        results = sweep("smollm2-135m", rounds=4, forwards=8, eval_limit=48, estimators=args.estimators)
    table = markdown(results)
    print(table)
    output = args.output or (None if args.quick else ROOT / "benchmarks" / "poisoning.json")
    if output is not None:
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "load_before": load,
            "load_after": os.getloadavg(),
            "results": results,
            "table": table,
        }
        output.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
