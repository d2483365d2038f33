"""A poison job never breaks a worker: odd exceptions, exception groups, broken
serializers, interpreter exits, and storages that refuse settlements for a while.

Memory backend under trio's MockClock unless a sync handler (a thread) is involved.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

import trio_jobqueue as jq
from trio_jobqueue import _worker
from trio_jobqueue.storage import Completion, SettleStatus


class Unprintable(Exception):
    """An exception whose str() and repr() both raise."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception is broken")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this exception is broken")


class _OddMeta(type):
    """A metaclass whose names cannot be read: traceback formatting fails on it."""

    def __getattribute__(cls, name: str) -> Any:
        if name in ("__qualname__", "__module__", "__name__"):
            raise RuntimeError(f"no {name}")
        return super().__getattribute__(name)


class OddError(Exception, metaclass=_OddMeta):
    """An exception of an odd class."""


class NotAnException(BaseException):
    """A BaseException that is not control flow (a "thrown non-exception")."""


def _status_map(states: dict[str, jq.JobStatus | None]) -> dict[str, str | None]:
    return {k: (None if v is None else v.state.value) for k, v in states.items()}


@pytest.mark.parametrize(
    ("raise_it", "expected_type"),
    [
        (lambda: Unprintable(), "Unprintable"),
        (lambda: OddError("odd"), "UnknownError"),
        (lambda: NotAnException("weird"), "NotAnException"),
    ],
    ids=["unprintable", "odd-class", "base-exception"],
)
async def test_poison_exception_fails_attempts_and_worker_keeps_running(
    autojump_clock: trio.testing.MockClock, raise_it: Any, expected_type: str
) -> None:
    """An exception that cannot be printed or formatted fails each attempt with a
    best-effort error; the job ends failed after max_attempts and the worker goes on."""
    runs: list[str] = []

    async def handler(job: jq.Job[str]) -> str:
        runs.append(job.id)
        if job.payload == "poison":
            raise raise_it()
        return "fine"

    async with jq.open_queue(jq.MemoryStorage(), handler, retry_delay=0, max_attempts=3) as q:
        with pytest.raises(jq.JobFailedError) as info:
            await q.enqueue_and_wait("poison", "poison", timeout=60)
        assert await q.enqueue_and_wait("healthy", "ok", timeout=60) == "fine"
        status = await q.get_status("poison")
    assert info.value.error.type == expected_type
    assert info.value.error.message  # a placeholder at worst, never empty
    assert status is not None and status.state is jq.JobState.FAILED
    assert status.attempts == 3
    assert runs.count("poison") == 3


