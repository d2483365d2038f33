"""A storage that refuses writes gets a clear error with nothing written, a transient
refusal never turns a success into a re-run, and any TTL the API accepts works end to
end on every backend."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
from fixtures_redis import RedisServer, require_redis_server

import trio_jobqueue as jq
from trio_jobqueue._validate import MAX_TTL
from trio_jobqueue.storage import Storage
from trio_jobqueue.storage.redis import RedisStorage


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A private redis-server whose maxmemory the test may change."""
    server = RedisServer(require_redis_server(), extra=("--maxmemory-policy", "noeviction"))
    server.start()
    yield server
    server.cleanup()


@pytest.mark.redis
async def test_enqueue_above_maxmemory_is_refused_with_nothing_written(
    own_server: RedisServer,
) -> None:
    """At maxmemory (noeviction) enqueue raises StorageError with the server's own
    message and writes nothing, not even after memory is available again."""
    storage = RedisStorage(own_server.url, key_prefix="oom")
    async with jq.open_queue(storage, name="q") as q:
        await q.enqueue("before", None)
        await storage.server_command("CONFIG", "SET", "maxmemory", "1")
        try:
            with pytest.raises(jq.StorageError, match="OOM command not allowed") as info:
                await q.enqueue("refused", {"big": "x" * 1000})
        finally:
            await storage.server_command("CONFIG", "SET", "maxmemory", "0")
        assert await q.get_status("refused") is None
        assert (await q.get_status("before")) is not None
    assert "maxmemory" in str(info.value)


@pytest.mark.redis
async def test_enqueues_made_at_once_above_maxmemory_are_refused_with_nothing_written(
    own_server: RedisServer,
) -> None:
    """At maxmemory, 50 enqueues made at once (they share script calls) each raise
    StorageError with the server's message and none of their jobs is written; once memory
    is available again, the same ids are accepted."""
    job_ids = [f"oom-{n:02d}" for n in range(50)]
    storage = RedisStorage(own_server.url, key_prefix="oom-many")
    async with jq.open_queue(storage, name="q") as q:

        async def all_at_once() -> list[object]:
            results: list[object] = []

            async def one(job_id: str) -> None:
                try:
                    results.append((await q.enqueue(job_id, None)).status)
                except jq.StorageError as exc:
                    results.append(exc)

            async with trio.open_nursery() as nursery:
                for job_id in job_ids:
                    nursery.start_soon(one, job_id)
            return results

        await q.enqueue("before", None)
        await storage.server_command("CONFIG", "SET", "maxmemory", "1")
        try:
            refused = await all_at_once()
        finally:
            await storage.server_command("CONFIG", "SET", "maxmemory", "0")
        assert len(refused) == 50
        assert all(isinstance(r, jq.StorageError) and "maxmemory" in str(r) for r in refused)
        assert (await q.counts())["queued"] == 1
        assert await all_at_once() == [jq.EnqueueStatus.QUEUED] * 50


@pytest.mark.redis
async def test_enqueue_on_a_read_only_replica_is_refused(own_server: RedisServer) -> None:
    """Against a read-only replica, enqueue raises StorageError naming the refusal."""
    replica = RedisServer(
        require_redis_server(), extra=("--replicaof", "127.0.0.1", str(own_server.port))
    )
    replica.start()
    try:
        async with jq.open_queue(RedisStorage(replica.url, key_prefix="ro"), name="q") as q:
            with pytest.raises(jq.StorageError, match="READONLY"):
                await q.enqueue("x", None)
    finally:
        replica.cleanup()


