"""bench_poisoning --quick (tiny-random, mezo): the facts behind its table, not its numbers.

Honest clients: the default bounds never touch them, so bounds on and off end every round on the same
fingerprint. The attacker (the outside client's scalars from client-3) is rejected by the outlier rule
in every round, and bounded in every round when that rule is off.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers.scripts import script_module


def test_quick_run_honest_clients_cost_nothing_and_the_attacker_is_bounded(tmp_path: Path) -> None:
    output = tmp_path / "poisoning.json"
    with script_module("benchmarks/bench_poisoning.py") as bench:
        assert bench.main(["--quick", "--estimators", "mezo", "--output", str(output)]) == 0
    runs = json.loads(output.read_text())["results"]["mezo"]["runs"]
    assert runs["honest-on"]["fingerprints"] == runs["honest-off"]["fingerprints"]
    assert all(b == [] for b in runs["honest-on"]["bounded"])
    assert all(r == ["client-3"] for r in runs["attack-on"]["rejected"])  # the outlier rule (3 clients)
    assert all(b == ["client-3"] for b in runs["attack-bounds-only"]["bounded"])
    assert math.isfinite(runs["attack-on"]["final_loss"])
    assert math.isfinite(runs["attack-bounds-only"]["final_loss"])
    assert runs["attack-on"]["fingerprints"][-1] != runs["attack-off"]["fingerprints"][-1]
