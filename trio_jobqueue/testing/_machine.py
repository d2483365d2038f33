"""A Hypothesis state machine that checks any ``Storage`` against :mod:`._model`.

Every rule performs one storage call through a :class:`~._portal.StoragePortal`, performs the
same operation on the independent :class:`~._model.StorageModel` and compares the return
values; after every step the invariants compare every job record, the stats and the fencing
of every token handed out so far. One opened storage serves a whole run: each example works
in a namespace of its own (``sm-<uuid>``), so nothing needs flushing between examples.

Durations are multiples of 100 s and the clock moves through ``Storage.advance_clock`` only,
so a backend on a real clock (which drifts by milliseconds between steps) is predicted
exactly; see the module docstring of :mod:`._model` for the tie rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import ClassVar

import hypothesis
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
from .._types import CancelStatus, EnqueueStatus, JobState
from ..storage import (
    Claim,
    EnqueueOutcome,
    Fence,
    JobRecord,
    ReapedJob,
    SettleStatus,
    Storage,
    StorageStats,
)
from ._model import STALLED, ModelJob, StorageModel
from ._portal import StoragePortal, open_storage_portal

__all__ = [
    "DEFAULT_SETTINGS",
    "THOROUGH_SETTINGS",
    "StorageMachine",
    "make_storage_machine",
    "run_storage_machine",
]

JOB_IDS = ("a:b", "x/y", "ünï-🙂", "job 4")
"""The id pool: small so that ids collide (dedup), with ``:``, ``/`` and non-ASCII text."""
WORKERS = ("w1", "w:2")
LOCKS = ("leader", "lock:b")
OWNERS = ("reaper-1", "reaper:2")
TTLS = (100.0, 500.0, 1000.0)
LEASES = (100.0, 300.0)
RETRY_DELAYS = (0.0, 100.0, 200.0)
LOCK_TTLS = (200.0, 400.0)
ADVANCES = (100.0, 200.0, 500.0, 1000.0)
TIME_TOLERANCE = 30.0
"""Seconds a backend timestamp may differ from the model's prediction: real time drifts
by milliseconds per step, and model deadlines differ by at least 100 s."""

_BYTES = st.one_of(
    st.sampled_from([b"", b"\x00", b"\xff\xfe\x00binary", b'{"k": 1}', "ü".encode()]),
    st.binary(max_size=16),
)
"""Payloads, results and errors: empty, NUL, invalid UTF-8, JSON-looking text."""

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


def _expect(what: str, actual: object, expected: object) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: the storage gave {actual!r}, the model expects {expected!r}")


class StorageMachine(RuleBasedStateMachine):
    """Drives one storage (through :attr:`portal`) and the model side by side.

    Do not instantiate directly: :func:`make_storage_machine` makes a subclass bound to a
    portal.
    """

    portal: ClassVar[StoragePortal | None] = None

    def __init__(self) -> None:
        super().__init__()
        if self.portal is None:
            raise TypeError("use make_storage_machine(portal) to bind the machine to a storage")
        self._portal: StoragePortal = self.portal
        self.storage: Storage = self._portal.storage
        self.ns = f"sm-{uuid.uuid4().hex}"
        self.model = StorageModel()
        self.tokens: dict[str, str] = {}
        """Every token handed out in this example -> its job id."""
        self.base = self._read_clock_base()

    # -- plumbing ---------------------------------------------------------------------------

    def _read_clock_base(self) -> float:
        """The storage-clock time of model time 0 (a probe job's ``created_at``)."""
        probe_ns = f"{self.ns}-clock"

        async def probe() -> float:
            await self.storage.enqueue(probe_ns, "probe", b"", max_attempts=1, result_ttl=100.0)
            record = await self.storage.get_status(probe_ns, "probe")
            await self.storage.cancel(probe_ns, "probe")
            if record is None:
                raise AssertionError("a job just enqueued has no record")
            return record.created_at

        return self._portal.run(probe)

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

    def _check_record(self, job_id: str, got: JobRecord | None, job: ModelJob | None) -> None:
        where = f"get_status({job_id!r})"
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
        self._check_time(f"{where}.created_at", got.created_at, job.created_at)
        self._check_time(f"{where}.finished_at", got.finished_at, job.finished_at)
        self._check_time(f"{where}.expires_at", got.expires_at, job.expires_at)
        self._check_time(f"{where}.due_at", got.due_at, job.due_at)
        self._check_time(f"{where}.lease_until", got.lease_until, job.lease_until)

    def _owned_pairs(self, *, retryable: bool = False) -> list[tuple[str, str]]:
        pairs = []
        for job in sorted(self.model.processing(), key=lambda job: job.job_id):
            if job.token is not None and (not retryable or job.attempts < job.max_attempts):
                pairs.append((job.job_id, job.token))
        return pairs

    def _stale_pairs(self) -> list[tuple[str, str]]:
        """Tokens that no longer own their job, plus a forged token for each processing job."""
        stale = [
            (job_id, token)
            for token, job_id in self.tokens.items()
            if not self.model.owns(job_id, token)
        ]
        stale += [(job.job_id, "forged-token") for job in self.model.processing()]
        return sorted(stale)

    def _has_owned(self) -> bool:
        return bool(self._owned_pairs())

    def _has_retryable(self) -> bool:
        return bool(self._owned_pairs(retryable=True))

    def _has_stale(self) -> bool:
        return bool(self._stale_pairs())

    def _settled(self, what: str, got: SettleStatus, ok: bool) -> None:
        _expect(what, got, SettleStatus.OK if ok else SettleStatus.STALE)

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
            self.enqueue(job_id, payload, max_attempts, result_ttl)

    @rule(
        job_id=st.sampled_from(JOB_IDS),
        payload=_BYTES,
        max_attempts=st.integers(1, 3),
        result_ttl=st.sampled_from(TTLS),
    )
    def enqueue(self, job_id: str, payload: bytes, max_attempts: int, result_ttl: float) -> None:
        expected = self.model.enqueue(
            job_id, payload, max_attempts=max_attempts, result_ttl=result_ttl
        )
        got: EnqueueOutcome = self._portal.run(
            self.storage.enqueue,
            self.ns,
            job_id,
            payload,
            max_attempts=max_attempts,
            result_ttl=result_ttl,
        )
        what = f"enqueue({job_id!r})"
        _expect(f"{what}.status", got.status, expected.status)
        if expected.status is EnqueueStatus.DUPLICATE:
            _expect(f"{what}.existing_state", got.existing_state, expected.existing_state)
        elif expected.status is EnqueueStatus.COMPLETED:
            _expect(f"{what}.result", got.result, expected.result)
            if got.existing_state not in (None, JobState.COMPLETED):
                _expect(f"{what}.existing_state", got.existing_state, JobState.COMPLETED)

    @rule(job_id=st.sampled_from(JOB_IDS))
    def cancel(self, job_id: str) -> None:
        expected = self.model.cancel(job_id)
        got: CancelStatus = self._portal.run(self.storage.cancel, self.ns, job_id)
        _expect(f"cancel({job_id!r})", got, expected)

    @rule(job_id=st.sampled_from(JOB_IDS), ttl=st.sampled_from(TTLS))
    def update_result_ttl(self, job_id: str, ttl: float) -> None:
        expected = self.model.update_result_ttl(job_id, ttl)
        got = self._portal.run(self.storage.update_result_ttl, self.ns, job_id, ttl)
        _expect(f"update_result_ttl({job_id!r}, {ttl})", got, expected)

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
        _expect(
            f"claim(limit={limit}) job ids (FIFO order)",
            [c.job_id for c in got],
            [c.job_id for c in expected],
        )
        for claim, exp in zip(got, expected, strict=True):
            what = f"claim of {claim.job_id!r}"
            _expect(f"{what}.payload", claim.payload, exp.payload)
            _expect(f"{what}.attempt", claim.attempt, exp.attempt)
            _expect(f"{what}.max_attempts", claim.max_attempts, exp.max_attempts)
            _expect(f"{what}.result_ttl", claim.result_ttl, exp.result_ttl)
            self._check_time(f"{what}.created_at", claim.created_at, exp.created_at)
            self._check_time(f"{what}.lease_until", claim.lease_until, exp.lease_until)
            if not isinstance(claim.token, str) or not claim.token:
                raise AssertionError(f"{what}: token {claim.token!r} is not a non-empty str")
            if claim.token in self.tokens:
                raise AssertionError(f"{what}: token {claim.token!r} was handed out before")
            self.tokens[claim.token] = claim.job_id
            self.model.bind_token(claim.job_id, claim.token)

    @precondition(_has_owned)
    @rule(
        data=st.data(),
        blob=_BYTES,
        ttl=st.sampled_from(TTLS),
        delay=st.sampled_from(RETRY_DELAYS),
    )
    def settle(self, data: st.DataObject, blob: bytes, ttl: float, delay: float) -> None:
        """The owner of a claim completes, fails, retries (attempts left) or releases it.

        ``blob`` is the result or the error; ``ttl`` applies to complete/fail, ``delay`` to
        retry.
        """
        # retry twice: it leads to the rarer states (failing, delayed, promotion)
        ops = ["complete", "fail", "release"]
        if self._has_retryable():
            ops += ["retry", "retry"]
        op = data.draw(st.sampled_from(ops), label="op")
        pairs = self._owned_pairs(retryable=op == "retry")
        job_id, token = data.draw(st.sampled_from(pairs), label="claim")
        storage, ns, model = self.storage, self.ns, self.model
        got: SettleStatus
        if op == "complete":
            ok = model.complete(job_id, token, blob, ttl=ttl)
            got = self._portal.run(storage.complete, ns, job_id, token, blob, ttl=ttl)
            what = f"complete({job_id!r}, ttl={ttl})"
        elif op == "fail":
            ok = model.fail(job_id, token, blob, ttl=ttl)
            got = self._portal.run(storage.fail, ns, job_id, token, blob, ttl=ttl)
            what = f"fail({job_id!r}, ttl={ttl})"
        elif op == "retry":
            ok = model.retry(job_id, token, blob, delay=delay)
            got = self._portal.run(storage.retry, ns, job_id, token, blob, delay=delay)
            what = f"retry({job_id!r}, delay={delay})"
        else:
            ok = model.release(job_id, token)
            got = self._portal.run(storage.release, ns, job_id, token)
            what = f"release({job_id!r})"
        self._settled(what, got, ok)

    @precondition(lambda self: self._has_owned() or self._has_stale())
    @rule(data=st.data(), lease=st.sampled_from(LEASES))
    def heartbeat(self, data: st.DataObject, lease: float) -> None:
        candidates = self._owned_pairs() + self._stale_pairs()
        pairs = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, max_size=3), label="claims"
        )
        expected = self.model.heartbeat(pairs, lease=lease)
        got = self._portal.run(self.storage.heartbeat, self.ns, pairs, lease=lease)
        _expect(f"heartbeat({pairs!r}) ownership", got, expected)

    @precondition(_has_stale)
    @rule(
        data=st.data(),
        op=st.sampled_from(("complete", "fail", "retry", "release")),
        blob=_BYTES,
        delay=st.sampled_from(RETRY_DELAYS),
    )
    def settle_stale(self, data: st.DataObject, op: str, blob: bytes, delay: float) -> None:
        """A token that lost its job must get ``stale`` and change nothing."""
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
        what = f"reap(fence={fence!r})"
        _expect(f"{what}.fenced", got.fenced, expected.fenced)
        _expect(
            f"{what}.stalled",
            got.stalled,
            tuple(ReapedJob(*stalled) for stalled in expected.stalled),
        )
        if not expected.fenced:
            self._check_time(f"{what}.next_deadline", got.next_deadline, expected.next_deadline)

    def _epoch(self, lock: str, delta: int) -> int:
        held = self.model.locks.get(lock)
        return (held.epoch if held is not None else 1) + delta

    @rule(
        op=st.sampled_from(("acquire", "renew", "release")),
        lock=st.sampled_from(LOCKS),
        owner=st.sampled_from(OWNERS),
        epoch_delta=st.sampled_from((0, 0, -1, 1)),
        ttl=st.sampled_from(LOCK_TTLS),
    )
    def leader_lock(self, op: str, lock: str, owner: str, epoch_delta: int, ttl: float) -> None:
        """acquire (``epoch_delta`` unused), renew or release; epochs only grow, one holder."""
        storage, ns = self.storage, self.ns
        if op == "acquire":
            expected_epoch = self.model.acquire_lock(lock, owner, ttl=ttl)
            got_epoch = self._portal.run(storage.acquire_lock, ns, lock, owner, ttl=ttl)
            _expect(f"acquire_lock({lock!r}, {owner!r}) epoch", got_epoch, expected_epoch)
            return
        epoch = self._epoch(lock, epoch_delta)
        if op == "renew":
            expected = self.model.renew_lock(lock, owner, epoch, ttl=ttl)
            got = self._portal.run(storage.renew_lock, ns, lock, owner, epoch, ttl=ttl)
            _expect(f"renew_lock({lock!r}, {owner!r}, {epoch})", got, expected)
            return
        maybe = self.model.release_lock(lock, owner, epoch)
        got = self._portal.run(storage.release_lock, ns, lock, owner, epoch)
        if maybe is not None:
            _expect(f"release_lock({lock!r}, {owner!r}, {epoch})", got, maybe)

    # -- time --------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from(ADVANCES))
    def advance_clock(self, seconds: float) -> None:
        """Leases pass, delayed retries fall due, TTLs run out."""
        self.model.advance(seconds)
        self._portal.run(self.storage.advance_clock, seconds)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def storage_matches_model(self) -> None:
        """Every record, the stats, and the fencing of every stale token agree with the model.

        Checking every id of the pool each step proves no accepted job is ever lost (nor
        resurrected). ``stats`` is read-only, so calling it every step must not change what
        the next claim returns.
        """
        stale = self._stale_pairs()
        storage, ns = self.storage, self.ns

        async def snapshot() -> tuple[list[JobRecord | None], StorageStats | None, list[bool]]:
            records = [await storage.get_status(ns, job_id) for job_id in JOB_IDS]
            stats: StorageStats | None = await storage.stats(ns)
            owned = await storage.heartbeat(ns, stale, lease=LEASES[0]) if stale else []
            return records, stats, owned

        records, stats, owned = self._portal.run(snapshot)
        for job_id, record in zip(JOB_IDS, records, strict=True):
            self._check_record(job_id, record, self.model.live(job_id))
        if stats is not None:
            queued, delayed, processing, completed, failed = self.model.stats()
            _expect(
                "stats()",
                stats,
                StorageStats(
                    queued=queued,
                    delayed=delayed,
                    processing=processing,
                    completed=completed,
                    failed=failed,
                ),
            )
        _expect(f"heartbeat of stale tokens {stale!r}", owned, [False] * len(stale))


def make_storage_machine(portal: StoragePortal) -> type[StorageMachine]:
    """A :class:`StorageMachine` subclass bound to ``portal``'s opened storage.

    Run it with ``hypothesis.stateful.run_state_machine_as_test`` while the portal is open,
    or use :func:`run_storage_machine`, which does both.
    """
    name = f"{type(portal.storage).__name__}Machine"
    return type(name, (StorageMachine,), {"portal": portal, "__module__": __name__})


def run_storage_machine(
    make_storage: Callable[[], Storage], *, settings: hypothesis.settings | None = None
) -> None:
    """Check the storage ``make_storage()`` returns against the model; raise on a mismatch.

    Opens one storage in a background trio loop (:func:`open_storage_portal`), runs the
    machine for ``settings`` (default :data:`DEFAULT_SETTINGS`), then closes it. Raises the
    failing step's ``AssertionError`` (or the storage's exception) after Hypothesis has
    shrunk and printed the counterexample.
    """
    # Typed locally: some Hypothesis releases ship this function without annotations.
    run: Callable[..., None] = run_state_machine_as_test
    with open_storage_portal(make_storage) as portal:
        run(
            make_storage_machine(portal),
            settings=settings if settings is not None else DEFAULT_SETTINGS,
        )
