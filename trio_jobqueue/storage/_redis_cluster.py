"""Redis Cluster on top of the trio-native client: one :class:`~._redis_trio.TrioRedisAdapter`
per master node, and a slot map that routes each request to its key's master.

Routing is simple here because every key and channel of a queue shares one hash tag
(``{prefix:name}``), so a queue is one slot and every script runs on one node:

* **Slot map.** Seeded from any reachable node (``CLUSTER SLOTS``), the seeds first,
  then every node seen so far. A request goes to the master of its key's slot (a
  command's first argument after its name; a script's first key; a blocking pop's key;
  a sharded channel's name).
* **Redirections.** ``MOVED`` updates that slot at once (the reply names the new owner),
  asks for a full refresh in the background, and sends the request again: a queue whose
  slot moved follows it within one round trip. ``ASK`` (a slot being migrated) is followed
  once, with ``ASKING`` on a connection of its own.
* **Failover.** A node that cannot be reached fails its requests with
  :class:`~._redis_common.Disconnected` and asks for a refresh; the retry loop
  (``retry_timeout``) sends them again, to the replica once it has been promoted. With a
  ``cluster-node-timeout`` of ``T`` a killed master is replaced within about ``2 T``.
  ``CLUSTERDOWN`` and ``TRYAGAIN`` are retried the same way.
* **Sharded pub/sub.** Each channel is held by a task of this module on the master of its
  slot (``SSUBSCRIBE`` there); when the slot map shows a new owner, the subscription
  moves and its handler's ``on_reconnect`` runs (what was published meanwhile is
  re-read, as after a reconnect).

Node clients are made when first needed and kept until the client closes. See
``docs/redis.md`` ("Redis Cluster").
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from .._errors import StorageError
from ._redis_common import (
    _LINGER,
    AdapterCommon,
    BlockingConnection,
    ChannelHandler,
    Disconnected,
    RedisReplyError,
    ScriptArg,
    Subscriptions,
    _scan,
    _translate,
    eval_source,
    fcall,
    is_loaded_already,
    is_missing_function,
    is_refused_for_memory,
    library,
    script,
)
from ._redis_trio import TrioRedisAdapter, request_once
from ._redis_url import DEFAULTS

__all__ = ["ClusterAdapter", "key_slot"]

log = logging.getLogger("trio_jobqueue.redis")

SLOTS = 16384
_MAX_REDIRECTS = 5
_MIN_REFRESH_INTERVAL = 0.05
"""Seconds between two slot-map queries at most (many failing requests ask for one)."""


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


_TAG_SLOTS: dict[bytes, int] = {}
"""Slots of the hash tags seen (a process uses few: one per queue)."""


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key``: CRC16 (XMODEM) of its hash tag (the text between the
    first ``{`` and the next ``}``, when not empty), else of the whole key, mod 16384."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            tag = data[start + 1 : end]
            slot = _TAG_SLOTS.get(tag)
            if slot is None:
                slot = _crc16(tag) % SLOTS
                if len(_TAG_SLOTS) < 4096:
                    _TAG_SLOTS[tag] = slot
            return slot
    return _crc16(data) % SLOTS


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _redirect(exc: StorageError) -> tuple[str, int, str] | None:
    """``(MOVED|ASK, slot, "host:port")`` for a redirection reply, else ``None``."""
    cause = exc.__cause__
    if not isinstance(cause, RedisReplyError) or cause.code not in ("MOVED", "ASK"):
        return None
    parts = str(cause).split()
    if len(parts) != 3:
        return None
    return parts[0], int(parts[1]), parts[2]


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@attrs.define(eq=False)
class _Held:
    """One channel as the cluster client holds it: subscribed on its slot's master by a
    task of its own, moved when the slot moves."""

    channel: str
    handler: ChannelHandler
    sharded: bool
    linger: float
    users: int = 0
    address: str | None = None
    confirmed: trio.Event = attrs.Factory(trio.Event)
    released: trio.Event = attrs.Factory(trio.Event)
    """Set when the last user left."""
    reused: trio.Event = attrs.Factory(trio.Event)
    """Set when a user came back after the last one left."""
    scope: trio.CancelScope | None = None


@attrs.define(eq=False)
class _ClusterBlocking:
    """A node's blocking connection that tells the cluster client about redirections and
    failures (so the next connection goes to the new owner)."""

    inner: BlockingConnection
    cluster: ClusterAdapter

    async def pop(self, key: str, timeout: float) -> bytes | None:
        try:
            return await self.inner.pop(key, timeout)
        except Disconnected:
            self.cluster.refresh_soon()
            raise
        except StorageError as exc:
            found = _redirect(exc)
            if found is None:
                raise
            self.cluster.learn(found)
            raise Disconnected(f"the slot of {key!r} moved: {exc}") from exc

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define(eq=False)
class ClusterAdapter(AdapterCommon):
    """A Redis Cluster client with the interface of ``TrioRedisAdapter``.

    ``seeds`` are ``(host, port)`` pairs; ``tls`` connects with ``rediss``; ``options``,
    ``command_timeout`` and ``health_check_interval`` are those of each node's client.
    """

    seeds: Sequence[tuple[str, int]]
    retry_timeout: float = DEFAULTS["retry_timeout"]
    options: dict[str, Any] = attrs.Factory(dict)
    command_timeout: float = DEFAULTS["command_timeout"]
    health_check_interval: float = DEFAULTS["health_check_interval"]
    tls: bool = False

    _slots: list[str | None] = attrs.field(factory=lambda: [None] * SLOTS, init=False)
    """The master address (``host:port``) of every slot."""
    _known: dict[str, None] = attrs.field(factory=dict, init=False)
    """Every node address seen (seeds and the slot map's masters and replicas), in order."""
    _nodes: dict[str, TrioRedisAdapter] = attrs.field(factory=dict, init=False)
    _held: dict[str, _Held] = attrs.field(factory=dict, init=False)
    _subs: Subscriptions = attrs.field(factory=Subscriptions, init=False)
    """Unused (the nodes' clients keep the subscriptions); for the common interface."""
    _refreshing: bool = attrs.field(default=False, init=False)
    _refreshed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _last_refresh: float = attrs.field(default=-1e9, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _stopped: trio.Event = attrs.field(factory=trio.Event, init=False)
    refreshes: int = attrs.field(default=0, init=False)
    """Slot-map queries made so far (statistics)."""
    redirects: int = attrs.field(default=0, init=False)
    """``MOVED``/``ASK`` replies followed so far (statistics)."""

    # -- lifetime -------------------------------------------------------------------

    async def open(self) -> None:
        """Start the service task and read the slot map from a seed, within
        ``retry_timeout`` seconds.

        Raises:
            StorageError: no seed answered ``CLUSTER SLOTS`` within ``retry_timeout``
                (the message names each seed's failure), or a seed is not a cluster
                node.
        """
        for host, port in self.seeds:
            self._known[self._address(host, port)] = None
        self._stop = trio.Event()
        self._stopped = trio.Event()
        started = trio.Event()
        trio.lowlevel.spawn_system_task(self._serve, started, name="trio-jobqueue-cluster")
        await started.wait()
        try:
            deadline = trio.current_time() + self.retry_timeout
            delay = 0.05
            while True:
                try:
                    await self._refresh()
                    return
                except Disconnected as exc:
                    if trio.current_time() + delay > deadline:
                        raise StorageError(
                            f"Redis Cluster unavailable for {self.retry_timeout:g} s: {exc}"
                        ) from exc.__cause__
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close()
            raise

    async def close(self) -> None:
        self._stop.set()
        await self._stopped.wait()

    async def _serve(self, started: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                started.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("the Redis Cluster client task crashed")
        finally:
            self._nursery = None
            nodes, self._nodes = list(self._nodes.values()), {}
            with trio.CancelScope(shield=True):
                for node in nodes:
                    await node.close()
            self._stopped.set()

    def start_service(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """See :meth:`AdapterCommon.start_service`."""
        if self._nursery is None:
            raise StorageError("the Redis storage is not open")
        self._nursery.start_soon(fn, *args)

    # -- the slot map ---------------------------------------------------------------

    @staticmethod
    def _address(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _url(self, address: str) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{address}/0"

    async def _refresh(self) -> None:
        """Read ``CLUSTER SLOTS`` from the first node that answers (known masters, then
        the seeds and every other node seen) and route by it from now on.

        Raises:
            Disconnected: no node answered.
            StorageError: a node refused the credentials or is not a cluster node.
        """
        self.refreshes += 1
        self._last_refresh = trio.current_time()
        masters = [a for a in dict.fromkeys(self._slots) if a is not None]
        candidates = list(dict.fromkeys([*masters, *self._known]))
        failures: list[str] = []
        timeout = self.command_timeout
        for address in candidates:
            try:
                (reply,) = await request_once(
                    self._url(address), self.options, [("CLUSTER", "SLOTS")], timeout
                )
            except Disconnected as exc:
                failures.append(str(exc))
                continue
            if isinstance(reply, RedisReplyError):
                if reply.code in ("LOADING", "CLUSTERDOWN", "MASTERDOWN"):
                    failures.append(f"{address}: {reply}")
                    continue
                error = _translate(reply, f"Redis at {address}")
                raise StorageError(f"{error} (is it a Redis Cluster node?)") from reply
            self._install(reply, address)
            return
        raise Disconnected("no Redis Cluster node answered: " + "; ".join(failures))

    def _install(self, reply: Any, asked: str) -> None:
        slots: list[str | None] = [None] * SLOTS
        asked_host = _split_address(asked)[0]
        for entry in reply:
            first, last, master, *replicas = entry
            addresses = []
            for node in (master, *replicas):
                host = _text(node[0]) or asked_host
                addresses.append(self._address(host, int(node[1])))
            for address in addresses:
                self._known[address] = None
            slots[int(first) : int(last) + 1] = [addresses[0]] * (int(last) - int(first) + 1)
        self._slots = slots
        self._rehome()

    def learn(self, redirect: tuple[str, int, str]) -> None:
        """A ``MOVED`` reply: its slot is served by the named node from now on (and the
        whole map is read again soon)."""
        kind, slot, address = redirect
        if kind == "MOVED":
            self._slots[slot] = address
            self._known[address] = None
            self._rehome()
        self.refresh_soon()

    def refresh_soon(self) -> None:
        """Ask for a slot-map refresh in the background (at most one at a time)."""
        if self._refreshing or self._nursery is None:
            return
        self._refreshing = True
        self._nursery.start_soon(self._background_refresh)

    async def _background_refresh(self) -> None:
        try:
            wait = self._last_refresh + _MIN_REFRESH_INTERVAL - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            await self._refresh()
        except StorageError as exc:
            log.debug("could not refresh the Redis Cluster slot map: %s", exc)
        finally:
            self._refreshing = False
            self._refreshed.set()
            self._refreshed = trio.Event()

    def _node(self, address: str) -> TrioRedisAdapter:
        node = self._nodes.get(address)
        if node is None:
            node = TrioRedisAdapter(
                self._url(address),
                self.retry_timeout,
                dict(self.options),
                command_timeout=self.command_timeout,
                health_check_interval=self.health_check_interval,
            )
            node.start()
            self._nodes[address] = node
        return node

    def _owner(self, key: str | bytes) -> str:
        address = self._slots[key_slot(key)]
        if address is None:
            self.refresh_soon()
            raise Disconnected(f"no Redis Cluster node serves the slot of {_text(key)!r} yet")
        return address

    def _rehome(self) -> None:
        """Move held channels whose slot changed owner. (Clients of nodes that own no
        slot any more stay until :meth:`close`: requests may be in flight on them, and
        they cost nothing while idle.)"""
        for held in self._held.values():
            owner = self._slots[key_slot(held.channel)]
            if held.address is not None and held.scope is not None and owner != held.address:
                held.scope.cancel()

    # -- requests -------------------------------------------------------------------

    async def _routed(
        self,
        key: str | bytes,
        call: Callable[[TrioRedisAdapter], Awaitable[Any]],
        ask: Callable[[str], Awaitable[Any]],
    ) -> Any:
        """``call`` on the master of ``key``'s slot, following redirections (``ASK``:
        ``ask(address)`` once)."""
        for _ in range(_MAX_REDIRECTS):
            address = self._owner(key)
            try:
                return await call(self._node(address))
            except Disconnected:
                self.refresh_soon()
                raise
            except StorageError as exc:
                found = _redirect(exc)
                if found is None:
                    raise
                self.redirects += 1
                if found[0] == "ASK":
                    return await ask(found[2])
                self.learn(found)
        raise Disconnected(f"the slot of {_text(key)!r} moved {_MAX_REDIRECTS} times in a row")

    async def _ask(self, address: str, *commands: Sequence[ScriptArg]) -> list[Any]:
        """Send ``commands`` once to ``address`` after ``ASKING`` (a slot being migrated);
        their replies."""
        asking, *replies = await request_once(
            self._url(address), self.options, [("ASKING",), *commands], self.command_timeout
        )
        for answer in (asking, *replies):
            if isinstance(answer, RedisReplyError):
                error = _translate(answer, f"Redis at {address}")
                raise error from answer
        return replies

    async def _ask_one(self, address: str, args: Sequence[ScriptArg]) -> Any:
        (reply,) = await self._ask(address, args)
        return reply

    async def _ask_waited(
        self, address: str, args: Sequence[ScriptArg], wait: Sequence[ScriptArg]
    ) -> tuple[Any, int]:
        reply, acked = await self._ask(address, args, wait)
        return reply, int(acked)

    async def scan_keys(self, match: str, *, count: int = 10_000) -> list[bytes]:
        """See :meth:`AdapterCommon.scan_keys`: every master of the slot map, in turn (a
        namespace's keys share one slot, so each lives on exactly one master)."""
        if all(address is None for address in self._slots):
            await self._refresh()
        found: list[bytes] = []
        for address in dict.fromkeys(self._slots):
            if address is not None:
                found.extend(await _scan(self._node(address).command, match, count))
        return found

    async def _command_once(self, args: Sequence[ScriptArg]) -> Any:
        # The first argument after the command's name is its key (every command the
        # storage sends); a command without one goes to any master.
        key = args[1] if len(args) > 1 else ""
        routing = key if isinstance(key, str | bytes) else str(key)
        return await self._routed(
            routing, lambda node: node._command_once(args), lambda a: self._ask_one(a, args)
        )

    async def _fcall(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        if not keys:
            raise StorageError(f"script {name!r} declares no key: it cannot be routed")
        return await self._routed(
            keys[0],
            lambda node: node._fcall(name, keys, args),
            lambda a: self._ask_fcall(a, name, keys, args),
        )

    async def _fcall_waited(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], wait: Sequence[ScriptArg]
    ) -> tuple[Any, int]:
        if not keys:
            raise StorageError(f"script {name!r} declares no key: it cannot be routed")
        async def ask(address: str) -> tuple[Any, int]:
            reply, acked = await self._ask_fcall(address, name, keys, args, wait)
            return reply, int(acked)

        result: tuple[Any, int] = await self._routed(
            keys[0], lambda node: node._fcall_waited(name, keys, args, wait), ask
        )
        return result

    async def _ask_fcall(
        self,
        address: str,
        name: str,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *after: Sequence[ScriptArg],
    ) -> Any:
        """Script ``name`` once on ``address`` after ``ASKING`` (a slot being migrated),
        the library loaded there first (that node may never have run one; above
        ``maxmemory``, where it cannot be loaded, the call goes as an ``EVAL`` of
        :func:`eval_source`); its reply, or a tuple of the replies of the call and of
        each of ``after``."""
        call = fcall(script(name), keys, args)
        loaded, asking, *replies = await request_once(
            self._url(address),
            self.options,
            [("FUNCTION", "LOAD", library().source), ("ASKING",), call, *after],
            self.command_timeout,
        )
        if is_refused_for_memory(loaded) and is_missing_function(replies[0]):
            evaluated = ("EVAL", eval_source(name), len(keys), *keys, *args)
            replies = await self._ask(address, evaluated, *after)
        else:
            for answer in (loaded, asking, *replies):
                if isinstance(answer, RedisReplyError) and not (
                    answer is loaded and is_loaded_already(answer)
                ):
                    error = _translate(answer, f"Redis at {address}")
                    raise error from answer
        return tuple(replies) if after else replies[0]

    async def _command_waited(
        self, args: Sequence[ScriptArg], wait: Sequence[ScriptArg]
    ) -> tuple[Any, int]:
        key = args[1] if len(args) > 1 else ""
        routing = key if isinstance(key, str | bytes) else str(key)
        result: tuple[Any, int] = await self._routed(
            routing,
            lambda node: node._command_waited(args, wait),
            lambda a: self._ask_waited(a, args, wait),
        )
        return result

    async def open_blocking(self, key: str | None = None) -> BlockingConnection:
        """See :meth:`AdapterCommon.open_blocking` (on the master of ``key``'s slot)."""
        if key is None:
            raise StorageError("a blocking connection on a cluster needs the key")
        node = self._node(self._owner(key))
        try:
            inner = await node.open_blocking(key)
        except Disconnected:
            self.refresh_soon()
            raise
        return _ClusterBlocking(inner, self)

    # -- pub/sub --------------------------------------------------------------------

    @property
    def pubsub_messages(self) -> int:
        """Messages received so far on the nodes' pub/sub connections."""
        return sum(node.pubsub_messages for node in self._nodes.values())

    def subscription(
        self,
        channel: str,
        handler: ChannelHandler,
        *,
        sharded: bool = False,
        linger: float = _LINGER,
    ) -> AbstractAsyncContextManager[None]:
        """See :meth:`AdapterCommon.subscription`: held on the master of the channel's
        slot (moved with it)."""
        return self._subscription(channel, handler, sharded, linger)

    @asynccontextmanager
    async def _subscription(
        self, channel: str, handler: ChannelHandler, sharded: bool, linger: float
    ) -> AsyncIterator[None]:
        held = self._held.get(channel)
        if held is None:
            held = self._held[channel] = _Held(channel, handler, sharded, linger)
            self.start_service(self._hold, held)
        if held.users == 0:
            held.released = trio.Event()
            held.reused.set()
            held.reused = trio.Event()
        held.users += 1
        try:
            with trio.move_on_after(self.retry_timeout) as scope:
                await held.confirmed.wait()
            if scope.cancelled_caught:
                raise StorageError(f"Redis did not confirm the subscription to {channel!r}")
            yield
        finally:
            held.users -= 1
            if held.users == 0:
                held.released.set()

    @staticmethod
    async def _until_unused(held: _Held) -> None:
        """Until ``held`` has had no user for ``linger`` seconds (consecutive waits on
        one channel reuse its holder)."""
        while True:
            await held.released.wait()
            with trio.move_on_after(held.linger):
                await held.reused.wait()
            if held.users == 0:
                return

    async def _hold(self, held: _Held) -> None:
        """Keep ``held`` subscribed on its slot's master while it has users."""
        moved = False
        delay = 0.05
        try:
            while held.users > 0:
                try:
                    address = self._owner(held.channel)
                    held.address = address
                    node = self._node(address)
                    with trio.CancelScope() as scope:
                        held.scope = scope
                        async with node.subscription(
                            held.channel, held.handler, sharded=held.sharded, linger=held.linger
                        ):
                            delay = 0.05
                            if moved:
                                # Published on the old owner meanwhile: unknown.
                                held.handler.on_reconnect()
                            held.confirmed.set()
                            await self._until_unused(held)
                    held.scope = None
                    if scope.cancelled_caught:
                        moved = True
                except StorageError as exc:
                    log.debug("subscription to %r failed; retrying: %s", held.channel, exc)
                    self.refresh_soon()
                    moved = True
                    await trio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 1.0)
        finally:
            if self._held.get(held.channel) is held:
                del self._held[held.channel]
