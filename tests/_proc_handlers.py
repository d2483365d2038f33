"""Handlers run by worker processes in the process tests (``_proc_handlers:record``).

Every execution appends one line ``<job id> <attempt>`` to ``$JQ_TEST_RUNS/<pid>.log``
with ``O_APPEND`` (one ``write``: atomic, survives SIGKILL of the writer right after), so
the test can count executions per job and per process.
"""

from __future__ import annotations

import os
import time
from typing import Any

import trio

from trio_jobqueue import Job


def _note(job: Job[Any]) -> None:
    path = os.path.join(os.environ["JQ_TEST_RUNS"], f"{os.getpid()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{job.id} {job.attempt}\n".encode())
    finally:
        os.close(fd)


def _sleep_of(job: Job[Any]) -> float:
    """``payload["sleep"]``; from the second attempt on ``payload["retry_sleep"]`` if
    given (a job that holds its first worker long and then finishes fast)."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    if job.attempt > 1 and "retry_sleep" in payload:
        return float(payload["retry_sleep"])
    return float(payload.get("sleep", 0.0))


async def record(job: Job[Any]) -> dict[str, Any]:
    """Note the execution, sleep (see :func:`_sleep_of`), return who ran it."""
    _note(job)
    await trio.sleep(_sleep_of(job))
    if isinstance(job.payload, dict) and job.payload.get("fail"):
        raise ValueError("asked to fail")
    return {"pid": os.getpid(), "attempt": job.attempt}


def record_sync(job: Job[Any]) -> dict[str, Any]:
    """The same as :func:`record`, as a plain function (run in a worker thread)."""
    _note(job)
    time.sleep(_sleep_of(job))
    return {"pid": os.getpid(), "attempt": job.attempt}


not_callable = 42
