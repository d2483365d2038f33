"""The job lifecycle as pure, synchronous transitions over one namespace (no I/O).

A transition is a plain function of a :class:`Tx` (the namespace's :class:`NsState` plus
the current time): it reads records through the helpers below, changes them in place,
stores them with :meth:`Tx.put` (or drops them with :meth:`Tx.forget`) and emits events.
Writing a transition needs nothing else: what it changed is worked out afterwards.

Both in-process backends run on these functions. ``MemoryStorage`` applies them to state
held in the object and delivers the events directly. ``FileStorage`` keeps a mirror per
process, rebuilt from the snapshot plus the journal and brought up to date at the start of
every locked transaction; it runs each transition with ``track=True``, so that the ``Tx``
keeps an image of every record as it was first read, and :meth:`Tx.seal` then yields the
**redo delta**: for each record touched, either its removal, its full new version (a
record created by this transition: the enqueue, whose frame therefore carries the
payload) or only the fields whose value changed (a claim journals the state, attempt,
worker, token and lease; a heartbeat the lease; a completion the state, times and the
result). The deltas of one batch are merged by :func:`merge_entry` into one journal entry,
which :meth:`NsState.apply_entry` replays, so replaying the journal on any process
reproduces the same state. Payloads, results and errors travel as blobs (raw bytes after
the entry's JSON); a blob shared by a record and an event of one entry (a completion's
result) is written once.

**Counters.** :class:`NsState` keeps the number of records in each *bucket* (ready,
delayed, scheduled, due, processing, completed, failed), updated by every store and removal and by
replay, so :func:`stats` costs O(1) amortized instead of a scan: it first forgets the
terminal records whose TTL ran out (O(expired), each record once, as ``purge`` does) and
moves the delayed retries and scheduled jobs whose time has come to ``due`` through a cursor
(a heap of due times, each entry popped once), then reads the counters.
"""

from __future__ import annotations

import base64
import heapq
import json
import math
import operator
from collections import deque
from collections.abc import Container, Sequence
from typing import Any, NamedTuple

import attrs
from sortedcontainers import SortedList

from .._types import (
    CancelStatus,
    DeleteStatus,
    EnqueueStatus,
    EventKind,
    JobState,
    RetryStatus,
    UpdateTtlStatus,
)
from ._base import (
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
    ReapResult,
    SettleStatus,
    StorageStats,
    WorkerRecord,
)
from ._common import STALLED_ERROR, lock_expired, new_token
from ._core import INLINE_RESULT_MAX

FORMAT_VERSION = 2
"""The format of the entries and snapshots this version writes (deltas, raw blobs)."""
LEGACY_VERSION = 1
"""Written by earlier versions (whole records, base64); still read, never written."""


class CorruptRecord(ValueError):
    """A snapshot or journal entry that does not decode."""


# -- blobs -------------------------------------------------------------------------------


class BlobWriter:
    """The raw byte strings of one entry or snapshot; each distinct object stored once."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self._index: dict[int, int] = {}

    def add(self, data: bytes) -> int:
        # By identity: the parts list keeps every object alive, so ids are not reused.
        index = self._index.get(id(data))
        if index is None:
            index = self._index[id(data)] = len(self.parts)
            self.parts.append(data)
        return index

    def opt(self, data: bytes | None) -> int | None:
        return None if data is None else self.add(data)

    def lengths(self) -> list[int]:
        return [len(part) for part in self.parts]


class BlobReader:
    """The blobs of one decoded entry or snapshot."""

    def __init__(self, lengths: Any, area: memoryview | bytes | None) -> None:
        if not isinstance(lengths, list):
            raise CorruptRecord("malformed blob table")
        view = memoryview(b"" if area is None else area)
        offsets = [0]
        for length in lengths:
            if isinstance(length, bool) or not isinstance(length, int) or length < 0:
                raise CorruptRecord("malformed blob table")
            offsets.append(offsets[-1] + length)
        if offsets[-1] != len(view):
            raise CorruptRecord(f"blob table covers {offsets[-1]} of {len(view)} bytes")
        self._view = view
        self._offsets = offsets

    def get(self, index: Any) -> bytes:
        if isinstance(index, bool) or not isinstance(index, int):
            raise CorruptRecord(f"expected a blob index, got {index!r}")
        if not 0 <= index < len(self._offsets) - 1:
            raise CorruptRecord(f"blob index {index} out of range")
        return bytes(self._view[self._offsets[index] : self._offsets[index + 1]])


_NO_BLOBS = BlobReader([], None)


def _b(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb(text: Any) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise CorruptRecord(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _bytes_out(data: bytes | None, blobs: BlobWriter | None) -> int | str | None:
    if data is None:
        return None
    return _b(data) if blobs is None else blobs.add(data)


def _bytes_in(value: Any, blobs: BlobReader) -> bytes | None:
    """A bytes field: a blob index (format 2) or base64 text (format 1, and events
    encoded without a blob table)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _unb(value)
    return blobs.get(value)


def _key(job_id: str) -> bytes:
    return job_id.encode("utf-8")


# -- records ---------------------------------------------------------------------------------

# Buckets: which counter a record is in (see the module docstring). Derived from the
# record's fields (plus the due cursor), never stored on disk.
NONE, READY, DELAYED, DUE, PROCESSING, COMPLETED, FAILED, SCHEDULED = range(8)


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
    priority: int = 0
    progress: bytes | None = None
    # -- derived, per process (not journalled) --
    bucket: int = NONE
    """The counter this record is in (:meth:`NsState.recount`)."""
    due_mark: int | None = None
    """The ``delay_seq`` the due cursor saw come due (the record counts as due then)."""
    listed: tuple[JobState, tuple[Any, ...]] | None = None
    """Where the record is in :attr:`NsState.listing` (once that exists)."""

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
            priority=self.priority,
            progress=self.progress,
        )


