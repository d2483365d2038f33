"""API-level conformance checks: plain async functions, one behaviour each.

Every check takes ``make_storage``, a zero-argument callable returning a fresh, unopened
:class:`~trio_jobqueue.Storage` (storages from one factory must share their backing
store), and raises ``AssertionError`` when the backend misbehaves. They run on a real
clock with short waits and use ``Storage.advance_clock`` instead of sleeping for leases
and TTLs, so they take well under a second each on any backend.

Run them all with :data:`API_CHECKS`::

    @pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__)
    async def test_api(check):
        await check(MyStorage)
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import attrs
import trio

from .._errors import (
    InvalidJobError,
    InvalidTtlError,
    JobCancelledError,
    JobFailedError,
    SerializationError,
    WaitTimeoutError,
)
from .._queue import open_queue
from .._serde import BytesSerializer
from .._types import CancelStatus, EnqueueStatus, EventKind, Job, JobEvent, JobState
from ..storage import Storage, WorkerRecord

__all__ = ["API_CHECKS", "StorageFactory"]

StorageFactory = Callable[[], Storage]
Check = Callable[[StorageFactory], Awaitable[None]]

WAIT = 20.0
"""Generous real-time bound for outcomes that should take milliseconds."""


def _name() -> str:
    return f"chk-{uuid.uuid4().hex[:12]}"


async def _echo(job: Job[Any]) -> Any:
    return job.payload


async def check_enqueue_dedup(make_storage: StorageFactory) -> None:
    """First enqueue wins; duplicates report the existing state and change nothing."""
    name = _name()
    async with open_queue(make_storage(), name=name) as q:
        first = await q.enqueue("a", {"n": 1})
        assert first.status == "queued"
        dup = await q.enqueue("a", {"n": 2}, max_attempts=9, result_ttl=5)
        assert dup.status == "duplicate" and dup.existing_state == "queued"
        status = await q.get_status("a")
        assert status is not None and status.state == JobState.QUEUED
        assert status.max_attempts == 3 and status.attempts == 0
    async with open_queue(make_storage(), _echo, name=name) as q:
        assert await q.enqueue_and_wait("a", {"n": 3}, timeout=WAIT) == {"n": 1}
        again = await q.enqueue("a", {"n": 4})
        assert again.status == EnqueueStatus.COMPLETED and again.result == {"n": 1}


async def check_concurrent_enqueue_accepts_one(make_storage: StorageFactory) -> None:
    """Many tasks enqueueing one id through separate storage objects: exactly one wins."""
    name = _name()
    statuses: list[str] = []

    async def one(i: int) -> None:
        async with open_queue(make_storage(), name=name) as q:
            statuses.append((await q.enqueue("same", i)).status)

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(one, i)
    assert statuses.count("queued") == 1 and statuses.count("duplicate") == 11


async def check_none_result_is_success(make_storage: StorageFactory) -> None:
    """A handler returning nothing completes the job (upstream failed it)."""

    async def nothing(job: Job[Any]) -> None:
        return None

    async with open_queue(make_storage(), nothing, name=_name()) as q:
        assert await q.enqueue_and_wait("n", 1, timeout=WAIT) is None
        status = await q.get_status("n")
        assert status is not None and status.state == "completed"


async def check_retry_then_fail(make_storage: StorageFactory) -> None:
    """Attempts count total runs; the last error is stored and raised to waiters."""
    seen: list[int] = []

    async def boom(job: Job[Any]) -> None:
        seen.append(job.attempt)
        raise ValueError(f"boom {job.attempt}")

    async with open_queue(make_storage(), boom, name=_name(), retry_delay=0) as q:
        try:
            await q.enqueue_and_wait("f", 0, timeout=WAIT, max_attempts=3)
        except JobFailedError as exc:
            assert exc.job_id == "f"
            assert exc.error.type == "ValueError" and exc.error.message == "boom 3"
            assert exc.error.traceback and "boom" in exc.error.traceback
        else:
            raise AssertionError("expected JobFailedError")
        assert seen == [1, 2, 3]
        status = await q.get_status("f")
        assert status is not None and status.state == "failed" and status.attempts == 3
        # A failed duplicate raises at once without running the handler again.
        try:
            await q.enqueue_and_wait("f", 0, timeout=WAIT)
        except JobFailedError:
            pass
        else:
            raise AssertionError("expected JobFailedError for the failed duplicate")
        assert seen == [1, 2, 3]


async def check_retry_succeeds(make_storage: StorageFactory) -> None:
    """A job that fails once and then succeeds completes on attempt 2."""

    async def flaky(job: Job[Any]) -> int:
        if job.attempt == 1:
            raise RuntimeError("first time")
        return job.attempt

    async with open_queue(make_storage(), flaky, name=_name(), retry_delay=0) as q:
        assert await q.enqueue_and_wait("r", None, timeout=WAIT) == 2


async def check_many_waiters_one_run(make_storage: StorageFactory) -> None:
    """Several callers waiting on one id share one handler run; one leaving early
    (timeout) does not silence the others."""
    runs: list[str] = []
    release = trio.Event()

    async def slow(job: Job[Any]) -> str:
        runs.append(job.id)
        await release.wait()
        return "done"

    results: list[Any] = []
    async with open_queue(make_storage(), slow, name=_name(), concurrency=4) as q:

        async def waiter() -> None:
            results.append(await q.enqueue_and_wait("w", 1, timeout=WAIT))

        async def impatient() -> None:
            try:
                await q.enqueue_and_wait("w", 1, timeout=0.05)
            except WaitTimeoutError as exc:
                assert isinstance(exc, TimeoutError)
                results.append("timeout")
                release.set()

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(waiter)
            nursery.start_soon(impatient)
    assert runs == ["w"]
    assert sorted(results) == ["done", "done", "done", "timeout"]


async def check_cancel(make_storage: StorageFactory) -> None:
    """Cancel removes queued jobs (id free again, stale payload never runs) and reports
    the other states."""
    name = _name()
    async with open_queue(make_storage(), name=name) as q:
        await q.enqueue("c", "old")
        assert (await q.cancel("c")).status == CancelStatus.CANCELLED
        assert await q.get_status("c") is None
        assert (await q.cancel("c")).status == "not_found"
        assert (await q.enqueue("c", "new")).status == "queued"
    async with open_queue(make_storage(), _echo, name=name) as q:
        assert await q.enqueue_and_wait("c", "ignored", timeout=WAIT) == "new"
        assert (await q.cancel("c")).status == "completed"


async def check_cancel_processing_is_reported(make_storage: StorageFactory) -> None:
    """Cancelling a running job reports ``processing`` and does not stop it."""
    started = trio.Event()
    finish = trio.Event()

    async def slow(job: Job[Any]) -> str:
        started.set()
        await finish.wait()
        return "ok"

    async with open_queue(make_storage(), slow, name=_name()) as q:
        await q.enqueue("p", 1)
        await started.wait()
        assert (await q.cancel("p")).status == "processing"
        finish.set()
        assert await q.enqueue_and_wait("p", 1, timeout=WAIT) == "ok"


async def check_result_ttl_per_job(make_storage: StorageFactory) -> None:
    """TTLs are per job: a short one expires alone, then the id may be enqueued again."""
    storage = make_storage()
    async with open_queue(storage, _echo, name=_name()) as q:
        await q.enqueue_and_wait("short", 1, timeout=WAIT, result_ttl=60)
        await q.enqueue_and_wait("long", 2, timeout=WAIT, result_ttl=6000)
        await storage.advance_clock(120)
        assert await q.get_status("short") is None
        assert await q.get_result("short") is None
        assert await q.get_result("long") == 2
        assert await q.enqueue_and_wait("short", 3, timeout=WAIT) == 3


async def check_update_result_ttl(make_storage: StorageFactory) -> None:
    """update_result_ttl restarts the TTL of terminal jobs and reports other cases."""
    storage = make_storage()
    name = _name()
    async with open_queue(storage, name=name) as producer:
        await producer.enqueue("queued", 1)
        assert (await producer.update_result_ttl("queued", 10)).status == "not_terminal"
        assert (await producer.update_result_ttl("nope", 10)).status == "not_found"
        for bad in (0, -1, float("nan"), float("inf"), "10", True):
            try:
                await producer.update_result_ttl("queued", bad)  # type: ignore[arg-type]
            except InvalidTtlError as exc:
                assert isinstance(exc, ValueError) and repr(bad) in str(exc)
            else:
                raise AssertionError(f"ttl {bad!r} accepted")
        await producer.cancel("queued")
    async with open_queue(storage, _echo, name=name) as q:
        await q.enqueue_and_wait("t", 1, timeout=WAIT, result_ttl=100)
        await storage.advance_clock(90)
        assert (await q.update_result_ttl("t", 100)).status == "updated"
        await storage.advance_clock(90)
        assert await q.get_result("t") == 1
        await storage.advance_clock(20)
        assert await q.get_result("t") is None


async def check_bad_input_writes_nothing(make_storage: StorageFactory) -> None:
    """Invalid ids, attempts, TTLs and unencodable payloads raise before any write."""
    storage = make_storage()
    async with open_queue(storage, name=_name()) as q:
        for bad_id in ("", 7, None, b"bytes", "x" * 1025, "\ud800"):
            try:
                await q.enqueue(bad_id, 1)  # type: ignore[arg-type]
            except InvalidJobError:
                pass
            else:
                raise AssertionError(f"id {bad_id!r} accepted")
        for kwargs in ({"max_attempts": 0}, {"max_attempts": "3"}, {"result_ttl": -1}):
            try:
                await q.enqueue("k", 1, **kwargs)
            except InvalidJobError:
                pass
            else:
                raise AssertionError(f"{kwargs} accepted")
        try:
            await q.enqueue("unencodable", {1, 2, 3})
        except SerializationError:
            pass
        else:
            raise AssertionError("a set was JSON-encoded")
        for written in ("k", "unencodable"):
            assert await q.get_status(written) is None
        stats = await storage.stats(q.name)
        assert stats.queued == 0


async def check_odd_ids(make_storage: StorageFactory) -> None:
    """Ids with separators, dots, spaces, unicode and 1024 characters round-trip."""
    ids = ["a:b:c", "../../etc/passwd", "with space", "ünï/cødé ✓", "{tag}", "x" * 1024, "\0"]
    async with open_queue(make_storage(), _echo, name=_name(), concurrency=4) as q:
        for job_id in ids:
            assert await q.enqueue_and_wait(job_id, job_id, timeout=WAIT) == job_id
            status = await q.get_status(job_id)
            assert status is not None and status.id == job_id


async def check_binary_payloads(make_storage: StorageFactory) -> None:
    """Binary payloads and results survive byte for byte."""
    blob = bytes(range(256)) * 4

    async def reverse(job: Job[bytes]) -> bytes:
        return job.payload[::-1]

    async with open_queue(make_storage(), reverse, name=_name(), serializer=BytesSerializer()) as q:
        assert await q.enqueue_and_wait("bin", blob, timeout=WAIT) == blob[::-1]


async def check_namespaces(make_storage: StorageFactory) -> None:
    """Different names isolate ids and results; the same name on two storage objects
    shares them."""
    name_a, name_b = _name(), _name()
    async with (
        open_queue(make_storage(), name=name_a) as a,
        open_queue(make_storage(), name=name_b) as b,
    ):
        assert (await a.enqueue("same", "A")).status == "queued"
        assert (await b.enqueue("same", "B")).status == "queued"
    async with open_queue(make_storage(), _echo, name=name_a) as a2:
        assert await a2.enqueue_and_wait("same", "?", timeout=WAIT) == "A"


async def check_unencodable_result_fails_attempt(make_storage: StorageFactory) -> None:
    """A result the serializer cannot encode fails the attempt instead of sticking."""

    async def bad(job: Job[Any]) -> object:
        return object()

    async with open_queue(make_storage(), bad, name=_name(), max_attempts=1) as q:
        try:
            await q.enqueue_and_wait("u", 1, timeout=WAIT)
        except JobFailedError as exc:
            assert exc.error.type == "SerializationError"
        else:
            raise AssertionError("expected a failed job")


async def check_events(make_storage: StorageFactory) -> None:
    """events() reports the lifecycle of a job that fails once and then succeeds."""

    async def flaky(job: Job[Any]) -> str:
        if job.attempt == 1:
            raise RuntimeError("once")
        return "ok"

    storage = make_storage()
    async with open_queue(storage, flaky, name=_name(), retry_delay=0) as q, q.events() as events:
        await q.enqueue_and_wait("e", 1, timeout=WAIT)
        seen: list[JobEvent] = []
        with trio.fail_after(WAIT):
            async for event in events:
                seen.append(event)
                if event.kind == EventKind.COMPLETED:
                    break
    kinds = [e.kind for e in seen if e.job_id == "e"]
    assert kinds == ["enqueued", "started", "failing", "started", "completed"], kinds
    assert seen[-1].result == "ok" and seen[-1].attempt == 2
    assert seen[2].error is not None and seen[2].error.message == "once"


async def check_stalled_job_consumes_attempt(make_storage: StorageFactory) -> None:
    """A job whose worker vanished is re-queued by the reaper with its attempt consumed,
    and fails once attempts run out (no infinite stall loop)."""
    storage = make_storage()
    name = _name()
    async with storage:
        async with open_queue(storage, name=name, max_attempts=2) as q:
            await q.enqueue("s", 1)
        for attempt in (1, 2):
            claims = await storage.claim(name, "ghost", limit=1, lease=30, wait=WAIT)
            assert [c.attempt for c in claims] == [attempt]
            await storage.advance_clock(31)
            reaped = await storage.reap(name)
            assert [(j.job_id, j.attempt, j.failed) for j in reaped.stalled] == [
                ("s", attempt, attempt == 2)
            ]
        record = await storage.get_status(name, "s")
        assert record is not None and record.state == "failed" and record.attempts == 2


async def check_late_outcome_is_fenced(make_storage: StorageFactory) -> None:
    """A stalled worker's late completion cannot overwrite the newer attempt."""
    storage = make_storage()
    name = _name()
    async with storage:
        await storage.enqueue(name, "j", b"1", max_attempts=3, result_ttl=100)
        (old,) = await storage.claim(name, "old", limit=1, lease=30)
        await storage.advance_clock(31)
        await storage.reap(name)
        (new,) = await storage.claim(name, "new", limit=1, lease=30)
        assert new.attempt == 2 and new.token != old.token
        assert await storage.complete(name, "j", old.token, b'"late"', ttl=100) == "stale"
        assert await storage.heartbeat(name, [("j", old.token), ("j", new.token)], lease=30) == [
            False,
            True,
        ]
        assert await storage.complete(name, "j", new.token, b'"fresh"', ttl=100) == "ok"
        record = await storage.get_status(name, "j")
        assert record is not None and record.result == b'"fresh"'


