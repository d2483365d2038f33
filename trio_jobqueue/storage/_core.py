"""What every backend shares above its atomic transitions: the blocking claim, job
watches, event subscriptions and their fan-out, written once.

A backend implements the transitions (``claim_nowait`` among them) and feeds one
:class:`Hub` per namespace (``storage.hub(ns)``) with what it learns:

* :meth:`Hub.deliver` — events that happened (Memory: right after each transition;
  File: as its journal tailer reads them; Redis: split by channel into
  :meth:`Hub.offer`, :meth:`Hub.fire` and :meth:`Hub.wake`);
* :meth:`Hub.lost_track` — "you may have missed something" (a Redis pub/sub reconnect, a
  File reader overtaken by compaction): subscribers get a ``missed`` marker, every job
  watch re-reads its job, every blocked claim retries.

and implements ``Storage.follow(ns, kind, job_id)``: an async context manager that makes
sure the hub receives that kind of notification while it is open (Redis subscribes to the
namespace's event channel or the job's own channel, and for blocked claims waits on the
namespace's wake-up list, which hands each wake-up to one claimer; File makes its tailer
read the namespace's journal; Memory needs nothing).

**Slow subscribers.** Each subscriber has a bounded buffer (:data:`EVENT_BUFFER` events).
No backend ever blocks on a slow subscriber; when the buffer is full, further events are
dropped for that subscriber only and one ``missed`` marker takes their place in its
stream, counting them; a backend that lost events puts a marker with an unknown count
(``missed == 0``). The consumer learns, at the exact place in the stream, that it must
re-read whatever it derives from events; the marker is logged when received.

**No lost wake-ups.** A blocked claim takes a *ticket* (:meth:`Signal.ticket`) before it
runs ``claim_nowait`` and waits on it after; any wake-up after the ticket was taken
ends the wait, so an enqueue that lands between the two is never missed.

**Positions.** A backend whose feed can be re-read (File: a rewound journal tailer) passes
each batch of events with its ``(start, end)`` position; every subscription and watch
receives a batch once, and only from the position it started at. Memory and Redis pass
no positions: each event arrives once, from the moment the subscription is active.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from .._types import EventKind
from ._base import Claim, EventRecord

if TYPE_CHECKING:
    from ._base import Storage

__all__ = [
    "EVENT_BUFFER",
    "INLINE_RESULT_MAX",
    "TERMINAL_KINDS",
    "WORK_KINDS",
    "EventSubscription",
    "FollowKind",
    "Hub",
    "JobWatch",
    "Signal",
    "gap_record",
]

log = logging.getLogger("trio_jobqueue")

EVENT_BUFFER = 10_000
"""Events buffered per subscriber before further ones are replaced by a ``missed``
marker."""

INLINE_RESULT_MAX = 32 * 1024
"""Results larger than this (bytes) do not travel inside events across processes: the
event says the result exists (``result_ref``) and receivers read it from the job. A
large result is then never copied into every subscriber's buffer, and never makes Redis
drop a subscriber for exceeding its pub/sub output buffer."""

TERMINAL_KINDS = frozenset({EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED})
"""The events that wake job watches."""

WORK_KINDS = frozenset(
    {EventKind.ENQUEUED, EventKind.FAILING, EventKind.REQUEUED, EventKind.STALLED}
)
"""The events after which a blocked claim may find work."""

FollowKind = Literal["work", "events", "job", "control"]
"""What a :meth:`Storage.follow` context makes the hub receive: wake-ups for blocked
claims, every event (for subscribers), one job's terminal events (for a watch), or the
force-cancels of running jobs (for workers, :meth:`Hub.control`)."""

ControlListener = Callable[[EventRecord | None], None]
"""Called (synchronously, never blocking) with each ``cancelled`` event of the
namespace that the backend's ``control`` feed delivers, or ``None`` when the feed may
have lost some (the listener then checks its jobs another way: a heartbeat)."""

Position = Any
"""A backend's position in its event feed (ordered; ``None`` where there is none)."""


def gap_record(missed: int = 0) -> EventRecord:
    """The marker that stands for ``missed`` lost events (0: an unknown number)."""
    return EventRecord(EventKind.MISSED, "", 0, missed=missed)


class Signal:
    """A "something changed" broadcast without lost wake-ups: take a :meth:`ticket`
    before looking, wait on it after; any :meth:`set` after the ticket was taken ends
    the wait."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def ticket(self) -> trio.Event:
        return self._event

    def set(self) -> None:
        self._event.set()
        self._event = trio.Event()


class JobWatch:
    """A subscription to one job's terminal (or cancel) transitions (see
    :meth:`Storage.watch_job`)."""

    def __init__(self, since: Position = None) -> None:
        self._event = trio.Event()
        self._records: deque[EventRecord | None] = deque()
        self.next_pos: Position = since
        """Feed position from which this watch still receives events."""

    def fire(self, record: EventRecord | None = None) -> None:
        self._records.append(record)
        self._event.set()

    async def wait(self) -> EventRecord | None:
        """Wait for the next event fired since the watch opened (or since the previous
        ``wait`` returned) and return it, with its result or error bytes. ``None`` means
        the storage cannot tell what happened: re-read the job's state. Cancellable."""
        await self._event.wait()
        record = self._records.popleft()
        if not self._records:
            self._event = trio.Event()
        return record


