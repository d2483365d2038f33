"""What it costs a FileStorage process to follow another process's drain: the replay of
the journal frames another process wrote (its claims and completions) into this
process's mirror, per drained job, and the decoding of those frames alone.

    python benchmarks/file_replay.py [--jobs 5000] [--rounds 5]

Enqueues ``--jobs`` no-op jobs (``enqueue_many``, fsync off) and drains them at
concurrency 100 with one storage object (no compaction), then replays the frames of the
drain onto a copy of the state as it was before the drain (what a second process's
mirror does when it catches up), timing ``apply_entry`` over the frames and, separately,
``iter_frames`` over the bytes. Prints the medians over ``--rounds`` replays, in
microseconds per drained job. Single-threaded CPU work: the figures vary with the machine more
than with its load. ``PYTHONPATH=/path/to/checkout`` measures another version.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import trio_jobqueue as jq
from trio_jobqueue.storage import _file_io as fio
from trio_jobqueue.storage import _state as fst
from trio_jobqueue.storage.file import FileStorage


async def enqueue(root: str, jobs: int) -> None:
    storage = FileStorage(root, fsync=False, compact_bytes=1 << 40)
    async with jq.open_queue(storage, name="bench") as producer:
        await producer.enqueue_many([(f"j{i}", {"i": i}) for i in range(jobs)])


async def drain(root: str, jobs: int) -> None:
    storage = FileStorage(root, fsync=False, compact_bytes=1 << 40)
    done = trio.Event()
    left = jobs

    async def handler(job: jq.Job[Any]) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    async with (
        storage,
        jq.open_queue(storage, handler, name="bench", concurrency=100, reaper=False),
    ):
        await done.wait()


def _journal(root: str) -> str:
    ns = os.path.join(root, fio.NAMESPACES)
    (name,) = os.listdir(ns)
    directory = os.path.join(ns, name)
    journals = sorted(n for n in os.listdir(directory) if n.startswith(fio.JOURNAL_PREFIX))
    return os.path.join(directory, journals[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        trio.run(enqueue, root, args.jobs)
        mark = os.path.getsize(_journal(root))  # where the drain's frames start
        trio.run(drain, root, args.jobs)
        data = Path(_journal(root)).read_bytes()
    frames = [item for item in fio.iter_frames(data, 0) if isinstance(item, fio.Frame)]
    before = fst.NsState()
    for frame in frames:
        if frame.start < mark:
            before.apply_entry(frame.entry, frame.blobs)
    drained = [frame for frame in frames if frame.start >= mark]
    image = pickle.dumps(before)
    applies, decodes = [], []
    for _ in range(args.rounds):
        state = pickle.loads(image)
        start = time.perf_counter()
        for frame in drained:
            state.apply_entry(frame.entry, frame.blobs)
        applies.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _item in fio.iter_frames(data[mark:], mark):
            pass
        decodes.append(time.perf_counter() - start)
    per_job = 1e6 / args.jobs
    print(f"{args.jobs} jobs drained: {len(drained)} frames, {len(data) - mark:,} bytes")
    print(f"  apply_entry   {statistics.median(applies) * per_job:6.1f} us per drained job")
    print(f"  iter_frames   {statistics.median(decodes) * per_job:6.1f} us per drained job")


if __name__ == "__main__":
    main()
