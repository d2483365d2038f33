"""Event fan-out shared by every backend: bounded subscriber buffers that never drop an
event silently, and job watches.

Slow-subscriber policy: each subscriber has a bounded buffer (:data:`EVENT_BUFFER`
events). A backend never blocks on a slow subscriber; when the buffer is full, further
events are dropped **for that subscriber only** and one ``missed`` marker takes their
place in its stream, counting them. A backend that may itself have lost events (a Redis
pub/sub reconnect, a File reader overtaken by journal compaction) puts a marker with an
unknown count (``missed == 0``). Either way the consumer learns, at the exact position
in the stream, that it must re-read whatever state it derives from events; the marker is
logged when it is received.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

import attrs
import trio

from .._types import EventKind
from ._base import EventRecord, JobWatch

__all__ = ["EVENT_BUFFER", "EventSubscription", "SubscriberSet", "WatchSet", "gap_record"]

log = logging.getLogger("trio_jobqueue")

EVENT_BUFFER = 10_000
"""Events buffered per subscriber before further ones are replaced by a ``missed``
marker."""

INLINE_RESULT_MAX = 32 * 1024
"""Results larger than this (bytes) do not travel inside events (across processes):
the event says the result exists (``result_ref``) and receivers read it from the job.
A large result is then never copied into every subscriber's buffer, and never makes
Redis drop a subscriber for exceeding its pub/sub output buffer."""

TERMINAL_KINDS = frozenset({EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED})
"""The events that wake job watches."""


def gap_record(missed: int = 0) -> EventRecord:
    """The marker that stands for ``missed`` lost events (0: an unknown number)."""
    return EventRecord(EventKind.MISSED, "", 0, missed=missed)


class EventSubscription(trio.abc.ReceiveChannel[EventRecord]):
    """One subscriber's stream of events (see the module docstring for the policy).

    Backends call :meth:`offer` and :meth:`gap` (synchronous, never blocking) and
    :meth:`end` when they stop delivering; the consumer receives.
    """

    def __init__(self, ns: str, capacity: int | None = None) -> None:
        self.ns = ns
        self.capacity = EVENT_BUFFER if capacity is None else capacity
        self.missed = 0
        """Events dropped for this subscriber so far (not counting unknown gaps)."""
        self.gaps = 0
        """``missed`` markers delivered so far."""
        self._buffer: deque[EventRecord] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._ended = False
        self._closed = False

    # -- the backend's side ---------------------------------------------------------------

    def offer(self, record: EventRecord) -> None:
        """Deliver ``record``, or count it as missed if the buffer is full."""
        if self._ended:
            return
        buffer = self._buffer
        if len(buffer) < self.capacity:
            buffer.append(record)
        else:
            self.missed += 1
            self._mark(1)
        self._lot.unpark_all()

    def gap(self, missed: int = 0) -> None:
        """The backend may have lost ``missed`` events (0: an unknown number) here."""
        if self._ended:
            return
        self.missed += missed
        self._mark(missed)
        self._lot.unpark_all()

    def _mark(self, missed: int) -> None:
        buffer = self._buffer
        if buffer and buffer[-1].kind is EventKind.MISSED:
            buffer[-1] = gap_record(buffer[-1].missed + missed)
        else:
            buffer.append(gap_record(missed))  # may exceed the capacity by this marker

    def end(self) -> None:
        """No more events: the consumer gets ``EndOfChannel`` once it drained the buffer."""
        self._ended = True
        self._lot.unpark_all()

    # -- the consumer's side --------------------------------------------------------------

    def receive_nowait(self) -> EventRecord:
        if self._closed:
            raise trio.ClosedResourceError
        if self._buffer:
            record = self._buffer.popleft()
            if record.kind is EventKind.MISSED:
                self.gaps += 1
                log.warning(
                    "an event subscriber of queue %r missed %s events (it fell behind by"
                    " more than %d, or the storage lost its event feed); re-read state",
                    self.ns,
                    record.missed or "an unknown number of",
                    self.capacity,
                )
            return record
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> EventRecord:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                record = self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return record

    async def aclose(self) -> None:
        self._closed = True
        self._ended = True
        self._buffer.clear()
        self._lot.unpark_all()
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class SubscriberSet:
    """The subscribers of one namespace (in one process)."""

    members: set[EventSubscription] = attrs.Factory(set)

    def open(self, ns: str) -> EventSubscription:
        subscription = EventSubscription(ns)
        self.members.add(subscription)
        return subscription

    def close(self, subscription: EventSubscription) -> None:
        self.members.discard(subscription)
        subscription.end()

    def offer(self, records: Iterable[EventRecord]) -> None:
        members = self.members
        if not members:
            return
        for record in records:
            for subscription in members:
                subscription.offer(record)

    def gap(self) -> None:
        for subscription in self.members:
            subscription.gap()


@attrs.define(eq=False)
class WatchSet:
    """The job watches of one namespace (in one process), by job id."""

    by_job: dict[str, set[JobWatch]] = attrs.Factory(dict)

    def add(self, job_id: str, watch: JobWatch) -> None:
        self.by_job.setdefault(job_id, set()).add(watch)

    def discard(self, job_id: str, watch: JobWatch) -> None:
        watches = self.by_job.get(job_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self.by_job[job_id]

    def fire(self, record: EventRecord) -> None:
        """Wake the watches of ``record``'s job if it is a terminal (or cancel) event."""
        if record.kind in TERMINAL_KINDS:
            for watch in self.by_job.get(record.job_id, ()):
                watch.fire(record)

    def fire_all(self) -> None:
        """Events may have been missed: every watch re-reads its job's state."""
        for watches in self.by_job.values():
            for watch in watches:
                watch.fire(None)
