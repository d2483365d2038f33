"""The producer API (:class:`Queue`) and the worker's two layers: :func:`serve_worker` runs
in the caller's nursery, :func:`open_queue` owns a nursery (and is built on it)."""

from __future__ import annotations

import datetime
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, NoReturn, TypeVar, overload

import attrs
import trio

from ._config import DEFAULT_SHUTDOWN_GRACE, QueueConfig
from ._errors import (
    EnqueueManyError,
    InvalidJobError,
    JobCancelledError,
    JobFailedError,
    JobQueueError,
    NotReplicatedError,
    StorageError,
    WaitTimeoutError,
)
from ._events import EventChannel, open_event_channel
from ._instrument import MetricsHook, TracingHook, frame_trace, split_trace
from ._leader import run_service
from ._progress import decode_progress
from ._reaper import REAPER_LOCK, Reaper, reaper_service
from ._retry import DEFAULT_RETRY_POLICY, RetryPolicy
from ._schedule import Schedule
from ._scheduler import Scheduler
from ._serde import Serializer, TypedCodec, decode_error
from ._types import (
    CancelResult,
    DeleteResult,
    EnqueueResult,
    EnqueueStatus,
    EventKind,
    JobError,
    JobPage,
    JobSpec,
    JobState,
    JobStatus,
    RetryResult,
    UpdateTtlResult,
    WorkerInfo,
)
from ._util import open_service_nursery
from ._validate import (
    MAX_JOB_ID_LENGTH,
    check_due,
    check_duration,
    check_job_id,
    check_max_attempts,
    check_priority,
    check_ttl,
)
from ._worker import AfterExecution, Handler, Worker, WorkerStatistics
from .storage import EnqueueOutcome, EnqueueSpec, JobRecord, JobWatch, Storage
from .storage._base import ENQUEUE_MANY_MAX, QUEUED_OUTCOME

__all__ = ["Queue", "QueueStatistics", "open_queue", "serve_worker"]

P = TypeVar("P")
R = TypeVar("R")

_QUEUED = EnqueueResult(EnqueueStatus.QUEUED)
"""The result of every accepted job of ``enqueue_many`` (one shared frozen value)."""

BULK_BATCH = 1000
"""Jobs per storage call of the bulk operations (``retry_failed``, ``purge``)."""


@attrs.frozen
class QueueStatistics:
    """A snapshot of this queue object's worker counters (zeros for producer-only)."""

    worker_id: str
    in_flight: int
    claimed: int
    completed: int
    retried: int
    failed: int
    released: int
    fenced: int
    lost_leases: int
    is_reaper_leader: bool | None
    is_scheduler_leader: bool | None = None
    """Whether the queue's embedded scheduler leads (``None``: it runs no schedules)."""
    force_cancelled: int = 0
    """Running jobs force-cancelled (``cancel(id, force=True)``) while this worker held
    them: handler cancelled, outcome discarded."""


_QUEUED_RESULT = EnqueueResult(status=EnqueueStatus.QUEUED)
"""What an accepted enqueue returns (a frozen value, shared)."""


async def _enqueue(queue: Queue[Any, Any], job: EnqueueSpec) -> EnqueueOutcome:
    if queue.tracing is not None:
        return await _traced_enqueue(queue, queue.tracing, job)
    return await _store(queue, job)


async def _store(queue: Queue[Any, Any], job: EnqueueSpec) -> EnqueueOutcome:
    return await queue.storage.enqueue(
        queue.name,
        job.job_id,
        job.payload,
        max_attempts=job.max_attempts,
        result_ttl=job.result_ttl,
        priority=job.priority,
        run_at=job.run_at,
        delay=job.delay,
    )


async def _traced_enqueue(
    queue: Queue[Any, Any], tracing: TracingHook, job: EnqueueSpec
) -> EnqueueOutcome:
    with tracing.enqueue_span(queue.name, (job.job_id,), "enqueue") as carrier:
        if carrier is not None:
            job = attrs.evolve(job, payload=frame_trace(carrier, job.payload))
        return await _store(queue, job)


def _framed(prepared: list[_Prepared], carrier: bytes) -> list[_Prepared]:
    """``enqueue_many``'s jobs with the trace frame in front of every payload."""
    framed: list[_Prepared] = []
    for job in prepared:
        if isinstance(job, tuple):
            framed.append((job[0], frame_trace(carrier, job[1])))
        else:
            framed.append(attrs.evolve(job, payload=frame_trace(carrier, job.payload)))
    return framed


