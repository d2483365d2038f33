"""The storage contract: the :class:`Storage` ABC and the records it exchanges.

Every method that changes state is **one atomic transition** of the job lifecycle (one
Lua script, one locked file transaction, one synchronous step in memory). Payloads,
results and errors cross this boundary as ``bytes``; the queue owns (de)serialization.

Ordering rules every backend follows, so that the reference model can compare them:

* The ready list is ordered by priority (higher first), then by position: ``enqueue``
  appends to the tail of its priority; ``release`` puts the job back at the head of its
  priority; a retry with delay 0 and a stalled job go to the tail at once.
* A scheduled job (``enqueue`` with ``run_at`` in the future) and a delayed retry become
  ready at their due time. ``claim`` first moves every due job to the tail (of its
  priority), in order of (due time, UTF-8 bytes of the id), then pops from the head.
* ``reap`` handles expired leases in order of (lease deadline, UTF-8 bytes of the id).
* A record whose TTL passed is invisible (as if absent) even before any clean-up ran.

Time is read from one clock per backend (``now()``), shifted by the testing offset that
:meth:`Storage.advance_clock` adds to.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

import attrs
import trio

from .._types import (
    CancelStatus,
    DeleteStatus,
    EnqueueStatus,
    EventKind,
    JobState,
    RetryStatus,
    UpdateTtlStatus,
)

__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "Claim",
    "ClaimBatch",
    "EnqueueOutcome",
    "EnqueueSpec",
    "EventRecord",
    "Fence",
    "FireStatus",
    "JobRecord",
    "LockHolder",
    "ReapResult",
    "ReapedJob",
    "RecordPage",
    "SettleStatus",
    "Storage",
    "StorageStats",
    "WorkerRecord",
]


@attrs.frozen
class EnqueueOutcome:
    """What an atomic enqueue did."""

    status: EnqueueStatus
    existing_state: JobState | None = None
    """For ``duplicate``: the state of the job holding the id."""
    result: bytes | None = None
    """For ``completed``: the encoded cached result."""


QUEUED_OUTCOME = EnqueueOutcome(EnqueueStatus.QUEUED)
"""The outcome of an accepted enqueue (a frozen value: backends may share this one)."""

ENQUEUE_MANY_MAX = 250
"""Most jobs per :meth:`Storage.enqueue_many` call (the queue sends larger batches in
chunks of this size): one Redis script call of 250 enqueues takes about 1-1.5 ms of
server time, so it never holds the server up for long."""

MIN_PRIORITY = -1000
MAX_PRIORITY = 1000
"""The accepted priorities (inclusive); higher runs first."""


class FireStatus(enum.StrEnum):
    """What :meth:`Storage.fire_schedule` did."""

    ENQUEUED = "enqueued"
    """The schedule's cursor moved to the tick and the tick's job was enqueued."""
    DUPLICATE = "duplicate"
    """The cursor moved to the tick, but a live job held the id (nothing enqueued)."""
    PAST = "past"
    """The tick is not after the schedule's cursor: nothing written."""
    FENCED = "fenced"
    """The fence's lock is not held with its epoch: nothing written."""


@attrs.frozen
class EnqueueSpec:
    """One job of :meth:`Storage.enqueue_many` (the options of :meth:`Storage.enqueue`)."""

    job_id: str
    payload: bytes
    max_attempts: int
    result_ttl: float
    priority: int = 0
    run_at: float | None = None
    delay: float | None = None


@attrs.frozen
class Claim:
    """A job handed to one worker for one attempt."""

    job_id: str
    payload: bytes
    attempt: int
    """1-based number of this attempt (attempts already started + 1)."""
    max_attempts: int
    created_at: float
    token: str
    """Fencing token: every settlement and heartbeat must present it."""
    lease_until: float
    """Storage-clock time at which the lease expires unless renewed."""
    result_ttl: float
    """The job's TTL (seconds) for its result/error and dedup entry."""


@attrs.frozen
class Completion:
    """One item of :meth:`Storage.complete_many` (the arguments of
    :meth:`Storage.complete`)."""

    job_id: str
    token: str
    """The claim's fencing token."""
    result: bytes
    ttl: float
    """Seconds the result (and the dedup entry) is kept."""


