"""``open_queue()`` and :class:`Queue`: the producer API; owns the worker and reaper."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, TypeVar

import attrs
import trio

from ._errors import JobCancelledError, JobFailedError, JobQueueError, WaitTimeoutError
from ._events import EventChannel, open_event_channel
from ._reaper import DEFAULT_NAME, Reaper, default_worker_id, make_reaper
from ._retry import DEFAULT_RETRY_POLICY, RetryPolicy, as_retry_policy
from ._serde import JsonSerializer, Serializer, TypedCodec, decode_error
from ._types import (
    CancelResult,
    EnqueueResult,
    EnqueueStatus,
    EventKind,
    JobError,
    JobState,
    JobStatus,
    UpdateTtlResult,
)
from ._util import open_service_nursery
from ._validate import check_duration, check_job_id, check_max_attempts, check_name, check_ttl
from ._worker import AfterExecution, Handler, Worker, WorkerStatistics, is_async_callable
from .storage import JobWatch, Storage

__all__ = ["Queue", "QueueStatistics", "open_queue"]

P = TypeVar("P")
R = TypeVar("R")

DEFAULT_SHUTDOWN_GRACE = 10.0


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


@attrs.define(eq=False, kw_only=True)
class Queue(Generic[P, R]):
    """The handle ``open_queue`` yields. All methods are async and cancellable; a
    cancelled call either took effect fully or not at all."""

    storage: Storage
    name: str
    worker_id: str
    max_attempts: int
    result_ttl: float
    payload_codec: TypedCodec
    result_codec: TypedCodec
    worker: Worker | None = None
    reaper: Reaper | None = None

    # -- producing -------------------------------------------------------------------

    async def enqueue(
        self,
        id: str,
        payload: P,
        *,
        max_attempts: int | None = None,
        result_ttl: float | None = None,
    ) -> EnqueueResult:
        """Add job ``id`` unless the id is taken (dedup: the first enqueue wins).

        Returns:
            ``EnqueueResult`` with status ``queued``, ``duplicate`` (with
            ``existing_state``) or ``completed`` (with the cached ``result``).

        Raises:
            InvalidJobError: bad id, ``max_attempts`` or an unencodable payload; nothing
                was written.
            InvalidTtlError: ``result_ttl`` is not a finite number > 0.
            StorageError: the storage failed.
        """
        job_id, data, attempts, ttl = self._prepare(id, payload, max_attempts, result_ttl)
        outcome = await self.storage.enqueue(
            self.name, job_id, data, max_attempts=attempts, result_ttl=ttl
        )
        result = None
        if outcome.status is EnqueueStatus.COMPLETED and outcome.result is not None:
            result = self.result_codec.decode(outcome.result, "result", job_id)
        return EnqueueResult(
            status=EnqueueStatus(outcome.status),
            existing_state=outcome.existing_state,
            result=result,
        )

    def _prepare(
        self, id: object, payload: P, max_attempts: int | None, result_ttl: float | None
    ) -> tuple[str, bytes, int, float]:
        job_id = check_job_id(id)
        attempts = check_max_attempts(
            max_attempts if max_attempts is not None else self.max_attempts
        )
        ttl = check_ttl(result_ttl if result_ttl is not None else self.result_ttl, "result_ttl")
        data = self.payload_codec.encode(payload, "payload", job_id)
        return job_id, data, attempts, ttl

    async def enqueue_and_wait(
        self,
        id: str,
        payload: P,
        *,
        timeout: float = 30.0,
        max_attempts: int | None = None,
        result_ttl: float | None = None,
    ) -> R:
        """Enqueue (or join) job ``id`` and wait for its result.

        Never misses a completion that happens between enqueue and wait; returns a cached
        result or raises a stored failure at once; the handler runs once however many
        callers wait on one id. On timeout the job keeps running.

        Raises:
            JobFailedError: the job failed (``.error`` holds the last error).
            WaitTimeoutError: no outcome within ``timeout`` seconds.
            JobCancelledError: the job was cancelled (or expired) while awaited.
        """
        wait = math.inf if timeout == math.inf else check_duration(timeout, "timeout")
        job_id, data, attempts, ttl = self._prepare(id, payload, max_attempts, result_ttl)
        deadline = trio.current_time() + wait
        # The timeout bounds only the waiting: the watch and the enqueue always run to
        # completion (or raise StorageError), so a WaitTimeoutError means the job exists.
        async with self.storage.watch_job(self.name, job_id) as watch:
            outcome = await self.storage.enqueue(
                self.name, job_id, data, max_attempts=attempts, result_ttl=ttl
            )
            if outcome.status is EnqueueStatus.COMPLETED and outcome.result is not None:
                value: R = self.result_codec.decode(outcome.result, "result", job_id)
                return value
            with trio.move_on_at(deadline):
                # A job we just queued cannot be terminal yet, and the watch was open
                # before the enqueue: its outcome will arrive through the watch. A
                # duplicate may already be finished, so read its state first.
                return await self._wait_for(
                    job_id, watch, outcome.status is not EnqueueStatus.QUEUED
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

    async def cancel(self, id: str) -> CancelResult:
        """Remove a queued or failing (waiting to retry) job; its id becomes free.

        A ``processing`` job is not interrupted: the status says so.
        """
        status = await self.storage.cancel(self.name, check_job_id(id))
        return CancelResult(status)

    async def get_status(self, id: str) -> JobStatus | None:
        """The job's state, or ``None`` if unknown (never enqueued, cancelled or expired)."""
        record = await self.storage.get_status(self.name, check_job_id(id))
        if record is None:
            return None
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
        )

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

    def events(self) -> AbstractAsyncContextManager[EventChannel]:
        """``async with queue.events() as events: async for event in events: ...``

        Delivers this queue name's :class:`JobEvent` objects from the moment the block is
        entered, from every process sharing the storage (where the backend can).
        """
        return open_event_channel(self.storage, self.name, self.result_codec)

    def statistics(self) -> QueueStatistics:
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
        )


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
) -> AsyncIterator[Queue[Any, Any]]:
    """Open a queue on ``storage``; with a ``handler``, run a worker while the block runs.

    See ``docs/configuration.md`` for every option and its default. On exit (normal, by
    exception or by outside cancellation) the worker stops claiming, gives in-flight jobs
    ``shutdown_grace`` seconds, cancels the rest and returns them to the queue without
    consuming an attempt, then closes the storage if this was its last user.

    Raises:
        ValueError: an option is invalid (nothing is opened), e.g. ``job_timeout`` with a
            sync handler.
        KeyboardInterrupt, SystemExit: raised by a handler; the worker released its jobs
            (attempts not consumed) and stopped.
    """
    if handler is not None and not callable(handler):
        raise TypeError(f"handler must be callable, not {handler!r}")
    ns = check_name(name if name is not None else DEFAULT_NAME)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, not {concurrency!r}")
    attempts = check_max_attempts(max_attempts)
    policy = as_retry_policy(retry_delay)
    vt = check_ttl(visibility_timeout, "visibility_timeout")
    timeout = None if job_timeout is None else check_ttl(job_timeout, "job_timeout")
    if timeout is not None and handler is not None and not is_async_callable(handler):
        raise ValueError(
            "job_timeout needs an async handler: a sync handler runs in a thread, which "
            "cannot be interrupted (write the handler as `async def`, or drop job_timeout)"
        )
    ttl = check_ttl(result_ttl, "result_ttl")
    grace = check_duration(shutdown_grace, "shutdown_grace")
    if after_execution is not None and not callable(after_execution):
        raise TypeError("after_execution must be callable")
    chosen = serializer if serializer is not None else JsonSerializer()
    if not isinstance(chosen, Serializer):
        raise TypeError("serializer must have dumps(value) -> bytes and loads(bytes)")
    wid = worker_id if worker_id is not None else default_worker_id()
    if not isinstance(wid, str) or not wid:
        raise ValueError(f"worker_id must be a non-empty str, not {worker_id!r}")
    run_reaper = handler is not None if reaper is None else bool(reaper)

    queue: Queue[Any, Any] = Queue(
        storage=storage,
        name=ns,
        worker_id=wid,
        max_attempts=attempts,
        result_ttl=ttl,
        payload_codec=TypedCodec(chosen, payload_type),
        result_codec=TypedCodec(chosen, result_type),
    )
    if handler is not None:
        queue.worker = Worker(
            storage=storage,
            ns=ns,
            handler=handler,
            worker_id=wid,
            concurrency=concurrency,
            visibility_timeout=vt,
            job_timeout=timeout,
            retry_policy=policy,
            after_execution=after_execution,
            payload_codec=queue.payload_codec,
            result_codec=queue.result_codec,
        )
    if run_reaper:
        queue.reaper = make_reaper(
            storage,
            name=ns,
            visibility_timeout=vt,
            leader_election=True,
            lock_ttl=lock_ttl,
            interval=None,
            owner=wid,
        )
    async with storage, open_service_nursery() as nursery:
        # Start-up does no I/O; shielding it means a cancellation can never land between
        # starting a (shielded) worker and the ``try`` that shuts it down.
        with trio.CancelScope(shield=True):
            if queue.worker is not None:
                await nursery.start(queue.worker.run)
            if queue.reaper is not None:
                await nursery.start(queue.reaper.run)
        try:
            yield queue
        finally:
            with trio.CancelScope(shield=True):
                if queue.worker is not None:
                    await queue.worker.shutdown(grace)
                if queue.reaper is not None:
                    await queue.reaper.stop()
