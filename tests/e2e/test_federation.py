"""End to end over real sockets with real processes: `fedmezo server` + `fedmezo client`s on loopback.

Every check reads what an operator would read (`fedmezo status --json`, the client logs) while the
processes run exactly as deployed. tiny-random, batch 2, short texts: the whole file stays in a few
minutes on a 2-core machine. Every process is killed in a `finally`, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedmezo.data import read_jsonl, write_jsonl

pytestmark = pytest.mark.timeout(240)

FEDMEZO = [sys.executable, "-m", "fedmezo.cli.main"]
ROUND_BYTES_LIMIT = 1024  # issue 3: bytes_up + bytes_down per participating client per round
START_TIMEOUT_S = 60.0  # a cold process imports torch + transformers and builds the model
RUN_TIMEOUT_S = 150.0
POLL_S = 0.05
EXAMPLES_PER_CLIENT = 24
SHUTDOWN_LIMIT_S = 5.0  # SIGTERM to exit, while idle in a long-poll
EXIT_AUTH = 77  # fedmezo.cli.client_cmd.EXIT_AUTH
FINGERPRINT_LINE = re.compile(r"model version (\d+) fingerprint ([0-9a-f]{64})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Federation:
    """Owns every process of one test: a server on a free port and its clients, each with a log file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.state_dir = tmp / "state"
        self.server: subprocess.Popen[bytes] | None = None
        self.server_args: list[str] = []
        self.clients: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "NUMBA_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "0",
        }
        self.env = {k: v for k, v in self.env.items() if not k.startswith("FEDMEZO_")}
        self._server_logs = 0
        self.reader_metadata: tuple[tuple[str, str], ...] = ()  # a bearer token when the server has tokens
        train = read_jsonl(_demo_train(tmp))
        self.data: dict[str, Path] = {}
        for i in range(4):
            path = tmp / f"c{i + 1}.jsonl"
            write_jsonl(path, train[i * EXAMPLES_PER_CLIENT : (i + 1) * EXAMPLES_PER_CLIENT])
            self.data[f"c{i + 1}"] = path

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen([*FEDMEZO, *args], stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def start_server(self, *extra: str) -> None:
        if not self.server_args:
            self.server_args = [
                "server",
                "--model=tiny-random",
                f"--port={self.port}",
                f"--state-dir={self.state_dir}",
                "--insecure",
                "--batch-size=2",
                "--lr=1e-4",
                "--lr-spread=0",
                "--deadline-s=60",
                "--heartbeat-interval-s=5",
                "--max-length=64",  # sent to every client in the run config
                *extra,
            ]
        self._server_logs += 1
        self.server = self._spawn(self.server_args, self.tmp / f"server-{self._server_logs}.log")
        _wait_for(lambda: self.grpc_status() is not None, START_TIMEOUT_S, "server start", self)

    def start_client(self, client_id: str, *extra: str) -> None:
        self.clients[client_id] = self._spawn(
            [
                "client",
                f"--server=127.0.0.1:{self.port}",
                f"--data={self.data[client_id]}",
                f"--client-id={client_id}",
                "--insecure",
                "--device=cpu",
                "--no-progress",
                "--long-poll-s=10",
                f"--state-dir={self.tmp / client_id}",
                *extra,
            ],
            self.tmp / f"{client_id}.log",
        )

    def grpc_status(self) -> Any:
        """GetStatus over gRPC directly (fast, for polling); None while the server is down."""
        import grpc

        from fedmezo.v1 import status_pb2, status_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                return status_pb2_grpc.StatusServiceStub(channel).GetStatus(
                    status_pb2.GetStatusRequest(), timeout=2.0, metadata=self.reader_metadata
                )
            except grpc.RpcError:
                return None

    def grpc_round(self, round_id: int) -> Any:
        """One round's RoundInfo over gRPC directly (fast enough to take just before a kill)."""
        import grpc

        from fedmezo.v1 import status_pb2, status_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            request = status_pb2.ListRoundsRequest(from_round=round_id, limit=1)
            return status_pb2_grpc.StatusServiceStub(channel).ListRounds(request, timeout=5.0).rounds[0]

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

    def wait_clients(self, timeout_s: float = RUN_TIMEOUT_S) -> None:
        """Every client exits by itself once the run finished, with exit code 0."""
        deadline = time.monotonic() + timeout_s
        for client_id, proc in self.clients.items():
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"client {client_id} still running\n{self.logs()}")
            assert code == 0, f"client {client_id} exited with {code}\n{self.logs()}"

    def client_fingerprints(self, client_id: str) -> dict[int, str]:
        text = (self.tmp / f"{client_id}.log").read_text()
        return {int(v): fp for v, fp in FINGERPRINT_LINE.findall(text)}

    def logs(self) -> str:
        parts = []
        for log in sorted(self.tmp.glob("*.log")):
            parts.append(f"--- {log.name} ---\n" + "\n".join(log.read_text().splitlines()[-25:]))
        return "\n".join(parts)

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(timeout=10)

    def close(self) -> None:
        procs = [p for p in [self.server, *self.clients.values()] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str, fed: Federation) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{fed.logs()}")
        time.sleep(POLL_S)