async def check_shutdown_releases_running_jobs(make_storage: StorageFactory) -> None:
    """Leaving open_queue past the grace period returns running jobs to the queue
    without consuming the attempt; the next worker runs them."""
    storage = make_storage()
    name = _name()
    started = trio.Event()

    async def hang(job: Job[Any]) -> None:
        started.set()
        await trio.sleep_forever()

    async with open_queue(storage, hang, name=name, shutdown_grace=0.05) as q:
        await q.enqueue("h", 1)
        await started.wait()
    async with open_queue(storage, name=name) as q:
        status = await q.get_status("h")
        assert status is not None and status.state == "queued" and status.attempts == 0

    async def fine(job: Job[Any]) -> int:
        return job.attempt

    async with open_queue(storage, fine, name=name) as q:
        assert await q.enqueue_and_wait("h", 1, timeout=WAIT) == 1


async def check_leader_lock(make_storage: StorageFactory) -> None:
    """One holder at a time; epochs grow; a stale fence cannot reap."""
    from ..storage import Fence

    storage = make_storage()
    name = _name()
    async with storage:
        e1 = await storage.acquire_lock(name, "reaper", "a", ttl=30)
        assert e1 is not None
        assert await storage.acquire_lock(name, "reaper", "b", ttl=30) is None
        assert await storage.acquire_lock(name, "reaper", "a", ttl=30) == e1
        await storage.advance_clock(31)
        e2 = await storage.acquire_lock(name, "reaper", "b", ttl=30)
        assert e2 is not None and e2 > e1
        assert not await storage.renew_lock(name, "reaper", "a", e1, ttl=30)
        assert (await storage.reap(name, fence=Fence("reaper", "a", e1))).fenced
        assert not (await storage.reap(name, fence=Fence("reaper", "b", e2))).fenced
        assert await storage.release_lock(name, "reaper", "b", e2)
        e3 = await storage.acquire_lock(name, "reaper", "a", ttl=30)
        assert e3 is not None and e3 > e2


