"""An independent, pure-Python model of the :class:`~trio_jobqueue.storage.Storage` contract.

The model is deliberately naive (plain lists and dicts, linear scans, no heaps, no lazy
deletion) so that it shares no code and no cleverness with any backend. It models **one
namespace** on a **logical clock**: :attr:`StorageModel.now` starts at 0 and only moves when
:meth:`StorageModel.advance` is called, mirroring ``Storage.advance_clock``.

Time and ties
-------------
The backends run on real clocks (Redis ``TIME``, ``time.time()``, trio's clock in a real
thread), so between two operations of the state machine real time grows by a few
milliseconds while the model's time stands still. The model is built to predict what a
real-clock backend does anyway:

* Every duration the machine uses is a multiple of 100 s, so two model deadlines are either
  equal or at least 100 s apart; milliseconds of drift can only break *exact* ties.
* A deadline is **passed** when ``deadline <= now``. A deadline the model computes as exactly
  ``now`` was set by an earlier operation plus a duration that the clock has since been
  advanced by, and real time has grown in between, so every backend sees it as passed
  (the contract's own rule is also ``<=``).
* Deadlines set by *different* operations that the model computes as equal are, on a real
  clock, ordered by when the operations ran. The model therefore orders leases and retry
  due times by ``(deadline, operation sequence number, UTF-8 bytes of the id)``: the
  sequence number breaks ties between operations, the id bytes break ties inside one
  operation (a multi-job ``claim`` or ``heartbeat`` reads the clock once), exactly as the
  contract's ``(deadline, id bytes)`` order does on a clock that never stands still.

Readings of the contract the model takes (where the ABC leaves room, MemoryStorage's
reading is used):

* Claim order: the highest priority first, then by position in the ready list (an
  enqueue, a retry without delay, a stalled job and a promotion append; a release goes
  first). The model keeps one list and takes the first job of the highest priority in it.
* Due delayed retries and scheduled jobs are promoted to the ready tail by ``claim`` (in
  due order; a scheduled job becomes ``queued``), and until then their record keeps
  ``due_at``. MemoryStorage's ``stats`` promotes them too, which
  changes the claim order; the machine therefore does not call ``stats`` while a due retry
  awaits promotion (:meth:`StorageModel.has_due_delayed`), so either reading passes.
* A ``complete`` clears the job's last error; ``complete``/``fail`` replace the job's
  ``result_ttl`` with the ``ttl`` they were given.
* ``release`` sets the state to ``queued`` when no attempt remains consumed, else
  ``failing``; the last error is kept.
* Settling or heartbeating a ``processing`` job whose lease has passed but which was not
  reaped yet still succeeds: only ``reap`` (or cancel/expiry) takes ownership away.
* Lock epochs start at 1 and grow by one per new holder. ``release_lock`` of a lock whose
  TTL passed (and that nobody took since) may answer either way; see
  :meth:`StorageModel.release_lock`.
* ``acquire_lock(take_from_dead=True)`` treats a live lock as free when its holder (another
  owner) has no live registration in the namespace; an owner that holds the lock renews it
  whether it is registered or not.

Schedules
---------
``fire_schedule`` checks the fence (as ``reap``), then the schedule's cursor: a tick that
is not after it is ``past``; otherwise the cursor moves to the tick and the job is
enqueued as ``enqueue`` would (``enqueued``, or ``duplicate`` when a live job holds the id:
the cursor moves anyway). ``schedule_cursors`` lists every cursor.

Worker registry
---------------
Each registration expires on its own, at ``now + ttl`` of the ``register_worker`` call that
made or last refreshed it (a refresh replaces the whole record); like every deadline it is
passed when ``expires_at <= now``. ``list_workers`` gives the live ones ordered by
``(started_at, UTF-8 bytes of the id)`` (the same order as by code points), with
``last_seen``/``expires_at`` set by the registry (the values the worker sent are ignored).
``unregister_worker`` says whether a live registration was removed.

Events
------
Every transition appends the events it emits to :attr:`StorageModel.events`, in the
order the contract gives them: ``enqueued`` (attempt 0) for an accepted enqueue;
``started`` per claimed job with its attempt, in claim order; ``completed`` with the
result, ``failed`` / ``failing`` with the error, for the attempt that settled;
``requeued`` with the released attempt's number (the attempt count *before* release
un-consumed it); ``cancelled`` with the attempts the job had started; and for ``reap``,
per recovered job in reap order, ``stalled`` with the ``Stalled`` error, followed at once
by ``failed`` (same attempt and error) when its attempts were exhausted. Refused calls
(duplicates, stale tokens, a fenced reap), reads, heartbeats, lock calls, registry calls,
TTL updates and expiry emit nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .._types import (
    CancelStatus,
    DeleteStatus,
    EnqueueStatus,
    EventKind,
    JobState,
    RetryStatus,
    UpdateTtlStatus,
)
from ..storage import FireStatus, WorkerRecord

__all__ = [
    "STALLED",
    "ExpectedClaim",
    "ExpectedEnqueue",
    "ExpectedLockHolder",
    "ExpectedReap",
    "ModelEvent",
    "ModelJob",
    "ModelLock",
    "StorageModel",
]


@attrs.frozen
class _Stalled:
    """Stands for "a ``Stalled`` error written by ``reap``" (backends encode it as they like)."""

    def __repr__(self) -> str:
        return "STALLED"


STALLED = _Stalled()
"""The model's marker for the error a reap stores on a stalled job."""

