"""A whole federation as real processes: `fedmezo server` on a free loopback port and `fedmezo client`
daemons, each with its own log file, read the way an operator reads them (`fedmezo status --json`,
the StatusService, the client logs). tiny-random, batch 2, short texts: seconds per round on 2 cores.

Use it as a context manager (or call `close`): every process is stopped, whatever happened.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from fedmezo.data import read_jsonl, write_jsonl
from helpers.processes import (
    FEDMEZO,
    START_TIMEOUT_S,
    free_port,
    spawn,
    stop_processes,
    subprocess_env,
    tail,
    wait_for,
)
from helpers.run_settings import PROTOCOL_RUN_FLAGS

__all__ = ["EXAMPLES_PER_CLIENT", "FINGERPRINT_LINE", "RUN_TIMEOUT_S", "Federation", "demo_train"]

RUN_TIMEOUT_S = 150.0
EXAMPLES_PER_CLIENT = 24
NUM_CLIENT_DATASETS = 4  # c1..c4
FINGERPRINT_LINE = re.compile(r"model version (\d+) fingerprint ([0-9a-f]{64})")
SUBMITTED_LINE = re.compile(r"round (\d+): submitted \d+ scalars")

_DEMO: dict[str, Path] = {}


def demo_train(tmp: Path) -> Path:
    """The demo training set as JSONL, generated once per session."""
    if "train" not in _DEMO:
        from fedmezo.data import generate_demo_dataset

        train, _ = generate_demo_dataset(seed=0)
        path = tmp / "demo-train.jsonl"
        write_jsonl(path, train)
        _DEMO["train"] = path
    return _DEMO["train"]


class Federation:
    """Owns every process of one test: a server on a free port and its clients, each with a log file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.state_dir = tmp / "state"
        self.server: subprocess.Popen[bytes] | None = None
        self.server_args: list[str] = []
        self.clients: dict[str, subprocess.Popen[bytes]] = {}
        self.client_args: dict[str, list[str]] = {}
        self.env = subprocess_env()
        self._server_logs = 0
        self._client_logs: dict[str, list[Path]] = {}
        self.reader_metadata: tuple[tuple[str, str], ...] = ()  # a bearer token when the server has tokens
        train = read_jsonl(demo_train(tmp))
        self.data: dict[str, Path] = {}
        for i in range(NUM_CLIENT_DATASETS):
            path = tmp / f"c{i + 1}.jsonl"
            write_jsonl(path, train[i * EXAMPLES_PER_CLIENT : (i + 1) * EXAMPLES_PER_CLIENT])
            self.data[f"c{i + 1}"] = path

    def __enter__(self) -> Federation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- processes ---
    def start_server(self, *extra: str, defaults: bool = False) -> None:
        """Start the server (the first call fixes its flags; later calls restart it with the same ones).

        Its training settings are PROTOCOL_RUN's (MeZO at 1e-4, one scalar per step) unless `defaults`:
        then the server's own defaults train (FZOO, P = 8, shared seeds, cosine, embedding frozen)."""
        if not self.server_args:
            training = () if defaults else ("--lr=1e-4", "--lr-spread=0", *PROTOCOL_RUN_FLAGS)
            self.server_args = [
                "server",
                "--model=tiny-random",
                f"--port={self.port}",
                f"--state-dir={self.state_dir}",
                "--insecure",
                "--batch-size=2",
                "--deadline-s=60",
                "--heartbeat-interval-s=5",
                "--max-length=64",  # sent to every client in the run config
                *training,
                *extra,
            ]
        self._server_logs += 1
        self.server = spawn(self.server_args, self.tmp / f"server-{self._server_logs}.log", env=self.env)
        wait_for(lambda: self._server_up(), START_TIMEOUT_S, "server start", self.logs)

    def _server_up(self) -> bool:
        assert self.server is not None
        if self.server.poll() is not None:
            pytest.fail(f"server exited with {self.server.returncode}\n{self.logs()}")
        return self.grpc_status() is not None

    def start_client(self, client_id: str, *extra: str, server: str | None = None) -> None:
        """Start a client daemon; `server` overrides the address (e.g. a proxy in front of the server)."""
        self.client_args[client_id] = [
            "client",
            f"--server={server or f'127.0.0.1:{self.port}'}",
            f"--data={self.data[client_id]}",
            f"--client-id={client_id}",
            "--insecure",
            "--device=cpu",
            "--no-progress",
            "--long-poll-s=10",
            f"--state-dir={self.tmp / client_id}",
            *extra,
        ]
        self._spawn_client(client_id)

    def restart_client(self, client_id: str) -> None:
        """Start a client again with its last flags and state dir (a fresh log file)."""
        self._spawn_client(client_id)

    def _spawn_client(self, client_id: str) -> None:
        logs = self._client_logs.setdefault(client_id, [])
        log = self.tmp / (f"{client_id}.log" if not logs else f"{client_id}-{len(logs) + 1}.log")
        logs.append(log)
        self.clients[client_id] = spawn(self.client_args[client_id], log, env=self.env)

    def kill_client(self, client_id: str) -> None:
        proc = self.clients[client_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(timeout=10)

    def wait_clients(self, timeout_s: float = RUN_TIMEOUT_S) -> None:
        """Every client exits by itself once the run finished, with exit code 0."""
        deadline = time.monotonic() + timeout_s
        for client_id, proc in self.clients.items():
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"client {client_id} still running\n{self.logs()}")
            assert code == 0, f"client {client_id} exited with {code}\n{self.logs()}"

    def close(self) -> None:
        stop_processes([self.server, *self.clients.values()])

    # --- what an operator reads ---
    def _status_stub(self, channel: Any) -> Any:
        from fedmezo.v1 import status_pb2_grpc

        return status_pb2_grpc.StatusServiceStub(channel)

    def grpc_status(self) -> Any:
        """GetStatus over gRPC directly (fast, for polling); None while the server is down."""
        import grpc

        from fedmezo.v1 import status_pb2

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                return self._status_stub(channel).GetStatus(
                    status_pb2.GetStatusRequest(), timeout=2.0, metadata=self.reader_metadata
                )
            except grpc.RpcError:
                return None

    def grpc_round(self, round_id: int) -> Any:
        """One round's RoundInfo over gRPC directly (fast enough to take just before a kill)."""
        import grpc

        from fedmezo.v1 import status_pb2

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            request = status_pb2.ListRoundsRequest(from_round=round_id, limit=1)
            return self._status_stub(channel).ListRounds(request, timeout=5.0).rounds[0]

    def events(self) -> list[Any]:
        """Every event the server recorded (ListEvents), oldest first."""
        import grpc

        from fedmezo.v1 import status_pb2

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            request = status_pb2.ListEventsRequest(after_cursor=0, limit=10_000)
            response = self._status_stub(channel).ListEvents(
                request, timeout=5.0, metadata=self.reader_metadata
            )
            return list(response.events)

    def status(self) -> dict[str, Any]:
        """What an operator sees: `fedmezo status --json`."""
        out = subprocess.run(
            [*FEDMEZO, "status", f"--server=127.0.0.1:{self.port}", "--insecure", "--json"],
            capture_output=True,
            env=self.env,
            timeout=60,
        )
        if out.returncode != 0:
            pytest.fail(f"fedmezo status failed ({out.returncode}): {out.stderr.decode()}\n{self.logs()}")
        return dict(json.loads(out.stdout))

    def client_log(self, client_id: str) -> str:
        """Everything a client logged, over all of its starts."""
        return "".join(log.read_text() for log in self._client_logs.get(client_id, []) if log.exists())

    def client_fingerprints(self, client_id: str) -> dict[int, str]:
        """The fingerprint a client reported for each model version it reached (any of its starts)."""
        return {int(v): fp for v, fp in FINGERPRINT_LINE.findall(self.client_log(client_id))}

    def client_submitted_rounds(self, client_id: str) -> set[int]:
        """Rounds whose update the server acknowledged to this client (the daemon logs it after OK)."""
        return {int(r) for r in SUBMITTED_LINE.findall(self.client_log(client_id))}

    def logs(self) -> str:
        return "\n".join(f"--- {log.name} ---\n{tail(log)}" for log in sorted(self.tmp.glob("*.log")))

    def assert_in_sync_every_version(self, doc: dict[str, Any], clients: list[str]) -> None:
        """Each client's reported fingerprint equals the server's at every version it reached, and the
        server lists every client in sync at the final fingerprint."""
        by_round = {r["round"]: r["fingerprint"] for r in doc["rounds"]}
        for client_id in clients:
            reported = self.client_fingerprints(client_id)
            assert reported, f"{client_id} reported no fingerprint\n{self.logs()}"
            for version, fingerprint in reported.items():
                assert fingerprint == by_round[version], f"{client_id} diverged at version {version}"
        for client in doc["clients"]:
            assert client["in_sync"] and client["fingerprint"] == doc["fingerprint"], client