FIELDS = (
    "job_id",
    "payload",
    "state",
    "max_attempts",
    "result_ttl",
    "created_at",
    "attempts",
    "result",
    "error",
    "finished_at",
    "expires_at",
    "due_at",
    "worker_id",
    "token",
    "lease_until",
    "ready_seq",
    "delay_seq",
    "priority",
    "progress",
)
"""The journalled fields of a record, in the order of an encoded record (and of ``Rec``'s
constructor)."""
CODES = (
    *("i", "p", "s", "m", "t", "c", "a", "r", "e", "f", "x", "d", "w", "k", "l", "q", "y", "z"),
    "g",
)
"""One letter per field, as written in an update (the keys of format 1's records)."""
_image = operator.attrgetter(*FIELDS)
_JOB_ID, _PAYLOAD, _STATE, _RESULT, _ERROR, _PROGRESS = 0, 1, 2, 7, 8, 18
_BYTES_FIELDS = (_PAYLOAD, _RESULT, _ERROR, _PROGRESS)
_ENCODED_FIELDS = frozenset((*_BYTES_FIELDS, _STATE))
"""The fields :func:`_out` changes (the others are written as they are)."""


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CorruptRecord(f"expected an int, got {value!r}")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise CorruptRecord(f"expected a str, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


_INDEXES = range(len(FIELDS))


def _out(index: int, value: Any, blobs: BlobWriter) -> Any:
    """One field's value as written."""
    if value is None:
        return None
    if index in _BYTES_FIELDS:
        return blobs.add(value)
    if index == _STATE:
        return value.value
    return value


def _in(index: int, value: Any, blobs: BlobReader) -> Any:
    """One field's value as read back (validated)."""
    try:
        if index in _BYTES_FIELDS:
            data = _bytes_in(value, blobs)
            if data is None and index == _PAYLOAD:
                raise CorruptRecord("record without payload")
            return data
        if index == _STATE:
            state = _STATES.get(value) if isinstance(value, str) else None
            if state is None:
                raise CorruptRecord(f"undecodable field 'state': {value!r}")
            return state
        return _DECODERS[index](value)
    except CorruptRecord:
        raise
    except (TypeError, ValueError) as exc:
        raise CorruptRecord(f"undecodable field {FIELDS[index]!r}: {exc!r}") from exc


_DECODERS: dict[int, Any] = {
    0: _str,
    3: lambda v: _int(v),
    4: float,
    5: float,
    6: lambda v: _int(v),
    9: _opt_float,
    10: _opt_float,
    11: _opt_float,
    12: _opt_str,
    13: _opt_str,
    14: _opt_float,
    15: _opt_int,
    16: _opt_int,
    17: lambda v: _int(v),
}
_STATES = {state.value: state for state in JobState}
_KINDS = {kind.value: kind for kind in EventKind}
_NULLABLE = frozenset((7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18))
"""The fields whose ``None`` decodes as ``None`` (:func:`_in` accepts it unchecked)."""
_PLAIN: dict[int, type] = {
    **dict.fromkeys((3, 6, 15, 16, 17), int),
    **dict.fromkeys((4, 5, 9, 10, 11, 14), float),
    **dict.fromkeys((12, 13), str),
}
"""Per field, the type whose values :func:`_in` returns unchanged."""
_LEGACY_FIELDS = len(FIELDS) - 2
"""Records written before priorities had two fields less (their priority is 0)."""
_RECORD_LENGTHS = (len(FIELDS), len(FIELDS) - 1, _LEGACY_FIELDS)
"""Records written before progress have one field less (no progress)."""


def encode_image(image: Sequence[Any], blobs: BlobWriter) -> list[Any]:
    """A whole record (an image in :data:`FIELDS` order) as written."""
    return [_out(index, value, blobs) for index, value in enumerate(image)]


def encode_rec(rec: Rec, blobs: BlobWriter) -> list[Any]:
    return encode_image(_image(rec), blobs)


def decode_rec(raw: Any, blobs: BlobReader) -> Rec:
    if not isinstance(raw, list) or len(raw) not in _RECORD_LENGTHS:
        raise CorruptRecord("malformed job record")
    return Rec(*[_in(index, value, blobs) for index, value in enumerate(raw)])


def decode_rec_v1(raw: Any) -> Rec:
    """A whole record as format 1 wrote it (a dict keyed by :data:`CODES`, base64)."""
    try:
        return decode_rec([raw[code] for code in CODES[:_LEGACY_FIELDS]], _NO_BLOBS)
    except (KeyError, TypeError) as exc:
        raise CorruptRecord(f"undecodable job record: {exc!r}") from exc


def _bucket(rec: Rec) -> int:
    state = rec.state
    if state is JobState.PROCESSING:
        return PROCESSING
    if state is JobState.COMPLETED:
        return COMPLETED
    if state is JobState.FAILED:
        return FAILED
    if rec.delay_seq is not None:
        if rec.due_mark == rec.delay_seq:
            return DUE
        return SCHEDULED if state is JobState.SCHEDULED else DELAYED
    return READY


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
                _opt_str(owner), _int(epoch), -math.inf if expires is None else float(expires)
            )
        except (TypeError, ValueError) as exc:
            raise CorruptRecord(f"undecodable lock record: {exc!r}") from exc


def encode_worker(rec: WorkerRecord) -> list[Any]:
    return [
        rec.worker_id,
        rec.host,
        rec.pid,
        rec.started_at,
        rec.concurrency,
        rec.in_flight,
        list(rec.jobs),
        rec.kind,
        rec.last_seen,
        rec.expires_at,
        rec.state,
        rec.counters,
    ]


def decode_worker(raw: Any) -> WorkerRecord:
    try:
        wid, host, pid, started, concurrency, in_flight, jobs, kind, seen, expires, *more = raw
        state, counters = more if more else ("running", {})
        return WorkerRecord(
            worker_id=_str(wid),
            host=_str(host),
            pid=_int(pid),
            started_at=float(started),
            concurrency=_int(concurrency),
            in_flight=_int(in_flight),
            jobs=tuple(_str(job_id) for job_id in jobs),
            kind=_str(kind),
            last_seen=float(seen),
            expires_at=float(expires),
            state=_str(state),
            counters={_str(k): _int(v) for k, v in dict(counters).items()},
        )
    except CorruptRecord:
        raise
    except (TypeError, ValueError) as exc:
        raise CorruptRecord(f"undecodable worker record: {exc!r}") from exc


# -- events ----------------------------------------------------------------------------------


