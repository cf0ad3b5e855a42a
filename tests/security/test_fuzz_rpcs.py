"""Property-based fuzzing of every RPC of FederationService and StatusService over real loopback gRPC.

Requests are built from the messages' own descriptors (so a new field or RPC is fuzzed without edits):
malformed, out-of-range and random values, NaN/inf, unknown enum numbers, huge strings and repeated
fields, oversized messages, random and wrong bearer tokens; plus raw bytes (undecodable protobufs)
through a generic channel. For every example: the status code is in the RPC's allowed set, the server
still answers its health check, and a refused request changed nothing (SQLite state, the clients'
status view); at the end the replica's weights still hash to the fingerprint of the model version.

Each server runs once per module: alice and bob joined, round 1 closed, round 2 open with both
selected. With a tokens file, carol has a token but never joined and `reader` may read the per-client
status views; without one (development), the payload's client_id is the identity, so the federation
RPCs are fuzzed there too (invented, huge and unprintable ids; `max_clients` reached).

The fixed bugs the fuzzer found are pinned as plain regression tests at the end.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from helpers.threaded_server import (
    RPC_TIMEOUT_S,
    ThreadedServer,
    bearer,
    join_request,
    play_round,
    server_config,
    serving,
    threaded_server,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedmezo.server.app import MAX_RECEIVE_MESSAGE_BYTES
from fedmezo.v1 import federation_pb2, federation_pb2_grpc, status_pb2, status_pb2_grpc
from fedmezo.zo import RNG_SPEC

QUICK_EXAMPLES = 20  # per RPC in `make test`; the whole module stays well under a minute
LONG_EXAMPLES = 400  # per RPC under `make test-long`
FOLLOW_WAIT_S = 0.15  # a following stream never ends by itself: read it this long, then hang up
STEPS = 4
TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "carol": "tok-carol", "reader": "tok-reader"}
Code = grpc.StatusCode

# --- what each RPC may answer (the codes federation.proto and status.proto define) -------------------
_ANY = {Code.UNAUTHENTICATED, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}
_CLIENT = _ANY | {Code.OK, Code.PERMISSION_DENIED, Code.FAILED_PRECONDITION}
ALLOWED: dict[str, set[Code]] = {
    "Join": _CLIENT,
    "Heartbeat": _CLIENT,
    "GetTask": _CLIENT | {Code.OUT_OF_RANGE},  # a fingerprint of a version the server does not have
    "SubmitUpdate": _CLIENT | {Code.OUT_OF_RANGE, Code.ALREADY_EXISTS},
    "ReportFingerprint": _CLIENT | {Code.OUT_OF_RANGE},
    "StreamRoundDeltas": _CLIENT | {Code.DEADLINE_EXCEEDED},  # ours, when a following stream is cut
    "DownloadCheckpoint": _CLIENT | {Code.NOT_FOUND},
    "GetRunConfig": _ANY | {Code.OK},
    "GetStatus": _ANY | {Code.OK},
    "ListRounds": _ANY | {Code.OK, Code.PERMISSION_DENIED},
    "ListClients": _ANY | {Code.OK, Code.PERMISSION_DENIED},
    "ListEvents": _ANY | {Code.OK, Code.PERMISSION_DENIED},
    "StreamEvents": _ANY | {Code.PERMISSION_DENIED, Code.DEADLINE_EXCEEDED},
}
# Answers after which state may have changed: accepted requests, and streams we hung up on.
NOT_REFUSED = {Code.OK, Code.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class Rpc:
    service: str
    method: MethodDescriptor
    request: type[Message]
    response: type[Message]

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    def follows(self, request: Message | None) -> bool:
        """Whether the stream stays open after the backlog (None: raw bytes, could be either)."""
        if self.name == "StreamEvents":
            return True
        return self.name == "StreamRoundDeltas" and (request is None or bool(request.follow))


def _rpcs() -> list[Rpc]:
    found = []
    for module, service in ((federation_pb2, "FederationService"), (status_pb2, "StatusService")):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            request = getattr(module, method.input_type.name)
            response = getattr(module, method.output_type.name)
            found.append(Rpc(descriptor.full_name, method, request, response))
    return found


RPCS = _rpcs()


# --- strategies: one per field type, with hints that reach past the first check --------------------
_UINT32 = st.one_of(st.sampled_from([0, 1, 2, 3, 2**31 - 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
_UINT64 = st.one_of(st.sampled_from([0, 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
_INT64 = st.integers(-(2**63), 2**63 - 1)
_FLOAT32 = st.floats(width=32)  # NaN, ±inf, subnormals, ±0 included
_SMALL_ROUND = st.one_of(st.integers(0, 4), _UINT32)
_HUGE_TEXT = st.sampled_from([300, 70_000, MAX_RECEIVE_MESSAGE_BYTES + 1]).map(lambda n: "x" * n)
_SHORT_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "é" * 9, "../../etc"]))
_TEXT = st.one_of(_SHORT_TEXT, _SHORT_TEXT, _HUGE_TEXT)
_BYTES = st.one_of(st.binary(max_size=80), st.binary(min_size=32, max_size=32))


def _float_lists(steps: int) -> st.SearchStrategy[list[float]]:
    return st.one_of(
        st.lists(_FLOAT32, max_size=2 * steps + 2),
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=steps, max_size=steps),  # right length, finite
        st.sampled_from([10_000, 300_000, 1_100_000]).map(lambda n: [1.0] * n),  # 40 KB .. over 4 MiB
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _UINT32
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _UINT64
    if kind == FieldDescriptor.TYPE_INT64:
        return _INT64
    if kind == FieldDescriptor.TYPE_FLOAT:
        return _FLOAT32
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: unknown numbers reach the server
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if kind == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if kind == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    raise NotImplementedError(f"no fuzz strategy for {field.full_name} (type {kind}): add one")


@dataclass(frozen=True)
class Known:
    """Values that get a request past the first checks (the run's manifest, real fingerprints)."""

    manifest: bytes
    fingerprints: tuple[bytes, ...]


def _hints(known: Known) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "client_id": st.one_of(st.sampled_from([*TOKENS, "", "nobody"]), _TEXT),
        "manifest_sha256": st.one_of(st.just(known.manifest), _BYTES),
        "rng_spec": st.one_of(st.just(RNG_SPEC), _TEXT),
        "fingerprint": st.one_of(st.sampled_from(known.fingerprints), _BYTES),
        "round_id": _SMALL_ROUND,
        "from_round": _SMALL_ROUND,
        "model_version": _SMALL_ROUND,
        "known_version": _SMALL_ROUND,
        "projected_grads": _float_lists(STEPS),
        "losses": _float_lists(STEPS),
    }