ModelError = bytes | _Stalled


@attrs.define
class ModelJob:
    """One job as the model sees it. Times are on the model's logical clock."""

    job_id: str
    payload: bytes
    state: JobState
    max_attempts: int
    result_ttl: float
    created_at: float
    attempts: int = 0
    result: bytes | None = None
    error: ModelError | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    due_at: float | None = None
    due_seq: int = 0
    worker_id: str | None = None
    token: str | None = None
    lease_until: float | None = None
    lease_seq: int = 0
    priority: int = 0
    expire_seq: int = 0
    """The operation that set ``expires_at`` (ties of expiry times, see the module
    docstring)."""
    progress: bytes | None = None
    """The last progress written by an owning token (kept until the record goes)."""


@attrs.define
class ModelLock:
    owner: str | None
    epoch: int
    expires_at: float

    def held_at(self, now: float) -> bool:
        return self.owner is not None and self.expires_at > now


@attrs.frozen
class ModelEvent:
    """One event the model predicts (see "Events" in the module docstring)."""

    kind: EventKind
    job_id: str
    attempt: int
    result: bytes | None = None
    """For ``completed``: the result the storage stored; for ``progress``: the value."""
    error: ModelError | None = None
    """For ``failing``, ``failed`` and ``stalled``: the stored error (:data:`STALLED` for
    one written by ``reap``)."""


@attrs.frozen
class ExpectedEnqueue:
    status: EnqueueStatus
    existing_state: JobState | None = None
    result: bytes | None = None


@attrs.frozen
class ExpectedClaim:
    """What a claim must hand out (the token is the backend's to choose)."""

    job_id: str
    payload: bytes
    attempt: int
    max_attempts: int
    created_at: float
    lease_until: float
    result_ttl: float


@attrs.frozen
class ExpectedReap:
    stalled: tuple[tuple[str, int, bool], ...]
    """``(job_id, attempt, failed)`` per recovered job, in order."""
    next_deadline: float | None
    fenced: bool


@attrs.frozen
class ExpectedLockHolder:
    owner: str
    epoch: int
    expires_at: float
    """On the model's clock."""


def _id_key(job_id: str) -> bytes:
    return job_id.encode("utf-8")


