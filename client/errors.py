"""One exception tree for the client daemon. `grpc.RpcError` is translated in `connection.py` only.

ClientError
├── RpcFailed            the server (or the network) refused a call; `code` and `reason` say why
│   ├── Unavailable      UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED: transient, retried with backoff
│   ├── AuthFailed       UNAUTHENTICATED / PERMISSION_DENIED: wrong token or identity; fatal
│   ├── Incompatible     manifest hash or rng spec differs from the server's; fatal
│   └── Refused          any other code (round closed, not selected, ...): the daemon decides per reason
(and from the protocol core, fedmezo.fl.errors, shared with server and simulation:)
ConfigError              invalid configuration (flags, TOML, env); reported before anything starts
SyncFailed               a checkpoint or replayed delta did not verify (sha256 / fingerprint)
Stopped                  a stop was requested (SIGINT/SIGTERM) while work was in progress
"""

from __future__ import annotations

from fedmezo.fl.errors import ConfigError, Stopped, SyncFailed

__all__ = [
    "AuthFailed",
    "ClientError",
    "ConfigError",
    "Incompatible",
    "Refused",
    "RpcFailed",
    "Stopped",
    "SyncFailed",
    "Unavailable",
]


class ClientError(Exception):
    """Base of every error the client raises on purpose."""


class RpcFailed(ClientError):
    """A failed RPC. `code` is the gRPC status name, `reason` the server's `fedmezo-reason` metadata."""

    def __init__(self, code: str, reason: str = "", details: str = "") -> None:
        super().__init__(f"{code}{f' ({reason})' if reason else ''}: {details}")
        self.code = code
        self.reason = reason
        self.details = details


class Unavailable(RpcFailed):
    """Transient: the server is down, restarting, or too slow. Retried forever with backoff."""


class AuthFailed(RpcFailed):
    """The token is missing/unknown, or the client id is not the token's identity."""


class Incompatible(RpcFailed):
    """This client's model manifest or rng spec differs from the server's: it can never sync."""


class Refused(RpcFailed):
    """A final answer about this request only (e.g. `round_closed`); the daemon carries on."""
