"""Two `fedmezo demo` runs compared example by example: which preset ends lower, beyond noise or not.

    fedmezo demo --no-dashboard --workdir runs/a            # e.g. the default (LoRA-FA)
    fedmezo demo --no-dashboard --workdir runs/b --mode full
    python benchmarks/demo_pair.py runs/a runs/b

Each demo exports its final model and keeps the held-out subset it evaluated (`data/eval-subset.jsonl`).
This loads both exports and scores every example of the subset the way the server's evaluation does (the
token-weighted mean of the per-example losses is the demo's "after" figure), then prints each run's loss
and the paired difference a − b with its standard error. Both runs must have evaluated the same subset.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import experiments as ex  # noqa: E402


def scored(workdir: Path, max_length: int) -> tuple[dict[str, Any], list[str]]:
    """The export's per-example losses on the demo's subset, and the subset's instructions (to pair)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedmezo.data import read_jsonl

    export = workdir / "export"
    if not (export / "fedmezo.json").is_file():
        raise SystemExit(f"{workdir}: no finished export (run `fedmezo demo --workdir {workdir}` first)")
    examples = read_jsonl(workdir / "data" / "eval-subset.jsonl")
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    losses = ex.example_losses(model, tokenizer, examples, max_length, "cpu")
    return {"per_example": losses}, [e.instruction for e in examples]


def max_length(workdir: Path) -> int:
    """The tokens per example the run's server evaluated with (its command line in logs/commands.txt)."""
    commands = (workdir / "logs" / "commands.txt").read_text()
    found = re.search(r"--max-length=(\d+)", commands)
    if found is None:
        raise SystemExit(f"{workdir}: no --max-length in logs/commands.txt")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> tuple[float, float]:
    """Print both runs' held-out losses and the paired a − b; returns (a − b, its SE)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="a demo work dir")
    parser.add_argument("b", type=Path, help="another demo work dir, evaluated on the same subset")
    args = parser.parse_args(argv)
    summaries = [json.loads((w / "summary.json").read_text()) for w in (args.a, args.b)]
    lengths = {max_length(w) for w in (args.a, args.b)}
    if len(lengths) != 1:
        raise SystemExit(f"the runs truncated to different lengths {sorted(lengths)}: not comparable")
    length = lengths.pop()
    (run_a, subset_a), (run_b, subset_b) = scored(args.a, length), scored(args.b, length)
    if subset_a != subset_b:
        raise SystemExit("the runs evaluated different held-out subsets (another --seed or --eval-examples)")
    for name, run, summary in ((args.a, run_a, summaries[0]), (args.b, run_b, summaries[1])):
        pe = run["per_example"]
        mean = sum(x * n for x, n in zip(pe["loss"], pe["tokens"], strict=True)) / sum(pe["tokens"])
        print(f"{name}: held-out {mean:.4f} (the demo reported {summary['after']['loss']:.4f}), "
              f"exact match {summary['after'].get('exact_match')}")  # fmt: skip
    delta, se = ex.paired_difference(run_a, run_b)
    print(f"a - b: {delta:+.4f} +- {se:.4f} (SE, paired over {len(subset_a)} examples)")
    return delta, se


if __name__ == "__main__":
    main()
