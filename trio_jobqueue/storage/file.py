"""FileStorage: a durable single-host backend, safe across processes (see ``docs/file.md``).

Layout (one directory per namespace under ``<root>/ns/``)::

    lock            flock(2) target: every transition holds it exclusively
    name            the namespace's name, for humans
    journal.N ...   append-only redo logs (deltas); the highest N is the one written to,
                    the others are sealed; also the namespace's event log
    snapshot        the whole namespace at the start of some generation G <= N
    snapshot.prev   the snapshot before it (the fallback if ``snapshot`` is corrupt)
    quarantine/     (under the root) corrupt or foreign files, moved aside

A transition is one **locked transaction** run in a worker thread: take the flock, catch up
with the frames other processes appended (following sealed journals to the newest),
apply the transition to the in-memory mirror (:mod:`._state`), append one checksummed
frame holding only what changed, fsync (not when the batch only extended leases), unlock.
Concurrent calls from one storage object are coalesced into one transaction and one
fsync (group commit). The frame is the commit point: a process killed before the frame is
complete leaves a torn tail that the next transaction cuts off (the call never returned),
and a complete frame is a committed transition.

Compaction: the transaction that finds the journal larger than ``compact_bytes`` and the
snapshot seals it, under the lock, by creating the next journal (the generation switch);
then, **without the lock**, a background thread rebuilds the state at the switch from the
files (latest snapshot + sealed journals, which nobody writes any more) and writes it as
``snapshot.N.tmp``; the lock is taken again only to rename ``snapshot`` to
``snapshot.prev`` and the new file to ``snapshot`` and to delete the journals the previous
snapshot no longer needs.

Notifications: every process tails the journal of the namespaces it waits on. inotify
(read on the trio thread; ``watchfiles`` where there is no inotify; polling when forced)
wakes the tailer, which delivers events to subscribers, fires job watches and wakes
blocked claims. A process's own transactions hand the events they read and wrote to its
hub directly when the tailer is at that point of the journal, without a re-read.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import math
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from .._errors import StorageError
from .._types import CancelStatus, DeleteStatus, JobState, RetryStatus, UpdateTtlStatus
from . import _file_io as fio
from . import _state as fst
from ._base import (
    ClaimBatch,
    Completion,
    EnqueueOutcome,
    EnqueueSpec,
    EventRecord,
    Fence,
    FireStatus,
    JobRecord,
    LockHolder,
    ReapResult,
    RecordPage,
    SettleStatus,
    Storage,
    StorageStats,
    WorkerRecord,
)
from ._core import FollowKind

__all__ = ["FileStatistics", "FileStorage", "QuarantineReport"]

logger = logging.getLogger("trio_jobqueue.storage.file")

T = TypeVar("T")
Pos = tuple[int, int]
"""A journal position: (generation, byte offset)."""

COMPACT_BYTES = 8 << 20
"""Compact once the journal is larger than this and than the snapshot."""
SAFETY_POLL = 1.0
"""With a working file watcher, still re-read watched journals this often (missed events)."""
INLINE_READ = 64 * 1024
"""With inotify (a local filesystem), the tailer reads up to this many freshly appended
journal bytes on the trio thread (they are in the page cache); more goes to a thread."""
CRASH_ENV = "TRIO_JOBQUEUE_FILE_CRASH_AT"
"""Private test hook: ``point[:n]`` makes the process ``os._exit(137)`` the n-th time it
reaches ``point`` (one of :data:`CRASH_POINTS`)."""
PAUSE_ENV = "TRIO_JOBQUEUE_FILE_PAUSE_AT"
"""Private test hook: ``point:path`` makes the thread that reaches ``point`` create
``path.paused`` and wait until ``path`` exists."""
CRASH_POINTS = (
    "before-append",
    "mid-append",
    "after-append",
    "after-fsync",
    "compact-journal",
    "compact-serialise",
    "compact-snapshot",
    "compact-install",
    "compact-installed",
)
"""In order: in a transaction (before the frame, half of it written, written but not
fsynced, fsynced); the generation switch (next journal created, lock still held); the
background build (state rebuilt, nothing written; the new snapshot written as a temp
file; ``snapshot`` renamed to ``snapshot.prev``; the new snapshot renamed into place, old
journals not yet deleted)."""


@attrs.frozen
class QuarantineReport:
    """A corrupt or foreign file that was moved aside (the queue kept working)."""

    path: str
    """Where the file (or the cut-off bytes) now lives, under ``<root>/quarantine/``."""
    reason: str


@attrs.frozen
class FileStatistics:
    """What one :class:`FileStorage` object wrote, summed over its namespaces."""

    transactions: int
    """Locked transactions run (each one a batch of calls)."""
    frames: int
    """Journal frames appended (transactions that changed something)."""
    bytes_appended: int
    """Journal bytes appended."""
    fsyncs: int
    """Journal fsyncs (frames that only extended leases, locks or forgot expired records
    have none)."""
    snapshots: int
    """Snapshots written and installed by compaction."""


@attrs.define(eq=False)
class _Op:
    fn: Callable[[fst.Tx], Any]
    taken: bool = False
    done: bool = False
    retry: bool = False
    value: Any = None
    exc: Exception | None = None
    pos: Pos = (0, 0)
    task: trio.lowlevel.Task | None = None
    """The caller's task while it is blocked in :meth:`FileStorage._wait`."""


class _FeedChunk:
    """One frame for the hub: its events, or (a frame read from the journal) its entry,
    whose events are decoded only if they are delivered."""

    __slots__ = ("_events", "end", "frame", "gen", "jid", "start")

    def __init__(
        self,
        gen: int,
        start: int,
        end: int,
        events: tuple[EventRecord, ...] | None = (),
        frame: fio.Frame | None = None,
        jid: tuple[int, int] | None = None,
    ) -> None:
        self.gen, self.start, self.end = gen, start, end
        self._events = events
        self.frame = frame
        """The frame as read (``None``: written by this process, or undecodable)."""
        self.jid = jid
        """The journal file it was read from (device, inode), when the tailer read it."""

    @property
    def events(self) -> tuple[EventRecord, ...]:
        if self._events is None:
            assert self.frame is not None
            try:
                self._events = tuple(fst.entry_events(self.frame.entry, self.frame.blobs))
            except fst.CorruptRecord:
                self._events = ()  # the transaction that replays it quarantines it
        return self._events


@attrs.define(eq=False)
class _Outcome:
    """What one transaction did, for the trio side."""

    wrote: bool = False
    origin: Pos | None = None
    """Where the mirror was before the transaction (``None``: reloaded from the files)."""
    chunks: list[_FeedChunk] = attrs.Factory(list)
    """Every frame the transaction read or wrote, contiguous from ``origin``."""
    build: int | None = None
    """A generation switched to: its snapshot is to be built."""


