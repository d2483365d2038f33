"""``stats()`` cost against the size of the namespace, on Memory and File.

    python benchmarks/stats_cost.py [--jobs 100000] [--calls 200] [--dir PATH]

Fills one namespace with ``--jobs`` jobs in a mix of states (most queued; 10 % claimed,
half of those completed, some retried with a delay, some completed with a TTL that then
runs out, so that expired-but-not-purged records exist), then times ``stats()`` (median
and max of ``--calls`` calls) and prints its counts. ``stats()`` must not be O(n): a
scan of 100,000 records blocked Memory's event loop for tens of milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import trio

from trio_jobqueue.storage import MemoryStorage, Storage
from trio_jobqueue.storage.file import FileStorage

NS = "stats"


async def fill(storage: Storage, jobs: int) -> None:
    async def produce(start: int, stop: int) -> None:
        for i in range(start, stop):
            await storage.enqueue(NS, f"job-{i}", b"p" * 100, max_attempts=3, result_ttl=600.0)

    step = max(jobs // 50, 1)
    async with trio.open_nursery() as nursery:
        for start in range(0, jobs, step):
            nursery.start_soon(produce, start, min(start + step, jobs))
    claims = await storage.claim(NS, "w", limit=jobs // 10, lease=3600.0)
    for n, c in enumerate(claims):
        if n % 2 == 0:
            ttl = 5.0 if n % 4 == 0 else 600.0  # a quarter of them expire below
            await storage.complete(NS, c.job_id, c.token, b"r", ttl=ttl)
        elif n % 5 == 1:
            await storage.retry(NS, c.job_id, c.token, b"e", delay=3000.0)
    await storage.advance_clock(10.0)


async def measure(storage: Storage, jobs: int, calls: int) -> dict[str, Any]:
    async with storage:
        await fill(storage, jobs)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            stats = await storage.stats(NS)
            times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "max": max(times), "stats": stats}


async def main(args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; jobs={args.jobs}")
    base = args.dir or tempfile.gettempdir()
    memory = await measure(MemoryStorage(), args.jobs, args.calls)
    with tempfile.TemporaryDirectory(dir=base) as root:
        file = await measure(FileStorage(root, fsync=False), args.jobs, args.calls)
    for name, out in (("Memory", memory), ("File", file)):
        print(
            f"  {name:7s} stats() median {out['median'] * 1e3:8.3f} ms, max"
            f" {out['max'] * 1e3:8.3f} ms  {out['stats']}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--dir", default=None, help="where to put the File queue")
    trio.run(main, parser.parse_args())