async def check_worker_registry(make_storage: StorageFactory) -> None:
    """Registrations are listed from every storage object, refreshed in place, expire each
    on its own, and can be withdrawn; a lock held by an owner whose registration expired
    is taken with take_from_dead, one held by a registered owner is not."""
    from ..storage import WorkerRecord

    storage, other = make_storage(), make_storage()
    name = _name()
    async with storage, other:
        await storage.register_worker(
            name, WorkerRecord("w1", host="h", pid=1, started_at=1.0, jobs=("a", "b")), ttl=50
        )
        await other.register_worker(name, WorkerRecord("w2", started_at=2.0), ttl=100)
        listed = await other.list_workers(name)
        assert [w.worker_id for w in listed] == ["w1", "w2"]
        assert listed[0].jobs == ("a", "b") and listed[0].pid == 1 and listed[0].host == "h"
        assert listed[0].expires_at > listed[0].last_seen
        await storage.register_worker(
            name, WorkerRecord("w1", started_at=1.0, in_flight=3, state="stopping"), ttl=50
        )
        (w1, _) = await storage.list_workers(name)
        assert (w1.in_flight, w1.state) == (3, "stopping")
        assert await storage.acquire_lock(name, "reaper", "w1", ttl=300) is not None
        assert await other.acquire_lock(name, "reaper", "w2", ttl=300, take_from_dead=True) is None
        holder = await other.lock_holder(name, "reaper")
        assert holder is not None and holder.owner == "w1"
        await storage.advance_clock(60)
        if other is not storage:  # one MemoryStorage object may stand for both
            await other.advance_clock(60)
        assert [w.worker_id for w in await storage.list_workers(name)] == ["w2"]
        assert await other.acquire_lock(name, "reaper", "w2", ttl=300) is None
        epoch = await other.acquire_lock(name, "reaper", "w2", ttl=300, take_from_dead=True)
        assert epoch is not None
        holder = await storage.lock_holder(name, "reaper")
        assert holder is not None and (holder.owner, holder.epoch) == ("w2", epoch)
        assert await other.unregister_worker(name, "w2")
        assert not await other.unregister_worker(name, "w2")
        assert await storage.list_workers(name) == []


