"""`fedmezo data`: write the built-in demo dataset, or split a dataset into per-client files.

Only wiring and printing live here; the work is in `fedmezo.data`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from fedmezo.data import (
    DataError,
    Example,
    Scheme,
    category_of,
    generate_demo_dataset,
    partition,
    read_jsonl,
    write_jsonl,
)

__all__ = ["EXIT_DATA_ERROR", "EXIT_OK", "register"]

EXIT_OK = 0
EXIT_DATA_ERROR = 65  # input data malformed or a split impossible (EX_DATAERR of sysexits.h)


def _count_table(rows: Sequence[tuple[str, Sequence[Example]]]) -> str:
    """Examples per row × category, with totals: shows at a glance how (non-)IID a split is."""
    counts = [(name, Counter(category_of(ex) for ex in examples)) for name, examples in rows]
    categories = sorted({c for _, counter in counts for c in counter})
    header = ["", *categories, "total"]
    body = [[name, *(str(counter[c]) for c in categories), str(counter.total())] for name, counter in counts]
    if len(rows) > 1:
        column_totals = [sum(counter[c] for _, counter in counts) for c in categories]
        body.append(["total", *map(str, column_totals), str(sum(column_totals))])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [header, *body]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )


def _run_demo(args: argparse.Namespace) -> int:
    train, held_out = generate_demo_dataset(seed=args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", held_out)
    print(f"wrote {out / 'train.jsonl'} ({len(train)} examples) and {out / 'eval.jsonl'} ({len(held_out)})")
    print(_count_table([("train", train), ("eval", held_out)]))
    return EXIT_OK


def _run_partition(args: argparse.Namespace) -> int:
    try:
        examples = read_jsonl(args.input)
        clients = partition(examples, args.clients, args.scheme, alpha=args.alpha, seed=args.seed)
    except DataError as exc:
        print(f"fedmezo data partition: error: {exc}", file=sys.stderr)
        return EXIT_DATA_ERROR
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for number, client_examples in enumerate(clients, start=1):
        write_jsonl(out / f"client-{number}.jsonl", client_examples)
    print(f"wrote {len(clients)} client files to {out} ({len(examples)} examples, scheme {args.scheme})")
    print(_count_table([(f"client-{n}", ex) for n, ex in enumerate(clients, start=1)]))
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add `data demo` and `data partition` to the `fedmezo` parser."""
    data = subparsers.add_parser("data", help="prepare datasets: demo data, per-client splits")
    commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    demo = commands.add_parser("demo", help="write the built-in demo dataset (train.jsonl, eval.jsonl)")
    demo.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    demo.add_argument("--seed", type=int, default=0, help="selects and splits the examples (default 0)")
    demo.set_defaults(func=_run_demo)

    split = commands.add_parser("partition", help="split a JSONL file into client-1.jsonl … client-N.jsonl")
    split.add_argument("--input", type=Path, required=True, help="JSON Lines file, Alpaca or Dolly fields")
    split.add_argument("--clients", type=_positive_int, required=True, help="number of clients N")
    split.add_argument(
        "--scheme",
        choices=get_args(Scheme),
        required=True,
        help="iid: shuffled, even; dirichlet: category shares ~ Dir(alpha); category: whole categories",
    )
    split.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="Dirichlet concentration: smaller is more skewed (default 0.5, a common non-IID setting)",
    )
    split.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    split.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    split.set_defaults(func=_run_partition)
