"""The demo's work dir: one place for data, secrets, state, logs and the export, so a run is inspectable.

demo-run/
  .fedmezo-demo        marker: only a dir holding it is ever cleared by a new demo run
  data/                train.jsonl, eval.jsonl, clients/client-N.jsonl (non-IID by category)
  secrets/             tokens.txt (server), NAME.token (one per process), TLS material with --tls
  server-state/        the server's SQLite state and checkpoints
  clients/client-N/    each client's replica state
  logs/NAME.log        each process's output; commands.txt lists the exact command lines
  export/              the final global model (Hugging Face folder)
  summary.json         the numbers the demo printed
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fedmezo.data import DataError, Example, generate_demo_dataset, partition, write_jsonl
from fedmezo.demo.errors import DemoError

__all__ = ["MARKER", "TlsFiles", "Workdir", "make_tls", "write_data", "write_tokens"]

MARKER = ".fedmezo-demo"
TLS_DAYS = 7  # the demo's self-signed certificate only has to outlive one run
_OWNED = ("data", "secrets", "server-state", "clients", "logs", "export", "summary.json")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # self-signed: also the CA clients verify against
    key: Path


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def eval(self) -> Path:
        return self.data / "eval.jsonl"

    @property
    def eval_subset(self) -> Path:
        """The held-out examples evaluated before and after (the server's --eval-data)."""
        return self.data / "eval-subset.jsonl"

    def client_data(self, number: int) -> Path:
        return self.data / "clients" / f"client-{number}.jsonl"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def tokens(self) -> Path:
        return self.secrets / "tokens.txt"

    def token_file(self, name: str) -> Path:
        return self.secrets / f"{name}.token"

    @property
    def server_state(self) -> Path:
        return self.root / "server-state"

    def client_state(self, number: int) -> Path:
        return self.root / "clients" / f"client-{number}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def commands(self) -> Path:
        return self.logs / "commands.txt"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def prepare(self) -> None:
        """Create the dir, or clear a previous demo run in it; refuse a non-empty dir that is not ours."""
        if self.root.exists() and any(self.root.iterdir()) and not (self.root / MARKER).exists():
            raise DemoError(f"{self.root} is not empty and not a demo work dir; choose another --workdir")
        self.root.mkdir(parents=True, exist_ok=True)
        for name in _OWNED:  # a fresh run: the server would otherwise resume the finished one
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        (self.root / MARKER).write_text("created by `fedmezo demo`; the next demo run clears this dir\n")
        for folder in (self.data / "clients", self.secrets, self.logs, self.root / "clients"):
            folder.mkdir(parents=True, exist_ok=True)
        self.secrets.chmod(0o700)


def write_data(workdir: Workdir, num_clients: int, seed: int) -> tuple[list[Example], list[int]]:
    """Write the built-in dataset and its category split; returns (held-out examples, client sizes).

    The same as `fedmezo data demo` + `fedmezo data partition --scheme category`: each client sees
    whole categories only, the most non-IID split, which is what federated training must cope with.
    """
    train, held_out = generate_demo_dataset(seed=seed)
    write_jsonl(workdir.train, train)
    write_jsonl(workdir.eval, held_out)
    try:
        parts = partition(train, num_clients, "category", seed=seed)
    except DataError as exc:
        raise DemoError(f"cannot split the demo data for {num_clients} clients: {exc}") from exc
    for number, examples in enumerate(parts, start=1):
        write_jsonl(workdir.client_data(number), examples)
    return held_out, [len(p) for p in parts]


def write_tokens(workdir: Workdir, names: list[str]) -> None:
    """A fresh random bearer token per identity: tokens.txt for the server, NAME.token for each process.

    Token files (not --token flags) keep the secrets out of `ps` and out of commands.txt.
    """
    tokens = {name: secrets.token_urlsafe(24) for name in names}
    _write_private(workdir.tokens, "".join(f"{name}:{token}\n" for name, token in tokens.items()))
    for name, token in tokens.items():
        _write_private(workdir.token_file(name), token + "\n")


def make_tls(workdir: Workdir) -> TlsFiles:
    """A self-signed certificate for localhost and 127.0.0.1 (openssl), which clients trust as their CA."""
    files = TlsFiles(cert=workdir.secrets / "server.pem", key=workdir.secrets / "server.key")
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", str(TLS_DAYS), "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(files.key), "-out", str(files.cert),
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except FileNotFoundError as exc:
        raise DemoError("--tls needs the openssl command (or run the demo without --tls)") from exc
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise DemoError(f"openssl could not create the demo certificate: {detail}") from exc
    files.key.chmod(0o600)
    return files


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