def _repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def message_strategy(cls: type[Message], known: Known) -> st.SearchStrategy[Message]:
    """Any subset of the fields set, each to a hinted or type-driven value."""
    hints = _hints(known)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in cls.DESCRIPTOR.fields:
        if field.name in hints:
            fields[field.name] = hints[field.name]
        elif _repeated(field):
            fields[field.name] = st.lists(_scalar(field), max_size=8)
        else:
            fields[field.name] = _scalar(field)
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: cls(**values))


_TOKEN_CHARS = string.ascii_letters + string.digits + "-._~+/="
_ALICE = st.just(bearer(TOKENS["alice"]))  # the caller whose requests get furthest: drawn most often
METADATA = st.one_of(
    _ALICE,
    _ALICE,
    _ALICE,
    st.sampled_from(
        [
            None,
            bearer(TOKENS["bob"]),
            bearer(TOKENS["carol"]),
            bearer(TOKENS["reader"]),
            bearer("tok-alicE"),
            (("authorization", TOKENS["alice"]),),  # no "Bearer "
            (("authorization", "Basic dG9rLWFsaWNl"),),
            (("x-client-id", "alice"),),
        ]
    ),
    st.text(_TOKEN_CHARS, min_size=1, max_size=60).map(lambda t: (("authorization", f"Bearer {t}"),)),
)


def _mutate(data: bytes, how: int, at: int, byte: int) -> bytes:
    """Corrupt a valid encoding: truncate, flip a byte, insert a byte, or append garbage."""
    at = at % (len(data) + 1)
    if how == 0:
        return data[:at]
    if how == 1 and data:
        i = at % len(data)
        return data[:i] + bytes([data[i] ^ (byte or 0xFF)]) + data[i + 1 :]
    if how == 2:
        return data[:at] + bytes([byte]) + data[at:]
    return data + bytes([byte, 0xFF, 0xFF, 0xFF])


def raw_strategy(known: Known) -> st.SearchStrategy[tuple[Rpc, bytes]]:
    def for_rpc(rpc: Rpc) -> st.SearchStrategy[tuple[Rpc, bytes]]:
        small = message_strategy(rpc.request, known).filter(lambda m: m.ByteSize() < 4096)
        mutated = st.builds(
            _mutate,
            small.map(lambda m: m.SerializeToString()),
            st.integers(0, 3),
            st.integers(0, 1 << 16),
            st.integers(0, 255),
        )
        return st.tuples(st.just(rpc), st.one_of(st.binary(max_size=200), mutated))

    return st.sampled_from(RPCS).flatmap(for_rpc)