def journaled_event(event: EventRecord) -> EventRecord:
    """The event as every reader of the journal sees it: a large result stays only in the
    job record (the event says it exists: ``result_ref``)."""
    result = event.result
    if result is not None and len(result) > INLINE_RESULT_MAX:
        return attrs.evolve(event, result=None, result_ref=True)
    return event


def encode_event(event: EventRecord, blobs: BlobWriter | None = None) -> list[Any]:
    """An event as journalled (bytes as blob indexes, or base64 without a blob table); a
    large result stays only in the job record (see :func:`journaled_event`)."""
    result = event.result
    error = _bytes_out(event.error, blobs)
    if event.result_ref or (result is not None and len(result) > INLINE_RESULT_MAX):
        return [event.kind.value, event.job_id, event.attempt, None, error, 1]
    return [event.kind.value, event.job_id, event.attempt, _bytes_out(result, blobs), error]


def decode_event(raw: Any, blobs: BlobReader = _NO_BLOBS) -> EventRecord:
    try:
        kind, job_id, attempt, result, error, *flags = raw
        if not isinstance(job_id, str):
            raise CorruptRecord("event without job id")
        event_kind = _KINDS.get(kind) if isinstance(kind, str) else None
        if event_kind is None:
            raise CorruptRecord(f"unknown event kind {kind!r}")
        return EventRecord(
            event_kind,
            job_id,
            _int(attempt),
            _bytes_in(result, blobs),
            _bytes_in(error, blobs),
            result_ref=bool(flags and flags[0]),
        )
    except CorruptRecord:
        raise
    except (TypeError, ValueError) as exc:
        raise CorruptRecord(f"undecodable event: {exc!r}") from exc


def _version(raw: Any, what: str) -> int:
    version = raw.get("v") if isinstance(raw, dict) else None
    if version not in (FORMAT_VERSION, LEGACY_VERSION):
        raise CorruptRecord(f"{what} of an unknown format version")
    return int(version)


def entry_events(raw: Any, area: memoryview | None = None) -> list[EventRecord]:
    """Only the events of a journal entry (what a tailer needs)."""
    version = _version(raw, "journal entry")
    events = raw.get("ev", ())
    if not isinstance(events, list):
        raise CorruptRecord("journal entry with malformed events")
    blobs = BlobReader(raw.get("B", []), area) if version == FORMAT_VERSION else _NO_BLOBS
    return [decode_event(item, blobs) for item in events]


# -- the namespace ---------------------------------------------------------------------------


class Lane:
    """The ready entries ``(position, id)`` of one priority, in claim order: a deque
    while they arrive in order (tail insertions at growing positions, head insertions
    at shrinking ones: every transition), so that a claim takes one in O(1); an entry
    that arrives between the two ends (a snapshot loads records in no particular
    order) waits in a small heap instead. Stale entries are skipped by the reader."""

    __slots__ = ("fifo", "stray")

    def __init__(self) -> None:
        self.fifo: deque[tuple[int, str]] = deque()
        self.stray: list[tuple[int, str]] = []

    def push(self, seq: int, job_id: str) -> None:
        fifo = self.fifo
        if not fifo or seq > fifo[-1][0]:
            fifo.append((seq, job_id))
        elif seq < fifo[0][0]:
            fifo.appendleft((seq, job_id))
        else:
            heapq.heappush(self.stray, (seq, job_id))

    def pop(self) -> tuple[int, str] | None:
        """The first entry (``None``: empty)."""
        fifo, stray = self.fifo, self.stray
        if stray and (not fifo or stray[0][0] < fifo[0][0]):
            return heapq.heappop(stray)
        return fifo.popleft() if fifo else None


