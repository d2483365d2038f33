"""Cron and interval schedules: the values and their tick arithmetic, the misfire policy,
and the leader-elected scheduler on MemoryStorage under trio's MockClock (no real sleeps:
a simulated month takes well under a second). Several processes: see
``tests/test_scheduler_processes.py``."""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing

import trio_jobqueue as jq
from trio_jobqueue._leader import run_service
from trio_jobqueue._schedule import check_schedules, due_ticks
from trio_jobqueue._scheduler import SCHEDULER_LOCK, Scheduler
from trio_jobqueue._serde import JsonSerializer, TypedCodec
from trio_jobqueue.storage import Fence, FireStatus, MemoryStorage

ROME = ZoneInfo("Europe/Rome")
NS = "default"
DAY = 86400.0


def rome(*args: int) -> float:
    return datetime(*args, tzinfo=ROME).timestamp()  # type: ignore[misc]


def local_ticks(
    schedule: jq.CronSchedule | jq.IntervalSchedule, start: float, end: float
) -> list[float]:
    ticks, t = [], start
    while (t := schedule.next_tick(t)) <= end:
        ticks.append(t)
    return ticks


# -- the values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "61 * * * *"}, "Bad minute"),
        ({"cron": "0 3 * *"}, "Wrong number of fields"),
        ({"cron": "0 3 31 2 *"}, "Bad day-of-month"),
        ({"cron": ""}, "cron must be a non-empty str"),
        ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "0 3 * * *", "id": ""}, "schedule id must be a non-empty str"),
        ({"cron": "0 3 * * *", "misfire": "sometimes"}, "misfire must be one of"),
        ({"cron": "0 3 * * *", "priority": 5000}, "priority 5000 is out of range"),
        ({"cron": "0 3 * * *", "max_attempts": 0}, "max_attempts"),
        ({"cron": "0 3 * * *", "result_ttl": -1}, "result_ttl"),
        ({"cron": "0 3 * * *", "max_catchup": 0}, "max_catchup"),
        ({"cron": "0 3 * * *", "misfire_grace": math.nan}, "misfire_grace"),
    ],
)
def test_bad_cron_schedule_is_refused_at_construction(fields: dict[str, Any], message: str) -> None:
    """A bad expression (with cronsim's message), unknown tz or invalid field -> ValueError."""
    with pytest.raises(ValueError, match=message):
        jq.CronSchedule(**{"id": "nightly", **fields})


@pytest.mark.parametrize("every", [0, -1.0, math.nan, math.inf, True, "60"])
def test_bad_interval_is_refused_at_construction(every: object) -> None:
    """every must be a finite number of seconds > 0."""
    with pytest.raises(ValueError, match="every"):
        jq.IntervalSchedule(id="beat", every=every)  # type: ignore[arg-type]


def test_schedules_are_frozen_values() -> None:
    """Schedules are frozen, comparable values; attrs.evolve re-validates."""
    import attrs

    a = jq.CronSchedule(id="n", cron="0 3 * * *", tz="Europe/Rome", payload={"k": 1})
    assert a == jq.CronSchedule(id="n", cron="0 3 * * *", tz="Europe/Rome", payload={"k": 1})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.cron = "* * * * *"  # type: ignore[misc]
    with pytest.raises(ValueError, match="Bad hour"):
        attrs.evolve(a, cron="0 25 * * *")
    assert jq.CronSchedule(id="d", cron="@daily").next_tick(0.0) == DAY


def test_cron_job_id_is_local_time_with_offset() -> None:
    """The tick's job id is the schedule id and the local time with its UTC offset."""
    nightly = jq.CronSchedule(id="nightly-report", cron="0 3 * * *", tz="Europe/Rome")
    tick = nightly.next_tick(rome(2026, 12, 1, 12))
    assert tick == rome(2026, 12, 2, 3)
    assert nightly.job_id(tick) == "nightly-report@2026-12-02T03:00:00+01:00"
    summer = nightly.next_tick(rome(2026, 7, 1, 12))
    assert nightly.job_id(summer) == "nightly-report@2026-07-02T03:00:00+02:00"