@attrs.frozen
class JobRecord:
    """A snapshot of one stored job."""

    job_id: str
    state: JobState
    created_at: float
    attempts: int
    """Attempts started so far."""
    max_attempts: int
    result_ttl: float
    result: bytes | None = None
    error: bytes | None = None
    """The last error (JSON-encoded :class:`~trio_jobqueue.JobError`)."""
    finished_at: float | None = None
    expires_at: float | None = None
    due_at: float | None = None
    """For ``scheduled`` jobs and ``failing`` jobs waiting out a retry delay: when they
    become claimable."""
    worker_id: str | None = None
    """For ``processing`` jobs: the worker holding the lease."""
    lease_until: float | None = None
    priority: int = 0
    progress: bytes | None = None
    """The last progress written (:meth:`Storage.set_progress`), JSON bytes; kept until
    the record goes."""


@attrs.frozen
class RecordPage:
    """One page of :meth:`Storage.list_jobs`."""

    records: list[JobRecord]
    cursor: str | None = None
    """Pass it back for the next page; ``None``: this was the last one."""


@attrs.frozen
class ClaimBatch:
    """What one non-blocking claim took."""

    claims: list[Claim]
    next_due_in: float | None = None
    """When fewer than ``limit`` jobs were claimed (every ready job was taken): seconds
    until the next delayed job becomes claimable (``None`` if there is none)."""
    paused: bool = False
    """The namespace is paused (:meth:`Storage.set_paused`): nothing was claimed."""


@attrs.frozen
class EventRecord:
    """One lifecycle event as a storage emits it (bytes not yet decoded)."""

    kind: EventKind
    job_id: str
    attempt: int
    result: bytes | None = None
    error: bytes | None = None
    result_ref: bool = False
    """The job has a result that was too large to carry in the event: read it with
    ``get_status`` (it may have expired meanwhile)."""
    missed: int = 0
    """For ``missed`` markers (see ``_feed``): events lost here (0: unknown)."""


@attrs.frozen
class ReapedJob:
    job_id: str
    attempt: int
    """The attempt whose lease expired."""
    failed: bool
    """True when attempts were exhausted and the job is now ``failed``."""


@attrs.frozen
class ReapResult:
    stalled: tuple[ReapedJob, ...] = ()
    next_deadline: float | None = None
    """Earliest remaining lease deadline (storage clock), if any job is processing."""
    fenced: bool = False
    """True when the fence was stale and nothing was done."""
    now: float | None = None
    """The storage clock when the reap ran (lets callers turn ``next_deadline`` into a
    sleep). Optional for backends."""


@attrs.frozen
class Fence:
    """Proof of leadership: the holder of ``lock`` with ``epoch``."""

    lock: str
    owner: str
    epoch: int


@attrs.frozen
class WorkerRecord:
    """One live worker (or stand-alone reaper) of a namespace, as it registered itself."""

    worker_id: str
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    """Epoch seconds when the worker started."""
    concurrency: int = 0
    in_flight: int = 0
    jobs: tuple[str, ...] = ()
    """Ids of the jobs it is running."""
    kind: str = "worker"
    """``"worker"``, or ``"reaper"`` for a stand-alone reaper."""
    state: str = "running"
    """``"running"``, or ``"stopping"`` during its shutdown grace period."""
    counters: dict[str, int] = attrs.field(factory=dict, hash=False)
    """Its outcome counters since it started (``completed``, ``failed``, ...)."""
    last_seen: float = 0.0
    """Storage-clock time of its last registration (set by the storage)."""
    expires_at: float = 0.0
    """Storage-clock time after which it counts as gone (set by the storage)."""


@attrs.frozen
class LockHolder:
    """Who holds a leader lock now."""

    owner: str
    epoch: int
    expires_at: float


@attrs.frozen
class StorageStats:
    queued: int
    """Jobs ready to claim now."""
    delayed: int
    """Failing jobs waiting out a retry delay."""
    processing: int
    completed: int
    failed: int
    scheduled: int = 0
    """Jobs enqueued for a time that has not come yet."""


