"""Bulk enqueue on Redis (real redis-server): the batched script writes the records and
indexes single enqueues write, answers each job as enqueues in turn would, and its
pipelined chunks are written in order only: a resent chunk, a chunk out of turn and a
chunk the server refuses never break "the first occurrence wins" or the prefix rule."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
from _tcp_proxy import TcpProxy
from fixtures_redis import RedisServer, require_redis_server

import trio_jobqueue as jq
from trio_jobqueue._types import EnqueueStatus, JobState
from trio_jobqueue.storage import EnqueueOutcome, EnqueueSpec
from trio_jobqueue.storage._base import ENQUEUE_MANY_MAX
from trio_jobqueue.storage._redis_common import library, script
from trio_jobqueue.storage.redis import RedisStorage, _chunk_args

pytestmark = pytest.mark.redis

_DECODE = "return cjson.encode(cmsgpack.unpack(redis.call('GET', KEYS[1])))"
CREATED, NONCE = 3, 5  # 0-based positions of the fields that differ by call (lua/_lib)


@pytest.fixture
async def storage(redis_storage_factory: Callable[[], RedisStorage]) -> AsyncIterator[RedisStorage]:
    async with redis_storage_factory() as s:
        yield s


async def _record(storage: RedisStorage, ns: str, job_id: str) -> list[Any]:
    """The job's record as stored, without the fields that differ from call to call."""
    fields: list[Any] = json.loads(
        await storage.server_command("EVAL", _DECODE, 1, storage.keys(ns).job(job_id))
    )
    return [f for n, f in enumerate(fields) if n not in (CREATED, NONCE)]


async def test_bulk_records_and_indexes_are_those_of_single_enqueues(
    storage: RedisStorage,
) -> None:
    """Every kind of job (defaults, priority, attempts and TTL, scheduled, due at once,
    payloads of each length class up to a large one) gets from enqueue_many the record,
    blob and index entries that enqueue gives it, and the ready order is the same."""
    future = time.time() + 3600
    specs = [
        EnqueueSpec("plain", b'{"a":1}', 3, 3600.0),
        EnqueueSpec("urgent", b"2", 3, 3600.0, priority=5),
        EnqueueSpec("tuned", b"3", 7, 60.5, priority=-2),
        EnqueueSpec("later", b"4", 3, 3600.0, run_at=future),
        EnqueueSpec("past", b"5", 3, 3600.0, run_at=1.0),
        EnqueueSpec("delayed", b"6", 3, 3600.0, delay=600.0),
        EnqueueSpec("big", b"x" * 20000, 3, 3600.0),
        *(EnqueueSpec(f"size-{n}", b"y" * n, 3, 3600.0) for n in (0, 31, 32, 255, 256, 16384)),
        EnqueueSpec("id with spaces, : and \u00e9", b"7", 3, 3600.0),
    ]
    for spec in specs:
        options = attrs.asdict(spec)
        await storage.enqueue("one", options.pop("job_id"), options.pop("payload"), **options)
    outcomes = await storage.enqueue_many("many", specs)
    assert [o.status for o in outcomes] == ["queued"] * 3 + ["scheduled", "queued"] + [
        "scheduled"
    ] + ["queued"] * 8
    for spec in specs:
        assert await _record(storage, "many", spec.job_id) == await _record(
            storage, "one", spec.job_id
        ), spec.job_id
    one, many = storage.keys("one"), storage.keys("many")
    assert await storage.server_command("HGETALL", many.blob_prefix + "big") == [
        b"p",
        b"x" * 20000,
    ]
    for a, b in [(one.queue, many.queue), (one.scheduled, many.scheduled)]:
        assert await storage.server_command("ZRANGE", b, 0, -1) == await storage.server_command(
            "ZRANGE", a, 0, -1
        )
    assert await storage.server_command("ZSCORE", many.scheduled, "later") == (
        await storage.server_command("ZSCORE", one.scheduled, "later")
    )
    stats = await storage.stats("many")
    assert (stats.queued, stats.scheduled) == (12, 2), stats