@attrs.define(eq=False)
class NsState:
    """All records of one namespace plus lazily-deleted indexes (as in MemoryStorage) and
    the per-bucket counters."""

    jobs: dict[str, Rec] = attrs.Factory(dict)
    locks: dict[str, Lock] = attrs.Factory(dict)
    workers: dict[str, WorkerRecord] = attrs.Factory(dict)
    """The worker registry (expired entries are invisible, removed by registrations)."""
    tail_seq: int = 0
    """Last sequence number given to a tail insertion (grows)."""
    head_seq: int = 0
    """Last sequence number given to a head insertion (shrinks, always below any tail)."""
    lanes: dict[int, Lane] = attrs.Factory(dict)
    """Per priority, its ready entries in claim order (see :class:`Lane`)."""
    priorities: list[int] = attrs.Factory(list)
    """A heap of ``-priority`` for the priorities in :attr:`lanes`: the highest first."""
    delayed: list[tuple[float, bytes, int, str]] = attrs.Factory(list)
    leases: list[tuple[float, bytes, str, str]] = attrs.Factory(list)
    expiries: list[tuple[float, bytes, str]] = attrs.Factory(list)
    due_cursor: list[tuple[float, int, str]] = attrs.Factory(list)
    """Due times of delayed records, popped by :meth:`advance_due` (``stats`` only; the
    ``delayed`` heap belongs to ``claim``, which moves due records)."""
    cursors: dict[str, float] = attrs.Factory(dict)
    """Per schedule id: the last tick fired (:func:`fire_schedule`)."""
    paused: bool = False
    """Claims take nothing while set (:func:`set_paused`)."""
    counts: list[int] = attrs.Factory(lambda: [0] * 8)
    listing: dict[JobState, Any] | None = None
    """Per state, the sorted list of :func:`list_key` of its records: built by the first
    :func:`list_jobs` (O(n log n), once) and kept up to date from then on (O(log n) per
    change), so a process that never lists pays nothing for it."""
    """Records per bucket (index ``NONE`` is unused)."""

    # -- records and counters ---------------------------------------------------------------

    def index(self, rec: Rec) -> None:
        """Push ``rec``'s current positions into the indexes (stale ones are skipped later)."""
        if rec.ready_seq is not None:
            lane = self.lanes.get(rec.priority)
            if lane is None:
                lane = self.lanes[rec.priority] = Lane()
                heapq.heappush(self.priorities, -rec.priority)
            lane.push(rec.ready_seq, rec.job_id)
        if rec.delay_seq is not None and rec.due_at is not None:
            key = _key(rec.job_id)
            heapq.heappush(self.delayed, (rec.due_at, key, rec.delay_seq, rec.job_id))
            heapq.heappush(self.due_cursor, (rec.due_at, rec.delay_seq, rec.job_id))
        if (
            rec.state is JobState.PROCESSING
            and rec.token is not None
            and rec.lease_until is not None
        ):
            heapq.heappush(self.leases, (rec.lease_until, _key(rec.job_id), rec.token, rec.job_id))
        if rec.expires_at is not None:
            heapq.heappush(self.expiries, (rec.expires_at, _key(rec.job_id), rec.job_id))
        if self.listing is not None:
            self._relist(rec)

    def _relist(self, rec: Rec) -> None:
        assert self.listing is not None
        entry = (rec.state, list_key(rec))
        if entry == rec.listed:
            return
        self._unlist(rec)
        self.listing[rec.state].add(entry[1])
        rec.listed = entry

    def _unlist(self, rec: Rec) -> None:
        if self.listing is not None and rec.listed is not None:
            state, key = rec.listed
            self.listing[state].discard(key)
        rec.listed = None

    def ensure_listing(self) -> dict[JobState, Any]:
        if self.listing is None:
            self.listing = {state: SortedList() for state in JobState}
            for rec in self.jobs.values():
                self._relist(rec)
        return self.listing

    def recount(self, rec: Rec) -> None:
        """Move ``rec`` to the counter of its current bucket."""
        bucket = _bucket(rec)
        if bucket != rec.bucket:
            counts = self.counts
            if rec.bucket:
                counts[rec.bucket] -= 1
            counts[bucket] += 1
            rec.bucket = bucket

    def insert(self, rec: Rec) -> None:
        """Store ``rec`` (new, replacing another record of its id, or changed in place)."""
        old = self.jobs.get(rec.job_id)
        if old is not None and old is not rec:
            self._uncount(old)
        self.jobs[rec.job_id] = rec
        self.recount(rec)
        self.index(rec)

    def drop(self, rec: Rec) -> None:
        if self.jobs.get(rec.job_id) is rec:
            del self.jobs[rec.job_id]
            self._uncount(rec)

    def _uncount(self, rec: Rec) -> None:
        if rec.bucket:
            self.counts[rec.bucket] -= 1
            rec.bucket = NONE
        self._unlist(rec)

    def advance_due(self, now: float) -> None:
        """Count the delayed records whose due time has come as due (not moved: only a
        claim moves them, so that ``stats`` never changes the claim order)."""
        cursor = self.due_cursor
        while cursor and cursor[0][0] <= now:
            due, seq, job_id = heapq.heappop(cursor)
            rec = self.jobs.get(job_id)
            if rec is not None and rec.delay_seq == seq and rec.due_at == due:
                rec.due_mark = seq
                self.recount(rec)

    def next_due(self) -> float | None:
        """The due time of the next delayed record (``-inf``: unknown, the heap's top is
        stale; only ``claim`` pops it). Read-only."""
        if not self.delayed:
            return None
        due, _, seq, job_id = self.delayed[0]
        rec = self.jobs.get(job_id)
        if rec is None or rec.delay_seq != seq or rec.due_at != due:
            return -math.inf
        return due

    # -- persistence ------------------------------------------------------------------------

    def encode(self) -> tuple[dict[str, Any], list[bytes]]:
        """The whole namespace as a snapshot body and its blobs."""
        blobs = BlobWriter()
        jobs = [encode_rec(rec, blobs) for rec in self.jobs.values()]
        body = {
            "v": FORMAT_VERSION,
            "ts": self.tail_seq,
            "hs": self.head_seq,
            "jobs": jobs,
            "locks": {name: lock.encode() for name, lock in self.locks.items()},
            "workers": [encode_worker(rec) for rec in self.workers.values()],
            "cur": self.cursors,
            "paused": self.paused,
            "B": blobs.lengths(),
        }
        return body, blobs.parts

    @classmethod
    def decode(cls, raw: Any, area: memoryview | None = None) -> NsState:
        """A snapshot body (either format) and, for format 2, its blob area."""
        version = _version(raw, "snapshot")
        state = cls()
        try:
            state.tail_seq = _int(raw["ts"])
            state.head_seq = _int(raw["hs"])
            if version == FORMAT_VERSION:
                blobs = BlobReader(raw["B"], area)
                recs = [decode_rec(item, blobs) for item in raw["jobs"]]
            else:
                recs = [decode_rec_v1(item) for item in raw["jobs"]]
            for rec in recs:
                state.insert(rec)
            for name, lock in raw["locks"].items():
                state.locks[str(name)] = Lock.decode(lock)
            for item in raw.get("workers", ()):
                worker = decode_worker(item)
                state.workers[worker.worker_id] = worker
            state.cursors = _decode_cursors(raw.get("cur", {}))
            state.paused = raw.get("paused") is True
        except CorruptRecord:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecord(f"undecodable snapshot: {exc!r}") from exc
        return state

    def apply_entry(self, raw: Any, area: memoryview | None = None) -> None:
        """Replay one journal entry (either format).

        Decodes everything before changing anything, so a corrupt entry leaves the
        state untouched. Its events change nothing and are not decoded here: a reader
        that delivers them decodes them (:func:`entry_events`) when it does.
        """
        version = _version(raw, "journal entry")
        try:
            if version == FORMAT_VERSION:
                blobs = BlobReader(raw.get("B", []), area)
                news = [decode_rec(item, blobs) for item in raw.get("n", ())]
                updates = [_decode_update(item, blobs) for item in raw.get("u", ())]
            else:
                blobs = _NO_BLOBS
                news = [decode_rec_v1(item) for item in raw.get("p", ())]
                updates = []
            dels = [_str(job_id) for job_id in raw.get("d", ())]
            locks = {str(k): Lock.decode(v) for k, v in raw.get("L", {}).items()}
            workers = {
                str(k): None if v is None else decode_worker(v) for k, v in raw.get("W", {}).items()
            }
            if not isinstance(raw.get("ev", []), list):
                raise CorruptRecord("journal entry with malformed events")
            cursors = _decode_cursors(raw.get("C", {}))
            paused = raw.get("P")
            tail_seq = _int(raw["ts"])
            head_seq = _int(raw["hs"])
        except CorruptRecord:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecord(f"undecodable journal entry: {exc!r}") from exc
        jobs = self.jobs
        for job_id in dels:
            rec = jobs.get(job_id)
            if rec is not None:
                self.drop(rec)
        for rec in news:
            self.insert(rec)
        for job_id, changes in updates:
            rec = jobs.get(job_id)
            if rec is None:
                continue  # only after a skipped (corrupt) entry: nothing to update
            for name, value in changes:
                setattr(rec, name, value)
            self.recount(rec)
            self.index(rec)
        self.locks.update(locks)
        for worker_id, worker in workers.items():
            if worker is None:
                self.workers.pop(worker_id, None)
            else:
                self.workers[worker_id] = worker
        self.cursors.update(cursors)
        if paused is not None:
            self.paused = paused is True
        self.tail_seq = tail_seq
        self.head_seq = head_seq


