"""No lost wake-ups: an idle worker starts every job within milliseconds of its
enqueue, in the same process and across processes, on every backend. A missed wake-up
would show as a job that waits for the claim's timeout (made 60 s here where it can be)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _proc_harness import WorkerPool

import trio_jobqueue as jq
from trio_jobqueue import _worker
from trio_jobqueue.storage import Storage
from trio_jobqueue.storage import file as file_backend

JOBS = 200
LIMIT = 2.0
"""No job may wait this long: far above a normal start (ms), far below a claim timeout."""


def _report(what: str, delays: list[float]) -> None:
    print(
        f"{what}: {len(delays)} jobs, enqueue->start p50 {statistics.median(delays) * 1e3:.2f}"
        f" ms, max {max(delays) * 1e3:.2f} ms"
    )


async def test_back_to_back_jobs_never_wait_for_a_claim_timeout(
    storage_factory: Callable[[], Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 back-to-back enqueue_and_wait calls with one idle worker in the same process:
    every job starts well before any claim timeout or safety poll could fire."""
    monkeypatch.setattr(_worker, "CLAIM_WAIT", 60.0)
    monkeypatch.setattr(file_backend, "SAFETY_POLL", 60.0)
    storage = storage_factory()
    if isinstance(storage, jq.RedisStorage):
        storage.claim_repoll = 60.0
    started: dict[str, float] = {}

    async def handler(job: jq.Job[Any]) -> None:
        started[job.id] = trio.current_time()

    delays: list[float] = []
    async with jq.open_queue(storage, handler, name="wake") as q:
        for n in range(JOBS):
            job_id = f"job-{n}"
            enqueued = trio.current_time()
            await q.enqueue_and_wait(job_id, n, timeout=30)
            delays.append(started[job_id] - enqueued)
    _report(type(storage).__name__, delays)
    assert max(delays) < LIMIT


@pytest.mark.slow
async def test_back_to_back_jobs_across_processes(url: str, tmp_path: Path) -> None:
    """The same across processes: a worker process idles, this process enqueues 200 jobs
    one at a time; none waits for the worker's 5 s claim timeout."""
    name = f"wake-{time.monotonic_ns()}"
    with WorkerPool(tmp_path, url, name, handler="_wake_handlers:started_at") as pool:
        pool.start()
        async with jq.open_queue(jq.storage_from_url(url), name=name) as q:
            # Wait until the worker is up and idle (its first job is not measured).
            await q.enqueue_and_wait("warm-up", None, timeout=60)
            delays: list[float] = []
            for n in range(JOBS):
                enqueued = time.time()
                started = await q.enqueue_and_wait(f"job-{n}", n, timeout=30)
                delays.append(started - enqueued)
    _report(f"across processes ({url.split(':')[0]})", delays)
    assert max(delays) < LIMIT
