"""RedisStorage: the production backend (Redis 7+ / Valkey 8+).

Every transition is one Lua script (``trio_jobqueue/lua/<name>.lua``) run with
``EVALSHA``; the key schema is in :mod:`._redis_keys`; the client is the trio-native
:mod:`._redis_trio` (default) or redis-py through trio-asyncio (:mod:`._redis_adapter`).
See ``docs/redis.md`` for the design and failure behaviour.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from .._errors import NotReplicatedError, StorageError
from .._types import (
    CancelStatus,
    DeleteStatus,
    EnqueueStatus,
    EventKind,
    JobState,
    RetryStatus,
    UpdateTtlStatus,
)
from ._base import (
    QUEUED_OUTCOME,
    Claim,
    ClaimBatch,
    Completion,
    EnqueueOutcome,
    EnqueueSpec,
    EventRecord,
    Fence,
    FireStatus,
    JobRecord,
    LockHolder,
    ReapedJob,
    ReapResult,
    RecordPage,
    SettleStatus,
    Storage,
    StorageStats,
    WorkerRecord,
)
from ._common import STALLED_ERROR, new_token
from ._core import FollowKind, Hub
from ._redis_cluster import ClusterAdapter
from ._redis_common import Disconnected, ScriptArg
from ._redis_trio import SentinelResolver, TrioRedisAdapter

if TYPE_CHECKING:
    from ._redis_adapter import RedisAdapter
from ._redis_keys import NamespaceKeys, namespace_of, namespaces_pattern
from ._redis_wake import Wakers

__all__ = ["RedisStorage"]

log = logging.getLogger("trio_jobqueue.redis")

DEFAULT_URL = "redis://localhost:6379/0"
_PURGE_BATCH = 1000
_SETTLE_KEYS_ONLY = frozenset({"complete", "complete_many", "fail"})
"""Scripts that take only the first seven standard keys (``NamespaceKeys.settle``)."""
COMPLETE_BATCH = 100
"""Completions one ``complete_many`` script call stores at most."""
REAP_BATCH = 250
"""Expired leases one reap script call handles at most (a few ms of Redis time)."""
_REPLY_CACHE_MARGIN = 5.0
"""Seconds a cached reply outlives the last moment its call may be resent
(``retry_timeout`` plus one ``command_timeout``)."""


def parse_events(data: bytes) -> list[EventRecord]:
    """Decode one pub/sub message of the Lua scripts (see ``lua/_lib.lua``)."""
    events: list[EventRecord] = []
    pos = 0
    end = len(data)
    while pos < end:
        newline = data.index(b"\n", pos)
        kind, attempt, id_len, result_len, error_len = data[pos:newline].split(b" ")
        pos = newline + 1
        n = int(id_len)
        job_id = data[pos : pos + n].decode("utf-8")
        pos += n
        result: bytes | None = None
        error: bytes | None = None
        n = int(result_len)
        if n >= 0:
            result = data[pos : pos + n]
            pos += n
        ref = n == -2  # a large result, left out: read it from the job
        n = int(error_len)
        if n >= 0:
            error = data[pos : pos + n]
            pos += n
        events.append(
            EventRecord(EventKind(kind.decode("ascii")), job_id, int(attempt), result, error, ref)
        )
    return events


def _encode_worker(record: WorkerRecord) -> bytes:
    """A registration as stored (JSON; the storage adds ``seen`` and ``exp``)."""
    return json.dumps(
        {
            "id": record.worker_id,
            "host": record.host,
            "pid": record.pid,
            "started": record.started_at,
            "concurrency": record.concurrency,
            "in_flight": record.in_flight,
            "jobs": list(record.jobs),
            "kind": record.kind,
            "state": record.state,
            "counters": record.counters,
        },
        ensure_ascii=False,
    ).encode("utf-8")


def _decode_worker(data: bytes, seen: float, expires: float) -> WorkerRecord:
    raw = json.loads(data)
    return WorkerRecord(
        worker_id=str(raw["id"]),
        host=str(raw["host"]),
        pid=int(raw["pid"]),
        started_at=float(raw["started"]),
        concurrency=int(raw["concurrency"]),
        in_flight=int(raw["in_flight"]),
        jobs=tuple(str(job_id) for job_id in raw["jobs"]),
        kind=str(raw["kind"]),
        state=str(raw["state"]),
        counters={str(k): int(v) for k, v in dict(raw["counters"]).items()},
        last_seen=seen,
        expires_at=expires,
    )


@contextmanager
def _corrupt_record(ns: str, job_id: str) -> Iterator[None]:
    """Foreign bytes in a job hash surface as :class:`StorageError`, never as a crash."""
    try:
        yield
    except (ValueError, TypeError, AttributeError) as exc:
        raise StorageError(f"corrupt record for job {job_id!r} in queue {ns!r}") from exc


ENQUEUE_PIPELINE = 2
"""``enqueue_many.lua`` calls one ``enqueue_chunks`` keeps in flight."""
ENQUEUE_CALLS = 2
"""Most enqueue script calls one storage has in flight per namespace for ``enqueue()``:
the calls made while that many are under way queue up, and go together in one
``enqueue_many.lua`` call when one of them returns."""
ENQUEUE_BATCH = 100
"""Most jobs one such call carries."""
ENQUEUE_BATCH_BYTES = 1 << 20
"""Most payload bytes one such call carries (a larger payload goes alone)."""

_QUEUED, _SENT, _DONE = 0, 1, 2


class _Enqueue:
    """One ``enqueue()`` call waiting in an :class:`_Enqueues` line."""

    __slots__ = ("abandoned", "event", "job", "outcome", "state")

    def __init__(self, job: EnqueueSpec) -> None:
        self.job = job
        self.state = _QUEUED
        self.outcome: EnqueueOutcome | StorageError | None = None
        self.event: trio.Event | None = None
        """Set while its task waits (for the outcome, or for its turn to send)."""
        self.abandoned = False
        """Its task is gone (cancelled): nobody reads the outcome."""


@attrs.define(eq=False, slots=True)
class _Batch:
    """One script call of an :class:`_Enqueues` line, sent again as it is (the same
    arguments, so the same nonce) when the task sending it was cancelled mid-call."""

    entries: list[_Enqueue]
    script: str
    keys: Sequence[str]
    argv: list[ScriptArg]


class _Enqueues:
    """The ``enqueue()`` calls of one namespace of one storage. While fewer than
    :data:`ENQUEUE_CALLS` script calls are under way a call is sent at once, by its own
    task; the calls made meanwhile queue up, in order, and the next sender takes them all
    (up to :data:`ENQUEUE_BATCH`) in one ``enqueue_many.lua`` call. No task of its own:
    a task sends batches (the oldest first) until its own job went, then passes the turn
    to a waiting one. A batch whose sender was cancelled mid-call is sent again, as it
    was, before anything newer (its jobs may be written already: its nonce makes the
    script report them as accepted), unless every task waiting on it is gone too."""

    __slots__ = ("calls", "formed", "line")

    def __init__(self) -> None:
        self.calls = 0
        self.line: deque[_Enqueue] = deque()
        """Calls not sent yet, in order."""
        self.formed: deque[_Batch] = deque()
        """Batches to send again, before the line."""

    def has_work(self, entry: _Enqueue) -> bool:
        """Whether the task of ``entry`` has something to send: a batch to send again,
        or its own job."""
        return bool(self.formed) or entry.state == _QUEUED

    def can_send(self, entry: _Enqueue) -> bool:
        return self.calls < ENQUEUE_CALLS and self.has_work(entry)

    def take(self) -> list[_Enqueue]:
        """The oldest queued calls, as many as one script call carries."""
        line = self.line
        first = line.popleft()
        batch, size = [first], len(first.job.payload)
        while line and len(batch) < ENQUEUE_BATCH:
            size += len(line[0].job.payload)
            if size > ENQUEUE_BATCH_BYTES:
                break
            batch.append(line.popleft())
        for entry in batch:
            entry.state = _SENT
        return batch

    def pass_turn(self) -> None:
        """Wake a waiting task that may send now, if a call may be sent now."""
        if self.calls >= ENQUEUE_CALLS:
            return
        for batch in self.formed:
            for entry in batch.entries:
                if entry.event is not None:
                    entry.event.set()
                    return
        if self.line and self.line[0].event is not None:
            self.line[0].event.set()


_SCHEDULED = EnqueueOutcome(EnqueueStatus.SCHEDULED)


def _options(
    max_attempts: int, ttl: float, priority: int, run_at: float | None, delay: float | None
) -> str:
    """The options of one job of ``enqueue_many.lua``."""
    return (
        f"{int(max_attempts)} {float(ttl)!r} {int(priority)} "
        f"{'-' if run_at is None else repr(float(run_at))} "
        f"{'-' if delay is None else repr(float(delay))}"
    )  # fmt: skip


def _chunk_args(
    clock: str, nonce: str, index: int, chain_ms: str, jobs: Sequence[EnqueueSpec]
) -> list[ScriptArg]:
    """ARGV of ``enqueue_many.lua`` for one chunk: the first job's options are the
    chunk's defaults; the jobs with other options are listed with theirs."""
    if not jobs:
        return [clock, nonce, index, chain_ms, _options(1, 1.0, 0, None, None), ""]
    first = jobs[0]
    default = (first.max_attempts, first.result_ttl, first.priority, first.run_at, first.delay)
    others: list[str] = []
    args: list[ScriptArg] = [clock, nonce, index, chain_ms, _options(*default), ""]
    append = args.append
    for position, job in enumerate(jobs, 1):
        options = (job.max_attempts, job.result_ttl, job.priority, job.run_at, job.delay)
        if options != default:
            others.append(f"{position} {_options(*options)};")
        payload = job.payload
        append(job.job_id)
        append(payload if type(payload) is bytes else bytes(payload))
    args[5] = "".join(others)
    return args


