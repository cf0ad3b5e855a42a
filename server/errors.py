"""One exception tree for the server, and the ONE table that maps it to gRPC status codes.

FedmezoServerError
├── ConfigError                  bad configuration (startup; never crosses the wire)
├── StoreError                   the state store failed (sqlite3.Error is translated in store code)
└── RpcError                     a request the server refuses; carries its gRPC code and a reason
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
    └── LimitExceeded            a per-client limit that keeps one caller from exhausting the server
        ├── RateLimited          more requests than the client's token bucket allows
        ├── TooManyStreams       too many long-polls / streams open at once
        └── TooManyClients       a new client id beyond max_clients
"""

from __future__ import annotations

import grpc

__all__ = [
    "ConfigError",
    "ConflictingUpdate",
    "FedmezoServerError",
    "IncompatibleClient",
    "InvalidRequest",
    "InvalidUpdate",
    "LimitExceeded",
    "NoCheckpoint",
    "NotJoined",
    "NotSelected",
    "PermissionDenied",
    "RateLimited",
    "RoundClosed",
    "RpcError",
    "StoreError",
    "TooManyClients",
    "TooManyStreams",
    "Unauthenticated",
    "WrongRound",
    "grpc_code",
]


class FedmezoServerError(Exception):
    """Base of every error the server raises on purpose."""


class ConfigError(FedmezoServerError):
    """Invalid configuration, reported at load time."""


class StoreError(FedmezoServerError):
    """The state store failed; the original sqlite3.Error is the __cause__."""


class RpcError(FedmezoServerError):
    """A refused request. `reason` is a stable snake_case name sent as `fedmezo-reason` metadata."""

    reason = "refused"


class Unauthenticated(RpcError):
    reason = "unauthenticated"


class PermissionDenied(RpcError):
    reason = "permission_denied"


class NotJoined(RpcError):
    reason = "not_joined"


class IncompatibleClient(RpcError):
    reason = "incompatible_client"


class RoundClosed(RpcError):
    reason = "round_closed"


class NotSelected(RpcError):
    reason = "not_selected"


class WrongRound(RpcError):
    reason = "wrong_round"


class InvalidUpdate(RpcError):
    reason = "invalid_update"


class InvalidRequest(RpcError):
    reason = "invalid_request"


class ConflictingUpdate(RpcError):
    reason = "conflicting_update"


class NoCheckpoint(RpcError):
    reason = "no_checkpoint"


class LimitExceeded(RpcError):
    reason = "limit_exceeded"


class RateLimited(LimitExceeded):
    reason = "rate_limited"


class TooManyStreams(LimitExceeded):
    reason = "too_many_streams"


class TooManyClients(LimitExceeded):
    reason = "too_many_clients"


# The single place where our errors become gRPC codes (most specific class first).
_GRPC_CODES: tuple[tuple[type[RpcError], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (NotJoined, grpc.StatusCode.FAILED_PRECONDITION),
    (IncompatibleClient, grpc.StatusCode.FAILED_PRECONDITION),
    (RoundClosed, grpc.StatusCode.FAILED_PRECONDITION),
    (NotSelected, grpc.StatusCode.FAILED_PRECONDITION),
    (WrongRound, grpc.StatusCode.OUT_OF_RANGE),
    (InvalidUpdate, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ConflictingUpdate, grpc.StatusCode.ALREADY_EXISTS),
    (NoCheckpoint, grpc.StatusCode.NOT_FOUND),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def grpc_code(error: RpcError) -> grpc.StatusCode:
    """The status code for a refused request (FAILED_PRECONDITION for an unlisted subclass)."""
    for cls, code in _GRPC_CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION
