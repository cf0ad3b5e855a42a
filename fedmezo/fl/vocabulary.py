"""The protocol's vocabulary, read from the proto (proto/fedmezo/v1/common.proto), never typed again.

- The limits every peer enforces: the `ProtocolLimits` custom file option of common.proto, read from
  the generated descriptor (FINGERPRINT_BYTES, MAX_MESSAGE_BYTES, MAX_TEXT_CHARS, MAX_STORED_INT,
  MAX_EVENT_CURSOR, MAX_CLIENT_ID_CHARS, MAX_DELTAS_PER_TASK).
- The refusal reasons: the `RefusalReason` enum. On the wire (trailing metadata REASON_METADATA_KEY) a
  reason is the value's name without its prefix, in lower case (`reason_name`); each
  `fedmezo.fl.errors.Refusal` subclass names its value, and the reasons no Refusal carries are below.

Server, client, simulation and dashboard import these names from here (`fedmezo.fl.wire` re-exports
the limits and the key). This module imports only the generated stubs, so the dashboard can use it
without loading torch.
"""

from __future__ import annotations

from typing import Any, Final

from fedmezo.v1 import common_pb2

__all__ = [
    "BAD_TASK_STATUS",
    "CHECKPOINT_GAP",
    "CHECKPOINT_TRUNCATED",
    "FINGERPRINT_BYTES",
    "INTERNAL",
    "MALFORMED_REQUEST",
    "MAX_CLIENT_ID_CHARS",
    "MAX_DELTAS_PER_TASK",
    "MAX_EVENT_CURSOR",
    "MAX_MESSAGE_BYTES",
    "MAX_STORED_INT",
    "MAX_TEXT_CHARS",
    "NEW_RUN",
    "REASON_METADATA_KEY",
    "STORE_FAILED",
    "reason_name",
]

# The trailing metadata key of a refused RPC (documented in common.proto and federation.proto).
REASON_METADATA_KEY: Final = "fedmezo-reason"

_EXTENSION: Any = common_pb2.ProtocolLimits.protocol_limits  # typed as a plain FieldDescriptor by the stub
_LIMITS: common_pb2.ProtocolLimits = common_pb2.DESCRIPTOR.GetOptions().Extensions[_EXTENSION]
FINGERPRINT_BYTES: Final[int] = _LIMITS.fingerprint_bytes  # raw SHA-256: fingerprints, manifest, checkpoint
MAX_MESSAGE_BYTES: Final[int] = _LIMITS.max_message_bytes  # one serialized message, either way
MAX_TEXT_CHARS: Final[int] = _LIMITS.max_text_chars  # device names, versions, specs: a line, not a payload
MAX_STORED_INT: Final[int] = _LIMITS.max_stored_int  # SQLite INTEGER is signed 64-bit
MAX_EVENT_CURSOR: Final[int] = _LIMITS.max_event_cursor  # event cursors are SQLite integers
MAX_CLIENT_ID_CHARS: Final[int] = _LIMITS.max_client_id_chars  # a payload client_id (no tokens file)
MAX_DELTAS_PER_TASK: Final[int] = _LIMITS.max_deltas_per_task  # round deltas one GetTask answer carries

_REASON_PREFIX = "REFUSAL_REASON_"


def reason_name(value: int) -> str:
    """The wire string of a RefusalReason value: REFUSAL_REASON_ROUND_CLOSED -> "round_closed"."""
    return common_pb2.RefusalReason.Name(value).removeprefix(_REASON_PREFIX).lower()


# The reasons no Refusal subclass carries. The server's own failures:
MALFORMED_REQUEST: Final = reason_name(common_pb2.REFUSAL_REASON_MALFORMED_REQUEST)
STORE_FAILED: Final = reason_name(common_pb2.REFUSAL_REASON_STORE_FAILED)
INTERNAL: Final = reason_name(common_pb2.REFUSAL_REASON_INTERNAL)
# Never sent: what a client calls its own errors about a server it cannot follow.
NEW_RUN: Final = reason_name(common_pb2.REFUSAL_REASON_NEW_RUN)
BAD_TASK_STATUS: Final = reason_name(common_pb2.REFUSAL_REASON_BAD_TASK_STATUS)
CHECKPOINT_GAP: Final = reason_name(common_pb2.REFUSAL_REASON_CHECKPOINT_GAP)
CHECKPOINT_TRUNCATED: Final = reason_name(common_pb2.REFUSAL_REASON_CHECKPOINT_TRUNCATED)
