"""Workers (and stand-alone reapers) keep a registration in the storage's worker registry
while they run: ``Queue.workers()``, the ``stats`` command and the reapers' leader election
read it.

A registration is refreshed every :data:`PRESENCE_INTERVAL` seconds and expires on its own
:data:`PRESENCE_TTL` seconds after the last refresh, so a killed process disappears from
the registry within that long — and a reaper lock it held is taken over at once (see
``Storage.acquire_lock(take_from_dead=True)``), instead of after the lock's own lease.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import NoReturn

import attrs
import trio

from ._errors import StorageError
from .storage import Storage, WorkerRecord

__all__ = ["PRESENCE_INTERVAL", "PRESENCE_TTL", "Presence", "host_and_pid"]

log = logging.getLogger("trio_jobqueue")

PRESENCE_INTERVAL = 0.5
"""Seconds between two refreshes of a registration."""
PRESENCE_TTL = 1.5
"""Seconds a registration lives after its last refresh (three missed refreshes)."""


def host_and_pid() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


@attrs.define(eq=False)
class Presence:
    """Keeps one registration fresh. ``snapshot()`` builds the record each time (in-flight
    jobs and counters change); every storage error is logged and retried at the next
    refresh, never raised."""

    storage: Storage
    ns: str
    snapshot: Callable[[], WorkerRecord]
    started_at: float = attrs.field(factory=time.time)
    _failing: bool = attrs.field(default=False, init=False)

    async def announce(self) -> None:
        try:
            await self.storage.register_worker(self.ns, self.snapshot(), ttl=PRESENCE_TTL)
        except StorageError as exc:
            if not self._failing:
                log.warning("could not refresh the worker registration (%s); retrying", exc)
            self._failing = True
        else:
            self._failing = False

    async def run(self) -> NoReturn:
        while True:
            await trio.sleep(PRESENCE_INTERVAL)
            await self.announce()

    async def withdraw(self, worker_id: str) -> None:
        """Remove the registration now (shielded, bounded): the process is leaving."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self.storage.unregister_worker(self.ns, worker_id)
            except StorageError as exc:
                log.warning("could not remove the worker registration (%s); it expires", exc)
