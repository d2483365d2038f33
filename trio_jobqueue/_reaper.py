"""Lease recovery and leader election: :func:`open_reaper` and the embedded reaper.

Any number of reapers may run against one queue (one per worker process is the normal
set-up). With leader election on, they compete for a lease-based lock with a fencing
epoch; only the holder reaps, and every reap presents the epoch, so a stale leader (paused,
partitioned) that wakes up cannot act. The lock's lease is ``3/4 * lock_ttl`` and every reaper
tries to take or renew it every ``lock_ttl / 4`` seconds, so a crashed leader is replaced
within ``lock_ttl``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from ._errors import StorageError
from ._events import EventChannel, open_event_channel
from ._serde import JsonSerializer, TypedCodec
from ._util import open_service_nursery
from ._validate import check_duration, check_name, check_ttl
from .storage import Fence, Storage

log = logging.getLogger("trio_jobqueue")

REAPER_LOCK = "reaper"
DEFAULT_NAME = "default"


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@attrs.define
class ReaperStatistics:
    scans: int = 0
    stalled: int = 0
    """Jobs returned to the queue or failed because their lease expired."""
    purged: int = 0
    elections_won: int = 0


@attrs.define(eq=False, kw_only=True)
class Reaper:
    """A running reaper (see :func:`open_reaper`)."""

    storage: Storage
    ns: str
    owner: str
    interval: float
    leader_election: bool
    lock_ttl: float
    stats: ReaperStatistics = attrs.field(factory=ReaperStatistics)
    _epoch: int | None = attrs.field(default=None, init=False)
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _finished: trio.Event = attrs.field(factory=trio.Event, init=False)
    _codec: TypedCodec = attrs.field(factory=lambda: TypedCodec(JsonSerializer()), init=False)

    @property
    def is_leader(self) -> bool:
        """True while this reaper holds the leader lock (always True without election)."""
        return not self.leader_election or self._epoch is not None

    @property
    def epoch(self) -> int | None:
        """The fencing epoch of the held lock, if leader."""
        return self._epoch

    def statistics(self) -> ReaperStatistics:
        return attrs.evolve(self.stats)

    def events(self) -> AbstractAsyncContextManager[EventChannel]:
        """The namespace's job events (``stalled`` among them)."""
        return open_event_channel(self.storage, self.ns, self._codec)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scan until :meth:`stop`; shielded from outside cancellation like the worker."""
        try:
            with self._scope:
                self._scope.shield = True
                task_status.started()
                await self._loop()
        finally:
            if self._epoch is not None:
                epoch, self._epoch = self._epoch, None
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self.storage.release_lock(self.ns, REAPER_LOCK, self.owner, epoch)
                    except StorageError as exc:
                        log.warning("could not release the reaper lock: %s", exc)
            self._finished.set()

    async def stop(self) -> None:
        self._scope.cancel()
        await self._finished.wait()

    async def _loop(self) -> None:
        renew_every = self.lock_ttl / 4
        while True:
            sleep_for = min(self.interval, renew_every) if self.leader_election else self.interval
            try:
                sleep_for = min(sleep_for, await self.scan_once())
            except StorageError as exc:
                log.warning("reaper scan failed: %s", exc)
            await trio.sleep(sleep_for)

    async def scan_once(self) -> float:
        """Try to lead, reap once if leader; return how long until the next scan is due."""
        fence: Fence | None = None
        if self.leader_election:
            # The lock's lease is 3/4 of lock_ttl and everyone retries every 1/4: a
            # crashed leader is replaced within lock_ttl, and a live one may miss two
            # renewals before it loses the lock.
            epoch = await self.storage.acquire_lock(
                self.ns, REAPER_LOCK, self.owner, ttl=self.lock_ttl * 0.75
            )
            if epoch is not None and epoch != self._epoch:
                self.stats.elections_won += 1
                log.info("reaper %s leads %r with epoch %d", self.owner, self.ns, epoch)
            self._epoch = epoch
            if epoch is None:
                return self.lock_ttl / 4
            fence = Fence(REAPER_LOCK, self.owner, epoch)
        result = await self.storage.reap(self.ns, fence=fence)
        self.stats.scans += 1
        if result.fenced:
            self._epoch = None
            return 0.0
        self.stats.stalled += len(result.stalled)
        for job in result.stalled:
            log.warning(
                "job %r attempt %d stalled (lease expired)%s",
                job.job_id,
                job.attempt,
                "; attempts exhausted, failed" if job.failed else "; re-queued",
            )
        self.stats.purged += await self.storage.purge_expired(self.ns)
        if result.next_deadline is not None and result.now is not None:
            return max(result.next_deadline - result.now, 0.0) + 0.001
        return self.interval


def make_reaper(
    storage: Storage,
    *,
    name: str | None,
    visibility_timeout: float,
    leader_election: bool,
    lock_ttl: float,
    interval: float | None,
    owner: str | None,
) -> Reaper:
    vt = check_ttl(visibility_timeout, "visibility_timeout")
    return Reaper(
        storage=storage,
        ns=check_name(name if name is not None else DEFAULT_NAME),
        owner=owner or default_worker_id(),
        interval=(
            check_duration(interval, "interval", allow_zero=False)
            if interval is not None
            else max(min(vt / 2, 5.0), 0.01)
        ),
        leader_election=bool(leader_election),
        lock_ttl=check_ttl(lock_ttl, "lock_ttl"),
    )


@asynccontextmanager
async def open_reaper(
    storage: Storage,
    *,
    name: str | None = None,
    visibility_timeout: float = 30.0,
    leader_election: bool = True,
    lock_ttl: float = 30.0,
    interval: float | None = None,
    owner: str | None = None,
) -> AsyncIterator[Reaper]:
    """Run a stand-alone reaper for the queue ``name`` while the block runs.

    Args:
        visibility_timeout: the workers' lease length; sets the default scan interval
            (half of it, at most 5 s).
        leader_election: compete for the ``reaper`` lock so that one reaper acts.
        lock_ttl: lease of the leader lock; a dead leader is replaced within it.
        interval: seconds between scans (besides scanning exactly at the next known lease
            deadline).
        owner: this reaper's id in the lock (default: host:pid:random).

    The reaper releases its lock on exit. Exiting (also by cancellation) stops it cleanly.
    """
    reaper = make_reaper(
        storage,
        name=name,
        visibility_timeout=visibility_timeout,
        leader_election=leader_election,
        lock_ttl=lock_ttl,
        interval=interval,
        owner=owner,
    )
    async with storage, open_service_nursery() as nursery:
        with trio.CancelScope(shield=True):  # see open_queue: no gap before the try
            await nursery.start(reaper.run)
        try:
            yield reaper
        finally:
            with trio.CancelScope(shield=True):
                await reaper.stop()
