"""What the grpc library logs about a client's mistakes, kept out of the server's log.

grpc.aio decodes request metadata in its Cython core, before any code of ours runs, and logs a header
value that is not UTF-8 as an ERROR with a traceback that quotes the raw value: a malformed
`authorization` header puts the caller's token (or a near miss of a real one) in the log, twice per call.
And a client that cancels or drops a streamed call (a DownloadCheckpoint it no longer wants) while a
message is being written makes grpc log an ExecuteBatchError traceback, although nothing went wrong on
the server. Both are dropped here; the calls themselves are answered as usual (the header's caller gets
UNAUTHENTICATED, the cancelled call is over).
"""

from __future__ import annotations

import logging

__all__ = ["GRPC_CORE_LOGGER", "GrpcClientNoiseFilter", "install"]

GRPC_CORE_LOGGER = "grpc._cython.cygrpc"
# Prefixes of the messages grpc logs for a client's doing, never for the server's.
_CLIENT_NOISE = (
    "Invalid encoding on",  # a header key or value that is not UTF-8: the record quotes it
    "ExecuteBatchError raised in core by servicer method",  # the peer went away mid-stream
)


class GrpcClientNoiseFilter(logging.Filter):
    """Drops grpc's records about malformed client metadata and about peers that went away."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_CLIENT_NOISE))


def install() -> None:
    """Attach the filter to grpc's core logger (once per process)."""
    logger = logging.getLogger(GRPC_CORE_LOGGER)
    if not any(isinstance(f, GrpcClientNoiseFilter) for f in logger.filters):
        logger.addFilter(GrpcClientNoiseFilter())
