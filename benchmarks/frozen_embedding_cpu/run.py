"""FZOO with the input embedding frozen (`fzoo-frozen-embed`) against MeZO, on the CPU (issue #13, check a).

    python benchmarks/frozen_embedding_cpu/run.py               # pilots (4 rates), then the main run
    python benchmarks/frozen_embedding_cpu/run.py --main-lr 1e-2  # the main run at a given rate first
    python benchmarks/frozen_embedding_cpu/run.py --lr-schedule cosine --main-lr 1e-2 --main-only

The estimator sweep's protocol and settings (`benchmarks/experiments.py`, FULL plan: 3 clients, non-IID,
batch 4, 36 forward passes per client per round; pilots of 10 rounds ranked on validation-120, the main
run of 28 rounds = 1,008 forward passes per client on test-120, a rate that diverges over the full budget
replaced by the next one), run into the CPU sweep's own cache (`benchmarks/experiments/runs`), where the
CPU runs of MeZO's main comparison and FZOO's pilots already are. Runs keep their progress after every
round (git-ignored `*.resume/`): stop at any time, rerun to continue. About 9 min per pilot and 40 min for
the main run on 2 idle cores.

Prints how many forward passes per client the main run needs to reach MeZO's final held-out loss (the
CPU main run at MeZO's accepted rate 3e-5), and the paired difference of the final losses. With
`--lr-schedule cosine` the runs decay their rate (the sweep's `--lr-schedule cosine`) and go to that
sweep's CPU cache (`benchmarks/experiments-estimators-cpu-cosine/runs`); the reference stays MeZO's
constant-rate CPU run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import experiments as ex  # noqa: E402

METHOD = "fzoo-frozen-embed"
CPU_SWEEP = HERE.parent / "experiments"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--main-lr", type=float, help="run the main comparison at this rate before the pilots"
    )
    parser.add_argument("--main-only", action="store_true", help="with --main-lr: stop after that run")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    args = parser.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    plan = dataclasses.replace(ex.FULL, est_lr_schedule=args.lr_schedule)
    out = CPU_SWEEP.with_name(f"experiments-estimators-cpu-{args.lr_schedule}")
    runner = ex.Runner(CPU_SWEEP if args.lr_schedule == "constant" else out, plan, fresh=False, log=log,
                       device="cpu", resume=True)  # fmt: skip
    test, validation = ex.held_out_splits(runner.runs_dir.parent, plan.est_eval_limit)

    def main_run(lr: float) -> dict:  # type: ignore[type-arg]
        flags = ex.est_flags(
            runner, METHOD, lr, clients=plan.est_clients, rounds=plan.est_rounds,
            eval_every=plan.est_eval_every, eval_data=test,
        )  # fmt: skip
        return runner.run(
            f"est-c{plan.est_clients}-{METHOD}-lr{lr:g}", flags, exact_match=True, per_example=True
        )

    if args.main_lr:
        run = main_run(args.main_lr)
        if args.main_only:
            print(f"{METHOD} at lr {args.main_lr:g}: held-out {[round(x, 4) for _, x in ex.eval_curve(run)]}")
            return
    candidates = {}
    for lr in ex.est_lrs(plan, METHOD):
        flags = ex.est_flags(
            runner, METHOD, lr, clients=plan.est_clients, rounds=plan.est_pilot_rounds,
            eval_every=max(1, plan.est_pilot_rounds // 2), eval_data=validation,
        )  # fmt: skip
        run = runner.run(f"est-pilot-{METHOD}-lr{lr:g}", flags)
        candidates[lr] = {
            "final": ex.final_loss(run),
            "diverged": ex.diverged(run),
            "curve": ex.eval_curve(run),
        }
        print(f"pilot lr {lr:g}: validation loss {candidates[lr]['final']:.4f}"
              f"{' (diverged)' if candidates[lr]['diverged'] else ''}")  # fmt: skip
    tried: dict[float, dict] = {}  # type: ignore[type-arg]

    def accept(lr: float) -> dict:  # type: ignore[type-arg]
        tried[lr] = main_run(lr)
        return tried[lr]

    lr, _ = ex.choose_with_fallback(ex.rank_candidates(candidates), accept)
    ours = tried[lr]
    reference = ex.Runner(CPU_SWEEP, ex.FULL, fresh=False, log=log, device="cpu")  # constant-rate MeZO
    reference_test = ex.held_out_splits(CPU_SWEEP, plan.est_eval_limit)[0]
    mezo_flags = ex.est_flags(
        reference, "mezo", 3e-5, clients=plan.est_clients, rounds=plan.est_rounds,
        eval_every=plan.est_eval_every, eval_data=reference_test,
    )  # fmt: skip
    mezo_name = f"est-c{plan.est_clients}-mezo-lr3e-05"
    if not reference.is_cached(mezo_name, mezo_flags, True, True):  # 105 min on this CPU: never by accident
        sys.exit(f"{mezo_name} is not in {reference.runs_dir}: run the CPU sweep's MeZO main run first")
    mezo = reference.run(mezo_name, mezo_flags, exact_match=True, per_example=True)
    target = ex.final_loss(mezo)
    curve = ex.eval_curve(ours)
    per_round = plan.est_forwards_per_round
    reached = next((r * per_round for r, loss in curve if r > 0 and loss <= target), None)
    delta, se = ex.paired_difference(ours, mezo)
    print(f"{METHOD} at lr {lr:g}: held-out {[round(loss, 4) for _, loss in curve]}")
    budget = plan.est_rounds * per_round
    print(f"MeZO (3e-5) final {target:.4f}; {METHOD} reaches it after {reached} of {budget} forward passes "
          f"per client; final difference {delta:+.4f} +- {se:.4f} (SE, paired)")  # fmt: skip


if __name__ == "__main__":
    main()
