"""Operator commands: ``list``, ``retry``, ``delete``, ``purge``, ``pause`` and ``resume``."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from .._errors import InvalidJobError
from .._queue import open_queue
from .._types import DeleteStatus, JobState, RetryStatus
from ._common import (
    CliError,
    ExitCode,
    add_storage_options,
    job_id_arg,
    make_storage,
    positive_int,
    queue_name,
)

PURGEABLE = [s.value for s in JobState if s is not JobState.PROCESSING]


def add_operate_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "retry",
        help="run a failed job again (or every failed job)",
        description=(
            "Put failed job ID back in the queue with a fresh attempt budget (exit 1 when "
            "it is not failed or unknown), or with --all-failed every failed job (prints "
            "how many)."
        ),
    )
    p.add_argument("id", metavar="ID", nargs="?", default=None, help="the job id")
    p.add_argument(
        "--all-failed", action="store_true",
        help="retry every failed job of the queue instead of one (default: off)",
    )  # fmt: skip
    add_storage_options(p)

    p = sub.add_parser(
        "delete",
        help="delete a job that is not running",
        description=(
            "Delete job ID with its result or error, in any state but processing (exit 1 "
            "when it is running or unknown); the id is free again."
        ),
    )
    p.add_argument("id", metavar="ID", help="the job id")
    add_storage_options(p)

    p = sub.add_parser(
        "purge",
        help="delete every job in one state",
        description="Delete every job (or --limit of them) in one state; prints how many.",
    )
    p.add_argument(
        "--state", required=True, choices=PURGEABLE, metavar="STATE",
        help=f"the state to purge: {', '.join(PURGEABLE)} (default: none, required)",
    )  # fmt: skip
    p.add_argument(
        "--limit", type=positive_int, default=None, metavar="N",
        help="delete at most N jobs (default: all)",
    )  # fmt: skip
    add_storage_options(p)

    p = sub.add_parser(
        "list",
        help="list the jobs in one state",
        description=(
            "One page of the jobs in STATE, in the state's order (scheduled by due time, "
            "queued in claim order, failing ready first, processing by lease, completed and "
            "failed newest first); the last line gives the --cursor of the next page."
        ),
    )
    p.add_argument(
        "--state", required=True, choices=[s.value for s in JobState], metavar="STATE",
        help=f"the state: {', '.join(s.value for s in JobState)} (default: none, required)",
    )  # fmt: skip
    p.add_argument(
        "--limit", type=page_size, default=20, metavar="N",
        help="jobs per page, 1..1000 (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--cursor", default=None, metavar="CURSOR",
        help="where the page starts, as printed by the previous page (default: the start)",
    )  # fmt: skip
    p.add_argument(
        "--json", action="store_true",
        help="print one JSON object: jobs (as status --json), cursor (default: off)",
    )  # fmt: skip
    add_storage_options(p)

    for command, text in (
        ("pause", "stop every worker of the queue from claiming (running jobs finish)"),
        ("resume", "let the workers of a paused queue claim again"),
    ):
        p = sub.add_parser(command, help=text, description=text[0].upper() + text[1:] + ".")
        add_storage_options(p)


def page_size(text: str) -> int:
    value = positive_int(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"must be at most 1000, not {value}")
    return value


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


async def run_list(args: argparse.Namespace, out: TextIO) -> ExitCode:
    from ._admin import _dump, _status_dict, _when

    async with open_queue(make_storage(args), name=queue_name(args)) as queue:
        try:
            page = await queue.list_jobs(args.state, limit=args.limit, cursor=args.cursor)
        except InvalidJobError as exc:
            raise CliError(str(exc)) from exc
    if args.json:
        jobs = [_status_dict(job) for job in page.jobs]
        out.write(_dump({"jobs": jobs, "cursor": page.cursor}) + "\n")
        return ExitCode.OK
    rows = [["ID", "ATTEMPTS", "PRIORITY", "WHEN", "ERROR"]]
    for job in page.jobs:
        when = job.run_at or job.finished_at or job.created_at
        error = "" if job.error is None else f"{job.error.type}: {job.error.message}"
        rows.append(
            [
                _short(job.id, 40),
                f"{job.attempts}/{job.max_attempts}",
                str(job.priority),
                _when(when),
                _short(error, 60),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        out.write(("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)))
                  + "  " + row[4] + "\n")  # fmt: skip
    out.write(f"{len(page.jobs)} {args.state} job(s) shown")
    out.write(f"; next page: --cursor {page.cursor}\n" if page.cursor else "; end\n")
    return ExitCode.OK


async def run_retry(args: argparse.Namespace, out: TextIO) -> ExitCode:
    if (args.id is None) == (not args.all_failed):
        raise CliError("give a job ID or --all-failed (not both)")
    job_id = None if args.id is None else job_id_arg(args.id)
    async with open_queue(make_storage(args), name=queue_name(args)) as queue:
        if job_id is None:
            out.write(f"retried {await queue.retry_failed()}\n")
            return ExitCode.OK
        result = await queue.retry(job_id)
    out.write(f"{result.status}\n")
    return ExitCode.OK if result.status is RetryStatus.RETRIED else ExitCode.NEGATIVE


async def run_delete(args: argparse.Namespace, out: TextIO) -> ExitCode:
    job_id = job_id_arg(args.id)
    async with open_queue(make_storage(args), name=queue_name(args)) as queue:
        result = await queue.delete(job_id)
    out.write(f"{result.status}\n")
    return ExitCode.OK if result.status is DeleteStatus.DELETED else ExitCode.NEGATIVE


async def run_purge(args: argparse.Namespace, out: TextIO) -> ExitCode:
    async with open_queue(make_storage(args), name=queue_name(args)) as queue:
        count = await queue.purge(args.state, limit=args.limit)
    out.write(f"deleted {count}\n")
    return ExitCode.OK


async def run_pause(args: argparse.Namespace, out: TextIO) -> ExitCode:
    async with open_queue(make_storage(args), name=queue_name(args)) as queue:
        await queue.pause()
    out.write("paused\n")
    return ExitCode.OK


async def run_resume(args: argparse.Namespace, out: TextIO) -> ExitCode:
    async with open_queue(make_storage(args), name=queue_name(args)) as queue:
        await queue.resume()
    out.write("resumed\n")
    return ExitCode.OK