async def test_exception_group_with_cancelled_is_a_failed_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """job_timeout firing while a child task's finally raises: the Cancelled part is
    control flow, the ValueError is the attempt's failure; the worker is unharmed."""

    async def handler(job: jq.Job[Any]) -> str:
        if job.attempt == 2:
            return "second"

        async def child() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("cleanup failed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            await trio.sleep_forever()
        return "unreachable"

    async with jq.open_queue(
        jq.MemoryStorage(), handler, job_timeout=5, retry_delay=0, max_attempts=2
    ) as q:
        assert await q.enqueue_and_wait("g", None, timeout=60) == "second"
        status = await q.get_status("g")
    assert status is not None and status.attempts == 2


async def test_exception_group_of_errors_fails_the_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler raising a group of several errors fails with the group, not a crash."""

    async def handler(job: jq.Job[Any]) -> None:
        raise ExceptionGroup("many", [ValueError("a"), KeyError("b")])

    async with jq.open_queue(jq.MemoryStorage(), handler, max_attempts=1) as q:
        with pytest.raises(jq.JobFailedError) as info:
            await q.enqueue_and_wait("eg", None, timeout=60)
    assert info.value.error.type == "ExceptionGroup"
    assert "ValueError" in (info.value.error.traceback or "")


class BrokenSerializer:
    """JSON, except that results containing "bad" cannot be encoded and payloads
    containing "undecodable" cannot be decoded, with exceptions that cannot be printed."""

    def dumps(self, value: Any) -> bytes:
        if value == "bad":
            raise Unprintable()
        return jq.JsonSerializer().dumps(value)

    def loads(self, data: bytes) -> Any:
        value = jq.JsonSerializer().loads(data)
        if value == "undecodable":
            raise NotAnException("cannot decode")
        return value


async def test_broken_serializer_fails_the_attempt_clearly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A serializer that raises (even unprintable or non-Exception errors) while encoding
    a result or decoding a payload fails that job with a clear error; others run."""

    async def handler(job: jq.Job[str]) -> str:
        return "bad" if job.payload == "make-bad" else job.payload

    async with jq.open_queue(
        jq.MemoryStorage(), handler, serializer=BrokenSerializer(), retry_delay=0
    ) as q:
        with pytest.raises(jq.JobFailedError) as bad_result:
            await q.enqueue_and_wait("r", "make-bad", timeout=60)
        with pytest.raises(jq.JobFailedError) as bad_payload:
            await q.enqueue_and_wait("p", "undecodable", timeout=60)
        assert await q.enqueue_and_wait("ok", "fine", timeout=60) == "fine"
    assert bad_result.value.error.type == "SerializationError"
    assert "cannot encode result of 'r': Unprintable" in bad_result.value.error.message
    assert bad_payload.value.error.type == "PayloadDecodeError"
    assert "NotAnException" in bad_payload.value.error.message


@pytest.mark.parametrize("exit_exc", [KeyboardInterrupt, SystemExit])
async def test_interpreter_exit_in_handler_releases_jobs_and_propagates_unwrapped(
    autojump_clock: trio.testing.MockClock, exit_exc: type[BaseException]
) -> None:
    """KeyboardInterrupt/SystemExit in a handler: every job of the worker is released
    (queued, attempt not consumed) and the exception leaves open_queue as itself."""
    storage = jq.MemoryStorage()
    other_started = trio.Event()

    async def handler(job: jq.Job[str]) -> None:
        if job.id == "other":
            other_started.set()
            await trio.sleep_forever()
        await other_started.wait()
        raise exit_exc()

    with pytest.raises(exit_exc) as info:
        async with jq.open_queue(storage, handler, concurrency=2, shutdown_grace=100) as q:
            await q.enqueue("other", "x")
            await q.enqueue("exit", "x")
            await trio.sleep_forever()
    assert type(info.value) is exit_exc
    async with jq.open_queue(storage) as q:
        statuses = {job_id: await q.get_status(job_id) for job_id in ("other", "exit")}
    assert _status_map(statuses) == {"other": "queued", "exit": "queued"}
    assert all(s is not None and s.attempts == 0 for s in statuses.values())


async def test_failed_attempts_are_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each failed attempt logs a WARNING (id, attempt/max, type, message); the final
    failure logs an ERROR with the traceback."""

    async def handler(job: jq.Job[Any]) -> None:
        raise ValueError("no luck")

    caplog.set_level(logging.WARNING, logger="trio_jobqueue")
    async with jq.open_queue(jq.MemoryStorage(), handler, retry_delay=0, max_attempts=2) as q:
        with pytest.raises(jq.JobFailedError):
            await q.enqueue_and_wait("logged", None, timeout=60)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("'logged' attempt 1/2 failed: ValueError: no luck" in m for m in warnings)
    assert len(errors) == 1
    assert "'logged' failed after attempt 2/2: ValueError: no luck" in errors[0]
    assert "Traceback (most recent call last)" in errors[0]
    assert 'raise ValueError("no luck")' in errors[0]


class GatedHeartbeatStorage(jq.MemoryStorage):
    """Memory, except that a heartbeat waits for ``gate`` before it runs and a
    completion takes one scheduling round to "reply" (as over a network)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.heartbeat_sent = trio.Event()

    async def heartbeat(
        self, ns: str, claims: Sequence[tuple[str, str]], *, lease: float
    ) -> list[bool]:
        self.heartbeat_sent.set()
        await self.gate.wait()
        return await super().heartbeat(ns, claims, lease=lease)

    async def complete_many(self, ns: str, items: Sequence[Completion]) -> list[SettleStatus]:
        statuses = await super().complete_many(ns, items)
        self.gate.set()
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        return statuses


async def test_completing_during_a_heartbeat_is_not_a_lost_lease(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A job that completes while its heartbeat is in flight is not counted or logged
    as a lost lease."""
    storage = GatedHeartbeatStorage()

    async def handler(job: jq.Job[Any]) -> str:
        await storage.heartbeat_sent.wait()
        return "done"

    async with jq.open_queue(storage, handler, visibility_timeout=3) as q:
        assert await q.enqueue_and_wait("hb", None, timeout=60) == "done"
    stats = q.statistics()
    assert stats.lost_leases == 0
    assert stats.completed == 1
    assert not [r for r in caplog.records if "lost the lease" in r.getMessage()]


class RefusingStorage(jq.MemoryStorage):
    """Memory whose ``complete`` and ``complete_many`` (what workers call) raise
    StorageError until ``refuse_until`` (trio time)."""

    def __init__(self, refuse_for: float) -> None:
        super().__init__()
        self.refuse_until = trio.current_time() + refuse_for
        self.refusals = 0

    async def complete(
        self, ns: str, job_id: str, token: str, result: bytes, *, ttl: float
    ) -> SettleStatus:
        if trio.current_time() < self.refuse_until:
            self.refusals += 1
            raise jq.StorageError("OOM command not allowed when used memory > 'maxmemory'.")
        return await super().complete(ns, job_id, token, result, ttl=ttl)

    async def complete_many(self, ns: str, items: Sequence[Completion]) -> list[SettleStatus]:
        if trio.current_time() < self.refuse_until:
            self.refusals += 1
            raise jq.StorageError("OOM command not allowed when used memory > 'maxmemory'.")
        return await super().complete_many(ns, items)


async def test_settlement_is_retried_while_the_lease_lasts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A storage that refuses the completion for longer than SETTLE_TIMEOUT (but within
    the lease, which heartbeats keep renewing) does not turn a success into a re-run."""
    refuse_for = _worker.SETTLE_TIMEOUT * 3
    storage = RefusingStorage(refuse_for)
    runs = 0

    async def handler(job: jq.Job[Any]) -> str:
        nonlocal runs
        runs += 1
        return "stored"

    async with jq.open_queue(storage, handler, visibility_timeout=30) as q:
        assert await q.enqueue_and_wait("s", None, timeout=refuse_for * 2) == "stored"
    stats = q.statistics()
    assert runs == 1
    assert storage.refusals > 1
    assert stats.completed == 1 and stats.lost_leases == 0


async def test_job_timeout_with_sync_handler_is_refused() -> None:
    """job_timeout cannot interrupt a thread, so open_queue refuses it for a sync
    handler with a clear error, before opening anything."""
    storage = jq.MemoryStorage()

    def blocking(job: jq.Job[Any]) -> None:
        return None

    with pytest.raises(ValueError, match="job_timeout needs an async handler"):
        async with jq.open_queue(storage, blocking, job_timeout=5):
            pass
    assert not storage.is_open


async def test_shutdown_waits_for_a_sync_handler_that_ignores_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync handler still running after the grace period cannot be interrupted:
    shutdown logs that it waits, waits for it, and stores its result (real clock)."""
    monkeypatch.setattr(_worker, "STUCK_WARNING", 0.05)
    storage = jq.MemoryStorage()
    started = threading.Event()
    release = threading.Event()

    def stubborn(job: jq.Job[Any]) -> str:
        started.set()
        release.wait(30)
        return "finished anyway"

    class ReleaseOnWarning(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "ignore cancellation" in record.getMessage():
                release.set()

    watcher = ReleaseOnWarning()
    logging.getLogger("trio_jobqueue").addHandler(watcher)
    try:
        async with jq.open_queue(storage, stubborn, shutdown_grace=0.05) as q:
            await q.enqueue("t", None)
            await trio.to_thread.run_sync(started.wait, 10)
    finally:
        logging.getLogger("trio_jobqueue").removeHandler(watcher)
    assert release.is_set()
    async with jq.open_queue(storage) as q:
        status = await q.get_status("t")
    assert status is not None and status.state is jq.JobState.COMPLETED
    assert status.result == "finished anyway"
