"""Scheduled jobs: how fast they are enqueued, and how late they start.

    python benchmarks/scheduled_jobs.py                   # Redis and Memory, 100,000 jobs over 60 s
    python benchmarks/scheduled_jobs.py --backends redis --jobs 20000 --window 20
    python benchmarks/scheduled_jobs.py --backends file   # FileStorage (fsync on), 10,000 jobs

For each backend (Redis on a private ``redis-server`` this script starts on a free loopback
port; File in a temporary directory, fsync on):

* **enqueue rate** of scheduled jobs, ``run_at = now + uniform(0, window)``: ``--rate-jobs``
  calls one after the other, then as many with ``--inflight`` (100) in flight, into a
  namespace that no worker serves;
* **lateness**: one worker (concurrency 100; Redis and File: in its own process, Memory: in
  this one) waits on an empty namespace; ``--jobs`` jobs are enqueued with 100 calls in
  flight, each with ``run_at = now + uniform(0, window)`` taken at the call, so every due
  time lies in the future when it is written. The handler's first line reads the storage's
  clock (``time.time()`` for Redis and File, whose clock is the server's or the host's;
  ``MemoryStorage.now()``, trio's clock in epoch seconds, for Memory), and lateness is that
  minus ``run_at``: p50/p95/p99/max, for all jobs and split into the jobs due while the
  enqueue calls were still running (the producer competes for the CPU) and the rest.
  Also counted: jobs started before their time, jobs never started, and extra runs (a
  handler run more than once for one id); all three must be 0.

First, the floor of the machine: bare trio timers at the same rate for ``--reference``
seconds (one task sleeping until each due time and starting a task per job; no storage).
Prints the load average before and after, the worker's and Redis's CPU per job over the
lateness run (and Redis's scripts and ``BLPOP`` calls per job), and PASS/FAIL lines for
the targets (p99 lateness <= 50 ms on Redis, <= 10 ms on Memory). Runs against whatever
``trio_jobqueue`` is importable (the worker process inherits ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio
from _compare_common import emit, read_command, run_parallel
from compare import (
    Proc,
    code_fingerprint,
    command_stats,
    git_commit,
    percentile,
    proc_cpu,
    redis_command,
    redis_server,
)

import trio_jobqueue as jq

HERE = Path(__file__).resolve().parent
PAYLOAD = {"x": 1}
TARGETS_MS = {"redis": 50.0, "memory": 10.0}
"""p99 lateness targets; File has none."""


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards unless the block failed (its logs)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        print(f"logs kept in {path}", file=sys.stderr)
        raise
    shutil.rmtree(path, ignore_errors=True)


def load_line(when: str) -> str:
    return f"load average (1/5/15 min) {when} " + "/".join(f"{x:.2f}" for x in os.getloadavg())


def clock_of(storage: jq.Storage) -> Callable[[], float]:
    """The clock ``run_at`` is read on: Memory's follows trio's clock from an offset
    taken once, which can drift from ``time.time()`` by a few microseconds a minute."""
    if isinstance(storage, jq.MemoryStorage):
        return storage.now
    return time.time


async def run_worker(
    storage: jq.Storage,
    name: str,
    concurrency: int,
    starts: list[tuple[str, float, int]],
    stop: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One worker whose handler records (id, storage clock, attempt) at its first line."""
    clock = clock_of(storage)
    record = starts.append

    async def handler(job: jq.Job[Any]) -> None:
        record((job.id, clock(), job.attempt))

    async with jq.open_queue(storage, handler, name=name, concurrency=concurrency):
        task_status.started()
        await stop.wait()


async def serve_worker_process(url: str, name: str, concurrency: int) -> None:
    """``worker`` role: the JSON-lines protocol of ``compare.Proc`` (ready, then the
    starts once told to stop)."""
    starts: list[tuple[str, float, int]] = []
    stop = trio.Event()
    async with jq.storage_from_url(url) as storage, trio.open_nursery() as nursery:
        await nursery.start(run_worker, storage, name, concurrency, starts, stop)
        emit(ready=True)
        await read_command()  # "stop" (or EOF)
        stop.set()
    emit(starts=starts)


