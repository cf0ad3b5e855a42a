"""A raw HTTP/2 gRPC caller (the `h2` library over a plain socket): what an attacker's own client can
send that grpc's client never would: a malformed header value, HEADERS with END_STREAM and no message,
a length prefix longer than the bytes that follow. Loopback plaintext only; every read is bounded."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

__all__ = ["H2Call", "RawConnection", "grpc_frame"]


def grpc_frame(message: bytes, *, declared: int | None = None) -> bytes:
    """A gRPC length-prefixed message; `declared` lies about its length."""
    return b"\x00" + struct.pack(">I", len(message) if declared is None else declared) + message


@dataclass
class H2Call:
    stream_id: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytes = b""
    ended: bool = False
    reset: bool = False
    ended_at: float = 0.0

    @property
    def status(self) -> int | None:
        """The grpc-status the server sent (in trailers, or in a trailers-only response), if any."""
        raw = self.trailers.get(b"grpc-status", self.headers.get(b"grpc-status"))
        return int(raw) if raw is not None else None

    @property
    def answered(self) -> bool:
        return self.status is not None or self.reset


class RawConnection:
    """One HTTP/2 connection to a gRPC server on 127.0.0.1."""

    def __init__(self, port: int, *, timeout_s: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
        )
        self.conn.initiate_connection()
        self.calls: dict[int, H2Call] = {}
        self.closed = False  # the server closed the socket (or it broke)
        self.terminated = False  # the server sent GOAWAY: later frames are read but not parsed
        self.remote_settings: dict[int, int] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(
        self,
        path: str,
        *,
        body: bytes | None = b"",
        end_stream: bool = True,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> H2Call:
        """Open a call: HEADERS (with END_STREAM when `body` is None and `end_stream`), then `body` as
        one DATA frame (ending the stream when `end_stream`)."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"127.0.0.1"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *(extra_headers or []),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=body is None and end_stream)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end_stream)
        self._flush()
        call = self.calls[stream_id] = H2Call(stream_id)
        return call

    def pump(self, until: float) -> None:
        """Read and handle frames until the monotonic time `until` (or the connection closes)."""
        while not self.closed and time.monotonic() < until:
            self.sock.settimeout(max(0.01, min(0.2, until - time.monotonic())))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            if self.terminated:
                continue  # h2 refuses frames after a GOAWAY: only the socket's end matters now
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:  # a frame after GOAWAY in the same read
                self.terminated = True
                continue
            for event in events:
                self._handle(event)
            self._flush()

    def wait(self, calls: list[H2Call], timeout_s: float) -> bool:
        """Pump until every call is answered (a grpc-status or a reset) or timeout; returns whether."""
        until = time.monotonic() + timeout_s
        while time.monotonic() < until and not all(c.answered for c in calls) and not self.terminated:
            self.pump(min(until, time.monotonic() + 0.2))
        return all(c.answered for c in calls)

    def _handle(self, event: h2.events.Event) -> None:
        now = time.monotonic()
        call = self.calls.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_settings.update({k: v.new_value for k, v in event.changed_settings.items()})
        elif isinstance(event, h2.events.ResponseReceived) and call:
            call.headers.update(dict(event.headers))
        elif isinstance(event, h2.events.TrailersReceived) and call:
            call.trailers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived) and call:
            call.data += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and call:
            call.ended, call.ended_at = True, now
        elif isinstance(event, h2.events.StreamReset) and call:
            call.reset, call.ended_at = True, now
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True
            self.goaway = event

    def wait_goaway(self, timeout_s: float) -> bool:
        """Pump until the server sends GOAWAY (self.goaway, when h2 could parse it) or closes the socket;
        returns whether either happened."""
        until = time.monotonic() + timeout_s
        while not self.terminated and not self.closed and time.monotonic() < until:
            self.pump(min(until, time.monotonic() + 0.2))
        return self.terminated or self.closed

    def wait_closed(self, timeout_s: float) -> bool:
        """Pump until the server closes the socket; returns whether it did."""
        until = time.monotonic() + timeout_s
        while not self.closed and time.monotonic() < until:
            self.pump(min(until, time.monotonic() + 0.2))
        return self.closed

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except Exception:
            pass
        self.sock.close()
