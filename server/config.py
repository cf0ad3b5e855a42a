"""Server configuration: the run (`RunConfig`) plus this process; flags > `FEDMEZO_*` env > TOML.

Every field documents its meaning, unit and why its default; `validate` rejects invalid combinations
at load time so a bad run never starts. Flags, TOML keys (`[server]` table or top level) and
environment names are derived from the fields by `fedmezo.settings`, so they can never drift apart.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fedmezo import settings
from fedmezo.fl.config import MAX_LENGTH, RunConfig
from fedmezo.server.signals import WAKE_CHUNK
from fedmezo.settings import ENV_PREFIX, setting

__all__ = [
    "ENV_PREFIX",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_TIMEOUT_S",
    "MAX_LENGTH",
    "ServerConfig",
    "add_arguments",
    "load_config",
]

logger = logging.getLogger("fedmezo.server.config")

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TIMEOUT_S = 30.0
RATE_LIMIT_RPS = 50.0
RATE_LIMIT_BURST = 500  # a client's start-up catch-up (a delta stream, a report, a few polls) fits easily
MAX_STREAMS_PER_CLIENT = 8
MAX_CLIENTS = 10_000
# Requests that fail authentication, per peer address: a client with a bad token gives up at once
# (UNAUTHENTICATED is final), so a few dozen are plenty; a token guesser gets one a second.
UNAUTHENTICATED_RPS = 1.0
UNAUTHENTICATED_BURST = 60
MAX_STREAMS_PER_CONNECTION = 128  # a client holds about 3 calls at once; a proxy fanning clients in, more
_POSITIVE = ("heartbeat_interval_s", "heartbeat_timeout_s", "max_wait_s")
_AT_LEAST_ONE = (
    "rate_limit_burst",
    "max_streams_per_client",
    "max_clients",
    "unauthenticated_burst",
    "max_streams_per_connection",
)


@dataclass(frozen=True)
class ServerConfig(RunConfig):
    """Everything `fedmezo server` needs: the run (frozen into the state dir) and this process."""

    config_name: ClassVar[str] = "server"

    host: str = setting("[::]", "address to listen on")
    port: int = setting(50051, "TCP port to listen on (0 = any free port, reported in the log)")
    state_dir: str = setting("fedmezo-state", "directory holding state.sqlite and checkpoints/")
    device: str = setting("cpu", "device of the server's canonical replica (cpu is enough: it only adds)")
    tokens: str = setting(
        "",
        "tokens file, one client_id:token[:role] per line (role: client, reader, admin; default client); "
        "empty = no client authentication",
    )
    insecure: bool = setting(
        False, "serve plaintext (no TLS); required explicitly when no certificate is set"
    )
    tls_cert: str = setting("", "PEM server certificate chain")
    tls_key: str = setting("", "PEM server private key", secret=True)
    tls_client_ca: str = setting("", "PEM CA that signs client certificates; set = mutual TLS required")
    heartbeat_interval_s: float = setting(
        HEARTBEAT_INTERVAL_S, "how often clients should heartbeat (seconds)"
    )
    heartbeat_timeout_s: float = setting(HEARTBEAT_TIMEOUT_S, "silence after which a client is offline (s)")
    max_wait_s: float = setting(
        30.0, "cap of one GetTask long-poll (seconds); below typical proxy idle limits"
    )
    wake_chunk: int = setting(
        WAKE_CHUNK,
        "long-polls woken per step when a round opens or closes, each step followed by a rest as long as "
        "it took its calls to end, so that calls arriving meanwhile do not queue behind thousands of "
        "answers; 0 = wake them all at once",
    )
    # --- abuse limits, per client identity: a well-behaved client never comes near them ---
    rate_limit_rps: float = setting(
        RATE_LIMIT_RPS,
        "sustained requests per second one client (or status reader) may make, a token bucket; "
        "0 = off. A client makes about 5 per round plus a heartbeat every few seconds",
    )
    rate_limit_burst: int = setting(
        RATE_LIMIT_BURST, "requests one client may make at once before the sustained rate applies"
    )
    max_streams_per_client: int = setting(
        MAX_STREAMS_PER_CLIENT,
        "GetTask long-polls and streams one client may hold open at once; a client uses 2",
    )
    max_clients: int = setting(
        MAX_CLIENTS, "distinct client ids that may join; bounds what a flood of invented ids can store"
    )
    # --- per peer address and per connection: before (or without) an identity ---
    unauthenticated_rps: float = setting(
        UNAUTHENTICATED_RPS,
        "sustained requests per second that fail authentication (missing, wrong or revoked token) one "
        "peer address may make before it is answered RESOURCE_EXHAUSTED, a token bucket; 0 = off",
    )
    unauthenticated_burst: int = setting(
        UNAUTHENTICATED_BURST, "requests failing authentication one peer address may make at once"
    )
    max_streams_per_connection: int = setting(
        MAX_STREAMS_PER_CONNECTION,
        "calls one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS; more wait "
        "in the client); raise it behind a proxy that carries many clients on one connection",
    )
    status_publish_s: float = setting(
        2.0,
        "seconds between publications of who is online and the byte counts to the state database, "
        "for `fedmezo status-server` (a read replica); 0 = off (the replica then shows bytes as of "
        "the last round close and nobody online)",
    )
    status_readers: str = setting(
        "",
        "comma-separated token identities that may list rounds, clients and events (every client's "
        "losses and devices); a listed identity whose tokens-file line names no role is a reader and "
        "cannot train. Empty = readers and admins (the tokens file's roles), or every token holder "
        "while the file names none. Run config and status stay open to all tokens",
    )

    def problems(self) -> list[str]:
        """The run's problems (RunConfig) plus this process's."""
        problems = super().problems()
        for name in _POSITIVE:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a finite number > 0")
        for name in ("rate_limit_rps", "unauthenticated_rps", "status_publish_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number >= 0 (0 = off)")
        if self.wake_chunk < 0:
            problems.append("wake_chunk must be >= 0 (0 = wake every long-poll at once)")
        problems += [f"{name} must be >= 1" for name in _AT_LEAST_ONE if getattr(self, name) < 1]
        if self.status_readers and not self.tokens:
            problems.append("status_readers names token identities: it needs a tokens file")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            problems.append("heartbeat_timeout_s must exceed heartbeat_interval_s")
        if not 0 <= self.port < 65536:
            problems.append("port must be in 0..65535 (0 = any free port)")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            problems.append("tls_client_ca (mTLS) needs tls_cert and tls_key")
        if self.insecure and self.tls_cert:
            problems.append("insecure and tls_cert contradict each other")
        if not self.insecure and not self.tls_cert:
            problems.append("no TLS certificate: pass tls_cert/tls_key, or --insecure for plaintext")
        return problems

    def redacted(self) -> dict[str, Any]:
        """The effective config for logs, secrets replaced by '***'."""
        return settings.redacted(self)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def status_reader_ids(self) -> frozenset[str] | None:
        """Identities allowed to read per-client status views; None = every token holder."""
        ids = frozenset(x.strip() for x in self.status_readers.split(",") if x.strip())
        return ids or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field (`--local-steps`); only the flags given override the env and the file."""
    group = parser.add_argument_group("server configuration (flags > FEDMEZO_* env > --config TOML)")
    settings.add_config_argument(group, "[server] table or top level")
    settings.add_arguments(group, ServerConfig)


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    toml_path: str | Path | None = None,
) -> ServerConfig:
    """Merge TOML < env < flags into a validated ServerConfig and log it (secrets redacted)."""
    config = settings.load(ServerConfig, "server", flags=flags, env=env, toml_path=toml_path).validate()
    logger.info("effective config: %s", config.redacted())
    return config
