"""File backend: what a compaction of a large namespace costs the other processes.

    python benchmarks/file_compaction.py [--jobs 100000] [--payload 1000] [--dir PATH]

Fills one namespace with ``--jobs`` queued jobs of ``--payload`` bytes (one journal, no
compaction yet), then starts a second process that opens the queue with a tiny
``compact_bytes`` and enqueues one job: that transaction switches generations and the
process builds and installs the snapshot of the whole namespace, then closes. Meanwhile
this process runs one transaction after another (an ``enqueue``, fsync on) and records
their latencies. Prints how long the other process took from its enqueue to its close
(the build), and the p50/p99/max latency of this process's transactions during that
window: a compaction that held the lock while it serialised the namespace would show up
as a max close to the build time.
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

import trio

from trio_jobqueue.storage.file import FileStorage

NS = "compaction"
REPO = str(Path(__file__).resolve().parent.parent)

COMPACTOR = textwrap.dedent(
    """
    import sys, time, trio
    from trio_jobqueue.storage.file import FileStorage

    async def main():
        storage = FileStorage(sys.argv[1], compact_bytes=1 << 40)
        async with storage:
            await storage.get_status("compaction", "nothing")  # load the namespace first
            print("loaded", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
            storage.compact_bytes = 1  # the next transaction compacts
            start = time.perf_counter()
            await storage.enqueue("compaction", "trigger", b"t", max_attempts=1, result_ttl=60.0)
            print(f"switched {time.perf_counter() - start:.6f}", flush=True)
        print(f"closed {time.perf_counter() - start:.6f}", flush=True)

    trio.run(main)
    """
)


def sizes(root: str, pattern: str) -> int:
    return sum(p.stat().st_size for p in Path(root).glob(pattern))


def spawn(script: Path, root: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(script), root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=REPO),
    )


async def fill(root: str, jobs: int, payload: int) -> None:
    storage = FileStorage(root, compact_bytes=1 << 40)

    async def produce(start: int, stop: int) -> None:
        for i in range(start, stop):
            data = os.urandom(payload)  # distinct objects: each is written
            await storage.enqueue(NS, f"job-{i}", data, max_attempts=3, result_ttl=600.0)

    async with storage:
        step = max(jobs // 50, 1)
        async with trio.open_nursery() as nursery:
            for start in range(0, jobs, step):
                nursery.start_soon(produce, start, min(start + step, jobs))


async def main(args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    base = args.dir or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=base) as root:
        start = time.perf_counter()
        await fill(root, args.jobs, args.payload)
        journal = sizes(root, "ns/*/journal.*")
        print(
            f"filled {args.jobs} jobs x {args.payload} B in {time.perf_counter() - start:.1f} s"
            f" (journal {journal / 1e6:.1f} MB)"
        )
        script = Path(root) / "compactor.py"
        script.write_text(COMPACTOR)
        async with FileStorage(root, compact_bytes=1 << 40) as storage:
            await storage.get_status(NS, "nothing")
            child = spawn(script, root)
            assert child.stdin is not None and child.stdout is not None
            stdout = child.stdout
            assert await trio.to_thread.run_sync(stdout.readline) == b"loaded\n"
            lines: list[str] = []
            latencies: list[float] = []

            async def read_child() -> None:
                while line := await trio.to_thread.run_sync(stdout.readline):
                    lines.append(line.decode().strip())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_child)
                child.stdin.write(b"go\n")
                child.stdin.flush()
                n = 0
                while not any(line.startswith("closed") for line in lines):
                    begin = time.perf_counter()
                    await storage.enqueue(NS, f"during-{n}", b"d", max_attempts=3, result_ttl=60.0)
                    latencies.append(time.perf_counter() - begin)
                    n += 1
            await trio.to_thread.run_sync(child.wait)
            fsyncs = storage.statistics().fsyncs if hasattr(storage, "statistics") else "?"
        size = sizes(root, "ns/*/snapshot")
    build = float(next(line for line in lines if line.startswith("closed")).split()[1])
    switch = float(next(line for line in lines if line.startswith("switched")).split()[1])
    print(f"other process: switch transaction {switch * 1e3:.1f} ms, build + install {build:.2f} s")
    print(f"snapshot written: {size / 1e6:.1f} MB")
    print(
        f"this process, {len(latencies)} transactions meanwhile: p50"
        f" {statistics.median(latencies) * 1e3:.2f} ms, p99"
        f" {sorted(latencies)[int(0.99 * len(latencies))] * 1e3:.2f} ms, max"
        f" {max(latencies) * 1e3:.2f} ms ({fsyncs} fsyncs)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--payload", type=int, default=1000)
    parser.add_argument("--dir", default=None, help="where to put the queue (target disk)")
    trio.run(main, parser.parse_args())
