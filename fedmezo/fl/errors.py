"""One exception tree for the protocol, shared by server, client and simulation (no transport here).

FedmezoError
├── ConfigError                  bad configuration (startup; never crosses the wire)
├── StoreError                   the state store failed (sqlite3.Error is translated in store code)
├── SyncFailed                   a checkpoint or round delta did not reproduce the expected fingerprint
├── Stopped                      a stop was requested (SIGINT/SIGTERM) while work was in progress
└── Refusal                      a request the protocol refuses; `reason` is its stable wire name
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

The server maps these onto gRPC status codes in one table (`fedmezo.server.status_codes`).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictingUpdate",
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
    """A refused request. `reason` is a stable snake_case name sent as `fedmezo-reason` metadata."""

    reason = "refused"


class Unauthenticated(Refusal):
    reason = "unauthenticated"


class PermissionDenied(Refusal):
    reason = "permission_denied"


class NotJoined(Refusal):
    reason = "not_joined"


class IncompatibleClient(Refusal):
    reason = "incompatible_client"


class RoundClosed(Refusal):
    reason = "round_closed"


class NotSelected(Refusal):
    reason = "not_selected"


class WrongRound(Refusal):
    reason = "wrong_round"


class InvalidUpdate(Refusal):
    reason = "invalid_update"


class InvalidRequest(Refusal):
    reason = "invalid_request"


class ConflictingUpdate(Refusal):
    reason = "conflicting_update"


class NoCheckpoint(Refusal):
    reason = "no_checkpoint"


class LimitExceeded(Refusal):
    reason = "limit_exceeded"


class RateLimited(LimitExceeded):
    reason = "rate_limited"


class TooManyStreams(LimitExceeded):
    reason = "too_many_streams"


class TooManyClients(LimitExceeded):
    reason = "too_many_clients"
