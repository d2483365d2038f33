"""Queue behaviour on MemoryStorage.

Time-dependent tests run under trio's MockClock (``autojump_clock``): no real sleeps.
Tests with sync handlers run on the real clock (they finish in milliseconds): while a
handler thread runs, an autojumping clock would see every task blocked and jump ahead.
"""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_jobqueue as jq
from trio_jobqueue._presence import PRESENCE_INTERVAL, PRESENCE_TTL
from trio_jobqueue.storage import Fence, WorkerRecord


async def test_retry_delay_hides_job_until_due(autojump_clock: trio.testing.MockClock) -> None:
    """A fixed retry delay keeps the failing job invisible to workers until its time."""
    runs: list[float] = []

    async def flaky(job: jq.Job[Any]) -> str:
        runs.append(trio.current_time())
        if job.attempt == 1:
            raise RuntimeError("again")
        return "ok"

    storage = jq.MemoryStorage()
    async with jq.open_queue(storage, flaky, retry_delay=7.5) as q:
        await q.enqueue("d", 1)
        await trio.sleep(7.0)
        status = await q.get_status("d")
        assert status is not None and status.state == "failing" and status.attempts == 1
        assert len(runs) == 1
        assert await q.enqueue_and_wait("d", 1, timeout=10) == "ok"
    assert runs[1] - runs[0] == pytest.approx(7.5, abs=0.01)


async def test_exponential_backoff_with_cap(autojump_clock: trio.testing.MockClock) -> None:
    """ExponentialBackoff waits initial * factor**n, capped, between attempts."""
    runs: list[float] = []

    async def always(job: jq.Job[Any]) -> None:
        runs.append(trio.current_time())
        raise RuntimeError("no")

    policy = jq.ExponentialBackoff(initial=1, factor=3, max_delay=5, jitter=0)
    async with jq.open_queue(jq.MemoryStorage(), always, retry_delay=policy) as q:
        with pytest.raises(jq.JobFailedError):
            await q.enqueue_and_wait("x", 1, max_attempts=4, timeout=100)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(runs)]
    assert gaps == [1.0, 3.0, 5.0]


def test_backoff_jitter_stays_in_range() -> None:
    """Jitter shortens a delay by at most the jitter fraction and never exceeds the cap."""
    policy = jq.ExponentialBackoff(initial=2, factor=2, max_delay=10, jitter=0.5)
    for attempt in range(1, 8):
        base = min(2 * 2 ** (attempt - 1), 10)
        for _ in range(50):
            assert base * 0.5 <= policy.delay(attempt) <= base
    with pytest.raises(ValueError, match="jitter"):
        jq.ExponentialBackoff(jitter=2)


async def test_long_job_heartbeats_and_is_not_reaped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler running 5x the visibility timeout keeps its lease (heartbeats) and runs
    exactly once, with the reaper active."""
    runs = 0

    async def long(job: jq.Job[Any]) -> str:
        nonlocal runs
        runs += 1
        await trio.sleep(50)
        return "done"

    async with jq.open_queue(jq.MemoryStorage(), long, visibility_timeout=10) as q:
        assert q.reaper is not None
        assert await q.enqueue_and_wait("long", 1, timeout=100) == "done"
        assert q.reaper.stats.stalled == 0
    assert runs == 1


async def test_dead_worker_job_is_reaped_and_rerun(autojump_clock: trio.testing.MockClock) -> None:
    """A job claimed by a worker that never heartbeats is recovered within about one
    visibility timeout, with a ``stalled`` event, and completed by a live worker."""
    storage = jq.MemoryStorage()
    async with storage:
        async with jq.open_queue(storage) as producer:
            await producer.enqueue("orphan", 1)
        (claim,) = await storage.claim("default", "dead-worker", limit=1, lease=10)
        assert claim.attempt == 1

        async def attempt_of(job: jq.Job[Any]) -> int:
            return job.attempt

        async with jq.open_queue(storage, attempt_of, visibility_timeout=10) as q:
            async with q.events() as events:
                start = trio.current_time()
                with trio.fail_after(60):
                    async for event in events:
                        if event.kind == "completed":
                            break
                        if event.kind == "stalled":
                            assert event.attempt == 1 and event.error is not None
            assert trio.current_time() - start <= 16
            assert await q.get_result("orphan") == 2


async def test_graceful_shutdown_waits_for_grace(autojump_clock: trio.testing.MockClock) -> None:
    """Jobs that finish within shutdown_grace complete; the rest are released with the
    attempt not consumed, and no job is left processing."""
    storage = jq.MemoryStorage()

    async def handler(job: jq.Job[int]) -> int:
        await trio.sleep(job.payload)
        return job.payload

    async with jq.open_queue(storage, handler, concurrency=4, shutdown_grace=5) as q:
        await q.enqueue("fast", 2)
        await q.enqueue("slow", 50)
        await trio.sleep(0.1)
    async with jq.open_queue(storage) as q:
        fast = await q.get_status("fast")
        slow = await q.get_status("slow")
        assert fast is not None and fast.state == "completed"
        assert slow is not None and slow.state == "queued" and slow.attempts == 0
        assert (await storage.stats("default")).processing == 0


async def test_outside_cancellation_is_graceful(autojump_clock: trio.testing.MockClock) -> None:
    """Cancelling the scope around open_queue still shuts down gracefully: a job within
    the grace period completes, and the block's cancellation propagates normally."""
    storage = jq.MemoryStorage()
    finished = []

    async def handler(job: jq.Job[int]) -> int:
        await trio.sleep(1)
        finished.append(job.id)
        return 1

    with trio.CancelScope() as scope:
        async with jq.open_queue(storage, handler, shutdown_grace=5) as q:
            await q.enqueue("j", 1)
            await trio.sleep(0.1)
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert finished == ["j"]
    async with jq.open_queue(storage) as q:
        assert await q.get_result("j") == 1


