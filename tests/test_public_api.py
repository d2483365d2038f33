"""Pins the public surface of ``trio_jobqueue`` (SPEC §2)."""

from __future__ import annotations

import inspect

import trio_jobqueue as jq

EXPECTED = {
    "BytesSerializer",
    "CancelResult",
    "CancelStatus",
    "CronSchedule",
    "EnqueueResult",
    "EnqueueManyError",
    "EnqueueStatus",
    "EventChannel",
    "EventKind",
    "ExecutionContext",
    "ExponentialBackoff",
    "FixedDelay",
    "IntervalSchedule",
    "InvalidJobError",
    "InvalidTtlError",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobEvent",
    "JobFailedError",
    "JobQueueError",
    "JobState",
    "JobStatus",
    "JobTimeoutError",
    "JsonSerializer",
    "MAX_JOB_ID_LENGTH",
    "MAX_PROGRESS_BYTES",
    "MemoryStorage",
    "Misfire",
    "PayloadDecodeError",
    "Queue",
    "QueueStatistics",
    "Reaper",
    "ReaperStatistics",
    "RetryPolicy",
    "Scheduler",
    "SchedulerStatistics",
    "SerializationError",
    "Serializer",
    "Storage",
    "StorageError",
    "UpdateTtlResult",
    "UpdateTtlStatus",
    "WaitTimeoutError",
    "WorkerInfo",
    "open_queue",
    "open_reaper",
    "open_scheduler",
    "serve_reaper",
    "serve_scheduler",
    "serve_worker",
    "storage_from_url",
    "DeleteResult",
    "DeleteStatus",
    "RetryResult",
    "RetryStatus",
    "content_id",
    "new_id",
    "JobSpec",
    "JobPage",
}


def test_public_names_are_pinned() -> None:
    """The package exports exactly the documented names (plus lazy backends)."""
    public = {n for n, v in vars(jq).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == EXPECTED
    assert jq.RedisStorage.__name__ == "RedisStorage"
    assert jq.FileStorage.__name__ == "FileStorage"


def test_open_queue_signature() -> None:
    """open_queue takes the SPEC §2 options with their documented defaults."""
    params = inspect.signature(jq.open_queue).parameters
    defaults = {name: p.default for name, p in params.items()}
    assert list(params)[:2] == ["storage", "handler"]
    for name, value in {
        "handler": None,
        "name": None,
        "concurrency": 1,
        "max_attempts": 3,
        "visibility_timeout": 30.0,
        "job_timeout": None,
        "result_ttl": 3600.0,
        "worker_id": None,
        "after_execution": None,
        "serializer": None,
        "payload_type": None,
        "result_type": None,
    }.items():
        assert defaults[name] == value, name
    assert {"retry_delay", "shutdown_grace", "reaper"} <= set(params)
    reaper = inspect.signature(jq.open_reaper).parameters
    assert {"name", "visibility_timeout", "leader_election", "lock_ttl"} <= set(reaper)


def test_serve_signatures_follow_open() -> None:
    """serve_worker takes open_queue's options with the same defaults (but a required
    handler and the reaper on) plus task_status; serve_reaper is open_reaper's twin."""
    opened = inspect.signature(jq.open_queue).parameters
    served = inspect.signature(jq.serve_worker).parameters
    assert list(served) == [*opened, "task_status"]
    for name, param in opened.items():
        assert served[name].kind == param.kind, name
        if name not in ("handler", "reaper"):
            assert served[name].default == param.default, name
    assert served["handler"].default is inspect.Parameter.empty
    assert served["reaper"].default is True
    reaper = inspect.signature(jq.open_reaper).parameters
    served = inspect.signature(jq.serve_reaper).parameters
    assert list(served) == [*reaper, "task_status"]
    assert all(served[name].default == param.default for name, param in reaper.items())


def test_scheduler_signatures() -> None:
    """serve_scheduler is open_scheduler's twin (plus task_status); open_queue and
    serve_worker take ``schedules`` (default: none)."""
    opened = inspect.signature(jq.open_scheduler).parameters
    served = inspect.signature(jq.serve_scheduler).parameters
    assert list(opened)[:2] == ["storage", "schedules"]
    assert list(served) == [*opened, "task_status"]
    assert all(served[name].default == param.default for name, param in opened.items())
    assert {"name", "max_attempts", "result_ttl", "lock_ttl", "owner"} <= set(opened)
    assert inspect.signature(jq.open_queue).parameters["schedules"].default == ()
    assert inspect.signature(jq.serve_worker).parameters["schedules"].default == ()


def test_errors_hierarchy() -> None:
    """One base error; WaitTimeoutError is a TimeoutError; bad input is a ValueError."""
    for cls in (
        jq.JobFailedError,
        jq.WaitTimeoutError,
        jq.StorageError,
        jq.EnqueueManyError,
        jq.InvalidJobError,
        jq.InvalidTtlError,
        jq.SerializationError,
        jq.JobCancelledError,
        jq.JobTimeoutError,
        jq.PayloadDecodeError,
    ):
        assert issubclass(cls, jq.JobQueueError)
    assert issubclass(jq.WaitTimeoutError, TimeoutError)
    assert issubclass(jq.InvalidJobError, ValueError)
    assert issubclass(jq.InvalidTtlError, ValueError)
    assert issubclass(jq.PayloadDecodeError, jq.SerializationError)
    assert jq.JobState.QUEUED == "queued" and jq.EnqueueStatus.DUPLICATE == "duplicate"
    assert {k.value for k in jq.EventKind} == {
        "enqueued",
        "started",
        "completed",
        "failing",
        "failed",
        "requeued",
        "cancelled",
        "stalled",
        "progress",
        "missed",
    }