class SettleStatus(enum.StrEnum):
    """Result of a fenced settlement."""

    OK = "ok"
    STALE = "stale"
    """The token no longer owns the job (lease expired and reaped, or job cancelled)."""


@attrs.define(eq=False)
class Storage(abc.ABC):
    """Base class of all backends.

    Storages are reference-counted async context managers: the first ``async with`` opens
    them, the last exit closes them, so queues and reapers can share one object. Every
    ``ns`` argument is a validated queue name; every ``job_id`` a validated id.

    Errors of the underlying driver are raised as :class:`~trio_jobqueue.StorageError`
    (``from`` the driver's exception). Cancellation: a cancelled call either did nothing
    or left the job in a state that lease expiry recovers; it never loses a job.
    """

    _users: int = attrs.field(default=0, init=False)
    _open_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _clock_offset: float = attrs.field(default=0.0, init=False)
    _hubs: dict[str, _core.Hub] = attrs.field(factory=dict, init=False)

    # -- lifetime ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        async with self._open_lock:
            if self._users == 0:
                await self._open()
            self._users += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            async with self._open_lock:
                self._users -= 1
                if self._users == 0:
                    await self._close()

    @property
    def is_open(self) -> bool:
        return self._users > 0

    async def _open(self) -> None:
        """Acquire resources (connections, loops, watchers). Called by the first user."""

    async def _close(self) -> None:
        """Release resources. Called by the last user; runs shielded."""

    # -- time -------------------------------------------------------------------------

    async def advance_clock(self, seconds: float) -> None:
        """Testing hook: make this storage's clock ``seconds`` later from now on.

        Leases, delays and TTLs all follow the shifted clock; expired records become
        invisible at once. Used by :mod:`trio_jobqueue.testing` on backends whose clock
        cannot be mocked.
        """
        self._clock_offset += seconds
        for hub in self._hubs.values():
            # Due times came closer: blocked claims (and the next claim, which would
            # sleep until a due time on the old clock) look again.
            hub.idle = None
            hub.wake()

    # -- producer transitions ---------------------------------------------------------

    @abc.abstractmethod
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
        """Atomically accept ``job_id`` unless a live record holds it (dedup).

        A new job becomes ``queued`` at the tail of its ``priority`` with ``attempts=0``
        (status ``queued``), or ``scheduled`` until its due time when that is after the
        storage's now (status ``scheduled``; it then becomes ready like a due delayed
        retry), and emits ``enqueued``. The due time is ``run_at`` (storage-clock epoch
        seconds) or, with ``delay`` (seconds), the storage's now plus ``delay``; at most
        one of the two is given. Otherwise nothing changes: ``completed`` with its
        result (``completed`` status) or ``duplicate`` with ``existing_state``.
        ``priority`` is within ``MIN_PRIORITY..MAX_PRIORITY`` (the queue validates it).
        """

    @abc.abstractmethod
    async def enqueue_many(self, ns: str, jobs: Sequence[EnqueueSpec]) -> list[EnqueueOutcome]:
        """:meth:`enqueue` of every job, in order, in one atomic step: what one enqueue
        of the list would answer, each in turn (a second occurrence of an id in the list
        is a ``duplicate`` of the first). Callers send at most :data:`ENQUEUE_MANY_MAX`
        jobs per call."""

    async def enqueue_chunks(
        self,
        ns: str,
        chunks: Sequence[Sequence[EnqueueSpec]],
        done: Callable[[list[EnqueueOutcome]], None],
    ) -> None:
        """:meth:`enqueue_many` of each chunk in turn, calling ``done`` with the outcomes
        of each chunk written, in order (empty chunks are skipped). A backend may overlap
        the calls (Redis pipelines them) but must keep their order: the chunks written
        are always a prefix of ``chunks`` (those ``done`` was called for, plus perhaps
        the one that failed, when its outcome is unknown), never a later chunk without
        an earlier one. This default calls :meth:`enqueue_many` once per chunk.

        Raises:
            StorageError: as :meth:`enqueue_many`, for the first chunk that failed.
        """
        for chunk in chunks:
            if chunk:
                done(await self.enqueue_many(ns, chunk))

    @abc.abstractmethod
    async def cancel(self, ns: str, job_id: str) -> CancelStatus:
        """Remove a ``scheduled``, ``queued`` or ``failing`` job (record and message);
        emits ``cancelled``.

        ``processing`` and ``completed`` are reported, not changed; a ``failed`` job or a
        missing id gives ``not_found``.
        """

    @abc.abstractmethod
    async def get_status(self, ns: str, job_id: str) -> JobRecord | None:
        """The job's record, or ``None`` when absent or expired."""

    @abc.abstractmethod
    async def get_payload(self, ns: str, job_id: str) -> bytes | None:
        """The job's payload as enqueued, or ``None`` when the job is absent or expired."""

    @abc.abstractmethod
    async def update_result_ttl(self, ns: str, job_id: str, ttl: float) -> UpdateTtlStatus:
        """Restart a terminal job's TTL from now with ``ttl`` seconds."""

    # -- worker transitions -----------------------------------------------------------

    async def claim(
        self, ns: str, worker_id: str, *, limit: int, lease: float, wait: float = 0.0
    ) -> list[Claim]:
        """Claim up to ``limit`` ready jobs in FIFO order, waiting up to ``wait`` seconds
        for one if none is ready (an enqueue ends the wait within milliseconds); ``[]``
        on timeout. Built on :meth:`claim_nowait` and the hub (see :mod:`._core`).

        Cancellation: a cancelled claim takes nothing (or releases what it took).
        """
        return await _core.blocking_claim(self, ns, worker_id, limit=limit, lease=lease, wait=wait)

    @abc.abstractmethod
    async def claim_nowait(
        self, ns: str, worker_id: str, *, limit: int, lease: float
    ) -> ClaimBatch:
        """Claim up to ``limit`` ready jobs in FIFO order, without waiting.

        Each becomes ``processing`` with ``attempts += 1``, a fresh token and a lease
        until ``now + lease``, and emits ``started``. A paused namespace hands out
        nothing (``paused=True``). Due delayed jobs are promoted first.
        When fewer than ``limit`` are claimed, ``next_due_in`` says when the next
        delayed job is due.
        ``limit >= 1``. A call cancelled after the storage took jobs must give them back
        (released, attempt not consumed) before it raises ``Cancelled``.
        """

    async def claim_after_wait(
        self, ns: str, worker_id: str, *, limit: int, lease: float
    ) -> ClaimBatch:
        """:meth:`claim_nowait`, called by a blocking claim right after it waited (its
        checkpoint): a backend whose claim is one synchronous step may skip the
        checkpoint of its own, so that a due job starts one scheduling round sooner.
        Same contract otherwise."""
        return await self.claim_nowait(ns, worker_id, limit=limit, lease=lease)

    @abc.abstractmethod
    async def heartbeat(
        self, ns: str, claims: Sequence[tuple[str, str]], *, lease: float
    ) -> list[bool]:
        """Extend the leases of ``(job_id, token)`` pairs to ``now + lease``.

        Returns, per pair, whether the token still owns the job.
        """

    @abc.abstractmethod
    async def complete(
        self, ns: str, job_id: str, token: str, result: bytes, *, ttl: float
    ) -> SettleStatus:
        """``processing`` -> ``completed`` with ``result`` kept for ``ttl`` seconds.

        Fenced: does nothing and returns ``stale`` unless ``token`` owns the job.
        Emits ``completed`` and wakes watchers of the job.
        """

    async def complete_many(self, ns: str, items: Sequence[Completion]) -> list[SettleStatus]:
        """:meth:`complete` for each of ``items``, in order; returns each one's status.

        Each completion is fenced by its own token, exactly as :meth:`complete`: a stale
        one changes nothing and reports ``stale`` while the others go through. A
        backend may do them all in one atomic step (one round trip); the default calls
        :meth:`complete` once per item. Used by workers to store the outcomes that are
        ready together.
        """
        return [await self.complete(ns, c.job_id, c.token, c.result, ttl=c.ttl) for c in items]

    @abc.abstractmethod
    async def fail(
        self, ns: str, job_id: str, token: str, error: bytes, *, ttl: float
    ) -> SettleStatus:
        """``processing`` -> ``failed`` (final), ``error`` kept for ``ttl``. Fenced.

        Emits ``failed`` and wakes watchers of the job.
        """

    @abc.abstractmethod
    async def retry(
        self, ns: str, job_id: str, token: str, error: bytes, *, delay: float
    ) -> SettleStatus:
        """``processing`` -> ``failing``, claimable after ``delay`` seconds (0: at once,
        at the tail). The attempt stays consumed; ``error`` is kept as the last error.
        Fenced. Emits ``failing``.
        """

    @abc.abstractmethod
    async def release(self, ns: str, job_id: str, token: str) -> SettleStatus:
        """``processing`` -> ``queued`` at the head, **un-consuming** the attempt
        (``attempts -= 1``). Used by graceful shutdown. Fenced. Emits ``requeued``.
        """

    # -- recovery ---------------------------------------------------------------------

    @abc.abstractmethod
    async def reap(self, ns: str, *, fence: Fence | None = None) -> ReapResult:
        """Recover every job whose lease expired, in one atomic step.

        The attempt stays consumed: the job becomes ``failing`` (ready at the tail at once)
        or, when ``attempts >= max_attempts``, ``failed`` with a ``Stalled`` error kept
        for the job's TTL. Emits ``stalled`` for each (and ``failed`` for exhausted ones).
        With ``fence``, does nothing (``fenced=True``) unless the fence's lock is held by
        its owner with its epoch.
        """

    # -- operating ------------------------------------------------------------------------

    @abc.abstractmethod
    async def retry_job(self, ns: str, job_id: str) -> RetryStatus:
        """Put a ``failed`` job back: ``queued`` at the tail of its priority with
        ``attempts = 0`` (the same ``max_attempts``), no expiry, its last error kept until
        it runs; emits ``enqueued``. ``not_failed`` (nothing changed) for a job in any
        other state, ``not_found`` for an unknown or expired id."""

    @abc.abstractmethod
    async def delete_job(self, ns: str, job_id: str) -> DeleteStatus:
        """Remove a job in any state but ``processing`` (``processing``: nothing changed),
        with its payload, result and error; the id is free. Emits ``cancelled`` when the
        job had not finished (scheduled, queued, failing), nothing for a terminal one."""

    @abc.abstractmethod
    async def list_jobs(
        self, ns: str, state: JobState, *, limit: int, cursor: str | None = None
    ) -> RecordPage:
        """Up to ``limit`` (>= 1) live jobs in ``state``, after ``cursor`` (from the
        previous page), in the state's order: ``scheduled`` by due time; ``queued`` in
        claim order; ``failing``: those ready to run in claim order, then the delayed ones
        by due time; ``processing`` by lease deadline; ``completed`` and ``failed`` the
        latest to expire first (newest first, for jobs of one TTL). Ties by the id's
        UTF-8 bytes (reversed for the latest-first states). O(log n + limit) per page.
        A page may hold fewer than ``limit`` jobs while more follow (follow the cursor
        until it is ``None``); a job that changes state between pages may be missed or
        seen twice. ``ValueError`` for a cursor this storage did not make."""

    @abc.abstractmethod
    async def retry_failed(self, ns: str, *, limit: int) -> int:
        """:meth:`retry_job` for up to ``limit`` (>= 1) ``failed`` jobs, in one atomic
        step; returns how many. Callers repeat while the answer equals ``limit``."""

    @abc.abstractmethod
    async def delete_jobs(self, ns: str, state: JobState, *, limit: int) -> int:
        """:meth:`delete_job` for up to ``limit`` (>= 1) jobs in ``state`` (never
        ``processing``: ``ValueError``), in one atomic step; returns how many."""

    @abc.abstractmethod
    async def set_paused(self, ns: str, paused: bool) -> None:
        """Pause (claims take nothing and say ``paused``; enqueues go on) or resume the
        namespace, for every process; stored, so it outlives every worker. Resuming wakes
        blocked claims, or they notice within :data:`~._core.PAUSED_REPOLL` seconds."""

    @abc.abstractmethod
    async def is_paused(self, ns: str) -> bool:
        """Whether the namespace is paused."""

    # -- running-job control ----------------------------------------------------------------

    @abc.abstractmethod
    async def force_cancel(self, ns: str, job_id: str) -> CancelStatus:
        """:meth:`cancel`, and a ``processing`` job is removed too (status ``cancelling``):
        its record goes in the same atomic step, so its token owns nothing from then on
        (heartbeats answer ``False``, settlements and progress writes ``stale``) and the
        id is free. Emits ``cancelled`` (attempt: the running one), which wakes the job's
        watches and reaches the lease holder's ``control`` feed (see :meth:`follow`)."""

    @abc.abstractmethod
    async def set_progress(self, ns: str, job_id: str, token: str, progress: bytes) -> SettleStatus:
        """Store ``progress`` (JSON bytes, at most 4 KiB: the queue validates it) on a
        ``processing`` job and emit ``progress`` (the bytes in ``EventRecord.result``).
        Fenced like a settlement: ``stale`` and nothing written unless ``token`` owns the
        job. The lease is not extended; the value stays on the record (also after the
        job finished) until it is removed."""

    # -- schedules ------------------------------------------------------------------------

    @abc.abstractmethod
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
        """Enqueue the job of one tick of a schedule, at most once per tick, atomically.

        Unless the fence holds (as for :meth:`reap`): ``fenced``, nothing written. Unless
        ``tick`` is after the schedule's cursor (the last tick fired): ``past``, nothing
        written. Otherwise the cursor becomes ``tick`` and ``job_id`` is enqueued as
        :meth:`enqueue` would (ready at once): ``enqueued``, or ``duplicate`` when a live
        job holds the id. Cursors never expire.
        """

    @abc.abstractmethod
    async def schedule_cursors(self, ns: str) -> dict[str, float]:
        """Every schedule id of ``ns`` that fired, with its last tick."""

    # -- leader lock ------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire_lock(
        self, ns: str, lock: str, owner: str, *, ttl: float, take_from_dead: bool = False
    ) -> int | None:
        """Take the lock if free or expired (new epoch = previous epoch + 1), or renew it if
        ``owner`` already holds it (same epoch). Returns the epoch, or ``None`` if held by
        someone else. Epochs of one lock only ever grow.

        With ``take_from_dead``, a lock held by an owner that has no live registration
        (:meth:`register_worker`) in ``ns`` counts as expired: a dead holder is replaced
        as soon as its registration runs out, without waiting for the lock's own expiry.
        """

    @abc.abstractmethod
    async def lock_holder(self, ns: str, lock: str) -> LockHolder | None:
        """The live holder of ``lock``, or ``None``. Read-only."""

    @abc.abstractmethod
    async def renew_lock(self, ns: str, lock: str, owner: str, epoch: int, *, ttl: float) -> bool:
        """Extend the lock if ``owner`` holds it with ``epoch`` (and it has not expired)."""

    @abc.abstractmethod
    async def release_lock(self, ns: str, lock: str, owner: str, epoch: int) -> bool:
        """Free the lock if ``owner`` holds it with ``epoch``."""

    # -- worker registry --------------------------------------------------------------

    @abc.abstractmethod
    async def register_worker(self, ns: str, record: WorkerRecord, *, ttl: float) -> None:
        """Insert or refresh ``record`` (keyed by ``worker_id``): it is live until ``now +
        ttl`` unless registered again. The storage sets ``last_seen`` and
        ``expires_at``. Each registration expires on its own (never one TTL for all)."""

    @abc.abstractmethod
    async def unregister_worker(self, ns: str, worker_id: str) -> bool:
        """Remove a registration at once; whether there was a live one."""

    @abc.abstractmethod
    async def list_workers(self, ns: str) -> list[WorkerRecord]:
        """The live registrations, oldest ``started_at`` first (then by id). Read-only for
        the live ones; expired ones are invisible (and may be removed)."""

    # -- notification -----------------------------------------------------------------

    def subscribe_events(
        self, ns: str
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[EventRecord]]:
        """Receive the namespace's events from the moment the context is entered (from
        every process, where the backend can).

        A subscriber that falls behind, or a backend that may have lost events, gets a
        ``missed`` marker in place of what was lost; events are never dropped silently
        and the backend never blocks on a subscriber (see :mod:`._core`).
        """
        return _core.subscribe(self, ns)

    def watch_job(self, ns: str, job_id: str) -> AbstractAsyncContextManager[_core.JobWatch]:
        """Watch one job's terminal/cancel transitions from the moment the context is
        entered. Several watchers of one id are independent: closing one never silences
        another. ``JobWatch.wait`` returns ``None`` when events may have been missed."""
        return _core.watch(self, ns, job_id)

    # -- what the core needs from a backend -------------------------------------------

    @property
    def repoll_interval(self) -> float:
        """Longest a blocked claim trusts the hub's wake-ups before it asks again (a
        safety net for backends whose wake-ups may be lost; infinite where they cannot
        be)."""
        return math.inf

    @property
    def batches_calls(self) -> bool:
        """Whether a call costs a round trip (Redis). Workers then claim a few jobs
        ahead of their free slots, and in slices, so that the next jobs are at hand
        while the running ones finish; on an in-process storage (Memory, File) that
        would only add work, so they claim what their free slots can start. (On every
        backend, workers store the completions that are ready together in one
        :meth:`complete_many` call.) False unless the backend says so."""
        return False

    @property
    def keeps_idle_wakeups(self) -> bool:
        """Whether a wake-up sent while no claim is blocked still ends the wait of a
        ticket taken earlier (the wake-up waits for the next blocked claim). Then a
        claim that took every ready job lets the next blocking claim of the namespace
        sleep until the next due time it returned, without asking first (see
        :func:`._core.blocking_claim`). False unless the backend says so."""
        return False

    def hub(self, ns: str) -> _core.Hub:
        """The namespace's local fan-out, which the backend feeds (see :mod:`._core`)."""
        hub = self._hubs.get(ns)
        if hub is None:
            hub = self._hubs[ns] = _core.Hub()
        return hub

    def follow(
        self, ns: str, kind: _core.FollowKind, job_id: str | None = None
    ) -> AbstractAsyncContextManager[Any]:
        """While open, the backend feeds :meth:`hub` with ``kind`` notifications of
        ``ns`` (``job``: those of ``job_id``; ``control``: at least the ``cancelled``
        events of :meth:`force_cancel` of ``processing`` jobs, for the workers holding
        them, through :meth:`~._core.Hub.control`). Yields the feed position from which
        they are delivered (``None`` for backends without positions).

        The default suits backends that deliver everything as it happens (Memory).
        Raises ``StorageError`` when the feed cannot be started.
        """
        return _NO_FEED

    # -- housekeeping -----------------------------------------------------------------

    @abc.abstractmethod
    async def stats(self, ns: str) -> StorageStats:
        """Counts of live jobs per state. Read-only: a delayed retry whose time has come
        counts as ``queued`` but is not moved (only ``claim`` moves it), so calling
        ``stats`` never changes the claim order."""

    async def purge_expired(self, ns: str) -> int:
        """Physically remove expired records; returns how many. Optional (default: 0)."""
        return 0

    @abc.abstractmethod
    async def list_namespaces(self) -> list[str]:
        """The names of the namespaces (queues) that hold data, sorted by their UTF-8 bytes.

        Every namespace holding a job in any state, a worker registration, a leader lock,
        a schedule cursor or the paused flag is listed. A namespace whose data has all
        expired, or that was only read, may be listed too (until the backend forgets it).
        Read-only, and derived from what the backend stores anyway: keeping it costs
        nothing on the write path. Its cost grows with the size of the storage (a Redis
        ``SCAN`` of every master's keys, a directory listing), so callers cache it.

        Raises:
            StorageError: the storage failed.
        """


class _NoFeed:
    """:meth:`Storage.follow` of a backend that delivers everything as it happens: a
    checkpoint, nothing to open (one shared, stateless instance)."""

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint()

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_FEED = _NoFeed()


# The core is built on the records above and is what the concrete methods delegate to.
from . import _core  # noqa: E402