async def test_body_exception_propagates_unwrapped(autojump_clock: trio.testing.MockClock) -> None:
    """Exception-group policy: an error raised in the block comes out as itself."""
    with pytest.raises(KeyError):
        async with jq.open_queue(jq.MemoryStorage(), lambda job: None):
            raise KeyError("mine")


async def test_job_timeout_fails_the_attempt(autojump_clock: trio.testing.MockClock) -> None:
    """job_timeout cancels a slow handler and counts a failed attempt."""

    async def slow(job: jq.Job[Any]) -> None:
        await trio.sleep(100)

    async with jq.open_queue(
        jq.MemoryStorage(), slow, job_timeout=1, max_attempts=2, retry_delay=0
    ) as q:
        with pytest.raises(jq.JobFailedError) as info:
            await q.enqueue_and_wait("t", 1, timeout=50)
    assert info.value.error.type == "JobTimeoutError"


async def test_sync_handler_runs_in_a_thread() -> None:
    """A plain function handler runs in a worker thread, not the trio thread."""
    main = threading.get_ident()

    def blocking(job: jq.Job[int]) -> bool:
        return threading.get_ident() != main

    async with jq.open_queue(jq.MemoryStorage(), blocking) as q:
        assert await q.enqueue_and_wait("s", 1, timeout=10) is True


async def test_after_execution_can_replace_result_and_ttl() -> None:
    """after_execution sees the context and may replace result and ttl."""
    contexts: list[jq.ExecutionContext] = []

    async def hook(ctx: jq.ExecutionContext) -> None:
        contexts.append(attrs.evolve(ctx))
        ctx.result = {"wrapped": ctx.result}
        ctx.ttl = 5

    storage = jq.MemoryStorage()
    async with jq.open_queue(storage, lambda job: job.payload * 2, after_execution=hook) as q:
        assert await q.enqueue_and_wait("h", 21, timeout=10) == {"wrapped": 42}
        status = await q.get_status("h")
        assert status is not None and status.expires_at is not None
        assert status.finished_at is not None
        assert status.expires_at - status.finished_at == pytest.approx(5)
    (ctx,) = contexts
    assert (ctx.job_id, ctx.payload, ctx.status, ctx.result, ctx.attempt) == (
        "h",
        21,
        "completed",
        42,
        1,
    )
    assert ctx.ttl == 3600 and ctx.duration >= 0 and ctx.worker_id


