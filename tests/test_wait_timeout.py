"""``enqueue_and_wait`` timeouts: a WaitTimeoutError means the job exists and keeps
going; a storage that cannot take the enqueue gives StorageError, not a timeout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from fixtures_redis import RedisServer, require_redis_server

import trio_jobqueue as jq
from trio_jobqueue.storage import Storage

JOBS = 200


async def test_timed_out_waits_leave_every_job_enqueued(
    storage_factory: Callable[[], Storage],
) -> None:
    """200 concurrent enqueue_and_wait calls with a tiny timeout and no worker: every
    call times out (or finds its job), and every one of the 200 jobs was written."""
    timeouts = 0

    async with jq.open_queue(storage_factory(), name="tiny-timeouts") as q:

        async def call(n: int) -> None:
            nonlocal timeouts
            try:
                await q.enqueue_and_wait(f"job-{n}", {"n": n}, timeout=0.0005)
            except jq.WaitTimeoutError:
                timeouts += 1

        async with trio.open_nursery() as nursery:
            for n in range(JOBS):
                nursery.start_soon(call, n)
        statuses = [await q.get_status(f"job-{n}") for n in range(JOBS)]
    missing = [n for n, status in enumerate(statuses) if status is None]
    print(f"timeouts={timeouts} missing={len(missing)} of {JOBS}")
    assert timeouts == JOBS
    assert missing == []
    assert {s.state for s in statuses if s is not None} == {jq.JobState.QUEUED}


async def test_timed_out_job_keeps_running_and_completes(
    storage_factory: Callable[[], Storage],
) -> None:
    """After a WaitTimeoutError the job still runs; a second wait gets its result."""
    gate = trio.Event()

    async def handler(job: jq.Job[Any]) -> str:
        await gate.wait()
        return "late"

    async with jq.open_queue(storage_factory(), handler, name="keeps-running") as q:
        with pytest.raises(jq.WaitTimeoutError):
            await q.enqueue_and_wait("slow", None, timeout=0.05)
        gate.set()
        assert await q.enqueue_and_wait("slow", None, timeout=30) == "late"


@pytest.mark.redis
async def test_enqueue_that_cannot_complete_raises_storage_error() -> None:
    """With Redis gone, enqueue_and_wait raises StorageError (after the storage's retry
    budget), never WaitTimeoutError, however short its timeout."""
    server = RedisServer(require_redis_server())
    server.start()
    try:
        storage = jq.RedisStorage(server.url, key_prefix="gone", retry_timeout=0.5)
        async with jq.open_queue(storage) as q:
            await q.enqueue("before", None)
            server.kill()
            with pytest.raises(jq.StorageError):
                await q.enqueue_and_wait("after", None, timeout=0.01)
    finally:
        server.cleanup()
