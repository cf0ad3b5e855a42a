"""The request message of every unary-request call is read here, not by grpc: so that every call gets
a status, in bounded time, and an undecodable request is INVALID_ARGUMENT, as the contract says.

grpc.aio reads and decodes a unary request before any servicer code runs, and two of its behaviours
break the contract:

- a call whose stream ends without a complete message (HEADERS with END_STREAM and no DATA, or a length
  prefix longer than the bytes that follow) is dropped without any status: the caller waits forever and
  the server keeps the call's state; and a call that never sends its message holds its stream for as
  long as the connection lives;
- a message that does not decode (corrupt wire format, invalid UTF-8 in a string field) is UNKNOWN
  ("Unexpected DecodeError").

So this interceptor hands grpc request-streaming handlers that take the raw bytes and read the one
message themselves, within REQUEST_TIMEOUT_S: a call without a complete request message in that time is
INVALID_ARGUMENT ("malformed_request"). A unary response can also be capped (`unary_limit_s`,
DEADLINE_EXCEEDED): the server's own bound on a call, whatever deadline the client set (or did not).

Being the outermost Python of every call, it is also where `on_finished(method, seconds)` runs: as a
unary call's answer leaves for grpc, in the same step of the event loop as grpc's objects for sending
it (the collector's pacer counts calls there), with how long the call took here
(server/call_meter.py).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fedmezo.fl.vocabulary import MALFORMED_REQUEST, REASON_METADATA_KEY

__all__ = ["REQUEST_TIMEOUT_S", "RequestInterceptor"]

# A request message is at most 4 MiB and usually under 1 KiB: it follows its headers at once.
REQUEST_TIMEOUT_S = 10.0

Decode = Callable[[bytes], Any]


async def _malformed(context: grpc.aio.ServicerContext, details: str) -> None:
    context.set_trailing_metadata(((REASON_METADATA_KEY, MALFORMED_REQUEST),))
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)


async def _read(
    requests: AsyncIterator[bytes], decode: Decode, context: grpc.aio.ServicerContext, timeout_s: float
) -> Any:
    """The call's one request message, decoded; aborts the call when there is none in time."""
    try:
        raw = await asyncio.wait_for(anext(aiter(requests)), timeout_s)
    except StopAsyncIteration:
        await _malformed(context, "malformed request: the stream ended without a complete message")
    except TimeoutError:
        await _malformed(context, f"malformed request: no complete message within {timeout_s:g} s")
    try:
        return decode(raw)
    except DecodeError as exc:
        await _malformed(context, f"malformed request: {exc}")


Finished = Callable[[str, float], None]  # (the method's full name, seconds the call took here)


def _nothing(method: str, seconds: float) -> None:
    pass


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Turns every unary-request handler into a request-streaming one that reads its message itself."""

    def __init__(
        self,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        unary_limit_s: float | None = None,
        on_finished: Finished | None = None,
    ) -> None:
        self.request_timeout_s = request_timeout_s
        self.unary_limit_s = unary_limit_s
        self.on_finished = on_finished or _nothing

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.unary_unary, decode, handler_call_details.method),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.unary_stream, decode), response_serializer=handler.response_serializer
            )
        return handler

    def _unary(
        self, inner: Callable[..., Awaitable[Any]], decode: Decode, method: str
    ) -> Callable[..., Awaitable[Any]]:
        timeout_s, limit_s, finished = self.request_timeout_s, self.unary_limit_s, self.on_finished

        async def behavior(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            started = time.monotonic()
            try:
                request = await _read(requests, decode, context, timeout_s)
                if limit_s is None:
                    return await inner(request, context)
                try:
                    return await asyncio.wait_for(inner(request, context), limit_s)
                except TimeoutError:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {limit_s:g} s")
            finally:
                finished(method, time.monotonic() - started)

        return behavior

    def _stream(self, inner: Callable[..., Any], decode: Decode) -> Callable[..., Any]:
        timeout_s = self.request_timeout_s
        if inspect.isasyncgenfunction(inner):  # yields its responses (our servicers)

            async def generator(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async for item in inner(await _read(requests, decode, context, timeout_s), context):
                    yield item

            return generator

        async def writer(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            await inner(await _read(requests, decode, context, timeout_s), context)  # context.write (health)

        return writer
