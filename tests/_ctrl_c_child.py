"""Child of tests/test_ctrl_c.py: a busy queue on a File storage, until Ctrl-C.

Enqueues 5,000 jobs, prints "running", then sleeps while the worker (concurrency 20)
runs them: a Ctrl-C then arrives while the worker's own code is what runs.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import trio

import trio_jobqueue as jq


async def handler(job: jq.Job[Any]) -> int:
    await trio.lowlevel.checkpoint()
    return int(job.payload)


async def main(path: str) -> None:
    storage = jq.FileStorage(path, fsync=False)
    async with jq.open_queue(storage, handler, name="ctrl-c", concurrency=20) as q:
        for n in range(1, 5_001):
            await q.enqueue(f"job-{n}", n)
        print("running", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        trio.run(main, sys.argv[1])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