async def test_answers_are_those_of_enqueues_in_turn_across_chunk_boundaries(
    storage: RedisStorage,
) -> None:
    """Ids already held (queued, completed with a result), repeated within a chunk and
    across a chunk boundary: the first occurrence wins with its payload, the others
    answer duplicate or completed like single enqueues would."""
    await storage.enqueue("q", "done", b"d", max_attempts=3, result_ttl=600)
    (claim,) = await storage.claim("q", "w", limit=1, lease=30)
    await storage.complete("q", "done", claim.token, b'"the result"', ttl=600)
    await storage.enqueue("q", "waiting", b"w", max_attempts=3, result_ttl=600)
    boundary = ENQUEUE_MANY_MAX - 1  # the last position of the first chunk
    ids = [f"j-{n}" for n in range(2 * ENQUEUE_MANY_MAX)]
    ids[boundary + 1] = ids[boundary]  # first of chunk 2 repeats the last of chunk 1
    ids[3] = ids[1]  # a repeat within chunk 1
    ids[5], ids[6] = "done", "done"
    ids[7] = "waiting"
    async with jq.open_queue(storage, name="q") as q:
        results = await q.enqueue_many((job_id, n) for n, job_id in enumerate(ids))
        expected: dict[int, tuple[str, JobState | None, Any]] = {
            3: ("duplicate", JobState.QUEUED, None),
            5: ("completed", JobState.COMPLETED, "the result"),
            6: ("completed", JobState.COMPLETED, "the result"),
            7: ("duplicate", JobState.QUEUED, None),
            boundary + 1: ("duplicate", JobState.QUEUED, None),
        }
        for n, result in enumerate(results):
            want = expected.get(n, ("queued", None, None))
            assert (result.status, result.existing_state, result.result) == want, n
        assert await q.storage.get_payload("q", ids[boundary]) == str(boundary).encode()
        assert await q.storage.get_payload("q", ids[1]) == b"1"
        assert await q.storage.get_payload("q", "waiting") == b"w"
        assert (await q.storage.stats("q")).queued == len(set(ids)) - 1  # "done" is done


async def test_a_resent_chunk_answers_as_the_first_call_and_writes_nothing_more(
    storage: RedisStorage,
) -> None:
    """A chunk sent again (its first reply was lost) answers its accepted jobs as
    accepted and its repeats as duplicates again, adding nothing to the queue."""
    keys = [*storage.keys("r").standard(), storage.keys("r").reply("call")]
    jobs = [EnqueueSpec(job_id, b"p", 3, 600.0) for job_id in ["a", "b", "a", "c"]]
    jobs.append(EnqueueSpec("d", b"p", 3, 600.0, delay=600.0))
    argv = _chunk_args(storage._clock_arg, "call.1", 1, "60000", jobs)
    first = await storage.adapter.run_script("enqueue_many", keys, argv)
    again = await storage.adapter.run_script("enqueue_many", keys, argv)
    assert first == again == [b"qqdqs", b"queued"]
    stats = await storage.stats("r")
    assert (stats.queued, stats.scheduled) == (3, 1)
    seq = await storage.server_command("HGET", storage.keys("r").seq, "t")
    assert seq == b"3"  # the resent call took no sequence numbers


async def test_a_chunk_out_of_turn_writes_nothing_until_its_turn(storage: RedisStorage) -> None:
    """Chunk 2 of a call reaching the server before chunk 1 answers "wait" and writes
    nothing; after chunk 1 it is written."""
    keys = [*storage.keys("t").standard(), storage.keys("t").reply("call")]
    chunk1 = _chunk_args(
        storage._clock_arg, "call.1", 1, "60000", [EnqueueSpec("x", b"1", 3, 600.0)]
    )
    chunk2 = _chunk_args(
        storage._clock_arg, "call.2", 2, "60000", [EnqueueSpec("x", b"2", 3, 600.0)]
    )
    assert await storage.adapter.run_script("enqueue_many", keys, chunk2) == b"wait"
    assert await storage.get_status("t", "x") is None
    assert (await storage.stats("t")).queued == 0
    assert await storage.adapter.run_script("enqueue_many", keys, chunk1) == [b"q"]
    assert await storage.adapter.run_script("enqueue_many", keys, chunk2) == [b"d", b"queued"]
    assert await storage.get_payload("t", "x") == b"1"


async def test_foreign_data_under_a_job_key_is_never_overwritten(storage: RedisStorage) -> None:
    """A job key holding another type (foreign data) is reported as a corrupt record and
    left as it is, while the chunk's other jobs are written."""
    key = storage.keys("f").job("taken")
    await storage.server_command("HSET", key, "foreign", "data")
    with pytest.raises(jq.StorageError, match="corrupt record for job 'taken'"):
        await storage.enqueue_many(
            "f", [EnqueueSpec("ok", b"1", 3, 600.0), EnqueueSpec("taken", b"2", 3, 600.0)]
        )
    assert await storage.server_command("HGETALL", key) == [b"foreign", b"data"]
    assert await storage.get_payload("f", "ok") == b"1"


