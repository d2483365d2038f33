"""The job lifecycle as pure, synchronous transitions over one namespace (no I/O).

A transition is a plain function of a :class:`Tx` (the namespace's :class:`NsState` plus
the current time): it changes the state and records, in the ``tx``, the full new version
of every record it touched (redo records), the lock changes and the events it emits.

Both in-process backends run on these functions. ``MemoryStorage`` applies them to state
held in the object and delivers the events directly; ``FileStorage`` keeps a mirror per
process, rebuilt from the snapshot plus the journal and brought up to date at the start of
every locked transaction, and appends exactly what the ``tx`` recorded as one journal
entry, so replaying it on any process reproduces the same state.
"""

from __future__ import annotations

import base64
import heapq
import math
import secrets
from collections.abc import Sequence
from typing import Any

import attrs

from .._types import CancelStatus, EnqueueStatus, EventKind, JobState, UpdateTtlStatus
from ._base import (
    Claim,
    EnqueueOutcome,
    EventRecord,
    Fence,
    JobRecord,
    ReapedJob,
    ReapResult,
    SettleStatus,
    StorageStats,
)
from ._common import STALLED_ERROR, lock_expired
from ._core import INLINE_RESULT_MAX

FORMAT_VERSION = 1


class CorruptRecord(ValueError):
    """A snapshot or journal entry that does not decode."""


