"""The storage state machine: every backend against the model, and proof that it bites."""

from __future__ import annotations

import functools
import heapq
import os
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import attrs
import hypothesis
import pytest
import trio
from hypothesis import Phase

from trio_jobqueue import DeleteStatus, EnqueueStatus, EventKind, JobState, RetryStatus
from trio_jobqueue.storage import (
    EnqueueOutcome,
    EventRecord,
    Fence,
    FireStatus,
    MemoryStorage,
    ReapResult,
    SettleStatus,
    Storage,
    WorkerRecord,
)
from trio_jobqueue.storage._base import MAX_PRIORITY
from trio_jobqueue.storage._core import WORK_KINDS, Hub
from trio_jobqueue.storage._state import Lane, state_order
from trio_jobqueue.testing import DEFAULT_SETTINGS, THOROUGH_SETTINGS, run_storage_machine

SETTINGS = THOROUGH_SETTINGS if os.environ.get("TRIO_JOBQUEUE_THOROUGH") else DEFAULT_SETTINGS
if os.environ.get("TRIO_JOBQUEUE_MACHINE_EXAMPLES"):
    # Fewer (or more) examples, e.g. for the extra server engines' pass in CI.
    SETTINGS = hypothesis.settings(
        SETTINGS, max_examples=int(os.environ["TRIO_JOBQUEUE_MACHINE_EXAMPLES"])
    )


def test_storage_matches_model(storage_factory: Callable[[], Storage]) -> None:
    """Random operation sequences never make a backend disagree with the model."""
    run_storage_machine(storage_factory, settings=SETTINGS)


# -- planted bugs: each subclass breaks one rule of the contract ---------------------------


class DedupIgnoresFailing(MemoryStorage):
    """Lets a new enqueue replace a job that is waiting for its retry."""

    async def enqueue(self, ns: str, job_id: str, payload: bytes, **options: Any) -> EnqueueOutcome:
        record = await self.get_status(ns, job_id)
        if record is not None and record.state is JobState.FAILING:
            await self.cancel(ns, job_id)
        return await super().enqueue(ns, job_id, payload, **options)


class RetryIgnoresDelay(MemoryStorage):
    """Makes a delayed retry claimable at once."""

    async def retry(
        self, ns: str, job_id: str, token: str, error: bytes, *, delay: float
    ) -> SettleStatus:
        return await super().retry(ns, job_id, token, error, delay=0.0)


class ReapIgnoresFence(MemoryStorage):
    """Reaps for a deposed leader."""

    async def reap(self, ns: str, *, fence: Fence | None = None) -> ReapResult:
        return await super().reap(ns)


class ReleaseConsumesAttempt(MemoryStorage):
    """Counts a graceful-shutdown release as an attempt (SPEC §3: it must not)."""

    async def release(self, ns: str, job_id: str, token: str) -> SettleStatus:
        status = await super().release(ns, job_id, token)
        if status is SettleStatus.OK:
            rec = self._spaces[ns].jobs[job_id]
            rec.attempts += 1
            rec.state = JobState.FAILING
        return status


# -- planted bugs in the core's feeds, the namespaces and the payloads -----------------------


@attrs.define(eq=False)
class _PlantedHub(MemoryStorage):
    """A MemoryStorage whose namespaces are fed through a broken :class:`Hub` subclass."""

    planted: ClassVar[type[Hub]] = Hub
    _planted_hubs: dict[str, Hub] = attrs.field(factory=dict, init=False)

    def hub(self, ns: str) -> Hub:
        hub = self._planted_hubs.get(ns)
        if hub is None:
            hub = self._planted_hubs[ns] = self.planted()
        return hub


Span = Any


class _HubDroppingRequeued(Hub):
    def offer(self, records: Iterable[EventRecord], span: Span = None) -> None:
        super().offer([r for r in records if r.kind is not EventKind.REQUEUED], span)


class DropsRequeuedEvents(_PlantedHub):
    """Never delivers ``requeued`` events to subscribers."""

    planted = _HubDroppingRequeued


class _HubNotFiringFailed(Hub):
    def fire(self, records: Iterable[EventRecord], span: Span = None) -> None:
        super().fire([r for r in records if r.kind is not EventKind.FAILED], span)


class WatchesMissFailed(_PlantedHub):
    """Never wakes job watches for ``failed`` (subscribers still get it)."""

    planted = _HubNotFiringFailed


