"""Frozen value types shared by the public API and the storages."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import attrs

__all__ = [
    "CancelResult",
    "CancelStatus",
    "DeleteResult",
    "DeleteStatus",
    "EnqueueResult",
    "EnqueueStatus",
    "EventKind",
    "ExecutionContext",
    "Job",
    "JobError",
    "JobEvent",
    "JobPage",
    "JobSpec",
    "JobState",
    "JobStatus",
    "RetryResult",
    "RetryStatus",
    "UpdateTtlResult",
    "UpdateTtlStatus",
    "WorkerInfo",
]

P = TypeVar("P")


class JobState(enum.StrEnum):
    """Where a job is in its lifecycle (see ``docs/guarantees.md``)."""

    SCHEDULED = "scheduled"
    """Enqueued with a ``delay`` or ``run_at`` in the future: not claimable before then."""
    QUEUED = "queued"
    """Waiting in the queue for a worker."""
    PROCESSING = "processing"
    """Claimed by a worker that holds a lease on it."""
    FAILING = "failing"
    """An attempt failed (or stalled); waiting for its retry, possibly delayed."""
    COMPLETED = "completed"
    """The handler returned; the result is kept for the job's TTL."""
    FAILED = "failed"
    """The last attempt failed; the error is kept for the job's TTL."""

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED)


