"""Fault tests at the storage level: a Redis crash + restart (AOF on), killed client
connections, and random cancellation of claims under load. Each counts lost and
duplicated jobs and asserts that nothing is lost."""

from __future__ import annotations

import contextlib
import random
import shutil
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import attrs
import pytest
import trio
from fixtures_redis import RedisServer, require_redis_server

from trio_jobqueue import StorageError
from trio_jobqueue._types import JobState
from trio_jobqueue.storage.redis import RedisStorage

pytestmark = [pytest.mark.redis, pytest.mark.slow]

NS = "faults"


@pytest.fixture
def own_server(redis_binary: str) -> Iterator[RedisServer]:
    """A private server (this test's engine) with AOF (fsync always) that the test may
    kill."""
    server = RedisServer(redis_binary, appendonly=True)
    server.start()
    yield server
    server.cleanup()


@attrs.define
class Tally:
    """What the workers did: handler runs per job id."""

    runs: Counter[str] = attrs.Factory(Counter)
    settle_errors: int = 0
    claim_errors: int = 0

    def report(self, statuses: dict[str, JobState | None]) -> tuple[int, int]:
        lost = sum(1 for state in statuses.values() if state is not JobState.COMPLETED)
        if lost:
            print(f"states of unfinished jobs: {Counter(statuses.values())}")
        duplicated = sum(n - 1 for n in self.runs.values() if n > 1)
        print(
            f"lost={lost} duplicated={duplicated} runs={sum(self.runs.values())} "
            f"claim_errors={self.claim_errors} settle_errors={self.settle_errors}"
        )
        return lost, duplicated


async def worker(storage: RedisStorage, tally: Tally, name: str, lease: float) -> None:
    """Claim in batches, 'run' each job, complete it; storage errors never stop it."""
    while True:
        try:
            claims = await storage.claim(NS, name, limit=8, lease=lease, wait=1.0)
        except StorageError:
            tally.claim_errors += 1
            await trio.sleep(0.05)
            continue
        for claim in claims:
            tally.runs[claim.job_id] += 1
            await trio.sleep(random.uniform(0, 0.002))
            try:
                await storage.complete(NS, claim.job_id, claim.token, b"ok", ttl=600)
            except StorageError:
                tally.settle_errors += 1  # the lease expires and the reaper recovers it


async def reaper(storage: RedisStorage, interval: float) -> None:
    while True:
        with contextlib.suppress(StorageError):
            await storage.reap(NS)
        await trio.sleep(interval)


async def wait_all_completed(storage: RedisStorage, n: int, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while True:
            try:
                if (await storage.stats(NS)).completed == n:
                    return
            except StorageError:
                pass
            await trio.sleep(0.05)


async def final_states(storage: RedisStorage, ids: list[str]) -> dict[str, JobState | None]:
    out: dict[str, JobState | None] = {}
    for job_id in ids:
        rec = await storage.get_status(NS, job_id)
        out[job_id] = None if rec is None else rec.state
    return out


async def run_with_fault(
    url: str,
    fault: Callable[[RedisStorage], Awaitable[None]],
    *,
    n_jobs: int = 400,
    workers: int = 4,
    lease: float = 5.0,
) -> tuple[int, int, Tally]:
    tally = Tally()
    ids = [f"job:{i}" for i in range(n_jobs)]
    storage = RedisStorage(url, key_prefix="fault", retry_timeout=20.0, claim_repoll=0.5)
    async with storage:
        for job_id in ids:
            await storage.enqueue(NS, job_id, job_id.encode(), max_attempts=50, result_ttl=600)
        async with trio.open_nursery() as nursery:
            for i in range(workers):
                nursery.start_soon(worker, storage, tally, f"w{i}", lease)
            nursery.start_soon(reaper, storage, 0.25)
            # Strike once a quarter of the jobs is done.
            with trio.fail_after(30):
                while sum(tally.runs.values()) < n_jobs // 4:  # noqa: ASYNC110 - progress made elsewhere
                    await trio.sleep(0.01)
            await fault(storage)
            await wait_all_completed(storage, n_jobs, timeout=120)
            nursery.cancel_scope.cancel()
        statuses = await final_states(storage, ids)
    lost, duplicated = tally.report(statuses)
    return lost, duplicated, tally


async def test_server_crash_and_restart_mid_run(own_server: RedisServer) -> None:
    """kill -9 of Redis (AOF, fsync always) mid-run, then restart: nothing is lost."""

    async def crash(storage: RedisStorage) -> None:
        own_server.kill()
        await trio.sleep(0.5)  # workers hit the outage
        await trio.to_thread.run_sync(own_server.start)

    lost, duplicated, tally = await run_with_fault(own_server.url, crash)
    assert lost == 0
    # Only jobs genuinely in flight at the crash can run twice.
    assert duplicated <= 8 * 4 + tally.settle_errors


async def test_client_connections_killed_mid_run(own_server: RedisServer) -> None:
    """CLIENT KILL of every normal and pub/sub connection mid-run: nothing is lost."""

    async def kill_clients(storage: RedisStorage) -> None:
        for _ in range(3):
            await storage.server_command("CLIENT", "KILL", "TYPE", "pubsub")
            await storage.server_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
            await trio.sleep(0.1)

    lost, duplicated, tally = await run_with_fault(own_server.url, kill_clients)
    assert lost == 0
    assert duplicated <= 3 * 8 * 4 + tally.settle_errors


async def test_random_cancellation_of_claims_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """Claims cancelled at random points under load strand no job."""
    n_jobs = 600
    ids = [f"c{i}" for i in range(n_jobs)]
    tally = Tally()
    cancelled = 0
    storage = RedisStorage(redis_server.url, key_prefix=f"cancel-{random.random()}")

    async def producer() -> None:
        for job_id in ids:
            await storage.enqueue(NS, job_id, b"x", max_attempts=100, result_ttl=600)
            if random.random() < 0.1:
                await trio.sleep(0.001)

    async def impatient_worker(name: str) -> None:
        nonlocal cancelled
        while True:
            claims = []
            with trio.move_on_after(random.choice([0, 0.0001, 0.0005, 0.001, 0.003])) as scope:
                claims = await storage.claim(
                    NS, name, limit=random.randint(1, 10), lease=1.0, wait=random.choice([0.0, 0.5])
                )
            if scope.cancelled_caught:
                cancelled += 1
            for claim in claims:
                tally.runs[claim.job_id] += 1
                await storage.complete(NS, claim.job_id, claim.token, b"ok", ttl=600)

    async with storage:
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(impatient_worker, f"w{i}")
            nursery.start_soon(reaper, storage, 0.25)
            await producer()
            await wait_all_completed(storage, n_jobs, timeout=120)
            nursery.cancel_scope.cancel()
        statuses = await final_states(storage, ids)
    lost, duplicated = tally.report(statuses)
    print(f"cancelled claims: {cancelled}")
    assert cancelled > 0
    assert lost == 0
    # A cancelled claim hands its jobs back (release), so none ran twice.
    assert duplicated == 0


def test_redis_server_binary_present() -> None:
    """The fault tests need redis-server: skip locally / fail in CI without it."""
    assert shutil.which("redis-server") == require_redis_server()
