"""FileStorage across real processes: dedup, draining workers, SIGKILL mid-job and
mid-transition. Each test counts lost and duplicated jobs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_jobqueue as jq
from trio_jobqueue import EventKind, JobState
from trio_jobqueue.storage import _file_io as fio
from trio_jobqueue.storage.file import CRASH_ENV, CRASH_POINTS, PAUSE_ENV, FileStorage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
QUEUE = "mp"

ENQUEUER = textwrap.dedent(
    """
    import json, os, random, sys, time
    import trio
    from trio_jobqueue.storage.file import FileStorage

    root, seed = sys.argv[1], int(sys.argv[2])
    ids = [f"job-{i}" for i in range(60)]
    random.Random(seed).shuffle(ids)

    async def main():
        accepted = []
        async with FileStorage(root) as storage:
            print("ready", flush=True)
            # Start together: wait for the parent's "go" line on stdin.
            await trio.to_thread.run_sync(sys.stdin.readline)
            for job_id in ids:
                out = await storage.enqueue(
                    "mp", job_id, b"p", max_attempts=3, result_ttl=600.0
                )
                if out.status == "queued":
                    accepted.append(job_id)
        print(json.dumps(accepted))

    trio.run(main)
    """
)

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import trio
    import trio_jobqueue as jq
    from trio_jobqueue.storage.file import FileStorage

    root, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    opts = json.loads(sys.argv[4])

    def note(line):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)

    async def handler(job):
        note(f"{job.id} {os.getpid()} {job.attempt}")
        await trio.sleep(opts.get("sleep", 0.0))
        return {"pid": os.getpid()}

    async def main():
        storage = FileStorage(
            root,
            force_polling=opts.get("polling", False),
            compact_bytes=opts.get("compact_bytes", 8 << 20),
        )
        if opts.get("handshake"):
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
        async with jq.open_queue(
            storage,
            handler,
            name="mp",
            concurrency=opts.get("concurrency", 4),
            visibility_timeout=opts.get("vt", 30.0),
            lock_ttl=opts.get("lock_ttl", 1.0),
            max_attempts=10,
            shutdown_grace=5.0,
        ):
            while not os.path.exists(stop):
                await trio.sleep(0.05)

    trio.run(main)
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop(CRASH_ENV, None)
    env.pop(PAUSE_ENV, None)
    env.update(extra)
    return env


def _spawn(script: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=_env(**env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def _wait(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> tuple[int, bytes]:
    out, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=timeout))
    assert proc.returncode is not None
    if proc.returncode not in (0, -signal.SIGKILL, 137):
        raise AssertionError(f"child failed ({proc.returncode}):\n{err.decode()}")
    return proc.returncode, out


def _count_runs(log: Path) -> int:
    return sum(_runs(log).values())


def _runs(log: Path) -> Counter[str]:
    if not log.exists():
        return Counter()
    return Counter(line.split(" ")[0] for line in log.read_text().splitlines() if line)


async def _drained(storage: FileStorage, ids: list[str], timeout: float = 60.0) -> None:
    """Wait (watching the journal through the storage) until every id completed."""
    with trio.fail_after(timeout):
        async with storage.subscribe_events(QUEUE) as events:
            while True:
                stats = await storage.stats(QUEUE)
                if stats.completed == len(ids):
                    return
                with trio.move_on_after(1.0):
                    await events.receive()


async def _assert_all_completed(storage: FileStorage, ids: list[str]) -> None:
    lost = []
    for job_id in ids:
        rec = await storage.get_status(QUEUE, job_id)
        if rec is None or rec.state is not JobState.COMPLETED:
            lost.append((job_id, rec and rec.state))
    assert lost == [], f"{len(lost)} lost jobs: {lost[:5]}"
    stats = await storage.stats(QUEUE)
    assert (stats.queued, stats.delayed, stats.processing) == (0, 0, 0)


async def test_four_processes_enqueue_same_ids(tmp_path: Path) -> None:
    """4 processes enqueueing the same 60 ids accept each exactly once."""
    script = tmp_path / "enqueuer.py"
    script.write_text(ENQUEUER)
    root = tmp_path / "q"
    procs = [_spawn(script, str(root), str(seed)) for seed in range(4)]
    with trio.fail_after(60):
        for proc in procs:
            assert proc.stdout is not None
            assert await trio.to_thread.run_sync(proc.stdout.readline) == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    accepted: Counter[str] = Counter()
    for proc in procs:
        _, out = await _wait(proc)
        accepted.update(json.loads(out))
    assert sorted(accepted) == sorted(f"job-{i}" for i in range(60))
    assert set(accepted.values()) == {1}, "duplicated accepts"
    async with FileStorage(root) as storage:
        assert (await storage.stats(QUEUE)).queued == 60


async def _start_workers(
    tmp_path: Path, count: int, opts: dict[str, Any], **env: str
) -> tuple[list[subprocess.Popen[bytes]], Path, Path]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log, stop = tmp_path / "runs.log", tmp_path / "stop"
    procs = [
        _spawn(script, str(tmp_path / "q"), str(log), str(stop), json.dumps(opts), **env)
        for _ in range(count)
    ]
    return procs, log, stop


@pytest.mark.parametrize("polling", [False, True], ids=["watcher", "polling"])
async def test_three_worker_processes_drain(tmp_path: Path, polling: bool) -> None:
    """Workers in 3 processes drain a queue: nothing lost, nothing run twice; a producer
    in this process waits for a result computed in another process."""
    ids = [f"job-{i}" for i in range(300)]
    async with FileStorage(tmp_path / "q", force_polling=polling) as storage:
        async with jq.open_queue(storage, name=QUEUE) as producer:
            for job_id in ids:
                await producer.enqueue(job_id, {"n": job_id})
            procs, log, stop = await _start_workers(
                tmp_path, 3, {"polling": polling, "concurrency": 8, "handshake": True}
            )
            try:
                # Start the three together, so that they compete for the jobs.
                for proc in procs:
                    assert proc.stdout is not None
                    assert await trio.to_thread.run_sync(proc.stdout.readline) == b"ready\n"
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
                value = await producer.enqueue_and_wait("final", {}, timeout=60.0)
                assert value["pid"] in {p.pid for p in procs}
                await _drained(storage, [*ids, "final"])
            finally:
                stop.touch()
                for proc in procs:
                    await _wait(proc)
        await _assert_all_completed(storage, ids)
    runs = _runs(log)
    assert [i for i in ids if runs[i] == 0] == []
    assert [i for i, n in runs.items() if n > 1] == [], "duplicated runs"
    pids = {line.split(" ")[1] for line in log.read_text().splitlines()}
    assert len(pids) >= 2, "the work was not shared between processes"


async def test_worker_sigkilled_mid_job(tmp_path: Path) -> None:
    """A worker process SIGKILLed while running jobs loses none: their leases expire and
    a worker in another process (reaping) finishes them."""
    ids = [f"job-{i}" for i in range(40)]
    async with FileStorage(tmp_path / "q") as storage:
        async with jq.open_queue(storage, name=QUEUE) as producer:
            for job_id in ids:
                await producer.enqueue(job_id, None)
        async with storage.subscribe_events(QUEUE) as events:
            (victim,), log, stop = await _start_workers(
                tmp_path, 1, {"sleep": 30.0, "concurrency": 4, "vt": 1.0}
            )
            started = 0
            with trio.fail_after(30):
                while started < 4:
                    started += (await events.receive()).kind is EventKind.STARTED
        while await trio.to_thread.run_sync(_count_runs, log) < 4:  # noqa: ASYNC110
            await trio.sleep(0.05)  # the handlers' log lines follow the claims at once
        victim.send_signal(signal.SIGKILL)
        await _wait(victim)
        in_flight = set(_runs(log))
        (rescuer,), _, _ = await _start_workers(
            tmp_path, 1, {"sleep": 0.0, "concurrency": 4, "vt": 1.0}
        )
        try:
            await _drained(storage, ids)
        finally:
            stop.touch()
            await _wait(rescuer)
        await _assert_all_completed(storage, ids)
        runs = _runs(log)
        assert [i for i, n in runs.items() if n > 1 and i not in in_flight] == []
        for job_id in in_flight:
            rec = await storage.get_status(QUEUE, job_id)
            assert rec is not None and rec.attempts == 2


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_worker_sigkilled_mid_transition(tmp_path: Path, point: str) -> None:
    """A process killed at any point inside a transaction or a compaction (the private
    crash hook: every point of CRASH_POINTS) leaves a state the next process recovers:
    zero lost jobs, none stuck."""
    ids = [f"job-{i}" for i in range(30)]
    async with FileStorage(tmp_path / "q") as storage:
        for job_id in ids:
            await storage.enqueue(QUEUE, job_id, b"null", max_attempts=10, result_ttl=600.0)
        opts = {"concurrency": 2, "vt": 1.0, "compact_bytes": 3000}
        nth = 1 if point.startswith("compact") else 4
        (victim,), log, stop = await _start_workers(
            tmp_path, 1, opts, **{CRASH_ENV: f"{point}:{nth}"}
        )
        code, _ = await _wait(victim)
        assert code == 137, "the crash hook did not fire"
        (rescuer,), _, _ = await _start_workers(tmp_path, 1, opts)
        try:
            await _drained(storage, ids)
        finally:
            stop.touch()
            await _wait(rescuer)
        await _assert_all_completed(storage, ids)
        runs = _runs(log)
        assert [i for i in ids if runs[i] == 0] == []
        # At most the jobs of the killed process's one batch ran twice.
        assert sum(n - 1 for n in runs.values()) <= opts["concurrency"]


async def test_random_sigkills_while_draining(tmp_path: Path) -> None:
    """Worker processes SIGKILLed at random instants (inside transactions or not), again
    and again, while another keeps draining: every job completes, none is lost."""
    rng = random.Random(7)
    ids = [f"job-{i}" for i in range(600)]
    opts = {"sleep": 0.01, "concurrency": 4, "vt": 1.0, "compact_bytes": 20_000}
    victims: list[int] = []
    async with FileStorage(tmp_path / "q") as storage:
        for job_id in ids:
            await storage.enqueue(QUEUE, job_id, b"null", max_attempts=20, result_ttl=600.0)
        # A slow worker runs throughout (contention with the victims), so the queue is
        # never empty while victims work; a fast rescuer finishes after the last kill.
        slow = {**opts, "sleep": 0.05, "concurrency": 2}
        (steady,), log, stop = await _start_workers(tmp_path, 1, slow)
        rescuer = None
        try:
            for _ in range(4):
                (victim,), _, _ = await _start_workers(tmp_path, 1, {**opts, "handshake": True})
                victims.append(victim.pid)
                assert victim.stdout is not None and victim.stdin is not None
                assert await trio.to_thread.run_sync(victim.stdout.readline) == b"ready\n"
                victim.stdin.write(b"go\n")
                victim.stdin.flush()
                await trio.sleep(0.05 + rng.random() * 0.25)  # a random instant to strike
                victim.send_signal(signal.SIGKILL)
                await _wait(victim)
            (rescuer,), _, _ = await _start_workers(tmp_path, 1, opts)
            await _drained(storage, ids)
        finally:
            stop.touch()
            await _wait(steady)
            if rescuer is not None:
                await _wait(rescuer)
        await _assert_all_completed(storage, ids)
    runs = _runs(log)
    assert [i for i in ids if runs[i] == 0] == []
    pids = {int(line.split(" ")[1]) for line in log.read_text().splitlines()}
    assert pids & set(victims), "no victim was killed while working"


COMPACTOR = textwrap.dedent(
    """
    import sys
    import trio
    from trio_jobqueue.storage.file import FileStorage

    async def main():
        async with FileStorage(sys.argv[1], compact_bytes=4096) as storage:
            # The journal is over 4096 bytes: this transaction switches generations and
            # the snapshot build starts (and pauses, by the hook) in the background.
            await storage.enqueue("mp", "child-1", b"p", max_attempts=3, result_ttl=600.0)
            print("switched", flush=True)
            await storage.enqueue("mp", "child-2", b"p", max_attempts=3, result_ttl=600.0)
            print("own transactions go on", flush=True)
        print("closed", flush=True)  # closing waited for the build

    trio.run(main)
    """
)


async def test_other_processes_transact_while_compaction_serialises(tmp_path: Path) -> None:
    """While a process rebuilds and writes a snapshot (held at that point by the pause
    hook), another process enqueues, claims and completes: compaction does not hold the
    lock. The snapshot installed afterwards plus the journal since hold everything."""
    root = tmp_path / "q"
    ids = [f"job-{i}" for i in range(100)]
    async with FileStorage(root) as storage:
        for job_id in ids:
            await storage.enqueue(QUEUE, job_id, b"x" * 100, max_attempts=3, result_ttl=600.0)
        script = tmp_path / "compactor.py"
        script.write_text(COMPACTOR)
        flag = tmp_path / "resume"
        child = _spawn(script, str(root), **{PAUSE_ENV: f"compact-serialise:{flag}"})
        try:
            assert child.stdout is not None
            with trio.fail_after(30):
                assert await trio.to_thread.run_sync(child.stdout.readline) == b"switched\n"
                while not await trio.Path(f"{flag}.paused").exists():  # noqa: ASYNC110
                    await trio.sleep(0.01)
            directory = trio.Path(root / "ns" / fio.safe_name(QUEUE))
            assert await (directory / "journal.1").exists()
            assert not await (directory / "snapshot").exists()
            with trio.fail_after(10):
                await storage.enqueue(QUEUE, "during", b"d", max_attempts=3, result_ttl=600.0)
                claims = await storage.claim(QUEUE, "w", limit=5, lease=60.0)
                for c in claims:
                    await storage.complete(QUEUE, c.job_id, c.token, b"r", ttl=600.0)
                line = await trio.to_thread.run_sync(child.stdout.readline)
                assert line == b"own transactions go on\n"
            assert not await (directory / "snapshot").exists()  # the build is still held
        finally:
            await trio.Path(flag).touch()
        code, out = await _wait(child)
        assert code == 0 and out.endswith(b"closed\n")
        assert fio.read_snapshot_gen(str(directory / "snapshot")) == 1
    async with FileStorage(root) as fresh:
        stats = await fresh.stats(QUEUE)
        assert (stats.queued, stats.completed) == (len(ids) + 3 - 5, 5)
        for job_id in ("during", "child-1", "child-2"):
            assert await fresh.get_status(QUEUE, job_id) is not None
