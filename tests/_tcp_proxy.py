"""A loopback TCP proxy for fault tests: it relays bytes between clients and one
upstream server, and on command stops relaying without closing anything (a silent
half-open link: no FIN, no RST), resets connections (RST), optionally in the middle of
a server reply, and passes traffic again.

Run it in the test's nursery::

    proxy = TcpProxy(upstream_port)
    await nursery.start(proxy.serve)
    storage = RedisStorage(proxy.url, ...)
    proxy.freeze()              # nothing is relayed any more, in either direction
    proxy.thaw(stale="drop")    # new connections work; the frozen ones stay silent
    proxy.reset()               # RST every connection, on both sides
    await proxy.reset_mid_reply()   # the next server->client chunk is cut in half, then RST

Every link is two pump tasks (client->server, server->client) in the proxy's own
nursery; cancelling the nursery closes everything.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from typing import Literal

import attrs
import trio

__all__ = ["Link", "TcpProxy"]

_CHUNK = 65536


@attrs.define(eq=False)
class Link:
    """One proxied connection: the client's socket and ours to the server."""

    client: trio.SocketStream
    server: trio.SocketStream
    frozen: bool = False
    """Not relaying (set by :meth:`TcpProxy.freeze`)."""
    dead: bool = False
    """Never relays again (a frozen link the network dropped), until it is closed."""
    closed: bool = False
    client_closed: trio.Event = attrs.Factory(trio.Event)
    """Set when the client closed (or reset) its end: the client gave up on the link."""
    cut_reply: trio.Event | None = None
    """Armed by :meth:`TcpProxy.lose_reply_to`: the next server->client chunk is cut."""

    def reset(self) -> None:
        """RST both ends (``SO_LINGER`` 0, then close)."""
        if self.closed:
            return
        self.closed = True
        for stream in (self.client, self.server):
            with contextlib.suppress(OSError):
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()

    def close(self) -> None:
        """FIN both ends."""
        if not self.closed:
            self.closed = True
            self.client.socket.close()
            self.server.socket.close()


@attrs.define(eq=False)
class TcpProxy:
    """Relays ``127.0.0.1:port`` to ``upstream_host:upstream_port`` (see the module)."""

    upstream_port: int
    upstream_host: str = "127.0.0.1"
    port: int = 0
    """The listening port (set once :meth:`serve` started)."""
    links: list[Link] = attrs.Factory(list)
    """Every link ever opened (closed ones included), oldest first."""
    frozen: bool = False
    _changed: trio.Event = attrs.Factory(trio.Event)
    _cut_next: trio.Event | None = None
    _cut_after: tuple[bytes, trio.Event] | None = None
    accepted: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def live_links(self) -> list[Link]:
        return [link for link in self.links if not link.closed]

    # -- faults -----------------------------------------------------------------------

    def freeze(self) -> None:
        """Stop relaying on every link, current and future (new connections are still
        accepted: their TCP handshake completes, as with a stopped server). Nothing is
        closed; bytes wait in our hands and in the kernel's buffers."""
        self.frozen = True
        for link in self.live_links():
            link.frozen = True
        self._notify()

    def thaw(self, *, stale: Literal["resume", "drop", "reset"] = "resume") -> None:
        """Relay again. The links frozen until now are resumed (their held bytes flow),
        ``"drop"``-ped (they stay open but never relay again: a silent dead link), or
        ``"reset"`` (RST)."""
        self.frozen = False
        for link in self.live_links():
            if link.frozen:
                if stale == "drop":
                    link.dead = True
                elif stale == "reset":
                    link.reset()
                link.frozen = False
        self._notify()

    def reset(self) -> None:
        """RST every open link, on both sides."""
        for link in self.live_links():
            link.reset()
        self._notify()

    async def reset_mid_reply(self) -> None:
        """Arm a cut and wait for it: the next server->client chunk (of at least two
        bytes) is forwarded only in part, then that link is reset on both sides."""
        done = trio.Event()
        self._cut_next = done
        await done.wait()

    async def lose_reply_to(self, marker: bytes) -> None:
        """Arm a lost reply and wait for it: the next client->server chunk containing
        ``marker`` reaches the server whole (so the server runs that request), then the
        server's next chunk on that link is cut in half and the link reset, so the
        client never sees the reply."""
        done = trio.Event()
        self._cut_after = (marker, done)
        await done.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- relaying ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and relay until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            try:
                task_status.started()
                listener = listeners[0]
                while True:
                    client = await listener.accept()
                    self.accepted += 1
                    nursery.start_soon(self._handle, client, nursery)
            finally:
                for listener in listeners:
                    listener.socket.close()
                for link in self.links:
                    link.close()

    async def _handle(self, client: trio.SocketStream, nursery: trio.Nursery) -> None:
        try:
            server = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        except OSError:
            client.socket.close()  # upstream down: the client sees a FIN
            return
        link = Link(client, server, frozen=self.frozen)
        self.links.append(link)
        for source, sink, downstream in ((client, server, False), (server, client, True)):
            send, receive = trio.open_memory_channel[bytes](math.inf)
            nursery.start_soon(self._receive, link, source, send)
            nursery.start_soon(self._send, link, receive, sink, downstream)

    async def _receive(
        self, link: Link, source: trio.SocketStream, queue: trio.MemorySendChannel[bytes]
    ) -> None:
        """Read all the time (so a client's close is seen even on a frozen link) and
        queue the bytes; ``b""`` is the end."""
        with queue:
            while True:
                try:
                    data = await source.receive_some(_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
                if not data and source is link.client and not link.closed:
                    link.client_closed.set()  # the client's close, not our reset
                try:
                    queue.send_nowait(data)
                except trio.BrokenResourceError:
                    return  # the link was closed: nothing more to relay
                if not data:
                    return

    async def _send(
        self,
        link: Link,
        queue: trio.MemoryReceiveChannel[bytes],
        sink: trio.SocketStream,
        downstream: bool,
    ) -> None:
        """Relay the queued bytes whenever the link is not frozen."""
        with queue:
            async for data in queue:
                while link.frozen and not link.closed and not link.dead:
                    await self._changed.wait()
                if link.closed:
                    return
                if link.dead:
                    continue  # the network ate it: nothing arrives, nothing closes
                if not data:
                    link.close()  # pass the FIN on (Redis never half-closes)
                    return
                cut = link.cut_reply if link.cut_reply is not None else self._cut_next
                try:
                    if downstream and cut is not None and len(data) >= 2:
                        if cut is self._cut_next:
                            self._cut_next = None
                        await sink.send_all(data[: len(data) // 2])
                        link.reset()
                        cut.set()
                        return
                    await sink.send_all(data)
                    armed = self._cut_after
                    if not downstream and armed is not None and armed[0] in data:
                        self._cut_after = None
                        link.cut_reply = armed[1]
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    link.reset()
                    return
