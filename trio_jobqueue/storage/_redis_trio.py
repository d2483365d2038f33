"""A trio-native Redis client (RESP2 over trio streams, parsed by ``hiredis``).

:class:`TrioRedisAdapter` has the interface and semantics of
:class:`~._redis_adapter.RedisAdapter` (redis-py through trio-asyncio) at a fraction of
its CPU cost per request: no asyncio loop iterations, no per-call tasks or locks. It uses
nothing of redis-py: URLs are parsed by :mod:`._redis_url` (standard library), hiredis
packs commands and parses replies, and error replies are classified by their code
(:class:`~._redis_common.RedisReplyError`).

Design:

* One **command connection** with automatic pipelining. A call packs its command
  (``hiredis.pack_command``), appends a slot to the pending list and parks its task. One
  writer task sends everything pending with one ``send_all``; one reader task parses
  replies (``hiredis.Reader``) and resolves the slots in FIFO order. A cancelled caller
  abandons its slot: unsent, it is dropped; sent, its reply is still read and discarded,
  so the connection never desynchronizes.
* **Deadlines without a cancel scope per call**: one watchdog task per connection looks
  at the oldest unanswered request. When the server has been silent for
  ``command_timeout`` seconds while a reply is due (since that request was sent or since
  the last bytes arrived, whichever is later), the connection is torn down. When the
  connection has been idle for ``health_check_interval`` seconds, the watchdog sends a
  ``PING`` through the pipeline, so a half-open idle connection is found within
  ``health_check_interval + command_timeout``.
* On connection loss every call in flight fails with :class:`Disconnected` (callers retry
  with :func:`~._redis_common.with_retry`, bounded by ``retry_timeout``); calls not sent
  yet stay queued, and the connection is made again when calls are waiting (``AUTH`` /
  ``SELECT`` first, bounded by ``socket_connect_timeout``).
* One **pub/sub connection**, subscribed to exactly the reference-counted channels in
  use (or lingering); messages are dispatched synchronously from its reader. It sends a
  ``PING`` after ``health_check_interval`` seconds of silence and gives up on the
  connection when a ``PING`` or (un)subscription gets no answer within
  ``command_timeout``. After a reconnect (with backoff) every channel is re-subscribed
  and its handler's ``on_reconnect`` runs.
* Every task lives in a nursery owned by a trio **system task** started by
  :meth:`~TrioRedisAdapter.open` and stopped by :meth:`~TrioRedisAdapter.close`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import hiredis
import outcome
import trio

from .._errors import StorageError
from ._redis_common import (
    AdapterCommon,
    Disconnected,
    RedisReplyError,
    ScriptArg,
    Subscriptions,
    _Channel,
    _translate,
    describe_os_error,
    eval_source,
    fcall,
    is_loaded_already,
    is_missing_function,
    is_refused_for_memory,
    library,
    root_os_error,
    script,
    subscription_commands,
)
from ._redis_url import CONNECTION_OPTIONS, DEFAULTS, check_seconds, parse_url, split_query

__all__ = ["SentinelResolver", "TrioRedisAdapter", "request_once"]

log = logging.getLogger("trio_jobqueue.redis")

_RECEIVE = 65536
_OPTIONS = {*CONNECTION_OPTIONS, "username", "password"}
_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def _reader() -> hiredis.Reader:
    """A RESP parser whose error replies are :class:`RedisReplyError` instances."""
    return hiredis.Reader(replyError=RedisReplyError)


def _pack(args: Sequence[ScriptArg]) -> bytes:
    """One command in RESP (hiredis's C encoder; its stub types a 1-tuple)."""
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


def _failure(message: str, cause: BaseException) -> Disconnected:
    error = Disconnected(message)
    error.__cause__ = cause
    return error


def _copy(error: StorageError) -> StorageError:
    """A fresh exception per waiting caller (one object raised by many tasks would
    collect their tracebacks)."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


@attrs.define(eq=False)
class _Target:
    """Where and how to connect, from the URL and the options."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    connect_timeout: float = DEFAULTS["socket_connect_timeout"]

    @property
    def address(self) -> str:
        """``host:port`` or the socket path, for messages."""
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def where(self) -> str:
        return f"Redis at {self.address}"

    @classmethod
    def parse(cls, url: str, options: dict[str, Any]) -> _Target:
        """Raises:
        StorageError: an option the trio client does not support.
        ValueError: a malformed URL or option value.
        """
        unknown = set(options) - _OPTIONS
        if unknown:
            raise StorageError(
                f"option(s) {sorted(unknown)} are not supported by the trio Redis client"
                ' (client="asyncio" passes options to redis-py)'
            )
        parsed = parse_url(url)
        storage_options, kwargs = split_query(parsed.query)
        if storage_options:
            raise ValueError(
                f"storage option(s) {sorted(storage_options)} belong to RedisStorage,"
                " not to the Redis client"
            )
        kwargs.update(options)
        db = kwargs.get("db", parsed.db)
        target = cls(
            host=parsed.host,
            port=parsed.port,
            path=parsed.path,
            db=int(db or 0),
            username=kwargs.get("username", parsed.username),
            password=kwargs.get("password", parsed.password),
            connect_timeout=check_seconds(
                "socket_connect_timeout",
                kwargs.get("socket_connect_timeout", DEFAULTS["socket_connect_timeout"]),
            ),
        )
        if parsed.scheme in ("rediss", "rediss+sentinel"):
            target.ssl_context = _ssl_context(kwargs)
        return target


def _ssl_context(kwargs: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context for the ``ssl_*`` settings (the same meaning as redis-py's)."""
    reqs: Any = kwargs.get("ssl_cert_reqs", "required")
    if isinstance(reqs, str):
        modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}
        reqs = modes.get(reqs.lower(), ssl.CERT_REQUIRED)
    check = kwargs.get("ssl_check_hostname", True)
    if isinstance(check, str):
        check = check.lower() not in ("0", "false", "no", "off")
    context = ssl.create_default_context()
    context.check_hostname = bool(check) and reqs != ssl.CERT_NONE
    context.verify_mode = reqs
    if kwargs.get("ssl_certfile"):
        context.load_cert_chain(
            kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"), kwargs.get("ssl_password")
        )
    ca_certs, ca_path, ca_data = (
        kwargs.get("ssl_ca_certs"),
        kwargs.get("ssl_ca_path"),
        kwargs.get("ssl_ca_data"),
    )
    if ca_certs or ca_path or ca_data:
        context.load_verify_locations(cafile=ca_certs, capath=ca_path, cadata=ca_data)
    if kwargs.get("ssl_min_version") is not None:
        context.minimum_version = kwargs["ssl_min_version"]
    if kwargs.get("ssl_ciphers"):
        context.set_ciphers(kwargs["ssl_ciphers"])
    return context


async def _open_stream(target: _Target) -> trio.abc.Stream:
    """Connect, TLS handshake, ``AUTH`` and ``SELECT``, all within ``connect_timeout``.

    Raises:
        Disconnected: the connection could not be made ("cannot connect to Redis at
            host:port: connection refused / timed out / name not found ..."), from the
            OS error.
        StorageError: the server refused ``AUTH`` or ``SELECT``, from its
            :class:`RedisReplyError`.
    """
    stream: trio.abc.Stream | None = None
    where = target.where
    phase = "no connection"
    try:
        with trio.fail_after(target.connect_timeout):
            if target.path is not None:
                stream = await trio.open_unix_socket(target.path)
            else:
                stream = await trio.open_tcp_stream(target.host, target.port)
            phase = "connected, but no TLS handshake"
            if isinstance(stream, trio.SocketStream):
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if target.ssl_context is not None:
                server_hostname = target.host if target.ssl_context.check_hostname else None
                tls = trio.SSLStream(stream, target.ssl_context, server_hostname=server_hostname)
                stream = tls
                await tls.do_handshake()
            hello: list[tuple[ScriptArg, ...]] = []
            if target.password is not None:
                if target.username:
                    hello.append(("AUTH", target.username, target.password))
                else:
                    hello.append(("AUTH", target.password))
            if target.db:
                hello.append(("SELECT", target.db))
            if hello:
                phase = "connected, but no reply to AUTH/SELECT"
                await stream.send_all(b"".join(_pack(c) for c in hello))
                reader = _reader()
                for _ in hello:
                    reply = reader.gets()
                    while reply is False:
                        data = await stream.receive_some(_RECEIVE)
                        if not data:
                            raise ConnectionResetError("the server closed the connection")
                        reader.feed(data)  # type: ignore[arg-type]
                        reply = reader.gets()
                    if isinstance(reply, RedisReplyError):
                        raise _translate(reply, where) from reply
        return stream
    except trio.TooSlowError:
        await _aclose(stream)
        cause = TimeoutError(f"{phase} within {target.connect_timeout:g} s")
        raise _failure(f"cannot connect to {where}: timed out ({cause})", cause) from cause
    except (OSError, trio.BrokenResourceError, ssl.SSLError, hiredis.ProtocolError) as exc:
        await _aclose(stream)
        root = root_os_error(exc)
        raise _failure(f"cannot connect to {where}: {describe_os_error(root)}", root) from root
    except BaseException:
        await _aclose(stream)
        raise


async def request_once(
    url: str, options: dict[str, Any], commands: Sequence[Sequence[ScriptArg]], timeout: float
) -> list[Any]:
    """Send ``commands`` on a connection of their own and return their raw replies
    (error replies as :class:`RedisReplyError`), the connection then closed: for the
    cluster client's slot-map queries and ``ASKING`` redirections.

    Raises:
        Disconnected: no connection, or no full reply within ``timeout`` seconds after
            connecting.
        StorageError: the server refused the credentials.
    """
    target = _Target.parse(url, options)
    stream = await _open_stream(target)
    replies: list[Any] = []
    try:
        with trio.move_on_after(timeout):
            await stream.send_all(b"".join(_pack(c) for c in commands))
            reader = _reader()
            while len(replies) < len(commands):
                reply = reader.gets()
                if reply is False:
                    data = await stream.receive_some(_RECEIVE)
                    if not data:
                        raise ConnectionResetError("the server closed the connection")
                    reader.feed(data)  # type: ignore[arg-type]
                    continue
                replies.append(reply)
    except (*_NETWORK_ERRORS, hiredis.ProtocolError) as exc:
        root = root_os_error(exc)
        message = f"lost the connection to {target.where}: {describe_os_error(root)}"
        raise _failure(message, root) from root
    finally:
        with trio.CancelScope(shield=True):
            await _aclose(stream)
    if len(replies) < len(commands):
        cause = TimeoutError(f"no reply within {timeout:g} s")
        raise _failure(f"lost the connection to {target.where}: timed out", cause)
    return replies


def _receiver(stream: trio.abc.Stream) -> Callable[[], Awaitable[bytes | bytearray]]:
    """``stream.receive_some`` for a connection's one reader, cheaper on a plain socket.

    A reply is rarely there yet when the reader asks for the next one, so on a plain
    socket it waits until the descriptor is readable and then reads, instead of trio's
    read-first (a ``recv`` that fails with ``EAGAIN``, its exception, then the wait and a
    second ``recv``). A read that filled the buffer is followed by another one at once
    (after a schedule point). TLS streams go through ``receive_some`` as they are.
    Raises ``OSError`` for a broken connection; ``b""`` means the server closed it.
    """
    if not isinstance(stream, trio.SocketStream):
        return functools.partial(stream.receive_some, _RECEIVE)
    fd = stream.socket.fileno()
    wait, read = trio.lowlevel.wait_readable, os.read
    drained = True

    async def receive() -> bytes | bytearray:
        nonlocal drained
        if drained:
            await wait(fd)
        else:
            await trio.lowlevel.checkpoint()
        while True:
            try:
                data = read(fd, _RECEIVE)
            except BlockingIOError:
                await wait(fd)
                continue
            drained = len(data) < _RECEIVE
            return data

    return receive


def _direct_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """A non-blocking duplicate of a plain socket stream's descriptor (``None`` for TLS):
    sending on it needs no task of its own."""
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = stream.socket
    try:
        direct = socket.fromfd(sock.fileno(), sock.family, sock.type)
    except OSError:
        return None
    direct.setblocking(False)
    return direct


async def _aclose(stream: trio.abc.Stream | None) -> None:
    if stream is not None:
        await trio.aclose_forcefully(stream)


class _Slot:
    """One request: its packed command and the task waiting for the reply."""

    __slots__ = ("data", "task")

    def __init__(self, data: bytes, task: trio.lowlevel.Task) -> None:
        self.data = data
        self.task: trio.lowlevel.Task | None = task
        """``None`` once resolved or abandoned (the caller was cancelled)."""

    def resolve(self, result: outcome.Outcome[Any]) -> None:
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, result)


class _KeptSlot(_Slot):
    """The first of a pair of requests (:meth:`TrioRedisAdapter._call_then_wait`): its
    reply is kept for the caller, who waits on the second one."""

    __slots__ = ("result",)

    def __init__(self, data: bytes, task: trio.lowlevel.Task) -> None:
        super().__init__(data, task)
        self.result: outcome.Outcome[Any] | None = None

    def resolve(self, result: outcome.Outcome[Any]) -> None:
        if self.task is not None:
            self.task = None
            self.result = result


class _WaitSlot(_Slot):
    """A ``WAIT`` not sent yet: durable writes queued meanwhile go in front of it and
    share its reply (it counts every earlier write of the connection), so concurrent
    durable enqueues wait for the replicas once per batch, not once each."""

    __slots__ = ("waiters",)

    def __init__(self, wait: bytes, task: trio.lowlevel.Task) -> None:
        super().__init__(wait, task)
        self.waiters: list[trio.lowlevel.Task] = [task]

    def resolve(self, result: outcome.Outcome[Any]) -> None:
        self.task = None
        waiters, self.waiters = self.waiters, []
        for task in waiters:
            # An outcome is unwrapped once: one per waiter.
            if isinstance(result, outcome.Error):
                error = result.error
                copy = _copy(error) if isinstance(error, StorageError) else error
                trio.lowlevel.reschedule(task, outcome.Error(copy))
            elif isinstance(result, outcome.Value):
                trio.lowlevel.reschedule(task, outcome.Value(result.value))


class _BlockingConnection:
    """A connection of its own for one blocking command at a time (see
    :class:`~._redis_common.BlockingConnection`)."""

    def __init__(self, stream: trio.abc.Stream, command_timeout: float, where: str) -> None:
        self._stream = stream
        self._timeout = command_timeout
        self._where = where
        self._reader = _reader()

    async def pop(self, key: str, timeout: float) -> bytes | None:
        deadline = timeout + self._timeout
        reply: Any = False
        try:
            with trio.move_on_after(deadline):
                await self._stream.send_all(_pack(("BLPOP", key, f"{timeout:.3f}")))
                reply = self._reader.gets()
                while reply is False:
                    data = await self._stream.receive_some(_RECEIVE)
                    if not data:
                        raise ConnectionResetError("the server closed the connection")
                    self._reader.feed(data)  # type: ignore[arg-type]
                    reply = self._reader.gets()
        except (*_NETWORK_ERRORS, hiredis.ProtocolError) as exc:
            root = root_os_error(exc)
            message = f"lost the blocking connection to {self._where}: {describe_os_error(root)}"
            raise _failure(message, root) from root
        if reply is False:
            cause = TimeoutError(f"no reply within {timeout:g} s + command_timeout")
            raise _failure(f"lost the blocking connection to {self._where}: timed out", cause)
        if isinstance(reply, RedisReplyError):
            error = _translate(reply, self._where)
            raise error from reply
        return None if reply is None else bytes(reply[1])

    async def aclose(self) -> None:
        await _aclose(self._stream)


@attrs.define(eq=False)
class SentinelResolver:
    """The master of ``service`` as Redis Sentinel names it (``SENTINEL
    GET-MASTER-ADDR-BY-NAME``), asked of the sentinels in turn (the last one that
    answered first)."""

    sentinels: list[tuple[str, int]]
    service: str
    options: dict[str, Any] = attrs.Factory(dict)
    """Connection options for the sentinels (TLS settings)."""
    tls: bool = False
    lookups: int = 0
    """Addresses asked for so far (statistics)."""
    known: tuple[str, int] | None = None
    """The master's address as last named (by a lookup or a ``+switch-master``)."""

    def url(self, host: str, port: int) -> str:
        """The URL of the sentinel at ``host:port``."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{'rediss' if self.tls else 'redis'}://{address}"

    async def master(self, timeout: float) -> tuple[str, int]:
        """Raises:
        Disconnected: no sentinel answered with an address within ``timeout`` seconds
            each (the message says what each one did).
        """
        self.lookups += 1
        failures: list[str] = []
        for index, (host, port) in enumerate(list(self.sentinels)):
            url = self.url(host, port)
            address = url.partition("://")[2]
            command = ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            try:
                (reply,) = await request_once(url, self.options, [command], timeout)
            except Disconnected as exc:
                failures.append(str(exc))
                continue
            if isinstance(reply, list) and len(reply) == 2:
                if index:
                    self.sentinels.insert(0, self.sentinels.pop(index))
                found = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                self.known = (found, int(reply[1]))
                return self.known
            failures.append(f"sentinel {address} does not know {self.service!r}: {reply!r}")
        raise Disconnected(
            f"no sentinel named the master of {self.service!r}: {'; '.join(failures)}"
        )


@attrs.define(eq=False)
class TrioRedisAdapter(AdapterCommon):
    """A trio-native Redis client with the interface of ``RedisAdapter``.

    ``command_timeout`` bounds the server's silence while a reply is due (the connection
    is torn down after it); ``health_check_interval`` is the idle time after which a
    connection is probed with ``PING``. ``options`` are connection options (``ssl_*``,
    ``db``, ``username``, ``password``, ``socket_connect_timeout``).
    """

    url: str
    retry_timeout: float = DEFAULTS["retry_timeout"]
    options: dict[str, Any] = attrs.Factory(dict)
    command_timeout: float = DEFAULTS["command_timeout"]
    health_check_interval: float = DEFAULTS["health_check_interval"]

    _target: _Target | None = attrs.field(default=None, init=False)
    _open: bool = attrs.field(default=False, init=False)
    _pending: list[_Slot] = attrs.field(factory=list, init=False)
    """Calls not sent yet."""
    _inflight: deque[_Slot] = attrs.field(factory=deque, init=False)
    """Calls sent on the current connection, in order."""
    _busy_since: float = attrs.field(default=0.0, init=False)
    """When the oldest of ``_inflight`` was sent, if none was in flight before it."""
    _last_recv: float = attrs.field(default=0.0, init=False)
    """When the command connection last received bytes."""
    _connected_at: float | None = attrs.field(default=None, init=False)
    """When the current command connection was made (``None``: not connected)."""
    _lost_error: Disconnected | None = attrs.field(default=None, init=False)
    _last_failure: Disconnected | None = attrs.field(default=None, init=False)
    """The latest connection failure (for the message of a failed :meth:`open`)."""
    _wake_writer: trio.Event = attrs.field(factory=trio.Event, init=False)
    _direct: socket.socket | None = attrs.field(default=None, init=False)
    """A duplicate of the plain TCP/Unix command connection's descriptor, for a caller
    to send its command itself when the writer is idle (``None`` for TLS, or when not
    connected)."""
    _writing: bool = attrs.field(default=False, init=False)
    """The writer is inside ``send_all`` (then callers queue behind it)."""
    _unsent: bytes = attrs.field(default=b"", init=False)
    """The rest of a command a caller could not send entirely: the writer sends it
    before anything else."""
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _stopped: trio.Event = attrs.field(factory=trio.Event, init=False)
    _subs: Subscriptions = attrs.field(factory=Subscriptions, init=False)
    """Channels in use or lingering; the pub/sub task subscribes to exactly these."""
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    """The service nursery (while open)."""
    sentinel: SentinelResolver | None = attrs.field(default=None, kw_only=True)
    """Where to ask for the master's address before each connection (sentinel mode)."""
    _session: trio.CancelScope | None = attrs.field(default=None, init=False)
    """The current command connection's session (cancelled to drop it)."""
    _session_address: str | None = attrs.field(default=None, init=False)
    """The server of the current command connection (``host:port``)."""
    _pubsub_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _pubsub_address: str | None = attrs.field(default=None, init=False)
    _pubsub_moved: bool = attrs.field(default=False, init=False)
    _switch_subscribed: bool = attrs.field(default=False, init=False)
    """Whether the current ``+switch-master`` subscription was confirmed."""
    switches: int = attrs.field(default=0, init=False)
    """Sentinel mode: connections dropped because the sentinels announced a new master
    (``+switch-master``) before any request failed on the old one (statistics)."""
    next_switch: trio.Event = attrs.field(factory=trio.Event, init=False)
    """Set at the next such move (then replaced by a fresh event)."""
    readonly_drops: int = attrs.field(default=0, init=False)
    """Sentinel mode: connections dropped because a request got ``READONLY`` (the master
    was demoted before the switch was announced to us) (statistics)."""

    @property
    def master_address(self) -> str | None:
        """The server the command connection is connected to now (``host:port``)."""
        return self._session_address

    # -- lifetime -------------------------------------------------------------------

    async def open(self) -> None:
        """Start the service task and check the server answers (``PING``), all within
        ``retry_timeout`` seconds (one deadline for every attempt together).

        Raises:
            StorageError: the URL or an option is invalid, the server refused the
                credentials, or it did not answer within ``retry_timeout``; the message
                names the address and what happened (connection refused, timed out,
                name not found, ...), raised from the underlying error.
        """
        try:
            self._target = _Target.parse(self.url, self.options)
            self.command_timeout = check_seconds("command_timeout", self.command_timeout)
            self.health_check_interval = check_seconds(
                "health_check_interval", self.health_check_interval
            )
        except StorageError:
            raise
        except (ValueError, TypeError, OSError) as exc:  # bad URL, options or TLS files
            raise StorageError(f"cannot start the Redis client: {exc}") from exc
        self._start()
        try:
            with trio.move_on_after(self.retry_timeout) as scope:
                await self.command("PING")
            if scope.cancelled_caught:
                raise self._open_timed_out()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close()
            raise

    def start(self) -> None:
        """Start the service task without waiting for the server (a cluster node: its
        requests fail over to the slot map when it does not answer).

        Raises:
            StorageError: the URL or an option is invalid.
        """
        try:
            self._target = _Target.parse(self.url, self.options)
        except StorageError:
            raise
        except (ValueError, TypeError, OSError) as exc:
            raise StorageError(f"cannot start the Redis client: {exc}") from exc
        self._start()

    def _start(self) -> None:
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._last_failure = None
        self._open = True
        trio.lowlevel.spawn_system_task(self._serve, name="trio-jobqueue-redis")

    def _open_timed_out(self) -> StorageError:
        assert self._target is not None
        last = self._last_failure
        if last is not None:
            message, cause = str(last), last.__cause__
        else:
            state = "no connection" if self._connected_at is None else "connected, but no reply"
            cause = TimeoutError(f"{state} within {self.retry_timeout:g} s")
            message = f"cannot connect to {self._target.where}: timed out ({cause})"
        error = StorageError(f"Redis unavailable for {self.retry_timeout:g} s: {message}")
        error.__cause__ = cause
        return error

    async def close(self) -> None:
        self._stop.set()
        await self._stopped.wait()

    async def _serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._command_connection)
                nursery.start_soon(self._read_pubsub)
                if self.sentinel is not None:
                    nursery.start_soon(self._follow_switches)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("the Redis client task crashed")
        finally:
            self._nursery = None
            self._open = False
            self._fail_all(StorageError("the Redis storage was closed"))
            self._stopped.set()

    def _fail_all(self, error: StorageError) -> None:
        slots = [*self._inflight, *self._pending]
        self._inflight.clear()
        self._pending.clear()
        for slot in slots:
            if slot.task is not None:
                slot.resolve(outcome.Error(_copy(error)))

    # -- the command connection -----------------------------------------------------

    async def _command_connection(self) -> None:
        """Connect when calls are waiting; run a session until the connection breaks."""
        assert self._target is not None
        while True:
            while not self._pending:
                await self._wait_writer()
            try:
                stream, address = await self._connect_at()
            except StorageError as exc:
                if isinstance(exc, Disconnected):
                    self._last_failure = exc
                log.debug("Redis connection failed: %s", exc)
                self._fail_all(exc)
                continue
            self._connected_at = self._last_recv = trio.current_time()
            self._direct = _direct_socket(stream)
            try:
                async with trio.open_nursery() as nursery:
                    self._session = nursery.cancel_scope
                    self._session_address = address
                    nursery.start_soon(self._write, stream, nursery.cancel_scope)
                    nursery.start_soon(self._read, stream, nursery.cancel_scope)
                    nursery.start_soon(self._watch, nursery.cancel_scope)
            finally:
                direct, self._direct, self._unsent = self._direct, None, b""
                if direct is not None:
                    direct.close()
                self._connected_at = None
                self._session = None
                self._session_address = None
                with trio.CancelScope(shield=True):
                    await _aclose(stream)
            # Sent calls may or may not have run: their callers decide (retry logic).
            error = self._lost_error or self._lost("the connection closed", ConnectionError())
            self._lost_error = None
            self._last_failure = error
            log.debug("the Redis command connection was lost: %s", error)
            inflight = list(self._inflight)
            self._inflight.clear()
            for slot in inflight:
                if slot.task is not None:
                    slot.resolve(outcome.Error(_copy(error)))

    def _lost(self, what: str, cause: BaseException) -> Disconnected:
        """The error for the current connection's failure: "lost the connection" once
        the server answered on it, "cannot connect" while it never did."""
        assert self._target is not None
        connected_at = self._connected_at
        if connected_at is not None and self._last_recv > connected_at:
            return _failure(f"lost the connection to {self._target.where}: {what}", cause)
        return _failure(f"cannot connect to {self._target.where}: {what}", cause)

    def _broke(self, scope: trio.CancelScope, what: str, cause: BaseException) -> None:
        if self._lost_error is None:
            self._lost_error = self._lost(what, cause)
        scope.cancel()

    async def _wait_writer(self) -> None:
        await self._wake_writer.wait()
        self._wake_writer = trio.Event()

    async def _write(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        inflight = self._inflight
        while True:
            if not self._pending and not self._unsent:
                await self._wait_writer()
                continue
            batch, self._pending = self._pending, []
            live = [slot for slot in batch if slot.task is not None]
            unsent, self._unsent = self._unsent, b""
            if not live and not unsent:
                continue
            if live and not inflight:
                self._busy_since = trio.current_time()
            inflight.extend(live)
            data = live[0].data if len(live) == 1 else b"".join(s.data for s in live)
            self._writing = True
            try:
                await stream.send_all(unsent + data if unsent else data)
            except _NETWORK_ERRORS as exc:
                root = root_os_error(exc)
                self._broke(scope, describe_os_error(root), root)
                return
            finally:
                self._writing = False

    async def _read(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        reader = _reader()
        inflight = self._inflight
        receive = _receiver(stream)
        while True:
            try:
                data = await receive()
            except _NETWORK_ERRORS as exc:
                root = root_os_error(exc)
                self._broke(scope, describe_os_error(root), root)
                return
            if not data:
                self._broke(
                    scope,
                    "the server closed the connection",
                    ConnectionResetError("the server closed the connection"),
                )
                return
            self._last_recv = trio.current_time()
            reader.feed(data)  # type: ignore[arg-type]
            try:
                reply = reader.gets()
                while reply is not False:
                    if not inflight:
                        raise hiredis.ProtocolError("a reply without a request")
                    inflight.popleft().resolve(outcome.Value(reply))
                    reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._broke(scope, f"protocol error: {exc}", exc)
                return

    async def _watch(self, scope: trio.CancelScope) -> None:
        """The connection's deadlines: tear it down when the server stays silent for
        ``command_timeout`` while a reply is due; ``PING`` it after
        ``health_check_interval`` idle seconds. Wakes at most about once per
        ``min(command_timeout, health_check_interval)``: the hot path only stamps
        times."""
        timeout = self.command_timeout
        idle = self.health_check_interval
        inflight = self._inflight
        ping = _pack(("PING",))
        while True:
            now = trio.current_time()
            quiet_since = max(self._busy_since, self._last_recv)
            if inflight:
                if now - quiet_since >= timeout:
                    cause = TimeoutError(f"no reply within command_timeout={timeout:g} s")
                    self._broke(scope, f"timed out ({cause})", cause)
                    return
                wake = quiet_since + timeout
            elif now - quiet_since >= idle and not self._pending:
                # Idle: probe. Requests made meanwhile queue behind the PING, so its
                # deadline covers them too.
                with trio.move_on_after(timeout) as probe:
                    await self._call(ping)
                if probe.cancelled_caught:
                    cause = TimeoutError(f"no reply to PING within command_timeout={timeout:g} s")
                    self._broke(scope, f"timed out ({cause})", cause)
                    return
                continue
            else:
                # A request sent before the next wake-up is checked then, still before its
                # own deadline (the period is at most ``timeout``). Calls waiting for the
                # writer (``_pending``) are checked once sent.
                wake = min(quiet_since + idle, now + timeout)
                if wake <= now:
                    wake = now + timeout
            await trio.sleep_until(wake)

    async def _call(self, data: bytes) -> Any:
        """Send one packed command through the auto-pipeline; return its raw reply
        (a :class:`RedisReplyError` for an error reply)."""
        if not self._open:
            raise StorageError("the Redis storage is not open")
        slot = _Slot(data, trio.lowlevel.current_task())
        direct = self._direct
        sent = 0
        if direct is not None and not self._inflight and not self._writing and not self._pending:
            # Nothing in flight (a quiet client, a sequential caller): send now rather
            # than wake the writer, one task switch and one run-loop round less. A busy
            # client leaves it to the writer, which sends every call made meanwhile
            # with one system call.
            try:
                sent = direct.send(data)
            except OSError:
                sent = 0  # would block, or broken: the writer sends it (and sees why)
        if sent:
            self._busy_since = trio.current_time()
            self._inflight.append(slot)
            if sent < len(data):
                self._unsent = data[sent:]
                self._wake_writer.set()
        else:
            self._pending.append(slot)
            if len(self._pending) == 1:
                self._wake_writer.set()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # An unsent slot is skipped by the writer; a sent one's reply is discarded.
            slot.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    async def _call_then_wait(self, data: bytes, wait: Sequence[ScriptArg]) -> tuple[Any, Any]:
        """Send ``data`` with a ``WAIT`` behind it on one connection and return both raw
        replies. Both join the pending list without a checkpoint in between, so the
        writer sends them in one batch on one connection, and ``WAIT`` counts the write.
        When a ``WAIT`` with the same arguments is still pending (not sent), ``data``
        goes in front of it and shares its reply instead."""
        if not self._open:
            raise StorageError("the Redis storage is not open")
        task = trio.lowlevel.current_task()
        first = _KeptSlot(data, task)
        packed_wait = _pack(wait)
        pending = self._pending
        last = pending[-1] if pending else None
        if isinstance(last, _WaitSlot) and last.data == packed_wait:
            pending.insert(len(pending) - 1, first)
            last.waiters.append(task)
            slot = last
        else:
            pending.append(first)
            if len(pending) == 1:
                self._wake_writer.set()
            slot = _WaitSlot(packed_wait, task)
            pending.append(slot)

        def abort(_: Any) -> trio.lowlevel.Abort:
            # The write's reply is discarded; the shared WAIT still goes (harmless).
            first.task = None
            if task in slot.waiters:
                slot.waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        acked = await trio.lowlevel.wait_task_rescheduled(abort)
        # Replies resolve in order: the write's is in by now.
        assert first.result is not None
        return first.result.unwrap(), acked

    def _replied(self, reply: Any) -> Any:
        if isinstance(reply, RedisReplyError):
            raise self._error(reply)
        return reply

    async def _fcall_waited(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], wait: Sequence[ScriptArg]
    ) -> tuple[Any, int]:
        packed = _pack(fcall(script(name), keys, args))
        reply, acked = await self._call_then_wait(packed, wait)
        if is_missing_function(reply):
            if not await self._load_library():
                packed = _pack(("EVAL", eval_source(name), len(keys), *keys, *args))
            reply, acked = await self._call_then_wait(packed, wait)
        return self._replied(reply), int(self._replied(acked))

    async def _command_waited(
        self, args: Sequence[ScriptArg], wait: Sequence[ScriptArg]
    ) -> tuple[Any, int]:
        reply, acked = await self._call_then_wait(_pack(args), wait)
        return self._replied(reply), int(self._replied(acked))

    # -- commands -------------------------------------------------------------------

    def _error(self, reply: RedisReplyError) -> StorageError:
        assert self._target is not None
        if self.sentinel is not None and reply.code == "READONLY":
            # The master we know was demoted: drop the connection (the next one asks the
            # sentinels again) and retry.
            error: StorageError = Disconnected(f"{self._target.where} is a replica now: {reply}")
            if self._session is not None:
                self.readonly_drops += 1
                self._broke(self._session, "the server is a replica now", reply)
        else:
            error = _translate(reply, self._target.where)
        error.__cause__ = reply
        return error

    async def _connect(self) -> trio.abc.Stream:
        """A new connection to the server (in sentinel mode, to the master the sentinels
        name now)."""
        stream, _ = await self._connect_at()
        return stream

    async def _connect_at(self) -> tuple[trio.abc.Stream, str]:
        """:meth:`_connect`, and the address connected to."""
        assert self._target is not None
        target = self._target
        if self.sentinel is not None:
            host, port = await self.sentinel.master(target.connect_timeout)
            target.host, target.port = host, port  # for messages
            target = attrs.evolve(target, host=host, port=port)
        return await _open_stream(target), target.address

    async def _command_once(self, args: Sequence[ScriptArg]) -> Any:
        reply = await self._call(_pack(args))
        if isinstance(reply, RedisReplyError):
            raise self._error(reply)
        return reply

    async def _fcall(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        packed = _pack(fcall(script(name), keys, args))
        reply = await self._call(packed)
        if isinstance(reply, RedisReplyError):
            if is_missing_function(reply):
                # A new server, a restart or FUNCTION FLUSH: load them and call again.
                if not await self._load_library():
                    packed = _pack(("EVAL", eval_source(name), len(keys), *keys, *args))
                reply = await self._call(packed)
                if not isinstance(reply, RedisReplyError):
                    return reply
            raise self._error(reply)
        return reply

    async def _load_library(self) -> bool:
        """``FUNCTION LOAD`` the package's scripts (see :func:`library`); ``False`` when
        the server refused it for being above ``maxmemory`` (then the call goes as an
        ``EVAL`` of :func:`eval_source`)."""
        reply = await self._call(_pack(("FUNCTION", "LOAD", library().source)))
        if is_refused_for_memory(reply):
            return False
        if isinstance(reply, RedisReplyError) and not is_loaded_already(reply):
            raise self._error(reply)
        return True

    # -- blocking commands and services ---------------------------------------------

    async def open_blocking(self, key: str | None = None) -> _BlockingConnection:
        """See :meth:`AdapterCommon.open_blocking`."""
        if not self._open or self._target is None:
            raise StorageError("the Redis storage is not open")
        stream = await self._connect()
        return _BlockingConnection(stream, self.command_timeout, self._target.where)

    def start_service(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """See :meth:`AdapterCommon.start_service`."""
        if self._nursery is None:
            raise StorageError("the Redis storage is not open")
        self._nursery.start_soon(fn, *args)

    # -- the pub/sub connection -----------------------------------------------------

    async def _read_pubsub(self) -> None:
        """Keep the pub/sub connection alive and subscribed; dispatch its messages."""
        assert self._target is not None
        delay = 0.05
        while True:
            try:
                stream, address = await self._connect_at()
            except StorageError as exc:
                log.debug("pub/sub connection failed; retrying: %s", exc)
            else:
                try:
                    with trio.CancelScope() as self._pubsub_scope:
                        self._pubsub_address = address
                        await self._pubsub_session(stream)
                except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                    log.debug("pub/sub connection lost; reconnecting: %r", exc)
                finally:
                    self._pubsub_scope = self._pubsub_address = None
                    with trio.CancelScope(shield=True):
                        await _aclose(stream)
                delay = 0.05
                if self._pubsub_moved:
                    self._pubsub_moved = False
                    continue  # the master changed: to the new one at once
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _pubsub_session(self, stream: trio.abc.Stream) -> None:
        # Channel name -> the _Channel the server subscription was made for.
        subscribed: dict[str, _Channel] = {}
        subs = self._subs
        timeout = self.command_timeout
        idle = self.health_check_interval
        last_seen = [trio.current_time()]

        async def sync_subscriptions() -> None:
            # The only writer: (un)subscribe to match ``subs.channels`` on every change,
            # and ping when the connection has been quiet for a while. Anything written
            # must be followed by some traffic within ``timeout``.
            awaiting: float | None = None  # when we wrote with no traffic seen since
            fresh = True
            while True:
                subs.changed = trio.Event()
                now = trio.current_time()
                if awaiting is not None and last_seen[0] >= awaiting:
                    awaiting = None
                if awaiting is not None and now - awaiting >= timeout:
                    raise TimeoutError(f"the pub/sub connection got no answer within {timeout:g} s")
                add, drop, replan_at = subs.plan(subscribed, fresh=fresh)
                fresh = False
                out = [_pack((verb, *names)) for verb, names in subscription_commands(add, drop)]
                if awaiting is None and now - last_seen[0] >= idle:
                    out.append(_pack(("PING",)))
                if out:
                    await stream.send_all(b"".join(out))
                    if awaiting is None:
                        awaiting = now
                wake_at = min(now + idle, replan_at)
                if awaiting is None:
                    wake_at = min(wake_at, last_seen[0] + idle)
                else:
                    wake_at = min(wake_at, awaiting + timeout)
                with trio.move_on_at(wake_at):
                    await subs.changed.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync_subscriptions)
            reader = _reader()
            receive = _receiver(stream)
            while True:
                data = await receive()
                if not data:
                    raise ConnectionResetError("Redis closed the pub/sub connection")
                last_seen[0] = trio.current_time()
                reader.feed(data)  # type: ignore[arg-type]
                msg = reader.gets()
                while msg is not False:
                    self._dispatch(msg)
                    msg = reader.gets()

    def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, list) or len(msg) < 3:
            if isinstance(msg, RedisReplyError):
                raise msg
            return  # PONG
        kind = msg[0].decode() if isinstance(msg[0], bytes) else str(msg[0])
        self._subs.dispatch(kind, msg[1], msg[2])

    # -- sentinel mode: following +switch-master --------------------------------------

    async def _follow_switches(self) -> None:
        """Hold a subscription to ``+switch-master`` on one sentinel (the next one when it
        dies), so that a failover moves the connections to the new master as soon as a
        sentinel announces it, before a request fails on the old one."""
        assert self.sentinel is not None
        delay = 0.05
        while True:
            for host, port in list(self.sentinel.sentinels):
                self._switch_subscribed = False
                try:
                    await self._switch_session(host, port)
                except Exception as exc:  # noqa: BLE001 - any failure: the next sentinel
                    log.debug(
                        "sentinel %s:%s: +switch-master subscription lost: %r", host, port, exc
                    )
                if self._switch_subscribed:
                    delay = 0.05  # it worked for a while: the next round starts quickly
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _switch_session(self, host: str, port: int) -> None:
        """One subscription to ``+switch-master`` on the sentinel at ``host:port``, until
        the connection breaks or stays silent (``PING`` after ``health_check_interval``,
        an answer due within ``command_timeout``)."""
        assert self.sentinel is not None
        target = _Target.parse(self.sentinel.url(host, port), self.sentinel.options)
        stream = await _open_stream(target)
        try:
            await stream.send_all(_pack(("SUBSCRIBE", "+switch-master")))
            reader = _reader()
            answer_due = True  # the subscription's confirmation
            while True:
                wait = self.command_timeout if answer_due else self.health_check_interval
                with trio.move_on_after(wait) as quiet:
                    data = await stream.receive_some(_RECEIVE)
                if quiet.cancelled_caught:
                    if answer_due:
                        raise TimeoutError(f"sentinel {target.address} silent for {wait:g} s")
                    await stream.send_all(_pack(("PING",)))
                    answer_due = True
                    continue
                if not data:
                    raise ConnectionResetError("the sentinel closed the connection")
                answer_due = False
                reader.feed(data)  # type: ignore[arg-type]
                msg = reader.gets()
                while msg is not False:
                    if isinstance(msg, RedisReplyError):
                        raise _translate(msg, f"sentinel {target.address}") from msg
                    if isinstance(msg, list) and msg and msg[0] == b"subscribe":
                        self._switch_subscribed = True
                        # Switches announced while no subscription was held are missed:
                        # ask once now.
                        found = await self.sentinel.master(target.connect_timeout)
                        self._follow_master(found)
                    elif isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message":
                        self._on_switch(bytes(msg[2]))
                    msg = reader.gets()
        finally:
            with trio.CancelScope(shield=True):
                await _aclose(stream)

    def _on_switch(self, data: bytes) -> None:
        """``+switch-master``: ``<name> <old ip> <old port> <new ip> <new port>``."""
        assert self.sentinel is not None
        fields = data.decode("utf-8", "replace").split()
        if len(fields) != 5 or fields[0] != self.sentinel.service or not fields[4].isdigit():
            return
        self._follow_master((fields[3], int(fields[4])))

    def _follow_master(self, master: tuple[str, int]) -> None:
        """Drop the connections that are not to ``master`` (they reconnect to the master
        the sentinels name: this one)."""
        assert self.sentinel is not None and self._target is not None
        self.sentinel.known = master
        host, port = master
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        moved = False
        if self._session is not None and self._session_address not in (None, address):
            cause = ConnectionResetError(f"the sentinels named a new master, {address}")
            self._broke(self._session, str(cause), cause)
            moved = True
        if self._pubsub_scope is not None and self._pubsub_address not in (None, address):
            self._pubsub_moved = True
            self._pubsub_scope.cancel()
            moved = True
        if moved:
            self.switches += 1
            event, self.next_switch = self.next_switch, trio.Event()
            event.set()
            log.info("Redis Sentinel: following the new master of %r at %s",
                     self.sentinel.service, address)  # fmt: skip
