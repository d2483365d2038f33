"""Lease recovery: :func:`serve_reaper`, :func:`open_reaper` and the reaper embedded in
every worker.

Any number of reapers may run against one queue (one per worker process is the normal
set-up). With leader election on, they compete for the ``reaper`` lock (see
:mod:`._leader`: a fenced lease, a killed leader replaced about
:data:`~._presence.PRESENCE_TTL` seconds after its death, within ``lock_ttl`` in any
case); only the holder reaps, and every reap presents the epoch, so a stale leader
(paused, partitioned) that wakes up cannot act.
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
from ._leader import ElectedService, open_service, run_service
from ._serde import JsonSerializer, TypedCodec
from .storage import Fence, Storage

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
class Reaper(ElectedService):
    """A running reaper: what :func:`open_reaper` yields and :func:`serve_reaper` passes to
    ``task_status.started()``."""

    interval: float
    leader_election: bool
    stats: ReaperStatistics = attrs.field(factory=ReaperStatistics)
    _codec: TypedCodec = attrs.field(factory=lambda: TypedCodec(JsonSerializer()), init=False)

    LOCK = REAPER_LOCK
    KIND = "reaper"

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

    def _counters(self) -> dict[str, int]:
        return {"scans": self.stats.scans, "stalled": self.stats.stalled}

    @property
    def _elects(self) -> bool:
        return self.leader_election

    @property
    def is_leader(self) -> bool:
        """True while this reaper holds the leader lock (always True without election)."""
        return not self.leader_election or self._leader.epoch is not None

    def statistics(self) -> ReaperStatistics:
        self.stats.elections_won = self._leader.elections_won
        return attrs.evolve(self.stats)

    def events(self) -> AbstractAsyncContextManager[EventChannel]:
        """The namespace's job events (``stalled`` among them)."""
        return open_event_channel(self.storage, self.ns, self._codec)

    async def _loop(self) -> NoReturn:
        while True:
            sleep_for = self.interval
            if self.leader_election:
                sleep_for = min(sleep_for, self._leader.renew_every)
            try:
                sleep_for = min(sleep_for, await self.scan_once())
            except StorageError as exc:
                log.warning("reaper scan failed: %s", exc)
            await trio.sleep(sleep_for)

    async def scan_once(self) -> float:
        """Try to lead, reap once if leader; return how long until the next scan is due."""
        fence: Fence | None = None
        if self.leader_election:
            fence = await self._leader.acquire()
            self.stats.elections_won = self._leader.elections_won
            if fence is None:
                return self._leader.retry_every
        result = await self.storage.reap(self.ns, fence=fence)
        self.stats.scans += 1
        if result.fenced:
            self._leader.lost()
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


async def reaper_service(
    storage: Storage,
    config: ReaperConfig,
    *,
    task_status: trio.TaskStatus[Reaper] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """:func:`serve_reaper` with its options already validated."""
    reaper = Reaper.from_config(storage, config, registers=True)
    await run_service(storage, reaper, task_status=task_status)


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
    reaper = Reaper.from_config(storage, config, registers=True)
    async with open_service(storage, reaper):
        yield reaper
