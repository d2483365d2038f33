"""Bulk enqueue on Redis from one process: ``Queue.enqueue_many`` against ``enqueue`` one
call at a time and with 100 calls in flight, in the same run, on a redis-server of its own.

    python benchmarks/enqueue_bulk.py [--jobs 100000] [--rounds 3]
    python benchmarks/enqueue_bulk.py --other-backends    # Memory and File instead

Prints, per round, jobs/s of each mode, the ratios of enqueue_many to the sequential and
to the 100-in-flight enqueue of the same round, the rate of the storage calls alone
(jobs already validated and encoded), the server's CPU time per job and the longest
``enqueue_many.lua`` call; then a PASS/FAIL line for the target (>= 100,000 jobs/s by
``Queue.enqueue_many``, best round) and the machine's load before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))
from compare import redis_server
from redis_throughput import bench_enqueue

import trio_jobqueue as jq
from trio_jobqueue.storage import EnqueueOutcome, EnqueueSpec
from trio_jobqueue.storage._base import ENQUEUE_MANY_MAX
from trio_jobqueue.storage.redis import RedisStorage

TARGET = 100_000
"""Jobs/s that ``Queue.enqueue_many`` must reach from one process."""


async def _server_cpu(storage: RedisStorage) -> float:
    """Seconds of CPU the server used so far (user + system)."""
    info = (await storage.server_command("INFO", "cpu")).decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


async def _longest_script_ms(storage: RedisStorage) -> float:
    """The longest script call (FCALL) in the slow log (every call of 1 ms or more is logged)."""
    entries = await storage.server_command("SLOWLOG", "GET", "100000")
    longest = [e[2] for e in entries if e[3] and e[3][0].upper() == b"FCALL"]
    return max(longest, default=0) / 1000


async def bench_many(url: str, jobs: int) -> tuple[float, float, float, float]:
    """Jobs/s of one ``Queue.enqueue_many`` of ``jobs`` jobs; the server's CPU µs per
    job meanwhile; the longest script call (ms); and jobs/s of the storage calls alone
    (``Storage.enqueue_chunks`` of the same number of jobs already validated and
    encoded, in chunks of :data:`ENQUEUE_MANY_MAX`)."""
    prefix = f"bench-many-{time.time_ns()}"
    async with RedisStorage(url, key_prefix=prefix) as storage:
        async with jq.open_queue(storage, name="bench") as q:
            items = [(f"job-{i}", i) for i in range(jobs)]
            await storage.server_command("CONFIG", "SET", "slowlog-log-slower-than", "1000")
            await storage.server_command("CONFIG", "SET", "slowlog-max-len", "100000")
            await storage.server_command("SLOWLOG", "RESET")
            cpu = await _server_cpu(storage)
            start = time.perf_counter()
            results = await q.enqueue_many(items)
            elapsed = time.perf_counter() - start
            cpu = await _server_cpu(storage) - cpu
            longest = await _longest_script_ms(storage)
            assert all(r.status == "queued" for r in results)
            assert (await storage.stats("bench")).queued == jobs
            specs = [EnqueueSpec(f"raw-{i}", b"%d" % i, 3, 3600.0) for i in range(jobs)]
            chunks = [specs[i : i + ENQUEUE_MANY_MAX] for i in range(0, jobs, ENQUEUE_MANY_MAX)]
            outcomes: list[list[EnqueueOutcome]] = []
            start = time.perf_counter()
            await storage.enqueue_chunks("bench", chunks, outcomes.append)
            raw = time.perf_counter() - start
            assert sum(map(len, outcomes)) == jobs
        await storage.server_command("FLUSHDB")
    return jobs / elapsed, cpu / jobs * 1e6, longest, jobs / raw


async def bench_other_backends(jobs: int) -> None:
    """Best of three ``Queue.enqueue_many`` calls on Memory (``jobs`` jobs) and on File
    (a fifth of them: one fsync'd transaction per chunk)."""
    for name, count in (("memory", jobs), ("file", jobs // 5)):
        best = 0.0
        for _ in range(3):
            with tempfile.TemporaryDirectory(prefix="jq-bench-") as directory:
                storage = jq.MemoryStorage() if name == "memory" else jq.FileStorage(directory)
                async with jq.open_queue(storage, name="bench") as q:
                    items = [(f"job-{i}", i) for i in range(count)]
                    start = time.perf_counter()
                    await q.enqueue_many(items)
                    best = max(best, count / (time.perf_counter() - start))
        print(f"{name}: enqueue_many of {count:,} jobs {best:,.0f}/s (best of 3)")


async def main(args: argparse.Namespace) -> None:
    if args.other_backends:
        await bench_other_backends(args.jobs)
        return
    workdir = tempfile.mkdtemp(prefix="jq-bench-")
    server = contextlib.ExitStack()
    port, _ = server.enter_context(redis_server(Path(workdir)))
    url = f"redis://127.0.0.1:{port}/0"
    best = 0.0
    try:
        print(
            f"load before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
            f"{args.jobs:,} jobs per enqueue_many, {ENQUEUE_MANY_MAX} per script call"
        )
        for n in range(1, args.rounds + 1):
            one = await bench_enqueue(url, args.jobs // 10, 1)
            inflight = await bench_enqueue(url, args.jobs // 2, 100)
            many, server_us, longest, raw = await bench_many(url, args.jobs)
            best = max(best, many)
            print(
                f"round {n}: enqueue sequential {one:,.0f}/s, 100 in flight {inflight:,.0f}/s, "
                f"enqueue_many {many:,.0f}/s ({many / one:.1f}x sequential, "
                f"{many / inflight:.1f}x in flight; server CPU {server_us:.1f} us/job, "
                f"longest script call {longest:.1f} ms); the storage calls alone {raw:,.0f}/s"
                f" (load {os.getloadavg()[0]:.2f})"
            )
        verdict = "PASS" if best >= TARGET else "FAIL"
        print(f"{verdict}: enqueue_many best round {best:,.0f}/s, target >= {TARGET:,}/s")
        print(f"load after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--other-backends",
        action="store_true",
        help="time enqueue_many on Memory and File instead (no Redis)",
    )
    trio.run(main, parser.parse_args())
