"""The parts of the Redis clients that do not depend on the driver's event loop: scripts,
errors, channel bookkeeping and the retry loop (shared by :mod:`._redis_adapter` and
:mod:`._redis_trio`)."""

from __future__ import annotations

import functools
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
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
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


_CONSTANT = re.compile(
    rb"^local ([A-Z][A-Z0-9_]*(?:, [A-Z][A-Z0-9_]*)*) =\s*(\d+(?:, \d+)*)[ \t]*(?:--[^\n]*)?\n",
    re.M,
)


def _inline_constants(source: bytes) -> bytes:
    """Replace the numeric constants of ``source`` by their values.

    A ``local NAME = 123`` (or ``local A, B = 1, 2``) at the start of a line, with
    upper-case names, is a constant: its declaration is dropped and every use of the name
    becomes the number. Lua 5.1 has no constants; a number costs nothing where a local
    read by a function is an upvalue. The result means the same as ``source``.

    Raises:
        RuntimeError: such a name is assigned somewhere (it is not a constant), or two
            declarations give it different values.
    """
    values: dict[bytes, bytes] = {}

    def drop(match: re.Match[bytes]) -> bytes:
        names, numbers = match[1].split(b", "), match[2].split(b", ")
        if len(names) != len(numbers):
            return match[0]
        for name, number in zip(names, numbers, strict=True):
            if values.setdefault(name, number) != number:
                raise RuntimeError(f"Lua constant {name.decode()} has two values: rename one")
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


_COMMENT = re.compile(rb"--[^\n]*")
_SHEBANG = re.compile(rb"#!lua(?: flags=([a-z-]+(?:,[a-z-]+)*))?\s*")


@attrs.frozen
class _Library:
    """Every script of ``lua/`` as one Redis function library (``FUNCTION LOAD``).

    ``_lib.lua`` (the helpers) comes first, then each script's body as a Lua function of
    its own and its registration as the Redis function :attr:`_Script.function`. Redis
    runs a library's top level once, when it is loaded, so a call costs only ``begin``
    (its KEYS, ARGV and clock) and the script's own work; an ``EVALSHA`` of a script with
    the helpers in front of it re-created every helper on every call. The name carries a
    hash of the sources, so versions of the package side by side each use their own.
    """

    name: str
    source: bytes
    functions: dict[str, str]
    """Script name -> Redis function name."""


@functools.cache
def _sources() -> tuple[bytes, dict[str, tuple[bytes, bytes]]]:
    """``_lib.lua`` without comments, and per script its ``#!lua`` flags and body."""
    files = importlib.resources.files("trio_jobqueue").joinpath("lua")
    lib = _COMMENT.sub(b"", files.joinpath("_lib.lua").read_bytes())
    bodies: dict[str, tuple[bytes, bytes]] = {}
    for entry in sorted(files.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".lua") or entry.name == "_lib.lua":
            continue
        name = entry.name[: -len(".lua")]
        shebang, _, body = entry.read_bytes().partition(b"\n")
        match = _SHEBANG.fullmatch(shebang)
        if match is None:
            raise RuntimeError(f"lua/{entry.name} must start with a #!lua flags line")
        bodies[name] = (match[1] or b"", body)
    return lib, bodies


def _build_library() -> _Library:
    lib, bodies = _sources()
    digest = hashlib.sha1(lib)
    for name, (flags, body) in bodies.items():
        digest.update(b"\0" + name.encode() + b"\0" + flags + b"\0" + body)
    tag = digest.hexdigest()[:12]
    library = f"trio_jobqueue_{tag}"
    functions = {name: f"tjq_{tag}_{name}" for name in bodies}
    parts = [f"#!lua name={library}\n".encode(), lib]
    for name, (_, body) in bodies.items():
        parts += [f"\nlocal function script_{name}()\n".encode(), body, b"\nend\n"]
    for name, (flags, _) in bodies.items():
        listed = ", ".join(f"'{flag}'" for flag in flags.decode().split(",") if flag)
        parts.append(
            f"redis.register_function{{function_name = '{functions[name]}', "
            f"callback = function(keys, args) begin(keys, args) return script_{name}() end, "
            f"flags = {{{listed}}}}}\n".encode()
        )
    return _Library(library, _inline_constants(b"".join(parts)), functions)