_Prepared = EnqueueSpec | tuple[str, bytes]
"""One validated job of ``enqueue_many``: its spec, or ``(id, encoded payload)`` for a job
with the queue's options."""


@attrs.frozen
class _Chunks(Sequence[list[EnqueueSpec]]):
    """``enqueue_many``'s jobs in chunks of :data:`ENQUEUE_MANY_MAX`, each chunk's
    :class:`EnqueueSpec` values made when the storage reads it: on Redis while the
    previous chunk runs, instead of all of them before the first is sent."""

    jobs: list[_Prepared]
    max_attempts: int
    result_ttl: float

    def __len__(self) -> int:
        return -(-len(self.jobs) // ENQUEUE_MANY_MAX)

    @overload
    def __getitem__(self, index: int) -> list[EnqueueSpec]: ...

    @overload
    def __getitem__(self, index: slice) -> list[list[EnqueueSpec]]: ...

    def __getitem__(self, index: int | slice) -> list[EnqueueSpec] | list[list[EnqueueSpec]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        attempts, ttl = self.max_attempts, self.result_ttl
        return [
            EnqueueSpec(job[0], job[1], attempts, ttl) if isinstance(job, tuple) else job
            for job in self.jobs[index * ENQUEUE_MANY_MAX : (index + 1) * ENQUEUE_MANY_MAX]
        ]


@attrs.define(eq=False, kw_only=True)
class Queue(Generic[P, R]):
    """The handle ``open_queue`` yields and ``serve_worker`` passes to
    ``task_status.started()``; valid while that block or task runs. All async methods are
    cancellable: a cancelled call either took effect fully or not at all."""

    storage: Storage
    name: str
    worker_id: str
    max_attempts: int
    result_ttl: float
    payload_codec: TypedCodec
    result_codec: TypedCodec
    worker: Worker | None = None
    reaper: Reaper | None = None
    scheduler: Scheduler | None = None
    """The embedded scheduler, when the queue runs schedules."""
    metrics: MetricsHook | None = None
    """The ``metrics`` option (``trio_jobqueue.metrics``), if given."""
    tracing: TracingHook | None = None
    """The ``tracing`` option (``trio_jobqueue.tracing``), if given."""

    # -- producing -------------------------------------------------------------------

    async def enqueue(
        self,
        id: str,
        payload: P,
        *,
        delay: float | None = None,
        run_at: float | datetime.datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        result_ttl: float | None = None,
    ) -> EnqueueResult:
        """Add job ``id`` unless the id is taken (dedup: the first enqueue wins).

        With ``delay`` (seconds from now) or ``run_at`` (epoch seconds or an aware
        ``datetime``) in the future, the job is ``scheduled`` until then and claimable
        right after; a time in the past runs at once. ``priority`` (an int within
        -1000..1000, default 0): higher runs first, FIFO among equals.

        Returns:
            ``EnqueueResult`` with status ``queued``, ``scheduled``, ``duplicate`` (with
            ``existing_state``) or ``completed`` (with the cached ``result``).

        Raises:
            InvalidJobError: bad id, ``max_attempts``, ``priority``, ``delay`` or
                ``run_at`` (negative, not finite, a naive datetime, both given) or an
                unencodable payload; nothing was written.
            InvalidTtlError: ``result_ttl`` is not a finite number > 0.
            StorageError: the storage failed.
        """
        job = self._prepare(id, payload, max_attempts, result_ttl, delay, run_at, priority)
        return self._result(job.job_id, await _enqueue(self, job))

    async def enqueue_many(self, jobs: Iterable[JobSpec[P] | tuple[str, P]]) -> list[EnqueueResult]:
        """Enqueue many jobs in few round trips: one atomic storage step per chunk of
        250 (one script call on Redis, two in flight; one transaction on File), the
        chunks written in order. ``jobs`` holds
        ``(id, payload)`` pairs or :class:`JobSpec` values (with per-job ``delay``,
        ``run_at``, ``priority``, ``max_attempts``, ``result_ttl``).

        Returns:
            one ``EnqueueResult`` per job, in order, as ``enqueue`` would answer it in
            turn: a second occurrence of an id in ``jobs`` is a ``duplicate`` of the first.

        Raises:
            InvalidJobError: an item is invalid (the message names its position);
                every item is checked first, so nothing at all was written.
            EnqueueManyError: (a :class:`StorageError`) the storage failed on one chunk:
                the error's ``results`` are those of the chunks written before it; the
                jobs written are a prefix of whole chunks (see the class); enqueueing
                the list again is safe (the accepted jobs come back as duplicates).
            NotReplicatedError: (``RedisStorage(durable_enqueue=N)``) every job was
                written, but not every chunk was confirmed by ``N`` replicas in time;
                enqueueing the list again is safe and waits for them again.
        """
        attempts = check_max_attempts(self.max_attempts)
        ttl = check_ttl(self.result_ttl, "result_ttl")
        prepared = self._prepare_many(jobs)
        results: list[EnqueueResult] = []

        def done(outcomes: list[EnqueueOutcome]) -> None:
            if outcomes.count(QUEUED_OUTCOME) == len(outcomes):
                results.extend([_QUEUED] * len(outcomes))  # the common case, at C speed
                return
            start = len(results)
            for job, outcome in zip(prepared[start : start + len(outcomes)], outcomes, strict=True):
                job_id = job[0] if isinstance(job, tuple) else job.job_id
                results.append(self._result(job_id, outcome))

        if self.tracing is not None:
            with self.tracing.enqueue_span(
                self.name, [job[0] if isinstance(job, tuple) else job.job_id for job in prepared],
                "enqueue_many",
            ) as carrier:  # fmt: skip
                chunks = _Chunks(
                    prepared if carrier is None else _framed(prepared, carrier), attempts, ttl
                )
                await self._enqueue_chunks(chunks, prepared, results, done)
            return results
        await self._enqueue_chunks(_Chunks(prepared, attempts, ttl), prepared, results, done)
        return results

    async def _enqueue_chunks(
        self,
        chunks: _Chunks,
        prepared: list[_Prepared],
        results: list[EnqueueResult],
        done: Callable[[list[EnqueueOutcome]], None],
    ) -> None:
        try:
            await self.storage.enqueue_chunks(self.name, chunks, done)
        except NotReplicatedError:
            raise  # every job was written: only the replicas' confirmation is missing
        except StorageError as exc:
            raise EnqueueManyError(
                f"{exc} (enqueue_many: the first {len(results)} of {len(prepared)} jobs "
                "were written; calling it again with the same jobs is safe)",
                results,
            ) from exc

    def _prepare_many(self, jobs: Iterable[JobSpec[P] | tuple[str, P]]) -> list[_Prepared]:
        """Validate and encode every item of ``enqueue_many`` (before anything is sent).
        ``(id, payload)`` pairs, the common case, take a short path: the queue's options
        are checked once, an ASCII id within the length limit needs no more checks, and
        the pair is kept as ``(id, encoded payload)`` (see :class:`_Chunks`)."""
        encode = self.payload_codec.encode
        prepared: list[_Prepared] = []
        append = prepared.append
        for position, item in enumerate(jobs):
            try:
                if type(item) is tuple and len(item) == 2:
                    job_id, payload = item
                    if not (
                        type(job_id) is str
                        and 0 < len(job_id) <= MAX_JOB_ID_LENGTH
                        and job_id.isascii()
                    ):
                        job_id = check_job_id(job_id)
                    append((job_id, encode(payload, "payload", job_id)))
                    continue
                if isinstance(item, JobSpec):
                    spec: JobSpec[P] = item
                else:
                    job_id, payload = item
                    spec = JobSpec(job_id, payload)
                append(
                    self._prepare(
                        spec.id,
                        spec.payload,
                        spec.max_attempts,
                        spec.result_ttl,
                        spec.delay,
                        spec.run_at,
                        spec.priority,
                    )
                )
            except InvalidJobError as exc:
                raise type(exc)(f"jobs[{position}]: {exc}") from exc
            except (TypeError, ValueError) as exc:
                raise InvalidJobError(
                    f"jobs[{position}]: expected a JobSpec or an (id, payload) pair, not {item!r}"
                ) from exc
        return prepared

    def _result(self, job_id: str, outcome: EnqueueOutcome) -> EnqueueResult:
        if outcome is QUEUED_OUTCOME:
            return _QUEUED_RESULT
        result = None
        if outcome.status is EnqueueStatus.COMPLETED and outcome.result is not None:
            result = self.result_codec.decode(outcome.result, "result", job_id)
        return EnqueueResult(
            status=EnqueueStatus(outcome.status),
            existing_state=outcome.existing_state,
            result=result,
        )

    def _prepare(
        self,
        id: object,
        payload: P,
        max_attempts: int | None,
        result_ttl: float | None,
        delay: object,
        run_at: object,
        priority: object,
    ) -> EnqueueSpec:
        job_id = check_job_id(id)
        attempts = check_max_attempts(
            max_attempts if max_attempts is not None else self.max_attempts
        )
        ttl = check_ttl(result_ttl if result_ttl is not None else self.result_ttl, "result_ttl")
        seconds, when = check_due(delay, run_at)
        rank = check_priority(priority)
        data = self.payload_codec.encode(payload, "payload", job_id)
        return EnqueueSpec(job_id, data, attempts, ttl, rank, when, seconds)

    async def enqueue_and_wait(
        self,
        id: str,
        payload: P,
        *,
        timeout: float = 30.0,
        delay: float | None = None,
        run_at: float | datetime.datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        result_ttl: float | None = None,
    ) -> R:
        """Enqueue (or join) job ``id`` and wait for its result.

        Never misses a completion that happens between enqueue and wait; returns a cached
        result or raises a stored failure at once; the handler runs once however many
        callers wait on one id. On timeout the job keeps running. ``delay``, ``run_at``
        and ``priority`` as for :meth:`enqueue` (the timeout includes the delay).

        Raises:
            JobFailedError: the job failed (``.error`` holds the last error).
            WaitTimeoutError: no outcome within ``timeout`` seconds.
            JobCancelledError: the job was cancelled (or expired) while awaited.
        """
        wait = math.inf if timeout == math.inf else check_duration(timeout, "timeout")
        job = self._prepare(id, payload, max_attempts, result_ttl, delay, run_at, priority)
        job_id = job.job_id
        deadline = trio.current_time() + wait
        # The timeout bounds only the waiting: the watch and the enqueue always run to
        # completion (or raise StorageError), so a WaitTimeoutError means the job exists.
        async with self.storage.watch_job(self.name, job_id) as watch:
            outcome = await _enqueue(self, job)
            if outcome.status is EnqueueStatus.COMPLETED and outcome.result is not None:
                value: R = self.result_codec.decode(outcome.result, "result", job_id)
                return value
            with trio.move_on_at(deadline):
                # A job we just queued cannot be terminal yet, and the watch was open
                # before the enqueue: its outcome will arrive through the watch. A
                # duplicate may already be finished, so read its state first.
                return await self._wait_for(
                    job_id,
                    watch,
                    outcome.status not in (EnqueueStatus.QUEUED, EnqueueStatus.SCHEDULED),
                )
        raise WaitTimeoutError(job_id, wait)

    async def _wait_for(self, job_id: str, watch: JobWatch, read_state: bool) -> R:
        while True:
            if read_state:
                record = await self.storage.get_status(self.name, job_id)
                if record is None:
                    raise JobCancelledError(job_id)
                if record.state is JobState.COMPLETED:
                    if record.result is None:
                        raise JobQueueError(f"the result of job {job_id!r} is gone")
                    done: R = self.result_codec.decode(record.result, "result", job_id)
                    return done
                if record.state is JobState.FAILED:
                    raise JobFailedError(job_id, self._error_of(record.error))
            event = await watch.wait()
            read_state = True
            if event is None:
                continue  # the backend may have missed something: re-read
            if event.kind is EventKind.COMPLETED and event.result is not None:
                result: R = self.result_codec.decode(event.result, "result", job_id)
                return result
            if event.kind is EventKind.FAILED and event.error is not None:
                raise JobFailedError(job_id, self._error_of(event.error))
            if event.kind is EventKind.CANCELLED:
                raise JobCancelledError(job_id)

    @staticmethod
    def _error_of(error: bytes | None) -> JobError:
        return decode_error(error) or JobError(type="Unknown", message="no error stored")

    # -- inspecting and managing -----------------------------------------------------

    async def cancel(self, id: str, *, force: bool = False) -> CancelResult:
        """Remove a scheduled, queued or failing (waiting to retry) job; its id becomes
        free.

        A ``processing`` job is not interrupted (status ``processing``) unless ``force``:
        then it is removed at once in one fenced step (status ``cancelling``): waiters get
        ``JobCancelledError``, a ``cancelled`` event is emitted, the id is free, and the
        worker holding it, in any process, cancels the handler (within milliseconds:
        it is notified; at the latest at its next heartbeat) and discards whatever the
        handler still returns. See ``docs/operations.md``.
        """
        job_id = check_job_id(id)
        if force:
            return CancelResult(await self.storage.force_cancel(self.name, job_id))
        status = await self.storage.cancel(self.name, job_id)
        return CancelResult(status)

    async def retry(self, id: str) -> RetryResult:
        """Run a ``failed`` job again: it goes back to ``queued`` (at the tail of its
        priority) with a fresh attempt budget; its last error stays visible until it runs.

        Returns:
            ``RetryResult`` with status ``retried``, ``not_failed`` (the job is in another
            state: nothing changed) or ``not_found``.
        """
        return RetryResult(await self.storage.retry_job(self.name, check_job_id(id)))

    async def delete(self, id: str) -> DeleteResult:
        """Remove a scheduled, queued, failing, completed or failed job with its result
        or error; its id becomes free. Waiters of a job that had not finished get
        ``JobCancelledError``.

        Returns:
            ``DeleteResult`` with status ``deleted``, ``processing`` (a worker runs it:
            nothing changed) or ``not_found``.
        """
        return DeleteResult(await self.storage.delete_job(self.name, check_job_id(id)))

    async def retry_failed(self, limit: int | None = None) -> int:
        """:meth:`retry` every ``failed`` job (at most ``limit``); returns how many. Works
        in bounded batches (one atomic step each), so it never blocks the storage."""
        return await self._in_batches(
            limit, lambda n: self.storage.retry_failed(self.name, limit=n)
        )

    async def purge(self, state: JobState | str, limit: int | None = None) -> int:
        """:meth:`delete` every job in ``state`` (at most ``limit``); returns how many.
        ``processing`` jobs cannot be purged (``ValueError``); bounded batches as for
        :meth:`retry_failed`.

        Raises:
            ValueError: ``state`` is not a job state other than ``processing``.
        """
        try:
            which = JobState(state)
        except ValueError:
            raise InvalidJobError(f"unknown job state {state!r}") from None
        if which is JobState.PROCESSING:
            raise InvalidJobError("processing jobs cannot be purged: cancel them first")
        return await self._in_batches(
            limit, lambda n: self.storage.delete_jobs(self.name, which, limit=n)
        )

    @staticmethod
    async def _in_batches(limit: int | None, step: Callable[[int], Awaitable[int]]) -> int:
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise InvalidJobError(f"limit must be an int >= 0 or None, not {limit!r}")
        total = 0
        while limit is None or total < limit:
            want = BULK_BATCH if limit is None else min(BULK_BATCH, limit - total)
            done = await step(want)
            total += done
            if done < want:
                break
        return total

    async def pause(self) -> None:
        """Stop every worker of this queue, in every process, from claiming (running jobs
        finish; enqueues go on). Stored: it lasts across worker restarts until
        :meth:`resume`."""
        await self.storage.set_paused(self.name, True)

    async def resume(self) -> None:
        """Let the workers claim again (they start within about half a second)."""
        await self.storage.set_paused(self.name, False)

    async def is_paused(self) -> bool:
        return await self.storage.is_paused(self.name)

    async def list_jobs(
        self, state: JobState | str, *, limit: int = 100, cursor: str | None = None
    ) -> JobPage:
        """One page of the jobs in ``state``: ``scheduled`` by due time, ``queued`` in
        claim order, ``failing`` (ready ones first, then by due time), ``processing`` by
        lease, ``completed``/``failed`` newest first. Pass the page's ``cursor`` back for
        the next one; ``None`` means the end. Each page costs O(limit + log n).

        Raises:
            InvalidJobError: an unknown state, ``limit`` not an int in 1..1000, or a
                cursor that did not come from this queue.
        """
        try:
            which = JobState(state)
        except ValueError:
            raise InvalidJobError(f"unknown job state {state!r}") from None
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidJobError(f"limit must be an int in 1..1000, not {limit!r}")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidJobError(f"cursor must be a str from a previous page, not {cursor!r}")
        try:
            page = await self.storage.list_jobs(self.name, which, limit=limit, cursor=cursor)
        except ValueError as exc:
            raise InvalidJobError(str(exc)) from exc
        return JobPage(tuple(self._status(record) for record in page.records), page.cursor)

    async def counts(self) -> dict[str, int]:
        """Jobs per state, read at once: ``scheduled`` (due later), ``queued`` (ready to
        run, retries included), ``delayed`` (retries waiting out their delay),
        ``processing``, ``completed``, ``failed``."""
        stats = await self.storage.stats(self.name)
        return {
            "scheduled": stats.scheduled,
            "queued": stats.queued,
            "delayed": stats.delayed,
            "processing": stats.processing,
            "completed": stats.completed,
            "failed": stats.failed,
        }

    async def get_status(self, id: str) -> JobStatus | None:
        """The job's state, or ``None`` if unknown (never enqueued, cancelled or expired)."""
        record = await self.storage.get_status(self.name, check_job_id(id))
        if record is None:
            return None
        return self._status(record)

    def _status(self, record: JobRecord) -> JobStatus:
        result: Any = None
        if record.state is JobState.COMPLETED and record.result is not None:
            result = self.result_codec.decode(record.result, "result", record.job_id)
        return JobStatus(
            id=record.job_id,
            state=record.state,
            created_at=record.created_at,
            attempts=record.attempts,
            max_attempts=record.max_attempts,
            result=result,
            error=decode_error(record.error),
            finished_at=record.finished_at,
            expires_at=record.expires_at,
            run_at=record.due_at,
            priority=record.priority,
            progress=decode_progress(record.progress),
        )

    async def get_payload(self, id: str) -> P | None:
        """The job's payload as enqueued (decoded), or ``None`` when the job is unknown."""
        job_id = check_job_id(id)
        data = await self.storage.get_payload(self.name, job_id)
        if data is None:
            return None
        value: P = self.payload_codec.decode(split_trace(data)[1], "payload", job_id)
        return value

    async def get_result(self, id: str) -> R | None:
        """The stored result of a completed job, or ``None`` when missing or expired."""
        record = await self.storage.get_status(self.name, check_job_id(id))
        if record is None or record.state is not JobState.COMPLETED or record.result is None:
            return None
        value: R = self.result_codec.decode(record.result, "result", record.job_id)
        return value

    async def update_result_ttl(self, id: str, ttl: float) -> UpdateTtlResult:
        """Restart a terminal job's TTL from now.

        Raises:
            InvalidTtlError: ``ttl`` is not a finite number > 0 (nothing changes).
        """
        job_id = check_job_id(id)
        seconds = check_ttl(ttl)
        return UpdateTtlResult(await self.storage.update_result_ttl(self.name, job_id, seconds))

    async def workers(self) -> tuple[WorkerInfo, ...]:
        """The queue's live workers and stand-alone reapers, from every process, oldest
        first. A killed process disappears within about 2 s (1.5 s after its last
        refresh).

        Raises:
            StorageError: the storage failed.
        """
        records = await self.storage.list_workers(self.name)
        holder = await self.storage.lock_holder(self.name, REAPER_LOCK)
        leader = None if holder is None else holder.owner
        return tuple(
            WorkerInfo(
                id=r.worker_id,
                host=r.host,
                pid=r.pid,
                started_at=r.started_at,
                last_seen=r.last_seen,
                concurrency=r.concurrency,
                in_flight=r.in_flight,
                jobs=r.jobs,
                is_reaper_leader=r.worker_id == leader,
                kind=r.kind,
                state=r.state,
                counters=dict(r.counters),
            )
            for r in records
        )

    def events(self) -> AbstractAsyncContextManager[EventChannel]:
        """``async with queue.events() as events: async for event in events: ...``

        Delivers this queue name's :class:`JobEvent` objects from the moment the block is
        entered, from every process sharing the storage (where the backend can).
        """
        return open_event_channel(self.storage, self.name, self.result_codec)

    def skip_grace(self) -> None:
        """End the worker's shutdown grace period now (e.g. on a second SIGTERM): running
        handlers are cancelled and their jobs released, attempt not consumed. Works before
        or during the shutdown; does nothing on a producer-only queue."""
        if self.worker is not None:
            self.worker.skip_grace()

    def statistics(self) -> QueueStatistics:
        """A snapshot of this queue's worker counters (zeros for producer-only)."""
        stats = self.worker.stats if self.worker is not None else WorkerStatistics()
        return QueueStatistics(
            worker_id=self.worker_id,
            in_flight=stats.in_flight,
            claimed=stats.claimed,
            completed=stats.completed,
            retried=stats.retried,
            failed=stats.failed,
            released=stats.released,
            fenced=stats.fenced,
            lost_leases=stats.lost_leases,
            is_reaper_leader=None if self.reaper is None else self.reaper.is_leader,
            is_scheduler_leader=None if self.scheduler is None else self.scheduler.is_leader,
            force_cancelled=stats.force_cancelled,
        )


def _new_queue(storage: Storage, config: QueueConfig) -> Queue[Any, Any]:
    return Queue(
        storage=storage,
        name=config.name,
        worker_id=config.worker_id,
        max_attempts=config.max_attempts,
        result_ttl=float(config.result_ttl),
        payload_codec=TypedCodec(config.serializer, config.payload_type),
        result_codec=TypedCodec(config.serializer, config.result_type),
        metrics=config.metrics,
        tracing=config.tracing,
    )


async def serve_worker(
    storage: Storage,
    handler: Handler,
    *,
    name: str | None = None,
    concurrency: int = 1,
    max_attempts: int = 3,
    retry_delay: float | RetryPolicy = DEFAULT_RETRY_POLICY,
    visibility_timeout: float = 30.0,
    job_timeout: float | None = None,
    result_ttl: float = 3600.0,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    worker_id: str | None = None,
    after_execution: AfterExecution | None = None,
    serializer: Serializer | None = None,
    payload_type: Any = None,
    result_type: Any = None,
    reaper: bool = True,
    lock_ttl: float = 30.0,
    schedules: Iterable[Schedule] = (),
    metrics: MetricsHook | bool | None = None,
    tracing: TracingHook | bool | None = None,
    task_status: trio.TaskStatus[Queue[Any, Any]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run a worker for the queue ``name`` in the caller's nursery until cancelled::

        queue = await nursery.start(
            functools.partial(jq.serve_worker, storage, handler, name="emails", concurrency=10)
        )

    (Options go through ``functools.partial``: ``nursery.start`` keeps ``name=`` for the
    task's name.) Opens ``storage`` (reference-counted: several ``serve_worker`` and
    ``serve_reaper`` tasks, with different handlers and names, may share it) and runs the
    worker and, unless ``reaper=False``, an embedded leader-elected reaper, and with
    ``schedules`` an embedded leader-elected scheduler (``docs/scheduling.md``). Options
    and defaults are those of :func:`open_queue` (``docs/configuration.md``).

    Once the worker runs, ``task_status.started()`` is given the worker's :class:`Queue`:
    ``.statistics()``, ``.worker_id``, ``.skip_grace()``, ``.reaper``, and the producer
    methods for this queue name, usable while the task runs.

    Cancellation: cancelling the task is the graceful shutdown. The worker stops claiming,
    gives in-flight jobs ``shutdown_grace`` seconds, cancels the rest and returns them to
    the queue without consuming an attempt, stops its reaper (and scheduler, first of
    all), and closes the storage if
    this was its last user, all before the cancellation propagates out of this call.

    Raises:
        ValueError, TypeError: an option is invalid (nothing was opened), e.g.
            ``job_timeout`` with a sync handler; the message names the option.
        StorageError: the storage could not be opened.
        KeyboardInterrupt, SystemExit: raised by a handler; every job was released first
            (attempts not consumed). Raised as itself, never inside an exception group.
    """
    config = QueueConfig(
        handler=handler,
        name=name,
        concurrency=concurrency,
        max_attempts=max_attempts,
        retry_delay=retry_delay,
        visibility_timeout=visibility_timeout,
        job_timeout=job_timeout,
        result_ttl=result_ttl,
        shutdown_grace=shutdown_grace,
        worker_id=worker_id,
        after_execution=after_execution,
        serializer=serializer,
        payload_type=payload_type,
        result_type=result_type,
        reaper=reaper,
        lock_ttl=lock_ttl,
        schedules=schedules,
        metrics=metrics,
        tracing=tracing,
    )
    await worker_service(storage, config, task_status=task_status)


@trio.lowlevel.enable_ki_protection
async def worker_service(
    storage: Storage,
    config: QueueConfig,
    *,
    task_status: trio.TaskStatus[Queue[Any, Any]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """:func:`serve_worker` with its options already validated."""
    if config.handler is None:
        raise TypeError("serve_worker needs a handler (a queue without one only produces)")
    queue = _new_queue(storage, config)
    worker = queue.worker = Worker(
        storage=storage,
        ns=config.name,
        handler=config.handler,
        worker_id=config.worker_id,
        concurrency=config.concurrency,
        visibility_timeout=float(config.visibility_timeout),
        job_timeout=None if config.job_timeout is None else float(config.job_timeout),
        retry_policy=config.retry_delay,
        after_execution=config.after_execution,
        payload_codec=queue.payload_codec,
        result_codec=queue.result_codec,
        metrics=config.metrics,
        tracing=config.tracing,
    )
    reaper = queue.reaper = (
        Reaper.from_config(storage, config.reaper_config(), registers=False)
        if config.runs_reaper
        else None
    )
    scheduler = queue.scheduler = _embedded_scheduler(storage, config, registers=False)
    async with storage, open_service_nursery() as nursery:
        # Starting does no I/O; shielded, so that no cancellation lands between starting
        # the (shielded) worker, reaper and scheduler tasks and the ``try`` that stops them.
        with trio.CancelScope(shield=True):
            await nursery.start(worker.run)
            if reaper is not None:
                await nursery.start(reaper.run)
            if scheduler is not None:
                await nursery.start(scheduler.run)
            if config.metrics is not None:
                await nursery.start(config.metrics.serve, queue)
        try:
            task_status.started(queue)
            # Until cancelled, or until a handler's KeyboardInterrupt/SystemExit ends
            # worker.run (which cancels this nursery).
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if scheduler is not None:
                    await scheduler.stop()  # enqueue no more ticks
                await worker.shutdown(float(config.shutdown_grace))
                if reaper is not None:
                    await reaper.stop()


def _embedded_scheduler(
    storage: Storage, config: QueueConfig, *, registers: bool
) -> Scheduler | None:
    """The queue's scheduler, if it has schedules (built before anything opens: building
    encodes the payloads, which may fail)."""
    scheduler_config = config.scheduler_config()
    if scheduler_config is None:
        return None
    if registers:  # producer-only: next to a reaper that registers in the worker's name
        scheduler_config = attrs.evolve(scheduler_config, owner=f"{config.worker_id}~scheduler")
    return Scheduler.from_config(storage, scheduler_config, registers=registers)


@asynccontextmanager
async def open_queue(
    storage: Storage,
    handler: Handler | None = None,
    *,
    name: str | None = None,
    concurrency: int = 1,
    max_attempts: int = 3,
    retry_delay: float | RetryPolicy = DEFAULT_RETRY_POLICY,
    visibility_timeout: float = 30.0,
    job_timeout: float | None = None,
    result_ttl: float = 3600.0,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    worker_id: str | None = None,
    after_execution: AfterExecution | None = None,
    serializer: Serializer | None = None,
    payload_type: Any = None,
    result_type: Any = None,
    reaper: bool | None = None,
    lock_ttl: float = 30.0,
    schedules: Iterable[Schedule] = (),
    metrics: MetricsHook | bool | None = None,
    tracing: TracingHook | bool | None = None,
) -> AsyncIterator[Queue[Any, Any]]:
    """Open a queue on ``storage``; with a ``handler``, run a worker while the block runs.

    The worker is a :func:`serve_worker` task in a nursery that this block owns; the
    yielded :class:`Queue` is the one it started with. See ``docs/configuration.md`` for
    every option and its default. On exit (normal, by exception or by outside
    cancellation) the worker stops claiming, gives in-flight jobs ``shutdown_grace``
    seconds, cancels the rest and returns them to the queue without consuming an attempt,
    then the storage is closed if this was its last user.

    With ``schedules`` (:class:`CronSchedule`/:class:`IntervalSchedule` values), the queue
    also runs a leader-elected scheduler that enqueues each tick exactly once however many
    queues run them (``docs/scheduling.md``); it stops first on exit.

    ``metrics`` (a :class:`trio_jobqueue.metrics.Metrics`, or ``True`` for the default
    registry's) counts the queue's outcomes in Prometheus metrics; ``tracing`` (a
    :class:`trio_jobqueue.tracing.Tracing`, or ``True`` for the global tracer provider)
    makes OpenTelemetry spans of its enqueues and handler runs (``docs/metrics.md``).

    Raises:
        ValueError, TypeError: an option is invalid (nothing is opened), e.g.
            ``job_timeout`` with a sync handler, or two schedules with one id.
        KeyboardInterrupt, SystemExit: raised by a handler; the worker released its jobs
            (attempts not consumed) and stopped.
    """
    config = QueueConfig(
        handler=handler,
        name=name,
        concurrency=concurrency,
        max_attempts=max_attempts,
        retry_delay=retry_delay,
        visibility_timeout=visibility_timeout,
        job_timeout=job_timeout,
        result_ttl=result_ttl,
        shutdown_grace=shutdown_grace,
        worker_id=worker_id,
        after_execution=after_execution,
        serializer=serializer,
        payload_type=payload_type,
        result_type=result_type,
        reaper=reaper,
        lock_ttl=lock_ttl,
        schedules=schedules,
        metrics=metrics,
        tracing=tracing,
    )
    scheduler = (
        None if config.handler is not None else _embedded_scheduler(storage, config, registers=True)
    )
    async with storage, open_service_nursery() as nursery:
        if config.handler is not None:
            queue: Queue[Any, Any] = await nursery.start(worker_service, storage, config)
        else:
            queue = _new_queue(storage, config)
            if config.runs_reaper:
                queue.reaper = await nursery.start(reaper_service, storage, config.reaper_config())
            if scheduler is not None:
                queue.scheduler = scheduler
                await nursery.start(run_service, storage, scheduler)
            if config.metrics is not None:
                await nursery.start(config.metrics.serve, queue)
        try:
            yield queue
        finally:
            # Each service shuts down gracefully before it returns (see serve_worker).
            nursery.cancel_scope.cancel()
