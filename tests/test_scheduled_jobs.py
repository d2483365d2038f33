"""Scheduled jobs and priorities beyond the conformance kit: a scheduled job starts right
after its time (never before) whether the worker idles in this process or in another one,
under trio's MockClock exactly at its time, records written before priorities still load,
the CLI takes --delay, --at and --priority, and a blocked claim is woken only when a job
becomes claimable sooner than it planned to look (counted in claims and tokens)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _proc_harness import WorkerPool, run_cli

import trio_jobqueue as jq
from trio_jobqueue import _worker
from trio_jobqueue.storage import MemoryStorage, Storage
from trio_jobqueue.storage import _state as st
from trio_jobqueue.storage import file as file_backend

LIMIT = 2.0
"""No scheduled job may start this long after its time: far above a normal start (ms),
far below the claim timeout (made 60 s here)."""


@pytest.fixture
def long_claim_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every fallback poll 60 s, so that only a wake-up or the due time can start a
    job in time."""
    monkeypatch.setattr(_worker, "CLAIM_WAIT", 60.0)
    monkeypatch.setattr(file_backend, "SAFETY_POLL", 60.0)


async def test_scheduled_job_starts_right_after_its_time_with_an_idle_worker(
    storage_factory: Callable[[], Storage], long_claim_wait: None
) -> None:
    """A job scheduled while the worker sits idle in a blocking claim starts after its
    time, never before, and well before any poll could fire; three in a row."""
    storage = storage_factory()
    if isinstance(storage, jq.RedisStorage):
        storage.claim_repoll = 60.0
    started: dict[str, float] = {}

    async def handler(job: jq.Job[Any]) -> None:
        started[job.id] = time.time()

    async with jq.open_queue(storage, handler, name=f"sched-{uuid.uuid4().hex[:8]}") as q:
        await q.enqueue_and_wait("warm-up", None, timeout=30)
        for n in range(3):
            await trio.sleep(0.05)  # the worker is back in its blocking claim
            job_id = f"later-{n}"
            assert (await q.enqueue(job_id, n, delay=0.3)).status == "scheduled"
            status = await q.get_status(job_id)
            assert status is not None and status.run_at is not None
            await q.enqueue_and_wait(job_id, n, timeout=30)
            lateness = started[job_id] - status.run_at
            print(f"{type(storage).__name__}: {job_id} started {lateness * 1e3:.1f} ms late")
            assert -0.005 <= lateness < LIMIT, lateness


async def test_scheduled_job_runs_exactly_at_its_time_under_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On MemoryStorage under trio's MockClock, jobs scheduled half an hour and an hour
    ahead start at exactly their time (no polling, no real sleeping), in due order."""
    storage = MemoryStorage()
    started: list[tuple[str, float]] = []

    async def handler(job: jq.Job[Any]) -> None:
        started.append((job.id, storage.now()))

    async with jq.open_queue(storage, handler, name="mock") as q:
        await q.enqueue("hour", None, delay=3600.0)
        await q.enqueue("half", None, delay=1800.0)
        due = {job_id: (await q.get_status(job_id)).run_at for job_id in ("hour", "half")}  # type: ignore[union-attr]
        await q.enqueue_and_wait("hour", None, timeout=4000)
    assert [job_id for job_id, _ in started] == ["half", "hour"]
    for job_id, at in started:
        assert abs(at - due[job_id]) < 1e-3, (job_id, at, due[job_id])


@pytest.mark.slow
async def test_scheduled_job_wakes_an_idle_worker_process(url: str, tmp_path: Path) -> None:
    """Across processes: two idle worker processes, this process schedules jobs 0.3 s
    ahead; each is ``scheduled`` with its time until then, and starts after its time and
    long before the workers' 5 s claim timeout."""
    name = f"sched-{time.monotonic_ns()}"
    with WorkerPool(tmp_path, url, name, handler="_wake_handlers:started_at") as pool:
        pool.start()
        pool.start()
        async with jq.open_queue(jq.storage_from_url(url), name=name) as q:
            await q.enqueue_and_wait("warm-up", None, timeout=60)
            for n in range(5):
                await trio.sleep(0.1)
                job_id = f"later-{n}"
                # An absolute time (both storages' clocks are this host's), so that the
                # lateness needs no status read, which a loaded machine may make after
                # the job has started.
                run_at = time.time() + 0.3
                await q.enqueue(job_id, n, run_at=run_at)
                status = await q.get_status(job_id)
                assert status is not None
                if status.state is jq.JobState.SCHEDULED:
                    assert status.run_at == pytest.approx(run_at, abs=1e-3)
                else:  # read after its time: it may have started already
                    assert time.time() >= run_at, status
                began = await q.enqueue_and_wait(job_id, n, timeout=30)
                lateness = began - run_at
                print(f"across processes: {job_id} started {lateness * 1e3:.1f} ms late")
                assert -0.005 <= lateness < LIMIT, lateness


