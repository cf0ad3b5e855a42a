"""`fedmezo data demo` and `fedmezo data partition`, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedmezo.cli.data_cmd import EXIT_DATA_ERROR
from fedmezo.cli.main import main
from fedmezo.data import DEMO_CATEGORIES, generate_demo_dataset, read_jsonl


def test_demo_writes_train_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "demo"
    assert main(["data", "demo", "--out", str(out)]) == 0
    train, held_out = generate_demo_dataset(0)
    assert read_jsonl(out / "train.jsonl") == train
    assert read_jsonl(out / "eval.jsonl") == held_out
    printed = capsys.readouterr().out
    assert f"({len(train)} examples)" in printed
    assert all(category in printed for category in DEMO_CATEGORIES)


def test_demo_seed(tmp_path: Path) -> None:
    assert main(["data", "demo", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert read_jsonl(tmp_path / "train.jsonl") == generate_demo_dataset(3)[0]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "category"])
def test_partition_writes_one_file_per_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scheme: str
) -> None:
    main(["data", "demo", "--out", str(tmp_path)])
    argv = ["data", "partition", "--input", str(tmp_path / "train.jsonl"), "--clients", "4"]
    assert (
        main([*argv, "--scheme", scheme, "--alpha", "0.3", "--seed", "1", "--out", str(tmp_path / "p")]) == 0
    )
    files = sorted((tmp_path / "p").iterdir())
    assert [f.name for f in files] == [f"client-{n}.jsonl" for n in range(1, 5)]
    clients = [read_jsonl(f) for f in files]
    train = read_jsonl(tmp_path / "train.jsonl")
    assert sorted(map(repr, (ex for c in clients for ex in c))) == sorted(map(repr, train))
    table = capsys.readouterr().out.splitlines()[-6:]  # header, 4 clients, total
    assert table[0].split() == [*DEMO_CATEGORIES, "total"]
    assert table[1].split()[0] == "client-1" and table[1].split()[-1] == str(len(clients[0]))
    assert table[-1].split()[-1] == str(len(train))


def test_partition_reports_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n{not json\n", encoding="utf-8")
    common = ["--scheme", "iid", "--out", str(tmp_path / "p")]
    assert main(["data", "partition", "--input", str(bad), "--clients", "1", *common]) == EXIT_DATA_ERROR
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err
    assert main(["data", "partition", "--input", str(tmp_path / "no.jsonl"), "--clients", "1", *common]) == 65
    assert "no such file" in capsys.readouterr().err
    bad.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n", encoding="utf-8")
    assert main(["data", "partition", "--input", str(bad), "--clients", "2", *common]) == EXIT_DATA_ERROR
    assert "only 1 examples" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # nothing is written on error


def test_partition_rejects_bad_arguments(tmp_path: Path) -> None:
    for extra in (["--clients", "0", "--scheme", "iid"], ["--clients", "2", "--scheme", "random"]):
        with pytest.raises(SystemExit) as info:
            main(["data", "partition", "--input", "x.jsonl", "--out", str(tmp_path), *extra])
        assert info.value.code == 2


def test_installed_entry_point(tmp_path: Path) -> None:
    fedmezo = Path(sys.executable).parent / "fedmezo"
    done = subprocess.run(
        [str(fedmezo), "data", "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "train.jsonl").is_file() and (tmp_path / "eval.jsonl").is_file()
    assert "arithmetic" in done.stdout
