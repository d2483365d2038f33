"""Force-cancel of running jobs and progress: across processes on Redis and File, and
in-process (MockClock) for the worker's side: shielded handlers, fencing, rate limit."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _proc_harness import WorkerPool, run_cli, wait_for

import trio_jobqueue as jq
from trio_jobqueue.storage import SettleStatus


def _cancelled_at(pool: WorkerPool) -> dict[str, float]:
    path = pool.runs / "cancelled.txt"
    if not path.exists():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        job_id, _, when = line.rpartition(" ")
        found[job_id] = float(when)
    return found


@pytest.mark.slow
async def test_force_cancel_from_another_process(url: str, tmp_path: Path) -> None:
    """A worker process runs four jobs; this process sees the victim's progress (API and
    CLI ``status``), then force-cancels it: the handler sees ``Cancelled`` within 1 s, the
    waiter gets ``JobCancelledError``, the id is free; ``cancel --force`` of the CLI
    cancels another; the other two complete once each."""
    name = f"fc-{uuid.uuid4().hex[:8]}"
    with WorkerPool(tmp_path, url, name, handler="_control_handlers:hold") as pool:
        pool.start("--concurrency", "4")
        async with jq.open_queue(jq.storage_from_url(url), name=name) as q:
            async with q.events() as events:
                await q.enqueue("victim", {"hold": 60, "progress": {"step": 1, "of": 3}})
                await q.enqueue("cli-victim", {"hold": 60, "progress": 0.25})
                for n in range(2):
                    await q.enqueue(f"other-{n}", {"hold": 1.0})
                started: set[str] = set()
                progress = None
                with trio.fail_after(30):
                    async for event in events:
                        if event.kind == "started":
                            started.add(event.job_id)
                        elif event.kind == "progress" and event.job_id == "victim":
                            progress = event.progress
                        if len(started) == 4 and progress is not None:
                            break
            assert progress == {"step": 1, "of": 3}
            status = await q.get_status("victim")
            assert status is not None and status.progress == {"step": 1, "of": 3}
            where = ["--storage", url, "--name", name]
            done = await trio.to_thread.run_sync(lambda: run_cli("status", "cli-victim", *where))
            assert done.returncode == 0 and "progress:  25%" in done.stdout, done
            outcome: dict[str, Any] = {}

            async def wait_victim() -> None:
                try:
                    await q.enqueue_and_wait("victim", {}, timeout=30)
                except jq.JobCancelledError as exc:
                    outcome["error"] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_victim)
                await trio.testing.wait_all_tasks_blocked(0.2)
                asked = time.time()
                result = await q.cancel("victim", force=True)
                assert result.status == jq.CancelStatus.CANCELLING
            assert isinstance(outcome.get("error"), jq.JobCancelledError)
            await wait_for(lambda: "victim" in _cancelled_at(pool), 5, "the handler's Cancelled")
            assert _cancelled_at(pool)["victim"] - asked < 1.0
            assert await q.get_status("victim") is None
            done = await trio.to_thread.run_sync(
                lambda: run_cli("cancel", "cli-victim", "--force", *where)
            )
            assert (done.returncode, done.stdout) == (0, "cancelling\n"), done
            await wait_for(lambda: "cli-victim" in _cancelled_at(pool), 5, "the 2nd Cancelled")
            with trio.fail_after(30):
                for n in range(2):
                    value = await q.enqueue_and_wait(f"other-{n}", {}, timeout=30)
                    assert value["pid"] == pool.workers[0].pid
            assert pool.runs_per_job() == {"victim": 1, "cli-victim": 1, "other-0": 1, "other-1": 1}
            assert set(_cancelled_at(pool)) == {"victim", "cli-victim"}

            async def counted() -> bool:
                infos = await q.workers()
                return any(i.counters.get("force_cancelled") == 2 for i in infos)

            await wait_for(counted, 10, "the worker's force_cancelled counter")
        assert "force-cancelled" in pool.all_stderr()


# -- in one process (Memory, MockClock) -----------------------------------------------------


class CountingStorage(jq.MemoryStorage):
    """Counts progress writes."""

    progress_writes: int = 0

    async def set_progress(self, ns: str, job_id: str, token: str, progress: bytes) -> SettleStatus:
        self.progress_writes += 1
        return await super().set_progress(ns, job_id, token, progress)


class DeafStorage(jq.MemoryStorage):
    """Loses every force-cancel notification: only heartbeats can find them."""

    async def force_cancel(self, ns: str, job_id: str) -> jq.CancelStatus:
        hub = self.hub(ns)
        listeners, hub.controls = hub.controls, set()
        try:
            return await super().force_cancel(ns, job_id)
        finally:
            hub.controls = listeners


async def _started(q: jq.Queue[Any, Any], job_id: str, payload: Any) -> None:
    async with q.events() as events:
        await q.enqueue(job_id, payload)
        async for event in events:
            if event.kind == "started" and event.job_id == job_id:
                return


async def test_force_cancel_cancels_the_handler_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On Memory the handler is cancelled with no time passing; a plain cancel still only
    reports ``processing``; the freed id runs again as a new job."""
    seen: list[tuple[str, float]] = []

    async def handler(job: jq.Job[Any]) -> str:
        try:
            await trio.sleep(3600 if job.payload == "long" else 0)
        except trio.Cancelled:
            seen.append(("cancelled", trio.current_time()))
            raise
        return "done"

    async with jq.open_queue(jq.MemoryStorage(), handler=handler) as q:
        await _started(q, "j", "long")
        assert (await q.cancel("j")).status == "processing"
        asked = trio.current_time()
        assert (await q.cancel("j", force=True)).status == jq.CancelStatus.CANCELLING
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [("cancelled", asked)]
        assert (await q.cancel("j", force=True)).status == "not_found"
        assert await q.enqueue_and_wait("j", "short", timeout=5) == "done"
        stats = q.statistics()
        assert stats.force_cancelled == 1 and stats.fenced == 0 and stats.completed == 1


