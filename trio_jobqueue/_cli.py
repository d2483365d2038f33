"""The ``trio-jobqueue`` command line (also ``python -m trio_jobqueue``).

Commands: ``worker`` (:mod:`._cli_worker`), ``enqueue``/``status``/``result``/``cancel``/
``stats`` (:mod:`._cli_admin`) and ``demo`` (here). Reference: ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

import trio

from ._cli_admin import (
    add_admin_parsers,
    run_cancel,
    run_enqueue,
    run_result,
    run_stats,
    run_status,
)
from ._cli_common import URL_ENV, CliError, ExitCode, positive_int
from ._cli_worker import add_worker_parser, run_worker
from ._errors import InvalidJobError, StorageError
from ._queue import open_queue
from ._types import Job
from .storage import MemoryStorage


def _percentile(ordered: Sequence[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run_demo(jobs: int, concurrency: int, work: float, out: TextIO) -> dict[str, float]:
    """Enqueue ``jobs`` jobs on a MemoryStorage and run them with one worker, showing
    progress; return (and print) throughput and latency percentiles."""
    storage = MemoryStorage()
    enqueued_at: dict[str, float] = {}
    latencies: list[float] = []
    done = trio.Event()
    interactive = out.isatty()

    async def handler(job: Job[Any]) -> int:
        if work:
            await trio.sleep(work)
        return int(job.payload["n"]) * 2

    async def progress(start: float) -> None:
        while True:
            await trio.sleep(0.2 if interactive else 1.0)
            elapsed = time.perf_counter() - start
            line = (
                f"  {len(latencies):>8,}/{jobs:,} done  "
                f"{len(latencies) / elapsed:>9,.0f} jobs/s  {elapsed:6.1f} s"
            )
            out.write(("\r" + line) if interactive else (line + "\n"))
            out.flush()

    async with (
        open_queue(storage, handler, name="demo", concurrency=concurrency) as queue,
        queue.events() as events,
        trio.open_nursery() as nursery,
    ):

        async def collect() -> None:
            async for event in events:
                if event.kind == "completed":
                    latencies.append(time.perf_counter() - enqueued_at[event.job_id])
                    if len(latencies) == jobs:
                        done.set()
                        return

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


def _positive_int(text: str) -> int:
    return positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-jobqueue",
        description="A reliable job queue for trio applications.",
        epilog=(
            f"--storage defaults to ${URL_ENV}. Exit codes: 0 ok, 1 negative answer "
            "(unknown job, no result, job failed, not cancelled), 2 usage error, "
            "3 storage error, 4 wait timeout, 5 unhealthy (stats checks), "
            "130 interrupted. See docs/cli.md."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_worker_parser(sub)
    add_admin_parsers(sub)
    demo = sub.add_parser("demo", help="run N jobs through an in-memory queue and report")
    demo.add_argument("--jobs", "-n", type=_positive_int, default=10_000)
    demo.add_argument("--concurrency", "-c", type=_positive_int, default=100)
    demo.add_argument(
        "--work", type=float, default=0.0, help="seconds each job sleeps (default 0: no-op)"
    )
    return parser


def _leaf(exc: BaseException) -> BaseException:
    """The only exception inside (nested) single-member groups, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _fail(message: str, code: int) -> int:
    print(f"trio-jobqueue: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-jobqueue`` / ``python -m trio_jobqueue``; returns the exit
    code (see :class:`~trio_jobqueue._cli_common.ExitCode`)."""
    args = build_parser().parse_args(argv)
    command = args.command
    if command == "demo":
        try:
            trio.run(run_demo, args.jobs, args.concurrency, args.work, sys.stdout)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        return 0
    runners: dict[str, Callable[..., Awaitable[ExitCode]]] = {
        "enqueue": run_enqueue,
        "status": run_status,
        "result": run_result,
        "cancel": run_cancel,
        "stats": run_stats,
    }
    try:
        if command == "worker":
            code = trio.run(run_worker, args)
        else:
            code = trio.run(runners[command], args, sys.stdout)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BaseExceptionGroup as group:
        leaf = _leaf(group)
        if isinstance(leaf, CliError):
            return _fail(str(leaf), leaf.code)
        if isinstance(leaf, StorageError):
            return _fail(f"storage failed: {leaf}", ExitCode.STORAGE)
        if isinstance(leaf, InvalidJobError):
            return _fail(str(leaf), ExitCode.USAGE)
        if isinstance(leaf, KeyboardInterrupt):
            print("\ninterrupted", file=sys.stderr)
            return ExitCode.INTERRUPTED
        raise
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except StorageError as exc:
        return _fail(f"storage failed: {exc}", ExitCode.STORAGE)
    except InvalidJobError as exc:  # e.g. a bad option value reaching open_queue
        return _fail(str(exc), ExitCode.USAGE)
    return int(code)