def _decode_cursors(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise CorruptRecord("malformed schedule cursors")
    return {_str(schedule_id): float(tick) for schedule_id, tick in raw.items()}


_UPDATABLE: dict[str, tuple[int, str, type | None, bool]] = {
    code: (index, FIELDS[index], _PLAIN.get(index), index in _NULLABLE)
    for index, code in enumerate(CODES)
    if index != _JOB_ID
}
"""Per field code of an update: the field's index, name, plain type (:data:`_PLAIN`) and
whether it is nullable: one lookup per changed field when replaying."""


def _decode_update(raw: Any, blobs: BlobReader) -> tuple[str, list[tuple[str, Any]]]:
    if not isinstance(raw, list) or len(raw) % 2 != 1:
        raise CorruptRecord("malformed record update")
    job_id = _str(raw[0])
    changes = []
    for pos in range(1, len(raw), 2):
        field = _UPDATABLE.get(raw[pos])
        if field is None:
            raise CorruptRecord(f"unknown field {raw[pos]!r} in a record update")
        index, name, plain, nullable = field
        value = raw[pos + 1]
        if type(value) is plain or (value is None and nullable):
            changes.append((name, value))  # what _in would return
        elif index == _STATE and type(value) is str and value in _STATES:
            changes.append((name, _STATES[value]))
        else:
            changes.append((name, _in(index, value, blobs)))
    return job_id, changes


# -- one transition --------------------------------------------------------------------------


class Sealed(NamedTuple):
    """What one transition changed, frozen before the next one runs (see :meth:`Tx.seal`).

    A named tuple (one per transition, on FileStorage's path): cheaper to build than a
    frozen attrs class."""

    records: dict[str, tuple[bool, Any] | None]
    """Per job id: ``None`` (removed), ``(True, image)`` (created: the whole record, in
    :data:`FIELDS` order) or ``(False, {field index: new value})`` (changed fields)."""
    locks: dict[str, list[Any]]
    workers: dict[str, list[Any] | None]
    cursors: dict[str, float]
    paused: bool | None
    """The pause flag, when this transition set it."""
    events: list[EventRecord]
    tail_seq: int
    head_seq: int
    durable: bool


@attrs.define(eq=False)
class Tx:
    """One transition in progress: the state, the time, and what it touched."""

    state: NsState
    now: float
    track: bool = False
    """Keep an image of each record as first read, so that :meth:`seal` can tell what
    changed (FileStorage); MemoryStorage needs none."""
    touched: dict[str, Rec | None] = attrs.Factory(dict)
    images: dict[str, tuple[Rec, tuple[Any, ...]]] = attrs.Factory(dict)
    locks: set[str] = attrs.Factory(set)
    workers: set[str] = attrs.Factory(set)
    cursors: set[str] = attrs.Factory(set)
    paused: bool = False
    """The pause flag was set (to ``state.paused``)."""
    events: list[EventRecord] = attrs.Factory(list)
    durable: bool = False
    """False while the only changes need no fsync: forgetting expired records, extending
    leases and lock expiries (see docs/file.md)."""
    wake: bool = False
    """Blocked claims must look again: a job became claimable, or one was scheduled
    before every other delayed job (sooner than any blocked claim plans to look)."""
    unheard: bool = False
    """No one can hear the events of the busiest transitions (``enqueued``, ``started``,
    ``completed``) except the watchers of a job in :attr:`watched`: MemoryStorage with no
    subscriber skips building them. FileStorage journals every event (other processes
    may listen), so it leaves this false."""
    watched: Container[str] = ()
    """Ids with a watcher waiting for their outcome (with :attr:`unheard`)."""

    def see(self, rec: Rec) -> Rec:
        """Note ``rec`` as read, before any change (every read helper calls this)."""
        if self.track and rec.job_id not in self.images:
            self.images[rec.job_id] = (rec, _image(rec))
        return rec

    def put(self, rec: Rec, *, durable: bool = True) -> None:
        self.state.insert(rec)
        self.touched[rec.job_id] = rec
        self.durable = self.durable or durable

    def forget(self, rec: Rec, *, durable: bool = True) -> None:
        self.state.drop(rec)
        rec.ready_seq = rec.delay_seq = None
        rec.token = None
        self.touched[rec.job_id] = None
        self.durable = self.durable or durable

    def touch_lock(self, name: str, *, durable: bool = True) -> None:
        self.locks.add(name)
        self.durable = self.durable or durable

    def touch_worker(self, worker_id: str) -> None:
        """The registration changed. Never durable: after a crash a registration only has
        to expire, which it does by itself."""
        self.workers.add(worker_id)

    def touch_cursor(self, schedule_id: str) -> None:
        self.cursors.add(schedule_id)
        self.durable = True

    def touch_paused(self) -> None:
        self.paused = True
        self.durable = True

    def emit(self, event: EventRecord) -> None:
        self.events.append(event)

    @property
    def changed(self) -> bool:
        return bool(
            self.touched or self.locks or self.workers or self.cursors or self.paused or self.events
        )

    def seal(self) -> Sealed:
        """Freeze this transition's redo delta (requires ``track``)."""
        assert self.track
        records: dict[str, tuple[bool, Any] | None] = {}
        for job_id, rec in self.touched.items():
            if rec is None:
                records[job_id] = None
                continue
            seen = self.images.get(job_id)
            image = _image(rec)
            if seen is None or seen[0] is not rec:
                records[job_id] = (True, image)
                continue
            changes = {
                index: new
                for index, old, new in zip(_INDEXES, seen[1], image, strict=True)
                if old is not new and old != new
            }
            if changes:
                records[job_id] = (False, changes)
        state = self.state
        return Sealed(
            records,
            {name: state.locks[name].encode() for name in self.locks} if self.locks else {},
            {worker_id: _encoded_worker(state, worker_id) for worker_id in self.workers}
            if self.workers
            else {},
            {schedule_id: state.cursors[schedule_id] for schedule_id in self.cursors}
            if self.cursors
            else {},
            state.paused if self.paused else None,
            [journaled_event(event) for event in self.events] if self.events else [],
            state.tail_seq,
            state.head_seq,
            self.durable,
        )


def _encoded_worker(state: NsState, worker_id: str) -> list[Any] | None:
    worker = state.workers.get(worker_id)
    return None if worker is None else encode_worker(worker)


def merge_entry(seals: Sequence[Sealed]) -> tuple[dict[str, Any], list[bytes]] | None:
    """One journal entry (and its blobs) for the transitions of one batch, in order;
    ``None`` if nothing changed."""
    records: dict[str, tuple[bool, Any] | None] = {}
    locks: dict[str, list[Any]] = {}
    workers: dict[str, list[Any] | None] = {}
    cursors: dict[str, float] = {}
    paused: bool | None = None
    events: list[EventRecord] = []
    for seal in seals:
        for job_id, item in seal.records.items():
            before = records.get(job_id)
            if item is None or item[0] or before is None:
                records[job_id] = item
            elif before[0]:  # created earlier in the batch, changed since: still whole
                image = list(before[1])
                for index, value in item[1].items():
                    image[index] = value
                records[job_id] = (True, image)
            else:
                records[job_id] = (False, {**before[1], **item[1]})
        locks.update(seal.locks)
        workers.update(seal.workers)
        cursors.update(seal.cursors)
        if seal.paused is not None:
            paused = seal.paused
        events.extend(seal.events)
    if not (records or locks or workers or cursors or paused is not None or events):
        return None
    blobs = BlobWriter()
    news: list[Any] = []
    updates: list[Any] = []
    dels: list[str] = []
    for job_id, item in records.items():
        if item is None:
            dels.append(job_id)
        elif item[0]:
            news.append(encode_image(item[1], blobs))
        else:
            update: list[Any] = [job_id]
            for index, value in item[1].items():
                update.append(CODES[index])
                if value is None or index not in _ENCODED_FIELDS:
                    update.append(value)
                else:
                    update.append(_out(index, value, blobs))
            updates.append(update)
    entry: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "ts": seals[-1].tail_seq,
        "hs": seals[-1].head_seq,
    }
    if news:
        entry["n"] = news
    if updates:
        entry["u"] = updates
    if dels:
        entry["d"] = dels
    if locks:
        entry["L"] = locks
    if workers:
        entry["W"] = workers
    if cursors:
        entry["C"] = cursors
    if paused is not None:
        entry["P"] = paused
    if events:
        entry["ev"] = [encode_event(event, blobs) for event in events]
    if blobs.parts:
        entry["B"] = blobs.lengths()
    return entry, blobs.parts


