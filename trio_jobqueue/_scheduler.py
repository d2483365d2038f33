"""The scheduler: enqueues the ticks of cron and interval schedules, exactly once per tick
however many schedulers run. :func:`serve_scheduler` and :func:`open_scheduler` run one
stand-alone; ``open_queue(..., schedules=[...])`` embeds one next to the worker's reaper.

Schedulers of one queue elect a leader on the ``scheduler`` lock (see :mod:`._leader`).
The leader sleeps until the next tick of any schedule (a trio deadline, so ``MockClock``
drives it), then fires each due tick with one atomic ``Storage.fire_schedule``: it checks
the fence, checks that the tick is after the schedule's cursor (the last tick fired, kept
in the storage) and enqueues the tick's job, whose id is derived from the schedule id and
the tick time. A second leader (two overlapping after a pause) is refused by the fence,
a tick already fired by the cursor, and a job of that tick still live by dedup: a tick is
never enqueued twice. Ticks missed while no leader ran are handled by the schedule's
misfire policy when the next leader starts (:func:`._schedule.due_ticks`).

Failures never end the service: a storage error is logged (with the schedule's id when a
fire failed) and the pass retried with backoff (0.1 s doubling to 5 s); any other error is
logged with its traceback and retried the same way, and one that a single schedule raises
holds back that schedule alone for 5 s while the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import attrs
import trio

from ._config import SchedulerConfig
from ._errors import StorageError
from ._leader import ElectedService, open_service, run_service
from ._schedule import Schedule, due_ticks
from ._serde import Serializer, TypedCodec
from .storage import Fence, FireStatus, Storage

log = logging.getLogger("trio_jobqueue")

__all__ = [
    "SCHEDULER_LOCK",
    "Scheduler",
    "SchedulerStatistics",
    "open_scheduler",
    "serve_scheduler",
]

SCHEDULER_LOCK = "scheduler"
MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0
"""Seconds between retries after a failure: from 0.1 s, doubling, at most 5 s."""


@attrs.define
class SchedulerStatistics:
    passes: int = 0
    """Passes made as the leader."""
    enqueued: int = 0
    """Ticks whose job this scheduler enqueued."""
    duplicates: int = 0
    """Ticks it fired while a live job held the tick's id (nothing enqueued)."""
    past: int = 0
    """Ticks another scheduler had fired already (nothing written)."""
    fenced: int = 0
    """Fires refused because another scheduler had taken the lead."""
    errors: int = 0
    """Failed passes (storage errors, or a schedule's own error)."""
    elections_won: int = 0


