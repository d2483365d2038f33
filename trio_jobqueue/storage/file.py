"""FileStorage: a durable single-host backend, safe across processes (see ``docs/file.md``).

Layout (one directory per namespace under ``<root>/ns/``)::

    lock            flock(2) target: every transition holds it exclusively
    name            the namespace's name, for humans
    snapshot        the whole namespace at the start of journal generation N
    journal.N       fsynced, append-only redo log since that snapshot; also the event log
    quarantine/     (under the root) corrupt or foreign files, moved aside

A transition is one **locked transaction** run in a worker thread: take the flock, catch up
with entries other processes appended, apply the transition to the in-memory mirror
(:mod:`._state`), append one checksummed frame, fsync, unlock. Concurrent calls from
one storage object are coalesced into one transaction and one fsync (group commit). The
frame is the commit point: a process killed before the frame is complete leaves a torn
tail that the next transaction cuts off (the call never returned), and a complete frame is
a committed transition. When the journal outgrows the snapshot it is compacted: new empty
journal, snapshot written as temp + fsync + rename + directory fsync (the atomic switch),
then the journal before the previous one is deleted.

Notifications: every process tails the journal of the namespaces it waits on. A watcher
task (``watchfiles``; polling when forced or when inotify is unavailable) and local commits
wake the tailer, which delivers events to subscribers, fires job watches and wakes blocked
claims.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from .._errors import StorageError
from .._types import CancelStatus, UpdateTtlStatus
from . import _file_io as fio
from . import _state as fst
from ._base import (
    ClaimBatch,
    EnqueueOutcome,
    EventRecord,
    Fence,
    JobRecord,
    ReapResult,
    SettleStatus,
    Storage,
    StorageStats,
)
from ._core import FollowKind

__all__ = ["FileStorage", "QuarantineReport"]

logger = logging.getLogger("trio_jobqueue.storage.file")

T = TypeVar("T")
Pos = tuple[int, int]
"""A journal position: (generation, byte offset)."""

COMPACT_BYTES = 8 << 20
"""Compact once the journal is larger than this and than the snapshot."""
SAFETY_POLL = 1.0
"""With a working file watcher, still re-read watched journals this often (missed events)."""
CRASH_ENV = "TRIO_JOBQUEUE_FILE_CRASH_AT"
"""Private test hook: ``point[:n]`` makes the process ``os._exit(137)`` the n-th time a
transaction reaches ``point`` (see ``FileStorage._crash_point``)."""


@attrs.frozen
class QuarantineReport:
    """A corrupt or foreign file that was moved aside (the queue kept working)."""

    path: str
    """Where the file (or the cut-off bytes) now lives, under ``<root>/quarantine/``."""
    reason: str


@attrs.define(eq=False)
class _Op:
    fn: Callable[[fst.Tx], Any]
    taken: bool = False
    done: bool = False
    retry: bool = False
    value: Any = None
    exc: Exception | None = None
    pos: Pos = (0, 0)


@attrs.define(eq=False)
class _Space:
    """One namespace as seen by one storage object."""

    ns: str
    dir: str
    # -- group commit (trio side) --
    pending: list[_Op] = attrs.Factory(list)
    committing: bool = False
    idle: trio.Event = attrs.Factory(trio.Event)
    # -- the mirror (touched only by the one thread running this space's transaction) --
    prepared: bool = False
    lock_fd: int | None = None
    state: fst.NsState | None = None
    snap_size: int = 0
    gen: int = 0
    jfd: int | None = None
    jsize: int = 0
    # -- notifications (trio side) --
    interest: int = 0
    pos: Pos | None = None
    pumping: bool = False


@attrs.frozen
class _FeedChunk:
    gen: int
    start: int
    end: int
    events: tuple[EventRecord, ...]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


def _abspath(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


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
    _scopes: list[trio.CancelScope] = attrs.field(factory=list, init=False)
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _tasks_done: list[trio.Event] = attrs.field(factory=list, init=False)
    _serving: bool = attrs.field(default=False, init=False)
    _polling: bool = attrs.field(default=False, init=False)
    _crash_point: tuple[str, int] | None = attrs.field(default=None, init=False)
    _crash_count: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        spec = os.environ.get(CRASH_ENV)
        if spec:
            point, _, count = spec.partition(":")
            self._crash_point = (point, int(count or "1"))

    # -- lifetime -------------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            await trio.to_thread.run_sync(self._prepare_root)
        except OSError as exc:
            raise StorageError(f"cannot open file storage at {self.path!r}: {exc}") from exc
        self._stop = trio.Event()
        self._kick = trio.Event()
        self._polling = self.force_polling
        self._scopes = []
        self._tasks_done = []
        tasks: list[Callable[[], Any]] = [self._serve_feeds]
        if not self.force_polling:
            tasks.append(self._serve_watcher)
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
        for space in self._spaces.values():
            while space.committing:
                await space.idle.wait()
            for fd in (space.jfd, space.lock_fd):
                if fd is not None:
                    os.close(fd)
            space.jfd = space.lock_fd = None
            space.state = None
            space.prepared = False

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

    # -- group commit ---------------------------------------------------------------------

    def _space(self, ns: str) -> _Space:
        space = self._spaces.get(ns)
        if space is None:
            space = self._spaces[ns] = _Space(
                ns, os.path.join(self.path, fio.NAMESPACES, fio.safe_name(ns))
            )
        return space

    @trio.lowlevel.enable_ki_protection
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
                idle = space.idle
                if op.taken or space.committing:
                    # Shielded even while waiting behind another transaction: that one's
                    # driver may take this op into its next batch at any moment, and a
                    # Cancelled delivered meanwhile would lose the op's result. So
                    # cancellation takes effect between transactions, withdrawing the op
                    # synchronously (no other task can take it in between).
                    with trio.CancelScope(shield=True):
                        await idle.wait()
                    if not op.taken and trio.current_effective_deadline() == -math.inf:
                        space.pending.remove(op)
                        await trio.lowlevel.checkpoint()  # raises Cancelled
                else:
                    await self._drive(space)
        finally:
            if not op.taken and not op.done and op in space.pending:
                space.pending.remove(op)
        if op.exc is not None:
            raise op.exc
        value: T = op.value
        return value, op.pos

    async def _drive(self, space: _Space) -> None:
        batch, space.pending = space.pending, []
        space.committing = True
        for op in batch:
            op.taken = True
        wrote = False
        try:
            with trio.CancelScope(shield=True):
                wrote = await trio.to_thread.run_sync(self._commit, space, batch)
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
            idle, space.idle = space.idle, trio.Event()
            idle.set()
            if wrote:
                self._kick.set()

    # -- transactions (worker thread) -----------------------------------------------------

    def _maybe_crash(self, point: str) -> None:
        if self._crash_point is not None and self._crash_point[0] == point:
            self._crash_count += 1
            if self._crash_count >= self._crash_point[1]:
                os._exit(137)

    def _report(self, path: str, reason: str) -> None:
        logger.warning("file storage: quarantined %s (%s)", path, reason)
        self.quarantined.append(QuarantineReport(path, reason))

    def _commit(self, space: _Space, batch: list[_Op]) -> bool:
        """One locked transaction for ``batch``; returns whether a frame was appended."""
        executed: list[_Op] = []
        try:
            self._prepare_space(space)
            assert space.lock_fd is not None
            fcntl.flock(space.lock_fd, fcntl.LOCK_EX)
            try:
                if not os.path.exists(os.path.join(space.dir, fio.NAME)):
                    data = space.ns.encode("utf-8")
                    fio.atomic_write(space.dir, fio.NAME, data, fsync=self.fsync)
                state = self._sync(space)
                txs: list[fst.Tx] = []
                poisoned = False
                for index, op in enumerate(batch):
                    tx = fst.Tx(state, self.now())
                    try:
                        op.value = op.fn(tx)
                    except Exception as exc:  # noqa: BLE001 - re-raised in the caller's task
                        # The mirror may be half-changed: write what came before, then
                        # reload from disk; the ops after this one run in the next batch.
                        op.exc = exc
                        op.done = True
                        for rest in batch[index + 1 :]:
                            rest.retry = True
                        poisoned = True
                        break
                    txs.append(tx)
                    executed.append(op)
                pos, wrote = self._append(space, state, txs)
                for op in executed:
                    op.pos = pos
                    op.done = True
                if poisoned:
                    space.state = None
                self._maybe_compact(space, state)
            finally:
                fcntl.flock(space.lock_fd, fcntl.LOCK_UN)
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
            return False
        return wrote

    def _prepare_space(self, space: _Space) -> None:
        if space.prepared:
            return
        if not os.path.isdir(space.dir):
            fio.make_dir(space.dir, fsync=self.fsync)
        if space.lock_fd is None:
            space.lock_fd = fio.open_file(os.path.join(space.dir, fio.LOCK), os.O_RDWR | os.O_CREAT)
        space.prepared = True

    def _sync(self, space: _Space) -> fst.NsState:
        """Bring the mirror up to date with the disk (lock held)."""
        # Generations only grow, so the snapshot header's generation identifies it.
        ident = fio.read_snapshot_gen(os.path.join(space.dir, fio.SNAPSHOT))
        if space.state is None or ident != space.gen:
            self._load(space)
        else:
            self._catch_up(space)
        assert space.state is not None
        return space.state

    def _load(self, space: _Space) -> None:
        snap_path = os.path.join(space.dir, fio.SNAPSHOT)
        gen = 0
        state = fst.NsState()
        try:
            with open(snap_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = None
        if data is not None:
            try:
                gen, body = fio.decode_snapshot(data)
                state = fst.NsState.decode(body)
            except (fio.SnapshotError, fst.CorruptRecord) as exc:
                gen = self._reset_corrupt_snapshot(space, str(exc))
                state = fst.NsState()
        self._scan_dir(space, gen)
        space.state = state
        space.gen = gen
        self._stat_snapshot(space)
        self._open_journal(space, gen, create=False)
        space.jsize = 0
        self._catch_up(space)

    def _stat_snapshot(self, space: _Space) -> None:
        try:
            space.snap_size = os.stat(os.path.join(space.dir, fio.SNAPSHOT)).st_size
        except FileNotFoundError:
            space.snap_size = 0

    def _reset_corrupt_snapshot(self, space: _Space, reason: str) -> int:
        """Quarantine a corrupt snapshot and the journals that extend it; start a new
        generation with an empty namespace (nothing else can be trusted)."""
        gens = [0]
        self._report(fio.quarantine(self.path, space.dir, fio.SNAPSHOT, reason), reason)
        for name in os.listdir(space.dir):
            journal_gen = fio.parse_journal_name(name)
            if journal_gen is not None:
                gens.append(journal_gen)
                why = f"journal of a corrupt snapshot ({reason})"
                self._report(fio.quarantine(self.path, space.dir, name, why), why)
        gen = max(gens) + 1
        fio.atomic_write(
            space.dir,
            fio.SNAPSHOT,
            fio.encode_snapshot(gen, fst.NsState().encode()),
            fsync=self.fsync,
        )
        return gen

    def _scan_dir(self, space: _Space, gen: int) -> None:
        """Move foreign files aside; drop journals older than the one tailers may still read."""
        known = {fio.LOCK, fio.NAME, fio.NAME + ".tmp", fio.SNAPSHOT, fio.SNAPSHOT_TMP}
        for name in os.listdir(space.dir):
            if name in known:
                continue
            journal_gen = fio.parse_journal_name(name)
            if journal_gen is not None:
                if journal_gen < gen - 1:
                    os.unlink(os.path.join(space.dir, name))
                continue
            reason = "foreign file in a namespace directory"
            self._report(fio.quarantine(self.path, space.dir, name, reason), reason)

    def _open_journal(self, space: _Space, gen: int, *, create: bool) -> None:
        if space.jfd is not None:
            os.close(space.jfd)
            space.jfd = None
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if create else 0)
        path = os.path.join(space.dir, fio.journal_name(gen))
        existed = os.path.exists(path)
        space.jfd = fio.open_file(path, flags)
        if (create or not existed) and self.fsync:
            os.fsync(space.jfd)
            fio.fsync_dir(space.dir)

    def _catch_up(self, space: _Space) -> None:
        """Apply the frames other processes appended; cut off a torn or corrupt tail."""
        assert space.jfd is not None and space.state is not None
        base = space.jsize
        data = fio.read_from(space.jfd, base)
        for item in fio.iter_frames(data, base):
            if isinstance(item, fio.Frame):
                try:
                    space.state.apply_entry(item.entry)
                except fst.CorruptRecord as exc:
                    raw = data[item.start - base : item.end - base]
                    self._quarantine_bytes(space, raw, f"undecodable journal entry: {exc}")
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
            self._quarantine_bytes(space, rest, why)
            os.ftruncate(space.jfd, item.offset)
            if self.fsync:
                os.fsync(space.jfd)
            break

    def _quarantine_bytes(self, space: _Space, data: bytes, reason: str) -> None:
        name = f"{os.path.basename(space.dir)}-{fio.journal_name(space.gen)}-part"
        self._report(fio.quarantine_bytes(self.path, name, data, reason), reason)

    def _append(self, space: _Space, state: fst.NsState, txs: list[fst.Tx]) -> tuple[Pos, bool]:
        entry = fst.merge_entry(state, txs)
        if entry is None:
            return (space.gen, space.jsize), False
        assert space.jfd is not None
        frame = fio.encode_frame(entry)
        self._maybe_crash("before-append")
        if self._crash_point is not None and self._crash_point[0] == "mid-append":
            fio.write_all(space.jfd, frame[: len(frame) // 2])
            self._maybe_crash("mid-append")
            os.ftruncate(space.jfd, space.jsize)
        fio.write_all(space.jfd, frame)
        self._maybe_crash("after-append")
        if self.fsync and any(tx.durable for tx in txs):
            os.fdatasync(space.jfd)
        start = (space.gen, space.jsize)
        space.jsize += len(frame)
        self._maybe_crash("after-fsync")
        return start, True

    def _maybe_compact(self, space: _Space, state: fst.NsState) -> None:
        if space.jsize <= max(self.compact_bytes, space.snap_size):
            return
        new_gen = space.gen + 1
        self._open_journal(space, new_gen, create=True)
        self._maybe_crash("compact-journal")
        snapshot = fio.encode_snapshot(new_gen, state.encode())
        fio.atomic_write(space.dir, fio.SNAPSHOT, snapshot, fsync=self.fsync)
        self._maybe_crash("compact-snapshot")
        old = os.path.join(space.dir, fio.journal_name(space.gen - 1))
        if os.path.exists(old):
            os.unlink(old)
        space.gen = new_gen
        space.jsize = 0
        self._stat_snapshot(space)

    # -- notifications (trio side) --------------------------------------------------------

    async def _serve_watcher(self) -> None:
        import watchfiles

        root = os.path.join(self.path, fio.NAMESPACES)

        def only_journals(change: watchfiles.Change, path: str) -> bool:
            name = os.path.basename(path)
            return name.startswith(fio.JOURNAL_PREFIX) or name == fio.SNAPSHOT

        try:
            async for _ in watchfiles.awatch(
                root,
                watch_filter=only_journals,
                debounce=50,
                # step: ms the watcher waits for more changes after one; every
                # cross-process wake-up pays it (5 ms gave a 22 ms cross-process
                # enqueue_and_wait p50, 1 ms gives 5 ms).
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

    async def _pump(self, space: _Space) -> None:
        if space.pumping or space.pos is None:
            return
        space.pumping = True
        try:
            start = space.pos
            try:
                chunks, new_pos, gap = await trio.to_thread.run_sync(
                    self._read_feed, space.dir, start, abandon_on_cancel=True
                )
            except OSError as exc:
                # Transient (a file replaced under us, NFS hiccup): retry on the next wake.
                logger.warning("cannot read the journal of %r: %s", space.ns, exc)
                return
            if gap:
                self._lost_track(space)
            self._dispatch(space, chunks)
            if space.pos == start:
                space.pos = new_pos
            elif space.pos is not None:
                self._kick.set()  # rewound meanwhile: read again
        finally:
            space.pumping = False

    def _read_feed(self, directory: str, pos: Pos) -> tuple[list[_FeedChunk], Pos, bool]:
        """Read committed frames from ``pos`` on, following compactions (no lock)."""
        gen, offset = pos
        chunks: list[_FeedChunk] = []
        gap = False
        while True:
            current = fio.read_snapshot_gen(os.path.join(directory, fio.SNAPSHOT))
            try:
                fd = os.open(os.path.join(directory, fio.journal_name(gen)), os.O_RDONLY)
            except FileNotFoundError:
                data = b""
            else:
                try:
                    data = fio.read_from(fd, offset)
                finally:
                    os.close(fd)
            for item in fio.iter_frames(data, offset):
                if isinstance(item, fio.BadFrame):
                    break  # in progress, or a torn tail the next writer cuts off
                try:
                    events = fst.entry_events(item.entry)
                except fst.CorruptRecord:
                    events = []  # the next transaction quarantines the entry
                chunks.append(_FeedChunk(gen, item.start, item.end, tuple(events)))
                offset = item.end
            if current <= gen:
                return chunks, (gen, offset), gap
            # The journal we read is sealed; continue in the next generation.
            if current > gen + 1:
                gap = True
                gen = current
            else:
                gen += 1
            offset = 0

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
        self, ns: str, job_id: str, payload: bytes, *, max_attempts: int, result_ttl: float
    ) -> EnqueueOutcome:
        value, _ = await self._run(
            ns,
            partial(
                fst.enqueue,
                job_id=job_id,
                payload=bytes(payload),
                max_attempts=max_attempts,
                result_ttl=result_ttl,
            ),
        )
        return value

    async def cancel(self, ns: str, job_id: str) -> CancelStatus:
        value, _ = await self._run(ns, partial(fst.cancel, job_id=job_id))
        return value

    async def get_status(self, ns: str, job_id: str) -> JobRecord | None:
        value, _ = await self._run(ns, partial(fst.get_status, job_id=job_id))
        return value

    async def update_result_ttl(self, ns: str, job_id: str, ttl: float) -> UpdateTtlStatus:
        value, _ = await self._run(ns, partial(fst.update_result_ttl, job_id=job_id, ttl=ttl))
        return value

    # -- worker transitions ---------------------------------------------------------------

    async def claim_nowait(
        self, ns: str, worker_id: str, *, limit: int, lease: float
    ) -> ClaimBatch:
        space = self._space(ns)
        now = self.now()
        (claims, next_due), start = await self._run(
            ns, partial(fst.claim, worker_id=worker_id, limit=limit, lease=lease)
        )
        if not claims and space.interest:
            # A blocked claim waits: make the tailer read this transaction's frame (an
            # enqueue committed in the same group commit wakes it) and what follows.
            self._seed(space, start)
        return ClaimBatch(claims, None if next_due is None else next_due - now)

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

    # -- leader lock ----------------------------------------------------------------------

    async def acquire_lock(self, ns: str, lock: str, owner: str, *, ttl: float) -> int | None:
        value, _ = await self._run(ns, partial(fst.acquire_lock, lock=lock, owner=owner, ttl=ttl))
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
                pos = await self._position(ns)
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


def _noop(tx: fst.Tx) -> None:
    return None
