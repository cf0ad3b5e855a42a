"""A test-owned federation client: the real client link (`GrpcServerLink`, real gRPC) and the real
replica sync (`ReplicaSync` over `fedmezo.fl.replica.Replica`), with local training replaced by seeded
random projected gradients so a round costs milliseconds instead of forward passes.

It keeps a ledger of every update the server acknowledged (SubmitUpdate returned OK): the fault tests
check that ledger against the state dir, because an acknowledged update must never be lost. Like the
daemon it reconnects forever on UNAVAILABLE (re-joining and catching up) and resends the same update,
never a retrained one, after a reconnect.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from fedmezo.client.connection import ChannelSettings, GrpcServerLink
from fedmezo.client.errors import Refused, SyncFailed, Unavailable
from fedmezo.client.sync import ReplicaSync
from fedmezo.fl.records import Task, TaskStatus, Update
from fedmezo.fl.replica import Replica
from fedmezo.fl.seeds import SeedPlan
from fedmezo.zo import RNG_SPEC, TrainableParams

__all__ = ["Ack", "ScriptedClient"]

logger = logging.getLogger("tests.scripted_client")

RECONNECT_S = 0.2  # pause before re-joining a server that went away
NUM_EXAMPLES = 10


@dataclass(frozen=True)
class Ack:
    """An update the server acknowledged, with its exact payload (fp32 values)."""

    client_id: str
    round_id: int
    projected_grads: tuple[float, ...]
    losses: tuple[float, ...]


class ScriptedClient(threading.Thread):
    """Runs in a thread until the run finishes, `stop` is called, or something fails (see `errors`)."""

    def __init__(
        self,
        client_id: str,
        target: str,
        params: TrainableParams,
        *,
        run_seed: int = 0,
        seed: int = 0,
        long_poll_s: float = 1.0,
        rpc_deadline_s: float = 5.0,
        stop_after_round: int | None = None,
    ) -> None:
        super().__init__(name=f"scripted-{client_id}", daemon=True)
        self.client_id = client_id
        self.link = GrpcServerLink(
            ChannelSettings(target=target, client_id=client_id, insecure=True, rpc_deadline_s=rpc_deadline_s)
        )
        self.replica = Replica(params)
        self.sync = ReplicaSync(self.replica, SeedPlan(run_seed))
        self.seed = seed
        self.long_poll_s = long_poll_s
        self.stop_after_round = stop_after_round  # go silent once this round's update was acknowledged
        self.acks: list[Ack] = []
        self.refused: list[tuple[int, str]] = []  # (round, reason) of submissions the server refused
        self.errors: list[str] = []  # anything that must fail the test
        self.reported: dict[int, str] = {}  # version -> fingerprint this client reported, in sync
        self.reconnects = 0
        self.finished = False  # the run finished and the replica holds the final model
        self._halt = threading.Event()
        self._pending: dict[int, Update] = {}

    # --- control ---
    def stop(self) -> None:
        self._halt.set()
        self.link.close()  # a blocked long-poll or stream returns now

    def fingerprint(self) -> str:
        return self.replica.params.fingerprint()

    # --- the loop ---
    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._session()
                self.finished = not self._halt.is_set()
                return
            except Unavailable:
                self.reconnects += 1
                self._halt.wait(RECONNECT_S)
            except Refused as exc:
                if exc.reason == "not_joined":
                    continue  # the server forgot us: join again
                self._fail(f"refused: {exc}")
            except SyncFailed as exc:
                self._fail(f"out of sync: {exc}")
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, message: str) -> None:
        if not self._halt.is_set():
            self.errors.append(f"{self.client_id}: {message}")
        self._halt.set()

    def _session(self) -> None:
        replica = self.replica
        joined = self.link.join(
            manifest_sha256=replica.params.manifest().sha256(),
            rng_spec=RNG_SPEC,
            num_examples=NUM_EXAMPLES,
            device="cpu",
            model_version=replica.version,
        )
        if joined.rounds_completed < replica.version:
            raise SyncFailed(f"server at version {joined.rounds_completed}, replica at {replica.version}")
        self._advance(joined.rounds_completed)
        while not self._halt.is_set():
            poll = self.link.get_task(known_version=replica.version, wait_s=self.long_poll_s)
            if poll.status is TaskStatus.RUN_FINISHED:
                self._advance(poll.rounds_completed)
                return
            if poll.status is TaskStatus.NO_TASK:
                self._advance(poll.rounds_completed)
                continue
            assert poll.task is not None
            self._do_task(poll.task)

    def _advance(self, target: int) -> None:
        """Replay stored deltas up to `target` (each verified by the server's fingerprint), then report."""
        if self.replica.version < target:
            self.sync.replay(self.link, until=target)
            self._report()

    def _do_task(self, task: Task) -> None:
        replica = self.replica
        self._advance(task.round_id - 1)
        if replica.version != task.round_id - 1:
            raise SyncFailed(f"task for round {task.round_id} at version {replica.version}")
        update = self._pending.setdefault(task.round_id, self._make_update(task))
        try:
            self.link.submit(update)
        except Refused as exc:
            if exc.reason == "not_joined":
                raise
            self.refused.append((task.round_id, exc.reason))
        else:
            self.acks.append(Ack(self.client_id, task.round_id, update.projected_grads, update.losses))
            if task.round_id == self.stop_after_round:
                self._halt.set()
                return
        self.sync.replay(self.link, until=task.round_id, follow=True)  # returns once the round closed
        if replica.version >= task.round_id:
            self._report()

    def _make_update(self, task: Task) -> Update:
        """Deterministic per (seed, client, round): a resend is byte-identical to the first send."""
        rng = np.random.default_rng([self.seed, task.round_id, *self.client_id.encode()])
        grads = rng.standard_normal(task.local_steps * task.perturbations).astype(np.float32)  # τ·P
        losses = (3.0 + rng.random(task.local_steps)).astype(np.float32)
        return Update(
            round_id=task.round_id,
            projected_grads=tuple(float(g) for g in grads),
            losses=tuple(float(x) for x in losses),
            step_time_s=0.001,
            peak_memory_bytes=1 << 20,
            device="cpu",
        )

    def _report(self) -> None:
        fingerprint = self.fingerprint()
        if not self.link.report_fingerprint(
            model_version=self.replica.version, fingerprint=bytes.fromhex(fingerprint)
        ):
            raise SyncFailed(f"server reports a mismatch at version {self.replica.version}")
        self.reported[self.replica.version] = fingerprint
