"""Undecodable requests are INVALID_ARGUMENT, as the contract says, not grpc's UNKNOWN.

grpc.aio decodes a request before any servicer code runs and answers UNKNOWN ("Unexpected
DecodeError") when decoding raises: corrupt wire format, invalid UTF-8 in a string field. This
interceptor takes over the decoding of unary requests, so the caller learns its request was malformed.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fedmezo.fl.vocabulary import MALFORMED_REQUEST, REASON_METADATA_KEY

__all__ = ["DecodeErrorInterceptor"]

Decode = Callable[[bytes], Any]


async def _decode(decode: Decode, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
    try:
        return decode(raw)
    except DecodeError as exc:
        context.set_trailing_metadata(((REASON_METADATA_KEY, MALFORMED_REQUEST),))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}")


def _unary(inner: Callable[..., Awaitable[Any]], decode: Decode) -> Callable[..., Awaitable[Any]]:
    async def behavior(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await inner(await _decode(decode, raw, context), context)

    return behavior


def _stream(inner: Callable[..., Any], decode: Decode) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(inner):  # yields its responses (our servicers)

        async def generator(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in inner(await _decode(decode, raw, context), context):
                yield item

        return generator

    async def writer(raw: bytes, context: grpc.aio.ServicerContext) -> None:  # context.write (health)
        await inner(await _decode(decode, raw, context), context)

    return writer


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """Hands unary-request handlers raw bytes and decodes them itself (request streams untouched)."""

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
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, decode), response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _stream(handler.unary_stream, decode), response_serializer=handler.response_serializer
            )
        return handler
