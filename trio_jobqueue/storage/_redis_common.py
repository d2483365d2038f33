"""The parts of the Redis clients that do not depend on the driver's event loop: scripts,
errors, channel bookkeeping and the retry loop (shared by :mod:`._redis_adapter` and
:mod:`._redis_trio`)."""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import attrs
import redis.exceptions as rexc
import trio

from .._errors import StorageError

__all__ = ["ChannelHandler", "Disconnected", "ScriptArg", "script", "with_retry"]

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
