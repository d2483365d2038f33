"""The worker: claim -> run the handler in a cancel scope -> settle (complete/retry/fail).

One child task per job, bounded by the queue's concurrency. Every job task is shielded
from outside cancellation: only the worker's own shutdown cancels a handler, and then the
job is released (returned to the queue without consuming the attempt). A settlement that
cannot reach the storage is retried while the job's lease lasts (the heartbeat keeps
renewing it); one that never gets through leaves the job ``processing`` under a lease that
the reaper recovers.

Whatever a handler raises is that attempt's outcome, decided here and nowhere else:

* an exception (any ``BaseException`` subclass that is not control flow, even one whose
  ``str()`` raises) fails the attempt, with a best-effort :class:`JobError`;
* an exception group is split: its ``trio.Cancelled`` part is control flow (the job's own
  cancel scope: ``job_timeout`` or shutdown), the rest is the attempt's failure;
* ``KeyboardInterrupt``/``SystemExit`` stop the worker: every job is released (attempt not
  consumed) and the exception leaves :meth:`Worker.run` as itself, unwrapped.

The worker's tasks (and the handlers they call) are protected from Ctrl-C
(``trio.lowlevel.enable_ki_protection``): a ``KeyboardInterrupt`` from the terminal is
delivered to the program's main task, never in the middle of the worker's bookkeeping,
so it leads to the graceful shutdown. Only a handler that *raises* it stops the worker
as above.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ._errors import JobTimeoutError, PayloadDecodeError, SerializationError, StorageError
from ._instrument import TRACE_MARK, MetricsHook, TracingHook, split_trace
from ._presence import Presence, host_and_pid
from ._progress import ProgressReporter
from ._retry import RetryPolicy
from ._serde import TypedCodec, describe_exception, encode_error, error_from_exception
from ._types import ExecutionContext, Job, JobError
from ._validate import check_ttl
from .storage import Claim, Completion, EventRecord, SettleStatus, Storage, WorkerRecord
from .storage._core import listen_control

log = logging.getLogger("trio_jobqueue")

Handler = Callable[[Job[Any]], Any]
AfterExecution = Callable[[ExecutionContext], Any]

SETTLE_TIMEOUT = 30.0
"""A settlement that fails keeps retrying while the job's lease lasts, and at least this
long, before it leaves the job to the reaper."""
CLAIM_WAIT = 5.0
"""Server-side wait of one blocking claim; the claim loop simply calls again."""
MAX_CLAIM_BATCH = 100
"""Most jobs one claim takes."""
CLAIM_SLICE = 32
"""Most jobs one claim takes where a claim is a round trip (see
:attr:`Storage.batches_calls`): a worker with many free slots sends the next claim as
soon as one returns, so the server prepares the next jobs while the worker runs the
previous ones, instead of the two taking turns over one large batch."""
MAX_LISTED_JOBS = 256
"""Most job ids a worker lists in its registration (``in_flight`` is always exact)."""
STUCK_WARNING = 10.0
"""After the grace period, how often shutdown logs the handlers it still waits for (sync
handlers run in threads, which cannot be interrupted)."""

_FATAL = (KeyboardInterrupt, SystemExit)


PREFETCH_MAX = 32
"""Most jobs a worker claims ahead of its free handler slots, so that the next jobs are
at hand when running ones finish: ``min(concurrency, PREFETCH_MAX)``, or more (up to
``PREFETCH_MAX``) while recent jobs were so short that its slots get through them all
within :data:`PREFETCH_HORIZON`."""
PREFETCH_HORIZON = 0.025
"""Longest a job claimed ahead beyond the worker's concurrency should wait for a slot,
judging by the recent run times (a quarter of :data:`PREFETCH_WAIT`)."""
PREFETCH_RUN = 0.05
"""Jobs are claimed ahead only while the recent ones ran shorter than this on average
(seconds): a job claimed ahead then waits about one such run."""
PREFETCH_WAIT = 2 * PREFETCH_RUN
"""A job claimed ahead that found no free handler slot within this many seconds (the
running jobs turned out long) goes back to the head of the queue, for an idle worker,
and the worker stops claiming ahead for a while (1 s, doubling while it recurs, at most
60 s)."""


class _Capacity:
    """How many jobs the worker holds and runs.

    *Held* jobs were claimed and are not settled yet; *running* ones have a handler
    slot (``concurrency`` of them). While recent jobs were short the worker holds up to
    ``margin`` more jobs than it has slots (claimed ahead, each waiting for a slot, its
    lease renewed by the heartbeat like any held job); otherwise it holds at most one
    per slot. A handler slot is given back when the handler returns, before the outcome
    is stored, so a waiting job starts while the previous outcome is on its way.

    The claim loop takes the whole claimable amount in one step (a semaphore would take
    one call per slot), and while jobs wait for slots it waits until a batch is
    claimable rather than claim one job per freed slot.
    """

    def __init__(self, concurrency: int, *, ahead: bool = True) -> None:
        self.concurrency = concurrency
        self.margin = min(concurrency, PREFETCH_MAX) if ahead else 0
        """Jobs claimed ahead at most, or up to ``PREFETCH_MAX`` while the slots get
        through that many within :data:`PREFETCH_HORIZON` (see :meth:`claimable`); 0:
        the storage's claims cost no round trip."""
        self.slice = CLAIM_SLICE if ahead else MAX_CLAIM_BATCH
        """Most jobs one claim takes."""
        self.held = 0
        self.slots = concurrency
        """Free handler slots."""
        self.average_run = math.inf
        """Moving average of recent handler run times (seconds); unknown at first."""
        self._ahead_after = -math.inf
        """No claiming ahead before this time (a job claimed ahead had to go back)."""
        self._pause = 1.0
        self._queue: deque[_Running] = deque()
        """Held jobs waiting for a handler slot, in claim order."""
        self._claim_lot = trio.lowlevel.ParkingLot()

    @property
    def waiting(self) -> int:
        """Held jobs waiting for a handler slot."""
        return len(self._queue)

    def claimable(self) -> int:
        """How many jobs the claim loop may claim now (0: wait)."""
        margin = 0
        average = self.average_run
        if average < PREFETCH_RUN and trio.current_time() >= self._ahead_after:
            margin = self.margin
            if 0 < margin < PREFETCH_MAX:
                # A few slots, short jobs: as many ahead as they run within the horizon.
                fit = self.concurrency * PREFETCH_HORIZON / average if average > 0 else math.inf
                margin = max(margin, int(min(PREFETCH_MAX, fit)))
        free = self.concurrency + margin - self.held
        if free <= 0 or (self._queue and free < max(1, margin // 2)):
            return 0
        return free

    async def wait(self) -> None:
        """Until :meth:`claimable` is positive; not a checkpoint when it is (the claim
        loop checkpoints right after)."""
        while not self.claimable():
            await self._claim_lot.park()

    async def none_waiting(self) -> None:
        """Until no claimed job waits for a handler slot (a checkpoint)."""
        await trio.lowlevel.checkpoint()
        while self._queue:
            await self._claim_lot.park()

    def take(self, most: int) -> int:
        """Hold every claimable job, at most ``most`` (perhaps none)."""
        taken = min(self.claimable(), most)
        self.held += taken
        return taken

    def give(self, count: int = 1) -> None:
        """``count`` held jobs were settled (or never claimed)."""
        if count:
            self.held -= count
            if self._claim_lot:  # most often no one waits: skip the call
                self._claim_lot.unpark_all()

    def enlist(self, running: _Running) -> None:
        """A claimed job queues for a handler slot; slots go out in claim order (tasks
        started together run in no particular order)."""
        self._queue.append(running)
        self._grant()

    def _grant(self) -> None:
        while self.slots and self._queue:
            running = self._queue.popleft()
            self.slots -= 1
            running.granted = True
            if running.slot_ready is not None:
                running.slot_ready.set()
        if not self._queue and self._claim_lot:
            self._claim_lot.unpark_all()

    def start_nowait(self, running: _Running) -> bool:
        """Whether ``running`` has its handler slot now (then it takes it, and
        :meth:`start` need not be called)."""
        if running.granted:
            running.granted = False  # the slot is in use: finish() gives it back
            return True
        return False

    async def start(self, running: _Running) -> bool:
        """Until ``running`` has its handler slot (``True``; not a checkpoint when it has
        one at once), or ``False`` when none came within :data:`PREFETCH_WAIT`: then the
        job is to go back to the queue. On cancellation it gives up its place (or the
        slot it just got)."""
        if not running.granted:
            running.slot_ready = trio.Event()
            got = False
            try:
                with trio.move_on_after(PREFETCH_WAIT):
                    await running.slot_ready.wait()
                got = running.granted
            finally:
                if not got:
                    self.withdraw(running)
            if not got:
                now = trio.current_time()
                if now >= self._ahead_after:
                    self._ahead_after = now + self._pause
                    self._pause = min(self._pause * 2, 60.0)
                return False
            self._pause = 1.0  # claiming ahead paid off
        running.granted = False  # the slot is in use: finish() gives it back
        return True

    def withdraw(self, running: _Running) -> None:
        """``running`` will not start (released or revoked first)."""
        if running.granted:
            running.granted = False
            self.slots += 1
            self._grant()
        elif running in self._queue:
            self._queue.remove(running)
            self._claim_lot.unpark_all()

    def finish(self, ran: float) -> None:
        """Give back a handler slot taken by :meth:`start`; the handler ran ``ran`` s
        (not measured, and not averaged, without a margin: only claiming ahead reads
        the average)."""
        self.slots += 1
        self._grant()
        if not self.margin:
            return
        if self.average_run == math.inf:
            self.average_run = ran
        else:
            self.average_run += (ran - self.average_run) / 16


COMPLETE_CALLS = 4
"""Most ``complete_many`` calls a worker has in flight at once: outcomes that become
ready while all of them are under way wait and go together in the next one."""


class _Completer:
    """Outcomes that are ready together go to the storage in one
    :meth:`Storage.complete_many` call (each still fenced by its own token).

    A job task hands its completion over and ends; whoever sends the call stores the
    statuses and finishes each job's bookkeeping (:meth:`Worker._finish`). No timer and
    no task of its own: a completion handed over while fewer than
    :data:`COMPLETE_CALLS` calls are in flight is sent by its own task (after one
    scheduling round, in which the other jobs of the same claim finish too, unless it is
    alone), which then also sends whatever queued up meanwhile; one handed over while all
    are under way queues up for the next call that returns. A job whose call failed
    goes on retrying in a task of its own (:meth:`Worker._retry_complete`).
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._queued: list[tuple[_Running, Completion, float]] = []
        self._calls = 0
        """Calls in flight (or about to be sent)."""

    async def hand_over(
        self, running: _Running, item: Completion, duration: float, *, alone: bool
    ) -> None:
        """Store ``item`` (the completion of ``running``, whose handler ran ``duration``
        s) now or soon; its job is finished once the outcome is stored. ``alone``: no
        other job could join it now (the worker holds no other), so it is sent without
        waiting a scheduling round.

        Raises only what interrupted the call this task sent (a cancellation, a bug):
        then ``running`` is left to the caller, every other job of the call retries.
        """
        self._queued.append((running, item, duration))
        if self._calls >= COMPLETE_CALLS:
            return  # a call under way sends it when it returns
        self._calls += 1
        try:
            if not alone:
                await trio.lowlevel.checkpoint()
            while self._queued:
                batch, self._queued = self._queued, []
                await self._store(batch, running)
        finally:
            self._calls -= 1

    async def _store(self, batch: list[tuple[_Running, Completion, float]], mine: _Running) -> None:
        worker = self._worker
        statuses: list[SettleStatus] = []
        error: StorageError | None = None
        done = False
        try:
            try:
                statuses = await worker.storage.complete_many(worker.ns, [e[1] for e in batch])
                if len(statuses) != len(batch):
                    raise StorageError(
                        f"complete_many returned {len(statuses)} statuses for {len(batch)} jobs"
                    )
            except StorageError as exc:
                error = exc
            done = True
        finally:
            if not done:
                # Interrupted (a cancellation, a bug): every job of the call retries, but
                # the sender's own, which its task settles as it unwinds.
                error = StorageError("storing the outcomes was interrupted")
                batch = [e for e in batch if e[0] is not mine]
            for i, (running, item, duration) in enumerate(batch):
                if error is None:
                    worker._completed(running, statuses[i], duration)
                else:
                    worker._retry_later(running, item, duration, error)


@attrs.define(eq=False)
class _Outcome:
    """What one run of a handler came to (never changed once made; not ``frozen``,
    whose ``__init__`` costs a call per field, on every job)."""

    ok: bool
    value: Any = None
    """The result (``ok``) or the exception that failed the attempt."""
    context: BaseException | None = None
    """The group ``value`` was split from, for the traceback."""
    fatal: BaseException | None = None
    """A ``KeyboardInterrupt``/``SystemExit`` the handler raised: the worker stops."""


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def outcome_of(exc: BaseException) -> _Outcome | None:
    """Classify what a handler raised; ``None`` means "only cancellation": re-raise it."""
    if not isinstance(exc, BaseExceptionGroup):
        if isinstance(exc, trio.Cancelled):
            return None
        if isinstance(exc, _FATAL):
            return _Outcome(ok=False, fatal=exc)
        return _Outcome(ok=False, value=exc)
    fatal, rest = exc.split(_FATAL)
    if fatal is not None:
        return _Outcome(ok=False, fatal=_leaves(fatal)[0])
    failure = rest.split(trio.Cancelled)[1] if rest is not None else None
    if failure is None:
        return None
    leaves = _leaves(failure)
    # One real error is reported as itself (with the whole group's traceback).
    return _Outcome(ok=False, value=leaves[0] if len(leaves) == 1 else failure, context=exc)


def is_async_callable(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


@attrs.define
class WorkerStatistics:
    """Counters of one worker since it started (see ``Queue.statistics()``)."""

    in_flight: int = 0
    claimed: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    fenced: int = 0
    """Outcomes rejected because the lease had been taken over (late, stale workers)."""
    lost_leases: int = 0
    force_cancelled: int = 0
    """Running jobs cancelled with ``cancel(id, force=True)``: handler cancelled, outcome
    discarded."""


@attrs.define(eq=False)
class _Running:
    claim: Claim
    scope: trio.CancelScope
    lease_deadline: float
    """When the lease runs out unless renewed (trio clock, conservative)."""
    lease_lost: bool = False
    released: bool = False
    """Set when shutdown cancels the handler: the job goes back to the queue."""
    settling: bool = False
    """The outcome is being stored: a heartbeat that finds the job gone is not a loss."""
    revoked: bool = False
    """The job was force-cancelled: the handler is cancelled and its outcome discarded."""
    started: bool = False
    """The handler got its slot (a job claimed ahead waits for one)."""
    granted: bool = False
    """A handler slot was given to this job and it has not taken it yet."""
    slot_ready: trio.Event | None = None
    """Set when the slot is granted (made when the job has to wait)."""
    progress: ProgressReporter | None = None
    """Made on the handler's first ``report_progress`` (most jobs never report)."""
    nursery: trio.Nursery | None = None
    finished: bool = False
    """The attempt is over and the worker no longer holds the job (:meth:`Worker._finish`)."""

    def release(self) -> None:
        self.released = True
        self.scope.cancel()


@attrs.define(eq=False, kw_only=True)
class Worker:
    storage: Storage
    ns: str
    handler: Handler
    worker_id: str
    concurrency: int
    visibility_timeout: float
    job_timeout: float | None
    retry_policy: RetryPolicy
    after_execution: AfterExecution | None
    payload_codec: TypedCodec
    result_codec: TypedCodec
    stats: WorkerStatistics = attrs.field(factory=WorkerStatistics)
    metrics: MetricsHook | None = None
    """Told of every settled attempt (``trio_jobqueue.metrics``)."""
    tracing: TracingHook | None = None
    """Wraps every handler run in a span (``trio_jobqueue.tracing``)."""

    _running: dict[str, _Running] = attrs.field(factory=dict, init=False)
    _capacity: _Capacity = attrs.field(init=False)
    _completer: _Completer = attrs.field(init=False)
    _thread_limiter: trio.CapacityLimiter = attrs.field(init=False)
    _outer: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _claim_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _grace_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)
    _finished: trio.Event = attrs.field(factory=trio.Event, init=False)
    _stopping: bool = attrs.field(default=False, init=False)
    _fatal: BaseException | None = attrs.field(default=None, init=False)
    _is_async: bool = attrs.field(default=True, init=False)
    _clocked: bool = attrs.field(default=True, init=False)
    """Whether anything reads the jobs' start times and durations (else never measured)."""
    _phase: str = attrs.field(default="running", init=False)
    _presence: Presence = attrs.field(init=False)
    _check_now: trio.Event = attrs.field(factory=trio.Event, init=False)
    """Set to make the heartbeat loop run at once (the control feed may have lost a
    force-cancel)."""

    def __attrs_post_init__(self) -> None:
        self._capacity = _Capacity(self.concurrency, ahead=self.storage.batches_calls)
        self._completer = _Completer(self)
        self._thread_limiter = trio.CapacityLimiter(self.concurrency)
        self._is_async = is_async_callable(self.handler)
        self._clocked = (
            self.job_timeout is not None
            or self.metrics is not None
            or self.after_execution is not None
            or self._capacity.margin > 0
        )
        self._idle.set()
        self._presence = Presence(self.storage, self.ns, self.registration)

    def registration(self) -> WorkerRecord:
        """This worker as the storage's registry shows it (``Queue.workers()``)."""
        host, pid = host_and_pid()
        stats = self.stats
        return WorkerRecord(
            worker_id=self.worker_id,
            host=host,
            pid=pid,
            started_at=self._presence.started_at,
            concurrency=self.concurrency,
            in_flight=len(self._running),
            jobs=tuple(r.claim.job_id for r in self._running.values())[:MAX_LISTED_JOBS],
            state=self._phase,
            counters={
                "claimed": stats.claimed,
                "completed": stats.completed,
                "retried": stats.retried,
                "failed": stats.failed,
                "released": stats.released,
                "fenced": stats.fenced,
                "lost_leases": stats.lost_leases,
                "force_cancelled": stats.force_cancelled,
            },
        )

    # -- lifecycle --------------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`shutdown` finishes. Immune to outside cancellation by design:
        the owner must call :meth:`shutdown` (``open_queue`` always does).

        Raises:
            KeyboardInterrupt, SystemExit: a handler raised it; every job was released
                first (unwrapped: never inside an exception group).
        """
        try:
            with self._outer:
                self._outer.shield = True
                async with trio.open_nursery() as nursery:
                    # Registered before the embedded reaper starts (it leads in our name).
                    await self._presence.announce()
                    nursery.start_soon(self._presence.run)
                    await nursery.start(self._control_loop)
                    nursery.start_soon(self._heartbeat_loop)
                    task_status.started()
                    with self._claim_scope:
                        await self._claim_loop(nursery)
                    await trio.sleep_forever()
        finally:
            self._finished.set()
        if self._fatal is not None:
            raise self._fatal

    def skip_grace(self) -> None:
        """End the shutdown grace period now (e.g. on a second SIGTERM): running handlers
        are cancelled and their jobs released, attempt not consumed. Works before or
        during :meth:`shutdown`."""
        self._grace_scope.cancel()

    @trio.lowlevel.enable_ki_protection
    async def shutdown(self, grace: float) -> None:
        """Stop claiming, give in-flight jobs ``grace`` seconds, then cancel and release
        the rest. Returns when every job is settled and the worker's tasks are gone."""
        self._stopping = True
        self._claim_scope.cancel()
        for running in list(self._running.values()):
            if not running.started:
                running.release()  # claimed ahead, never started: back to the queue now
        if self._phase == "running":
            self._phase = "stopping"
            await self._presence.announce()
        self._grace_scope.deadline = min(self._grace_scope.deadline, trio.current_time() + grace)
        with self._grace_scope:
            await self._idle.wait()
        for running in list(self._running.values()):
            running.release()
        while True:
            with trio.move_on_after(STUCK_WARNING):
                await self._idle.wait()
                break
            # Only a sync handler (a thread) can ignore its cancellation.
            log.warning(
                "shutdown is waiting for %d handler(s) that ignore cancellation (sync "
                "handlers cannot be interrupted): jobs %s",
                len(self._running),
                ", ".join(repr(r.claim.job_id) for r in list(self._running.values())[:10]),
            )
        self._outer.cancel()
        await self._finished.wait()
        await self._presence.withdraw(self.worker_id)

    def _stop_for(self, exc: BaseException) -> None:
        """A handler raised ``KeyboardInterrupt``/``SystemExit``: stop claiming, release
        every job now, then let :meth:`run` raise ``exc``."""
        if self._fatal is None:
            self._fatal = exc
            log.error(
                "a handler raised %s: stopping the worker; its jobs return to the queue",
                type(exc).__name__,
            )
        self._stopping = True
        self._claim_scope.cancel()
        self._grace_scope.cancel()
        for running in list(self._running.values()):
            running.release()

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(self, nursery: trio.Nursery) -> None:
        failures = 0
        while True:
            await self._capacity.wait()
            if self._capacity.claimable() < self._capacity.slice:
                # Let jobs that are finishing right now free their slots, so that one
                # claim fetches a batch instead of one job per freed slot. (A full claim
                # goes at once, before the jobs just started run: the server works on
                # it meanwhile.)
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            taken = self._capacity.take(self._capacity.slice)
            if not taken:
                continue  # e.g. recent jobs ran long: no claiming ahead any more
            # While claimed jobs wait for a slot, a claim only takes what is ready now: a
            # blocking one would wait on the server and take the next jobs (those this
            # worker gives back among them) from idle workers.
            ahead = self._capacity.waiting > 0
            claimed_at = trio.current_time()
            try:
                claims = await self.storage.claim(
                    self.ns,
                    self.worker_id,
                    limit=taken,
                    lease=self.visibility_timeout,
                    wait=0 if ahead else CLAIM_WAIT,
                )
            except StorageError as exc:
                self._capacity.give(taken)
                failures += 1
                delay = min(0.05 * 2**failures, 2.0)
                log.warning("claim failed (%s); retrying in %.2f s", exc, delay)
                await trio.sleep(delay)
                continue
            failures = 0
            self._capacity.give(taken - len(claims))
            for claim in claims:
                self._start(nursery, claim, claimed_at + self.visibility_timeout)
            if ahead and not claims:
                await self._capacity.none_waiting()  # then claim (and wait) as usual

    def _start(self, nursery: trio.Nursery, claim: Claim, lease_deadline: float) -> None:
        running = _Running(claim, trio.CancelScope(), lease_deadline, nursery=nursery)
        if self._stopping:
            # Claimed as the worker stopped (a claim cannot be taken back mid-flight):
            # run nothing and hand the job straight back.
            running.release()
        else:
            self._capacity.enlist(running)
        self._running[claim.token] = running
        if self._idle.is_set():
            self._idle = trio.Event()
        self.stats.claimed += 1
        self.stats.in_flight = len(self._running)
        if self.metrics is not None:
            try:
                self.metrics.job_claimed(
                    self.ns, claim, claim.lease_until - self.visibility_timeout
                )
            except Exception:
                log.exception("the metrics hook failed (job %r)", claim.job_id)
        nursery.start_soon(self._run_job, running, name="trio_jobqueue job")

    # -- heartbeats -------------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def _heartbeat_loop(self) -> None:
        interval = self.visibility_timeout / 3
        while True:
            with trio.move_on_after(interval):
                await self._check_now.wait()
            if self._check_now.is_set():
                self._check_now = trio.Event()
            live = [r for r in self._running.values() if not r.lease_lost]
            if not live:
                continue
            sent_at = trio.current_time()
            try:
                owned = await self.storage.heartbeat(
                    self.ns,
                    [(r.claim.job_id, r.claim.token) for r in live],
                    lease=self.visibility_timeout,
                )
            except StorageError as exc:
                log.warning("heartbeat failed (%s); will retry", exc)
                continue
            lost: list[_Running] = []
            for running, still_owned in zip(live, owned, strict=True):
                if still_owned:
                    running.lease_deadline = sent_at + self.visibility_timeout
                    continue
                # A job whose outcome is being (or was) stored while the heartbeat was in
                # flight is not "lost": its settlement tells whether the lease was kept.
                if not running.settling and self._running.get(running.claim.token) is running:
                    lost.append(running)
            for running in lost:
                if await self._was_removed(running.claim):
                    # A force-cancel whose notification did not arrive.
                    if not running.settling and not running.revoked:
                        self._revoke(running, "found by heartbeat")
                    continue
                if not running.settling and not running.revoked:
                    running.lease_lost = True
                    self.stats.lost_leases += 1
                    log.warning(
                        "lost the lease of job %r attempt %d; its outcome will be rejected",
                        running.claim.job_id,
                        running.claim.attempt,
                    )

    # -- force-cancel -------------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def _control_loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Listen for force-cancels of this namespace's running jobs (the storage's
        ``control`` feed) until the worker stops; started before the first claim. If the
        feed cannot be opened or breaks, the heartbeat finds the cancelled jobs."""
        started = False
        failures = 0
        while True:
            try:
                async with listen_control(self.storage, self.ns, self._on_control):
                    if started:
                        self._on_control(None)  # reopened: what happened meanwhile?
                    else:
                        task_status.started()
                        started = True
                    failures = 0
                    await trio.sleep_forever()
            except StorageError as exc:
                if not started:
                    task_status.started()
                    started = True
                failures += 1
                delay = min(0.05 * 2**failures, 2.0)
                log.warning(
                    "cannot listen for force-cancels (%s); retrying in %.2f s (meanwhile "
                    "heartbeats find them)",
                    exc,
                    delay,
                )
                await trio.sleep(delay)

    def _on_control(self, record: EventRecord | None) -> None:
        if record is None:
            self._check_now.set()
            return
        for running in list(self._running.values()):
            claim = running.claim
            if (
                claim.job_id == record.job_id
                and claim.attempt == record.attempt
                and not running.settling
                and not running.revoked
            ):
                self._revoke(running, "notified")

    def _revoke(self, running: _Running, how: str) -> None:
        running.revoked = True
        running.scope.cancel()
        if running.progress is not None:
            running.progress.stale = True
        self.stats.force_cancelled += 1
        log.warning(
            "job %r attempt %d was force-cancelled (%s): cancelling its handler; its"
            " outcome will be discarded",
            running.claim.job_id,
            running.claim.attempt,
            how,
        )

    async def _was_removed(self, claim: Claim) -> bool:
        """Whether the job of ``claim`` was removed (force-cancelled) rather than taken
        over: no record, another job under its id, or one that never reached this
        attempt. ``False`` when the storage cannot tell now."""
        try:
            record = await self.storage.get_status(self.ns, claim.job_id)
        except StorageError:
            return False
        return (
            record is None
            or record.created_at != claim.created_at
            or record.attempts < claim.attempt
        )

    def _discard(self, running: _Running, outcome: _Outcome | None) -> BaseException | None:
        """The force-cancelled attempt's end: nothing is stored (the storage removed the
        job and fences the token); returns a fatal exception the handler raised."""
        if outcome is not None and outcome.fatal is None:
            log.warning(
                "job %r attempt %d finished after it was force-cancelled (the handler"
                " shielded itself); its outcome (%s) is discarded",
                running.claim.job_id,
                running.claim.attempt,
                "a result" if outcome.ok else f"an error: {describe_exception(outcome.value)}",
            )
        return None if outcome is None else outcome.fatal

    # -- progress -----------------------------------------------------------------------

    async def _report_progress(self, running: _Running, data: bytes) -> bool:
        """``Job.report_progress`` of the attempt ``running``."""
        if running.progress is None:
            if running.revoked or running.settling or running.nursery is None:
                await trio.lowlevel.checkpoint()
                return False
            running.progress = ProgressReporter(
                functools.partial(self._write_progress, running), running.nursery
            )
        return await running.progress.report(data)

    async def _write_progress(self, running: _Running, data: bytes) -> SettleStatus | None:
        claim = running.claim
        try:
            status = await self.storage.set_progress(self.ns, claim.job_id, claim.token, data)
        except StorageError as exc:
            log.warning("could not store the progress of job %r (%s)", claim.job_id, exc)
            return None
        if status is SettleStatus.STALE and not running.revoked:
            log.warning(
                "progress of job %r attempt %d rejected: this attempt no longer owns the job",
                claim.job_id,
                claim.attempt,
            )
        return status

    # -- running one job ----------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def _run_job(self, running: _Running) -> None:
        # Nothing outside this worker can cancel a job task: the worker's nursery is
        # shielded, and the outer scope is only cancelled once every job has settled.
        # The one per-job scope is cancelled by shutdown (after the grace period) or by
        # its deadline (job_timeout); the settlement after it is therefore never
        # interrupted, and a shutdown release runs shielded all the same.
        claim = running.claim
        settled = handed = False
        fatal: BaseException | None = None
        # The clocks are read only for those who use the times (a job_timeout, the
        # metrics, the after_execution hook, claiming ahead); 0.0 otherwise.
        clocked = self._clocked
        started_wall = started = 0.0
        if clocked:
            started_wall = time.time()
            started = trio.current_time()
        try:
            outcome: _Outcome | None = None
            if running.released:  # released before it started: never run the handler
                self._capacity.withdraw(running)
            else:
                with running.scope:
                    # Cancelled here (released or revoked) before it started: no slot.
                    capacity = self._capacity
                    if not (capacity.start_nowait(running) or await capacity.start(running)):
                        # Claimed ahead, and the running jobs turned out long: back to
                        # the queue (attempt not consumed) for a worker that is idle.
                        running.release()
                    else:
                        if clocked:
                            started_wall = time.time()
                            started = trio.current_time()
                        try:
                            # Released or revoked while it waited for its slot: never run.
                            await trio.lowlevel.checkpoint_if_cancelled()
                            running.started = True
                            if self.job_timeout is not None:
                                running.scope.deadline = started + self.job_timeout
                            outcome = await self._execute(claim, running)
                        finally:
                            self._capacity.finish(trio.current_time() - started if clocked else 0.0)
            if running.revoked:
                fatal = self._discard(running, outcome)
                settled = True
                return
            if outcome is not None and outcome.fatal is not None:
                fatal, outcome = outcome.fatal, None
            elif outcome is None and not running.released:
                outcome = _Outcome(
                    ok=False,
                    value=JobTimeoutError(f"handler exceeded job_timeout={self.job_timeout} s"),
                )
            elif outcome is not None and running.released and not outcome.ok:
                # Failed because shutdown cancelled it: not the job's fault.
                outcome = None
            duration = trio.current_time() - started if clocked else 0.0
            handed = await self._settle(running, outcome, started_wall, duration)
            settled = True
        except _FATAL as exc:  # e.g. a KeyboardInterrupt delivered while settling
            fatal = exc
        finally:
            if not settled and not running.finished:
                with trio.CancelScope(shield=True):
                    await self._settle(running, None, started_wall, 0.0)
            if not handed:
                self._finish(running, fatal)

    def _finish(self, running: _Running, fatal: BaseException | None = None) -> None:
        """The attempt of ``running`` is over (its outcome stored or given up on)."""
        if running.finished:
            # A completer's sender whose own job was stored before its call broke.
            if fatal is not None:
                self._stop_for(fatal)
            return
        running.finished = True
        del self._running[running.claim.token]
        self.stats.in_flight = len(self._running)
        self._capacity.give()
        if fatal is not None:
            self._stop_for(fatal)
        if not self._running:
            self._idle.set()
            if self._fatal is not None:
                self._outer.cancel()

    def _completed(self, running: _Running, status: SettleStatus | None, duration: float) -> None:
        """A completion handed to the completer was stored (``status``) or given up on."""
        if status is SettleStatus.OK and self.metrics is None:
            self.stats.completed += 1  # _count's usual case, inline
        else:
            self._count(status, "completed", running, duration)
        self._finish(running)

    def _retry_later(
        self, running: _Running, item: Completion, duration: float, error: StorageError
    ) -> None:
        """The call that carried ``item`` failed: retry it in a task of its own."""
        nursery = running.nursery
        assert nursery is not None
        nursery.start_soon(self._retry_complete, running, item, duration, error)

    @trio.lowlevel.enable_ki_protection
    async def _retry_complete(
        self, running: _Running, item: Completion, duration: float, error: StorageError
    ) -> None:
        ns = self.ns
        status = await self._storage_call(
            running,
            "complete",
            lambda: self.storage.complete(ns, item.job_id, item.token, item.result, ttl=item.ttl),
            failed=error,
        )
        self._completed(running, status, duration)

    async def _execute(self, claim: Claim, running: _Running | None = None) -> _Outcome:
        """Run the handler once; every exception it raises is classified, only pure
        cancellation propagates (see the module docstring)."""
        carrier, data = None, claim.payload
        if data.startswith(TRACE_MARK):  # a traced enqueue's frame (see _instrument)
            carrier, data = split_trace(data)
        try:
            payload = self.payload_codec.decode(data, "payload", claim.job_id)
        except SerializationError as exc:
            return _Outcome(ok=False, value=PayloadDecodeError(str(exc)))
        job: Job[Any] = Job(
            id=claim.job_id,
            payload=payload,
            attempt=claim.attempt,
            max_attempts=claim.max_attempts,
            created_at=claim.created_at,
            worker_id=self.worker_id,
            reporter=None if running is None else functools.partial(self._report_progress, running),
        )
        try:
            if self.tracing is not None:
                with self.tracing.handler_span(self.ns, claim, carrier):
                    return _Outcome(ok=True, value=await self._call(job))
            if self._is_async:  # the usual handler: without _call's coroutine layer
                return _Outcome(ok=True, value=await self.handler(job))
            return _Outcome(ok=True, value=await self._call(job))
        except BaseException as exc:  # split deliberately by outcome_of
            outcome = outcome_of(exc)
            if outcome is None:
                raise
            return outcome

    async def _call(self, job: Job[Any]) -> Any:
        if self._is_async:
            return await self.handler(job)
        result = await trio.to_thread.run_sync(
            functools.partial(self.handler, job), limiter=self._thread_limiter
        )
        if inspect.isawaitable(result):
            # A sync callable that returned an awaitable (e.g. a lambda around a coroutine).
            return await result
        return result

    # -- settling -----------------------------------------------------------------------

    async def _settle(
        self,
        running: _Running,
        outcome: _Outcome | None,
        started_wall: float,
        duration: float,
    ) -> bool:
        """Store the attempt's outcome (``None``: release the job). Never raises for a
        misbehaving handler, serializer, hook or retry policy: each is reported and the
        attempt fails instead. ``True``: a completion was handed to the completer, which
        finishes the job (:meth:`_finish`) once it is stored; else the caller does."""
        claim = running.claim
        ns, job_id, token = self.ns, claim.job_id, claim.token
        running.settling = True
        if running.progress is not None:
            with trio.CancelScope(shield=True):
                await running.progress.close()  # the last value lands before the outcome
        if outcome is None:
            status = await self._storage_call(
                running, "release", lambda: self.storage.release(ns, job_id, token)
            )
            self._count(status, "released", running, duration)
            return False
        ok, value, encoded = outcome.ok, outcome.value, None
        if ok:
            try:
                encoded = self.result_codec.encode(value, "result", job_id)
            except SerializationError as exc:
                ok, value = False, exc
        error = None if ok else self._error_of(value, outcome.context)
        if error is not None:
            retryable = not isinstance(value, PayloadDecodeError)
            if claim.attempt < claim.max_attempts and retryable:
                delay = self._retry_delay(claim)
                log.warning(
                    "job %r attempt %d/%d failed: %s: %s; retrying in %.3g s",
                    job_id, claim.attempt, claim.max_attempts, error.type, error.message, delay,
                )  # fmt: skip
                err = encode_error(error)
                status = await self._storage_call(
                    running,
                    "retry",
                    lambda: self.storage.retry(ns, job_id, token, err, delay=delay),
                )
                self._count(status, "retried", running, duration)
                return False
        ttl, final = claim.result_ttl, error
        if self.after_execution is not None:  # the context is built for the hook only
            ctx = ExecutionContext(
                job_id=job_id,
                payload=None,
                attempt=claim.attempt,
                max_attempts=claim.max_attempts,
                created_at=claim.created_at,
                status="completed" if ok else "failed",
                result=value if ok else None,
                error=error,
                ttl=ttl,
                worker_id=self.worker_id,
                started_at=started_wall,
                finished_at=started_wall + duration,
                duration=duration,
            )
            ctx, encoded = await self._after_execution(ctx, claim, encoded)
            ttl = ctx.ttl
            if isinstance(ctx.error, JobError):
                final = ctx.error
        if ok:
            assert encoded is not None
            data = encoded
            await self._completer.hand_over(
                running,
                Completion(job_id, token, data, ttl),
                duration,
                alone=len(self._running) == 1,
            )
            return True
        assert final is not None
        log.error(
            "job %r failed after attempt %d/%d: %s: %s\n%s",
            job_id, claim.attempt, claim.max_attempts, final.type, final.message,
            final.traceback or "(no traceback)",
        )  # fmt: skip
        err = encode_error(final)
        status = await self._storage_call(
            running, "fail", lambda: self.storage.fail(ns, job_id, token, err, ttl=ttl)
        )
        self._count(status, "failed", running, duration)
        return False

    def _observe(self, claim: Claim, outcome: str, duration: float) -> None:
        assert self.metrics is not None
        try:
            self.metrics.job_settled(self.ns, claim, outcome, duration)
        except Exception:
            log.exception("the metrics hook failed (job %r)", claim.job_id)

    @staticmethod
    def _error_of(value: Any, context: BaseException | None) -> JobError:
        if isinstance(value, BaseException):
            return error_from_exception(value, context=context)
        return JobError(type="Error", message=describe_exception(Exception(value)))

    def _retry_delay(self, claim: Claim) -> float:
        """The policy's delay for this attempt; a policy that raises or answers nonsense is
        reported and the job retried at once."""
        try:
            delay = float(self.retry_policy.delay(claim.attempt))
        except Exception as exc:  # noqa: BLE001 - a user policy must not break settling
            log.error(
                "retry_delay policy failed for job %r (%s); retrying at once",
                claim.job_id,
                describe_exception(exc),
            )
            return 0.0
        if not math.isfinite(delay) or delay < 0:
            log.error(
                "retry_delay policy returned %r for job %r; retrying at once", delay, claim.job_id
            )
            return 0.0
        return delay

    async def _after_execution(
        self, ctx: ExecutionContext, claim: Claim, encoded: bytes | None
    ) -> tuple[ExecutionContext, bytes | None]:
        """Run the hook on a copy; keep the original context if it raises or misbehaves."""
        assert self.after_execution is not None
        try:
            ctx.payload = self.payload_codec.decode(
                split_trace(claim.payload)[1], "payload", claim.job_id
            )
        except SerializationError:
            ctx.payload = None
        original = attrs.evolve(ctx)
        try:
            maybe = self.after_execution(ctx)
            if inspect.isawaitable(maybe):
                await maybe
        except Exception:
            log.exception("after_execution hook failed for job %r; outcome kept", claim.job_id)
            return original, encoded
        try:
            ctx.ttl = check_ttl(ctx.ttl, "ttl set by after_execution")
        except ValueError as exc:
            log.warning("%s; keeping ttl=%s for job %r", exc, original.ttl, claim.job_id)
            ctx.ttl = original.ttl
        if ctx.status == "completed" and ctx.result is not original.result:
            try:
                encoded = self.result_codec.encode(ctx.result, "result", claim.job_id)
            except SerializationError:
                log.exception("after_execution set an unencodable result; keeping the original")
                ctx.result = original.result
        if ctx.status == "failed" and not isinstance(ctx.error, JobError):
            log.warning("after_execution set error to a non-JobError; keeping the original")
            ctx.error = original.error
        return ctx, encoded

    async def _storage_call(
        self,
        running: _Running,
        what: str,
        call: Callable[[], Awaitable[SettleStatus]],
        *,
        failed: StorageError | None = None,
    ) -> SettleStatus | None:
        """Run a settlement, retrying storage errors while the job's lease lasts (the
        heartbeat keeps renewing it meanwhile) and for at least ``SETTLE_TIMEOUT``.
        ``failed``: the first attempt was already made (by the caller) and failed so."""
        job_id = running.claim.job_id
        delay = 0.05
        first_failure: float | None = None
        while True:
            try:
                if failed is not None:
                    raise failed
                return await call()
            except StorageError as exc:
                failed = None
                now = trio.current_time()
                if first_failure is None:
                    first_failure = now
                give_up_at = max(running.lease_deadline, first_failure + SETTLE_TIMEOUT)
                if running.lease_lost or now + delay > give_up_at:
                    log.error(
                        "gave up trying to %s job %r after %.1f s (%s); its lease will"
                        " expire and the reaper recovers it",
                        what,
                        job_id,
                        now - first_failure,
                        exc,
                    )
                    return None
                log.warning(
                    "could not %s job %r (%s); retrying in %.2f s", what, job_id, exc, delay
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _count(
        self, status: SettleStatus | None, counter: str, running: _Running, duration: float
    ) -> None:
        if status is SettleStatus.OK:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            if self.metrics is not None:
                self._observe(running.claim, counter, duration)
        elif status is SettleStatus.STALE:
            self.stats.fenced += 1
            if self.metrics is not None:
                self._observe(running.claim, "fenced", duration)
            log.warning(
                "outcome of job %r attempt %d rejected: its lease was taken over",
                running.claim.job_id,
                running.claim.attempt,
            )
