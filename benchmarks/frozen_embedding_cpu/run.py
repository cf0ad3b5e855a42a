"""FZOO with the input embedding frozen (`fzoo-frozen-embed`) against MeZO, on the CPU (issue #13, check a).

    python benchmarks/frozen_embedding_cpu/run.py               # pilots (4 rates), then the main run
    python benchmarks/frozen_embedding_cpu/run.py --main-lr 1e-2  # the main run at a given rate first
    python benchmarks/frozen_embedding_cpu/run.py --lr-schedule cosine --main-lr 1e-2 --main-only
    python benchmarks/frozen_embedding_cpu/run.py --lr-schedule cosine --reference-only  # MeZO, same schedule
    python benchmarks/frozen_embedding_cpu/run.py --lr-schedule cosine --shipped-defaults  # as shipped
    python benchmarks/frozen_embedding_cpu/run.py --lr-schedule cosine --main-lr 1e-2 --main-only \
        --seed-scheme shared   # the main run with shared seeds, paired with its per-client run
    python benchmarks/frozen_embedding_cpu/run.py --method fzoo-lora-fa --pilots 3e-2 1e-1 3e-1
    python benchmarks/frozen_embedding_cpu/run.py --method fzoo-lora-fa --lr-schedule cosine --main-lr 1e-1 \
        --main-only [--seed-scheme shared --batch-size 8]   # LoRA-FA (session 18), as it would ship
    python benchmarks/frozen_embedding_cpu/run.py --method fedavg-adamw --lr-schedule cosine --main-lr 3e-5 \
        --main-only   # FedAvg-AdamW (backprop) on this CPU: the other end of check (b)'s gap

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
sweep's CPU cache (`benchmarks/experiments-estimators-cpu-cosine/runs`). `--reference-only` runs MeZO's
main run at its accepted 3e-5 with the chosen schedule (about 100 min on this CPU, resumable). MeZO's
final loss to reach is the lower of its constant-rate run and, when cached, its run with the same
schedule: the comparison never picks the schedule that favours the new method.

`--shipped-defaults` runs the server's and `simulate`'s training defaults (`fedmezo.fl.config.RunConfig`:
estimator, P, τ, rate, schedule, frozen part, seed scheme, batch size, lr spread, ε) on the sweep's task
(model, data, partition, clients, rounds, max length, test-120), so the defaults are measured as shipped
against the evidence they were chosen from (batch 4, per-client seeds). The defaults' values are in the
cache key: when they change, the run is stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import experiments as ex  # noqa: E402

METHOD = "fzoo-frozen-embed"  # the default --method: the full model with the input embedding frozen
METHODS = (METHOD, "fzoo-lora-fa", "fedavg-adamw")  # fzoo-lora-fa: FZOO on the LoRA B factors, A frozen;
# fedavg-adamw: the backprop reference of check (b), with --main-lr 3e-5 --main-only (its accepted rate)
MEZO_LR = 3e-5  # MeZO's accepted rate in the sweep (CPU and GPU alike)
CPU_SWEEP = HERE.parent / "experiments"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--main-lr", type=float, help="run the main comparison at this rate before the pilots"
    )
    parser.add_argument("--main-only", action="store_true", help="with --main-lr: stop after that run")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument(
        "--pilots", type=float, nargs="+", metavar="LR", help="run only the pilots at these rates of the grid"
    )
    parser.add_argument(
        "--reference-only", action="store_true",
        help="run MeZO's main run (3e-5) with --lr-schedule, then stop",
    )  # fmt: skip
    parser.add_argument(
        "--seed-scheme", choices=("per-client", "shared"), default="per-client",
        help="with --main-lr --main-only: the main run with this seed scheme (compared with per-client)",
    )  # fmt: skip
    parser.add_argument("--method", choices=METHODS, default=METHOD, help="the method to run")
    parser.add_argument(
        "--batch-size", type=int,
        help="with --main-lr --main-only: the main run at this batch size (the sweep's is 4)",
    )  # fmt: skip
    parser.add_argument(
        "--shipped-defaults", action="store_true",
        help="run the training defaults as shipped on the sweep's task (needs --lr-schedule cosine)",
    )  # fmt: skip
    args = parser.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    plan = dataclasses.replace(ex.FULL, est_lr_schedule=args.lr_schedule)
    out = CPU_SWEEP.with_name(f"experiments-estimators-cpu-{args.lr_schedule}")
    runner = ex.Runner(CPU_SWEEP if args.lr_schedule == "constant" else out, plan, fresh=False, log=log,
                       device="cpu", resume=True)  # fmt: skip
    test, validation = ex.held_out_splits(runner.runs_dir.parent, plan.est_eval_limit)

    def mezo_run(on: ex.Runner, held_out: Path, *, start: bool) -> dict | None:  # type: ignore[type-arg]
        """MeZO's main run at its accepted rate in `on`'s cache; run it only when `start`."""
        flags = ex.est_flags(
            on, "mezo", MEZO_LR, clients=plan.est_clients, rounds=plan.est_rounds,
            eval_every=plan.est_eval_every, eval_data=held_out,
        )  # fmt: skip
        name = f"est-c{plan.est_clients}-mezo-lr{MEZO_LR:g}"
        if not start and not on.is_cached(name, flags, True, True):  # 100 min on this CPU: never by accident
            return None
        return on.run(name, flags, exact_match=True, per_example=True)

    if args.reference_only:
        run = mezo_run(runner, test, start=True)
        assert run is not None
        print(f"mezo at lr {MEZO_LR:g} ({args.lr_schedule}): held-out "
              f"{[round(x, 4) for _, x in ex.eval_curve(run)]}")  # fmt: skip
        return

    method = args.method

    def main_run(lr: float, scheme: str = "per-client", batch: int | None = None) -> dict:  # type: ignore[type-arg]
        flags = ex.est_flags(
            runner, method, lr, clients=plan.est_clients, rounds=plan.est_rounds,
            eval_every=plan.est_eval_every, eval_data=test, seed_scheme=scheme,
        )  # fmt: skip
        variant = "" if scheme == "per-client" else f"-{scheme}"  # per-client: the sweep's own name
        if batch is not None and batch != plan.batch_size:
            flags["batch_size"] = batch
            variant += f"-b{batch}"
        name = f"est-c{plan.est_clients}-{method}{variant}-lr{lr:g}"
        return runner.run(name, flags, exact_match=True, per_example=True)

    if args.shipped_defaults:
        from fedmezo.fl.config import RunConfig

        mode = RunConfig().mode  # the full-mode defaults' run (session 17) keeps the name without one
        name = f"est-c{plan.est_clients}-shipped-defaults" + ("" if mode == "full" else f"-{mode}")
        run = runner.run(name, shipped_flags(runner, test), exact_match=True, per_example=True)
        report_against_evidence(runner, run, name)
        return

    if (args.seed_scheme != "per-client" or args.batch_size) and not (args.main_lr and args.main_only):
        sys.exit("--seed-scheme, --batch-size: only with --main-lr and --main-only (the search ran with "
                 "per-client seeds and the sweep's batch)")  # fmt: skip
    if args.main_lr:
        run = main_run(args.main_lr, args.seed_scheme, args.batch_size)
        if args.main_only:
            print(f"{method} at lr {args.main_lr:g}: held-out {[round(x, 4) for _, x in ex.eval_curve(run)]}")
            if args.seed_scheme != "per-client" or args.batch_size:  # against the sweep's own run
                delta, se = ex.paired_difference(run, main_run(args.main_lr))
                print(f"against per-client seeds, batch {plan.batch_size}: {delta:+.4f} +- {se:.4f} "
                      "(SE, paired)")  # fmt: skip
            return
    candidates = {}
    grid = ex.est_lrs(plan, method)
    if args.pilots and not set(args.pilots) <= set(grid):
        sys.exit(f"--pilots: {method}'s grid is {', '.join(f'{lr:g}' for lr in grid)}")
    for lr in args.pilots or grid:
        flags = ex.est_flags(
            runner, method, lr, clients=plan.est_clients, rounds=plan.est_pilot_rounds,
            eval_every=max(1, plan.est_pilot_rounds // 2), eval_data=validation,
        )  # fmt: skip
        run = runner.run(f"est-pilot-{method}-lr{lr:g}", flags)
        candidates[lr] = {
            "final": ex.final_loss(run),
            "diverged": ex.diverged(run),
            "curve": ex.eval_curve(run),
        }
        print(f"pilot lr {lr:g}: validation loss {candidates[lr]['final']:.4f}"
              f"{' (diverged)' if candidates[lr]['diverged'] else ''}")  # fmt: skip
    if args.pilots:
        return
    tried: dict[float, dict] = {}  # type: ignore[type-arg]

    def accept(lr: float) -> dict:  # type: ignore[type-arg]
        tried[lr] = main_run(lr)
        return tried[lr]

    lr, _ = ex.choose_with_fallback(ex.rank_candidates(candidates), accept)
    ours = tried[lr]
    constant = ex.Runner(CPU_SWEEP, ex.FULL, fresh=False, log=log, device="cpu")
    references = {"constant": mezo_run(constant, ex.held_out_splits(CPU_SWEEP, plan.est_eval_limit)[0],
                                       start=False)}  # fmt: skip
    if args.lr_schedule != "constant":
        references[args.lr_schedule] = mezo_run(runner, test, start=False)
    if references["constant"] is None:
        sys.exit(f"MeZO's constant-rate main run is not in {constant.runs_dir}: run the CPU sweep's first")
    finals = {k: ex.final_loss(r) for k, r in references.items() if r is not None}
    for k, r in references.items():
        print(f"MeZO (3e-5, {k}): " + (f"final {finals[k]:.4f}" if r else "not run (--reference-only)"))
    schedule = min(finals, key=finals.__getitem__)
    mezo, target = references[schedule], finals[schedule]
    assert mezo is not None
    curve = ex.eval_curve(ours)
    reached = ex.forwards_to(ours, target)
    delta, se = ex.paired_difference(ours, mezo)
    print(f"{method} at lr {lr:g}: held-out {[round(loss, 4) for _, loss in curve]}")
    budget = plan.est_rounds * plan.est_forwards_per_round
    print(f"MeZO's lower final ({schedule} rate) {target:.4f}; {method} reaches it after {reached:g} of "
          f"{budget} forward passes per client; final difference {delta:+.4f} +- {se:.4f} "
          "(SE, paired)")  # fmt: skip


# The training settings a run takes from its defaults (the sweep's other settings are its task's).
TRAINING_DEFAULTS = (
    *ex.RUN_DEFAULTS_OF_THE_SWEEP, "batch_size", "lr_spread", "lr_strategy", "eps", "aggregation",
)  # fmt: skip


def shipped_flags(runner: ex.Runner, test: Path) -> dict:  # type: ignore[type-arg]
    """The sweep's task (as in its main runs) with every training setting at today's default."""
    from fedmezo.fl.config import RunConfig

    plan = runner.plan
    if plan.est_lr_schedule != RunConfig.lr_schedule:
        sys.exit(f"--shipped-defaults: the default schedule is {RunConfig.lr_schedule}; pass --lr-schedule "
                 f"{RunConfig.lr_schedule} (its cache)")  # fmt: skip
    task = ex.est_flags(
        runner, "mezo", 1.0, clients=plan.est_clients, rounds=plan.est_rounds,
        eval_every=plan.est_eval_every, eval_data=test,
    )  # fmt: skip
    flags = {k: v for k, v in task.items() if k not in TRAINING_DEFAULTS}
    defaults = RunConfig()  # resolved: `freeze = auto` and `lr = 0` as the mode's concrete values
    flags.update({k: getattr(defaults, k) for k in TRAINING_DEFAULTS})
    per_step = ex.forwards_per_step(str(flags["estimator"]), int(flags["perturbations"]))
    if flags["local_steps"] * per_step != plan.est_forwards_per_round:
        sys.exit(f"the defaults spend {flags['local_steps'] * per_step} forward passes per round, the sweep "
                 f"{plan.est_forwards_per_round}: not comparable")  # fmt: skip
    return flags


def report_against_evidence(runner: ex.Runner, run: dict, own: str) -> None:  # type: ignore[type-arg]
    """The shipped defaults against the run they were chosen from and MeZO's, paired over test-120."""
    curve = ex.eval_curve(run)
    exact = [r["exact_match"] for r in run["rounds"] if r["exact_match"] is not None]
    print(f"shipped defaults: held-out {[round(loss, 4) for _, loss in curve]}, final exact match "
          f"{exact[-1] if exact else None}")  # fmt: skip
    clients = runner.plan.est_clients
    for name in (
        f"est-c{clients}-{METHOD}-lr0.01", f"est-c{clients}-fzoo-lora-fa-shared-b8-lr0.1",
        f"est-c{clients}-shipped-defaults", f"est-c{clients}-mezo-lr{MEZO_LR:g}",
    ):  # fmt: skip
        path = runner.runs_dir / f"{name}.json"
        if name == own:
            continue
        if not path.exists():
            print(f"{name}: not cached")
            continue
        other = json.loads(path.read_text())["result"]
        delta, se = ex.paired_difference(run, other)
        target = ex.final_loss(other)
        reached = ex.forwards_to(run, target)  # inf: never
        print(f"against {name} (final {target:.4f}): {delta:+.4f} +- {se:.4f} (SE, paired); its final "
              f"reached after {reached:g} forward passes per client")  # fmt: skip


if __name__ == "__main__":
    main()
