"""The one module that touches asyncio: redis-py's asyncio client run through trio-asyncio.

:class:`RedisAdapter` owns a trio-asyncio loop that lives in a trio **system task** it
spawns on :meth:`~RedisAdapter.open` and stops on :meth:`~RedisAdapter.close`. The loop's
context is never entered by the caller's task, so the first and the last user of a storage
may be different trio tasks (the storage is reference-counted). Calls from any trio task
are scheduled on that loop with ``loop.run_aio_coroutine``.

Design decisions:

* The client is built with ``socket_timeout=None`` (redis-py 8's 5 s default would fail
  long reads and can swallow trio cancellations) and with redis-py's own retries disabled:
  this module retries connection errors itself, with capped exponential backoff, for at
  most ``retry_timeout`` seconds, then raises :class:`~trio_jobqueue.StorageError` ``from``
  the underlying error (the ``OSError`` behind redis-py's ``ConnectionError`` where there
  is one). Every other driver error is raised as ``StorageError`` at once, with the
  server's text.
* Every request waits at most ``command_timeout`` seconds (a trio cancel scope around the
  call into asyncio; cancelling makes redis-py drop that connection), then fails as
  :class:`Disconnected` and is retried on a new connection. When no request completed
  for ``health_check_interval`` seconds, an idle-probe task sends a ``PING`` (bounded by
  ``command_timeout``); if it gets no answer, every idle pooled connection is dropped.
  The pub/sub reader pings after ``health_check_interval`` seconds of silence and
  reconnects when the answer does not come within ``command_timeout``.
* Our own URL query parameters are stripped: redis-py gets the URL without its query
  and the connection options as keyword arguments (:mod:`._redis_url`).
* Scripts are Redis functions called with ``FCALL``; a "function not found" reply (a
  restart, ``FUNCTION FLUSH``) loads the library and sends the call again, transparently.
* One pub/sub connection per adapter, read by one task. Channels are reference-counted;
  a subscription is confirmed by the server before :meth:`~RedisAdapter.subscription`
  yields, so nothing published afterwards is missed. After a reconnect every channel is
  re-subscribed and its handler's ``on_reconnect`` runs (messages published during the
  outage are lost, so consumers re-check state).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import redis.asyncio as aioredis
import redis.exceptions as rexc
import trio
import trio_asyncio
from hiredis import pack_command
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._errors import StorageError
from ._redis_common import (
    AdapterCommon,
    ChannelHandler,
    Disconnected,
    RedisReplyError,
    ScriptArg,
    Subscriptions,
    _Channel,
    _Script,
    _translate,
    describe_os_error,
    eval_source,
    fcall,
    is_loaded_already,
    is_missing_function,
    library,
    root_os_error,
    script,
    subscription_commands,
)
from ._redis_url import DEFAULTS, check_seconds, parse_url, split_query

__all__ = ["ChannelHandler", "Disconnected", "RedisAdapter", "ScriptArg", "script"]

log = logging.getLogger("trio_jobqueue.redis")

T = TypeVar("T")

_PIPELINES = 2
"""Auto-pipeline batches in flight at once (each on its own connection)."""


class _FastPack:
    """Packs commands with hiredis's C encoder: redis-py's pure-Python ``pack_command``
    was the largest single CPU cost per job (an EVALSHA carries ~15 arguments)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [pack_command(args)]


class _Connection(_FastPack, aioredis.Connection):
    pass


class _SSLConnection(_FastPack, aioredis.SSLConnection):
    pass


class _UnixConnection(_FastPack, aioredis.UnixDomainSocketConnection):
    pass


def _eval_command(call: _Call) -> tuple[ScriptArg, ...]:
    """``call`` as an ``EVAL`` (see :func:`eval_source`)."""
    return ("EVAL", eval_source(call.script.name), len(call.keys), *call.keys, *call.args)