async def enqueue_scheduled(
    queue: jq.Queue[Any, Any],
    clock: Callable[[], float],
    offsets: list[float],
    inflight: int,
    prefix: str,
    run_at: dict[str, float] | None = None,
) -> float:
    """Enqueue one job per offset, ``run_at = clock() + offset`` at the call; jobs/s."""
    enqueue = queue.enqueue

    async def one(i: int) -> None:
        job_id = f"{prefix}{i}"
        due = clock() + offsets[i]
        if run_at is not None:
            run_at[job_id] = due
        await enqueue(job_id, PAYLOAD, run_at=due)

    start = time.perf_counter()
    await run_parallel(len(offsets), inflight, one)
    return len(offsets) / (time.perf_counter() - start)


async def bare_trio_lateness(jobs: int, window: float, concurrency: int) -> list[float]:
    """The floor on this machine: no storage, one trio task sleeps until each due time
    (sorted up front, ``now + uniform(0, window)``) and starts a task per job (at most
    ``concurrency`` at once) whose first line reads ``time.time()``."""
    rng = random.Random(0)
    offset = time.time() - trio.current_time()
    dues = sorted(time.time() + 0.5 + rng.uniform(0, window) for _ in range(jobs))
    slots = trio.Semaphore(concurrency)
    late: list[float] = []

    async def job(due: float) -> None:
        late.append(time.time() - due)
        slots.release()

    async with trio.open_nursery() as nursery:
        for due in dues:
            await trio.sleep_until(due - offset)
            await slots.acquire()
            nursery.start_soon(job, due)
    return late


async def wait_completed(storage: jq.Storage, name: str, jobs: int, deadline: float) -> None:
    while (await storage.stats(name)).completed < jobs and time.time() < deadline:  # noqa: ASYNC110 - the worker makes the progress
        await trio.sleep(0.25)


def summarize(
    jobs: int,
    run_at: dict[str, float],
    starts: list[tuple[str, float, int]],
    enqueue_end: float,
) -> dict[str, Any]:
    runs = Counter(job_id for job_id, _, _ in starts)
    first: dict[str, float] = {}
    for job_id, at, _ in starts:
        first.setdefault(job_id, at)
    late = {job_id: at - run_at[job_id] for job_id, at in first.items()}
    during = [v for k, v in late.items() if run_at[k] <= enqueue_end]
    after = [v for k, v in late.items() if run_at[k] > enqueue_end]
    every = list(late.values())
    return {
        "started": len(first),
        "early": sum(v < 0 for v in every),
        "earliest_ms": min(every, default=0.0) * 1e3,
        "lost": jobs - len(first),
        "extra_runs": sum(n - 1 for n in runs.values()),
        "all": every,
        "during": during,
        "after": after,
    }


def fmt_lateness(values: list[float]) -> str:
    if not values:
        return "-"
    ms = [v * 1e3 for v in values]
    return (
        f"p50 {percentile(ms, 50):7.2f}  p95 {percentile(ms, 95):7.2f}  "
        f"p99 {percentile(ms, 99):7.2f}  max {max(ms):8.2f} ms  ({len(ms):,} jobs)"
    )


