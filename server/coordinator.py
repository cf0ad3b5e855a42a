"""The plain handlers behind the federation service: typed inputs in, typed results out.

Everything that changes the run goes through here, on the event loop thread: a request is validated
completely before anything is written, so a refused request changes no state. Round transitions
(open, extend, close, abort) happen only inside `tick`, serialized by one lock; the slow part of a
close (applying the delta to the replica) runs in a worker thread while new updates for that round
are already refused as late.

The round's rules are `fedmezo.fl` (plan_round, close_round, the checks); what is async or durable
around them lives next door: presence.py (who is online), durability.py (group commit), run_start.py
(create or resume the run), eval_runner.py (evaluation off the tick lock, holding the replica lock).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fedmezo.fl import errors
from fedmezo.fl.bounds import Scales
from fedmezo.fl.evaluation import Evaluator
from fedmezo.fl.records import (
    Activity,
    ClientRecord,
    DeltaRecord,
    FingerprintRecord,
    JoinInfo,
    JoinResult,
    NewEvent,
    RoundRecord,
    RoundState,
    RunState,
    Task,
    TaskRecord,
    TaskResult,
    TaskStatus,
    Update,
)
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import History, check_join, check_update, close_round, plan_round, remember, task_for
from fedmezo.fl.selection import CloseDecision, decide_close
from fedmezo.fl.vocabulary import MAX_DELTAS_PER_TASK
from fedmezo.server.config import ServerConfig
from fedmezo.server.deltas import DeltaCache
from fedmezo.server.durability import GroupCommit
from fedmezo.server.eval_runner import EvalRunner
from fedmezo.server.model_state import CHECKPOINTS_DIR, locate_checkpoint, prune_checkpoints
from fedmezo.server.presence import ClientLive, Presence, PresenceRecord
from fedmezo.server.round_close import commit_close
from fedmezo.server.run_start import start_run
from fedmezo.server.signals import Signals, wait_or_timeout
from fedmezo.server.store import Store
from fedmezo.server.traffic import TrafficMeter
from fedmezo.server.versions import Versions

__all__ = ["Coordinator"]

logger = logging.getLogger("fedmezo.server.coordinator")

TICK_S = 0.2  # how often deadlines and round opening are checked
# A waiting long-poll or delta stream re-checks on every round transition (it is notified) and,
# as a safety net, after this long: with 10,000 waiters a 1 s re-check alone would fill the CPU.
RECHECK_S = 10.0

Check = Callable[[], None]


NAMED_IN_MESSAGES = 8  # clients named in a round's event and log line; the tasks table has them all


def _named(clients: tuple[str, ...]) -> str:
    """Who a round selected, for people: all of a few, else the first ones and the count (at
    10,000 clients the full list made every round_opened event and log line ~110 KB)."""
    if len(clients) <= NAMED_IN_MESSAGES:
        return ", ".join(clients)
    return f"{', '.join(clients[:NAMED_IN_MESSAGES])}, ... ({len(clients)} clients)"


def _nothing() -> None:
    """The default `still_allowed`: the caller stays allowed."""


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
        self.presence = Presence(clock, config.heartbeat_timeout_s)
        self.live = self.presence.live
        self._clients_stored: int | None = None  # counted once, then kept: bounds joins by max_clients
        # Joined clients' records, read through: every RPC checks its caller joined, and at 10,000
        # clients that was a SQLite query per call. Join writes the store first, then this.
        self._client_records: dict[str, ClientRecord] = {}
        # The newest version each client was reported diverged at (an event and a warning each): a
        # client repeating a wrong report, or reporting older versions, writes no more of them.
        self.run_id = ""
        self.versions = Versions()
        self._history: History = {}
        self._scales = Scales()
        self._closing: int | None = None
        self._tick_lock = asyncio.Lock()
        self._replica_lock = asyncio.Lock()  # held while the replica changes or is evaluated
        self.signals = Signals(config.wake_chunk)
        self._tick_pending = False
        self.commit = GroupCommit(store)
        self._deltas = DeltaCache(store)
        self._background: set[asyncio.Task[None]] = set()
        self.evaluations = EvalRunner(
            evaluator, store, replica, self._replica_lock, total_rounds=config.rounds,
            event=lambda kind, message, version: self._event(kind, message, version),
            notify=self.signals.notify, background=self._background,
        )  # fmt: skip
        self.started_at = clock()
        # Set when the store failed while serving (full or read-only disk, a damaged file): the server
        # must stop, since every later write would fail too and nothing it accepts could be kept.
        self.failure: errors.StoreError | None = None
        # meta a read replica needs that only this process knows (its RunConfig message, start time):
        # written with the first status publication (server.app), so a run without one writes nothing
        self.status_meta: dict[str, str] = {}
        self.failed = asyncio.Event()

    # --- startup ---
    def start(self) -> None:
        """Create or resume the run in the store: check identity, restore the replica, load caches."""
        started = start_run(self.config, self.store, self.replica, self.checkpoint_dir, self.clock())
        self.run_id, self._history, self._scales = started.run_id, started.history, started.scales
        self.versions = Versions(started.fingerprints)
        self.replica.warm_up()

    # --- derived state ---
    @property
    def rounds_completed(self) -> int:
        return self.versions.rounds_completed

    @property
    def finished(self) -> bool:
        return self.rounds_completed >= self.config.rounds

    def fingerprint_at(self, version: int) -> bytes | None:
        return self.versions.fingerprint_at(version)

    def run_state(self) -> RunState:
        if self.finished:
            return RunState.FINISHED
        return RunState.ROUND_OPEN if self.store.open_round_record() else RunState.WAITING_FOR_CLIENTS

    def _seen(self, client_id: str) -> ClientLive:
        return self.presence.seen(client_id)

    def _joined(self, client_id: str) -> ClientRecord:
        client = self._client_records.get(client_id)
        if client is None:
            client = self.store.get_client(client_id)
            if client is None:
                raise errors.NotJoined(f"client {client_id!r} has not joined")
            self._client_records[client_id] = client
        return client

    def check_joined(self, client_id: str) -> None:
        """Refuse a client that has not joined (before a stream counts or holds anything for it)."""
        self._joined(client_id)

    def changed(self) -> asyncio.Event:
        """An event set at the next state change (capture it before checking state, then wait)."""
        return self.signals.changed()

    def _event(self, kind: str, message: str, round_id: int = 0, client_id: str = "") -> NewEvent:
        return NewEvent(kind, message, self.clock(), round_id=round_id, client_id=client_id)

    # --- client handlers ---
    async def join(self, client_id: str, info: JoinInfo) -> JoinResult:
        check_join(info, self.replica.manifest_sha256, self.config)
        previous = self.store.get_client(client_id)
        known = previous is not None
        if self._clients_stored is None:
            self._clients_stored = self.store.count_clients()
        if not known and self._clients_stored >= self.config.max_clients:
            raise errors.TooManyClients(f"{self._clients_stored} clients joined already (max_clients)")
        record = info.to_record(client_id, self.clock(), previous)
        kind = "client_rejoined" if known else "client_joined"
        self.store.upsert_client(
            record, [self._event(kind, f"{client_id} on {info.device}", client_id=client_id)]
        )
        self._client_records[client_id] = record
        self._clients_stored += 0 if known else 1
        self.commit.wrote()
        self._seen(client_id).model_version = info.model_version
        self.signals.notify()
        checkpoint = self.store.latest_checkpoint()
        await self.commit.durable()
        return JoinResult(
            rounds_completed=self.rounds_completed,
            fingerprint=self.versions.fingerprint_at(self.rounds_completed) or b"",
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
        if task is None or self.store.has_update(task.round_id, client_id):
            return None
        return task

    async def get_task(
        self,
        client_id: str,
        known_version: int,
        wait_s: float,
        *,
        max_deltas: int = 0,
        fingerprint: bytes = b"",
        still_allowed: Check = _nothing,
    ) -> TaskResult:
        """Long-poll for work. With max_deltas k > 0 the answer carries the rounds closed after
        known_version (at most k; it comes early once k closed), so a client needs no delta stream and no
        fingerprint report per round; with k = 0 it comes as soon as one round closed, without them.
        `fingerprint` (of known_version) is judged and recorded first, as report_fingerprint does.
        `still_allowed` runs at every wake-up and raises (a Refusal) to end the poll: a revoked token."""
        self._joined(client_id)
        in_sync = None
        if fingerprint:
            in_sync = self._record_fingerprint(client_id, known_version, fingerprint)
            await self.commit.durable()
        limit = min(max_deltas, MAX_DELTAS_PER_TASK)
        give_up = self.clock() + max(0.0, min(wait_s, self.config.max_wait_s))
        with self.presence.polling(client_id) as live:
            live.model_version, live.activity = known_version, Activity.IDLE
            self._schedule_tick()
            while True:
                changed = self.signals.round_changed()
                still_allowed()
                if self.finished:
                    return self._answer(TaskStatus.RUN_FINISHED, known_version, limit, in_sync)
                task = self.current_task(client_id)
                if task is not None:
                    round_ = self.store.open_round_record()  # current_task: the task's round is open
                    left = max(0.0, round_.deadline_at - self.clock()) if round_ else 0.0
                    assigned = task_for(self.config, task, left)
                    return self._answer(TaskStatus.ASSIGNED, known_version, limit, in_sync, assigned)
                remaining = give_up - self.clock()
                if self.rounds_completed - known_version >= max(limit, 1) or remaining <= 0:
                    return self._answer(TaskStatus.NO_TASK, known_version, limit, in_sync)
                await wait_or_timeout(changed, min(remaining, RECHECK_S))

    def _answer(
        self,
        status: TaskStatus,
        known_version: int,
        limit: int,
        in_sync: bool | None,
        task: Task | None = None,
    ) -> TaskResult:
        """A poll's answer, with the deltas after known_version when there are 1..limit of them."""
        done = self.rounds_completed
        missing = range(known_version + 1, done + 1)
        deltas = tuple(self._deltas.get(r, done) for r in missing) if len(missing) <= limit else ()
        return TaskResult(status, done, task, deltas, in_sync)

    async def submit_update(self, client_id: str, update: Update, *, base_fingerprint: bytes = b"") -> int:
        """Validate completely, then store durably; returns the round id acknowledged (once on disk).
        `base_fingerprint` (of version round_id - 1, the θ it trained from) is recorded as a report of that
        version; a mismatch refuses the update (`Diverged`: trained from a wrong θ) and, like every
        refusal, stores nothing (the client resyncs and reports)."""
        client = self._joined(client_id)
        self._seen(client_id)
        existing = None  # has_update first: from memory for the open round, where nearly all land
        if self.store.has_update(update.round_id, client_id):
            existing = self.store.get_update(update.round_id, client_id)
        candidate = update.to_record(client_id, received_at=self.clock(), num_examples=client.num_examples)
        if existing is not None:  # a retransmission gets the same answer; anything else is a conflict
            if existing.same_payload(candidate):
                await self.commit.durable()  # the first copy may still be waiting for its fsync
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
        check_update(update, task, self.config.perturbations)
        base = update.round_id - 1
        if base_fingerprint and not self.versions.matches(base, base_fingerprint):
            raise errors.Diverged(
                f"{client_id} trained round {update.round_id} from a θ whose fingerprint is not the "
                f"server's at version {base}: resync from a checkpoint"
            )
        reported: FingerprintRecord | None = None
        events: list[NewEvent] = []
        if base_fingerprint:  # in sync (checked above): stored with the update, in its transaction
            reported, events = self._judge_fingerprint(client_id, base, base_fingerprint)
        events.append(
            self._event("update_accepted", f"mean loss {candidate.mean_loss:.4f}", update.round_id, client_id)
        )
        self.store.add_update(candidate, events, reported)
        self.commit.wrote()
        self.signals.notify()
        self._schedule_tick()
        await self.commit.durable()
        return update.round_id

    async def report_fingerprint(self, client_id: str, version: int, fingerprint: bytes) -> bool:
        """Record whether a client's replica matches ours at `version`; returns in_sync."""
        self._joined(client_id)
        in_sync = self._record_fingerprint(client_id, version, fingerprint)
        await self.commit.durable()
        return in_sync

    def _record_fingerprint(self, client_id: str, version: int, fingerprint: bytes) -> bool:
        """Judge and store one fingerprint report (durable at the next commit); returns in_sync."""
        record, events = self._judge_fingerprint(client_id, version, fingerprint)
        self.store.record_fingerprint(record, events)
        self.commit.wrote()
        return record.in_sync

    def _judge_fingerprint(
        self, client_id: str, version: int, fingerprint: bytes
    ) -> tuple[FingerprintRecord, list[NewEvent]]:
        """One fingerprint report judged: the record to store (every report is) and its events."""
        in_sync, tell = self.versions.judge(client_id, version, fingerprint)
        self._seen(client_id).model_version = version  # only a valid report moves the shown version
        if not tell:
            return FingerprintRecord(client_id, version, fingerprint, in_sync, self.clock()), []
        logger.warning("client %s diverged at version %d: asked to resync", client_id, version)
        event = self._event("fingerprint_mismatch", f"version {version}", version, client_id)
        return FingerprintRecord(client_id, version, fingerprint, in_sync, self.clock()), [event]

    async def round_deltas(
        self, client_id: str, from_round: int, follow: bool, *, still_allowed: Check = _nothing
    ) -> AsyncIterator[DeltaRecord]:
        """Stored deltas from from_round on; with follow, each new one as its round closes.
        `still_allowed` runs at every wake-up and raises (a Refusal) to end the stream."""
        self._joined(client_id)
        next_round = max(1, from_round)
        with self.presence.polling(client_id):
            while True:
                changed = self.signals.round_changed()
                still_allowed()
                while next_round <= self.rounds_completed:
                    yield self._deltas.get(next_round, self.rounds_completed)
                    next_round += 1
                if not follow or self.finished:
                    return
                await wait_or_timeout(changed, RECHECK_S)

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

    def publish_status(self, presence: list[PresenceRecord] | None = None) -> None:
        """Write the byte counts and `presence` (default: the clients seen since the last call) for a
        read replica of the status service (status_replica.py): two small transactions, whatever the
        number of clients. Thread-safe given `presence` taken on the event loop."""
        if presence is None:
            presence = self.presence.take_changes()
        for key, value in list(self.status_meta.items()):  # the run config and start time, once
            self.store.set_meta(key, value)
            del self.status_meta[key]
        self.traffic.flush()
        self.store.put_presence(presence, self.clock())

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
        self.evaluations.maybe_evaluate(self.rounds_completed)
        while True:
            try:
                await self.tick()
            except errors.StoreError as exc:  # nothing can be written: the server stops (serve)
                self.fail(exc)
                return
            except Exception:  # keep serving status; the next tick retries
                logger.exception("round transition failed")
            self.commit.maybe_checkpoint()
            await asyncio.sleep(TICK_S)

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
        online = self.presence.online()
        done = self.rounds_completed
        if len(online) < self.config.min_clients:
            return
        round_id = done + 1
        tasks = plan_round(self.config, round_id, online, self._history)
        selected = tuple(tasks)
        now = self.clock()
        record = RoundRecord(round_id, RoundState.OPEN, now, now + self.config.deadline_s, selected)
        event = self._event("round_opened", f"selected {_named(selected)}", round_id)
        self.store.open_round(record, list(tasks.values()), [event])
        logger.info("round %d opened with %s", round_id, _named(selected))
        self.signals.notify_round()

    async def _close(self, round_: RoundRecord, *, aborted: bool) -> None:
        r = round_.round_id
        self._closing = r
        started = time.perf_counter()
        try:
            updates = [] if aborted else self.store.list_updates(r)
            tasks = {t.client_id: t for t in self.store.list_tasks(r)}
            closed = close_round(self.config, r, updates, tasks, self._scales)
            async with self._replica_lock:  # an evaluation in progress finishes first
                close, apply_s = await commit_close(
                    self.replica, self.store, r, closed.aggregate, closed.mean_loss,
                    now=self.clock(), event=self._event,
                )  # fmt: skip
                self.versions.closed(r, close.fingerprint)
                # The close is committed: clients may fetch the delta now, not after the bookkeeping and
                # the checkpoint below (a checkpoint only shortens a restart's replay; seconds at 135M).
                self.signals.notify_round()
                published_s = time.perf_counter() - started
                remember(self._history, r, closed.history_stats(updates))  # as stored, not read back
                if not aborted:
                    self._scales.add(closed.scale)
                self.traffic.flush()
                logger.info(
                    "round %d %s: %d updates, delta published in %.3f s (%d seeds applied in %.3f s), "
                    "mean loss %.4f, fingerprint %s",
                    r, close.state.value, len(updates), published_s, close.num_seeds, apply_s,
                    close.mean_loss, close.fingerprint.hex()[:16],
                )  # fmt: skip
                if r % self.config.checkpoint_every == 0 or r == self.config.rounds:
                    record = await asyncio.to_thread(self.replica.save_checkpoint, self.checkpoint_dir)
                    self.store.add_checkpoint(record)
                    prune_checkpoints(self.checkpoint_dir)
        finally:
            self._closing = None
        self.signals.notify()
        self.evaluations.maybe_evaluate(r)
