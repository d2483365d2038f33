"""The lease set's encoding: what a listpack costs a drain, and what the pin saves.

    python benchmarks/redis_lease_set.py [--jobs 10000] [--concurrency 100] [--rounds 3]

Redis keeps a sorted set of at most ``zset-max-listpack-value`` (64) byte members and
``zset-max-listpack-entries`` (128) members as a listpack, where ``ZADD`` scans the set;
the lease set holds one member longer than that from the first claim on, which keeps it a
skiplist (see docs/redis.md, "Why the lease set is never small").

On a private ``redis-server`` (no persistence, free port) it measures, in one run:

* ``ZADD`` server time (``INFO commandstats``) into a set of 20 and of 100 members with
  float scores (lease deadlines), as a listpack and as a skiplist, one member added and
  the oldest removed per step so that the size stays put;
* a drain of ``--jobs`` no-op jobs by one in-process worker at ``--concurrency``, the
  server as configured (the pin works: a skiplist) and with ``zset-max-listpack-value
  128`` (the pin fits in a listpack: the encoding the set had without it), alternated
  over ``--rounds``: jobs/s, Redis CPU per job (``INFO cpu``) and ``ZADD`` µs per call.

Runs against whatever ``trio_jobqueue`` is importable (``PYTHONPATH=/path/to/checkout``
for another version).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from compare import redis_server
from redis_layout import info

import trio_jobqueue as jq

NS = "bench"


async def zadd_cost(
    storage: Any, size: int, skiplist: bool, steps: int = 2000
) -> tuple[str, float]:
    """Server µs per ZADD into a set of ``size`` float-scored members."""
    key = "bench:zadd"
    await storage.server_command("DEL", key)
    if skiplist:
        await storage.server_command("ZADD", key, "+inf", "\xff" * 80)
    base = time.time()
    for n in range(size):
        await storage.server_command("ZADD", key, repr(base + n / 1000), f"job-{n:08d}")
    await storage.server_command("CONFIG", "RESETSTAT")
    for n in range(size, size + steps):
        await storage.server_command("ZADD", key, repr(base + n / 1000), f"job-{n:08d}")
        await storage.server_command("ZREM", key, f"job-{n - size:08d}")
    encoding = (await storage.server_command("OBJECT", "ENCODING", key)).decode()
    stats = await info(storage, "commandstats")
    usec = float(stats["cmdstat_zadd"].split("usec_per_call=")[1].split(",")[0])
    await storage.server_command("DEL", key)
    return encoding, usec


async def drain(storage: Any, jobs: int, concurrency: int, tag: str) -> dict[str, Any]:
    ids = [f"{tag}-{n:06d}" for n in range(jobs)]

    async def produce(part: list[str]) -> None:
        for job_id in part:
            await storage.enqueue(NS, job_id, b"{}", max_attempts=3, result_ttl=3600.0)

    async with trio.open_nursery() as nursery:
        for k in range(100):
            nursery.start_soon(produce, ids[k::100])
    done = trio.Event()
    count = 0

    async def handler(job: jq.Job[Any]) -> None:
        nonlocal count
        count += 1
        if count == jobs:
            done.set()

    await storage.server_command("CONFIG", "RESETSTAT")
    cpu = await info(storage, "cpu")
    before = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    started = time.perf_counter()
    async with jq.open_queue(storage, handler, name=NS, concurrency=concurrency):
        await done.wait()
        elapsed = time.perf_counter() - started
    cpu = await info(storage, "cpu")
    after = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    stats = await info(storage, "commandstats")
    zadd = float(stats["cmdstat_zadd"].split("usec_per_call=")[1].split(",")[0])
    encoding = (
        await storage.server_command("OBJECT", "ENCODING", storage.keys(NS).leases)
    ).decode()
    await storage.server_command("FLUSHALL")
    return {
        "rate": jobs / elapsed,
        "redis_us": (after - before) / jobs * 1e6,
        "zadd_us": zadd,
        "encoding": encoding,
    }


async def main(args: argparse.Namespace, port: int) -> None:
    async with jq.RedisStorage(f"redis://127.0.0.1:{port}/0") as storage:
        print("ZADD into a set of float scores (server us per call, INFO commandstats):")
        for size in (20, 100):
            for skiplist in (False, True):
                encoding, usec = await zadd_cost(storage, size, skiplist)
                print(f"  {size:4d} members, {encoding:9s} {usec:6.2f} us")
        print(f"\ndrain of {args.jobs:,} jobs, concurrency {args.concurrency}, in-process worker:")
        results: dict[str, list[dict[str, Any]]] = {"pinned": [], "listpack": []}
        for rnd in range(args.rounds):
            order = ["pinned", "listpack"] if rnd % 2 == 0 else ["listpack", "pinned"]
            for name in order:
                value = "128" if name == "listpack" else "64"
                await storage.server_command("CONFIG", "SET", "zset-max-listpack-value", value)
                r = await drain(storage, args.jobs, args.concurrency, f"r{rnd}{name}")
                results[name].append(r)
                print(
                    f"  round {rnd + 1} {name:9s} (leases {r['encoding']}):"
                    f" {r['rate']:8,.0f} jobs/s,"
                    f" Redis {r['redis_us']:5.1f} us/job, ZADD {r['zadd_us']:5.2f} us/call"
                )
        await storage.server_command("CONFIG", "SET", "zset-max-listpack-value", "64")
        print("\nmedians:")
        for name, rows in results.items():
            print(
                f"  {name:9s} {statistics.median(r['rate'] for r in rows):8,.0f} jobs/s,"
                f" Redis {statistics.median(r['redis_us'] for r in rows):5.1f} us/job,"
                f" ZADD {statistics.median(r['zadd_us'] for r in rows):5.2f} us/call"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as (redis_port, _pid):
        trio.run(main, arguments, redis_port)
