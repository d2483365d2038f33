"""Operators see every failed attempt in the log of a ``trio-jobqueue worker`` process."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _proc_harness import WorkerPool

import trio_jobqueue as jq

pytestmark = pytest.mark.slow


async def test_worker_process_logs_failed_attempts_and_final_failure(tmp_path: Path) -> None:
    """A failing job shows one WARNING per retried attempt (id, attempt/max, error) and
    one ERROR with the traceback when it fails for good."""
    url = f"file://{tmp_path}/queue"
    with WorkerPool(tmp_path, url, "logs", ("--retry-delay", "0")) as pool:
        worker = pool.start()
        async with jq.open_queue(jq.storage_from_url(url), name="logs") as q:
            with pytest.raises(jq.JobFailedError), trio.fail_after(60):
                await q.enqueue_and_wait("doomed", {"fail": True}, max_attempts=2, timeout=50)
        worker.proc.terminate()
        await pool.wait(worker)
    log = worker.stderr()
    assert "WARNING trio_jobqueue" in log
    assert "job 'doomed' attempt 1/2 failed: ValueError: asked to fail; retrying" in log
    assert "ERROR trio_jobqueue" in log
    assert "job 'doomed' failed after attempt 2/2: ValueError: asked to fail" in log
    assert "Traceback (most recent call last)" in log