@attrs.define
class StorageModel:
    """The contract for one namespace, as plain data. Methods mirror the ``Storage`` ABC."""

    now: float = 0.0
    jobs: dict[str, ModelJob] = attrs.Factory(dict)
    ready: list[str] = attrs.Factory(list)
    """Ids ready to claim in position order, head first (claims take the first job of
    the highest priority)."""
    cursors: dict[str, float] = attrs.Factory(dict)
    """Schedule id -> the last tick fired."""
    paused: bool = False
    locks: dict[str, ModelLock] = attrs.Factory(dict)
    workers: dict[str, WorkerRecord] = attrs.Factory(dict)
    """The registry: worker id -> its registration, ``last_seen``/``expires_at`` on the
    model's clock (expired ones are forgotten by :meth:`advance`)."""
    events: list[ModelEvent] = attrs.Factory(list)
    """Every event emitted so far, oldest first."""
    _seq: int = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def next_seq(self) -> int:
        """A new operation sequence number (see "Time and ties")."""
        return self._next_seq()

    def _emit(
        self,
        kind: EventKind,
        job: ModelJob,
        *,
        result: bytes | None = None,
        error: ModelError | None = None,
    ) -> None:
        self.events.append(ModelEvent(kind, job.job_id, job.attempts, result, error))

    # -- time ------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock; terminal records and registrations whose TTL passed are
        forgotten."""
        self.now += seconds
        for job_id in [j for j, job in self.jobs.items() if self._expired(job)]:
            del self.jobs[job_id]
        for worker_id in [w for w in self.workers if not self.registered(w)]:
            del self.workers[worker_id]

    def _expired(self, job: ModelJob) -> bool:
        return job.expires_at is not None and job.expires_at <= self.now

    def live(self, job_id: str) -> ModelJob | None:
        job = self.jobs.get(job_id)
        if job is None or self._expired(job):
            return None
        return job

    def delayed(self) -> list[ModelJob]:
        """Scheduled jobs and failing jobs still parked with a due time (due or not yet)."""
        return [job for job in self.jobs.values() if job.due_at is not None]

    def has_due_delayed(self) -> bool:
        """True when a delayed retry or scheduled job is due but no claim has promoted it
        yet."""
        return any(job.due_at is not None and job.due_at <= self.now for job in self.delayed())

    def owns(self, job_id: str, token: str) -> bool:
        job = self.live(job_id)
        return job is not None and job.state is JobState.PROCESSING and job.token == token

    def processing(self) -> list[ModelJob]:
        return [job for job in self.jobs.values() if job.state is JobState.PROCESSING]

    # -- producer --------------------------------------------------------------------------

    def enqueue(
        self,
        job_id: str,
        payload: bytes,
        *,
        max_attempts: int,
        result_ttl: float,
        priority: int = 0,
        run_at: float | None = None,
        delay: float | None = None,
        seq: int | None = None,
    ) -> ExpectedEnqueue:
        """``run_at`` on the model's clock; a due time not after now is ready at once.
        ``seq``: the operation's sequence number, when one operation enqueues several
        jobs (:meth:`enqueue_many`: one clock reading for all of them)."""
        job = self.live(job_id)
        if job is not None:
            if job.state is JobState.COMPLETED and job.result is not None:
                return ExpectedEnqueue(EnqueueStatus.COMPLETED, JobState.COMPLETED, job.result)
            return ExpectedEnqueue(EnqueueStatus.DUPLICATE, job.state)
        job = self.jobs[job_id] = ModelJob(
            job_id=job_id,
            payload=payload,
            state=JobState.QUEUED,
            max_attempts=max_attempts,
            result_ttl=result_ttl,
            created_at=self.now,
            priority=priority,
        )
        due = self.now + delay if delay is not None else run_at
        status = EnqueueStatus.QUEUED
        if due is not None and due > self.now:
            job.state = JobState.SCHEDULED
            job.due_at = due
            job.due_seq = self._next_seq() if seq is None else seq
            status = EnqueueStatus.SCHEDULED
        else:
            self.ready.append(job_id)
        self._emit(EventKind.ENQUEUED, job)
        return ExpectedEnqueue(status)

    def cancel(self, job_id: str) -> CancelStatus:
        job = self.live(job_id)
        if job is None or job.state is JobState.FAILED:
            return CancelStatus.NOT_FOUND
        if job.state is JobState.PROCESSING:
            return CancelStatus.PROCESSING
        if job.state is JobState.COMPLETED:
            return CancelStatus.COMPLETED
        del self.jobs[job_id]
        if job_id in self.ready:
            self.ready.remove(job_id)
        self._emit(EventKind.CANCELLED, job)
        return CancelStatus.CANCELLED

    def update_result_ttl(self, job_id: str, ttl: float) -> UpdateTtlStatus:
        job = self.live(job_id)
        if job is None:
            return UpdateTtlStatus.NOT_FOUND
        if not job.state.is_terminal:
            return UpdateTtlStatus.NOT_TERMINAL
        kept = job.result if job.state is JobState.COMPLETED else job.error
        if kept is None:
            return UpdateTtlStatus.MISSING_PAYLOAD
        job.result_ttl = ttl
        job.expires_at = self.now + ttl
        job.expire_seq = self._next_seq()
        return UpdateTtlStatus.UPDATED

    # -- worker ----------------------------------------------------------------------------

    def claim(self, worker_id: str, *, limit: int, lease: float) -> list[ExpectedClaim]:
        """Promote due retries and scheduled jobs, then take up to ``limit``, each the first
        ready job of the highest priority.

        The claimed jobs are ``processing`` with no token yet: call :meth:`bind_token` with
        the token the backend handed out.
        """
        due = [job for job in self.delayed() if job.due_at is not None and job.due_at <= self.now]
        if self.paused:
            return []
        due.sort(key=lambda job: (job.due_at, job.due_seq, _id_key(job.job_id)))
        for job in due:
            job.due_at = None
            if job.state is JobState.SCHEDULED:
                job.state = JobState.QUEUED
            self.ready.append(job.job_id)
        seq = self._next_seq()
        claims: list[ExpectedClaim] = []
        while self.ready and len(claims) < limit:
            top = max(self.jobs[job_id].priority for job_id in self.ready)
            first = next(
                i for i, job_id in enumerate(self.ready) if self.jobs[job_id].priority == top
            )
            job = self.jobs[self.ready.pop(first)]
            job.state = JobState.PROCESSING
            job.attempts += 1
            job.worker_id = worker_id
            job.token = None
            job.lease_until = self.now + lease
            job.lease_seq = seq
            self._emit(EventKind.STARTED, job)
            claims.append(
                ExpectedClaim(
                    job_id=job.job_id,
                    payload=job.payload,
                    attempt=job.attempts,
                    max_attempts=job.max_attempts,
                    created_at=job.created_at,
                    lease_until=job.lease_until,
                    result_ttl=job.result_ttl,
                )
            )
        return claims

    def bind_token(self, job_id: str, token: str) -> None:
        self.jobs[job_id].token = token

    def heartbeat(self, claims: Sequence[tuple[str, str]], *, lease: float) -> list[bool]:
        seq = self._next_seq()
        owned: list[bool] = []
        for job_id, token in claims:
            if self.owns(job_id, token):
                job = self.jobs[job_id]
                job.lease_until = self.now + lease
                job.lease_seq = seq
                owned.append(True)
            else:
                owned.append(False)
        return owned

    def _finish(self, job: ModelJob, state: JobState, ttl: float, seq: int | None = None) -> None:
        job.state = state
        job.token = job.worker_id = job.lease_until = None
        job.finished_at = self.now
        job.expires_at = self.now + ttl
        job.expire_seq = self._next_seq() if seq is None else seq
        job.result_ttl = ttl

    def complete(
        self, job_id: str, token: str, result: bytes, *, ttl: float, seq: int | None = None
    ) -> bool:
        """Returns whether the token owned the job (``ok``) or not (``stale``). ``seq``:
        the operation's sequence number when it completes several jobs at one clock
        reading (an atomic ``complete_many``: equal expiries then tie by id bytes)."""
        if not self.owns(job_id, token):
            return False
        job = self.jobs[job_id]
        job.result = result
        job.error = None
        self._finish(job, JobState.COMPLETED, ttl, seq)
        self._emit(EventKind.COMPLETED, job, result=result)
        return True

    def fail(self, job_id: str, token: str, error: bytes, *, ttl: float) -> bool:
        if not self.owns(job_id, token):
            return False
        job = self.jobs[job_id]
        job.error = error
        self._finish(job, JobState.FAILED, ttl)
        self._emit(EventKind.FAILED, job, error=error)
        return True

    def _to_failing(self, job: ModelJob, error: ModelError, delay: float) -> None:
        job.state = JobState.FAILING
        job.error = error
        job.token = job.worker_id = job.lease_until = None
        if delay > 0:
            job.due_at = self.now + delay
            job.due_seq = self._next_seq()
        else:
            self.ready.append(job.job_id)

    def retry(self, job_id: str, token: str, error: bytes, *, delay: float) -> bool:
        if not self.owns(job_id, token):
            return False
        job = self.jobs[job_id]
        self._to_failing(job, error, delay)
        self._emit(EventKind.FAILING, job, error=error)
        return True

    def release(self, job_id: str, token: str) -> bool:
        if not self.owns(job_id, token):
            return False
        job = self.jobs[job_id]
        self._emit(EventKind.REQUEUED, job)  # the released attempt's number
        job.attempts -= 1
        job.state = JobState.QUEUED if job.attempts == 0 else JobState.FAILING
        job.token = job.worker_id = job.lease_until = None
        self.ready.insert(0, job_id)
        return True

    # -- recovery --------------------------------------------------------------------------

    def fence_valid(self, lock: str, owner: str, epoch: int) -> bool:
        held = self.locks.get(lock)
        return (
            held is not None
            and held.held_at(self.now)
            and held.owner == owner
            and held.epoch == epoch
        )

    def reap(self, fence: tuple[str, str, int] | None = None) -> ExpectedReap:
        if fence is not None and not self.fence_valid(*fence):
            return ExpectedReap(stalled=(), next_deadline=None, fenced=True)
        expired = [
            job
            for job in self.processing()
            if job.lease_until is not None and job.lease_until <= self.now
        ]
        expired.sort(key=lambda job: (job.lease_until, job.lease_seq, _id_key(job.job_id)))
        stalled: list[tuple[str, int, bool]] = []
        seq = self._next_seq()  # one clock reading for the whole reap
        for job in expired:
            exhausted = job.attempts >= job.max_attempts
            self._emit(EventKind.STALLED, job, error=STALLED)
            if exhausted:
                job.error = STALLED
                self._finish(job, JobState.FAILED, job.result_ttl, seq)
                self._emit(EventKind.FAILED, job, error=STALLED)
            else:
                self._to_failing(job, STALLED, 0.0)
            stalled.append((job.job_id, job.attempts, exhausted))
        remaining = [job.lease_until for job in self.processing() if job.lease_until is not None]
        return ExpectedReap(
            stalled=tuple(stalled),
            next_deadline=min(remaining) if remaining else None,
            fenced=False,
        )

    # -- operating -------------------------------------------------------------------------

    def state_order(self, job: ModelJob) -> tuple[object, ...]:
        """The order of the jobs of one state (bulk operations): terminal ones by expiry;
        ready ones in claim order; the others by due time."""
        if job.state.is_terminal:
            return (job.expires_at, job.expire_seq, _id_key(job.job_id))
        if job.job_id in self.ready:
            return (0, -job.priority, self.ready.index(job.job_id))
        return (1, job.due_at, job.due_seq, _id_key(job.job_id))

    def in_state(self, state: JobState) -> list[ModelJob]:
        return sorted(
            (job for job in self.jobs.values() if job.state is state and self.live(job.job_id)),
            key=self.state_order,
        )

    def list_order(self, state: JobState) -> list[str]:
        """The ids ``list_jobs(state)`` pages through: processing by lease deadline;
        completed and failed the latest to expire first; the others as :meth:`in_state`."""
        if state is JobState.PROCESSING:
            jobs = sorted(
                self.processing(),
                key=lambda job: (job.lease_until, job.lease_seq, _id_key(job.job_id)),
            )
        elif state.is_terminal:
            jobs = self.in_state(state)[::-1]
        else:
            jobs = self.in_state(state)
        return [job.job_id for job in jobs]

    def _requeue_failed(self, job: ModelJob) -> None:
        job.state = JobState.QUEUED
        job.attempts = 0
        job.finished_at = job.expires_at = None
        self.ready.append(job.job_id)
        self._emit(EventKind.ENQUEUED, job)

    def retry_job(self, job_id: str) -> RetryStatus:
        job = self.live(job_id)
        if job is None:
            return RetryStatus.NOT_FOUND
        if job.state is not JobState.FAILED:
            return RetryStatus.NOT_FAILED
        self._requeue_failed(job)
        return RetryStatus.RETRIED

    def _delete(self, job: ModelJob) -> None:
        del self.jobs[job.job_id]
        if job.job_id in self.ready:
            self.ready.remove(job.job_id)
        if not job.state.is_terminal:
            self._emit(EventKind.CANCELLED, job)

    def delete_job(self, job_id: str) -> DeleteStatus:
        job = self.live(job_id)
        if job is None:
            return DeleteStatus.NOT_FOUND
        if job.state is JobState.PROCESSING:
            return DeleteStatus.PROCESSING
        self._delete(job)
        return DeleteStatus.DELETED

    def retry_failed(self, limit: int) -> int:
        jobs = self.in_state(JobState.FAILED)[:limit]
        for job in jobs:
            self._requeue_failed(job)
        return len(jobs)

    def delete_jobs(self, state: JobState, limit: int) -> int:
        jobs = self.in_state(state)[:limit]
        for job in jobs:
            self._delete(job)
        return len(jobs)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused

    # -- running-job control ---------------------------------------------------------------

    def force_cancel(self, job_id: str) -> CancelStatus:
        """:meth:`cancel`, and a ``processing`` job is removed too (``cancelling``): its
        token owns nothing from now on; ``cancelled`` carries the running attempt."""
        job = self.live(job_id)
        if job is None or job.state is not JobState.PROCESSING:
            return self.cancel(job_id)
        del self.jobs[job_id]
        self._emit(EventKind.CANCELLED, job)
        return CancelStatus.CANCELLING

    def set_progress(self, job_id: str, token: str, progress: bytes) -> bool:
        """Whether the token owned the job (then the value is stored and emitted)."""
        if not self.owns(job_id, token):
            return False
        job = self.jobs[job_id]
        job.progress = progress
        self._emit(EventKind.PROGRESS, job, result=progress)
        return True

    # -- schedules -------------------------------------------------------------------------

    def fire_schedule(
        self,
        schedule_id: str,
        tick: float,
        job_id: str,
        payload: bytes,
        *,
        max_attempts: int,
        result_ttl: float,
        priority: int,
        fence: tuple[str, str, int],
    ) -> FireStatus:
        if not self.fence_valid(*fence):
            return FireStatus.FENCED
        last = self.cursors.get(schedule_id)
        if last is not None and tick <= last:
            return FireStatus.PAST
        self.cursors[schedule_id] = tick
        outcome = self.enqueue(
            job_id, payload, max_attempts=max_attempts, result_ttl=result_ttl, priority=priority
        )
        return (
            FireStatus.ENQUEUED if outcome.status is EnqueueStatus.QUEUED else FireStatus.DUPLICATE
        )

    # -- leader lock -----------------------------------------------------------------------

    def acquire_lock(
        self, lock: str, owner: str, *, ttl: float, take_from_dead: bool = False
    ) -> int | None:
        held = self.locks.get(lock)
        if held is not None and held.held_at(self.now):
            if held.owner == owner:
                held.expires_at = self.now + ttl
                return held.epoch
            assert held.owner is not None  # held_at() says so
            if not take_from_dead or self.registered(held.owner):
                return None
        epoch = (held.epoch if held is not None else 0) + 1
        self.locks[lock] = ModelLock(owner=owner, epoch=epoch, expires_at=self.now + ttl)
        return epoch

    def renew_lock(self, lock: str, owner: str, epoch: int, *, ttl: float) -> bool:
        if not self.fence_valid(lock, owner, epoch):
            return False
        self.locks[lock].expires_at = self.now + ttl
        return True

    def release_lock(self, lock: str, owner: str, epoch: int) -> bool | None:
        """``True``/``False`` as the backend must answer, or ``None`` when either is right.

        Releasing with the right owner and epoch after the TTL passed (and nobody took the
        lock since) is ambiguous: the holder's claim lapsed, so a backend that lets the lock
        vanish on expiry answers ``False`` while MemoryStorage answers ``True``. Both leave
        the lock free, which is all that is observable afterwards.
        """
        held = self.locks.get(lock)
        if held is None or held.owner != owner or held.epoch != epoch:
            return False
        answer = True if held.held_at(self.now) else None
        held.owner = None
        return answer

    def lock_holder(self, lock: str) -> ExpectedLockHolder | None:
        held = self.locks.get(lock)
        if held is None or held.owner is None or not held.held_at(self.now):
            return None
        return ExpectedLockHolder(held.owner, held.epoch, held.expires_at)

    # -- worker registry -------------------------------------------------------------------

    def registered(self, worker_id: str) -> bool:
        """Whether ``worker_id`` has a live registration."""
        record = self.workers.get(worker_id)
        return record is not None and record.expires_at > self.now

    def register_worker(self, record: WorkerRecord, *, ttl: float) -> None:
        """Insert or replace the registration; it lives until ``now + ttl``."""
        self.workers[record.worker_id] = attrs.evolve(
            record, last_seen=self.now, expires_at=self.now + ttl
        )

    def unregister_worker(self, worker_id: str) -> bool:
        live = self.registered(worker_id)
        self.workers.pop(worker_id, None)
        return live

    def list_workers(self) -> list[WorkerRecord]:
        """The live registrations, oldest ``started_at`` first, then by id."""
        live = [record for record in self.workers.values() if self.registered(record.worker_id)]
        return sorted(live, key=lambda record: (record.started_at, _id_key(record.worker_id)))

    # -- housekeeping ----------------------------------------------------------------------

    def stats(self) -> tuple[int, int, int, int, int, int]:
        """``(queued, delayed, processing, completed, failed, scheduled)``; queued counts
        every ready job, ``failing`` ones included, and delayed retries and scheduled jobs
        that are already due (``stats`` is read-only: only ``claim`` moves them); delayed
        and scheduled count the others."""
        live = [job for job in self.jobs.values() if not self._expired(job)]

        def count(state: JobState) -> int:
            return sum(1 for job in live if job.state is state)

        due = sum(1 for job in live if job.due_at is not None and job.due_at <= self.now)
        waiting = [job for job in live if job.due_at is not None and job.due_at > self.now]
        scheduled = sum(1 for job in waiting if job.state is JobState.SCHEDULED)
        return (
            len(self.ready) + due,
            len(waiting) - scheduled,
            count(JobState.PROCESSING),
            count(JobState.COMPLETED),
            count(JobState.FAILED),
            scheduled,
        )