# -- transitions -----------------------------------------------------------------------------


def _live(tx: Tx, job_id: str) -> Rec | None:
    rec = tx.state.jobs.get(job_id)
    if rec is None:
        return None
    tx.see(rec)
    if rec.expires_at is not None and rec.expires_at <= tx.now:
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
    tx.wake = True


def _push_delayed(tx: Tx, rec: Rec, due: float) -> None:
    head = _next_due(tx.state)
    if head is None or due < head:
        tx.wake = True  # the new next due time: blocked claims sleep until a later one
    tx.state.tail_seq += 1
    rec.delay_seq = tx.state.tail_seq
    rec.ready_seq = None
    rec.due_at = due
    tx.put(rec)


def _next_due(st: NsState) -> float | None:
    """The due time of the next delayed record, dropping stale heap entries on the way."""
    delayed = st.delayed
    while delayed:
        due, _, seq, job_id = delayed[0]
        rec = st.jobs.get(job_id)
        if rec is not None and rec.delay_seq == seq and rec.due_at == due:
            return due
        heapq.heappop(delayed)
    return None


def _promote_due(tx: Tx) -> float | None:
    st = tx.state
    while (due := _next_due(st)) is not None:
        if due > tx.now:
            return due
        _, _, _, job_id = heapq.heappop(st.delayed)
        rec = st.jobs[job_id]
        tx.see(rec)
        if rec.state is JobState.SCHEDULED:
            rec.state = JobState.QUEUED
        _push_ready(tx, rec)
    return None


def _pop_ready(tx: Tx) -> Rec | None:
    st = tx.state
    lanes, priorities = st.lanes, st.priorities
    while priorities:
        priority = -priorities[0]
        entry = lanes[priority].pop()
        if entry is None:
            heapq.heappop(priorities)
            del lanes[priority]
            continue
        seq, job_id = entry
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
    tx: Tx,
    job_id: str,
    payload: bytes,
    max_attempts: int,
    result_ttl: float,
    priority: int = 0,
    run_at: float | None = None,
    delay: float | None = None,
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
        priority=priority,
    )
    status = EnqueueStatus.QUEUED
    if delay is not None:
        run_at = tx.now + delay
    if run_at is not None and run_at > tx.now:
        rec.state = JobState.SCHEDULED
        _push_delayed(tx, rec, run_at)
        status = EnqueueStatus.SCHEDULED
    else:
        _push_ready(tx, rec)
    if not tx.unheard:
        tx.emit(EventRecord(EventKind.ENQUEUED, job_id, 0))
    return EnqueueOutcome(status)


def enqueue_many(tx: Tx, jobs: Sequence[EnqueueSpec]) -> list[EnqueueOutcome]:
    return [
        enqueue(
            tx,
            job.job_id,
            job.payload,
            job.max_attempts,
            job.result_ttl,
            job.priority,
            job.run_at,
            job.delay,
        )
        for job in jobs
    ]


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