async def check_scheduled_job(make_storage: StorageFactory) -> None:
    """A job enqueued with a delay is ``scheduled`` (with its due time) until then, dedups
    by id, is not claimed before its time while other work runs, and runs after it."""
    started: dict[str, float] = {}

    async def record(job: Job[Any]) -> Any:
        started[job.id] = time.time()
        return job.payload

    async with open_queue(make_storage(), record, name=_name()) as q:
        before = time.time()
        first = await q.enqueue("later", "x", delay=0.4)
        assert first.status == EnqueueStatus.SCHEDULED, first
        status = await q.get_status("later")
        assert status is not None and status.state == JobState.SCHEDULED, status
        assert status.run_at is not None and before + 0.3 < status.run_at < time.time() + 1.0
        dup = await q.enqueue("later", "y")
        assert dup.status == "duplicate" and dup.existing_state == JobState.SCHEDULED, dup
        assert await q.enqueue_and_wait("now", "n", timeout=WAIT) == "n"
        assert "later" not in started, "a scheduled job ran before its time"
        assert await q.enqueue_and_wait("later", "ignored", timeout=WAIT) == "x"
        assert started["later"] >= status.run_at - 0.05, (started["later"], status.run_at)
        done = await q.get_status("later")
        assert done is not None and done.state == JobState.COMPLETED and done.run_at is None


async def check_scheduled_cancel_and_stats(make_storage: StorageFactory) -> None:
    """A scheduled job counts as scheduled, can be cancelled (the id is free again), and a
    run_at in the past (epoch or aware datetime) runs at once."""
    storage = make_storage()
    name = _name()
    async with open_queue(storage, name=name) as q:
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        assert (await q.enqueue("s", 1, run_at=when)).status == EnqueueStatus.SCHEDULED
        status = await q.get_status("s")
        assert status is not None and status.run_at is not None
        assert abs(status.run_at - when.timestamp()) < 1.0, (status.run_at, when)
        stats = await storage.stats(name)
        assert (stats.scheduled, stats.queued, stats.delayed) == (1, 0, 0), stats
        assert (await q.cancel("s")).status == CancelStatus.CANCELLED
        assert await q.get_status("s") is None
        assert (await q.enqueue("s", 2)).status == EnqueueStatus.QUEUED
        past = await q.enqueue("p", 3, run_at=time.time() - 60)
        assert past.status == EnqueueStatus.QUEUED, past
        aware_past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        assert (await q.enqueue("p2", 4, run_at=aware_past)).status == EnqueueStatus.QUEUED
        assert (await q.enqueue("z", 5, delay=0)).status == EnqueueStatus.QUEUED
        stats = await storage.stats(name)
        assert (stats.scheduled, stats.queued) == (0, 4), stats


