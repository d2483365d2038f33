"""Starting, signalling and reaping ``trio-jobqueue worker`` processes in tests, and
watching them through the storage's worker registry (``Queue.workers()``, what ``stats``
reads).

Every child is killed and reaped by :meth:`WorkerPool.close` (call it in ``finally``, or
use ``with WorkerPool(...) as pool``); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import trio

import trio_jobqueue as jq
from trio_jobqueue._reaper import REAPER_LOCK

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def cli_env(runs: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), str(REPO), env.get("PYTHONPATH")) if p
    )
    env.pop("TRIO_JOBQUEUE_URL", None)
    env.pop("TRIO_JOBQUEUE_NAME", None)
    if runs is not None:
        env["JQ_TEST_RUNS"] = str(runs)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trio_jobqueue ARGS`` to completion (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "trio_jobqueue", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else cli_env(),
        cwd=TESTS,
    )


def spawn_cli(*args: str, stdout: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m trio_jobqueue ARGS`` with stdout to a file, stderr piped. The
    caller must kill and reap it in ``finally``."""
    with open(stdout, "wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "trio_jobqueue", *args],
            stdout=sink,
            stderr=subprocess.PIPE,
            env=cli_env(),
            cwd=TESTS,
        )


@attrs.define(eq=False)
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@attrs.define(eq=False)
class WorkerPool:
    """Worker processes of one queue, started through the CLI."""

    tmp: Path
    url: str
    name: str
    args: tuple[str, ...] = ()
    handler: str = "_proc_handlers:record"
    workers: list[Worker] = attrs.field(factory=list)
    runs: Path = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.runs = self.tmp / "runs"
        self.runs.mkdir(exist_ok=True)

    def start(self, *extra: str) -> Worker:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "trio_jobqueue", "worker", self.handler,
                    "--storage", self.url, "--name", self.name, *self.args, *extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=cli_env(self.runs),
                cwd=TESTS,
            )  # fmt: skip
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    async def wait(self, worker: Worker, timeout: float = 30.0) -> int:
        """Wait (bounded) for ``worker`` to exit; return its exit code."""
        try:
            return await trio.to_thread.run_sync(worker.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {worker.pid} did not exit within {timeout} s") from None

    def close(self) -> None:
        """SIGKILL (after SIGCONT) and reap every child still running."""
        for w in self.workers:
            if w.proc.poll() is None:
                try:
                    w.proc.send_signal(signal.SIGCONT)
                    w.proc.kill()
                except ProcessLookupError:
                    pass
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=10)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- execution records --------------------------------------------------------------

    def executions(self) -> list[tuple[str, int, int]]:
        """Every recorded execution as ``(job id, attempt, pid)``."""
        out: list[tuple[str, int, int]] = []
        for path in self.runs.glob("*.log"):
            pid = int(path.stem)
            for line in path.read_text().splitlines():
                job_id, _, attempt = line.rpartition(" ")
                if job_id:
                    out.append((job_id, int(attempt), pid))
        return out

    def runs_per_job(self) -> Counter[str]:
        return Counter(job_id for job_id, _, _ in self.executions())

    def pids_per_job(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = defaultdict(list)
        for job_id, _, pid in self.executions():
            found[job_id].append(pid)
        return found

    def all_stderr(self) -> str:
        return "\n".join(f"--- worker pid {w.pid}\n{w.stderr()}" for w in self.workers)


async def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll ``predicate()`` (sync, or async: a storage read) until true; fail with
    ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await trio.sleep(poll)


# -- the worker registry ----------------------------------------------------------------


async def live_ids(queue: jq.Queue[Any, Any]) -> set[str]:
    """Ids of the queue's registered workers (every process)."""
    return {info.id for info in await queue.workers()}


async def by_pid(queue: jq.Queue[Any, Any], pid: int) -> jq.WorkerInfo | None:
    """The registered worker of process ``pid``, if any."""
    for info in await queue.workers():
        if info.pid == pid:
            return info
    return None


@attrs.frozen
class Leader:
    """The registered worker holding the reaper lock, and its epoch."""

    info: jq.WorkerInfo
    epoch: int

    @property
    def pid(self) -> int:
        return self.info.pid

    @property
    def id(self) -> str:
        return self.info.id


async def leader(queue: jq.Queue[Any, Any]) -> Leader | None:
    """Who leads the queue's reapers now: the lock's holder, if it is a registered worker
    (a dead holder whose lock has not been taken yet leads no one)."""
    holder = await queue.storage.lock_holder(queue.name, REAPER_LOCK)
    if holder is None:
        return None
    for info in await queue.workers():
        if info.id == holder.owner:
            return Leader(info, holder.epoch)
    return None


async def leaders(queue: jq.Queue[Any, Any]) -> list[str]:
    """Ids of the registered workers that report leading (at most one, if all is well)."""
    return [info.id for info in await queue.workers() if info.is_reaper_leader]
