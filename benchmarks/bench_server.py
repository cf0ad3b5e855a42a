"""Server load benchmark: N simulated clients speak the real protocol to one `fedmezo server` on loopback.

    python benchmarks/bench_server.py                          # 1,000 clients, 3 rounds, a table
    python benchmarks/bench_server.py --clients 20 --json      # one JSON object on stdout
    python benchmarks/bench_server.py --train-s 0              # every update of a round at once
    python benchmarks/bench_server.py --clients 10000 --procs 2 --train-s 1:21   # the stretch figure

What runs: `fedmezo server` as a subprocess (tiny-random, plaintext, state in a temp dir, every online
client selected, quorum 1.0 so a round closes the moment its last update arrives) and `--procs`
load-generator processes, each driving its share of the clients as asyncio coroutines with one gRPC
channel (one TCP connection) per client. A simulated client does what the real daemon
(fedmezo.client.daemon) does, without a model:

    Join -> repeat { GetTask(max_deltas, fingerprint of an unreported version) (long-poll: it
                     brings the deltas of the rounds closed meanwhile with the next task) ->
                     "train" (sleep uniform(LO, HI), --train-s LO:HI) ->
                     SubmitUpdate(tau synthetic fp32 scalars, base fingerprint) }
         -> ReportFingerprint of the final version
    and a Heartbeat every heartbeat_interval_s while no long-poll is in flight (`--flow lean`, the
    daemon's loop: two calls per round). `--flow classic` is the loop of clients that poll with
    max_deltas = 0: GetTask -> train -> SubmitUpdate -> StreamRoundDeltas(follow) until its round's
    delta -> ReportFingerprint, with a Heartbeat every interval whatever else is in flight.

`--train-s LO:HI` stands for the clients' training time: real clients finish their tau MeZO steps at
different moments (seconds to minutes apart), so updates arrive spread over that window, and none
arrives before its client could have trained (two forward passes per step: 80 ms a step for
SmolLM2-135M on an H100, 2 s on this CPU). The default 1:6 s is a fast fleet; 0:5 lets some
clients answer instantly, right into the burst of every client fetching the delta, reporting its
fingerprint and polling for the next task; 0 sends every update of a round at once (the worst case).

Reported (all clocks are CLOCK_MONOTONIC, shared by every process on the machine):
  latency per RPC   client-observed, call to response, p50/p99/max in ms. GetTask is a long-poll and
                    StreamRoundDeltas a follow stream: their figures include waiting for the round
                    to open or close (the "wait" rows), not just server work.
  round_close_s     last SubmitUpdate response of a round -> the first client receiving that round's
                    delta (aggregate, apply the delta to the replica, fingerprint, commit, notify);
                    the worst round. server_publish_s is the server's own figure (its log): from
                    the moment it stored the last update, which is before that update's fsync and
                    acknowledgement, so it can exceed round_close_s; server_apply_s is the part
                    spent applying the delta (params x seeds x ~0.22 ns on this CPU when idle).
  server CPU        utime + stime of the server process during the load (/proc/<pid>/stat), and
                    its RSS before the load and at its peak (VmHWM).
  load-gen CPU      the same for the load generators: they share the machine's cores with the server.
  load-gen lag      how late a generator's event loop ran a timer (p50/p99/max in ms, sampled every
                    20 ms): a reply that arrives while the generator's loop is busy is timed late by
                    about that much, so a client-side latency near the lag is the generator's, not the
                    server's (compare the server's own figures, `server_rpc`). Per round, the worst
                    lag while the round's tasks went out ("gen lag ms").
  --server-cpus / --loadgen-cpus pin the server and the generators to disjoint cores (as if on their own
                    machines); without them the kernel shares every core between both.

`--loadgen native` runs the same lean client loop in C++ (benchmarks/loadgen/loadgen.cc on gRPC's
callback API, built on first use by benchmarks/loadgen/build.sh; `make loadgen` installs g++ and Debian's
libgrpc++-dev). Its replies are handled on gRPC's thread pool, with no interpreter lock and no single
event loop, so a reply is not timed late while thousands arrive at once, and it takes about half the CPU
of the asyncio generators. Its "lag" is how late its timer thread (which starts every call after a
sleep: a start delay, training, a heartbeat interval, a retry backoff) runs a 20 ms timer. It starts
each client's Join from that thread, so the first calls go out at the rate that thread opens
connections (~700 a second here), not all at once. `--raw PATH` writes every sample for timelines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

import grpc

from fedmezo.fl.config import DEFAULTS_BEFORE_FZOO
from fedmezo.v1 import common_pb2, federation_pb2, federation_pb2_grpc, status_pb2, status_pb2_grpc

MODEL = "tiny-random"
# The training settings every recorded load ran with (two-point MeZO, one scalar per local step, every
# weight trained): named, so the numbers stay comparable now that the server's defaults are FZOO's. The
# seed scheme and τ are the benchmark's own options.
PROTOCOL_LOAD = tuple(
    f"--{name.replace('_', '-')}={value}"
    for name, value in DEFAULTS_BEFORE_FZOO.items()
    if name not in ("seed_scheme", "local_steps")
)
START_TIMEOUT_S = 120.0  # a cold server imports torch + transformers and builds the model
DEFAULT_JOIN_RATE = 0.0  # clients started per second
DEFAULT_TRAIN_S = (1.0, 6.0)  # seconds a client trains before it submits (module docstring)
RPC_TIMEOUT_S = 60.0  # generous: under a burst the queue, not the server, sets the latency
LONG_POLL_S = 30.0  # what the real client asks for (the server caps it at max_wait_s)
ROUND_DEADLINE_S = 600.0  # never reached: quorum 1.0 closes a round at its last update
HEARTBEAT_TIMEOUT_FACTOR = 6.0  # silence (in intervals) before the server counts a client offline
RETRIES = 5  # UNAVAILABLE is retried like the real client does; every retry is counted
RETRY_BASE_S = 0.2
MAX_DELTAS = 16  # what the daemon asks a poll to bring (ProtocolLimits.max_deltas_per_task)
PROGRESS_EVERY_S = 0.5
LAG_TICK_S = 0.02  # the load generators' event-loop lag probe
STOP_GRACE_S = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SPEED_PROBE_N = 1_000_000  # ~60 ms on an idle core of the developer machine

PUBLISHED = re.compile(
    r"round (\d+) \w+: \d+ updates, delta published in ([0-9.]+) s \(\d+ seeds applied in ([0-9.]+) s\)"
)
COLLECTED = re.compile(  # server/collector.py's summary, logged at shutdown
    r"garbage collection while serving: (\d+) collections \((\d+)/(\d+)/(\d+) by generation"
    r"(?:, (\d+) paced by work)?\), ([0-9.]+) s, longest pause ([0-9.]+) ms"
)
SERVED = re.compile(r"calls while serving \(server side\): (.*)")  # server/call_meter.py's summary
SERVED_METHOD = re.compile(r"(\w+) (\d+) p50 ([0-9.e+-]+) ms p99 ([0-9.e+-]+) ms")

# Counters each load generator exposes to the parent for the progress line.
JOINED, SUBMITTED, SYNCED, FAILED = range(4)


# --- the server process ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of a process onto `cpus`; threads it starts later inherit the mask."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def cpu_list(text: str) -> frozenset[int]:
    """`--server-cpus` / `--loadgen-cpus`: "1", "0-3" or "0,2-3", only CPUs this process may use."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a CPU list like 0-3 or 0,2, got {text!r}") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise argparse.ArgumentTypeError(
            f"CPUs {sorted(cpus)} are not all among the usable {sorted(allowed)}"
        )
    return frozenset(cpus)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpus_allowed(pid: int) -> str:
    """The CPUs a process may run on, as the kernel says (Cpus_allowed_list in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.partition(":")[2].strip()
    return ""


def proc_memory_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@dataclass
class ServerProcess:
    """`fedmezo server` on a free loopback port, its log in the work dir; stopped in `close`."""

    workdir: Path
    clients: int
    rounds: int
    local_steps: int
    heartbeat_s: float = 5.0  # the server's heartbeat_interval_s, which clients follow
    seed_scheme: str = "per-client"  # shared: a round delta of tau coefficients whatever the clients
    extra: tuple[str, ...] = ()  # more `fedmezo server` flags (--server-arg)
    cpus: frozenset[int] | None = None  # pin the server here (--server-cpus)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def start(self) -> None:
        args = [
            sys.executable, "-m", "fedmezo.cli.main", "server",
            f"--model={MODEL}", "--insecure", "--host=127.0.0.1", f"--port={self.port}",
            f"--state-dir={self.workdir / 'state'}",
            f"--rounds={self.rounds}", f"--local-steps={self.local_steps}",
            f"--min-clients={self.clients}", f"--clients-per-round={self.clients}",
            "--quorum=1.0", f"--deadline-s={ROUND_DEADLINE_S}", f"--max-wait-s={LONG_POLL_S}",
            f"--checkpoint-every={self.rounds}", f"--heartbeat-interval-s={self.heartbeat_s}",
            f"--heartbeat-timeout-s={self.heartbeat_s * HEARTBEAT_TIMEOUT_FACTOR}",
            f"--seed-scheme={self.seed_scheme}", *PROTOCOL_LOAD, *self.extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMEZO_")}
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        if self.cpus:
            pin(self.process.pid, self.cpus)
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        wait_for_status(self.target, self.process, "server", self.log_tail)

    def run_config(self) -> common_pb2.RunConfig:
        with grpc.insecure_channel(self.target) as channel:
            stub = status_pb2_grpc.StatusServiceStub(channel)
            return stub.GetRunConfig(status_pb2.GetRunConfigRequest(), timeout=10.0).config

    def rounds_closed(self) -> list[Any]:
        with grpc.insecure_channel(self.target) as channel:
            stub = status_pb2_grpc.StatusServiceStub(channel)
            return list(stub.ListRounds(status_pb2.ListRoundsRequest(from_round=1), timeout=60.0).rounds)

    def publish_times(self) -> dict[int, tuple[float, float]]:
        """Per round, the server's own (close time, of which applying the delta), from its log."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return {int(m[1]): (float(m[2]), float(m[3])) for m in PUBLISHED.finditer(text)}
        return {}

    def collector(self) -> dict[str, Any] | None:
        """The server's garbage collection over its life (its shutdown log line), once it stopped."""
        with contextlib.suppress(OSError):
            match = COLLECTED.search(self.log_path.read_text(errors="replace"))
            if match:
                return {
                    "collections": int(match[1]), "full_collections": int(match[4]),
                    "paced": int(match[5] or 0), "total_s": float(match[6]),
                    "longest_pause_ms": float(match[7]),
                }  # fmt: skip
        return None

    def served(self) -> dict[str, dict[str, float]]:
        """The server's own latency per method (its shutdown log line), once it stopped: without the
        network, grpc's queues and the load generators' event loops that the client-side figures add."""
        with contextlib.suppress(OSError):
            match = SERVED.search(self.log_path.read_text(errors="replace"))
            if match:
                return {
                    m[1]: {"n": int(m[2]), "p50_ms": float(m[3]), "p99_ms": float(m[4])}
                    for m in SERVED_METHOD.finditer(match[1])
                }
        return {}

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def wait_for_status(
    target: str, process: subprocess.Popen[bytes], what: str, log_tail: Callable[[], str]
) -> None:
    """Until `target` answers GetRunConfig; `process` exiting or START_TIMEOUT_S passing is an error."""
    give_up = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_tail()}")
            try:
                stub.GetRunConfig(status_pb2.GetRunConfigRequest(), timeout=2.0)
                return
            except grpc.RpcError:
                if time.monotonic() > give_up:
                    raise RuntimeError(f"{what} not ready in {START_TIMEOUT_S:.0f} s") from None
                time.sleep(0.2)


