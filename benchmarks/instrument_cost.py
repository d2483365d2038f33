"""What metrics and tracing cost per job, on the Memory backend.

    python benchmarks/instrument_cost.py [--jobs 20000] [--concurrency 100] [--rounds 5]
                                         [--baseline /path/to/other/checkout]
    python benchmarks/instrument_cost.py --redis [--jobs 100000] [--rounds 5] [--baseline ...]

Each round drains ``--jobs`` pre-enqueued no-op jobs (concurrency 100, no reaper) and
enqueues ``--jobs`` jobs one call at a time, once per variant, each in a fresh process
(so that no run inherits another's heap and garbage collections), in an order rotated
by one variant per round:

* ``plain``: no ``metrics``, no ``tracing`` (the cost of the hooks when unused);
* ``metrics``: ``Metrics`` on a registry of its own;
* ``otel-off``: ``Tracing`` on the API's no-op provider (the extra installed, no SDK);
* ``otel-on``: ``Tracing`` on an SDK ``TracerProvider`` that records every span (no
  exporter: the cost of making the spans, not of shipping them);
* ``baseline`` (with ``--baseline``): ``plain`` importing ``trio_jobqueue`` from another
  checkout (e.g. the commit before the hooks): what the unused hooks cost.

Every process imports ``prometheus_client`` and the OpenTelemetry SDK and runs a
1,000-job warm-up before it measures, whatever its variant, so that the ratios compare
the hooks and the spans rather than the imports' effect on the garbage collector.

Times are the process's CPU time (``time.process_time``: the Memory backend and the
no-op handlers are pure CPU in one thread, and CPU time is far less disturbed than the
wall clock by other processes on a shared machine). Ratios are taken within a round
(variant / plain, CPU time per job), then the median over the rounds.

With ``--redis``, each round instead times one ``Queue.enqueue_many`` of ``--jobs`` jobs
on a private redis-server (wall clock, and the client's CPU time) for ``plain``,
``otel-off``, ``otel-on`` and ``baseline``.
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
from memory_throughput import enqueue_then_drain  # the same drain as the Memory benchmark

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
    enqueue_rate, drain_rate = await enqueue_then_drain(
        n, concurrency, clock=time.process_time, **options(variant)
    )
    return 1e6 / enqueue_rate, 1e6 / drain_rate


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


async def bulk(variant: str, n: int, url: str) -> tuple[float, float]:
    """(wall µs, client CPU µs) per job of one ``enqueue_many`` of ``n`` jobs on Redis."""
    from trio_jobqueue.storage.redis import RedisStorage

    jobs = [(f"job-{i}", {"i": i}) for i in range(n)]
    name = f"bulk-{variant}-{time.time_ns()}"
    async with (
        RedisStorage(url) as storage,
        jq.open_queue(storage, name=name, **options(variant)) as queue,
    ):
        start, cpu = time.perf_counter(), time.process_time()
        await queue.enqueue_many(jobs)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        await queue.purge("queued")
    return elapsed / n * 1e6, cpu / n * 1e6


def child(tree: str, variant: str, args: argparse.Namespace, url: str = "") -> tuple[float, float]:
    """One measurement of ``variant`` in a fresh process importing ``trio_jobqueue`` from
    ``tree`` (``url``: the Redis ``enqueue_many`` instead of the Memory runs). A process
    each, so that no run inherits another's heap (and garbage collections)."""
    command = [sys.executable, __file__, "--child", variant, "--jobs", str(args.jobs)]
    command += ["--concurrency", str(args.concurrency)]
    if url:
        command += ["--child-redis", url]
    out = subprocess.run(
        command,
        env=dict(os.environ, PYTHONPATH=tree),
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    first, second = json.loads(out.stdout)
    return first, second


def rounds(args: argparse.Namespace, variants: tuple[str, ...], url: str = "") -> None:
    """Every variant once per round, in an order rotated by one per round; prints each
    round and the medians of the ratios to ``plain`` within a round."""
    here = str(Path(jq.__file__).resolve().parent.parent)
    if args.baseline:
        variants = (*variants, "baseline")
    ratios: dict[str, list[tuple[float, float]]] = {v: [] for v in variants[1:]}
    absolute: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        got = {
            v: child(args.baseline if v == "baseline" else here, "plain" if v == "baseline" else v,
                     args, url)
            for v in order
        }  # fmt: skip
        for v in variants:
            absolute[v].append(got[v])
        for v in variants[1:]:
            ratios[v].append(
                tuple(a / b if b else 0.0 for a, b in zip(got[v], got["plain"], strict=True))
            )
        print(
            f"round {r + 1}: "
            + "  ".join(f"{v} {got[v][0]:.2f}/{got[v][1]:.2f}" for v in variants),
            flush=True,
        )
    print("medians, µs per job, and ratio to plain within a round:")
    for v in variants:
        a = [statistics.median(x[k] for x in absolute[v]) for k in (0, 1)]
        line = f"  {v:9s} {a[0]:8.2f} / {a[1]:8.2f}"
        if v != "plain":
            q = [statistics.median(x[k] for x in ratios[v]) for k in (0, 1)]
            line += f"   x{q[0]:.3f} / x{q[1]:.3f}"
        print(line)


def redis_rounds(args: argparse.Namespace) -> None:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from compare import redis_server

    with tempfile.TemporaryDirectory() as workdir, redis_server(Path(workdir)) as (port, _):
        print(f"enqueue_many of {args.jobs} jobs (µs per job, wall / client CPU):")
        rounds(args, ("plain", "otel-off", "otel-on"), f"redis://127.0.0.1:{port}/0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="another checkout to compare with")
    parser.add_argument("--redis", action="store_true", help="enqueue_many on Redis")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-redis", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # Every variant imports both libraries and runs a small warm-up first, so that the
        # ratios compare the hooks and spans, not the imports' effect on the garbage
        # collector or first-call costs.
        import opentelemetry.sdk.trace  # noqa: F401
        import prometheus_client  # noqa: F401

        if args.child_redis:
            trio.run(bulk, args.child, 1000, args.child_redis)
            print(json.dumps(trio.run(bulk, args.child, args.jobs, args.child_redis)))
        else:
            trio.run(measure, args.child, 1000, args.concurrency)
            print(json.dumps(trio.run(measure, args.child, args.jobs, args.concurrency)))
        return
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print(f"trio_jobqueue from {jq.__file__}; jobs={args.jobs}; baseline={args.baseline}")
    if args.redis:
        redis_rounds(args)
    else:
        print(f"Memory, concurrency {args.concurrency} (µs per job, enqueue / drain, CPU):")
        rounds(args, VARIANTS)
        print(f"  the metrics hooks alone: {hooks_alone():.2f} µs per job")
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
