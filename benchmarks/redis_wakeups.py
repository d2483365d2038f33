"""Wake-ups on Redis: what one enqueue costs with K idle worker processes.

    python benchmarks/redis_wakeups.py [--workers 1,8,32] [--jobs 200]

For each K it starts a private ``redis-server`` (no persistence) on a free port and K
``trio-jobqueue worker`` processes (concurrency 1, the CLI's defaults otherwise) on one
queue, waits until all K are idle (blocked waiting for work), then enqueues ``--jobs``
jobs one at a time: each enqueue waits for the job's outcome before the next one. It
does that twice:

* a **measured** pass: enqueue->start latency (from just before the enqueue call to the
  handler's first line, wall clock, same machine), Redis CPU per job (``INFO cpu``
  user + sys deltas over the pass, divided by the jobs) and the commands Redis ran per
  job (``INFO commandstats`` deltas: ``fcall`` counts every script, ``blpop`` the
  wake-up waits);
* a **counted** pass with a ``MONITOR`` connection that counts the ``FCALL`` calls of
  the claim script by its SHA-1 (claims per job). ``MONITOR`` slows Redis down, so this
  pass is not timed. ``commandstats`` cannot tell scripts apart: the workers' reapers and
  heartbeats run scripts too.

Runs against whatever ``trio_jobqueue`` is importable: ``PYTHONPATH=/path/to/checkout``
measures another version (the workers inherit it), e.g. the commit before the wake-one
change, where every idle process runs a claim for every enqueue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from compare import redis_server

HERE = Path(__file__).resolve().parent


async def started_at(job: Any) -> float:
    """The workers' handler: the wall-clock time at which it started."""
    return time.time()


def start_workers(url: str, name: str, count: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "trio_jobqueue", "worker", "redis_wakeups:started_at"]
    command += ["--storage", url, "--name", name]
    procs = []
    for n in range(count):
        with open(logs / f"worker-{n}.log", "wb") as err:
            quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
            procs.append(subprocess.Popen(command, stderr=err, env=env, **quiet))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def info(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value
    return out


def calls(stats: dict[str, str], command: str) -> int:
    field = stats.get(f"cmdstat_{command}")
    if field is None:
        return 0
    return int(field.split("calls=", 1)[1].split(",", 1)[0])


async def idle_claimers(storage: Any, ns: str) -> int:
    """Worker processes blocked waiting for work: BLPOP on the wake list (this
    version), or subscribers of the wake channel (the broadcast of earlier versions)."""
    keys = storage.keys(ns)
    blocked = 0
    clients = (await storage.server_command("CLIENT", "LIST")).decode()
    for line in clients.splitlines():
        if " cmd=blpop " in f" {line} " and " flags=b " in f" {line} ":
            blocked += 1
    old = getattr(keys, "wake_channel", None)
    if old is not None:
        reply = await storage.server_command("PUBSUB", "NUMSUB", old)
        blocked = max(blocked, int(reply[1]))
    return blocked


async def count_claims(port: int, function: str, stop: trio.Event, out: list[int]) -> None:
    """Count ``FCALL <function>`` in a MONITOR stream until ``stop``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    needle = f'"FCALL" "{function}"'.upper().encode()
    async with stream:
        await stream.send_all(b"MONITOR\r\n")
        buffer = b""
        with trio.move_on_at(float("inf")) as scope:

            async def stopper() -> None:
                await stop.wait()
                await trio.sleep(0.2)  # the last commands' lines
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stopper)
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    out[0] += sum(needle in line.upper() for line in lines)


async def run_jobs(storage: Any, ns: str, jobs: int, tag: str) -> list[float]:
    delays = []
    for n in range(jobs):
        job_id = f"{tag}-{n}"
        async with storage.watch_job(ns, job_id) as watch:
            t0 = time.time()
            await storage.enqueue(ns, job_id, b"null", max_attempts=1, result_ttl=600.0)
            while True:
                record = await watch.wait()
                if record is not None and record.result is not None:
                    break
                status = await storage.get_status(ns, job_id)
                if status is not None and status.result is not None:
                    record = status
                    break
        delays.append(json.loads(record.result) - t0)
    return delays


async def bench(k: int, jobs: int, workdir: str) -> dict[str, float]:
    from trio_jobqueue.storage._redis_common import script
    from trio_jobqueue.storage.redis import RedisStorage

    server = contextlib.ExitStack()
    port, _ = server.enter_context(redis_server(Path(workdir)))
    url = f"redis://127.0.0.1:{port}/0"
    ns = f"wake-{k}"
    logs = Path(workdir)
    procs = start_workers(url, ns, k, logs)
    try:
        async with RedisStorage(url) as storage:
            deadline = time.monotonic() + 60
            while await idle_claimers(storage, ns) < k:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"the {k} workers did not all become idle; see {logs}")
                await trio.sleep(0.1)
            await trio.sleep(0.5)
            before = info(await storage.server_command("INFO", "all"))
            delays = await run_jobs(storage, ns, jobs, "m")
            after = info(await storage.server_command("INFO", "all"))
            cpu = sum(float(after[f]) - float(before[f]) for f in ("used_cpu_user", "used_cpu_sys"))
            fcall = calls(after, "fcall") - calls(before, "fcall")
            blpop = calls(after, "blpop") - calls(before, "blpop")
            # The counted pass.
            counted = [0]
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(count_claims, port, script("claim").function, stop, counted)
                await trio.sleep(0.3)
                await run_jobs(storage, ns, jobs, "c")
                stop.set()
    finally:
        stop_workers(procs)
        server.close()
    delays.sort()
    return {
        "claims_per_job": counted[0] / jobs,
        "fcall_per_job": fcall / jobs,
        "blpop_per_job": blpop / jobs,
        "redis_cpu_us_per_job": cpu / jobs * 1e6,
        "p50_ms": statistics.median(delays) * 1e3,
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1e3,
        "max_ms": delays[-1] * 1e3,
    }


async def main(args: argparse.Namespace) -> None:
    import trio_jobqueue

    load = os.getloadavg()
    print(
        f"trio_jobqueue from {Path(trio_jobqueue.__file__).parent}; load average"
        f" {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs"
    )
    print(
        f"{'K':>3}  {'claims/job':>10}  {'fcall/job':>11}  {'blpop/job':>9}"
        f"  {'Redis CPU/job':>13}  {'start p50':>9}  {'p99':>8}  {'max':>8}"
    )
    for k in args.workers:
        workdir = tempfile.mkdtemp(prefix="jq-wake-")
        try:
            r = await bench(k, args.jobs, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(
            f"{k:>3}  {r['claims_per_job']:>10.2f}  {r['fcall_per_job']:>11.2f}"
            f"  {r['blpop_per_job']:>9.2f}  {r['redis_cpu_us_per_job']:>10.0f} us"
            f"  {r['p50_ms']:>6.2f} ms  {r['p99_ms']:>5.2f} ms  {r['max_ms']:>5.2f} ms"
        )
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 8, 32],
        help="comma-separated numbers of idle worker processes (default: 1,8,32)",
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs per pass (default: 200)")
    trio.run(main, parser.parse_args())