async def check_bad_schedule_values_write_nothing(make_storage: StorageFactory) -> None:
    """A negative or NaN delay or run_at, both at once, a naive datetime, and a priority
    out of range or not an int are refused with a ValueError naming the value; nothing is
    written."""
    storage = make_storage()
    name = _name()
    naive = datetime.datetime(2030, 1, 1)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"delay": -1.0}, "-1.0"),
        ({"delay": math.nan}, "nan"),
        ({"delay": math.inf}, "inf"),
        ({"delay": "10"}, "'10'"),
        ({"run_at": -5.0}, "-5.0"),
        ({"run_at": math.nan}, "nan"),
        ({"run_at": naive}, "naive"),
        ({"delay": 1.0, "run_at": time.time()}, "both"),
        ({"priority": 1001}, "1001"),
        ({"priority": -1001}, "-1001"),
        ({"priority": 1.5}, "1.5"),
        ({"priority": True}, "True"),
    ]
    async with open_queue(storage, name=name) as q:
        for options, named in bad:
            try:
                await q.enqueue("j", 1, **options)
            except ValueError as exc:
                assert isinstance(exc, InvalidJobError), (options, exc)
                assert named in str(exc), (options, str(exc))
            else:
                raise AssertionError(f"enqueue(**{options!r}) was accepted")
            try:
                await q.enqueue_and_wait("j", 1, timeout=1.0, **options)
            except InvalidJobError:
                pass
            else:
                raise AssertionError(f"enqueue_and_wait(**{options!r}) was accepted")
        assert await q.get_status("j") is None
        stats = await storage.stats(name)
        assert (stats.queued, stats.scheduled, stats.delayed) == (0, 0, 0), stats


async def check_priorities(make_storage: StorageFactory) -> None:
    """Jobs run highest priority first, FIFO among equals (the extremes of the range
    included)."""
    order: list[str] = []

    async def note(job: Job[Any]) -> None:
        order.append(job.id)

    name = _name()
    storage = make_storage()
    async with open_queue(storage, name=name) as q:
        for job_id, priority in [
            ("a", 0),
            ("b", 5),
            ("c", 0),
            ("d", -1),
            ("e", 5),
            ("f", 1000),
            ("g", -1000),
        ]:
            assert (await q.enqueue(job_id, None, priority=priority)).status == "queued"
        status = await q.get_status("b")
        assert status is not None and status.priority == 5, status
    async with open_queue(make_storage(), note, name=name, concurrency=1) as q:
        await q.enqueue_and_wait("g", None, timeout=WAIT)
    assert order == ["f", "b", "e", "a", "c", "d", "g"], order


async def check_release_and_retry_keep_priority(make_storage: StorageFactory) -> None:
    """A released job goes back to the head of its own priority (not before higher ones),
    and a delayed retry keeps its priority when it becomes due."""
    storage = make_storage()
    name = _name()
    async with storage:
        for job_id, priority in [("x", 1), ("y", 0), ("z", 0)]:
            await storage.enqueue(
                name, job_id, b"", max_attempts=3, result_ttl=100, priority=priority
            )
        (x,) = await storage.claim(name, "w", limit=1, lease=60)
        (y,) = await storage.claim(name, "w", limit=1, lease=60)
        assert (x.job_id, y.job_id) == ("x", "y")
        assert await storage.release(name, "y", y.token) == "ok"
        assert await storage.release(name, "x", x.token) == "ok"
        await storage.enqueue(name, "hi", b"", max_attempts=3, result_ttl=100, priority=1)
        claimed = await storage.claim(name, "w", limit=4, lease=60)
        assert [c.job_id for c in claimed] == ["x", "hi", "y", "z"], claimed
        by_id = {c.job_id: c for c in claimed}
        assert await storage.retry(name, "y", by_id["y"].token, b"e", delay=100) == "ok"
        assert await storage.retry(name, "z", by_id["z"].token, b"e", delay=0) == "ok"
        await storage.enqueue(name, "low", b"", max_attempts=3, result_ttl=100, priority=-1)
        await storage.advance_clock(100)
        again = await storage.claim(name, "w", limit=3, lease=60)
        # z (priority 0) is ahead of y by position; both are ahead of the later, lower one.
        assert [c.job_id for c in again] == ["z", "y", "low"], again


async def check_retry_and_delete(make_storage: StorageFactory) -> None:
    """A failed job can be retried (fresh attempts, it then runs and completes) and any
    job but a running one deleted (the id is free); the statuses say what happened."""
    fail_first = {"boom": True}

    async def flaky(job: Job[Any]) -> str:
        if fail_first.pop(job.id, False):
            raise ValueError("first run fails")
        return f"ran {job.attempt}"

    name = _name()
    async with open_queue(make_storage(), flaky, name=name, max_attempts=1) as q:
        try:
            await q.enqueue_and_wait("boom", None, timeout=WAIT)
        except JobFailedError:
            pass
        else:
            raise AssertionError("the first run should have failed")
        assert (await q.retry("boom")).status == "retried"
        assert await q.enqueue_and_wait("boom", None, timeout=WAIT) == "ran 1"
        assert (await q.retry("boom")).status == "not_failed"
        assert (await q.retry("nobody")).status == "not_found"
        assert (await q.delete("boom")).status == "deleted"
        assert await q.get_status("boom") is None
        assert (await q.delete("boom")).status == "not_found"
        assert (await q.enqueue("boom", None)).status == "queued"
    async with open_queue(make_storage(), name=name) as q:
        for job_id in ("s", "q"):
            await q.delete(job_id)
        await q.enqueue("s", None, delay=3600)
        assert (await q.delete("s")).status == "deleted"
        assert (await q.enqueue("s", None)).status == "queued"