@functools.cache
def eval_source(name: str) -> bytes:
    """``lua/<name>.lua`` as one script for ``EVAL``, with the same flags: the fallback
    when the library is missing and cannot be loaded because the server is above
    ``maxmemory`` (``FUNCTION LOAD`` is refused there, ``EVAL`` of an ``allow-oom``
    script is not), so that a handler's success is still stored. It re-creates the
    helpers on every call: slower, and only for that case."""
    lib, bodies = _sources()
    flags, body = bodies[name]
    shebang = b"#!lua flags=" + flags if flags else b"#!lua"
    parts = [
        shebang,
        b"\nlocal KEYS_IN, ARGV_IN = KEYS, ARGV\n",
        lib,
        f"\nlocal function script_{name}()\n".encode(),
        body,
        f"\nend\nbegin(KEYS_IN, ARGV_IN)\nreturn script_{name}()\n".encode(),
    ]
    return _inline_constants(b"".join(parts))


def is_refused_for_memory(reply: object) -> bool:
    """Whether a ``FUNCTION LOAD`` reply says the server is above ``maxmemory``."""
    return isinstance(reply, RedisReplyError) and reply.code == "OOM"


@functools.cache
def library() -> _Library:
    """The package's function library (built once per process)."""
    return _build_library()


@attrs.frozen
class _Script:
    name: str
    function: str
    """The Redis function that runs ``lua/<name>.lua`` (``FCALL``)."""

    @property
    def marker(self) -> bytes:
        """The bytes that name this script's calls on the wire (the function name as a
        RESP bulk string): what a test proxy looks for."""
        name = self.function.encode()
        return b"$%d\r\n%s\r\n" % (len(name), name)


_SCRIPTS: dict[str, _Script] = {}


def script(name: str) -> _Script:
    found = _SCRIPTS.get(name)
    if found is None:
        function = library().functions.get(name)
        if function is None:
            raise KeyError(f"no script lua/{name}.lua")
        found = _SCRIPTS[name] = _Script(name, function)
    return found


def is_missing_function(reply: object) -> bool:
    """Whether ``reply`` (an error reply of either client: the trio client's keeps the
    ``ERR`` code, redis-py's drops it) says the function is not loaded (a restart without
    persistence, ``FUNCTION FLUSH``, a new node): load the library and call again."""
    return isinstance(reply, Exception) and str(reply).removeprefix("ERR ").startswith(
        "Function not found"
    )


def is_loaded_already(reply: object) -> bool:
    """Whether a ``FUNCTION LOAD`` error reply (of either client) says the library is
    there already (another client loaded it first): as good as loaded."""
    return isinstance(reply, Exception) and "already exists" in str(reply)


