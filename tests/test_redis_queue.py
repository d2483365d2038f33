"""Queue-level Redis tests: worker processes (started through the CLI) sharing one queue,
and a Redis crash + restart while they run. Lost and duplicated jobs are counted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from _proc_harness import WorkerPool
from fixtures_redis import RedisServer

import trio_jobqueue as jq
from trio_jobqueue._worker import PREFETCH_MAX
from trio_jobqueue.storage.redis import RedisStorage

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKER_ARGS = ("--concurrency", "8", "--visibility-timeout", "5", "--log-level", "WARNING")


@pytest.fixture
def aof_server(redis_binary: str) -> Iterator[RedisServer]:
    """A private server (this test's engine) with AOF that the test may restart."""
    server = RedisServer(redis_binary, appendonly=True)
    server.start()
    yield server
    server.cleanup()


async def _drain(storage: RedisStorage, name: str, n: int, timeout: float) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                if (await storage.stats(name)).completed >= n:
                    return
            except jq.StorageError:
                pass
            await trio.sleep(0.05)  # progress happens in other processes


async def _lost(q: jq.Queue[object, object], n: int) -> int:
    lost = 0
    for i in range(n):
        status = await q.get_status(f"job-{i}")
        if status is None or status.state != "completed":
            lost += 1
    return lost


async def test_two_worker_processes_share_one_queue(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two worker processes drain one queue: every job runs exactly once."""
    n = 300
    name = f"two-{uuid.uuid4().hex[:8]}"
    async with (
        RedisStorage(redis_server.url) as storage,
        jq.open_queue(storage, name=name) as q,
    ):
        with WorkerPool(tmp_path, redis_server.url, name, WORKER_ARGS) as pool:
            pool.start()
            pool.start()
            for i in range(n):
                await q.enqueue(f"job-{i}", {"sleep": 0.01})
            await _drain(storage, name, n, timeout=60)
            lost = await _lost(q, n)
            runs = pool.runs_per_job()
            pids = {pid for _, _, pid in pool.executions()}
    duplicated = sum(k - 1 for k in runs.values() if k > 1)
    print(f"lost={lost} duplicated={duplicated} processes_that_ran_jobs={len(pids)}")
    assert lost == 0
    assert duplicated == 0
    assert len(runs) == n


async def test_redis_restart_with_worker_processes_running(
    aof_server: RedisServer, tmp_path: Path
) -> None:
    """kill -9 of Redis (AOF) and a restart while two worker processes run: zero lost;
    duplicates only for executions in flight at the crash."""
    n = 400
    name = f"restart-{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(aof_server.url, retry_timeout=30)
    async with storage, jq.open_queue(storage, name=name, max_attempts=20) as q:
        with WorkerPool(tmp_path, aof_server.url, name, WORKER_ARGS) as pool:
            pool.start()
            pool.start()
            for i in range(n):
                await q.enqueue(f"job-{i}", {"sleep": 0.01})
            with trio.fail_after(60):
                while sum(pool.runs_per_job().values()) < n // 4:  # noqa: ASYNC110 - progress made elsewhere
                    await trio.sleep(0.05)
            aof_server.kill()
            await trio.sleep(1.0)  # the workers run into the outage
            await trio.to_thread.run_sync(aof_server.start)
            await _drain(storage, name, n, timeout=90)
            lost = await _lost(q, n)
            runs = pool.runs_per_job()
            assert all(w.proc.poll() is None for w in pool.workers), pool.all_stderr()
    duplicated = sum(k - 1 for k in runs.values() if k > 1)
    print(f"lost={lost} duplicated={duplicated}")
    assert lost == 0
    # At most the jobs in flight at the crash (2 processes x concurrency 8), each once.
    assert duplicated <= 16


async def test_two_queues_in_two_tasks_share_one_storage(redis_server: RedisServer) -> None:
    """Queues opened in different tasks share one RedisStorage; the task that opened it
    first may leave first, and the other keeps working until it closes it."""
    storage = RedisStorage(redis_server.url, key_prefix=f"share-{uuid.uuid4().hex[:8]}")
    first_open = trio.Event()
    first_gone = trio.Event()

    async def handler(job: jq.Job[int]) -> int:
        return job.payload * 2

    async def first() -> None:
        async with jq.open_queue(storage, handler, name="shared") as q:
            first_open.set()
            assert await q.enqueue_and_wait("a", 1, timeout=20) == 2
        first_gone.set()

    async def second() -> None:
        await first_open.wait()
        async with jq.open_queue(storage, handler, name="shared") as q:
            await first_gone.wait()
            assert storage.is_open
            assert await q.enqueue_and_wait("b", 2, timeout=20) == 4

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            nursery.start_soon(second)
    assert not storage.is_open


async def test_a_job_claimed_ahead_goes_back_for_an_idle_worker(redis_server: RedisServer) -> None:
    """A worker whose recent jobs were short claims a job ahead of its free slot; when the
    running job turns out long, it hands the waiting one back (attempt not consumed), an
    idle worker runs it while the first still runs, and no job runs twice."""
    prefix = f"ahead-{uuid.uuid4().hex[:8]}"
    runs: dict[str, list[tuple[str, int]]] = {}
    long_started, second_done, let_go = trio.Event(), trio.Event(), trio.Event()

    async def handler(job: jq.Job[int]) -> None:
        runs.setdefault(job.id, []).append((job.worker_id, job.attempt))
        if job.id == "long-1":
            long_started.set()
            await let_go.wait()
        elif job.id == "long-2":
            second_done.set()

    with trio.fail_after(30):
        async with jq.open_queue(
            RedisStorage(redis_server.url, key_prefix=prefix), handler, name="q", concurrency=1
        ) as busy:
            for n in range(20):  # short runs: the worker claims ahead from now on
                await busy.enqueue_and_wait(f"short-{n}", n, timeout=10)
            # Both ready at once: one claim (a free slot + the margin) takes both.
            await busy.enqueue_many([("long-1", 0), ("long-2", 0)])
            await long_started.wait()
            async with jq.open_queue(
                RedisStorage(redis_server.url, key_prefix=prefix),
                handler,
                name="q",
                concurrency=1,
            ) as idle:
                await second_done.wait()
                assert not let_go.is_set()  # long-1 is still running
                let_go.set()
                assert idle.worker_id != busy.worker_id
                assert runs["long-2"] == [(idle.worker_id, 1)]
                assert busy.statistics().released == 1
    assert runs["long-1"] == [(busy.worker_id, 1)]
    assert all(len(attempts) == 1 for attempts in runs.values())


async def test_a_worker_holds_at_most_its_slots_plus_the_margin(redis_server: RedisServer) -> None:
    """However deep the backlog, a worker claiming ahead holds at most ``concurrency``
    jobs plus a margin of at most PREFETCH_MAX (while its jobs run short), and once its
    running jobs turn out long it gives the extra ones back: the queue then shows only
    its running jobs processing."""
    storage = RedisStorage(redis_server.url, key_prefix=f"held-{uuid.uuid4().hex[:8]}")
    let_go, shorts_done = trio.Event(), trio.Event()
    running = shorts = 0
    most_processing = 0

    async def handler(job: jq.Job[int]) -> None:
        nonlocal running, shorts
        if job.payload >= 0:
            running += 1
            await let_go.wait()
        else:
            shorts += 1
            if shorts == 40:
                shorts_done.set()

    with trio.fail_after(30):
        async with jq.open_queue(storage, handler, name="q", concurrency=4) as q:
            await q.enqueue_many([(f"short-{n}", -1) for n in range(40)])
            await shorts_done.wait()
            await q.enqueue_many([(f"long-{n}", n) for n in range(200)])
            while True:
                processing = (await q.counts())["processing"]
                most_processing = max(most_processing, processing)
                if running == 4 and processing == 4:
                    break  # the jobs claimed ahead went back
                await trio.sleep(0.01)
            let_go.set()
    print(f"most jobs processing at once: {most_processing}")
    assert 4 <= most_processing <= 4 + PREFETCH_MAX
