"""The state machine's plumbing: a storage portal's background tasks are structured."""

from __future__ import annotations

import threading

import pytest
import trio

from trio_jobqueue.storage import MemoryStorage
from trio_jobqueue.testing import open_storage_portal


async def _serve(
    value: int,
    log: list[str],
    storage: MemoryStorage,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started(value)
    try:
        await trio.sleep_forever()
    finally:
        log.append(f"stopped, storage open: {storage.is_open}")


async def _fail_after_start(
    ready: threading.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await trio.lowlevel.checkpoint()
    ready.set()
    raise KeyError("after start")


def test_start_returns_the_started_value_and_cancel_waits_for_the_task() -> None:
    """``start`` returns once the task called ``started``; ``cancel`` returns after the
    task finished (its ``finally`` ran), and other calls keep working meanwhile."""
    log: list[str] = []
    with open_storage_portal(MemoryStorage) as portal:
        storage = portal.storage
        assert isinstance(storage, MemoryStorage)
        task = portal.start(_serve, 7, log, storage)
        assert (task.value, task.done, log) == (7, False, [])
        assert portal.run(storage.stats, "ns").queued == 0
        task.cancel()
        assert task.done and task.error is None
        assert log == ["stopped, storage open: True"]
        task.cancel()  # a second cancel is harmless


def test_an_error_before_started_is_raised_by_start() -> None:
    """A task that fails before ``started`` raises from ``start`` and leaves the portal
    usable."""

    async def fail(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise ValueError("before start")

    with open_storage_portal(MemoryStorage) as portal:
        with pytest.raises(ValueError, match="before start"):
            portal.start(fail)
        assert portal.run(portal.storage.get_status, "ns", "x") is None


def test_an_error_after_started_is_kept_and_raised_once_by_cancel() -> None:
    """A task that fails later does not crash the portal's loop: ``error`` holds the
    exception, ``cancel`` raises it once."""
    ready = threading.Event()
    with open_storage_portal(MemoryStorage) as portal:
        task = portal.start(_fail_after_start, ready)
        assert ready.wait(5)
        with pytest.raises(KeyError, match="after start"):
            task.cancel()
        assert isinstance(task.error, KeyError)
        task.cancel()
        assert portal.run(portal.storage.get_status, "ns", "x") is None


def test_exit_cancels_running_tasks_before_closing_the_storage() -> None:
    """Leaving the portal cancels what still runs and awaits it while the storage is
    still open."""
    log: list[str] = []
    with open_storage_portal(MemoryStorage) as portal:
        storage = portal.storage
        assert isinstance(storage, MemoryStorage)
        portal.start(_serve, 1, log, storage)
        portal.start(_serve, 2, log, storage)
    assert log == ["stopped, storage open: True"] * 2
    assert not storage.is_open


def test_exit_raises_an_error_nobody_collected() -> None:
    """An error a task raised after it started is not lost: the portal's exit raises it
    when ``cancel`` never did."""
    ready = threading.Event()
    with (
        pytest.raises(KeyError, match="after start"),
        open_storage_portal(MemoryStorage) as portal,
    ):
        portal.start(_fail_after_start, ready)
        assert ready.wait(5)
