"""Redis layout: does the cost of an operation grow with the backlog?

    python benchmarks/redis_layout.py [--backlogs 1000,1000000] [--ops 2000] [--reap 100000]

On a private ``redis-server`` (no persistence, free port) it fills one queue with
``backlog`` jobs (100-byte payloads, enqueued through the storage, 100 at a time in
flight), then times ``--ops`` calls of each operation against that backlog, one call
at a time:

* ``enqueue`` (a new job, at the tail), ``claim`` (one job, from the head), ``release``
  (back to the head), ``cancel`` at the head and at the tail of the ready set,
  ``status`` of random queued jobs and ``stats``; the backlog is put back after each
  call (a claimed job released, a cancelled head enqueued again, a new job cancelled);
* for each: the median server time of its script call (``SLOWLOG`` with every command
  recorded: what the backlog could make grow), the median client time per call (mostly
  the round trip), and the ratio of the largest backlog's server time to the
  smallest's.

It also prints the Redis memory per queued job (``used_memory`` delta over the fill /
jobs, after ``MEMORY PURGE``) and, with ``--reap N``, claims N jobs with a 5 s lease,
moves the storage clock past it and reaps them all with ``SLOWLOG`` recording every
command: the longest script call, the number of reap calls and the total time.

Runs against whatever ``trio_jobqueue`` is importable (``PYTHONPATH=/path/to/checkout``
for another version).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from compare import redis_server

NS = "layout"
PAYLOAD = b"x" * 100
SLOWLOG_MAX = 200_000


def parse_info(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value
    return out


async def info(storage: Any, section: str) -> dict[str, str]:
    return parse_info(await storage.server_command("INFO", section))


async def used_memory(storage: Any) -> int:
    await storage.server_command("MEMORY", "PURGE")
    return int((await info(storage, "memory"))["used_memory"])


async def fill(storage: Any, ids: list[str], in_flight: int = 100) -> None:
    async def produce(part: list[str]) -> None:
        for job_id in part:
            await storage.enqueue(NS, job_id, PAYLOAD, max_attempts=3, result_ttl=3600.0)

    async with trio.open_nursery() as nursery:
        for k in range(in_flight):
            nursery.start_soon(produce, ids[k::in_flight])


async def record_scripts(storage: Any, slower_than_us: int = 0) -> None:
    """From now on SLOWLOG keeps every command slower than ``slower_than_us`` (the
    commands scripts run included, with the client ``?:0``)."""
    await storage.server_command("CONFIG", "SET", "slowlog-log-slower-than", str(slower_than_us))
    await storage.server_command("CONFIG", "SET", "slowlog-max-len", str(SLOWLOG_MAX))
    await storage.server_command("SLOWLOG", "RESET")


async def script_times(storage: Any) -> dict[str, list[int]]:
    """Durations (us) of the script calls SLOWLOG kept since :func:`record_scripts`, by
    script name."""
    from trio_jobqueue.storage._redis_common import script

    names = {}
    for name in ("enqueue", "claim", "release", "cancel", "status", "stats", "reap"):
        names[script(name).function.encode()] = name
    entries = await storage.server_command("SLOWLOG", "GET", str(SLOWLOG_MAX))
    if len(entries) >= SLOWLOG_MAX:
        print("warning: SLOWLOG overflowed; the figures below miss the oldest calls")
    out: dict[str, list[int]] = {}
    for entry in entries:
        args = entry[3]
        if len(args) > 1 and args[0].upper() == b"FCALL" and args[1] in names:
            out.setdefault(names[args[1]], []).append(int(entry[2]))
    await storage.server_command("CONFIG", "SET", "slowlog-log-slower-than", "10000")
    return out


async def head_of_queue(storage: Any) -> str:
    keys = storage.keys(NS)
    if hasattr(keys, "queue"):  # this layout: a sorted set
        [job_id] = await storage.server_command("ZRANGE", keys.queue, 0, 0)
    else:  # the list of earlier versions
        job_id = await storage.server_command("LINDEX", keys.ready, 0)
    return job_id.decode() if isinstance(job_id, bytes) else str(job_id)


async def measure_backlog(storage: Any, backlog: int, ops: int) -> dict[str, Any]:
    """Time each operation ``ops`` times against ``backlog`` queued jobs, putting the
    backlog back after each call (a claimed job is released, a cancelled head enqueued
    again, a new job cancelled), so that every call sees the same backlog. One phase per
    pair of operations, each with its own SLOWLOG."""
    await storage.server_command("FLUSHALL")
    ids = [f"job-{n:08d}" for n in range(backlog)]
    base = await used_memory(storage)
    start = time.perf_counter()
    await fill(storage, ids)
    fill_s = time.perf_counter() - start
    per_job = (await used_memory(storage) - base) / backlog
    wall: dict[str, list[float]] = {}
    server: dict[str, list[int]] = {}

    async def timed(op: str, call: Any) -> Any:
        start = time.perf_counter()
        result = await call
        wall.setdefault(op, []).append(time.perf_counter() - start)
        return result

    async def phase(body: Any, scripts: dict[str, str]) -> None:
        """Run ``body`` with SLOWLOG on; file the calls of each script under its op."""
        await record_scripts(storage)
        await body()
        times = await script_times(storage)
        for name, op in scripts.items():
            server[op] = times.get(name, [])

    async def enqueue_then_cancel() -> None:
        for n in range(ops):
            new = f"new-{n}"
            call = storage.enqueue(NS, new, PAYLOAD, max_attempts=3, result_ttl=3600.0)
            await timed("enqueue", call)
            await timed("cancel (tail)", storage.cancel(NS, new))

    async def claim_then_release() -> None:
        for _ in range(ops):
            [claim] = await timed("claim", storage.claim(NS, "bench", limit=1, lease=3600.0))
            await timed("release", storage.release(NS, claim.job_id, claim.token))

    async def cancel_head() -> None:
        for _ in range(ops):
            head = await head_of_queue(storage)
            await timed("cancel (head)", storage.cancel(NS, head))
            await storage.enqueue(NS, head, PAYLOAD, max_attempts=3, result_ttl=3600.0)

    async def status() -> None:
        for job_id in random.Random(1).sample(ids, min(ops, backlog)):
            await timed("status", storage.get_status(NS, job_id))

    async def stats() -> None:
        for _ in range(ops):
            await timed("stats", storage.stats(NS))

    await phase(enqueue_then_cancel, {"enqueue": "enqueue", "cancel": "cancel (tail)"})
    await phase(claim_then_release, {"claim": "claim", "release": "release"})
    await phase(cancel_head, {"cancel": "cancel (head)"})
    await phase(status, {"status": "status"})
    await phase(stats, {"stats": "stats"})
    results: dict[str, Any] = {"memory_per_job": per_job, "fill_s": fill_s}
    for op, times in wall.items():
        median = statistics.median(server[op]) if server.get(op) else float("nan")
        results[op] = (median, statistics.median(times) * 1e6)
    return results


async def measure_reap(storage: Any, jobs: int) -> dict[str, float]:
    """Claim ``jobs`` jobs with a 5 s lease, move the clock past it and reap them all;
    SLOWLOG keeps every call slower than 1 ms (every reap batch of any size: the
    commands the scripts run are faster), ``INFO commandstats`` counts the calls."""
    await storage.server_command("FLUSHALL")
    await fill(storage, [f"reap-{n:08d}" for n in range(jobs)])
    claimed = 0
    while claimed < jobs:
        claimed += len(await storage.claim(NS, "doomed", limit=100, lease=5.0))
    await storage.advance_clock(10.0)
    await record_scripts(storage, slower_than_us=1000)
    await storage.server_command("CONFIG", "RESETSTAT")
    start = time.perf_counter()
    result = await storage.reap(NS)
    elapsed = time.perf_counter() - start
    field = (await info(storage, "commandstats"))["cmdstat_fcall"]
    calls = int(field.split("calls=", 1)[1].split(",", 1)[0])
    longest = max((await script_times(storage)).get("reap", [0]))
    return {
        "reaped": len(result.stalled),
        "calls": calls,
        "longest_ms": longest / 1e3,
        "total_s": elapsed,
    }


async def main(args: argparse.Namespace) -> None:
    import trio_jobqueue
    from trio_jobqueue.storage.redis import RedisStorage

    load = os.getloadavg()
    print(
        f"trio_jobqueue from {Path(trio_jobqueue.__file__).parent}; load average"
        f" {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs"
    )
    workdir = tempfile.mkdtemp(prefix="jq-layout-")
    server = contextlib.ExitStack()
    port, _ = server.enter_context(redis_server(Path(workdir)))
    try:
        async with RedisStorage(f"redis://127.0.0.1:{port}/0", client="trio") as storage:
            by_backlog = {}
            for backlog in args.backlogs:
                by_backlog[backlog] = r = await measure_backlog(storage, backlog, args.ops)
                print(
                    f"backlog {backlog:,}: filled in {r['fill_s']:.1f} s,"
                    f" {r['memory_per_job']:.0f} B of Redis memory per queued job"
                )
            small, large = min(by_backlog), max(by_backlog)
            ops = [k for k in by_backlog[small] if isinstance(by_backlog[small][k], tuple)]
            print(
                f"\n{'operation':<15}"
                + "".join(f"{f'server us @{b:,}':>22}" for b in args.backlogs)
                + f"{'ratio':>8}"
                + "".join(f"{f'client us @{b:,}':>22}" for b in args.backlogs)
            )
            for op in ops:
                server_us = [by_backlog[b][op][0] for b in args.backlogs]
                client_us = [by_backlog[b][op][1] for b in args.backlogs]
                ratio = by_backlog[large][op][0] / by_backlog[small][op][0]
                print(
                    f"{op:<15}"
                    + "".join(f"{x:>22.1f}" for x in server_us)
                    + f"{ratio:>7.2f}x"
                    + "".join(f"{x:>22.1f}" for x in client_us)
                )
            if args.reap:
                r = await measure_reap(storage, args.reap)
                print(
                    f"\nreap {r['reaped']:,} expired leases: {r['calls']} script calls,"
                    f" longest {r['longest_ms']:.1f} ms (SLOWLOG), {r['total_s']:.2f} s in all"
                )
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backlogs",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1000, 1_000_000],
        help="comma-separated queue lengths (default: 1000,1000000)",
    )
    parser.add_argument("--ops", type=int, default=2000, help="calls per operation (2000)")
    parser.add_argument(
        "--reap", type=int, default=100_000, help="expired leases to reap (0: skip; 100000)"
    )
    trio.run(main, parser.parse_args())