@pytest.mark.redis
async def test_a_refused_chunk_stops_a_pipelined_call_with_only_earlier_chunks_written() -> None:
    """When the server refuses a chunk (maxmemory) while later chunks are in flight,
    enqueue_many raises EnqueueManyError with the results of the chunks before it; no
    job of the refused chunk or after it is written; the same call, run again once
    memory is free, accepts exactly the rest."""
    server = RedisServer(require_redis_server(), extra=("--maxmemory-policy", "noeviction"))
    server.start()
    try:
        storage = RedisStorage(server.url, key_prefix="refuse")
        # Scheduled jobs with long ids: a chunk takes ~165 kB once stored (record, key,
        # two index entries) but needs only ~60 kB of request buffers, so the limit can
        # sit between the two with room on each side.
        jobs = [
            jq.JobSpec(f"j-{n:04d}-" + "x" * 90, None, delay=3600)
            for n in range(4 * ENQUEUE_MANY_MAX)
        ]
        async with jq.open_queue(storage, name="q") as q:
            # Scripts loaded, connection made, the indexes past their compact encoding.
            await q.enqueue_many(
                [jq.JobSpec(f"warm-{n}", None, delay=3600) for n in range(ENQUEUE_MANY_MAX)]
            )
            info = (await storage.server_command("INFO", "memory")).decode()
            used = int(info.split("used_memory:", 1)[1].split("\r\n", 1)[0])
            await storage.server_command("CONFIG", "SET", "maxmemory", str(used + 140_000))
            try:
                with pytest.raises(jq.EnqueueManyError, match="OOM command not allowed") as info_:
                    await q.enqueue_many(jobs)
            finally:
                await storage.server_command("CONFIG", "SET", "maxmemory", "0")
            assert isinstance(info_.value.__cause__, jq.StorageError)
            assert [r.status for r in info_.value.results] == ["scheduled"] * ENQUEUE_MANY_MAX
            stats = await storage.stats("q")
            assert stats.scheduled == 2 * ENQUEUE_MANY_MAX, stats
            assert await q.get_status(jobs[ENQUEUE_MANY_MAX].id) is None
            again = await q.enqueue_many(jobs)
            assert [r.status for r in again] == ["duplicate"] * ENQUEUE_MANY_MAX + ["scheduled"] * (
                3 * ENQUEUE_MANY_MAX
            )
    finally:
        server.cleanup()


async def test_storage_enqueue_chunks_reports_every_chunk_in_order(storage: RedisStorage) -> None:
    """Storage.enqueue_chunks calls back once per chunk, in order, with one outcome per
    job; empty chunks are skipped."""
    chunks = [[EnqueueSpec(f"{c}-{n}", b"p", 3, 600.0) for n in range(c)] for c in (3, 0, 1, 5)]
    seen: list[list[EnqueueOutcome]] = []
    await storage.enqueue_chunks("c", chunks, seen.append)
    assert [len(s) for s in seen] == [3, 1, 5]
    assert all(o.status is EnqueueStatus.QUEUED for s in seen for o in s)


async def test_lost_replies_in_a_pipelined_call_accept_each_job_once(
    redis_server: RedisServer,
) -> None:
    """Through a proxy that loses the replies of enqueue_many chunks (the server ran
    them, then the link is reset), calls of 3,000 jobs (ids repeating within and across
    chunks) answer as clean runs would: the first occurrence of each id is queued with
    its payload, in the call's order, and nothing is written twice."""
    ids = [f"j-{n}" for n in range(3000)]
    for n in range(0, 3000, 7):
        ids[n] = f"j-{n // 3}"  # a repeat of an earlier id, often in an earlier chunk
    first = {job_id: n for n, job_id in reversed(list(enumerate(ids)))}
    expected = ["queued" if first[job_id] == n else "duplicate" for n, job_id in enumerate(ids)]
    marker = script("enqueue_many").marker
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(redis_server.port)
        await nursery.start(proxy.serve)
        storage = RedisStorage(proxy.url, key_prefix=f"bulk-lost-{secrets.token_hex(4)}")
        async with storage:
            await storage.server_command("FUNCTION", "LOAD", "REPLACE", library().source)
            for ns in ("a", "b", "c"):
                lost = 0

                async def lose_replies() -> None:
                    nonlocal lost
                    for _ in range(4):
                        await proxy.lose_reply_to(marker)
                        lost += 1

                async with jq.open_queue(storage, name=ns) as q, trio.open_nursery() as faults:
                    faults.start_soon(lose_replies)
                    with trio.fail_after(30):
                        results = await q.enqueue_many((job_id, n) for n, job_id in enumerate(ids))
                    faults.cancel_scope.cancel()
                assert lost >= 1
                assert [r.status for r in results] == expected
                claims = await storage.claim(ns, "w", limit=5000, lease=60)
                assert [c.job_id for c in claims] == sorted(first, key=first.__getitem__)
                assert all(c.payload == str(first[c.job_id]).encode() for c in claims)
        nursery.cancel_scope.cancel()