@attrs.define(eq=False, kw_only=True)
class Scheduler(ElectedService):
    """A running scheduler: what :func:`open_scheduler` yields and :func:`serve_scheduler`
    passes to ``task_status.started()``.

    Building one encodes every schedule's payload (the jobs of all ticks share it).

    Raises:
        SerializationError: a payload that the serializer cannot encode (nothing opened).
    """

    schedules: tuple[Schedule, ...]
    max_attempts: int
    """Attempts of a tick's job, unless its schedule sets ``max_attempts``."""
    result_ttl: float
    """Result TTL of a tick's job, unless its schedule sets ``result_ttl``."""
    codec: TypedCodec
    stats: SchedulerStatistics = attrs.field(factory=SchedulerStatistics)
    _payloads: dict[str, bytes] = attrs.field(init=False)
    _next: dict[str, float] = attrs.field(factory=dict, init=False)
    _retry_at: dict[str, float] = attrs.field(factory=dict, init=False)
    _backoff: float = attrs.field(default=0.0, init=False)

    LOCK = SCHEDULER_LOCK
    KIND = "scheduler"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._payloads = {
            s.id: self.codec.encode(s.payload, "payload", f"schedule {s.id}")
            for s in self.schedules
        }

    @classmethod
    def from_config(
        cls, storage: Storage, config: SchedulerConfig, *, registers: bool
    ) -> Scheduler:
        return cls(
            storage=storage,
            ns=config.name,
            owner=config.owner,
            lock_ttl=float(config.lock_ttl),
            registers=registers,
            schedules=config.schedules,
            max_attempts=config.max_attempts,
            result_ttl=float(config.result_ttl),
            codec=TypedCodec(config.serializer, config.payload_type),
        )

    def _counters(self) -> dict[str, int]:
        return {"enqueued": self.stats.enqueued, "schedules": len(self.schedules)}

    @property
    def is_leader(self) -> bool:
        """True while this scheduler holds the ``scheduler`` lock."""
        return self._leader.epoch is not None

    def statistics(self) -> SchedulerStatistics:
        self.stats.elections_won = self._leader.elections_won
        return attrs.evolve(self.stats)

    def next_ticks(self) -> dict[str, float]:
        """Schedule id -> its next tick (epoch seconds), as of the leader's last pass
        (empty while this scheduler has not led)."""
        return dict(self._next)

    def now(self) -> float:
        """The storage's clock (epoch seconds; trio's clock on a ``MemoryStorage``)."""
        clock = getattr(self.storage, "now", None)
        return float(clock()) if callable(clock) else time.time()

    async def _loop(self) -> NoReturn:
        while True:
            try:
                sleep_for = await self.pass_once()
                self._backoff = 0.0
            except Exception as exc:  # reported and retried: never ends the service
                self.stats.errors += 1
                self._backoff = min(max(self._backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
                log.warning(
                    "scheduler pass on %r failed (%s); retrying in %.1f s",
                    self.ns,
                    exc,
                    self._backoff,
                    exc_info=not isinstance(exc, StorageError),  # a bug: with traceback
                )
                sleep_for = self._backoff
            await trio.sleep(sleep_for)

    async def pass_once(self) -> float:
        """Try to lead; as the leader fire every due tick. Returns the seconds until the
        next pass is due (the next tick, a renewal, or an election retry).

        Raises:
            StorageError: the storage failed (logged with the schedule's id if a fire did).
        """
        fence = await self._leader.acquire()
        if fence is None:
            self._next.clear()
            return self._leader.retry_every
        self.stats.passes += 1
        cursors = await self.storage.schedule_cursors(self.ns)
        now = self.now()
        wake = now + self._leader.renew_every
        for schedule in self.schedules:
            retry_at = self._retry_at.get(schedule.id)
            if retry_at is not None and retry_at > now:
                wake = min(wake, retry_at)
                continue
            try:
                next_tick = await self._fire_due(schedule, cursors.get(schedule.id), now, fence)
            except StorageError as exc:
                log.warning("schedule %r: firing failed: %s", schedule.id, exc)
                raise
            except Exception:
                # A bug (ours or the cron library's) must not stop the other schedules.
                self.stats.errors += 1
                log.exception("schedule %r failed; retrying in %.1f s", schedule.id, MAX_BACKOFF)
                self._retry_at[schedule.id] = now + MAX_BACKOFF
                wake = min(wake, now + MAX_BACKOFF)
                continue
            if next_tick is None:  # fenced: someone else leads now
                self._next.clear()
                return 0.0
            self._retry_at.pop(schedule.id, None)
            self._next[schedule.id] = next_tick
            wake = min(wake, next_tick)
        return max(wake - self.now(), 0.0)

    async def _fire_due(
        self, schedule: Schedule, cursor: float | None, now: float, fence: Fence
    ) -> float | None:
        """Fire the due ticks of one schedule; its next tick, or ``None`` if fenced."""
        for tick in due_ticks(schedule, cursor, now):
            status = await self.fire(schedule, tick, fence)
            if status is FireStatus.FENCED:
                return None
            cursor = tick if cursor is None else max(cursor, tick)
        return schedule.next_tick(now if cursor is None else max(now, cursor))

    async def fire(self, schedule: Schedule, tick: float, fence: Fence) -> FireStatus:
        """Fire one tick (one atomic storage call) and log what happened."""
        job_id = schedule.job_id(tick)
        status = await self.storage.fire_schedule(
            self.ns,
            schedule.id,
            tick,
            job_id,
            self._payloads[schedule.id],
            max_attempts=schedule.max_attempts or self.max_attempts,
            result_ttl=float(schedule.result_ttl or self.result_ttl),
            priority=schedule.priority,
            fence=fence,
        )
        late = self.now() - tick
        if status is FireStatus.ENQUEUED:
            self.stats.enqueued += 1
            if late > schedule.misfire_grace:
                log.info("schedule %r: enqueued job %r (late by %.1f s)", schedule.id, job_id, late)
            else:
                log.info("schedule %r: enqueued job %r", schedule.id, job_id)
        elif status is FireStatus.DUPLICATE:
            self.stats.duplicates += 1
            log.info("schedule %r: job %r is still live; tick not enqueued", schedule.id, job_id)
        elif status is FireStatus.PAST:
            self.stats.past += 1
            log.debug("schedule %r: tick %r was fired already", schedule.id, job_id)
        else:
            self.stats.fenced += 1
            self._leader.lost()
        return status


def _config(
    schedules: Iterable[Schedule],
    name: str | None,
    max_attempts: int,
    result_ttl: float,
    lock_ttl: float,
    owner: str | None,
    serializer: Serializer | None,
    payload_type: Any,
) -> SchedulerConfig:
    return SchedulerConfig(
        schedules=schedules,
        name=name,
        max_attempts=max_attempts,
        result_ttl=result_ttl,
        lock_ttl=lock_ttl,
        owner=owner,
        serializer=serializer,
        payload_type=payload_type,
    )


async def serve_scheduler(
    storage: Storage,
    schedules: Iterable[Schedule],
    *,
    name: str | None = None,
    max_attempts: int = 3,
    result_ttl: float = 3600.0,
    lock_ttl: float = 30.0,
    owner: str | None = None,
    serializer: Serializer | None = None,
    payload_type: Any = None,
    task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run a stand-alone scheduler for the queue ``name`` in the caller's nursery until
    cancelled: ``scheduler = await nursery.start(functools.partial(serve_scheduler,
    storage, schedules, name="reports"))``.

    Any number may run (in any processes): they elect one leader, and each tick is
    enqueued exactly once. Opens ``storage`` (reference-counted) for as long as it runs
    and passes its :class:`Scheduler` (``.is_leader``, ``.epoch``, ``.statistics()``,
    ``.next_ticks()``) to ``task_status.started()``. Keeps a registration of kind
    ``scheduler`` in the worker registry.

    Args:
        schedules: :class:`CronSchedule`/:class:`IntervalSchedule` values with distinct ids.
        max_attempts, result_ttl: for the jobs of schedules that set none.
        lock_ttl: lease of the leader lock; a dead leader is replaced about 2 s after its
            death (when its registration expires), within ``lock_ttl`` in any case.
        owner: this scheduler's id in the lock and the registry (default: host:pid:random).
        serializer, payload_type: how payloads are encoded (as the queue's options).

    Cancellation: stops, releases the leader lock if held, closes the storage if this was
    its last user, then lets the cancellation propagate.

    Raises:
        ValueError: an option is invalid, or two schedules share an id (nothing opened).
        TypeError: ``schedules`` holds something else than schedules.
        SerializationError: a payload cannot be encoded (nothing opened).
        StorageError: the storage could not be opened.
    """
    config = _config(
        schedules, name, max_attempts, result_ttl, lock_ttl, owner, serializer, payload_type
    )
    await scheduler_service(storage, config, task_status=task_status)


async def scheduler_service(
    storage: Storage,
    config: SchedulerConfig,
    *,
    registers: bool = True,
    task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """:func:`serve_scheduler` with its options already validated."""
    scheduler = Scheduler.from_config(storage, config, registers=registers)
    await run_service(storage, scheduler, task_status=task_status)


@asynccontextmanager
async def open_scheduler(
    storage: Storage,
    schedules: Iterable[Schedule],
    *,
    name: str | None = None,
    max_attempts: int = 3,
    result_ttl: float = 3600.0,
    lock_ttl: float = 30.0,
    owner: str | None = None,
    serializer: Serializer | None = None,
    payload_type: Any = None,
) -> AsyncIterator[Scheduler]:
    """Run a stand-alone scheduler while the block runs: a :func:`serve_scheduler` in a
    nursery of its own. Same options; exiting (also by cancellation) stops it and
    releases its lock.

    Raises:
        ValueError, TypeError, SerializationError: as :func:`serve_scheduler` (nothing
            opened).
    """
    config = _config(
        schedules, name, max_attempts, result_ttl, lock_ttl, owner, serializer, payload_type
    )
    scheduler = Scheduler.from_config(storage, config, registers=True)
    async with open_service(storage, scheduler):
        yield scheduler
