"""Ctrl-C (a real SIGINT) in a program running a queue: the KeyboardInterrupt reaches the
program's code, the queue shuts down gracefully, and no job is left stranded."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

import trio_jobqueue as jq
from trio_jobqueue.storage import StorageStats

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("_ctrl_c_child.py")


async def test_worker_and_handlers_run_protected_from_ctrl_c() -> None:
    """A terminal's KeyboardInterrupt is never raised inside the worker's bookkeeping or a
    handler (both run KI-protected), so it always reaches the program's own code and the
    graceful shutdown; a handler that raises it itself still stops the worker."""
    seen: list[bool] = []

    async def handler(job: jq.Job[int]) -> None:
        seen.append(trio.lowlevel.currently_ki_protected())

    async with jq.open_queue(jq.MemoryStorage(), handler) as q:
        await q.enqueue_and_wait("p", 1, timeout=10)
    assert seen == [True]


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("run", range(4))
def test_ctrl_c_during_a_busy_queue_strands_nothing(tmp_path: Path, run: int) -> None:
    """SIGINT at a random moment of a busy enqueue/run loop: the program exits through its
    own `except KeyboardInterrupt` within seconds, and every job it enqueued is queued or
    completed — none is left processing (attempts given back), none is lost."""
    path = tmp_path / "q"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
        time.sleep(random.Random(run).uniform(0.01, 0.3))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in out
    stats, states = trio.run(_read_back, path)
    print(f"run {run}: {sum(states.values())} jobs {dict(states)} stats={stats}")
    assert stats.processing == 0
    assert set(states) <= {"queued", "completed"}


async def _read_back(path: Path) -> tuple[StorageStats, Counter[str]]:
    """The queue's counts, and the state of every job the child enqueued."""
    async with jq.FileStorage(path) as storage:
        stats = await storage.stats("ctrl-c")
        async with jq.open_queue(storage, name="ctrl-c") as q:
            states: Counter[str] = Counter()
            n = 1
            while (status := await q.get_status(f"job-{n}")) is not None:
                states[status.state.value] += 1
                n += 1
    return stats, states
