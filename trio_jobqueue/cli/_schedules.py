"""``trio-jobqueue schedules``: each schedule's last fired tick (the cursors the schedulers
keep in the storage) and who leads the queue's schedulers; with ``--schedules`` also each
schedule's next tick."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from .._schedule import Schedule, describe
from .._scheduler import SCHEDULER_LOCK
from ._common import ExitCode, add_storage_options, make_storage, queue_name
from ._worker import load_schedules


def add_schedules_parser(sub: Any) -> None:
    text = "list each schedule's last fired tick and the scheduler leader"
    p = sub.add_parser(
        "schedules",
        help=text,
        description=(
            "List the schedules that fired on the queue, with their last fired tick (the "
            "cursor the schedulers keep in the storage), and the scheduler leader. With "
            "--schedules, also the schedules of that list that never fired, and each "
            "one's next tick."
        ),
    )
    add_storage_options(p)
    p.add_argument(
        "--schedules", default=None, metavar="MODULE:SCHEDULES",
        help="the list the workers run (as for worker --schedules), to show next ticks "
        "(default: only what the storage knows)",
    )  # fmt: skip
    p.add_argument(
        "--json", action="store_true",
        help="print one JSON object instead of text (default: off)",
    )  # fmt: skip


def _utc(tick: float) -> str:
    return datetime.fromtimestamp(tick, UTC).isoformat()


async def run_schedules(args: argparse.Namespace, out: TextIO) -> ExitCode:
    """The ``schedules`` command. Read-only.

    Raises:
        CliError: a usage error (bad ``--schedules``, storage URL or name).
        StorageError: the storage failed.
    """
    known: dict[str, Schedule] = {}
    if args.schedules is not None:
        known = {s.id: s for s in load_schedules(args.schedules)}
    ns = queue_name(args)
    async with make_storage(args) as storage:
        cursors = await storage.schedule_cursors(ns)
        holder = await storage.lock_holder(ns, SCHEDULER_LOCK)
        clock = getattr(storage, "now", None)
        now = float(clock()) if callable(clock) else time.time()
    rows = []
    for schedule_id in sorted(set(cursors) | set(known)):
        last = cursors.get(schedule_id)
        schedule = known.get(schedule_id)
        row: dict[str, Any] = {
            "id": schedule_id,
            "last_tick": last,
            "last_job_id": None,
            "next_tick": None,
            "next_job_id": None,
            "schedule": None if schedule is None else describe(schedule),
        }
        if last is not None:
            row["last_job_id"] = (
                schedule.job_id(last) if schedule is not None else f"{schedule_id}@{_utc(last)}"
            )
        if schedule is not None:
            upcoming = schedule.next_tick(now if last is None else max(now, last))
            row["next_tick"], row["next_job_id"] = upcoming, schedule.job_id(upcoming)
        rows.append(row)
    leader = None if holder is None else {"owner": holder.owner, "epoch": holder.epoch}
    if args.json:
        out.write(json.dumps({"queue": ns, "leader": leader, "schedules": rows}) + "\n")
        return ExitCode.OK
    if leader is None:
        out.write(f"queue {ns!r}: no scheduler leads\n")
    else:
        out.write(f"queue {ns!r}: scheduler leader {leader['owner']} (epoch {leader['epoch']})\n")
    if not rows:
        out.write("no schedule has fired\n")
    for row in rows:
        last_text = "never fired" if row["last_tick"] is None else f"last {row['last_job_id']}"
        if row["last_tick"] is not None:
            last_text += f" ({now - row['last_tick']:.0f} s ago)"
        next_text = "" if row["next_job_id"] is None else f", next {row['next_job_id']}"
        what = "" if row["schedule"] is None else f" [{row['schedule']}]"
        out.write(f"{row['id']}{what}: {last_text}{next_text}\n")
    return ExitCode.OK
