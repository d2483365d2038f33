"""Redis backend throughput and latency, on a redis-server this script starts itself.

    python benchmarks/redis_throughput.py [--jobs 20000] [--rounds 3] [--latency-calls 2000]

Prints (medians over ``--rounds``):

* enqueue jobs/s: one sequential producer, and 50 concurrent producers;
* drain jobs/s of no-op jobs through ``open_queue`` in this one process (the one worker
  process), ``concurrency`` 10 and 100 (claims are batched: one script call claims up to
  the free capacity);
* ``enqueue_and_wait`` latency p50/p95/p99 at 1 and 50 concurrent callers, with the worker
  in the same process (concurrency 10 / 100);
* the client CPU time per drained job, and its share of the wall time (well below 100%
  means the process waited for the CPU: the machine was busy, the figures are low);
* ``redis-benchmark``'s figures for the same server (SET, and PING at one client) as the
  physical reference.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from compare import redis_server

import trio_jobqueue as jq
from trio_jobqueue.storage.redis import RedisStorage


async def noop(job: jq.Job[Any]) -> None:
    return None


async def bench_enqueue(url: str, jobs: int, producers: int) -> float:
    prefix = f"bench-enq-{time.time_ns()}"
    async with (
        RedisStorage(url, key_prefix=prefix) as storage,
        jq.open_queue(storage, name="bench") as q,
    ):
        per = jobs // producers

        async def produce(k: int) -> None:
            for i in range(per):
                await q.enqueue(f"{k}-{i}", i)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(producers):
                nursery.start_soon(produce, k)
        elapsed = time.perf_counter() - start
        await storage.server_command("FLUSHDB")
    return per * producers / elapsed


async def bench_drain(url: str, jobs: int, concurrency: int) -> float:
    prefix = f"bench-drain-{time.time_ns()}"
    async with RedisStorage(url, key_prefix=prefix) as storage:
        async with jq.open_queue(storage, name="bench") as producer, trio.open_nursery() as nursery:
            for k in range(20):

                async def fill(k: int = k) -> None:
                    for i in range(k, jobs, 20):
                        await producer.enqueue(f"j{i}", i)

                nursery.start_soon(fill)
        done = trio.Event()
        count = 0

        async def counting(job: jq.Job[Any]) -> None:
            nonlocal count
            count += 1
            if count >= jobs:
                done.set()

        start = time.perf_counter()
        cpu = time.process_time()
        async with jq.open_queue(
            storage, counting, name="bench", concurrency=concurrency, reaper=False
        ):
            await done.wait()
            while (await storage.stats("bench")).completed < jobs:  # noqa: ASYNC110 - progress made elsewhere
                await trio.sleep(0.005)
            elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        await storage.server_command("FLUSHDB")
    print(f"    (client CPU {cpu / jobs * 1e6:.0f} us/job, {cpu / elapsed:.0%} of wall time)")
    return jobs / elapsed


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    samples = sorted(samples)

    def at(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] * 1000

    return at(0.50), at(0.95), at(0.99)


async def bench_wait(url: str, calls: int, callers: int) -> tuple[float, float, float, float]:
    prefix = f"bench-wait-{time.time_ns()}"
    samples: list[float] = []
    async with (
        RedisStorage(url, key_prefix=prefix) as storage,
        jq.open_queue(
            storage, noop, name="bench", concurrency=max(10, 2 * callers), reaper=False
        ) as q,
    ):
        for i in range(20):  # warm-up: connections, scripts, subscriptions
            await q.enqueue_and_wait(f"warm-{i}", i)
        per = calls // callers

        async def caller(k: int) -> None:
            for i in range(per):
                t0 = time.perf_counter()
                await q.enqueue_and_wait(f"{k}-{i}", i, timeout=30)
                samples.append(time.perf_counter() - t0)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(callers):
                nursery.start_soon(caller, k)
        elapsed = time.perf_counter() - start
        await storage.server_command("FLUSHDB")
    return (*percentiles(samples), len(samples) / elapsed)


def redis_benchmark(port: int) -> str:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return "redis-benchmark not installed"
    lines = []
    for args in (
        ["-t", "set", "-c", "50", "-n", "100000"],
        ["-t", "ping", "-c", "1", "-n", "20000"],
    ):
        out = subprocess.run(
            [binary, "-p", str(port), "-q", *args], capture_output=True, text=True, timeout=120
        ).stdout
        found = [
            line.strip()
            for line in out.replace("\r", "\n").splitlines()
            if "requests per second" in line
        ]
        lines.append(f"  redis-benchmark {' '.join(args)}: {found[-1] if found else out!r}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="jq-bench-redis-")
    server = contextlib.ExitStack()
    port, _ = server.enter_context(redis_server(Path(workdir)))
    url = f"redis://127.0.0.1:{port}/0"
    try:
        print(f"redis-server {port}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        for producers in (1, 50):
            rates = [await bench_enqueue(url, args.jobs, producers) for _ in range(args.rounds)]
            print(f"enqueue, {producers:>3} producer(s): {statistics.median(rates):>9,.0f} jobs/s")
        for concurrency in (10, 100):
            rates = [await bench_drain(url, args.jobs, concurrency) for _ in range(args.rounds)]
            print(
                f"drain, one process, concurrency {concurrency:>3}: "
                f"{statistics.median(rates):>9,.0f} jobs/s"
            )
        for callers in (1, 50):
            runs = [await bench_wait(url, args.latency_calls, callers) for _ in range(args.rounds)]
            p50, p95, p99, rate = (statistics.median(x) for x in zip(*runs, strict=True))
            print(
                f"enqueue_and_wait, {callers:>2} caller(s): p50 {p50:.2f} ms, "
                f"p95 {p95:.2f} ms, p99 {p99:.2f} ms ({rate:,.0f} req/s)"
            )
        print("reference, same server:")
        print(redis_benchmark(port))
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=2_000)
    trio.run(main, parser.parse_args())