def test_interval_ticks_are_anchored_and_deterministic() -> None:
    """Interval ticks are anchor + k*every (UTC ids), the same from any starting point."""
    beat = jq.IntervalSchedule(id="beat", every=300.0)
    t = beat.next_tick(1_800_000_123.4)
    assert t == 1_800_000_300.0 and t % 300 == 0
    assert beat.next_tick(t) == t + 300 and beat.next_tick(t - 1e-6) == t
    assert beat.job_id(t) == f"beat@{datetime.fromtimestamp(t, UTC).isoformat()}"
    assert beat.job_id(t).endswith("+00:00")
    # Sub-second intervals: every starting point inside one step gives the same tick.
    fast = jq.IntervalSchedule(id="fast", every=0.1, anchor=0.05)
    ticks = {fast.next_tick(1_000_000_000 + i / 1000) for i in range(100)}
    assert len(ticks) == 2  # (x.05] and (x.15]
    anchored = jq.IntervalSchedule(id="a", every=3600.0, anchor=1800.0)
    assert anchored.next_tick(0.0) == 1800.0 and anchored.next_tick(1800.0) == 5400.0
    assert list(zip(range(3), anchored.ticks_back(5400.0), strict=False)) == [
        (0, 5400.0),
        (1, 1800.0),
        (2, -1800.0),
    ]


@pytest.mark.parametrize(
    ("start", "end", "dst_day", "expected_on_dst_day"),
    [
        # Spring forward: 02:00 -> 03:00; 02:30 does not exist and runs once, at 03:00.
        (rome(2026, 3, 25), rome(2026, 4, 2), 29, "2026-03-29T03:00:00+02:00"),
        # Fall back: 03:00 -> 02:00; 02:30 happens twice and runs once, the first time.
        (rome(2026, 10, 21), rome(2026, 10, 29), 25, "2026-10-25T02:30:00+02:00"),
    ],
)
def test_0230_runs_once_on_dst_days(
    start: float, end: float, dst_day: int, expected_on_dst_day: str
) -> None:
    """A 02:30 daily job in Europe/Rome runs exactly once on spring-forward and fall-back days."""
    job = jq.CronSchedule(id="j", cron="30 2 * * *", tz="Europe/Rome")
    ticks = local_ticks(job, start, end)
    days = [datetime.fromtimestamp(t, ROME).date() for t in ticks]
    assert len(ticks) == 8 and len(set(days)) == 8  # one per day, none doubled or missing
    on_dst = [job.tick_time(t).isoformat() for t in ticks if job.tick_time(t).day == dst_day]
    assert on_dst == [expected_on_dst_day]
    # Going backwards (what catch-up uses) gives the same ticks.
    back = [t for _, t in zip(range(8), job.ticks_back(end), strict=False)]
    assert sorted(back) == ticks


def test_hourly_cron_on_dst_days_has_23_and_25_ticks() -> None:
    """A wildcard-hour job runs every real hour: 23 ticks on spring-forward, 25 on fall-back."""
    hourly = jq.CronSchedule(id="h", cron="0 * * * *", tz="Europe/Rome")
    spring = local_ticks(hourly, rome(2026, 3, 29) - 1, rome(2026, 3, 30) - 1)
    fall = local_ticks(hourly, rome(2026, 10, 25) - 1, rome(2026, 10, 26) - 1)
    assert len(spring) == 23 and len(fall) == 25
    assert all(b - a == 3600 for a, b in itertools.pairwise(fall))
    ids = [hourly.job_id(t) for t in fall]
    assert "h@2026-10-25T02:00:00+02:00" in ids and "h@2026-10-25T02:00:00+01:00" in ids
    # Starting inside the repeated hour's second pass still moves strictly forward.
    second_pass = datetime(2026, 10, 25, 2, 10, tzinfo=ROME, fold=1).timestamp()
    daily = jq.CronSchedule(id="d", cron="30 2 * * *", tz="Europe/Rome")
    assert daily.next_tick(second_pass) == rome(2026, 10, 26, 2, 30)


