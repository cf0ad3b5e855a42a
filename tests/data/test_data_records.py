"""Reading and writing instruction records: both field layouts, and every malformed-file error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmezo.data import DataError, Example, read_jsonl, write_jsonl


def _write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_reads_alpaca_fields(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "alpaca.jsonl",
        json.dumps({"instruction": "Add.", "input": "2 and 3", "output": "5"}),
        json.dumps({"instruction": "Say hi.", "input": "", "output": "hi", "text": "ignored extra"}),
        json.dumps({"instruction": "No input field.", "output": "ok", "category": "misc"}),
    )
    assert read_jsonl(path) == [
        Example("Add.", "2 and 3", "5", None),
        Example("Say hi.", "", "hi", None),
        Example("No input field.", "", "ok", "misc"),
    ]


def test_reads_dolly_fields(tmp_path: Path) -> None:
    record = {"instruction": "Summarise.", "context": "Long text.", "response": "Short.", "category": "summ"}
    path = _write_lines(tmp_path / "dolly.jsonl", json.dumps(record), "", "   ")
    assert read_jsonl(path) == [Example("Summarise.", "Long text.", "Short.", "summ")]


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    examples = [Example("Ünïcode ✓?", "ctx\nline", "ja", "c1"), Example("q", "", "a", None)]
    write_jsonl(tmp_path / "out.jsonl", examples)
    assert read_jsonl(tmp_path / "out.jsonl") == examples
    first = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first == {"instruction": "Ünïcode ✓?", "input": "ctx\nline", "output": "ja", "category": "c1"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"instruction": "q", "output": ', "invalid JSON"),
        ('["instruction", "output"]', "expected a JSON object, got list"),
        ('{"output": "a"}', "missing field 'instruction'"),
        ('{"instruction": "q"}', "missing field 'output' (Alpaca) or 'response' (Dolly)"),
        ('{"instruction": "q", "output": "a", "response": "b"}', "both 'output'"),
        ('{"instruction": 3, "output": "a"}', "field 'instruction' must be a string, got int"),
        ('{"instruction": "q", "output": ["a"]}', "field 'output' must be a string, got list"),
        ('{"instruction": "q", "input": 1.5, "output": "a"}', "field 'input' must be a string, got float"),
        ('{"instruction": "q", "context": {}, "response": "a"}', "field 'context' must be a string"),
        ('{"instruction": "q", "output": "a", "category": 7}', "field 'category' must be a string"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", json.dumps({"instruction": "fine", "output": "ok"}), "", line)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert f"{path}:3: " in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="no examples"):
        read_jsonl(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_jsonl(path)


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)