def _b(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb(text: Any) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise CorruptRecord(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _key(job_id: str) -> bytes:
    return job_id.encode("utf-8")


@attrs.define(eq=False)
class Rec:
    job_id: str
    payload: bytes
    state: JobState
    max_attempts: int
    result_ttl: float
    created_at: float
    attempts: int = 0
    result: bytes | None = None
    error: bytes | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    due_at: float | None = None
    worker_id: str | None = None
    token: str | None = None
    lease_until: float | None = None
    ready_seq: int | None = None
    delay_seq: int | None = None

    def snapshot(self) -> JobRecord:
        return JobRecord(
            job_id=self.job_id,
            state=self.state,
            created_at=self.created_at,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            result_ttl=self.result_ttl,
            result=self.result,
            error=self.error,
            finished_at=self.finished_at,
            expires_at=self.expires_at,
            due_at=self.due_at,
            worker_id=self.worker_id,
            lease_until=self.lease_until,
        )

    def encode(self) -> dict[str, Any]:
        return {
            "i": self.job_id,
            "p": _b(self.payload),
            "s": self.state.value,
            "m": self.max_attempts,
            "t": self.result_ttl,
            "c": self.created_at,
            "a": self.attempts,
            "r": _b(self.result),
            "e": _b(self.error),
            "f": self.finished_at,
            "x": self.expires_at,
            "d": self.due_at,
            "w": self.worker_id,
            "k": self.token,
            "l": self.lease_until,
            "q": self.ready_seq,
            "y": self.delay_seq,
        }

    @classmethod
    def decode(cls, raw: Any) -> Rec:
        try:
            payload = _unb(raw["p"])
            if not isinstance(raw["i"], str) or payload is None:
                raise CorruptRecord("record without id or payload")
            return cls(
                job_id=raw["i"],
                payload=payload,
                state=JobState(raw["s"]),
                max_attempts=int(raw["m"]),
                result_ttl=float(raw["t"]),
                created_at=float(raw["c"]),
                attempts=int(raw["a"]),
                result=_unb(raw["r"]),
                error=_unb(raw["e"]),
                finished_at=_opt_float(raw["f"]),
                expires_at=_opt_float(raw["x"]),
                due_at=_opt_float(raw["d"]),
                worker_id=_opt_str(raw["w"]),
                token=_opt_str(raw["k"]),
                lease_until=_opt_float(raw["l"]),
                ready_seq=_opt_int(raw["q"]),
                delay_seq=_opt_int(raw["y"]),
            )
        except CorruptRecord:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"undecodable job record: {exc!r}") from exc


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CorruptRecord(f"expected an int, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CorruptRecord(f"expected a str, got {value!r}")
    return value


@attrs.define(eq=False)
class Lock:
    owner: str | None = None
    epoch: int = 0
    expires_at: float = -math.inf

    def encode(self) -> list[Any]:
        return [self.owner, self.epoch, None if math.isinf(self.expires_at) else self.expires_at]

    @classmethod
    def decode(cls, raw: Any) -> Lock:
        try:
            owner, epoch, expires = raw
            return cls(
                _opt_str(owner), int(epoch), -math.inf if expires is None else float(expires)
            )
        except (TypeError, ValueError) as exc:
            raise CorruptRecord(f"undecodable lock record: {exc!r}") from exc


def encode_event(event: EventRecord) -> list[Any]:
    """An event as journalled; a large result stays only in the job record (the event
    says it exists: ``result_ref``)."""
    result = event.result
    if result is not None and len(result) > INLINE_RESULT_MAX:
        return [event.kind.value, event.job_id, event.attempt, None, _b(event.error), 1]
    return [event.kind.value, event.job_id, event.attempt, _b(result), _b(event.error)]


def decode_event(raw: Any) -> EventRecord:
    try:
        kind, job_id, attempt, result, error, *flags = raw
        if not isinstance(job_id, str):
            raise CorruptRecord("event without job id")
        return EventRecord(
            EventKind(kind),
            job_id,
            int(attempt),
            _unb(result),
            _unb(error),
            result_ref=bool(flags and flags[0]),
        )
    except CorruptRecord:
        raise
    except (TypeError, ValueError) as exc:
        raise CorruptRecord(f"undecodable event: {exc!r}") from exc


def entry_events(raw: Any) -> list[EventRecord]:
    """Only the events of a journal entry (what a tailer needs)."""
    if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
        raise CorruptRecord("journal entry of an unknown format version")
    events = raw.get("ev", ())
    if not isinstance(events, list):
        raise CorruptRecord("journal entry with malformed events")
    return [decode_event(item) for item in events]


@attrs.define(eq=False)
class NsState:
    """All records of one namespace plus lazily-deleted indexes (as in MemoryStorage)."""

    jobs: dict[str, Rec] = attrs.Factory(dict)
    locks: dict[str, Lock] = attrs.Factory(dict)
    tail_seq: int = 0
    """Last sequence number given to a tail insertion (grows)."""
    head_seq: int = 0
    """Last sequence number given to a head insertion (shrinks, always below any tail)."""
    ready: list[tuple[int, str]] = attrs.Factory(list)
    delayed: list[tuple[float, bytes, int, str]] = attrs.Factory(list)
    leases: list[tuple[float, bytes, str, str]] = attrs.Factory(list)
    expiries: list[tuple[float, bytes, str]] = attrs.Factory(list)

    # -- persistence ----------------------------------------------------------------------

    def index(self, rec: Rec) -> None:
        """Push ``rec``'s current positions into the indexes (stale ones are skipped later)."""
        if rec.ready_seq is not None:
            heapq.heappush(self.ready, (rec.ready_seq, rec.job_id))
        if rec.delay_seq is not None and rec.due_at is not None:
            heapq.heappush(self.delayed, (rec.due_at, _key(rec.job_id), rec.delay_seq, rec.job_id))
        if (
            rec.state is JobState.PROCESSING
            and rec.token is not None
            and rec.lease_until is not None
        ):
            heapq.heappush(self.leases, (rec.lease_until, _key(rec.job_id), rec.token, rec.job_id))
        if rec.expires_at is not None:
            heapq.heappush(self.expiries, (rec.expires_at, _key(rec.job_id), rec.job_id))

    def encode(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "ts": self.tail_seq,
            "hs": self.head_seq,
            "jobs": [rec.encode() for rec in self.jobs.values()],
            "locks": {name: lock.encode() for name, lock in self.locks.items()},
        }

    @classmethod
    def decode(cls, raw: Any) -> NsState:
        if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
            raise CorruptRecord("snapshot of an unknown format version")
        state = cls()
        try:
            state.tail_seq = int(raw["ts"])
            state.head_seq = int(raw["hs"])
            for item in raw["jobs"]:
                rec = Rec.decode(item)
                state.jobs[rec.job_id] = rec
                state.index(rec)
            for name, lock in raw["locks"].items():
                state.locks[str(name)] = Lock.decode(lock)
        except CorruptRecord:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecord(f"undecodable snapshot: {exc!r}") from exc
        return state

    def apply_entry(self, raw: Any) -> list[EventRecord]:
        """Replay one journal entry (written by :meth:`Tx.entry`); return its events.

        Decodes everything before changing anything, so a corrupt entry leaves the
        state untouched.
        """
        if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
            raise CorruptRecord("journal entry of an unknown format version")
        try:
            puts = [Rec.decode(item) for item in raw.get("p", ())]
            dels = [str(job_id) for job_id in raw.get("d", ())]
            locks = {str(k): Lock.decode(v) for k, v in raw.get("L", {}).items()}
            events = [decode_event(item) for item in raw.get("ev", ())]
            tail_seq = int(raw["ts"])
            head_seq = int(raw["hs"])
        except CorruptRecord:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecord(f"undecodable journal entry: {exc!r}") from exc
        for job_id in dels:
            self.jobs.pop(job_id, None)
        for rec in puts:
            self.jobs[rec.job_id] = rec
            self.index(rec)
        self.locks.update(locks)
        self.tail_seq = tail_seq
        self.head_seq = head_seq
        return events


@attrs.define(eq=False)
class Tx:
    """What one transition changed: replayable redo records plus its events."""

    state: NsState
    now: float
    touched: dict[str, Rec | None] = attrs.Factory(dict)
    locks: set[str] = attrs.Factory(set)
    events: list[EventRecord] = attrs.Factory(list)
    durable: bool = False
    """False while the only changes are forgetting expired records (no fsync needed)."""

    def put(self, rec: Rec) -> None:
        self.state.jobs[rec.job_id] = rec
        self.state.index(rec)
        self.touched[rec.job_id] = rec
        self.durable = True

    def forget(self, rec: Rec, *, durable: bool = True) -> None:
        if self.state.jobs.get(rec.job_id) is rec:
            del self.state.jobs[rec.job_id]
        rec.ready_seq = rec.delay_seq = None
        rec.token = None
        self.touched[rec.job_id] = None
        self.durable = self.durable or durable

    def touch_lock(self, name: str) -> None:
        self.locks.add(name)
        self.durable = True

    def emit(self, event: EventRecord) -> None:
        self.events.append(event)

    @property
    def changed(self) -> bool:
        return bool(self.touched or self.locks or self.events)


def merge_entry(state: NsState, txs: Sequence[Tx]) -> dict[str, Any] | None:
    """One journal entry for several transitions of one batch (``None`` if nothing changed)."""
    touched: dict[str, Rec | None] = {}
    locks: set[str] = set()
    events: list[EventRecord] = []
    for tx in txs:
        touched.update(tx.touched)
        locks |= tx.locks
        events.extend(tx.events)
    if not (touched or locks or events):
        return None
    return {
        "v": FORMAT_VERSION,
        "ts": state.tail_seq,
        "hs": state.head_seq,
        "p": [rec.encode() for rec in touched.values() if rec is not None],
        "d": [job_id for job_id, rec in touched.items() if rec is None],
        "L": {name: state.locks[name].encode() for name in locks},
        "ev": [encode_event(event) for event in events],
    }


# -- transitions -----------------------------------------------------------------------------


def _live(tx: Tx, job_id: str) -> Rec | None:
    rec = tx.state.jobs.get(job_id)
    if rec is not None and rec.expires_at is not None and rec.expires_at <= tx.now:
        tx.forget(rec, durable=False)
        return None
    return rec


def _push_ready(tx: Tx, rec: Rec, *, head: bool = False) -> None:
    st = tx.state
    if head:
        st.head_seq -= 1
        seq = st.head_seq
    else:
        st.tail_seq += 1
        seq = st.tail_seq
    rec.ready_seq = seq
    rec.delay_seq = None
    rec.due_at = None
    tx.put(rec)


def _push_delayed(tx: Tx, rec: Rec, due: float) -> None:
    tx.state.tail_seq += 1
    rec.delay_seq = tx.state.tail_seq
    rec.ready_seq = None
    rec.due_at = due
    tx.put(rec)


def _promote_due(tx: Tx) -> float | None:
    st = tx.state
    while st.delayed:
        due, _, seq, job_id = st.delayed[0]
        rec = st.jobs.get(job_id)
        if rec is None or rec.delay_seq != seq or rec.due_at != due:
            heapq.heappop(st.delayed)
            continue
        if due > tx.now:
            return due
        heapq.heappop(st.delayed)
        _push_ready(tx, rec)
    return None


def _pop_ready(tx: Tx) -> Rec | None:
    st = tx.state
    while st.ready:
        seq, job_id = heapq.heappop(st.ready)
        rec = _live(tx, job_id)
        if rec is not None and rec.ready_seq == seq:
            rec.ready_seq = None
            return rec
    return None


def _owned(tx: Tx, job_id: str, token: str) -> Rec | None:
    rec = _live(tx, job_id)
    if rec is None or rec.state is not JobState.PROCESSING or rec.token != token:
        return None
    return rec


def _finish(tx: Tx, rec: Rec, state: JobState, ttl: float) -> None:
    rec.state = state
    rec.token = rec.worker_id = rec.lease_until = None
    rec.finished_at = tx.now
    rec.expires_at = tx.now + ttl
    rec.result_ttl = ttl
    tx.put(rec)


def _to_failing(tx: Tx, rec: Rec, error: bytes, delay: float) -> None:
    rec.state = JobState.FAILING
    rec.error = error
    rec.token = rec.worker_id = rec.lease_until = None
    if delay > 0:
        _push_delayed(tx, rec, tx.now + delay)
    else:
        _push_ready(tx, rec)


def purge(tx: Tx) -> int:
    st = tx.state
    purged = 0
    while st.expiries and st.expiries[0][0] <= tx.now:
        expires_at, _, job_id = heapq.heappop(st.expiries)
        rec = st.jobs.get(job_id)
        if rec is not None and rec.expires_at == expires_at:
            tx.forget(rec, durable=False)
            purged += 1
    return purged


def enqueue(
    tx: Tx, job_id: str, payload: bytes, max_attempts: int, result_ttl: float
) -> EnqueueOutcome:
    purge(tx)
    rec = _live(tx, job_id)
    if rec is not None:
        if rec.state is JobState.COMPLETED and rec.result is not None:
            return EnqueueOutcome(EnqueueStatus.COMPLETED, rec.state, rec.result)
        return EnqueueOutcome(EnqueueStatus.DUPLICATE, rec.state)
    rec = Rec(
        job_id=job_id,
        payload=payload,
        state=JobState.QUEUED,
        max_attempts=max_attempts,
        result_ttl=result_ttl,
        created_at=tx.now,
    )
    _push_ready(tx, rec)
    tx.emit(EventRecord(EventKind.ENQUEUED, job_id, 0))
    return EnqueueOutcome(EnqueueStatus.QUEUED)


def cancel(tx: Tx, job_id: str) -> CancelStatus:
    rec = _live(tx, job_id)
    if rec is None or rec.state is JobState.FAILED:
        return CancelStatus.NOT_FOUND
    if rec.state is JobState.PROCESSING:
        return CancelStatus.PROCESSING
    if rec.state is JobState.COMPLETED:
        return CancelStatus.COMPLETED
    tx.forget(rec)
    tx.emit(EventRecord(EventKind.CANCELLED, job_id, rec.attempts))
    return CancelStatus.CANCELLED


def get_status(tx: Tx, job_id: str) -> JobRecord | None:
    rec = _live(tx, job_id)
    return None if rec is None else rec.snapshot()


def update_result_ttl(tx: Tx, job_id: str, ttl: float) -> UpdateTtlStatus:
    rec = _live(tx, job_id)
    if rec is None:
        return UpdateTtlStatus.NOT_FOUND
    if not rec.state.is_terminal:
        return UpdateTtlStatus.NOT_TERMINAL
    payload = rec.result if rec.state is JobState.COMPLETED else rec.error
    if payload is None:
        return UpdateTtlStatus.MISSING_PAYLOAD
    rec.result_ttl = ttl
    rec.expires_at = tx.now + ttl
    tx.put(rec)
    return UpdateTtlStatus.UPDATED


def claim(tx: Tx, worker_id: str, limit: int, lease: float) -> tuple[list[Claim], float | None]:
    next_due = _promote_due(tx)
    claims: list[Claim] = []
    while len(claims) < limit:
        rec = _pop_ready(tx)
        if rec is None:
            break
        token = secrets.token_hex(8)
        rec.state = JobState.PROCESSING
        rec.attempts += 1
        rec.worker_id = worker_id
        rec.token = token
        rec.lease_until = tx.now + lease
        tx.put(rec)
        claims.append(
            Claim(
                job_id=rec.job_id,
                payload=rec.payload,
                attempt=rec.attempts,
                max_attempts=rec.max_attempts,
                created_at=rec.created_at,
                token=token,
                lease_until=rec.lease_until,
                result_ttl=rec.result_ttl,
            )
        )
        tx.emit(EventRecord(EventKind.STARTED, rec.job_id, rec.attempts))
    return claims, next_due


def heartbeat(tx: Tx, claims: Sequence[tuple[str, str]], lease: float) -> list[bool]:
    owned: list[bool] = []
    for job_id, token in claims:
        rec = _owned(tx, job_id, token)
        if rec is None:
            owned.append(False)
            continue
        rec.lease_until = tx.now + lease
        tx.put(rec)
        owned.append(True)
    return owned


def complete(tx: Tx, job_id: str, token: str, result: bytes, ttl: float) -> SettleStatus:
    rec = _owned(tx, job_id, token)
    if rec is None:
        return SettleStatus.STALE
    rec.result = result
    rec.error = None
    _finish(tx, rec, JobState.COMPLETED, ttl)
    tx.emit(EventRecord(EventKind.COMPLETED, job_id, rec.attempts, result=rec.result))
    return SettleStatus.OK


def fail(tx: Tx, job_id: str, token: str, error: bytes, ttl: float) -> SettleStatus:
    rec = _owned(tx, job_id, token)
    if rec is None:
        return SettleStatus.STALE
    rec.error = error
    _finish(tx, rec, JobState.FAILED, ttl)
    tx.emit(EventRecord(EventKind.FAILED, job_id, rec.attempts, error=rec.error))
    return SettleStatus.OK


def retry(tx: Tx, job_id: str, token: str, error: bytes, delay: float) -> SettleStatus:
    rec = _owned(tx, job_id, token)
    if rec is None:
        return SettleStatus.STALE
    _to_failing(tx, rec, error, delay)
    tx.emit(EventRecord(EventKind.FAILING, job_id, rec.attempts, error=rec.error))
    return SettleStatus.OK


def release(tx: Tx, job_id: str, token: str) -> SettleStatus:
    rec = _owned(tx, job_id, token)
    if rec is None:
        return SettleStatus.STALE
    rec.attempts -= 1
    rec.state = JobState.QUEUED if rec.attempts == 0 else JobState.FAILING
    rec.token = rec.worker_id = rec.lease_until = None
    _push_ready(tx, rec, head=True)
    tx.emit(EventRecord(EventKind.REQUEUED, job_id, rec.attempts + 1))
    return SettleStatus.OK


def _fence_ok(tx: Tx, fence: Fence) -> bool:
    held = tx.state.locks.get(fence.lock)
    return not (
        held is None
        or held.owner != fence.owner
        or held.epoch != fence.epoch
        or lock_expired(held.expires_at, tx.now)
    )


def reap(tx: Tx, fence: Fence | None) -> ReapResult:
    st = tx.state
    if fence is not None and not _fence_ok(tx, fence):
        return ReapResult(fenced=True)
    stalled: list[ReapedJob] = []
    next_deadline: float | None = None
    while st.leases:
        until, _, token, job_id = st.leases[0]
        rec = st.jobs.get(job_id)
        if (
            rec is None
            or rec.state is not JobState.PROCESSING
            or rec.token != token
            or rec.lease_until != until
        ):
            heapq.heappop(st.leases)
            continue
        if until > tx.now:
            next_deadline = until
            break
        heapq.heappop(st.leases)
        attempt = rec.attempts
        if attempt >= rec.max_attempts:
            rec.error = STALLED_ERROR
            _finish(tx, rec, JobState.FAILED, rec.result_ttl)
            stalled.append(ReapedJob(job_id, attempt, failed=True))
            tx.emit(EventRecord(EventKind.STALLED, job_id, attempt, error=rec.error))
            tx.emit(EventRecord(EventKind.FAILED, job_id, attempt, error=rec.error))
        else:
            _to_failing(tx, rec, STALLED_ERROR, 0.0)
            stalled.append(ReapedJob(job_id, attempt, failed=False))
            tx.emit(EventRecord(EventKind.STALLED, job_id, attempt, error=rec.error))
    return ReapResult(stalled=tuple(stalled), next_deadline=next_deadline, now=tx.now)


def acquire_lock(tx: Tx, lock: str, owner: str, ttl: float) -> int | None:
    held = tx.state.locks.get(lock)
    if held is None:
        held = tx.state.locks[lock] = Lock()
    if held.owner == owner and not lock_expired(held.expires_at, tx.now):
        held.expires_at = tx.now + ttl
        tx.touch_lock(lock)
        return held.epoch
    if held.owner is not None and not lock_expired(held.expires_at, tx.now):
        return None
    held.owner = owner
    held.epoch += 1
    held.expires_at = tx.now + ttl
    tx.touch_lock(lock)
    return held.epoch


def renew_lock(tx: Tx, lock: str, owner: str, epoch: int, ttl: float) -> bool:
    held = tx.state.locks.get(lock)
    if held is None or held.owner != owner or held.epoch != epoch:
        return False
    if lock_expired(held.expires_at, tx.now):
        return False
    held.expires_at = tx.now + ttl
    tx.touch_lock(lock)
    return True


def release_lock(tx: Tx, lock: str, owner: str, epoch: int) -> bool:
    held = tx.state.locks.get(lock)
    if held is None or held.owner != owner or held.epoch != epoch:
        return False
    held.owner = None
    held.expires_at = -math.inf
    tx.touch_lock(lock)
    return True


def stats(tx: Tx) -> StorageStats:
    # Read-only (as MemoryStorage): a due retry counts as queued but is not moved, so
    # stats() never changes the claim order.
    counts = dict.fromkeys(("queued", "delayed", "processing", "completed", "failed"), 0)
    for job_id in list(tx.state.jobs):
        rec = _live(tx, job_id)
        if rec is None:
            continue
        if rec.state is JobState.PROCESSING:
            counts["processing"] += 1
        elif rec.state is JobState.COMPLETED:
            counts["completed"] += 1
        elif rec.state is JobState.FAILED:
            counts["failed"] += 1
        elif rec.delay_seq is not None and rec.due_at is not None and rec.due_at > tx.now:
            counts["delayed"] += 1
        else:
            counts["queued"] += 1
    return StorageStats(**counts)
