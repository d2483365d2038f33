"""Browsing cost: the time of one ``Queue.list_jobs`` page of 100 at 1,000 and at
1,000,000 jobs of the state, on Redis (a redis-server of its own) and Memory.

    python benchmarks/list_jobs.py [--big 1000000] [--backends redis,memory]

Two queues on one storage, one with 1,000 jobs and one with 1,000,000 (half queued, half
scheduled). For ``queued`` and ``scheduled`` jobs it times pages from the start and pages
that continue from a cursor in the middle, the two queues in turn (five rounds of ten
pages each, so that whatever else the machine does weighs on both alike; measured minutes
apart, single runs differed by up to 2x on a machine that looked idle), and prints the
median per page and the ratio of the big backlog to the small one (target: at most 1.5x),
with the machine's load.
On Redis it also prints the server's own mean time per script call over those pages
(``INFO commandstats``), which tells the script's work from the client's and the network's;
both are wall times, so other processes competing for the CPUs inflate them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))
from compare import redis_server

import trio_jobqueue as jq
from trio_jobqueue.storage.redis import RedisStorage

PAGE = 100
SAMPLES = 10
ROUNDS = 5


async def fill(queue: jq.Queue, jobs: int) -> None:  # type: ignore[type-arg]
    """``jobs`` jobs: half queued (priorities 0..3), half scheduled an hour ahead."""
    batch: list[jq.JobSpec] = []  # type: ignore[type-arg]
    for n in range(jobs):
        delay = 3600.0 + n % 997 if n % 2 else None
        batch.append(jq.JobSpec(f"job-{n}", n, delay=delay, priority=n % 4))
        if len(batch) == 10_000:
            await queue.enqueue_many(batch)
            batch = []
    if batch:
        await queue.enqueue_many(batch)


async def script_usec(queue: jq.Queue) -> tuple[float, int] | None:  # type: ignore[type-arg]
    """Redis's own time in script calls so far (``INFO commandstats``: usec, calls); None
    off Redis."""
    storage = queue.storage
    if not isinstance(storage, RedisStorage):
        return None
    raw = (await storage.server_command("INFO", "commandstats")).decode()
    for line in raw.splitlines():
        if line.startswith("cmdstat_fcall:"):
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return float(fields["usec"]), int(fields["calls"])
    return 0.0, 0


async def timed_pages(
    queue: jq.Queue,  # type: ignore[type-arg]
    state: str,
    cursor: str | None,
) -> tuple[float, float | None]:
    """Median seconds of SAMPLES pages from ``cursor``, and Redis's mean time per script
    call over them (None off Redis)."""
    times = []
    before = await script_usec(queue)
    for _ in range(SAMPLES):
        t = time.perf_counter()
        page = await queue.list_jobs(state, limit=PAGE, cursor=cursor)
        times.append(time.perf_counter() - t)
        assert len(page.jobs) == PAGE
    after = await script_usec(queue)
    server = None
    if before is not None and after is not None and after[1] > before[1]:
        server = (after[0] - before[0]) / (after[1] - before[1]) / 1e6
    return statistics.median(times), server


async def middle_cursor(queue: jq.Queue, state: str) -> str | None:  # type: ignore[type-arg]
    """A cursor in the middle of ``state``'s jobs: walked to once with big pages."""
    cursor = None
    counts = await queue.counts()
    half = (counts["scheduled" if state == "scheduled" else "queued"]) // 2
    walked = 0
    while walked < half:
        page = await queue.list_jobs(state, limit=1000, cursor=cursor)
        walked += len(page.jobs)
        cursor = page.cursor
        if cursor is None:
            break
    return cursor


Timing = tuple[float, float | None]


async def measure(make: object, small: int, big: int) -> dict[tuple[str, str], list[Timing]]:
    """Two queues on one storage, ``small`` and ``big`` jobs; then, ROUNDS times, for each
    state and page position, SAMPLES pages of the small queue and SAMPLES of the big one
    in turn, so that whatever else the machine does weighs on both alike. Returns, per
    (state, position), the small and the big queue's (median seconds over all rounds'
    pages, Redis's mean seconds per script call)."""
    storage = make()  # type: ignore[operator]
    async with (
        jq.open_queue(storage, name=f"browse-small-{time.time_ns()}") as q_small,
        jq.open_queue(storage, name=f"browse-big-{time.time_ns()}") as q_big,
    ):
        await fill(q_small, small)
        await fill(q_big, big)
        queues = (q_small, q_big)
        plans = []
        for state in ("queued", "scheduled"):
            middles = [await middle_cursor(queue, state) for queue in queues]
            plans.append(((state, "first page"), [None, None]))
            plans.append(((state, "from the middle"), middles))
        rounds: dict[tuple[str, str], list[list[Timing]]] = {key: [[], []] for key, _ in plans}
        for _ in range(ROUNDS):
            for key, cursors in plans:
                for i, queue in enumerate(queues):
                    rounds[key][i].append(await timed_pages(queue, key[0], cursors[i]))
        out = {}
        for key, per_queue in rounds.items():
            out[key] = []
            for timings in per_queue:
                servers = [server for _, server in timings if server is not None]
                out[key].append(
                    (
                        statistics.median(t for t, _ in timings),
                        statistics.fmean(servers) if servers else None,
                    )
                )
        return out


async def main(args: argparse.Namespace) -> None:
    print(
        f"load before: {os.getloadavg()[0]:.2f}; pages of {PAGE}, {ROUNDS} rounds of"
        f" {SAMPLES} pages per queue, the two queues in turn"
    )
    workdir = tempfile.mkdtemp(prefix="jq-bench-")
    server = contextlib.ExitStack()
    port, _ = server.enter_context(redis_server(Path(workdir)))
    url = f"redis://127.0.0.1:{port}/0"
    makers = {"redis": lambda: RedisStorage(url), "memory": jq.MemoryStorage}
    try:
        for backend in args.backends.split(","):
            started = time.perf_counter()
            results = await measure(makers[backend], args.small, args.big)
            print(f"{backend}: filled and measured {args.small:,} + {args.big:,} jobs in "
                  f"{time.perf_counter() - started:.0f} s")  # fmt: skip
            for (state, where), ((a, a_server), (b, b_server)) in results.items():
                verdict = "PASS" if b / a <= 1.5 else "FAIL"
                inside = ""
                if a_server and b_server:
                    inside = (
                        f"  (in Redis: {a_server * 1e3:.2f} / {b_server * 1e3:.2f} ms,"
                        f" {b_server / a_server:.2f}x)"
                    )
                print(
                    f"  {state:9} {where:15} {args.small:>9,}: {a * 1e3:6.2f} ms  "
                    f"{args.big:>9,}: {b * 1e3:6.2f} ms  ratio {b / a:4.2f}x  {verdict}" + inside
                )
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--backends", default="redis,memory")
    trio.run(main, parser.parse_args())
