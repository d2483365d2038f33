"""``trio-jobqueue demo``: run N jobs through an in-memory queue and report throughput
and latency."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any, TextIO

import trio

from .._queue import open_queue
from .._types import Job
from ..storage import MemoryStorage


def _percentile(ordered: Sequence[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run_demo(jobs: int, concurrency: int, work: float, out: TextIO) -> dict[str, float]:
    """Enqueue ``jobs`` jobs on a MemoryStorage and run them with one worker, showing
    progress; return (and print) throughput and latency percentiles.

    Outcomes are counted from the queue's events; where the event stream says events
    were missed (this process's own collector fell behind), the jobs not seen finishing
    yet are re-read from the storage, so the count always reaches ``jobs``.
    """
    # The collector falling behind is expected here and reported below; keep the
    # library's warning about it off the progress display.
    library_log = logging.getLogger("trio_jobqueue")
    level = library_log.level
    library_log.setLevel(max(level, logging.ERROR))
    try:
        return await _demo(jobs, concurrency, work, out)
    finally:
        library_log.setLevel(level)


async def _demo(jobs: int, concurrency: int, work: float, out: TextIO) -> dict[str, float]:
    storage = MemoryStorage()
    enqueued_at: dict[str, float] = {}
    finished: set[str] = set()
    latencies: list[float] = []
    reread = 0
    done = trio.Event()
    interactive = out.isatty()

    async def handler(job: Job[Any]) -> int:
        if work:
            await trio.sleep(work)
        return int(job.payload["n"]) * 2

    def finish(job_id: str, at: float) -> None:
        if job_id not in finished and job_id in enqueued_at:
            finished.add(job_id)
            latencies.append(at - enqueued_at[job_id])
            if len(finished) == jobs:
                done.set()

    async def progress(start: float) -> None:
        while True:
            await trio.sleep(0.2 if interactive else 1.0)
            elapsed = time.perf_counter() - start
            line = (
                f"  {len(finished):>8,}/{jobs:,} done  "
                f"{len(finished) / elapsed:>9,.0f} jobs/s  {elapsed:6.1f} s"
            )
            out.write(("\r" + line) if interactive else (line + "\n"))
            out.flush()

    async with (
        open_queue(storage, handler, name="demo", concurrency=concurrency) as queue,
        queue.events() as events,
        trio.open_nursery() as nursery,
    ):

        async def collect() -> None:
            nonlocal reread
            async for event in events:
                if event.kind in ("completed", "failed"):
                    finish(event.job_id, time.perf_counter())
                elif event.kind == "missed":
                    # Events were dropped for us: whatever finished meanwhile is in the
                    # storage (its latency is an upper bound: the time of this re-read).
                    for job_id in [j for j in enqueued_at if j not in finished]:
                        status = await queue.get_status(job_id)
                        if status is not None and status.state.is_terminal:
                            reread += 1
                            finish(job_id, time.perf_counter())

        nursery.start_soon(collect)
        start = time.perf_counter()
        nursery.start_soon(progress, start)
        out.write(f"demo: {jobs:,} jobs, concurrency {concurrency}, memory storage\n")
        for n in range(jobs):
            job_id = f"demo-{n}"
            enqueued_at[job_id] = time.perf_counter()
            await queue.enqueue(job_id, {"n": n})
        enqueue_seconds = time.perf_counter() - start
        await done.wait()
        total = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    if reread:
        out.write(
            f"(the event collector fell behind: {reread:,} outcomes were read back from the"
            " storage)\n"
        )
    ordered = sorted(latencies)
    figures = {
        "jobs": float(jobs),
        "seconds": total,
        "throughput": jobs / total,
        "enqueue_rate": jobs / enqueue_seconds,
        "p50_ms": _percentile(ordered, 50) * 1e3,
        "p95_ms": _percentile(ordered, 95) * 1e3,
        "p99_ms": _percentile(ordered, 99) * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }
    if interactive:
        out.write("\n")
    out.write(
        f"completed {jobs:,} jobs in {total:.2f} s: {figures['throughput']:,.0f} jobs/s "
        f"(enqueue {figures['enqueue_rate']:,.0f} jobs/s)\n"
        f"latency enqueue -> completed: p50 {figures['p50_ms']:.2f} ms  "
        f"p95 {figures['p95_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms\n"
    )
    return figures