async def check_bulk_retry_and_purge(make_storage: StorageFactory) -> None:
    """retry_failed and purge(state) act on every job of the state (or ``limit`` of them)
    and return how many; purge of ``processing`` is refused."""
    storage = make_storage()
    name = _name()
    async with storage:
        for n in range(5):
            await storage.enqueue(name, f"f{n}", b"", max_attempts=1, result_ttl=600)
        claims = await storage.claim(name, "w", limit=5, lease=60)
        for claim in claims:
            assert await storage.fail(name, claim.job_id, claim.token, b"{}", ttl=600) == "ok"
        for n in range(3):
            await storage.enqueue(name, f"s{n}", b"", max_attempts=1, result_ttl=600, delay=600)
    async with open_queue(make_storage(), name=name) as q:
        assert await q.retry_failed(limit=2) == 2
        assert await q.retry_failed() == 3
        assert await q.retry_failed() == 0
        assert await q.purge("scheduled", limit=1) == 1
        assert await q.purge(JobState.SCHEDULED) == 2
        assert await q.purge("queued") == 5
        try:
            await q.purge("processing")
        except InvalidJobError:
            pass
        else:
            raise AssertionError("purge('processing') was accepted")
        stats = await q.storage.stats(name)
        assert (stats.queued, stats.scheduled, stats.failed) == (0, 0, 0), stats


async def check_pause_stops_claims(make_storage: StorageFactory) -> None:
    """A paused queue's worker (any storage object of it) claims nothing while enqueues
    are accepted; after resume it runs the waiting jobs."""
    ran: list[str] = []

    async def note(job: Job[Any]) -> str:
        ran.append(job.id)
        return job.id

    name = _name()
    async with open_queue(make_storage(), name=name) as admin:
        await admin.pause()
        assert await admin.is_paused()
        async with open_queue(make_storage(), note, name=name) as q:
            assert await q.is_paused()
            assert (await q.enqueue("held", None)).status == "queued"
            await trio.sleep(0.3)
            assert ran == [], ran
            status = await q.get_status("held")
            assert status is not None and status.state == JobState.QUEUED
            await admin.resume()
            assert not await q.is_paused()
            assert await q.enqueue_and_wait("held", None, timeout=WAIT) == "held"


async def check_enqueue_many(make_storage: StorageFactory) -> None:
    """enqueue_many over several chunks answers per job in order (the first occurrence of
    an id wins, also within the batch), takes per-job options, and an invalid item
    anywhere means nothing at all is written."""
    from .._types import JobSpec

    name = _name()
    async with open_queue(make_storage(), name=name) as q:
        jobs: list[Any] = [(f"m{n % 550}", n) for n in range(600)]
        jobs.append(JobSpec("later", "x", delay=3600, priority=7))
        results = await q.enqueue_many(jobs)
        assert len(results) == 601
        statuses = [r.status for r in results]
        assert statuses[:550] == ["queued"] * 550, statuses[:550]
        assert all(
            r.status == "duplicate" and r.existing_state == "queued" for r in results[550:600]
        )
        assert statuses[600] == EnqueueStatus.SCHEDULED
        status = await q.get_status("m3")
        assert status is not None and status.state == JobState.QUEUED
        later = await q.get_status("later")
        assert later is not None and later.priority == 7 and later.state == JobState.SCHEDULED
        bad: list[Any] = [("ok-1", 1), ("ok-2", 2), JobSpec("bad", 3, delay=-1)]
        try:
            await q.enqueue_many(bad)
        except InvalidJobError as exc:
            assert "jobs[2]" in str(exc), exc
        else:
            raise AssertionError("an invalid item was accepted")
        assert await q.get_status("ok-1") is None
        assert await q.enqueue_many([]) == []


async def check_list_jobs(make_storage: StorageFactory) -> None:
    """list_jobs pages through a state in its order (queued: priority then FIFO; failed:
    newest first) with pages of at most ``limit``; counts() agrees; a foreign cursor and
    a bad state or limit are refused."""
    storage = make_storage()
    name = _name()
    async with storage:
        for n in range(5):
            await storage.enqueue(
                name, f"q{n}", b"", max_attempts=1, result_ttl=600, priority=n % 2
            )
        await storage.enqueue(name, "f0", b"", max_attempts=1, result_ttl=600, priority=9)
        await storage.enqueue(name, "f1", b"", max_attempts=1, result_ttl=600, priority=8)
        for job_id in ("f0", "f1"):
            (claim,) = await storage.claim(name, "w", limit=1, lease=60)
            assert claim.job_id == job_id
            await storage.fail(name, job_id, claim.token, b"{}", ttl=600)
    async with open_queue(make_storage(), name=name) as q:
        seen: list[str] = []
        cursor = None
        while True:
            page = await q.list_jobs("queued", limit=2, cursor=cursor)
            assert len(page.jobs) <= 2
            seen += [job.id for job in page.jobs]
            cursor = page.cursor
            if cursor is None:
                break
        assert seen == ["q1", "q3", "q0", "q2", "q4"], seen
        failed = await q.list_jobs(JobState.FAILED)
        assert [job.id for job in failed.jobs] == ["f1", "f0"] and failed.cursor is None
        assert failed.jobs[0].state == JobState.FAILED and failed.jobs[0].error is not None
        assert (await q.list_jobs("scheduled")).jobs == ()
        counts = await q.counts()
        assert (counts["queued"], counts["failed"], counts["scheduled"]) == (5, 2, 0), counts
        for bad in (
            {"state": "nope"},
            {"state": "queued", "limit": 0},
            {"state": "queued", "limit": 1001},
            {"state": "queued", "cursor": "not-a-cursor"},
        ):
            try:
                await q.list_jobs(**bad)
            except InvalidJobError:
                pass
            else:
                raise AssertionError(f"list_jobs(**{bad!r}) was accepted")