_DEMO: dict[str, Path] = {}


def _demo_train(tmp: Path) -> Path:
    if "train" not in _DEMO:
        from fedmezo.data import generate_demo_dataset

        train, _ = generate_demo_dataset(seed=0)
        path = tmp / "demo-train.jsonl"
        write_jsonl(path, train)
        _DEMO["train"] = path
    return _DEMO["train"]


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.close()


def _assert_clients_match_server_every_round(
    fed: Federation, doc: dict[str, Any], clients: list[str]
) -> None:
    by_round = {r["round"]: r["fingerprint"] for r in doc["rounds"]}
    for client_id in clients:
        reported = fed.client_fingerprints(client_id)
        assert reported, f"{client_id} reported no fingerprint\n{fed.logs()}"
        for version, fingerprint in reported.items():
            assert fingerprint == by_round[version], f"{client_id} diverged at version {version}"
    for client in doc["clients"]:
        assert client["in_sync"] and client["fingerprint"] == doc["fingerprint"], client


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, dict[str, Any]]]:
    """Scenario 1, shared with the export test: 3 clients, 3 rounds of 20 local steps."""
    fed = Federation(tmp_path_factory.mktemp("run"))
    try:
        fed.start_server("--rounds=3", "--local-steps=20", "--min-clients=3")
        for client_id in ("c1", "c2", "c3"):
            fed.start_client(client_id)
        fed.wait_clients()
        yield fed, fed.status()
    finally:
        fed.close()


def test_three_clients_three_rounds_in_sync_under_1kib(
    finished_run: tuple[Federation, dict[str, Any]],
) -> None:
    fed, doc = finished_run
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == 3
    assert [r["state"] for r in doc["rounds"]] == ["closed"] * 3
    _assert_clients_match_server_every_round(fed, doc, ["c1", "c2", "c3"])
    for client_id in ("c1", "c2", "c3"):  # every client reported every round it trained
        assert set(fed.client_fingerprints(client_id)) == {1, 2, 3}
    assert int(doc["config"]["max_length"]) == 64 and int(doc["config"]["trainable_params"]) > 0
    for client_id in ("c1", "c2", "c3"):  # the server's max length, not the client's default (256)
        assert "max length 64" in (fed.tmp / f"{client_id}.log").read_text()
    for client in doc["clients"]:  # measured once at start and reported at join
        assert client["inference_peak_memory_bytes"] > 0, client
    for round_ in doc["rounds"]:
        assert sorted(round_["participants"]) == ["c1", "c2", "c3"]
        assert round_["mean_loss"] is not None and round_["mean_loss"] > 0
        for client in round_["clients"]:
            per_client = client["bytes_up"] + client["bytes_down"]
            assert 0 < per_client <= ROUND_BYTES_LIMIT, (round_["round"], client)
    print(
        "bytes per client per round:",
        [[c["bytes_up"] + c["bytes_down"] for c in r["clients"]] for r in doc["rounds"]],
    )


