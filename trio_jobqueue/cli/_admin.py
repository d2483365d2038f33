"""Admin commands: ``enqueue``, ``status``, ``result``, ``cancel`` and ``stats``."""

from __future__ import annotations

import argparse
import datetime
import json
import re
import signal
import sys
import time
from typing import Any, TextIO

import attrs
import trio

from .._errors import InvalidJobError, JobCancelledError, JobFailedError, WaitTimeoutError
from .._queue import Queue, open_queue
from .._reaper import REAPER_LOCK
from .._scheduler import SCHEDULER_LOCK
from .._types import CancelStatus, EnqueueStatus, JobSpec, JobStatus, WorkerInfo
from ..storage._base import MAX_PRIORITY, MIN_PRIORITY
from ._common import (
    CliError,
    ExitCode,
    add_storage_options,
    aware_time,
    job_id_arg,
    make_storage,
    positive_int,
    positive_seconds,
    priority,
    queue_name,
    seconds,
)


def add_admin_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "enqueue",
        help="enqueue a job (optionally wait for its result)",
        description=(
            "Enqueue job ID with PAYLOAD_JSON. Prints queued, scheduled (with the time it "
            "runs at) for --delay/--at in the future, duplicate (<state>) when the id is "
            "already taken, or completed and the cached result."
        ),
    )
    p.add_argument("id", metavar="ID", nargs="?", help="the job id (any non-empty text)")
    p.add_argument(
        "payload", metavar="PAYLOAD_JSON", nargs="?", help="the payload as JSON, e.g. '{}'"
    )
    add_storage_options(p)
    p.add_argument(
        "--from-file", metavar="FILE", default=None,
        help="enqueue every job of a JSON Lines file ('-': standard input) instead of ID "
        "PAYLOAD_JSON: one object per line with id, payload and optionally delay, at, "
        "priority, max_attempts, result_ttl; prints the count per status (default: off)",
    )  # fmt: skip
    p.add_argument(
        "--wait", action="store_true",
        help="wait for the result and print it as JSON (default: off)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
        help="with --wait: give up after this long, exit 4; the job keeps running "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-attempts", type=positive_int, default=None, metavar="N",
        help="total runs allowed for this job (default: the queue's, 3)",
    )  # fmt: skip
    p.add_argument(
        "--result-ttl", type=positive_seconds, default=None, metavar="SECONDS",
        help="how long the result, error and id are kept (default: the queue's, 3600)",
    )  # fmt: skip
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--delay", type=seconds, default=None, metavar="SECONDS",
        help="run no earlier than SECONDS from now (default: at once)",
    )  # fmt: skip
    when.add_argument(
        "--at", type=aware_time, default=None, metavar="TIME",
        help="run no earlier than TIME, ISO 8601 with a UTC offset or Z, e.g. "
        "2026-12-24T08:00:00Z (default: at once)",
    )  # fmt: skip
    p.add_argument(
        "--priority", type=priority, default=0, metavar="N",
        help=f"higher runs first, {MIN_PRIORITY}..{MAX_PRIORITY} (default: %(default)s)",
    )  # fmt: skip

    text = "show everything about one job: payload, state, times, result or error"
    p = sub.add_parser(
        "show",
        help=text,
        description=(
            "Show job ID: its payload, state, attempts, priority, times, and its result or "
            "its last error with the traceback (exit 1 if unknown)."
        ),
    )
    p.add_argument("id", metavar="ID", help="the job id")
    add_storage_options(p)
    p.add_argument("--json", action="store_true", help="print JSON (default: off)")

    for command, text in (
        ("status", "show a job's state (exit 1 if unknown)"),
        ("result", "print a completed job's result as JSON (exit 1 if none)"),
        ("cancel", "cancel a queued or retrying job, --force: a running one too (exit 1 if not)"),
    ):
        p = sub.add_parser(command, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("id", metavar="ID", help="the job id")
        add_storage_options(p)
        if command == "status":
            p.add_argument("--json", action="store_true", help="print JSON (default: off)")
        if command == "cancel":
            p.add_argument(
                "--force",
                action="store_true",
                help=(
                    "also cancel a running job: it is removed at once and the worker "
                    "running it (in any process) cancels its handler; prints 'cancelling' "
                    "(default: off: a running job is reported, not changed)"
                ),
            )

    text = "jobs per state, live workers, the reaper leader"
    p = sub.add_parser(
        "stats",
        help=text,
        description=(
            "Jobs per state, the live workers (from the storage's worker registry: a "
            "killed worker disappears within about 1.5 s) and the reaper leader. Answers "
            "at once."
        ),
    )
    add_storage_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (default: off)")
    p.add_argument("--watch", "-w", action="store_true", help="refresh until Ctrl-C (default: off)")
    p.add_argument(
        "--interval", type=positive_seconds, default=1.0, metavar="SECONDS",
        help="with --watch: seconds between refreshes (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--check-worker", metavar="WORKER_ID", default=None,
        help="exit 5 unless this worker (or stand-alone reaper) is registered, a liveness "
        "probe (default: no check)",
    )  # fmt: skip
    p.add_argument(
        "--min-workers", type=positive_int, default=None, metavar="N",
        help="exit 5 if fewer than N workers are registered (default: no check)",
    )  # fmt: skip


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


_LINE_KEYS = {"id", "payload", "delay", "at", "priority", "max_attempts", "result_ttl"}


def _read_jobs(path: str) -> tuple[list[JobSpec[Any]], list[str]]:
    """The jobs of a JSON Lines file; a bad line is a one-line usage error naming it."""
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text: {exc}") from exc
    jobs: list[JobSpec[Any]] = []
    wheres: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise CliError(f"{where}: not valid JSON: {exc}") from exc
        if not isinstance(item, dict) or "id" not in item or "payload" not in item:
            raise CliError(f'{where}: expected an object with "id" and "payload"')
        unknown = set(item) - _LINE_KEYS
        if unknown:
            raise CliError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        at = item.get("at")
        if at is not None:
            try:
                at = aware_time(str(at))
            except argparse.ArgumentTypeError as exc:
                raise CliError(f"{where}: at: {exc}") from exc
        jobs.append(
            JobSpec(
                item["id"],
                item["payload"],
                delay=item.get("delay"),
                run_at=at,
                priority=item.get("priority", 0),
                max_attempts=item.get("max_attempts"),
                result_ttl=item.get("result_ttl"),
            )
        )
        wheres.append(where)
    return jobs, wheres


async def _enqueue_from_file(args: argparse.Namespace, out: TextIO) -> ExitCode:
    if args.id is not None or args.payload is not None or args.wait:
        raise CliError("--from-file replaces ID PAYLOAD_JSON (and does not go with --wait)")
    jobs, wheres = _read_jobs(args.from_file)
    async with open_queue(make_storage(args), name=queue_name(args)) as queue:
        try:
            results = await queue.enqueue_many(jobs)
        except InvalidJobError as exc:
            found = re.match(r"jobs\[(\d+)\]: (.*)", str(exc), re.S)
            where, why = (wheres[int(found[1])], found[2]) if found else (args.from_file, exc)
            raise CliError(f"{where}: {why} (nothing was enqueued)") from exc
    counts: dict[str, int] = {}
    for r in results:
        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
    summary = ", ".join(f"{status} {n}" for status, n in sorted(counts.items())) or "no jobs"
    out.write(summary + "\n")
    return ExitCode.OK


async def run_enqueue(args: argparse.Namespace, out: TextIO) -> ExitCode:
    if args.from_file is not None:
        return await _enqueue_from_file(args, out)
    if args.id is None or args.payload is None:
        raise CliError("give ID and PAYLOAD_JSON, or --from-file FILE")
    job_id = job_id_arg(args.id)
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise CliError(f"PAYLOAD_JSON is not valid JSON: {exc}") from exc
    ns = queue_name(args)
    storage = make_storage(args)
    async with open_queue(storage, name=ns) as queue:
        if not args.wait:
            r = await queue.enqueue(
                job_id,
                payload,
                delay=args.delay,
                run_at=args.at,
                priority=args.priority,
                max_attempts=args.max_attempts,
                result_ttl=args.result_ttl,
            )
            if r.status is EnqueueStatus.SCHEDULED:
                status = await queue.get_status(job_id)
                due = None if status is None else status.run_at
                out.write(f"scheduled (runs at {_when(due)})\n")
            elif r.status is EnqueueStatus.DUPLICATE:
                out.write(f"duplicate ({r.existing_state})\n")
            elif r.status is EnqueueStatus.COMPLETED:
                out.write(f"completed\n{_dump(r.result)}\n")
            else:
                out.write(f"{r.status}\n")
            return ExitCode.OK
        try:
            value = await queue.enqueue_and_wait(
                job_id,
                payload,
                timeout=args.timeout,
                delay=args.delay,
                run_at=args.at,
                priority=args.priority,
                max_attempts=args.max_attempts,
                result_ttl=args.result_ttl,
            )
        except JobFailedError as exc:
            raise CliError(str(exc), ExitCode.NEGATIVE) from exc
        except JobCancelledError as exc:
            raise CliError(str(exc), ExitCode.NEGATIVE) from exc
        except WaitTimeoutError as exc:
            raise CliError(f"{exc} (the job keeps running)", ExitCode.TIMEOUT) from exc
        out.write(_dump(value) + "\n")
        return ExitCode.OK


def _status_dict(status: JobStatus) -> dict[str, Any]:
    data = attrs.asdict(status)
    data["state"] = str(status.state)
    return data


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


async def run_status(args: argparse.Namespace, out: TextIO) -> ExitCode:
    job_id = job_id_arg(args.id)
    ns = queue_name(args)
    async with open_queue(make_storage(args), name=ns) as queue:
        status = await queue.get_status(job_id)
    if status is None:
        if args.json:
            out.write("null\n")
        raise CliError(
            f"job {job_id!r} is unknown (never enqueued, cancelled or expired)", ExitCode.NEGATIVE
        )
    if args.json:
        out.write(_dump(_status_dict(status)) + "\n")
        return ExitCode.OK
    out.write(f"id:        {status.id}\nstate:     {status.state}\n")
    out.write(f"attempts:  {status.attempts}/{status.max_attempts}\n")
    out.write(f"created:   {_when(status.created_at)}\n")
    if status.run_at is not None:
        out.write(f"runs at:   {_when(status.run_at)}\n")
    if status.priority:
        out.write(f"priority:  {status.priority}\n")
    if status.progress is not None:
        out.write(f"progress:  {_progress_text(status.progress)}\n")
    if status.finished_at is not None:
        out.write(f"finished:  {_when(status.finished_at)}\n")
    if status.expires_at is not None:
        out.write(f"expires:   {_when(status.expires_at)}\n")
    if status.result is not None:
        out.write(f"result:    {_dump(status.result)}\n")
    if status.error is not None:
        out.write(f"error:     {status.error.type}: {status.error.message}\n")
    return ExitCode.OK


async def run_show(args: argparse.Namespace, out: TextIO) -> ExitCode:
    job_id = job_id_arg(args.id)
    async with open_queue(make_storage(args), name=queue_name(args)) as queue:
        status = await queue.get_status(job_id)
        payload = await queue.get_payload(job_id)
    if status is None:
        raise CliError(
            f"job {job_id!r} is unknown (never enqueued, cancelled or expired)", ExitCode.NEGATIVE
        )
    if args.json:
        out.write(_dump({**_status_dict(status), "payload": payload}) + "\n")
        return ExitCode.OK
    out.write(f"id:        {status.id}\nstate:     {status.state}\n")
    out.write(f"payload:   {_dump(payload)}\n")
    out.write(f"attempts:  {status.attempts}/{status.max_attempts}\n")
    out.write(f"priority:  {status.priority}\n")
    if status.progress is not None:
        out.write(f"progress:  {_progress_text(status.progress)}\n")
    out.write(f"created:   {_when(status.created_at)}\n")
    for label, when in (
        ("runs at", status.run_at),
        ("finished", status.finished_at),
        ("expires", status.expires_at),
    ):
        if when is not None:
            out.write(f"{label + ':':<10} {_when(when)}\n")
    if status.result is not None:
        out.write(f"result:    {_dump(status.result)}\n")
    if status.error is not None:
        out.write(f"error:     {status.error.type}: {status.error.message}\n")
        if status.error.traceback:
            out.write(status.error.traceback.rstrip("\n") + "\n")
    return ExitCode.OK


def _progress_text(progress: float | dict[str, Any]) -> str:
    if isinstance(progress, dict):
        return _dump(progress)
    return f"{progress:.0%}" if progress * 100 == round(progress * 100) else f"{progress:.2%}"


async def run_result(args: argparse.Namespace, out: TextIO) -> ExitCode:
    job_id = job_id_arg(args.id)
    ns = queue_name(args)
    async with open_queue(make_storage(args), name=ns) as queue:
        status = await queue.get_status(job_id)
    if status is None:
        raise CliError(
            f"job {job_id!r} is unknown (never enqueued, cancelled or expired)", ExitCode.NEGATIVE
        )
    if str(status.state) != "completed":
        raise CliError(f"job {job_id!r} has no result: it is {status.state}", ExitCode.NEGATIVE)
    out.write(_dump(status.result) + "\n")
    return ExitCode.OK


async def run_cancel(args: argparse.Namespace, out: TextIO) -> ExitCode:
    job_id = job_id_arg(args.id)
    ns = queue_name(args)
    async with open_queue(make_storage(args), name=ns) as queue:
        r = await queue.cancel(job_id, force=args.force)
    out.write(f"{r.status}\n")
    done = (CancelStatus.CANCELLED, CancelStatus.CANCELLING)
    return ExitCode.OK if r.status in done else ExitCode.NEGATIVE


# -- stats ------------------------------------------------------------------------------

SHOWN_JOBS = 5
"""Job ids per worker in the text view (``--json`` lists every id the worker registered)."""


async def read_stats(queue: Queue[Any, Any]) -> dict[str, Any]:
    """The ``stats --json`` object: counts per state (``Storage.stats``), the registered
    workers (``Queue.workers()``) and the reaper lock's holder.

    Raises:
        StorageError: the storage failed.
    """
    storage, ns = queue.storage, queue.name
    counts = await storage.stats(ns)
    # Two reads: retry the rare pair that straddles a change of leader, so that the
    # flagged worker and the epoch shown belong to the same holder.
    for _ in range(3):
        workers = await queue.workers()
        holder = await storage.lock_holder(ns, REAPER_LOCK)
        registered = holder is not None and holder.owner in {w.id for w in workers}
        flagged = [w.id for w in workers if w.is_reaper_leader]
        if flagged == ([holder.owner] if holder is not None and registered else []):
            break
    paused = await storage.is_paused(ns)
    scheduler = await storage.lock_holder(ns, SCHEDULER_LOCK)
    return {
        "queue": ns,
        "paused": paused,
        "jobs": attrs.asdict(counts),
        "depth": counts.queued + counts.delayed,
        "workers": [_worker_dict(w) for w in workers],
        "leader": None if holder is None else holder.owner,
        "leader_epoch": None if holder is None else holder.epoch,
        "leader_registered": registered,
        "scheduler_leader": None if scheduler is None else scheduler.owner,
    }


def _worker_dict(info: WorkerInfo) -> dict[str, Any]:
    data = attrs.asdict(info)
    data["jobs"] = list(info.jobs)
    return data


def _row(w: dict[str, Any]) -> list[str]:
    counters = w["counters"]
    if w["kind"] != "worker":  # a stand-alone reaper or scheduler: it runs no jobs
        run = done = failed = fenced = "-"
        state = w["kind"]
    else:
        run = f"{w['in_flight']}/{w['concurrency']}"
        done, failed, fenced = (str(counters.get(k, 0)) for k in ("completed", "failed", "fenced"))
        state = w["state"]
    jobs = ", ".join(w["jobs"][:SHOWN_JOBS])
    if w["in_flight"] > SHOWN_JOBS:
        jobs += f" (+{w['in_flight'] - SHOWN_JOBS})"
    lead = "*" if w["is_reaper_leader"] else ""
    return [w["id"], f"{w['host']}:{w['pid']}", state, run, done, failed, fenced, lead, jobs]


_HEADER = ["WORKER", "HOST:PID", "STATE", "RUN", "DONE", "FAILED", "FENCED", "LEADER", "JOBS"]
_RIGHT = {"RUN", "DONE", "FAILED", "FENCED"}


def render_stats(data: dict[str, Any]) -> str:
    jobs = data["jobs"]
    lines = [
        f"queue {data['queue']!r}{'   PAUSED' if data['paused'] else ''}   "
        f"depth {data['depth']} (queued {jobs['queued']}, "
        f"delayed {jobs['delayed']}; scheduled for later {jobs['scheduled']})",
        "",
        "  " + "  ".join(f"{k:>10}" for k in jobs),
        "  " + "  ".join(f"{v:>10}" for v in jobs.values()),
        "",
    ]
    workers = data["workers"]
    kinds = [w["kind"] for w in workers]
    summary = f"workers: {kinds.count('worker')} live"
    for kind in sorted(set(kinds) - {"worker"}):
        summary += f", stand-alone {kind}s: {kinds.count(kind)}"
    lines.append(summary)
    if workers:
        rows = [_HEADER, *(_row(w) for w in workers)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER) - 1)]
        for row in rows:
            cells = [
                cell.rjust(width) if _HEADER[i] in _RIGHT else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=False))
            ]
            lines.append(("  " + "  ".join(cells) + "  " + row[-1]).rstrip())
    leader = data["leader"]
    if leader is None:
        lines.append("reaper leader: none")
    else:
        note = (
            ""
            if data["leader_registered"]
            else "; not registered: dead, the next reaper takes over"
        )
        lines.append(f"reaper leader: {leader} (epoch {data['leader_epoch']}{note})")
    if data["scheduler_leader"] is not None:
        lines.append(f"scheduler leader: {data['scheduler_leader']}")
    return "\n".join(lines) + "\n"


