"""The wire vocabulary lives in the proto: every refusal reason is a RefusalReason value and every
Refusal subclass has one; the limits server, client, simulation and dashboard enforce are the
`ProtocolLimits` option of common.proto, read from the descriptor, not copies."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedmezo.fl import errors, vocabulary, wire
from fedmezo.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]
REASONS = common_pb2.RefusalReason.DESCRIPTOR
EXTENSION: Any = common_pb2.ProtocolLimits.protocol_limits
LIMITS: common_pb2.ProtocolLimits = common_pb2.DESCRIPTOR.GetOptions().Extensions[EXTENSION]

# The wire strings as they always were: the trailing metadata stays compatible.
STABLE_REASONS = {
    errors.Unauthenticated: "unauthenticated",
    errors.PermissionDenied: "permission_denied",
    errors.NotJoined: "not_joined",
    errors.IncompatibleClient: "incompatible_client",
    errors.RoundClosed: "round_closed",
    errors.NotSelected: "not_selected",
    errors.WrongRound: "wrong_round",
    errors.InvalidUpdate: "invalid_update",
    errors.InvalidRequest: "invalid_request",
    errors.ConflictingUpdate: "conflicting_update",
    errors.NoCheckpoint: "no_checkpoint",
    errors.LimitExceeded: "limit_exceeded",
    errors.RateLimited: "rate_limited",
    errors.TooManyStreams: "too_many_streams",
    errors.TooManyClients: "too_many_clients",
    errors.Diverged: "diverged",
}
SERVER_REASONS = {vocabulary.MALFORMED_REQUEST, vocabulary.STORE_FAILED, vocabulary.INTERNAL}
CLIENT_REASONS = {
    vocabulary.NEW_RUN,
    vocabulary.BAD_TASK_STATUS,
    vocabulary.CHECKPOINT_GAP,
    vocabulary.CHECKPOINT_TRUNCATED,
}


def _refusal_classes() -> list[type[errors.Refusal]]:
    found: list[type[errors.Refusal]] = []
    todo = list(errors.Refusal.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_refusal_has_its_own_enum_value() -> None:
    classes = _refusal_classes()
    values = [cls.reason_value for cls in classes]
    assert len(set(values)) == len(values), "two Refusal classes share a RefusalReason"
    for cls in classes:
        assert cls.reason_value != common_pb2.REFUSAL_REASON_UNSPECIFIED, cls.__name__
        assert cls.reason == vocabulary.reason_name(cls.reason_value), cls.__name__
        assert cls("x").reason == cls.reason
    assert {cls: cls.reason for cls in classes} == STABLE_REASONS


def test_every_enum_value_is_a_refusal_or_a_named_reason() -> None:
    by_class = {cls.reason for cls in _refusal_classes()}
    assert (
        not by_class & SERVER_REASONS
        and not by_class & CLIENT_REASONS
        and not SERVER_REASONS & CLIENT_REASONS
    )
    named = {vocabulary.reason_name(v.number) for v in REASONS.values if v.number != 0}
    assert named == by_class | SERVER_REASONS | CLIENT_REASONS
    assert REASONS.values[0].name == "REFUSAL_REASON_UNSPECIFIED" and REASONS.values[0].number == 0


def test_reason_names_are_the_snake_case_of_the_enum() -> None:
    assert vocabulary.reason_name(common_pb2.REFUSAL_REASON_ROUND_CLOSED) == "round_closed"
    for value in REASONS.values:
        name = vocabulary.reason_name(value.number)
        assert name == value.name.removeprefix("REFUSAL_REASON_").lower()
        assert name.replace("_", "").isalpha() and name == name.lower()


def test_the_limits_are_the_protos() -> None:
    assert LIMITS.fingerprint_bytes == 32 and LIMITS.max_message_bytes == 4 << 20
    expected = {
        "FINGERPRINT_BYTES": LIMITS.fingerprint_bytes,
        "MAX_MESSAGE_BYTES": LIMITS.max_message_bytes,
        "MAX_TEXT_CHARS": LIMITS.max_text_chars,
        "MAX_STORED_INT": LIMITS.max_stored_int,
        "MAX_EVENT_CURSOR": LIMITS.max_event_cursor,
        "MAX_CLIENT_ID_CHARS": LIMITS.max_client_id_chars,
    }
    for name, value in expected.items():
        assert value > 0, name
        assert getattr(vocabulary, name) == getattr(wire, name) == value, name
    assert wire.REASON_METADATA_KEY == vocabulary.REASON_METADATA_KEY == "fedmezo-reason"


def test_the_text_and_integer_limits_are_enforced_at_the_protos_values() -> None:
    from fedmezo.v1 import federation_pb2

    ok = federation_pb2.JoinRequest(device="d" * LIMITS.max_text_chars, num_examples=LIMITS.max_stored_int)
    assert wire.join_info_from_pb(ok).device == ok.device
    with pytest.raises(errors.InvalidRequest):
        wire.join_info_from_pb(federation_pb2.JoinRequest(device="d" * (LIMITS.max_text_chars + 1)))
    with pytest.raises(errors.InvalidRequest):
        wire.join_info_from_pb(federation_pb2.JoinRequest(num_examples=LIMITS.max_stored_int + 1))


def test_the_server_uses_the_protos_limits() -> None:
    from fedmezo.server import app, convert, servicer
    from fedmezo.server.auth import Authenticator

    assert LIMITS.max_message_bytes == app.MAX_RECEIVE_MESSAGE_BYTES
    assert servicer.REASON_METADATA_KEY == vocabulary.REASON_METADATA_KEY
    assert convert.cursor_from_pb(2**64 - 1) == LIMITS.max_event_cursor
    auth = Authenticator(None)
    assert auth.identify(None, "c" * LIMITS.max_client_id_chars)
    with pytest.raises(errors.InvalidRequest):
        auth.identify(None, "c" * (LIMITS.max_client_id_chars + 1))


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        self._code, self._reason = code, reason

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "scripted"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((vocabulary.REASON_METADATA_KEY, self._reason),)


def test_the_client_reads_the_same_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmezo.client import connection, daemon
    from fedmezo.client.errors import Incompatible, Refused, Unavailable

    wire_reasons = {vocabulary.reason_name(v.number) for v in REASONS.values}
    assert {errors.RateLimited.reason, errors.TooManyStreams.reason} == connection._RETRY_REASONS
    assert wire_reasons >= daemon._LATE_REASONS
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    translate = connection.translate_error
    assert isinstance(translate(_RpcError(exhausted, errors.RateLimited.reason)), Unavailable)
    assert isinstance(translate(_RpcError(exhausted, errors.TooManyClients.reason)), Refused)
    failed = grpc.StatusCode.FAILED_PRECONDITION
    incompatible = translate(_RpcError(failed, errors.IncompatibleClient.reason))
    assert isinstance(incompatible, Incompatible) and incompatible.reason == "incompatible_client"

    seen: dict[str, Any] = {}

    def channel(target: str, options: list[tuple[str, Any]]) -> object:
        seen.update(options)
        return object()

    monkeypatch.setattr(connection.grpc, "insecure_channel", channel)
    connection._channel(connection.ChannelSettings("localhost:1", "c", insecure=True))
    assert seen["grpc.max_send_message_length"] == LIMITS.max_message_bytes
    assert seen["grpc.max_receive_message_length"] == LIMITS.max_message_bytes


def test_the_simulation_counts_a_fingerprint_of_the_protos_size() -> None:
    from fedmezo.sim import wire as sim_wire

    assert LIMITS.fingerprint_bytes == sim_wire.FINGERPRINT_BYTES


def test_the_dashboard_bounds_cursors_by_the_protos_limit() -> None:
    from fedmezo.dashboard import app as dashboard_app

    assert LIMITS.max_event_cursor == dashboard_app.MAX_EVENT_CURSOR


def test_the_metadata_key_is_written_once() -> None:
    """No module but fedmezo/fl/vocabulary.py spells the key (docstrings and comments aside)."""
    spelled: list[str] = []
    for folder in ("server", "client", "dashboard", "fedmezo"):
        for path in (ROOT / folder).rglob("*.py"):
            if "v1" in path.relative_to(ROOT).parts:
                continue
            tree = ast.parse(path.read_text())
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and node.body
                and isinstance(node.body[0], ast.Expr)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and node.value == vocabulary.REASON_METADATA_KEY
                    and id(node) not in docstrings
                ):
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(spelled) == 1 and spelled[0].startswith("fedmezo/fl/vocabulary.py:"), spelled
