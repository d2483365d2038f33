"""``serve_worker`` and ``serve_reaper``: workers and reapers in the caller's nursery.

Memory backend under trio's MockClock (``autojump_clock``): no real sleeps.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_jobqueue as jq


@attrs.define(eq=False)
class CountingStorage(jq.MemoryStorage):
    """A MemoryStorage that counts how often it was really opened and closed."""

    opened: int = 0
    closed: int = 0

    async def _open(self) -> None:
        self.opened += 1
        await super()._open()

    async def _close(self) -> None:
        self.closed += 1
        await super()._close()


@attrs.define(eq=False)
class Service:
    """A ``serve_*`` task started in a nursery, which the test can stop on its own."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    started: Any = None

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


async def start_service(nursery: trio.Nursery, serve: Callable[..., Awaitable[object]]) -> Service:
    """``nursery.start(serve)`` inside a cancel scope of its own (see :class:`Service`)."""
    service = Service()

    async def run(*, task_status: trio.TaskStatus[Any]) -> None:
        try:
            with service.scope:
                await serve(task_status=task_status)
        finally:
            service.done.set()

    service.started = await nursery.start(run)
    return service


async def double(job: jq.Job[int]) -> int:
    return job.payload * 2


async def test_serve_worker_runs_jobs_in_the_callers_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """serve_worker started with nursery.start processes jobs, and passes the worker's
    Queue (statistics, worker id, embedded reaper) to task_status.started."""
    storage = jq.MemoryStorage()
    async with trio.open_nursery() as nursery:
        queue = await nursery.start(
            functools.partial(jq.serve_worker, storage, double, name="maths", worker_id="w1")
        )
        assert isinstance(queue, jq.Queue)
        assert queue.name == "maths" and queue.worker_id == "w1"
        assert await queue.enqueue_and_wait("a", 21, timeout=10) == 42
        stats = queue.statistics()
        assert stats.worker_id == "w1" and stats.completed == 1 and stats.in_flight == 0
        assert stats.is_reaper_leader is True
        nursery.cancel_scope.cancel()
    assert not storage.is_open


async def test_cancelling_serve_worker_is_the_graceful_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling the nursery stops claiming at once, lets in-flight jobs finish within
    shutdown_grace and releases the rest (attempt not consumed), all before the
    serve_worker task returns; then the storage is closed."""
    storage = jq.MemoryStorage()
    running: set[str] = set()

    async def handler(job: jq.Job[float]) -> str:
        running.add(job.id)
        await trio.sleep(job.payload)
        return job.id

    async with trio.open_nursery() as outside:
        async with trio.open_nursery() as workers:
            queue = await workers.start(
                functools.partial(
                    jq.serve_worker, storage, handler, concurrency=3, shutdown_grace=5
                )
            )
            await queue.enqueue("quick", 3.0)
            await queue.enqueue("stuck", 1000.0)
            await trio.testing.wait_all_tasks_blocked()
            assert running == {"quick", "stuck"}

            async def enqueue_during_grace() -> None:
                await trio.sleep(1)
                assert storage.is_open  # serve_worker still holds it
                await queue.enqueue("late", 0.0)

            outside.start_soon(enqueue_during_grace)
            cancelled_at = trio.current_time()
            workers.cancel_scope.cancel()
        returned_at = trio.current_time()
    assert returned_at - cancelled_at == pytest.approx(5)
    assert not storage.is_open
    stats = queue.statistics()
    assert (stats.completed, stats.released, stats.in_flight) == (1, 1, 0)
    async with jq.open_queue(storage) as reader:
        states = {i: await reader.get_status(i) for i in ("quick", "stuck", "late")}
    assert {i: (s.state, s.attempts) for i, s in states.items() if s is not None} == {
        "quick": ("completed", 1),
        "stuck": ("queued", 0),
        "late": ("queued", 0),
    }


async def test_two_workers_with_own_names_and_handlers_share_storage_and_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two serve_worker tasks with different names and handlers on one storage, in one
    nursery: each queue's jobs run on its own handler only."""
    storage = jq.MemoryStorage()
    ran: list[tuple[str, str]] = []

    async def email(job: jq.Job[str]) -> str:
        ran.append(("email", job.id))
        return f"mailed {job.payload}"

    async def sms(job: jq.Job[str]) -> str:
        ran.append(("sms", job.id))
        return f"texted {job.payload}"

    async with trio.open_nursery() as nursery:
        emails = await nursery.start(
            functools.partial(jq.serve_worker, storage, email, name="emails", concurrency=10)
        )
        texts = await nursery.start(
            functools.partial(jq.serve_worker, storage, sms, name="sms", reaper=False)
        )
        assert texts.reaper is None and emails.reaper is not None
        assert emails.worker_id != texts.worker_id
        with trio.fail_after(10):
            assert await emails.enqueue_and_wait("1", "ann") == "mailed ann"
            assert await texts.enqueue_and_wait("1", "bob") == "texted bob"
            assert await emails.enqueue_and_wait("2", "cat") == "mailed cat"
        nursery.cancel_scope.cancel()
    assert sorted(ran) == [("email", "1"), ("email", "2"), ("sms", "1")]
    assert not storage.is_open