def get_payload(tx: Tx, job_id: str) -> bytes | None:
    rec = _live(tx, job_id)
    return None if rec is None else rec.payload


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
    if tx.state.paused:
        return [], None
    next_due = _promote_due(tx)
    claims: list[Claim] = []
    while len(claims) < limit:
        rec = _pop_ready(tx)
        if rec is None:
            break
        token = new_token()
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
        if not tx.unheard:
            tx.emit(EventRecord(EventKind.STARTED, rec.job_id, rec.attempts))
    if len(claims) < limit:
        tx.wake = False  # it took every ready job, promoted ones included: none left
    return claims, next_due


def heartbeat(tx: Tx, claims: Sequence[tuple[str, str]], lease: float) -> list[bool]:
    owned: list[bool] = []
    for job_id, token in claims:
        rec = _owned(tx, job_id, token)
        if rec is None:
            owned.append(False)
            continue
        rec.lease_until = tx.now + lease
        # Visible to every process, but not worth an fsync: after a crash that loses it,
        # the lease merely expires earlier (docs/file.md, "Heartbeats").
        tx.put(rec, durable=False)
        owned.append(True)
    return owned


def complete(tx: Tx, job_id: str, token: str, result: bytes, ttl: float) -> SettleStatus:
    rec = _owned(tx, job_id, token)
    if rec is None:
        return SettleStatus.STALE
    rec.result = result
    rec.error = None
    _finish(tx, rec, JobState.COMPLETED, ttl)
    if not tx.unheard or job_id in tx.watched:
        tx.emit(EventRecord(EventKind.COMPLETED, job_id, rec.attempts, result=rec.result))
    return SettleStatus.OK


def complete_many(tx: Tx, items: Sequence[Completion]) -> list[SettleStatus]:
    """:func:`complete` for each item, in order, in one transition."""
    return [complete(tx, c.job_id, c.token, c.result, c.ttl) for c in items]


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
        tx.see(rec)
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


def retry_job(tx: Tx, job_id: str) -> RetryStatus:
    """A ``failed`` job back to ``queued`` at the tail of its priority, attempts 0 (its
    last error kept until it runs); emits ``enqueued``."""
    rec = _live(tx, job_id)
    if rec is None:
        return RetryStatus.NOT_FOUND
    if rec.state is not JobState.FAILED:
        return RetryStatus.NOT_FAILED
    _requeue_failed(tx, rec)
    return RetryStatus.RETRIED


def _requeue_failed(tx: Tx, rec: Rec) -> None:
    rec.state = JobState.QUEUED
    rec.attempts = 0
    rec.finished_at = rec.expires_at = None
    _push_ready(tx, rec)
    tx.emit(EventRecord(EventKind.ENQUEUED, rec.job_id, 0))


def delete_job(tx: Tx, job_id: str) -> DeleteStatus:
    """Remove any job but a ``processing`` one (record, result, error); emits
    ``cancelled`` for a job that had not finished."""
    rec = _live(tx, job_id)
    if rec is None:
        return DeleteStatus.NOT_FOUND
    if rec.state is JobState.PROCESSING:
        return DeleteStatus.PROCESSING
    _delete(tx, rec)
    return DeleteStatus.DELETED


def _delete(tx: Tx, rec: Rec) -> None:
    tx.forget(rec)
    if not rec.state.is_terminal:
        tx.emit(EventRecord(EventKind.CANCELLED, rec.job_id, rec.attempts))


def state_order(rec: Rec) -> tuple[Any, ...]:
    """Where ``rec`` is in the order of its state (see ``Storage.delete_jobs``):
    scheduled by due time; queued in claim order; failing ones that are ready in claim
    order, then the delayed ones by due time; completed and failed by expiry; ties by
    the id's UTF-8 bytes."""
    state = rec.state
    if state is JobState.COMPLETED or state is JobState.FAILED:
        return (rec.expires_at, _key(rec.job_id))
    if rec.ready_seq is not None:
        return (0, -rec.priority, rec.ready_seq)
    return (1, rec.due_at, _key(rec.job_id))


def list_key(rec: Rec) -> tuple[Any, ...]:
    """The record's place in the list of its state (:func:`list_jobs`), ascending; the
    last element is the id's UTF-8 bytes. Completed and failed jobs are listed from the
    end (the latest to expire first)."""
    key = _key(rec.job_id)
    state = rec.state
    if state is JobState.PROCESSING:
        return (rec.lease_until, key)
    if state is JobState.COMPLETED or state is JobState.FAILED:
        return (rec.expires_at, key)
    if rec.ready_seq is not None:
        return (0, -rec.priority, rec.ready_seq, key)
    return (1, rec.due_at, key)


_NEWEST_FIRST = (JobState.COMPLETED, JobState.FAILED)


def encode_cursor(key: tuple[Any, ...]) -> str:
    parts = [{"b": part.hex()} if isinstance(part, bytes) else part for part in key]
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


def decode_cursor(cursor: str) -> tuple[Any, ...]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        key = tuple(bytes.fromhex(p["b"]) if isinstance(p, dict) else p for p in parts)
        if not key or not isinstance(key[-1], bytes):
            raise ValueError(cursor)
        return key
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a cursor of this queue: {cursor!r}") from exc


def list_jobs(
    tx: Tx, state: JobState, limit: int, cursor: str | None
) -> tuple[list[JobRecord], str | None]:
    """One page of the jobs in ``state``, after ``cursor``: O(log n + limit) once the
    listing exists (see :attr:`NsState.listing`)."""
    start_key = None if cursor is None else decode_cursor(cursor)
    purge(tx)
    ordered = tx.state.ensure_listing()[state]
    if state in _NEWEST_FIRST:
        end = len(ordered) if start_key is None else ordered.bisect_left(start_key)
        keys = list(ordered.islice(max(0, end - limit), end, reverse=True))
        more = end - len(keys) > 0
    else:
        begin = 0 if start_key is None else ordered.bisect_right(start_key)
        keys = list(ordered.islice(begin, begin + limit))
        more = begin + len(keys) < len(ordered)
    jobs = tx.state.jobs
    records = [jobs[key[-1].decode("utf-8")].snapshot() for key in keys]
    return records, (encode_cursor(keys[-1]) if more and keys else None)