@attrs.define(eq=False)
class _Space:
    """One namespace as seen by one storage object."""

    ns: str
    dir: str
    # -- group commit (trio side) --
    pending: list[_Op] = attrs.Factory(list)
    committing: bool = False
    idle: trio.Event = attrs.Factory(trio.Event)
    # -- the mirror (touched only by the one thread running this space's transaction, and
    # by the tailer on the trio thread while none runs: _advance_mirror) --
    prepared: bool = False
    named: bool = False
    lock_fd: int | None = None
    state: fst.NsState | None = None
    gen: int = 0
    jfd: int | None = None
    jsize: int = 0
    jid: tuple[int, int] = (0, 0)
    """(device, inode) of the open journal: replaced or deleted means reload."""
    # -- counters (each written by one thread at a time) --
    transactions: int = 0
    frames: int = 0
    bytes_appended: int = 0
    fsyncs: int = 0
    snapshots: int = 0
    # -- notifications (trio side) --
    interest: int = 0
    pos: Pos | None = None
    pumping: bool = False
    deferred: bool = False
    """A tailer read skipped while a transaction ran (it hands over, then re-kicks)."""
    watched: bool = False
    last_end: Pos | None = None
    """The end of the journal as last seen by a transaction or the tailer."""
    # -- compaction (trio side) --
    build_due: int | None = None


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


def _abspath(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


class _Inotify:
    """Linux inotify through libc: change notifications read on the trio thread (no
    helper thread, no debounce), one watch per followed namespace directory."""

    _MASK = 0x2 | 0x80 | 0x100  # IN_MODIFY | IN_MOVED_TO | IN_CREATE
    _OVERFLOW = 0x4000  # IN_Q_OVERFLOW
    _EVENT = struct.Struct("iIII")

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError(errno.ENOSYS, "inotify is Linux-only")
        libc = ctypes.CDLL(None, use_errno=True)
        self._init = libc.inotify_init1
        self._init.argtypes = [ctypes.c_int]
        self._init.restype = ctypes.c_int
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        fd = self._init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd = fd

    def watch(self, path: str) -> None:
        if self._add(self.fd, os.fsencode(path), self._MASK) < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)

    def drain(self) -> bool:
        """Read every pending notification; whether a journal changed (or some were lost)."""
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            pos = 0
            while pos + self._EVENT.size <= len(data):
                _, mask, _, length = self._EVENT.unpack_from(data, pos)
                name = data[pos + self._EVENT.size : pos + self._EVENT.size + length]
                pos += self._EVENT.size + length
                if mask & self._OVERFLOW or name.startswith(b"journal."):
                    changed = True

    def close(self) -> None:
        os.close(self.fd)