def test_file_records_written_before_priorities_still_load() -> None:
    """A File record of the previous format (one field fewer) decodes with priority 0."""
    rec = st.Rec(
        job_id="old",
        payload=b"p",
        state=jq.JobState.QUEUED,
        max_attempts=3,
        result_ttl=60.0,
        created_at=1.0,
        ready_seq=4,
    )
    blobs = st.BlobWriter()
    legacy = st.encode_rec(rec, blobs)[:-1]
    decoded = st.decode_rec(legacy, st.BlobReader(blobs.lengths(), b"".join(blobs.parts)))
    assert (decoded.job_id, decoded.priority, decoded.ready_seq) == ("old", 0, 4)


async def test_redis_records_written_before_priorities_still_run(
    redis_storage_factory: Callable[[], jq.RedisStorage],
) -> None:
    """A Redis job record of the previous layout (14 fields, no priority), queued or
    delayed, is claimed, reported with priority 0 and completed."""
    storage = redis_storage_factory()
    name = f"legacy-{uuid.uuid4().hex[:8]}"
    keys = storage.keys(name)
    write_old = """
    local j = {'q', 0, 3, '1', 60, 'n', 'payload', false, false, false, false, false,
      false, false}
    redis.call('SET', KEYS[1], cmsgpack.pack(j))
    j[1] = 'f'
    redis.call('SET', KEYS[2], cmsgpack.pack(j))
    redis.call('ZADD', KEYS[3], 1, 'old-queued')
    redis.call('ZADD', KEYS[4], 1, 'old-delayed')
    """
    async with storage:
        await storage.server_command(
            "EVAL",
            write_old,
            4,
            keys.job_prefix + "old-queued",
            keys.job_prefix + "old-delayed",
            keys.queue,
            keys.delayed,
        )
        record = await storage.get_status(name, "old-queued")
        assert record is not None and record.priority == 0 and record.state == "queued"
        claims = await storage.claim(name, "w", limit=5, lease=30)
        assert sorted(c.job_id for c in claims) == ["old-delayed", "old-queued"]
        for claim in claims:
            assert claim.payload == b"payload"
            assert await storage.complete(name, claim.job_id, claim.token, b"r", ttl=60) == "ok"


def test_cli_enqueue_with_delay_at_and_priority(url: str) -> None:
    """`enqueue --delay/--at/--priority` schedule the job (the output says when it runs),
    `status` shows the time and the priority, `stats` counts it as scheduled, and a
    time without a UTC offset or a priority out of range is one usage line, exit 2."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    common = ["--storage", url, "--name", name]
    done = run_cli("enqueue", "later", "{}", "--delay", "600", *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("scheduled (runs at "), done.stdout
    done = run_cli(
        "enqueue", "xmas", "{}", "--at", "2030-12-24T08:00:00+01:00", "--priority", "7", *common
    )
    assert (done.returncode, done.stdout) == (0, "scheduled (runs at 2030-12-24T07:00:00+00:00)\n")
    done = run_cli("enqueue", "past", "{}", "--at", "2020-01-01T00:00:00Z", *common)
    assert (done.returncode, done.stdout) == (0, "queued\n"), done.stderr
    done = run_cli("status", "xmas", "--json", *common)
    status = json.loads(done.stdout)
    assert (status["state"], status["priority"]) == ("scheduled", 7)
    assert status["run_at"] == 1924326000.0  # 2030-12-24T07:00:00Z
    done = run_cli("stats", "--json", *common)
    jobs = json.loads(done.stdout)["jobs"]
    assert (jobs["scheduled"], jobs["queued"]) == (2, 1), jobs
    for bad, needle in [
        (["--at", "2030-12-24T08:00:00"], "no UTC offset"),
        (["--at", "tomorrow"], "ISO 8601"),
        (["--priority", "1001"], "-1000..1000"),
        (["--delay", "-1"], "--delay"),
        (["--delay", "1", "--at", "2030-12-24T08:00:00Z"], "not allowed with"),
    ]:
        done = run_cli("enqueue", "bad", "{}", *bad, *common)
        assert done.returncode == 2, (bad, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (bad, done.stderr)
    assert run_cli("status", "bad", *common).returncode == 1  # nothing was written


# -- wake-ups: a blocked claim is woken only when it would find work sooner ------------------


def _count_claims(monkeypatch: pytest.MonkeyPatch, storage: Storage) -> list[int]:
    """Count the storage's claim transitions (``calls[0]``): ``claim_nowait`` calls, and
    ``claim_after_wait`` calls where the backend has its own."""
    calls = [0]
    cls = type(storage)
    names = ["claim_nowait"]
    if cls.claim_after_wait is not Storage.claim_after_wait:
        names.append("claim_after_wait")
    for name in names:
        inner = getattr(cls, name)

        async def counted(self: Any, *args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            calls[0] += 1
            return await _inner(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)
    return calls


async def test_a_job_scheduled_after_the_next_due_time_does_not_wake_a_blocked_claim(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim blocked until the next due time is not woken by jobs scheduled later than
    that (it would find nothing), and is woken by one scheduled sooner."""
    storage = MemoryStorage()
    calls = _count_claims(monkeypatch, storage)
    got: list[str] = []

    async def enqueue(job_id: str, delay: float) -> None:
        await storage.enqueue("ns", job_id, b"", max_attempts=1, result_ttl=60, delay=delay)

    async def claimer() -> None:
        claims = await storage.claim("ns", "w", limit=1, lease=30, wait=1000)
        got.extend(claim.job_id for claim in claims)

    async with storage, trio.open_nursery() as nursery:
        await enqueue("first", 100)
        nursery.start_soon(claimer)
        await trio.testing.wait_all_tasks_blocked()
        assert calls[0] == 1  # found nothing, sleeps until "first" is due
        for n in range(10):
            await enqueue(f"later-{n}", 200 + n)
        await trio.testing.wait_all_tasks_blocked()
        assert calls[0] == 1
        await enqueue("sooner", 50)
        await trio.testing.wait_all_tasks_blocked()
        assert calls[0] == 2  # woken: it now sleeps until "sooner" is due
        mock_clock.jump(50)
    assert got == ["sooner"] and calls[0] == 3


