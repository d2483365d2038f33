"""Drive an async :class:`~trio_jobqueue.storage.Storage` from synchronous code.

Hypothesis runs state-machine rules as plain functions, while storages are trio objects
that must live inside one ``trio.run`` (MemoryStorage's events, a Redis connection pool,
a file watcher). :func:`open_storage_portal` starts a background thread that runs
``trio.run``, opens the storage there and keeps it open; :meth:`StoragePortal.run` hands one
coroutine call at a time to that loop with ``trio.from_thread.run`` and returns its result
(or raises its exception) in the calling thread.

Each :meth:`~StoragePortal.run` call is a task of its own, so a context that must stay
open across calls (an event subscription, a job watch) cannot be entered in one call and
left in another. :meth:`StoragePortal.start` runs such a long-lived task instead, in a
nursery the portal owns (``nursery.start`` semantics); the returned :class:`PortalTask`
stops it. Tasks still running when the portal closes are cancelled and awaited before the
storage is closed.

The background loop uses trio's real clock; tests move a storage's time with
``Storage.advance_clock``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import trio

from ..storage import Storage

__all__ = ["PortalTask", "StoragePortal", "open_storage_portal"]

T = TypeVar("T")


class _ReportingStatus:
    """Passes ``started()`` on to the nursery and remembers that it was called."""

    def __init__(self, status: trio.TaskStatus[Any]) -> None:
        self._status = status
        self.called = False

    def started(self, value: object = None) -> None:
        self.called = True
        self._status.started(value)


@attrs.define(eq=False)
class PortalTask:
    """A background task started by :meth:`StoragePortal.start`.

    The task runs in the portal's nursery until :meth:`cancel` (or the portal's exit)
    cancels it. An exception it raises after ``task_status.started()`` is kept here, not
    propagated into the portal's loop: :meth:`cancel` re-raises it, and the portal raises
    it on exit if nobody did.
    """

    _token: trio.lowlevel.TrioToken
    value: Any = None
    """What the task passed to ``task_status.started()``."""
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _finished: trio.Event = attrs.field(factory=trio.Event, init=False)
    _error: Exception | None = attrs.field(default=None, init=False)
    _reported: bool = attrs.field(default=False, init=False)

    @property
    def done(self) -> bool:
        """Whether the task has returned, raised or been cancelled."""
        return self._finished.is_set()

    @property
    def error(self) -> Exception | None:
        """The exception the task raised after it started, if any."""
        return self._error

    def cancel(self) -> None:
        """Cancel the task and wait until it has finished (from the calling thread).

        Raises:
            Exception: whatever the task raised after it started (once: a second
                ``cancel`` returns quietly).
        """
        trio.from_thread.run(self._cancel_and_wait, trio_token=self._token)
        self._raise_once()

    async def _cancel_and_wait(self) -> None:
        self._scope.cancel()
        await self._finished.wait()

    @property
    def _unreported(self) -> bool:
        return self._error is not None and not self._reported

    def _raise_once(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    async def _run(
        self,
        afn: Callable[..., Awaitable[object]],
        args: tuple[Any, ...],
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        status = _ReportingStatus(task_status)
        try:
            with self._scope:
                await afn(*args, task_status=status)
        except Exception as exc:
            if not status.called:
                raise  # nursery.start() re-raises it in the starting thread
            self._error = exc
        finally:
            self._finished.set()


@attrs.frozen
class StoragePortal:
    """An opened storage living in a trio loop on another thread."""

    storage: Storage
    """The opened storage. Call its methods only through :meth:`run` (or from tasks
    started with :meth:`start`)."""
    _token: trio.lowlevel.TrioToken
    _nursery: trio.Nursery
    _tasks: list[PortalTask] = attrs.field(factory=list)

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await afn(*args, **kwargs)`` in the storage's loop and return its result.

        Blocks the calling thread until the call finishes; its exception is re-raised here.
        Must not be called from the portal's own loop.
        """
        return trio.from_thread.run(functools.partial(afn, *args, **kwargs), trio_token=self._token)

    def start(self, afn: Callable[..., Awaitable[object]], *args: Any) -> PortalTask:
        """Start ``afn(*args, task_status=...)`` in the portal's nursery, as
        ``nursery.start`` does, and return once it called ``task_status.started(value)``.

        The task keeps running after this returns; stop it with :meth:`PortalTask.cancel`
        (the portal's exit cancels whatever is left). Must not be called from the portal's
        own loop.

        Raises:
            Exception: whatever ``afn`` raised before it called ``task_status.started()``
                (nothing keeps running then).
        """
        return trio.from_thread.run(self._start, afn, args, trio_token=self._token)

    async def _start(
        self, afn: Callable[..., Awaitable[object]], args: tuple[Any, ...]
    ) -> PortalTask:
        task = PortalTask(self._token)
        task.value = await self._nursery.start(task._run, afn, args)
        # Keep only what the portal's exit may still have to stop or report.
        self._tasks[:] = [t for t in self._tasks if not t.done or t._unreported]
        self._tasks.append(task)
        return task


@contextmanager
def open_storage_portal(make_storage: Callable[[], Storage]) -> Iterator[StoragePortal]:
    """Open ``make_storage()`` in a trio loop on a background thread for the ``with`` body.

    On exit, tasks started with :meth:`StoragePortal.start` are cancelled and awaited, the
    storage is closed, the loop ends and the thread is joined. An error while opening or
    closing the storage, or one a started task raised and nobody collected with
    :meth:`PortalTask.cancel`, is raised in the calling thread.
    """
    storage = make_storage()
    started = threading.Event()
    outcome: dict[str, Any] = {}

    async def serve() -> None:
        stop = trio.Event()
        async with storage, trio.open_nursery() as nursery:
            outcome["token"] = trio.lowlevel.current_trio_token()
            outcome["stop"] = stop
            outcome["nursery"] = nursery
            started.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def loop() -> None:
        try:
            trio.run(serve)
        except Exception as exc:  # noqa: BLE001  (re-raised in the opening thread)
            outcome["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=loop, name="trio-jobqueue-storage-portal", daemon=True)
    thread.start()
    started.wait()
    if "token" not in outcome:
        thread.join()
        raise outcome["error"]
    token: trio.lowlevel.TrioToken = outcome["token"]
    stop: trio.Event = outcome["stop"]
    portal = StoragePortal(storage, token, outcome["nursery"])
    try:
        yield portal
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join()
        error = outcome.get("error")
        if error is not None:
            raise error
    for task in portal._tasks:
        task._raise_once()