# --- the server under test ----------------------------------------------------------------------------
@dataclass
class Target:
    server: ThreadedServer
    channel: grpc.Channel
    known: Known
    baseline: Any = None

    def call(self, rpc: Rpc, request: Message | bytes, metadata: Any) -> tuple[Code, str]:
        """One call; returns (code, details). Raw bytes go through identity serializers."""
        raw = isinstance(request, bytes)
        serialize = None if raw else rpc.request.SerializeToString
        deserialize = None if raw else rpc.response.FromString  # a reply must decode, too
        follows = rpc.follows(None if raw else request)  # type: ignore[arg-type]
        timeout = FOLLOW_WAIT_S if follows else RPC_TIMEOUT_S
        try:
            if rpc.streaming:
                stream = self.channel.unary_stream(rpc.path, serialize, deserialize)
                for _ in stream(request, metadata=metadata, timeout=timeout):
                    pass
            else:
                self.channel.unary_unary(rpc.path, serialize, deserialize)(
                    request, metadata=metadata, timeout=timeout
                )
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
            if code == Code.DEADLINE_EXCEEDED and not follows:
                raise AssertionError(f"{rpc.name} hung: {details}") from exc
            return code, details
        return Code.OK, ""

    def state(self) -> Any:
        """What a refused request must not change: every SQLite table, the run's status (bytes counted
        included) and the clients' view (without last_heartbeat: any authenticated contact proves a
        client alive)."""
        status = status_pb2_grpc.StatusServiceStub(self.channel)
        kw: dict[str, Any] = {"metadata": bearer(TOKENS["reader"]), "timeout": RPC_TIMEOUT_S}
        clients = status.ListClients(status_pb2.ListClientsRequest(), **kw).clients
        for client in clients:
            client.ClearField("last_heartbeat_unix_ms")
        run = status.GetStatus(status_pb2.GetStatusRequest(), **kw)
        views = [m.SerializeToString(deterministic=True) for m in (run, *clients)]
        return self.server.tables(), views

    def check(self, rpc: Rpc, code: Code, details: str) -> None:
        event(f"{rpc.name}: {code.name}")  # pytest --hypothesis-show-statistics: what the fuzzer reached
        assert code in ALLOWED[rpc.name], f"{rpc.name} answered {code.name}: {details}"
        # A status message echoing a huge input overflows the caller's metadata limit (seen: a 70 KB id).
        assert len(details) < 1024 and "metadata size" not in details, f"{rpc.name}: {details[:200]}"
        assert serving(self.channel), "health check failed after the request"
        after = self.state()
        if code not in NOT_REFUSED:
            assert after == self.baseline, f"{rpc.name} refused with {code.name} but changed state"
        self.baseline = after

    def fingerprint_intact(self) -> None:
        """The replica's weights still hash to the fingerprint of the current model version."""
        coord = self.server.app.coordinator
        assert self.server.replica_fingerprint() == coord.fingerprint_at(coord.rounds_completed)


def _tokens_file(tmp: Path) -> Path:
    path = tmp / "tokens.txt"
    path.write_text("".join(f"{cid}:{tok}\n" for cid, tok in TOKENS.items()))
    return path


