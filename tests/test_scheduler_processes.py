"""Schedules run by several worker processes (``worker --schedules``) on Redis and on File:
each tick is enqueued exactly once, and none is missing across a SIGKILL of the scheduler
leader (the next leader catches up with ``misfire=all``)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import trio
from _proc_harness import WorkerPool, by_pid, run_cli, wait_for
from _proc_schedules import EVERY_SECOND
from fixtures_redis import RedisServer

import trio_jobqueue as jq
from trio_jobqueue._scheduler import SCHEDULER_LOCK

pytestmark = pytest.mark.slow

(SCHEDULE,) = EVERY_SECOND
VT = 1.0


@pytest.fixture(params=["file", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/queue"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def tick_of(job_id: str) -> float:
    return datetime.fromisoformat(job_id.removeprefix(f"{SCHEDULE.id}@")).timestamp()


async def test_each_tick_once_across_a_sigkilled_leader(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two workers run a 1 s interval schedule; the scheduler leader is SIGKILLed midway.
    Every tick from the first to the last one fired has exactly one job (run once at
    attempt 1, or still queued), none missing across the take-over, no other job."""
    name = f"sched-{uuid.uuid4().hex[:10]}"
    args = ("--visibility-timeout", str(VT), "--schedules", "_proc_schedules:EVERY_SECOND")
    async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as queue:
        with WorkerPool(tmp_path, url, name, args) as pool:
            first, second = pool.start(), pool.start()

            async def leader_pid() -> int | None:
                holder = await storage.lock_holder(name, SCHEDULER_LOCK)
                if holder is None:
                    return None
                for info in await queue.workers():
                    if info.id == holder.owner:
                        return info.pid
                return None

            await wait_for(lambda: by_pid(queue, first.pid), 60, "the first worker")
            await wait_for(lambda: by_pid(queue, second.pid), 60, "the second worker")
            await wait_for(leader_pid, 30, "a scheduler leader")
            await trio.sleep(3.0)
            victim_pid = await leader_pid()
            victim = first if victim_pid == first.pid else second
            survivor = second if victim is first else first
            before = await storage.lock_holder(name, SCHEDULER_LOCK)
            victim.proc.kill()
            killed_at = time.time()
            await pool.wait(victim, 10)

            async def survivor_leads() -> bool:
                return await leader_pid() == survivor.pid

            await wait_for(survivor_leads, 10, "the survivor to lead the scheduler")
            took_over = time.time() - killed_at
            after = await storage.lock_holder(name, SCHEDULER_LOCK)
            await trio.sleep(3.0)
            survivor.proc.send_signal(signal.SIGTERM)
            assert await pool.wait(survivor, 30) == 0, pool.all_stderr()
            cursor = (await storage.schedule_cursors(name))[SCHEDULE.id]
            runs = pool.executions()
            # A job enqueued twice would run twice at attempt 1; a job of the killed
            # worker runs again at attempt 2 (at-least-once), which is not a second tick.
            first_runs = Counter(job_id for job_id, attempt, _ in runs if attempt == 1)
            fired_ids = {job_id for job_id, _, _ in runs}
            queued = (await storage.stats(name)).queued
            start = min(tick_of(i) for i in fired_ids)
            expected = [SCHEDULE.job_id(start + k) for k in range(int(cursor - start) + 1)]
            missing = [i for i in expected if await storage.get_status(name, i) is None]
            stderr = pool.all_stderr()
            listed = run_cli(
                "schedules", "--storage", url, "--name", name,
                "--schedules", "_proc_schedules:EVERY_SECOND", "--json",
            )  # fmt: skip

    assert before is not None and after is not None and after.epoch > before.epoch
    assert missing == [], stderr
    assert set(first_runs.values()) == {1}, first_runs  # no tick's job enqueued twice
    assert fired_ids <= set(expected)
    assert len(fired_ids) + queued == len(expected)  # the rest is still queued, no others
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["schedules"]
    assert row["last_tick"] == cursor and row["last_job_id"] == expected[-1]
    assert row["next_tick"] > cursor and row["next_tick"] % 1 == 0
    assert row["next_job_id"] == SCHEDULE.job_id(row["next_tick"])
    killed_tick = SCHEDULE.next_tick(killed_at)
    assert any(tick_of(i) >= killed_tick for i in expected)  # ticks after the kill too
    with capsys.disabled():
        print(
            f"\nscheduler take-over[{url.split(':')[0]}]: {len(expected)} ticks over "
            f"{cursor - start:.0f} s, each enqueued once, 0 missing; new leader "
            f"{took_over:.2f} s after the SIGKILL (epoch {before.epoch} -> {after.epoch})"
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("_proc_schedules", "schedules must be MODULE:SCHEDULES"),
        ("no_such_module_xyz:S", "cannot import module 'no_such_module_xyz'"),
        ("_proc_schedules:MISSING", "has no attribute 'MISSING'"),
        ("_proc_schedules:NOT_A_LIST", "schedules must be a list"),
    ],
)
def test_bad_schedules_path_is_a_usage_error(spec: str, message: str) -> None:
    """worker --schedules with a bad path or value: one line on stderr, exit code 2."""
    done = run_cli("worker", "_proc_handlers:record", "--storage", "memory://", "--schedules", spec)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trio-jobqueue: error: ")
    assert message in lines[0]
