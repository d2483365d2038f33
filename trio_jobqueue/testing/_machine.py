"""A Hypothesis state machine that checks any ``Storage`` against :mod:`._model`.

Every rule performs one storage call through a :class:`~._portal.StoragePortal`, performs the
same operation on the independent :class:`~._model.StorageModel` and compares the return
values; after every step the invariants compare every job record, the stats, the fencing
of every token handed out so far, every event the storage delivered (to an event
subscription and to a watch on each id) and the worker registry with what the model
predicts.

One opened storage serves a whole run. Each example drives **two namespaces** of its own
(``sm-<uuid>-a`` and ``sm-<uuid>-b``, one model each; ``use_namespace`` moves the
rules to either), so nothing needs flushing between examples, and the invariants
check both namespaces after every step: nothing done in one may show in the other.

Durations are multiples of 100 s and the clock moves through ``Storage.advance_clock`` only,
so a backend on a real clock (which drifts by milliseconds between steps) is predicted
exactly; see the module docstring of :mod:`._model` for the tie rules.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, cast

import attrs
import hypothesis
import trio
import trio.testing
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .._serde import decode_error
from .._types import CancelStatus, EnqueueStatus, EventKind, JobState
from ..storage import (
    Claim,
    Completion,
    EnqueueOutcome,
    EnqueueSpec,
    EventRecord,
    Fence,
    FireStatus,
    JobRecord,
    LockHolder,
    ReapedJob,
    SettleStatus,
    Storage,
    StorageStats,
    WorkerRecord,
)
from ..storage._base import MAX_PRIORITY, MIN_PRIORITY
from ..storage._core import INLINE_RESULT_MAX, TERMINAL_KINDS
from ._feeds import FeedRecorder, FeedSnapshot
from ._model import (
    STALLED,
    ExpectedClaim,
    ExpectedEnqueue,
    ExpectedLockHolder,
    ModelEvent,
    ModelJob,
    StorageModel,
)
from ._portal import PortalTask, StoragePortal, open_storage_portal

__all__ = [
    "DEFAULT_SETTINGS",
    "THOROUGH_SETTINGS",
    "StorageMachine",
    "make_storage_machine",
    "random_blob",
    "run_storage_machine",
]

JOB_IDS = ("a:b", "x/y", "ünï-🙂", "job 4")
"""The id pool: small so that ids collide (dedup), with ``:``, ``/`` and non-ASCII text.
Both namespaces use the same ids, so a backend that mixes them up shows it."""
SPACES = ("a", "b")
"""Labels of the two namespaces of an example (``sm-<uuid>-a``, ``sm-<uuid>-b``)."""
WORKERS = ("w1", "w:2")
LOCKS = ("leader", "lock:b")
OWNERS = ("reaper-1", "reaper:2")
TTLS = (100.0, 500.0, 1000.0)
LEASES = (100.0, 300.0)
RETRY_DELAYS = (0.0, 100.0, 200.0)
LOCK_TTLS = (200.0, 400.0)
ADVANCES = (100.0, 200.0, 500.0, 1000.0)
REGISTRANTS = (*OWNERS, "wörker 3")
"""Ids that register in the worker registry: the lock owners (so that ``take_from_dead``
meets both registered and unregistered holders) and one that never holds a lock."""
REGISTRATION_TTLS = (100.0, 300.0, 1000.0)
PRIORITIES = (0, 0, 0, 1, 1, 2, -1, MAX_PRIORITY, MIN_PRIORITY)
"""Priorities of enqueued jobs: mostly 0 (FIFO among equals), a few levels, the extremes."""
DUES = (
    None,
    None,
    None,
    ("delay", 0.0),
    ("delay", 100.0),
    ("delay", 300.0),
    ("run_at", -100.0),
    ("run_at", 200.0),
)
"""When an enqueued job is due: at once (``None``, a zero delay, a ``run_at`` in the past)
or later (a delay, or a ``run_at`` that many seconds after the model's now)."""
SCHEDULES = ("nightly", "s:2")
TICKS = (1000.0, 2000.0, 3000.0)
"""Ticks of ``fire_schedule``: few, so that ticks repeat (``past``) and go back."""
STARTED_AT = (0.0, 1.0, 1_700_000_000.25)
"""``started_at`` values a registration sends: few, so that the list order often falls
back to the ids."""
TIME_TOLERANCE = 30.0
"""Seconds a backend timestamp may differ from the model's prediction: real time drifts
by milliseconds per step, and model deadlines differ by at least 100 s."""
BLOB_SIZES = (1025, 8 * 1024, INLINE_RESULT_MAX, INLINE_RESULT_MAX + 1, 100_000)
"""Sizes of the large payloads, results and errors: just over 1 KiB, a few KiB, exactly
the largest result events carry inline, one byte more, and ~100 KB."""
BLOCKED_CLAIM_WAIT = 3600.0
"""``wait=`` of the blocked claim: far longer than any example runs."""
BLOCKED_CUSHION = 0.005
"""Seconds every task of the portal's loop must stay blocked before the blocked-claim rule
enqueues (``trio.testing.wait_all_tasks_blocked``)."""
PROGRESS_VALUES = (b"0.0", b"0.5", b"1.0", b'{"step":"\xc3\xbc","n":3}', b"{" + b" " * 4094 + b"}")
"""Progress values as the queue encodes them (JSON; the last one 4 KiB, the limit)."""
DELIVERY_TIMEOUT = 10.0
WAKE_TIMEOUT = 2.0


class _Blob(bytes):
    """Random bytes that print as the call that made them (counterexamples stay short)."""

    call: str

    def __repr__(self) -> str:
        return self.call


def random_blob(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes from ``seed`` (``random.Random(seed).randbytes``).

    The state machine draws large payloads, results and errors as a size and a seed, so
    they cost nothing to generate or shrink, and prints them as this call.
    """
    blob = _Blob(random.Random(seed).randbytes(size))
    blob.call = f"random_blob({size}, seed={seed})"
    return blob


_SMALL_BYTES = st.one_of(
    st.sampled_from([b"", b"\x00", b"\xff\xfe\x00binary", b'{"k": 1}', "ü".encode()]),
    st.binary(max_size=16),
)
_BYTES = st.one_of(
    _SMALL_BYTES,
    _SMALL_BYTES,
    st.builds(random_blob, st.sampled_from(BLOB_SIZES), st.integers(0, 2**16)),
)
"""Payloads, results and errors: empty, NUL, invalid UTF-8, JSON-looking text, and (one
draw in three) binary blobs of :data:`BLOB_SIZES`."""


@functools.cache
def _worker_records(worker_id: str) -> st.SearchStrategy[WorkerRecord]:
    """Registrations of ``worker_id`` as a worker sends them (``last_seen``/``expires_at``
    left at 0: the storage sets them)."""
    return st.builds(
        WorkerRecord,
        worker_id=st.just(worker_id),
        host=st.sampled_from(("", "h1", "hôst-2")),
        pid=st.sampled_from((0, 1, 4242)),
        started_at=st.sampled_from(STARTED_AT),
        concurrency=st.integers(0, 3),
        in_flight=st.integers(0, 3),
        jobs=st.lists(st.sampled_from(JOB_IDS), max_size=3, unique=True).map(tuple),
        kind=st.sampled_from(("worker", "reaper")),
        state=st.sampled_from(("running", "stopping")),
        counters=st.dictionaries(
            st.sampled_from(("completed", "failed", "retried")), st.integers(0, 1000), max_size=2
        ),
    )


_WORKER_FIELDS = tuple(
    field.name
    for field in attrs.fields(WorkerRecord)
    if field.name not in ("last_seen", "expires_at")
)

DEFAULT_SETTINGS = hypothesis.settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""The default run: well under a minute per backend on two cores."""

THOROUGH_SETTINGS = hypothesis.settings(
    max_examples=1000,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""A longer search for CI nights or after touching a backend's transitions."""


def _show(value: object) -> str:
    """``repr``, except that long bytes are summarised (size, head, digest)."""
    if isinstance(value, bytes) and len(value) > 48:
        digest = hashlib.sha256(value).hexdigest()[:12]
        return f"<{len(value)} bytes {bytes(value[:12])!r}... sha256:{digest}>"
    if isinstance(value, list | tuple) and any(isinstance(v, bytes) for v in value):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _expect(what: str, actual: object, expected: object) -> None:
    if actual != expected:
        raise AssertionError(
            f"{what}: the storage gave {_show(actual)}, the model expects {_show(expected)}"
        )


def _describe(event: EventRecord | ModelEvent | None) -> str:
    if event is None:
        return "None"
    parts = [f"{event.kind.value} {event.job_id!r} attempt={event.attempt}"]
    if event.result is not None:
        parts.append(f"result={_show(event.result)}")
    if isinstance(event, EventRecord) and event.result_ref:
        parts.append("result_ref=True")
    if event.error is not None:
        parts.append(f"error={_show(event.error)}")
    if isinstance(event, EventRecord) and event.missed:
        parts.append(f"missed={event.missed}")
    return "<" + " ".join(parts) + ">"


def _event_mismatch(got: EventRecord | None, expected: ModelEvent) -> str | None:
    """Why ``got`` is not the event the model predicts, or ``None`` if it is.

    The contract: kind, job id and attempt as predicted; ``missed == 0`` (a healthy
    storage loses nothing); a ``completed`` event carries the result bytes, except that a
    result longer than ``INLINE_RESULT_MAX`` bytes may be left out (``result=None``,
    ``result_ref=True``: receivers read it from the job); every other event carries no
    result; errors always travel in full (a reap's decodes to a ``Stalled`` error).
    """
    if got is None:
        return (
            "the watch said 're-read the job' (None): the storage lost track of its "
            "events, which a healthy storage never does"
        )
    if got.kind is EventKind.MISSED:
        return f"a 'missed' marker ({got.missed or 'an unknown number of'} events lost)"
    for field in ("kind", "job_id", "attempt"):
        if getattr(got, field) != getattr(expected, field):
            return f"{field} differs"
    if got.missed:
        return "missed is not 0"
    if expected.kind is EventKind.COMPLETED:
        result = expected.result
        assert result is not None  # the model always stores one
        if got.result_ref:
            if got.result is not None:
                return "result_ref=True with the result inline"
            if len(result) <= INLINE_RESULT_MAX:
                return (
                    f"result_ref=True for a result of {len(result)} bytes: only results "
                    f"over INLINE_RESULT_MAX ({INLINE_RESULT_MAX}) bytes may be left out"
                )
        elif got.result != result:
            return "result differs"
    elif expected.kind is EventKind.PROGRESS:
        assert expected.result is not None  # the model always stores one
        if got.result_ref:
            return (
                f"result_ref=True for a result of {len(expected.result)} bytes: a progress "
                "value (at most 4 KiB, carried as the result) always travels inline"
            )
        if got.result != expected.result:
            return "the progress value (carried as the result) differs"
    elif got.result is not None or got.result_ref:
        return f"a {got.kind.value} event carries no result"
    if expected.error is STALLED:
        decoded = decode_error(got.error)
        if decoded is None or decoded.type != "Stalled":
            return "the error is not a Stalled JobError"
    elif got.error != expected.error:
        return "error differs"
    return None


@attrs.define(eq=False)
class _Space:
    """One namespace of the example: its model, tokens, and recorded feeds."""

    label: str
    ns: str
    model: StorageModel = attrs.Factory(StorageModel)
    tokens: dict[str, str] = attrs.Factory(dict)
    """Every token handed out in this namespace -> its job id."""
    recorder: FeedRecorder = attrs.Factory(FeedRecorder)
    task: PortalTask | None = None
    events_checked: int = 0
    watches_checked: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(JOB_IDS, 0))

    def terminal_events(self, job_id: str) -> list[ModelEvent]:
        return [e for e in self.model.events if e.job_id == job_id and e.kind in TERMINAL_KINDS]


class StorageMachine(RuleBasedStateMachine):
    """Drives one storage (through :attr:`portal`) and the model side by side.

    Do not instantiate directly: :func:`make_storage_machine` makes a subclass bound to a
    portal.
    """

    portal: ClassVar[StoragePortal | None] = None
    delivery_timeout: ClassVar[float] = DELIVERY_TIMEOUT
    """Seconds the invariant waits for the events (and watch firings) the model predicts
    before it reports the missing ones."""
    wake_timeout: ClassVar[float] = WAKE_TIMEOUT
    """Seconds a claim blocked on an empty namespace may take to return the job an
    enqueue just added."""

    def __init__(self) -> None:
        super().__init__()
        if self.portal is None:
            raise TypeError("use make_storage_machine(portal) to bind the machine to a storage")
        self._portal: StoragePortal = self.portal
        self.storage: Storage = self._portal.storage
        example = f"sm-{uuid.uuid4().hex}"
        self.spaces = tuple(_Space(label, f"{example}-{label}") for label in SPACES)
        self.active = 0
        self.registry_used = False
        """Whether a rule has registered a worker in either namespace: from then on the
        invariant lists the workers of both after every step."""
        self.base = self._read_clock_base(f"{example}-clock")
        self._started = time.monotonic()
        try:
            for space in self.spaces:
                space.task = self._portal.start(
                    space.recorder.serve, self.storage, space.ns, JOB_IDS
                )
        except Exception:
            self._stop_feeds()
            raise

    # -- the active namespace ----------------------------------------------------------------

    @property
    def space(self) -> _Space:
        """The namespace the rules act on."""
        return self.spaces[self.active]

    @property
    def ns(self) -> str:
        return self.space.ns

    @property
    def model(self) -> StorageModel:
        return self.space.model

    @property
    def tokens(self) -> dict[str, str]:
        return self.space.tokens

    def _where(self, what: str, space: _Space | None = None) -> str:
        return f"[{(space or self.space).label}] {what}"

    # -- plumbing ---------------------------------------------------------------------------

    def _read_clock_base(self, probe_ns: str) -> float:
        """The storage-clock time of model time 0 (a probe job's ``created_at``)."""

        async def probe() -> float:
            await self.storage.enqueue(probe_ns, "probe", b"", max_attempts=1, result_ttl=100.0)
            record = await self.storage.get_status(probe_ns, "probe")
            await self.storage.cancel(probe_ns, "probe")
            if record is None:
                raise AssertionError("a job just enqueued has no record")
            return record.created_at

        return self._portal.run(probe)

    def _stop_feeds(self) -> None:
        tasks = [space.task for space in self.spaces if space.task is not None]
        for space in self.spaces:
            space.task = None
        for task in tasks:
            task.cancel()

    def teardown(self) -> None:
        """Close the example's event subscriptions and job watches."""
        self._stop_feeds()

    def _check_time(self, what: str, actual: float | None, expected: float | None) -> None:
        if expected is None or actual is None:
            _expect(what, actual, None if expected is None else f"model t={expected}")
            return
        offset = actual - self.base
        if abs(offset - expected) > TIME_TOLERANCE:
            raise AssertionError(
                f"{what}: the storage gave model time t={offset:.3f}, the model expects "
                f"t={expected} (tolerance {TIME_TOLERANCE} s)"
            )

    def _check_error(self, what: str, actual: bytes | None, expected: object) -> None:
        if expected is STALLED:
            decoded = decode_error(actual)
            _expect(f"{what} (type of the stored error)", decoded and decoded.type, "Stalled")
        else:
            _expect(what, actual, expected)

    def _check_record(
        self, space: _Space, job_id: str, got: JobRecord | None, job: ModelJob | None
    ) -> None:
        where = self._where(f"get_status({job_id!r})", space)
        if got is None or job is None:
            _expect(where, got, None if job is None else f"a {job.state} record")
            return
        _expect(f"{where}.job_id", got.job_id, job.job_id)
        _expect(f"{where}.state", got.state, job.state)
        _expect(f"{where}.attempts", got.attempts, job.attempts)
        _expect(f"{where}.max_attempts", got.max_attempts, job.max_attempts)
        _expect(f"{where}.result_ttl", got.result_ttl, job.result_ttl)
        _expect(f"{where}.result", got.result, job.result)
        self._check_error(f"{where}.error", got.error, job.error)
        _expect(f"{where}.worker_id", got.worker_id, job.worker_id)
        _expect(f"{where}.priority", got.priority, job.priority)
        _expect(f"{where}.progress", got.progress, job.progress)
        self._check_time(f"{where}.created_at", got.created_at, job.created_at)
        self._check_time(f"{where}.finished_at", got.finished_at, job.finished_at)
        self._check_time(f"{where}.expires_at", got.expires_at, job.expires_at)
        self._check_time(f"{where}.due_at", got.due_at, job.due_at)
        self._check_time(f"{where}.lease_until", got.lease_until, job.lease_until)

    def _check_claims(
        self, what: str, got: Sequence[Claim], expected: Sequence[ExpectedClaim]
    ) -> None:
        _expect(
            f"{what} job ids (priority order, then FIFO)",
            [c.job_id for c in got],
            [c.job_id for c in expected],
        )
        for claim, exp in zip(got, expected, strict=True):
            where = self._where(f"claim of {claim.job_id!r}")
            _expect(f"{where}.payload", claim.payload, exp.payload)
            _expect(f"{where}.attempt", claim.attempt, exp.attempt)
            _expect(f"{where}.max_attempts", claim.max_attempts, exp.max_attempts)
            _expect(f"{where}.result_ttl", claim.result_ttl, exp.result_ttl)
            self._check_time(f"{where}.created_at", claim.created_at, exp.created_at)
            self._check_time(f"{where}.lease_until", claim.lease_until, exp.lease_until)
            if not isinstance(claim.token, str) or not claim.token:
                raise AssertionError(f"{where}: token {claim.token!r} is not a non-empty str")
            if claim.token in self.tokens:
                raise AssertionError(f"{where}: token {claim.token!r} was handed out before")
            self.tokens[claim.token] = claim.job_id
            self.model.bind_token(claim.job_id, claim.token)

    def _owned_pairs(
        self, space: _Space | None = None, *, retryable: bool = False
    ) -> list[tuple[str, str]]:
        model = (space or self.space).model
        pairs = []
        for job in sorted(model.processing(), key=lambda job: job.job_id):
            if job.token is not None and (not retryable or job.attempts < job.max_attempts):
                pairs.append((job.job_id, job.token))
        return pairs

    def _stale_pairs(self, space: _Space | None = None) -> list[tuple[str, str]]:
        """Tokens that do not own their job here: those that lost it, a forged token for
        each processing job, and the owning tokens of the other namespace (which own
        nothing in this one)."""
        space = space or self.space
        model = space.model
        stale = [
            (job_id, token)
            for token, job_id in space.tokens.items()
            if not model.owns(job_id, token)
        ]
        stale += [(job.job_id, "forged-token") for job in model.processing()]
        for other in self.spaces:
            if other is not space:
                # A backend may reuse another namespace's token strings: skip equal ones.
                stale += [p for p in self._owned_pairs(other) if p[1] not in space.tokens]
        return sorted(stale)

    def _has_owned(self) -> bool:
        return bool(self._owned_pairs())

    def _has_retryable(self) -> bool:
        return bool(self._owned_pairs(retryable=True))

    def _has_stale(self) -> bool:
        return bool(self._stale_pairs())

    def _has_owned_or_stale(self) -> bool:
        # A named function, not a lambda: some Hypothesis releases re-read a lambda
        # precondition's source each time they check it (seconds per run).
        return self._has_owned() or self._has_stale()

    def _settled(self, what: str, got: SettleStatus, ok: bool) -> None:
        _expect(self._where(what), got, SettleStatus.OK if ok else SettleStatus.STALE)

    # -- namespaces -------------------------------------------------------------------------

    @rule(label=st.sampled_from(SPACES))
    def use_namespace(self, label: str) -> None:
        """The following rules act on namespace ``label`` (the invariants check both)."""
        self.active = SPACES.index(label)

    # -- producer rules ---------------------------------------------------------------------

    @initialize(
        jobs=st.lists(
            st.tuples(st.sampled_from(JOB_IDS), _BYTES, st.integers(1, 3), st.sampled_from(TTLS)),
            max_size=4,
        )
    )
    def enqueue_some(self, jobs: list[tuple[str, bytes, int, float]]) -> None:
        """Start most examples with work queued, so that claims find jobs early."""
        for job_id, payload, max_attempts, result_ttl in jobs:
            self.enqueue(job_id, payload, max_attempts, result_ttl, 0, None)

    @rule(
        job_id=st.sampled_from(JOB_IDS),
        payload=_BYTES,
        max_attempts=st.integers(1, 3),
        result_ttl=st.sampled_from(TTLS),
        priority=st.sampled_from(PRIORITIES),
        due=st.sampled_from(DUES),
    )
    def enqueue(
        self,
        job_id: str,
        payload: bytes,
        max_attempts: int,
        result_ttl: float,
        priority: int,
        due: tuple[str, float] | None,
    ) -> None:
        """Enqueue with a priority, ready at once or scheduled (by ``delay`` or by
        ``run_at`` on the storage's clock)."""
        delay = run_at = model_run_at = None
        if due is not None and due[0] == "delay":
            delay = due[1]
        elif due is not None:
            model_run_at = self.model.now + due[1]
            # Plus the real time elapsed, as a delay would have: the due times of two
            # enqueues then differ as their operations' times do (the model's tie rule).
            run_at = self.base + model_run_at + (time.monotonic() - self._started)
        expected = self.model.enqueue(
            job_id,
            payload,
            max_attempts=max_attempts,
            result_ttl=result_ttl,
            priority=priority,
            run_at=model_run_at,
            delay=delay,
        )
        got: EnqueueOutcome = self._portal.run(
            functools.partial(
                self.storage.enqueue,
                self.ns,
                job_id,
                payload,
                max_attempts=max_attempts,
                result_ttl=result_ttl,
                priority=priority,
                run_at=run_at,
                delay=delay,
            )
        )
        _check_enqueue_outcome(self._where(f"enqueue({job_id!r})"), got, expected)

    @rule(
        jobs=st.lists(
            st.tuples(
                st.sampled_from(JOB_IDS),
                _BYTES,
                st.integers(1, 3),
                st.sampled_from(PRIORITIES),
                st.sampled_from(DUES),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def enqueue_many(
        self, jobs: list[tuple[str, bytes, int, int, tuple[str, float] | None]]
    ) -> None:
        """Enqueue a batch in one step (ids repeat within it: the first wins)."""
        specs: list[EnqueueSpec] = []
        expected: list[ExpectedEnqueue] = []
        drift = time.monotonic() - self._started
        seq = self.model.next_seq()  # one operation: its due times tie by id bytes
        for job_id, payload, max_attempts, priority, due in jobs:
            delay = run_at = model_run_at = None
            if due is not None and due[0] == "delay":
                delay = due[1]
            elif due is not None:
                model_run_at = self.model.now + due[1]
                run_at = self.base + model_run_at + drift
            expected.append(
                self.model.enqueue(
                    job_id,
                    payload,
                    max_attempts=max_attempts,
                    result_ttl=TTLS[1],
                    priority=priority,
                    run_at=model_run_at,
                    delay=delay,
                    seq=seq,
                )
            )
            specs.append(
                EnqueueSpec(job_id, payload, max_attempts, TTLS[1], priority, run_at, delay)
            )
        got: list[EnqueueOutcome] = self._portal.run(self.storage.enqueue_many, self.ns, specs)
        _expect(self._where("enqueue_many(...) outcomes"), len(got), len(expected))
        for n, (outcome, exp) in enumerate(zip(got, expected, strict=True)):
            _check_enqueue_outcome(self._where(f"enqueue_many(...)[{n}]"), outcome, exp)

    @rule(job_id=st.sampled_from(JOB_IDS))
    def cancel(self, job_id: str) -> None:
        expected = self.model.cancel(job_id)
        got: CancelStatus = self._portal.run(self.storage.cancel, self.ns, job_id)
        _expect(self._where(f"cancel({job_id!r})"), got, expected)

    @rule(job_id=st.sampled_from(JOB_IDS), ttl=st.sampled_from(TTLS))
    def update_result_ttl(self, job_id: str, ttl: float) -> None:
        expected = self.model.update_result_ttl(job_id, ttl)
        got = self._portal.run(self.storage.update_result_ttl, self.ns, job_id, ttl)
        _expect(self._where(f"update_result_ttl({job_id!r}, {ttl})"), got, expected)

    # -- worker rules ------------------------------------------------------------------------

    @rule(
        worker_id=st.sampled_from(WORKERS),
        limit=st.integers(1, 3),
        lease=st.sampled_from(LEASES),
    )
    def claim(self, worker_id: str, limit: int, lease: float) -> None:
        expected = self.model.claim(worker_id, limit=limit, lease=lease)
        got: list[Claim] = self._portal.run(
            self.storage.claim, self.ns, worker_id, limit=limit, lease=lease, wait=0.0
        )
        self._check_claims(self._where(f"claim(limit={limit})"), got, expected)

    def _can_block(self) -> bool:
        """Nothing is claimable now, and an id is free to enqueue."""
        model = self.model
        return (
            not model.paused
            and not model.ready
            and not model.has_due_delayed()
            and any(model.live(job_id) is None for job_id in JOB_IDS)
        )

    @precondition(_can_block)
    @rule(
        data=st.data(),
        payload=_BYTES,
        max_attempts=st.integers(1, 3),
        result_ttl=st.sampled_from(TTLS),
        worker_id=st.sampled_from(WORKERS),
        lease=st.sampled_from(LEASES),
    )
    def claim_woken_by_enqueue(
        self,
        data: st.DataObject,
        payload: bytes,
        max_attempts: int,
        result_ttl: float,
        worker_id: str,
        lease: float,
    ) -> None:
        """A claim blocked on an empty namespace returns the job an enqueue then adds.

        The claim (``wait`` of an hour) runs in a task; once every task of the portal's
        loop is blocked (``trio.testing.wait_all_tasks_blocked``) the job is enqueued, and
        the claim must return it within :attr:`wake_timeout` seconds, as the model predicts.
        """
        free = [job_id for job_id in JOB_IDS if self.model.live(job_id) is None]
        job_id = data.draw(st.sampled_from(free), label="job_id")
        storage, ns, timeout = self.storage, self.ns, self.wake_timeout

        async def claim_then_enqueue() -> tuple[bool, EnqueueOutcome, list[Claim] | None, float]:
            claimed: list[list[Claim]] = []
            returned = trio.Event()

            async def claimer() -> None:
                claimed.append(
                    await storage.claim(
                        ns, worker_id, limit=1, lease=lease, wait=BLOCKED_CLAIM_WAIT
                    )
                )
                returned.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(claimer)
                with trio.move_on_after(timeout):
                    await trio.testing.wait_all_tasks_blocked(cushion=BLOCKED_CUSHION)
                early = returned.is_set()
                enqueued = await storage.enqueue(
                    ns, job_id, payload, max_attempts=max_attempts, result_ttl=result_ttl
                )
                started = trio.current_time()
                with trio.move_on_after(timeout):
                    await returned.wait()
                took = trio.current_time() - started
                nursery.cancel_scope.cancel()  # a claim still blocked gives up (takes nothing)
            return early, enqueued, claimed[0] if claimed else None, took

        early, enqueued, got, took = self._portal.run(claim_then_enqueue)
        what = self._where(f"claim(wait={BLOCKED_CLAIM_WAIT}) on an empty namespace")
        if early:
            raise AssertionError(
                f"{what} returned {_show(got)} before anything was enqueued: it must block"
            )
        expected_enqueue = self.model.enqueue(
            job_id, payload, max_attempts=max_attempts, result_ttl=result_ttl
        )
        _check_enqueue_outcome(self._where(f"enqueue({job_id!r})"), enqueued, expected_enqueue)
        if got is None:
            raise AssertionError(
                f"{what}: the enqueue of {job_id!r} did not wake it within {timeout} s"
            )
        expected = self.model.claim(worker_id, limit=1, lease=lease)
        self._check_claims(
            f"{what}, woken by enqueue({job_id!r}) after {took:.3f} s", got, expected
        )

    def _draw_owned(self, data: st.DataObject, *, retryable: bool = False) -> tuple[str, str]:
        pairs = self._owned_pairs(retryable=retryable)
        return data.draw(st.sampled_from(pairs), label="claim")

    @precondition(_has_owned)
    @rule(data=st.data(), result=_BYTES, ttl=st.sampled_from(TTLS))
    def complete(self, data: st.DataObject, result: bytes, ttl: float) -> None:
        """The owner of a claim completes it."""
        job_id, token = self._draw_owned(data)
        ok = self.model.complete(job_id, token, result, ttl=ttl)
        got = self._portal.run(self.storage.complete, self.ns, job_id, token, result, ttl=ttl)
        self._settled(f"complete({job_id!r}, ttl={ttl})", got, ok)

    @precondition(_has_owned_or_stale)
    @rule(data=st.data(), ttl=st.sampled_from(TTLS))
    def complete_many(self, data: st.DataObject, ttl: float) -> None:
        """Owners and stale tokens complete together in one call: each item is fenced on
        its own (the owners' jobs complete, the stale ones change nothing), in order."""
        candidates = self._owned_pairs() + self._stale_pairs()
        pairs = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, max_size=4), label="claims"
        )
        results = data.draw(st.lists(_BYTES, min_size=len(pairs), max_size=len(pairs)))
        items = [
            Completion(job_id, token, result, ttl)
            for (job_id, token), result in zip(pairs, results, strict=True)
        ]
        # A backend that stores the batch in one step reads its clock once: completions of
        # one call tie on their expiry and list by id. The default (one complete() per
        # item) reads it per item: they list in call order.
        atomic = type(self.storage).complete_many is not Storage.complete_many
        seq = self.model.next_seq() if atomic else None
        expected = [
            SettleStatus.OK
            if self.model.complete(c.job_id, c.token, c.result, ttl=ttl, seq=seq)
            else SettleStatus.STALE
            for c in items
        ]
        got = self._portal.run(self.storage.complete_many, self.ns, items)
        _expect(self._where(f"complete_many({pairs!r}, ttl={ttl}) statuses"), got, expected)

    @precondition(_has_owned)
    @rule(data=st.data(), error=_BYTES, ttl=st.sampled_from(TTLS))
    def fail(self, data: st.DataObject, error: bytes, ttl: float) -> None:
        """The owner of a claim fails it for good."""
        job_id, token = self._draw_owned(data)
        ok = self.model.fail(job_id, token, error, ttl=ttl)
        got = self._portal.run(self.storage.fail, self.ns, job_id, token, error, ttl=ttl)
        self._settled(f"fail({job_id!r}, ttl={ttl})", got, ok)

    @precondition(_has_retryable)
    @rule(data=st.data(), error=_BYTES, delay=st.sampled_from(RETRY_DELAYS))
    def retry(self, data: st.DataObject, error: bytes, delay: float) -> None:
        """The owner of a claim with attempts left retries it (as the worker does)."""
        job_id, token = self._draw_owned(data, retryable=True)
        ok = self.model.retry(job_id, token, error, delay=delay)
        got = self._portal.run(self.storage.retry, self.ns, job_id, token, error, delay=delay)
        self._settled(f"retry({job_id!r}, delay={delay})", got, ok)

    @precondition(_has_owned)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """The owner of a claim gives it back (graceful shutdown)."""
        job_id, token = self._draw_owned(data)
        ok = self.model.release(job_id, token)
        got = self._portal.run(self.storage.release, self.ns, job_id, token)
        self._settled(f"release({job_id!r})", got, ok)

    @precondition(_has_owned_or_stale)
    @rule(data=st.data(), lease=st.sampled_from(LEASES))
    def heartbeat(self, data: st.DataObject, lease: float) -> None:
        candidates = self._owned_pairs() + self._stale_pairs()
        pairs = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, max_size=3), label="claims"
        )
        expected = self.model.heartbeat(pairs, lease=lease)
        got = self._portal.run(self.storage.heartbeat, self.ns, pairs, lease=lease)
        _expect(self._where(f"heartbeat({pairs!r}) ownership"), got, expected)

    @precondition(_has_stale)
    @rule(
        data=st.data(),
        op=st.sampled_from(("complete", "fail", "retry", "release")),
        blob=_BYTES,
        delay=st.sampled_from(RETRY_DELAYS),
    )
    def settle_stale(self, data: st.DataObject, op: str, blob: bytes, delay: float) -> None:
        """A token that does not own its job must get ``stale`` and change nothing."""
        job_id, token = data.draw(st.sampled_from(self._stale_pairs()), label="stale claim")
        if self.model.owns(job_id, token):  # pragma: no cover - _stale_pairs excludes these
            raise AssertionError("the model lists an owning token as stale")
        storage, ns = self.storage, self.ns
        got: SettleStatus
        if op == "complete":
            got = self._portal.run(storage.complete, ns, job_id, token, blob, ttl=TTLS[0])
        elif op == "fail":
            got = self._portal.run(storage.fail, ns, job_id, token, blob, ttl=TTLS[0])
        elif op == "retry":
            got = self._portal.run(storage.retry, ns, job_id, token, blob, delay=delay)
        else:
            got = self._portal.run(storage.release, ns, job_id, token)
        self._settled(f"{op}({job_id!r}) with a stale token", got, ok=False)

    # -- recovery and leader-lock rules ------------------------------------------------------

    def _fence(self, lock: str, kind: str) -> Fence | None:
        held = self.model.locks.get(lock)
        owner = held.owner if held is not None and held.owner is not None else OWNERS[0]
        epoch = held.epoch if held is not None else 1
        if kind == "none":
            return None
        if kind == "holder":
            return Fence(lock, owner, epoch)
        if kind == "older-epoch":
            return Fence(lock, owner, epoch - 1)
        other = OWNERS[1] if owner == OWNERS[0] else OWNERS[0]
        return Fence(lock, other, epoch)

    @rule(
        lock=st.sampled_from(LOCKS),
        kind=st.sampled_from(("none", "none", "holder", "holder", "older-epoch", "other-owner")),
    )
    def reap(self, lock: str, kind: str) -> None:
        fence = self._fence(lock, kind)
        expected = self.model.reap(
            None if fence is None else (fence.lock, fence.owner, fence.epoch)
        )
        got = self._portal.run(self.storage.reap, self.ns, fence=fence)
        what = self._where(f"reap(fence={fence!r})")
        _expect(f"{what}.fenced", got.fenced, expected.fenced)
        _expect(
            f"{what}.stalled",
            got.stalled,
            tuple(ReapedJob(*stalled) for stalled in expected.stalled),
        )
        if not expected.fenced:
            self._check_time(f"{what}.next_deadline", got.next_deadline, expected.next_deadline)

    @rule(
        schedule_id=st.sampled_from(SCHEDULES),
        tick=st.sampled_from(TICKS),
        job_id=st.sampled_from(JOB_IDS),
        payload=_BYTES,
        priority=st.sampled_from(PRIORITIES),
        lock=st.sampled_from(LOCKS),
        kind=st.sampled_from(("holder", "holder", "holder", "older-epoch", "other-owner")),
    )
    def fire_schedule(
        self,
        schedule_id: str,
        tick: float,
        job_id: str,
        payload: bytes,
        priority: int,
        lock: str,
        kind: str,
    ) -> None:
        """Fire a tick of a schedule, fenced; then every cursor of the namespace agrees."""
        fence = self._fence(lock, kind)
        assert fence is not None
        expected = self.model.fire_schedule(
            schedule_id,
            tick,
            job_id,
            payload,
            max_attempts=2,
            result_ttl=TTLS[0],
            priority=priority,
            fence=(fence.lock, fence.owner, fence.epoch),
        )
        got: FireStatus = self._portal.run(
            functools.partial(
                self.storage.fire_schedule,
                self.ns,
                schedule_id,
                tick,
                job_id,
                payload,
                max_attempts=2,
                result_ttl=TTLS[0],
                priority=priority,
                fence=fence,
            )
        )
        what = self._where(f"fire_schedule({schedule_id!r}, {tick}, {job_id!r}, fence={fence!r})")
        _expect(what, got, expected)
        cursors = self._portal.run(self.storage.schedule_cursors, self.ns)
        _expect(self._where("schedule_cursors()"), cursors, self.model.cursors)

    # -- operating rules -------------------------------------------------------------------

    @rule(state=st.sampled_from(tuple(JobState)), limit=st.sampled_from((1, 2, 10)))
    def list_jobs(self, state: JobState, limit: int) -> None:
        """Page through the jobs of a state: every page at most ``limit`` long, all pages
        together the model's order, every record as ``get_status`` must give it."""

        async def pages() -> list[list[JobRecord]]:
            got: list[list[JobRecord]] = []
            cursor = None
            for _ in range(len(JOB_IDS) + 2):
                page = await self.storage.list_jobs(self.ns, state, limit=limit, cursor=cursor)
                got.append(page.records)
                cursor = page.cursor
                if cursor is None:
                    return got
            raise AssertionError(f"list_jobs({state}) never ended: {got!r}")

        what = self._where(f"list_jobs({state}, limit={limit})")
        got = self._portal.run(pages)
        for page in got:
            if len(page) > limit:
                raise AssertionError(f"{what}: a page of {len(page)} records")
        records = [record for page in got for record in page]
        _expect(f"{what} ids", [r.job_id for r in records], self.model.list_order(state))
        for record in records:
            self._check_record(self.space, record.job_id, record, self.model.live(record.job_id))

    @rule(job_id=st.sampled_from(JOB_IDS))
    def get_payload(self, job_id: str) -> None:
        """The payload of any job, byte for byte (``None`` when absent)."""
        job = self.model.live(job_id)
        got = self._portal.run(self.storage.get_payload, self.ns, job_id)
        _expect(self._where(f"get_payload({job_id!r})"), got, None if job is None else job.payload)

    @rule(job_id=st.sampled_from(JOB_IDS))
    def retry_job(self, job_id: str) -> None:
        """An operator's retry of a failed job (any state is tried)."""
        expected = self.model.retry_job(job_id)
        got = self._portal.run(self.storage.retry_job, self.ns, job_id)
        _expect(self._where(f"retry_job({job_id!r})"), got, expected)

    @rule(data=st.data())
    def delete_job(self, data: st.DataObject) -> None:
        """Delete any id, a running job's one time in two when there is one (it must be
        refused)."""
        running = [job.job_id for job in self.model.processing()]
        job_id = data.draw(st.sampled_from([*running, *running, *JOB_IDS]), label="job_id")
        expected = self.model.delete_job(job_id)
        got = self._portal.run(self.storage.delete_job, self.ns, job_id)
        _expect(self._where(f"delete_job({job_id!r})"), got, expected)

    @rule(limit=st.sampled_from((1, 2, 10)))
    def retry_failed(self, limit: int) -> None:
        expected = self.model.retry_failed(limit)
        got = self._portal.run(functools.partial(self.storage.retry_failed, self.ns, limit=limit))
        _expect(self._where(f"retry_failed(limit={limit})"), got, expected)

    @rule(
        state=st.sampled_from(
            (
                JobState.SCHEDULED,
                JobState.QUEUED,
                JobState.FAILING,
                JobState.COMPLETED,
                JobState.FAILED,
            )
        ),
        limit=st.sampled_from((1, 2, 10)),
    )
    def delete_jobs(self, state: JobState, limit: int) -> None:
        """Delete the first ``limit`` jobs of a state, in the state's order."""
        expected = self.model.delete_jobs(state, limit)
        got = self._portal.run(
            functools.partial(self.storage.delete_jobs, self.ns, state, limit=limit)
        )
        _expect(self._where(f"delete_jobs({state}, limit={limit})"), got, expected)

    @rule(paused=st.booleans())
    def set_paused(self, paused: bool) -> None:
        """Pause (claims take nothing, enqueues go on) or resume; ``is_paused`` agrees."""
        self.model.set_paused(paused)
        self._portal.run(self.storage.set_paused, self.ns, paused)
        got = self._portal.run(self.storage.is_paused, self.ns)
        _expect(self._where("is_paused()"), got, paused)

    def _epoch(self, lock: str, delta: int) -> int:
        held = self.model.locks.get(lock)
        return (held.epoch if held is not None else 1) + delta

    @rule(
        op=st.sampled_from(("acquire", "renew", "release")),
        lock=st.sampled_from(LOCKS),
        owner=st.sampled_from(OWNERS),
        epoch_delta=st.sampled_from((0, 0, -1, 1)),
        ttl=st.sampled_from(LOCK_TTLS),
        take_from_dead=st.booleans(),
    )
    def leader_lock(
        self, op: str, lock: str, owner: str, epoch_delta: int, ttl: float, take_from_dead: bool
    ) -> None:
        """acquire (``epoch_delta`` unused; ``take_from_dead`` as drawn), renew or release
        (``take_from_dead`` unused); epochs only grow, one holder."""
        storage, ns = self.storage, self.ns
        if op == "acquire":
            self._acquire(lock, owner, ttl, take_from_dead)
            return
        epoch = self._epoch(lock, epoch_delta)
        if op == "renew":
            expected = self.model.renew_lock(lock, owner, epoch, ttl=ttl)
            got = self._portal.run(storage.renew_lock, ns, lock, owner, epoch, ttl=ttl)
            _expect(self._where(f"renew_lock({lock!r}, {owner!r}, {epoch})"), got, expected)
            return
        maybe = self.model.release_lock(lock, owner, epoch)
        got = self._portal.run(storage.release_lock, ns, lock, owner, epoch)
        if maybe is not None:
            _expect(self._where(f"release_lock({lock!r}, {owner!r}, {epoch})"), got, maybe)

    def _acquire(self, lock: str, owner: str, ttl: float, take_from_dead: bool) -> None:
        expected = self.model.acquire_lock(lock, owner, ttl=ttl, take_from_dead=take_from_dead)
        got = self._portal.run(
            self.storage.acquire_lock, self.ns, lock, owner, ttl=ttl, take_from_dead=take_from_dead
        )
        what = f"acquire_lock({lock!r}, {owner!r}, take_from_dead={take_from_dead}) epoch"
        _expect(self._where(what), got, expected)

    def _held_locks(self) -> list[str]:
        return [lock for lock in LOCKS if self.model.lock_holder(lock) is not None]

    def _has_held_lock(self) -> bool:
        return bool(self._held_locks())

    @precondition(_has_held_lock)
    @rule(
        data=st.data(),
        ttl=st.sampled_from(LOCK_TTLS),
        take_from_dead=st.sampled_from((True, True, False)),
    )
    def take_over_lock(self, data: st.DataObject, ttl: float, take_from_dead: bool) -> None:
        """The other owner tries a lock that is held: it gets it (a new epoch) only with
        ``take_from_dead`` and only while the holder has no live registration."""
        lock = data.draw(st.sampled_from(self._held_locks()), label="lock")
        holder = self.model.lock_holder(lock)
        assert holder is not None  # _held_locks() says so
        owner = OWNERS[1] if holder.owner == OWNERS[0] else OWNERS[0]
        self._acquire(lock, owner, ttl, take_from_dead)

    @rule(lock=st.sampled_from(LOCKS))
    def lock_holder(self, lock: str) -> None:
        """Who holds ``lock`` now (owner, epoch, expiry), or nobody."""
        expected = self.model.lock_holder(lock)
        got = self._portal.run(self.storage.lock_holder, self.ns, lock)
        self._check_lock_holder(self._where(f"lock_holder({lock!r})"), got, expected)

    def _check_lock_holder(
        self, what: str, got: LockHolder | None, expected: ExpectedLockHolder | None
    ) -> None:
        if got is None or expected is None:
            _expect(what, got, expected)
            return
        _expect(f"{what}.owner", got.owner, expected.owner)
        _expect(f"{what}.epoch", got.epoch, expected.epoch)
        self._check_time(f"{what}.expires_at", got.expires_at, expected.expires_at)

    # -- worker registry ---------------------------------------------------------------------

    def _holders(self, space: _Space) -> list[str]:
        """The live holders of ``space``'s locks."""
        model = space.model
        return [h.owner for lock in LOCKS if (h := model.lock_holder(lock)) is not None]

    @rule(data=st.data(), ttl=st.sampled_from(REGISTRATION_TTLS))
    def register_worker(self, data: st.DataObject, ttl: float) -> None:
        """Register a worker, or refresh (replace) its registration: live until now + ttl.

        The id is one of :data:`REGISTRANTS`, a current lock holder more often (as a
        reaper registers), so that ``take_from_dead`` meets registered holders: a holder
        of this namespace's locks one draw in two, or of the other namespace's (whose
        registration here must not protect its lock there). Expiry comes from
        ``advance_clock``; the invariant lists the registry of both namespaces after every
        step from the first registration on.
        """
        here = self._holders(self.space)
        elsewhere = [
            h for space in self.spaces if space is not self.space for h in self._holders(space)
        ]
        worker_id = data.draw(
            st.sampled_from([*here, *here, *elsewhere, *REGISTRANTS]), label="worker_id"
        )
        record = data.draw(_worker_records(worker_id), label="record")
        self.registry_used = True
        self.model.register_worker(record, ttl=ttl)
        self._portal.run(self.storage.register_worker, self.ns, record, ttl=ttl)

    @rule(data=st.data())
    def unregister_worker(self, data: st.DataObject) -> None:
        """Withdraw a registration (usually a live one; any id of the pool otherwise)."""
        live = [record.worker_id for record in self.model.list_workers()]
        worker_id = data.draw(st.sampled_from([*live, *live, *REGISTRANTS]), label="worker_id")
        expected = self.model.unregister_worker(worker_id)
        got = self._portal.run(self.storage.unregister_worker, self.ns, worker_id)
        _expect(self._where(f"unregister_worker({worker_id!r})"), got, expected)

    def _check_workers(
        self,
        space: _Space,
        got: Sequence[WorkerRecord] | None,
        expected: Sequence[WorkerRecord],
    ) -> None:
        where = self._where("list_workers()", space)
        if not isinstance(got, list):
            _expect(f"{where} type", type(got).__name__, "list")
            return
        _expect(
            f"{where} ids (oldest started_at first, then by id)",
            [record.worker_id for record in got],
            [record.worker_id for record in expected],
        )
        for record, exp in zip(got, expected, strict=True):
            what = f"{where}[{record.worker_id!r}]"
            for name in _WORKER_FIELDS:
                _expect(f"{what}.{name}", getattr(record, name), getattr(exp, name))
            self._check_time(f"{what}.last_seen", record.last_seen, exp.last_seen)
            self._check_time(f"{what}.expires_at", record.expires_at, exp.expires_at)

    # -- time --------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from(ADVANCES))
    def advance_clock(self, seconds: float) -> None:
        """Leases pass, delayed retries fall due, TTLs run out (in both namespaces)."""
        for space in self.spaces:
            space.model.advance(seconds)
        self._portal.run(self.storage.advance_clock, seconds)

    # -- running-job control rules ---------------------------------------------------------

    @rule(
        data=st.data(),
        op=st.sampled_from(("progress", "progress", "force_cancel")),
        progress=st.sampled_from(PROGRESS_VALUES),
    )
    def running_control(self, data: st.DataObject, op: str, progress: bytes) -> None:
        """One rule (so that the others keep their share of the steps) for two operations:

        * ``force_cancel`` of a pool id: a processing job goes too, and its token is fenced
          from then on (the invariant's heartbeat and ``settle_stale`` check it);
        * ``set_progress`` with an owning or stale token: stored and emitted for the owner,
          ``stale`` and nothing written for any other token.
        """
        pairs = self._owned_pairs() + self._stale_pairs()
        if op == "force_cancel" or not pairs:
            # Running jobs are the point: drawn more often than the other ids.
            running = [job_id for job_id, _ in self._owned_pairs()]
            job_id = data.draw(st.sampled_from(running * 3 + list(JOB_IDS)), label="job id")
            owner = dict(self._owned_pairs()).get(job_id)
            expected = self.model.force_cancel(job_id)
            got = self._portal.run(self.storage.force_cancel, self.ns, job_id)
            _expect(self._where(f"force_cancel({job_id!r})"), got, expected)
            if owner is not None:
                # The cancelled attempt's late outcome is fenced (its worker may not have
                # heard of the cancel yet).
                late = self._portal.run(
                    self.storage.complete, self.ns, job_id, owner, b"late", ttl=TTLS[0]
                )
                self._settled(f"complete({job_id!r}) after its force_cancel", late, ok=False)
            return
        job_id, token = data.draw(st.sampled_from(pairs), label="claim")
        ok = self.model.set_progress(job_id, token, progress)
        got_status = self._portal.run(self.storage.set_progress, self.ns, job_id, token, progress)
        self._settled(f"set_progress({job_id!r}, {_show(progress)})", got_status, ok)
        for job in self.model.processing():
            # And a stale worker of every running job writes: rejected, nothing changes.
            got_status = self._portal.run(
                self.storage.set_progress, self.ns, job.job_id, "forged-token", b"0.25"
            )
            self._settled(f"set_progress({job.job_id!r}) with a stale token", got_status, False)

    # -- invariants ----------------------------------------------------------------------------

    def _check_feeds(self, space: _Space, feeds: FeedSnapshot) -> None:
        """Every event the model predicts arrived, complete and in order, and nothing else:
        on the subscription, and per id on its watch (terminal events only)."""
        if feeds.error is not None:
            raise AssertionError(
                self._where(f"an event feed failed: {feeds.error!r}", space)
            ) from feeds.error
        timeout = self.delivery_timeout
        streams: list[tuple[str, Sequence[EventRecord | None], list[ModelEvent], int]] = [
            ("subscribe_events", feeds.events, space.model.events, space.events_checked)
        ]
        for job_id in JOB_IDS:
            streams.append(
                (
                    f"watch_job({job_id!r})",
                    feeds.watched[job_id],
                    space.terminal_events(job_id),
                    space.watches_checked[job_id],
                )
            )
        for name, got, expected, checked in streams:
            for i in range(checked, max(len(got), len(expected))):
                where = self._where(f"{name}: event #{i}", space)
                if i >= len(got):
                    raise AssertionError(
                        f"{where}: {_describe(expected[i])} did not arrive within {timeout} s"
                    )
                if i >= len(expected):
                    raise AssertionError(
                        f"{where}: unexpected {_describe(got[i])}; the model expects no more"
                    )
                reason = _event_mismatch(got[i], expected[i])
                if reason is not None:
                    raise AssertionError(
                        f"{where}: the storage gave {_describe(got[i])}, the model expects "
                        f"{_describe(expected[i])} ({reason})"
                    )
        space.events_checked = len(space.model.events)
        for job_id in JOB_IDS:
            space.watches_checked[job_id] = len(space.terminal_events(job_id))

    @invariant()
    def storage_matches_model(self) -> None:
        """In both namespaces: every record, the stats, the fencing of every stale (or
        foreign) token, every event delivered and (once the example has registered a
        worker) the worker registry agree with the model.

        Checking every id of the pool each step proves no accepted job is ever lost (nor
        resurrected). ``stats`` is read-only, so calling it every step must not change what
        the next claim returns. Listing the registry each step catches a registration that
        outlives its TTL as soon as the clock passes it; before the first registration both
        registries are empty and the call is skipped (it is one call per namespace and step).
        """
        storage, timeout = self.storage, self.delivery_timeout
        registry = self.registry_used
        plans = [
            (
                space,
                self._stale_pairs(space),
                len(space.model.events),
                {job_id: len(space.terminal_events(job_id)) for job_id in JOB_IDS},
            )
            for space in self.spaces
        ]

        async def read(space: _Space, stale: list[tuple[str, str]], into: list[object]) -> None:
            # The reads (and the heartbeat of tokens that own nothing) change nothing, so
            # they run concurrently: a backend that batches calls (File) answers faster.
            ns = space.ns

            async def status(i: int, job_id: str) -> None:
                into[i] = await storage.get_status(ns, job_id)

            async def stats() -> None:
                into[len(JOB_IDS)] = await storage.stats(ns)

            async def heartbeat() -> None:
                into[len(JOB_IDS) + 1] = (
                    await storage.heartbeat(ns, stale, lease=LEASES[0]) if stale else []
                )

            async def workers() -> None:
                into[len(JOB_IDS) + 2] = await storage.list_workers(ns)

            async with trio.open_nursery() as nursery:
                for i, job_id in enumerate(JOB_IDS):
                    nursery.start_soon(status, i, job_id)
                nursery.start_soon(stats)
                nursery.start_soon(heartbeat)
                if registry:
                    nursery.start_soon(workers)

        async def snapshot() -> list[
            tuple[
                FeedSnapshot,
                list[JobRecord | None],
                StorageStats | None,
                list[bool],
                list[WorkerRecord] | None,
            ]
        ]:
            feeds = [
                await space.recorder.wait_for(events, watched, timeout)
                for space, _, events, watched in plans
            ]
            reads: list[list[object]] = [[None] * (len(JOB_IDS) + 3) for _ in plans]
            async with trio.open_nursery() as nursery:
                for (space, stale, _, _), into in zip(plans, reads, strict=True):
                    nursery.start_soon(read, space, stale, into)
            return [
                (
                    feed,
                    cast(list[JobRecord | None], into[: len(JOB_IDS)]),
                    cast(StorageStats | None, into[len(JOB_IDS)]),
                    cast(list[bool], into[len(JOB_IDS) + 1]),
                    cast(list[WorkerRecord] | None, into[len(JOB_IDS) + 2]),
                )
                for feed, into in zip(feeds, reads, strict=True)
            ]

        results = self._portal.run(snapshot)
        for (space, stale, _, _), (feeds, records, stats, owned, workers) in zip(
            plans, results, strict=True
        ):
            for job_id, record in zip(JOB_IDS, records, strict=True):
                self._check_record(space, job_id, record, space.model.live(job_id))
            if stats is not None:
                queued, delayed, processing, completed, failed, scheduled = space.model.stats()
                _expect(
                    self._where("stats()", space),
                    stats,
                    StorageStats(
                        queued=queued,
                        delayed=delayed,
                        processing=processing,
                        completed=completed,
                        failed=failed,
                        scheduled=scheduled,
                    ),
                )
            _expect(
                self._where(f"heartbeat of stale tokens {stale!r}", space),
                owned,
                [False] * len(stale),
            )
            if registry:
                self._check_workers(space, workers, space.model.list_workers())
            self._check_feeds(space, feeds)


def _check_enqueue_outcome(what: str, got: EnqueueOutcome, expected: ExpectedEnqueue) -> None:
    _expect(f"{what}.status", got.status, expected.status)
    if expected.status is EnqueueStatus.DUPLICATE:
        _expect(f"{what}.existing_state", got.existing_state, expected.existing_state)
    elif expected.status is EnqueueStatus.COMPLETED:
        _expect(f"{what}.result", got.result, expected.result)
        if got.existing_state not in (None, JobState.COMPLETED):
            _expect(f"{what}.existing_state", got.existing_state, JobState.COMPLETED)


_RULE_MARKER = "hypothesis_stateful_rule"
"""The attribute under which ``@rule`` keeps a rule on its method (Hypothesis 6)."""


def machine_rules() -> frozenset[str]:
    """The names of the :class:`StorageMachine`'s rules (the operations it draws from)."""
    return frozenset(
        name
        for name, member in inspect.getmembers(StorageMachine)
        if getattr(member, _RULE_MARKER, None) is not None
    )


def make_storage_machine(
    portal: StoragePortal,
    *,
    delivery_timeout: float = DELIVERY_TIMEOUT,
    wake_timeout: float = WAKE_TIMEOUT,
    rules: Iterable[str] | None = None,
) -> type[StorageMachine]:
    """A :class:`StorageMachine` subclass bound to ``portal``'s opened storage.

    Run it with ``hypothesis.stateful.run_state_machine_as_test`` while the portal is open,
    or use :func:`run_storage_machine`, which does both. ``delivery_timeout`` and
    ``wake_timeout`` set :attr:`StorageMachine.delivery_timeout` and
    :attr:`StorageMachine.wake_timeout`. ``rules`` (names from :func:`machine_rules`;
    default: all of them) focuses the machine on those operations: the others are never
    drawn, and every step is still checked against the model in full. An unknown name
    raises ``ValueError``.
    """
    namespace: dict[str, object] = {
        "portal": portal,
        "delivery_timeout": delivery_timeout,
        "wake_timeout": wake_timeout,
        "__module__": __name__,
    }
    if rules is not None:
        known = machine_rules()
        chosen = frozenset(rules)
        if unknown := sorted(chosen - known):
            raise ValueError(f"unknown machine rules {unknown}; the rules are {sorted(known)}")
        if not chosen:
            raise ValueError("rules=(): the machine needs at least one rule to draw from")
        # Hypothesis collects the rules from the class's members: the undecorated function
        # under the same name hides a rule, and other steps can still call it as a method.
        for name in known - chosen:
            namespace[name] = getattr(getattr(StorageMachine, name), _RULE_MARKER).function
    name = f"{type(portal.storage).__name__}Machine"
    return type(name, (StorageMachine,), namespace)


def run_storage_machine(
    make_storage: Callable[[], Storage],
    *,
    settings: hypothesis.settings | None = None,
    delivery_timeout: float = DELIVERY_TIMEOUT,
    wake_timeout: float = WAKE_TIMEOUT,
    rules: Iterable[str] | None = None,
) -> None:
    """Check the storage ``make_storage()`` returns against the model; raise on a mismatch.

    Opens one storage in a background trio loop (:func:`open_storage_portal`), runs the
    machine for ``settings`` (default :data:`DEFAULT_SETTINGS`), then closes it. Raises the
    failing step's ``AssertionError`` (or the storage's exception) after Hypothesis has
    shrunk and printed the counterexample.

    ``delivery_timeout`` (seconds; default 10) bounds the wait for each step's events and
    watch firings on backends that deliver them asynchronously; ``wake_timeout`` (default
    2) is how long a blocked claim may take to return a job just enqueued. Both only cost
    time when something is missing. ``rules`` focuses the machine on some operations (see
    :func:`make_storage_machine`).
    """
    # Typed locally: some Hypothesis releases ship this function without annotations.
    run: Callable[..., None] = run_state_machine_as_test
    with open_storage_portal(make_storage) as portal:
        run(
            make_storage_machine(
                portal, delivery_timeout=delivery_timeout, wake_timeout=wake_timeout, rules=rules
            ),
            settings=settings if settings is not None else DEFAULT_SETTINGS,
        )
