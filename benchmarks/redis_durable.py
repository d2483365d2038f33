"""What durable enqueue (``durable_enqueue=1``: ``WAIT 1 <ms>`` after the write) costs.

    python benchmarks/redis_durable.py [--enqueues 2000] [--rounds 3] [--concurrency 1,20]

Starts a local Sentinel group (the test fixtures' ``SentinelSet``: a master, its replica
and three sentinels; no failover happens), then, in each round and in alternating order
(plain first in odd rounds, durable first in even ones), enqueues ``--enqueues`` jobs
through the sentinel URL with ``durable_enqueue`` off and on:

* with 1 caller: ``enqueue`` after ``enqueue``, p50/p95/p99 latency;
* with N callers (the other ``--concurrency`` values): N tasks sharing one storage,
  each enqueueing in a loop: p50/p99 latency and enqueues/s.

The durable/plain ratios of one round are the figures to compare (both variants run on
the same machine state, a few seconds apart).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures_sentinel import SentinelSet

import trio_jobqueue as jq


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, durable: bool, n: int, callers: int) -> tuple[list[float], float]:
    """``n`` enqueues by ``callers`` tasks: their latencies and the elapsed time."""
    options = {"durable_enqueue": 1, "durable_timeout": 1.0} if durable else {}
    storage = jq.RedisStorage(url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}", **options)
    latencies: list[float] = []
    async with storage, jq.open_queue(storage, name="bench") as queue:
        await queue.enqueue("warm-up", 0)
        per_caller = n // callers

        async def caller(index: int) -> None:
            for i in range(per_caller):
                start = time.perf_counter()
                await queue.enqueue(f"{index}-{i}", i)
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(callers):
                nursery.start_soon(caller, index)
        elapsed = time.perf_counter() - began
    return latencies, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--enqueues", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,20")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    group = SentinelSet(down_after_ms=60_000)
    group.start(for_failover=True)  # waits for the replica to sync
    try:
        for round_no in range(1, args.rounds + 1):
            order = [False, True] if round_no % 2 else [True, False]
            for callers in levels:
                figures = {}
                for durable in order:
                    latencies, elapsed = trio.run(run, group.url, durable, args.enqueues, callers)
                    figures[durable] = (
                        statistics.median(latencies),
                        quantile(latencies, 0.95),
                        quantile(latencies, 0.99),
                        len(latencies) / elapsed,
                    )
                for durable in (False, True):
                    p50, p95, p99, rate = figures[durable]
                    print(
                        f"round {round_no} callers {callers:3d}"
                        f" {'durable' if durable else 'plain  '}:"
                        f" p50 {p50 * 1e3:.3f} ms  p95 {p95 * 1e3:.3f} ms"
                        f"  p99 {p99 * 1e3:.3f} ms  {rate:,.0f} enqueues/s"
                    )
                print(
                    f"round {round_no} callers {callers:3d} ratio durable/plain:"
                    f" p50 x{figures[True][0] / figures[False][0]:.2f},"
                    f" rate x{figures[True][3] / figures[False][3]:.2f}"
                )
    finally:
        group.cleanup()


if __name__ == "__main__":
    main()