def _chunk_outcomes(ns: str, jobs: Sequence[EnqueueSpec], reply: Any) -> list[EnqueueOutcome]:
    """The outcomes of ``enqueue_many.lua``'s reply ``{codes, extras...}``; raises the
    first job's error (a corrupt record under its id)."""
    outcomes: list[EnqueueOutcome] = []
    for outcome in _chunk_results(ns, jobs, reply):
        if isinstance(outcome, StorageError):
            raise outcome
        outcomes.append(outcome)
    return outcomes


def _chunk_results(
    ns: str, jobs: Sequence[EnqueueSpec], reply: Any
) -> list[EnqueueOutcome | StorageError]:
    """Per job of ``enqueue_many.lua``'s reply ``{codes, extras...}``: its outcome, or
    the error of a corrupt record under its id."""
    codes: bytes = reply[0]
    if len(codes) != len(jobs):
        raise StorageError(f"enqueue_many: {len(codes)} answers for {len(jobs)} jobs")
    if codes.count(b"q") == len(codes):
        return [QUEUED_OUTCOME] * len(codes)
    outcomes: list[EnqueueOutcome | StorageError] = []
    extra = 1
    for job, code in zip(jobs, codes, strict=True):
        if code == 113:  # q
            outcomes.append(QUEUED_OUTCOME)
        elif code == 115:  # s
            outcomes.append(_SCHEDULED)
        elif code == 99:  # c
            outcomes.append(
                EnqueueOutcome(EnqueueStatus.COMPLETED, JobState.COMPLETED, bytes(reply[extra]))
            )
            extra += 1
        else:
            try:
                with _corrupt_record(ns, job.job_id):
                    state = JobState(reply[extra].decode())
                outcomes.append(EnqueueOutcome(EnqueueStatus.DUPLICATE, state))
            except StorageError as exc:
                outcomes.append(exc)
            extra += 1
    return outcomes


def _opt_float(raw: bytes | None) -> float | None:
    return None if raw is None or raw == b"" else float(raw)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8")


def _decode(data: bytes) -> list[EventRecord] | None:
    try:
        return parse_events(data)
    except (ValueError, UnicodeDecodeError):
        log.warning("ignoring a malformed event message on a job queue channel")
        return None


@attrs.define(eq=False)
class _EventsFeed:
    """The handler of a namespace's ``{tag}:ev`` channel: every event, for subscribers.
    After a reconnect, what was published meanwhile is lost: subscribers get a gap."""

    hub: Hub

    def on_message(self, data: bytes) -> None:
        self.hub.offer(_decode(data) or ())

    def on_reconnect(self) -> None:
        self.hub.lost_track("events")


@attrs.define(eq=False)
class _JobFeed:
    """The handler of one outcome channel ``{tag}:done:<shard>``: the terminal events of
    the jobs of that shard, for their watches (the hub drops the others). After a
    reconnect, the watches of that shard's jobs re-read their job's state."""

    hub: Hub
    channel: str
    keys: NamespaceKeys

    def on_message(self, data: bytes) -> None:
        self.hub.fire(_decode(data) or ())

    def on_reconnect(self) -> None:
        for job_id, watches in tuple(self.hub.watches.items()):
            if self.keys.done_channel(job_id) == self.channel:
                for watch in tuple(watches):
                    watch.fire(None)


@attrs.define(eq=False)
class _ControlFeed:
    """The handler of a namespace's ``{tag}:ctl`` channel: force-cancels of running jobs,
    for the workers' control listeners. After a reconnect they check by heartbeat."""

    hub: Hub

    def on_message(self, data: bytes) -> None:
        self.hub.control(_decode(data) or ())

    def on_reconnect(self) -> None:
        self.hub.lost_track("control")


