"""The ``trio-jobqueue`` command line (also ``python -m trio_jobqueue``).

Commands: ``worker`` (:mod:`._cli_worker`), ``enqueue``/``status``/``result``/``cancel``/
``stats`` (:mod:`._cli_admin`) and ``demo`` (here). Reference: ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
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
from ._cli_common import (
    PROG,
    URL_ENV,
    ArgumentParser,
    CliError,
    ExitCode,
    positive_int,
    seconds,
)
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
    progress; return (and print) throughput and latency percentiles.

    Outcomes are counted from the queue's events; where the event stream says events
    were missed (this process's own collector fell behind), the jobs not seen finishing
    yet are re-read from the storage, so the count always reaches ``jobs``.
    """
    # The collector falling behind is expected here and reported below; keep the
    # library's warning about it off the progress display.
    library_log = logging.getLogger("trio_jobqueue")
    level = library_log.level
    library_log.setLevel(max(level, logging.ERROR))
    try:
        return await _demo(jobs, concurrency, work, out)
    finally:
        library_log.setLevel(level)


async def _demo(jobs: int, concurrency: int, work: float, out: TextIO) -> dict[str, float]:
    storage = MemoryStorage()
    enqueued_at: dict[str, float] = {}
    finished: set[str] = set()
    latencies: list[float] = []
    reread = 0
    done = trio.Event()
    interactive = out.isatty()

    async def handler(job: Job[Any]) -> int:
        if work:
            await trio.sleep(work)
        return int(job.payload["n"]) * 2

    def finish(job_id: str, at: float) -> None:
        if job_id not in finished and job_id in enqueued_at:
            finished.add(job_id)
            latencies.append(at - enqueued_at[job_id])
            if len(finished) == jobs:
                done.set()

    async def progress(start: float) -> None:
        while True:
            await trio.sleep(0.2 if interactive else 1.0)
            elapsed = time.perf_counter() - start
            line = (
                f"  {len(finished):>8,}/{jobs:,} done  "
                f"{len(finished) / elapsed:>9,.0f} jobs/s  {elapsed:6.1f} s"
            )
            out.write(("\r" + line) if interactive else (line + "\n"))
            out.flush()

    async with (
        open_queue(storage, handler, name="demo", concurrency=concurrency) as queue,
        queue.events() as events,
        trio.open_nursery() as nursery,
    ):

        async def collect() -> None:
            nonlocal reread
            async for event in events:
                if event.kind in ("completed", "failed"):
                    finish(event.job_id, time.perf_counter())
                elif event.kind == "missed":
                    # Events were dropped for us: whatever finished meanwhile is in the
                    # storage (its latency is an upper bound: the time of this re-read).
                    for job_id in [j for j in enqueued_at if j not in finished]:
                        status = await queue.get_status(job_id)
                        if status is not None and status.state.is_terminal:
                            reread += 1
                            finish(job_id, time.perf_counter())

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
    if reread:
        out.write(
            f"(the event collector fell behind: {reread:,} outcomes were read back from the"
            " storage)\n"
        )
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


def _version() -> str:
    try:
        return importlib.metadata.version("trio-jobqueue")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command. Every option's help states its default and every
    command has a one-line ``help`` (``tests/test_cli.py`` walks the parser to check)."""
    parser = ArgumentParser(
        prog=PROG,
        description="A reliable job queue for trio applications.",
        epilog=(
            f"--storage defaults to ${URL_ENV}. Exit codes: 0 ok, 1 negative answer "
            "(unknown job, no result, job failed, not cancelled), 2 usage error, "
            "3 storage error, 4 wait timeout, 5 unhealthy (stats checks), "
            "130 interrupted, 141 stdout closed. See docs/cli.md."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {_version()}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_worker_parser(sub)
    add_admin_parsers(sub)
    text = "run N jobs through an in-memory queue and report"
    demo = sub.add_parser("demo", help=text, description=text[0].upper() + text[1:] + ".")
    demo.add_argument(
        "--jobs", "-n", type=positive_int, default=10_000, metavar="N",
        help="how many jobs to run (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--concurrency", "-c", type=positive_int, default=100, metavar="N",
        help="jobs run at once (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--work", type=seconds, default=0.0, metavar="SECONDS",
        help="seconds each job sleeps (default: 0, a no-op job)",
    )  # fmt: skip
    return parser


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; ``[exc]`` for a plain
    exception."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _say(line: str) -> None:
    """One line on stderr; never fails (stderr may be a closed pipe too)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _fail(message: str, code: int) -> int:
    _say(f"{PROG}: error: " + " ".join(message.split()))
    return code