def test_duplicate_ids_and_non_schedules_are_refused() -> None:
    """Two schedules with one id -> ValueError; anything but schedules -> TypeError."""
    a = jq.IntervalSchedule(id="x", every=60)
    b = jq.CronSchedule(id="x", cron="* * * * *")
    with pytest.raises(ValueError, match="two schedules have the id 'x'"):
        check_schedules([a, b])
    for bad in ([a, "nightly"], a, "x", 3):
        with pytest.raises(TypeError, match="schedules must"):
            check_schedules(bad)
    assert check_schedules([a]) == (a,) and check_schedules(()) == ()


# -- the misfire policy ------------------------------------------------------------------

T0 = 1_800_000_000.0  # a multiple of 60


@pytest.mark.parametrize(
    ("fields", "cursor", "now", "expected"),
    [
        # never fired: only the tick due now (within the grace), no catch-up of the past
        ({}, None, T0 + 0.5, [T0]),
        ({}, None, T0 + 30, []),
        ({"misfire": "all"}, None, T0 + 600.5, [T0 + 600]),
        # on time: fired whatever the policy
        ({"misfire": "skip"}, T0, T0 + 60.2, [T0 + 60]),
        # a ten-minute outage: the latest missed tick, all (bounded), or none
        ({}, T0, T0 + 630, [T0 + 600]),
        ({}, T0, T0 + 600.5, [T0 + 600]),  # the on-time tick covers the missed ones
        ({"misfire": "all"}, T0, T0 + 630, [T0 + 60 * k for k in range(1, 11)]),
        ({"misfire": "all", "max_catchup": 3}, T0, T0 + 630, [T0 + 480, T0 + 540, T0 + 600]),
        ({"misfire": "skip"}, T0, T0 + 630, []),
        # nothing new since the cursor
        ({"misfire": "all"}, T0 + 60, T0 + 90, []),
        # a generous grace makes late ticks count as on time
        ({"misfire": "skip", "misfire_grace": 120}, T0, T0 + 150, [T0 + 60, T0 + 120]),
    ],
)
def test_due_ticks_follow_the_misfire_policy(
    fields: dict[str, Any], cursor: float | None, now: float, expected: list[float]
) -> None:
    """due_ticks: on-time ticks always; missed ones by policy; a new schedule starts now."""
    schedule = jq.IntervalSchedule(id="m", every=60, **fields)
    assert due_ticks(schedule, cursor, now) == expected


# -- the scheduler under MockClock -----------------------------------------------------


async def set_clock(storage: MemoryStorage, when: float) -> None:
    await storage.advance_clock(when - storage.now())


async def sleep_until_storage_time(storage: MemoryStorage, when: float) -> None:
    await trio.sleep_until(trio.current_time() + (when - storage.now()))


def quiet_scheduler(
    storage: MemoryStorage, schedules: Sequence[jq.CronSchedule | jq.IntervalSchedule], **kw: Any
) -> Scheduler:
    """A scheduler without registration refreshes and with a long lease: a month of mocked
    time is then a few thousand wake-ups, not millions."""
    options: dict[str, Any] = {
        "storage": storage,
        "ns": NS,
        "owner": "solo",
        "lock_ttl": 4 * DAY,
        "registers": False,
        "schedules": tuple(schedules),
        "max_attempts": 3,
        "result_ttl": 60 * DAY,
        "codec": TypedCodec(JsonSerializer()),
    }
    options.update(kw)
    return Scheduler(**options)


