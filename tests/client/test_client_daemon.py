"""The daemon's logic against an in-memory fake server (style §13): rounds, catch-up, reconnects."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers.client_fakes import FakeServer, make_fake_server, toy_workload

from fedmezo.client import sync
from fedmezo.client.daemon import Daemon, Outcome
from fedmezo.client.errors import Incompatible, Refused, Unavailable
from fedmezo.client.retry import RetryPolicy
from fedmezo.client.workload import Workload


def _daemon(server: FakeServer) -> Daemon:
    return Daemon(
        link=server,
        client_id="me",
        workload_factory=lambda _settings: toy_workload(),
        retry=RetryPolicy(sleep=lambda _s: False),
        progress_bar=False,
    )


def _assert_in_sync(daemon: Daemon, server: FakeServer) -> None:
    assert daemon.replica is not None
    assert daemon.replica.version == server.rounds_done
    assert daemon.replica.params.fingerprint() == server.params.fingerprint()
    # every reported fingerprint equals the server's after that round
    assert server.fingerprints and all(server.fingerprint_at(v) == fp for v, fp in server.fingerprints)


def test_trains_every_round_and_stays_bit_identical() -> None:
    server = make_fake_server(rounds=3)
    daemon = _daemon(server)
    assert daemon.run() is Outcome.FINISHED
    assert [u.round_id for u in server.submitted] == [1, 2, 3]
    assert all(len(u.projected_grads) == 4 and len(u.losses) == 4 for u in server.submitted)
    assert [v for v, _ in server.fingerprints] == [0, 1, 2, 3]
    _assert_in_sync(daemon, server)


def test_a_round_costs_two_calls_the_poll_brings_the_deltas() -> None:
    """Steady state: GetTask (with the closed rounds' deltas and an unreported version's fingerprint)
    and SubmitUpdate (with its base fingerprint); no delta stream, one fingerprint report at the end."""
    server = make_fake_server(rounds=3)
    assert _daemon(server).run() is Outcome.FINISHED
    rounds = server.calls[server.calls.index("join") + 1 :]
    assert rounds == ["get_task", "submit"] * 3 + ["get_task", "report_fingerprint"]


@pytest.mark.parametrize("bad_version", [0, 1], ids=["poll-fingerprint", "submit-base-fingerprint"])
def test_a_diverged_fingerprint_resyncs_from_a_checkpoint(bad_version: int) -> None:
    """The server judges a fingerprint diverged, carried by the poll (version 0) or by the update's base
    (version 1, refused as "diverged"): the client downloads the checkpoint, replays, and trains on."""
    server = make_fake_server(rounds=2)
    server.save_checkpoint()  # version 0
    server.bad_versions = {bad_version}
    daemon = _daemon(server)
    assert daemon.run() is Outcome.FINISHED
    assert "download_checkpoint" in server.calls
    assert [u.round_id for u in server.submitted] == [1, 2]
    _assert_in_sync(daemon, server)


def test_join_reports_the_measured_inference_peak() -> None:
    server = make_fake_server(rounds=1)

    def workload(_settings: object) -> Workload:
        return replace(toy_workload(), inference_peak_memory_bytes=42 << 20)

    daemon = Daemon(server, "me", workload, RetryPolicy(sleep=lambda _s: False), progress_bar=False)
    assert daemon.run() is Outcome.FINISHED
    assert server.joins and all(j["inference_peak_memory_bytes"] == 42 << 20 for j in server.joins)


def test_late_joiner_replays_missed_rounds() -> None:
    server = make_fake_server(rounds=3)
    server.close_round(None)
    server.close_round(None)
    daemon = _daemon(server)
    assert daemon.run() is Outcome.FINISHED
    assert [u.round_id for u in server.submitted] == [3]
    assert "download_checkpoint" not in server.calls
    _assert_in_sync(daemon, server)


def test_late_joiner_downloads_a_checkpoint_when_cheaper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "ASSUMED_DOWNLOAD_BYTES_PER_S", 1e15)
    server = make_fake_server(rounds=3)
    server.close_round(None)
    server.close_round(None)
    server.save_checkpoint()
    daemon = _daemon(server)
    assert daemon.run() is Outcome.FINISHED
    assert "download_checkpoint" in server.calls
    _assert_in_sync(daemon, server)


def test_reconnects_after_the_server_goes_away() -> None:
    server = make_fake_server(rounds=2)
    down = Unavailable("UNAVAILABLE", "", "connection refused")
    server.failures = {"join": [down, down], "submit": [down], "get_task": [down]}
    daemon = _daemon(server)
    assert daemon.run() is Outcome.FINISHED
    assert [u.round_id for u in server.submitted] == [1, 2]  # the failed submit was resent, not retrained
    _assert_in_sync(daemon, server)


def test_rejoins_when_the_server_forgot_the_client() -> None:
    server = make_fake_server(rounds=1)
    server.failures = {"get_task": [Refused("FAILED_PRECONDITION", "not_joined", "")]}
    assert _daemon(server).run() is Outcome.FINISHED
    assert server.calls.count("join") == 2


def test_late_update_is_dropped_and_the_round_still_applied() -> None:
    server = make_fake_server(rounds=1)
    server.failures = {"submit": [Refused("FAILED_PRECONDITION", "round_closed", "late")]}
    original = server.submit

    def close_then_refuse(update: object, **kw: bytes) -> None:
        if server.failures.get("submit"):
            server.close_round(None)  # the round closed without us
        original(update, **kw)  # type: ignore[arg-type]

    server.submit = close_then_refuse  # type: ignore[method-assign]
    daemon = _daemon(server)
    assert daemon.run() is Outcome.FINISHED
    assert server.submitted == []
    _assert_in_sync(daemon, server)


def test_incompatible_manifest_is_a_clear_error() -> None:
    server = make_fake_server()
    server.settings = replace(server.settings, manifest_sha256="00" * 32)
    with pytest.raises(Incompatible, match="manifest"):
        _daemon(server).run()
    assert "join" not in server.calls


def test_stop_request_ends_the_loop() -> None:
    server = make_fake_server(rounds=5)
    daemon = _daemon(server)
    original = server.submit

    def submit_then_stop(update: object, **kw: bytes) -> None:
        original(update, **kw)  # type: ignore[arg-type]
        daemon.stop.set()

    server.submit = submit_then_stop  # type: ignore[method-assign]
    assert daemon.run() is Outcome.STOPPED
    assert len(server.submitted) == 1


def test_restarted_client_resumes_from_its_saved_replica(tmp_path: Path) -> None:
    server = make_fake_server(rounds=2)
    first = _daemon(server)
    first.state_dir = tmp_path
    assert first.run() is Outcome.FINISHED
    server.settings = replace(server.settings, total_rounds=3)
    server.fingerprints.clear()
    second = _daemon(server)
    second.state_dir = tmp_path
    assert second.run() is Outcome.FINISHED
    assert [v for v, _ in server.fingerprints] == [2, 3]  # resumed at 2 (checked), trained 3
    _assert_in_sync(second, server)


def test_saved_replica_of_another_run_is_ignored(tmp_path: Path) -> None:
    server = make_fake_server(rounds=1)
    first = _daemon(server)
    first.state_dir = tmp_path
    assert first.run() is Outcome.FINISHED
    other = make_fake_server(rounds=1)
    other.settings = replace(other.settings, run_id="run-2")
    second = _daemon(other)
    second.state_dir = tmp_path
    assert second.run() is Outcome.FINISHED
    _assert_in_sync(second, other)