@contextmanager
def _running_target(tmp: Path, *, with_tokens: bool) -> Iterator[Target]:
    """alice and bob joined and closed round 1; round 2 is open with both selected."""
    limits: dict[str, Any] = (
        {"tokens": str(_tokens_file(tmp)), "status_readers": "reader"}
        if with_tokens
        else {"max_clients": 40}  # open mode: every accepted Join of an invented id adds a client
    )
    config = server_config(
        tmp / "state",
        local_steps=STEPS,
        max_wait_s=0.05,  # GetTask long-polls end at once: the fuzzer is not a patient client
        rate_limit_rps=0.0,  # off: the fuzzer must reach validation, not the rate limit
        unauthenticated_rps=0.0,  # nor the per-address limit on its wrong tokens
        **limits,
    )
    with threaded_server(config) as server, grpc.insecure_channel(server.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        players = {cid: TOKENS[cid] if with_tokens else None for cid in ("alice", "bob")}
        for cid, token in players.items():
            fed.Join(join_request(cid, server.manifest), metadata=bearer(token), timeout=RPC_TIMEOUT_S)
        deltas = play_round(channel, players, 1, STEPS)
        fingerprint_1 = deltas["alice"].fingerprint
        request = federation_pb2.ReportFingerprintRequest(
            client_id="alice", model_version=1, fingerprint=fingerprint_1
        )
        assert fed.ReportFingerprint(
            request, metadata=bearer(players["alice"]), timeout=RPC_TIMEOUT_S
        ).in_sync
        coord = server.app.coordinator
        assert server.call(_open_round_id(coord)) == 2
        known = Known(server.manifest, (coord.fingerprint_at(0) or b"", fingerprint_1))
        target = Target(server, channel, known)
        target.baseline = target.state()
        yield target


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A server with a tokens file: identity comes from the token."""
    with _running_target(tmp_path_factory.mktemp("fuzz"), with_tokens=True) as target:
        yield target


@pytest.fixture(scope="module")
def open_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A server without tokens (development): the payload client_id is the identity."""
    with _running_target(tmp_path_factory.mktemp("fuzz-open"), with_tokens=False) as target:
        yield target


async def _open_round_id(coord: Any) -> int:
    record = coord.store.open_round_record()
    return record.round_id if record else 0


def _fuzz_rpc(target: Target, rpc: Rpc, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(request=message_strategy(rpc.request, target.known), metadata=METADATA)
    def one(request: Message, metadata: Any) -> None:
        code, details = target.call(rpc, request, metadata)
        target.check(rpc, code, details)

    one()
    target.fingerprint_intact()


def _fuzz_raw(target: Target, examples: int) -> None:
    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(case=raw_strategy(target.known), metadata=METADATA)
    def one(case: tuple[Rpc, bytes], metadata: Any) -> None:
        rpc, payload = case
        code, details = target.call(rpc, payload, metadata)
        target.check(rpc, code, details)

    one()
    target.fingerprint_intact()


def test_allowed_codes_cover_every_rpc() -> None:
    assert {rpc.name for rpc in RPCS} == set(ALLOWED)
    assert len(RPCS) == 13


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.name)
def test_fuzz_rpc(target: Target, rpc: Rpc) -> None:
    _fuzz_rpc(target, rpc, QUICK_EXAMPLES)


def test_fuzz_raw_bytes(target: Target) -> None:
    _fuzz_raw(target, 4 * QUICK_EXAMPLES)


FEDERATION_RPCS = [rpc for rpc in RPCS if rpc.service.endswith("FederationService")]


@pytest.mark.parametrize("rpc", FEDERATION_RPCS, ids=lambda rpc: rpc.name)
def test_fuzz_rpc_without_tokens(open_target: Target, rpc: Rpc) -> None:
    """Without tokens the payload's client_id is the identity: invented ids, huge and unprintable ones."""
    _fuzz_rpc(open_target, rpc, QUICK_EXAMPLES // 2)


@pytest.mark.slow
@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.name)
def test_fuzz_rpc_long(target: Target, rpc: Rpc) -> None:
    _fuzz_rpc(target, rpc, LONG_EXAMPLES)


@pytest.mark.slow
def test_fuzz_raw_bytes_long(target: Target) -> None:
    _fuzz_raw(target, 10 * LONG_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("rpc", FEDERATION_RPCS, ids=lambda rpc: rpc.name)
def test_fuzz_rpc_without_tokens_long(open_target: Target, rpc: Rpc) -> None:
    _fuzz_rpc(open_target, rpc, LONG_EXAMPLES)


# --- regressions: what the fuzzer found, pinned -------------------------------------------------------
RPC = {rpc.name: rpc for rpc in RPCS}
ALICE = bearer(TOKENS["alice"])


def _refused(target: Target, name: str, request: Message | bytes, metadata: Any, code: Code) -> str:
    """Call; assert the code and that nothing changed; returns the details."""
    before = target.state()
    got, details = target.call(RPC[name], request, metadata)
    assert got == code, (got, details)
    assert target.state() == before
    target.baseline = before
    return details


def _client_view(target: Target, client_id: str) -> status_pb2.ClientInfo:
    status = status_pb2_grpc.StatusServiceStub(target.channel)
    clients = status.ListClients(
        status_pb2.ListClientsRequest(), metadata=bearer(TOKENS["reader"]), timeout=RPC_TIMEOUT_S
    ).clients
    return next(c for c in clients if c.client_id == client_id)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("Join", b"\xff\xff\xff"),  # corrupt wire format
        ("SubmitUpdate", b"\x0a\x02\xc3\x28"),  # client_id: invalid UTF-8
        ("StreamRoundDeltas", b"\x0a\x05ab"),  # truncated string
        ("ListEvents", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),  # varint too long
    ],
)
def test_undecodable_request_is_invalid_argument(target: Target, name: str, payload: bytes) -> None:
    """Was UNKNOWN ("Unexpected DecodeError"): grpc decodes before any servicer code runs."""
    details = _refused(target, name, payload, ALICE, Code.INVALID_ARGUMENT)
    assert details.startswith("malformed request")


