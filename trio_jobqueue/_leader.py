"""Leader election shared by the reaper and the scheduler: the fenced lock
(:class:`LeaderLock`), the service skeleton (:class:`ElectedService`: registration,
shielded run loop, release on stop) and the ``*_service``/``open_*`` plumbing.

Any number of services of one kind may run against one queue. They compete for one
lease-based lock with a fencing epoch; only the holder acts, and every action presents
the epoch, so a stale leader (paused, partitioned) that wakes up cannot act. The lock's
lease is ``3/4 * lock_ttl``; the leader renews it every ``lock_ttl / 4`` seconds. The
others retry at least every :data:`~._presence.PRESENCE_INTERVAL` seconds and take the
lock from a holder that is no longer registered as live in the worker registry, so a
killed leader is replaced about :data:`~._presence.PRESENCE_TTL` seconds after its death,
and within ``lock_ttl`` in any case.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar, NoReturn, TypeVar

import attrs
import trio

from ._errors import StorageError
from ._presence import PRESENCE_INTERVAL, Presence, host_and_pid
from ._util import open_service_nursery
from .storage import Fence, Storage, WorkerRecord

log = logging.getLogger("trio_jobqueue")

__all__ = ["ElectedService", "LeaderLock", "open_service", "run_service"]


@attrs.define(eq=False, kw_only=True)
class LeaderLock:
    """One participant in the election for ``lock`` of namespace ``ns``."""

    storage: Storage
    ns: str
    lock: str
    owner: str
    lock_ttl: float
    epoch: int | None = None
    """The epoch of the held lock; ``None`` while not leading."""
    elections_won: int = 0

    @property
    def renew_every(self) -> float:
        return self.lock_ttl / 4

    @property
    def retry_every(self) -> float:
        return min(self.lock_ttl / 4, PRESENCE_INTERVAL)

    async def acquire(self) -> Fence | None:
        """Take or renew the lock; the fence to present while leading, or ``None``.

        Raises:
            StorageError: the storage failed (the leadership is unknown until the next try).
        """
        # The lease is 3/4 of lock_ttl and everyone retries every 1/4: a crashed leader is
        # replaced within lock_ttl, and a live one may miss two renewals before it loses it.
        epoch = await self.storage.acquire_lock(
            self.ns, self.lock, self.owner, ttl=self.lock_ttl * 0.75, take_from_dead=True
        )
        if epoch is not None and epoch != self.epoch:
            self.elections_won += 1
            log.info("%s %s leads %r with epoch %d", self.lock, self.owner, self.ns, epoch)
        self.epoch = epoch
        return None if epoch is None else Fence(self.lock, self.owner, epoch)

    def lost(self) -> None:
        """The storage answered ``fenced``: someone else leads now."""
        if self.epoch is not None:
            log.warning("%s %s lost the lead of %r (fenced)", self.lock, self.owner, self.ns)
        self.epoch = None

    async def release(self) -> None:
        """Free the lock if held (shielded, bounded); failures are logged, never raised."""
        if self.epoch is None:
            return
        epoch, self.epoch = self.epoch, None
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self.storage.release_lock(self.ns, self.lock, self.owner, epoch)
            except StorageError as exc:
                log.warning("could not release the %s lock: %s", self.lock, exc)


@attrs.define(eq=False, kw_only=True)
class ElectedService(abc.ABC):
    """A leader-elected background service: subclasses give the lock name, the
    registration record and the loop (which runs until cancelled)."""

    storage: Storage
    ns: str
    owner: str
    lock_ttl: float
    registers: bool = True
    """Keep a registration of its own in the worker registry. A service embedded in a
    worker leads in the worker's name and needs none."""
    _presence: Presence = attrs.field(init=False)
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _finished: trio.Event = attrs.field(factory=trio.Event, init=False)
    _leader: LeaderLock = attrs.field(init=False)

    LOCK: ClassVar[str] = "leader"
    """The lock's name (one per kind of service)."""
    KIND: ClassVar[str] = "service"
    """Its registration's ``kind`` in the worker registry."""

    def __attrs_post_init__(self) -> None:
        self._presence = Presence(self.storage, self.ns, self._registration)
        self._leader = LeaderLock(
            storage=self.storage,
            ns=self.ns,
            lock=self.LOCK,
            owner=self.owner,
            lock_ttl=self.lock_ttl,
        )

    @abc.abstractmethod
    def _counters(self) -> dict[str, int]:
        """The counters its registration shows (``stats``, ``Queue.workers()``)."""

    def _registration(self) -> WorkerRecord:
        host, pid = host_and_pid()
        return WorkerRecord(
            worker_id=self.owner,
            host=host,
            pid=pid,
            started_at=self._presence.started_at,
            kind=self.KIND,
            counters=self._counters(),
        )

    @abc.abstractmethod
    async def _loop(self) -> NoReturn:
        """Work until cancelled; must report (log) and retry every failure."""

    @property
    def _elects(self) -> bool:
        return True

    @property
    def epoch(self) -> int | None:
        """The fencing epoch of the held lock, if leader."""
        return self._leader.epoch

    @trio.lowlevel.enable_ki_protection
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop`; shielded from outside cancellation like the worker."""
        registers = self.registers and self._elects
        try:
            with self._scope:
                self._scope.shield = True
                if registers:
                    await self._presence.announce()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._presence.run)
                        task_status.started()
                        await self._loop()
                else:
                    task_status.started()
                    await self._loop()
        finally:
            await self._leader.release()
            if registers:
                await self._presence.withdraw(self.owner)
            self._finished.set()

    @trio.lowlevel.enable_ki_protection
    async def stop(self) -> None:
        self._scope.cancel()
        await self._finished.wait()


S = TypeVar("S", bound=ElectedService)


@trio.lowlevel.enable_ki_protection
async def run_service(
    storage: Storage, service: S, *, task_status: trio.TaskStatus[S] = trio.TASK_STATUS_IGNORED
) -> NoReturn:
    """Open ``storage`` (reference-counted), run ``service`` until cancelled, then stop it
    cleanly before the cancellation propagates."""
    async with storage, open_service_nursery() as nursery:
        # Starting does no I/O; shielded, so that no cancellation lands between starting
        # the (shielded) service task and the ``try`` that stops it.
        with trio.CancelScope(shield=True):
            await nursery.start(service.run)
        try:
            task_status.started(service)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await service.stop()


@asynccontextmanager
async def open_service(storage: Storage, service: S) -> AsyncIterator[S]:
    """Run ``service`` (see :func:`run_service`) in a nursery of its own while the block
    runs. Exiting (also by cancellation) stops it cleanly."""
    async with open_service_nursery() as nursery:
        await nursery.start(run_service, storage, service)
        try:
            yield service
        finally:
            nursery.cancel_scope.cancel()  # run_service stops the service before it returns