async def test_storage_is_open_while_any_serve_task_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The storage is opened once by the first serve_* task, stays open while any of
    them runs (whatever order they stop in), and is closed after the last one."""
    storage = CountingStorage()
    async with trio.open_nursery() as nursery:
        first = await start_service(nursery, functools.partial(jq.serve_worker, storage, double))
        reaper = await start_service(
            nursery, functools.partial(jq.serve_reaper, storage, name="other")
        )
        last = await start_service(
            nursery, functools.partial(jq.serve_worker, storage, double, name="other")
        )
        assert (storage.is_open, storage.opened) == (True, 1)
        await first.stop()
        assert storage.is_open
        await reaper.stop()
        assert storage.is_open
        assert await last.started.enqueue_and_wait("x", 1, timeout=10) == 2
        await last.stop()
        assert not storage.is_open
    assert (storage.opened, storage.closed) == (1, 1)


async def test_serve_reaper_recovers_a_dead_workers_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A job claimed by a worker that died (no heartbeats) is recovered by a serve_reaper
    task within about one visibility timeout, with a ``stalled`` event; a worker then runs
    its second attempt."""
    storage = jq.MemoryStorage()
    async with storage, trio.open_nursery() as nursery:
        async with jq.open_queue(storage) as producer:
            await producer.enqueue("orphan", 1)
        (claim,) = await storage.claim("default", "dead-worker", limit=1, lease=10)
        assert claim.attempt == 1
        reaper = await nursery.start(
            functools.partial(jq.serve_reaper, storage, visibility_timeout=10, owner="r1")
        )
        assert isinstance(reaper, jq.Reaper)
        start = trio.current_time()
        async with reaper.events() as events:
            with trio.fail_after(60):
                event = await events.receive()
                while event.kind != "stalled":
                    event = await events.receive()
        assert event.job_id == "orphan" and event.attempt == 1
        assert trio.current_time() - start <= 16
        assert reaper.is_leader and reaper.statistics().stalled == 1

        async def attempt_of(job: jq.Job[Any]) -> int:
            return job.attempt

        queue = await nursery.start(
            functools.partial(jq.serve_worker, storage, attempt_of, reaper=False)
        )
        with trio.fail_after(60):
            assert await queue.enqueue_and_wait("orphan", 1) == 2
        nursery.cancel_scope.cancel()


async def _noop(job: jq.Job[Any]) -> None:
    return None


def _blocking(job: jq.Job[Any]) -> None:
    return None


BAD_WORKER_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"concurrency": 0}, ValueError, "concurrency"),
    ({"concurrency": True}, ValueError, "concurrency"),
    ({"max_attempts": 0}, ValueError, "max_attempts"),
    ({"retry_delay": -1}, ValueError, "seconds"),
    ({"visibility_timeout": -1}, jq.InvalidTtlError, "visibility_timeout"),
    ({"job_timeout": 0}, jq.InvalidTtlError, "job_timeout"),
    ({"result_ttl": float("inf")}, jq.InvalidTtlError, "result_ttl"),
    ({"shutdown_grace": -1}, ValueError, "shutdown_grace"),
    ({"worker_id": ""}, ValueError, "worker_id"),
    ({"name": ""}, jq.InvalidJobError, "queue name"),
    ({"lock_ttl": 0}, jq.InvalidTtlError, "lock_ttl"),
    ({"after_execution": 3}, TypeError, "after_execution"),
    ({"serializer": object()}, TypeError, "serializer"),
    ({"handler": _blocking, "job_timeout": 5}, ValueError, "job_timeout needs an async handler"),
    ({"handler": "not callable"}, TypeError, "handler"),
]