def test_unknown_activity_is_refused(target: Target) -> None:
    """Was UNKNOWN (KeyError), then read as idle: an activity outside ClientActivity would be shown as
    something the client never said; it is INVALID_ARGUMENT, and the shown activity stays."""
    before = _client_view(target, "alice").activity
    request = federation_pb2.HeartbeatRequest(client_id="alice", model_version=1, activity=77)
    _refused(target, "Heartbeat", request, ALICE, Code.INVALID_ARGUMENT)
    assert _client_view(target, "alice").activity == before


def test_integers_sqlite_cannot_store_are_refused(target: Target) -> None:
    """Was UNKNOWN (OverflowError from sqlite3): uint64 fields above 2^63 - 1."""
    join = join_request("alice", target.known.manifest, num_examples=2**64 - 1)
    assert "num_examples" in _refused(target, "Join", join, ALICE, Code.INVALID_ARGUMENT)
    join = join_request("alice", target.known.manifest, inference_peak_memory_bytes=2**63)
    _refused(target, "Join", join, ALICE, Code.INVALID_ARGUMENT)
    update = federation_pb2.SubmitUpdateRequest(
        client_id="alice", round_id=2, projected_grads=[0.5] * STEPS, peak_memory_bytes=2**64 - 1
    )
    _refused(target, "SubmitUpdate", update, ALICE, Code.INVALID_ARGUMENT)


def test_event_cursor_past_the_end_means_after_everything(target: Target) -> None:
    """Was UNKNOWN (OverflowError): a uint64 cursor above what SQLite holds."""
    status = status_pb2_grpc.StatusServiceStub(target.channel)
    request = status_pb2.ListEventsRequest(after_cursor=2**64 - 1, limit=2**32 - 1)
    page = status.ListEvents(request, metadata=bearer(TOKENS["reader"]), timeout=RPC_TIMEOUT_S)
    assert list(page.events) == [] and page.next_cursor == 2**64 - 1


def test_refused_fingerprint_report_leaves_the_shown_version(target: Target) -> None:
    """Was: the reported model_version was taken before the fingerprint was checked."""
    before = _client_view(target, "alice").model_version
    bad = federation_pb2.ReportFingerprintRequest(client_id="alice", model_version=999, fingerprint=b"x")
    _refused(target, "ReportFingerprint", bad, ALICE, Code.INVALID_ARGUMENT)
    unknown = federation_pb2.ReportFingerprintRequest(
        client_id="alice", model_version=999, fingerprint=target.known.fingerprints[1]
    )
    _refused(target, "ReportFingerprint", unknown, ALICE, Code.OUT_OF_RANGE)
    assert _client_view(target, "alice").model_version == before != 999


def test_delta_stream_of_a_client_that_never_joined_counts_nothing(target: Target) -> None:
    """Was: the request's bytes were counted before the coordinator refused the stream."""
    request = federation_pb2.StreamRoundDeltasRequest(client_id="carol", from_round=1)
    _refused(target, "StreamRoundDeltas", request, bearer(TOKENS["carol"]), Code.FAILED_PRECONDITION)


def test_delta_request_bytes_go_to_a_real_round(target: Target) -> None:
    """Was: bytes were booked to round `from_round` as sent, so a caller could create a traffic row
    (memory now, SQLite at the next close) for every made-up round id."""
    coord = target.server.app.coordinator
    for from_round in (10**9, 2**32 - 1):
        request = federation_pb2.StreamRoundDeltasRequest(client_id="alice", from_round=from_round)
        assert target.call(RPC["StreamRoundDeltas"], request, ALICE)[0] == Code.OK
    assert max(t.round_id for t in coord.traffic.records()) <= coord.rounds_completed + 1
    target.baseline = target.state()


def test_a_huge_claimed_id_is_not_echoed(target: Target) -> None:
    """Was: PERMISSION_DENIED repeated a 70 KB client_id, over the caller's metadata limit."""
    request = federation_pb2.HeartbeatRequest(client_id="x" * 70_000)
    details = _refused(target, "Heartbeat", request, ALICE, Code.PERMISSION_DENIED)
    assert len(details) < 300
