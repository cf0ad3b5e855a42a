"""One exception tree for the protocol, shared by server, client and simulation (no transport here).

FedmezoError
├── ConfigError                  bad configuration (startup; never crosses the wire)
├── StoreError                   the state store failed (sqlite3.Error is translated in store code)
├── SyncFailed                   a checkpoint or round delta did not reproduce the expected fingerprint
├── Stopped                      a stop was requested (SIGINT/SIGTERM) while work was in progress
└── Refusal                      a request the protocol refuses; `reason` is its stable wire name,
    │                            derived from its RefusalReason value (proto/fedmezo/v1/common.proto)
    ├── Unauthenticated          missing or unknown bearer token
    ├── PermissionDenied         client_id in the payload is not the token's identity
    ├── NotJoined                the client must Join first
    ├── IncompatibleClient       manifest hash or rng spec differs from the server's
    ├── RoundClosed              update for a round that is already closed (late)
    ├── NotSelected              the client has no task in that round
    ├── WrongRound               the round is not open (unknown or future)
    ├── InvalidUpdate            wrong number of scalars, NaN/inf, malformed fingerprint
    ├── InvalidRequest           a field out of its range: over-long text, an integer SQLite cannot hold
    ├── ConflictingUpdate        a different update for a round the client already answered
    ├── NoCheckpoint             no checkpoint to download
    ├── Diverged                 an update trained from a θ whose fingerprint is not the server's
    └── LimitExceeded            a per-client limit that keeps one caller from exhausting the server
        ├── RateLimited          more requests than the client's token bucket allows
        ├── TooManyStreams       too many long-polls / streams open at once
        └── TooManyClients       a new client id beyond max_clients

The server maps these onto gRPC status codes in one table (`fedmezo.server.status_codes`). Each
Refusal subclass names its RefusalReason value (`class RoundClosed(Refusal, reason_value=...)`); its
`reason` string ("round_closed") is derived from it (`fedmezo.fl.vocabulary.reason_name`), so the enum
is the one list of reasons.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fedmezo.fl.vocabulary import reason_name
from fedmezo.v1 import common_pb2

__all__ = [
    "ConfigError",
    "ConflictingUpdate",
    "Diverged",
    "FedmezoError",
    "IncompatibleClient",
    "InvalidRequest",
    "InvalidUpdate",
    "LimitExceeded",
    "NoCheckpoint",
    "NotJoined",
    "NotSelected",
    "PermissionDenied",
    "RateLimited",
    "Refusal",
    "RoundClosed",
    "Stopped",
    "StoreError",
    "SyncFailed",
    "TooManyClients",
    "TooManyStreams",
    "Unauthenticated",
    "WrongRound",
]


class FedmezoError(Exception):
    """Base of every error fedmezo raises on purpose."""


class ConfigError(FedmezoError):
    """Invalid configuration, reported at load time."""


class StoreError(FedmezoError):
    """The state store failed; the original sqlite3.Error is the __cause__."""


class SyncFailed(FedmezoError):
    """A downloaded checkpoint or a replayed round did not reproduce the announced bytes."""


class Stopped(FedmezoError):
    """Work was abandoned because the process is shutting down."""


class Refusal(FedmezoError):
    """A refused request. `reason_value` is its RefusalReason; `reason`, the value's stable snake_case
    name, is sent as `fedmezo-reason` metadata. A subclass must name its value."""

    reason_value: ClassVar[common_pb2.RefusalReason] = common_pb2.REFUSAL_REASON_UNSPECIFIED
    reason: ClassVar[str] = reason_name(common_pb2.REFUSAL_REASON_UNSPECIFIED)

    def __init_subclass__(cls, *, reason_value: common_pb2.RefusalReason, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.reason_value = reason_value
        cls.reason = reason_name(reason_value)


class Unauthenticated(Refusal, reason_value=common_pb2.REFUSAL_REASON_UNAUTHENTICATED):
    """Missing or unknown bearer token."""


class PermissionDenied(Refusal, reason_value=common_pb2.REFUSAL_REASON_PERMISSION_DENIED):
    """The client_id in the payload is not the token's identity."""


class NotJoined(Refusal, reason_value=common_pb2.REFUSAL_REASON_NOT_JOINED):
    """The client must Join first."""


class IncompatibleClient(Refusal, reason_value=common_pb2.REFUSAL_REASON_INCOMPATIBLE_CLIENT):
    """Manifest hash or rng spec differs from the server's."""


class RoundClosed(Refusal, reason_value=common_pb2.REFUSAL_REASON_ROUND_CLOSED):
    """An update for a round that is already closed (late)."""


class NotSelected(Refusal, reason_value=common_pb2.REFUSAL_REASON_NOT_SELECTED):
    """The client has no task in that round."""


class WrongRound(Refusal, reason_value=common_pb2.REFUSAL_REASON_WRONG_ROUND):
    """The round is not open (unknown or future)."""


class InvalidUpdate(Refusal, reason_value=common_pb2.REFUSAL_REASON_INVALID_UPDATE):
    """Wrong number of scalars, NaN/inf, malformed fingerprint."""


class InvalidRequest(Refusal, reason_value=common_pb2.REFUSAL_REASON_INVALID_REQUEST):
    """A field out of its range: over-long text, an integer SQLite cannot hold."""


class ConflictingUpdate(Refusal, reason_value=common_pb2.REFUSAL_REASON_CONFLICTING_UPDATE):
    """A different update for a round the client already answered."""


class NoCheckpoint(Refusal, reason_value=common_pb2.REFUSAL_REASON_NO_CHECKPOINT):
    """No checkpoint to download."""


class Diverged(Refusal, reason_value=common_pb2.REFUSAL_REASON_DIVERGED):
    """An update whose base fingerprint is not the server's at round_id - 1: trained from a wrong θ."""


class LimitExceeded(Refusal, reason_value=common_pb2.REFUSAL_REASON_LIMIT_EXCEEDED):
    """A per-client limit that keeps one caller from exhausting the server."""


class RateLimited(LimitExceeded, reason_value=common_pb2.REFUSAL_REASON_RATE_LIMITED):
    """More requests than the client's token bucket allows."""


class TooManyStreams(LimitExceeded, reason_value=common_pb2.REFUSAL_REASON_TOO_MANY_STREAMS):
    """Too many long-polls / streams open at once."""


class TooManyClients(LimitExceeded, reason_value=common_pb2.REFUSAL_REASON_TOO_MANY_CLIENTS):
    """A new client id beyond max_clients."""