async def test_consecutive_claims_of_scheduled_jobs_ask_once_per_job(
    storage_factory: Callable[[], Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five jobs scheduled one after the other are claimed in turn, each once it is due;
    on Memory and Redis a claim that took every ready job tells the next claim when the
    next job is due, so this takes one call per job (plus the first, which finds
    nothing), not two. (File's blocked claims learn of due times from its journal reader,
    which only feeds them while a claim waits: no bound on its calls.)"""
    storage = storage_factory()
    calls = _count_claims(monkeypatch, storage)
    ns = f"hint-{uuid.uuid4().hex[:8]}"
    clock = storage.now if isinstance(storage, MemoryStorage) else time.time
    async with storage:
        now = clock()
        for n in range(5):
            await storage.enqueue(
                ns, f"j{n}", b"", max_attempts=1, result_ttl=60, run_at=now + 0.2 + 0.1 * n
            )
        for n in range(5):
            claims = await storage.claim(ns, "w", limit=10, lease=30, wait=30)
            assert [claim.job_id for claim in claims] == [f"j{n}"]
    if isinstance(storage, jq.FileStorage):
        return
    # Redis: a sleep may end a hair before the server's due time (one more call).
    assert calls[0] <= (6 if isinstance(storage, MemoryStorage) else 8), calls[0]


async def test_redis_pushes_a_wake_up_only_for_a_job_due_before_every_delayed_one(
    redis_storage_factory: Callable[[], jq.RedisStorage],
) -> None:
    """On Redis, a scheduled enqueue or a delayed retry pushes a wake-up token only when
    it is due before every other delayed job (the one time a blocked claim would wake
    too late); later ones push none."""
    storage = redis_storage_factory()
    ns = f"tokens-{uuid.uuid4().hex[:8]}"
    wake = storage.keys(ns).wake

    async def tokens() -> int:
        return int(await storage.server_command("LLEN", wake))

    async def enqueue(job_id: str, **when: float) -> None:
        await storage.enqueue(ns, job_id, b"", max_attempts=3, result_ttl=60, **when)

    async with storage:
        await enqueue("first", delay=600)
        assert await tokens() == 1  # the first delayed job
        for n in range(5):
            await enqueue(f"later-{n}", delay=900 + n)
        assert await tokens() == 1
        await enqueue("sooner", delay=300)
        assert await tokens() == 2
        for job_id, delay, pushed in (("retried-late", 1200, 0), ("retried-soon", 60, 1)):
            await enqueue(job_id)
            (claim,) = (await storage.claim_nowait(ns, "w", limit=1, lease=30)).claims
            await storage.server_command("DEL", wake)
            assert await storage.retry(ns, job_id, claim.token, b"e", delay=delay) == "ok"
            assert await tokens() == pushed  # retried-soon is due before "sooner"


async def test_a_claim_after_the_storage_clock_moved_does_not_sleep_on_the_old_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the storage's clock is moved forward (``advance_clock``), the next blocking
    claim takes a job that became due at once, instead of sleeping until the due time
    the previous claim returned."""
    storage = MemoryStorage()
    async with storage:
        for job_id, delay in (("first", 100), ("second", 200)):
            await storage.enqueue("ns", job_id, b"", max_attempts=1, result_ttl=60, delay=delay)
        claims = await storage.claim("ns", "w", limit=5, lease=30, wait=1000)
        assert [claim.job_id for claim in claims] == ["first"]
        await storage.advance_clock(150)
        before = trio.current_time()
        claims = await storage.claim("ns", "w", limit=5, lease=30, wait=1000)
        assert [claim.job_id for claim in claims] == ["second"]
        assert trio.current_time() == before
