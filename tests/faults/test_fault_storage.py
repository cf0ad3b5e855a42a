"""The state dir failing under the server: read-only, full, or damaged. The server must say so in one
line naming the path and the cause and exit with EXIT_STATE (3), never serve on silently, and never
lose or overwrite what it had acknowledged.

A template state dir is made once per module by a real run (rounds 1-2 closed, round 3 open holding
one acknowledged update, checkpoints of rounds 1 and 2) and copied for every test. The server runs
with a relative --state-dir from the copy's parent, because checkpoint paths are stored as given.

Read-only: permission bits (skipped as root, whom they do not stop: CAP_DAC_OVERRIDE) and a
read-only bind mount in a private mount namespace (stops root too; skipped where mount namespaces
are not allowed). Full disk: a small tmpfs (a real ENOSPC; where mount namespaces are allowed) and
RLIMIT_FSIZE (a write past the limit fails with EFBIG exactly where a full disk fails with ENOSPC; no
privileges needed), set on the live server with prlimit so the disk "fills" at a moment the test
chooses.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import state_db
from helpers.processes import FEDMEZO, free_port, health_serving, subprocess_env, wait_for, wait_until_serving
from helpers.run_settings import PROTOCOL_RUN_FLAGS
from helpers.scripted_client import Ack, ScriptedClient

from fedmezo.client.connection import ChannelSettings, GrpcServerLink
from fedmezo.client.errors import Unavailable
from fedmezo.fl.records import Update
from fedmezo.fl.replica import Replica
from fedmezo.zo import RNG_SPEC

pytestmark = pytest.mark.timeout(300)

EXIT_STATE = 3  # fedmezo.cli.server_cmd.EXIT_STATE
EXIT_TIMEOUT_S = 60.0
# No background publication for read replicas (`--status-publish-s`): the disk-full cases need the
# update or the checkpoint to be the first write after the limit (a write that fails there is only
# logged and retried; test_status_replica.py covers that).
RUN_ARGS = ("--rounds=5", "--local-steps=4", "--min-clients=2", "--checkpoint-every=1", "--deadline-s=120",
            "--status-publish-s=0", *PROTOCOL_RUN_FLAGS)  # fmt: skip
STATE = "state"  # relative to each test's working directory
CHECKPOINT_BYTES_LIMIT = 1 << 20  # room for SQLite's pages, none for a 6.7 MB tiny-random checkpoint


@dataclass(frozen=True)
class Template:
    root: Path  # holds STATE
    acks: tuple[Ack, ...]  # what the template's clients were told was accepted


def _server_args(port: int) -> list[str]:
    return ["server", "--model=tiny-random", "--insecure", "--host=127.0.0.1", f"--port={port}",
            f"--state-dir={STATE}", *RUN_ARGS]  # fmt: skip


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    root = tmp_path_factory.mktemp("template")
    port = free_port()
    log = root / "server.log"
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [*FEDMEZO, *_server_args(port)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
    a = ScriptedClient("a", f"127.0.0.1:{port}", Replica.load("tiny-random").params, stop_after_round=3)
    b = ScriptedClient("b", f"127.0.0.1:{port}", Replica.load("tiny-random").params, stop_after_round=2)
    try:
        wait_until_serving(server, port, log)
        for client in (a, b):
            client.start()
        for client in (a, b):
            client.join(EXIT_TIMEOUT_S)
            assert not client.errors and not client.is_alive(), client.errors
    finally:
        for client in (a, b):
            client.stop()
        server.send_signal(signal.SIGTERM)
        assert server.wait(EXIT_TIMEOUT_S) == 0, log.read_text()
    db = root / STATE / "state.sqlite"
    assert state_db.round_states(db) == {1: "closed", 2: "closed", 3: "open"}
    assert sorted(p.name for p in (root / STATE / "checkpoints").iterdir()) == [
        "round-000001.safetensors",
        "round-000002.safetensors",
    ]
    yield Template(root, (*a.acks, *b.acks))


def _copy(template: Template, tmp: Path) -> Path:
    shutil.copytree(template.root / STATE, tmp / STATE)
    return tmp / STATE


def _assert_nothing_lost(state: Path, acks: Sequence[Ack]) -> None:
    db = state / "state.sqlite"
    assert state_db.integrity(db) == "ok"
    stored = state_db.stored_updates(db)
    for ack in acks:
        assert stored.get((ack.round_id, ack.client_id)) == (ack.projected_grads, ack.losses), ack


def _run_to_failure(
    cwd: Path,
    args: Sequence[str],
    *,
    wrapper: Sequence[str] = (),
    preexec: Callable[[], object] | None = None,
) -> tuple[int, str]:
    """Run `fedmezo <args>` (inside `wrapper`) until it exits by itself: (exit code, its output).
    A server that does not exit is killed with its whole process group (the wrapper's shell too)."""
    proc = subprocess.Popen(
        [*wrapper, *FEDMEZO, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=subprocess_env(),
        preexec_fn=preexec,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the server did not exit by itself:\n{out.decode(errors='replace')[-3000:]}")
    return proc.returncode, out.decode(errors="replace")


def _assert_one_line_state_error(code: int, output: str, *fragments: str) -> None:
    """Exit 3 with a last line `... ERROR fedmezo.server: state error: ...` holding every fragment."""
    assert code == EXIT_STATE, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert "ERROR" in last and "state error:" in last, output[-3000:]
    for fragment in fragments:
        assert fragment in last, (fragment, last)


# --- read-only ----------------------------------------------------------------------------------


@functools.cache
def _namespace_wrapper() -> tuple[str, ...] | None:
    """`unshare` flags that give a private mount namespace where this user may mount, or None."""
    if shutil.which("unshare") is None:
        return None
    # private propagation: nothing mounted inside can show up outside, whatever this unshare's default
    flags: tuple[str, ...] = ("unshare", "-m", "--propagation=private")
    if os.geteuid() != 0:
        flags = (*flags, "-r")  # a user namespace in which this user may mount
    probe = subprocess.run([*flags, "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, timeout=30)
    return flags if probe.returncode == 0 else None


def _needs_namespace() -> tuple[str, ...]:
    flags = _namespace_wrapper()
    if flags is None:
        pytest.skip("mount namespaces are not allowed here (unshare -m / -rm fails)")
    return flags


def _read_only_bind(directory: Path) -> list[str]:
    """Run the command with `directory` bind-mounted read-only onto itself (EROFS, even for root);
    `cd "$PWD"` moves a working directory that the mount now covers onto the mount."""
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && cd "$PWD" && shift && exec "$@"'
    return [*_needs_namespace(), "sh", "-c", script, "sh", str(directory)]


def test_read_only_mount_under_an_existing_run_fails_at_start(template: Template, tmp_path: Path) -> None:
    state = _copy(template, tmp_path)
    before = _tree_digest(state)
    code, output = _run_to_failure(tmp_path, _server_args(free_port()), wrapper=_read_only_bind(state))
    _assert_one_line_state_error(code, output, f"state dir {STATE} is not writable", "Read-only file system")
    assert _tree_digest(state) == before
    _assert_nothing_lost(state, template.acks)


def test_read_only_mount_for_a_new_state_dir_fails_at_start(tmp_path: Path) -> None:
    code, output = _run_to_failure(tmp_path, _server_args(free_port()), wrapper=_read_only_bind(tmp_path))
    _assert_one_line_state_error(code, output, f"state dir {STATE} is not writable", "Read-only file system")
    assert not (tmp_path / STATE).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (CAP_DAC_OVERRIDE); "
                    "the read-only mount tests cover root")  # fmt: skip
def test_state_dir_without_write_permission_fails_at_start(template: Template, tmp_path: Path) -> None:
    state = _copy(template, tmp_path)
    paths = [state, *state.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        code, output = _run_to_failure(tmp_path, _server_args(free_port()))
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)
    _assert_one_line_state_error(code, output, f"state dir {STATE} is not writable", "Permission denied")
    _assert_nothing_lost(state, template.acks)


# --- full disk ----------------------------------------------------------------------------------


def _limit_file_size() -> None:  # preexec_fn: runs in the child before exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (CHECKPOINT_BYTES_LIMIT, CHECKPOINT_BYTES_LIMIT))


def _check_first_start_left_no_run(state: Path) -> None:
    """The dir does not claim a run (run_config is written last), and no partial checkpoint is left."""
    keys = state_db.meta_keys(state / "state.sqlite")
    assert "run_config" not in keys and "run_id" in keys, keys
    assert list((state / "checkpoints").iterdir()) == []


def test_disk_full_at_first_start_fails_with_the_checkpoint_path(tmp_path: Path) -> None:
    """The first checkpoint (6.7 MB) does not fit: on a 1 MiB tmpfs (a real full disk, ENOSPC) where
    mount namespaces are allowed, else under RLIMIT_FSIZE (EFBIG). The tmpfs's content is copied out
    before it vanishes with its namespace, to check what the failed start left behind."""
    if _namespace_wrapper() is not None:
        after = tmp_path / "copied-out"
        script = (
            's="$1"; o="$2"; shift 2; mkdir -p "$s" "$o" && mount -t tmpfs -o size=1m tmpfs "$s" || exit 99; '
            '"$@"; code=$?; cp -a "$s"/. "$o"/; exit $code'
        )
        wrapper = [*_needs_namespace(), "sh", "-c", script, "sh", str(tmp_path / STATE), str(after)]
        code, output = _run_to_failure(tmp_path, _server_args(free_port()), wrapper=wrapper)
        cause = "No space left on device"
    else:
        after = tmp_path / STATE
        code, output = _run_to_failure(tmp_path, _server_args(free_port()), preexec=_limit_file_size)
        cause = "File too large"
    path = f"{STATE}/checkpoints/round-000000.safetensors"
    _assert_one_line_state_error(code, output, f"cannot write checkpoint {path}", cause)
    _check_first_start_left_no_run(after)


class _Server:
    """A server on a template copy whose output goes to a pipe: RLIMIT_FSIZE does not apply to pipes,
    so its last words are never lost to the limit it is dying of."""

    def __init__(self, cwd: Path) -> None:
        self.port = free_port()
        self.log = cwd / "server.log"
        self.proc = subprocess.Popen(
            [*FEDMEZO, *_server_args(self.port)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
        self.output = ""

    def wait_serving(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.finish()
            return health_serving(self.port)

        wait_for(up, EXIT_TIMEOUT_S, "the server to serve")

    def limit_file_size(self, limit: int) -> None:
        """The disk "fills up" now: writes past `limit` bytes in any file fail (EFBIG)."""
        _, hard = resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))

    def finish(self) -> str:
        try:
            out, _ = self.proc.communicate(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output = out.decode(errors="replace")
        self.log.write_text(self.output)
        return self.output


def _client_b(port: int, manifest: str) -> tuple[GrpcServerLink, Update]:
    """Template client b, back: it joins and holds round 3's task; its update is ready to send."""
    link = GrpcServerLink(ChannelSettings(f"127.0.0.1:{port}", "b", insecure=True, rpc_deadline_s=10.0))
    joined = link.join(
        manifest_sha256=manifest, rng_spec=RNG_SPEC, num_examples=10, device="cpu", model_version=2
    )
    assert joined.rounds_completed == 2
    poll = link.get_task(known_version=2, wait_s=5.0)
    assert poll.task is not None and poll.task.round_id == 3, poll
    rng = random.Random(3)
    grads = tuple(float(np.float32(rng.gauss(0, 1))) for _ in range(poll.task.local_steps))  # fp32 values
    return link, Update(3, grads, (3.0,) * len(grads), 0.001, 1 << 20, "cpu")


def test_disk_full_mid_run_refuses_then_stops_and_resumes_without_loss(
    template: Template, tmp_path: Path
) -> None:
    """1. The disk fills before b's update of round 3: the update is refused with UNAVAILABLE (not
    acknowledged, not stored) and the server exits 3 naming the database. 2. Restarted, b's update is
    acknowledged and closes round 3, then the disk fills before the round's checkpoint: the server
    exits 3 naming the checkpoint; the closed round is kept. 3. Restarted, it resumes at version 3."""
    state = _copy(template, tmp_path)
    manifest = Replica.load("tiny-random").params.manifest().sha256()
    db = state / "state.sqlite"

    server = _Server(tmp_path)
    server.wait_serving()
    link, update = _client_b(server.port, manifest)
    server.limit_file_size((state / "state.sqlite-wal").stat().st_size)  # the next page cannot be written
    with pytest.raises(Unavailable, match="server cannot store state"):
        link.submit(update)
    link.close()
    output = server.finish()
    _assert_one_line_state_error(server.proc.returncode, output, f"state database {STATE}/state.sqlite")
    assert "SQLITE_IOERR" in output.strip().splitlines()[-1] or "SQLITE_FULL" in output
    _assert_nothing_lost(state, template.acks)
    assert (3, "b") not in state_db.stored_updates(db)

    server = _Server(tmp_path)
    server.wait_serving()
    link, update = _client_b(server.port, manifest)
    server.limit_file_size(CHECKPOINT_BYTES_LIMIT)
    link.submit(update)  # acknowledged: round 3 now has both of its updates and closes
    link.close()
    output = server.finish()
    path = f"{STATE}/checkpoints/round-000003.safetensors"
    _assert_one_line_state_error(
        server.proc.returncode, output, f"cannot write checkpoint {path}", "too large"
    )
    _assert_nothing_lost(state, template.acks)
    assert state_db.stored_updates(db)[(3, "b")][0] == update.projected_grads
    assert state_db.round_states(db)[3] == "closed"
    assert {(3, "a"), (3, "b")} <= state_db.accepted_updates(db)
    assert sorted(p.name for p in (state / "checkpoints").iterdir()) == [
        "round-000001.safetensors",
        "round-000002.safetensors",
    ]  # no partial file left behind

    server = _Server(tmp_path)
    server.wait_serving()  # restored from checkpoint 2 + round 3's delta, verified by fingerprint
    server.proc.send_signal(signal.SIGTERM)
    output = server.finish()
    assert server.proc.returncode == 0, output
    assert "resumed from checkpoint" in output and "replica at version 3" in output, output


# --- damaged files ------------------------------------------------------------------------------


def _tree_digest(state: Path) -> dict[str, str]:
    return {
        str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(state.rglob("*"))
        if p.is_file()
    }


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 16):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "cause"),
    [(_flip_bytes, "is corrupt (sha256 mismatch)"), (Path.unlink, "cannot be read: No such file")],
    ids=["flipped-bytes", "missing"],
)
def test_damaged_checkpoint_fails_at_start(
    template: Template, tmp_path: Path, damage: Callable[[Path], object], cause: str
) -> None:
    state = _copy(template, tmp_path)
    latest = state / "checkpoints" / "round-000002.safetensors"
    damage(latest)
    older = (state / "checkpoints" / "round-000001.safetensors").read_bytes()
    code, output = _run_to_failure(tmp_path, _server_args(free_port()))
    _assert_one_line_state_error(
        code, output, f"checkpoint {STATE}/checkpoints/round-000002.safetensors", cause
    )
    assert (state / "checkpoints" / "round-000001.safetensors").read_bytes() == older
    _assert_nothing_lost(state, template.acks)


def _garble_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:16] = b"not a database!\0"
    db.write_bytes(bytes(data))


def _garble_a_page(db: Path) -> None:
    """Overwrite one b-tree page in the middle of the file with noise (the header stays valid)."""
    data = bytearray(db.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    page = len(data) // page_size // 2
    data[page * page_size : (page + 1) * page_size] = random.Random(page).randbytes(page_size)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "cause"),
    # a damaged page: quick_check names it, or, for a page SQLite must read to run the check (which
    # one the middle page is depends on the schema), the check itself fails as malformed
    [(_garble_header, ("file is not a database",)), (_garble_a_page, ("is corrupt", "is malformed"))],
    ids=["header", "page"],
)
def test_damaged_state_database_fails_at_start(
    template: Template, tmp_path: Path, damage: Callable[[Path], object], cause: tuple[str, ...]
) -> None:
    state = _copy(template, tmp_path)
    db = state / "state.sqlite"
    state_db.fold_wal(db)
    damage(db)
    before = _tree_digest(state)
    code, output = _run_to_failure(tmp_path, _server_args(free_port()))
    _assert_one_line_state_error(code, output, f"{STATE}/state.sqlite")
    assert any(c in output.strip().splitlines()[-1] for c in cause), output[-3000:]
    after = _tree_digest(state)
    assert after.get("state.sqlite") == before["state.sqlite"]  # not replaced, not "repaired"
