"""demo_pair on two tiny-random "demo runs": a run against itself differs by nothing, another model by
something, and runs on different held-out subsets are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.scripts import load_script

from fedmezo.data import Example, write_jsonl
from fedmezo.models import load_model

EXAMPLES = [Example(f"Add {i} and {i + 1}.", "", str(2 * i + 1)) for i in range(6)]


def _demo_dir(root: Path, *, seed: int, examples: list[Example] = EXAMPLES) -> Path:
    """What a finished `fedmezo demo` leaves that demo_pair reads: export, subset, summary, commands."""
    loaded = load_model("tiny-random")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # another trained model
    export = root / "export"
    loaded.model.save_pretrained(export)
    loaded.tokenizer.save_pretrained(export)
    (export / "fedmezo.json").write_text("{}")
    (root / "data").mkdir()
    write_jsonl(root / "data" / "eval-subset.jsonl", examples)
    (root / "summary.json").write_text(json.dumps({"after": {"loss": 0.0, "exact_match": 0.0}}))
    (root / "logs").mkdir()
    (root / "logs" / "commands.txt").write_text("fedmezo server --max-length=32 --eval-limit=6\n")
    return root


def test_a_pair_is_paired_example_by_example(tmp_path: Path) -> None:
    bench = load_script("benchmarks/demo_pair.py")
    a, b = _demo_dir(tmp_path / "a", seed=1), _demo_dir(tmp_path / "b", seed=2)
    assert bench.main([str(a), str(a)]) == (0.0, 0.0)  # type: ignore[attr-defined]
    delta, se = bench.main([str(a), str(b)])  # type: ignore[attr-defined]
    assert math.isfinite(delta) and delta != 0.0 and se > 0.0
    other = _demo_dir(tmp_path / "c", seed=1, examples=EXAMPLES[:5])
    with pytest.raises(SystemExit, match="different held-out subsets"):
        bench.main([str(a), str(other)])  # type: ignore[attr-defined]
