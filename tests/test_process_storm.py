"""Crash storms, on Redis and on File: three worker processes started through the CLI,
2,000 jobs flowing in, one worker killed and restarted every second.

* SIGKILL storm: every job completes (**zero lost**), and every execution beyond the one
  that completed a job was an execution in flight in a process at the moment it was
  killed -- so the duplicates never exceed the jobs in flight at the kills.
* SIGTERM storm: graceful shutdowns only, so **zero duplicates** and zero lost.

Handlers (``_proc_handlers:record``) append ``<id> <attempt>`` to a per-process file with
``O_APPEND`` and return their pid, so the test knows who ran what and whose result won.
The numbers are printed to the terminal (also without ``-s``).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from _proc_harness import Worker, WorkerPool, wait_for

import trio_jobqueue as jq

pytestmark = pytest.mark.slow

JOBS = 2000
WORKERS = 3
JOB_SECONDS = 0.03
"""Each handler sleeps this long: enough for jobs to be in flight at every kill."""
WORKER_ARGS = (
    "--concurrency", "8",
    "--visibility-timeout", "3",
    "--lock-ttl", "2",
    "--shutdown-grace", "15",
)  # fmt: skip


@attrs.define
class StormReport:
    backend: str
    signal: str
    seconds: float
    jobs: int = 0
    kills: int = 0
    executions: int = 0
    duplicates: int = 0
    in_flight_at_kills: int = 0
    lost: int = 0
    completed: int = 0
    fenced: int = 0
    drained_after: float = 0.0

    def line(self) -> str:
        return (
            f"storm[{self.backend}, {self.signal}] jobs={self.jobs} kills={self.kills} "
            f"executions={self.executions} duplicates={self.duplicates} "
            f"in_flight_at_kills={self.in_flight_at_kills} lost={self.lost} "
            f"completed={self.completed} fenced={self.fenced} "
            f"(storm {self.seconds:.0f} s, drained {self.drained_after:.1f} s later)"
        )


async def _run_storm(
    url: str, tmp_path: Path, sig: signal.Signals, seconds: float
) -> tuple[StormReport, WorkerPool, dict[str, Any], set[int]]:
    name = f"storm-{uuid.uuid4().hex[:8]}"
    report = StormReport(url.split(":", 1)[0], sig.name, seconds, jobs=JOBS)
    killed: set[int] = set()
    results: dict[str, Any] = {}
    async with (
        jq.storage_from_url(url) as storage,
        jq.open_queue(storage, name=name, max_attempts=25) as q,
    ):
        with WorkerPool(tmp_path, url, name, WORKER_ARGS) as pool:
            slots: list[Worker] = [pool.start() for _ in range(WORKERS)]

            async def produce() -> None:
                # Spread the jobs over 90% of the storm so that they keep flowing.
                per_tick, tick = JOBS / (seconds * 0.9 / 0.05), 0.05
                start, sent = trio.current_time(), 0
                while sent < JOBS:
                    due = min(JOBS, int((trio.current_time() - start) / tick * per_tick) + 1)
                    while sent < due:
                        await q.enqueue(f"job-{sent}", {"sleep": JOB_SECONDS})
                        sent += 1
                    await trio.sleep(tick)

            async def kill_and_restart() -> None:
                start = trio.current_time()
                for k in range(int(seconds)):
                    await trio.sleep_until(start + k + 1.0)
                    victim = slots[k % WORKERS]
                    # Stop running workers, as a supervisor does (a SIGTERM that lands
                    # while Python is still importing kills it with the default action).
                    await wait_for(lambda v=victim: "serving queue" in v.stderr(), 30, "ready")
                    victim.proc.send_signal(sig)
                    code = await pool.wait(victim, 30)
                    expected = 0 if sig == signal.SIGTERM else -signal.SIGKILL
                    assert code == expected, victim.stderr()
                    killed.add(victim.pid)
                    report.kills += 1
                    slots[k % WORKERS] = pool.start()

            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                nursery.start_soon(kill_and_restart)
            storm_end = time.monotonic()
            with trio.fail_after(120):
                while (await storage.stats(name)).completed < JOBS:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            report.drained_after = time.monotonic() - storm_end
            report.seconds = storm_end - started
            for w in pool.alive():
                w.proc.send_signal(signal.SIGTERM)
            for w in pool.workers:
                await pool.wait(w, 30)
            for i in range(JOBS):
                status = await q.get_status(f"job-{i}")
                if status is None or status.state != "completed":
                    report.lost += 1
                else:
                    report.completed += 1
                    results[f"job-{i}"] = status.result
            stats = await storage.stats(name)
            assert (stats.queued, stats.delayed, stats.processing) == (0, 0, 0)
    for w in pool.workers:
        report.fenced += w.stderr().count("rejected: its lease was taken over")
    runs = pool.runs_per_job()
    report.executions = sum(runs.values())
    report.duplicates = sum(n - 1 for n in runs.values() if n > 1)
    return report, pool, results, killed


def _show(report: StormReport, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\n" + report.line())


async def test_sigkill_storm_loses_nothing(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL one of three CLI workers every second for 20 s while 2,000 jobs flow:
    zero lost; every extra execution is one that was in flight in a killed process."""
    report, pool, results, killed = await _run_storm(url, tmp_path, signal.SIGKILL, 20.0)
    # An execution "in flight at a kill": run by a process that was then SIGKILLed,
    # which did not complete the job (the process died before its completion landed).
    interrupted: Counter[str] = Counter()
    for job_id, attempt, pid in pool.executions():
        won = results.get(job_id)
        if won is None or (won["pid"], won["attempt"]) != (pid, attempt):
            assert pid in killed, f"{job_id} attempt {attempt} in live pid {pid} was lost"
            interrupted[job_id] += 1
    report.in_flight_at_kills = sum(interrupted.values())
    _show(report, capsys)
    assert report.lost == 0
    assert report.kills == 20
    assert report.completed == JOBS
    runs = pool.runs_per_job()
    assert set(runs) == {f"job-{i}" for i in range(JOBS)}
    for job_id, n in runs.items():
        assert n - 1 <= interrupted[job_id], job_id
    assert report.duplicates <= report.in_flight_at_kills


async def test_sigterm_storm_has_no_duplicates(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM (graceful) one of three CLI workers every second while 2,000 jobs flow:
    zero lost and zero duplicates."""
    report, pool, results, _ = await _run_storm(url, tmp_path, signal.SIGTERM, 10.0)
    _show(report, capsys)
    assert report.lost == 0 and report.completed == JOBS
    runs = pool.runs_per_job()
    assert report.duplicates == 0, [j for j, n in runs.items() if n > 1][:10]
    assert set(runs.values()) == {1} and len(runs) == JOBS
    assert all(r["attempt"] == 1 for r in results.values())
