"""Memory backend throughput: enqueue, drain (concurrency 100) and request/response latency.

    python benchmarks/memory_throughput.py [--jobs 20000] [--concurrency 100] [--rounds 3]

Prints jobs/s for enqueue and for drain, p50/p99 ``enqueue_and_wait`` latency, and the
ratio against a bare trio loop that only spawns one task per no-op job in the same process
(the ceiling for a task-per-job design). Medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import trio

import trio_jobqueue as jq


async def noop(job: jq.Job[Any]) -> None:
    return None


async def bare_trio(n: int, concurrency: int) -> float:
    """Spawn n no-op tasks, at most ``concurrency`` at once: the task-per-job ceiling.

    The spawner takes a token of a ``CapacityLimiter(concurrency)`` before each
    ``start_soon`` and the task gives it back, as a worker's slots do."""
    limiter = trio.CapacityLimiter(concurrency)

    async def one(token: object) -> None:
        await trio.lowlevel.checkpoint()
        limiter.release_on_behalf_of(token)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            token = object()
            await limiter.acquire_on_behalf_of(token)
            nursery.start_soon(one, token)
    return n / (time.perf_counter() - start)


async def enqueue_then_drain(
    n: int,
    concurrency: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    **options: Any,
) -> tuple[float, float]:
    """(enqueue jobs/s, drain jobs/s) of ``n`` no-op jobs on a fresh MemoryStorage, timed
    by ``clock`` (``time.process_time``: per CPU second); ``options`` go to both
    ``open_queue`` calls."""
    storage = jq.MemoryStorage()
    async with jq.open_queue(storage, name="bench", **options) as producer:
        start = clock()
        for i in range(n):
            await producer.enqueue(f"job-{i}", {"i": i})
        enqueue_rate = n / (clock() - start)
    done = trio.Event()
    remaining = n

    async def counting(job: jq.Job[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    start = clock()
    async with jq.open_queue(
        storage, counting, name="bench", concurrency=concurrency, reaper=False, **options
    ):
        await done.wait()
        drain_rate = n / (clock() - start)
    return enqueue_rate, drain_rate


async def request_response(n: int) -> list[float]:
    latencies: list[float] = []
    async with jq.open_queue(jq.MemoryStorage(), noop, name="rr", concurrency=10) as queue:
        for i in range(n):
            start = time.perf_counter()
            await queue.enqueue_and_wait(f"rr-{i}", i, timeout=10)
            latencies.append(time.perf_counter() - start)
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main(jobs: int, concurrency: int, rounds: int) -> None:
    enq, drain, bare, p50, p99 = [], [], [], [], []
    for _ in range(rounds):
        e, d = await enqueue_then_drain(jobs, concurrency)
        enq.append(e)
        drain.append(d)
        bare.append(await bare_trio(jobs, concurrency))
        lat = await request_response(min(jobs, 5000))
        p50.append(percentile(lat, 50))
        p99.append(percentile(lat, 99))
    med = statistics.median
    print(f"memory backend, {jobs} no-op jobs, concurrency {concurrency}, JSON serializer,")
    print(f"medians of {rounds} rounds:")
    print(f"  enqueue            {med(enq):>10,.0f} jobs/s")
    print(f"  drain              {med(drain):>10,.0f} jobs/s")
    print(f"  bare trio spawn    {med(bare):>10,.0f} tasks/s")
    print(f"  drain / bare trio  {med(drain) / med(bare):>10.2f}")
    print(f"  enqueue_and_wait   p50 {med(p50) * 1e6:,.0f} us   p99 {med(p99) * 1e6:,.0f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.jobs, args.concurrency, args.rounds)
