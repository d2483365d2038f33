"""FileStorage's CPU per drained job: instructions counted by callgrind, per thread.

    python benchmarks/file_cpu.py [--jobs 2000] [--concurrency 100] [--processes 1]

Enqueues ``--jobs`` no-op jobs (``enqueue_many``, fsync on), then drains them at
``--concurrency`` through ``open_queue`` in ``--processes`` worker processes, each run
under ``valgrind --tool=callgrind`` (the real interpreter, ``sys.executable`` resolved
through pyenv's shim if needed). Each worker zeroes its counters once its storage is open
and its mirror loaded, and dumps them when the queue is drained, so the figures are the
drain alone: instructions per drained job, per process and thread (the trio thread, the
transaction threads), summed over the processes. Instruction counts do not depend on the
load of the machine; wall-clock figures under valgrind mean nothing.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)

WORKER = textwrap.dedent(
    """
    import os, subprocess, sys, trio
    import trio_jobqueue as jq
    from trio_jobqueue.storage.file import FileStorage

    root, total, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ran = 0

    async def noop(job):
        global ran
        ran += 1

    def control(flag):
        subprocess.run(["callgrind_control", flag, str(os.getpid())], check=True,
                       capture_output=True)

    async def main():
        async with FileStorage(root) as storage:
            await storage.stats("bench")  # the mirror is loaded
            while not os.path.exists(os.path.join(root, "go")):
                await trio.sleep(0.01)
            control("-z")
            async with jq.open_queue(storage, noop, name="bench",
                                     concurrency=concurrency, reaper=False):
                while True:
                    await trio.sleep(0.01)
                    if (await storage.stats("bench")).completed >= total:
                        break
            control("-d")
            print(ran, flush=True)

    trio.run(main)
    """
)


def interpreter() -> str:
    """The real python binary (valgrind cannot follow pyenv's shell shim)."""
    try:
        out = subprocess.run(
            ["pyenv", "which", "python"], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.path.realpath(sys.executable)


def enqueue(root: str, jobs: int) -> None:
    import trio

    import trio_jobqueue as jq
    from trio_jobqueue.storage.file import FileStorage

    async def main() -> None:
        async with jq.open_queue(FileStorage(root), name="bench") as producer:
            for start in range(0, jobs, 250):
                end = min(jobs, start + 250)
                await producer.enqueue_many([(f"j{i}", {"i": i}) for i in range(start, end)])

    trio.run(main)


def totals(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jq-file-cpu-") as root:
        enqueue(root, args.jobs)
        script = Path(root) / "worker.py"
        script.write_text(WORKER)
        env = {**os.environ, "PYTHONPATH": REPO}
        procs = [
            subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--separate-threads=yes",
                    f"--callgrind-out-file={root}/cg.{index}.%p",
                    interpreter(),
                    str(script),
                    root,
                    str(args.jobs),
                    str(args.concurrency),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for index in range(args.processes)
        ]
        time.sleep(5.0 * args.processes)  # valgrind's start-up and the imports
        Path(root, "go").touch()
        ran = [int(proc.communicate()[0].split()[-1]) for proc in procs]
        grand = 0
        print(f"jobs={args.jobs} concurrency={args.concurrency} processes={args.processes}")
        for index in range(args.processes):
            # The dump of callgrind_control -d: <file>.1-<thread>
            for path in sorted(glob.glob(f"{root}/cg.{index}.*.1-*")):
                count = totals(path)
                grand += count
                thread = path.rsplit("-", 1)[1]
                print(
                    f"  process {index} ({ran[index]} jobs) thread {thread}: "
                    f"{count / args.jobs:,.0f} instructions per drained job"
                )
        print(f"total: {grand / args.jobs:,.0f} instructions per drained job")


if __name__ == "__main__":
    main()