def _in_state(tx: Tx, state: JobState, limit: int) -> list[Rec]:
    """The first ``limit`` live jobs in ``state``, in :func:`state_order` (bulk operations
    only: a scan of the namespace)."""
    purge(tx)
    found = sorted((rec for rec in tx.state.jobs.values() if rec.state is state), key=state_order)[
        :limit
    ]
    return [tx.see(rec) for rec in found]


def retry_failed(tx: Tx, limit: int) -> int:
    recs = _in_state(tx, JobState.FAILED, limit)
    for rec in recs:
        _requeue_failed(tx, rec)
    return len(recs)


def delete_jobs(tx: Tx, state: JobState, limit: int) -> int:
    if state is JobState.PROCESSING:
        raise ValueError("processing jobs cannot be deleted")
    recs = _in_state(tx, state, limit)
    for rec in recs:
        _delete(tx, rec)
    return len(recs)


def set_paused(tx: Tx, paused: bool) -> None:
    if tx.state.paused != paused:
        tx.state.paused = paused
        tx.touch_paused()


def is_paused(tx: Tx) -> bool:
    return tx.state.paused


# -- running-job control ----------------------------------------------------------------------


def force_cancel(tx: Tx, job_id: str) -> CancelStatus:
    """:func:`cancel`, and a ``processing`` job is removed as well (``cancelling``): its
    token owns nothing from now on; ``cancelled`` carries the running attempt."""
    rec = _live(tx, job_id)
    if rec is None or rec.state is not JobState.PROCESSING:
        return cancel(tx, job_id)
    tx.forget(rec)
    tx.emit(EventRecord(EventKind.CANCELLED, job_id, rec.attempts))
    return CancelStatus.CANCELLING


def set_progress(tx: Tx, job_id: str, token: str, progress: bytes) -> SettleStatus:
    rec = _owned(tx, job_id, token)
    if rec is None:
        return SettleStatus.STALE
    rec.progress = progress
    # Like a heartbeat: worth no fsync (a crash that loses it loses a progress report).
    tx.put(rec, durable=False)
    tx.emit(EventRecord(EventKind.PROGRESS, job_id, rec.attempts, result=progress))
    return SettleStatus.OK


def fire_schedule(
    tx: Tx,
    schedule_id: str,
    tick: float,
    job_id: str,
    payload: bytes,
    max_attempts: int,
    result_ttl: float,
    priority: int,
    fence: Fence,
) -> FireStatus:
    if not _fence_ok(tx, fence):
        return FireStatus.FENCED
    cursors = tx.state.cursors
    last = cursors.get(schedule_id)
    if last is not None and tick <= last:
        return FireStatus.PAST
    cursors[schedule_id] = tick
    tx.touch_cursor(schedule_id)
    outcome = enqueue(tx, job_id, payload, max_attempts, result_ttl, priority)
    if outcome.status is EnqueueStatus.QUEUED:
        return FireStatus.ENQUEUED
    return FireStatus.DUPLICATE


def schedule_cursors(tx: Tx) -> dict[str, float]:
    return dict(tx.state.cursors)


def acquire_lock(
    tx: Tx, lock: str, owner: str, ttl: float, take_from_dead: bool = False
) -> int | None:
    held = tx.state.locks.get(lock)
    if held is None:
        held = tx.state.locks[lock] = Lock()
    if held.owner == owner and not lock_expired(held.expires_at, tx.now):
        held.expires_at = tx.now + ttl
        tx.touch_lock(lock, durable=False)  # only the expiry moved (as renew_lock)
        return held.epoch
    live = held.owner is not None and not lock_expired(held.expires_at, tx.now)
    if live and (not take_from_dead or _registered(tx, held.owner or "")):
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
    # Like a heartbeat: losing it in a crash only makes the lock expire earlier; epochs
    # (acquire_lock) are always durable.
    tx.touch_lock(lock, durable=False)
    return True


def release_lock(tx: Tx, lock: str, owner: str, epoch: int) -> bool:
    held = tx.state.locks.get(lock)
    if held is None or held.owner != owner or held.epoch != epoch:
        return False
    held.owner = None
    held.expires_at = -math.inf
    tx.touch_lock(lock)
    return True


def lock_holder(tx: Tx, lock: str) -> LockHolder | None:
    held = tx.state.locks.get(lock)
    if held is None or held.owner is None or lock_expired(held.expires_at, tx.now):
        return None
    return LockHolder(held.owner, held.epoch, held.expires_at)


# -- worker registry -------------------------------------------------------------------------


def _registered(tx: Tx, worker_id: str) -> bool:
    rec = tx.state.workers.get(worker_id)
    return rec is not None and rec.expires_at > tx.now


def _forget_dead_workers(tx: Tx) -> None:
    workers = tx.state.workers
    for worker_id in [k for k, rec in workers.items() if rec.expires_at <= tx.now]:
        del workers[worker_id]
        tx.touch_worker(worker_id)


def register_worker(tx: Tx, record: WorkerRecord, ttl: float) -> None:
    _forget_dead_workers(tx)
    tx.state.workers[record.worker_id] = attrs.evolve(
        record, last_seen=tx.now, expires_at=tx.now + ttl
    )
    tx.touch_worker(record.worker_id)


def unregister_worker(tx: Tx, worker_id: str) -> bool:
    live = _registered(tx, worker_id)
    if tx.state.workers.pop(worker_id, None) is not None:
        tx.touch_worker(worker_id)
    return live


def list_workers(tx: Tx) -> list[WorkerRecord]:
    live = [rec for rec in tx.state.workers.values() if rec.expires_at > tx.now]
    return sorted(live, key=lambda rec: (rec.started_at, rec.worker_id))


def stats(tx: Tx) -> StorageStats:
    """O(1) amortized (see the module docstring). Read-only for the claim order: a due
    retry counts as queued but is not moved."""
    purge(tx)
    st = tx.state
    st.advance_due(tx.now)
    counts = st.counts
    return StorageStats(
        queued=counts[READY] + counts[DUE],
        delayed=counts[DELAYED],
        processing=counts[PROCESSING],
        completed=counts[COMPLETED],
        failed=counts[FAILED],
        scheduled=counts[SCHEDULED],
    )
