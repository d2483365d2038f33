"""MemoryStorage: plain data structures, no I/O; the reference backend.

Each transition is one synchronous call of the shared transition functions
(:mod:`._state`) between two checkpoints, so it is atomic with respect to every other
task. The clock is trio's (``trio.current_time()``) shifted to epoch seconds when the
storage opens, so the whole backend runs under ``MockClock``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import attrs
import trio

from .._types import CancelStatus, UpdateTtlStatus
from . import _state as st
from ._base import (
    Claim,
    EnqueueOutcome,
    EventRecord,
    Fence,
    JobRecord,
    JobWatch,
    ReapResult,
    SettleStatus,
    Storage,
    StorageStats,
)
from ._feed import EventSubscription, SubscriberSet, WatchSet

__all__ = ["MemoryStorage"]

T = TypeVar("T")


@attrs.define(eq=False)
class _Namespace:
    state: st.NsState = attrs.Factory(st.NsState)
    work: trio.Event = attrs.Factory(trio.Event)
    watches: WatchSet = attrs.Factory(WatchSet)
    subscribers: SubscriberSet = attrs.Factory(SubscriberSet)


@attrs.define(eq=False)
class MemoryStorage(Storage):
    """In-process storage. Data lives in the object: queues sharing the instance share jobs.

    Not safe across threads or processes; every call must come from trio tasks of one run.
    """

    _spaces: dict[str, _Namespace] = attrs.field(factory=dict, init=False)
    _epoch_offset: float | None = attrs.field(default=None, init=False)

    async def _open(self) -> None:
        self._epoch_offset = time.time() - trio.current_time()

    def now(self) -> float:
        """The storage clock: epoch seconds that follow trio's (possibly mocked) clock."""
        if self._epoch_offset is None:
            self._epoch_offset = time.time() - trio.current_time()
        return trio.current_time() + self._epoch_offset + self._clock_offset

    def _space(self, ns: str) -> _Namespace:
        space = self._spaces.get(ns)
        if space is None:
            space = self._spaces[ns] = _Namespace()
        return space

    def _run(self, ns: str, transition: Callable[[st.Tx], T]) -> T:
        """Apply one transition atomically (no checkpoint inside) and deliver its events."""
        space = self._space(ns)
        tx = st.Tx(state=space.state, now=self.now())
        result = transition(tx)
        if tx.events:
            self._deliver(space, tx.events)
        return result

    def _deliver(self, space: _Namespace, events: list[EventRecord]) -> None:
        space.subscribers.offer(events)
        wake = False
        for record in events:
            space.watches.fire(record)
            wake = wake or record.kind in st.WORK_EVENTS
        if wake:
            # A failing job with a delay also wakes sleeping claims, which then recompute
            # their deadline from the next due time.
            space.work.set()
            space.work = trio.Event()

    # -- producer transitions -------------------------------------------------------------

    async def enqueue(
        self, ns: str, job_id: str, payload: bytes, *, max_attempts: int, result_ttl: float
    ) -> EnqueueOutcome:
        await trio.lowlevel.checkpoint()
        data = bytes(payload)
        return self._run(ns, lambda tx: st.enqueue(tx, job_id, data, max_attempts, result_ttl))

    async def cancel(self, ns: str, job_id: str) -> CancelStatus:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.cancel(tx, job_id))

    async def get_status(self, ns: str, job_id: str) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.get_status(tx, job_id))

    async def update_result_ttl(self, ns: str, job_id: str, ttl: float) -> UpdateTtlStatus:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.update_result_ttl(tx, job_id, ttl))

    # -- worker transitions -----------------------------------------------------------------

    async def claim(
        self, ns: str, worker_id: str, *, limit: int, lease: float, wait: float = 0.0
    ) -> list[Claim]:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        deadline = trio.current_time() + wait
        while True:
            work = space.work  # taken before the transition: no lost wake-up
            now = self.now()
            claims, next_due = self._run(ns, lambda tx: st.claim(tx, worker_id, limit, lease))
            remaining = deadline - trio.current_time()
            if claims or remaining <= 0:
                return claims
            sleep_for = remaining if next_due is None else min(remaining, next_due - now)
            with trio.move_on_after(max(sleep_for, 0.0)):
                await work.wait()

    async def heartbeat(
        self, ns: str, claims: Sequence[tuple[str, str]], *, lease: float
    ) -> list[bool]:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.heartbeat(tx, claims, lease))

    async def complete(
        self, ns: str, job_id: str, token: str, result: bytes, *, ttl: float
    ) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        data = bytes(result)
        return self._run(ns, lambda tx: st.complete(tx, job_id, token, data, ttl))

    async def fail(
        self, ns: str, job_id: str, token: str, error: bytes, *, ttl: float
    ) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        data = bytes(error)
        return self._run(ns, lambda tx: st.fail(tx, job_id, token, data, ttl))

    async def retry(
        self, ns: str, job_id: str, token: str, error: bytes, *, delay: float
    ) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        data = bytes(error)
        return self._run(ns, lambda tx: st.retry(tx, job_id, token, data, delay))

    async def release(self, ns: str, job_id: str, token: str) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.release(tx, job_id, token))

    # -- recovery -------------------------------------------------------------------------

    async def reap(self, ns: str, *, fence: Fence | None = None) -> ReapResult:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.reap(tx, fence))

    # -- leader lock ----------------------------------------------------------------------

    async def acquire_lock(self, ns: str, lock: str, owner: str, *, ttl: float) -> int | None:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.acquire_lock(tx, lock, owner, ttl))

    async def renew_lock(self, ns: str, lock: str, owner: str, epoch: int, *, ttl: float) -> bool:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.renew_lock(tx, lock, owner, epoch, ttl))

    async def release_lock(self, ns: str, lock: str, owner: str, epoch: int) -> bool:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.release_lock(tx, lock, owner, epoch))

    # -- notification ---------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe_events(self, ns: str) -> AsyncIterator[EventSubscription]:
        space = self._space(ns)
        subscription = space.subscribers.open(ns)
        try:
            async with subscription:
                yield subscription
        finally:
            space.subscribers.close(subscription)

    @asynccontextmanager
    async def watch_job(self, ns: str, job_id: str) -> AsyncIterator[JobWatch]:
        space = self._space(ns)
        watch = JobWatch()
        space.watches.add(job_id, watch)
        try:
            yield watch
        finally:
            space.watches.discard(job_id, watch)

    # -- housekeeping ---------------------------------------------------------------------

    async def stats(self, ns: str) -> StorageStats:
        await trio.lowlevel.checkpoint()
        return self._run(ns, st.stats)

    async def purge_expired(self, ns: str) -> int:
        await trio.lowlevel.checkpoint()
        return self._run(ns, st.purge)
