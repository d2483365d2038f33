"""Instructions per drained no-op job on MemoryStorage, against the bare trio loop.

    python benchmarks/memory_drain_instructions.py [--small 500] [--large 2500]
        [--python /root/.pyenv/versions/3.11.7/bin/python]

Counts with ``valgrind --tool=callgrind`` (load-independent, unlike the wall clock on a
shared machine), each case in a fresh process at two sizes; the difference divided by
the difference of sizes is the cost of one more job, without start-up and imports:

* ``enqueue``: enqueue the jobs, then open and close a worker queue on another
  namespace (what ``drain`` does besides draining);
* ``drain``: enqueue the jobs, then drain them as ``memory_throughput.py`` does
  (concurrency 100, no reaper): ``drain - enqueue`` is one drained job;
* ``bare``: the bare trio loop of ``memory_throughput.py`` (per task).

Use the real interpreter (not a pyenv shim, which valgrind would count instead), and
``PYTHONPATH=.`` to count a checkout other than the installed one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(case: str, n: int) -> None:
    import trio

    import trio_jobqueue as jq

    sys.path.insert(0, str(HERE))
    from memory_throughput import bare_trio, enqueue_then_drain

    async def enqueue_only() -> None:
        storage = jq.MemoryStorage()
        async with jq.open_queue(storage, name="bench") as producer:
            for i in range(n):
                await producer.enqueue(f"job-{i}", {"i": i})

        async def handler(job: jq.Job[object]) -> None:
            return None

        async with jq.open_queue(storage, handler, name="other", concurrency=100, reaper=False):
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        if case == "bare":
            await bare_trio(n, 100)
        elif case == "enqueue":
            await enqueue_only()
        else:
            await enqueue_then_drain(n, 100)

    trio.run(main)


def _count(python: str, case: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                python, __file__, "--child", case, str(n),
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        text = Path(out).read_text()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    assert found, "no total in the callgrind output"
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=2500)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    per: dict[str, float] = {}
    for case in ("enqueue", "drain", "bare"):
        small = _count(args.python, case, args.small)
        large = _count(args.python, case, args.large)
        per[case] = (large - small) / (args.large - args.small)
    drained = per["drain"] - per["enqueue"]
    print(f"instructions per job (callgrind, {args.small} vs {args.large} jobs):")
    print(f"  enqueue            {per['enqueue']:>10,.0f}")
    print(f"  drained job        {drained:>10,.0f}")
    print(f"  bare trio task     {per['bare']:>10,.0f}")
    print(f"  bare / drained     {per['bare'] / drained:>10.2f}")


if __name__ == "__main__":
    main()
