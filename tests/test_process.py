"""Worker processes started through the CLI, on Redis and on File: reaper fail-over with
fencing, leases of long handlers, frozen (SIGSTOP) workers whose late outcomes are fenced.

The tests watch the workers through the storage's worker registry (``Queue.workers()``,
which ``stats`` reads) and the reaper lock's holder, polled with bounded deadlines.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from _proc_harness import WorkerPool, by_pid, leader, leaders, live_ids, wait_for

import trio_jobqueue as jq
from trio_jobqueue._reaper import REAPER_LOCK
from trio_jobqueue.storage import Fence

pytestmark = pytest.mark.slow

LOCK_TTL = 2.0
VT = 1.5


@pytest.fixture
def name() -> str:
    return f"proc-{uuid.uuid4().hex[:10]}"


async def test_reaper_failover_and_fenced_stale_leader(
    url: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three worker processes: exactly one leads. SIGKILL the leader: another leads within
    lock_ttl. SIGSTOP the new leader: it drops out of the registry and a third takes over;
    the stopped one's epoch is fenced (a reap with it does nothing), and when it resumes it
    registers again but does not lead again."""
    args = ("--lock-ttl", str(LOCK_TTL), "--visibility-timeout", str(VT))
    async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as q:
        with WorkerPool(tmp_path, url, name, args) as pool:
            for _ in range(3):
                pool.start()
            await wait_for(lambda: _count(q, 3), 30, "three live workers")
            await wait_for(lambda: leader(q), 10, "one leader")
            first = await leader(q)
            assert first is not None
            # One leader, the same term, over a few refreshes of the registry.
            for _ in range(10):
                lead = await leader(q)
                assert lead is not None and (lead.id, lead.epoch) == (first.id, first.epoch)
                assert await leaders(q) == [first.id]
                await trio.sleep(0.1)
            victim = next(w for w in pool.workers if w.pid == first.pid)

            victim.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await pool.wait(victim, 10)

            async def new_leader() -> bool:
                lead = await leader(q)
                return lead is not None and lead.pid != first.pid

            await wait_for(new_leader, LOCK_TTL * 3, "a new leader", poll=0.02)
            takeover = time.monotonic() - killed_at
            second = await leader(q)
            assert second is not None and second.epoch > first.epoch
            with capsys.disabled():
                print(f"\nfail-over[{url.split(':')[0]}] after SIGKILL: {takeover:.2f} s "
                      f"(lock_ttl {LOCK_TTL} s)")  # fmt: skip
            # The dead leader's registration expires 1.5 s after its last refresh and the
            # survivors retry every 0.5 s; the lock's own lease (3/4 lock_ttl) bounds it
            # too. The slack covers the polling and a loaded machine.
            assert takeover <= LOCK_TTL + 1.0
            assert first.id not in await live_ids(q)

            # Freeze the new leader: it stops refreshing its registration, drops out, and
            # the third worker takes over with a higher epoch.
            frozen = next(w for w in pool.workers if w.pid == second.pid)
            frozen.proc.send_signal(signal.SIGSTOP)
            try:

                async def third_leads() -> bool:
                    lead = await leader(q)
                    return lead is not None and lead.pid not in (first.pid, second.pid)

                await wait_for(third_leads, LOCK_TTL * 3, "a third leader")
                third = await leader(q)
                assert third is not None and third.epoch > second.epoch
                await wait_for(
                    lambda: _gone(q, second.pid), 10, "the frozen worker to leave the registry"
                )
                # The stale epoch cannot act: a reap presenting it is fenced.
                stale = await storage.reap(name, fence=Fence(REAPER_LOCK, second.id, second.epoch))
                assert stale.fenced
                current = await storage.reap(name, fence=Fence(REAPER_LOCK, third.id, third.epoch))
                assert not current.fenced
            finally:
                frozen.proc.send_signal(signal.SIGCONT)
            # Resumed, the stale leader registers again, learns it lost the lock and never
            # leads again.
            await wait_for(
                lambda: by_pid(q, second.pid), 10, "the resumed worker to register again"
            )
            for _ in range(10):
                resumed = await by_pid(q, second.pid)
                assert resumed is not None and not resumed.is_reaper_leader
                lead = await leader(q)
                assert lead is not None and (lead.id, lead.epoch) == (third.id, third.epoch)
                assert await leaders(q) == [third.id]
                await trio.sleep(0.1)
            for w in pool.alive():
                w.proc.send_signal(signal.SIGTERM)
            for w in pool.workers:
                assert await pool.wait(w, 20) in (0, -signal.SIGKILL), w.stderr()
            # Stopped gracefully, the workers withdrew their registrations.
            assert await live_ids(q) == set()


