"""The ONE table that maps the protocol's refusals (fedmezo.fl.errors) onto gRPC status codes."""

from __future__ import annotations

import grpc

from fedmezo.fl import errors

__all__ = ["grpc_code"]

# Most specific class first.
_GRPC_CODES: tuple[tuple[type[errors.Refusal], grpc.StatusCode], ...] = (
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotJoined, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.IncompatibleClient, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RoundClosed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotSelected, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Diverged, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.WrongRound, grpc.StatusCode.OUT_OF_RANGE),
    (errors.InvalidUpdate, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ConflictingUpdate, grpc.StatusCode.ALREADY_EXISTS),
    (errors.NoCheckpoint, grpc.StatusCode.NOT_FOUND),
    (errors.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def grpc_code(error: errors.Refusal) -> grpc.StatusCode:
    """The status code for a refused request (FAILED_PRECONDITION for an unlisted subclass)."""
    for cls, code in _GRPC_CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION
