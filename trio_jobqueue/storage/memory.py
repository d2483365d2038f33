"""MemoryStorage: plain data structures, no I/O; the reference backend.

Each transition is one synchronous call of the shared transition functions
(:mod:`._state`) between two checkpoints, so it is atomic with respect to every other
task. The clock is trio's (``trio.current_time()``) shifted to epoch seconds when the
storage opens, so the whole backend runs under ``MockClock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs
import trio

from .._types import CancelStatus, DeleteStatus, JobState, RetryStatus, UpdateTtlStatus
from . import _state as st
from ._base import (
    ClaimBatch,
    Completion,
    EnqueueOutcome,
    EnqueueSpec,
    Fence,
    FireStatus,
    JobRecord,
    LockHolder,
    ReapResult,
    RecordPage,
    SettleStatus,
    Storage,
    StorageStats,
    WorkerRecord,
)

__all__ = ["MemoryStorage"]

T = TypeVar("T")


@attrs.define(eq=False)
class MemoryStorage(Storage):
    """In-process storage. Data lives in the object: queues sharing the instance share jobs.

    Not safe across threads or processes; every call must come from trio tasks of one run.
    """

    _spaces: dict[str, st.NsState] = attrs.field(factory=dict, init=False)
    _epoch_offset: float | None = attrs.field(default=None, init=False)

    async def _open(self) -> None:
        self._epoch_offset = time.time() - trio.current_time()

    def now(self) -> float:
        """The storage clock: epoch seconds that follow trio's (possibly mocked) clock."""
        if self._epoch_offset is None:
            self._epoch_offset = time.time() - trio.current_time()
        return trio.current_time() + self._epoch_offset + self._clock_offset

    @property
    def keeps_idle_wakeups(self) -> bool:
        return True  # the hub's signal is the only wake-up there is

    def _state(self, ns: str) -> st.NsState:
        state = self._spaces.get(ns)
        if state is None:
            state = self._spaces[ns] = st.NsState()
        return state

    @trio.lowlevel.enable_ki_protection
    def _run(self, ns: str, transition: Callable[[st.Tx], T]) -> T:
        """Apply one transition atomically (no checkpoint inside) and deliver its events."""
        hub = self.hub(ns)
        tx = st.Tx(state=self._state(ns), now=self.now())
        if not hub.subscribers:
            tx.unheard, tx.watched = True, hub.watches
        result = transition(tx)
        if tx.events or tx.wake:
            hub.deliver(tx.events, work=tx.wake)
        return result

    # -- producer transitions -------------------------------------------------------------

    async def enqueue(
        self,
        ns: str,
        job_id: str,
        payload: bytes,
        *,
        max_attempts: int,
        result_ttl: float,
        priority: int = 0,
        run_at: float | None = None,
        delay: float | None = None,
    ) -> EnqueueOutcome:
        await trio.lowlevel.checkpoint()
        data = bytes(payload)
        return self._run(
            ns,
            lambda tx: st.enqueue(
                tx, job_id, data, max_attempts, result_ttl, priority, run_at, delay
            ),
        )

    async def enqueue_many(self, ns: str, jobs: Sequence[EnqueueSpec]) -> list[EnqueueOutcome]:
        await trio.lowlevel.checkpoint()
        batch = [attrs.evolve(job, payload=bytes(job.payload)) for job in jobs]
        return self._run(ns, lambda tx: st.enqueue_many(tx, batch))

    async def cancel(self, ns: str, job_id: str) -> CancelStatus:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.cancel(tx, job_id))

    async def get_status(self, ns: str, job_id: str) -> JobRecord | None:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.get_status(tx, job_id))

    async def get_payload(self, ns: str, job_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.get_payload(tx, job_id))

    async def update_result_ttl(self, ns: str, job_id: str, ttl: float) -> UpdateTtlStatus:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.update_result_ttl(tx, job_id, ttl))

    # -- worker transitions -----------------------------------------------------------------

    async def claim_nowait(
        self, ns: str, worker_id: str, *, limit: int, lease: float
    ) -> ClaimBatch:
        await trio.lowlevel.checkpoint()
        return self._claim(ns, worker_id, limit, lease)

    async def claim_after_wait(
        self, ns: str, worker_id: str, *, limit: int, lease: float
    ) -> ClaimBatch:
        return self._claim(ns, worker_id, limit, lease)  # the caller's wait was the checkpoint

    def _claim(self, ns: str, worker_id: str, limit: int, lease: float) -> ClaimBatch:
        now = self.now()
        claims, next_due = self._run(ns, lambda tx: st.claim(tx, worker_id, limit, lease))
        return ClaimBatch(
            claims, None if next_due is None else next_due - now, paused=self._state(ns).paused
        )

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

    async def complete_many(self, ns: str, items: Sequence[Completion]) -> list[SettleStatus]:
        await trio.lowlevel.checkpoint()
        # A copy only of results that are not bytes already (a caller's bytearray must
        # not change the stored result afterwards).
        batch = [
            c if type(c.result) is bytes else attrs.evolve(c, result=bytes(c.result)) for c in items
        ]
        return self._run(ns, lambda tx: st.complete_many(tx, batch))

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

    # -- operating ------------------------------------------------------------------------

    async def retry_job(self, ns: str, job_id: str) -> RetryStatus:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.retry_job(tx, job_id))

    async def delete_job(self, ns: str, job_id: str) -> DeleteStatus:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.delete_job(tx, job_id))

    async def list_jobs(
        self, ns: str, state: JobState, *, limit: int, cursor: str | None = None
    ) -> RecordPage:
        await trio.lowlevel.checkpoint()
        records, after = self._run(ns, lambda tx: st.list_jobs(tx, JobState(state), limit, cursor))
        return RecordPage(records, after)

    async def retry_failed(self, ns: str, *, limit: int) -> int:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.retry_failed(tx, limit))

    async def delete_jobs(self, ns: str, state: JobState, *, limit: int) -> int:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.delete_jobs(tx, JobState(state), limit))

    async def set_paused(self, ns: str, paused: bool) -> None:
        await trio.lowlevel.checkpoint()
        self._run(ns, lambda tx: st.set_paused(tx, paused))
        if not paused:
            self.hub(ns).wake()

    async def is_paused(self, ns: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._run(ns, st.is_paused)

    # -- running-job control ----------------------------------------------------------------

    async def force_cancel(self, ns: str, job_id: str) -> CancelStatus:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.force_cancel(tx, job_id))

    async def set_progress(self, ns: str, job_id: str, token: str, progress: bytes) -> SettleStatus:
        await trio.lowlevel.checkpoint()
        data = bytes(progress)
        return self._run(ns, lambda tx: st.set_progress(tx, job_id, token, data))

    # -- schedules ------------------------------------------------------------------------

    async def fire_schedule(
        self,
        ns: str,
        schedule_id: str,
        tick: float,
        job_id: str,
        payload: bytes,
        *,
        max_attempts: int,
        result_ttl: float,
        priority: int = 0,
        fence: Fence,
    ) -> FireStatus:
        await trio.lowlevel.checkpoint()
        data = bytes(payload)
        return self._run(
            ns,
            lambda tx: st.fire_schedule(
                tx, schedule_id, tick, job_id, data, max_attempts, result_ttl, priority, fence
            ),
        )

    async def schedule_cursors(self, ns: str) -> dict[str, float]:
        await trio.lowlevel.checkpoint()
        return self._run(ns, st.schedule_cursors)

    # -- leader lock ----------------------------------------------------------------------

    async def acquire_lock(
        self, ns: str, lock: str, owner: str, *, ttl: float, take_from_dead: bool = False
    ) -> int | None:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.acquire_lock(tx, lock, owner, ttl, take_from_dead))

    async def lock_holder(self, ns: str, lock: str) -> LockHolder | None:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.lock_holder(tx, lock))

    # -- worker registry ------------------------------------------------------------------

    async def register_worker(self, ns: str, record: WorkerRecord, *, ttl: float) -> None:
        await trio.lowlevel.checkpoint()
        self._run(ns, lambda tx: st.register_worker(tx, record, ttl))

    async def unregister_worker(self, ns: str, worker_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.unregister_worker(tx, worker_id))

    async def list_workers(self, ns: str) -> list[WorkerRecord]:
        await trio.lowlevel.checkpoint()
        return self._run(ns, st.list_workers)

    async def renew_lock(self, ns: str, lock: str, owner: str, epoch: int, *, ttl: float) -> bool:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.renew_lock(tx, lock, owner, epoch, ttl))

    async def release_lock(self, ns: str, lock: str, owner: str, epoch: int) -> bool:
        await trio.lowlevel.checkpoint()
        return self._run(ns, lambda tx: st.release_lock(tx, lock, owner, epoch))

    # -- housekeeping ---------------------------------------------------------------------

    async def stats(self, ns: str) -> StorageStats:
        await trio.lowlevel.checkpoint()
        return self._run(ns, st.stats)

    async def purge_expired(self, ns: str) -> int:
        await trio.lowlevel.checkpoint()
        return self._run(ns, st.purge)

    async def list_namespaces(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        # Reads create an empty state; only those that ever held something count.
        names = [ns for ns, state in self._spaces.items() if _holds_data(state)]
        return sorted(names, key=lambda ns: ns.encode("utf-8"))


def _holds_data(state: st.NsState) -> bool:
    return bool(
        state.jobs or state.workers or state.locks or state.cursors or state.paused
    )
