"""The model's versions as the server knows them: the fingerprint after every closed round, and the
verdict on a client's fingerprint report (in sync, or a mismatch worth one event per client and version).
"""

from __future__ import annotations

from fedmezo.fl import errors
from fedmezo.fl.vocabulary import FINGERPRINT_BYTES

__all__ = ["Versions"]


class Versions:
    def __init__(self, fingerprints: dict[int, bytes] | None = None) -> None:
        self._fingerprints: dict[int, bytes] = dict(fingerprints or {})  # version → fingerprint; 0 = θ_0
        self._mismatch_reported: dict[str, int] = {}  # client → newest version it was told about

    @property
    def rounds_completed(self) -> int:
        return max((r for r in self._fingerprints if r > 0), default=0)

    def fingerprint_at(self, version: int) -> bytes | None:
        return self._fingerprints.get(version)

    def closed(self, version: int, fingerprint: bytes) -> None:
        self._fingerprints[version] = fingerprint

    def matches(self, version: int, fingerprint: bytes) -> bool:
        """Whether `fingerprint` is ours at `version`; a malformed one or an unknown version is refused."""
        if len(fingerprint) != FINGERPRINT_BYTES:
            got = len(fingerprint)
            raise errors.InvalidUpdate(f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {got}")
        expected = self._fingerprints.get(version)
        if expected is None:
            done = self.rounds_completed
            raise errors.WrongRound(f"version {version} does not exist (rounds completed: {done})")
        return fingerprint == expected

    def judge(self, client_id: str, version: int, fingerprint: bytes) -> tuple[bool, bool]:
        """(in sync, worth an event): one event (and warning) per client for a newer mismatching
        version than its last, so a client cannot fill the event log and the server log with reports."""
        in_sync = self.matches(version, fingerprint)
        tell = not in_sync and version > self._mismatch_reported.get(client_id, -1)
        if tell:
            self._mismatch_reported[client_id] = version
        return in_sync, tell
