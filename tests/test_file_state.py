"""The transition layer File and Memory share (storage/_state.py): O(1) stats counters
against a full count, and journal deltas that replay to the same state, under random
transitions with TTL expiry and delayed retries."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trio_jobqueue import JobState
from trio_jobqueue.storage import MemoryStorage
from trio_jobqueue.storage import _file_io as fio
from trio_jobqueue.storage import _state as st
from trio_jobqueue.storage.file import FileStorage

IDS = [f"id-{i}" for i in range(25)]


def full_count(state: st.NsState, now: float) -> tuple[int, int, int, int, int]:
    """The O(n) definition of ``stats`` (what the counters must always agree with)."""
    queued = delayed = processing = completed = failed = 0
    for rec in state.jobs.values():
        if rec.expires_at is not None and rec.expires_at <= now:
            continue
        if rec.state is JobState.PROCESSING:
            processing += 1
        elif rec.state is JobState.COMPLETED:
            completed += 1
        elif rec.state is JobState.FAILED:
            failed += 1
        elif rec.delay_seq is not None and rec.due_at is not None and rec.due_at > now:
            delayed += 1
        else:
            queued += 1
    return queued, delayed, processing, completed, failed


def as_tuple(stats: Any) -> tuple[int, int, int, int, int]:
    return (stats.queued, stats.delayed, stats.processing, stats.completed, stats.failed)


def image(state: st.NsState) -> Any:
    """Everything a replay must reproduce (records field by field, locks, sequences)."""
    return (
        {job_id: tuple(getattr(rec, f) for f in st.FIELDS) for job_id, rec in state.jobs.items()},
        {name: lock.encode() for name, lock in state.locks.items()},
        state.tail_seq,
        state.head_seq,
    )


class Driver:
    """Random transitions on one NsState, journalled as File journals them: each batch
    of 1-3 transitions merged into one entry, framed and decoded back."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.state = st.NsState()
        self.now = 1_000_000.0
        self.held: list[tuple[str, str]] = []
        self.frames: list[fio.Frame] = []
        self.batch: list[st.Sealed] = []

    def run(self, fn: Callable[[st.Tx], Any]) -> Any:
        tx = st.Tx(self.state, self.now, track=True)
        value = fn(tx)
        self.batch.append(tx.seal())
        if len(self.batch) >= self.rng.randint(1, 3):
            self.flush()
        return value

    def flush(self) -> None:
        merged = st.merge_entry(self.batch)
        self.batch = []
        if merged is not None:
            (frame,) = fio.iter_frames(fio.encode_frame(*merged), 0)
            assert isinstance(frame, fio.Frame)
            self.frames.append(frame)

    def held_or_stale(self) -> tuple[str, str]:
        if self.held and self.rng.random() < 0.9:
            return self.held.pop(self.rng.randrange(len(self.held)))
        return self.rng.choice(IDS), "stale-token"

    def step(self) -> None:
        rng = self.rng
        op = rng.randrange(14)
        if op == 0:
            self.now += rng.choice([1.0, 10.0, 60.0, 300.0])
        elif op in (1, 2):
            payload = os.urandom(rng.randrange(200))
            self.run(
                lambda tx: st.enqueue(
                    tx, rng.choice(IDS), payload, rng.randint(1, 3), rng.choice([5, 50, 500])
                )
            )
        elif op in (3, 4):
            claims, _ = self.run(lambda tx: st.claim(tx, "w", rng.randint(1, 4), 100.0))
            self.held.extend((c.job_id, c.token) for c in claims)
        elif op == 5:
            job_id, token = self.held_or_stale()
            self.run(lambda tx: st.complete(tx, job_id, token, os.urandom(20), 50.0))
        elif op == 6:
            job_id, token = self.held_or_stale()
            self.run(lambda tx: st.fail(tx, job_id, token, b"boom", rng.choice([5.0, 500.0])))
        elif op == 7:
            job_id, token = self.held_or_stale()
            delay = rng.choice([0.0, 20.0, 200.0])
            self.run(lambda tx: st.retry(tx, job_id, token, b"again", delay))
        elif op == 8:
            job_id, token = self.held_or_stale()
            self.run(lambda tx: st.release(tx, job_id, token))
        elif op == 9:
            pairs = [p for p in self.held if rng.random() < 0.7]
            self.run(lambda tx: st.heartbeat(tx, pairs, 100.0))
        elif op == 10:
            self.run(lambda tx: st.cancel(tx, rng.choice(IDS)))
        elif op == 11:
            ttl = rng.choice([1.0, 100.0])
            self.run(lambda tx: st.update_result_ttl(tx, rng.choice(IDS), ttl))
        elif op == 12:
            self.run(lambda tx: st.reap(tx, None))
        else:
            which = rng.randrange(4)
            if which == 0:
                self.run(st.purge)
            elif which == 1:
                self.run(lambda tx: st.get_status(tx, rng.choice(IDS)))
            else:
                owner = rng.choice(["a", "b"])
                self.run(lambda tx: st.acquire_lock(tx, "L", owner, 100.0))

    def stats(self) -> tuple[int, int, int, int, int]:
        return as_tuple(self.run(st.stats))


