"""Instruction records and their JSON Lines files (Alpaca or Dolly fields in, Alpaca fields out).

One record per line. Alpaca: `instruction`, `input` (optional), `output`. Dolly: `instruction`,
`context` (optional), `response`, `category`. Both may carry `category`; other fields are ignored so
files with extras (e.g. Alpaca's `text`) load as they are. Every error names the file and line, since a
bad line in a 15,000-record file is otherwise hard to find.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataError", "Example", "read_jsonl", "write_jsonl"]


class DataError(ValueError):
    """A data file or a data request is malformed (bad JSON, missing field, impossible partition...)."""


@dataclass(frozen=True)
class Example:
    """One instruction-following example: the user turn is `instruction` (+ `input`), the answer `output`."""

    instruction: str
    input: str
    output: str
    category: str | None = None


def _field(record: Mapping[str, Any], name: str, where: str, *, required: bool) -> str | None:
    """The string value of `name`; None when optional and absent (or null)."""
    value = record.get(name)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field {name!r}")
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _parse_record(record: Any, where: str) -> Example:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    has_output, has_response = "output" in record, "response" in record
    if has_output and has_response:
        raise DataError(f"{where}: both 'output' (Alpaca) and 'response' (Dolly) present; keep one")
    if not has_output and not has_response:
        raise DataError(f"{where}: missing field 'output' (Alpaca) or 'response' (Dolly)")
    answer_key, context_key = ("output", "input") if has_output else ("response", "context")
    instruction = _field(record, "instruction", where, required=True)
    output = _field(record, answer_key, where, required=True)
    assert instruction is not None and output is not None  # required=True never returns None
    return Example(
        instruction=instruction,
        input=_field(record, context_key, where, required=False) or "",
        output=output,
        category=_field(record, "category", where, required=False),
    )


def read_jsonl(path: str | Path) -> list[Example]:
    """All examples of a JSON Lines file; blank lines are skipped, anything else malformed is a DataError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    examples = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        examples.append(_parse_record(record, where))
    if not examples:
        raise DataError(f"{path}: no examples (empty file)")
    return examples


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
    """Write Alpaca fields plus `category`, one record per line, UTF-8 (non-ASCII kept readable)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for ex in examples:
            record: dict[str, str | None] = {
                "instruction": ex.instruction,
                "input": ex.input,
                "output": ex.output,
                "category": ex.category,
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
