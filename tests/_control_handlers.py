"""Handlers of the force-cancel and progress process tests (``_control_handlers:hold``).

Every execution appends ``<job id> <attempt>`` to ``$JQ_TEST_RUNS/<pid>.log`` (as
``_proc_handlers`` does, so ``WorkerPool.runs_per_job`` counts it); a handler that sees
``trio.Cancelled`` appends ``<job id> <wall time>`` to ``$JQ_TEST_RUNS/cancelled.txt``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import trio
from _proc_handlers import _note

from trio_jobqueue import Job


def _append(name: str, line: str) -> None:
    path = os.path.join(os.environ["JQ_TEST_RUNS"], name)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def hold(job: Job[dict[str, Any]]) -> dict[str, Any]:
    """Report ``payload["progress"]`` (if any), then sleep ``payload["hold"]`` seconds;
    note a cancellation with its time."""
    _note(job)
    if "progress" in job.payload:
        assert await job.report_progress(job.payload["progress"])
    try:
        await trio.sleep(float(job.payload.get("hold", 0.0)))
    except trio.Cancelled:
        _append("cancelled.txt", f"{job.id} {time.time()!r}")
        raise
    return {"pid": os.getpid()}