@pytest.mark.redis
async def test_transient_maxmemory_does_not_rerun_successful_jobs(
    own_server: RedisServer,
) -> None:
    """Handlers that succeed while Redis sits at maxmemory for a few seconds (longer
    than the lease) are stored as completed once, not reaped and re-run."""
    runs: Counter[str] = Counter()
    all_running = trio.Event()
    at_limit = trio.Event()

    async def handler(job: jq.Job[Any]) -> str:
        runs[job.id] += 1
        if sum(runs.values()) == 20:
            all_running.set()
        await at_limit.wait()
        return "ok"

    storage = RedisStorage(own_server.url, key_prefix="transient")
    async with jq.open_queue(
        storage, handler, name="q", concurrency=20, visibility_timeout=1.0, lock_ttl=1.0
    ) as q:
        for n in range(20):
            await q.enqueue(f"job-{n}", n)
        with trio.fail_after(20):
            await all_running.wait()
        await storage.server_command("CONFIG", "SET", "maxmemory", "1")
        at_limit.set()  # every handler succeeds while Redis refuses new writes
        with pytest.raises(jq.StorageError, match="OOM"):
            await q.enqueue("refused", None)
        await trio.sleep(3.0)  # three leases: reaper and heartbeats keep running
        await storage.server_command("CONFIG", "SET", "maxmemory", "0")
        with trio.fail_after(20):
            for n in range(20):  # a duplicate enqueue_and_wait waits for the outcome
                await q.enqueue_and_wait(f"job-{n}", n, timeout=20)
        statuses = [await q.get_status(f"job-{n}") for n in range(20)]
    print(f"runs={sum(runs.values())} per job={set(runs.values())}")
    assert all(s is not None and s.state is jq.JobState.COMPLETED for s in statuses)
    assert all(s is not None and s.attempts == 1 for s in statuses)
    assert set(runs.values()) == {1}


async def test_the_largest_valid_ttl_works_end_to_end(
    storage_factory: Callable[[], Storage],
) -> None:
    """result_ttl = MAX_TTL (1e15 s) completes, notifies the waiter and can be updated;
    a larger one is refused before anything is written."""

    async def handler(job: jq.Job[Any]) -> str:
        return "kept"

    async with jq.open_queue(storage_factory(), handler, name="ttl") as q:
        assert await q.enqueue_and_wait("long", None, result_ttl=MAX_TTL, timeout=30) == "kept"
        status = await q.get_status("long")
        assert (await q.update_result_ttl("long", MAX_TTL)).status == "updated"
        with pytest.raises(jq.InvalidTtlError, match="1e15"):
            await q.enqueue("too-long", None, result_ttl=MAX_TTL * 1.01)
        assert await q.get_status("too-long") is None
        assert await q.get_result("long") == "kept"
    assert status is not None and status.expires_at is not None
    assert status.expires_at - time.time() > MAX_TTL * 0.99


@pytest.mark.redis
@pytest.mark.parametrize("client", ["trio", "asyncio"])
async def test_a_full_server_without_the_scripts_still_stores_successes(
    own_server: RedisServer, client: str
) -> None:
    """At maxmemory, on a server that lost the scripts' function library (``FUNCTION
    FLUSH``; or a new version of the package meets a full server), the library cannot be
    loaded (``FUNCTION LOAD`` is refused above maxmemory); a completion is still stored
    and its job does not run again, while an enqueue is refused with nothing written."""
    storage = RedisStorage(own_server.url, key_prefix=f"oomlib-{client}", client=client)  # type: ignore[arg-type]
    async with storage:
        await storage.enqueue("q", "job", b"x", max_attempts=3, result_ttl=60)
        (claim,) = (await storage.claim_nowait("q", "w", limit=1, lease=60)).claims
        await storage.server_command("FUNCTION", "FLUSH")
        await storage.server_command("CONFIG", "SET", "maxmemory", "1")
        try:
            status = await storage.complete("q", "job", claim.token, b"done", ttl=60)
            with pytest.raises(jq.StorageError, match="OOM command not allowed"):
                await storage.enqueue("q", "refused", b"x", max_attempts=1, result_ttl=60)
        finally:
            await storage.server_command("CONFIG", "SET", "maxmemory", "0")
        assert str(status) == "ok"
        record = await storage.get_status("q", "job")
        assert record is not None and record.state is jq.JobState.COMPLETED
        assert record.result == b"done"
        assert await storage.get_status("q", "refused") is None
