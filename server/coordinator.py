"""The plain handlers behind the federation service: typed inputs in, typed results out.

Everything that changes the run goes through here, on the event loop thread: a request is validated
completely before anything is written, so a refused request changes no state. Round transitions
(open, extend, close, abort) happen only inside `tick`, serialized by one lock; the slow part of a
close (applying the delta to the replica) runs in a worker thread while new updates for that round
are already refused as late.

Server-side evaluation (evaluation.py) runs in a worker thread after the round's transaction
committed, off the tick lock: RPCs and the next round go on meanwhile. It holds the replica lock, so
the next close waits for it before changing the replica. Its metrics are written in a transaction of
their own: a crash during evaluation loses at most that evaluation, which `run` redoes at restart for
the current model version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmezo.fl import errors
from fedmezo.fl.aggregation import Aggregate
from fedmezo.fl.config import RUN_DEFINING_FIELDS
from fedmezo.fl.evaluation import EVAL_LOSS, Evaluator
from fedmezo.fl.records import (
    ClientRecord,
    DeltaRecord,
    FingerprintRecord,
    JoinInfo,
    JoinResult,
    NewEvent,
    RoundClose,
    RoundRecord,
    RoundState,
    RunState,
    TaskRecord,
    TaskResult,
    TaskStatus,
    Update,
)
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import History, close_round, plan_round, remember, task_for
from fedmezo.fl.selection import CloseDecision, decide_close
from fedmezo.server.config import ServerConfig
from fedmezo.server.model_state import CHECKPOINTS_DIR, locate_checkpoint, prune_checkpoints, restore_replica
from fedmezo.server.store import Store
from fedmezo.server.traffic import TrafficMeter
from fedmezo.zo import RNG_SPEC

__all__ = ["Coordinator"]

logger = logging.getLogger("fedmezo.server.coordinator")

TICK_S = 0.2  # how often deadlines and round opening are checked
# A waiting long-poll or delta stream re-checks on every round transition (it is notified) and,
# as a safety net, after this long: with 10,000 waiters a 1 s re-check alone would fill the CPU.
RECHECK_S = 10.0
SLOW_SYNC_S = 0.1  # a group fsync slower than this is logged: client acknowledgements waited for it
CHECKPOINT_S = 1.0  # how often the store's log is folded into its file (in a worker thread)
DELTAS_KEPT = 2  # decoded round deltas kept in memory for the clients following the stream
FINGERPRINT_BYTES = 32


@dataclass
class ClientLive:
    """What the server knows about a client that is not worth persisting (rebuilt on reconnect)."""

    last_seen: float = 0.0
    model_version: int = 0
    activity: str = "idle"
    polls: int = 0  # long-polls / streams in progress: a client waiting on us is online


class Coordinator:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        replica: Replica,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint_dir: str | Path | None = None,
        evaluator: Evaluator | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.replica = replica
        self.evaluator = evaluator
        self.clock = clock
        self.checkpoint_dir = Path(checkpoint_dir or Path(config.state_dir) / CHECKPOINTS_DIR)
        self.traffic = TrafficMeter(store)
        self.live: dict[str, ClientLive] = {}
        self._clients_stored: int | None = None  # counted once, then kept: bounds joins by max_clients
        self.run_id = ""
        self._fingerprints: dict[int, bytes] = {}
        self._history: History = {}
        self._closing: int | None = None
        self._tick_lock = asyncio.Lock()
        self._replica_lock = asyncio.Lock()  # held while the replica changes or is evaluated
        self._changed = asyncio.Event()  # any change (event streams)
        self._round_changed = asyncio.Event()  # a round opened or closed (long-polls, delta streams)
        self._tick_pending = False
        self._writes = 0  # client writes committed without their fsync (Store.sync makes them durable)
        self._synced = 0  # ... of which this many are known to be on disk
        self._sync: asyncio.Task[None] | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self._checkpoint_due = 0.0
        self._apply_s = 0.0  # how long the last round's delta took to apply to the replica
        self._deltas: dict[int, DeltaRecord] = {}  # recent closed rounds: every follower reads the same one
        self._background: set[asyncio.Task[None]] = set()
        self.started_at = clock()
        # Set when the store failed while serving (full or read-only disk, a damaged file): the server
        # must stop, since every later write would fail too and nothing it accepts could be kept.
        self.failure: errors.StoreError | None = None
        self.failed = asyncio.Event()

    # --- startup ---
    def start(self) -> None:
        """Create or resume the run in the store: check identity, restore the replica, load caches."""
        stored = self.store.get_meta("run_config")
        run_fields = {k: getattr(self.config, k) for k in RUN_DEFINING_FIELDS}
        if stored is None:
            # run_config goes last: it marks the dir as holding a run, so a start that dies before it
            # (a kill, a full disk at the first checkpoint) leaves a dir that simply starts afresh.
            self.run_id = secrets.token_hex(8)
            self.store.set_meta("run_id", self.run_id)
            self.store.set_meta("initial_fingerprint", self.replica.fingerprint().hex())
            self.store.add_checkpoint(self.replica.save_checkpoint(self.checkpoint_dir))
            self.store.add_events([NewEvent("run_started", f"run {self.run_id}", self.clock())])
            self.store.set_meta("run_config", json.dumps(run_fields, sort_keys=True))
        else:
            previous = json.loads(stored)
            changed = {k: (previous.get(k), v) for k, v in run_fields.items() if previous.get(k) != v}
            if changed:
                raise errors.ConfigError(
                    f"state dir holds another run; changed run-defining fields: {changed}"
                )
            self.run_id = self.store.get_meta("run_id") or ""
            restore_replica(self.replica, self.store, self.checkpoint_dir)
            self.store.add_events(
                [NewEvent("run_resumed", f"resumed at version {self.replica.version}", self.clock())]
            )
        self.store.set_meta("config", json.dumps(asdict(self.config), sort_keys=True))
        self._fingerprints[0] = bytes.fromhex(self.store.get_meta("initial_fingerprint") or "")
        for rec in self.store.list_rounds():
            if rec.state != RoundState.OPEN:
                self._fingerprints[rec.round_id] = rec.fingerprint
                self._remember(rec.round_id)
        if self.replica.version != self.rounds_completed:
            raise errors.StoreError("replica version differs from the rounds stored")
        self.replica.warm_up()

    def _remember(self, round_id: int) -> None:
        """Add a closed round's accepted updates to the per-client history the LR strategies read."""
        updates = {u.client_id: u for u in self.store.list_updates(round_id)}
        stats = [
            (o.client_id, updates[o.client_id].mean_loss, o.model_diff)
            for o in self.store.list_outcomes(round_id)
            if o.accepted and o.client_id in updates
        ]
        remember(self._history, round_id, stats)

    # --- derived state ---
    @property
    def rounds_completed(self) -> int:
        return max((r for r in self._fingerprints if r > 0), default=0)

    @property
    def finished(self) -> bool:
        return self.rounds_completed >= self.config.rounds

    def fingerprint_at(self, version: int) -> bytes | None:
        return self._fingerprints.get(version)

    def run_state(self) -> RunState:
        if self.finished:
            return RunState.FINISHED
        return RunState.ROUND_OPEN if self.store.open_round_record() else RunState.WAITING_FOR_CLIENTS

    def is_online(self, client_id: str) -> bool:
        live = self.live.get(client_id)
        if live is None:
            return False
        return live.polls > 0 or self.clock() - live.last_seen <= self.config.heartbeat_timeout_s

    def online_clients(self) -> list[str]:
        return sorted(c for c in self.live if self.is_online(c))

    def _seen(self, client_id: str) -> ClientLive:
        live = self.live.setdefault(client_id, ClientLive())
        live.last_seen = self.clock()
        return live

    def _joined(self, client_id: str) -> ClientRecord:
        client = self.store.get_client(client_id)
        if client is None:
            raise errors.NotJoined(f"client {client_id!r} has not joined")
        return client

    def check_joined(self, client_id: str) -> None:
        """Refuse a client that has not joined (before a stream counts or holds anything for it)."""
        self._joined(client_id)

    def changed(self) -> asyncio.Event:
        """An event set at the next state change (capture it before checking state, then wait)."""
        return self._changed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _notify_round(self) -> None:
        """A round opened or closed: wake the long-polls and delta streams too (only then: a join or
        an update changes nothing they wait for, and waking every waiter per update is O(clients²))."""
        self._round_changed.set()
        self._round_changed = asyncio.Event()
        self._notify()

    def _event(self, kind: str, message: str, round_id: int = 0, client_id: str = "") -> NewEvent:
        return NewEvent(kind, message, self.clock(), round_id=round_id, client_id=client_id)

    # --- client handlers ---
    async def join(self, client_id: str, info: JoinInfo) -> JoinResult:
        if info.rng_spec != RNG_SPEC:
            raise errors.IncompatibleClient(
                f"rng spec {info.rng_spec!r} differs from the server's {RNG_SPEC!r}"
            )
        if info.manifest_sha256 != self.replica.manifest_sha256:
            raise errors.IncompatibleClient(
                f"model manifest {info.manifest_sha256.hex()[:16]} differs from the server's "
                f"{self.replica.manifest_sha256.hex()[:16]} "
                f"(model {self.config.model!r}, mode {self.config.mode})"
            )
        if info.num_examples < 0:
            raise errors.InvalidUpdate("num_examples must be >= 0")
        previous = self.store.get_client(client_id)
        known = previous is not None
        if self._clients_stored is None:
            self._clients_stored = self.store.count_clients()
        if not known and self._clients_stored >= self.config.max_clients:
            raise errors.TooManyClients(f"{self._clients_stored} clients joined already (max_clients)")
        record = ClientRecord(
            client_id,
            self.clock(),
            info.num_examples,
            info.device,
            info.client_version,
            # 0 = not measured (an older client): keep what an earlier join reported
            info.inference_peak_memory_bytes or (previous.inference_peak_memory_bytes if previous else 0),
        )
        kind = "client_rejoined" if known else "client_joined"
        self.store.upsert_client(
            record, [self._event(kind, f"{client_id} on {info.device}", client_id=client_id)]
        )
        self._clients_stored += 0 if known else 1
        self._writes += 1
        self._seen(client_id).model_version = info.model_version
        self._notify()
        checkpoint = self.store.latest_checkpoint()
        await self.durable()
        return JoinResult(
            rounds_completed=self.rounds_completed,
            fingerprint=self._fingerprints[self.rounds_completed],
            checkpoint_round=checkpoint.round_id if checkpoint else 0,
            checkpoint_size_bytes=checkpoint.size if checkpoint else 0,
            run_state=self.run_state(),
        )

    def heartbeat(self, client_id: str, model_version: int, activity: str) -> tuple[int, RunState]:
        self._joined(client_id)
        live = self._seen(client_id)
        live.model_version, live.activity = model_version, activity
        return self.rounds_completed, self.run_state()

    def current_task(self, client_id: str) -> TaskRecord | None:
        """The open round's task for this client, unless it already answered or the round is closing."""
        open_round = self.store.open_round_record()
        if open_round is None or open_round.round_id == self._closing:
            return None
        task = self.store.get_task(open_round.round_id, client_id)
        if task is None or self.store.get_update(task.round_id, client_id) is not None:
            return None
        return task

    async def get_task(self, client_id: str, known_version: int, wait_s: float) -> TaskResult:
        """Long-poll for work; returns early when the model version moves past known_version."""
        self._joined(client_id)
        live = self._seen(client_id)
        live.model_version = known_version
        give_up = self.clock() + max(0.0, min(wait_s, self.config.max_wait_s))
        live.polls += 1
        try:
            self._schedule_tick()
            while True:
                changed = self._round_changed
                if self.finished:
                    return TaskResult(TaskStatus.RUN_FINISHED, self.rounds_completed)
                task = self.current_task(client_id)
                if task is not None:
                    round_ = self.store.open_round_record()  # current_task: the task's round is open
                    left = max(0.0, round_.deadline_at - self.clock()) if round_ else 0.0
                    return TaskResult(
                        TaskStatus.ASSIGNED, self.rounds_completed, task_for(self.config, task, left)
                    )
                remaining = give_up - self.clock()
                if self.rounds_completed > known_version or remaining <= 0:
                    return TaskResult(TaskStatus.NO_TASK, self.rounds_completed)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=min(remaining, RECHECK_S))
        finally:
            live.polls -= 1
            self._seen(client_id)

    async def submit_update(self, client_id: str, update: Update) -> int:
        """Validate completely, then store durably; returns the round id acknowledged (once on disk)."""
        client = self._joined(client_id)
        self._seen(client_id)
        existing = self.store.get_update(update.round_id, client_id)
        candidate = update.to_record(client_id, received_at=self.clock(), num_examples=client.num_examples)
        if existing is not None:  # a retransmission gets the same answer; anything else is a conflict
            if existing.same_payload(candidate):
                await self.durable()  # the first copy may still be waiting for its fsync
                return update.round_id
            raise errors.ConflictingUpdate(
                f"{client_id} already answered round {update.round_id} differently"
            )
        open_round = self.store.open_round_record()
        if open_round is not None and open_round.round_id == update.round_id:
            round_: RoundRecord | None = open_round
        else:
            round_ = self.store.get_round(update.round_id)
        if round_ is None:
            raise errors.WrongRound(f"round {update.round_id} does not exist (open: {self._open_round_id()})")
        if round_.state != RoundState.OPEN or round_.round_id == self._closing:
            raise errors.RoundClosed(f"round {update.round_id} is closed")
        task = self.store.get_task(update.round_id, client_id)
        if task is None:
            raise errors.NotSelected(f"{client_id} has no task in round {update.round_id}")
        if len(update.projected_grads) != task.local_steps:
            raise errors.InvalidUpdate(
                f"expected {task.local_steps} projected gradients, got {len(update.projected_grads)}"
            )
        if len(update.losses) not in (0, task.local_steps):
            raise errors.InvalidUpdate(f"expected 0 or {task.local_steps} losses, got {len(update.losses)}")
        scalars = (*update.projected_grads, *update.losses, update.step_time_s)
        if not all(math.isfinite(x) for x in scalars):
            raise errors.InvalidUpdate("non-finite scalar (NaN or inf) in the update")
        event = self._event(
            "update_accepted", f"mean loss {candidate.mean_loss:.4f}", update.round_id, client_id
        )
        self.store.add_update(candidate, [event])
        self._writes += 1
        self._notify()
        self._schedule_tick()
        await self.durable()
        return update.round_id

    async def report_fingerprint(self, client_id: str, version: int, fingerprint: bytes) -> bool:
        """Record whether a client's replica matches ours at `version`; returns in_sync."""
        self._joined(client_id)
        if len(fingerprint) != FINGERPRINT_BYTES:
            raise errors.InvalidUpdate(
                f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(fingerprint)}"
            )
        expected = self._fingerprints.get(version)
        if expected is None:
            raise errors.WrongRound(
                f"version {version} does not exist (rounds completed: {self.rounds_completed})"
            )
        self._seen(client_id).model_version = version  # only a valid report moves the shown version
        in_sync = fingerprint == expected
        events = (
            [] if in_sync else [self._event("fingerprint_mismatch", f"version {version}", version, client_id)]
        )
        self.store.record_fingerprint(
            FingerprintRecord(client_id, version, fingerprint, in_sync, self.clock()), events
        )
        self._writes += 1
        if not in_sync:
            logger.warning("client %s diverged at version %d: asked to resync", client_id, version)
        await self.durable()
        return in_sync

    async def durable(self) -> None:
        """Return once every client write made so far is on disk. One fsync in a worker thread covers
        all the writes since the previous one (group commit): a round's thousand updates cost a few
        fsyncs, and the event loop serves other requests while the disk works."""
        target = self._writes
        while self._synced < target:
            if self._sync is None:
                self._sync = asyncio.get_running_loop().create_task(self._sync_store())
                self._sync.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen by waiters
            await asyncio.shield(self._sync)

    async def _sync_store(self) -> None:
        covered, batch = self._writes, self._writes - self._synced
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.store.sync)
        finally:
            self._sync = None
        self._synced = max(self._synced, covered)
        took_s = time.perf_counter() - started
        if took_s > SLOW_SYNC_S:  # every acknowledgement waiting on it waited this long
            logger.warning("slow disk: syncing %d client writes took %.3f s", batch, took_s)

    async def round_deltas(self, client_id: str, from_round: int, follow: bool) -> AsyncIterator[DeltaRecord]:
        """Stored deltas from from_round on; with follow, each new one as its round closes."""
        self._joined(client_id)
        next_round = max(1, from_round)
        live = self._seen(client_id)
        live.polls += 1
        try:
            while True:
                changed = self._round_changed
                while next_round <= self.rounds_completed:
                    yield self._delta(next_round)
                    next_round += 1
                if not follow or self.finished:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=RECHECK_S)
        finally:
            live.polls -= 1
            self._seen(client_id)

    def _delta(self, round_id: int) -> DeltaRecord:
        """A closed round's stored delta; the latest few stay decoded, since every client follows them."""
        record = self._deltas.get(round_id)
        if record is None:
            record = self.store.get_delta(round_id)
            if record is None:
                raise errors.StoreError(f"delta of closed round {round_id} is missing")
            if round_id + DELTAS_KEPT > self.rounds_completed:
                self._deltas[round_id] = record
                for old in [r for r in self._deltas if r + DELTAS_KEPT <= self.rounds_completed]:
                    del self._deltas[old]
        return record

    def checkpoint_for(self, client_id: str) -> tuple[int, str, bytes, int, bytes]:
        self._joined(client_id)
        record = self.store.latest_checkpoint()
        if record is not None:
            record = locate_checkpoint(record, self.checkpoint_dir)
        if record is None or not Path(record.path).exists():
            raise errors.NoCheckpoint("no checkpoint available")
        return record.round_id, record.path, record.sha256, record.size, record.fingerprint

    # --- round transitions ---
    def _open_round_id(self) -> int:
        rec = self.store.open_round_record()
        return rec.round_id if rec else 0

    def _schedule_tick(self) -> None:
        """Run a tick soon; one pending tick covers every request until it starts (it reads fresh state)."""
        if self._tick_pending:
            return
        self._tick_pending = True
        task = asyncio.get_running_loop().create_task(self.tick())
        self._background.add(task)
        task.add_done_callback(self._tick_done)

    def _tick_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, errors.StoreError):
            self.fail(exc)
        elif exc is not None:
            logger.error("round transition failed", exc_info=exc)

    def fail(self, exc: errors.StoreError) -> None:
        """The store failed while serving: record the first failure and ask the server to stop."""
        if self.failure is None:
            logger.error("state store failed, stopping: %s", exc)
            self.failure = exc
            self.failed.set()

    async def idle(self) -> None:
        """Wait until every scheduled transition finished (tests; shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def run(self) -> None:
        """Drive deadlines and round opening until cancelled (first: evaluate θ_0 or redo a lost eval)."""
        self._maybe_evaluate(self.rounds_completed)
        while True:
            try:
                await self.tick()
            except errors.StoreError as exc:  # nothing can be written: the server stops (serve)
                self.fail(exc)
                return
            except Exception:  # keep serving status; the next tick retries
                logger.exception("round transition failed")
            self._maybe_checkpoint()
            await asyncio.sleep(TICK_S)

    def _maybe_checkpoint(self) -> None:
        """Store housekeeping (the SQLite checkpoint) in a worker thread, one at a time, each CHECKPOINT_S."""
        now = time.monotonic()
        if self._checkpoint is not None or now < self._checkpoint_due:
            return
        self._checkpoint_due = now + CHECKPOINT_S
        self._checkpoint = asyncio.get_running_loop().create_task(self._checkpoint_store())

    async def _checkpoint_store(self) -> None:
        try:
            await asyncio.to_thread(self.store.checkpoint)
        except errors.StoreError as exc:  # a broken disk fails the next commit, which stops the server
            logger.warning("store checkpoint failed: %s", exc)
        finally:
            self._checkpoint = None

    async def tick(self) -> None:
        async with self._tick_lock:
            self._tick_pending = False  # a change from here on schedules another tick
            open_round = self.store.open_round_record()
            if open_round is None:
                self._maybe_open()
                return
            answered = self.store.count_updates(open_round.round_id)
            decision = decide_close(
                num_selected=len(open_round.selected),
                num_answered=answered,
                now=self.clock(),
                deadline_at=open_round.deadline_at,
                quorum_fraction=self.config.quorum,
                extensions=open_round.extensions,
                max_extensions=self.config.max_extensions,
            )
            if decision == CloseDecision.EXTEND:
                deadline = self.clock() + self.config.deadline_s
                event = self._event(
                    "round_extended", f"{answered}/{len(open_round.selected)} answered", open_round.round_id
                )
                self.store.extend_round(open_round.round_id, deadline, open_round.extensions + 1, [event])
            elif decision in (CloseDecision.CLOSE, CloseDecision.ABORT):
                await self._close(open_round, aborted=decision == CloseDecision.ABORT)
                self._maybe_open()

    def _maybe_open(self) -> None:
        if self.finished or len(self.live) < self.config.min_clients:  # cheap exits: no O(clients) scan
            return
        online = self.online_clients()
        done = self.rounds_completed
        if len(online) < self.config.min_clients:
            return
        round_id = done + 1
        tasks = plan_round(self.config, round_id, online, self._history)
        selected = tuple(tasks)
        now = self.clock()
        record = RoundRecord(round_id, RoundState.OPEN, now, now + self.config.deadline_s, selected)
        event = self._event("round_opened", f"selected {', '.join(selected)}", round_id)
        self.store.open_round(record, list(tasks.values()), [event])
        logger.info("round %d opened with %s", round_id, ", ".join(selected))
        self._notify_round()

    async def _close(self, round_: RoundRecord, *, aborted: bool) -> None:
        r = round_.round_id
        self._closing = r
        started = time.perf_counter()
        try:
            updates = [] if aborted else self.store.list_updates(r)
            tasks = {t.client_id: t for t in self.store.list_tasks(r)}
            closed = close_round(self.config, r, updates, tasks)
            async with self._replica_lock:  # an evaluation in progress finishes first
                close = await self._apply_and_commit(r, closed.aggregate, closed.mean_loss)
                self._fingerprints[r] = close.fingerprint
                # The close is committed: clients may fetch the delta now, not after the bookkeeping and
                # the checkpoint below (a checkpoint only shortens a restart's replay; seconds at 135M).
                self._notify_round()
                published_s = time.perf_counter() - started
                self._remember(r)
                self.traffic.flush()
                logger.info(
                    "round %d %s: %d updates, delta published in %.3f s (%d seeds applied in %.3f s), "
                    "mean loss %.4f, fingerprint %s",
                    r, close.state.value, len(updates), published_s, close.num_seeds, self._apply_s,
                    close.mean_loss, close.fingerprint.hex()[:16],
                )  # fmt: skip
                if r % self.config.checkpoint_every == 0 or r == self.config.rounds:
                    record = await asyncio.to_thread(self.replica.save_checkpoint, self.checkpoint_dir)
                    self.store.add_checkpoint(record)
                    prune_checkpoints(self.checkpoint_dir)
        finally:
            self._closing = None
        self._notify()
        self._maybe_evaluate(r)

    async def _apply_and_commit(self, r: int, agg: Aggregate, mean_loss: float) -> RoundClose:
        """Apply round r's delta to the replica and commit the close; on any failure roll the replica back."""
        snapshot = self.replica.params.snapshot()  # undo point: the store must never lag the replica
        version = self.replica.version
        try:
            applying = time.perf_counter()
            await asyncio.to_thread(self.replica.apply, agg.delta)
            self._apply_s = time.perf_counter() - applying  # for the close's log line
            fingerprint = await asyncio.to_thread(self.replica.fingerprint)
            accepted = {o.client_id for o in agg.outcomes if o.accepted}
            delta = DeltaRecord(
                r, agg.participants, agg.delta.coefficients, agg.delta.to_bytes(), fingerprint
            )
            state = RoundState.ABORTED if not accepted else RoundState.CLOSED
            close = RoundClose(
                r, state, self.clock(), fingerprint, mean_loss, agg.delta.num_seeds, delta, agg.outcomes
            )
            kind = "round_aborted" if state == RoundState.ABORTED else "round_closed"
            events = [self._event(kind, f"{len(accepted)} accepted, mean loss {mean_loss:.4f}", r)]
            events += [
                self._event("update_rejected", o.rejected_reason, r, o.client_id)
                for o in agg.outcomes
                if not o.accepted
            ]
            self.store.close_round(close, events)
        except BaseException:
            self.replica.params.restore(snapshot)
            self.replica.version = version
            logger.error(
                "closing round %d failed; replica rolled back to version %d", r, self.replica.version
            )
            raise
        return close

    # --- server-side evaluation ---
    def _maybe_evaluate(self, version: int) -> None:
        """Schedule the evaluation of model `version` when one is due and not stored yet."""
        if self.evaluator is None or not self.evaluator.due(version, self.config.rounds):
            return
        if EVAL_LOSS in self.store.get_metrics(version):
            return
        task = asyncio.get_running_loop().create_task(self._evaluate(version))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _evaluate(self, version: int) -> None:
        """Evaluate the replica at `version` in a worker thread; store the metrics and an `eval` event."""
        assert self.evaluator is not None
        try:
            async with self._replica_lock:
                if self.replica.version != version:  # the model moved on before we got to it
                    logger.warning(
                        "evaluation of round %d skipped: the model is at %d", version, self.replica.version
                    )
                    return
                outcome = await asyncio.to_thread(self.evaluator.evaluate, self.replica)
            event = self._event("eval", outcome.summary(), version)
            self.store.add_metrics(version, outcome.metrics, [event])
        except Exception as exc:  # an evaluation failure must never take the server down
            logger.exception("evaluation of round %d failed", version)
            with contextlib.suppress(errors.StoreError):
                self.store.add_events([self._event("eval_failed", f"{type(exc).__name__}: {exc}", version)])
            return
        logger.info("round %d %s", version, outcome.summary())
        self._notify()
