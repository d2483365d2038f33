"""Bulk enqueue on Redis from one process: ``Queue.enqueue_many`` against ``enqueue`` one
call at a time and with 100 calls in flight, in the same run, on a redis-server of its own.

    python benchmarks/enqueue_bulk.py [--jobs 100000] [--rounds 2]

Prints jobs/s per mode and round, the ratio of enqueue_many to the 100-in-flight
enqueue of the same round, the time spent the storage calls alone (jobs already validated
and encoded), and the machine's load.
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
from trio_jobqueue.storage import EnqueueSpec
from trio_jobqueue.storage._base import ENQUEUE_MANY_MAX
from trio_jobqueue.storage.redis import RedisStorage


async def bench_many(url: str, jobs: int) -> tuple[float, float]:
    """Jobs/s of one ``Queue.enqueue_many`` of ``jobs`` jobs, and of the storage calls
    alone (``Storage.enqueue_many`` of the same jobs already validated and encoded, in
    chunks of :data:`ENQUEUE_MANY_MAX`)."""
    prefix = f"bench-many-{time.time_ns()}"
    async with RedisStorage(url, key_prefix=prefix) as storage:
        async with jq.open_queue(storage, name="bench") as q:
            items = [(f"job-{i}", i) for i in range(jobs)]
            start = time.perf_counter()
            results = await q.enqueue_many(items)
            elapsed = time.perf_counter() - start
            assert all(r.status == "queued" for r in results)
            assert (await storage.stats("bench")).queued == jobs
            specs = [EnqueueSpec(f"raw-{i}", b"%d" % i, 3, 3600.0) for i in range(jobs)]
            start = time.perf_counter()
            for i in range(0, jobs, ENQUEUE_MANY_MAX):
                await storage.enqueue_many("bench", specs[i : i + ENQUEUE_MANY_MAX])
            raw = time.perf_counter() - start
        await storage.server_command("FLUSHDB")
    return jobs / elapsed, jobs / raw


async def main(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="jq-bench-")
    server = contextlib.ExitStack()
    port, _ = server.enter_context(redis_server(Path(workdir)))
    url = f"redis://127.0.0.1:{port}/0"
    try:
        print(f"load before: {os.getloadavg()[0]:.2f}, {args.jobs} jobs per mode")
        for n in range(1, args.rounds + 1):
            one = await bench_enqueue(url, args.jobs // 10, 1)
            inflight = await bench_enqueue(url, args.jobs // 2, 100)
            many, raw = await bench_many(url, args.jobs)
            print(
                f"round {n}: enqueue sequential {one:,.0f}/s, 100 in flight {inflight:,.0f}/s, "
                f"enqueue_many {many:,.0f}/s ({many / inflight:.1f}x the in-flight rate); "
                f"the storage calls alone {raw:,.0f}/s"
            )
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    trio.run(main, parser.parse_args())
