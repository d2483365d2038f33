"""File backend throughput: enqueue, drain and request/response latency, fsync on and off.

    python benchmarks/file_throughput.py [--jobs 5000] [--concurrency 100] [--rounds 3]
                                         [--dir /path/on/the/target/disk] [--processes 2]
                                         [--only enqueue,drain,processes,rr,cross]
                                         [--fsync on|off|both]

For each fsync setting prints: enqueue jobs/s (one sequential producer, and 50 concurrent
producers whose calls share transactions), drain jobs/s through ``open_queue`` (one worker
process with ``--concurrency``, and ``--processes`` worker processes), and p50/p99
``enqueue_and_wait`` latency, in one process and with the handler in another process
(a cross-process wake-up each way). Also prints the raw cost of one ``write`` + ``fsync`` on the
directory's filesystem, the number that decides the design (group commit, batched claims).
Medians over ``--rounds``, with the 1-minute load average before and after, and the
targets (fsync on: drain at concurrency 100 >= 5,000 jobs/s; cross-process
``enqueue_and_wait`` p50 <= 2 ms) as PASS/FAIL lines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import trio

import trio_jobqueue as jq
from trio_jobqueue.storage.file import FileStorage

REPO = str(Path(__file__).resolve().parent.parent)

WORKER = textwrap.dedent(
    """
    import sys, trio
    import trio_jobqueue as jq
    from trio_jobqueue.storage.file import FileStorage

    root, fsync, concurrency = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    ran = 0

    async def counting(job):
        global ran
        ran += 1

    async def report():
        # The handler calls so far, every 2 ms when it changed: the parent sums the
        # workers' counts (reading the journal to count would make it a third process
        # competing for the CPUs and the lock).
        told = 0
        while True:
            await trio.sleep(0.002)
            if ran != told:
                told = ran
                print(told, flush=True)

    async def main():
        async with FileStorage(root, fsync=fsync) as storage:
            # Load the mirror before "go", as the in-process drain does: a worker
            # process reads the journal once when it starts, not per job.
            await storage.stats("bench")
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
            async with jq.open_queue(storage, counting, name="bench",
                                     concurrency=concurrency, reaper=False):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(report)
                    await trio.to_thread.run_sync(sys.stdin.readline)  # "stop"
                    nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


def fsync_cost(directory: str, n: int = 500) -> float:
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 300)
            os.fdatasync(fd)
        return (time.perf_counter() - start) / n
    finally:
        os.close(fd)
        os.unlink(path)


