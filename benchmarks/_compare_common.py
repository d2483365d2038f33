"""The side of ``compare.py`` that runs inside each system's worker and client processes.

Standard library and anyio only: the peers' scripts import this module from the peers'
virtualenv, trio-jobqueue's from the project's environment. An adapter module
(``_compare_<system>.py``) provides a :class:`System` and calls :func:`main`; this module
speaks the line protocol with the orchestrator and does all the timing, so every system is
timed by the same code.

Protocol (one JSON object per line; the orchestrator writes commands to stdin):

worker process (``<script> worker --url URL --queue Q --concurrency C``)
    -> ``{"ready": true}`` once connected (nothing is consumed yet)
    <- ``{"cmd": "go", "jobs": N}``: start consuming; ``N = 0`` runs until ``stop``
    -> ``{"done": seconds}`` when the handler has run N times (from ``go``)
    <- ``{"cmd": "stop"}``: shut down gracefully, then ``{"stopped": true}`` and exit

client process (``<script> client --url URL``)
    -> ``{"ready": true}``
    <- ``{"cmd": "enqueue", "queue": Q, "jobs": N, "inflight": K, "prefix": P}``
    -> ``{"seconds": s}``
    <- ``{"cmd": "request", "queue": Q, "requests": N, "callers": K, "budget": s, ...}``
    -> ``{"latencies": [...], "seconds": s, "errors": e}`` (latencies in seconds, from before
       the enqueue call to the result in hand; stops early when ``budget`` runs out)
    <- ``{"cmd": "exit"}``

    <- ``{"cmd": "drain", "queue": Q, "jobs": N, "concurrency": C}`` (single-process
       backends: the worker runs in the client's process)
    -> ``{"done": seconds, "cpu": process CPU seconds during the drain}``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

Handler = Callable[[], None]


class System:
    """What an adapter implements. Every method is called from the driver's event loop."""

    backend = "asyncio"
    """anyio backend the process runs on: ``"asyncio"`` or ``"trio"``."""

    async def connect(self, url: str) -> None:
        """Open whatever the client or worker needs before it is timed."""

    async def close(self) -> None:
        """Release connections."""

    async def prepare_worker(self, queue: str, concurrency: int, on_job: Handler) -> None:
        """Build (not start) a worker whose no-op handler calls ``on_job()``."""
        raise NotImplementedError

    async def run_worker(self, stop: anyio.Event) -> None:
        """Consume until ``stop`` is set, then shut down gracefully and return."""
        raise NotImplementedError

    async def prepare_queue(self, queue: str, local_worker: int = 0) -> None:
        """Client side: get ready to enqueue into ``queue`` (untimed). ``local_worker > 0``
        (single-process backends only) also runs a worker of that concurrency here."""

    async def enqueue(self, queue: str, job_id: str) -> None:
        """Enqueue one no-op job with payload ``{"i": n}``-like data under ``job_id``."""
        raise NotImplementedError

    async def request(self, queue: str, job_id: str, timeout: float) -> Any:
        """Enqueue one job and return its result (request/response)."""
        raise NotImplementedError


def emit(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def read_command() -> dict[str, Any]:
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    if not line:
        return {"cmd": "exit"}
    command: dict[str, Any] = json.loads(line)
    return command


def cpu_seconds() -> float:
    """User + system CPU of this whole process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- worker ------------------------------------------------------------------------------


async def serve_worker(system: System, url: str, queue: str, concurrency: int) -> None:
    count = 0
    target = 0
    reached = anyio.Event()

    def on_job() -> None:
        nonlocal count
        count += 1
        if count == target:
            reached.set()

    await system.connect(url)
    await system.prepare_worker(queue, concurrency, on_job)
    emit(ready=True)
    command = await read_command()
    if command["cmd"] != "go":
        await system.close()
        return
    target = int(command["jobs"])
    stop = anyio.Event()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(system.run_worker, stop)
        if target:
            await reached.wait()
            emit(done=time.perf_counter() - start, count=count)
        await read_command()  # "stop" (or EOF: the orchestrator is gone)
        stop.set()
    # The orchestrator bounds the graceful shutdown with its own timeout.
    await system.close()
    emit(stopped=True, count=count)


# -- client ------------------------------------------------------------------------------


async def run_parallel(n: int, inflight: int, one: Callable[[int], Awaitable[None]]) -> None:
    """Run ``one(i)`` for i in range(n) with at most ``inflight`` calls at once."""
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            await one(i)

    if inflight <= 1:
        for i in range(n):
            await one(i)
        return
    async with anyio.create_task_group() as tg:
        for _ in range(min(inflight, n)):
            tg.start_soon(lane)


async def do_enqueue(system: System, command: dict[str, Any]) -> None:
    queue, prefix = command["queue"], command["prefix"]
    await system.prepare_queue(queue)
    enqueue = system.enqueue

    async def one(i: int) -> None:
        await enqueue(queue, f"{prefix}{i}")

    start = time.perf_counter()
    await run_parallel(int(command["jobs"]), int(command["inflight"]), one)
    emit(seconds=time.perf_counter() - start)


async def do_request(system: System, command: dict[str, Any]) -> None:
    queue, prefix = command["queue"], command["prefix"]
    n, callers = int(command["requests"]), int(command["callers"])
    timeout = float(command.get("timeout", 10.0))
    await system.prepare_queue(queue, int(command.get("local_worker", 0)))
    # Warm up (connections, subscriptions, script caches) outside the measurement.
    for i in range(min(callers, 20)):
        with contextlib.suppress(Exception):  # a peer's missed wake-up is not fatal here
            await system.request(queue, f"{prefix}warm-{i}", timeout)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + float(command["budget"])
    request = system.request

    async def one(i: int) -> None:
        nonlocal errors
        if time.perf_counter() > deadline:
            return
        began = time.perf_counter()
        try:
            await request(queue, f"{prefix}{i}", timeout)
        except Exception:  # noqa: BLE001 - any peer's failure counts as an error
            errors += 1
            return
        latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    await run_parallel(n, callers, one)
    emit(latencies=latencies, seconds=time.perf_counter() - start, errors=errors)


async def do_drain(system: System, command: dict[str, Any]) -> None:
    count = 0
    target = int(command["jobs"])
    reached = anyio.Event()

    def on_job() -> None:
        nonlocal count
        count += 1
        if count == target:
            reached.set()

    await system.prepare_worker(command["queue"], int(command["concurrency"]), on_job)
    stop = anyio.Event()
    cpu = cpu_seconds()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(system.run_worker, stop)
        await reached.wait()
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
        stop.set()
    emit(done=elapsed, cpu=cpu, count=count)


async def serve_client(system: System, url: str) -> None:
    await system.connect(url)
    emit(ready=True)
    try:
        while True:
            command = await read_command()
            if command["cmd"] == "enqueue":
                await do_enqueue(system, command)
            elif command["cmd"] == "request":
                await do_request(system, command)
            elif command["cmd"] == "drain":
                await do_drain(system, command)
            else:
                break
    finally:
        await system.close()


# -- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["worker", "client"])
    parser.add_argument("--url", default="")
    parser.add_argument("--queue", default="bench")
    parser.add_argument("--concurrency", type=int, default=10)
    return parser.parse_args(argv)


def main(system: System, argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role == "worker":
        anyio.run(serve_worker, system, args.url, args.queue, args.concurrency, **_backend(system))
    else:
        anyio.run(serve_client, system, args.url, **_backend(system))


def _backend(system: System) -> dict[str, Any]:
    return {"backend": system.backend}