@attrs.define(eq=False)
class FileStorage(Storage):
    """Storage in a local directory, shared safely by processes on one host.

    Args:
        path: the queue directory (created with mode 0o700 if missing).
        fsync: make every transition durable before it returns (default). ``False`` keeps
            atomicity and crash-safety against process death but may lose the last
            transitions on power loss.
        force_polling: never use inotify; re-read watched journals every ``poll_interval``
            (for NFS and volumes without inotify).
        poll_interval: seconds between re-reads when polling.
        compact_bytes: journal size that triggers compaction (also needs journal > snapshot).

    Corrupt or foreign files are moved to ``<path>/quarantine/``, logged on the
    ``trio_jobqueue.storage.file`` logger and listed in :attr:`quarantined`.
    """

    path: str = attrs.field(converter=_abspath)
    fsync: bool = attrs.field(default=True, kw_only=True)
    force_polling: bool = attrs.field(default=False, kw_only=True)
    poll_interval: float = attrs.field(default=0.05, kw_only=True, validator=_positive)
    compact_bytes: int = attrs.field(default=COMPACT_BYTES, kw_only=True)

    quarantined: list[QuarantineReport] = attrs.field(factory=list, init=False)
    _spaces: dict[str, _Space] = attrs.field(factory=dict, init=False)
    _kick: trio.Event = attrs.field(factory=trio.Event, init=False)
    _build_kick: trio.Event = attrs.field(factory=trio.Event, init=False)
    _scopes: list[trio.CancelScope] = attrs.field(factory=list, init=False)
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _tasks_done: list[trio.Event] = attrs.field(factory=list, init=False)
    _serving: bool = attrs.field(default=False, init=False)
    _polling: bool = attrs.field(default=False, init=False)
    _inotify: _Inotify | None = attrs.field(default=None, init=False)
    _crash_point: tuple[str, int] | None = attrs.field(default=None, init=False)
    _crash_count: int = attrs.field(default=0, init=False)
    _pause_point: tuple[str, str] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        spec = os.environ.get(CRASH_ENV)
        if spec:
            point, _, count = spec.partition(":")
            self._crash_point = (point, int(count or "1"))
        spec = os.environ.get(PAUSE_ENV)
        if spec:
            point, _, flag = spec.partition(":")
            self._pause_point = (point, flag)

    # -- lifetime -------------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            await trio.to_thread.run_sync(self._prepare_root)
        except OSError as exc:
            raise StorageError(f"cannot open file storage at {self.path!r}: {exc}") from exc
        self._stop = trio.Event()
        self._kick = trio.Event()
        self._build_kick = trio.Event()
        self._polling = self.force_polling
        self._scopes = []
        self._tasks_done = []
        tasks: list[Callable[[], Any]] = [self._serve_feeds, self._serve_compactions]
        if not self.force_polling:
            try:
                self._inotify = _Inotify()
            except (OSError, AttributeError) as exc:  # AttributeError: no such libc symbol
                logger.info("inotify unavailable (%s); using watchfiles", exc)
                tasks.append(self._serve_watcher)
            else:
                tasks.append(self._serve_inotify)
        for fn in tasks:
            scope = trio.CancelScope()
            done = trio.Event()
            self._scopes.append(scope)
            self._tasks_done.append(done)
            trio.lowlevel.spawn_system_task(
                self._system_task, fn, scope, done, name=f"FileStorage.{fn.__name__}"
            )
        self._serving = True

    async def _close(self) -> None:
        self._serving = False
        self._stop.set()
        for scope in self._scopes:
            scope.cancel()
        for done in self._tasks_done:
            await done.wait()
        self._scopes = []
        # A generation switched to but not compacted yet: build its snapshot now rather
        # than leave the journals to grow until another process switches again.
        await self._run_builds()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for space in self._spaces.values():
            while space.committing:
                await space.idle.wait()
            for fd in (space.jfd, space.lock_fd):
                if fd is not None:
                    os.close(fd)
            space.jfd = space.lock_fd = None
            space.state = None
            space.prepared = space.named = False
            space.watched = False

    async def _system_task(
        self, fn: Callable[[], Any], scope: trio.CancelScope, done: trio.Event
    ) -> None:
        # System tasks must not raise: a crash here would take the whole trio run down.
        try:
            with scope:
                await fn()
        except Exception:
            logger.exception("FileStorage background task %s crashed", fn.__name__)
            self._polling = True
        finally:
            done.set()

    def _prepare_root(self) -> None:
        if not os.path.isdir(self.path):
            os.makedirs(os.path.dirname(self.path) or "/", exist_ok=True)
            fio.make_dir(self.path, fsync=self.fsync)
        fio.make_dir(os.path.join(self.path, fio.NAMESPACES), fsync=self.fsync)

    # -- time -----------------------------------------------------------------------------

    def now(self) -> float:
        """The storage clock: epoch seconds (shifted by :meth:`advance_clock`)."""
        return time.time() + self._clock_offset

    def statistics(self) -> FileStatistics:
        """What this object wrote so far (see :class:`FileStatistics`)."""
        spaces = list(self._spaces.values())
        return FileStatistics(
            transactions=sum(s.transactions for s in spaces),
            frames=sum(s.frames for s in spaces),
            bytes_appended=sum(s.bytes_appended for s in spaces),
            fsyncs=sum(s.fsyncs for s in spaces),
            snapshots=sum(s.snapshots for s in spaces),
        )

    # -- group commit ---------------------------------------------------------------------

    def _space(self, ns: str) -> _Space:
        space = self._spaces.get(ns)
        if space is None:
            space = self._spaces[ns] = _Space(
                ns, os.path.join(self.path, fio.NAMESPACES, fio.safe_name(ns))
            )
        return space

    async def _run(self, ns: str, fn: Callable[[fst.Tx], T]) -> tuple[T, Pos]:
        """Run ``fn`` as (part of) one locked transaction; return its value and the
        journal position where the transaction's frame starts (the end of the journal if
        it wrote nothing).

        The frame holds every transition of the batch (group commit), so a reader that
        starts at this position also sees what other calls did in the same transaction:
        a claim that found nothing then cannot miss the wake-up of an enqueue committed
        right after it in the same frame.

        Cancellation: an op not yet handed to a transaction is withdrawn (nothing done);
        once handed over, the transaction finishes and the caller gets its result.
        """
        space = self._space(ns)
        op = _Op(fn)
        space.pending.append(op)
        try:
            while not op.done:
                if op.taken or space.committing:
                    await self._wait(space, op)
                else:
                    await self._drive(space)
        finally:
            if not op.taken and not op.done and op in space.pending:
                space.pending.remove(op)
        if op.exc is not None:
            raise op.exc
        value: T = op.value
        return value, op.pos

    @staticmethod
    async def _wait(space: _Space, op: _Op) -> None:
        """Block until the transaction that took ``op`` finished it, or until this task
        is to drive the next batch (:meth:`_wake`): one wake-up per op, without a cancel
        scope. Cancellation withdraws an op no transaction took yet (nothing done); a
        taken op is waited for as if shielded (its result is delivered, the caller's next
        checkpoint raises)."""
        op.task = trio.lowlevel.current_task()

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            if op.taken or op.done:
                return trio.lowlevel.Abort.FAILED  # woken by the transaction that took it
            op.task = None
            space.pending.remove(op)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    @staticmethod
    def _wake(op: _Op) -> None:
        task, op.task = op.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def _drive(self, space: _Space) -> None:
        batch, space.pending = space.pending, []
        space.committing = True
        for op in batch:
            op.taken = True
        outcome = _Outcome()
        try:
            with trio.CancelScope(shield=True):
                outcome = await trio.to_thread.run_sync(self._commit, space, batch)
        finally:
            space.committing = False
            requeue = [op for op in batch if op.retry and not op.done]
            for op in requeue:
                op.taken = op.retry = False
            for op in batch:
                if not op.done and op not in requeue:
                    op.exc = StorageError("file storage transaction did not run")
                    op.done = True
            space.pending[:0] = requeue
            self._hand_over(space, outcome)
            if outcome.build is not None:
                space.build_due = max(space.build_due or 0, outcome.build)
                self._build_kick.set()
            for op in batch:
                if op.done:
                    self._wake(op)
            if space.pending:
                # The next batch: its first op's task drives it (if that task is not
                # running already; a task that appends an op meanwhile drives it first).
                self._wake(space.pending[0])
            idle, space.idle = space.idle, trio.Event()
            idle.set()
        if outcome.build is not None and not self._serving:
            # No background task (the storage is not open): compact in this call.
            with trio.CancelScope(shield=True):
                await self._run_builds()

    def _hand_over(self, space: _Space, outcome: _Outcome) -> None:
        """Deliver the events of the frames a transaction read and wrote straight to the
        hub when the tailer is at that point of the journal (no re-read); else wake it."""
        chunks = outcome.chunks
        if outcome.origin is not None:
            space.last_end = (chunks[-1].gen, chunks[-1].end) if chunks else outcome.origin
        deferred, space.deferred = space.deferred, False
        pos = space.pos
        if pos is None or not space.interest:
            return
        delivered = False
        if chunks and outcome.origin is not None:
            end = (chunks[-1].gen, chunks[-1].end)
            if outcome.origin <= pos <= end:
                self._dispatch(space, [c for c in chunks if (c.gen, c.start) >= pos])
                space.pos = end
                delivered = True
        if (outcome.wrote and not delivered) or deferred:
            # Not handed over (the tailer is elsewhere), or a wake-up came meanwhile
            # (perhaps for another process's frame after ours): let the tailer read.
            self._kick.set()

    # -- transactions (worker thread) -----------------------------------------------------

    def _checkpoint(self, point: str) -> None:
        """The test hooks (:data:`CRASH_ENV`, :data:`PAUSE_ENV`) at ``point``."""
        if self._pause_point is not None and self._pause_point[0] == point:
            flag = self._pause_point[1]
            fio.write_file(flag + ".paused", [str(os.getpid()).encode()], fsync=False)
            while not os.path.exists(flag):
                time.sleep(0.005)
        if self._crash_point is not None and self._crash_point[0] == point:
            self._crash_count += 1
            if self._crash_count >= self._crash_point[1]:
                os._exit(137)

    def _report(self, path: str, reason: str) -> None:
        logger.warning("file storage: quarantined %s (%s)", path, reason)
        self.quarantined.append(QuarantineReport(path, reason))

    def _commit(self, space: _Space, batch: list[_Op]) -> _Outcome:
        """One locked transaction for ``batch``."""
        executed: list[_Op] = []
        outcome = _Outcome()
        try:
            self._prepare_space(space)
            assert space.lock_fd is not None
            fcntl.flock(space.lock_fd, fcntl.LOCK_EX)
            try:
                space.transactions += 1
                if not space.named:
                    if not os.path.exists(os.path.join(space.dir, fio.NAME)):
                        data = space.ns.encode("utf-8")
                        fio.atomic_write(space.dir, fio.NAME, data, fsync=self.fsync)
                    space.named = True
                state, outcome.origin = self._sync(space, outcome.chunks)
                seals: list[fst.Sealed] = []
                poisoned = False
                for index, op in enumerate(batch):
                    tx = fst.Tx(state, self.now(), track=True)
                    try:
                        op.value = op.fn(tx)
                        seal = tx.seal()
                    except Exception as exc:  # noqa: BLE001 - re-raised in the caller's task
                        # The mirror may be half-changed: write what came before (sealed
                        # before this op ran), then reload from disk; the ops after this
                        # one run in the next batch.
                        op.exc = exc
                        op.done = True
                        for rest in batch[index + 1 :]:
                            rest.retry = True
                        poisoned = True
                        break
                    seals.append(seal)
                    executed.append(op)
                pos, chunk = self._append(space, seals)
                sync = space.jfd if chunk is not None and self._needs_sync(seals) else None
                if chunk is not None:
                    outcome.wrote = True
                    outcome.chunks.append(chunk)
                if poisoned:
                    space.state = None
                outcome.build = self._maybe_switch(space)
                if outcome.build is not None:
                    sync = None  # the switch fsynced the journal the frame is in
            finally:
                fcntl.flock(space.lock_fd, fcntl.LOCK_UN)
            if sync is not None:
                # After the unlock: the other processes' transactions need not wait for
                # this fsync. The frame is visible before it is durable, as it always was
                # to their tailers; a frame another process writes after it is in the
                # same file, so that process's fsync covers this one too (prefix-closed).
                # The calls of the batch return only once it is durable.
                os.fdatasync(sync)
                space.fsyncs += 1
            if chunk is not None:
                self._checkpoint("after-fsync")
            for op in executed:
                op.pos = pos
                op.done = True
        except Exception as exc:  # handed to every caller as a StorageError
            # OSError, or a bug: either way the mirror may be ahead of the disk.
            space.state = None
            if not isinstance(exc, OSError):
                logger.error("file storage transaction failed", exc_info=exc)
            for op in batch:
                if not op.done:
                    error = StorageError(f"file storage failed in {space.dir!r}: {exc!r}")
                    error.__cause__ = exc
                    op.exc = error
                    op.done = True
            return _Outcome(wrote=outcome.wrote)
        return outcome

    def _prepare_space(self, space: _Space) -> None:
        if space.prepared:
            return
        if not os.path.isdir(space.dir):
            fio.make_dir(space.dir, fsync=self.fsync)
        if space.lock_fd is None:
            space.lock_fd = fio.open_file(os.path.join(space.dir, fio.LOCK), os.O_RDWR | os.O_CREAT)
        space.prepared = True

    def _journal(self, space: _Space, gen: int) -> str:
        return os.path.join(space.dir, fio.journal_name(gen))

    def _sync(self, space: _Space, chunks: list[_FeedChunk]) -> tuple[fst.NsState, Pos | None]:
        """Bring the mirror up to date with the disk (lock held); collect the frames read
        into ``chunks``. Returns the state and where the mirror was (``None``: reloaded)."""
        if space.state is not None:
            origin = (space.gen, space.jsize)
            if self._follow(space, chunks):
                return space.state, origin
            chunks.clear()  # our journal was deleted or replaced under us
        self._load(space)
        assert space.state is not None
        return space.state, None

    def _follow(self, space: _Space, chunks: list[_FeedChunk]) -> bool:
        """Read the new frames of the mirror's journal and of every journal sealed after
        it; ``False`` if the mirror cannot follow (its journal is gone: reload)."""
        while True:
            self._catch_up(space, chunks)
            if not os.path.exists(self._journal(space, space.gen + 1)):
                break
            # Sealed: its writer switched under the lock after its last frame, and we hold
            # the lock, so what we read is all of it.
            self._open_journal(space, space.gen + 1)
        try:
            st = os.stat(self._journal(space, space.gen))
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == space.jid

    def _read_snapshot(self, path: str) -> tuple[int, fst.NsState]:
        with open(path, "rb") as f:
            data = f.read()
        snap = fio.decode_snapshot(data)
        return snap.gen, fst.NsState.decode(snap.body, snap.blobs)

    def _load(self, space: _Space) -> None:
        """Rebuild the mirror: the newest snapshot that decodes and whose journals are all
        there (``snapshot``, else ``snapshot.prev``, else the empty generation 0), plus
        every journal since; reset the namespace only when none is usable."""
        space.state = None
        names = set(os.listdir(space.dir))
        gens = sorted(g for g in map(fio.parse_journal_name, names) if g is not None)
        head = gens[-1] if gens else 0
        have = set(gens)
        bad: list[tuple[str, str]] = []
        base: tuple[int, fst.NsState] | None = None
        for name in (fio.SNAPSHOT, fio.SNAPSHOT_PREV):
            if name not in names:
                continue
            try:
                gen, state = self._read_snapshot(os.path.join(space.dir, name))
            except (fio.SnapshotError, fst.CorruptRecord) as exc:
                bad.append((name, f"corrupt snapshot: {exc}"))
                continue
            missing = [g for g in range(gen, head + 1) if g not in have]
            if gen > head or missing:
                bad.append((name, f"snapshot of generation {gen} without its journals"))
                continue
            base = (gen, state)
            break
        # Generation 0 starts empty, by definition: usable with all its journals, or for a
        # namespace that never had a snapshot nor a journal (a new one).
        generation_0 = gens == list(range(head + 1)) if gens else not bad
        if base is None and generation_0:
            base = (0, fst.NsState())
        if base is None:
            gen = self._reset(space, bad, gens)
            base, gens, head = (gen, fst.NsState()), [gen], gen
        else:
            for name, reason in bad:
                why = f"{reason}; recovered from an older snapshot and its journals"
                self._report(fio.quarantine(self.path, space.dir, name, why), why)
        gen, state = base
        for sealed in range(gen, head):
            self._replay_sealed(space, state, sealed)
        space.state = state
        self._open_journal(space, max(gen, head))
        self._catch_up(space, None)
        self._scan_dir(space)

    def _reset(self, space: _Space, bad: list[tuple[str, str]], gens: list[int]) -> int:
        """No usable snapshot: quarantine the snapshots and journals and start a new,
        empty generation above every one a process may know (nothing can be trusted;
        this happens only if something other than this library wrote the files)."""
        known = list(gens)
        reasons = dict(bad)
        for name in (fio.SNAPSHOT, fio.SNAPSHOT_PREV):
            path = os.path.join(space.dir, name)
            if os.path.exists(path):
                known.append(fio.read_snapshot_gen(path))
                why = reasons.get(name, "snapshot without a usable base")
                self._report(fio.quarantine(self.path, space.dir, name, why), why)
        for journal_gen in gens:
            name = fio.journal_name(journal_gen)
            why = "journal of an unusable snapshot"
            self._report(fio.quarantine(self.path, space.dir, name, why), why)
        gen = max(known, default=0) + 2
        fio.atomic_write(
            space.dir,
            fio.SNAPSHOT,
            b"".join(fio.snapshot_parts(gen, *fst.NsState().encode())),
            fsync=self.fsync,
        )
        return gen

    def _replay_sealed(self, space: _Space, state: fst.NsState, gen: int) -> None:
        with open(self._journal(space, gen), "rb") as f:
            data = f.read()
        for item in fio.iter_frames(data, 0):
            if isinstance(item, fio.Frame):
                try:
                    state.apply_entry(item.entry, item.blobs)
                except fst.CorruptRecord as exc:
                    raw = data[item.start : item.end]
                    self._quarantine_bytes(space, gen, raw, f"undecodable journal entry: {exc}")
                continue
            reason = f"corrupt tail of a sealed journal: {item.reason}"
            self._quarantine_bytes(space, gen, data[item.offset :], reason)
            break

    def _scan_dir(self, space: _Space) -> None:
        """Move foreign files aside; drop journals older than the previous snapshot and
        leftovers of compactions that can no longer be installed."""
        prev_gen = max(fio.read_snapshot_gen(os.path.join(space.dir, fio.SNAPSHOT_PREV)), 0)
        latest = fio.read_snapshot_gen(os.path.join(space.dir, fio.SNAPSHOT))
        known = {fio.LOCK, fio.NAME, fio.NAME + ".tmp", fio.SNAPSHOT, fio.SNAPSHOT_PREV}
        for name in os.listdir(space.dir):
            if name in known:
                continue
            journal_gen = fio.parse_journal_name(name)
            if journal_gen is not None:
                if journal_gen < prev_gen:
                    os.unlink(os.path.join(space.dir, name))
                continue
            build_gen = fio.parse_build_name(name)
            if build_gen is not None or name == fio.SNAPSHOT_TMP:
                if name == fio.SNAPSHOT_TMP or (build_gen is not None and build_gen <= latest):
                    os.unlink(os.path.join(space.dir, name))
                continue
            reason = "foreign file in a namespace directory"
            self._report(fio.quarantine(self.path, space.dir, name, reason), reason)

    def _open_journal(self, space: _Space, gen: int, *, create: bool = False) -> None:
        """Make journal ``gen`` the mirror's (created if missing; ``create``: it must not
        exist yet, this is the generation switch)."""
        if space.jfd is not None:
            os.close(space.jfd)
            space.jfd = None
        path = self._journal(space, gen)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        if create:
            flags |= os.O_EXCL
            new = True
        else:
            new = not os.path.exists(path)
        space.jfd = fio.open_file(path, flags)
        st = os.fstat(space.jfd)
        space.gen, space.jsize, space.jid = gen, 0, (st.st_dev, st.st_ino)
        if new and self.fsync:
            os.fsync(space.jfd)
            fio.fsync_dir(space.dir)

    def _catch_up(self, space: _Space, chunks: list[_FeedChunk] | None) -> None:
        """Apply the frames other processes appended; cut off a torn or corrupt tail."""
        assert space.jfd is not None and space.state is not None
        base = space.jsize
        data = fio.read_from(space.jfd, base)
        for item in fio.iter_frames(data, base):
            if isinstance(item, fio.Frame):
                try:
                    space.state.apply_entry(item.entry, item.blobs)
                    frame: fio.Frame | None = item
                except fst.CorruptRecord as exc:
                    raw = data[item.start - base : item.end - base]
                    reason = f"undecodable journal entry: {exc}"
                    self._quarantine_bytes(space, space.gen, raw, reason)
                    frame = None
                if chunks is not None:
                    events = None if frame is not None else ()
                    chunks.append(_FeedChunk(space.gen, item.start, item.end, events, frame))
                space.jsize = item.end
                continue
            rest = data[item.offset - base :]
            # We hold the lock, so no writer is mid-append: this tail is what a killed
            # writer left (incomplete) or damage. Either way it was never acknowledged.
            why = (
                "torn journal tail left by an interrupted writer"
                if item.incomplete
                else f"corrupt journal tail: {item.reason}"
            )
            self._quarantine_bytes(space, space.gen, rest, why)
            os.ftruncate(space.jfd, item.offset)
            if self.fsync:
                os.fsync(space.jfd)
            break

    def _quarantine_bytes(self, space: _Space, gen: int, data: bytes, reason: str) -> None:
        name = f"{os.path.basename(space.dir)}-{fio.journal_name(gen)}-part"
        self._report(fio.quarantine_bytes(self.path, name, data, reason), reason)

    def _append(self, space: _Space, seals: list[fst.Sealed]) -> tuple[Pos, _FeedChunk | None]:
        merged = fst.merge_entry(seals)
        if merged is None:
            return (space.gen, space.jsize), None
        assert space.jfd is not None
        frame = fio.encode_frame(*merged)
        self._checkpoint("before-append")
        if self._crash_point is not None and self._crash_point[0] == "mid-append":
            fio.write_all(space.jfd, frame[: len(frame) // 2])
            self._checkpoint("mid-append")
            os.ftruncate(space.jfd, space.jsize)
        fio.write_all(space.jfd, frame)
        self._checkpoint("after-append")
        start = space.jsize
        space.jsize += len(frame)
        space.frames += 1
        space.bytes_appended += len(frame)
        events = tuple(event for seal in seals for event in seal.events)
        return (space.gen, start), _FeedChunk(space.gen, start, space.jsize, events)

    def _needs_sync(self, seals: list[fst.Sealed]) -> bool:
        """Whether the frame of ``seals`` is fsynced (by :meth:`_commit`, after unlocking).

        A batch that only extended leases (or lock expiries, or forgot expired records)
        is appended without fsync: visible to every process at once, and a crash that
        loses it (power, kernel) loses a prefix-closed tail: the next fsynced frame of
        any process makes it durable too (same file), so no later frame can outlive it."""
        return self.fsync and any(seal.durable for seal in seals)

    def _maybe_switch(self, space: _Space) -> int | None:
        """Seal the journal once it outgrew ``compact_bytes`` and the snapshot: create the
        next one (lock held). Returns the new generation, whose snapshot is to be built."""
        if space.jsize <= self.compact_bytes:
            return None
        try:
            snap_size = os.stat(os.path.join(space.dir, fio.SNAPSHOT)).st_size
        except FileNotFoundError:
            snap_size = 0
        if space.jsize <= snap_size:
            return None
        assert space.jfd is not None
        if self.fsync:
            # Frames appended without fsync must not be outlived by frames of the next
            # journal, which a later fsync of that file would not cover.
            os.fdatasync(space.jfd)
        self._open_journal(space, space.gen + 1, create=True)
        self._checkpoint("compact-journal")
        return space.gen

    # -- compaction (background thread, lock-free but for the install) -------------------

    async def _serve_compactions(self) -> None:
        while True:
            kick = self._build_kick
            await kick.wait()
            if self._build_kick is kick:
                self._build_kick = trio.Event()
            await self._run_builds()

    async def _run_builds(self) -> None:
        for space in list(self._spaces.values()):
            target = space.build_due
            if target is None:
                continue
            space.build_due = None
            try:
                # Shielded: once taken, a build is finished even if the storage closes
                # meanwhile (to_thread would otherwise drop it at its first checkpoint).
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._build, space, target)
            except Exception:  # a bug: the journals stay, the next switch retries
                logger.exception("file storage: compaction of %r failed", space.ns)

    def _build(self, space: _Space, target: int) -> bool:
        """Write the snapshot of generation ``target`` (the state at the start of journal
        ``target``) from the files alone, without the lock, then install it."""
        directory = space.dir
        try:
            base = self._build_base(directory, target)
            if base is None:
                return False
            gen, state = base
            for sealed in range(gen, target):
                try:
                    fd = os.open(os.path.join(directory, fio.journal_name(sealed)), os.O_RDONLY)
                except FileNotFoundError:
                    return False  # deleted by a newer compaction: nothing left to do
                try:
                    data = fio.read_from(fd, 0)
                finally:
                    os.close(fd)
                for item in fio.iter_frames(data, 0):
                    if isinstance(item, fio.BadFrame):
                        break  # as every process's replay of it did
                    try:
                        state.apply_entry(item.entry, item.blobs)
                    except fst.CorruptRecord:
                        continue
            self._checkpoint("compact-serialise")
            body, blobs = state.encode()
            tmp = os.path.join(directory, fio.build_name(target))
            fio.write_file(tmp, fio.snapshot_parts(target, body, blobs), fsync=self.fsync)
            self._checkpoint("compact-snapshot")
            installed = self._install(directory, target, tmp)
        except (OSError, fio.SnapshotError, fst.CorruptRecord) as exc:
            logger.warning("file storage: compaction of %r failed: %s", space.ns, exc)
            return False
        if installed:
            space.snapshots += 1
        return installed

    def _build_base(self, directory: str, target: int) -> tuple[int, fst.NsState] | None:
        """The newest readable snapshot older than ``target`` whose journals are there."""
        names = set(os.listdir(directory))
        for name in (fio.SNAPSHOT, fio.SNAPSHOT_PREV):
            path = os.path.join(directory, name)
            gen = fio.read_snapshot_gen(path)
            if gen >= target:
                return None  # already compacted at or beyond the target
            if name not in names or gen < 0:
                continue
            if any(fio.journal_name(g) not in names for g in range(gen, target)):
                continue
            try:
                return self._read_snapshot(path)
            except (OSError, fio.SnapshotError, fst.CorruptRecord):
                continue
        if all(fio.journal_name(g) in names for g in range(target)):
            return 0, fst.NsState()
        return None

    def _install(self, directory: str, target: int, tmp: str) -> bool:
        """Make ``tmp`` the snapshot (lock held for two renames and a few unlinks)."""
        snap = os.path.join(directory, fio.SNAPSHOT)
        prev = os.path.join(directory, fio.SNAPSHOT_PREV)
        lock_fd = fio.open_file(os.path.join(directory, fio.LOCK), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            latest = fio.read_snapshot_gen(snap)
            if latest >= target:
                os.unlink(tmp)
                return False
            if latest > 0:
                os.replace(snap, prev)
                keep_from = latest
            else:
                if latest < 0:
                    why = "unreadable snapshot replaced by compaction"
                    self._report(fio.quarantine(self.path, directory, fio.SNAPSHOT, why), why)
                keep_from = max(fio.read_snapshot_gen(prev), 0)
            self._checkpoint("compact-install")
            os.replace(tmp, snap)
            if self.fsync:
                fio.fsync_dir(directory)
            self._checkpoint("compact-installed")
            # The journals before the previous snapshot are needed by no fallback; tailers
            # still in them lost track (they are told so).
            for name in os.listdir(directory):
                journal_gen = fio.parse_journal_name(name)
                build_gen = fio.parse_build_name(name)
                if (journal_gen is not None and journal_gen < keep_from) or (
                    build_gen is not None and build_gen < target
                ):
                    os.unlink(os.path.join(directory, name))
            return True
        finally:
            os.close(lock_fd)  # releases the flock

    # -- notifications (trio side) --------------------------------------------------------

    async def _serve_inotify(self) -> None:
        inotify = self._inotify
        assert inotify is not None
        while True:
            await trio.lowlevel.wait_readable(inotify.fd)
            if inotify.drain():
                self._kick.set()

    async def _serve_watcher(self) -> None:
        import watchfiles

        root = os.path.join(self.path, fio.NAMESPACES)

        def only_journals(change: watchfiles.Change, path: str) -> bool:
            return os.path.basename(path).startswith(fio.JOURNAL_PREFIX)

        try:
            async for _ in watchfiles.awatch(
                root,
                watch_filter=only_journals,
                debounce=50,
                # step: ms the watcher waits for more changes after one; every
                # cross-process wake-up pays it (5 ms gave a 22 ms cross-process
                # enqueue_and_wait p50, 1 ms gives 5 ms). inotify, where there is one,
                # has no such step.
                step=1,
                rust_timeout=500,
                stop_event=self._stop,
                recursive=True,
            ):
                self._kick.set()
        except Exception:
            # No inotify (limits, odd filesystem): fall back to polling.
            logger.warning("file watcher unavailable; polling %s", root, exc_info=True)
            self._polling = True
            self._kick.set()

    async def _serve_feeds(self) -> None:
        while True:
            kick = self._kick
            interval = self.poll_interval if self._polling else SAFETY_POLL
            with trio.move_on_after(interval):
                await kick.wait()
            if self._kick is kick:
                self._kick = trio.Event()
            for space in list(self._spaces.values()):
                if space.interest and space.pos is not None:
                    await self._pump(space)

    def _watch(self, space: _Space) -> None:
        if self._inotify is None or space.watched:
            return
        try:
            self._inotify.watch(space.dir)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: no transaction created it yet
                logger.warning("cannot watch %s (%s); polling", space.dir, exc)
                self._polling = True
            return
        space.watched = True

    def _unread(self, space: _Space, pos: Pos) -> int | None:
        """With inotify (a local filesystem), how many bytes of the journal at ``pos`` are
        unread, from two stats on the trio thread; ``None``: unknown (sealed, gone, or
        polling), read in a thread."""
        if self._inotify is None or self._polling:
            return None
        gen, offset = pos
        try:
            size = os.stat(self._journal(space, gen)).st_size
        except OSError:
            return None
        if os.path.exists(self._journal(space, gen + 1)):
            return None
        return size - offset

    def _known_end(self, space: _Space) -> Pos | None:
        """The current end of the journal if it is still where this process last saw it
        (then it is a frame boundary: a writer that started appending would have moved
        it), without a transaction."""
        end = space.last_end
        if end is None or self._unread(space, end) != 0:
            return None
        return end

    async def _pump(self, space: _Space) -> None:
        if space.pumping or space.pos is None:
            return
        if space.committing:
            # Most likely our own frame being fsynced: its transaction hands it over
            # when it returns, and re-kicks the tailer for anything else.
            space.deferred = True
            return
        self._watch(space)
        space.pumping = True
        try:
            start = space.pos
            unread = self._unread(space, start)
            if unread == 0:
                return  # our own commit (already handed over), or nothing yet
            try:
                if unread is not None and unread <= INLINE_READ:
                    chunks, new_pos, gap = self._read_feed(space.dir, start)
                else:
                    chunks, new_pos, gap = await trio.to_thread.run_sync(
                        self._read_feed, space.dir, start, abandon_on_cancel=True
                    )
            except OSError as exc:
                # Transient (a file replaced under us, NFS hiccup): retry on the next wake.
                logger.warning("cannot read the journal of %r: %s", space.ns, exc)
                return
            if unread is not None and unread <= INLINE_READ:
                self._advance_mirror(space, chunks)
            if gap:
                self._lost_track(space)
            self._dispatch(space, chunks)
            space.last_end = new_pos
            if space.pos == start:
                space.pos = new_pos
            elif space.pos is not None and space.pos < new_pos:
                self._kick.set()  # rewound meanwhile: read again
        finally:
            space.pumping = False

    def _advance_mirror(self, space: _Space, chunks: list[_FeedChunk]) -> None:
        """Apply the frames the tailer read (other processes' transactions) to the
        mirror, when they are the next ones for it and no transaction of ours is running:
        the next transaction then replays only what came after them, so the directory's
        lock is held for less time (on the trio thread, and only for small reads).

        A frame that does not decode is left to that transaction (which quarantines it);
        a failure to apply one (a bug) makes the next transaction reload the mirror."""
        state = space.state
        if state is None or space.committing:
            return
        for chunk in chunks:
            if (chunk.gen, chunk.end) <= (space.gen, space.jsize):
                continue  # applied already (by a transaction of ours)
            frame = chunk.frame
            if (
                frame is None
                or chunk.jid != space.jid
                or (chunk.gen, chunk.start) != (space.gen, space.jsize)
            ):
                return
            try:
                state.apply_entry(frame.entry, frame.blobs)
            except fst.CorruptRecord:
                return
            except Exception as exc:  # a bug: the mirror may be half-changed
                logger.error("file storage: replaying a journal frame failed", exc_info=exc)
                space.state = None
                return
            space.jsize = chunk.end

    def _read_feed(self, directory: str, pos: Pos) -> tuple[list[_FeedChunk], Pos, bool]:
        """Read committed frames from ``pos`` on, following sealed journals (no lock)."""
        gen, offset = pos
        chunks: list[_FeedChunk] = []
        gap = False
        while True:
            # Sealed before we read means we read all of it.
            sealed = os.path.exists(os.path.join(directory, fio.journal_name(gen + 1)))
            try:
                fd = os.open(os.path.join(directory, fio.journal_name(gen)), os.O_RDONLY)
            except FileNotFoundError:
                # Deleted by compaction before we read it: events were lost.
                names = os.listdir(directory)
                later = sorted(
                    g for g in map(fio.parse_journal_name, names) if g is not None and g > gen
                )
                if not later:
                    return chunks, (gen, offset), gap
                gen, offset, gap = later[0], 0, True
                continue
            try:
                st = os.fstat(fd)
                data = fio.read_from(fd, offset)
            finally:
                os.close(fd)
            jid = (st.st_dev, st.st_ino)
            complete = True
            for item in fio.iter_frames(data, offset):
                if isinstance(item, fio.BadFrame):
                    complete = False  # in progress, or a torn tail the next writer cuts off
                    break
                chunks.append(_FeedChunk(gen, item.start, item.end, None, item, jid))
                offset = item.end
            if not sealed:
                return chunks, (gen, offset), gap
            gap = gap or not complete  # damage in a sealed journal: skip the rest
            gen, offset = gen + 1, 0

    def _lost_track(self, space: _Space) -> None:
        """The journal was compacted past this reader: events are lost (subscribers get
        a ``missed`` marker, every job watch re-reads its job, blocked claims retry)."""
        logger.warning("event log of %r was compacted past a reader", space.ns)
        self.hub(space.ns).lost_track()

    def _dispatch(self, space: _Space, chunks: list[_FeedChunk]) -> None:
        hub = self.hub(space.ns)
        for chunk in chunks:
            # Positioned: a chunk read twice (the tailer was rewound) is taken once.
            hub.deliver(chunk.events, ((chunk.gen, chunk.start), (chunk.gen, chunk.end)))

    def _seed(self, space: _Space, pos: Pos) -> None:
        """Make the tailer read from ``pos`` (or earlier) on."""
        if space.pos is None or pos < space.pos:
            space.pos = pos
            self._kick.set()

    def _add_interest(self, space: _Space) -> None:
        space.interest += 1

    def _drop_interest(self, space: _Space) -> None:
        space.interest -= 1
        if space.interest == 0:
            space.pos = None

    # -- producer transitions -------------------------------------------------------------

    async def enqueue(
        self,
        ns: str,
        job_id: str,
        payload: bytes,
        *,
        max_attempts: int,
        result_ttl: float,
        priority: int = 0,
        run_at: float | None = None,
        delay: float | None = None,
    ) -> EnqueueOutcome:
        value, _ = await self._run(
            ns,
            partial(
                fst.enqueue,
                job_id=job_id,
                payload=bytes(payload),
                max_attempts=max_attempts,
                result_ttl=result_ttl,
                priority=priority,
                run_at=run_at,
                delay=delay,
            ),
        )
        return value

    async def enqueue_many(self, ns: str, jobs: Sequence[EnqueueSpec]) -> list[EnqueueOutcome]:
        batch = [attrs.evolve(job, payload=bytes(job.payload)) for job in jobs]
        value, _ = await self._run(ns, partial(fst.enqueue_many, jobs=batch))
        return value

    async def cancel(self, ns: str, job_id: str) -> CancelStatus:
        value, _ = await self._run(ns, partial(fst.cancel, job_id=job_id))
        return value

    async def get_status(self, ns: str, job_id: str) -> JobRecord | None:
        value, _ = await self._run(ns, partial(fst.get_status, job_id=job_id))
        return value

    async def get_payload(self, ns: str, job_id: str) -> bytes | None:
        value, _ = await self._run(ns, partial(fst.get_payload, job_id=job_id))
        return value

    async def update_result_ttl(self, ns: str, job_id: str, ttl: float) -> UpdateTtlStatus:
        value, _ = await self._run(ns, partial(fst.update_result_ttl, job_id=job_id, ttl=ttl))
        return value

    # -- worker transitions ---------------------------------------------------------------

    async def claim_nowait(
        self, ns: str, worker_id: str, *, limit: int, lease: float
    ) -> ClaimBatch:
        space = self._space(ns)
        if space.committing and not space.pending:
            # A transaction of ours is running (typically a worker's settlement): wait
            # for it, so that the mirror may tell whether this claim has anything to take.
            # Nothing of this call is queued yet, so a cancellation here loses nothing.
            await space.idle.wait()
        now = self.now()
        idle = self._nothing_to_claim(space, now)
        if idle is not None:
            await trio.lowlevel.checkpoint()
            end, next_due = idle
            if space.interest:
                self._seed(space, end)
            return ClaimBatch(
                [], None if next_due is None else next_due - now, paused=self._paused(space)
            )
        (claims, next_due), start = await self._run(
            ns, partial(fst.claim, worker_id=worker_id, limit=limit, lease=lease)
        )
        if not claims and space.interest:
            # A blocked claim waits: make the tailer read this transaction's frame (an
            # enqueue committed in the same group commit wakes it) and what follows.
            self._seed(space, start)
        return ClaimBatch(
            claims, None if next_due is None else next_due - now, paused=self._paused(space)
        )

    @staticmethod
    def _paused(space: _Space) -> bool:
        return space.state is not None and space.state.paused

    def _nothing_to_claim(self, space: _Space, now: float) -> tuple[Pos, float | None] | None:
        """Whether a claim would find nothing, told without a transaction: the journal
        has not grown since this process's last transaction (two stats, inotify mode)
        and its mirror has no ready or due job. Returns the journal end (where the
        tailer must read from) and the next due time; ``None``: run the transaction.

        The mirror is only changed by a transaction, and none is running or queued."""
        state = space.state
        if state is None or space.committing or space.pending:
            return None
        end = (space.gen, space.jsize)
        if state.counts[fst.READY] or state.counts[fst.DUE] or self._unread(space, end) != 0:
            return None
        next_due = state.next_due()
        if next_due is not None and next_due <= now:
            return None
        return end, next_due

    @property
    def repoll_interval(self) -> float:
        return math.inf if self._serving else self.poll_interval

    async def heartbeat(
        self, ns: str, claims: Sequence[tuple[str, str]], *, lease: float
    ) -> list[bool]:
        value, _ = await self._run(ns, partial(fst.heartbeat, claims=list(claims), lease=lease))
        return value

    async def complete(
        self, ns: str, job_id: str, token: str, result: bytes, *, ttl: float
    ) -> SettleStatus:
        value, _ = await self._run(
            ns, partial(fst.complete, job_id=job_id, token=token, result=bytes(result), ttl=ttl)
        )
        return value

    async def complete_many(self, ns: str, items: Sequence[Completion]) -> list[SettleStatus]:
        batch = [attrs.evolve(c, result=bytes(c.result)) for c in items]
        value, _ = await self._run(ns, partial(fst.complete_many, items=batch))
        return value

    async def fail(
        self, ns: str, job_id: str, token: str, error: bytes, *, ttl: float
    ) -> SettleStatus:
        value, _ = await self._run(
            ns, partial(fst.fail, job_id=job_id, token=token, error=bytes(error), ttl=ttl)
        )
        return value

    async def retry(
        self, ns: str, job_id: str, token: str, error: bytes, *, delay: float
    ) -> SettleStatus:
        value, _ = await self._run(
            ns, partial(fst.retry, job_id=job_id, token=token, error=bytes(error), delay=delay)
        )
        return value

    async def release(self, ns: str, job_id: str, token: str) -> SettleStatus:
        value, _ = await self._run(ns, partial(fst.release, job_id=job_id, token=token))
        return value

    # -- recovery -------------------------------------------------------------------------

    async def reap(self, ns: str, *, fence: Fence | None = None) -> ReapResult:
        value, _ = await self._run(ns, partial(fst.reap, fence=fence))
        return value

    # -- operating ------------------------------------------------------------------------

    async def retry_job(self, ns: str, job_id: str) -> RetryStatus:
        value, _ = await self._run(ns, partial(fst.retry_job, job_id=job_id))
        return value

    async def delete_job(self, ns: str, job_id: str) -> DeleteStatus:
        value, _ = await self._run(ns, partial(fst.delete_job, job_id=job_id))
        return value

    async def list_jobs(
        self, ns: str, state: JobState, *, limit: int, cursor: str | None = None
    ) -> RecordPage:
        (records, after), _ = await self._run(
            ns, partial(fst.list_jobs, state=JobState(state), limit=limit, cursor=cursor)
        )
        return RecordPage(records, after)

    async def retry_failed(self, ns: str, *, limit: int) -> int:
        value, _ = await self._run(ns, partial(fst.retry_failed, limit=limit))
        return value

    async def delete_jobs(self, ns: str, state: JobState, *, limit: int) -> int:
        value, _ = await self._run(ns, partial(fst.delete_jobs, state=JobState(state), limit=limit))
        return value

    async def set_paused(self, ns: str, paused: bool) -> None:
        await self._run(ns, partial(fst.set_paused, paused=paused))
        if not paused:
            self.hub(ns).wake()

    async def is_paused(self, ns: str) -> bool:
        value, _ = await self._run(ns, fst.is_paused)
        return value

    # -- running-job control ----------------------------------------------------------------

    async def force_cancel(self, ns: str, job_id: str) -> CancelStatus:
        value, _ = await self._run(ns, partial(fst.force_cancel, job_id=job_id))
        return value

    async def set_progress(self, ns: str, job_id: str, token: str, progress: bytes) -> SettleStatus:
        value, _ = await self._run(
            ns,
            partial(fst.set_progress, job_id=job_id, token=token, progress=bytes(progress)),
        )
        return value

    # -- schedules ------------------------------------------------------------------------

    async def fire_schedule(
        self,
        ns: str,
        schedule_id: str,
        tick: float,
        job_id: str,
        payload: bytes,
        *,
        max_attempts: int,
        result_ttl: float,
        priority: int = 0,
        fence: Fence,
    ) -> FireStatus:
        value, _ = await self._run(
            ns,
            partial(
                fst.fire_schedule,
                schedule_id=schedule_id,
                tick=tick,
                job_id=job_id,
                payload=bytes(payload),
                max_attempts=max_attempts,
                result_ttl=result_ttl,
                priority=priority,
                fence=fence,
            ),
        )
        return value

    async def schedule_cursors(self, ns: str) -> dict[str, float]:
        value, _ = await self._run(ns, fst.schedule_cursors)
        return value

    # -- leader lock ----------------------------------------------------------------------

    async def acquire_lock(
        self, ns: str, lock: str, owner: str, *, ttl: float, take_from_dead: bool = False
    ) -> int | None:
        value, _ = await self._run(
            ns,
            partial(
                fst.acquire_lock, lock=lock, owner=owner, ttl=ttl, take_from_dead=take_from_dead
            ),
        )
        return value

    async def lock_holder(self, ns: str, lock: str) -> LockHolder | None:
        value, _ = await self._run(ns, partial(fst.lock_holder, lock=lock))
        return value

    # -- worker registry ------------------------------------------------------------------

    async def register_worker(self, ns: str, record: WorkerRecord, *, ttl: float) -> None:
        await self._run(ns, partial(fst.register_worker, record=record, ttl=ttl))

    async def unregister_worker(self, ns: str, worker_id: str) -> bool:
        value, _ = await self._run(ns, partial(fst.unregister_worker, worker_id=worker_id))
        return value

    async def list_workers(self, ns: str) -> list[WorkerRecord]:
        value, _ = await self._run(ns, fst.list_workers)
        return value

    async def renew_lock(self, ns: str, lock: str, owner: str, epoch: int, *, ttl: float) -> bool:
        value, _ = await self._run(
            ns, partial(fst.renew_lock, lock=lock, owner=owner, epoch=epoch, ttl=ttl)
        )
        return value

    async def release_lock(self, ns: str, lock: str, owner: str, epoch: int) -> bool:
        value, _ = await self._run(
            ns, partial(fst.release_lock, lock=lock, owner=owner, epoch=epoch)
        )
        return value

    # -- notification ---------------------------------------------------------------------

    async def _position(self, ns: str) -> Pos:
        _, pos = await self._run(ns, _noop)
        return pos

    @asynccontextmanager
    async def follow(
        self, ns: str, kind: FollowKind, job_id: str | None = None
    ) -> AsyncIterator[Pos | None]:
        """Make this process's tailer read the namespace's journal while open; for
        events and job watches, from the current end of the journal on (yielded)."""
        space = self._space(ns)
        self._add_interest(space)
        try:
            if kind == "work":
                await trio.lowlevel.checkpoint()
                yield None  # claim_nowait seeds the tailer at its own frame
            else:
                pos = self._known_end(space)
                if pos is None:
                    pos = await self._position(ns)
                else:
                    await trio.lowlevel.checkpoint()
                self._seed(space, pos)
                yield pos
        finally:
            self._drop_interest(space)

    # -- housekeeping ---------------------------------------------------------------------

    async def stats(self, ns: str) -> StorageStats:
        value, _ = await self._run(ns, fst.stats)
        return value

    async def purge_expired(self, ns: str) -> int:
        value, _ = await self._run(ns, fst.purge)
        return value

    async def list_namespaces(self) -> list[str]:
        try:
            names = await trio.to_thread.run_sync(self._read_names)
        except OSError as exc:
            raise StorageError(f"cannot list the queues of {self.path!r}: {exc}") from exc
        return sorted(names, key=lambda ns: ns.encode("utf-8"))

    def _read_names(self) -> set[str]:
        """The names in the ``name`` files of the namespace directories (no lock: the file
        is written once, atomically, by a namespace's first transaction). A directory
        whose name file is missing, undecodable or not its own (a foreign or corrupt
        directory) is skipped."""
        base = os.path.join(self.path, fio.NAMESPACES)
        try:
            entries = os.listdir(base)
        except FileNotFoundError:
            return set()
        names: set[str] = set()
        for entry in entries:
            try:
                with open(os.path.join(base, entry, fio.NAME), "rb") as file:
                    data = file.read(64 * 1024)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                name = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if fio.safe_name(name) == entry:
                names.add(name)
        return names


def _noop(tx: fst.Tx) -> None:
    return None