class EnqueueStatus(enum.StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    """Accepted for a time in the future (``delay`` / ``run_at``)."""
    DUPLICATE = "duplicate"
    COMPLETED = "completed"


class CancelStatus(enum.StrEnum):
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    PROCESSING = "processing"
    """A worker is running it: nothing changed (without ``force``)."""
    COMPLETED = "completed"
    CANCELLING = "cancelling"
    """``cancel(id, force=True)`` of a running job: the job is removed at once (its
    attempt is fenced) and the worker holding it cancels the handler."""


class RetryStatus(enum.StrEnum):
    RETRIED = "retried"
    """The failed job is queued again with a fresh attempt budget."""
    NOT_FOUND = "not_found"
    NOT_FAILED = "not_failed"
    """The job exists but is not ``failed``: nothing changed."""


class DeleteStatus(enum.StrEnum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"
    PROCESSING = "processing"
    """A worker is running it: nothing changed (cancel it with ``force=True``)."""


class UpdateTtlStatus(enum.StrEnum):
    UPDATED = "updated"
    NOT_FOUND = "not_found"
    NOT_TERMINAL = "not_terminal"
    MISSING_PAYLOAD = "missing_payload"


class EventKind(enum.StrEnum):
    ENQUEUED = "enqueued"
    STARTED = "started"
    COMPLETED = "completed"
    FAILING = "failing"
    FAILED = "failed"
    REQUEUED = "requeued"
    CANCELLED = "cancelled"
    STALLED = "stalled"
    PROGRESS = "progress"
    """A running handler reported progress (``JobEvent.progress``)."""
    MISSED = "missed"
    """Not a job's event: a marker in an event stream where events were lost (the
    subscriber fell behind, or the storage lost its event feed). ``JobEvent.missed``
    counts them (0: an unknown number). Re-read any state derived from events."""


@attrs.frozen
class JobError:
    """A failure, as stored and reported. Always JSON-encodable."""

    type: str
    """The exception's class name (``"ValueError"``, ``"JobTimeoutError"``, ``"Stalled"``)."""
    message: str
    """``str(exception)``."""
    traceback: str | None = None
    """The formatted traceback of the failing attempt, when there was one."""
    details: dict[str, Any] | None = None
    """Optional JSON-compatible extra data."""


@attrs.frozen
class Job(Generic[P]):
    """What a handler receives."""

    id: str
    """The job id given at enqueue."""
    payload: P
    """The decoded payload (typed when the queue has ``payload_type``)."""
    attempt: int
    """1 on the first run, 2 on the first retry, ..."""
    max_attempts: int
    """Total runs allowed for this job."""
    created_at: float
    """Epoch seconds of the accepted enqueue."""
    worker_id: str
    """Id of the worker running this attempt."""
    _reporter: Callable[[Any], Awaitable[bool]] | None = attrs.field(
        default=None, kw_only=True, eq=False, repr=False, alias="reporter"
    )
    """Set by the worker: stores this attempt's progress (see :meth:`report_progress`)."""

    async def report_progress(self, value: float | dict[str, Any]) -> bool:
        """Report how far this attempt got: a float in ``[0, 1]`` or a small
        JSON-encodable dict (at most :data:`~trio_jobqueue.MAX_PROGRESS_BYTES` encoded).

        Stored on the job (``JobStatus.progress``) and emitted as a ``progress`` event,
        fenced by this attempt's claim. Rate-limited: calls closer together than
        ``PROGRESS_INTERVAL`` (0.1 s) are coalesced into one storage write of the latest
        value, made when the interval has passed (or before the outcome is stored), so a
        tight loop costs at most one write per interval and the last value always lands.

        Returns:
            ``True`` when the value was stored or is queued for the next write;
            ``False`` when this attempt no longer owns the job (its lease was taken
            over, or the job was force-cancelled): nothing was written, and every later
            call returns ``False`` too. ``False`` also for a ``Job`` not run by a worker.

        Raises:
            ValueError: ``value`` is not a finite float in ``[0, 1]`` (bools excluded) or a
                dict that encodes to JSON within the size limit; nothing is written.
        """
        from ._progress import encode_progress

        data = encode_progress(value)
        if self._reporter is None:
            return False
        return await self._reporter(data)


@attrs.frozen
class EnqueueResult:
    """What ``Queue.enqueue`` did."""

    status: EnqueueStatus
    """``queued``, ``scheduled`` (accepted for a future ``run_at``), ``duplicate`` or
    ``completed``."""
    existing_state: JobState | None = None
    """For duplicates: the state of the job that already holds the id."""
    result: Any = None
    """For ``completed``: the cached result."""


@attrs.frozen
class JobSpec(Generic[P]):
    """One job of ``Queue.enqueue_many``, with the options of ``Queue.enqueue``."""

    id: str
    payload: P
    delay: float | None = None
    run_at: Any = None
    """Epoch seconds or an aware ``datetime``."""
    priority: int = 0
    max_attempts: int | None = None
    result_ttl: float | None = None


@attrs.frozen
class JobPage:
    """One page of ``Queue.list_jobs``."""

    jobs: tuple[JobStatus, ...]
    cursor: str | None = None
    """Pass it as ``cursor=`` for the next page; ``None``: this was the last one."""


@attrs.frozen
class CancelResult:
    status: CancelStatus


@attrs.frozen
class RetryResult:
    """What ``Queue.retry`` did."""

    status: RetryStatus


@attrs.frozen
class DeleteResult:
    """What ``Queue.delete`` did."""

    status: DeleteStatus


@attrs.frozen
class UpdateTtlResult:
    status: UpdateTtlStatus


@attrs.frozen
class JobStatus:
    """A snapshot of one job."""

    id: str
    state: JobState
    created_at: float
    """Epoch seconds of the accepted enqueue."""
    attempts: int
    """Attempts started so far."""
    max_attempts: int
    result: Any = None
    """The result, for completed jobs."""
    error: JobError | None = None
    """The last error (failing or failed jobs)."""
    finished_at: float | None = None
    """Epoch seconds when the job became terminal."""
    expires_at: float | None = None
    """Epoch seconds when a terminal job (and its dedup entry) will be forgotten."""
    run_at: float | None = None
    """Epoch seconds when a ``scheduled`` job (or a ``failing`` one waiting out a retry
    delay) becomes claimable; ``None`` otherwise."""
    priority: int = 0
    """Higher runs first (see ``docs/scheduling.md``)."""
    progress: float | dict[str, Any] | None = None
    """The last value a handler of this job reported with ``Job.report_progress`` (any
    attempt; kept after the job finished), ``None`` if none did."""


@attrs.frozen
class JobEvent:
    """One lifecycle event, as delivered by ``Queue.events()``."""

    kind: EventKind
    job_id: str
    attempt: int
    """The attempt the event is about (0 for ``enqueued`` and ``cancelled``)."""
    result: Any = None
    error: JobError | None = None
    missed: int = 0
    """For ``missed`` markers: how many events were lost here (0: an unknown number)."""
    progress: float | dict[str, Any] | None = None
    """For ``progress`` events: the value reported."""


@attrs.define(kw_only=True)
class ExecutionContext:
    """Passed to ``after_execution``; ``result``, ``error`` and ``ttl`` may be replaced."""

    job_id: str
    payload: Any
    attempt: int
    max_attempts: int
    created_at: float
    status: str
    """``"completed"`` or ``"failed"``."""
    result: Any
    error: JobError | None
    ttl: float
    """Seconds to keep the result/error and the dedup entry."""
    worker_id: str
    started_at: float
    finished_at: float
    duration: float


@attrs.frozen
class WorkerInfo:
    """A live worker (or stand-alone reaper) of a queue, as ``Queue.workers()`` lists it."""

    id: str
    host: str
    pid: int
    started_at: float
    """Epoch seconds when it started."""
    last_seen: float
    """Epoch seconds (storage clock) of its last registration refresh (every 0.5 s)."""
    concurrency: int
    in_flight: int
    jobs: tuple[str, ...]
    """Ids of the jobs it is running (at most 256 listed; ``in_flight`` is exact)."""
    is_reaper_leader: bool
    """Whether it holds the queue's reaper lock now."""
    kind: str = "worker"
    """``"worker"``, or ``"reaper"`` for a stand-alone reaper."""
    state: str = "running"
    """``"running"``, or ``"stopping"`` during its shutdown grace period."""
    counters: dict[str, int] = attrs.field(factory=dict, hash=False)
    """Outcome counters since it started (``completed``, ``failed``, ``fenced``, ...)."""