@pytest.mark.parametrize("seed", range(8))
def test_counters_agree_with_a_full_count(seed: int) -> None:
    """After every random transition (clock moves, TTLs running out, delayed retries
    coming due), the O(1) stats equal a full count of the records."""
    driver = Driver(seed)
    for _ in range(600):
        driver.step()
        expected = full_count(driver.state, driver.now)
        assert driver.stats() == expected
    counts = driver.state.counts
    assert sum(counts[1:]) == len(driver.state.jobs)


@pytest.mark.parametrize("seed", range(8))
def test_journal_deltas_replay_to_the_same_state(seed: int) -> None:
    """Replaying the merged delta entries (through real frames) on an empty state gives
    the same records, locks, sequences and counters; so does a snapshot round trip."""
    driver = Driver(seed)
    for _ in range(600):
        driver.step()
    driver.flush()
    replayed = st.NsState()
    for frame in driver.frames:
        replayed.apply_entry(frame.entry, frame.blobs)
    assert image(replayed) == image(driver.state)
    body, blobs = driver.state.encode()
    snap = fio.decode_snapshot(fio.encode_snapshot(7, body, blobs))
    restored = st.NsState.decode(snap.body, snap.blobs)
    assert (snap.gen, image(restored)) == (7, image(driver.state))
    for state in (replayed, restored):
        stats = as_tuple(st.stats(st.Tx(state, driver.now)))
        assert stats == full_count(driver.state, driver.now)


def test_claim_and_heartbeat_deltas_carry_only_what_changed() -> None:
    """An enqueue journals the whole record (payload included); a claim, a heartbeat and
    a completion journal only the fields they changed, never the payload."""
    driver = Driver(0)
    payload = os.urandom(1000)
    driver.run(lambda tx: st.enqueue(tx, "j", payload, 3, 60.0))
    driver.flush()
    (claim,), _ = driver.run(lambda tx: st.claim(tx, "w", 1, 30.0))
    driver.flush()
    driver.now += 10.0
    driver.run(lambda tx: st.heartbeat(tx, [("j", claim.token)], 30.0))
    driver.flush()
    driver.run(lambda tx: st.complete(tx, "j", claim.token, b"result", 60.0))
    driver.flush()
    enqueue, claimed, heartbeat, completed = (f.entry for f in driver.frames)
    assert len(enqueue["n"]) == 1 and enqueue["B"] == [1000]
    fields = [entry["u"][0][1::2] for entry in (claimed, heartbeat, completed)]
    assert sorted(fields[0]) == sorted(["s", "a", "w", "k", "l", "q"])
    assert fields[1] == ["l"]
    assert "p" not in fields[2] and "r" in fields[2]
    assert completed["B"] == [len(b"result")]  # one blob for the record and its event
    assert "B" not in claimed and "B" not in heartbeat


