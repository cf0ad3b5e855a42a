"""Shared against per-client seeds at 10 clients on the CPU (issue #13, check c), from the repository root:

    python benchmarks/seed_scheme_pair_cpu/run_pair.py             # short: 144 forward passes per client
    python benchmarks/seed_scheme_pair_cpu/run_pair.py --long      # the sweep's budget: 1,008 per client
    python benchmarks/seed_scheme_pair_cpu/run_pair.py --defaults  # the same budget, the default method

Short: FZOO (P = 8, lr 1e-2, the demo's rate), 4 rounds x 4 steps, about 15 min per run on 2 cores.
Long: the estimator sweep's own pair (its best ZO method, FZOO at its accepted lr 3e-3, 28 rounds x 4
steps, evaluated every 2 rounds), about 2 h per run on 2 cores. Defaults: the long budget with the
default training method (LoRA-FA: FZOO on the LoRA B factors, cosine from 1e-1; the sweep's batch 4),
about 1 h per run (only the small B factors are perturbed, so a step is almost only its forwards).
Long runs keep their progress after every round (`runs/<name>.resume/`, git-ignored): stop the script at
any time, rerun it to continue.

Both use `benchmarks/experiments.py`'s runner, so finished runs are cached in `runs/` here. The script
prints the held-out loss of each scheme on the sweep's test-120 set and the paired standard error of
their difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import experiments as ex  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Pair:
    """One budget and method, run with both seed schemes."""

    prefix: str
    lr: float
    rounds: int
    eval_every: int
    method: str = "fzoo"
    schedule: str = "constant"
    resume: bool = True  # keep progress after every round (the long runs)


SHORT = Pair("pair-c10", lr=1e-2, rounds=4, eval_every=4, resume=False)
LONG = Pair("pair-c10-long", lr=3e-3, rounds=ex.FULL.est_rounds, eval_every=ex.FULL.est_eval_every)
DEFAULTS = dataclasses.replace(
    LONG, prefix="pair-c10-defaults-lora-fa", lr=1e-1, method="fzoo-lora-fa", schedule="cosine"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--long", action="store_true", help="the sweep's budget (1,008 forward passes per client)"
    )
    budget.add_argument(
        "--defaults", action="store_true", help="the sweep's budget with the default training method"
    )
    args = parser.parse_args()
    pair = DEFAULTS if args.defaults else LONG if args.long else SHORT
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    plan = dataclasses.replace(ex.FULL, est_lr_schedule=pair.schedule)
    runner = ex.Runner(HERE, plan, fresh=False, log=log, device="cpu", resume=pair.resume)
    test, _ = ex.held_out_splits(HERE, plan.est_eval_limit)
    results = {}
    for scheme in ("shared", "per-client"):
        flags = ex.est_flags(
            runner, pair.method, pair.lr, clients=plan.est_seed_clients, rounds=pair.rounds,
            eval_every=pair.eval_every, eval_data=test, seed_scheme=scheme,
        )  # fmt: skip
        results[scheme] = runner.run(f"{pair.prefix}-{scheme}", flags, exact_match=True, per_example=True)
    for scheme, result in results.items():
        last = result["rounds"][-1]
        down = sorted({r["bytes_down"] for r in result["rounds"][1:]})
        print(f"{scheme}: held-out loss {last['eval_loss']:.4f}, exact match {last['exact_match']:.1%}, "
              f"bytes down per round (all clients) {down}")  # fmt: skip
    delta, se = ex.paired_difference(results["shared"], results["per-client"])
    print(f"shared - per-client: {delta:+.4f} +- {se:.4f} (SE, paired over the held-out examples)")


if __name__ == "__main__":
    main()