async def enqueue_rates(root: str, n: int, fsync: bool) -> tuple[float, float]:
    async with jq.open_queue(FileStorage(root, fsync=fsync), name="bench") as producer:
        start = time.perf_counter()
        for i in range(n):
            await producer.enqueue(f"seq-{i}", {"i": i})
        sequential = n / (time.perf_counter() - start)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for p in range(50):
                nursery.start_soon(_produce, producer, p, n // 50)
        concurrent = (n // 50 * 50) / (time.perf_counter() - start)
    return sequential, concurrent


async def _produce(producer: jq.Queue[Any, Any], p: int, count: int) -> None:
    for i in range(count):
        await producer.enqueue(f"con-{p}-{i}", {"i": i})


async def drain_in_process(root: str, fsync: bool, concurrency: int) -> float:
    storage = FileStorage(root, fsync=fsync)
    async with storage:
        total = (await storage.stats("bench")).queued
        done = trio.Event()
        remaining = total

        async def counting(job: jq.Job[Any]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                done.set()

        start = time.perf_counter()
        async with jq.open_queue(
            storage, counting, name="bench", concurrency=concurrency, reaper=False
        ):
            await done.wait()
            return total / (time.perf_counter() - start)


async def drain_processes(root: str, fsync: bool, concurrency: int, processes: int) -> float:
    """Jobs/s of ``processes`` worker processes, from "go" to the last handler call: each
    worker reports its own count of handler calls (this process reads nothing from the
    storage while they run)."""
    script = Path(root) / "worker.py"
    script.write_text(WORKER)
    async with FileStorage(root, fsync=fsync) as storage:
        total = (await storage.stats("bench")).queued
    procs = [_spawn(script, root, fsync, concurrency) for _ in range(processes)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            await trio.to_thread.run_sync(proc.stdout.readline)
        counts = [0] * processes
        finished = trio.Event()
        end = 0.0

        async def follow(index: int, proc: subprocess.Popen[bytes]) -> None:
            nonlocal end
            assert proc.stdout is not None
            while line := await trio.to_thread.run_sync(proc.stdout.readline):
                counts[index] = int(line)
                if sum(counts) >= total and not finished.is_set():
                    end = time.perf_counter()
                    finished.set()
            if not finished.is_set():
                raise RuntimeError("a worker process ended before the drain did")

        start = time.perf_counter()
        for proc in procs:
            _send(proc, b"go\n")
        async with trio.open_nursery() as nursery:
            for index, proc in enumerate(procs):
                nursery.start_soon(follow, index, proc)
            await finished.wait()
            for proc in procs:
                _send(proc, b"stop\n")  # each worker ends, its stdout closes
        return total / (end - start)
    finally:
        for proc in procs:
            if proc.poll() is None:
                _send(proc, b"stop\n")
        for proc in procs:
            await trio.to_thread.run_sync(proc.wait)


def _spawn(script: Path, root: str, fsync: bool, concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(script), root, "1" if fsync else "0", str(concurrency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=REPO),
    )


def _send(proc: subprocess.Popen[bytes], line: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line)
    proc.stdin.flush()


async def request_response(root: str, fsync: bool, n: int) -> list[float]:
    latencies: list[float] = []
    storage = FileStorage(root, fsync=fsync)

    async def noop(job: jq.Job[Any]) -> None:
        return None

    async with jq.open_queue(storage, noop, name="rr", concurrency=10) as queue:
        for i in range(n):
            start = time.perf_counter()
            await queue.enqueue_and_wait(f"rr-{i}", i, timeout=10)
            latencies.append(time.perf_counter() - start)
    return latencies


async def request_response_cross_process(root: str, fsync: bool, n: int) -> list[float]:
    """enqueue_and_wait from this process, handled by a worker in another process."""
    script = Path(root) / "worker.py"
    script.write_text(WORKER)
    latencies: list[float] = []
    async with jq.open_queue(FileStorage(root, fsync=fsync), name="bench") as queue:
        proc = _spawn(script, root, fsync, 10)
        try:
            assert proc.stdout is not None
            await trio.to_thread.run_sync(proc.stdout.readline)
            _send(proc, b"go\n")
            await queue.enqueue_and_wait("warm-up", 0, timeout=30)
            for i in range(n):
                start = time.perf_counter()
                await queue.enqueue_and_wait(f"xp-{i}", i, timeout=10)
                latencies.append(time.perf_counter() - start)
        finally:
            _send(proc, b"stop\n")
            await trio.to_thread.run_sync(proc.wait)
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def one_round(base: str, args: argparse.Namespace, fsync: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    only = set(args.only.split(","))
    if only & {"enqueue", "drain"}:
        with tempfile.TemporaryDirectory(dir=base) as root:
            seq, con = await enqueue_rates(root, args.jobs, fsync)
            if "enqueue" in only:
                out["enqueue sequential"] = seq
                out["enqueue 50 producers"] = con
            if "drain" in only:
                out["drain 1 process"] = await drain_in_process(root, fsync, args.concurrency)
    if "processes" in only:
        with tempfile.TemporaryDirectory(dir=base) as root:
            await enqueue_rates(root, args.jobs, fsync)
            out[f"drain {args.processes} processes"] = await drain_processes(
                root, fsync, args.concurrency, args.processes
            )
    if "rr" in only:
        with tempfile.TemporaryDirectory(dir=base) as root:
            lat = await request_response(root, fsync, max(args.jobs // 20, 50))
            out["enqueue_and_wait p50 ms"] = percentile(lat, 50) * 1000
            out["enqueue_and_wait p99 ms"] = percentile(lat, 99) * 1000
    if "cross" in only:
        with tempfile.TemporaryDirectory(dir=base) as root:
            lat = await request_response_cross_process(root, fsync, max(args.jobs // 20, 50))
            out["cross-process e_a_w p50 ms"] = percentile(lat, 50) * 1000
            out["cross-process e_a_w p99 ms"] = percentile(lat, 99) * 1000
    return out


TARGETS = {
    "drain 1 process": (">=", 5000.0),
    "cross-process e_a_w p50 ms": ("<=", 2.0),
}
"""With fsync on."""


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min), {os.cpu_count()} CPUs"


async def main(args: argparse.Namespace) -> None:
    base = args.dir or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    print(f"before: {load()}")
    print(f"directory {base}: write+fdatasync {fsync_cost(base) * 1e3:.3f} ms")
    print(f"jobs={args.jobs} concurrency={args.concurrency} rounds={args.rounds}")
    verdicts = []
    settings = {"on": (True,), "off": (False,), "both": (True, False)}[args.fsync]
    for fsync in settings:
        rounds = [await one_round(base, args, fsync) for _ in range(args.rounds)]
        print(f"\nfsync={'on' if fsync else 'off'}")
        for key in rounds[0]:
            value = statistics.median(r[key] for r in rounds)
            unit = "" if key.endswith("ms") else " jobs/s"
            digits = 2 if key.endswith("ms") else 1
            print(f"  {key:28s} {value:10.{digits}f}{unit}")
            if fsync and key in TARGETS:
                op, target = TARGETS[key]
                ok = value >= target if op == ">=" else value <= target
                verdicts.append(f"{'PASS' if ok else 'FAIL'} {key} {value:.2f} {op} {target:g}")
    print(f"\nafter: {load()}")
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to put the queues (target disk)")
    parser.add_argument(
        "--only",
        default="enqueue,drain,processes,rr,cross",
        help="comma-separated workloads: enqueue, drain, processes, rr, cross",
    )
    parser.add_argument("--fsync", choices=["on", "off", "both"], default="both")
    trio.run(main, parser.parse_args())