async def _median_stats_time(storage: Any, ns: str) -> float:
    times = []
    for _ in range(51):
        start = time.perf_counter()
        await storage.stats(ns)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def test_memory_stats_cost_does_not_grow_with_the_namespace() -> None:
    """Memory's stats cost the same at 30,000 jobs as at 30 (a scan would be 1000x)."""
    storage = MemoryStorage()
    async with storage:
        for n, ns in ((30, "small"), (30_000, "large")):
            for i in range(n):
                await storage.enqueue(ns, f"j{i}", b"p", max_attempts=3, result_ttl=60.0)
            await storage.claim(ns, "w", limit=n // 3, lease=60.0)
        small = await _median_stats_time(storage, "small")
        large = await _median_stats_time(storage, "large")
        assert (await storage.stats("large")).processing == 10_000
    assert large < 30 * small, (small, large)


async def test_file_replay_across_objects_matches(tmp_path: Path) -> None:
    """Random transitions through two FileStorage objects (two "processes", in turn, with
    clock moves): a third object replaying the journal from scratch agrees with both on
    every record and on the stats, including after TTLs ran out."""
    rng = random.Random(11)
    root = tmp_path / "q"
    objects = [FileStorage(root, compact_bytes=4096), FileStorage(root, compact_bytes=4096)]
    held: list[tuple[str, str]] = []
    async with objects[0], objects[1]:
        for step in range(300):
            s = objects[step % 2]
            op = rng.randrange(8)
            job_id = rng.choice(IDS)
            if op == 0:
                for o in objects:
                    await o.advance_clock(rng.choice([1.0, 30.0, 200.0]))
            elif op in (1, 2):
                ttl = rng.choice([10.0, 100.0, 1000.0])
                await s.enqueue("ns", job_id, os.urandom(50), max_attempts=3, result_ttl=ttl)
            elif op == 3:
                held += [(c.job_id, c.token) for c in await s.claim("ns", "w", limit=3, lease=50.0)]
            elif op == 4 and held:
                j, t = held.pop(rng.randrange(len(held)))
                await s.complete("ns", j, t, b"r", ttl=rng.choice([10.0, 1000.0]))
            elif op == 5 and held:
                j, t = held.pop(rng.randrange(len(held)))
                await s.retry("ns", j, t, b"e", delay=rng.choice([0.0, 60.0]))
            elif op == 6:
                await s.heartbeat("ns", held, lease=50.0)
            else:
                await s.reap("ns")
        fresh = FileStorage(root)
        fresh._clock_offset = objects[0]._clock_offset
        async with fresh:
            views = []
            for o in (*objects, fresh):
                records = [await o.get_status("ns", j) for j in IDS]
                views.append((records, await o.stats("ns")))
            assert views[0] == views[1] == views[2]
            assert sum(as_tuple(views[0][1])) > 0


def test_records_loaded_in_any_order_are_claimed_by_priority_then_position() -> None:
    """A namespace rebuilt from records in no particular order (a snapshot) hands its
    ready jobs out by priority, then position (released ones first), as one built by
    transitions does."""
    rng = random.Random(7)
    expected = [(priority, seq) for priority in (5, 0, -3) for seq in (-4, -1, 2, 3, 8, 9)]
    recs = [
        st.Rec(
            job_id=f"p{priority}s{seq}",
            payload=b"",
            state=JobState.QUEUED,
            max_attempts=1,
            result_ttl=60.0,
            created_at=0.0,
            ready_seq=seq,
            priority=priority,
        )
        for priority, seq in expected
    ]
    rng.shuffle(recs)
    state = st.NsState()
    for rec in recs:
        state.insert(rec)
    claims, _ = st.claim(st.Tx(state=state, now=1.0), "w", len(recs), 30.0)
    assert [claim.job_id for claim in claims] == [f"p{p}s{s}" for p, s in expected]
