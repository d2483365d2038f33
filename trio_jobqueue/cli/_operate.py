"""Operator commands: ``retry``, ``delete``, ``purge``, ``pause`` and ``resume``."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

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

    for command, text in (
        ("pause", "stop every worker of the queue from claiming (running jobs finish)"),
        ("resume", "let the workers of a paused queue claim again"),
    ):
        p = sub.add_parser(command, help=text, description=text[0].upper() + text[1:] + ".")
        add_storage_options(p)


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
