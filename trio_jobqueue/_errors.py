"""The exception hierarchy: one base class, :class:`JobQueueError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._types import EnqueueResult, JobError

__all__ = [
    "EnqueueManyError",
    "InvalidJobError",
    "InvalidTtlError",
    "JobCancelledError",
    "JobFailedError",
    "JobQueueError",
    "JobTimeoutError",
    "NotReplicatedError",
    "PayloadDecodeError",
    "SerializationError",
    "StorageError",
    "WaitTimeoutError",
]


class JobQueueError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidJobError(JobQueueError, ValueError):
    """A job id, payload or option was rejected before anything was written."""


class InvalidTtlError(InvalidJobError):
    """A TTL was not a number of seconds greater than zero and at most 1e15.

    The message names the rejected value.
    """

    def __init__(self, value: object, what: str = "ttl") -> None:
        super().__init__(f"invalid {what} {value!r}: expected a number of seconds > 0 and <= 1e15")
        self.value = value


class SerializationError(InvalidJobError):
    """A payload or result could not be encoded or decoded by the serializer."""


class PayloadDecodeError(SerializationError):
    """A claimed job's stored payload could not be decoded.

    Recorded as the attempt's failure (``JobError.type == "PayloadDecodeError"``) and never
    retried: the same bytes cannot decode better next time, so the job fails at once.
    """


class StorageError(JobQueueError):
    """The storage backend failed; raised ``from`` the driver's own exception."""


class EnqueueManyError(StorageError):
    """``Queue.enqueue_many`` failed part way: the storage failed on one chunk.

    The jobs written are always a prefix of the list, in whole chunks: ``results`` holds
    the results of the chunks written before the failing one (``len(results)`` jobs, in
    order). When the server refused the chunk, nothing from it on was written. When the
    connection was lost for good, the failing chunk, and chunks in flight behind it, may
    or may not have been written (still a prefix). Enqueueing the list again is safe:
    the jobs already accepted come back as duplicates. Raised ``from`` the chunk's
    :class:`StorageError`.
    """

    def __init__(self, message: str, results: list[EnqueueResult]) -> None:
        super().__init__(message)
        self.results = results


class NotReplicatedError(StorageError):
    """A durable enqueue (``RedisStorage(durable_enqueue=N)``) was written on the master,
    but fewer than ``N`` replicas confirmed it within ``durable_timeout``.

    The job is there and will run; it may or may not survive a failover that happens
    before a replica has it. Enqueueing the same id again is safe (the first enqueue
    wins: the repeat comes back as a duplicate) and waits for the replicas again.
    ``wanted`` and ``confirmed`` are the replica counts asked for and reached.
    """

    def __init__(self, message: str, *, wanted: int, confirmed: int) -> None:
        super().__init__(message)
        self.wanted = wanted
        self.confirmed = confirmed


class JobFailedError(JobQueueError):
    """The job ended in the ``failed`` state (raised by ``enqueue_and_wait``)."""

    def __init__(self, job_id: str, error: JobError) -> None:
        super().__init__(f"job {job_id!r} failed: {error.type}: {error.message}")
        self.job_id = job_id
        self.error = error


class JobTimeoutError(JobQueueError):
    """A handler ran longer than the worker's ``job_timeout``.

    Recorded as the attempt's failure (``JobError.type == "JobTimeoutError"``); the job is
    retried while it has attempts left, like any other failure.
    """


class JobCancelledError(JobQueueError):
    """The awaited job was cancelled (or forgotten) before it finished."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} was cancelled or expired while being awaited")
        self.job_id = job_id


class WaitTimeoutError(JobQueueError, TimeoutError):
    """``enqueue_and_wait`` gave up waiting; the job itself keeps running."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(f"no result for job {job_id!r} within {timeout} s")
        self.job_id = job_id
        self.timeout = timeout
