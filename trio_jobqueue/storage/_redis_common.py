"""The parts of the Redis clients that do not depend on the driver's event loop: scripts,
errors, channel bookkeeping and the retry loop (shared by :mod:`._redis_adapter` and
:mod:`._redis_trio`)."""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import attrs
import trio

from .._errors import StorageError

__all__ = [
    "AdapterCommon",
    "ChannelHandler",
    "Disconnected",
    "RedisReplyError",
    "ScriptArg",
    "script",
    "with_retry",
]

log = logging.getLogger("trio_jobqueue.redis")

T = TypeVar("T")
ScriptArg = str | bytes | int | float

_LINGER = 2.0
"""Seconds a channel stays subscribed after its last user left, so that a worker's
consecutive blocking claims (or a producer's consecutive waits) do not re-subscribe."""


class Disconnected(StorageError):
    """A request got no reply and may be sent again (:func:`with_retry` does): the
    connection could not be made, broke or timed out, or the server answered that it
    cannot serve yet (``LOADING``, ``BUSY``, ...)."""


class RedisReplyError(Exception):
    """An error reply of the server (the ``__cause__`` of the trio client's
    :class:`StorageError`). ``str()`` is the server's own text, ``code`` its first word
    (``"OOM"``, ``"NOSCRIPT"``, ``"WRONGPASS"``, ``"ERR"``, ...).

    The trio client has hiredis build these directly (``hiredis.Reader(replyError=...)``).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0] if message else "ERR"


_AUTH_CODES = frozenset({"WRONGPASS", "NOAUTH", "NOPERM"})
"""Error codes of refused credentials or permissions (never retried)."""
_BUSY_CODES = frozenset({"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"})
"""Error codes of a server that did not run the command but will soon (retried)."""
_REFUSED_WRITE_CODES = frozenset({"OOM", "READONLY", "MISCONF", "NOREPLICAS"})
"""Error codes of a server that refuses writes (an operator's problem: not retried here)."""


class ChannelHandler(Protocol):
    def on_message(self, data: bytes) -> None: ...

    def on_reconnect(self) -> None: ...


def _load_script(name: str) -> bytes:
    """``lua/_lib.lua`` followed by ``lua/<name>.lua`` (package data of the wheel).

    Every script opens with a ``#!lua`` line declaring its flags (whether Redis may run
    it above ``maxmemory``); that line must be the first of the whole source, so it is
    moved in front of the prelude.
    """
    files = importlib.resources.files("trio_jobqueue").joinpath("lua")
    lib = files.joinpath("_lib.lua").read_bytes()
    body = files.joinpath(f"{name}.lua").read_bytes()
    shebang, newline, rest = body.partition(b"\n")
    if not shebang.startswith(b"#!lua"):
        raise RuntimeError(f"lua/{name}.lua must start with a #!lua flags line")
    return shebang + newline + lib + b"\n" + rest


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


def root_os_error(exc: BaseException) -> BaseException:
    """The most telling error behind ``exc``: trio's "all attempts to connect failed"
    ``OSError`` carries the per-address errors as an exception group in ``__cause__``;
    a driver's wrapper keeps the ``OSError`` in ``__cause__``/``__context__``."""
    for _ in range(5):
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, BaseExceptionGroup) and inner.exceptions:
            errors = [e for e in inner.exceptions if isinstance(e, OSError)]
            if not errors:
                break
            # Prefer what most addresses said (refused vs. timed out vs. unreachable).
            exc = max(errors, key=lambda e: sum(type(x) is type(e) for x in errors))
        elif isinstance(inner, OSError) and not isinstance(exc, OSError | RedisReplyError):
            exc = inner
        else:
            break
    return exc


def describe_os_error(exc: BaseException) -> str:
    """A short human reason for a connection failure: ``connection refused``, ``timed
    out``, ``name not found``, ... followed by the OS's own text."""
    if isinstance(exc, socket.gaierror):
        reason = "name not found"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(exc, TimeoutError):
        reason = "timed out"
    elif isinstance(exc, ConnectionResetError):
        reason = "connection reset"
    elif isinstance(exc, BrokenPipeError | ConnectionAbortedError):
        reason = "connection broken"
    elif isinstance(exc, ssl.SSLError):
        reason = "TLS error"
    elif isinstance(exc, FileNotFoundError):
        reason = "no such socket"
    else:
        reason = "connection error"
    detail = str(exc) or type(exc).__name__
    return reason if detail == reason else f"{reason} ({detail})"


def _translate(exc: Exception, where: str = "Redis") -> StorageError:
    """The :class:`StorageError` (or retryable :class:`Disconnected`) for a failure of
    one request; ``where`` names the server (``"Redis at host:port"``). The caller
    raises it ``from`` ``exc``. Server error replies keep the server's own text."""
    if isinstance(exc, RedisReplyError):
        if exc.code in _AUTH_CODES:
            return StorageError(f"{where} refused the credentials: {exc}")
        if exc.code in _BUSY_CODES:
            return Disconnected(f"{where} cannot serve requests yet: {exc}")
        if exc.code in _REFUSED_WRITE_CODES:
            return StorageError(f"{where} refused the command: {exc}")
        return StorageError(f"{where} replied with an error: {exc}")
    if isinstance(exc, OSError):
        return Disconnected(f"lost the connection to {where}: {describe_os_error(exc)}")
    return StorageError(f"{where} error: {type(exc).__name__}: {exc}")


async def with_retry(attempt: Callable[[bool], Awaitable[T]], budget: float) -> T:
    """Run ``attempt(retrying)``, retrying :class:`Disconnected` with capped exponential
    backoff for at most ``budget`` seconds.

    Each attempt is bounded by the client (``command_timeout`` per request), so a call
    returns within about ``budget + command_timeout``.

    Raises:
        StorageError: from the last attempt's cause, its message kept, once ``budget``
            is spent; any other ``StorageError`` of an attempt at once.
    """
    deadline = trio.current_time() + budget
    delay = 0.02
    retrying = False
    while True:
        try:
            return await attempt(retrying)
        except Disconnected as exc:
            if trio.current_time() + delay > deadline:
                raise StorageError(f"Redis unavailable for {budget:g} s: {exc}") from exc.__cause__
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
