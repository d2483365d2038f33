"""What metrics and tracing cost per job, on the Memory backend.

    python benchmarks/instrument_cost.py [--jobs 20000] [--concurrency 100] [--rounds 5]
                                         [--baseline /path/to/other/checkout]
    python benchmarks/instrument_cost.py --redis [--jobs 100000] [--rounds 5] [--baseline ...]

Each round drains ``--jobs`` pre-enqueued no-op jobs (concurrency 100, no reaper) and
enqueues ``--jobs`` jobs one call at a time, once per variant, in an order rotated by
one variant per round:

* ``plain``: no ``metrics``, no ``tracing`` (the cost of the hooks when unused);
* ``metrics``: ``Metrics`` on a registry of its own;
* ``otel-off``: ``Tracing`` on the API's no-op provider (the extra installed, no SDK);
* ``otel-on``: ``Tracing`` on an SDK ``TracerProvider`` that records every span (no
  exporter: the cost of making the spans, not of shipping them).

Times are the process's CPU time (``time.process_time``: the Memory backend and the
no-op handlers are pure CPU in one thread, and CPU time is far less disturbed than the
wall clock by other processes on a shared machine). Ratios are taken within a round
(variant / plain, CPU time per job), then the median over the rounds.

With ``--redis``, each round instead times ``Queue.enqueue_many`` of ``--jobs`` jobs on a
private redis-server (wall clock: the server does most of the work), for ``plain``,
``otel-off`` and ``otel-on``, and with ``--baseline`` ``plain`` from the other checkout
(a child process on the same server).

With ``--baseline``, each round also drains and enqueues in two child processes, one
importing ``trio_jobqueue`` from this checkout and one from the other (e.g. the commit
before the hooks), alternating which goes first: their ratio is what the unused hooks
cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

import trio_jobqueue as jq

VARIANTS = ("plain", "metrics", "otel-off", "otel-on")


def options(variant: str) -> dict[str, Any]:
    if variant == "metrics":
        from prometheus_client import CollectorRegistry

        from trio_jobqueue.metrics import Metrics

        return {"metrics": Metrics(CollectorRegistry())}
    if variant.startswith("otel"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        from trio_jobqueue.tracing import Tracing

        on = variant == "otel-on"
        return {"tracing": Tracing(TracerProvider() if on else trace.NoOpTracerProvider())}
    return {}


async def measure(variant: str, n: int, concurrency: int) -> tuple[float, float]:
    """(µs per enqueue, µs per drained job)."""
    extra = options(variant)
    storage = jq.MemoryStorage()
    async with jq.open_queue(storage, name="bench", **extra) as producer:
        start = time.process_time()
        for i in range(n):
            await producer.enqueue(f"job-{i}", {"i": i})
        enqueue = (time.process_time() - start) / n * 1e6
    done = trio.Event()
    remaining = n

    async def counting(job: jq.Job[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    start = time.process_time()
    async with jq.open_queue(
        storage, counting, name="bench", concurrency=concurrency, reaper=False, **extra
    ):
        await done.wait()
        drain = (time.process_time() - start) / n * 1e6
    return enqueue, drain


def hooks_alone(calls: int = 200_000) -> float:
    """µs per job of the two metrics hooks a worker calls (claimed, settled), alone."""
    from prometheus_client import CollectorRegistry

    from trio_jobqueue.metrics import Metrics
    from trio_jobqueue.storage import Claim

    metrics = Metrics(CollectorRegistry())
    claim = Claim("job", b"{}", 1, 3, 100.0, "token", 130.0, 60.0)
    start = time.process_time()
    for _ in range(calls):
        metrics.job_claimed("q", claim, 100.5)
        metrics.job_settled("q", claim, "completed", 0.001)
    return (time.process_time() - start) / calls * 1e6


async def bulk(variant: str, n: int, url: str) -> float:
    """µs per job of one ``enqueue_many`` of ``n`` jobs on Redis (wall clock)."""
    from trio_jobqueue.storage.redis import RedisStorage

    jobs = [(f"job-{i}", {"i": i}) for i in range(n)]
    name = f"bulk-{variant}-{time.time_ns()}"
    async with (
        RedisStorage(url) as storage,
        jq.open_queue(storage, name=name, **options(variant)) as queue,
    ):
        start = time.perf_counter()
        await queue.enqueue_many(jobs)
        elapsed = time.perf_counter() - start
        await queue.purge("queued")
    return elapsed / n * 1e6


def redis_rounds(args: argparse.Namespace) -> None:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from compare import redis_server

    here = str(Path(jq.__file__).resolve().parent.parent)
    variants = ("plain", "otel-off", "otel-on")
    ratios: dict[str, list[float]] = {v: [] for v in (*variants[1:], "baseline")}
    with tempfile.TemporaryDirectory() as workdir, redis_server(Path(workdir)) as (port, _):
        url = f"redis://127.0.0.1:{port}/0"
        for r in range(args.rounds):
            order = variants[r % 3 :] + variants[: r % 3]
            got = {v: trio.run(bulk, v, args.jobs, url) for v in order}
            line = "  ".join(f"{v} {got[v]:.2f}" for v in variants)
            for v in variants[1:]:
                ratios[v].append(got[v] / got["plain"])
            if args.baseline:
                trees = [here, args.baseline] if r % 2 == 0 else [args.baseline, here]
                runs = {t: child(t, args.jobs, 0, url) for t in trees}
                ratios["baseline"].append(runs[here][0] / runs[args.baseline][0])
                line += f"  | plain this/baseline {ratios['baseline'][-1]:.3f}"
            print(f"round {r + 1} (µs per job of enqueue_many): {line}", flush=True)
    print("medians of the ratios within a round:")
    for v, values in ratios.items():
        if values:
            print(f"  {v:9s} x{statistics.median(values):.3f}")


def child(tree: str, n: int, concurrency: int, url: str = "") -> tuple[float, float]:
    """``plain`` in a process importing ``trio_jobqueue`` from ``tree`` (``url``: the
    Redis ``enqueue_many`` instead of the Memory drain)."""
    env = dict(os.environ, PYTHONPATH=tree)
    command = [sys.executable, __file__, "--child", "--jobs", str(n)]
    command += ["--concurrency", str(concurrency)]
    if url:
        command += ["--child-redis", url]
    out = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    enqueue, drain = json.loads(out.stdout)
    return enqueue, drain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="another checkout to compare with")
    parser.add_argument("--redis", action="store_true", help="enqueue_many on Redis")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-redis", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child_redis:
            print(json.dumps([trio.run(bulk, "plain", args.jobs, args.child_redis), 0.0]))
        else:
            print(json.dumps(trio.run(measure, "plain", args.jobs, args.concurrency)))
        return
    if args.redis:
        print(f"uptime: {os.popen('uptime').read().strip()}")
        redis_rounds(args)
        print(f"uptime: {os.popen('uptime').read().strip()}")
        return
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print(f"trio_jobqueue from {jq.__file__}; jobs={args.jobs} concurrency={args.concurrency}")
    ratios: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS[1:]}
    absolute: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    base_ratios: list[tuple[float, float]] = []
    here = str(Path(jq.__file__).resolve().parent.parent)
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        got = {v: trio.run(measure, v, args.jobs, args.concurrency) for v in order}
        for v in VARIANTS:
            absolute[v].append(got[v])
        for v in VARIANTS[1:]:
            ratios[v].append((got[v][0] / got["plain"][0], got[v][1] / got["plain"][1]))
        line = "  ".join(f"{v} {got[v][0]:.1f}/{got[v][1]:.1f}" for v in VARIANTS)
        if args.baseline:
            trees = [here, args.baseline] if r % 2 == 0 else [args.baseline, here]
            runs = {tree: child(tree, args.jobs, args.concurrency) for tree in trees}
            mine, other = runs[here], runs[args.baseline]
            base_ratios.append((mine[0] / other[0], mine[1] / other[1]))
            line += f"  | this/baseline {base_ratios[-1][0]:.3f}/{base_ratios[-1][1]:.3f}"
        print(f"round {r + 1} (µs per enqueue/drained job): {line}")
    print("medians, µs per job (enqueue / drain) and ratio to plain in the same round:")
    for v in VARIANTS:
        enq = statistics.median(a[0] for a in absolute[v])
        drain = statistics.median(a[1] for a in absolute[v])
        if v == "plain":
            print(f"  {v:9s} {enq:7.2f} / {drain:7.2f}")
            continue
        re = statistics.median(x[0] for x in ratios[v])
        rd = statistics.median(x[1] for x in ratios[v])
        print(f"  {v:9s} {enq:7.2f} / {drain:7.2f}   x{re:.3f} / x{rd:.3f}")
    if base_ratios:
        re = statistics.median(x[0] for x in base_ratios)
        rd = statistics.median(x[1] for x in base_ratios)
        print(f"  plain, this checkout / {args.baseline}: x{re:.3f} / x{rd:.3f}")
    print(f"  the metrics hooks alone: {hooks_alone():.2f} µs per job")
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