@pytest.mark.parametrize(("options", "error", "word"), BAD_WORKER_OPTIONS)
async def test_invalid_worker_options_are_refused_before_anything_opens(
    options: dict[str, Any], error: type[Exception], word: str
) -> None:
    """Each invalid option makes serve_worker (called directly or through
    nursery.start) and open_queue raise the same error naming it; the storage is never
    opened."""
    storage = CountingStorage()
    options = {"handler": _noop, **options}
    handler = options.pop("handler")
    with pytest.raises(error, match=word) as direct:
        await jq.serve_worker(storage, handler, **options)
    async with trio.open_nursery() as nursery:
        with pytest.raises(error, match=word) as started:
            await nursery.start(functools.partial(jq.serve_worker, storage, handler, **options))
    with pytest.raises(error, match=word) as opened:
        async with jq.open_queue(storage, handler, **options):
            pass
    assert str(direct.value) == str(started.value) == str(opened.value)
    assert storage.opened == 0 and not storage.is_open


@pytest.mark.parametrize(
    ("options", "error", "word"),
    [
        ({"name": ""}, jq.InvalidJobError, "queue name"),
        ({"visibility_timeout": 0}, jq.InvalidTtlError, "visibility_timeout"),
        ({"lock_ttl": -1}, jq.InvalidTtlError, "lock_ttl"),
        ({"interval": 0}, ValueError, "interval"),
        ({"owner": ""}, ValueError, "owner"),
    ],
)
async def test_invalid_reaper_options_are_refused_before_anything_opens(
    options: dict[str, Any], error: type[Exception], word: str
) -> None:
    """serve_reaper and open_reaper refuse an invalid option with the same error naming
    it, without opening the storage."""
    storage = CountingStorage()
    with pytest.raises(error, match=word) as served:
        await jq.serve_reaper(storage, **options)
    with pytest.raises(error, match=word) as opened:
        async with jq.open_reaper(storage, **options):
            pass
    assert str(served.value) == str(opened.value)
    assert storage.opened == 0


async def test_serve_worker_needs_a_handler() -> None:
    """serve_worker without a handler is refused (TypeError) before the storage opens."""
    storage = CountingStorage()
    with pytest.raises(TypeError, match="handler"):
        await jq.serve_worker(storage, None)  # type: ignore[arg-type]
    assert storage.opened == 0


@pytest.mark.parametrize("exit_exc", [KeyboardInterrupt, SystemExit])
async def test_interpreter_exit_in_a_handler_leaves_serve_worker_unwrapped(
    autojump_clock: trio.testing.MockClock, exit_exc: type[BaseException]
) -> None:
    """A handler raising KeyboardInterrupt/SystemExit stops serve_worker: every job it
    held is released (attempt not consumed), then the exception leaves serve_worker as
    itself, not inside an exception group."""
    storage = jq.MemoryStorage()
    other_started = trio.Event()

    async def handler(job: jq.Job[str]) -> None:
        if job.id == "other":
            other_started.set()
            await trio.sleep_forever()
        await other_started.wait()
        raise exit_exc()

    async def serve(*, task_status: trio.TaskStatus[jq.Queue[Any, Any]]) -> None:
        with pytest.raises(exit_exc) as info:
            await jq.serve_worker(
                storage, handler, concurrency=2, shutdown_grace=100, task_status=task_status
            )
        assert type(info.value) is exit_exc

    async with trio.open_nursery() as nursery:
        queue = await nursery.start(serve)
        await queue.enqueue("other", "x")
        await queue.enqueue("exit", "x")
    assert not storage.is_open
    async with jq.open_queue(storage) as reader:
        statuses = {i: await reader.get_status(i) for i in ("other", "exit")}
    assert {i: (s.state, s.attempts) for i, s in statuses.items() if s is not None} == {
        "other": ("queued", 0),
        "exit": ("queued", 0),
    }