class EventSubscription(trio.abc.ReceiveChannel[EventRecord]):
    """One subscriber's stream of events (see the module docstring for the policy).

    The hub calls :meth:`offer` and :meth:`gap` (synchronous, never blocking) and
    :meth:`end`; the consumer receives.
    """

    def __init__(self, ns: str, capacity: int | None = None) -> None:
        self.ns = ns
        self.capacity = EVENT_BUFFER if capacity is None else capacity
        self.missed = 0
        """Events dropped for this subscriber so far (not counting unknown gaps)."""
        self.gaps = 0
        """``missed`` markers received so far."""
        self.next_pos: Position = None
        """Feed position from which this subscription still receives events."""
        self._buffer: deque[EventRecord] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._ended = False
        self._closed = False

    # -- the hub's side -------------------------------------------------------------------

    def offer(self, record: EventRecord) -> None:
        """Deliver ``record``, or count it as missed if the buffer is full."""
        if self._ended:
            return
        if len(self._buffer) < self.capacity:
            self._buffer.append(record)
        else:
            self.missed += 1
            self._mark(1)
        self._lot.unpark_all()

    def gap(self, missed: int = 0) -> None:
        """The storage may have lost ``missed`` events (0: an unknown number) here."""
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


def _takes(member: EventSubscription | JobWatch, span: tuple[Position, Position] | None) -> bool:
    """Whether ``member`` receives the batch at ``span`` (and advance it past the batch)."""
    if span is None:
        return True
    start, end = span
    if member.next_pos is None or start < member.next_pos:
        return False
    member.next_pos = end
    return True


@attrs.define(eq=False)
class Hub:
    """One namespace's local fan-out in one storage object (see the module docstring)."""

    work: Signal = attrs.Factory(Signal)
    subscribers: set[EventSubscription] = attrs.Factory(set)
    watches: dict[str, set[JobWatch]] = attrs.Factory(dict)
    controls: set[ControlListener] = attrs.Factory(set)
    """Workers listening for force-cancels (see :data:`ControlListener`)."""
    idle: tuple[trio.Event, float] | None = None
    """Left by a claim that took every ready job (:func:`blocking_claim`): the ticket it
    took before it ran and the trio time when the next delayed job is due (``inf``:
    none). Until that ticket is set, nothing is claimable before that time."""

    def deliver(
        self,
        records: Iterable[EventRecord],
        span: tuple[Position, Position] | None = None,
        *,
        work: bool | None = None,
    ) -> None:
        """Events that happened (at feed position ``span``): to subscribers, to the
        watches of their jobs, and to blocked claims if work may have appeared.

        ``work`` says whether the blocked claims must look again; ``None``: guess it from
        the kinds of the events (any of :data:`WORK_KINDS`). A backend that knows better
        (Memory: a job scheduled after the next due time wakes no one, see
        :func:`blocking_claim`) passes it."""
        records = list(records)
        if records:
            self.offer(records, span)
            self.fire(records, span)
            if self.controls:
                self.control(records)
        if work is None:
            work = any(record.kind in WORK_KINDS for record in records)
        if work:
            self.work.set()

    def offer(
        self, records: Iterable[EventRecord], span: tuple[Position, Position] | None = None
    ) -> None:
        """Events for the subscribers only."""
        for subscription in self.subscribers:
            if _takes(subscription, span):
                for record in records:
                    subscription.offer(record)

    def fire(
        self, records: Iterable[EventRecord], span: tuple[Position, Position] | None = None
    ) -> None:
        """Events for the job watches only (terminal events of watched jobs)."""
        if not self.watches:
            return
        for record in records:
            if record.kind in TERMINAL_KINDS:
                for watch in self.watches.get(record.job_id, ()):
                    if span is None or (watch.next_pos is not None and span[0] >= watch.next_pos):
                        watch.fire(record)
        if span is not None:
            for watches in self.watches.values():
                for watch in watches:
                    if watch.next_pos is not None and span[0] >= watch.next_pos:
                        watch.next_pos = span[1]

    def control(self, records: Iterable[EventRecord]) -> None:
        """Events for the control listeners (only ``cancelled`` ones reach them; a
        batch read twice may reach them twice: listeners are idempotent)."""
        for record in records:
            if record.kind is EventKind.CANCELLED:
                for listener in tuple(self.controls):
                    listener(record)

    def wake(self) -> None:
        """Work may be available: every blocked claim of the namespace retries."""
        self.work.set()

    def lost_track(self, what: FollowKind | None = None) -> None:
        """Events may have been lost (``what``: only those of one kind of feed)."""
        if what in (None, "events"):
            for subscription in self.subscribers:
                subscription.gap()
        if what in (None, "job"):
            for watches in self.watches.values():
                for watch in watches:
                    watch.fire(None)
        if what in (None, "work"):
            self.work.set()
        if what in (None, "control"):
            for listener in tuple(self.controls):
                listener(None)


