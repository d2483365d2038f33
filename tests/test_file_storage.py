"""FileStorage at the storage level: every method, sharing, layout, corruption, recovery."""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import stat
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_jobqueue import (
    CancelStatus,
    EnqueueStatus,
    EventKind,
    JobState,
    StorageError,
    UpdateTtlStatus,
)
from trio_jobqueue.storage import Claim, Fence, SettleStatus
from trio_jobqueue.storage import _file_io as fio
from trio_jobqueue.storage import file as file_backend
from trio_jobqueue.storage.file import FileStorage

NS = "q"
OPTS: dict[str, Any] = {"max_attempts": 3, "result_ttl": 100.0}


def ns_dir(root: Path, ns: str = NS) -> Path:
    return root / "ns" / fio.safe_name(ns)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _walk(root: Path) -> list[Path]:
    return [Path(d) / n for d, dirs, files in os.walk(root) for n in dirs + files]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "queue"


@pytest.fixture
def make(root: Path) -> Callable[..., FileStorage]:
    def factory(**kwargs: object) -> FileStorage:
        return FileStorage(root, **kwargs)  # type: ignore[arg-type]

    return factory


async def test_every_method_round_trip(make: Callable[..., FileStorage]) -> None:
    """Each Storage method does its documented transition on disk."""
    async with make() as s:
        assert (await s.enqueue(NS, "a", b"pa", **OPTS)).status is EnqueueStatus.QUEUED
        dup = await s.enqueue(NS, "a", b"other", **OPTS)
        assert (dup.status, dup.existing_state) == (EnqueueStatus.DUPLICATE, JobState.QUEUED)
        for job_id in "bcde":
            await s.enqueue(NS, job_id, job_id.encode(), **OPTS)
        assert await s.cancel(NS, "e") is CancelStatus.CANCELLED
        assert await s.cancel(NS, "e") is CancelStatus.NOT_FOUND

        claims = await s.claim(NS, "w", limit=10, lease=50.0)
        assert [c.job_id for c in claims] == ["a", "b", "c", "d"]
        assert claims[0].payload == b"pa" and claims[0].attempt == 1
        token = {c.job_id: c.token for c in claims}
        assert await s.cancel(NS, "a") is CancelStatus.PROCESSING
        assert await s.heartbeat(NS, [("a", token["a"]), ("a", "bogus")], lease=60.0) == [
            True,
            False,
        ]

        assert await s.complete(NS, "a", token["a"], b"ra", ttl=100.0) is SettleStatus.OK
        assert await s.complete(NS, "a", token["a"], b"again", ttl=100.0) is SettleStatus.STALE
        done = await s.enqueue(NS, "a", b"x", **OPTS)
        assert (done.status, done.result) == (EnqueueStatus.COMPLETED, b"ra")
        assert await s.fail(NS, "b", token["b"], b"eb", ttl=100.0) is SettleStatus.OK
        assert await s.retry(NS, "c", token["c"], b"ec", delay=200.0) is SettleStatus.OK
        assert await s.release(NS, "d", token["d"]) is SettleStatus.OK

        rec = await s.get_status(NS, "c")
        assert rec is not None and rec.state is JobState.FAILING and rec.error == b"ec"
        rec = await s.get_status(NS, "d")
        assert rec is not None and rec.state is JobState.QUEUED and rec.attempts == 0
        stats = await s.stats(NS)
        assert (stats.queued, stats.delayed, stats.completed, stats.failed) == (1, 1, 1, 1)

        assert await s.update_result_ttl(NS, "a", 5.0) is UpdateTtlStatus.UPDATED
        assert await s.update_result_ttl(NS, "d", 5.0) is UpdateTtlStatus.NOT_TERMINAL
        assert await s.update_result_ttl(NS, "zz", 5.0) is UpdateTtlStatus.NOT_FOUND

        (again,) = await s.claim(NS, "w", limit=1, lease=10.0)
        assert again.job_id == "d" and again.attempt == 1
        epoch = await s.acquire_lock(NS, "leader", "me", ttl=30.0)
        assert epoch == 1
        assert await s.acquire_lock(NS, "leader", "you", ttl=30.0) is None
        assert await s.renew_lock(NS, "leader", "me", 1, ttl=30.0)
        await s.advance_clock(20.0)
        reaped = await s.reap(NS, fence=Fence("leader", "me", 1))
        assert [(r.job_id, r.failed) for r in reaped.stalled] == [("d", False)]
        assert not (await s.reap(NS, fence=Fence("leader", "me", 7))).stalled
        assert (await s.reap(NS, fence=Fence("leader", "me", 7))).fenced
        assert await s.release_lock(NS, "leader", "me", 1)
        assert await s.acquire_lock(NS, "leader", "you", ttl=30.0) == 2

        # "a" expired (ttl 5): invisible at once, physically removed by purge.
        assert await s.get_status(NS, "a") is None
        await s.advance_clock(200.0)
        assert await s.purge_expired(NS) >= 1
        assert await s.get_status(NS, "b") is None


