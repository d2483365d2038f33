"""A lost reply never costs an attempt and never lies (real redis-server).

A reply is "lost" when the connection breaks after the server ran the script: the
client then resends the call. These tests run the scripts the way the client does
(same nonce, the resent flag) and, end to end, through a proxy that cuts connections in
the middle of replies while a worker drains a queue.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio
from _tcp_proxy import TcpProxy
from fixtures_redis import RedisServer

import trio_jobqueue as jq
from trio_jobqueue.storage import Fence
from trio_jobqueue.storage._redis_common import script
from trio_jobqueue.storage.redis import RedisStorage

pytestmark = pytest.mark.redis

NS = "lost"


def _claim_args(storage: RedisStorage, nonce: str, resent: bool) -> list[Any]:
    return [repr(storage._clock_offset), "w", 10, "30.0", nonce, "1" if resent else "0"]


async def _claim_script(storage: RedisStorage, nonce: str, *, resent: bool) -> list[Any]:
    keys = storage.keys(NS)
    reply: list[Any] = await storage.adapter.run_script(
        "claim",
        [*keys.standard(), keys.claim_record(nonce)],
        _claim_args(storage, nonce, resent),
        retry=False,
    )
    return reply


def _ids(reply: list[Any]) -> list[tuple[str, int, str]]:
    return [
        (reply[i].decode(), int(reply[i + 2]), reply[i + 5].decode())
        for i in range(2, len(reply), 8)
    ]


async def test_resent_claim_gets_the_same_jobs_back(
    redis_storage_factory: Callable[[], RedisStorage],
) -> None:
    """A claim resent after a lost reply returns the jobs the first run took (same
    tokens, attempt 1) and takes no others; nothing else can claim them."""
    async with redis_storage_factory() as storage:
        for n in range(3):
            await storage.enqueue(NS, f"j{n}", b"p", max_attempts=3, result_ttl=60)
        nonce = secrets.token_hex(8)
        first = _ids(await _claim_script(storage, nonce, resent=False))  # reply "lost"
        again = _ids(await _claim_script(storage, nonce, resent=True))
        others = await storage.claim(NS, "other", limit=10, lease=30)
        for job_id, _, token in again:
            assert await storage.complete(NS, job_id, token, b"r", ttl=60) == "ok"
    assert again == first
    assert [(job_id, attempt) for job_id, attempt, _ in again] == [
        ("j0", 1),
        ("j1", 1),
        ("j2", 1),
    ]
    assert others == []


async def test_claim_whose_reply_never_arrives_gives_its_jobs_back(
    redis_storage_factory: Callable[[], RedisStorage],
) -> None:
    """When no reply of a claim ever arrives, the storage's next claim first releases
    what it took: the jobs come back at the head with their attempt not consumed."""
    async with redis_storage_factory() as storage:
        for n in range(3):
            await storage.enqueue(NS, f"j{n}", b"p", max_attempts=3, result_ttl=60)
        nonce = secrets.token_hex(8)
        await _claim_script(storage, nonce, resent=False)  # ran; its reply never came
        storage._orphans.setdefault(NS, []).append(nonce)  # as _claim_once records it
        claims = await storage.claim(NS, "w", limit=10, lease=30)
    assert [(c.job_id, c.attempt) for c in claims] == [("j0", 1), ("j1", 1), ("j2", 1)]


async def _resend(storage: RedisStorage, name: str, keys: list[str], args: list[Any]) -> Any:
    """Run a reply-cached script, then "resend" it with the same nonce."""
    nonce = secrets.token_hex(8)
    all_keys = [*keys, storage.keys(NS).reply(nonce)]
    argv = [repr(storage._clock_offset), *args]
    first = await storage.adapter.run_script(name, all_keys, [*argv, "0", "60000"])
    again = await storage.adapter.run_script(name, all_keys, [*argv, "1", "60000"])
    return first, again


async def test_resent_non_idempotent_calls_report_what_the_first_call_did(
    redis_storage_factory: Callable[[], RedisStorage],
) -> None:
    """cancel, reap, release_lock and purge, resent after a lost reply, answer what the
    first call did (a successful cancel says "cancelled", not "not_found")."""
    async with redis_storage_factory() as storage:
        keys = storage.keys(NS)
        await storage.enqueue(NS, "c", b"p", max_attempts=3, result_ttl=60)
        assert await _resend(storage, "cancel", keys.standard(), ["c"]) == (
            b"cancelled",
            b"cancelled",
        )
        assert await storage.cancel(NS, "c") == "not_found"  # a new call sees the truth

        await storage.enqueue(NS, "r", b"p", max_attempts=3, result_ttl=60)
        await storage.claim(NS, "w", limit=1, lease=5)
        await storage.advance_clock(10)
        first, again = await _resend(
            storage, "reap", [*keys.standard(), keys.lock("")], [b"stalled", "0", "", "", 500]
        )
        assert first == again and b"r" in first

        epoch = await storage.acquire_lock(NS, "leader", "me", ttl=30)
        assert epoch is not None
        assert await _resend(storage, "release_lock", [keys.lock("leader")], ["me", epoch]) == (
            1,
            1,
        )

        claims = await storage.claim(NS, "w", limit=1, lease=30)
        await storage.complete(NS, claims[0].job_id, claims[0].token, b"x", ttl=1)
        await storage.advance_clock(100)
        assert await _resend(storage, "purge", keys.standard(), [1000]) == (1, 1)


async def test_resent_complete_many_reports_ok_for_what_the_first_call_stored(
    redis_storage_factory: Callable[[], RedisStorage],
) -> None:
    """A batch of completions resent after a lost reply answers "ok" for the jobs the
    first call completed (not "stale": no worker logs a fenced outcome for its own
    completion) and still "stale" for a token that never owned its job."""
    async with redis_storage_factory() as storage:
        keys = storage.keys(NS)
        for job_id in ("m1", "m2", "m3"):
            await storage.enqueue(NS, job_id, b"p", max_attempts=3, result_ttl=60)
        claims = {c.job_id: c for c in await storage.claim(NS, "w", limit=3, lease=30)}
        args: list[Any] = [repr(storage._clock_offset)]
        for job_id, token in (("m1", claims["m1"].token), ("m2", claims["m2"].token)):
            args += [job_id, token, b"done", "60.0"]
        args += ["m3", "not-its-token", b"done", "60.0"]
        run = storage.adapter.run_script
        first = await run("complete_many", keys.settle(), [*args, "0"], retry=False)
        again = await run("complete_many", keys.settle(), [*args, "1"], retry=False)
        assert first == again == [b"ok", b"ok", b"stale"]
        states = [(await storage.get_status(NS, j)) for j in ("m1", "m2", "m3")]
        assert [s.state if s else None for s in states] == [
            jq.JobState.COMPLETED,
            jq.JobState.COMPLETED,
            jq.JobState.PROCESSING,
        ]


async def test_cut_replies_during_a_drain_cost_no_attempt(
    redis_server: RedisServer,
) -> None:
    """A worker drains 300 jobs through a proxy that cuts connections in the middle of
    replies 25 times: every job completes once, on its first attempt (lost claim
    replies are redeemed, lost settlement replies are recognised)."""
    runs: Counter[str] = Counter()
    attempts: dict[str, int] = {}

    async def handler(job: jq.Job[Any]) -> None:
        runs[job.id] += 1
        attempts[job.id] = job.attempt
        await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(redis_server.port)
        await nursery.start(proxy.serve)
        storage = RedisStorage(proxy.url, key_prefix=f"cut-{secrets.token_hex(4)}")
        async with jq.open_queue(
            storage, handler, name=NS, concurrency=10, visibility_timeout=60
        ) as q:
            for n in range(300):
                await q.enqueue(f"job-{n}", n)
            for _ in range(25):
                with trio.fail_after(20):
                    await proxy.reset_mid_reply()
                await trio.sleep(0.01)
            with trio.fail_after(60):
                for n in range(300):  # a duplicate enqueue_and_wait waits for the outcome
                    await q.enqueue_and_wait(f"job-{n}", n, timeout=60)
            statuses = [await q.get_status(f"job-{n}") for n in range(300)]
        nursery.cancel_scope.cancel()
    lost = sum(1 for s in statuses if s is None or s.state is not jq.JobState.COMPLETED)
    duplicated = sum(n - 1 for n in runs.values())
    consumed = sum(1 for s in statuses if s is not None and s.attempts != 1)
    print(f"jobs=300 cuts=25 lost={lost} duplicated={duplicated} extra_attempts={consumed}")
    assert (lost, duplicated, consumed) == (0, 0, 0)
    assert set(attempts.values()) == {1}


async def test_lost_claim_replies_during_a_drain_cost_no_attempt(
    redis_server: RedisServer,
) -> None:
    """20 claims whose replies are lost after the server ran them (the proxy resets the
    link right after forwarding the claim): each resent claim gets its jobs back, so
    every job completes once, on attempt 1, long before any lease (60 s) could expire."""
    runs: Counter[str] = Counter()
    progress = [trio.Event()]

    async def handler(job: jq.Job[Any]) -> int:
        runs[job.id] += 1
        progress[0].set()
        await trio.sleep(0.002)
        return job.attempt

    claim_marker = script("claim").marker
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(redis_server.port)
        await nursery.start(proxy.serve)
        storage = RedisStorage(proxy.url, key_prefix=f"lostclaim-{secrets.token_hex(4)}")
        async with jq.open_queue(
            storage, handler, name=NS, concurrency=5, visibility_timeout=60
        ) as q:

            async def lose_claim_replies() -> None:
                for _ in range(20):
                    await proxy.lose_reply_to(claim_marker)
                    # Let the worker get somewhere, so that the next loss hits another
                    # claim rather than the resend of this one.
                    progress[0] = trio.Event()
                    await progress[0].wait()

            async with trio.open_nursery() as faults:
                faults.start_soon(lose_claim_replies)
                for n in range(200):
                    await q.enqueue(f"job-{n}", n)
                with trio.fail_after(50):
                    attempts = [
                        await q.enqueue_and_wait(f"job-{n}", n, timeout=50) for n in range(200)
                    ]
                faults.cancel_scope.cancel()
            stats = q.statistics()
        nursery.cancel_scope.cancel()
    duplicated = sum(n - 1 for n in runs.values())
    print(f"jobs=200 lost_claim_replies=20 duplicated={duplicated} attempts={set(attempts)}")
    assert duplicated == 0 and set(attempts) == {1}
    assert stats.completed == 200


async def test_fenced_reap_resent_is_still_fenced(
    redis_storage_factory: Callable[[], RedisStorage],
) -> None:
    """The reply cache never lets a stale fence act: a fenced reap stays fenced."""
    async with redis_storage_factory() as storage:
        result = await storage.reap(NS, fence=Fence("reaper", "nobody", 7))
    assert result.fenced