class StatusReplicaProcess:
    """`fedmezo status-server` over the server's state dir (--status-replica): the pollers read it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            sys.executable, "-m", "fedmezo.cli.main", "status-server", "--insecure", "--host=127.0.0.1",
            f"--port={self.port}", f"--state-dir={self.workdir / 'state'}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMEZO_")}
        with open(self.workdir / "status-server.log", "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for_status(self.target, self.process, "status-server", lambda: "")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- one simulated client ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadSettings:
    target: str
    manifest_sha256: bytes
    rng_spec: str
    train_s: tuple[float, float]
    heartbeat_s: float
    seed: int
    flow: str = "lean"
    native: str = ""  # the C++ generator's path (--loadgen native); empty: asyncio clients


@dataclass
class Samples:
    """What one load generator measured; merged by the parent."""

    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    submitted_at: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    submit_ms: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    assigned_at: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    delta_at: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    accepted: int = 0
    in_sync: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cpu_s: float = 0.0
    failed_clients: list[str] = field(default_factory=list)
    loop_lag: list[tuple[float, float]] = field(default_factory=list)  # (timer due, ms late)


def _retryable(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class SimClient:
    """The real client's protocol loop (client/daemon.py) with synthetic scalars and no model."""

    def __init__(self, client_id: str, settings: LoadSettings, samples: Samples, counters: Any) -> None:
        self.client_id = client_id
        self.settings = settings
        self.samples = samples
        self.counters = counters
        # Its own TCP connection, as a daemon in its own process has: gRPC would otherwise share one
        # subchannel between every channel to the same target, and the server's per-connection stream
        # limit (max_streams_per_connection, 128) would then refuse the 129th client's long-poll.
        self.channel = grpc.aio.insecure_channel(
            settings.target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.stub = federation_pb2_grpc.FederationServiceStub(self.channel)
        self.rng = random.Random(f"{settings.seed}/{client_id}")
        self.version = 0
        self.fingerprint = b""  # the server's fingerprint at self.version (what a replica would hold)
        self.reported = -1  # the latest version whose fingerprint the server judged
        self.polling = False  # a long-poll is in flight: the lean client sends no heartbeat then
        self.activity = federation_pb2.CLIENT_ACTIVITY_IDLE
        self.closing = False  # our own shutdown cancels a heartbeat in flight: not an error

    async def call(self, name: str, method: Any, request: Any, timeout: float = RPC_TIMEOUT_S) -> Any:
        """One unary RPC, timed; UNAVAILABLE/RESOURCE_EXHAUSTED retried with backoff and counted."""
        for attempt in range(RETRIES + 1):
            start = time.monotonic()
            try:
                response = await method(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if self.closing:
                    raise
                self.samples.errors[f"{name}:{exc.code().name}"] += 1
                if attempt == RETRIES or not _retryable(exc):
                    raise
                await asyncio.sleep(self.rng.uniform(0, RETRY_BASE_S * 2**attempt))
                continue
            self.samples.latency_ms[name].append((time.monotonic() - start) * 1e3)
            return response
        raise AssertionError("unreachable")

    async def run(self, start_delay: float = 0.0) -> None:
        heartbeat: asyncio.Task[None] | None = None
        try:
            await asyncio.sleep(start_delay)
            joined = await self.call("Join", self.stub.Join, self._join_request())
            self.counters[JOINED] += 1
            self.version, self.fingerprint = joined.rounds_completed, bytes(joined.fingerprint)
            if self.settings.heartbeat_s > 0:
                heartbeat = asyncio.get_running_loop().create_task(self._heartbeats())
            while await self._one_poll():
                pass
        except grpc.aio.AioRpcError:
            self.samples.failed_clients.append(self.client_id)
            self.counters[FAILED] += 1
        finally:
            self.closing = True
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            await self.channel.close()

    def _join_request(self) -> federation_pb2.JoinRequest:
        return federation_pb2.JoinRequest(
            client_id=self.client_id,
            manifest_sha256=self.settings.manifest_sha256,
            rng_spec=self.settings.rng_spec,
            num_examples=self.rng.randint(16, 256),
            device="sim",
            client_version="bench_server",
        )

    @property
    def lean(self) -> bool:
        return self.settings.flow == "lean"

    async def _one_poll(self) -> bool:
        """One GetTask and whatever follows; False once the run is finished."""
        request = federation_pb2.GetTaskRequest(
            client_id=self.client_id, known_version=self.version, wait_s=LONG_POLL_S
        )
        unreported = self.lean and self.version > self.reported
        if self.lean:
            request.max_deltas = MAX_DELTAS
            request.fingerprint = self.fingerprint if unreported else b""
        self.polling = True
        try:
            poll = await self.call("GetTask", self.stub.GetTask, request, LONG_POLL_S + RPC_TIMEOUT_S)
        finally:
            self.polling = False
        if unreported:
            self._judged(poll.sync_action != federation_pb2.SYNC_ACTION_RESYNC)
        for delta in poll.deltas:
            if delta.round_id == self.version + 1:
                self.version, self.fingerprint = delta.round_id, bytes(delta.fingerprint)
                self.samples.delta_at[delta.round_id].append(time.monotonic())
        if self.lean and poll.rounds_completed > self.version:  # too far behind for the poll's deltas
            await self._follow_deltas(poll.rounds_completed, follow=False)
        if poll.status == federation_pb2.TASK_STATUS_RUN_FINISHED:
            if self.lean:
                await self._report()
            return False
        if poll.status == federation_pb2.TASK_STATUS_ASSIGNED:
            self.samples.assigned_at[poll.task.round_id].append(time.monotonic())
            await self._do_task(poll.task)
        return True

    def _judged(self, in_sync: bool) -> None:
        """The server judged the fingerprint of self.version (version 0 is not a round's: not counted)."""
        if self.version > 0:
            self.samples.in_sync += int(in_sync)
            self.counters[SYNCED] += 1
        self.reported = self.version

    async def _report(self) -> None:
        report = federation_pb2.ReportFingerprintRequest(
            client_id=self.client_id, model_version=self.version, fingerprint=self.fingerprint
        )
        answer = await self.call("ReportFingerprint", self.stub.ReportFingerprint, report)
        self._judged(answer.in_sync)

    async def _do_task(self, task: federation_pb2.Task) -> None:
        self.activity = federation_pb2.CLIENT_ACTIVITY_TRAINING
        await asyncio.sleep(self.rng.uniform(*self.settings.train_s))
        steps = task.local_steps
        update = federation_pb2.SubmitUpdateRequest(
            client_id=self.client_id,
            round_id=task.round_id,
            projected_grads=[self.rng.gauss(0.0, 1.0) for _ in range(steps)],
            losses=[2.0 + self.rng.gauss(0.0, 0.1) for _ in range(steps)],
            step_time_s=0.5,
            peak_memory_bytes=1 << 28,
            device="sim",
        )
        base = self.lean and self.version > self.reported
        if base:
            update.base_fingerprint = self.fingerprint
        start = time.monotonic()
        response = await self.call("SubmitUpdate", self.stub.SubmitUpdate, update)
        self.samples.submitted_at[task.round_id].append(time.monotonic())
        self.samples.submit_ms[task.round_id].append((time.monotonic() - start) * 1e3)
        if response.status == federation_pb2.UPDATE_STATUS_ACCEPTED:
            self.samples.accepted += 1
        self.counters[SUBMITTED] += 1
        if base and response.status == federation_pb2.UPDATE_STATUS_ACCEPTED:
            self._judged(True)  # an update whose base fingerprint differs is refused ("diverged")
        if self.lean:
            self.activity = federation_pb2.CLIENT_ACTIVITY_IDLE  # the next poll brings the round
            return
        self.activity = federation_pb2.CLIENT_ACTIVITY_SYNCING
        await self._follow_deltas(task.round_id, follow=True)
        await self._report()
        self.activity = federation_pb2.CLIENT_ACTIVITY_IDLE

    async def _follow_deltas(self, round_id: int, *, follow: bool) -> None:
        """StreamRoundDeltas until round_id's delta (follow: waiting for it to close)."""
        request = federation_pb2.StreamRoundDeltasRequest(
            client_id=self.client_id, from_round=self.version + 1, follow=follow
        )
        start = time.monotonic()
        call = self.stub.StreamRoundDeltas(request, timeout=ROUND_DEADLINE_S)
        try:
            async for message in call:
                self.version, self.fingerprint = message.round_id, bytes(message.fingerprint)
                if message.round_id >= round_id:
                    now = time.monotonic()
                    self.samples.delta_at[round_id].append(now)
                    name = "StreamRoundDeltas (wait)" if follow else "StreamRoundDeltas (catch-up)"
                    self.samples.latency_ms[name].append((now - start) * 1e3)
                    return
        except grpc.aio.AioRpcError as exc:
            self.samples.errors[f"StreamRoundDeltas:{exc.code().name}"] += 1
            raise
        finally:
            call.cancel()
        raise RuntimeError(f"delta stream ended before round {round_id}")

    async def _heartbeats(self) -> None:
        """What the daemon's heartbeat thread sends, first after one interval (jittered start)."""
        await asyncio.sleep(self.rng.uniform(0.0, self.settings.heartbeat_s))
        while True:
            if self.polling and self.lean:  # a waiting GetTask keeps the client online
                await asyncio.sleep(self.settings.heartbeat_s)
                continue
            request = federation_pb2.HeartbeatRequest(
                client_id=self.client_id, model_version=self.version, activity=self.activity
            )
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.call("Heartbeat", self.stub.Heartbeat, request)
            await asyncio.sleep(self.settings.heartbeat_s)


# --- a load-generator process ------------------------------------------------------------------------------
async def _drive(
    clients: list[tuple[str, float]], settings: LoadSettings, counters: Any, control: Any
) -> Samples:
    """Run (client id, start delay) pairs until they finish or the parent says stop (a client failed)."""
    go, stop = control
    samples = Samples()
    sims = [SimClient(c, settings, samples, counters) for c, _ in clients]
    gc.freeze()  # as the server does: full collections would pause every client of this process
    while not go.is_set():  # every generator starts its clients at the same moment
        await asyncio.sleep(0.01)
    tasks = [asyncio.create_task(sim.run(delay)) for sim, (_, delay) in zip(sims, clients)]
    lag = asyncio.create_task(_loop_lag(samples.loop_lag))
    while not stop.is_set():
        _, pending = await asyncio.wait(tasks, timeout=0.2)
        if not pending:
            break
    for task in [*tasks, lag]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples


async def _loop_lag(lags: list[tuple[float, float]]) -> None:
    """How late this loop runs a timer, every LAG_TICK_S: the delay every reply it times also carries."""
    while True:
        due = time.monotonic() + LAG_TICK_S
        await asyncio.sleep(LAG_TICK_S)
        lags.append((due, max(0.0, time.monotonic() - due) * 1e3))


def load_generator(
    clients: list[tuple[str, float]],
    settings: LoadSettings,
    counters: Any,
    control: Any,
    out: Any,
    cpus: frozenset[int] | None = None,
) -> None:
    """Process entry point: run the clients, send the samples (plain dicts) to the parent."""
    if cpus:
        os.sched_setaffinity(0, cpus)  # before grpc's threads (or the C++ generator) start: they inherit it
    if settings.native:
        return run_native(clients, settings, counters, control, out)
    start_cpu = time.process_time()
    samples = asyncio.run(_drive(clients, settings, counters, control))
    samples.cpu_s = time.process_time() - start_cpu
    out.put(
        {
            "latency_ms": dict(samples.latency_ms),
            "submitted_at": dict(samples.submitted_at),
            "submit_ms": dict(samples.submit_ms),
            "assigned_at": dict(samples.assigned_at),
            "delta_at": dict(samples.delta_at),
            "accepted": samples.accepted,
            "in_sync": samples.in_sync,
            "errors": dict(samples.errors),
            "cpu_s": samples.cpu_s,
            "failed_clients": samples.failed_clients,
            "loop_lag": samples.loop_lag,
        }
    )


LOADGEN_DIR = Path(__file__).resolve().parent / "loadgen"


def native_binary() -> str:
    """Build (or find up to date) the C++ generator, benchmarks/loadgen/loadgen.cc; its path."""
    done = subprocess.run(
        ["bash", str(LOADGEN_DIR / "build.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"--loadgen native: building benchmarks/loadgen failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def run_native(
    clients: list[tuple[str, float]], settings: LoadSettings, counters: Any, control: Any, out: Any
) -> None:
    """`--loadgen native`: the same clients run by the C++ generator, which this process feeds
    (clients, go, stop) and reads (progress, the samples) over its stdin/stdout."""
    import threading

    go, stop = control
    command = [
        settings.native, "--target", settings.target, "--manifest", settings.manifest_sha256.hex(),
        "--rng-spec", settings.rng_spec, "--train", repr(settings.train_s[0]), repr(settings.train_s[1]),
        "--heartbeat-s", repr(settings.heartbeat_s), "--seed", str(settings.seed),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(f"{client} {delay!r}\n" for client, delay in clients) + "end\n")
    proc.stdin.flush()
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the native load generator did not start (exit code {proc.wait()})")
    go.wait()
    proc.stdin.write("go\n")
    proc.stdin.flush()

    def relay_stop() -> None:  # a daemon thread: it ends with this process if no stop comes
        stop.wait()
        with contextlib.suppress(OSError):
            proc.stdin.write("stop\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]

    threading.Thread(target=relay_stop, daemon=True).start()
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        kind, _, rest = line.partition(" ")
        if kind == "progress":
            for i, value in enumerate(rest.split()):
                counters[i] = int(value)
        elif kind == "result":
            result = json.loads(rest)
    code = proc.wait()
    if result is None:
        raise RuntimeError(f"the native load generator ended without its samples (exit code {code})")
    for key in ("submitted_at", "submit_ms", "assigned_at", "delta_at"):
        result[key] = {int(r): values for r, values in result[key].items()}  # JSON keys are strings
    result["loop_lag"] = [tuple(pair) for pair in result["loop_lag"]]
    out.put(result)


# --- the parent: orchestrate, merge, report ----------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.machine()


def speed_probe_ms() -> float:
    """A fixed single-thread Python workload, best of 3 (ms): how fast this machine ran at the time.
    Shared VMs drift by tens of percent over an hour, and every latency here moves with them."""
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        sum(i * i for i in range(SPEED_PROBE_N))
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "latency_ms": defaultdict(list),
        "submitted_at": defaultdict(list),
        "submit_ms": defaultdict(list),
        "assigned_at": defaultdict(list),
        "delta_at": defaultdict(list),
        "errors": defaultdict(int),
        "accepted": 0,
        "in_sync": 0,
        "cpu_s": 0.0,
        "failed_clients": [],
        "loop_lag": [],
    }
    for part in parts:
        for key in ("latency_ms", "submitted_at", "submit_ms", "assigned_at", "delta_at"):
            for name, values in part[key].items():
                merged[key][name].extend(values)
        for name, count in part["errors"].items():
            merged["errors"][name] += count
        for key in ("accepted", "in_sync", "cpu_s", "failed_clients", "loop_lag"):
            merged[key] += part[key]
    return merged


def _progress(counters: list[Any], clients: int, rounds: int, started: float) -> str:
    joined, submitted, synced, failed = (sum(c[i] for c in counters) for i in range(4))
    text = (
        f"\r[{time.monotonic() - started:6.1f} s] joined {joined}/{clients}  "
        f"submitted {submitted}/{clients * rounds}  synced {synced}/{clients * rounds}"
    )
    return text + (f"  FAILED {failed}" if failed else "")


class OperatorPoller:
    """What a dashboard does to the server, from a thread of the main process: every `every_s` seconds
    GetStatus, ListRounds (every page) and ListClients, each call timed and its reply's size counted. It
    measures what an operator's polling costs at this many clients, and what it costs the clients."""

    CALLS = ("GetStatus", "ListRounds", "ListClients")

    def __init__(self, target: str, every_s: float) -> None:
        import threading

        self.target, self.every_s = target, every_s
        self.latency_ms: dict[str, list[float]] = defaultdict(list)
        self.reply_bytes: dict[str, list[int]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _timed(self, name: str, call: Any) -> Any:
        start = time.perf_counter()
        try:
            reply = call()
        except grpc.RpcError as exc:
            self.errors[f"operator {name}: {exc.code().name}"] += 1  # type: ignore[attr-defined]
            return None
        self.latency_ms[f"operator {name}"].append((time.perf_counter() - start) * 1e3)
        return reply

    def _run(self) -> None:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(self.target, options=options) as channel:
            stub = status_pb2_grpc.StatusServiceStub(channel)
            status = status_pb2.GetStatusRequest()
            while not self._stop.wait(self.every_s):
                reply = self._timed("GetStatus", lambda: stub.GetStatus(status, timeout=60))
                if reply is not None:
                    self.reply_bytes["GetStatus"].append(reply.ByteSize())
                size, start, after = 0, time.perf_counter(), 0
                while True:  # every page, as the dashboard reads them
                    request = status_pb2.ListRoundsRequest(from_round=after)
                    reply = self._timed("ListRounds page", lambda r=request: stub.ListRounds(r, timeout=60))
                    if reply is None:
                        break
                    size += reply.ByteSize()
                    if not reply.next_from_round:
                        break
                    after = reply.next_from_round
                self.latency_ms["operator ListRounds (all pages)"].append((time.perf_counter() - start) * 1e3)
                self.reply_bytes["ListRounds"].append(size)
                reply = self._timed(
                    "ListClients", lambda: stub.ListClients(status_pb2.ListClientsRequest(), timeout=60)
                )
                if reply is not None:
                    self.reply_bytes["ListClients"].append(reply.ByteSize())


def run_load(
    args: argparse.Namespace, server: ServerProcess, status_target: str | None = None
) -> dict[str, Any]:
    """Start the generators, show progress, collect and merge their samples."""
    config = server.run_config()
    heartbeat_s = config.heartbeat_interval_s if args.heartbeat else 0.0
    settings = LoadSettings(
        server.target,
        bytes(config.manifest_sha256),
        config.rng_spec,
        args.train_s,
        heartbeat_s,
        args.seed,
        args.flow,
        native_binary() if args.loadgen == "native" else "",
    )
    ids = [f"sim-{i:05d}" for i in range(args.clients)]
    ctx = mp.get_context("spawn")  # a clean interpreter: no grpc state inherited across fork
    delays = [i / args.join_rate if args.join_rate > 0 else 0.0 for i in range(len(ids))]
    schedule = list(zip(ids, delays))
    go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    counters: list[SynchronizedArray[int]] = [ctx.Array("l", 4, lock=False) for _ in range(args.procs)]
    workers = [
        ctx.Process(
            target=load_generator,
            args=(schedule[k :: args.procs], settings, counters[k], (go, stop), out, args.loadgen_cpus),
        )
        for k in range(args.procs)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # let the generators import grpc before the clock starts
    assert server.process is not None
    cpu_before = proc_cpu_s(server.process.pid)
    rss_before, _ = proc_memory_mib(server.process.pid)
    started = time.monotonic()
    go.set()
    pollers = [
        OperatorPoller(status_target or server.target, args.status_poll_s)
        for _ in range(args.status_pollers if args.status_poll_s > 0 else 0)
    ]
    for poller in pollers:
        poller.start()
    parts: list[dict[str, Any]] = []
    next_progress = 0.0
    while len(parts) < len(workers):
        failed = sum(c[FAILED] for c in counters)
        if not stop.is_set() and (failed or time.monotonic() - started > args.timeout_s):
            # With quorum 1.0 a failed client stalls every later round: stop, report what happened.
            print(f"\nstopping: {failed} client(s) failed or the time limit passed", file=sys.stderr)
            stop.set()
        if time.monotonic() - started > args.timeout_s + STOP_GRACE_S:
            for worker in workers:
                worker.kill()
            raise RuntimeError(f"load did not finish in {args.timeout_s:.0f} s")
        if not args.quiet and time.monotonic() >= next_progress:
            print(
                _progress(counters, args.clients, args.rounds, started), end="", file=sys.stderr, flush=True
            )
            next_progress = time.monotonic() + PROGRESS_EVERY_S
        with contextlib.suppress(Exception):
            parts.append(out.get(timeout=0.1))
        if any(w.exitcode not in (None, 0) for w in workers):
            raise RuntimeError("a load generator crashed")
    wall_s = time.monotonic() - started
    for poller in pollers:
        poller.stop()
    if not args.quiet:
        print(_progress(counters, args.clients, args.rounds, started), file=sys.stderr, flush=True)
    for worker in workers:
        worker.join()
    merged = _merge(parts)
    merged["wall_s"] = wall_s
    merged["operator_reply_bytes"] = {}
    for poller in pollers:
        for name, values in poller.latency_ms.items():
            merged["latency_ms"].setdefault(name, []).extend(values)
        for name, count in poller.errors.items():
            merged["errors"][name] = merged["errors"].get(name, 0) + count
        for name, sizes in poller.reply_bytes.items():
            if sizes:
                merged["operator_reply_bytes"][name] = max(
                    merged["operator_reply_bytes"].get(name, 0), *sizes
                )
    merged["server_cpu_s"] = proc_cpu_s(server.process.pid) - cpu_before
    merged["server_rss_before_mib"] = rss_before
    merged["server_rss_mib"], merged["server_peak_rss_mib"] = proc_memory_mib(server.process.pid)
    merged["server_cpus_allowed"] = proc_cpus_allowed(server.process.pid)
    return merged


def summarize(
    args: argparse.Namespace,
    merged: dict[str, Any],
    rounds: list[Any],
    published: dict[int, tuple[float, float]],
) -> dict[str, Any]:
    """The report: flat headline keys first, then per-RPC and per-round detail."""
    rpc = {name: _spread(values) for name, values in sorted(merged["latency_ms"].items())}
    per_round = []
    for r in range(1, args.rounds + 1):
        submitted, delivered = merged["submitted_at"].get(r, []), merged["delta_at"].get(r, [])
        assigned = merged["assigned_at"].get(r, [])
        if not submitted or not delivered or not assigned:
            continue
        # Submits that started while the round's tasks were still going out compete with that burst.
        during, after = [], []
        for done, ms in zip(submitted, merged["submit_ms"][r]):
            (during if done - ms / 1e3 < max(assigned) else after).append(ms)
        per_round.append(
            {
                "round": r,
                "submits": len(submitted),
                "task_spread_s": max(assigned) - min(assigned),
                "submit_window_s": max(submitted) - min(submitted),
                "p99_submit_ms": percentile(merged["submit_ms"][r], 99),
                "submits_during_task_spread": len(during),
                "p99_submit_during_task_spread_ms": percentile(during, 99) if during else math.nan,
                "p99_submit_after_task_spread_ms": percentile(after, 99) if after else math.nan,
                # the generators' own stall while the tasks went out: a submit timed then carries it
                "max_loadgen_lag_during_task_spread_ms": max(
                    (ms for due, ms in merged["loop_lag"] if min(assigned) <= due <= max(assigned)),
                    default=math.nan,
                ),
                "close_s": min(delivered) - max(submitted),
                "server_publish_s": published.get(r, (math.nan, math.nan))[0],
                "server_apply_s": published.get(r, (math.nan, math.nan))[1],
                "delta_spread_s": max(delivered) - min(delivered),
            }
        )
    submit = merged["latency_ms"].get("SubmitUpdate", [math.nan])
    closed = [r for r in rounds if r.state == status_pb2.ROUND_STATE_CLOSED]
    return {
        "clients": args.clients,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "seed_scheme": args.seed_scheme,
        "flow": args.flow,
        "procs": args.procs,
        "loadgen": args.loadgen,
        "join_rate": args.join_rate,
        "train_s": list(args.train_s),
        "heartbeat": args.heartbeat,
        "heartbeat_s": args.heartbeat_s,
        "p50_submit_ms": percentile(submit, 50),
        "p99_submit_ms": percentile(submit, 99),
        "round_close_s": max((r["close_s"] for r in per_round), default=math.nan),
        "server_publish_s": max((p for p, _ in published.values()), default=math.nan),
        "submits_expected": args.clients * args.rounds,
        "submits_accepted": merged["accepted"],
        "fingerprints_in_sync": merged["in_sync"],
        "rounds_closed": len(closed),
        "accepted_per_round": [sum(c.accepted for c in r.clients) for r in rounds],
        "failed_clients": len(merged["failed_clients"]),
        "errors": dict(merged["errors"]),
        "wall_s": merged["wall_s"],
        # what the server counted going down to each client per round (task, delta, acks): with shared
        # seeds it must not grow with the number of clients
        "downlink_per_client_per_round_bytes": [
            r.bytes_down / max(len(r.clients), 1) for r in rounds if r.state == status_pb2.ROUND_STATE_CLOSED
        ],
        "status_poll_s": args.status_poll_s,
        "status_pollers": args.status_pollers if args.status_poll_s > 0 else 0,
        "status_target": "replica" if args.status_replica else "server",
        "operator_reply_bytes": merged["operator_reply_bytes"],  # the largest reply of each kind
        "server_cpu_s": merged["server_cpu_s"],
        "server_rss_before_mib": merged["server_rss_before_mib"],
        "server_peak_rss_mib": merged["server_peak_rss_mib"],
        "loadgen_cpu_s": merged["cpu_s"],
        "loadgen_loop_lag_ms": _spread([ms for _, ms in merged["loop_lag"]]),
        "server_cpus": sorted(args.server_cpus) if args.server_cpus else None,
        "server_cpus_allowed": merged["server_cpus_allowed"],  # the kernel's word, read during the load
        "loadgen_cpus": sorted(args.loadgen_cpus) if args.loadgen_cpus else None,
        "rpc": rpc,
        "per_round": per_round,
        "speed_probe_ms": merged["speed_probe_ms"],  # before and after the load (speed_probe_ms)
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, grpcio {grpc.__version__}",
    }


def _spread(values: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of a list of milliseconds (nan for an empty one)."""
    if not values:
        return {"n": 0, "p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values),
    }


def print_table(report: dict[str, Any]) -> None:
    beats = f"every {report['heartbeat_s']:g} s" if report["heartbeat"] else "off"
    print(
        f"{report['clients']} clients x {report['rounds']} rounds, tau={report['local_steps']}, "
        f"{report['seed_scheme']} seeds, "
        f"{report['procs']} load-generator process(es), "
        f"training {report['train_s'][0]:g}-{report['train_s'][1]:g} s, "
        f"heartbeats {beats}  ({report['machine']})"
    )
    print(f"\n{'RPC':28s} {'n':>7s} {'p50 ms':>9s} {'p99 ms':>9s} {'max ms':>9s}")
    for name, row in report["rpc"].items():
        print(f"{name:28s} {row['n']:7d} {row['p50_ms']:9.2f} {row['p99_ms']:9.2f} {row['max_ms']:9.2f}")
    print(
        f"\n{'round':>5s} {'submits':>8s} {'tasks out s':>12s} {'submit window s':>16s} "
        f"{'p99 submit ms':>14s} {'(tasks out / after)':>20s} {'close s':>8s} {'server s':>9s} "
        f"{'apply s':>8s} {'gen lag ms':>11s}"
    )
    for row in report["per_round"]:
        split = (
            f"{row['p99_submit_during_task_spread_ms']:.0f} / {row['p99_submit_after_task_spread_ms']:.0f}"
        )
        print(
            f"{row['round']:5d} {row['submits']:8d} {row['task_spread_s']:12.3f} "
            f"{row['submit_window_s']:16.3f} {row['p99_submit_ms']:14.2f} {split:>20s} {row['close_s']:8.3f} "
            f"{row['server_publish_s']:9.3f} {row['server_apply_s']:8.3f} "
            f"{row['max_loadgen_lag_during_task_spread_ms']:11.0f}"
        )
    print(
        f"\nsubmit p50 {report['p50_submit_ms']:.2f} ms, p99 {report['p99_submit_ms']:.2f} ms; "
        f"round close (worst) {report['round_close_s']:.3f} s"
    )
    print(
        f"accepted {report['submits_accepted']}/{report['submits_expected']}, "
        f"in sync {report['fingerprints_in_sync']}, failed clients {report['failed_clients']}, "
        f"errors {report['errors'] or 'none'}"
    )
    print(
        f"server CPU {report['server_cpu_s']:.1f} s over {report['wall_s']:.1f} s wall, "
        f"RSS {report['server_rss_before_mib']:.0f} MiB before the load, "
        f"peak {report['server_peak_rss_mib']:.0f} MiB; load generators CPU {report['loadgen_cpu_s']:.1f} s"
    )
    lag = report["loadgen_loop_lag_ms"]
    pinned = (
        f"; server on CPUs {report['server_cpus'] or 'any'}, generators on {report['loadgen_cpus'] or 'any'}"
        if report["server_cpus"] or report["loadgen_cpus"]
        else ""
    )
    print(
        f"load generators' event-loop lag: p50 {lag['p50_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms, "
        f"max {lag['max_ms']:.1f} ms (client-side latencies include it){pinned}"
    )
    if report.get("server_gc"):
        gc_ = report["server_gc"]
        print(
            f"server garbage collection (its whole life): {gc_['collections']} collections, "
            f"{gc_['full_collections']} full, {gc_['total_s']:.2f} s, "
            f"longest pause {gc_['longest_pause_ms']:.1f} ms"
        )
    for name, row in sorted(report.get("server_rpc", {}).items()):
        p50, p99 = row["p50_ms"], row["p99_ms"]
        print(f"server side {name:18s} n {row['n']:7d}  p50 {p50:9.3g} ms  p99 {p99:9.3g} ms")
    down = report["downlink_per_client_per_round_bytes"]
    print("downlink per client per round (server's count): " + ", ".join(f"{b:,.0f} B" for b in down))
    if report["operator_reply_bytes"]:
        sizes = ", ".join(f"{k} {v:,} B" for k, v in report["operator_reply_bytes"].items())
        print(
            f"operator polling every {report['status_poll_s']:g} s by {report['status_pollers']} "
            f"poller(s) on the {report['status_target']}, largest replies: {sizes}"
        )


def raise_fd_limit() -> None:
    """One socket per client on each side: lift the soft open-files limit to the hard one (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def train_window(text: str) -> tuple[float, float]:
    """`--train-s` as (lo, hi) seconds: "5" = 0..5, "1:6" = 1..6."""
    lo_text, _, hi_text = text.rpartition(":")
    try:
        lo, hi = float(lo_text or 0.0), float(hi_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [LO:]HI seconds, got {text!r}") from None
    if not 0.0 <= lo <= hi or not math.isfinite(hi):
        raise argparse.ArgumentTypeError(f"need 0 <= LO <= HI, got {text!r}")
    return lo, hi


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clients", type=int, default=1000, help="simulated clients (all selected every round)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds")
    parser.add_argument(
        "--local-steps", type=int, default=1,
        help="tau: scalars per update; the server's delta apply costs params x clients x tau x 0.22 ns",
    )  # fmt: skip
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--loadgen", choices=("python", "native"), default="python",
        help="python: asyncio clients (grpc.aio); native: the same lean loop in C++ (benchmarks/loadgen, "
        "built on first use; needs g++ and libgrpc++-dev), whose replies are not timed late by a busy "
        "Python event loop and which leaves the server more of a small machine's CPU",
    )  # fmt: skip
    parser.add_argument(
        "--flow", choices=("lean", "classic"), default="lean",
        help="lean: the daemon's two calls per round (the poll brings the deltas); classic: poll, submit, "
        "follow the delta stream, report the fingerprint (max_deltas = 0 clients)",
    )  # fmt: skip
    parser.add_argument(
        "--seed-scheme", choices=("per-client", "shared"), default="per-client",
        help="the server's seed scheme; shared keeps a round's delta at tau seeds whatever the clients",
    )  # fmt: skip
    parser.add_argument(
        "--join-rate", type=float, default=DEFAULT_JOIN_RATE,
        help="clients started per second (a fleet comes online over time); 0 = all at once",
    )  # fmt: skip
    parser.add_argument(
        "--train-s", type=train_window, default=DEFAULT_TRAIN_S, metavar="[LO:]HI",
        help="each client 'trains' for uniform(LO, HI) seconds (LO 0 when omitted) before submitting; "
        f"0 = every update at once (default {DEFAULT_TRAIN_S[0]:g}:{DEFAULT_TRAIN_S[1]:g})",
    )  # fmt: skip
    parser.add_argument(
        "--heartbeat-s", type=float, default=5.0,
        help="the server's heartbeat interval, which every client follows (server default 5 s)",
    )  # fmt: skip
    parser.add_argument("--no-heartbeat", dest="heartbeat", action="store_false", help="send no heartbeats")
    parser.add_argument(
        "--server-arg", action="append", default=[], metavar="FLAG",
        help="one more `fedmezo server` flag, e.g. --server-arg=--max-streams-per-connection=4 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--status-poll-s", type=float, default=0.0,
        help="poll GetStatus, ListRounds and ListClients every S seconds like a dashboard (0 = no poller)",
    )  # fmt: skip
    parser.add_argument("--status-pollers", type=int, default=1, help="operator pollers (threads) at once")
    parser.add_argument(
        "--status-replica", action="store_true",
        help="the pollers read a `fedmezo status-server` over the state dir instead of the server",
    )  # fmt: skip
    parser.add_argument(
        "--server-cpus", type=cpu_list, metavar="LIST",
        help="pin the server to these CPUs (e.g. 0 or 0-7); with --loadgen-cpus on others, the load no "
        "longer competes with the server for a core, as on separate machines",
    )  # fmt: skip
    parser.add_argument(
        "--loadgen-cpus", type=cpu_list, metavar="LIST", help="pin the load generators to these CPUs"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic scalars and timings")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="give up after this long")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server log, state)")
    parser.add_argument(
        "--raw", type=Path, metavar="PATH",
        help="also write every sample (each call's latency, each submit's time, the generators' lag) as "
        "JSON to PATH, for timelines",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if min(args.clients, args.rounds, args.local_steps, args.procs, args.status_pollers) < 1:
        parser.error("--clients, --rounds, --local-steps, --procs and --status-pollers must be >= 1")
    if args.loadgen == "native" and args.flow != "lean":
        parser.error("--loadgen native runs the lean flow only (the daemon's); classic: --loadgen python")
    args.procs = min(args.procs, args.clients)
    if args.server_cpus and args.loadgen_cpus and args.server_cpus & args.loadgen_cpus:
        parser.error("--server-cpus and --loadgen-cpus overlap: pin them to disjoint CPUs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="bench_server-"))
    server = ServerProcess(
        workdir, args.clients, args.rounds, args.local_steps, args.heartbeat_s, args.seed_scheme,
        tuple(args.server_arg), args.server_cpus,
    )  # fmt: skip
    replica = StatusReplicaProcess(workdir) if args.status_replica else None
    try:
        if not args.quiet:
            print(f"starting fedmezo server ({MODEL}) in {workdir}", file=sys.stderr)
        server.start()
        if replica is not None:
            replica.start()
        probe_before = speed_probe_ms()
        merged = run_load(args, server, replica.target if replica else None)
        merged["speed_probe_ms"] = [probe_before, speed_probe_ms()]
        if args.raw:
            args.raw.write_text(json.dumps(merged))
        report = summarize(args, merged, server.rounds_closed(), server.publish_times())
    except Exception:
        print(f"server log tail:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if replica is not None:
            replica.close()
        code = server.close()
        collected, served = server.collector(), server.served()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    report["server_exit_code"] = code
    report["server_gc"] = collected
    report["server_rpc"] = served
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    complete = report["submits_accepted"] == report["submits_expected"] and not report["failed_clients"]
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
