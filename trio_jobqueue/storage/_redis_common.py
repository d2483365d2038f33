"""The parts of the Redis clients that do not depend on the driver's event loop: scripts,
errors, channel bookkeeping and the retry loop (shared by :mod:`._redis_adapter` and
:mod:`._redis_trio`)."""

from __future__ import annotations

import hashlib
import heapq
import importlib.resources
import itertools
import logging
import math
import random
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import attrs
import trio

from .._errors import StorageError

__all__ = [
    "AdapterCommon",
    "BlockingConnection",
    "ChannelHandler",
    "Disconnected",
    "RedisReplyError",
    "ScriptArg",
    "Subscriptions",
    "script",
    "subscription_commands",
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
_BUSY_CODES = frozenset({"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"})
"""Error codes of a server that did not run the command but will soon (retried)."""
_REFUSED_WRITE_CODES = frozenset({"OOM", "READONLY", "MISCONF", "NOREPLICAS"})
"""Error codes of a server that refuses writes (an operator's problem: not retried here)."""


class ChannelHandler(Protocol):
    def on_message(self, data: bytes) -> None: ...

    def on_reconnect(self) -> None: ...


class BlockingConnection(Protocol):
    """A dedicated connection for one blocking command at a time (the wake-up
    listener's ``BLPOP``): its deadline is the command's own timeout plus
    ``command_timeout``, never ``command_timeout`` alone."""

    async def pop(self, key: str, timeout: float) -> bytes | None:
        """``BLPOP key timeout``: the popped element, or ``None`` after ``timeout``
        seconds.

        Raises:
            Disconnected: the connection failed or the server stayed silent past the
                deadline (the connection is unusable then: close it).
            StorageError: an error reply.
        """
        ...

    async def aclose(self) -> None: ...


_IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_COMMENT = re.compile(rb"--[^\n]*")


def _prelude(lib: bytes, body: bytes) -> bytes:
    """The definitions of ``lib`` that ``body`` uses, directly or through each other,
    in their order.

    Redis runs a script's whole source on every call, so every definition of the prelude
    costs every call (closures and tables to allocate, then collect: about 3 us per call
    for the whole library, as much as a small script's own work). ``lib`` is a sequence
    of top-level definitions, each starting at a line ``local ...`` (a ``do ... end``
    block belongs to the ``local`` before it); comments are left out.
    """
    blocks: list[tuple[set[bytes], set[bytes], bytes]] = []
    for chunk in re.split(rb"\n(?=local )", _COMMENT.sub(b"", lib)):
        text = b"\n".join(line for line in chunk.split(b"\n") if line.strip())
        if not text.startswith(b"local "):
            continue
        head = text.split(b"\n", 1)[0]
        if head.startswith(b"local function "):
            names = {head.split()[2].split(b"(")[0]}
        else:
            names = set(_IDENTIFIER.findall(head[len(b"local ") :].split(b"=")[0]))
        blocks.append((names, set(_IDENTIFIER.findall(text)) - names, text))
    wanted = set(_IDENTIFIER.findall(_COMMENT.sub(b"", body)))
    used = [False] * len(blocks)
    grew = True
    while grew:
        grew = False
        for i, (names, refs, _) in enumerate(blocks):
            if not used[i] and names & wanted:
                used[i] = grew = True
                wanted |= refs
    return b"\n".join(text for (_, _, text), keep in zip(blocks, used, strict=True) if keep)


_CONSTANT = re.compile(
    rb"^local ([A-Z][A-Z0-9_]*(?:, [A-Z][A-Z0-9_]*)*) =\s*(\d+(?:, \d+)*)[ \t]*(?:--[^\n]*)?\n",
    re.M,
)


def _inline_constants(source: bytes) -> bytes:
    """Replace the numeric constants of ``source`` by their values.

    A top-level ``local NAME = 123`` (or ``local A, B = 1, 2``) with upper-case names
    is a constant: its declaration is dropped and every use of the name becomes the
    number. Lua 5.1 has no constants, and a local that functions use is an upvalue of
    each of them, created on every call: the 14 field positions of a job record alone
    cost about 1 us per call. The result means the same as ``source``.

    Raises:
        RuntimeError: such a name is assigned somewhere (it is not a constant).
    """
    values: dict[bytes, bytes] = {}

    def drop(match: re.Match[bytes]) -> bytes:
        names, numbers = match[1].split(b", "), match[2].split(b", ")
        if len(names) != len(numbers):
            return match[0]
        values.update(zip(names, numbers, strict=True))
        return b""

    source = _CONSTANT.sub(drop, source)
    if not values:
        return source
    names = re.compile(rb"\b(" + b"|".join(map(re.escape, values)) + rb")\b")
    assigned = re.compile(names.pattern + rb"\s*(?:,[^=\n]*)?=(?!=)")
    found = assigned.search(source)
    if found is not None:
        raise RuntimeError(f"Lua constant {found[1].decode()} is assigned: name it in lower case")
    return names.sub(lambda m: values[m[1]], source)


def _load_script(name: str) -> bytes:
    """``lua/<name>.lua`` with the parts of ``lua/_lib.lua`` it uses in front of it
    (package data of the wheel; see :func:`_prelude`), numeric constants inlined (see
    :func:`_inline_constants`).

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
    return shebang + newline + _inline_constants(_prelude(lib, rest) + b"\n" + rest)


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
    sharded: bool = False
    """Subscribed with ``SSUBSCRIBE`` (sharded pub/sub) rather than ``SUBSCRIBE``."""
    linger: float = _LINGER
    """Seconds it stays subscribed after its last user left."""
    users: int = 0
    idle_since: float = 0.0
    confirmed: trio.Event = attrs.Factory(trio.Event)
    generation: int = 0
    in_idle: bool = False
    """Whether the idle heap holds an entry for it (at most one: a channel used and left
    at every request costs one wake-up of the pub/sub task per linger, not one each)."""


_tiebreak = itertools.count()


@attrs.define(eq=False)
class Subscriptions:
    """The reference-counted channels of one client, and what its pub/sub connection must
    (un)subscribe to match them.

    Users enter :meth:`use`; the client's pub/sub task calls :meth:`plan` whenever
    :attr:`changed` is set (or at the time :meth:`plan` returned) and sends the
    commands, and feeds every push to :meth:`dispatch`. Each step costs O(what
    changed), not O(channels), so thousands of per-job channels are cheap.
    """

    channels: dict[str, _Channel] = attrs.Factory(dict)
    """Channels in use or lingering; the pub/sub connection subscribes to exactly these."""
    changed: trio.Event = attrs.Factory(trio.Event)
    messages: int = 0
    """Messages received on the pub/sub connection (any channel), for tests and tools."""
    _new: list[str] = attrs.Factory(list)
    """Names of channels created since the last plan."""
    _idle: list[tuple[float, int, _Channel]] = attrs.Factory(list)
    """Heap of (when its linger ends, tie-break, channel) for channels whose users left."""
    _pending: dict[str, int] = attrs.Factory(dict)
    """(S)SUBSCRIBE commands sent on this connection and not confirmed yet, per name: a
    confirmation counts only once every one of them answered, so a late answer to an
    earlier subscription of the same name cannot confirm a newer one too early."""

    def _poke(self) -> None:
        self.changed.set()

    @asynccontextmanager
    async def use(
        self,
        channel: str,
        handler: ChannelHandler,
        *,
        timeout: float,
        sharded: bool = False,
        linger: float = _LINGER,
    ) -> AsyncIterator[None]:
        """See :meth:`AdapterCommon.subscription`."""
        chan = self.channels.get(channel)
        if chan is None:
            chan = self.channels[channel] = _Channel(channel, handler, sharded, linger)
            self._new.append(channel)
            self._poke()
        chan.users += 1
        try:
            if not chan.confirmed.is_set():
                with trio.move_on_after(timeout) as scope:
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
                if not chan.in_idle:
                    # (Else its entry is due earlier: plan() pushes it again then.)
                    chan.in_idle = True
                    heapq.heappush(
                        self._idle, (chan.idle_since + chan.linger, next(_tiebreak), chan)
                    )
                    if chan.linger > 0:
                        self._poke()
                    # Else (per-job channels): no write of its own; the unsubscription
                    # goes out with the next (un)subscription, or at the next idle probe.

    def plan(
        self, subscribed: dict[str, _Channel], *, fresh: bool
    ) -> tuple[list[_Channel], list[_Channel], float]:
        """Channels to subscribe and to unsubscribe now on a connection subscribed to
        ``subscribed`` (updated in place; ``fresh``: a new connection, subscribed to
        nothing yet), and when to plan again at the latest (a linger ends)."""
        now = trio.current_time()
        drop: list[_Channel] = []
        idle = self._idle
        while idle and idle[0][0] <= now:
            chan = heapq.heappop(idle)[2]
            chan.in_idle = False
            if chan.users != 0 or self.channels.get(chan.name) is not chan:
                continue  # in use again (its next release queues it), or replaced
            if chan.idle_since + chan.linger > now:
                # Used and left again since it was queued: its linger ends later.
                chan.in_idle = True
                heapq.heappush(idle, (chan.idle_since + chan.linger, next(_tiebreak), chan))
                continue
            del self.channels[chan.name]
            if subscribed.get(chan.name) is chan:
                del subscribed[chan.name]
                drop.append(chan)
        if fresh:
            self._pending.clear()
            self._new.clear()
            candidates = list(self.channels.values())
        else:
            names, self._new = self._new, []
            candidates = [c for c in map(self.channels.get, names) if c is not None]
        add: list[_Channel] = []
        for chan in candidates:
            if subscribed.get(chan.name) is not chan:
                subscribed[chan.name] = chan
                self._pending[chan.name] = self._pending.get(chan.name, 0) + 1
                add.append(chan)
        return add, drop, idle[0][0] if idle else math.inf

    def dispatch(self, kind: str, channel: object, data: object) -> None:
        """One pub/sub push: a (sharded) message goes to the channel's handler; a
        (sharded) subscription's confirmation sets ``confirmed`` and, on re-subscription
        after a reconnect, calls the handler's ``on_reconnect``."""
        if kind in ("message", "smessage"):
            self.messages += 1
        elif kind not in ("subscribe", "ssubscribe"):
            return
        name = channel.decode("utf-8") if isinstance(channel, bytes) else str(channel)
        chan = self.channels.get(name)
        if kind in ("subscribe", "ssubscribe"):
            pending = self._pending.pop(name, 0) - 1
            if pending > 0:
                self._pending[name] = pending
                return
            if chan is None:
                return
            chan.generation += 1
            chan.confirmed.set()
            if chan.generation > 1:
                chan.handler.on_reconnect()
        elif chan is not None and isinstance(data, bytes):
            chan.handler.on_message(data)


def subscription_commands(
    add: Sequence[_Channel], drop: Sequence[_Channel]
) -> list[tuple[str, list[str]]]:
    """The (S)(UN)SUBSCRIBE commands for a plan, as ``(verb, channels)``: sharded
    channels grouped by hash tag (a sharded command may name channels of one slot
    only), unsubscriptions first."""
    out: list[tuple[str, list[str]]] = []
    for verbs, chans in (
        (("UNSUBSCRIBE", "SUNSUBSCRIBE"), drop),
        (("SUBSCRIBE", "SSUBSCRIBE"), add),
    ):
        plain = [c.name for c in chans if not c.sharded]
        if plain:
            out.append((verbs[0], plain))
        by_tag: dict[str, list[str]] = {}
        for chan in chans:
            if chan.sharded:
                by_tag.setdefault(chan.name.partition("}")[0], []).append(chan.name)
        out.extend((verbs[1], names) for names in by_tag.values())
    return out


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


async def _scan(
    command: Callable[..., Awaitable[Any]], match: str, count: int
) -> list[bytes]:
    """A full ``SCAN`` iteration of one node through ``command``."""
    found: list[bytes] = []
    cursor = 0
    while True:
        reply = await command("SCAN", cursor, "MATCH", match, "COUNT", count)
        cursor = int(reply[0])
        found.extend(key if isinstance(key, bytes) else str(key).encode() for key in reply[1])
        if cursor == 0:
            return found


def _wait_command(replicas: int, timeout: float) -> tuple[ScriptArg, ...]:
    """``WAIT``: 0 ms would mean "forever" to Redis, so at least 1 ms."""
    return ("WAIT", int(replicas), max(1, round(timeout * 1000)))


class AdapterCommon:
    """What both Redis clients do the same way on top of their own transport: commands and
    scripts with retries, and reference-counted channel subscriptions with their
    dispatch. A client provides ``_command_once``, ``_evalsha``, ``open_blocking`` and
    ``start_service``, and keeps ``_subs`` (its pub/sub task subscribes to exactly
    ``_subs.channels``).
    """

    retry_timeout: float
    _subs: Subscriptions

    async def _command_once(self, args: Sequence[ScriptArg]) -> Any:
        raise NotImplementedError

    async def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        raise NotImplementedError

    async def _evalsha_waited(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], wait: Sequence[ScriptArg]
    ) -> tuple[Any, int]:
        raise StorageError("this Redis client cannot confirm writes with WAIT")

    async def _command_waited(
        self, args: Sequence[ScriptArg], wait: Sequence[ScriptArg]
    ) -> tuple[Any, int]:
        raise StorageError("this Redis client cannot confirm writes with WAIT")

    async def run_script_waited(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        replicas: int,
        timeout: float,
    ) -> tuple[Any, int]:
        """Run ``lua/<name>.lua`` followed, on the same connection (the master of the
        keys' slot), by ``WAIT replicas <timeout ms>``; return the script's reply and the
        number of replicas that acknowledged every write of that connection so far.

        Raises:
            StorageError: from the driver error (after retries for connection errors).
        """
        wait = _wait_command(replicas, timeout)

        async def attempt(retrying: bool) -> tuple[Any, int]:
            return await self._evalsha_waited(name, keys, args, wait)

        return await with_retry(attempt, self.retry_timeout)

    async def command_waited(
        self, *args: ScriptArg, replicas: int, timeout: float
    ) -> tuple[Any, int]:
        """Like :meth:`run_script_waited` for one command (routed by its first key)."""
        wait = _wait_command(replicas, timeout)

        async def attempt(retrying: bool) -> tuple[Any, int]:
            return await self._command_waited(args, wait)

        return await with_retry(attempt, self.retry_timeout)

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

    async def scan_keys(self, match: str, *, count: int = 10_000) -> list[bytes]:
        """Every key matching ``match`` (a ``SCAN`` glob), by a full ``SCAN`` iteration (on
        every master, for a cluster). Each step is one bounded ``SCAN`` call (retried on
        connection errors), so the server is never blocked for long; keys written
        meanwhile may or may not be seen.

        Raises:
            StorageError: from the driver error (after retries for connection errors).
        """
        return await _scan(self.command, match, count)

    async def open_blocking(self, key: str | None = None) -> BlockingConnection:
        """A new dedicated connection for blocking commands (see :class:`BlockingConnection`)
        on ``key`` (a cluster client connects to the node that owns its slot).

        Raises:
            Disconnected: it could not be made.
            StorageError: the server refused the credentials.
        """
        raise NotImplementedError

    def start_service(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)`` in the client's service nursery until it returns or the client
        closes (it must catch its own ``Exception``s).

        Raises:
            StorageError: the client is not open.
        """
        raise NotImplementedError

    @property
    def pubsub_messages(self) -> int:
        """Messages received so far on the pub/sub connection (every channel)."""
        return self._subs.messages

    def subscription(
        self,
        channel: str,
        handler: ChannelHandler,
        *,
        sharded: bool = False,
        linger: float = _LINGER,
    ) -> AbstractAsyncContextManager[None]:
        """Keep ``channel`` subscribed (reference-counted) while the context is open.

        ``handler`` is the one handler of the channel (later subscribers of the same
        channel must pass the same object, or an equivalent one: the first is kept).
        ``sharded`` uses sharded pub/sub (``SSUBSCRIBE``); ``linger`` is how long the
        channel stays subscribed after its last user left. Yields once the server
        confirmed the subscription.

        Raises:
            StorageError: not confirmed within ``retry_timeout`` seconds.
        """
        return self._subs.use(
            channel, handler, timeout=self.retry_timeout, sharded=sharded, linger=linger
        )
