"""trio-jobqueue: a reliable job queue for trio applications.

This module only re-exports; the public surface is pinned by ``tests/test_public_api.py``.
"""

from ._errors import EnqueueManyError as EnqueueManyError
from ._errors import InvalidJobError as InvalidJobError
from ._errors import InvalidTtlError as InvalidTtlError
from ._errors import JobCancelledError as JobCancelledError
from ._errors import JobFailedError as JobFailedError
from ._errors import JobQueueError as JobQueueError
from ._errors import JobTimeoutError as JobTimeoutError
from ._errors import PayloadDecodeError as PayloadDecodeError
from ._errors import SerializationError as SerializationError
from ._errors import StorageError as StorageError
from ._errors import WaitTimeoutError as WaitTimeoutError
from ._events import EventChannel as EventChannel
from ._ids import content_id as content_id
from ._ids import new_id as new_id
from ._progress import MAX_PROGRESS_BYTES as MAX_PROGRESS_BYTES
from ._queue import Queue as Queue
from ._queue import QueueStatistics as QueueStatistics
from ._queue import open_queue as open_queue
from ._queue import serve_worker as serve_worker
from ._reaper import Reaper as Reaper
from ._reaper import ReaperStatistics as ReaperStatistics
from ._reaper import open_reaper as open_reaper
from ._reaper import serve_reaper as serve_reaper
from ._retry import ExponentialBackoff as ExponentialBackoff
from ._retry import FixedDelay as FixedDelay
from ._retry import RetryPolicy as RetryPolicy
from ._schedule import CronSchedule as CronSchedule
from ._schedule import IntervalSchedule as IntervalSchedule
from ._schedule import Misfire as Misfire
from ._scheduler import Scheduler as Scheduler
from ._scheduler import SchedulerStatistics as SchedulerStatistics
from ._scheduler import open_scheduler as open_scheduler
from ._scheduler import serve_scheduler as serve_scheduler
from ._serde import BytesSerializer as BytesSerializer
from ._serde import JsonSerializer as JsonSerializer
from ._serde import Serializer as Serializer
from ._types import CancelResult as CancelResult
from ._types import CancelStatus as CancelStatus
from ._types import DeleteResult as DeleteResult
from ._types import DeleteStatus as DeleteStatus
from ._types import EnqueueResult as EnqueueResult
from ._types import EnqueueStatus as EnqueueStatus
from ._types import EventKind as EventKind
from ._types import ExecutionContext as ExecutionContext
from ._types import Job as Job
from ._types import JobError as JobError
from ._types import JobEvent as JobEvent
from ._types import JobPage as JobPage
from ._types import JobSpec as JobSpec
from ._types import JobState as JobState
from ._types import JobStatus as JobStatus
from ._types import RetryResult as RetryResult
from ._types import RetryStatus as RetryStatus
from ._types import UpdateTtlResult as UpdateTtlResult
from ._types import UpdateTtlStatus as UpdateTtlStatus
from ._types import WorkerInfo as WorkerInfo
from ._validate import MAX_JOB_ID_LENGTH as MAX_JOB_ID_LENGTH
from .storage import MemoryStorage as MemoryStorage
from .storage import Storage as Storage
from .storage import __getattr__ as _storage_getattr
from .storage import storage_from_url as storage_from_url

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # RedisStorage and FileStorage load lazily (their extras may be missing).
    if name in ("RedisStorage", "FileStorage"):
        return _storage_getattr(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
