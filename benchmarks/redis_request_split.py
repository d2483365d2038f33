"""Where the CPU of one Redis request/response goes: caller, worker and Redis.

    python benchmarks/redis_request_split.py [--callers 50] [--seconds 4] [--rounds 3]

Starts a private ``redis-server`` (no persistence) on a free port, a worker process
(``open_queue`` defaults, concurrency 100, a no-op handler) and a caller process whose
``--callers`` tasks each run ``enqueue_and_wait`` in a loop for ``--seconds`` (after a
warm-up of 50 requests). Prints per round the requests per second and the CPU (user +
system) per request of each process: the caller's and the worker's from
``/proc/<pid>/stat`` over the measured interval, Redis's from ``INFO cpu``, plus the
script calls per request (``INFO commandstats``); ``--commands`` also lists every Redis
command per request (calls and the server's microseconds, the commands scripts run
included).

Runs against whatever ``trio_jobqueue`` is importable: ``PYTHONPATH=/path/to/checkout``
measures another version (the child processes inherit it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from compare import redis_server

import trio_jobqueue as jq

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def noop(job: jq.Job[Any]) -> None:
    return None


async def run_worker(url: str) -> None:
    async with jq.open_queue(jq.RedisStorage(url), noop, name="split", concurrency=100):
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # until the parent says stop


async def run_caller(url: str, callers: int, seconds: float, worker_pid: int) -> None:
    async with jq.open_queue(jq.RedisStorage(url), None, name="split") as queue:
        run = os.getpid()  # fresh ids every round: a finished id would answer from its result
        for i in range(50):
            await queue.enqueue_and_wait(f"{run}-warm-{i}", None, timeout=10)
        done = 0
        stop = time.perf_counter() + seconds

        async def lane(k: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < stop:
                await queue.enqueue_and_wait(f"{run}-{k}-{i}", {"x": 1}, timeout=10)
                i += 1
                done += 1

        mine, theirs = process_cpu(os.getpid()), process_cpu(worker_pid)
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(callers):
                nursery.start_soon(lane, k)
        elapsed = time.perf_counter() - began
        mine, theirs = process_cpu(os.getpid()) - mine, process_cpu(worker_pid) - theirs
        print(json.dumps({"requests": done, "seconds": elapsed, "caller": mine, "worker": theirs}))


def redis_info(port: int, section: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", section], capture_output=True, text=True, check=True
    ).stdout


def redis_cpu(port: int) -> float:
    info = dict(line.split(":", 1) for line in redis_info(port, "cpu").splitlines() if ":" in line)
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def commandstats(port: int) -> dict[str, tuple[int, int]]:
    """Per command (scripts' own commands included): calls and microseconds so far."""
    stats = {}
    for line in redis_info(port, "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_") :].split(":", 1)
            fields = dict(item.split("=", 1) for item in rest.split(","))
            stats[name] = (int(fields["calls"]), int(fields["usec"]))
    return stats


def one_round(
    port: int, callers: int, seconds: float, show_commands: bool = False
) -> dict[str, float]:
    url = f"redis://127.0.0.1:{port}"
    me = [sys.executable, str(Path(__file__).resolve())]
    worker = subprocess.Popen(
        [*me, "--role", "worker", "--url", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert worker.stdout is not None and worker.stdin is not None
        if worker.stdout.readline().strip() != b"ready":
            raise SystemExit("the worker did not start")
        cpu, commands = redis_cpu(port), commandstats(port)
        caller = [*me, "--role", "caller", "--url", url, "--callers", str(callers)]
        out = subprocess.run(
            [*caller, "--seconds", str(seconds), "--worker-pid", str(worker.pid)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu, after = redis_cpu(port) - cpu, commandstats(port)
        worker.stdin.write(b"stop\n")
        worker.stdin.close()
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
    got = json.loads(out.strip().splitlines()[-1])
    n = got["requests"]
    used = {
        name: (calls - commands.get(name, (0, 0))[0], usec - commands.get(name, (0, 0))[1])
        for name, (calls, usec) in after.items()
    }
    if show_commands:
        for name, (calls, usec) in sorted(used.items(), key=lambda item: -item[1][1]):
            if calls:
                print(f"  {name:<20} {calls / (n + 50):6.2f} calls  {usec / (n + 50):6.1f} us")
    # Redis's figures include the warm-up's 50 requests (a fraction of a percent).
    return {
        "req/s": n / got["seconds"],
        "caller us": got["caller"] / n * 1e6,
        "worker us": got["worker"] / n * 1e6,
        "redis us": cpu / (n + 50) * 1e6,
        "scripts": used.get("fcall", (0, 0))[0] / (n + 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--commands",
        action="store_true",
        help="also print each round's Redis commands per request (calls, microseconds)",
    )
    parser.add_argument("--role", choices=["worker", "caller"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--worker-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "worker":
        trio.run(run_worker, args.url)
        return
    if args.role == "caller":
        trio.run(run_caller, args.url, args.callers, args.seconds, args.worker_pid)
        return
    print(f"load before: {os.getloadavg()[0]:.2f}; {args.callers} callers, {args.seconds:g} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as (port, _pid):
        for r in range(args.rounds):
            row = one_round(port, args.callers, args.seconds, args.commands)
            rows.append(row)
            print(f"round {r + 1}: " + "  ".join(f"{k} {v:,.1f}" for k, v in row.items()))
    print(
        "median:  "
        + "  ".join(f"{k} {statistics.median(r[k] for r in rows):,.1f}" for k in rows[0])
    )
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
