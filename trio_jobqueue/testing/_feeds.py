"""Record what a storage's event subscription and job watches deliver, for the machine.

A :class:`FeedRecorder` lives in the portal's loop (started with
:meth:`~._portal.StoragePortal.start`): it keeps ``storage.subscribe_events(ns)`` and one
``storage.watch_job(ns, id)`` per watched id open for a whole example and appends every
record they deliver. The machine, in the calling thread, waits with
:meth:`FeedRecorder.wait_for` (through ``portal.run``) until as many records arrived as
the model predicts, then compares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack

import attrs
import trio

from ..storage import EventRecord, Storage
from ..storage._core import JobWatch

__all__ = ["FeedRecorder", "FeedSnapshot"]


@attrs.frozen
class FeedSnapshot:
    """A copy of what a :class:`FeedRecorder` received so far."""

    events: list[EventRecord]
    """The subscription's records, in arrival order."""
    watched: dict[str, list[EventRecord | None]]
    """Per watched id, what its watch's ``wait()`` returned, in order."""
    error: Exception | None
    """Why a feed stopped (an exception, or the subscription's end), if one did."""


@attrs.define(eq=False)
class FeedRecorder:
    """One namespace's event subscription and job watches, recorded."""

    events: list[EventRecord] = attrs.Factory(list)
    watched: dict[str, list[EventRecord | None]] = attrs.Factory(dict)
    error: Exception | None = None
    _changed: trio.Event = attrs.Factory(trio.Event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(
        self,
        storage: Storage,
        ns: str,
        job_ids: Sequence[str],
        *,
        task_status: trio.TaskStatus[FeedRecorder] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the subscription and the watches, report ``started``, record until
        cancelled. Raises what opening a feed raised; later errors are kept in
        :attr:`error`."""
        async with AsyncExitStack() as stack:
            subscription = await stack.enter_async_context(storage.subscribe_events(ns))
            watches: list[tuple[str, JobWatch]] = []
            for job_id in job_ids:
                self.watched[job_id] = []
                watch = await stack.enter_async_context(storage.watch_job(ns, job_id))
                watches.append((job_id, watch))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._record_events, subscription)
                for job_id, watch in watches:
                    nursery.start_soon(self._record_watch, job_id, watch)
                task_status.started(self)

    async def _record_events(self, subscription: trio.abc.ReceiveChannel[EventRecord]) -> None:
        try:
            async for record in subscription:
                self.events.append(record)
                self._notify()
            self.error = AssertionError("the event subscription ended while still open")
        except Exception as exc:  # noqa: BLE001  (reported to the machine by wait_for)
            self.error = exc
        self._notify()

    async def _record_watch(self, job_id: str, watch: JobWatch) -> None:
        records = self.watched[job_id]
        try:
            while True:
                records.append(await watch.wait())
                self._notify()
        except Exception as exc:  # noqa: BLE001  (reported to the machine by wait_for)
            self.error = exc
            self._notify()

    def snapshot(self) -> FeedSnapshot:
        return FeedSnapshot(
            list(self.events), {k: list(v) for k, v in self.watched.items()}, self.error
        )

    def _arrived(self, events: int, watched: Mapping[str, int]) -> bool:
        return len(self.events) >= events and all(
            len(self.watched[job_id]) >= count for job_id, count in watched.items()
        )

    async def wait_for(
        self, events: int, watched: Mapping[str, int], timeout: float
    ) -> FeedSnapshot:
        """Wait (at most ``timeout`` seconds) until at least ``events`` records and, per
        watched id, ``watched[id]`` records arrived, or a feed failed; return a snapshot
        either way (the caller compares it with what it expected)."""
        with trio.move_on_after(timeout):
            while self.error is None and not self._arrived(events, watched):
                await self._changed.wait()
        await trio.lowlevel.checkpoint()
        return self.snapshot()