# -- running-job control -----------------------------------------------------------------


async def check_force_cancel_running_job(make_storage: StorageFactory) -> None:
    """``cancel(id, force=True)`` from another storage object: ``cancelling``; the handler
    sees ``Cancelled`` within 1 s, the waiter ``JobCancelledError``, a ``cancelled`` event
    goes out, the id is free; the other running job completes; the cancelled attempt's
    late outcome is fenced at the storage."""
    started: dict[str, trio.Event] = {"victim": trio.Event(), "other": trio.Event()}
    cancelled = trio.Event()
    finish_other = trio.Event()

    async def handler(job: Job[Any]) -> str:
        started[job.id].set()
        if job.id == "other":
            await finish_other.wait()
            return "other done"
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    name = _name()
    async with open_queue(make_storage(), handler, name=name, concurrency=2) as q:
        await q.enqueue("victim", None)
        await q.enqueue("other", None)
        await started["victim"].wait()
        await started["other"].wait()
        async with open_queue(make_storage(), name=name) as admin, admin.events() as events:
            raised: list[BaseException] = []

            async def wait_victim() -> None:
                try:
                    await admin.enqueue_and_wait("victim", None, timeout=WAIT)
                except JobCancelledError as exc:
                    raised.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_victim)
                await trio.sleep(0.1)  # the waiter subscribes
                asked = trio.current_time()
                assert (await admin.cancel("victim", force=True)).status == "cancelling"
                with trio.fail_after(WAIT):
                    await cancelled.wait()
                took = trio.current_time() - asked
                assert took < 1.0, f"the handler was cancelled {took:.3f} s after the cancel"
            assert raised and isinstance(raised[0], JobCancelledError)
            with trio.fail_after(WAIT):
                async for event in events:
                    if event.kind == EventKind.CANCELLED and event.job_id == "victim":
                        assert event.attempt == 1
                        break
            assert await admin.get_status("victim") is None
            assert (await admin.cancel("victim", force=True)).status == "not_found"
            finish_other.set()
            assert await admin.enqueue_and_wait("other", None, timeout=WAIT) == "other done"
    storage = make_storage()
    async with storage:
        await storage.enqueue(name, "late", b"1", max_attempts=3, result_ttl=100)
        (claim,) = await storage.claim(name, "w", limit=1, lease=30)
        assert await storage.force_cancel(name, "late") == CancelStatus.CANCELLING
        assert await storage.heartbeat(name, [("late", claim.token)], lease=30) == [False]
        assert await storage.complete(name, "late", claim.token, b'"x"', ttl=100) == "stale"
        assert await storage.get_status(name, "late") is None
        assert (
            await storage.enqueue(name, "late", b"2", max_attempts=3, result_ttl=100)
        ).status == (EnqueueStatus.QUEUED)


async def check_progress(make_storage: StorageFactory) -> None:
    """A handler's progress is visible from another storage object (status and a
    ``progress`` event) and kept after completion; a stale token's write is rejected and
    changes nothing."""
    reported = trio.Event()
    finish = trio.Event()

    async def handler(job: Job[Any]) -> str:
        assert await job.report_progress({"step": 2, "of": 3})
        reported.set()
        await finish.wait()
        return "done"

    name = _name()
    async with open_queue(make_storage(), name=name) as admin, admin.events() as events:
        async with open_queue(make_storage(), handler, name=name) as q:
            await q.enqueue("p", None)
            with trio.fail_after(WAIT):
                await reported.wait()
                async for event in events:
                    if event.kind == EventKind.PROGRESS:
                        assert event.job_id == "p" and event.attempt == 1
                        assert event.progress == {"step": 2, "of": 3}
                        break
            status = await admin.get_status("p")
            assert status is not None and status.progress == {"step": 2, "of": 3}
            finish.set()
            assert await admin.enqueue_and_wait("p", None, timeout=WAIT) == "done"
        status = await admin.get_status("p")
        assert status is not None and status.progress == {"step": 2, "of": 3}
    storage = make_storage()
    async with storage:
        await storage.enqueue(name, "s", b"1", max_attempts=3, result_ttl=100)
        (old,) = await storage.claim(name, "old", limit=1, lease=30)
        assert await storage.set_progress(name, "s", old.token, b"0.5") == "ok"
        await storage.advance_clock(31)
        await storage.reap(name)
        (new,) = await storage.claim(name, "new", limit=1, lease=30)
        assert await storage.set_progress(name, "s", old.token, b"0.9") == "stale"
        record = await storage.get_status(name, "s")
        assert record is not None and record.progress == b"0.5"
        assert await storage.set_progress(name, "s", new.token, b"0.75") == "ok"
        record = await storage.get_status(name, "s")
        assert record is not None and record.progress == b"0.75"


