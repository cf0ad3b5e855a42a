"""The client loop: join → catch up → repeat {poll for a task (it brings the rounds closed meanwhile)
→ train → submit}.

Two calls per round in the steady state: `GetTask` asks for the closed rounds' deltas (`max_deltas`) and
carries the fingerprint of a version not yet reported; `SubmitUpdate` carries the fingerprint of the θ it
trained from. A client that fell further behind than one poll's deltas catches up by replay or checkpoint.

Failures are sorted by the error tree: `Unavailable` (server down or restarting) reconnects forever
with backoff, re-joining and catching up; `Refused` answers about one request are logged and the
loop moves on; `AuthFailed`/`Incompatible` end the daemon with a clear message. A stop request (SIGINT
or SIGTERM) abandons the current step, restores θ_r and returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from fedmezo.client.errors import Incompatible, Refused, Stopped, SyncFailed, Unavailable
from fedmezo.client.link import ServerLink
from fedmezo.client.retry import RetryPolicy
from fedmezo.client.state import SavedReplica, load_replica, save_replica
from fedmezo.client.sync import ReplicaSync
from fedmezo.client.workload import Workload
from fedmezo.fl import vocabulary
from fedmezo.fl.errors import (
    Diverged,
    IncompatibleClient,
    NotJoined,
    NotSelected,
    RoundClosed,
    StoreError,
    WrongRound,
)
from fedmezo.fl.records import Activity, RunSettings, Task, TaskResult, TaskStatus, Update
from fedmezo.fl.replica import Replica
from fedmezo.fl.seeds import SHARED, SeedPlan
from fedmezo.fl.train import train_task
from fedmezo.zo import RNG_SPEC

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL_S", "Daemon", "Outcome"]

logger = logging.getLogger("fedmezo.client")

DEFAULT_HEARTBEAT_INTERVAL_S = 10.0  # used until the server's run config says otherwise
HEARTBEAT_JOIN_TIMEOUT_S = 35.0  # a heartbeat in flight ends within its RPC deadline (30 s by default)
# Refusals of a submission that only mean "this update no longer counts": the loop goes on.
_LATE_REASONS = frozenset({RoundClosed.reason, NotSelected.reason, WrongRound.reason})


class Outcome(Enum):
    FINISHED = "finished"  # the run finished and the replica holds the final model
    STOPPED = "stopped"  # a stop was requested


@dataclass
class _Progress:
    """What the heartbeat thread reports; written by the loop, read by the heartbeat."""

    activity: Activity = Activity.IDLE
    round_id: int = 0
    step: int = 0


@dataclass
class Daemon:
    """One client's life. `workload_factory` builds the model and data once the run settings are known."""

    link: ServerLink
    client_id: str
    workload_factory: Callable[[RunSettings], Workload]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stop: threading.Event = field(default_factory=threading.Event)
    long_poll_s: float = 20.0
    progress_bar: bool = True
    state_dir: Path | None = None  # where the replica is saved on exit and resumed from on start
    settings: RunSettings | None = None
    workload: Workload | None = None
    replica: Replica | None = None
    sync: ReplicaSync | None = None
    rounds_trained: int = 0
    _progress: _Progress = field(default_factory=_Progress)
    _pending: Update | None = None  # last trained update: resent, not retrained, after a reconnect
    _heartbeat: threading.Thread | None = None
    _needs_resync: bool = False  # the replica failed to verify: download a checkpoint on reconnect
    _connected_once: bool = False  # joined since the last failure: the backoff starts over
    _heartbeat_stop: threading.Event = field(default_factory=threading.Event)
    _reported: int = -1  # the latest version whose fingerprint the server judged in sync
    _polling: bool = False  # a GetTask long-poll is in flight: the server already counts us online

    # -- the outer loop: reconnect forever ------------------------------------------------------------
    def run(self) -> Outcome:
        attempt = 0
        try:
            while not self.stop.is_set():
                try:
                    self._session()
                    self._stop_heartbeat()
                    self._save()
                    return Outcome.FINISHED
                except Unavailable as exc:
                    if self.stop.is_set():
                        break
                    logger.warning("server unavailable (%s); reconnecting (attempt %d)", exc, attempt + 1)
                except Refused as exc:
                    if exc.reason != NotJoined.reason:
                        raise
                    logger.info("server forgot this client (restart?); joining again")
                except SyncFailed as exc:
                    logger.warning("replica out of sync (%s); resyncing from a checkpoint", exc)
                    self._needs_resync = True
                if self._connected_once:
                    attempt = 0
                    self._connected_once = False
                self.retry.wait(attempt)
                attempt += 1
        except Stopped as exc:
            logger.info("stopping: %s", exc)
        finally:
            self._stop_heartbeat()
            self._save()
        return Outcome.STOPPED

    # -- one connection's worth of work ---------------------------------------------------------------
    def _ensure_workload(self) -> tuple[Workload, Replica]:
        """Learn the run from the server and build the model and data, once per process."""
        if self.workload is None or self.replica is None or self.settings is None:
            settings = self.link.get_run_config()
            if settings.rng_spec != RNG_SPEC:
                raise Incompatible(
                    "FAILED_PRECONDITION",
                    IncompatibleClient.reason,
                    f"server uses rng spec {settings.rng_spec!r}, this client {RNG_SPEC!r}",
                )
            workload = self.workload_factory(settings)
            manifest = workload.params.manifest().sha256()
            if manifest != settings.manifest_sha256:
                raise Incompatible(
                    "FAILED_PRECONDITION",
                    IncompatibleClient.reason,
                    f"model manifest {manifest[:12]} differs from the server's "
                    f"{settings.manifest_sha256[:12]} (model {settings.model!r}, mode {settings.mode})",
                )
            self.settings, self.workload = settings, workload
            self.replica = Replica(workload.params, backend=workload.backend)
            if self.state_dir is not None:
                load_replica(self.state_dir, self.replica, run_id=settings.run_id, manifest_sha256=manifest)
            plan = SeedPlan(settings.run_seed, settings.seed_scheme, settings.perturbations)
            self.sync = ReplicaSync(self.replica, plan, settings.local_steps)
        return self.workload, self.replica

    def _session(self) -> None:
        workload, replica = self._ensure_workload()
        assert self.settings is not None
        joined = self.link.join(
            manifest_sha256=self.settings.manifest_sha256,
            rng_spec=RNG_SPEC,
            num_examples=workload.num_examples,
            device=workload.device,
            model_version=replica.version,
            inference_peak_memory_bytes=workload.inference_peak_memory_bytes,
        )
        if joined.settings.run_id != self.settings.run_id:
            raise Incompatible(
                "FAILED_PRECONDITION",
                vocabulary.NEW_RUN,
                f"the server now runs {joined.settings.run_id!r}, "
                f"this client joined {self.settings.run_id!r}; restart the client",
            )
        self._connected_once = True
        self._reported = -1  # a (re)started server may have gone back: report again
        logger.info(
            "joined run %s: server at version %d, local replica at %d",
            self.settings.run_id,
            joined.rounds_completed,
            replica.version,
        )
        self._start_heartbeat()
        if self._needs_resync or joined.rounds_completed < replica.version:
            self._set_activity(Activity.SYNCING)
            self._sync().resync(self.link)
            self._needs_resync = False
        resumed_at = replica.version
        self._catch_up(joined.rounds_completed, joined.checkpoint_round, joined.checkpoint_size_bytes)
        if replica.version == resumed_at:
            self._report()  # a resumed replica is checked by the server before it trains
        if joined.finished:
            return
        while True:
            if self.stop.is_set():
                raise Stopped("stop requested")
            self._set_activity(Activity.IDLE)
            poll = self._poll()
            if poll.status is TaskStatus.RUN_FINISHED:
                self._catch_up(poll.rounds_completed)
                self._report()  # the final version, for the operator (no later call would carry it)
                logger.info(
                    "run finished at version %d, fingerprint %s", replica.version, self._fingerprint()
                )
                return
            if poll.status is TaskStatus.NO_TASK:
                self._catch_up(poll.rounds_completed)
                continue
            assert poll.task is not None
            self._do_task(poll.task)

    def _poll(self) -> TaskResult:
        """One GetTask long-poll: it reports a version not yet reported and brings the rounds that closed
        meanwhile, which are applied here (each checked against the server's fingerprint)."""
        assert self.replica is not None
        version = self.replica.version
        unreported = version > self._reported
        fingerprint = bytes.fromhex(self._fingerprint()) if unreported else b""
        self._polling = True
        try:
            poll = self.link.get_task(
                known_version=version,
                wait_s=self.long_poll_s,
                max_deltas=vocabulary.MAX_DELTAS_PER_TASK,
                fingerprint=fingerprint,
            )
        finally:
            self._polling = False
        if unreported:
            if poll.in_sync is False:
                raise SyncFailed(f"server reports a fingerprint mismatch at version {version}")
            self._reported = version
        if poll.deltas:
            self._set_activity(Activity.SYNCING)
            for delta in poll.deltas:
                if delta.round_id == self.replica.version + 1:
                    self._sync().apply(delta)  # raises SyncFailed unless θ now has delta.fingerprint
                    proven = delta.fingerprint.hex() or self._fingerprint()
                    logger.info("model version %d fingerprint %s", delta.round_id, proven)
        return poll

    def _save(self) -> None:
        """Keep the canonical replica for the next start (never a diverged one)."""
        replica, settings = self.replica, self.settings
        if self.state_dir is None or replica is None or settings is None or replica.version == 0:
            return
        if self._needs_resync:
            return
        meta = SavedReplica(settings.run_id, settings.manifest_sha256, replica.version, self._fingerprint())
        try:
            save_replica(self.state_dir, replica, meta)
        except (OSError, StoreError) as exc:
            logger.warning("could not save the replica to %s: %s", self.state_dir, exc)

    def _fingerprint(self) -> str:
        assert self.replica is not None
        return self.replica.params.fingerprint()

    def _sync(self) -> ReplicaSync:
        assert self.sync is not None
        return self.sync

    def _catch_up(self, target: int, checkpoint_round: int = 0, checkpoint_size_bytes: int = 0) -> None:
        """Reach version `target` (replay, or a checkpoint when cheaper), then report the fingerprint."""
        assert self.replica is not None and self.settings is not None
        if self.replica.version >= target:
            return
        self._set_activity(Activity.SYNCING)
        settings = self.settings
        clients = 1 if settings.seed_scheme == SHARED else max(settings.clients_per_round, 1)
        seeds_per_round = clients * settings.local_steps * settings.perturbations
        self._sync().catch_up(
            self.link,
            target=target,
            checkpoint_round=checkpoint_round,
            checkpoint_size_bytes=checkpoint_size_bytes,
            seeds_per_round=seeds_per_round,
        )
        self._report()

    def _report(self) -> None:
        assert self.replica is not None
        if self.replica.version == 0:
            return
        version = self.replica.version
        if version <= self._reported:
            return
        fingerprint = self._fingerprint()
        logger.info("model version %d fingerprint %s", version, fingerprint)
        if not self.link.report_fingerprint(model_version=version, fingerprint=bytes.fromhex(fingerprint)):
            raise SyncFailed(f"server reports a fingerprint mismatch at version {version}")
        self._reported = version

    def _do_task(self, task: Task) -> None:
        assert self.replica is not None and self.workload is not None
        replica = self.replica
        if replica.version < task.round_id - 1:
            self._set_activity(Activity.SYNCING)
            self._sync().replay(self.link, until=task.round_id - 1)
        if replica.version != task.round_id - 1:
            logger.warning("task for round %d at model version %d; skipping", task.round_id, replica.version)
            return
        update = self._pending if self._pending and self._pending.round_id == task.round_id else None
        if update is None:
            update = self._train(task)
            self._pending = update
        else:
            logger.info("resending the update of round %d", task.round_id)
        # θ_{r-1} (restored bit for bit after training), unless the poll that brought the task reported it
        base = bytes.fromhex(self._fingerprint()) if replica.version > self._reported else b""
        try:
            self.retry.call(
                lambda: self.link.submit(update, base_fingerprint=base), what=f"submit round {task.round_id}"
            )
        except Refused as exc:
            if exc.reason == Diverged.reason:
                raise SyncFailed(f"server refused round {task.round_id}: {exc}") from exc
            if exc.reason in _LATE_REASONS:
                logger.warning("round %d update not counted: %s", task.round_id, exc.reason)
            elif exc.code == "ALREADY_EXISTS":
                logger.warning("round %d was already answered with another update", task.round_id)
            else:
                raise
        else:
            self._reported = max(self._reported, replica.version)  # the base fingerprint was in sync
            self.rounds_trained += 1
            logger.info(
                "round %d: submitted %d scalars, mean loss %.4f, %.3f s/step",
                task.round_id,
                len(update.projected_grads),
                sum(update.losses) / max(len(update.losses), 1),
                update.step_time_s,
            )
        self._set_activity(Activity.IDLE)  # the next poll brings this round's delta with the next task

    def _train(self, task: Task) -> Update:
        assert self.workload is not None
        workload = self.workload
        self._set_activity(Activity.TRAINING, task.round_id)
        result = train_task(
            workload.model,
            workload.params,
            workload.dataset,
            task,
            self.client_id,
            backend=workload.backend,
            stop=self.stop,
            on_step=lambda step: setattr(self._progress, "step", step),
            progress=self.progress_bar,
            loss_of=workload.loss_of,
        )
        return result.to_update()

    def request_stop(self) -> None:
        """Ask the loop to end (thread-safe; a signal handler calls this): training abandons its step."""
        self.stop.set()
        self._heartbeat_stop.set()

    # -- heartbeats -----------------------------------------------------------------------------------
    def _set_activity(self, activity: Activity, round_id: int = 0) -> None:
        self._progress = _Progress(activity, round_id, 0)

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._heartbeat_stop.clear()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="fedmezo-heartbeat", daemon=True)
        self._heartbeat.start()

    def _stop_heartbeat(self) -> None:
        """Stop and join the heartbeat thread, so no RPC is in flight when the channel closes."""
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=HEARTBEAT_JOIN_TIMEOUT_S)
            self._heartbeat = None

    def _heartbeat_loop(self) -> None:
        """Heartbeat every interval until stopped; failures are only logged (the main loop reconnects)."""
        interval = self.settings.heartbeat_interval_s if self.settings else DEFAULT_HEARTBEAT_INTERVAL_S
        while not self._heartbeat_stop.wait(interval) and not self.stop.is_set():
            if self._polling:
                continue  # a waiting GetTask keeps us online and says we are idle at our version
            progress = self._progress
            try:
                self.link.heartbeat(
                    model_version=self.replica.version if self.replica else 0,
                    activity=progress.activity,
                    round_id=progress.round_id,
                    step=progress.step,
                )
            except Exception as exc:  # the heartbeat must never kill the daemon
                logger.debug("heartbeat failed: %s", exc)
