"""What a scheduled job costs the Memory worker in CPU, without waiting for the wall clock.

    python benchmarks/scheduled_cpu.py                                  # this checkout
    python benchmarks/scheduled_cpu.py --baseline /tmp/old --rounds 5   # ... against another

The lateness benchmark (``scheduled_jobs.py``) waits a real minute and its tail follows the
load of the machine. This one measures what the tail is made of on a busy machine: the
CPU per job. ``--jobs`` jobs are enqueued with ``run_at`` uniform over ``--window``
seconds, then one worker (concurrency ``--concurrency``) runs them at their times under
trio's ``MockClock`` (autojump: every due time comes at once, one after the other, as in
real time but without the waits). Reported: the process CPU per job from the worker's
start to the last handler call (claims, handler tasks, completions; not the enqueues).

With ``--baseline DIR`` (a worktree or an export of another commit) each round runs both
versions, in a rotated order, each in a fresh process; prints the medians and the
same-round ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
"""The checkout this script belongs to: its ``trio_jobqueue`` is the one measured."""


async def measure(jobs: int, window: float, concurrency: int) -> float:
    """CPU seconds per job of one worker running ``jobs`` scheduled jobs."""
    import trio

    import trio_jobqueue as jq

    storage = jq.MemoryStorage()
    rng = random.Random(1)
    started = 0
    done = trio.Event()

    async def handler(job: jq.Job[Any]) -> None:
        nonlocal started
        started += 1
        if started == jobs:
            done.set()

    async with storage:
        async with jq.open_queue(storage, name="cpu") as producer:
            first = storage.now() + 1.0
            for i in range(jobs):
                await producer.enqueue(f"j{i}", {"x": 1}, run_at=first + rng.uniform(0, window))
        cpu = time.process_time()
        async with jq.open_queue(storage, handler, name="cpu", concurrency=concurrency):
            await done.wait()
        return (time.process_time() - cpu) / jobs


def child(args: argparse.Namespace) -> None:
    import trio
    import trio.testing

    clock = trio.testing.MockClock(autojump_threshold=0)
    cpu = trio.run(measure, args.jobs, args.window, args.concurrency, clock=clock)
    print(f"{cpu * 1e6:.2f}")


def run_one(code: Path, args: argparse.Namespace) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, str(HERE), "child", "--jobs", str(args.jobs)]
    argv += ["--window", str(args.window), "--concurrency", str(args.concurrency)]
    out = subprocess.run(
        argv, env=env, check=True, capture_output=True, text=True, cwd=HERE.parent
    ).stdout
    return float(out.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", choices=["child"], help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--window", type=float, default=12.0, help="seconds run_at spreads over")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another version's checkout or export")
    args = parser.parse_args()
    if args.role == "child":
        child(args)
        return 0
    variants = {"this": REPO}
    if args.baseline is not None:
        variants["base"] = args.baseline.resolve()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    for name, code in variants.items():
        print(f"  {name}: trio_jobqueue from {code}")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {args.jobs:,} jobs over "
        f"{args.window:g} s (MockClock), concurrency {args.concurrency}; load before {load}"
    )
    results: dict[str, list[float]] = {name: [] for name in variants}
    ratios: list[float] = []
    names = list(variants)
    for rnd in range(args.rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        row = {name: run_one(variants[name], args) for name in order}
        for name, value in row.items():
            results[name].append(value)
        if "base" in row:
            ratios.append(row["this"] / row["base"])
        cells = ", ".join(f"{name} {row[name]:.1f} us/job" for name in order)
        print(f"round {rnd + 1}: {cells}; load {os.getloadavg()[0]:.2f}", flush=True)
    for name, values in results.items():
        print(f"{name}: median {statistics.median(values):.1f} us of CPU per job")
    if ratios:
        print(f"this / base: median {statistics.median(ratios):.3f} (same-round ratios)")
    print("load after " + "/".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
