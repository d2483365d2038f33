"""A trio-native Redis client (RESP2 over trio streams, parsed by ``hiredis``).

:class:`TrioRedisAdapter` has the interface and semantics of
:class:`~._redis_adapter.RedisAdapter` (redis-py through trio-asyncio) at a fraction of
its CPU cost per request: no asyncio loop iterations, no per-call tasks or locks.

Design:

* One **command connection** with automatic pipelining. A call packs its command
  (``hiredis.pack_command``), appends a slot to the pending list and parks its task. One
  writer task sends everything pending with one ``send_all``; one reader task parses
  replies (``hiredis.Reader``) and resolves the slots in FIFO order. A cancelled caller
  abandons its slot: unsent, it is dropped; sent, its reply is still read and discarded,
  so the connection never desynchronizes.
* On connection loss every call in flight or pending fails with :class:`Disconnected`
  (callers retry with :func:`~._redis_common.with_retry`, bounded by ``retry_timeout``);
  the next call reconnects (``AUTH``/``SELECT`` first).
* One **pub/sub connection**, subscribed to exactly the reference-counted channels in
  use (or lingering); messages are dispatched synchronously from its reader. After a
  reconnect (with backoff) every channel is re-subscribed and its handler's
  ``on_reconnect`` runs.
* Every task lives in a nursery owned by a trio **system task** started by
  :meth:`~TrioRedisAdapter.open` and stopped by :meth:`~TrioRedisAdapter.close`.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import attrs
import hiredis
import outcome
import redis.exceptions as rexc
import trio
from redis._parsers.base import BaseParser
from redis.connection import parse_url

from .._errors import StorageError
from ._redis_common import (
    _LINGER,
    _PUBSUB_IDLE,
    AdapterCommon,
    Disconnected,
    ScriptArg,
    _Channel,
    _translate,
    script,
)

__all__ = ["TrioRedisAdapter"]

log = logging.getLogger("trio_jobqueue.redis")

_RECEIVE = 65536
_CONNECT_TIMEOUT = 5.0
_SSL_OPTIONS = {
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_check_hostname",
    "ssl_password",
    "ssl_min_version",
    "ssl_ciphers",
}
_OPTIONS = _SSL_OPTIONS | {"username", "password", "db", "socket_connect_timeout"}


class _Lost(Exception):
    """The command connection broke (internal)."""


def _reply_error(err: Exception) -> rexc.RedisError:
    """hiredis's ``ReplyError`` as the redis-py exception redis-py would raise."""
    error: rexc.RedisError = BaseParser.parse_error(str(err))  # type: ignore[no-untyped-call]
    return error


def _pack(args: Sequence[ScriptArg]) -> bytes:
    """One command in RESP (hiredis's C encoder; its stub types a 1-tuple)."""
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


def _connection_error(exc: BaseException) -> Disconnected:
    """``Disconnected`` whose ``__cause__`` is a redis-py ``ConnectionError`` (as the
    asyncio client's errors are), chained to the original error."""
    cause = rexc.ConnectionError(f"{type(exc).__name__}: {exc}")
    cause.__cause__ = exc
    error = Disconnected(f"lost the connection to Redis: {cause!r}")
    error.__cause__ = cause
    return error


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
    connect_timeout: float = _CONNECT_TIMEOUT

    @classmethod
    def parse(cls, url: str, options: dict[str, Any]) -> _Target:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise StorageError(
                f"option(s) {sorted(unknown)} are not supported by the trio Redis client"
                ' (client="asyncio" passes options to redis-py)'
            )
        scheme = urlparse(url).scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise StorageError(f"unsupported Redis URL scheme {scheme!r}")
        kwargs: dict[str, Any] = dict(parse_url(url))  # type: ignore[no-untyped-call]
        kwargs.pop("connection_class", None)
        kwargs.update(options)
        target = cls(
            host=kwargs.get("host") or "localhost",
            port=int(kwargs.get("port") or 6379),
            path=kwargs.get("path"),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            connect_timeout=float(kwargs.get("socket_connect_timeout") or _CONNECT_TIMEOUT),
        )
        if scheme == "rediss":
            target.ssl_context = _ssl_context(kwargs)
        return target