def fcall(spec: _Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> tuple[ScriptArg, ...]:
    """The ``FCALL`` command of one script call."""
    return ("FCALL", spec.function, len(keys), *keys, *args)


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

    def use(
        self,
        channel: str,
        handler: ChannelHandler,
        *,
        timeout: float,
        sharded: bool = False,
        linger: float = _LINGER,
    ) -> _Use:
        """See :meth:`AdapterCommon.subscription`."""
        return _Use(self, channel, handler, timeout, sharded, linger)

    def _leave(self, chan: _Channel) -> None:
        """One user of ``chan`` left."""
        chan.users -= 1
        if chan.users == 0:
            chan.idle_since = trio.current_time()
            if not chan.in_idle:
                # (Else its entry is due earlier: plan() pushes it again then.)
                chan.in_idle = True
                heapq.heappush(self._idle, (chan.idle_since + chan.linger, next(_tiebreak), chan))
                if chan.linger > 0:
                    self._poke()
                # Else (per-job channels): no write of its own; the unsubscription goes
                # out with the next (un)subscription, or at the next idle probe.

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


class _Use:
    """One use of a channel (:meth:`Subscriptions.use`): entered, it counts as a user
    and waits for the server's confirmation; a channel confirmed already is entered
    without a schedule point (it still raises if the caller is cancelled). A plain
    class, not a generator: a job watch enters one per ``enqueue_and_wait``."""

    __slots__ = ("_chan", "_channel", "_handler", "_linger", "_sharded", "_subs", "_timeout")

    def __init__(
        self,
        subs: Subscriptions,
        channel: str,
        handler: ChannelHandler,
        timeout: float,
        sharded: bool,
        linger: float,
    ) -> None:
        self._subs = subs
        self._channel = channel
        self._handler = handler
        self._timeout = timeout
        self._sharded = sharded
        self._linger = linger
        self._chan: _Channel | None = None

    async def __aenter__(self) -> None:
        subs, channel = self._subs, self._channel
        chan = subs.channels.get(channel)
        if chan is None:
            chan = subs.channels[channel] = _Channel(
                channel, self._handler, self._sharded, self._linger
            )
            subs._new.append(channel)
            subs._poke()
        chan.users += 1
        entered = False
        try:
            if not chan.confirmed.is_set():
                with trio.move_on_after(self._timeout) as scope:
                    await chan.confirmed.wait()
                if scope.cancelled_caught:
                    raise StorageError(f"Redis did not confirm the subscription to {channel!r}")
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            entered = True
        finally:
            if entered:
                self._chan = chan
            else:
                subs._leave(chan)  # the use ends with its failed entry

    async def __aexit__(self, *exc: object) -> None:
        chan, self._chan = self._chan, None
        if chan is not None:
            self._subs._leave(chan)


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


async def with_retry(
    attempt: Callable[[bool], Awaitable[T]],
    budget: float,
    *,
    failed: Disconnected | None = None,
    started: float | None = None,
) -> T:
    """Run ``attempt(retrying)``, retrying :class:`Disconnected` with capped exponential
    backoff for at most ``budget`` seconds.

    Each attempt is bounded by the client (``command_timeout`` per request), so a call
    returns within about ``budget + command_timeout``. ``failed``: a first attempt made
    by the caller itself (at ``started``) already failed with it; go on from there.

    Raises:
        StorageError: from the last attempt's cause, its message kept, once ``budget``
            is spent; any other ``StorageError`` of an attempt at once.
    """
    deadline = (trio.current_time() if started is None else started) + budget
    delay = 0.02
    retrying = failed is not None
    while True:
        if failed is None:
            try:
                return await attempt(retrying)
            except Disconnected as exc:
                failed = exc
        if trio.current_time() + delay > deadline:
            cause = failed.__cause__
            raise StorageError(f"Redis unavailable for {budget:g} s: {failed}") from cause
        log.debug("Redis connection error, retrying in %.2f s: %s", delay, failed)
        await trio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)
        retrying = True
        failed = None


async def _scan(command: Callable[..., Awaitable[Any]], match: str, count: int) -> list[bytes]:
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
    dispatch. A client provides ``_command_once``, ``_fcall``, ``open_blocking`` and
    ``start_service``, and keeps ``_subs`` (its pub/sub task subscribes to exactly
    ``_subs.channels``).
    """

    retry_timeout: float
    _subs: Subscriptions

    async def _command_once(self, args: Sequence[ScriptArg]) -> Any:
        raise NotImplementedError

    async def _fcall(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        raise NotImplementedError

    async def _fcall_waited(
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
            return await self._fcall_waited(name, keys, args, wait)

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

        first = args(False) if callable(args) else args
        if not retry:
            return await self._fcall(name, keys, first)
        started = trio.current_time()
        try:  # the first attempt without the retry machinery: most calls need no more
            return await self._fcall(name, keys, first)
        except Disconnected as exc:
            failed = exc

        async def attempt(retrying: bool) -> Any:
            argv = args(retrying) if callable(args) else args
            return await self._fcall(name, keys, argv)

        budget = self.retry_timeout if retry_for is None else retry_for
        return await with_retry(attempt, budget, failed=failed, started=started)

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
