"""MemoryStorage: plain data structures, no I/O; the reference backend.

Each transition is one synchronous step between two checkpoints, so it is atomic with
respect to every other task. The clock is trio's (``trio.current_time()``) shifted to
epoch seconds when the storage opens, so the whole backend runs under ``MockClock``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from .._types import CancelStatus, EnqueueStatus, EventKind, JobState, UpdateTtlStatus
from ._base import (
    Claim,
    EnqueueOutcome,
    EventRecord,
    Fence,
    JobRecord,
    JobWatch,
    ReapedJob,
    ReapResult,
    SettleStatus,
    Storage,
    StorageStats,
)
from ._common import STALLED_ERROR, lock_expired

__all__ = ["MemoryStorage"]

_WAKES_WATCHERS = frozenset({EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED})

EVENT_BUFFER = 10_000
"""Events buffered per subscriber before new ones are dropped for that subscriber."""


@attrs.define(eq=False)
class _Rec:
    job_id: str
    payload: bytes
    state: JobState
    max_attempts: int
    result_ttl: float
    created_at: float
    attempts: int = 0
    result: bytes | None = None
    error: bytes | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    due_at: float | None = None
    worker_id: str | None = None
    token: str | None = None
    lease_until: float | None = None
    ready_seq: int | None = None
    delay_seq: int | None = None

    def snapshot(self) -> JobRecord:
        return JobRecord(
            job_id=self.job_id,
            state=self.state,
            created_at=self.created_at,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            result_ttl=self.result_ttl,
            result=self.result,
            error=self.error,
            finished_at=self.finished_at,
            expires_at=self.expires_at,
            due_at=self.due_at,
            worker_id=self.worker_id,
            lease_until=self.lease_until,
        )


@attrs.define(eq=False)
class _Lock:
    owner: str | None = None
    epoch: int = 0
    expires_at: float = -math.inf


def _key(job_id: str) -> bytes:
    return job_id.encode("utf-8")


@attrs.define(eq=False)
class _Namespace:
    jobs: dict[str, _Rec] = attrs.Factory(dict)
    # Lazily-deleted indexes: an entry is live only while the record still points at it.
    ready: deque[tuple[str, int]] = attrs.Factory(deque)
    delayed: list[tuple[float, bytes, int, str]] = attrs.Factory(list)
    leases: list[tuple[float, bytes, str, str]] = attrs.Factory(list)
    expiries: list[tuple[float, bytes, str]] = attrs.Factory(list)
    locks: dict[str, _Lock] = attrs.Factory(dict)
    work: trio.Event = attrs.Factory(trio.Event)
    watches: dict[str, set[JobWatch]] = attrs.Factory(dict)
    subscribers: set[trio.MemorySendChannel[EventRecord]] = attrs.Factory(set)
    dropped_events: int = 0


@attrs.define(eq=False)
class MemoryStorage(Storage):
    """In-process storage. Data lives in the object: queues sharing the instance share jobs.

    Not safe across threads or processes; every call must come from trio tasks of one run.
    """

    _spaces: dict[str, _Namespace] = attrs.field(factory=dict, init=False)
    _seq: int = attrs.field(default=0, init=False)
    _epoch_offset: float | None = attrs.field(default=None, init=False)
    # Fencing tokens only need to be unique per storage: a random prefix and a counter.
    _token_prefix: str = attrs.field(factory=lambda: secrets.token_hex(4) + "-", init=False)
    _tokens: itertools.count[int] = attrs.field(factory=itertools.count, init=False)

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

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- internal helpers ---------------------------------------------------------------

    def _live(self, space: _Namespace, job_id: str, now: float) -> _Rec | None:
        rec = space.jobs.get(job_id)
        if rec is not None and rec.expires_at is not None and rec.expires_at <= now:
            self._forget(space, rec)
            return None
        return rec

    def _forget(self, space: _Namespace, rec: _Rec) -> None:
        if space.jobs.get(rec.job_id) is rec:
            del space.jobs[rec.job_id]
        rec.ready_seq = rec.delay_seq = None
        rec.token = None

    def _emit(
        self,
        space: _Namespace,
        kind: EventKind,
        job_id: str,
        attempt: int,
        *,
        result: bytes | None = None,
        error: bytes | None = None,
    ) -> None:
        record: EventRecord | None = None
        if space.subscribers:
            record = EventRecord(kind, job_id, attempt, result, error)
            for send in list(space.subscribers):
                try:
                    send.send_nowait(record)
                except trio.WouldBlock:
                    space.dropped_events += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    space.subscribers.discard(send)
        if space.watches and kind in _WAKES_WATCHERS:
            watches = space.watches.get(job_id)
            if watches:
                record = record or EventRecord(kind, job_id, attempt, result, error)
                for watch in watches:
                    watch.fire(record)

    def _wake_workers(self, space: _Namespace) -> None:
        space.work.set()
        space.work = trio.Event()

    def _push_ready(self, space: _Namespace, rec: _Rec, *, head: bool = False) -> None:
        seq = self._next_seq()
        rec.ready_seq = seq
        rec.delay_seq = None
        rec.due_at = None
        if head:
            space.ready.appendleft((rec.job_id, seq))
        else:
            space.ready.append((rec.job_id, seq))
        self._wake_workers(space)

    def _push_delayed(self, space: _Namespace, rec: _Rec, due: float) -> None:
        seq = self._next_seq()
        rec.delay_seq = seq
        rec.ready_seq = None
        rec.due_at = due
        heapq.heappush(space.delayed, (due, _key(rec.job_id), seq, rec.job_id))
        self._wake_workers(space)  # a sleeping claim must recompute its deadline

    def _promote_due(self, space: _Namespace, now: float) -> float | None:
        """Move due delayed jobs to the ready tail; return the next due time, if any."""
        while space.delayed:
            due, _, seq, job_id = space.delayed[0]
            rec = space.jobs.get(job_id)
            if rec is None or rec.delay_seq != seq:
                heapq.heappop(space.delayed)
                continue
            if due > now:
                return due
            heapq.heappop(space.delayed)
            self._push_ready(space, rec)
        return None

    def _pop_ready(self, space: _Namespace, now: float) -> _Rec | None:
        while space.ready:
            job_id, seq = space.ready.popleft()
            rec = self._live(space, job_id, now)
            if rec is not None and rec.ready_seq == seq:
                rec.ready_seq = None
                return rec
        return None

    def _owned(self, space: _Namespace, job_id: str, token: str, now: float) -> _Rec | None:
        rec = self._live(space, job_id, now)
        if rec is None or rec.state is not JobState.PROCESSING or rec.token != token:
            return None
        return rec

    def _finish(
        self, space: _Namespace, rec: _Rec, state: JobState, now: float, ttl: float
    ) -> None:
        rec.state = state
        rec.token = rec.worker_id = rec.lease_until = None
        rec.finished_at = now
        rec.expires_at = now + ttl
        rec.result_ttl = ttl
        heapq.heappush(space.expiries, (rec.expires_at, _key(rec.job_id), rec.job_id))

    # -- producer transitions -------------------------------------------------------------

    async def enqueue(
        self, ns: str, job_id: str, payload: bytes, *, max_attempts: int, result_ttl: float
    ) -> EnqueueOutcome:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        self._purge(space, now)
        rec = self._live(space, job_id, now)
        if rec is not None:
            if rec.state is JobState.COMPLETED and rec.result is not None:
                return EnqueueOutcome(EnqueueStatus.COMPLETED, rec.state, rec.result)
            return EnqueueOutcome(EnqueueStatus.DUPLICATE, rec.state)
        rec = _Rec(
            job_id=job_id,
            payload=bytes(payload),
            state=JobState.QUEUED,
            max_attempts=max_attempts,
            result_ttl=result_ttl,
            created_at=now,
        )
        space.jobs[job_id] = rec
        self._push_ready(space, rec)
        self._emit(space, EventKind.ENQUEUED, job_id, 0)
        return EnqueueOutcome(EnqueueStatus.QUEUED)

    async def cancel(self, ns: str, job_id: str) -> CancelStatus:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        rec = self._live(space, job_id, self.now())
        if rec is None or rec.state is JobState.FAILED:
            return CancelStatus.NOT_FOUND
        if rec.state is JobState.PROCESSING:
            return CancelStatus.PROCESSING
        if rec.state is JobState.COMPLETED:
            return CancelStatus.COMPLETED
        self._forget(space, rec)
        self._emit(space, EventKind.CANCELLED, job_id, rec.attempts)
        return CancelStatus.CANCELLED

    async def get_status(self, ns: str, job_id: str) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        rec = self._live(self._space(ns), job_id, self.now())
        return None if rec is None else rec.snapshot()

    async def update_result_ttl(self, ns: str, job_id: str, ttl: float) -> UpdateTtlStatus:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        rec = self._live(space, job_id, now)
        if rec is None:
            return UpdateTtlStatus.NOT_FOUND
        if not rec.state.is_terminal:
            return UpdateTtlStatus.NOT_TERMINAL
        payload = rec.result if rec.state is JobState.COMPLETED else rec.error
        if payload is None:
            return UpdateTtlStatus.MISSING_PAYLOAD
        rec.result_ttl = ttl
        rec.expires_at = now + ttl
        heapq.heappush(space.expiries, (rec.expires_at, _key(job_id), job_id))
        return UpdateTtlStatus.UPDATED

    # -- worker transitions -----------------------------------------------------------------

    async def claim(
        self, ns: str, worker_id: str, *, limit: int, lease: float, wait: float = 0.0
    ) -> list[Claim]:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        deadline = trio.current_time() + wait
        while True:
            now = self.now()
            next_due = self._promote_due(space, now)
            claims: list[Claim] = []
            while len(claims) < limit:
                rec = self._pop_ready(space, now)
                if rec is None:
                    break
                token = f"{self._token_prefix}{next(self._tokens)}"
                rec.state = JobState.PROCESSING
                rec.attempts += 1
                rec.worker_id = worker_id
                rec.token = token
                rec.lease_until = now + lease
                heapq.heappush(space.leases, (rec.lease_until, _key(rec.job_id), token, rec.job_id))
                claims.append(
                    Claim(
                        job_id=rec.job_id,
                        payload=rec.payload,
                        attempt=rec.attempts,
                        max_attempts=rec.max_attempts,
                        created_at=rec.created_at,
                        token=token,
                        lease_until=rec.lease_until,
                        result_ttl=rec.result_ttl,
                    )
                )
                self._emit(space, EventKind.STARTED, rec.job_id, rec.attempts)
            remaining = deadline - trio.current_time()
            if claims or remaining <= 0:
                return claims
            sleep_for = remaining if next_due is None else min(remaining, next_due - now)
            work = space.work
            with trio.move_on_after(max(sleep_for, 0.0)):
                await work.wait()

    async def heartbeat(
        self, ns: str, claims: Sequence[tuple[str, str]], *, lease: float
    ) -> list[bool]:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        owned: list[bool] = []
        for job_id, token in claims:
            rec = self._owned(space, job_id, token, now)
            if rec is None:
                owned.append(False)
                continue
            rec.lease_until = now + lease
            heapq.heappush(space.leases, (rec.lease_until, _key(job_id), token, job_id))
            owned.append(True)
        return owned

    async def complete(
        self, ns: str, job_id: str, token: str, result: bytes, *, ttl: float
    ) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        rec = self._owned(space, job_id, token, now)
        if rec is None:
            return SettleStatus.STALE
        rec.result = bytes(result)
        rec.error = None
        self._finish(space, rec, JobState.COMPLETED, now, ttl)
        self._emit(space, EventKind.COMPLETED, job_id, rec.attempts, result=rec.result)
        return SettleStatus.OK

    async def fail(
        self, ns: str, job_id: str, token: str, error: bytes, *, ttl: float
    ) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        rec = self._owned(space, job_id, token, now)
        if rec is None:
            return SettleStatus.STALE
        rec.error = bytes(error)
        self._finish(space, rec, JobState.FAILED, now, ttl)
        self._emit(space, EventKind.FAILED, job_id, rec.attempts, error=rec.error)
        return SettleStatus.OK

    async def retry(
        self, ns: str, job_id: str, token: str, error: bytes, *, delay: float
    ) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        rec = self._owned(space, job_id, token, now)
        if rec is None:
            return SettleStatus.STALE
        self._to_failing(space, rec, bytes(error), now, delay)
        self._emit(space, EventKind.FAILING, job_id, rec.attempts, error=rec.error)
        return SettleStatus.OK

    def _to_failing(
        self, space: _Namespace, rec: _Rec, error: bytes, now: float, delay: float
    ) -> None:
        rec.state = JobState.FAILING
        rec.error = error
        rec.token = rec.worker_id = rec.lease_until = None
        if delay > 0:
            self._push_delayed(space, rec, now + delay)
        else:
            self._push_ready(space, rec)

    async def release(self, ns: str, job_id: str, token: str) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        rec = self._owned(space, job_id, token, self.now())
        if rec is None:
            return SettleStatus.STALE
        rec.attempts -= 1
        rec.state = JobState.QUEUED if rec.attempts == 0 else JobState.FAILING
        rec.token = rec.worker_id = rec.lease_until = None
        self._push_ready(space, rec, head=True)
        self._emit(space, EventKind.REQUEUED, job_id, rec.attempts + 1)
        return SettleStatus.OK

    # -- recovery -------------------------------------------------------------------------

    async def reap(self, ns: str, *, fence: Fence | None = None) -> ReapResult:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        if fence is not None:
            held = space.locks.get(fence.lock)
            if (
                held is None
                or held.owner != fence.owner
                or held.epoch != fence.epoch
                or lock_expired(held.expires_at, now)
            ):
                return ReapResult(fenced=True)
        stalled: list[ReapedJob] = []
        next_deadline: float | None = None
        while space.leases:
            until, _, token, job_id = space.leases[0]
            rec = space.jobs.get(job_id)
            if (
                rec is None
                or rec.state is not JobState.PROCESSING
                or rec.token != token
                or rec.lease_until != until
            ):
                heapq.heappop(space.leases)
                continue
            if until > now:
                next_deadline = until
                break
            heapq.heappop(space.leases)
            attempt = rec.attempts
            if attempt >= rec.max_attempts:
                rec.error = STALLED_ERROR
                self._finish(space, rec, JobState.FAILED, now, rec.result_ttl)
                stalled.append(ReapedJob(job_id, attempt, failed=True))
                self._emit(space, EventKind.STALLED, job_id, attempt, error=rec.error)
                self._emit(space, EventKind.FAILED, job_id, attempt, error=rec.error)
            else:
                self._to_failing(space, rec, STALLED_ERROR, now, 0.0)
                stalled.append(ReapedJob(job_id, attempt, failed=False))
                self._emit(space, EventKind.STALLED, job_id, attempt, error=rec.error)
        return ReapResult(stalled=tuple(stalled), next_deadline=next_deadline, now=now)

    # -- leader lock ----------------------------------------------------------------------

    async def acquire_lock(self, ns: str, lock: str, owner: str, *, ttl: float) -> int | None:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        held = space.locks.setdefault(lock, _Lock())
        if held.owner == owner and not lock_expired(held.expires_at, now):
            held.expires_at = now + ttl
            return held.epoch
        if held.owner is not None and not lock_expired(held.expires_at, now):
            return None
        held.owner = owner
        held.epoch += 1
        held.expires_at = now + ttl
        return held.epoch

    async def renew_lock(self, ns: str, lock: str, owner: str, epoch: int, *, ttl: float) -> bool:
        await trio.lowlevel.checkpoint()
        now = self.now()
        held = self._space(ns).locks.get(lock)
        if held is None or held.owner != owner or held.epoch != epoch:
            return False
        if lock_expired(held.expires_at, now):
            return False
        held.expires_at = now + ttl
        return True

    async def release_lock(self, ns: str, lock: str, owner: str, epoch: int) -> bool:
        await trio.lowlevel.checkpoint()
        held = self._space(ns).locks.get(lock)
        if held is None or held.owner != owner or held.epoch != epoch:
            return False
        held.owner = None
        held.expires_at = -math.inf
        return True

    # -- notification ---------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe_events(
        self, ns: str
    ) -> AsyncIterator[trio.MemoryReceiveChannel[EventRecord]]:
        space = self._space(ns)
        send, receive = trio.open_memory_channel[EventRecord](EVENT_BUFFER)
        space.subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            space.subscribers.discard(send)
            send.close()

    @asynccontextmanager
    async def watch_job(self, ns: str, job_id: str) -> AsyncIterator[JobWatch]:
        space = self._space(ns)
        watch = JobWatch()
        space.watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            watchers = space.watches.get(job_id)
            if watchers is not None:
                watchers.discard(watch)
                if not watchers:
                    del space.watches[job_id]

    # -- housekeeping ---------------------------------------------------------------------

    async def stats(self, ns: str) -> StorageStats:
        await trio.lowlevel.checkpoint()
        space = self._space(ns)
        now = self.now()
        # Read-only: due retries are counted as queued without being moved (only claim
        # moves them, so stats() never changes the claim order).
        counts = dict.fromkeys(("queued", "delayed", "processing", "completed", "failed"), 0)
        for job_id in list(space.jobs):
            rec = self._live(space, job_id, now)
            if rec is None:
                continue
            if rec.state is JobState.PROCESSING:
                counts["processing"] += 1
            elif rec.state is JobState.COMPLETED:
                counts["completed"] += 1
            elif rec.state is JobState.FAILED:
                counts["failed"] += 1
            elif rec.delay_seq is not None and rec.due_at is not None and rec.due_at > now:
                counts["delayed"] += 1
            else:
                counts["queued"] += 1
        return StorageStats(**counts)

    async def purge_expired(self, ns: str) -> int:
        await trio.lowlevel.checkpoint()
        return self._purge(self._space(ns), self.now())

    def _purge(self, space: _Namespace, now: float) -> int:
        purged = 0
        while space.expiries and space.expiries[0][0] <= now:
            expires_at, _, job_id = heapq.heappop(space.expiries)
            rec = space.jobs.get(job_id)
            if rec is not None and rec.expires_at == expires_at:
                self._forget(space, rec)
                purged += 1
        return purged
