"""FileStorage at the storage level: every method, sharing, layout, corruption, recovery."""

from __future__ import annotations

import os
import random
import stat
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


@pytest.mark.parametrize("polling", [False, True], ids=["watcher", "polling"])
async def test_wakeups_cross_objects(make: Callable[..., FileStorage], polling: bool) -> None:
    """A blocked claim, a job watch and an event subscription in one storage object see what
    another object did (through the journal, as another process would)."""
    a = make(force_polling=polling)
    b = make(force_polling=polling)
    async with a, b:
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
    """Directories are 0o700 and files 0o600, whatever the umask allows."""
    old = os.umask(0o000)
    try:
        async with make() as s:
            await s.enqueue(NS, "j", b"p", **OPTS)
            await s.enqueue("other", "j", b"p", **OPTS)
    finally:
        os.umask(old)
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


async def test_corrupt_snapshot_is_quarantined(
    make: Callable[..., FileStorage], root: Path
) -> None:
    """An unreadable snapshot is moved aside and reported; the queue keeps working."""
    async with make(compact_bytes=512) as s:
        for i in range(10):
            await s.enqueue(NS, f"j{i}", b"x" * 100, **OPTS)
    snapshot = ns_dir(root) / "snapshot"
    assert snapshot.exists()
    snapshot.write_bytes(b"TJQF9 not a snapshot of ours")
    async with make() as s:
        assert (await s.enqueue(NS, "new", b"p", **OPTS)).status is EnqueueStatus.QUEUED
        assert s.quarantined and "snapshot" in s.quarantined[0].reason
        (c,) = await s.claim(NS, "w", limit=1, lease=10.0)
        assert c.job_id == "new"
    assert any("snapshot" in p.name for p in (root / "quarantine").iterdir())


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
