"""When the state dir fails the server fails loudly: a damaged or unwritable state is refused at open
with a StoreError naming the path and the cause; a store failure while serving refuses the request
with UNAVAILABLE (nothing was kept, retry later) and stops the server; a first start that dies before
it finished leaves a dir that starts afresh. Real SQLite, real files, real gRPC on loopback."""

from __future__ import annotations

import asyncio
import random
import resource
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from helpers.server_rpc import FakeClient, grads_for, make_config, rpc_code

from fedmezo.fl.errors import StoreError
from fedmezo.fl.records import CheckpointRecord, FingerprintRecord, NewEvent, RoundClose, UpdateRecord
from fedmezo.fl.replica import Replica
from fedmezo.server.app import build_app
from fedmezo.server.coordinator import Coordinator
from fedmezo.server.sqlite_store import SqliteStore

STEPS = 4


# --- opening the store ---
def test_damaged_database_is_refused_at_open(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    store = SqliteStore(db)
    store.add_events([NewEvent("e", "x" * 200, float(i)) for i in range(200)])  # a few pages of data
    store.close()
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    middle = len(data) // page // 2
    data[middle * page : (middle + 1) * page] = random.Random(0).randbytes(page)
    db.write_bytes(bytes(data))
    # quick_check names the damaged page, or (for pages SQLite must read to check the others) the
    # check itself fails as malformed: either way the file is refused at open, saying why
    damaged = rf"state database {db}(: database disk image is malformed| is corrupt: .*Page {middle + 1})"
    with pytest.raises(StoreError, match=damaged):
        SqliteStore(db)


def test_garbage_file_is_refused_at_open(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    db.write_bytes(b"this is no database" * 100)
    with pytest.raises(StoreError, match=rf"cannot open state database {db}: file is not a database"):
        SqliteStore(db)
    assert db.read_bytes() == b"this is no database" * 100  # never replaced by a fresh database


def test_unwritable_state_dir_is_refused_at_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where the state dir should be")
    with pytest.raises(StoreError, match=r"state dir .*/file/state is not writable: Not a directory"):
        SqliteStore(tmp_path / "file" / "state" / "state.sqlite")


# --- checkpoints ---
@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG in this process (Python ignores SIGXFSZ), as on a
    full disk; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_failed_checkpoint_write_names_the_path_and_leaves_no_partial_file(
    tmp_path: Path, replica: Replica
) -> None:
    with _file_size_limit(1 << 20), pytest.raises(StoreError) as raised:  # the checkpoint is 6.7 MB
        replica.save_checkpoint(tmp_path)
    assert f"cannot write checkpoint {tmp_path}/round-000000.safetensors" in str(raised.value)
    assert "File too large" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_a_store_error(tmp_path: Path, replica: Replica) -> None:
    record = replica.save_checkpoint(tmp_path)
    Path(record.path).unlink()
    with pytest.raises(StoreError, match=rf"checkpoint {record.path} cannot be read: No such file"):
        replica.load_checkpoint(record)


def test_first_start_that_dies_before_its_checkpoint_starts_afresh(tmp_path: Path, replica: Replica) -> None:
    config = make_config(tmp_path)
    store = SqliteStore(tmp_path / "state.sqlite")
    (tmp_path / "blocker").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot write checkpoint"):
        Coordinator(config, store, replica, checkpoint_dir=tmp_path / "blocker" / "checkpoints").start()
    assert store.get_meta("run_config") is None  # the dir does not claim a run
    coordinator = Coordinator(config, store, replica, checkpoint_dir=tmp_path / "checkpoints")
    coordinator.start()
    assert store.get_meta("run_config") is not None and store.latest_checkpoint() is not None
    assert "run_resumed" not in [e.kind for e in store.list_events()]
    store.close()


# --- failing while serving ---
class BreakableStore(SqliteStore):
    """The real SQLite store, whose chosen writes fail as on a full disk once `broken` is set."""

    broken: Sequence[str] = ()

    def _fail(self, what: str) -> None:
        if what in self.broken:
            raise StoreError(f"state database {self.path}: database or disk is full (SQLITE_FULL)")

    def add_update(
        self,
        update: UpdateRecord,
        events: Sequence[NewEvent] = (),
        fingerprint: FingerprintRecord | None = None,
    ) -> None:
        self._fail("add_update")
        super().add_update(update, events, fingerprint)

    def close_round(self, close: RoundClose, events: Sequence[NewEvent] = ()) -> None:
        self._fail("close_round")
        super().close_round(close, events)

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        self._fail("add_checkpoint")
        super().add_checkpoint(record)


def _serve_until_failure(tmp_path: Path, replica: Replica, broken: str) -> tuple[grpc.StatusCode | None, str]:
    """Three clients answer round 1 while `broken` fails; returns the RPC error of the failing submit."""
    config = make_config(tmp_path, checkpoint_every=1)
    store = BreakableStore(config.state_path / "state.sqlite")

    async def main() -> tuple[grpc.StatusCode | None, str]:
        app = build_app(config, store=store, replica=replica)  # grpc.aio needs the running loop
        await app.start()
        clients = [FakeClient(app.port, f"c{i}", manifest=replica.manifest_sha256) for i in range(3)]
        try:
            for c in clients:
                await c.join()
            tasks = await asyncio.gather(*(c.get_task(0, 5.0) for c in clients))
            store.broken = (broken,)
            code, details = None, ""
            for c, t in zip(clients, tasks):
                try:
                    await c.submit(t.task.round_id, grads_for(c.client_id, 1, STEPS), [2.0] * STEPS)
                except grpc.aio.AioRpcError as exc:
                    code, details = rpc_code(exc), exc.details() or ""
            await asyncio.wait_for(app.coordinator.failed.wait(), timeout=10.0)
            return code, details
        finally:
            for c in clients:
                await c.close()
            store.broken = ()
            await app.stop(0)

    return asyncio.run(main())


def test_failed_update_write_is_refused_unavailable_and_stops_the_server(
    tmp_path: Path, replica: Replica
) -> None:
    code, details = _serve_until_failure(tmp_path, replica, "add_update")
    assert code == grpc.StatusCode.UNAVAILABLE and "server cannot store state" in details
    store = SqliteStore(tmp_path / "state" / "state.sqlite", read_only=True)
    assert store.list_updates(1) == []  # refused, so not acknowledged and not kept
    store.close()


@pytest.mark.parametrize("broken", ["close_round", "add_checkpoint"])
def test_failed_round_transition_stops_the_server(tmp_path: Path, replica: Replica, broken: str) -> None:
    code, _ = _serve_until_failure(tmp_path, replica, broken)
    assert code is None  # every update was acknowledged ...
    store = SqliteStore(tmp_path / "state" / "state.sqlite", read_only=True)
    assert [u.client_id for u in store.list_updates(1)] == ["c0", "c1", "c2"]  # ... and is kept
    store.close()