def _connection_class(url: str) -> type[Any] | None:
    scheme = url.split(":", 1)[0].lower()
    return {"redis": _Connection, "rediss": _SSLConnection, "unix": _UnixConnection}.get(scheme)


_REPLY_CODES: dict[type[Exception], str] = {
    rexc.OutOfMemoryError: "OOM",
    rexc.ReadOnlyError: "READONLY",
    rexc.BusyLoadingError: "LOADING",
    rexc.NoScriptError: "NOSCRIPT",
    rexc.NoPermissionError: "NOPERM",
    rexc.ExecAbortError: "EXECABORT",
    rexc.TryAgainError: "TRYAGAIN",
    rexc.MasterDownError: "MASTERDOWN",
}
"""Error codes that redis-py strips from the message of its exception classes."""


def _translate_driver(exc: Exception, where: str) -> StorageError:
    """Our error for a redis-py (or OS) exception, with ``__cause__`` set: the ``OSError``
    behind a connection error, else ``exc``. Server error replies keep their text."""
    cause: BaseException = exc
    error: StorageError
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError):
        error = StorageError(f"{where} refused the credentials: {exc}")
    elif isinstance(exc, rexc.ResponseError | rexc.BusyLoadingError):
        text = str(exc)
        code = getattr(exc, "status_code", None) or _REPLY_CODES.get(type(exc))
        if code and not text.startswith(code):
            text = f"{code} {text}"
        error = _translate(RedisReplyError(text), where)
    elif isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError):
        cause = root_os_error(exc)
        message = str(exc)
        if isinstance(cause, OSError):
            reason = describe_os_error(cause)
        else:
            reason = message or type(exc).__name__
        if "connecting to" in message or "Timeout connecting" in message:
            error = Disconnected(f"cannot connect to {where}: {reason}")
        else:
            error = Disconnected(f"lost the connection to {where}: {reason}")
    else:
        error = _translate(exc, where)
    error.__cause__ = cause
    return error


@attrs.define(eq=False)
class _Call:
    """One script call waiting for the auto-pipeline."""

    script: _Script
    keys: Sequence[str]
    args: Sequence[ScriptArg]
    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: StorageError | None = None

    def fail(self, exc: Exception, where: str) -> None:
        if isinstance(exc, StorageError):
            self.error = type(exc)(*exc.args)
            self.error.__cause__ = exc.__cause__
        else:
            self.error = _translate_driver(exc, where)
        self.done.set()


