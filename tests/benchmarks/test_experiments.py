"""`make experiments QUICK=1` end to end (issue #5: the quick mode runs in CI), and its verdict logic."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = (
    "convergence_rounds",
    "convergence_wallclock",
    "convergence_wallclock_link",
    "exact_match",
    "memory",
    "communication",
    "personalization",
    "sensitivity",
    "trajectory",
    "estimators_forward_passes",
    "estimators_wallclock",
    "estimators_lr_search",
    "seed_schemes",
)
# Issue #5 asks for <= 20 min on a 2-core CPU; that figure is measured and recorded (summary.json,
# RESULTS.md), not asserted here: a shared CI machine must not turn a timing into a failure.
QUICK_TIMEOUT_S = 45 * 60


def _load() -> ModuleType:
    return load_script("benchmarks/experiments.py")


experiments = _load()


@pytest.mark.timeout(QUICK_TIMEOUT_S + 300)
def test_make_experiments_quick(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        ["make", "--no-print-directory", "experiments", "QUICK=1", f"EXPERIMENTS_OUT={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=QUICK_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"]["name"] == "quick" and summary["plan"]["model"] == "smollm2-135m"
    assert summary["wall_seconds"] > 0
    for name in PLOTS:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    text = (out / "RESULTS.md").read_text()
    assert text.count(experiments.BEGIN) == 1 and text.count(experiments.END) == 1
    verdicts = summary["verdicts"]
    assert [v["claim"][:2] for v in verdicts] == ["1.", "2.", "3.", "4."]
    assert all(v["verdict"] in ("confirmed", "partly confirmed", "refuted") for v in verdicts)
    for v in verdicts:
        assert f"**{v['verdict']}**" in text
    # Claim 4 is fedmezo's own and must hold even at quick size: same trajectory as full-state FedMeZO.
    gaps = [g for per_run in summary["trajectory"].values() for _, g in per_run]
    assert gaps and max(gaps) <= 1e-4
    assert verdicts[3]["verdict"] == "confirmed"
    # A MeZO step stays near inference memory; backprop with AdamW does not (real weights, real batch).
    memory = summary["memory"]
    inference = memory["inference"]["peak_bytes"]
    assert memory["fedmezo"]["peak_bytes"] / inference <= 1.1
    assert memory["fedavg-adamw"]["peak_bytes"] > memory["fedmezo"]["peak_bytes"]
    # Issue #13: every new path ran at toy size: the search, the budgeted main runs, both seed schemes.
    plan = summary["plan"]
    est = summary["estimator_summary"]
    assert {len(info["candidates"]) for info in est["search"].values()} == {len(plan["est_mezo_lrs"])}
    assert all(info["attempts"] and info["accepted"] is not None for info in est["search"].values())
    # the deliberately large MeZO candidate diverges in its pilot and is ranked last
    mezo = est["search"]["mezo"]
    assert mezo["candidates"][str(max(plan["est_mezo_lrs"]))]["diverged"]
    assert mezo["ranking"][-1] == max(plan["est_mezo_lrs"])
    main = {k: v for k, v in est["runs"].items() if k.startswith("main-")}
    assert set(main) == {f"main-{m}" for m in experiments.EST_METHODS}
    expected = ("mezo", "fzoo", "adamezo", "fzoo-lora", "fzoo-frozen-embed", "fzoo-lora-fa", "fedavg-adamw")
    assert {f"main-{m}" for m in expected} <= set(main)
    budget = plan["est_rounds"] * plan["est_forwards_per_round"]
    assert {r["forward_passes_per_client"] for r in main.values()} == {budget} == {est["budget"]}
    clients = plan["est_seed_clients"]
    assert {f"c{clients}-per-client", f"c{clients}-shared"} <= set(est["runs"])
    for run in est["runs"].values():
        assert run["eval_examples"] == plan["est_eval_limit"]
        assert run["per_example_mismatch"] <= 1e-5  # per-example losses add up to the held-out loss
        assert run["final_loss_se"] > 0
    checks = summary["estimator_checks"]
    assert [c["check"][:3] for c in checks] == ["(a)", "(b)", "(c)"]
    assert all(c["verdict"] in ("met", "not met", "n/a") for c in checks)
    assert "Estimators and seed schemes" in text and "Done when (issue #13)" in text
    for c in checks:
        assert c["evidence"] in text


def _run(losses: list[float], seconds: float = 1.0, bytes_per_round: int = 100) -> dict[str, Any]:
    rounds = [
        {"round_id": i, "eval_loss": loss, "exact_match": None, "round_seconds": 0.0 if i == 0 else seconds,
         "bytes_up": 0 if i == 0 else bytes_per_round, "bytes_down": 0, "selected": [] if i == 0 else ["a"],
         "peak_memory_bytes": 1}
        for i, loss in enumerate(losses)
    ]  # fmt: skip
    return {"rounds": rounds, "config": {"rounds": len(losses) - 1, "local_steps": 1}}


def _results(
    zo: list[float], fo: list[float], full: list[float], personal: dict[str, list[float]]
) -> dict[str, Any]:
    conv = {
        "c3": {"fedmezo": _run(zo), "fedmezo-full": _run(full, bytes_per_round=10**6), "fedavg": _run(fo)}
    }
    results = {
        "convergence": conv,
        "memory": {k: {"peak_bytes": v, "baseline_bytes": 0} for k, v in
                   {"inference": 100, "fedmezo": 101, "fedavg-sgd": 150, "fedavg-adamw": 300}.items()},
        "personalization": {"1e-4": {s: _run(v) for s, v in personal.items()}},
    }  # fmt: skip
    results["trajectory"] = {
        "c3": experiments.trajectory_gap(conv["c3"]["fedmezo"], conv["c3"]["fedmezo-full"])
    }
    return results


def test_verdicts_follow_the_numbers() -> None:
    personal = {"frozen": [3.0, 2.5], "random": [3.0, 2.4], "round-wise": [3.0, 2.6]}
    good = _results([3.0, 2.0], [3.0, 2.5], [3.0, 2.0], personal)
    by_claim = {v["claim"][0]: v["verdict"] for v in experiments.verdicts(good)}
    assert by_claim == {"1": "confirmed", "2": "confirmed", "3": "partly confirmed", "4": "confirmed"}
    bad = _results([3.0, 2.9], [3.0, 2.0], [3.0, 2.8], {"frozen": [3.0, 2.0], "random": [3.0, 2.1]})
    by_claim = {v["claim"][0]: v["verdict"] for v in experiments.verdicts(bad)}
    assert by_claim == {"1": "refuted", "2": "confirmed", "3": "refuted", "4": "refuted"}


def test_personalization_verdict_counts_every_base_rate() -> None:
    results = _results([3.0, 2.0], [3.0, 2.5], [3.0, 2.0], {"frozen": [3.0, 2.5], "random": [3.0, 2.6]})
    results["personalization"]["3e-05"] = {"frozen": _run([3.0, 2.8]), "random": _run([3.0, 2.7])}
    verdict = experiments.claim_personalization(results)
    assert verdict["verdict"] == "partly confirmed"
    assert "η₀ 1e-4" in verdict["evidence"] and "η₀ 3e-05" in verdict["evidence"]


def test_section_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    quoted = f"Prose that quotes `{experiments.BEGIN}` inline is not a marker."
    md.write_text(f"# Measured results\n\n## Other\n{quoted}\nkeep me\n")
    first = f"{experiments.BEGIN}\nold\n{experiments.END}\n"
    experiments.write_section(md, first)
    experiments.write_section(md, f"{experiments.BEGIN}\nnew\n{experiments.END}\n")
    text = md.read_text()
    assert "keep me" in text and quoted in text and "new" in text and "old" not in text
    assert text.count(f"\n{experiments.BEGIN}\n") == 1


def test_the_federated_model_is_a_step_function_of_wall_clock() -> None:
    curve = [(0.0, 4.0), (10.0, 2.0)]
    assert experiments.loss_at(curve, 5.0) == 4.0  # round 1 has not closed yet
    assert experiments.loss_at(curve, 10.0) == 2.0
    assert math.isnan(experiments.loss_at(curve, 11.0))


def test_transfers_over_the_link_are_added_per_round() -> None:
    run = _run([3.0, 2.0, 1.0], seconds=1.0, bytes_per_round=12_500_000)  # 100 Mbit for one client
    assert experiments.wall_curve(run) == [(0.0, 3.0), (1.0, 2.0), (2.0, 1.0)]
    with_link = experiments.wall_curve(run, link_mbps=100.0)
    assert with_link == [(0.0, 3.0), (pytest.approx(2.0), 2.0), (pytest.approx(4.0), 1.0)]


def test_time_to_a_target_loss() -> None:
    curve = [(0.0, 4.0), (10.0, 2.5), (20.0, 2.0)]
    assert experiments.time_to(curve, 2.5) == 10.0
    assert experiments.time_to(curve, 1.0) == math.inf


def test_mean_loss_after_start_is_the_area_under_the_curve() -> None:
    assert experiments.mean_loss_after_start(_run([4.0, 3.0, 1.0])) == pytest.approx(2.0)  # round 0 left out


# --------------------------------------------------------------------------------------------------
# Estimators and seed schemes (issue #13)
# --------------------------------------------------------------------------------------------------
def _zo_run(
    losses: list[float],
    *,
    forwards: int = 36,
    seconds: float = 1.0,
    per_example: tuple[list[float], list[int]] | None = None,
    method: str = "fedmezo",
) -> dict[str, Any]:
    run = _run(losses, seconds=seconds)
    for r in run["rounds"][1:]:
        r["forward_passes"] = {"a": forwards}
    run["rounds"][0]["forward_passes"] = {}
    if per_example is not None:
        run["per_example"] = {"loss": per_example[0], "tokens": per_example[1]}
    run["method"] = method
    return run


def test_held_out_splits_are_disjoint_and_stratified(tmp_path: Path) -> None:
    from fedmezo.data import read_jsonl

    test, validation = experiments.held_out_splits(tmp_path, 120)
    a, b = read_jsonl(test), read_jsonl(validation)
    assert len(a) == len(b) == 120
    assert not {(e.instruction, e.output) for e in a} & {(e.instruction, e.output) for e in b}
    small = read_jsonl(experiments.held_out_splits(tmp_path, 12)[0])
    categories = {e.category for e in a}
    assert len(categories) == 7 and {e.category for e in small} != {"arithmetic"}
    # proportional: the largest category holds about its share of the whole held-out set (90 of 240)
    assert 40 <= sum(e.category == "arithmetic" for e in a) <= 50


def test_divergence_rule() -> None:
    assert not experiments.diverged(_zo_run([3.0, 2.0, 2.1]))
    assert experiments.diverged(_zo_run([3.0, 2.0, 2.5]))  # ends 0.5 above its best
    assert experiments.diverged(_zo_run([3.0, math.nan, 2.0]))
    assert not experiments.diverged(_zo_run([3.0, 3.05]))  # a rate too small to move is not diverging


def test_fallback_to_the_next_candidate_when_the_full_run_diverges() -> None:
    runs = {1e-4: _zo_run([3.0, 2.0, 4.0]), 3e-5: _zo_run([3.0, 2.2, 2.1]), 1e-5: _zo_run([3.0, 2.5])}
    called: list[float] = []

    def run_at(lr: float) -> dict[str, Any]:
        called.append(lr)
        return runs[lr]

    lr, attempts = experiments.choose_with_fallback([1e-4, 3e-5, 1e-5], run_at)
    assert lr == 3e-5 and called == [1e-4, 3e-5]
    assert [a["diverged"] for a in attempts] == [True, False]
    every = {1e-4: _zo_run([3.0, 2.0, 4.0]), 3e-5: _zo_run([3.0, 2.0, 3.0])}
    lr, attempts = experiments.choose_with_fallback([1e-4, 3e-5], lambda lr: every[lr])
    assert lr == 3e-5 and all(a["diverged"] for a in attempts)  # all diverged: the lowest final loss


def test_ranking_puts_diverged_pilots_last() -> None:
    cands = {1e-5: {"final": 2.5, "diverged": False}, 1e-4: {"final": 2.0, "diverged": True},
             3e-5: {"final": 2.3, "diverged": False}}  # fmt: skip
    assert experiments.rank_candidates(cands) == [3e-5, 1e-5, 1e-4]


def test_forward_passes_are_cumulative_per_client() -> None:
    run = _zo_run([3.0, 2.5, 2.0, 1.8], forwards=36)
    assert experiments.forward_curve(run) == [(0, 3.0), (36, 2.5), (72, 2.0), (108, 1.8)]
    assert experiments.forwards_to(run, 2.0) == 72
    assert experiments.forwards_to(run, 1.0) == math.inf
    assert experiments.total_forwards(run) == 108


def test_paired_difference_and_its_standard_error() -> None:
    a = _zo_run([3.0, 2.0], per_example=([1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1]))
    b = _zo_run([3.0, 2.0], per_example=([1.5, 2.5, 3.5, 4.5], [1, 1, 1, 1]))
    diff, se = experiments.paired_difference(a, b)
    assert diff == pytest.approx(-0.5) and se == pytest.approx(0.0)  # a constant shift: no noise
    c = _zo_run([3.0, 2.0], per_example=([1.0, 3.0, 3.0, 3.0], [1, 1, 1, 1]))
    diff, se = experiments.paired_difference(c, a)  # differences 0, 1, 0, -1: mean 0, sd sqrt(2/3)
    assert diff == pytest.approx(0.0) and se == pytest.approx(math.sqrt(2 / 3) / 2)
    weighted = _zo_run([3.0, 2.0], per_example=([1.0, 3.0], [3, 1]))
    flat = _zo_run([3.0, 2.0], per_example=([1.0, 1.0], [3, 1]))
    assert experiments.paired_difference(weighted, flat)[0] == pytest.approx(0.5)  # token-weighted
    assert math.isnan(experiments.paired_difference(a, _zo_run([3.0, 2.0]))[1])


def _est(
    mezo: list[float], fzoo: list[float], fedavg: list[float], shared: float, own: float
) -> dict[str, Any]:
    noise = ([0.0, 0.1, -0.1, 0.0], [1, 1, 1, 1])

    def pe(final: float) -> tuple[list[float], list[int]]:
        return [final + x for x in noise[0]], noise[1]

    main = {
        "mezo": _zo_run(mezo, per_example=pe(mezo[-1])),
        "fzoo": _zo_run(fzoo, per_example=pe(fzoo[-1])),
        "fedavg-adamw": _zo_run(fedavg, per_example=pe(fedavg[-1]), method="fedavg"),
    }
    runs = {
        "shared": _zo_run([3.0, shared], per_example=([shared, shared + 0.2, shared, shared], noise[1])),
        "per-client": _zo_run([3.0, own], per_example=([own, own, own + 0.2, own], noise[1])),
    }
    return {"main": main, "seed_schemes": {"estimator": "fzoo", "lr": 3e-3, "clients": 10, "runs": runs}}


def test_estimator_checks_follow_the_numbers() -> None:
    # FZOO reaches MeZO's final 2.4 after 36 of MeZO's 216 forwards (1/6) and ends lower; at equal time
    # MeZO 2.4, FZOO 1.75, FedAvg 1.2: over half the gap; shared and per-client differ by 0.
    good = _est([3, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4], [3, 2.3, 2.1, 2.0, 1.9, 1.85, 1.75],
                [3, 2.0, 1.6, 1.4, 1.3, 1.25, 1.2], shared=2.0, own=2.0)  # fmt: skip
    checks = {c["check"][:3]: c for c in experiments.estimator_checks(good)}
    assert {k: c["verdict"] for k, c in checks.items()} == {"(a)": "met", "(b)": "met", "(c)": "met"}
    assert "≤ 36 of MeZO's 216" in checks["(a)"]["evidence"] and "ideal" in checks["(a)"]["evidence"]
    assert "closes 0.54 of the 1.200 gap" in checks["(b)"]["evidence"]
    assert "|" not in "".join(c["evidence"] for c in checks.values())  # table cells
    bad = _est([3, 2.5, 2.0], [3, 2.8, 2.1], [3, 2.6, 2.5], shared=2.5, own=2.0)
    checks = {c["check"][:3]: c for c in experiments.estimator_checks(bad)}
    assert {k: c["verdict"] for k, c in checks.items()} == {"(a)": "not met", "(b)": "n/a", "(c)": "not met"}
    assert "does not reach" in checks["(a)"]["evidence"]
    assert "higher beyond noise" in checks["(c)"]["evidence"]


def test_the_candidate_is_the_other_zo_method_with_the_lowest_final_loss() -> None:
    est = _est([3, 2.5, 2.0], [3, 2.8, 2.1], [3, 2.6, 2.5], shared=2.5, own=2.0)
    assert experiments.candidate(est) == "fzoo"  # the only other ZO method in this sweep
    est["main"]["fzoo-lora"] = _zo_run([3, 2.2, 1.9], per_example=([1.9] * 4, [1, 1, 1, 1]))
    assert experiments.candidate(est) == "fzoo-lora"
    est["main"]["mezo"] = _zo_run([3, 1.0, 0.5])  # MeZO itself is never its own challenger
    assert experiments.candidate(est) == "fzoo-lora"
    checks = {c["check"][:3]: c for c in experiments.estimator_checks(est)}
    assert checks["(a)"]["check"].startswith("(a) fzoo-lora")


def test_a_sweep_without_the_seed_scheme_pair_says_so() -> None:
    est = _est([3, 2.5, 2.0], [3, 2.8, 2.1], [3, 2.6, 2.5], shared=2.5, own=2.0)
    est["seed_schemes"] = None
    checks = {c["check"][:3]: c for c in experiments.estimator_checks(est)}
    assert checks["(c)"]["verdict"] == "not run" and "--skip-seed-schemes" in checks["(c)"]["evidence"]


def test_prefetched_runs_equal_runs_made_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs made side by side in processes (--jobs) are the same runs: same rounds, same fingerprints."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # spawned processes import the module by name
    plan = experiments.dataclasses.replace(experiments.QUICK, model="tiny-random")
    logs: list[str] = []
    par = experiments.Runner(tmp_path / "par", plan, fresh=False, log=logs.append, jobs=2)
    seq = experiments.Runner(tmp_path / "seq", plan, fresh=False, log=logs.append)
    shape = {"num_clients": 2, "rounds": 2, "local_steps": 1, "estimator": "fzoo", "perturbations": 2}
    specs = [
        experiments.RunSpec(f"r-{scheme}", par.base(**shape, seed_scheme=scheme, lr=1e-3))
        for scheme in ("per-client", "shared")
    ]
    par.prefetch(specs)
    assert any("2 runs side by side in 2 processes" in line for line in logs)
    assert all(par.is_cached(s.name, s.flags, s.exact_match, s.per_example) for s in specs)
    for spec in specs:
        cached = par.run(spec.name, spec.flags)  # found in the cache the processes wrote
        fresh = seq.run(spec.name, spec.flags)
        assert [r["fingerprint"] for r in cached["rounds"]] == [r["fingerprint"] for r in fresh["rounds"]]
        assert [r["eval_loss"] for r in cached["rounds"]] == [r["eval_loss"] for r in fresh["rounds"]]
    assert not list((tmp_path / "par" / "runs").glob("*.part"))  # cache files are written whole


def test_a_resumable_runner_continues_a_stopped_run_and_then_drops_its_progress(tmp_path: Path) -> None:
    """Long CPU runs (`run_pair.py --long`) survive a stop: a rerun continues from runs/<name>.resume/,
    removes it once the run is cached, and caches under the plain run's key (the folder changes no bit)."""
    from fedmezo.sim import Simulation, load_sim_config

    plan = experiments.dataclasses.replace(experiments.QUICK, model="tiny-random")
    logs: list[str] = []
    resumable = experiments.Runner(tmp_path, plan, fresh=False, log=logs.append, resume=True)
    flags = resumable.base(num_clients=2, rounds=3, local_steps=1, lr=1e-3)
    progress = tmp_path / "runs" / "r.resume"
    config, options = load_sim_config(
        {
            k: str(v)
            for k, v in {**experiments.RUN_DEFAULTS_OF_THE_SWEEP, **flags, "resume_dir": progress}.items()
        },
        env={},
    )

    def stop(record: Any) -> None:
        if record.round_id == 2:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):  # a sweep killed after round 2
        Simulation(config, options, exact_match=False).run(progress=False, on_round=stop)
    assert progress.is_dir()
    run = resumable.run("r", flags)
    assert not progress.exists()
    assert resumable.is_cached("r", flags, False, False)
    plain = experiments.Runner(tmp_path / "plain", plan, fresh=False, log=logs.append)
    fresh = plain.run("r", flags)
    assert [r["fingerprint"] for r in run["rounds"]] == [r["fingerprint"] for r in fresh["rounds"]]
    assert [r["eval_loss"] for r in run["rounds"]] == [r["eval_loss"] for r in fresh["rounds"]]


def test_each_fzoo_variant_trains_what_its_name_says(tmp_path: Path) -> None:
    """The sweep's FZOO variants differ only in what θ is: LoRA adapters, the model without its embedding,
    or the LoRA B factors alone; each spends the same forward passes per round."""
    runner = experiments.Runner(tmp_path, experiments.FULL, fresh=False, log=lambda _: None)
    flags = {
        m: experiments.est_flags(
            runner, m, 1e-2, clients=3, rounds=1, eval_every=1, eval_data=tmp_path / "held_out.jsonl"
        )
        for m in ("fzoo", *experiments.FZOO_VARIANTS)
    }
    parts = {m: (f.get("mode", "full"), f.get("freeze", "")) for m, f in flags.items()}
    assert parts == {
        "fzoo": ("full", ""),
        "fzoo-lora": ("lora", ""),
        "fzoo-frozen-embed": ("full", "embed_tokens"),
        "fzoo-lora-fa": ("lora", "lora_A"),
    }
    budget = {(f["estimator"], f["perturbations"], f["local_steps"]) for f in flags.values()}
    assert budget == {("fzoo", 8, 4)}
