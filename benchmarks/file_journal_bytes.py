"""File backend: journal bytes appended per job, and what one heartbeat batch costs.

    python benchmarks/file_journal_bytes.py [--jobs 10] [--payload 102400] [--heartbeats 20]
                                            [--dir /path/on/the/target/disk]

Drives FileStorage directly (the transitions a worker makes, in the worker's grouping):
enqueue ``--jobs`` jobs of ``--payload`` random bytes, claim them in one batch, extend
all their leases ``--heartbeats`` times (one heartbeat call covers every job a worker
holds, as the worker's heartbeat loop does), complete each with a small result. Prints
the journal bytes appended per job and as a multiple of the payload (target: at most
1.2x), the bytes of one heartbeat batch, and the fsyncs it cost when the storage
counts them. Compaction is disabled so that every appended byte stays in the journal.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import trio

from trio_jobqueue.storage.file import FileStorage

NS = "bytes"


def journal_bytes(root: str) -> int:
    total = 0
    for directory, _dirs, files in os.walk(Path(root) / "ns"):
        total += sum(
            os.path.getsize(os.path.join(directory, name))
            for name in files
            if name.startswith("journal.")
        )
    return total


async def main(args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    base = args.dir or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=base) as root:
        storage = FileStorage(root, compact_bytes=1 << 40)
        async with storage:
            payloads = [os.urandom(args.payload) for _ in range(args.jobs)]
            for i, payload in enumerate(payloads):
                await storage.enqueue(NS, f"job-{i}", payload, max_attempts=3, result_ttl=600.0)
            after_enqueue = journal_bytes(root)
            claims = await storage.claim(NS, "w", limit=args.jobs, lease=30.0)
            assert len(claims) == args.jobs
            pairs = [(c.job_id, c.token) for c in claims]
            stats_before = getattr(storage, "statistics", None)
            fsyncs_before = stats_before().fsyncs if stats_before else None
            before = journal_bytes(root)
            for _ in range(args.heartbeats):
                assert all(await storage.heartbeat(NS, pairs, lease=30.0))
            heartbeat_bytes = journal_bytes(root) - before
            fsyncs = None if stats_before is None else stats_before().fsyncs - fsyncs_before
            for c in claims:
                await storage.complete(NS, c.job_id, c.token, b'{"ok":true}', ttl=600.0)
            total = journal_bytes(root)
    per_job = total / args.jobs
    print(
        f"{args.jobs} jobs x {args.payload} B payload, {args.heartbeats} heartbeats of all"
        f" {args.jobs} leases each"
    )
    print(f"  journal after the enqueues      {after_enqueue:12,d} B")
    print(f"  journal at the end              {total:12,d} B")
    print(
        f"  per job                         {per_job:12,.0f} B"
        f" = {per_job / args.payload:.3f}x payload"
    )
    print(
        f"  one heartbeat batch ({args.jobs} leases)  {heartbeat_bytes / args.heartbeats:10,.0f} B"
        + ("" if fsyncs is None else f", fsyncs for all {args.heartbeats}: {fsyncs}")
    )
    verdict = "PASS" if per_job <= 1.2 * args.payload else "FAIL"
    print(f"{verdict} journal bytes per job <= 1.2x payload ({per_job / args.payload:.3f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--payload", type=int, default=100 * 1024)
    parser.add_argument("--heartbeats", type=int, default=20)
    parser.add_argument("--dir", default=None, help="where to put the queue (target disk)")
    trio.run(main, parser.parse_args())
