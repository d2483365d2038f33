"""Events are never dropped silently: a slow subscriber, a lost pub/sub connection and
a File reader overtaken by compaction each leave a ``missed`` marker in the stream (and
wake job watchers); large results travel by reference; the demo always finishes."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_jobqueue as jq
from trio_jobqueue.cli._demo import run_demo
from trio_jobqueue.storage import Storage, _core
from trio_jobqueue.storage.file import FileStorage

BUFFER = 20
JOBS = 100


async def test_slow_subscriber_gets_a_missed_marker_in_place_of_dropped_events(
    storage_factory: Callable[[], Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscriber that does not read keeps its first events, then one ``missed``
    marker counting what was dropped, then the events that came after it."""
    async with jq.open_queue(storage_factory(), name="slow-reader") as q, q.events() as fast:
        with monkeypatch.context() as patch:
            patch.setattr(_core, "EVENT_BUFFER", BUFFER)  # for `slow` only: `fast` exists
            async with q.events() as slow:
                for n in range(JOBS):
                    await q.enqueue(f"job-{n}", n)
                # The eager reader saw them all: the slow one was offered them all too.
                with trio.fail_after(30):
                    seen = 0
                    while seen < JOBS:
                        seen += (await fast.receive()).kind == "enqueued"
                kept = [await slow.receive() for _ in range(BUFFER)]
                marker = await slow.receive()
                await q.enqueue("after", None)
                with trio.fail_after(30):
                    after = await slow.receive()
    assert [e.job_id for e in kept] == [f"job-{n}" for n in range(BUFFER)]
    assert marker.kind == "missed" and marker.missed == JOBS - BUFFER
    assert slow.missed == JOBS - BUFFER
    assert (after.kind, after.job_id) == ("enqueued", "after")


@pytest.mark.redis
async def test_redis_pubsub_reconnect_puts_a_marker_in_the_stream(
    redis_storage_factory: Callable[[], jq.RedisStorage],
) -> None:
    """Events published while the pub/sub connection was down are lost: the subscriber
    sees a ``missed`` marker (unknown count) before the events that follow."""
    storage = redis_storage_factory()
    async with jq.open_queue(storage, name="reconnect") as q, q.events() as events:
        await storage.server_command("CLIENT", "KILL", "TYPE", "pubsub")
        with trio.fail_after(20):
            marker = await events.receive()
            await q.enqueue("after-reconnect", None)
            async for event in events:
                if event.kind == "enqueued":
                    break
    assert (marker.kind, marker.missed) == ("missed", 0)
    assert event.job_id == "after-reconnect"


async def test_file_reader_overtaken_by_compaction_rereads_its_watches(tmp_path: Path) -> None:
    """A process whose journal reader fell behind compaction wakes its job watchers: a
    cross-process enqueue_and_wait returns the result instead of timing out."""
    root = tmp_path / "q"
    # The waiter polls rarely, the worker side compacts after every few transitions.
    waiter_storage = FileStorage(root, force_polling=True, poll_interval=1.0, compact_bytes=512)
    worker_storage = FileStorage(root, compact_bytes=512)
    done = trio.Event()

    async def handler(job: jq.Job[Any]) -> str:
        return "from the other process"

    async with (
        jq.open_queue(worker_storage, handler, name="compact") as worker_q,
        jq.open_queue(waiter_storage, name="compact") as waiter_q,
        trio.open_nursery() as nursery,
    ):

        async def churn_after_completion() -> None:
            # Once the job completed, push the journal through several generations, so
            # that the completion lies in a generation the waiter never reads.
            async with worker_storage.watch_job("compact", "watched") as watch:
                status = await worker_storage.get_status("compact", "watched")
                while status is None or status.state is not jq.JobState.COMPLETED:
                    await watch.wait()
                    status = await worker_storage.get_status("compact", "watched")
            for n in range(60):
                await worker_q.enqueue(f"junk-{n}", "x" * 64)
                await worker_q.cancel(f"junk-{n}")
            done.set()

        nursery.start_soon(churn_after_completion)
        with trio.fail_after(30):
            result = await waiter_q.enqueue_and_wait("watched", None, timeout=25)
        await done.wait()
    assert result == "from the other process"


@pytest.mark.redis
async def test_large_result_is_not_published_and_still_reaches_everyone(
    redis_storage_factory: Callable[[], jq.RedisStorage],
) -> None:
    """A 20 MB result does not go through pub/sub (which would get the subscriber
    dropped by Redis's 32 MB output-buffer limit): waiters and event subscribers get
    it by reading the job, and the pub/sub connection stays up."""
    big = "x" * (20 * 1024 * 1024)

    async def handler(job: jq.Job[Any]) -> str:
        return big

    storage = redis_storage_factory()
    async with (
        jq.open_queue(storage, handler, name="big") as q,
        q.events() as events,
        q.events() as other,
    ):
        with trio.fail_after(60):
            assert await q.enqueue_and_wait("big", None, timeout=50) == big
            received = [e async for e in _until_completed(events)]
            others = [e async for e in _until_completed(other)]
    assert received[-1].result == big and others[-1].result == big
    assert "missed" not in {e.kind for e in received + others}


async def _until_completed(events: Any) -> Any:
    async for event in events:
        yield event
        if event.kind == "completed":
            return


def test_large_results_leave_file_events_by_reference() -> None:
    """On File, a large result is journalled once (in the job record), not again in its
    event; the Lua scripts use the same threshold."""
    from trio_jobqueue.storage import _state
    from trio_jobqueue.storage._base import EventRecord

    big = _state.encode_event(
        EventRecord(jq.EventKind.COMPLETED, "j", 1, result=b"x" * (_core.INLINE_RESULT_MAX + 1))
    )
    small = _state.encode_event(EventRecord(jq.EventKind.COMPLETED, "j", 1, result=b"x"))
    assert big[3] is None and _state.decode_event(big).result_ref
    assert not _state.decode_event(small).result_ref
    lua = (Path(jq.__file__).parent / "lua" / "_lib.lua").read_text()
    assert f"local INLINE_RESULT_MAX = {_core.INLINE_RESULT_MAX}" in lua


@pytest.mark.parametrize("jobs", [10_000, 20_000])
async def test_demo_finishes(jobs: int) -> None:
    """The README's demo (whose event collector falls behind) counts every outcome and
    prints its summary instead of hanging."""
    out = io.StringIO()
    with trio.fail_after(120):
        figures = await run_demo(jobs, 100, 0.0, out)
    assert figures["jobs"] == jobs
    assert f"completed {jobs:,} jobs" in out.getvalue()