def test_exported_model_loads_with_transformers_and_generates(
    finished_run: tuple[Federation, dict[str, Any]],
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fed, _ = finished_run
    out = fed.tmp / "export"
    subprocess.run(
        [*FEDMEZO, "export", f"--state-dir={fed.state_dir}", f"--out={out}"],
        env=fed.env,
        timeout=120,
        check=True,
        capture_output=True,
    )
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer("What is 2 + 3?", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(generated[0]), str)


def test_server_killed_in_round_2_restarts_and_clients_reconnect(federation: Federation) -> None:
    fed = federation
    fed.start_server("--rounds=3", "--local-steps=20", "--min-clients=3")
    for client_id in ("c1", "c2", "c3"):
        fed.start_client(client_id)

    def in_round_2() -> bool:
        status = fed.grpc_status()
        return status is not None and status.rounds_completed == 1 and status.current_round == 2

    _wait_for(in_round_2, RUN_TIMEOUT_S, "round 2", fed)
    round_1_before = fed.grpc_round(1)
    fed.kill_server()
    fed.start_server()
    fed.wait_clients()
    doc = fed.status()
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == 3
    round_1 = doc["rounds"][0]
    assert round_1["state"] == "closed" and sorted(round_1["participants"]) == ["c1", "c2", "c3"]
    assert round_1["fingerprint"] == round_1_before.fingerprint.hex()
    assert {c["id"]: c["mean_loss"] for c in round_1["clients"]} == pytest.approx(
        {c.client_id: c.mean_loss for c in round_1_before.clients if c.accepted}
    )
    _assert_clients_match_server_every_round(fed, doc, ["c1", "c2", "c3"])
    for client_id in ("c1", "c2", "c3"):
        assert fed.client_fingerprints(client_id).get(3) == doc["fingerprint"]
    logs = "".join((fed.tmp / f"{c}.log").read_text() for c in ("c1", "c2", "c3"))
    assert "unavailable" in logs.lower() or "retrying" in logs.lower()


def test_client_joining_after_round_2_catches_up(federation: Federation) -> None:
    fed = federation
    # 10 rounds of 40 steps: long enough that the late client (a cold start takes seconds) joins mid-run
    fed.start_server("--rounds=10", "--local-steps=40", "--min-clients=2", "--clients-per-round=2")
    for client_id in ("c1", "c2"):
        fed.start_client(client_id)

    def two_rounds_done() -> bool:
        status = fed.grpc_status()
        return status is not None and status.rounds_completed >= 2

    _wait_for(two_rounds_done, RUN_TIMEOUT_S, "round 2 to close", fed)
    fed.start_client("c4")
    fed.wait_clients()
    doc = fed.status()
    assert doc["rounds_completed"] == 10
    log = (fed.tmp / "c4.log").read_text()
    joined_at = int(re.search(r"server at version (\d+), local replica at 0", log).group(1))  # type: ignore[union-attr]
    assert joined_at >= 2
    # it caught up by replaying the stored deltas, or from a checkpoint when that was cheaper
    assert "catching up from version 0" in log or "loaded checkpoint" in log
    late = fed.client_fingerprints("c4")
    assert late[10] == doc["fingerprint"]
    _assert_clients_match_server_every_round(fed, doc, ["c1", "c2", "c4"])


def test_tokens_identify_clients_and_sigterm_exits_cleanly(federation: Federation) -> None:
    fed = federation
    tokens = fed.tmp / "tokens.txt"
    tokens.write_text("c1:tok-one\nc2:tok-two\n")
    (fed.tmp / "c1.token").write_text("tok-one\n")
    fed.reader_metadata = (("authorization", "Bearer tok-one"),)
    # min-clients 2 and only c1 ever joins: no round opens, c1 idles in its long-poll
    fed.start_server("--rounds=1", "--local-steps=4", "--min-clients=2", f"--tokens={tokens}")
    fed.start_client("c2", "--token=wrong")  # not a known token: fails fast, no retrying
    fed.start_client("c1", f"--token-file={fed.tmp / 'c1.token'}")
    assert fed.clients["c2"].wait(timeout=START_TIMEOUT_S) == EXIT_AUTH, fed.logs()

    def c1_joined() -> bool:
        return "joined run" in (fed.tmp / "c1.log").read_text()

    _wait_for(c1_joined, START_TIMEOUT_S, "c1 to join", fed)
    started = time.monotonic()
    fed.clients["c1"].send_signal(signal.SIGTERM)
    assert fed.clients["c1"].wait(timeout=30) == 0, fed.logs()
    assert time.monotonic() - started < SHUTDOWN_LIMIT_S  # the long-poll was interrupted, not awaited
    assert "tok-one" not in (fed.tmp / "c1.log").read_text()  # secrets never reach the log