@asynccontextmanager
async def running(storage: MemoryStorage, scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    async with trio.open_nursery() as nursery:
        await nursery.start(run_service, storage, scheduler)
        yield scheduler
        nursery.cancel_scope.cancel()


async def job_ids(storage: MemoryStorage, candidates: Iterator[str] | list[str]) -> set[str]:
    return {i for i in candidates if await storage.get_status(NS, i) is not None}


def expected_daily(year: int, month: int, days: range, hour: int, minute: int) -> list[str]:
    """Independent of cronsim: the local time, or just after the gap when it does not exist."""
    ids = []
    for day in days:
        wall = datetime(year, month, day, hour, minute, tzinfo=ROME)
        back = datetime.fromtimestamp(wall.timestamp(), ROME)
        if back.replace(tzinfo=None) != wall.replace(tzinfo=None):  # in the spring gap
            wall = datetime(year, month, day, hour + 1, 0, tzinfo=ROME)
        ids.append(f"daily@{wall.isoformat()}")
    return ids


@pytest.mark.parametrize(
    ("month", "dst_day", "hourly_ticks"),
    [(3, 29, 31 * 24 - 1), (10, 25, 31 * 24 + 1)],
    ids=["spring-forward", "fall-back"],
)
async def test_a_month_of_cron_ticks_with_a_dst_change(
    autojump_clock: trio.testing.MockClock, month: int, dst_day: int, hourly_ticks: int
) -> None:
    """Through March/October 2026 in Europe/Rome (MockClock): one 02:30 job per day and one
    job per real hour, every expected local time exactly once, none missing or doubled."""
    storage = MemoryStorage()
    daily = jq.CronSchedule(id="daily", cron="30 2 * * *", tz="Europe/Rome", payload="d")
    hourly = jq.CronSchedule(id="hourly", cron="0 * * * *", tz="Europe/Rome", payload="h")
    scheduler = quiet_scheduler(storage, [daily, hourly])
    start, end = rome(2026, month, 1), rome(2026, month + 1, 1)
    async with storage:
        await set_clock(storage, start - 0.5)
        async with running(storage, scheduler):
            await sleep_until_storage_time(storage, end - 0.5)
        stats = await storage.stats(NS)
        assert stats.queued == 31 + hourly_ticks
        expected = expected_daily(2026, month, range(1, 32), 2, 30)
        assert await job_ids(storage, expected) == set(expected)
        hours = [hourly.job_id(start + 3600 * k) for k in range(hourly_ticks)]
        assert len(set(hours)) == hourly_ticks
        assert await job_ids(storage, hours) == set(hours)
        on_dst = [i for i in expected if i.startswith(f"daily@2026-{month:02d}-{dst_day}")]
        assert len(on_dst) == 1
        assert scheduler.statistics().enqueued == 31 + hourly_ticks
        cursors = await storage.schedule_cursors(NS)
        assert cursors == {"daily": rome(2026, month, 31, 2, 30), "hourly": end - 3600}


async def test_interval_schedule_fires_each_tick_with_its_options(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 5-minute interval over a day: 288 jobs at multiples of 300 s, with the schedule's
    payload, priority, attempts and TTL."""
    storage = MemoryStorage()
    beat = jq.IntervalSchedule(
        id="beat", every=300, payload={"n": 1}, priority=7, max_attempts=5, result_ttl=99.0
    )
    day0 = 1_800_000_000.0 - 1_800_000_000.0 % DAY
    async with storage:
        await set_clock(storage, day0 + 1)
        async with running(storage, quiet_scheduler(storage, [beat])):
            await sleep_until_storage_time(storage, day0 + DAY + 1)
        assert (await storage.stats(NS)).queued == 288
        ids = [beat.job_id(day0 + 300 * k) for k in range(1, 289)]
        assert await job_ids(storage, ids) == set(ids)
        record = await storage.get_status(NS, ids[0])
        assert record is not None
        assert record.max_attempts == 5 and record.priority == 7
        (claim,) = await storage.claim(NS, "w", limit=1, lease=30.0)
        assert claim.job_id == ids[0] and JsonSerializer().loads(claim.payload) == {"n": 1}


@pytest.mark.parametrize(
    ("fields", "expected_missed"),
    [
        ({}, [10]),  # latest: only the newest missed tick
        ({"misfire": "all"}, list(range(1, 11))),
        ({"misfire": "all", "max_catchup": 4}, [7, 8, 9, 10]),
        ({"misfire": "skip"}, []),
    ],
    ids=["latest", "all", "all-bounded", "skip"],
)
async def test_misfire_policy_after_a_leader_outage(
    autojump_clock: trio.testing.MockClock, fields: dict[str, Any], expected_missed: list[int]
) -> None:
    """No scheduler runs for ten minutes: the next one catches up by the misfire policy,
    then goes on with the ticks that follow."""
    storage = MemoryStorage()
    every = jq.IntervalSchedule(id="m", every=60, **fields)
    async with storage:
        await set_clock(storage, T0 - 30)
        async with running(storage, quiet_scheduler(storage, [every], owner="first")):
            await sleep_until_storage_time(storage, T0 + 1)  # fires T0
        await sleep_until_storage_time(storage, T0 + 600 + 30)  # the outage
        async with running(storage, quiet_scheduler(storage, [every], owner="second")):
            await sleep_until_storage_time(storage, T0 + 900 + 1)  # 660, 720 ... 900 on time
        fired = [0, *expected_missed, *range(11, 16)]
        ids = [every.job_id(T0 + 60 * k) for k in range(16)]
        assert await job_ids(storage, ids) == {ids[k] for k in fired}
        assert (await storage.stats(NS)).queued == len(fired)


async def test_two_schedulers_in_one_process_fire_each_tick_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two open_schedulers on one storage: one leads; when it stops, the other takes over
    and catches up; every tick is enqueued exactly once."""
    storage = MemoryStorage()
    every = jq.IntervalSchedule(id="ten", every=10, misfire="all")
    async with storage:
        await set_clock(storage, T0 - 5)
        async with (
            jq.open_scheduler(storage, [every], owner="a") as a,
            jq.open_scheduler(storage, [every], owner="b") as b,
        ):
            await sleep_until_storage_time(storage, T0 + 300 + 1)
            assert [a.is_leader, b.is_leader].count(True) == 1
            leader, other = (a, b) if a.is_leader else (b, a)
            await leader.stop()
            await sleep_until_storage_time(storage, T0 + 600 + 1)
            assert other.is_leader
        ids = [every.job_id(T0 + 10 * k) for k in range(61)]
        assert await job_ids(storage, ids) == set(ids)
        assert (await storage.stats(NS)).queued == 61
        total = a.statistics().enqueued + b.statistics().enqueued
        assert total == 61 and a.statistics().enqueued > 0 and b.statistics().enqueued > 0
        assert await storage.lock_holder(NS, SCHEDULER_LOCK) is None  # both released it


class StealingStorage(MemoryStorage):
    """A MemoryStorage on which someone else takes the scheduler lock, once armed, just
    before the leader's next fire (a fake, not a mock): the leader's epoch is stale."""

    armed = False

    async def fire_schedule(self, ns: str, schedule_id: str, *args: Any, **kw: Any) -> FireStatus:
        if self.armed:
            self.armed = False
            holder = await self.lock_holder(ns, SCHEDULER_LOCK)
            assert holder is not None
            await self.release_lock(ns, SCHEDULER_LOCK, holder.owner, holder.epoch)
            await self.register_worker(ns, jq.storage.WorkerRecord("intruder"), ttl=10 * DAY)
            assert await self.acquire_lock(ns, SCHEDULER_LOCK, "intruder", ttl=10 * DAY)
        return await super().fire_schedule(ns, schedule_id, *args, **kw)


async def test_a_stale_leader_is_fenced(autojump_clock: trio.testing.MockClock) -> None:
    """A leader whose lock was taken over (its epoch superseded) fires nothing: the storage
    answers fenced, it stops leading and does not fire while the new holder lives."""
    storage = StealingStorage()
    every = jq.IntervalSchedule(id="s", every=60)
    scheduler = quiet_scheduler(storage, [every], lock_ttl=120.0)  # type: ignore[arg-type]
    async with storage:
        await set_clock(storage, T0 - 30)
        async with running(storage, scheduler):  # type: ignore[arg-type]
            await sleep_until_storage_time(storage, T0 + 1)
            old_epoch = scheduler.epoch
            assert scheduler.is_leader and old_epoch is not None
            storage.armed = True
            await sleep_until_storage_time(storage, T0 + 300 + 1)
            assert not scheduler.is_leader
            stats = scheduler.statistics()
            assert stats.fenced == 1 and stats.enqueued == 1
        fenced = await storage.fire_schedule(
            NS, "s", T0 + 600, "x", b"null", max_attempts=1, result_ttl=1.0,
            fence=Fence(SCHEDULER_LOCK, "solo", old_epoch),
        )  # fmt: skip
        assert fenced is FireStatus.FENCED
        assert (await storage.stats(NS)).queued == 1  # only T0, fired before the take-over
        assert (await storage.schedule_cursors(NS)) == {"s": T0}


async def test_embedded_scheduler_runs_next_to_the_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """open_queue(handler, schedules=...) enqueues the ticks and its worker runs them, with
    the schedule's payload decoded by the queue's serializer; a producer-only queue with
    schedules enqueues them too."""
    storage = MemoryStorage()
    seen: list[tuple[str, Any]] = []

    async def handler(job: jq.Job[Any]) -> None:
        seen.append((job.id, job.payload))

    every = jq.IntervalSchedule(id="e", every=60, payload={"to": "ops"})
    async with storage:
        await set_clock(storage, T0 - 30)
        async with jq.open_queue(storage, handler, schedules=[every]):
            await sleep_until_storage_time(storage, T0 + 180 + 1)
        assert seen == [(every.job_id(T0 + 60 * k), {"to": "ops"}) for k in range(4)]
        async with jq.open_queue(storage, schedules=[every]) as producer:
            await sleep_until_storage_time(storage, T0 + 300 + 1)
            status = await producer.get_status(every.job_id(T0 + 300))
            assert status is not None and status.state == "queued"
        assert (await storage.schedule_cursors(NS)) == {"e": T0 + 300}


async def test_bad_options_open_nothing() -> None:
    """Invalid scheduler options, duplicate ids or an unencodable payload raise before the
    storage is opened (nothing written)."""
    storage = MemoryStorage()
    ok = jq.IntervalSchedule(id="ok", every=60)
    unencodable = jq.IntervalSchedule(id="bad", every=60, payload={1, 2})
    with pytest.raises(jq.SerializationError, match="schedule bad"):
        async with jq.open_scheduler(storage, [ok, unencodable]):
            pass
    with pytest.raises(jq.SerializationError):
        async with jq.open_queue(storage, schedules=[unencodable]):
            pass
    with pytest.raises(ValueError, match="two schedules have the id 'ok'"):
        async with jq.open_queue(storage, schedules=[ok, ok]):
            pass
    with pytest.raises(ValueError, match="lock_ttl"):
        async with jq.open_scheduler(storage, [ok], lock_ttl=0):
            pass
    with pytest.raises(TypeError):
        async with jq.open_scheduler(storage, ok):  # type: ignore[arg-type]
            pass
    assert not storage.is_open and storage._spaces == {}


class FlakyStorage(MemoryStorage):
    """fire_schedule raises StorageError the first ``failures`` times."""

    failures = 3

    async def fire_schedule(self, ns: str, schedule_id: str, *args: Any, **kw: Any) -> FireStatus:
        if self.failures > 0:
            self.failures -= 1
            raise jq.StorageError("connection reset (simulated)")
        return await super().fire_schedule(ns, schedule_id, *args, **kw)


async def test_storage_errors_are_logged_and_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing fire is logged with the schedule id and retried with backoff; the tick is
    enqueued once the storage answers; every enqueued tick is logged at INFO with its id."""
    caplog.set_level(logging.INFO, logger="trio_jobqueue")
    storage = FlakyStorage()
    every = jq.IntervalSchedule(id="flaky", every=60)
    scheduler = quiet_scheduler(storage, [every])
    async with storage:
        await set_clock(storage, T0 - 30)
        async with running(storage, scheduler):
            await sleep_until_storage_time(storage, T0 + 1)
        assert await storage.get_status(NS, every.job_id(T0)) is not None
    failures = [r for r in caplog.records if "firing failed" in r.getMessage()]
    assert len(failures) == 3 and all("'flaky'" in r.getMessage() for r in failures)
    assert scheduler.statistics().errors == 3
    enqueued = [
        r for r in caplog.records if r.levelno == logging.INFO and "enqueued" in r.getMessage()
    ]
    assert [r.getMessage() for r in enqueued] == [
        f"schedule 'flaky': enqueued job {every.job_id(T0)!r}"
    ]


class BuggyCursorsStorage(MemoryStorage):
    """schedule_cursors raises a non-storage error (a bug) the first ``failures`` times."""

    failures = 2

    async def schedule_cursors(self, ns: str) -> dict[str, float]:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("a bug (simulated)")
        return await super().schedule_cursors(ns)


async def test_an_unexpected_error_is_logged_and_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An error that is not a StorageError (a bug) is logged with its traceback and the
    pass retried: the scheduler (and its worker) keeps going and fires the tick."""
    storage = BuggyCursorsStorage()
    every = jq.IntervalSchedule(id="bug", every=60)
    scheduler = quiet_scheduler(storage, [every])
    async with storage:
        await set_clock(storage, T0 - 0.2)
        async with running(storage, scheduler):
            await sleep_until_storage_time(storage, T0 + 1)
        assert await storage.get_status(NS, every.job_id(T0)) is not None
    bugs = [r for r in caplog.records if "a bug (simulated)" in r.getMessage()]
    assert len(bugs) == 2 and all(r.exc_info is not None for r in bugs)
    assert scheduler.statistics().errors == 2


async def test_a_live_job_holding_the_tick_id_is_not_duplicated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """If a job with the tick's id is still live, the tick is recorded (cursor moves) but
    nothing is enqueued twice."""
    storage = MemoryStorage()
    every = jq.IntervalSchedule(id="d", every=60, payload="new")
    scheduler = quiet_scheduler(storage, [every])
    async with storage:
        await set_clock(storage, T0 - 30)
        await storage.enqueue(NS, every.job_id(T0), b'"old"', max_attempts=1, result_ttl=60.0)
        async with running(storage, scheduler):
            await sleep_until_storage_time(storage, T0 + 61)
        (claim,) = await storage.claim(NS, "w", limit=1, lease=30.0)
        assert claim.job_id == every.job_id(T0) and claim.payload == b'"old"'
        assert scheduler.statistics().duplicates == 1
        assert scheduler.statistics().enqueued == 1  # T0 + 60
        assert (await storage.schedule_cursors(NS))["d"] == T0 + 60


async def test_serve_scheduler_in_the_callers_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """serve_scheduler runs in a nursery via nursery.start and reports its Scheduler;
    cancelling it releases the lock and its registration."""
    storage = MemoryStorage()
    every = jq.IntervalSchedule(id="sv", every=30)
    async with storage:
        await set_clock(storage, T0 - 10)
        async with trio.open_nursery() as nursery:
            scheduler = await nursery.start(
                functools.partial(jq.serve_scheduler, storage, [every], name="other")
            )
            await sleep_until_storage_time(storage, T0 + 61)
            assert scheduler.is_leader
            assert [w.kind for w in await storage.list_workers("other")] == ["scheduler"]
            assert set(scheduler.next_ticks()) == {"sv"}
            nursery.cancel_scope.cancel()
        assert (await storage.stats("other")).queued == 3
        assert await storage.lock_holder("other", SCHEDULER_LOCK) is None
        assert await storage.list_workers("other") == []


def test_next_tick_is_strictly_after_for_odd_starts() -> None:
    """next_tick is strictly after its argument, also at tick instants and fractions."""
    cron = jq.CronSchedule(id="c", cron="*/15 * * * * *", tz="Europe/Rome")
    base = rome(2026, 10, 25, 2, 59, 50)
    for offset in (0.0, 0.000001, 4.999999, 5.0, 10.0, 3610.5):
        t = base + offset
        tick = cron.next_tick(t)
        assert t < tick <= t + 15
    assert timedelta(seconds=cron.next_tick(base) - base) == timedelta(seconds=10)