async def bench_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    jobs = args.file_jobs if backend == "file" else args.jobs
    rng = random.Random(args.seed)
    out: dict[str, Any] = {"backend": backend, "jobs": jobs}
    with private_redis(backend, workdir) as redis:
        if backend == "redis":
            url = f"redis://127.0.0.1:{redis[0]}/0"
        elif backend == "file":
            path = workdir / "file"
            path.mkdir(mode=0o700)
            url = f"file://{path}"
        else:
            url = "memory://"
        storage = jq.storage_from_url(url)
        async with storage:
            clock = clock_of(storage)
            # 1. Enqueue rates, no worker.
            async with jq.open_queue(storage, name="rate") as producer:
                count = min(jobs, args.rate_jobs)
                offsets = [rng.uniform(0, args.window) for _ in range(count)]
                out["enqueue_seq"] = await enqueue_scheduled(producer, clock, offsets, 1, "s")
                out["enqueue_100"] = await enqueue_scheduled(
                    producer, clock, offsets, args.inflight, "p"
                )
            print(
                f"  enqueue {count:,} scheduled jobs: sequential {out['enqueue_seq']:,.0f}/s, "
                f"{args.inflight} in flight {out['enqueue_100']:,.0f}/s",
                flush=True,
            )
            # 2. Lateness under one worker.
            starts: list[tuple[str, float, int]] = []
            run_at: dict[str, float] = {}
            offsets = [rng.uniform(0, args.window) for _ in range(jobs)]
            async with trio.open_nursery() as nursery:
                stop = trio.Event()
                worker: Proc | None = None
                if backend == "memory":
                    await nursery.start(run_worker, storage, "late", args.concurrency, starts, stop)
                else:
                    worker = start_worker_process(url, args.concurrency, workdir)
                try:
                    await trio.sleep(1.0)  # the worker is blocked waiting for work
                    cpu0 = worker.cpu() if worker else time.process_time()
                    redis_cpu0 = proc_cpu(redis[1]) if redis else 0.0
                    if redis:
                        redis_command(redis[0], "CONFIG", "RESETSTAT")
                    async with jq.open_queue(storage, name="late") as producer:
                        began = clock()
                        out["enqueue_during"] = await enqueue_scheduled(
                            producer, clock, offsets, args.inflight, "j", run_at
                        )
                        enqueue_end = clock()
                        await wait_completed(storage, "late", jobs, time.time() + args.window + 60)
                        await trio.sleep(1.0)  # time for an extra run to show
                    ended = clock()
                    cpu = (worker.cpu() if worker else time.process_time()) - cpu0
                    redis_cpu = (proc_cpu(redis[1]) if redis else 0.0) - redis_cpu0
                    commands = command_stats(redis[0]) if redis else {}
                finally:
                    stop.set()
                    if worker is not None:
                        got = await trio.to_thread.run_sync(stop_worker_process, worker)
                        starts.extend(tuple(s) for s in got)  # type: ignore[misc]
    out |= summarize(jobs, run_at, starts, enqueue_end)
    out["enqueue_seconds"] = enqueue_end - began
    out["run_seconds"] = ended - began
    out["worker_cpu_us"] = cpu / jobs * 1e6
    out["redis_cpu_us"] = redis_cpu / jobs * 1e6
    # Script calls per job besides the enqueues: claims, completions (several jobs per
    # complete_many call when they finish together), heartbeats, the reaper; BLPOP: the
    # claimer's waits for a wake-up.
    out["other_scripts"] = (commands.get("fcall", 0) - jobs) / jobs
    out["blpop"] = commands.get("blpop", 0) / jobs
    return out


def private_redis(backend: str, workdir: Path) -> Any:
    """A private redis-server, (port, pid), for the Redis backend; else ``None``."""
    if backend == "redis":
        return redis_server(workdir)
    return contextlib.nullcontext(None)


def start_worker_process(url: str, concurrency: int, workdir: Path) -> Proc:
    argv = [sys.executable, str(Path(__file__).resolve()), "worker", "--url", url]
    argv += ["--concurrency", str(concurrency)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(HERE)) if p)
    proc = Proc(argv, env=env, logdir=workdir, tag="worker")
    try:
        proc.expect("ready", 60)
    except BaseException:
        proc.kill()
        raise
    return proc


def stop_worker_process(proc: Proc) -> list[list[Any]]:
    try:
        proc.send(cmd="stop")
        starts: list[list[Any]] = proc.expect("starts", 120)["starts"]
        return starts
    finally:
        proc.kill()