@attrs.define(eq=False, init=False)
class RedisStorage(Storage):
    """Jobs in Redis 7+, shared by any number of processes and machines.

    Every option may also be given as a query parameter of the URL
    (``redis://host:6379/0?key_prefix=myapp&command_timeout=2``); keyword arguments win
    over the URL. ``None`` means "from the URL, else the default". See ``docs/redis.md``
    ("Connecting") for the URL forms and every option.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db][?option=value...]``,
            ``rediss://`` for TLS or ``unix:///path?db=N``;
            ``redis+cluster://h1:p1,h2:p2`` for Redis Cluster (any node named seeds the
            slot map); ``redis+sentinel://s1:26379,s2:26379/mymaster/0`` for the master
            that Redis Sentinel names (``rediss+`` for TLS); defaults to ``$REDIS_URL``,
            else ``redis://localhost:6379/0``.
        key_prefix: first part of every key's hash tag (``{prefix:queue}``); ``"jq"``.
        retry_timeout: how long (seconds) an operation retries connection errors, with
            capped exponential backoff, before raising :class:`~trio_jobqueue.StorageError`
            (10 s); also the overall deadline of opening the storage.
        command_timeout: longest the server may stay silent while a reply is due (5 s):
            the connection is then dropped, the request fails (and is retried within
            ``retry_timeout``), and the next request reconnects.
        health_check_interval: idle seconds after which a connection is probed with
            ``PING`` (5 s), so a connection that died silently is replaced within
            ``health_check_interval + command_timeout`` even when nothing is sent.
        claim_repoll: longest a blocked ``claim`` waits for a wake-up before it
            asks the server again (a safety net; wake-ups normally arrive in
            milliseconds); 5 s.
        script_timeout: bound on one shielded claim script call (10 s).
        client: ``"trio"`` (default): the trio-native client; ``"asyncio"``: redis-py's
            asyncio client through trio-asyncio. ``$TRIO_JOBQUEUE_REDIS_CLIENT``
            overrides the default. See ``docs/redis.md`` ("Client"). Cluster and
            Sentinel URLs need the trio client.
        cluster: Redis Cluster mode for a ``redis://`` URL naming one seed node (implied
            by ``redis+cluster://``).
        durable_enqueue: replicas that must confirm every write creating jobs
            (``enqueue``, each chunk of ``enqueue_many``, the enqueue of
            ``enqueue_and_wait``, a schedule's fire) before the call returns: ``WAIT
            <durable_enqueue> <durable_timeout>`` on the connection that wrote. ``0``
            (default): off, no cost. Fewer confirmations in time raise
            :class:`~trio_jobqueue.NotReplicatedError` (the job is written). Needs the
            trio client. See ``docs/redis.md`` ("Durable enqueue").
        durable_timeout: how long (seconds) a durable enqueue waits for its replicas
            (0.5 s); less than ``command_timeout``. Other requests of the storage's
            connection wait behind it meanwhile.
        **options: connection options (e.g. ``ssl_ca_certs``): the ``ssl_*`` ones,
            ``username``, ``password``, ``db`` and ``socket_connect_timeout`` (5 s) for
            the trio client; anything ``redis.asyncio.Redis.from_url`` takes for
            ``client="asyncio"``.

    Raises:
        ValueError: a malformed URL, an unknown URL parameter (the message names it and
            lists the accepted ones), an invalid value (named), an option the trio
            client does not support, a cluster or sentinel URL or ``durable_enqueue``
            with ``client="asyncio"``, or a ``durable_timeout`` not below
            ``command_timeout``.
    """

    url: str
    key_prefix: str
    retry_timeout: float
    command_timeout: float
    health_check_interval: float
    claim_repoll: float
    script_timeout: float
    client: str
    options: dict[str, Any]
    cluster: bool
    durable_enqueue: int
    durable_timeout: float
    _adapter: TrioRedisAdapter | RedisAdapter | ClusterAdapter | None = attrs.field(
        default=None, init=False
    )
    _wakers: Wakers | None = attrs.field(default=None, init=False)
    _sharded: bool = attrs.field(default=True, init=False)
    """Whether the server has sharded pub/sub (``SPUBLISH``); else classic channels."""
    _feeds: dict[str, _EventsFeed] = attrs.field(factory=dict, init=False)
    _keys: dict[str, NamespaceKeys] = attrs.field(factory=dict, init=False)
    _job_feeds: dict[str, _JobFeed] = attrs.field(factory=dict, init=False)
    _control_feeds: dict[str, _ControlFeed] = attrs.field(factory=dict, init=False)
    """Handlers of the outcome channels, by channel (one per channel, as required)."""
    _claims_done: dict[str, list[str]] = attrs.field(factory=dict, init=False)
    """Per namespace: nonces of claims whose replies arrived (the next claim forgets them)."""
    _orphans: dict[str, list[str]] = attrs.field(factory=dict, init=False)
    """Per namespace: nonces of claims that never got a reply (the next claim releases
    whatever jobs they took)."""
    _enqueues: dict[str, _Enqueues] = attrs.field(factory=dict, init=False)
    """Per namespace: the ``enqueue()`` calls waiting to share a script call."""

    def __init__(
        self,
        url: str | None = None,
        *,
        key_prefix: str | None = None,
        retry_timeout: float | None = None,
        command_timeout: float | None = None,
        health_check_interval: float | None = None,
        claim_repoll: float | None = None,
        script_timeout: float | None = None,
        client: Literal["trio", "asyncio"] | None = None,
        cluster: bool | None = None,
        durable_enqueue: int | None = None,
        durable_timeout: float | None = None,
        **options: Any,
    ) -> None:
        from . import _redis_url

        if url is None:
            url = os.environ.get("REDIS_URL") or DEFAULT_URL
        parsed = _redis_url.parse_url(url)
        settings, connection = _redis_url.split_query(parsed.query)
        explicit = {
            "key_prefix": key_prefix,
            "retry_timeout": retry_timeout,
            "command_timeout": command_timeout,
            "health_check_interval": health_check_interval,
            "claim_repoll": claim_repoll,
            "script_timeout": script_timeout,
            "client": client,
            "cluster": cluster,
            "durable_enqueue": durable_enqueue,
            "durable_timeout": durable_timeout,
        }
        settings.update((name, value) for name, value in explicit.items() if value is not None)
        # $TRIO_JOBQUEUE_REDIS_CLIENT is a default for single servers: Cluster and Sentinel
        # run on the trio client only.
        single = not (parsed.cluster or parsed.sentinel or settings.get("cluster"))
        default = os.environ.get("TRIO_JOBQUEUE_REDIS_CLIENT") if single else None
        chosen = settings.get("client") or default or "trio"
        if chosen not in ("trio", "asyncio"):
            raise ValueError(f'client must be "trio" or "asyncio", not {chosen!r}')
        prefix = settings.get("key_prefix", _redis_url.DEFAULTS["key_prefix"])
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"key_prefix must be a non-empty str, not {prefix!r}")

        def seconds(name: str) -> float:
            return _redis_url.check_seconds(name, settings.get(name, _redis_url.DEFAULTS[name]))

        connection.update(options)
        if chosen == "trio":
            supported = {*_redis_url.CONNECTION_OPTIONS, "username", "password"}
            unsupported = sorted(set(connection) - supported)
            if unsupported:
                raise ValueError(
                    f"option(s) {unsupported} are not supported by the trio Redis client"
                    f' (client="asyncio" passes options to redis-py); accepted:'
                    f" {', '.join(sorted(supported))}"
                )
        cluster_mode = bool(parsed.cluster or settings.get("cluster", False))
        if parsed.sentinel and cluster_mode:
            raise ValueError("a redis+sentinel:// URL cannot be a cluster too")
        mode = "Sentinel" if parsed.sentinel else "Cluster" if cluster_mode else None
        if mode is not None and chosen != "trio":
            raise ValueError(
                f'Redis {mode} needs the trio client (client="trio"); the asyncio'
                " client (redis-py through trio-asyncio) is for single servers"
            )
        replicas = _redis_url.check_replicas("durable_enqueue", settings.get("durable_enqueue", 0))
        durable_timeout = seconds("durable_timeout")
        if replicas and chosen != "trio":
            raise ValueError(
                'durable_enqueue needs the trio client (client="trio"): WAIT must follow'
                " the write on its connection"
            )
        if replicas and durable_timeout >= seconds("command_timeout"):
            raise ValueError(
                f"invalid durable_timeout {durable_timeout!r}: it must be less than"
                f" command_timeout ({seconds('command_timeout')!r} s)"
            )
        if cluster_mode:
            if parsed.scheme == "unix":
                raise ValueError("Redis Cluster needs host:port nodes, not a unix:// socket")
            db = connection.get("db", parsed.db)
            if db:
                raise ValueError(f"a Redis Cluster has database 0 only, not {db!r}")
        self.__attrs_init__(
            url=url,
            key_prefix=prefix,
            retry_timeout=seconds("retry_timeout"),
            command_timeout=seconds("command_timeout"),
            health_check_interval=seconds("health_check_interval"),
            claim_repoll=seconds("claim_repoll"),
            script_timeout=seconds("script_timeout"),
            client=chosen,
            cluster=cluster_mode,
            durable_enqueue=replicas,
            durable_timeout=durable_timeout,
            options=connection,
        )

    def __repr__(self) -> str:
        from ._redis_url import redact

        return (
            f"RedisStorage({redact(self.url)!r}, key_prefix={self.key_prefix!r},"
            f" client={self.client!r}{', cluster=True' if self.cluster else ''}"
            f"{f', durable_enqueue={self.durable_enqueue}' if self.durable_enqueue else ''})"
        )

    # -- lifetime ---------------------------------------------------------------------

    async def __aenter__(self) -> RedisStorage:
        await super().__aenter__()
        return self

    async def _open(self) -> None:
        from ._redis_url import parse_url

        # The clients get the URL without our query parameters (already in the
        # attributes and ``options``).
        url = parse_url(self.url).base
        timeouts = {
            "command_timeout": self.command_timeout,
            "health_check_interval": self.health_check_interval,
        }
        adapter: TrioRedisAdapter | RedisAdapter | ClusterAdapter
        if self.cluster:
            adapter = self._cluster_adapter(timeouts)
        elif self.client == "asyncio":
            # Imported on demand: it pulls in asyncio and trio-asyncio.
            from ._redis_adapter import RedisAdapter

            adapter = RedisAdapter(url, self.retry_timeout, self.options, **timeouts)
        else:
            adapter = TrioRedisAdapter(
                url,
                self.retry_timeout,
                self.options,
                command_timeout=self.command_timeout,
                health_check_interval=self.health_check_interval,
                sentinel=self._sentinel_resolver(),
            )
        await adapter.open()
        try:
            self._sharded = await self._has_sharded_pubsub(adapter)
        except BaseException:
            with trio.CancelScope(shield=True):
                await adapter.close()
            raise
        self._adapter = adapter
        self._wakers = Wakers(adapter, wait=self.health_check_interval)

    def _sentinel_resolver(self) -> SentinelResolver | None:
        from ._redis_url import parse_url

        parsed = parse_url(self.url)
        if not parsed.sentinel:
            return None
        assert parsed.service is not None
        tls = {k: v for k, v in self.options.items() if k.startswith("ssl_")}
        return SentinelResolver(
            list(parsed.seeds), parsed.service, tls, tls=parsed.scheme.startswith("rediss")
        )

    def _cluster_adapter(self, timeouts: dict[str, float]) -> ClusterAdapter:
        from ._redis_url import parse_url

        parsed = parse_url(self.url)
        options = {k: v for k, v in self.options.items() if k != "db"}
        if parsed.username is not None:
            options.setdefault("username", parsed.username)
        if parsed.password is not None:
            options.setdefault("password", parsed.password)
        seeds = parsed.seeds or ((parsed.host, parsed.port),)
        tls = parsed.scheme.startswith("rediss")
        return ClusterAdapter(seeds, self.retry_timeout, options, tls=tls, **timeouts)

    @staticmethod
    async def _has_sharded_pubsub(
        adapter: TrioRedisAdapter | RedisAdapter | ClusterAdapter,
    ) -> bool:
        """Whether the server takes ``SPUBLISH`` (Redis 7; a server or proxy without it,
        or an ACL that forbids it, gets classic ``PUBLISH``/``SUBSCRIBE``)."""
        try:
            await adapter.command("SPUBLISH", "trio-jobqueue:probe", "")
        except StorageError as exc:
            if isinstance(exc, Disconnected):
                raise
            log.info("Redis has no sharded pub/sub (%s); using classic pub/sub", exc)
            return False
        return True

    async def _close(self) -> None:
        adapter, self._adapter = self._adapter, None
        self._wakers = None
        if adapter is not None:
            await adapter.close()

    @property
    def adapter(self) -> TrioRedisAdapter | RedisAdapter | ClusterAdapter:
        """The open client (raises :class:`StorageError` when the storage is closed)."""
        if self._adapter is None:
            raise StorageError("RedisStorage is not open: use `async with storage:`")
        return self._adapter

    # -- helpers ----------------------------------------------------------------------

    def keys(self, ns: str) -> NamespaceKeys:
        found = self._keys.get(ns)
        if found is None:
            found = self._keys[ns] = NamespaceKeys.of(self.key_prefix, ns)
        return found

    @property
    def repoll_interval(self) -> float:
        return self.claim_repoll

    @property
    def keeps_idle_wakeups(self) -> bool:
        return True  # a token waits in the wake-up list for the next BLPOP

    @property
    def batches_calls(self) -> bool:
        return True  # every call is a round trip

    @property
    def _clock_arg(self) -> str:
        """``ARGV[1]`` of every script: the clock offset, and the pub/sub flavour."""
        offset = repr(self._clock_offset)
        return offset if self._sharded else offset + ",classic"

    def follow(
        self, ns: str, kind: FollowKind, job_id: str | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Feed the namespace's hub with ``kind`` notifications while open:

        * ``work``: a wake-up listener on ``{tag}:wake`` (see :mod:`._redis_wake`): one
          enqueue wakes one idle claimer among all processes;
        * ``events``: the ``{tag}:ev`` channel (reference-counted, lingers 2 s);
        * ``job``: the outcome channel of the job's shard, ``{tag}:done:<shard>`` (one of
          256; it lingers 2 s, so consecutive waits rarely subscribe), so a watcher
          receives about 1/256 of the namespace's outcomes.

        Channels yield once the server confirmed the subscription, so nothing published
        afterwards is missed.

        Raises:
            StorageError: the storage is not open, or the subscription was not confirmed
                within ``retry_timeout``.
        """
        if kind != "job":
            return self._follow_namespace(ns, kind)
        assert job_id is not None
        # The common case (every enqueue_and_wait): the subscription's own context,
        # without a generator around it.
        keys = self.keys(ns)
        channel = keys.done_channel(job_id)
        handler = self._job_feeds.get(channel)
        if handler is None:
            handler = self._job_feeds[channel] = _JobFeed(self.hub(ns), channel, keys)
        return self.adapter.subscription(channel, handler, sharded=self._sharded)

    @asynccontextmanager
    async def _follow_namespace(self, ns: str, kind: FollowKind) -> AsyncIterator[None]:
        """:meth:`follow` of the namespace-wide kinds (``work``, ``control``, ``events``)."""
        keys = self.keys(ns)
        adapter = self.adapter
        if kind == "work":
            assert self._wakers is not None
            async with self._wakers.waiting(keys.wake, self.hub(ns)):
                yield None
        elif kind == "control":
            control = self._control_feeds.get(ns)
            if control is None:
                control = self._control_feeds[ns] = _ControlFeed(self.hub(ns))
            async with adapter.subscription(keys.control, control, sharded=self._sharded):
                yield None
        else:
            feed = self._feeds.get(ns)
            if feed is None:
                feed = self._feeds[ns] = _EventsFeed(self.hub(ns))
            async with adapter.subscription(keys.events, feed, sharded=self._sharded):
                yield None

    async def _run(
        self,
        name: str,
        ns: str,
        args: Sequence[ScriptArg],
        *,
        idempotent_flag: bool = False,
    ) -> Any:
        """Run a script with the standard keys and ``ARGV[1]`` = the clock offset.

        With ``idempotent_flag``, a last ARGV of ``"1"`` tells the script the call is
        being resent after a connection error.
        """
        argv: list[ScriptArg] = [self._clock_arg, *args]
        keys = self.keys(ns).settle() if name in _SETTLE_KEYS_ONLY else self.keys(ns).standard()
        if idempotent_flag:
            return await self.adapter.run_script(
                name, keys, lambda retrying: [*argv, "1" if retrying else "0"]
            )
        return await self.adapter.run_script(name, keys, argv)

    async def _run_cached(
        self, name: str, ns: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> Any:
        """Run a script whose resent call (after a lost reply) must report what the first
        call did: the script stores its reply under a per-call key (declared last in
        ``KEYS``) and ``ARGV`` ends with the resent flag and the cache's lifetime (ms)."""
        nonce = new_token()
        keep = self.retry_timeout + self.command_timeout + _REPLY_CACHE_MARGIN
        cache_ms = str(int(keep * 1000))
        argv: list[ScriptArg] = [self._clock_arg, *args]
        return await self.adapter.run_script(
            name,
            [*keys, self.keys(ns).reply(nonce)],
            lambda retrying: [*argv, "1" if retrying else "0", cache_ms],
        )

    # -- durable enqueue --------------------------------------------------------------

    async def _create_jobs(
        self,
        name: str,
        ns: str,
        keys: Sequence[str],
        argv: Sequence[ScriptArg],
        wrote: Callable[[Any], bool | None],
    ) -> tuple[Any, int | None]:
        """Run a script that may create jobs; with ``durable_enqueue``, followed on its
        connection by ``WAIT``. Returns the reply and the replicas that confirmed
        (``None``: not durable, or ``wrote(reply)`` is ``None``: no job concerned).

        When the call itself wrote nothing (``wrote(reply)`` false: a duplicate, or a
        call resent after a lost reply that finds its first run's job), ``WAIT`` would
        only count this connection's earlier writes: a marker is written first, so the
        confirmation covers everything the master holds, the job found included."""
        adapter = self.adapter
        if not self.durable_enqueue:
            return await adapter.run_script(name, keys, argv), None
        wanted, timeout = self.durable_enqueue, self.durable_timeout
        reply, acked = await adapter.run_script_waited(
            name, keys, argv, replicas=wanted, timeout=timeout
        )
        written = wrote(reply)
        if written is None:
            return reply, None
        if not written:
            _, acked = await adapter.command_waited(
                "SET", self.keys(ns).sync, "1", "PX", 1000, replicas=wanted, timeout=timeout
            )
        return reply, acked

    def _not_replicated(self, what: str, confirmed: int) -> NotReplicatedError:
        wanted = self.durable_enqueue
        return NotReplicatedError(
            f"{what} written on the master, but {confirmed} of {wanted} replica(s) confirmed"
            f" it within durable_timeout={self.durable_timeout:g} s: it may or may not"
            " survive a failover; enqueueing the same id again is safe (the first enqueue"
            " wins) and waits for the replicas again",
            wanted=wanted,
            confirmed=confirmed,
        )

    # -- producer transitions ---------------------------------------------------------

    async def enqueue(
        self,
        ns: str,
        job_id: str,
        payload: bytes,
        *,
        max_attempts: int,
        result_ttl: float,
        priority: int = 0,
        run_at: float | None = None,
        delay: float | None = None,
    ) -> EnqueueOutcome:
        """See :meth:`Storage.enqueue`. Calls made together (concurrent producers) share
        script calls: see :class:`_Enqueues`; with ``durable_enqueue``, one call each
        (``enqueue.lua`` followed by ``WAIT``)."""
        job = EnqueueSpec(
            job_id,
            bytes(payload),
            int(max_attempts),
            float(result_ttl),
            int(priority),
            None if run_at is None else float(run_at),
            None if delay is None else float(delay),
        )
        if not self.durable_enqueue:
            return await self._enqueue_batched(ns, job)
        reply, confirmed = await self._create_jobs(
            "enqueue",
            ns,
            self.keys(ns).standard(),
            self._enqueue_argv(job),
            lambda reply: reply[0] in (b"queued", b"scheduled"),
        )
        if confirmed is not None and confirmed < self.durable_enqueue:
            raise self._not_replicated(f"job {job_id!r}", confirmed)
        return self._enqueue_outcome(ns, job_id, reply)

    async def _enqueue_batched(self, ns: str, job: EnqueueSpec) -> EnqueueOutcome:
        """The outcome of ``job``, sent in a script call of its own or with the other
        ``enqueue()`` calls made meanwhile (see :class:`_Enqueues`)."""
        line = self._enqueues.get(ns)
        if line is None:
            line = self._enqueues[ns] = _Enqueues()
        entry = _Enqueue(job)
        line.line.append(entry)
        try:
            while entry.state != _DONE:
                if line.can_send(entry):
                    line.calls += 1
                    try:
                        while entry.state != _DONE and line.has_work(entry):
                            if line.formed:
                                batch = line.formed.popleft()
                            else:
                                batch = self._form_batch(ns, line.take())
                            line.pass_turn()  # another call may go meanwhile
                            await self._send_batch(ns, line, batch, entry)
                    finally:
                        line.calls -= 1
                        line.pass_turn()
                else:
                    entry.event = trio.Event()
                    try:
                        await entry.event.wait()
                    finally:
                        entry.event = None
        finally:
            if entry.state != _DONE:  # cancelled
                entry.abandoned = True
                if entry.state == _QUEUED:
                    line.line.remove(entry)  # never sent: never written
                line.pass_turn()
        outcome = entry.outcome
        if isinstance(outcome, StorageError):
            raise outcome
        assert outcome is not None
        return outcome

    def _enqueue_argv(self, job: EnqueueSpec) -> list[ScriptArg]:
        """ARGV of ``enqueue.lua`` for ``job``, with a new nonce."""
        return [
            self._clock_arg,
            job.job_id,
            job.payload,
            job.max_attempts,
            repr(job.result_ttl),
            new_token(),  # the call's nonce, kept in the job record
            job.priority,
            "" if job.run_at is None else repr(job.run_at),
            "" if job.delay is None else repr(job.delay),
        ]

    def _form_batch(self, ns: str, entries: list[_Enqueue]) -> _Batch:
        keys = self.keys(ns).standard()
        if len(entries) == 1:
            return _Batch(entries, "enqueue", keys, self._enqueue_argv(entries[0].job))
        # One chunk that is a call of its own: no chain key (nothing to order it after;
        # KEYS[14] is then unused, any key of the namespace's slot will do).
        argv = _chunk_args(self._clock_arg, new_token(), 1, "", [e.job for e in entries])
        return _Batch(entries, "enqueue_many", [*keys, keys[0]], argv)

    async def _send_batch(self, ns: str, line: _Enqueues, batch: _Batch, mine: _Enqueue) -> None:
        entries = batch.entries
        outcomes: list[EnqueueOutcome | StorageError] = []
        done = False
        try:
            try:
                reply = await self.adapter.run_script(batch.script, batch.keys, batch.argv)
                if batch.script == "enqueue":
                    outcomes = [self._enqueue_outcome(ns, entries[0].job.job_id, reply)]
                else:
                    outcomes = _chunk_results(ns, [e.job for e in entries], reply)
            except StorageError as exc:
                # The call failed whole (Redis unreachable for retry_timeout, a refused
                # write): so do the enqueues waiting behind it, at once, as they would
                # have as calls of their own in the same pipeline, rather than each wait
                # out retry_timeout again in turn. Those in line were never sent; those
                # of a batch to send again may have been written, as with any call whose
                # reply never came.
                behind = [e for b in line.formed for e in b.entries] + list(line.line)
                line.formed.clear()
                line.line.clear()
                entries = entries + behind
                outcomes = [exc] * len(entries)
            done = True
        finally:
            if done:
                for entry, outcome in zip(entries, outcomes, strict=True):
                    entry.state, entry.outcome = _DONE, outcome
                    if entry.event is not None:
                        entry.event.set()
            else:
                # Interrupted (this task is cancelled): sent again, as it is, first.
                mine.abandoned = True
                if not all(entry.abandoned for entry in entries):
                    line.formed.appendleft(batch)

    def _enqueue_outcome(self, ns: str, job_id: str, reply: Any) -> EnqueueOutcome:
        """The outcome of one job from its ``enqueue.lua`` reply."""
        if reply[0] == b"queued":
            return QUEUED_OUTCOME
        status = EnqueueStatus(reply[0].decode())
        if status in (EnqueueStatus.QUEUED, EnqueueStatus.SCHEDULED):
            return EnqueueOutcome(status)
        with _corrupt_record(ns, job_id):
            state = JobState(reply[1].decode())
        if status is EnqueueStatus.COMPLETED:
            return EnqueueOutcome(status, state, bytes(reply[2]))
        return EnqueueOutcome(status, state)

    async def enqueue_many(self, ns: str, jobs: Sequence[EnqueueSpec]) -> list[EnqueueOutcome]:
        """See :meth:`Storage.enqueue_many`: one script call."""
        chunks: list[list[EnqueueOutcome]] = []
        await self.enqueue_chunks(ns, [jobs], chunks.append)
        return chunks[0] if chunks else []

    async def enqueue_chunks(
        self,
        ns: str,
        chunks: Sequence[Sequence[EnqueueSpec]],
        done: Callable[[list[EnqueueOutcome]], None],
    ) -> None:
        """See :meth:`Storage.enqueue_chunks`: one ``enqueue_many.lua`` call per chunk,
        up to :data:`ENQUEUE_PIPELINE` calls in flight, so that encoding the next chunk
        overlaps Redis running the previous one.

        Each call checks the call's chain key: chunk k runs only after chunk k - 1, else
        it writes nothing and answers "wait" (it reached the server out of turn: its
        predecessor was refused, or is being sent again after ``NOSCRIPT`` or a
        reconnect). A chunk that waited is sent again once its predecessor is written;
        when the predecessor failed, it is not sent again. So the chunks written are a
        prefix, and a refused chunk (maxmemory, a read-only replica) stops the call with
        no later chunk written."""
        if not chunks:
            return
        call = new_token()  # each chunk's nonce adds its index
        keys = [*self.keys(ns).standard(), self.keys(ns).reply(call)]
        keep = self.retry_timeout + self.command_timeout + _REPLY_CACHE_MARGIN
        chain_ms = str(int(keep * 1000))
        count = len(chunks)
        sent: list[Sequence[EnqueueSpec]] = [()] * count
        replies: list[Any] = [None] * count
        unconfirmed: list[tuple[int, int]] = []  # (jobs, replicas that confirmed)

        def wrote(reply: Any) -> bool | None:
            return None if reply == b"wait" else True  # a chunk moves the chain key on

        finished = [trio.Event() for _ in range(count)]

        async def send(index: int, *, task_status: trio.TaskStatus[None]) -> None:
            # Read the chunk here, while the previous one runs (it may be built lazily).
            # An empty chunk is sent too: it only moves the chain key on.
            chunk = sent[index] = chunks[index]
            argv = _chunk_args(self._clock_arg, f"{call}.{index + 1}", index + 1, chain_ms, chunk)
            task_status.started()  # no checkpoint before the call is queued: sent in order
            try:
                reply, confirmed = await self._create_jobs("enqueue_many", ns, keys, argv, wrote)
                if reply == b"wait" and index > 0:
                    await finished[index - 1].wait()
                    if isinstance(replies[index - 1], StorageError | None):
                        return  # the predecessor failed: this chunk must not be written
                    reply, confirmed = await self._create_jobs(
                        "enqueue_many", ns, keys, argv, wrote
                    )
                if reply == b"wait":
                    raise StorageError(
                        f"enqueue_many: chunk {index + 1} of {count} found its call's "
                        "chain key gone (expired): the chunks after it were not written"
                    )
                replies[index] = reply
                if confirmed is not None and confirmed < self.durable_enqueue and chunk:
                    unconfirmed.append((len(chunk), confirmed))
            except StorageError as exc:
                replies[index] = exc
            finally:
                finished[index].set()
                window.release()

        window = trio.Semaphore(ENQUEUE_PIPELINE)
        async with trio.open_nursery() as nursery:
            for index in range(count):
                await window.acquire()
                await nursery.start(send, index)
        for chunk, reply in zip(sent, replies, strict=True):
            if isinstance(reply, StorageError):
                raise reply
            assert reply is not None  # only a chunk after a failed one has no reply
            if chunk:
                done(_chunk_outcomes(ns, chunk, reply))
        if unconfirmed:
            jobs = sum(n for n, _ in unconfirmed)
            raise self._not_replicated(
                f"every job of enqueue_many was written; {jobs} of them were",
                min(c for _, c in unconfirmed),
            )

    async def cancel(self, ns: str, job_id: str) -> CancelStatus:
        reply = await self._run_cached("cancel", ns, self.keys(ns).standard(), [job_id])
        return CancelStatus(reply.decode())

    async def get_status(self, ns: str, job_id: str) -> JobRecord | None:
        reply = await self._run("status", ns, [job_id])
        if reply is None:
            return None
        if len(reply) == 1:
            raise StorageError(f"corrupt record for job {job_id!r} in queue {ns!r}")
        with _corrupt_record(ns, job_id):
            return self._record(job_id, reply)

    @staticmethod
    def _record(job_id: str, reply: list[Any]) -> JobRecord:
        (
            state,
            created,
            attempts,
            max_attempts,
            ttl,
            result,
            error,
            finished,
            expires,
            due,
            worker,
            lease,
            priority,
            *more,
        ) = reply
        return JobRecord(
            job_id=job_id,
            state=JobState(state.decode()),
            created_at=float(created),
            attempts=int(attempts),
            max_attempts=int(max_attempts),
            result_ttl=float(ttl),
            result=None if result is None else bytes(result),
            error=None if error is None else bytes(error),
            finished_at=_opt_float(finished),
            expires_at=_opt_float(expires),
            due_at=_opt_float(due),
            worker_id=_text(worker),
            lease_until=_opt_float(lease),
            priority=int(priority),
            progress=bytes(more[0]) if more and more[0] is not None else None,
        )

    async def get_payload(self, ns: str, job_id: str) -> bytes | None:
        reply = await self._run("payload", ns, [job_id])
        if reply is None:
            return None
        if isinstance(reply, list):
            raise StorageError(f"corrupt record for job {job_id!r} in queue {ns!r}")
        return bytes(reply)

    async def update_result_ttl(self, ns: str, job_id: str, ttl: float) -> UpdateTtlStatus:
        reply = await self._run("update_ttl", ns, [job_id, repr(float(ttl))])
        return UpdateTtlStatus(reply.decode())

    # -- worker transitions -----------------------------------------------------------

    async def claim_nowait(
        self, ns: str, worker_id: str, *, limit: int, lease: float
    ) -> ClaimBatch:
        """See :meth:`Storage.claim_nowait`.

        The script call itself is shielded (bounded by ``script_timeout``), so a claim
        whose script ran always hands its jobs back; if the caller was cancelled
        meanwhile, those jobs are released at once (attempt not consumed) and
        ``Cancelled`` propagates. Connection errors are retried (the resent call redeems
        what the first one took) for ``retry_timeout``.

        Raises:
            StorageError: Redis failed, or stayed unreachable for ``retry_timeout``.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit!r}")
        retry_until = trio.current_time() + self.retry_timeout
        claims, server_now, next_due = await self._claim_once(
            ns, worker_id, limit, lease, retry_until
        )
        if isinstance(next_due, str):  # "paused"
            return ClaimBatch([], None, paused=True)
        return ClaimBatch(claims, None if next_due is None else next_due - server_now)

    async def _claim_once(
        self, ns: str, worker_id: str, limit: int, lease: float, retry_until: float
    ) -> tuple[list[Claim], float, float | str | None]:
        """One claim script call, resent (with the same nonce) after connection errors
        until ``retry_until``: a resent call whose first run took jobs gets those same
        jobs back (same tokens, same attempts) instead of taking more. If no reply ever
        arrives, the jobs it may have taken are released by the next claim."""
        keys = self.keys(ns)
        await self._release_orphans(ns)
        nonce = new_token()
        # Records of earlier claims whose replies arrived: the script deletes them.
        done = self._claims_done.pop(ns, [])
        script_keys = [*keys.standard(), keys.claim_record(nonce)]
        first_keys = [*script_keys, *(keys.claim_record(n) for n in done)]
        delay = 0.02
        resent = False
        while True:
            argv: list[ScriptArg] = [
                self._clock_arg,
                worker_id,
                int(limit),
                repr(float(lease)),
                nonce,
                "1" if resent else "0",
            ]
            reply: Any = None
            error: StorageError | None = None
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.script_timeout):
                    try:
                        reply = await self.adapter.run_script(
                            "claim", script_keys if resent else first_keys, argv, retry=False
                        )
                    except StorageError as exc:
                        error = exc
                if reply is None and error is None:
                    error = StorageError(
                        f"claim script got no reply within {self.script_timeout:g} s"
                    )
            if error is None:
                break
            resent = True  # it may have run: from now on, redeem rather than claim
            if not isinstance(error, Disconnected) or trio.current_time() >= retry_until:
                self._orphans.setdefault(ns, []).append(nonce)
                raise error
            await trio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 2, 1.0)
        claims = [
            Claim(
                job_id=reply[i].decode("utf-8"),
                payload=bytes(reply[i + 1]),
                attempt=int(reply[i + 2]),
                max_attempts=int(reply[i + 3]),
                created_at=float(reply[i + 4]),
                token=reply[i + 5].decode("ascii"),
                lease_until=float(reply[i + 6]),
                result_ttl=float(reply[i + 7]),
            )
            for i in range(2, len(reply), 8)
        ]
        if claims:
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except trio.Cancelled:
                # The caller is gone: hand the jobs back now rather than at lease expiry.
                with trio.CancelScope(shield=True), trio.move_on_after(self.script_timeout):
                    await self._release_claim(ns, nonce)
                raise
            self._claims_done.setdefault(ns, []).append(nonce)
        if reply[1] == b"paused":
            return claims, float(reply[0]), "paused"
        return claims, float(reply[0]), _opt_float(reply[1])

    async def _release_claim(self, ns: str, nonce: str) -> bool:
        """Release every job the claim ``nonce`` still holds (head of the queue, attempt
        not consumed); ``False`` if Redis could not be reached (it is tried again)."""
        keys = self.keys(ns)
        try:
            await self.adapter.run_script(
                "release_claim",
                [*keys.standard(), keys.claim_record(nonce)],
                [self._clock_arg, nonce],
                retry=False,
            )
        except StorageError as exc:
            self._orphans.setdefault(ns, []).append(nonce)
            log.warning("could not give back the jobs of an unfinished claim (%s); retrying", exc)
            return False
        return True

    async def _release_orphans(self, ns: str) -> None:
        orphans = self._orphans.pop(ns, None)
        while orphans:
            if not await self._release_claim(ns, orphans.pop()):
                self._orphans.setdefault(ns, []).extend(orphans)
                return

    async def heartbeat(
        self, ns: str, claims: Sequence[tuple[str, str]], *, lease: float
    ) -> list[bool]:
        if not claims:
            await trio.lowlevel.checkpoint()
            return []
        args: list[ScriptArg] = [repr(float(lease))]
        for job_id, token in claims:
            args += [job_id, token]
        reply = await self._run("heartbeat", ns, args)
        return [bool(x) for x in reply]

    async def complete(
        self, ns: str, job_id: str, token: str, result: bytes, *, ttl: float
    ) -> SettleStatus:
        reply = await self._run(
            "complete",
            ns,
            [job_id, token, bytes(result), repr(float(ttl))],
            idempotent_flag=True,
        )
        return SettleStatus(reply.decode())

    async def complete_many(self, ns: str, items: Sequence[Completion]) -> list[SettleStatus]:
        """See :meth:`Storage.complete_many`: one script call per :data:`COMPLETE_BATCH`
        items (each call atomic, every job fenced by its own token)."""
        statuses: list[SettleStatus] = []
        for start in range(0, len(items), COMPLETE_BATCH):
            args: list[ScriptArg] = []
            for c in items[start : start + COMPLETE_BATCH]:
                args += [c.job_id, c.token, bytes(c.result), repr(float(c.ttl))]
            reply = await self._run("complete_many", ns, args, idempotent_flag=True)
            statuses += [SettleStatus(r.decode()) for r in reply]
        if not items:
            await trio.lowlevel.checkpoint()
        return statuses

    async def fail(
        self, ns: str, job_id: str, token: str, error: bytes, *, ttl: float
    ) -> SettleStatus:
        reply = await self._run(
            "fail", ns, [job_id, token, bytes(error), repr(float(ttl))], idempotent_flag=True
        )
        return SettleStatus(reply.decode())

    async def retry(
        self, ns: str, job_id: str, token: str, error: bytes, *, delay: float
    ) -> SettleStatus:
        reply = await self._run(
            "retry", ns, [job_id, token, bytes(error), repr(float(delay))], idempotent_flag=True
        )
        return SettleStatus(reply.decode())

    async def release(self, ns: str, job_id: str, token: str) -> SettleStatus:
        reply = await self._run("release", ns, [job_id, token], idempotent_flag=True)
        return SettleStatus(reply.decode())

    # -- recovery ---------------------------------------------------------------------

    async def reap(self, ns: str, *, fence: Fence | None = None) -> ReapResult:
        """See :meth:`Storage.reap`: one bounded script call per :data:`REAP_BATCH`
        expired leases (each one atomic and fenced), repeated while the script says more
        are due, so no call blocks Redis for long whatever the backlog. If the fence
        turns stale between two batches, the jobs reaped so far are reported with
        ``fenced=True``."""
        keys = self.keys(ns)
        if fence is None:
            lock_key, fenced = keys.lock(""), ["0", "", ""]
        else:
            lock_key, fenced = keys.lock(fence.lock), ["1", fence.owner, str(fence.epoch)]
        script_keys = [*keys.standard(), lock_key]
        stalled: list[ReapedJob] = []
        while True:
            reply = await self._run_cached(
                "reap", ns, script_keys, [STALLED_ERROR, *fenced, REAP_BATCH]
            )
            if reply[0] == b"fenced":
                return ReapResult(stalled=tuple(stalled), fenced=True)
            stalled.extend(
                ReapedJob(reply[i].decode("utf-8"), int(reply[i + 1]), reply[i + 2] == b"1")
                for i in range(4, len(reply), 3)
            )
            if reply[3] != b"1":
                return ReapResult(
                    stalled=tuple(stalled), next_deadline=_opt_float(reply[1]), now=float(reply[2])
                )

    # -- operating --------------------------------------------------------------------

    async def retry_job(self, ns: str, job_id: str) -> RetryStatus:
        reply = await self._run_cached("retry_job", ns, self.keys(ns).standard(), [job_id])
        return RetryStatus(reply.decode())

    async def delete_job(self, ns: str, job_id: str) -> DeleteStatus:
        reply = await self._run_cached("delete_job", ns, self.keys(ns).standard(), [job_id])
        return DeleteStatus(reply.decode())

    async def list_jobs(
        self, ns: str, state: JobState, *, limit: int, cursor: str | None = None
    ) -> RecordPage:
        state = JobState(state)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit!r}")
        raw = b""
        if cursor is not None:
            try:
                raw = base64.urlsafe_b64decode(cursor.encode("ascii"))
            except (ValueError, UnicodeEncodeError, AttributeError):
                raw = b""
            parts = raw.split(b" ", 2)
            if len(parts) != 3 or not parts[0].isdigit():
                raise ValueError(f"not a cursor of this queue: {cursor!r}")
        reply = await self._run("list_jobs", ns, [state.value, int(limit), raw])
        records = []
        for i in range(1, len(reply), 2):
            job_id = reply[i].decode("utf-8")
            with _corrupt_record(ns, job_id):
                records.append(self._record(job_id, reply[i + 1]))
        after = bytes(reply[0])
        return RecordPage(records, base64.urlsafe_b64encode(after).decode() if after else None)

    async def retry_failed(self, ns: str, *, limit: int) -> int:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit!r}")
        reply = await self._run_cached("retry_failed", ns, self.keys(ns).standard(), [int(limit)])
        return int(reply)

    async def delete_jobs(self, ns: str, state: JobState, *, limit: int) -> int:
        """See :meth:`Storage.delete_jobs`: bounded script calls, each looking at a window
        of the state's index, until ``limit`` jobs are deleted or the index is done."""
        state = JobState(state)
        if state is JobState.PROCESSING:
            raise ValueError("processing jobs cannot be deleted")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit!r}")
        total, cursor = 0, ""
        while True:
            deleted, cursor_b = await self._run_cached(
                "delete_jobs",
                ns,
                self.keys(ns).standard(),
                [state.value, int(limit - total), cursor],
            )
            total += int(deleted)
            cursor = bytes(cursor_b).decode()
            if total >= limit or not cursor:
                return total

    async def set_paused(self, ns: str, paused: bool) -> None:
        await self._run("set_paused", ns, ["1" if paused else "0"])

    async def is_paused(self, ns: str) -> bool:
        return bool(await self.adapter.command("HEXISTS", self.keys(ns).seq, "paused"))

    # -- running-job control ----------------------------------------------------------------

    async def force_cancel(self, ns: str, job_id: str) -> CancelStatus:
        keys = self.keys(ns)
        reply = await self._run_cached(
            "force_cancel", ns, [*keys.standard(), keys.control], [job_id]
        )
        return CancelStatus(reply.decode())

    async def set_progress(self, ns: str, job_id: str, token: str, progress: bytes) -> SettleStatus:
        # Not resent-aware: a resent write after a lost reply stores the same value again.
        reply = await self.adapter.run_script(
            "progress",
            self.keys(ns).settle(),
            [self._clock_arg, job_id, token, bytes(progress)],
        )
        return SettleStatus(reply.decode())

    # -- schedules --------------------------------------------------------------------

    async def fire_schedule(
        self,
        ns: str,
        schedule_id: str,
        tick: float,
        job_id: str,
        payload: bytes,
        *,
        max_attempts: int,
        result_ttl: float,
        priority: int = 0,
        fence: Fence,
    ) -> FireStatus:
        keys = self.keys(ns)
        reply, confirmed = await self._create_jobs(
            "fire_schedule",
            ns,
            [*keys.standard(), keys.lock(fence.lock), keys.cursors],
            [
                self._clock_arg,
                schedule_id,
                repr(float(tick)),
                job_id,
                bytes(payload),
                int(max_attempts),
                repr(float(result_ttl)),
                int(priority),
                fence.owner,
                str(int(fence.epoch)),
                new_token(),
            ],
            # Only a fire that enqueued made a job to confirm (it moved the cursor too).
            lambda reply: True if reply == b"enqueued" else None,
        )
        if confirmed is not None and confirmed < self.durable_enqueue:
            raise self._not_replicated(f"the job {job_id!r} of schedule {schedule_id!r}", confirmed)
        return FireStatus(reply.decode())

    async def schedule_cursors(self, ns: str) -> dict[str, float]:
        reply = await self.adapter.command("HGETALL", self.keys(ns).cursors)
        if isinstance(reply, dict):  # RESP3-style clients answer a map
            items = list(reply.items())
        else:
            items = list(zip(reply[::2], reply[1::2], strict=True))
        return {bytes(k).decode("utf-8"): float(v) for k, v in items}

    # -- leader lock ------------------------------------------------------------------

    async def acquire_lock(
        self, ns: str, lock: str, owner: str, *, ttl: float, take_from_dead: bool = False
    ) -> int | None:
        keys = self.keys(ns)
        reply = await self.adapter.run_script(
            "acquire_lock",
            [keys.lock(lock), keys.worker_prefix],
            [self._clock_arg, owner, repr(float(ttl)), "1" if take_from_dead else "0"],
        )
        return None if reply is None else int(reply)

    async def lock_holder(self, ns: str, lock: str) -> LockHolder | None:
        reply = await self.adapter.run_script(
            "lock_holder", [self.keys(ns).lock(lock)], [self._clock_arg]
        )
        if reply is None:
            return None
        owner, epoch, expires = reply
        return LockHolder(owner.decode("utf-8"), int(epoch), float(expires))

    async def renew_lock(self, ns: str, lock: str, owner: str, epoch: int, *, ttl: float) -> bool:
        reply = await self.adapter.run_script(
            "renew_lock",
            [self.keys(ns).lock(lock)],
            [self._clock_arg, owner, str(int(epoch)), repr(float(ttl))],
        )
        return bool(reply)

    async def release_lock(self, ns: str, lock: str, owner: str, epoch: int) -> bool:
        reply = await self._run_cached(
            "release_lock", ns, [self.keys(ns).lock(lock)], [owner, str(int(epoch))]
        )
        return bool(reply)

    # -- worker registry --------------------------------------------------------------

    async def register_worker(self, ns: str, record: WorkerRecord, *, ttl: float) -> None:
        keys = self.keys(ns)
        await self.adapter.run_script(
            "register_worker",
            [keys.worker(record.worker_id), keys.workers],
            [self._clock_arg, record.worker_id, repr(float(ttl)), _encode_worker(record)],
        )

    async def unregister_worker(self, ns: str, worker_id: str) -> bool:
        keys = self.keys(ns)
        reply = await self.adapter.run_script(
            "unregister_worker",
            [keys.worker(worker_id), keys.workers],
            [self._clock_arg, worker_id],
        )
        return bool(reply)

    async def list_workers(self, ns: str) -> list[WorkerRecord]:
        keys = self.keys(ns)
        reply = await self.adapter.run_script(
            "list_workers", [keys.worker_prefix, keys.workers], [self._clock_arg]
        )
        records = []
        for i in range(0, len(reply), 4):
            worker_id = reply[i].decode("utf-8")
            try:
                record = _decode_worker(reply[i + 1], float(reply[i + 2]), float(reply[i + 3]))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("ignoring a corrupt worker registration %r: %r", worker_id, exc)
                continue
            records.append(record)
        return sorted(records, key=lambda r: (r.started_at, r.worker_id))

    # -- housekeeping -----------------------------------------------------------------

    async def stats(self, ns: str) -> StorageStats:
        queued, delayed, processing, completed, failed, scheduled = await self._run("stats", ns, [])
        return StorageStats(
            queued=int(queued),
            delayed=int(delayed),
            processing=int(processing),
            completed=int(completed),
            failed=int(failed),
            scheduled=int(scheduled),
        )

    async def purge_expired(self, ns: str) -> int:
        total = 0
        while True:
            count = int(
                await self._run_cached("purge", ns, self.keys(ns).standard(), [_PURGE_BATCH])
            )
            total += count
            if count < _PURGE_BATCH:
                return total

    async def list_namespaces(self) -> list[str]:
        keys = await self.adapter.scan_keys(namespaces_pattern(self.key_prefix))
        names = {namespace_of(self.key_prefix, key) for key in keys}
        return sorted((n for n in names if n is not None), key=lambda ns: ns.encode("utf-8"))

    # -- testing / operations ---------------------------------------------------------

    async def server_command(self, *args: ScriptArg) -> Any:
        """Run a raw Redis command on the storage's connection (for tests and tools)."""
        return await self.adapter.command(*args)