class _HubNotWakingOnEnqueue(Hub):
    def deliver(
        self, records: Iterable[EventRecord], span: Span = None, *, work: bool | None = None
    ) -> None:
        records = list(records)
        if {r.kind for r in records} & WORK_KINDS == {EventKind.ENQUEUED}:
            work = False
        super().deliver(records, span, work=work)


class EnqueueWakesNoClaim(_PlantedHub):
    """An enqueue does not wake blocked claims (other work kinds still do)."""

    planted = _HubNotWakingOnEnqueue


class _HubRefsSmallResults(Hub):
    def offer(self, records: Iterable[EventRecord], span: Span = None) -> None:
        def ref(r: EventRecord) -> EventRecord:
            if r.result is not None and len(r.result) > 1024:
                return attrs.evolve(r, result=None, result_ref=True)
            return r

        super().offer([ref(r) for r in records], span)


class RefsSmallResults(_PlantedHub):
    """Leaves results over 1 KiB out of events (allowed only over ``INLINE_RESULT_MAX``)."""

    planted = _HubRefsSmallResults


def _one_namespace(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def ignoring_ns(self: Storage, ns: str, *args: Any, **kwargs: Any) -> Any:
        return method(self, "one-for-all", *args, **kwargs)

    return ignoring_ns


class IgnoresNamespace(MemoryStorage):
    """Keeps one state (jobs, locks, events, workers) for every queue name."""


for _name in (
    "enqueue",
    "cancel",
    "get_status",
    "update_result_ttl",
    "claim_nowait",
    "heartbeat",
    "complete",
    "fail",
    "retry",
    "release",
    "reap",
    "acquire_lock",
    "lock_holder",
    "renew_lock",
    "release_lock",
    "register_worker",
    "unregister_worker",
    "list_workers",
    "stats",
    "purge_expired",
    "hub",
    "follow",
):
    setattr(IgnoresNamespace, _name, _one_namespace(getattr(MemoryStorage, _name)))


class TruncatesLargePayloads(MemoryStorage):
    """Keeps only the first KiB of a payload."""

    async def enqueue(self, ns: str, job_id: str, payload: bytes, **options: Any) -> EnqueueOutcome:
        return await super().enqueue(ns, job_id, payload[:1024], **options)


# -- planted bugs in priorities, scheduled jobs and schedules ---------------------------------


class IgnoresPriority(MemoryStorage):
    """Queues every job at priority 0 (and reports the priority it was given)."""

    async def enqueue(self, ns: str, job_id: str, payload: bytes, **options: Any) -> EnqueueOutcome:
        priority = options.pop("priority", 0)
        outcome = await super().enqueue(ns, job_id, payload, **options)
        if outcome.status in (EnqueueStatus.QUEUED, EnqueueStatus.SCHEDULED):
            # Shown by get_status, ignored by the ready order.
            self._state(ns).jobs[job_id].priority = priority
        return outcome


class ReleaseJumpsPriorities(MemoryStorage):
    """Puts a released job at the head of the whole queue, before higher priorities."""

    async def release(self, ns: str, job_id: str, token: str) -> SettleStatus:
        status = await super().release(ns, job_id, token)
        if status is SettleStatus.OK:
            state = self._state(ns)
            rec = state.jobs[job_id]
            jump = MAX_PRIORITY + 1
            if jump not in state.lanes:
                state.lanes[jump] = Lane()
                heapq.heappush(state.priorities, -jump)
            state.lanes[jump].push(rec.ready_seq or 0, job_id)
        return status


class ScheduledRunsAtOnce(MemoryStorage):
    """Makes a job scheduled for later claimable at once (and says it was scheduled)."""

    async def enqueue(self, ns: str, job_id: str, payload: bytes, **options: Any) -> EnqueueOutcome:
        scheduled = options.pop("delay", None) or options.pop("run_at", None)
        options.pop("run_at", None)
        outcome = await super().enqueue(ns, job_id, payload, **options)
        if scheduled and outcome.status is EnqueueStatus.QUEUED:
            return EnqueueOutcome(EnqueueStatus.SCHEDULED)
        return outcome


class FiresEveryTick(MemoryStorage):
    """Ignores the schedule's cursor: a tick fires again, and an older one after a newer."""

    async def fire_schedule(
        self, ns: str, schedule_id: str, tick: float, job_id: str, payload: bytes, **options: Any
    ) -> FireStatus:
        self._state(ns).cursors.pop(schedule_id, None)
        status = await super().fire_schedule(ns, schedule_id, tick, job_id, payload, **options)
        return status


# -- planted bugs in the worker registry and the leader lock's take_from_dead ------------------


def _by_start(records: Iterable[WorkerRecord]) -> list[WorkerRecord]:
    return sorted(records, key=lambda rec: (rec.started_at, rec.worker_id))


class RegistrationsNeverExpire(MemoryStorage):
    """Keeps (and lists) every registration until it is withdrawn; a holder that ever
    registered keeps its lock against ``take_from_dead``."""

    async def register_worker(self, ns: str, record: WorkerRecord, *, ttl: float) -> None:
        await trio.lowlevel.checkpoint()
        now = self.now()
        self._state(ns).workers[record.worker_id] = attrs.evolve(
            record, last_seen=now, expires_at=now + ttl
        )

    async def unregister_worker(self, ns: str, worker_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._state(ns).workers.pop(worker_id, None) is not None

    async def list_workers(self, ns: str) -> list[WorkerRecord]:
        await trio.lowlevel.checkpoint()
        return _by_start(self._state(ns).workers.values())

    async def acquire_lock(
        self, ns: str, lock: str, owner: str, *, ttl: float, take_from_dead: bool = False
    ) -> int | None:
        held = self._state(ns).locks.get(lock)
        if held is not None and held.owner in self._state(ns).workers:
            take_from_dead = False
        return await super().acquire_lock(ns, lock, owner, ttl=ttl, take_from_dead=take_from_dead)


class OneTtlForAllWorkers(MemoryStorage):
    """Keeps one expiry for the whole registry (as one TTL on a shared hash): registering
    one worker extends every live registration to its expiry."""

    async def register_worker(self, ns: str, record: WorkerRecord, *, ttl: float) -> None:
        await super().register_worker(ns, record, ttl=ttl)
        workers = self._state(ns).workers
        expires_at = workers[record.worker_id].expires_at
        now = self.now()
        for worker_id, rec in list(workers.items()):
            if rec.expires_at > now:
                workers[worker_id] = attrs.evolve(rec, expires_at=expires_at)


class ListsInRegistrationOrder(MemoryStorage):
    """Lists the live registrations in the order they were first made, not by start."""

    async def list_workers(self, ns: str) -> list[WorkerRecord]:
        listed = {rec.worker_id for rec in await super().list_workers(ns)}
        return [rec for rec in self._state(ns).workers.values() if rec.worker_id in listed]


class IgnoresTakeFromDead(MemoryStorage):
    """Never takes a live lock from an unregistered holder: ``take_from_dead`` is ignored."""

    async def acquire_lock(
        self, ns: str, lock: str, owner: str, *, ttl: float, take_from_dead: bool = False
    ) -> int | None:
        return await super().acquire_lock(ns, lock, owner, ttl=ttl)


class TakesFromLiveHolders(MemoryStorage):
    """With ``take_from_dead``, takes a live lock from any other holder, registered or not."""

    async def acquire_lock(
        self, ns: str, lock: str, owner: str, *, ttl: float, take_from_dead: bool = False
    ) -> int | None:
        holder = await self.lock_holder(ns, lock)
        if take_from_dead and holder is not None and holder.owner != owner:
            await self.release_lock(ns, lock, holder.owner, holder.epoch)
        return await super().acquire_lock(ns, lock, owner, ttl=ttl, take_from_dead=take_from_dead)


# -- planted bugs in the operators' transitions ---------------------------------------------


class RetryKeepsAttempts(MemoryStorage):
    """Retries a failed job without a fresh attempt budget."""

    async def retry_job(self, ns: str, job_id: str) -> RetryStatus:
        before = await self.get_status(ns, job_id)
        status = await super().retry_job(ns, job_id)
        if status is RetryStatus.RETRIED and before is not None:
            self._state(ns).jobs[job_id].attempts = before.attempts
        return status


class DeletesRunningJobs(MemoryStorage):
    """Deletes a processing job too (its worker's outcome then has nowhere to go)."""

    async def delete_job(self, ns: str, job_id: str) -> DeleteStatus:
        rec = self._state(ns).jobs.get(job_id)
        if rec is not None and rec.state is JobState.PROCESSING:
            rec.state = JobState.QUEUED
        return await super().delete_job(ns, job_id)


class IgnoresPause(MemoryStorage):
    """Keeps handing out jobs while the queue is paused."""

    async def claim_nowait(self, ns: str, worker_id: str, *, limit: int, lease: float) -> Any:
        state = self._state(ns)
        paused, state.paused = state.paused, False
        try:
            return await super().claim_nowait(ns, worker_id, limit=limit, lease=lease)
        finally:
            state.paused = paused


class BulkDeletesNewestFirst(MemoryStorage):
    """Deletes the last jobs of a state's order instead of the first."""

    async def delete_jobs(self, ns: str, state: JobState, *, limit: int) -> int:
        await trio.lowlevel.checkpoint()
        victims = [
            rec.job_id
            for rec in sorted(
                (r for r in self._state(ns).jobs.values() if r.state is state),
                key=state_order,
                reverse=True,
            )[:limit]
        ]
        for job_id in victims:
            await self.delete_job(ns, job_id)
        return len(victims)


class BatchIgnoresItsOwnDuplicates(MemoryStorage):
    """``enqueue_many`` lets a later occurrence of an id in the batch replace the first."""

    async def enqueue_many(self, ns: str, jobs: Any) -> list[EnqueueOutcome]:
        outcomes = []
        seen: set[str] = set()
        for job in jobs:
            if job.job_id in seen:
                await self.cancel(ns, job.job_id)
            seen.add(job.job_id)
            (outcome,) = await super().enqueue_many(ns, [job])
            outcomes.append(outcome)
        return outcomes


class ListsQueuedIgnoringPriority(MemoryStorage):
    """Lists queued jobs in enqueue order, as if every job had priority 0."""

    async def list_jobs(self, ns: str, state: JobState, *, limit: int, cursor: Any = None) -> Any:
        page = await super().list_jobs(ns, state, limit=limit, cursor=cursor)
        if state is not JobState.QUEUED:
            return page
        jobs = self._state(ns).jobs
        queued = sorted(
            (rec for rec in jobs.values() if rec.state is JobState.QUEUED),
            key=lambda rec: rec.ready_seq or 0,
        )
        return attrs.evolve(page, records=[rec.snapshot() for rec in queued][:limit], cursor=None)


# -- planted bugs in running-job control ---------------------------------------------------


@attrs.define(eq=False)
class ForceCancelLeavesTokenLive(MemoryStorage):
    """Force-cancels a processing job, but a late settlement of the cancelled attempt still
    lands (the record comes back with it)."""

    _cancelled: dict[tuple[str, str], Any] = attrs.field(factory=dict, init=False)

    async def force_cancel(self, ns: str, job_id: str) -> Any:
        rec = self._state(ns).jobs.get(job_id)
        token = None if rec is None else rec.token
        status = await super().force_cancel(ns, job_id)
        if status == "cancelling" and rec is not None:
            self._cancelled[(ns, job_id)] = (rec, token)
        return status

    async def _resurrect(self, ns: str, job_id: str, token: str) -> None:
        found = self._cancelled.get((ns, job_id))
        if found is not None and found[1] == token and job_id not in self._state(ns).jobs:
            rec, rec.token = found[0], token
            self._state(ns).insert(rec)

    async def complete(
        self, ns: str, job_id: str, token: str, result: bytes, *, ttl: float
    ) -> SettleStatus:
        await self._resurrect(ns, job_id, token)
        return await super().complete(ns, job_id, token, result, ttl=ttl)

    async def fail(
        self, ns: str, job_id: str, token: str, error: bytes, *, ttl: float
    ) -> SettleStatus:
        await self._resurrect(ns, job_id, token)
        return await super().fail(ns, job_id, token, error, ttl=ttl)


class ProgressIgnoresToken(MemoryStorage):
    """Stores progress from any token of a processing job (a stale worker's too)."""

    async def set_progress(self, ns: str, job_id: str, token: str, progress: bytes) -> SettleStatus:
        rec = self._state(ns).jobs.get(job_id)
        if rec is not None and rec.state is JobState.PROCESSING and rec.token is not None:
            token = rec.token
        return await super().set_progress(ns, job_id, token, progress)


BUG_HUNT = hypothesis.settings(
    DEFAULT_SETTINGS,
    max_examples=1000,
    phases=[Phase.generate],
    database=None,
    report_multiple_bugs=False,
    print_blob=False,
)


CLAIMING = ("enqueue", "claim", "complete")
"""The rules most hunts start from: jobs to work on, claims of them, and completions that
free their ids again."""

REGISTRY = ("register_worker", "unregister_worker", "advance_clock")
"""The rules of the worker registry, with the clock that expires registrations."""

LOCKING = (*REGISTRY, "leader_lock", "take_over_lock")
"""The registry's rules and the leader lock's (taken from a dead holder or not)."""

PLANTED_BUGS: list[tuple[type[MemoryStorage], str | None, tuple[str, ...]]] = [
    (DedupIgnoresFailing, None, (*CLAIMING, "retry")),
    (RetryIgnoresDelay, None, (*CLAIMING, "retry")),
    (ReapIgnoresFence, None, (*CLAIMING, "reap", "leader_lock")),
    (ReleaseConsumesAttempt, None, (*CLAIMING, "release")),
    (DropsRequeuedEvents, r"subscribe_events: event #\d+: <requeued ", (*CLAIMING, "release")),
    (WatchesMissFailed, r"watch_job\(.*<failed ", (*CLAIMING, "fail")),
    (RefsSmallResults, r"result_ref=True for a result of \d+ bytes", CLAIMING),
    (
        EnqueueWakesNoClaim,
        r"did not wake it within",
        (*CLAIMING, "claim_woken_by_enqueue"),
    ),
    (IgnoresNamespace, None, (*CLAIMING, "use_namespace")),
    (TruncatesLargePayloads, r"claim of .*\.payload|get_payload\(", (*CLAIMING, "get_payload")),
    (RegistrationsNeverExpire, r"list_workers\(\) ids", REGISTRY),
    (OneTtlForAllWorkers, r"list_workers\(\)\[.*\]\.expires_at", REGISTRY),
    (ListsInRegistrationOrder, r"list_workers\(\) ids", REGISTRY),
    (IgnoresTakeFromDead, r"take_from_dead=True\) epoch", LOCKING),
    (TakesFromLiveHolders, r"take_from_dead=True\) epoch", LOCKING),
    # Both break the claim order, which a claim or a listing of the queued jobs shows.
    (
        IgnoresPriority,
        r"job ids \(priority order, then FIFO\)|list_jobs\(queued.*\) ids",
        (*CLAIMING, "list_jobs"),
    ),
    (
        ReleaseJumpsPriorities,
        r"job ids \(priority order, then FIFO\)|list_jobs\(.*\) ids",
        (*CLAIMING, "release", "list_jobs"),
    ),
    (ScheduledRunsAtOnce, None, CLAIMING),
    (FiresEveryTick, r"fire_schedule\(", ("fire_schedule", "leader_lock", "cancel")),
    (RetryKeepsAttempts, r"\.attempts", (*CLAIMING, "fail", "retry_job")),
    (DeletesRunningJobs, r"delete_job\(", (*CLAIMING, "delete_job")),
    (IgnoresPause, r"claim\(limit=\d\) job ids", (*CLAIMING, "set_paused")),
    (BulkDeletesNewestFirst, None, ("enqueue", "delete_jobs")),
    (BatchIgnoresItsOwnDuplicates, r"enqueue_many\(\.\.\.\)\[\d\]", ("enqueue_many",)),
    (ListsQueuedIgnoringPriority, r"list_jobs\(.*\) ids", ("enqueue", "list_jobs")),
    (
        ForceCancelLeavesTokenLive,
        r"after its force_cancel",
        (*CLAIMING, "running_control", "fail", "settle_stale"),
    ),
    (
        ProgressIgnoresToken,
        r"set_progress\(",
        (*CLAIMING, "running_control", "advance_clock", "reap"),
    ),
]
"""Each planted bug; what the message of the check meant to catch it matches (None:
whichever check comes first); and the rules its hunt draws from. A hunt focused on the
operations a bug is in finds it in a few hundred steps where the whole machine may need
thousands, which keeps the hunts quick and their outcome steady; every step is still
checked in full, and the unfocused machine runs on every backend above."""


@pytest.mark.parametrize(
    ("broken", "caught_by", "rules"),
    [pytest.param(*bug, id=bug[0].__name__) for bug in PLANTED_BUGS],
)
def test_machine_finds_planted_bug(
    broken: type[MemoryStorage], caught_by: str | None, rules: tuple[str, ...]
) -> None:
    """A backend with one planted contract violation is caught by the machine (by the
    check ``caught_by`` matches, where one rule is meant to catch it)."""
    with pytest.raises(AssertionError, match=caught_by):
        run_storage_machine(
            broken, settings=BUG_HUNT, delivery_timeout=0.25, wake_timeout=0.25, rules=rules
        )


def test_focused_machine_refuses_unknown_rules() -> None:
    """``rules=`` with a name the machine does not have is refused, naming it."""
    with pytest.raises(ValueError, match=r"unknown machine rules \['enqueu'\]"):
        run_storage_machine(MemoryStorage, rules=("enqueu", "claim"))