@attrs.define(eq=False)
class RedisAdapter(AdapterCommon):
    """A redis-py asyncio client living on a private trio-asyncio loop.

    ``command_timeout`` bounds every request's wait; ``health_check_interval`` is the
    idle time after which the connections are probed with ``PING``.
    """

    url: str
    retry_timeout: float = DEFAULTS["retry_timeout"]
    options: dict[str, Any] = attrs.Factory(dict)
    command_timeout: float = DEFAULTS["command_timeout"]
    health_check_interval: float = DEFAULTS["health_check_interval"]

    _loop: Any = attrs.field(default=None, init=False)
    _client: Any = attrs.field(default=None, init=False)
    _ps_client: Any = attrs.field(default=None, init=False)
    _pending: list[_Call] = attrs.field(factory=list, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _inflight: int = attrs.field(default=0, init=False)
    """Script round trips in flight; calls made meanwhile join the auto-pipeline."""
    _flush_wanted: trio.Event = attrs.field(factory=trio.Event, init=False)
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _stopped: trio.Event = attrs.field(factory=trio.Event, init=False)
    _subs: Subscriptions = attrs.field(factory=Subscriptions, init=False)
    """Channels in use or lingering; the pub/sub task subscribes to exactly these."""
    _pubsub: Any = attrs.field(default=None, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    """The service nursery (while open)."""
    _client_args: tuple[str, dict[str, Any]] | None = attrs.field(default=None, init=False)
    """URL and keyword arguments of the command client (for blocking connections)."""
    _where: str = attrs.field(default="Redis", init=False)
    """``"Redis at host:port"``, for messages."""
    _connect_timeout: float = attrs.field(default=DEFAULTS["socket_connect_timeout"], init=False)
    _last_done: float = attrs.field(default=0.0, init=False)
    """When a request last completed (the idle probe's clock)."""
    _last_failure: Disconnected | None = attrs.field(default=None, init=False)
    _answered: bool = attrs.field(default=False, init=False)
    """Whether the server ever answered a request of this client."""

    # -- lifetime -------------------------------------------------------------------

    async def open(self) -> None:
        """Start the loop task and check the server answers (``PING``), all within
        ``retry_timeout`` seconds (one deadline for every attempt together).

        Raises:
            StorageError: the URL is invalid, the server refused the credentials, or it
                did not answer within ``retry_timeout``; the message names the address
                and what happened, raised from the underlying error.
        """
        try:
            self._where = f"Redis at {parse_url(self.url).address}"
            self.command_timeout = check_seconds("command_timeout", self.command_timeout)
            self.health_check_interval = check_seconds(
                "health_check_interval", self.health_check_interval
            )
        except ValueError as exc:
            raise StorageError(f"cannot start the Redis client: {exc}") from exc
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._last_failure = None
        ready = trio.Event()
        failure: list[BaseException] = []
        trio.lowlevel.spawn_system_task(self._serve, ready, failure, name="trio-jobqueue-redis")
        await ready.wait()
        if failure:
            raise StorageError(f"cannot start the Redis client: {failure[0]!r}") from failure[0]
        try:
            with trio.move_on_after(self.retry_timeout) as scope:
                await self.command("PING")
            if scope.cancelled_caught:
                last = self._last_failure
                cause: BaseException | None
                if last is not None:
                    message, cause = str(last), last.__cause__
                else:
                    cause = TimeoutError(f"no reply within {self.retry_timeout:g} s")
                    message = f"cannot connect to {self._where}: timed out ({cause})"
                error = StorageError(f"Redis unavailable for {self.retry_timeout:g} s: {message}")
                raise error from cause
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close()
            raise

    async def close(self) -> None:
        self._stop.set()
        await self._stopped.wait()

    async def _serve(self, ready: trio.Event, failure: list[BaseException]) -> None:
        try:
            async with trio_asyncio.open_loop() as loop:
                self._loop = loop
                try:
                    self._client = await loop.run_aio_coroutine(self._make_client())
                except Exception as exc:  # noqa: BLE001 - re-raised by open() as StorageError
                    failure.append(exc)
                    ready.set()
                    return
                ready.set()
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(self._read_pubsub)
                        nursery.start_soon(self._probe_idle)
                        for _ in range(_PIPELINES):
                            nursery.start_soon(self._flush_pipeline)
                        await self._stop.wait()
                        nursery.cancel_scope.cancel()
                finally:
                    self._nursery = None
                    self._closing = True
                    pending, self._pending = self._pending, []
                    for call in pending:
                        call.fail(StorageError("the Redis storage was closed"), self._where)
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await self._close_client()
                    self._loop = None
        except Exception:
            log.exception("the Redis client task crashed")
        finally:
            ready.set()
            self._stopped.set()

    async def _make_client(self) -> Any:
        parsed = parse_url(self.url)
        storage_options, from_query = split_query(parsed.query)
        if storage_options:
            raise ValueError(
                f"storage option(s) {sorted(storage_options)} belong to RedisStorage,"
                " not to the Redis client"
            )
        kwargs: dict[str, Any] = {
            "socket_timeout": None,
            "socket_connect_timeout": DEFAULTS["socket_connect_timeout"],
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        connection_class = _connection_class(self.url)
        if connection_class is not None:
            kwargs["connection_class"] = connection_class
        kwargs.update(from_query)
        kwargs.update(self.options)
        if kwargs["socket_connect_timeout"] is not None:
            self._connect_timeout = float(kwargs["socket_connect_timeout"])
        base = parsed.base
        if parsed.path is None:
            # redis-py lets the URL's /db override keyword arguments: ours win (the
            # ``db`` option over the path), as with the trio client.
            kwargs.setdefault("db", parsed.db or 0)
            base = base.rsplit("/", 1)[0] if parsed.db is not None else base
        client = aioredis.Redis.from_url(base, **kwargs)
        self._client_args = (base, dict(kwargs))
        # The pub/sub connection gets a pool of its own whose retry catches nothing:
        # redis-py would otherwise reconnect inside a failed read while another
        # coroutine (subscribe) may reconnect too, orphaning a socket. The reader task
        # replaces the whole PubSub after any error instead.
        kwargs["retry"] = Retry(NoBackoff(), 0, supported_errors=())
        self._ps_client = aioredis.Redis.from_url(base, **kwargs)
        return client

    async def _close_client(self) -> None:
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            try:
                await self._aio(pubsub.aclose())
            except Exception:
                log.debug("closing the pub/sub connection failed", exc_info=True)
        for attr in ("_client", "_ps_client"):
            client = getattr(self, attr)
            if client is not None:
                setattr(self, attr, None)
                try:
                    await self._aio(client.aclose())
                except Exception:
                    log.debug("closing the Redis client failed", exc_info=True)

    async def _aio(self, coro: Awaitable[T]) -> T:
        loop = self._loop
        if loop is None:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise StorageError("the Redis storage is not open")
        result: T = await loop.run_aio_coroutine(coro)
        return result

    # -- commands -------------------------------------------------------------------

    def _timed_out(self) -> Disconnected:
        cause = TimeoutError(f"no reply within command_timeout={self.command_timeout:g} s")
        # redis-py's pool hides which connection it was: "lost" once the server answered.
        verb = "lost the connection to" if self._answered else "cannot connect to"
        error = Disconnected(f"{verb} {self._where}: timed out ({cause})")
        error.__cause__ = cause
        self._last_failure = error
        return error

    def _driver_error(self, exc: Exception) -> StorageError:
        error = _translate_driver(exc, self._where)
        if isinstance(error, Disconnected):
            self._last_failure = error
        return error

    async def _bounded(self, coro: Awaitable[T]) -> T:
        """``coro`` on the asyncio loop, waiting at most ``command_timeout`` (cancelling
        makes redis-py drop the connection the request was on).

        Raises:
            Disconnected: no reply in time, or the connection failed.
            StorageError: any other driver error.
        """
        with trio.move_on_after(self.command_timeout) as scope:
            try:
                result = await self._aio(coro)
            except StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - raised as ours, from its root cause
                error = self._driver_error(exc)
                raise error from error.__cause__
            self._last_done = trio.current_time()
            self._answered = True
            return result
        assert scope.cancelled_caught
        raise self._timed_out()

    async def _once(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        return await self._bounded(fn(self._client))

    async def _command_once(self, args: Sequence[ScriptArg]) -> Any:
        return await self._once(lambda client: client.execute_command(*args))

    async def _fcall(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        """One script call, sent through the auto-pipeline."""
        if self._loop is None or self._closing:
            raise StorageError("the Redis storage is not open")
        call = _Call(script(name), keys, args)
        if self._inflight == 0:
            # Nothing else in flight: send it from this task (one scheduling hop less;
            # a cancellation here makes redis-py drop the connection, as for any call).
            self._inflight += 1
            try:
                results = await self._bounded(self._run_one(call))
            finally:
                self._inflight -= 1
            if isinstance(results[0], Exception):
                error = self._driver_error(results[0])
                raise error from error.__cause__
            return results[0]
        self._pending.append(call)
        self._flush_wanted.set()
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    async def _flush_pipeline(self) -> None:
        """Send every script call queued meanwhile as one pipeline (one write, one round
        trip). Calls made while a batch is in flight form the next batch."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._inflight += 1
            # Shielded: an interrupted pipeline would leave callers waiting forever;
            # shutdown waits for the round trip, bounded by ``command_timeout`` (then
            # redis-py drops the connection and every call of the batch is retried).
            with trio.CancelScope(shield=True):
                try:
                    results = await self._bounded(self._run_batch(batch))
                except Exception as exc:  # noqa: BLE001 - handed to every caller, who raises it
                    results = [exc] * len(batch)
            self._inflight -= 1
            for call, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    call.fail(result, self._where)
                else:
                    call.result = result
                    call.done.set()

    async def _run_one(self, call: _Call) -> list[Any]:
        """A lone call: a plain FCALL (a redis-py pipeline costs more than it saves)."""
        client = self._client
        command = fcall(call.script, call.keys, call.args)
        try:
            result = await client.execute_command(*command)
        except rexc.ResponseError as exc:
            if not is_missing_function(exc):
                return [exc]
            if not await self._load_library():
                command = _eval_command(call)
            try:
                result = await client.execute_command(*command)
            except rexc.ResponseError as again:
                return [again]
        return [result]

    async def _run_batch(self, batch: list[_Call]) -> list[Any]:
        client = self._client
        pipe = client.pipeline(transaction=False)
        for call in batch:
            pipe.execute_command(*fcall(call.script, call.keys, call.args))
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(results) if is_missing_function(r)]
        if missing:
            # After a restart or FUNCTION FLUSH: load the library, resend just those.
            loaded = await self._load_library()
            pipe = client.pipeline(transaction=False)
            for i in missing:
                call = batch[i]
                pipe.execute_command(
                    *(fcall(call.script, call.keys, call.args) if loaded else _eval_command(call))
                )
            for i, result in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
        return results

    async def _load_library(self) -> bool:
        """``FUNCTION LOAD`` the scripts; ``False`` when refused above ``maxmemory``
        (the calls then go as ``EVAL`` of :func:`eval_source`)."""
        try:
            await self._client.execute_command("FUNCTION", "LOAD", library().source)
        except rexc.OutOfMemoryError:
            return False
        except rexc.ResponseError as exc:
            if not is_loaded_already(exc):
                raise
        return True

    async def _probe_idle(self) -> None:
        """``PING`` when no request completed for ``health_check_interval`` seconds; no
        answer within ``command_timeout`` drops every idle pooled connection (the one
        that timed out is dropped by redis-py), so the next request connects afresh."""
        idle = self.health_check_interval
        self._last_done = trio.current_time()
        while True:
            await trio.sleep_until(self._last_done + idle)
            if trio.current_time() - self._last_done < idle:
                continue
            try:
                await self._command_once(("PING",))
            except Disconnected:
                log.debug("the idle Redis connection did not answer PING; dropping it")
                pool = self._client.connection_pool if self._client is not None else None
                if pool is not None:
                    with trio.move_on_after(self.command_timeout):
                        try:
                            await self._aio(pool.disconnect(inuse_connections=False))
                        except Exception:
                            log.debug("dropping idle connections failed", exc_info=True)
                self._last_done = trio.current_time()
            except StorageError:
                self._last_done = trio.current_time()

    async def _read_pubsub(self) -> None:
        """Keep the pub/sub connection alive and subscribed; dispatch its messages."""
        delay = 0.05
        while True:
            try:
                await self._pubsub_session()
                delay = 0.05
            except Exception:
                log.debug("pub/sub connection lost; reconnecting", exc_info=True)
            if self._pubsub is not None:
                pubsub, self._pubsub = self._pubsub, None
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self._aio(pubsub.aclose())
                    except Exception:
                        log.debug("closing a broken pub/sub connection failed", exc_info=True)
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _pubsub_session(self) -> None:
        pubsub = self._pubsub = self._ps_client.pubsub()
        # Channel name -> the _Channel the server subscription was made for.
        subscribed: dict[str, _Channel] = {}
        subs = self._subs
        ping_sent: float | None = None
        timeout = self.command_timeout
        idle = self.health_check_interval
        # Not shielded (closing must not wait for a server that does not answer): a
        # connection cancelled half-made stays in the pub/sub pool, which close()
        # disconnects.
        with trio.move_on_after(self._connect_timeout + timeout) as connecting:
            await self._aio(pubsub.connect())
        if connecting.cancelled_caught:
            raise ConnectionError("connecting the pub/sub connection timed out")
        async with trio.open_nursery() as nursery:

            async def sync_subscriptions() -> None:
                # (Un)subscribe to match ``subs.channels``; runs on every change.
                fresh = True
                while True:
                    subs.changed = trio.Event()
                    add, drop, replan_at = subs.plan(subscribed, fresh=fresh)
                    fresh = False
                    # Shielded: cancelling redis-py while it (re)connects can orphan a
                    # half-made connection. The reader's failure still ends this task
                    # at the next wait; an unanswered subscription is the reader's
                    # (no confirmation: the PING after ``idle`` goes unanswered too).
                    with trio.CancelScope(shield=True), trio.move_on_after(timeout) as sending:
                        for verb, names in subscription_commands(add, drop):
                            method = getattr(pubsub, verb.lower())
                            await self._aio(method(*names))
                    if sending.cancelled_caught:
                        raise ConnectionError("the pub/sub connection did not take a write")
                    with trio.move_on_at(min(replan_at, trio.current_time() + idle)):
                        await subs.changed.wait()

            nursery.start_soon(sync_subscriptions)
            while True:
                now = trio.current_time()
                wait = idle if ping_sent is None else max(ping_sent + timeout - now, 0.0)
                msg = await self._aio(pubsub.get_message(timeout=wait))
                if msg is None:
                    now = trio.current_time()
                    if ping_sent is None:
                        ping_sent = now
                        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
                            await self._aio(pubsub.ping())
                    elif now - ping_sent >= timeout:
                        raise ConnectionError(
                            f"the pub/sub connection got no answer to PING within {timeout:g} s"
                        )
                    continue
                ping_sent = None
                self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        self._subs.dispatch(str(msg.get("type")), msg.get("channel"), msg.get("data"))

    # -- blocking commands and services ---------------------------------------------

    async def open_blocking(self, key: str | None = None) -> _BlockingConnection:
        """See :meth:`AdapterCommon.open_blocking`: a redis-py client with a single
        connection of its own, connected before it is returned."""
        if self._loop is None or self._closing or self._client_args is None:
            raise StorageError("the Redis storage is not open")
        base, kwargs = self._client_args

        async def connect() -> Any:
            client = aioredis.Redis.from_url(base, single_connection_client=True, **kwargs)
            try:
                await client.initialize()
            except BaseException:
                await client.aclose()
                raise
            return client

        return _BlockingConnection(self, await self._bounded(connect()))

    def start_service(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """See :meth:`AdapterCommon.start_service`."""
        if self._nursery is None:
            raise StorageError("the Redis storage is not open")
        self._nursery.start_soon(fn, *args)


class _BlockingConnection:
    """A redis-py client of one connection for one blocking command at a time (see
    :class:`~._redis_common.BlockingConnection`)."""

    def __init__(self, adapter: RedisAdapter, client: Any) -> None:
        self._adapter = adapter
        self._client = client

    async def pop(self, key: str, timeout: float) -> bytes | None:
        adapter = self._adapter
        with trio.move_on_after(timeout + adapter.command_timeout):
            try:
                reply = await adapter._aio(self._client.blpop([key], timeout=timeout))
            except StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - raised as ours, from its root cause
                error = adapter._driver_error(exc)
                raise error from error.__cause__
            return None if reply is None else bytes(reply[1])
        raise adapter._timed_out()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._adapter._aio(self._client.aclose())
            except Exception:
                log.debug("closing a blocking Redis connection failed", exc_info=True)
