"""A TCP proxy on loopback that cuts connections at random: the network between a client and the server
breaking mid-RPC (a NAT or load balancer dropping flows, a Wi-Fi handover).

Each accepted connection is forwarded to the target until it has lived a random time, or until a
forwarded chunk draws a cut (so cuts land in the middle of RPCs: a request that reached the server
whose answer never comes back). Then both sides are reset (SO_LINGER 0 + abort: an RST, not a polite
FIN) and the chunk is dropped. The draws are seeded; which RPC a cut hits still depends on timing.
Runs its own asyncio loop in a daemon thread; `close` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from typing import Any

__all__ = ["CuttingProxy"]

_CHUNK_BYTES = 64 * 1024
_START_TIMEOUT_S = 10.0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with an RST, discarding unsent data (what a dropped flow looks like)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class CuttingProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target_port`; reset each connection after
    uniform(`min_life_s`, `max_life_s`) seconds, or earlier: each chunk in either direction is dropped
    with the connection with probability `cut_probability`."""

    def __init__(
        self,
        target_port: int,
        *,
        seed: int,
        min_life_s: float,
        max_life_s: float,
        cut_probability: float = 0.0,
    ) -> None:
        self.target_port = target_port
        self.min_life_s = min_life_s
        self.max_life_s = max_life_s
        self.cut_probability = cut_probability
        self.port = 0
        self.connections = 0  # accepted from the client
        self.cuts = 0  # connections reset by us while both sides were still open
        self.cuts_mid_transfer = 0  # of which: reset instead of forwarding a chunk
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="cutting-proxy", daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(_START_TIMEOUT_S)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK_BYTES):
                if self._rng.random() < self.cut_probability:
                    cut.set()
                    return
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write_eof()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        life_s = self._rng.uniform(self.min_life_s, self.max_life_s)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the server is down: the client sees a reset connection
            _reset(client_writer)
            return
        cut = asyncio.Event()
        pumps = asyncio.gather(
            self._pump(client_reader, server_writer, cut), self._pump(server_reader, client_writer, cut)
        )
        cut_drawn = asyncio.ensure_future(cut.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {pumps, cut_drawn}
            done, _ = await asyncio.wait(waiters, timeout=life_s, return_when=asyncio.FIRST_COMPLETED)
            if pumps not in done:
                self.cuts += 1
                self.cuts_mid_transfer += int(cut.is_set())
        finally:
            _reset(client_writer)
            _reset(server_writer)
            for task in (pumps, cut_drawn):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(pumps, cut_drawn)