def report(result: dict[str, Any], args: argparse.Namespace) -> list[tuple[bool, str]]:
    backend = result["backend"]
    print(
        f"  lateness, one worker at concurrency {args.concurrency} "
        f"({'in this process' if backend == 'memory' else 'in its own process'}); "
        f"enqueue with the worker running {result['enqueue_during']:,.0f}/s, "
        f"{result['enqueue_seconds']:.1f} s; run {result['run_seconds']:.1f} s"
    )
    print(f"    all jobs           {fmt_lateness(result['all'])}")
    print(f"    due during enqueue {fmt_lateness(result['during'])}")
    print(f"    due after enqueue  {fmt_lateness(result['after'])}")
    print(
        f"    started early {result['early']} (earliest {result['earliest_ms']:+.3f} ms), "
        f"never started {result['lost']}, extra runs {result['extra_runs']}"
    )
    cpu = f"    worker CPU {result['worker_cpu_us']:.0f} us/job"
    if backend == "redis":
        cpu += f", Redis CPU {result['redis_cpu_us']:.0f} us/job"
        cpu += (
            f"; scripts per job besides its enqueue {result['other_scripts']:.2f}, "
            f"BLPOP per job {result['blpop']:.2f}"
        )
    print(cpu + " (over the whole run, idle waits included)")
    checks = []
    p99 = percentile(result["all"], 99) * 1e3 if result["all"] else float("inf")
    if backend in TARGETS_MS:
        target = TARGETS_MS[backend]
        checks.append((p99 <= target, f"{backend}: lateness p99 {p99:.2f} ms <= {target:g} ms"))
    checks.append((result["early"] == 0, f"{backend}: {result['early']} jobs started early"))
    checks.append((result["lost"] == 0, f"{backend}: {result['lost']} jobs never started"))
    checks.append((result["extra_runs"] == 0, f"{backend}: {result['extra_runs']} extra runs"))
    return checks


async def main(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, commit {git_commit()}, "
        f"trio_jobqueue {Path(jq.__file__).parent} (fingerprint {code_fingerprint()}), "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    print(load_line("before"))
    checks: list[tuple[bool, str]] = []
    with scratch_dir("jq-scheduled-") as workdir:
        if args.reference > 0:
            count = max(1, round(args.jobs * args.reference / args.window))
            cpu = time.process_time()
            late = await bare_trio_lateness(count, args.reference, args.concurrency)
            cpu = time.process_time() - cpu
            print(
                f"bare trio timers, the same rate ({count:,} over {args.reference:g} s), "
                f"the floor on this machine:\n    {fmt_lateness(late)}; "
                f"CPU {cpu / count * 1e6:.0f} us/job",
                flush=True,
            )
        for backend in args.backends:
            jobs = args.file_jobs if backend == "file" else args.jobs
            print(
                f"{backend}: {jobs:,} jobs, run_at uniform over the next {args.window:g} s "
                f"(load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            result = await bench_backend(backend, args, workdir)
            checks += report(result, args)
    print(f"{load_line('after')} (includes this benchmark's own processes)")
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print("WARNING: the machine was not quiet before the run; re-run when it is")
    print("targets:")
    for ok, text in checks:
        print(f"  {'PASS' if ok else 'FAIL'} {text}")
    return 0 if all(ok for ok, _ in checks) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", choices=["worker"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--backends", default="redis,memory", help="of redis,memory,file")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs on Redis and Memory")
    parser.add_argument("--file-jobs", type=int, default=10_000, help="jobs on File")
    parser.add_argument("--window", type=float, default=60.0, help="seconds run_at spreads over")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--inflight", type=int, default=100, help="enqueue calls in flight")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reference", type=float, default=10.0,
        help="seconds of the bare trio reference at the same rate (0: skip)",
    )  # fmt: skip
    parser.add_argument(
        "--rate-jobs", type=int, default=20_000,
        help="jobs per enqueue-rate measurement (sequential, then in flight)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"redis", "memory", "file"}
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.role == "worker":
        trio.run(serve_worker_process, arguments.url, "late", arguments.concurrency)
    else:
        sys.exit(trio.run(main, arguments))
