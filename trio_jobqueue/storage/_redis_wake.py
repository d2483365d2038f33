"""Wake one idle claimer, not all: the wake-up listeners of
:class:`~trio_jobqueue.storage.redis.RedisStorage`.

Blocked claims of every process wait on one list per namespace, ``{tag}:wake``, instead
of one pub/sub channel that every enqueue would broadcast to:

* every script that makes a job claimable pushes one token (at most 64 wait in the
  list); Redis hands each pushed token to exactly one client blocked in ``BLPOP`` on the
  list, the one that waited longest, so one enqueue wakes one idle process;
* per storage object and namespace with blocked claims, one task of this module holds a
  dedicated connection (:meth:`~._redis_common.AdapterCommon.open_blocking`) and runs
  ``BLPOP`` while at least one local claim waits. A token wakes the local claims
  (``hub.wake()``); a token that arrives when no local claim waits any more (it just
  claimed something) is pushed back for the others;
* a claim script drops as many waiting tokens as it took jobs, and one that finds the
  queue empty deletes the tokens left: their jobs were taken, and a stale token would
  only cost someone a useless claim (or a worker draining a backlog a blocking round
  trip per claim);
* no lost wake-up: a claim takes its ticket before it runs the claim script, a token
  pushed after that script ran wakes it, and a token pushed while no one listens waits
  in the list for the next ``BLPOP``.

The ``BLPOP`` waits ``wait`` seconds (the storage's ``health_check_interval``); its
deadline is that plus ``command_timeout`` (never ``command_timeout`` alone), so a
connection that died silently is replaced within ``wait + command_timeout``. When the
connection fails, the local claims are told to look again (``hub.lost_track("work")``),
a token it may have swallowed is passed on when no local claim waits, and the task
reconnects with backoff. Blocked claims also ask the server again every
``claim_repoll`` seconds, whatever happens here.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

from .._errors import StorageError
from ._core import Hub

if TYPE_CHECKING:
    from ._redis_adapter import RedisAdapter
    from ._redis_cluster import ClusterAdapter
    from ._redis_common import BlockingConnection
    from ._redis_trio import TrioRedisAdapter

__all__ = ["Wakers"]

log = logging.getLogger("trio_jobqueue.redis")

LINGER = 10.0
"""Seconds a listener keeps its connection after the last local claim stopped waiting
(a worker's consecutive claims reuse it)."""


@attrs.define(eq=False)
class _Listener:
    key: str
    hub: Hub
    waiting: int = 0
    """Local claims waiting right now."""
    idle_since: float = 0.0
    changed: trio.Event = attrs.Factory(trio.Event)

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@attrs.define(eq=False)
class Wakers:
    """The wake-up listeners of one storage object, one per namespace key."""

    adapter: TrioRedisAdapter | RedisAdapter | ClusterAdapter
    wait: float
    """Seconds one ``BLPOP`` blocks."""
    tokens: int = 0
    """Tokens taken so far (statistics)."""
    passed_on: int = 0
    """Tokens pushed back because no local claim waited any more (statistics)."""
    connections: int = 0
    """Blocking connections made so far (statistics)."""
    _listeners: dict[str, _Listener] = attrs.Factory(dict)

    @asynccontextmanager
    async def waiting(self, key: str, hub: Hub) -> AsyncIterator[None]:
        """A local claim waits for work on the wake list ``key`` (feeding ``hub``).

        Raises:
            StorageError: the storage is not open.
        """
        listener = self._listeners.get(key)
        if listener is None:
            listener = _Listener(key, hub)
            self.adapter.start_service(self._serve, listener)
            self._listeners[key] = listener
        listener.waiting += 1
        listener.poke()
        try:
            await trio.lowlevel.checkpoint()
            yield
        finally:
            listener.waiting -= 1
            if listener.waiting == 0:
                listener.idle_since = trio.current_time()
                listener.poke()

    async def _serve(self, listener: _Listener) -> None:
        connection: BlockingConnection | None = None
        delay = 0.05
        try:
            while True:
                while listener.waiting == 0:
                    linger_until = listener.idle_since + LINGER
                    if trio.current_time() >= linger_until:
                        return
                    with trio.move_on_at(linger_until):
                        await listener.changed.wait()
                try:
                    if connection is None:
                        connection = await self.adapter.open_blocking(listener.key)
                        self.connections += 1
                    token = await connection.pop(listener.key, self.wait)
                except StorageError as exc:
                    log.debug("the wake-up connection failed; reconnecting: %s", exc)
                    if connection is not None:
                        old, connection = connection, None
                        await old.aclose()
                        # A token it took may be lost with the reply: the local claims
                        # look again, and if none waits, someone else is woken.
                        listener.hub.lost_track("work")
                        if listener.waiting == 0:
                            await self._pass_on(listener)
                    await trio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                if token is None:
                    continue
                self.tokens += 1
                if listener.waiting:
                    listener.hub.wake()
                    # Let the woken claims send their claim before this task sends the
                    # next BLPOP (it would delay them by a system call); when they got
                    # jobs they stop waiting and no BLPOP is sent at all.
                    await trio.lowlevel.checkpoint()
                    await trio.lowlevel.checkpoint()
                else:
                    await self._pass_on(listener)
        except Exception:
            log.exception(
                "the wake-up listener of %r crashed; claims fall back to polling", listener.key
            )
        finally:
            if self._listeners.get(listener.key) is listener:
                del self._listeners[listener.key]
            if connection is not None:
                with trio.CancelScope(shield=True):
                    await connection.aclose()

    async def _pass_on(self, listener: _Listener) -> None:
        """Give a token back to the list, for a claimer of another process."""
        self.passed_on += 1
        try:
            await self.adapter.command("RPUSH", listener.key, "1")
        except StorageError as exc:
            log.debug("could not pass a wake-up token on: %s", exc)