async def test_after_execution_failure_keeps_original(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises, or sets an invalid TTL, is reported and the original kept."""

    def raising(ctx: jq.ExecutionContext) -> None:
        ctx.result = "changed"
        raise RuntimeError("hook bug")

    def bad_ttl(ctx: jq.ExecutionContext) -> None:
        ctx.ttl = -3

    storage = jq.MemoryStorage()
    async with jq.open_queue(storage, lambda job: "orig", after_execution=raising) as q:
        assert await q.enqueue_and_wait("a", 1, timeout=10) == "orig"
    async with jq.open_queue(
        storage, lambda job: "orig", after_execution=bad_ttl, result_ttl=100
    ) as q:
        assert await q.enqueue_and_wait("b", 1, timeout=10) == "orig"
        status = await q.get_status("b")
        assert status is not None and status.expires_at is not None
        assert status.finished_at is not None
        assert status.expires_at - status.finished_at == pytest.approx(100)
    assert "hook bug" in caplog.text or "after_execution hook failed" in caplog.text
    assert "-3" in caplog.text


async def test_after_execution_on_final_failure_only() -> None:
    """The hook runs after the final failure (not after retried attempts)."""
    statuses: list[tuple[str, int]] = []

    def hook(ctx: jq.ExecutionContext) -> None:
        statuses.append((ctx.status, ctx.attempt))

    def fail(job: jq.Job[Any]) -> None:
        raise ValueError("x")

    async with jq.open_queue(jq.MemoryStorage(), fail, after_execution=hook, retry_delay=0) as q:
        with pytest.raises(jq.JobFailedError):
            await q.enqueue_and_wait("f", 1, timeout=10)
    assert statuses == [("failed", 3)]


@attrs.frozen
class Email:
    to: str
    subject: str


@attrs.frozen
class Sent:
    id: int


async def test_typed_payloads_and_results(autojump_clock: trio.testing.MockClock) -> None:
    """payload_type/result_type structure values through cattrs."""

    async def send(job: jq.Job[Email]) -> Sent:
        assert isinstance(job.payload, Email)
        return Sent(id=len(job.payload.to))

    async with jq.open_queue(jq.MemoryStorage(), send, payload_type=Email, result_type=Sent) as q:
        assert await q.enqueue_and_wait("e", Email("a@b.c", "hi"), timeout=10) == Sent(5)


async def test_handler_raising_base_exception_subclass_fails_attempt() -> None:
    """A handler raising a non-Exception BaseException fails the attempt; the worker
    goes on with the next job."""

    class Weird(BaseException):
        pass

    def weird(job: jq.Job[Any]) -> str:
        if job.id == "weird":
            raise Weird("odd")
        return "fine"

    async with jq.open_queue(jq.MemoryStorage(), weird, max_attempts=1) as q:
        with pytest.raises(jq.JobFailedError) as info:
            await q.enqueue_and_wait("weird", 1, timeout=10)
        assert info.value.error.type == "Weird"
        assert await q.enqueue_and_wait("next", 1, timeout=10) == "fine"


async def test_same_name_shares_on_memory_and_producer_then_consumer() -> None:
    """Two queues with one name on one MemoryStorage share jobs; a producer-only queue's
    jobs are run by a later consumer queue."""
    storage = jq.MemoryStorage()
    async with jq.open_queue(storage, name="emails") as producer:
        for i in range(5):
            await producer.enqueue(f"m{i}", i)
    done: list[str] = []
    async with jq.open_queue(storage, lambda job: done.append(job.id), name="emails") as q:
        async with jq.open_queue(storage, name="emails") as other:
            for i in range(5):
                assert await other.enqueue_and_wait(f"m{i}", i, timeout=10) is None
        again = await q.enqueue("m0", 0)
        assert again.status == "completed" and again.result is None
    assert sorted(done) == [f"m{i}" for i in range(5)]


async def test_fifo_order_with_one_worker() -> None:
    """With concurrency 1, jobs run in enqueue order."""
    order: list[int] = []
    storage = jq.MemoryStorage()
    async with jq.open_queue(storage) as producer:
        for i in range(20):
            await producer.enqueue(str(i), i)
    async with jq.open_queue(storage, lambda job: order.append(job.payload)) as q:
        await q.enqueue_and_wait("19", 19, timeout=10)
    assert order == list(range(20))


async def test_reaper_leader_election_and_failover(autojump_clock: trio.testing.MockClock) -> None:
    """Of several reapers one leads; when it stops, another takes over within lock_ttl;
    a stale fence cannot act."""
    storage = jq.MemoryStorage()
    async with (
        jq.open_reaper(storage, lock_ttl=3, owner="r1") as r1,
        jq.open_reaper(storage, lock_ttl=3, owner="r2") as r2,
    ):
        await trio.sleep(0.01)
        assert r1.is_leader and not r2.is_leader
        old_epoch = r1.epoch
        assert old_epoch is not None
    # Both stopped (r1 released its lock); a new reaper leads with a higher epoch.
    async with jq.open_reaper(storage, lock_ttl=3, owner="r3") as r3:
        await trio.sleep(0.01)
        assert r3.is_leader and r3.epoch is not None and r3.epoch > old_epoch
        async with storage:
            stale = await storage.reap("default", fence=Fence("reaper", "r1", old_epoch))
            assert stale.fenced


async def test_crashed_leader_replaced_when_its_registration_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A leader that died (it stopped refreshing its registration and renewing the lock)
    is replaced about PRESENCE_TTL after its last refresh, long before its lock expires;
    one that was never registered at all is replaced at once."""
    storage = jq.MemoryStorage()
    async with storage:
        # Held the way a worker's reaper with lock_ttl=300 holds it, by a worker that then
        # died right after refreshing its registration.
        await storage.register_worker("default", WorkerRecord("crashed"), ttl=PRESENCE_TTL)
        epoch = await storage.acquire_lock("default", "reaper", "crashed", ttl=300 * 0.75)
        assert epoch is not None
        async with jq.open_reaper(storage, lock_ttl=300, owner="heir") as heir:
            await trio.sleep(PRESENCE_TTL - 0.1)
            assert not heir.is_leader  # the registration still says "alive"
            await trio.sleep(PRESENCE_INTERVAL + 0.2)
            assert heir.is_leader and heir.epoch == epoch + 1
        # A holder with no registration at all (a process of an older version, say).
        epoch = await storage.acquire_lock("default", "reaper", "unregistered", ttl=225)
        assert epoch is not None
        async with jq.open_reaper(storage, lock_ttl=300, owner="heir2") as heir2:
            assert heir2.is_leader and heir2.epoch == epoch + 1


async def test_live_leader_is_not_replaced(autojump_clock: trio.testing.MockClock) -> None:
    """While the leader's worker is registered (alive), another reaper never takes the
    lock, however long it waits."""
    storage = jq.MemoryStorage()

    async def handler(job: jq.Job[Any]) -> None:
        return None

    async with jq.open_queue(storage, handler, lock_ttl=4, worker_id="first") as first:
        await trio.sleep(1)
        assert first.reaper is not None and first.reaper.is_leader
        async with jq.open_reaper(storage, lock_ttl=4, owner="second") as second:
            await trio.sleep(60)
            assert first.reaper.is_leader and not second.is_leader
            workers = {w.id: w for w in await first.workers()}
    assert workers["first"].is_reaper_leader and not workers["second"].is_reaper_leader
    assert (workers["first"].kind, workers["second"].kind) == ("worker", "reaper")


async def test_random_cancellation_of_claims_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Claims cancelled at random points under load never strand or duplicate a job."""
    storage = jq.MemoryStorage()
    rng = random.Random(1234)
    claimed: list[str] = []
    async with storage:
        for i in range(300):
            await storage.enqueue("c", f"j{i}", b"x", max_attempts=1, result_ttl=100)
        while len(claimed) < 300:
            with trio.move_on_after(rng.choice([0, 0.0001, 0.001, 1])):
                if rng.random() < 0.5:
                    await trio.lowlevel.checkpoint()
                claims = await storage.claim("c", "w", limit=rng.randint(1, 7), lease=60, wait=1)
                for c in claims:
                    claimed.append(c.job_id)
                    assert await storage.complete("c", c.job_id, c.token, b"1", ttl=100) == "ok"
        assert (await storage.stats("c")).queued == 0
    lost = 300 - len(set(claimed))
    duplicated = len(claimed) - len(set(claimed))
    print(f"random-cancel memory: lost={lost} duplicated={duplicated}")
    assert lost == 0 and duplicated == 0


async def test_blocked_claim_wakes_on_enqueue(autojump_clock: trio.testing.MockClock) -> None:
    """A claim blocked waiting for work returns as soon as a job is enqueued (no polling
    interval): under the mock clock, no time passes."""
    storage = jq.MemoryStorage()
    async with storage, trio.open_nursery() as nursery:
        result: list[Any] = []

        async def claimer() -> None:
            result.extend(await storage.claim("w", "me", limit=1, lease=10, wait=1000))

        nursery.start_soon(claimer)
        await trio.testing.wait_all_tasks_blocked()
        before = trio.current_time()
        await storage.enqueue("w", "x", b"1", max_attempts=1, result_ttl=10)
    assert [c.job_id for c in result] == ["x"]
    assert trio.current_time() == before


async def test_storage_from_url(autojump_clock: trio.testing.MockClock) -> None:
    """memory:// gives a MemoryStorage; unknown schemes and relative file paths fail."""
    assert isinstance(jq.storage_from_url("memory://"), jq.MemoryStorage)
    for bad in ("ftp://x", "file://relative/path", "nonsense"):
        with pytest.raises(ValueError):
            jq.storage_from_url(bad)


async def test_invalid_options_rejected(autojump_clock: trio.testing.MockClock) -> None:
    """Bad open_queue options raise ValueError naming the option, before opening."""
    storage = jq.MemoryStorage()
    for kwargs, word in [
        ({"concurrency": 0}, "concurrency"),
        ({"visibility_timeout": -1}, "visibility_timeout"),
        ({"result_ttl": float("inf")}, "result_ttl"),
        ({"retry_delay": -1}, "seconds"),
        ({"shutdown_grace": -1}, "shutdown_grace"),
        ({"max_attempts": 0}, "max_attempts"),
    ]:
        with pytest.raises(ValueError, match=word):
            async with jq.open_queue(storage, **kwargs):
                pass
    assert not storage.is_open


async def test_skip_grace_releases_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """skip_grace() during shutdown ends the grace period: the running job is released
    (attempt not consumed) without waiting the full grace."""
    storage = jq.MemoryStorage()
    started = trio.Event()

    async def hang(job: jq.Job[Any]) -> None:
        started.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        async with jq.open_queue(storage, hang, shutdown_grace=1000) as q:
            await q.enqueue("h", 1)
            await started.wait()
            assert q.worker is not None
            worker = q.worker

            async def second_signal() -> None:
                await trio.sleep(2)
                worker.skip_grace()

            nursery.start_soon(second_signal)
            begin = trio.current_time()
        assert trio.current_time() - begin == pytest.approx(2)
    async with storage:
        record = await storage.get_status("default", "h")
        assert record is not None and record.state == "queued" and record.attempts == 0


async def test_worker_churn_loses_and_duplicates_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Workers that start and stop (grace 0) while 400 jobs flow: every job completes,
    none is lost, and no handler run that finished is ever repeated."""
    storage = jq.MemoryStorage()
    rng = random.Random(7)
    finished_runs: dict[str, int] = {}
    total = 400

    async def handler(job: jq.Job[float]) -> None:
        await trio.sleep(job.payload)
        finished_runs[job.id] = finished_runs.get(job.id, 0) + 1

    async with storage:
        async with jq.open_queue(storage) as producer:
            for i in range(total):
                await producer.enqueue(f"j{i}", rng.uniform(0.01, 2.0), max_attempts=1)

        async def churn(seed: int) -> None:
            local = random.Random(seed)
            while (await storage.stats("default")).queued:
                async with jq.open_queue(storage, handler, concurrency=20, shutdown_grace=0):
                    await trio.sleep(local.uniform(0.5, 3.0))

        async with trio.open_nursery() as nursery:
            for seed in range(3):
                nursery.start_soon(churn, seed)
        async with jq.open_queue(storage, handler, concurrency=50) as q:
            for i in range(total):  # waits for any job still queued; returns at once if done
                await q.enqueue_and_wait(f"j{i}", 0.0, timeout=100)
            statuses = [await q.get_status(f"j{i}") for i in range(total)]
    lost = sum(1 for s in statuses if s is None or s.state != "completed")
    duplicated = sum(n - 1 for n in finished_runs.values())
    print(f"memory churn: jobs={total} lost={lost} duplicated={duplicated}")
    assert lost == 0 and duplicated == 0
    assert all(s is not None and s.attempts == 1 for s in statuses)


@attrs.define(eq=False)
class _FailingBatches(jq.MemoryStorage):
    """Memory with the worker behaviour of a storage whose calls are round trips
    (completions batched into ``complete_many``), the first ``failures`` of those calls
    failing after they were sent (nothing stored)."""

    failures: int = 0
    calls: list[int] = attrs.Factory(list)

    @property
    def batches_calls(self) -> bool:
        return True

    async def complete_many(self, ns: str, items: Any) -> Any:
        self.calls.append(len(items))
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise jq.StorageError("injected: the call failed")
        return await super().complete_many(ns, items)


async def test_batched_completions_that_fail_are_retried_and_each_job_counted_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Jobs whose batched completion failed are stored by their retries: every job is
    completed after one run, counted once, and the worker ends holding nothing."""
    ran: list[str] = []

    async def handler(job: jq.Job[Any]) -> str:
        ran.append(job.id)
        await trio.sleep(0.01 * (int(job.id[1:]) % 3))
        return job.id

    storage = _FailingBatches(failures=3)
    ids = [f"j{i}" for i in range(30)]
    async with jq.open_queue(storage, handler, concurrency=10) as q:
        await q.enqueue_many([(i, None) for i in ids])
        assert [await q.enqueue_and_wait(i, None, timeout=60) for i in ids] == ids
        stats = q.statistics()
        assert stats.in_flight == 0
    assert sorted(ran) == sorted(ids)  # nothing ran twice
    assert stats.completed == 30 and stats.fenced == 0 and stats.released == 0
    assert storage.failures == 0 and len(storage.calls) > 3  # the failures happened
    for i in ids:
        status = await storage.get_status(q.name, i)
        assert status is not None and status.state == "completed" and status.attempts == 1