def _health(args: argparse.Namespace, data: dict[str, Any]) -> str | None:
    registered = data["workers"]
    if args.check_worker is not None and args.check_worker not in {w["id"] for w in registered}:
        return f"worker {args.check_worker!r} is not registered (not running, or dead)"
    live = sum(1 for w in registered if w["kind"] == "worker")
    if args.min_workers is not None and live < args.min_workers:
        return f"{live} live workers, fewer than {args.min_workers}"
    return None


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()


async def run_stats(args: argparse.Namespace, out: TextIO) -> ExitCode:
    """``stats``: one snapshot, read at once from the storage, or with ``--watch`` a
    refreshing view until SIGINT/SIGTERM (exit 0)."""
    if args.watch and (args.check_worker is not None or args.min_workers is not None):
        raise CliError("--check-worker/--min-workers answer once: they do not go with --watch")
    ns = queue_name(args)
    async with open_queue(make_storage(args), name=ns) as queue:
        if args.watch:
            await _watch_stats(args, out, queue)
            return ExitCode.OK
        data = await read_stats(queue)
    _write(out, json.dumps(data, ensure_ascii=False) + "\n" if args.json else render_stats(data))
    problem = _health(args, data)
    if problem is not None:
        raise CliError(problem, ExitCode.UNHEALTHY)
    return ExitCode.OK


async def _watch_stats(args: argparse.Namespace, out: TextIO, queue: Queue[Any, Any]) -> None:
    """Refresh every ``--interval`` seconds until SIGINT/SIGTERM; redraw in place on a
    terminal, else print one snapshot after the other."""
    interactive = out.isatty() and not args.json
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        trio.CancelScope() as scope,
    ):

        async def stop_on_signal() -> None:
            async for _ in signals:
                scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal)
            while True:
                data = await read_stats(queue)
                if args.json:
                    _write(out, json.dumps(data, ensure_ascii=False) + "\n")
                elif interactive:
                    stamp = time.strftime("%H:%M:%S")
                    _write(out, f"\x1b[H\x1b[2J{stamp}  (Ctrl-C to stop)\n{render_stats(data)}")
                else:
                    _write(out, render_stats(data) + "\n")
                await trio.sleep(args.interval)