def _ssl_context(kwargs: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context redis-py would build from the same ``ssl_*`` settings."""
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
    """Connect, TLS handshake, ``AUTH`` and ``SELECT``; raises ``Disconnected`` for
    connection failures and ``StorageError`` (from the redis-py error) for refusals."""
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(target.connect_timeout):
            if target.path is not None:
                stream = await trio.open_unix_socket(target.path)
            else:
                stream = await trio.open_tcp_stream(target.host, target.port)
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
                await stream.send_all(b"".join(_pack(c) for c in hello))
                reader = hiredis.Reader()
                for _ in hello:
                    reply = reader.gets()
                    while reply is False:
                        data = await stream.receive_some(_RECEIVE)
                        if not data:
                            raise ConnectionResetError("Redis closed the connection")
                        reader.feed(data)  # type: ignore[arg-type]
                        reply = reader.gets()
                    if isinstance(reply, hiredis.ReplyError):
                        error = _reply_error(reply)
                        raise _translate(error) from error
        return stream
    except trio.TooSlowError:
        await _aclose(stream)
        lost = _connection_error(TimeoutError("connecting to Redis timed out"))
        raise lost from lost.__cause__  # the redis-py ConnectionError
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        await _aclose(stream)
        lost = _connection_error(exc)
        raise lost from lost.__cause__
    except BaseException:
        await _aclose(stream)
        raise


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


@attrs.define(eq=False)
class TrioRedisAdapter(AdapterCommon):
    """A trio-native Redis client with the interface of ``RedisAdapter``."""

    url: str
    retry_timeout: float = 10.0
    options: dict[str, Any] = attrs.Factory(dict)

    _target: _Target | None = attrs.field(default=None, init=False)
    _open: bool = attrs.field(default=False, init=False)
    _pending: list[_Slot] = attrs.field(factory=list, init=False)
    """Calls not sent yet."""
    _inflight: deque[_Slot] = attrs.field(factory=deque, init=False)
    """Calls sent on the current connection, in order."""
    _lost_error: Disconnected | None = attrs.field(default=None, init=False)
    _wake_writer: trio.Event = attrs.field(factory=trio.Event, init=False)
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _stopped: trio.Event = attrs.field(factory=trio.Event, init=False)
    _channels: dict[str, _Channel] = attrs.field(factory=dict, init=False)
    """Channels in use or lingering; the pub/sub task subscribes to exactly these."""
    _pubsub_changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    # -- lifetime -------------------------------------------------------------------

    async def open(self) -> None:
        """Start the service task and check the server answers (``PING``).

        Raises:
            StorageError: the URL is invalid or the server cannot be reached within
                ``retry_timeout``.
        """
        try:
            self._target = _Target.parse(self.url, self.options)
        except StorageError:
            raise
        except (ValueError, TypeError, OSError) as exc:  # bad URL, options or TLS files
            raise StorageError(f"cannot start the Redis client: {exc!r}") from exc
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._open = True
        trio.lowlevel.spawn_system_task(self._serve, name="trio-jobqueue-redis")
        try:
            await self.command("PING")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close()
            raise

    async def close(self) -> None:
        self._stop.set()
        await self._stopped.wait()

    async def _serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._command_connection)
                nursery.start_soon(self._read_pubsub)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("the Redis client task crashed")
        finally:
            self._open = False
            self._fail_all(StorageError("the Redis storage was closed"))
            self._stopped.set()

    def _fail_all(self, error: StorageError) -> None:
        slots = [*self._inflight, *self._pending]
        self._inflight.clear()
        self._pending.clear()
        for slot in slots:
            if slot.task is not None:
                failure = type(error)(*error.args)
                failure.__cause__ = error.__cause__
                slot.resolve(outcome.Error(failure))

    # -- the command connection -----------------------------------------------------

    async def _command_connection(self) -> None:
        """Connect when calls are waiting; run a session until the connection breaks."""
        assert self._target is not None
        while True:
            while not self._pending:
                await self._wait_writer()
            try:
                stream = await _open_stream(self._target)
            except StorageError as exc:
                self._fail_all(exc)
                continue
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, stream, nursery.cancel_scope)
                    nursery.start_soon(self._read, stream, nursery.cancel_scope)
            finally:
                with trio.CancelScope(shield=True):
                    await _aclose(stream)
            log.debug("the Redis command connection was lost")
            # Sent calls may or may not have run: their callers decide (retry logic).
            inflight = list(self._inflight)
            self._inflight.clear()
            error = self._lost_error or _connection_error(ConnectionResetError("connection lost"))
            self._lost_error = None
            for slot in inflight:
                if slot.task is not None:
                    failure = Disconnected(*error.args)
                    failure.__cause__ = error.__cause__
                    slot.resolve(outcome.Error(failure))

    async def _wait_writer(self) -> None:
        await self._wake_writer.wait()
        self._wake_writer = trio.Event()

    async def _write(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        while True:
            if not self._pending:
                await self._wait_writer()
                continue
            batch, self._pending = self._pending, []
            live = [slot for slot in batch if slot.task is not None]
            if not live:
                continue
            self._inflight.extend(live)
            data = live[0].data if len(live) == 1 else b"".join(s.data for s in live)
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._lost_error = _connection_error(exc)
                scope.cancel()
                return

    async def _read(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        reader = hiredis.Reader()
        inflight = self._inflight
        while True:
            try:
                data = await stream.receive_some(_RECEIVE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._lost_error = _connection_error(exc)
                scope.cancel()
                return
            if not data:
                self._lost_error = _connection_error(ConnectionResetError("Redis closed it"))
                scope.cancel()
                return
            reader.feed(data)  # type: ignore[arg-type]
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._lost_error = _connection_error(exc)
                scope.cancel()
                return
            while reply is not False:
                if not inflight:
                    self._lost_error = _connection_error(
                        rexc.InvalidResponse("a reply without a request")
                    )
                    scope.cancel()
                    return
                inflight.popleft().resolve(outcome.Value(reply))
                try:
                    reply = reader.gets()
                except hiredis.ProtocolError as exc:
                    self._lost_error = _connection_error(exc)
                    scope.cancel()
                    return

    async def _call(self, data: bytes) -> Any:
        """Send one packed command through the auto-pipeline; return its raw reply
        (a ``hiredis.ReplyError`` for an error reply)."""
        if not self._open:
            raise StorageError("the Redis storage is not open")
        slot = _Slot(data, trio.lowlevel.current_task())
        self._pending.append(slot)
        if len(self._pending) == 1:
            self._wake_writer.set()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # An unsent slot is skipped by the writer; a sent one's reply is discarded.
            slot.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    # -- commands -------------------------------------------------------------------

    async def _command_once(self, args: Sequence[ScriptArg]) -> Any:
        reply = await self._call(_pack(args))
        if isinstance(reply, hiredis.ReplyError):
            error = _reply_error(reply)
            raise _translate(error) from error
        return reply

    async def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        spec = script(name)
        packed = _pack(("EVALSHA", spec.sha, len(keys), *keys, *args))
        reply = await self._call(packed)
        if isinstance(reply, hiredis.ReplyError):
            error = _reply_error(reply)
            if isinstance(error, rexc.NoScriptError):
                # After a restart or SCRIPT FLUSH: load it and send the call again.
                await self._command_once(("SCRIPT", "LOAD", spec.source))
                reply = await self._call(packed)
                if not isinstance(reply, hiredis.ReplyError):
                    return reply
                error = _reply_error(reply)
            raise _translate(error) from error
        return reply

    async def _read_pubsub(self) -> None:
        """Keep the pub/sub connection alive and subscribed; dispatch its messages."""
        assert self._target is not None
        delay = 0.05
        while True:
            try:
                stream = await _open_stream(self._target)
            except StorageError:
                log.debug("pub/sub connection failed; retrying", exc_info=True)
            else:
                try:
                    await self._pubsub_session(stream)
                except Exception:
                    log.debug("pub/sub connection lost; reconnecting", exc_info=True)
                finally:
                    with trio.CancelScope(shield=True):
                        await _aclose(stream)
                delay = 0.05
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _pubsub_session(self, stream: trio.abc.Stream) -> None:
        # Channel name -> the _Channel the server subscription was made for.
        subscribed: dict[str, _Channel] = {}
        last_seen = [trio.current_time()]

        async def sync_subscriptions() -> None:
            # The only writer: subscribe/unsubscribe to match ``_channels`` on every
            # change, and ping when the connection has been quiet for a while.
            ping_sent: float | None = None
            while True:
                self._pubsub_changed = trio.Event()
                now = trio.current_time()
                wake_at = now + _PUBSUB_IDLE
                drop: list[str] = []
                for name, chan in list(self._channels.items()):
                    if chan.users == 0:
                        if now - chan.idle_since >= _LINGER:
                            del self._channels[name]
                            if subscribed.pop(name, None) is not None:
                                drop.append(name)
                            continue
                        wake_at = min(wake_at, chan.idle_since + _LINGER)
                add = [name for name in self._channels if name not in subscribed]
                for name in add:
                    subscribed[name] = self._channels[name]
                out: list[bytes] = []
                if drop:
                    out.append(_pack(("UNSUBSCRIBE", *drop)))
                if add:
                    out.append(_pack(("SUBSCRIBE", *add)))
                if ping_sent is not None and last_seen[0] > ping_sent:
                    ping_sent = None
                if now - last_seen[0] >= _PUBSUB_IDLE:
                    if ping_sent is None:
                        ping_sent = now
                        out.append(_pack(("PING",)))
                    elif now - ping_sent > 2 * _PUBSUB_IDLE:
                        raise ConnectionError("the pub/sub connection stopped answering")
                if ping_sent is None:
                    wake_at = min(wake_at, last_seen[0] + _PUBSUB_IDLE)
                else:
                    wake_at = min(wake_at, ping_sent + 2 * _PUBSUB_IDLE + 0.01)
                if out:
                    await stream.send_all(b"".join(out))
                with trio.move_on_at(wake_at):
                    await self._pubsub_changed.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync_subscriptions)
            reader = hiredis.Reader()
            while True:
                data = await stream.receive_some(_RECEIVE)
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
            if isinstance(msg, hiredis.ReplyError):
                raise _reply_error(msg)
            return  # PONG
        kind = msg[0].decode() if isinstance(msg[0], bytes) else str(msg[0])
        self._on_channel_message(kind, msg[1], msg[2])