async def test_state_survives_reopen_by_another_object(make: Callable[..., FileStorage]) -> None:
    """Everything written is there for a fresh storage object, including lock epochs."""
    async with make() as s:
        await s.enqueue(NS, "j", b"p", **OPTS)
        assert await s.acquire_lock(NS, "L", "o", ttl=1.0) == 1
    async with make() as s:
        rec = await s.get_status(NS, "j")
        assert rec is not None and rec.state is JobState.QUEUED and rec.created_at > 0
        await s.advance_clock(5.0)
        assert await s.acquire_lock(NS, "L", "other", ttl=1.0) == 2


async def test_fifo_and_dedup_are_global_across_objects(make: Callable[..., FileStorage]) -> None:
    """Enqueues through several storage objects form one FIFO; each id is accepted once."""
    stores = [make() for _ in range(4)]
    ids = [f"id-{i}" for i in range(60)]
    accepted: list[str] = []
    async with stores[0], stores[1], stores[2], stores[3]:

        async def producer(s: FileStorage, order: list[str]) -> None:
            for job_id in order:
                if (await s.enqueue(NS, job_id, b"", **OPTS)).status is EnqueueStatus.QUEUED:
                    accepted.append(job_id)

        async with trio.open_nursery() as nursery:
            for i, s in enumerate(stores):
                order = ids[:]
                random.Random(i).shuffle(order)
                nursery.start_soon(producer, s, order)
        assert sorted(accepted) == sorted(ids)
        claims = await stores[3].claim(NS, "w", limit=100, lease=10.0)
        assert sorted(c.job_id for c in claims) == sorted(ids)
        # Commit order is lock order: creation times (taken under the lock) never go back.
        created = [c.created_at for c in claims]
        assert created == sorted(created)
        # Strictly alternating producers: one queue, in enqueue order.
        for i in range(12):
            await stores[i % 4].enqueue(NS, f"alt-{i}", b"", **OPTS)
        claims = await stores[1].claim(NS, "w", limit=100, lease=10.0)
        assert [c.job_id for c in claims] == [f"alt-{i}" for i in range(12)]


class _NoInotify:
    """Stands for a platform without inotify (FileStorage then uses watchfiles)."""

    def __init__(self) -> None:
        raise OSError(errno.ENOSYS, "no inotify here")


