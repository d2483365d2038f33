"""The parts of the Redis clients that do not depend on the driver's event loop: scripts,
errors, channel bookkeeping and the retry loop (shared by :mod:`._redis_adapter` and
:mod:`._redis_trio`)."""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import attrs
import redis.exceptions as rexc
import trio

from .._errors import StorageError

__all__ = [
    "AdapterCommon",
    "ChannelHandler",
    "Disconnected",
    "ScriptArg",
    "script",
    "with_retry",
]

log = logging.getLogger("trio_jobqueue.redis")

T = TypeVar("T")
ScriptArg = str | bytes | int | float

_PUBSUB_IDLE = 5.0
"""Seconds without pub/sub traffic before the reader pings the server."""
_LINGER = 2.0
"""Seconds a channel stays subscribed after its last user left, so that a worker's
consecutive blocking claims (or a producer's consecutive waits) do not re-subscribe."""


class Disconnected(StorageError):
    """The connection to Redis failed (retryable)."""


class ChannelHandler(Protocol):
    def on_message(self, data: bytes) -> None: ...

    def on_reconnect(self) -> None: ...


def _load_script(name: str) -> bytes:
    """``lua/_lib.lua`` followed by ``lua/<name>.lua`` (package data of the wheel)."""
    files = importlib.resources.files("trio_jobqueue").joinpath("lua")
    lib = files.joinpath("_lib.lua").read_bytes()
    body = files.joinpath(f"{name}.lua").read_bytes()
    return lib + b"\n" + body


@attrs.define(eq=False)
class _Script:
    name: str
    source: bytes
    sha: str

    @classmethod
    def load(cls, name: str) -> _Script:
        source = _load_script(name)
        return cls(name, source, hashlib.sha1(source).hexdigest())


_SCRIPTS: dict[str, _Script] = {}


def script(name: str) -> _Script:
    found = _SCRIPTS.get(name)
    if found is None:
        found = _SCRIPTS[name] = _Script.load(name)
    return found


@attrs.define(eq=False)
class _Channel:
    name: str
    handler: ChannelHandler
    users: int = 0
    idle_since: float = 0.0
    confirmed: trio.Event = attrs.Factory(trio.Event)
    generation: int = 0


def _translate(exc: Exception) -> StorageError:
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError):
        return StorageError(f"Redis refused the credentials: {exc!r}")
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError):
        return Disconnected(f"lost the connection to Redis: {exc!r}")
    return StorageError(f"Redis error: {exc!r}")


async def with_retry(attempt: Callable[[bool], Awaitable[T]], budget: float) -> T:
    """Run ``attempt(retrying)``, retrying :class:`Disconnected` with capped exponential
    backoff for at most ``budget`` seconds, then raise ``StorageError`` from the cause."""
    deadline = trio.current_time() + budget
    delay = 0.02
    retrying = False
    while True:
        try:
            return await attempt(retrying)
        except Disconnected as exc:
            if trio.current_time() + delay > deadline:
                raise StorageError(f"Redis unreachable for {budget:g} s: {exc}") from exc.__cause__
            log.debug("Redis connection error, retrying in %.2f s: %s", delay, exc)
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)
            retrying = True


class AdapterCommon:
    """What both Redis clients do the same way on top of their own transport: commands and
    scripts with retries, and reference-counted channel subscriptions with their
    dispatch. A client provides ``_command_once`` and ``_evalsha`` and keeps
    ``_channels`` (the pub/sub task subscribes to exactly these) and ``_pubsub_changed``.
    """

    retry_timeout: float
    _channels: dict[str, _Channel]
    _pubsub_changed: trio.Event

    async def _command_once(self, args: Sequence[ScriptArg]) -> Any:
        raise NotImplementedError

    async def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        raise NotImplementedError

    async def command(self, *args: ScriptArg, retry_for: float | None = None) -> Any:
        """Run one Redis command (retrying connection errors)."""

        async def attempt(retrying: bool) -> Any:
            return await self._command_once(args)

        return await with_retry(attempt, self.retry_timeout if retry_for is None else retry_for)

    async def run_script(
        self,
        name: str,
        keys: Sequence[str],
        args: Callable[[bool], Sequence[ScriptArg]] | Sequence[ScriptArg],
        *,
        retry_for: float | None = None,
        retry: bool = True,
    ) -> Any:
        """Run ``lua/<name>.lua`` with ``keys`` and ``args``.

        ``args`` may be a function of ``retrying`` (True on a retry after a connection
        error) so scripts can make a resent call idempotent.

        Raises:
            StorageError: from the driver error (after retries for connection errors).
        """

        async def attempt(retrying: bool) -> Any:
            argv = args(retrying) if callable(args) else args
            return await self._evalsha(name, keys, argv)

        if not retry:
            return await attempt(False)
        return await with_retry(attempt, self.retry_timeout if retry_for is None else retry_for)

    @asynccontextmanager
    async def subscription(self, channel: str, handler: ChannelHandler) -> AsyncIterator[None]:
        """Keep ``channel`` subscribed (reference-counted) while the context is open.

        ``handler`` is the one handler of the channel (later subscribers of the same
        channel must pass the same object). Yields once the server confirmed the
        subscription.

        Raises:
            StorageError: not confirmed within ``retry_timeout`` seconds.
        """
        chan = self._channels.get(channel)
        if chan is None:
            chan = self._channels[channel] = _Channel(channel, handler)
            self._pubsub_changed.set()
        chan.users += 1
        try:
            if not chan.confirmed.is_set():
                with trio.move_on_after(self.retry_timeout) as scope:
                    await chan.confirmed.wait()
                if scope.cancelled_caught:
                    raise StorageError(f"Redis did not confirm the subscription to {channel!r}")
            else:
                await trio.lowlevel.checkpoint()
            yield
        finally:
            chan.users -= 1
            if chan.users == 0:
                chan.idle_since = trio.current_time()
                self._pubsub_changed.set()

    def _on_channel_message(self, kind: str, channel: object, data: object) -> None:
        """Dispatch one pub/sub push: ``message`` to the channel's handler; a
        ``subscribe`` confirmation sets ``confirmed`` and, on re-subscription after a
        reconnect, calls the handler's ``on_reconnect``."""
        name = channel.decode("utf-8") if isinstance(channel, bytes) else str(channel)
        chan = self._channels.get(name)
        if chan is None:
            return
        if kind == "message":
            if isinstance(data, bytes):
                chan.handler.on_message(data)
        elif kind == "subscribe":
            chan.generation += 1
            chan.confirmed.set()
            if chan.generation > 1:
                chan.handler.on_reconnect()
