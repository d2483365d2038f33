"""The Redis layout whose cost does not grow with the backlog (real redis-server): a
sorted ready set (cancel anywhere, release at the head), bounded reap and promotion
batches that still drain everything in order, large payloads stored once, and the memory
a queued job takes."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from fixtures_redis import RedisServer, require_redis_server

from trio_jobqueue._types import CancelStatus, JobState
from trio_jobqueue.storage import Claim
from trio_jobqueue.storage.redis import REAP_BATCH, RedisStorage

pytestmark = pytest.mark.redis

NS = "layout"
PROMOTE_BATCH = 500  # lua/claim.lua


@pytest.fixture
async def storage(redis_storage_factory: Callable[[], RedisStorage]) -> AsyncIterator[RedisStorage]:
    async with redis_storage_factory() as s:
        yield s


async def _fill(storage: RedisStorage, count: int, payload: bytes = b"p") -> list[str]:
    ids = [f"job-{n:06d}" for n in range(count)]

    async def produce(part: list[str]) -> None:
        for job_id in part:
            await storage.enqueue(NS, job_id, payload, max_attempts=3, result_ttl=600)

    # Concurrent producers are pipelined; each one enqueues its ids in order, so the
    # queue order is only known per producer: callers sort by what they check.
    async with trio.open_nursery() as nursery:
        for k in range(20):
            nursery.start_soon(produce, ids[k::20])
    return ids


async def _claim_all(storage: RedisStorage, *, lease: float = 30.0) -> list[Claim]:
    claims: list[Claim] = []
    while batch := await storage.claim(NS, "w", limit=100, lease=lease):
        claims.extend(batch)
    return claims


def _calls(info: bytes, command: str) -> int:
    for line in info.decode().splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def test_cancel_in_the_middle_of_a_large_ready_set(storage: RedisStorage) -> None:
    """Cancelling jobs at the head, in the middle and at the tail of 6,000 queued ones
    removes exactly those (O(log n): the ready set is sorted, no LREM); everything else
    is claimed, once, in FIFO order; stats count without scanning."""
    for n in range(6000):
        await storage.enqueue(NS, f"j{n:05d}", b"p", max_attempts=3, result_ttl=600)
    assert (await storage.stats(NS)).queued == 6000
    gone = {"j00000", "j03000", "j05999"}
    for job_id in gone:
        assert await storage.cancel(NS, job_id) is CancelStatus.CANCELLED
        assert await storage.get_status(NS, job_id) is None
    assert (await storage.stats(NS)).queued == 5997
    claimed = [c.job_id for c in await _claim_all(storage)]
    assert claimed == [f"j{n:05d}" for n in range(6000) if f"j{n:05d}" not in gone]
    if storage.client == "trio":
        assert _calls(await storage.server_command("INFO", "commandstats"), "lrem") == 0


async def test_processing_jobs_stay_in_a_skiplist_and_only_jobs_are_listed(
    storage: RedisStorage,
) -> None:
    """The lease set is a skiplist from the first claim on, however few jobs run (a
    listpack's ZADD scans the set), and what keeps it one is never seen as a job: not by
    stats, list_jobs, reap or status, also once nothing is processing."""
    await _fill(storage, 3)
    claims = await _claim_all(storage, lease=30)
    leases = storage.keys(NS).leases
    assert await storage.server_command("OBJECT", "ENCODING", leases) == b"skiplist"
    assert (await storage.stats(NS)).processing == 3
    page = await storage.list_jobs(NS, JobState.PROCESSING, limit=10)
    assert sorted(r.job_id for r in page.records) == sorted(c.job_id for c in claims)
    assert page.cursor is None
    reaped = await storage.reap(NS)
    assert reaped.stalled == () and reaped.next_deadline is not None
    assert math.isfinite(reaped.next_deadline)
    for claim in claims:
        await storage.complete(NS, claim.job_id, claim.token, b"r", ttl=600)
    assert (await storage.stats(NS)).processing == 0
    page = await storage.list_jobs(NS, JobState.PROCESSING, limit=10)
    assert (page.records, page.cursor) == ([], None)
    assert (await storage.reap(NS)).next_deadline is None
    # The next claims find the set as it was: still a skiplist.
    await storage.enqueue(NS, "later", b"p", max_attempts=3, result_ttl=600)
    assert [c.job_id for c in await _claim_all(storage)] == ["later"]
    assert await storage.server_command("OBJECT", "ENCODING", leases) == b"skiplist"
    assert (await storage.stats(NS)).processing == 1


async def test_release_goes_to_the_head_and_priority_room_is_left(storage: RedisStorage) -> None:
    """A released job goes before every queued one (the latest release first), with a
    negative sequence number; enqueues keep FIFO after it."""
    for job_id in ("a", "b", "c"):
        await storage.enqueue(NS, job_id, b"p", max_attempts=3, result_ttl=600)
    first, second = await storage.claim(NS, "w", limit=2, lease=30)
    await storage.release(NS, first.job_id, first.token)
    await storage.release(NS, second.job_id, second.token)
    await storage.enqueue(NS, "d", b"p", max_attempts=3, result_ttl=600)
    keys = storage.keys(NS)
    scores = await storage.server_command("ZRANGE", keys.queue, 0, -1, "WITHSCORES")
    if storage.client == "trio":
        assert scores[::2] == [b"b", b"a", b"c", b"d"]
        assert [float(s) for s in scores[1::2]] == [-2.0, -1.0, 3.0, 4.0]
    claimed = [c.job_id for c in await _claim_all(storage)]
    assert claimed == ["b", "a", "c", "d"]


async def test_sequence_counters_restart_only_when_the_queue_is_empty(
    storage: RedisStorage,
) -> None:
    """Past 2^30 the tail counter restarts at the next enqueue into an empty queue (so
    scores stay exact with priorities), never while jobs are queued."""
    keys = storage.keys(NS)
    await storage.server_command("HSET", keys.seq, "t", 2**30 + 5)
    await storage.enqueue(NS, "a", b"p", max_attempts=3, result_ttl=600)
    assert int(await storage.server_command("HGET", keys.seq, "t")) == 1
    await storage.server_command("HSET", keys.seq, "t", 2**30 + 5)
    await storage.enqueue(NS, "b", b"p", max_attempts=3, result_ttl=600)
    assert int(await storage.server_command("HGET", keys.seq, "t")) == 2**30 + 6
    assert [c.job_id for c in await _claim_all(storage)] == ["a", "b"]


async def test_bounded_reap_batches_recover_every_expired_lease(storage: RedisStorage) -> None:
    """1,250 expired leases are reaped in script calls of at most REAP_BATCH jobs each
    (the caller loops on the "more" flag): every job comes back once, in deadline
    order, and nothing is left processing."""
    count = 2 * REAP_BATCH + 250
    await _fill(storage, count)
    claims = await _claim_all(storage, lease=5)
    assert len(claims) == count
    await storage.advance_clock(10)
    before = await storage.server_command("INFO", "commandstats")
    result = await storage.reap(NS)
    after = await storage.server_command("INFO", "commandstats")
    assert sorted(j.job_id for j in result.stalled) == sorted(c.job_id for c in claims)
    assert not any(j.failed for j in result.stalled)
    assert result.next_deadline is None
    stats = await storage.stats(NS)
    assert (stats.processing, stats.queued) == (0, count)
    if storage.client == "trio":
        assert _calls(after, "fcall") - _calls(before, "fcall") >= math.ceil(count / REAP_BATCH)
    # Requeued at the tail in (deadline, id) order: claims took them in batches of 100
    # with one lease deadline per batch.
    again = [c.job_id for c in await _claim_all(storage)]
    assert again == [j.job_id for j in result.stalled]


async def test_bounded_promotion_keeps_the_order_of_one_big_move(storage: RedisStorage) -> None:
    """1,200 delayed retries due at once are promoted PROMOTE_BATCH per claim; a job
    enqueued after the first claim still comes after all of them, as if every due job
    had moved at once; they come out in due order."""
    count = 2 * PROMOTE_BATCH + 200
    await _fill(storage, count)
    claims = sorted(await _claim_all(storage), key=lambda c: c.job_id)
    for n, claim in enumerate(claims):
        delay = 10.0 + n * 0.001  # due order = id order
        assert await storage.retry(NS, claim.job_id, claim.token, b"e", delay=delay) == "ok"
    await storage.advance_clock(20)
    first = await storage.claim(NS, "w", limit=100, lease=30)
    await storage.enqueue(NS, "late", b"p", max_attempts=3, result_ttl=600)
    rest = await _claim_all(storage)
    order = [c.job_id for c in first + rest]
    assert order == [c.job_id for c in claims] + ["late"]
    assert all(c.attempt == 2 for c in first + rest if c.job_id != "late")


async def test_large_payload_and_result_are_stored_once(storage: RedisStorage) -> None:
    """A 100 KiB payload and a 50 KiB result live in the job's blob hash (the record
    stays small, so transitions never copy them), come back identical, expire with
    the job and are purged with it."""
    payload = bytes(range(256)) * 400
    result = b"\x00r" * 25_600
    await storage.enqueue(NS, "big", payload, max_attempts=3, result_ttl=10)
    keys = storage.keys(NS)
    record_bytes = int(await storage.server_command("MEMORY", "USAGE", keys.job("big")))
    assert record_bytes < 1024
    [claim] = await storage.claim(NS, "w", limit=1, lease=30)
    assert claim.payload == payload
    assert await storage.heartbeat(NS, [("big", claim.token)], lease=30) == [True]
    assert await storage.complete(NS, "big", claim.token, result, ttl=10) == "ok"
    status = await storage.get_status(NS, "big")
    assert status is not None and status.state is JobState.COMPLETED and status.result == result
    blob = keys.blob_prefix + "big"
    assert int(await storage.server_command("PTTL", blob)) > 0
    assert int(await storage.server_command("PTTL", keys.job("big"))) > 0
    await storage.advance_clock(20)
    assert await storage.purge_expired(NS) == 1
    assert await storage.server_command("EXISTS", keys.job("big"), blob) == 0


async def test_memory_per_queued_job() -> None:
    """20,000 queued jobs with a 100-byte payload take at most 400 bytes of Redis
    memory each (INFO used_memory delta), ready-set entry included."""
    server = RedisServer(require_redis_server())
    server.start()
    try:
        async with RedisStorage(server.url, client="trio") as storage:
            await storage.enqueue(NS, "first", b"x", max_attempts=3, result_ttl=600)

            async def used() -> int:
                await storage.server_command("MEMORY", "PURGE")
                info = (await storage.server_command("INFO", "memory")).decode()
                return int(info.split("used_memory:", 1)[1].split()[0])

            base = await used()
            jobs = 20_000
            await _fill(storage, jobs, b"x" * 100)
            per_job = (await used() - base) / jobs
        print(f"memory per queued job: {per_job:.0f} B")
        assert per_job <= 400
    finally:
        server.cleanup()


async def test_every_script_is_a_function_of_the_loaded_library(storage: RedisStorage) -> None:
    """The library the loader builds (helpers once, each script's body a function, numeric
    constants inlined) loads on the server and registers one function per script file,
    each with the flags of its ``#!lua`` line; each script's ``EVAL`` fallback compiles."""
    from importlib.resources import files

    from trio_jobqueue.storage._redis_common import eval_source, library, script

    scripts = {
        p.name[:-4]: p.read_bytes().split(b"\n", 1)[0]
        for p in files("trio_jobqueue").joinpath("lua").iterdir()
        if p.name.endswith(".lua") and p.name != "_lib.lua"
    }
    assert len(scripts) >= 17
    await storage.server_command("FUNCTION", "FLUSH")
    assert await storage.server_command("FUNCTION", "LOAD", library().source) == (
        library().name.encode()
    )
    (listed,) = await storage.server_command("FUNCTION", "LIST", "LIBRARYNAME", library().name)
    fields = dict(zip(listed[::2], listed[1::2], strict=True))
    registered = {}
    for entry in fields[b"functions"]:
        function = dict(zip(entry[::2], entry[1::2], strict=True))
        registered[function[b"name"].decode()] = sorted(f.decode() for f in function[b"flags"])
    for name, shebang in scripts.items():
        flags = shebang.partition(b"flags=")[2].decode()
        assert registered.pop(script(name).function) == sorted(filter(None, flags.split(",")))
        # The EVAL fallback (a full server that lost the library) compiles as well.
        fallback = eval_source(name)
        assert fallback.split(b"\n", 1)[0] == shebang.rstrip()
        await storage.server_command("SCRIPT", "LOAD", fallback)
    assert registered == {}


async def test_claims_remove_expired_records_and_enqueues_leave_them(storage: RedisStorage) -> None:
    """Expired results leave Redis with the next claim (at most 100 per index), without a
    reaper; an enqueue does not spend its time on them."""
    for i in range(3):
        await storage.enqueue(NS, f"done{i}", b"p", max_attempts=1, result_ttl=5)
    for claim in await storage.claim(NS, "w", limit=3, lease=30):
        assert await storage.complete(NS, claim.job_id, claim.token, b"r", ttl=5) == "ok"
    keys = storage.keys(NS)
    await storage.advance_clock(10)
    await storage.enqueue(NS, "next", b"p", max_attempts=1, result_ttl=5)
    assert await storage.server_command("ZCARD", keys.completed) == 3
    [claim] = await storage.claim(NS, "w", limit=1, lease=30)
    assert claim.job_id == "next"
    assert await storage.server_command("ZCARD", keys.completed) == 0
    assert await storage.server_command("EXISTS", *(keys.job(f"done{i}") for i in range(3))) == 0
