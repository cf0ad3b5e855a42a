"""Who is calling: bearer tokens from a server-side tokens file, and the TLS / mTLS credentials.

Identity comes from the token in the `authorization: Bearer <token>` metadata, never from the
payload: a payload client_id that differs from the token's identity (an empty one too) is
PERMISSION_DENIED. Without a tokens file (development) the payload client_id is trusted, and the
server logs that at start.

Roles: a tokens-file line is `client_id:token` (a client) or `client_id:token:role`, role one of
client, reader, admin (`Role`). Only clients may use the federation service; readers and admins read
every status view. `--status-readers` lists identities that read the per-client views; a listed one
whose line names no role is a reader.

Revocation: the tokens file is re-read when it changes (its mtime, size or inode, checked every
TOKENS_CHECK_S by the server, and at most that often by calls) and on SIGHUP; a removed line is a revoked
token from then on. A reload wakes every long-poll and stream, which re-checks its caller's token and
ends with UNAUTHENTICATED when it no longer passes.
A file that no longer parses is not applied: the previous tokens stay, and the error is logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path

import grpc

from fedmezo.fl.errors import ConfigError, InvalidRequest, PermissionDenied, Unauthenticated
from fedmezo.fl.vocabulary import MAX_CLIENT_ID_CHARS

__all__ = [
    "AUTH_METADATA_KEY",
    "TOKENS_CHECK_S",
    "Authenticator",
    "Role",
    "load_tokens",
    "read_tokens",
    "server_credentials",
]

logger = logging.getLogger("fedmezo.server.auth")

AUTH_METADATA_KEY = "authorization"
TOKENS_CHECK_S = 1.0  # a revoked token stops working at most this long after the file changed
_BEARER = "bearer "

Metadata = Sequence[tuple[str, str | bytes]] | None


class Role(StrEnum):
    """What a token may do; the third field of its tokens-file line (`client_id:token:role`)."""

    CLIENT = "client"  # trains: the federation service, plus the run's config and totals (the default)
    READER = "reader"  # reads every status view (a dashboard, `fedmezo status`); cannot train
    ADMIN = "admin"  # an operator: everything a reader may (no admin-only call exists yet); cannot train


_READING_ROLES = (Role.READER, Role.ADMIN)


def read_tokens(path: str | Path) -> tuple[dict[str, str], dict[str, Role]]:
    """Parse `client_id:token` and `client_id:token:role` lines (blank lines and # comments ignored)
    into token -> client_id, and client_id -> role for the lines that name one. A token holds no ':'."""
    tokens: dict[str, str] = {}
    roles: dict[str, Role] = {}
    seen_ids: set[str] = set()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read tokens file {path}: {exc}") from exc
    known_roles = ", ".join(r.value for r in Role)
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(":")]
        if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
            raise ConfigError(f"{path}:{number}: expected client_id:token or client_id:token:role")
        client_id, token = fields[0], fields[1]
        if not client_id.isprintable():  # ids reach the status views, the events and the logs
            raise ConfigError(f"{path}:{number}: the client id must be printable (no control characters)")
        if token in tokens or client_id in seen_ids:
            raise ConfigError(f"{path}:{number}: duplicate client id or token")
        if len(fields) == 3:
            try:
                roles[client_id] = Role(fields[2])
            except ValueError:
                raise ConfigError(f"{path}:{number}: unknown role (one of {known_roles})") from None
        tokens[token] = client_id
        seen_ids.add(client_id)
    if not tokens:
        raise ConfigError(f"tokens file {path} holds no tokens")
    return tokens, roles


def load_tokens(path: str | Path) -> dict[str, str]:
    """The tokens file as token -> client_id (roles: `read_tokens`)."""
    return read_tokens(path)[0]


def _bearer(metadata: Metadata) -> str | None:
    for key, value in metadata or ():
        if key.lower() == AUTH_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            if text.lower().startswith(_BEARER):
                return text[len(_BEARER) :].strip()
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _by_digest(tokens: Mapping[str, str]) -> dict[bytes, str]:
    return {_digest(token): client_id for token, client_id in tokens.items()}


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Authenticator:
    """Maps request metadata to a client identity. `tokens=None` means no authentication (dev).

    `roles`: client_id -> Role for the tokens whose line names one. `path`: the tokens file, re-read
    when it changes (see the module docstring). `readers` (--status-readers): identities that may read
    the per-client status views, and that hold the reader role unless their line names another.

    Per-client views (every client's losses, devices, events) are open to readers and admins, to the
    listed `readers`, and to every token holder only while no reader exists at all (no `readers`, no
    reader or admin line: the development default). Only client tokens may use the federation service.
    """

    def __init__(
        self,
        tokens: Mapping[str, str] | None,
        *,
        roles: Mapping[str, Role] | None = None,
        path: str | Path | None = None,
        readers: frozenset[str] | None = None,
        check_every_s: float = TOKENS_CHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = dict(tokens) if tokens is not None else None
        self._by_digest = _by_digest(self._tokens or {})
        self._roles = dict(roles or {})
        self._path = Path(path) if path else None
        self._readers = readers
        self._check_every_s = check_every_s
        self._clock = clock
        self._stamp = _stamp(self._path) if self._path else None
        self._next_check = clock() + check_every_s
        self._generation = 0
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def from_file(cls, path: str | Path, *, readers: frozenset[str] | None = None) -> Authenticator:
        """Tokens from `path`, watched for changes."""
        tokens, roles = read_tokens(path)
        return cls(tokens, roles=roles, path=path, readers=readers)

    def role(self, client_id: str) -> Role:
        """A token identity's role: its line's, else reader when --status-readers lists it, else client."""
        explicit = self._roles.get(client_id)
        if explicit is not None:
            return explicit
        return Role.READER if self._readers is not None and client_id in self._readers else Role.CLIENT

    def _may_read_per_client(self, client_id: str) -> bool:
        if self.role(client_id) in _READING_ROLES:
            return True
        if self._readers is not None:
            return client_id in self._readers
        return not any(role in _READING_ROLES for role in self._roles.values())

    @property
    def enabled(self) -> bool:
        return self._tokens is not None

    @property
    def generation(self) -> int:
        """Bumped whenever new tokens are applied: open streams re-check their caller then."""
        return self._generation

    @property
    def watches_file(self) -> bool:
        """Whether there is a tokens file to watch for changes."""
        return self._path is not None and self._tokens is not None

    def on_reload(self, listener: Callable[[], None]) -> None:
        """Call `listener` after new tokens are applied (the server wakes its waiting calls with it)."""
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Re-read the tokens file now (SIGHUP); returns whether new tokens were applied."""
        if self._path is None or self._tokens is None:
            return False
        self._stamp = _stamp(self._path)
        try:
            tokens, roles = read_tokens(self._path)
        except ConfigError as exc:
            logger.error(
                "tokens file not applied, the previous %d tokens stay valid: %s", len(self._tokens), exc
            )
            return False
        removed = len(self._tokens.keys() - tokens.keys())
        added = len(tokens.keys() - self._tokens.keys())
        self._tokens, self._roles = tokens, roles
        self._by_digest = _by_digest(tokens)
        self._generation += 1
        logger.info("tokens file reloaded: %d tokens (%d revoked, %d new)", len(tokens), removed, added)
        for listener in self._listeners:
            listener()
        return True

    def refresh(self) -> None:
        """Reload the tokens file if it changed (checked at most every check_every_s; cheap to call)."""
        if self._path is None:
            return
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._check_every_s
        if _stamp(self._path) != self._stamp:
            self.reload()

    def _lookup(self, token: str) -> str | None:
        """The token's identity, by the SHA-256 of the token: O(1) whatever the number of tokens (a flood
        of wrong tokens costs a hash each, not a pass over the file), and what a lookup's timing could
        reveal is about a digest, from which no token can be worked out."""
        return self._by_digest.get(_digest(token))

    def identify(self, metadata: Metadata, claimed_id: str) -> str:
        """The caller's client id; raises Unauthenticated / PermissionDenied (the payload's client_id,
        empty included, is not the token's identity; InvalidRequest for a payload id that cannot be a
        name, without tokens)."""
        self.refresh()
        if self._tokens is None:
            if not claimed_id:
                raise Unauthenticated("client_id is required")
            if len(claimed_id) > MAX_CLIENT_ID_CHARS or not claimed_id.isprintable():
                raise InvalidRequest(f"client_id must be 1..{MAX_CLIENT_ID_CHARS} printable characters")
            return claimed_id
        token = _bearer(metadata)
        if token is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        client_id = self._lookup(token)
        if client_id is None:
            raise Unauthenticated("unknown token")
        role = self.role(client_id)
        if role != Role.CLIENT:
            raise PermissionDenied(f"{client_id!r} holds a {role} token: it may not take part in training")
        if not claimed_id:  # the proto: client_id must equal the token's identity, an empty one does not
            raise PermissionDenied("client_id is required: it must be the identity of the token")
        if claimed_id != client_id:
            shown = (
                claimed_id
                if len(claimed_id) <= MAX_CLIENT_ID_CHARS
                else claimed_id[:MAX_CLIENT_ID_CHARS] + "..."
            )
            raise PermissionDenied(f"token belongs to {client_id!r}, not {shown!r}")  # never echo a huge id
        return client_id

    def check_reader(self, metadata: Metadata, *, per_client: bool = False) -> str:
        """A status reader's identity ("" without tokens). Any valid token reads the run's config
        and totals; `per_client` views (other clients' losses, devices, events) need a reader (see the
        class docstring)."""
        self.refresh()
        if self._tokens is None:
            return ""
        token = _bearer(metadata)
        reader = self._lookup(token) if token is not None else None
        if reader is None:
            raise Unauthenticated("status requires a valid bearer token")
        if per_client and not self._may_read_per_client(reader):
            raise PermissionDenied(f"{reader!r} may not read other clients' data (a client token)")
        return reader


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