@attrs.define
class _FakeTracing:
    """A ``tracing`` hook without OpenTelemetry: a fixed trace context per enqueue call,
    and the context each handler run was given."""

    carrier: bytes
    seen: dict[str, bytes | None] = attrs.field(factory=dict)

    @contextlib.contextmanager
    def enqueue_span(self, ns: str, job_ids: Sequence[str], operation: str) -> Iterator[bytes]:
        yield self.carrier

    @contextlib.contextmanager
    def handler_span(self, ns: str, claim: Any, carrier: bytes | None) -> Iterator[None]:
        self.seen[claim.job_id] = carrier
        yield


async def check_trace_context_round_trips(make_storage: StorageFactory) -> None:
    """The trace context a traced enqueue stores with a job (``enqueue``, both forms of
    ``enqueue_many``) reaches the handler byte for byte, with the payload intact; a
    worker without tracing and ``get_payload`` see the plain payload; an untraced job
    stores its payload alone."""
    from .._instrument import split_trace
    from .._types import JobSpec

    name = _name()
    tracing = _FakeTracing(b'{"traceparent":"00-' + b"ab" * 16 + b"-" + b"cd" * 8 + b'-01"}')
    got: dict[str, Any] = {}
    all_ran = trio.Event()

    async def keep(job: Job[Any]) -> None:
        got[job.id] = job.payload
        if len(got) == 6:
            all_ran.set()

    payload = {"text": "\x00jq:tc\x00 ünïcode", "n": [1, 2]}
    async with open_queue(make_storage(), name=name, tracing=tracing) as producer:
        await producer.enqueue("one", payload)
        await producer.enqueue_many([("pair", payload), JobSpec("spec", payload, priority=3)])
        async with open_queue(make_storage(), name=name) as plain:
            await plain.enqueue("plain", payload)
            raw = await plain.storage.get_payload(name, "plain")
            assert raw is not None and split_trace(raw) == (None, raw), raw
            for job_id in ("one", "pair", "spec"):
                raw = await producer.storage.get_payload(name, job_id)
                assert raw is not None and split_trace(raw)[0] == tracing.carrier, raw
                assert await plain.get_payload(job_id) == payload
        async with open_queue(make_storage(), keep, name=name, tracing=tracing) as worker:
            for job_id in ("one", "pair"):
                await worker.enqueue_and_wait(f"{job_id}-joined", payload, timeout=WAIT)
            with trio.fail_after(WAIT):
                await all_ran.wait()
        assert all(value == payload for value in got.values()), got
        assert {tracing.seen[job_id] for job_id in ("one", "pair", "spec")} == {tracing.carrier}
        assert tracing.seen["plain"] is None

def _utf8(name: str) -> bytes:
    return name.encode("utf-8")


async def check_list_namespaces(make_storage: StorageFactory) -> None:
    """``list_namespaces`` names every queue holding a job, the paused flag or a worker
    registration (odd characters intact), sorted by UTF-8 bytes, from any storage object
    on the store; a name never used is not listed."""
    base = _name()
    names = [
        f"{base}-jobs",
        f"{base}-odd:{{x}}/../ü %2F*?[j]",
        f"{base}-paused",
        f"{base}-worker",
    ]
    async with make_storage() as storage:
        async with open_queue(storage, name=names[0]) as queue:
            await queue.enqueue("a", 1)
        async with open_queue(storage, name=names[1]) as queue:
            await queue.enqueue("b", 2)
        async with open_queue(storage, name=names[2]) as queue:
            await queue.pause()
        await storage.register_worker(names[3], WorkerRecord("w-1", host="h"), ttl=60)
        listed = await storage.list_namespaces()
        assert listed == sorted(set(listed), key=_utf8), listed
        assert [n for n in listed if n.startswith(base)] == sorted(names, key=_utf8), listed
        assert f"{base}-never" not in listed
    async with make_storage() as other:
        assert set(names) <= set(await other.list_namespaces())


API_CHECKS: list[Check] = [
    check_enqueue_dedup,
    check_concurrent_enqueue_accepts_one,
    check_none_result_is_success,
    check_retry_then_fail,
    check_retry_succeeds,
    check_many_waiters_one_run,
    check_cancel,
    check_cancel_processing_is_reported,
    check_result_ttl_per_job,
    check_update_result_ttl,
    check_bad_input_writes_nothing,
    check_odd_ids,
    check_binary_payloads,
    check_namespaces,
    check_unencodable_result_fails_attempt,
    check_events,
    check_stalled_job_consumes_attempt,
    check_late_outcome_is_fenced,
    check_shutdown_releases_running_jobs,
    check_leader_lock,
    check_worker_registry,
    check_scheduled_job,
    check_scheduled_cancel_and_stats,
    check_bad_schedule_values_write_nothing,
    check_priorities,
    check_release_and_retry_keep_priority,
    check_retry_and_delete,
    check_bulk_retry_and_purge,
    check_pause_stops_claims,
    check_enqueue_many,
    check_list_jobs,
    check_force_cancel_running_job,
    check_progress,
    check_trace_context_round_trips,
    check_list_namespaces,
]
"""Every API-level check, in a stable order."""
