"""Who is calling: bearer tokens from a server-side tokens file, and the TLS / mTLS credentials.

Identity comes from the token in the `authorization: Bearer <token>` metadata, never from the
payload: a payload client_id that differs from the token's identity is PERMISSION_DENIED. Without a
tokens file (development) the payload client_id is trusted, and the server logs that at start.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from fedmezo.server.errors import ConfigError, PermissionDenied, Unauthenticated

__all__ = ["AUTH_METADATA_KEY", "Authenticator", "load_tokens", "server_credentials"]

logger = logging.getLogger("fedmezo.server.auth")

AUTH_METADATA_KEY = "authorization"
_BEARER = "bearer "

Metadata = Sequence[tuple[str, str | bytes]] | None


def load_tokens(path: str | Path) -> dict[str, str]:
    """Parse `client_id:token` lines (blank lines and # comments ignored) into token -> client_id."""
    tokens: dict[str, str] = {}
    seen_ids: set[str] = set()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read tokens file {path}: {exc}") from exc
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        client_id, sep, token = line.partition(":")
        client_id, token = client_id.strip(), token.strip()
        if not sep or not client_id or not token:
            raise ConfigError(f"{path}:{number}: expected client_id:token")
        if token in tokens or client_id in seen_ids:
            raise ConfigError(f"{path}:{number}: duplicate client id or token")
        tokens[token] = client_id
        seen_ids.add(client_id)
    if not tokens:
        raise ConfigError(f"tokens file {path} holds no tokens")
    return tokens


def _bearer(metadata: Metadata) -> str | None:
    for key, value in metadata or ():
        if key.lower() == AUTH_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            if text.lower().startswith(_BEARER):
                return text[len(_BEARER) :].strip()
    return None


class Authenticator:
    """Maps request metadata to a client identity. `tokens=None` means no authentication (dev)."""

    def __init__(self, tokens: Mapping[str, str] | None) -> None:
        self._tokens = dict(tokens) if tokens is not None else None

    @property
    def enabled(self) -> bool:
        return self._tokens is not None

    def _lookup(self, token: str) -> str | None:
        assert self._tokens is not None
        found = None
        for known, client_id in self._tokens.items():  # constant time in the token's content
            if hmac.compare_digest(known.encode(), token.encode()):
                found = client_id
        return found

    def identify(self, metadata: Metadata, claimed_id: str) -> str:
        """The caller's client id; raises Unauthenticated / PermissionDenied."""
        if self._tokens is None:
            if not claimed_id:
                raise Unauthenticated("client_id is required")
            return claimed_id
        token = _bearer(metadata)
        if token is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        client_id = self._lookup(token)
        if client_id is None:
            raise Unauthenticated("unknown token")
        if claimed_id and claimed_id != client_id:
            raise PermissionDenied(f"token belongs to {client_id!r}, not {claimed_id!r}")
        return client_id

    def check_reader(self, metadata: Metadata) -> None:
        """Status readers need any valid token when authentication is on."""
        if self._tokens is None:
            return
        token = _bearer(metadata)
        if token is None or self._lookup(token) is None:
            raise Unauthenticated("status requires a valid bearer token")


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS credentials; with client_ca, clients must present a certificate it signed (mTLS)."""
    try:
        chain = Path(cert).read_bytes()
        private_key = Path(key).read_bytes()
        root = Path(client_ca).read_bytes() if client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS material: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=root, require_client_auth=bool(client_ca)
    )