@pytest.mark.parametrize("how", ["inotify", "watchfiles", "polling"])
async def test_wakeups_cross_objects(
    make: Callable[..., FileStorage], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocked claim, a job watch and an event subscription in one storage object see what
    another object did (through the journal, as another process would), woken by inotify,
    by watchfiles where there is no inotify, or by polling."""
    if how == "watchfiles":
        monkeypatch.setattr(file_backend, "_Inotify", _NoInotify)
    polling = how == "polling"
    a = make(force_polling=polling)
    b = make(force_polling=polling)
    async with a, b:
        assert (a._inotify is not None) == (how == "inotify")
        got: list[Claim] = []

        async def claimer() -> None:
            got.extend(await a.claim(NS, "w", limit=1, lease=30.0, wait=60.0))

        with trio.fail_after(20):
            async with a.subscribe_events(NS) as events:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(claimer)
                    await trio.sleep(0.2)  # let the claim block (it must not need to)
                    await b.enqueue(NS, "x", b"p", **OPTS)
                assert [c.job_id for c in got] == ["x"]
                async with a.watch_job(NS, "x") as watch:
                    assert await a.release(NS, "x", got[0].token) is SettleStatus.OK
                    (c,) = await b.claim(NS, "w2", limit=1, lease=30.0)
                    assert await b.complete(NS, "x", c.token, b"r", ttl=50.0) is SettleStatus.OK
                    await watch.wait()
                kinds = [(await events.receive()).kind for _ in range(5)]
                assert kinds == [
                    EventKind.ENQUEUED,
                    EventKind.STARTED,
                    EventKind.REQUEUED,
                    EventKind.STARTED,
                    EventKind.COMPLETED,
                ]


async def test_permissions_and_layout(make: Callable[..., FileStorage], root: Path) -> None:
    """Directories are 0o700 and files 0o600 (journals, snapshots written by compaction,
    the name file), whatever the umask allows."""
    old = os.umask(0o000)
    try:
        async with make(compact_bytes=512) as s:
            for i in range(40):  # enough for two compactions: snapshot and snapshot.prev
                await s.enqueue(NS, f"j{i}", b"p" * 100, **OPTS)
            await s.enqueue("other", "j", b"p", **OPTS)
    finally:
        os.umask(old)
    assert (ns_dir(root) / "snapshot.prev").exists()
    for dirpath, _dirnames, filenames in os.walk(root):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for name in filenames:
            path = os.path.join(dirpath, name)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


ODD_IDS = [
    "../../../etc/passwd",
    "/abs/path",
    "..",
    ".",
    "a\x00b",
    "sp ace:colon",
    "ünï-cødé/🙂",
    "é/" * 512,
    "x" * 1024,
]


async def test_odd_ids_and_names_stay_inside(
    make: Callable[..., FileStorage], tmp_path: Path, root: Path
) -> None:
    """Ids and queue names of any content round-trip and never create paths outside the
    directory or names longer than the file-name limit."""
    names = [NS, "../escape", "a/b", "\x00", "ü" * 200]
    async with make() as s:
        for ns in names:
            for job_id in ODD_IDS:
                assert (await s.enqueue(ns, job_id, b"p", **OPTS)).status is EnqueueStatus.QUEUED
            claims = await s.claim(ns, "w", limit=100, lease=10.0)
            assert [c.job_id for c in claims] == ODD_IDS
            for c in claims:
                assert await s.complete(ns, c.job_id, c.token, b"r", ttl=10.0) is SettleStatus.OK
                rec = await s.get_status(ns, c.job_id)
                assert rec is not None and rec.job_id == c.job_id
    assert sorted(os.listdir(tmp_path)) == ["queue"]
    assert len(os.listdir(root / "ns")) == len(names)
    for path in _walk(root):
        assert len(path.name.encode()) <= 100 and "\x00" not in path.name
        assert path.resolve().is_relative_to(root)


async def test_compaction_keeps_state_and_lagging_readers(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """Small compaction thresholds rotate the journal; a lagging object still catches up."""
    lagging = make()
    async with make(compact_bytes=2048) as s, lagging:
        assert await lagging.get_status(NS, "nothing") is None
        for i in range(40):
            await s.enqueue(NS, f"j{i}", b"x" * 100, **OPTS)
        claims = await s.claim(NS, "w", limit=20, lease=30.0)
        for c in claims:
            await s.complete(NS, c.job_id, c.token, b"done", ttl=100.0)
        journals = sorted(p.name for p in ns_dir(root).iterdir() if p.name.startswith("journal"))
        assert len(journals) <= 2 and journals[-1] != "journal.0"
        stats = await lagging.stats(NS)
        assert (stats.queued, stats.completed) == (20, 20)
        rest = await lagging.claim(NS, "w", limit=100, lease=30.0)
        assert [c.job_id for c in rest] == [f"j{i}" for i in range(20, 40)]


async def _fill_with_compactions(s: FileStorage, root: Path) -> None:
    """Jobs in every state, across at least two compactions (so a previous snapshot exists)."""
    for i in range(30):
        await s.enqueue(NS, f"j{i}", bytes([i]) * 300, **OPTS)
    claims = await s.claim(NS, "w", limit=12, lease=500.0)
    for n, c in enumerate(claims):
        if n % 3 == 0:
            await s.complete(NS, c.job_id, c.token, b"r" * 50, ttl=500.0)
        elif n % 3 == 1:
            await s.retry(NS, c.job_id, c.token, b"e", delay=300.0)
    assert await s.acquire_lock(NS, "L", "me", ttl=500.0) == 1


async def _everything(s: FileStorage) -> tuple[Any, ...]:
    records = [await s.get_status(NS, f"j{i}") for i in range(30)]
    return (tuple(records), await s.stats(NS))


async def test_corrupt_latest_snapshot_falls_back_to_the_previous_one(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """A corrupt latest snapshot is quarantined and the namespace is rebuilt from the
    previous snapshot plus its journals: nothing is lost, the claim order and the lock
    epochs carry on."""
    async with make(compact_bytes=1024) as s:
        await _fill_with_compactions(s, root)
        assert s.statistics().snapshots >= 2
        before = await _everything(s)
    snapshot = ns_dir(root) / "snapshot"
    assert (ns_dir(root) / "snapshot.prev").exists()
    data = bytearray(snapshot.read_bytes())
    data[-10] ^= 0xFF  # the body no longer matches its checksum
    snapshot.write_bytes(bytes(data))
    async with make() as s:
        assert await _everything(s) == before
        (report,) = s.quarantined
        assert "snapshot" in report.reason and "recovered" in report.reason
        assert [c.job_id for c in await s.claim(NS, "w", limit=2, lease=5.0)] == ["j12", "j13"]
        assert await s.acquire_lock(NS, "L", "you", ttl=5.0) is None
    assert any(p.name.endswith("-snapshot") for p in (root / "quarantine").iterdir())


async def test_unusable_snapshots_reset_the_namespace(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """With both snapshots unreadable (and the journals before them gone), the namespace
    restarts empty in a new generation; everything is kept in quarantine and reported."""
    async with make(compact_bytes=1024) as s:
        await _fill_with_compactions(s, root)
    assert not (ns_dir(root) / "journal.0").exists()
    for name in ("snapshot", "snapshot.prev"):
        (ns_dir(root) / name).write_bytes(b"TJQF9 not a snapshot of ours")
    async with make() as s:
        assert (await s.enqueue(NS, "new", b"p", **OPTS)).status is EnqueueStatus.QUEUED
        reasons = [r.reason for r in s.quarantined]
        assert sum(r.startswith("corrupt snapshot") for r in reasons) == 2
        assert any(r.startswith("journal") for r in reasons)
        (c,) = await s.claim(NS, "w", limit=1, lease=10.0)
        assert c.job_id == "new"
    async with make() as s:
        assert (await s.stats(NS)).processing == 1 and not s.quarantined


async def test_heartbeat_batches_are_small_and_not_fsynced(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """A batch that only extends leases appends a frame of a few bytes per lease, without
    fsync, and another object (process) sees the new leases at once."""
    async with make() as s, make() as other:
        for i in range(5):
            await s.enqueue(NS, f"j{i}", os.urandom(10_000), **OPTS)
        claims = await s.claim(NS, "w", limit=5, lease=30.0)
        pairs = [(c.job_id, c.token) for c in claims]
        before = s.statistics()
        for _ in range(3):
            assert await s.heartbeat(NS, pairs, lease=90.0) == [True] * 5
        after = s.statistics()
        assert after.fsyncs == before.fsyncs
        assert after.frames == before.frames + 3
        assert (after.bytes_appended - before.bytes_appended) / 3 < 60 * 5 + 100
        rec = await other.get_status(NS, "j0")
        assert rec is not None and rec.lease_until is not None
        assert rec.lease_until > claims[0].lease_until + 50
        assert await s.complete(NS, "j0", claims[0].token, b"r", ttl=10.0) is SettleStatus.OK
        assert s.statistics().fsyncs == after.fsyncs + 1


async def test_payload_result_and_error_are_written_once(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """The enqueue's frame carries the payload and no later frame repeats it; a result is
    written once although it is both in the record and in its event; each error once."""
    payload, result, error = os.urandom(4000), os.urandom(3000), os.urandom(2000)
    async with make() as s, make() as other, other.subscribe_events(NS) as events:
        await s.enqueue(NS, "j", payload, **OPTS)
        (c,) = await s.claim(NS, "w", limit=1, lease=30.0)
        await s.heartbeat(NS, [("j", c.token)], lease=30.0)
        assert await s.retry(NS, "j", c.token, error, delay=0.0) is SettleStatus.OK
        (c,) = await s.claim(NS, "w", limit=1, lease=30.0)
        assert c.payload == payload
        await s.heartbeat(NS, [("j", c.token)], lease=30.0)
        assert await s.complete(NS, "j", c.token, result, ttl=60.0) is SettleStatus.OK
        with trio.fail_after(10):
            while (event := await events.receive()).kind is not EventKind.COMPLETED:
                pass
        assert event.result == result
    journal = (ns_dir(root) / "journal.0").read_bytes()
    assert [journal.count(blob) for blob in (payload, result, error)] == [1, 1, 1]
    assert len(journal) < len(payload) + len(result) + len(error) + 2000
    async with make() as s:
        rec = await s.get_status(NS, "j")
        assert rec is not None and (rec.result, rec.error) == (result, None)


async def test_torn_and_corrupt_journal_tails(make: Callable[..., FileStorage], root: Path) -> None:
    """A half-written frame (writer killed) and garbage after it are cut off and kept in
    quarantine; every acknowledged transition survives."""
    async with make() as s:
        for i in range(3):
            await s.enqueue(NS, f"j{i}", b"p", **OPTS)
    journal = ns_dir(root) / "journal.0"
    good = journal.read_bytes()
    frame = fio.encode_frame({"v": 1, "ts": 9, "hs": 0})
    _append(journal, frame[: len(frame) // 2])
    async with make() as s:
        stats = await s.stats(NS)
        assert stats.queued == 3
        assert any("torn" in r.reason for r in s.quarantined)
        await s.enqueue(NS, "j3", b"p", **OPTS)
    # Now damage a frame in the middle: a checksum mismatch.
    data = bytearray(journal.read_bytes())
    data[len(good) + 20] ^= 0xFF
    journal.write_bytes(bytes(data))
    async with make() as s:
        claims = await s.claim(NS, "w", limit=10, lease=10.0)
        assert [c.job_id for c in claims] == ["j0", "j1", "j2"]
        assert any("checksum" in r.reason for r in s.quarantined)
        assert (await s.enqueue(NS, "j4", b"p", **OPTS)).status is EnqueueStatus.QUEUED


async def test_foreign_files_and_entries_are_quarantined(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """A foreign file in a queue directory and a well-framed entry of another version are
    moved aside; the rest is served."""
    async with make() as s:
        await s.enqueue(NS, "a", b"p", **OPTS)
    (ns_dir(root) / "junk.txt").write_text("hello")
    _append(ns_dir(root) / "journal.0", fio.encode_frame({"v": 99, "something": "else"}))
    async with make() as s:
        await s.enqueue(NS, "b", b"p", **OPTS)
        assert [c.job_id for c in await s.claim(NS, "w", limit=5, lease=5.0)] == ["a", "b"]
        reasons = " ".join(r.reason for r in s.quarantined)
        assert "foreign file" in reasons and "undecodable journal entry" in reasons
    assert not (ns_dir(root) / "junk.txt").exists()


async def test_cancelled_claims_lose_nothing(make: Callable[..., FileStorage]) -> None:
    """Claims cancelled at random points under load leave every job recoverable."""
    rng = random.Random(4)
    ids = [f"j{i}" for i in range(80)]
    async with make() as s, make() as other:
        for job_id in ids:
            await s.enqueue(NS, job_id, b"p", **OPTS)
        finished: set[str] = set()

        async def worker(store: FileStorage) -> None:
            while True:
                with trio.move_on_after(rng.random() * 0.004):
                    claims = await store.claim(NS, "w", limit=3, lease=100.0, wait=0.01)
                    for c in claims:
                        await store.complete(NS, c.job_id, c.token, b"r", ttl=1000.0)
                        finished.add(c.job_id)
                stats = await store.stats(NS)
                if stats.queued == 0 and stats.delayed == 0:
                    return

        async with trio.open_nursery() as nursery:
            for store in (s, other, s):
                nursery.start_soon(worker, store)
        await s.advance_clock(200.0)
        await other.advance_clock(200.0)
        recovered = await s.reap(NS)
        assert set(finished) | {r.job_id for r in recovered.stalled} == set(ids)
        assert not set(finished) & {r.job_id for r in recovered.stalled}
        rest = await s.claim(NS, "w", limit=100, lease=100.0)
        assert {c.job_id for c in rest} == {r.job_id for r in recovered.stalled}


async def test_fsync_off_and_group_commit(make: Callable[..., FileStorage], root: Path) -> None:
    """Concurrent calls from one object share transactions; results stay per call."""
    async with make(fsync=False) as s:

        async def enqueue(job_id: str) -> None:
            await s.enqueue(NS, job_id, b"p", **OPTS)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(enqueue, f"j{i % 150}")
        assert (await s.stats(NS)).queued == 150
        claims = await s.claim(NS, "w", limit=500, lease=10.0)
        results: dict[tuple[str, str], SettleStatus] = {}

        async def settle(job_id: str, token: str) -> None:
            results[job_id, token] = await s.complete(NS, job_id, token, b"r", ttl=10.0)

        async with trio.open_nursery() as nursery:
            for c in claims:
                nursery.start_soon(settle, c.job_id, c.token)
            nursery.start_soon(settle, claims[0].job_id, "stale-token")
        assert list(results.values()).count(SettleStatus.OK) == 150
        assert list(results.values()).count(SettleStatus.STALE) == 1
        # 200 enqueues, 1 claim, 151 settlements and 2 stats in a handful of frames.
        frames = list(fio.iter_frames(_read(ns_dir(root) / "journal.0"), 0))
        assert all(isinstance(f, fio.Frame) for f in frames)
        assert (await s.stats(NS)).completed == 150
    assert len(frames) < 50


async def test_os_errors_surface_as_storage_error(tmp_path: Path) -> None:
    """A path that cannot hold a queue gives StorageError (from the OSError), not a crash."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StorageError) as info:
        async with FileStorage(blocker / "queue"):
            pass
    assert isinstance(info.value.__cause__, OSError)
    storage = FileStorage(tmp_path / "q")
    async with storage:
        await storage.enqueue(NS, "a", b"p", **OPTS)
        # A file where the "other" queue's directory belongs (works even as root).
        (tmp_path / "q" / "ns" / fio.safe_name("other")).write_text("")
        with pytest.raises(StorageError) as info:
            await storage.enqueue("other", "a", b"p", **OPTS)
        assert isinstance(info.value.__cause__, OSError)
        assert (await storage.enqueue(NS, "b", b"p", **OPTS)).status is EnqueueStatus.QUEUED


def _v1_record(job_id: str, payload: bytes, state: str, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = dict.fromkeys("rfxdwklqy")
    rec.update(i=job_id, p=base64.b64encode(payload).decode(), s=state, m=3, t=600.0)
    rec.update(c=1.0e9, a=0, e=None)
    for key, value in fields.items():
        rec[key] = base64.b64encode(value).decode() if isinstance(value, bytes) else value
    return rec


async def test_format_1_directory_is_read_then_written_in_format_2(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """A queue written by the previous format (whole records, base64) opens as is: its
    snapshot and journal are read, new frames are format 2, and the first compaction
    writes a format-2 snapshot, keeping the old one as the previous snapshot."""
    directory = ns_dir(root)
    directory.mkdir(parents=True)
    future = 4.0e9
    body = {
        "v": 1,
        "ts": 1,
        "hs": 0,
        "jobs": [
            _v1_record("a", b"\x00pa", "queued", q=1),
            _v1_record("b", b"pb", "completed", a=1, r=b"rb", f=1.0e9, x=future),
        ],
        "locks": {"L": ["old-leader", 4, None]},
    }
    text = json.dumps(body).encode()
    header = b"TJQF1 %020d %08x %012d\n" % (2, zlib.crc32(text), len(text))
    (directory / "snapshot").write_bytes(header + text)
    frame = {"v": 1, "ts": 2, "hs": 0, "p": [_v1_record("c", b"pc", "queued", q=2)]}
    frame |= {"d": [], "L": {}, "ev": [["enqueued", "c", 0, None, None]]}
    (directory / "journal.2").write_bytes(fio.encode_frame_v1(frame))
    async with make(compact_bytes=4000) as s:
        b = await s.get_status(NS, "b")
        assert b is not None and (b.state, b.result) == (JobState.COMPLETED, b"rb")
        claims = await s.claim(NS, "w", limit=5, lease=60.0)
        assert [(c.job_id, c.payload) for c in claims] == [("a", b"\x00pa"), ("c", b"pc")]
        assert await s.acquire_lock(NS, "L", "new-leader", ttl=60.0) == 5
        journal = (directory / "journal.2").read_bytes()
        assert journal.count(fio.FRAME_MAGIC_V1) == 1 and fio.FRAME_MAGIC in journal
        added = 0
        while not (directory / "journal.3").exists():  # until one generation switch
            await s.enqueue(NS, f"n{added}", b"x" * 200, **OPTS)
            added += 1
    assert s.statistics().snapshots == 1  # closing waited for the build
    assert (directory / "snapshot").read_bytes().startswith(fio.SNAP_MAGIC)
    assert (directory / "snapshot.prev").read_bytes().startswith(fio.SNAP_MAGIC_V1)
    async with make() as s:
        assert (await s.stats(NS)).queued == added and (await s.stats(NS)).processing == 2


async def test_idle_claims_need_no_transaction(make: Callable[..., FileStorage]) -> None:
    """A claim on a queue with nothing ready, whose journal has not grown since this
    object's last transaction, answers without one (with the next retry's due time);
    work appended by another object (process) is claimed at once."""
    async with make() as s, make() as other:
        await s.enqueue(NS, "late", b"p", **OPTS)
        (c,) = await s.claim(NS, "w", limit=1, lease=30.0)
        assert await s.retry(NS, "late", c.token, b"e", delay=50.0) is SettleStatus.OK
        before = s.statistics().transactions
        for _ in range(5):
            batch = await s.claim_nowait(NS, "w", limit=3, lease=30.0)
            assert batch.claims == [] and batch.next_due_in is not None
            assert 45.0 < batch.next_due_in <= 50.0
        assert s.statistics().transactions == before
        await other.enqueue(NS, "new", b"p", **OPTS)
        (c,) = await s.claim(NS, "w", limit=3, lease=30.0)
        assert c.job_id == "new"
        await s.advance_clock(60.0)
        (c,) = await s.claim(NS, "w", limit=3, lease=30.0)
        assert (c.job_id, c.attempt) == ("late", 2)


async def test_frames_read_by_the_tailer_need_no_replay(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """What another object (process) committed, once this object's tailer has read it,
    is in this object's state without a transaction: an idle claim then needs none. A
    frame the tailer cannot decode is left to the next transaction, which quarantines it
    and serves what came after."""
    async with make() as s, make() as other:
        await s.stats(NS)
        async with s.subscribe_events(NS) as events:
            await other.enqueue(NS, "x", b"p", **OPTS)
            (c,) = await other.claim(NS, "w", limit=1, lease=30.0)
            with trio.fail_after(10):
                kinds = [(await events.receive()).kind for _ in range(2)]
            assert kinds == [EventKind.ENQUEUED, EventKind.STARTED]
            before = s.statistics().transactions
            batch = await s.claim_nowait(NS, "w", limit=3, lease=30.0)
            assert batch.claims == [] and s.statistics().transactions == before
            record = await s.get_status(NS, "x")
            assert record is not None and record.state is JobState.PROCESSING

            _append(ns_dir(root) / "journal.0", fio.encode_frame({"v": 99, "odd": True}))
            await other.enqueue(NS, "y", b"p", **OPTS)
            with trio.fail_after(10):
                assert (await events.receive()).job_id == "y"
            (c,) = await s.claim(NS, "w", limit=3, lease=30.0)
            assert c.job_id == "y"
            assert any("undecodable journal entry" in r.reason for r in s.quarantined)