# -- the operations of the Storage ABC that are built on the above ---------------------------


async def blocking_claim(
    storage: Storage, ns: str, worker_id: str, *, limit: int, lease: float, wait: float
) -> list[Claim]:
    """``claim_nowait`` until it finds work or ``wait`` seconds passed (see
    :meth:`Storage.claim`)."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit!r}")
    if wait <= 0:
        return (await storage.claim_nowait(ns, worker_id, limit=limit, lease=lease)).claims
    deadline = trio.current_time() + wait
    hub = storage.hub(ns)
    hints = storage.keeps_idle_wakeups
    async with storage.follow(ns, "work"):
        claim = storage.claim_nowait
        idle, hub.idle = hub.idle, None
        if idle is not None and not idle[0].is_set():
            # The previous claim took every ready job and told when the next one is due;
            # any job made claimable sooner has set its ticket since: sleep until then
            # instead of asking again (one claim per wake-up instead of two).
            until = min(idle[1], deadline, trio.current_time() + storage.repoll_interval)
            with trio.move_on_at(until):
                await idle[0].wait()
            claim = storage.claim_after_wait
        while True:
            ticket = hub.work.ticket()  # before the transition: no lost wake-up
            batch = await claim(ns, worker_id, limit=limit, lease=lease)
            now = trio.current_time()
            remaining = deadline - now
            if batch.claims:
                if hints and len(batch.claims) < limit and not batch.paused:
                    due = batch.next_due_in
                    hub.idle = (ticket, math.inf if due is None else now + max(due, 0.0))
                return batch.claims
            if remaining <= 0:
                return batch.claims
            sleep_for = min(remaining, storage.repoll_interval)
            if batch.paused:
                sleep_for = min(sleep_for, PAUSED_REPOLL)
            elif batch.next_due_in is not None:
                sleep_for = min(sleep_for, max(batch.next_due_in, 0.0))
            with trio.move_on_after(sleep_for):
                await ticket.wait()
            claim = storage.claim_after_wait


@asynccontextmanager
async def subscribe(storage: Storage, ns: str) -> AsyncIterator[EventSubscription]:
    """See :meth:`Storage.subscribe_events`."""
    hub = storage.hub(ns)
    subscription = EventSubscription(ns)
    try:
        async with storage.follow(ns, "events") as since:
            subscription.next_pos = since
            hub.subscribers.add(subscription)
            async with subscription:
                yield subscription
    finally:
        hub.subscribers.discard(subscription)
        subscription.end()


def watch(storage: Storage, ns: str, job_id: str) -> _Watching:
    """See :meth:`Storage.watch_job`."""
    return _Watching(storage, ns, job_id)


class _Watching:
    """The context of one job watch: the backend's ``job`` feed of ``job_id`` open, the
    watch registered with the hub. A plain class, not a generator: every
    ``enqueue_and_wait`` enters one."""

    __slots__ = ("_feed", "_hub", "_job_id", "_ns", "_storage", "_watch")

    def __init__(self, storage: Storage, ns: str, job_id: str) -> None:
        self._storage = storage
        self._ns = ns
        self._job_id = job_id
        self._feed: AbstractAsyncContextManager[Position] | None = None
        self._hub: Hub | None = None
        self._watch: JobWatch | None = None

    async def __aenter__(self) -> JobWatch:
        hub = self._storage.hub(self._ns)
        feed = self._storage.follow(self._ns, "job", self._job_id)
        job_watch = JobWatch(await feed.__aenter__())
        self._feed, self._hub, self._watch = feed, hub, job_watch
        hub.watches.setdefault(self._job_id, set()).add(job_watch)
        return job_watch

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        feed, hub, job_watch = self._feed, self._hub, self._watch
        self._feed = self._hub = self._watch = None
        assert feed is not None and hub is not None and job_watch is not None
        try:
            await feed.__aexit__(exc_type, exc, tb)
        finally:
            watches = hub.watches.get(self._job_id)
            if watches is not None:
                watches.discard(job_watch)
                if not watches:
                    del hub.watches[self._job_id]


@asynccontextmanager
async def listen_control(
    storage: Storage, ns: str, listener: ControlListener
) -> AsyncIterator[None]:
    """Call ``listener`` with the namespace's force-cancels while open (see
    :data:`ControlListener`)."""
    hub = storage.hub(ns)
    try:
        async with storage.follow(ns, "control"):
            hub.controls.add(listener)
            yield
    finally:
        hub.controls.discard(listener)


PAUSED_REPOLL = 0.5
"""Seconds a claim blocked on a paused namespace waits before it looks again (a resume
also wakes it where the backend can tell: Memory, Redis)."""

NEVER = math.inf
"""``repoll_interval`` of a backend whose wake-ups cannot be lost."""
