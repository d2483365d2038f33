"""Lease recovery and leader election: :func:`serve_reaper`, :func:`open_reaper` and the
reaper embedded in every worker.

Any number of reapers may run against one queue (one per worker process is the normal
set-up). With leader election on, they compete for a lease-based lock with a fencing
epoch; only the holder reaps, and every reap presents the epoch, so a stale leader (paused,
partitioned) that wakes up cannot act. The lock's lease is ``3/4 * lock_ttl``; the leader
renews it every ``lock_ttl / 4`` seconds. The others retry at least every
:data:`~._presence.PRESENCE_INTERVAL` seconds and take the lock from a holder that is no
longer registered as a live worker (or stand-alone reaper) in the worker registry, so a
killed leader is replaced about :data:`~._presence.PRESENCE_TTL` seconds after its death,
and within ``lock_ttl`` in any case.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import NoReturn

import attrs
import trio

from ._config import ReaperConfig
from ._errors import StorageError
from ._events import EventChannel, open_event_channel
from ._presence import PRESENCE_INTERVAL, Presence, host_and_pid
from ._serde import JsonSerializer, TypedCodec
from ._util import open_service_nursery
from .storage import Fence, Storage, WorkerRecord

log = logging.getLogger("trio_jobqueue")

__all__ = ["Reaper", "ReaperStatistics", "open_reaper", "serve_reaper"]

REAPER_LOCK = "reaper"


@attrs.define
class ReaperStatistics:
    scans: int = 0
    stalled: int = 0
    """Jobs returned to the queue or failed because their lease expired."""
    purged: int = 0
    elections_won: int = 0


@attrs.define(eq=False, kw_only=True)
class Reaper:
    """A running reaper: what :func:`open_reaper` yields and :func:`serve_reaper` passes to
    ``task_status.started()``."""

    storage: Storage
    ns: str
    owner: str
    interval: float
    leader_election: bool
    lock_ttl: float
    registers: bool = True
    """Keep a registration of its own (kind ``reaper``) in the worker registry. A reaper
    embedded in a worker leads in the worker's name and needs none."""
    stats: ReaperStatistics = attrs.field(factory=ReaperStatistics)
    _epoch: int | None = attrs.field(default=None, init=False)
    _presence: Presence = attrs.field(init=False)
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _finished: trio.Event = attrs.field(factory=trio.Event, init=False)
    _codec: TypedCodec = attrs.field(factory=lambda: TypedCodec(JsonSerializer()), init=False)

    def __attrs_post_init__(self) -> None:
        self._presence = Presence(self.storage, self.ns, self._registration)

    @classmethod
    def from_config(cls, storage: Storage, config: ReaperConfig, *, registers: bool) -> Reaper:
        return cls(
            storage=storage,
            ns=config.name,
            owner=config.owner,
            interval=config.scan_interval,
            leader_election=config.leader_election,
            lock_ttl=float(config.lock_ttl),
            registers=registers,
        )

    def _registration(self) -> WorkerRecord:
        host, pid = host_and_pid()
        return WorkerRecord(
            worker_id=self.owner,
            host=host,
            pid=pid,
            started_at=self._presence.started_at,
            kind="reaper",
            counters={"scans": self.stats.scans, "stalled": self.stats.stalled},
        )

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

    @trio.lowlevel.enable_ki_protection
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scan until :meth:`stop`; shielded from outside cancellation like the worker."""
        try:
            with self._scope:
                self._scope.shield = True
                if self.registers and self.leader_election:
                    await self._presence.announce()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._presence.run)
                        task_status.started()
                        await self._loop()
                else:
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
            if self.registers and self.leader_election:
                await self._presence.withdraw(self.owner)
            self._finished.set()

    @trio.lowlevel.enable_ki_protection
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
                self.ns, REAPER_LOCK, self.owner, ttl=self.lock_ttl * 0.75, take_from_dead=True
            )
            if epoch is not None and epoch != self._epoch:
                self.stats.elections_won += 1
                log.info("reaper %s leads %r with epoch %d", self.owner, self.ns, epoch)
            self._epoch = epoch
            if epoch is None:
                return min(self.lock_ttl / 4, PRESENCE_INTERVAL)
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


async def serve_reaper(
    storage: Storage,
    *,
    name: str | None = None,
    visibility_timeout: float = 30.0,
    leader_election: bool = True,
    lock_ttl: float = 30.0,
    interval: float | None = None,
    owner: str | None = None,
    task_status: trio.TaskStatus[Reaper] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run a stand-alone reaper for the queue ``name`` in the caller's nursery until
    cancelled: ``reaper = await nursery.start(functools.partial(serve_reaper, storage,
    name="emails"))``.

    Opens ``storage`` (reference-counted) for as long as it runs. Once running it passes
    its :class:`Reaper` (``.is_leader``, ``.epoch``, ``.statistics()``, ``.events()``) to
    ``task_status.started()``.

    Args:
        visibility_timeout: the workers' lease length; sets the default scan interval
            (half of it, at most 5 s).
        leader_election: compete for the ``reaper`` lock so that one reaper acts.
        lock_ttl: lease of the leader lock; a dead leader is replaced within it.
        interval: seconds between scans (besides scanning exactly at the next known lease
            deadline).
        owner: this reaper's id in the lock (default: host:pid:random).

    Cancellation: stops scanning, releases the leader lock if held, closes the storage if
    this was its last user, then lets the cancellation propagate.

    Raises:
        ValueError: an option is invalid (nothing was opened); the message names it.
        StorageError: the storage could not be opened.
    """
    config = ReaperConfig(
        name=name,
        visibility_timeout=visibility_timeout,
        leader_election=leader_election,
        lock_ttl=lock_ttl,
        interval=interval,
        owner=owner,
    )
    await reaper_service(storage, config, task_status=task_status)


@trio.lowlevel.enable_ki_protection
async def reaper_service(
    storage: Storage,
    config: ReaperConfig,
    *,
    task_status: trio.TaskStatus[Reaper] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """:func:`serve_reaper` with its options already validated."""
    reaper = Reaper.from_config(storage, config, registers=True)
    async with storage, open_service_nursery() as nursery:
        # Starting does no I/O; shielded, so that no cancellation lands between starting
        # the (shielded) reaper task and the ``try`` that stops it.
        with trio.CancelScope(shield=True):
            await nursery.start(reaper.run)
        try:
            task_status.started(reaper)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await reaper.stop()


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
    """Run a stand-alone reaper for the queue ``name`` while the block runs: a
    :func:`serve_reaper` in a nursery of its own. Same options.

    The reaper releases its lock on exit. Exiting (also by cancellation) stops it cleanly.

    Raises:
        ValueError: an option is invalid (nothing was opened).
    """
    config = ReaperConfig(
        name=name,
        visibility_timeout=visibility_timeout,
        leader_election=leader_election,
        lock_ttl=lock_ttl,
        interval=interval,
        owner=owner,
    )
    async with open_service_nursery() as nursery:
        reaper: Reaper = await nursery.start(reaper_service, storage, config)
        try:
            yield reaper
        finally:
            nursery.cancel_scope.cancel()  # reaper_service stops the reaper before it returns
