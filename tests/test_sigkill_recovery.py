"""Recovery after SIGKILL: a killed worker's jobs are back within ``visibility_timeout +
lock_ttl``, also when the killed worker was the reaper leader (docs/cli.md, "Signals")."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import trio
from _proc_harness import WorkerPool, by_pid, wait_for
from fixtures_redis import RedisServer

import trio_jobqueue as jq
from trio_jobqueue.cli._registry import WorkerDirectory, follow_workers

pytestmark = pytest.mark.slow

VT = 1.0
LOCK_TTL = 3.0
"""Longer than VT: the job waits for the election, so both terms of the bound count."""
SLACK = 2.0
"""Generous: process scheduling on a loaded machine, the event's trip to this process."""


@pytest.fixture(params=["file", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/queue"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


async def test_sigkilled_leader_jobs_come_back_within_vt_plus_lock_ttl(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the only worker running a job while it is also the reaper leader, with a
    second worker process alive: the survivor wins the election, reaps the job within
    visibility_timeout + lock_ttl of the kill, and runs it to completion (attempt 2)."""
    name = f"kill-{uuid.uuid4().hex[:10]}"
    args = (
        "--visibility-timeout", str(VT), "--lock-ttl", str(LOCK_TTL),
        "--heartbeat-interval", "0.2",
    )  # fmt: skip
    seen: list[tuple[str, int, float]] = []
    directory = WorkerDirectory()
    async with (
        jq.storage_from_url(url) as storage,
        jq.open_queue(storage, name=name) as queue,
        queue.events() as events,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(follow_workers, storage, name, directory)

        async def collect() -> None:
            async for event in events:
                if event.job_id == "job":
                    seen.append((str(event.kind), event.attempt, time.monotonic()))

        nursery.start_soon(collect)
        with WorkerPool(tmp_path, url, name, args) as pool:
            victim = pool.start()
            await wait_for(
                lambda: (info := by_pid(directory, victim.pid)) is not None and info.leader,
                60,
                "the first worker to lead",
            )
            await queue.enqueue("job", {"sleep": 2.0})
            await wait_for(lambda: pool.runs_per_job()["job"] == 1, 30, "the job to start")
            survivor = pool.start()
            await wait_for(
                lambda: by_pid(directory, survivor.pid) is not None, 60, "the second worker"
            )
            leader = directory.leader()
            assert leader is not None and leader.pid == victim.pid
            assert pool.pids_per_job()["job"] == [victim.pid]

            victim.proc.kill()
            killed_at = time.monotonic()
            await pool.wait(victim, 10)
            value = await queue.enqueue_and_wait("job", None, timeout=VT + LOCK_TTL + 60)
            done_at = time.monotonic()
            await trio.sleep(0.2)  # let the last events arrive
            nursery.cancel_scope.cancel()

    assert value == {"pid": survivor.pid, "attempt": 2}
    assert sorted(pool.executions(), key=lambda e: e[1]) == [
        ("job", 1, victim.pid),
        ("job", 2, survivor.pid),
    ]
    status = await _status(url, name)
    assert status is not None and (status.state, status.attempts) == ("completed", 2)
    stalled = [at for kind, attempt, at in seen if kind == "stalled" and attempt == 1]
    assert len(stalled) == 1, seen
    back = stalled[0] - killed_at
    with capsys.disabled():
        print(
            f"\nSIGKILL recovery[{url.split(':')[0]}]: job back (stalled) {back:.2f} s, "
            f"completed {done_at - killed_at:.2f} s after the kill "
            f"(visibility_timeout {VT} + lock_ttl {LOCK_TTL} = {VT + LOCK_TTL} s)"
        )
    assert back <= VT + LOCK_TTL + SLACK


async def _status(url: str, name: str) -> jq.JobStatus | None:
    async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as q:
        return await q.get_status("job")