async def test_shielded_handler_outcome_is_discarded(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that shields itself finishes after the force-cancel: its result is
    discarded (nothing stored, logged), its progress writes are rejected (``False``)."""
    cancelled = trio.Event()
    reports: list[bool] = []

    async def handler(job: jq.Job[Any]) -> str:
        with trio.CancelScope(shield=True):
            await cancelled.wait()
            reports.append(await job.report_progress(0.9))
        return "late"

    async with jq.open_queue(jq.MemoryStorage(), handler=handler) as q:
        await _started(q, "j", None)
        with caplog.at_level(logging.WARNING, logger="trio_jobqueue"):
            assert (await q.cancel("j", force=True)).status == "cancelling"
            cancelled.set()
            await trio.sleep(1)
        assert reports == [False]
        assert await q.get_status("j") is None
    assert "force-cancelled" in caplog.text and "is discarded" in caplog.text


async def test_missed_notification_lands_by_heartbeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the notification lost, the worker's next heartbeat (visibility_timeout/3)
    finds the force-cancel and cancels the handler."""
    cancelled_at: list[float] = []
    seen = trio.Event()

    async def handler(job: jq.Job[Any]) -> None:
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            cancelled_at.append(trio.current_time())
            seen.set()
            raise

    async with jq.open_queue(DeafStorage(), handler=handler, visibility_timeout=30) as q:
        await _started(q, "j", None)
        asked = trio.current_time()
        assert (await q.cancel("j", force=True)).status == "cancelling"
        with trio.fail_after(60):
            await seen.wait()
        assert 0 < cancelled_at[0] - asked <= 10 + 1


async def test_progress_is_rate_limited_and_the_last_value_lands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler reporting every millisecond for 1 s makes about 10 storage writes (one per
    0.1 s), and the last value reported is the one stored (also after completion)."""
    storage = CountingStorage()

    async def handler(job: jq.Job[Any]) -> None:
        for n in range(1, 1001):
            assert await job.report_progress({"done": n})
            await trio.sleep(0.001)

    async with jq.open_queue(storage, handler=handler) as q:
        await q.enqueue_and_wait("j", None, timeout=60)
        status = await q.get_status("j")
        assert status is not None and status.progress == {"done": 1000}
    assert 9 <= storage.progress_writes <= 12, storage.progress_writes


async def test_bad_progress_values_raise_and_write_nothing() -> None:
    """Out of range, non-finite, bool, unencodable or oversized values raise
    ``ValueError`` naming the value; nothing is written."""
    storage = CountingStorage()
    errors: list[str] = []

    async def handler(job: jq.Job[Any]) -> None:
        for bad in (1.5, -0.1, float("nan"), True, "half", {"x": object()}, {"x": "y" * 5000}):
            try:
                await job.report_progress(bad)
            except ValueError as exc:
                errors.append(str(exc))
        assert await job.report_progress(1)

    async with jq.open_queue(storage, handler=handler) as q:
        await q.enqueue_and_wait("j", None, timeout=10)
        status = await q.get_status("j")
        assert status is not None and status.progress == 1.0
    assert len(errors) == 7 and "1.5" in errors[0] and "half" in errors[4]
    assert "4096" in errors[6]
    assert storage.progress_writes == 1
