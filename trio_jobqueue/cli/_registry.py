"""A directory of live worker processes, built on the existing Storage primitives.

The Storage ABC has no "list workers" operation, so worker processes announce themselves
through **events** of a companion namespace ``<queue>~workers``: every
``interval`` seconds a worker enqueues a job whose *id* is its status (JSON, at most
:data:`~trio_jobqueue._validate.MAX_JOB_ID_LENGTH` characters) and cancels it at once.
Both steps are ordinary atomic transitions; the ``enqueued`` event carries the id to
every subscriber (Redis pub/sub, the File journal), and the cancel frees the id and
removes the message, so nothing accumulates. A process killed between the two steps
leaves one queued record behind; workers sweep those up from time to time.

Readers (``stats``) subscribe to the companion namespace and consider a worker live while
its announcements keep arriving (within ``LIVE_FACTOR`` intervals). A one-shot ``stats``
therefore listens for a little more than one interval.

A first-class ``register_worker``/``list_workers`` pair on the ABC would make one-shot
reads instant; see ``docs/cli.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._errors import JobQueueError
from .._validate import MAX_JOB_ID_LENGTH
from ..storage import Storage

log = logging.getLogger("trio_jobqueue.cli")

SUFFIX = "~workers"
LIVE_FACTOR = 2.5
"""A worker is live while its last announcement is younger than this many intervals."""
SWEEP_EVERY = 30
"""Announcements between two sweeps of leftover records."""
_MARK = "jq-worker:"


def registry_ns(ns: str) -> str:
    return ns + SUFFIX


@attrs.frozen
class WorkerInfo:
    """One worker process as last announced."""

    worker_id: str
    host: str
    pid: int
    state: str
    """``running``, ``stopping`` (shutdown grace) or ``stopped`` (final announcement)."""
    started_at: float
    sent_at: float
    """Epoch seconds of the announcement (the announcer's clock)."""
    interval: float
    concurrency: int
    in_flight: int
    jobs: tuple[str, ...]
    """Ids of the jobs in flight (possibly truncated to fit; ``in_flight`` is exact)."""
    completed: int
    failed: int
    retried: int
    released: int
    fenced: int
    leader: bool
    """Whether this worker's embedded reaper holds the reaper lock."""
    epoch: int | None
    seq: int

    def encode(self) -> str:
        """The announcement id: ``jq-worker:`` + JSON, shortened to fit an id."""
        data = attrs.asdict(self)
        data["jobs"] = list(self.jobs)
        for keep in range(len(self.jobs), -1, -1):
            data["jobs"] = list(self.jobs[:keep])
            text = _MARK + json.dumps(data, separators=(",", ":"), ensure_ascii=False)
            if len(text) <= MAX_JOB_ID_LENGTH:
                return text
        raise ValueError("worker announcement does not fit in a job id")  # pragma: no cover

    @classmethod
    def decode(cls, text: str) -> WorkerInfo | None:
        if not text.startswith(_MARK):
            return None
        try:
            data = json.loads(text[len(_MARK) :])
            data["jobs"] = tuple(data["jobs"])
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            return None


@attrs.define
class WorkerDirectory:
    """What a reader knows of the workers of one queue (fed by :func:`follow_workers`)."""

    seen: dict[str, tuple[WorkerInfo, float]] = attrs.field(factory=dict)
    """worker id -> (last announcement, local ``time.monotonic()`` when received)."""
    changed: trio.Event = attrs.field(factory=trio.Event)

    def note(self, info: WorkerInfo) -> None:
        known = self.seen.get(info.worker_id)
        if known is not None and known[0].seq > info.seq:
            return  # an older announcement delivered late
        self.seen[info.worker_id] = (info, time.monotonic())
        self.changed.set()
        self.changed = trio.Event()

    def live(self) -> list[WorkerInfo]:
        """Workers heard from recently that did not announce they stopped, by id."""
        now = time.monotonic()
        return sorted(
            (
                info
                for info, at in self.seen.values()
                if info.state != "stopped" and now - at <= LIVE_FACTOR * info.interval + 0.25
            ),
            key=lambda info: info.worker_id,
        )

    def leader(self) -> WorkerInfo | None:
        """The live worker whose reaper leads (highest epoch, if two claim to)."""
        leaders = [i for i in self.live() if i.leader and i.epoch is not None]
        return max(leaders, key=lambda i: i.epoch or 0, default=None)


async def follow_workers(
    storage: Storage,
    ns: str,
    directory: WorkerDirectory,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed ``directory`` from the announcements of ``ns``'s workers until cancelled.

    ``storage`` must be open. Raises :class:`~trio_jobqueue.StorageError` if subscribing
    fails.
    """
    async with storage.subscribe_events(registry_ns(ns)) as events:
        task_status.started()
        async for record in events:
            if record.kind == "enqueued":
                info = WorkerInfo.decode(record.job_id)
                if info is not None:
                    directory.note(info)


@attrs.define(eq=False, kw_only=True)
class Announcer:
    """Publishes one worker process's :class:`WorkerInfo` (see the module docstring)."""

    storage: Storage
    ns: str
    worker_id: str
    interval: float
    concurrency: int
    snapshot: Callable[[], dict[str, Any]]
    """Returns the changing fields: state, in_flight, jobs, counters, leader, epoch."""
    started_at: float = attrs.field(factory=time.time)
    _seq: int = attrs.field(default=0, init=False)
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)

    def info(self) -> WorkerInfo:
        self._seq += 1
        return WorkerInfo(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            sent_at=time.time(),
            interval=self.interval,
            concurrency=self.concurrency,
            seq=self._seq,
            **self.snapshot(),
        )

    async def announce(self) -> None:
        """Publish one announcement. Raises ``StorageError`` (or another
        :class:`~trio_jobqueue.JobQueueError`) when the storage fails."""
        reg = registry_ns(self.ns)
        job_id = self.info().encode()
        await self.storage.enqueue(reg, job_id, b"null", max_attempts=1, result_ttl=60.0)
        await self.storage.cancel(reg, job_id)

    async def sweep(self) -> None:
        """Remove announcement records left by processes killed mid-announcement."""
        reg = registry_ns(self.ns)
        await self.storage.reap(reg)
        lease = max(self.interval * 4, 5.0)
        for claim in await self.storage.claim(reg, self.worker_id, limit=100, lease=lease):
            await self.storage.complete(reg, claim.job_id, claim.token, b"null", ttl=1.0)

    async def run(self) -> None:
        """Announce every ``interval`` seconds until :meth:`stop`; shielded from outside
        cancellation (so a shutting-down worker still reports ``stopping``). Storage errors
        are logged and retried at the next tick, never raised."""
        count = 0
        with self._scope:
            self._scope.shield = True
            while True:
                try:
                    if count % SWEEP_EVERY == 0:
                        await self.sweep()
                    await self.announce()
                except JobQueueError as exc:
                    log.warning("could not announce this worker: %s", exc)
                count += 1
                await trio.sleep(self.interval)

    def stop(self) -> None:
        self._scope.cancel()

    async def farewell(self, timeout: float = 2.0) -> None:
        """The final ``stopped`` announcement (shielded, bounded by ``timeout``)."""
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            try:
                await self.announce()
            except JobQueueError as exc:
                log.warning("could not announce that this worker stopped: %s", exc)


def listen_time(interval: float) -> float:
    """How long a one-shot reader listens to hear every live worker at least once."""
    return interval * 1.2 + 0.3 if math.isfinite(interval) else 1.5