async def _count(queue: jq.Queue[Any, Any], n: int) -> bool:
    return len(await queue.workers()) == n


async def _gone(queue: jq.Queue[Any, Any], pid: int) -> bool:
    return await by_pid(queue, pid) is None


async def test_long_handler_in_live_worker_is_never_reaped(
    url: str, name: str, tmp_path: Path
) -> None:
    """A handler running 5x the visibility timeout in a live worker keeps its lease (the
    worker heartbeats): never stalled, never run twice, completed on attempt 1 -- while
    another worker process reaps and idles next to it."""
    vt = 1.0
    args = ("--visibility-timeout", str(vt), "--lock-ttl", "1.5", "--concurrency", "2")
    async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as q:
        async with q.events() as events, trio.open_nursery() as nursery:
            seen: list[str] = []

            async def collect() -> None:
                async for event in events:
                    seen.append(f"{event.kind}:{event.job_id}")

            nursery.start_soon(collect)
            with WorkerPool(tmp_path, url, name, args) as pool:
                pool.start()
                pool.start()
                value = await q.enqueue_and_wait("long", {"sleep": 5 * vt}, timeout=60)
                for w in pool.workers:
                    w.proc.send_signal(signal.SIGTERM)
                for w in pool.workers:
                    assert await pool.wait(w, 20) == 0, w.stderr()
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        assert value["attempt"] == 1
        assert pool.runs_per_job() == {"long": 1}
        assert "stalled:long" not in seen
        status = await q.get_status("long")
        assert status is not None and (status.state, status.attempts) == ("completed", 1)
        assert "lost the lease" not in pool.all_stderr()


async def test_frozen_worker_is_reaped_and_its_late_completion_fenced(
    url: str, name: str, tmp_path: Path
) -> None:
    """A worker frozen with SIGSTOP mid-job has the job reaped and re-run by another
    worker process; resumed, its late completion is rejected (fenced), reported in its
    log and its `fenced` counter, and the stored result stays the rescuer's."""
    args = ("--visibility-timeout", str(VT), "--lock-ttl", str(LOCK_TTL))
    async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as q:
        with WorkerPool(tmp_path, url, name, args) as pool:
            frozen = pool.start()
            await q.enqueue("job", {"sleep": 2.0})
            await wait_for(lambda: pool.runs_per_job()["job"] == 1, 30, "the job to start")
            frozen.proc.send_signal(signal.SIGSTOP)
            try:
                rescuer = pool.start()
                value = await q.enqueue_and_wait("job", None, timeout=VT + LOCK_TTL + 30)
                assert value == {"pid": rescuer.pid, "attempt": 2}
            finally:
                frozen.proc.send_signal(signal.SIGCONT)
            # The frozen worker wakes up, finishes its (old) attempt and is fenced.
            await wait_for(
                lambda: "rejected: its lease was taken over" in frozen.stderr(),
                20,
                "the late completion to be rejected",
            )
            for w in (frozen, rescuer):
                w.proc.send_signal(signal.SIGTERM)
            for w in (frozen, rescuer):
                assert await pool.wait(w, 20) == 0, w.stderr()
        log = frozen.stderr()
        assert "outcome of job 'job' attempt 1 rejected" in log
        assert "completed=0" in log and "fenced=1" in log
        assert [
            (job_id, attempt, pid)
            for job_id, attempt, pid in sorted(pool.executions(), key=lambda e: e[1])
        ] == [
            ("job", 1, frozen.pid),
            ("job", 2, rescuer.pid),
        ]
        status = await q.get_status("job")
        assert status is not None and status.state == "completed"
        assert status.result == {"pid": rescuer.pid, "attempt": 2}