def _interrupted() -> int:
    # On a terminal the "^C" echo (or the demo's progress line) is still on the line.
    _say(("\n" if _isatty(sys.stderr) else "") + "interrupted")
    return ExitCode.INTERRUPTED


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def _stdout_gone() -> int:
    """The reader of stdout went away. Point stdout at /dev/null, so that the interpreter's
    final flush of what is still buffered does not fail again ("Exception ignored ...");
    the recipe of the Python docs (``signal`` module, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (captured in tests): nothing will flush it
    return ExitCode.BROKEN_PIPE


def _exit_code(exc: BaseException) -> int:
    """The exit code (after printing its one line) for an exception that ended a command,
    also when it arrives inside (nested) exception groups; re-raise what is a bug.

    Precedence: Ctrl-C anywhere in the group wins (130), then a closed stdout (141), then
    the first user-facing error (a :class:`CliError` with its code, a storage failure 3,
    invalid input 2). A group with anything else in it is re-raised whole (a traceback,
    exit 1: a bug)."""
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return _interrupted()
    known = (BrokenPipeError, CliError, StorageError, InvalidJobError, SystemExit)
    if not all(isinstance(leaf, known) for leaf in leaves):
        raise exc
    if any(isinstance(leaf, BrokenPipeError) for leaf in leaves):
        return _stdout_gone()
    leaf = leaves[0]
    if isinstance(leaf, SystemExit):  # --help, --version (or a handler calling sys.exit)
        return leaf.code if isinstance(leaf.code, int) else 0 if leaf.code is None else 1
    if isinstance(leaf, CliError):
        return _fail(str(leaf), leaf.code)
    if isinstance(leaf, StorageError):
        return _fail(f"storage failed: {leaf}", ExitCode.STORAGE)
    return _fail(str(leaf), ExitCode.USAGE)  # InvalidJobError: e.g. a bad option value


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    if command == "demo":
        trio.run(run_demo, args.jobs, args.concurrency, args.work, sys.stdout)
        return ExitCode.OK
    if command == "worker":
        return int(trio.run(run_worker, args))
    runners: dict[str, Callable[..., Awaitable[ExitCode]]] = {
        "enqueue": run_enqueue,
        "status": run_status,
        "result": run_result,
        "cancel": run_cancel,
        "stats": run_stats,
    }
    return int(trio.run(runners[command], args, sys.stdout))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-jobqueue`` / ``python -m trio_jobqueue``; returns the exit
    code (see :class:`~trio_jobqueue._cli_common.ExitCode`).

    Every failure a user can cause is one line on stderr, ``trio-jobqueue: error: ...``
    (argparse's usage errors included); Ctrl-C is the line ``interrupted`` and exit 130;
    a closed stdout (``| head -1``) ends the command quietly with exit 141."""
    try:
        code = _run(argv)
    except BaseException as exc:  # noqa: BLE001 - classified; what is not ours re-raises
        code = _exit_code(exc)
    if code != ExitCode.BROKEN_PIPE:
        try:
            sys.stdout.flush()  # a closed pipe shows up here at the latest
        except BrokenPipeError:
            code = _stdout_gone()
        except (OSError, ValueError):
            pass  # stdout closed or broken otherwise: nothing left to say
    return code
