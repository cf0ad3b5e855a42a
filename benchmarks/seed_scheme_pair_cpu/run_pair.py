"""A short 10-client seed-scheme pair on the CPU (issue #13, check c), from the repository root:

    python benchmarks/seed_scheme_pair_cpu/run_pair.py

FZOO (P = 8, lr 1e-2, the demo's rate) with per-client and with shared seeds, 10 clients, 4 rounds x 4
steps (144 forward passes per client), held-out loss on the estimator sweep's test-120 set, and the
paired standard error of the difference. Uses `benchmarks/experiments.py`'s runner, so the two runs are
cached in `runs/` here (about 15 min each on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import experiments as ex  # noqa: E402


def main() -> None:
    runner = ex.Runner(HERE, ex.FULL, fresh=False, log=lambda m: print(m, file=sys.stderr), device="cpu")
    test, _ = ex.held_out_splits(HERE, ex.FULL.est_eval_limit)
    results = {}
    for scheme in ("shared", "per-client"):
        flags = ex.est_flags(
            runner, "fzoo", 1e-2, clients=10, rounds=4, eval_every=4, eval_data=test, seed_scheme=scheme
        )
        results[scheme] = runner.run(f"pair-c10-{scheme}", flags, exact_match=True, per_example=True)
    for scheme, result in results.items():
        last = result["rounds"][-1]
        down = [r["bytes_down"] for r in result["rounds"][1:]]
        print(f"{scheme}: held-out loss {last['eval_loss']:.4f}, exact match {last['exact_match']:.1%}, "
              f"bytes down per round (all clients) {down}")  # fmt: skip
    delta, se = ex.paired_difference(results["shared"], results["per-client"])
    print(f"shared - per-client: {delta:+.4f} +- {se:.4f} (SE, paired over the held-out examples)")


if __name__ == "__main__":
    main()
