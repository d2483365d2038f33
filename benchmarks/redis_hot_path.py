"""The Redis hot path in numbers that do not depend much on the machine's load: requests
per operation, and the client's share of a sequential call. Starts its own redis-server.

    python benchmarks/redis_hot_path.py [--jobs 10000] [--requests 500] [--calls 3000]

Prints:

* per ``enqueue_and_wait`` (1 caller, worker in this process, concurrency 100): the
  Redis commands received (``INFO commandstats``, scripts counted once, not the commands
  inside them): script calls, blocking pops, (un)subscriptions, and the status reads
  (a fourth script call; none means the outcome came with the notification);
* per drained job (no-op jobs, concurrency 10 and 100): script calls, and Redis's time in
  scripts (``usec`` of ``FCALL``);
* ``enqueue`` from 100 tasks at once (``Queue.enqueue`` each): script calls per job (the
  calls made together share one) and Redis's script time per job;
* a sequential ``enqueue``: wall and CPU time per call through ``Queue.enqueue``, against
  the same script sent from a raw blocking socket and a bare ``PING`` in the same run:
  what the client adds to a round trip, and what Redis's script time is.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hiredis
import trio
from compare import redis_command, redis_server

import trio_jobqueue as jq
from trio_jobqueue.storage._redis_common import library, script
from trio_jobqueue.storage.redis import RedisStorage


def stats(port: int) -> dict[str, tuple[int, int]]:
    """``INFO commandstats``: command -> (calls, usec) since the last reset."""
    reply = redis_command(port, "INFO", "commandstats").decode(errors="replace")
    out: dict[str, tuple[int, int]] = {}
    for line in reply.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            kv = dict(f.split("=", 1) for f in fields.split(","))
            out[name.removeprefix("cmdstat_")] = (int(kv["calls"]), int(kv["usec"]))
    return out


def reset(port: int) -> None:
    redis_command(port, "CONFIG", "RESETSTAT")


async def noop(job: jq.Job[Any]) -> None:
    return None


async def per_request(url: str, port: int, requests: int) -> None:
    """Commands per enqueue_and_wait, steady state (every shard channel subscribed)."""
    async with (
        RedisStorage(url, key_prefix="hp-rr") as storage,
        jq.open_queue(storage, noop, name="rr", concurrency=100, reaper=False) as q,
    ):
        for i in range(1500):  # warm up: subscribe (nearly) every outcome shard
            await q.enqueue_and_wait(f"warm-{i}", 1, timeout=10)
        await trio.sleep(0.2)
        reset(port)
        for i in range(requests):
            await q.enqueue_and_wait(f"r-{i}", 1, timeout=10)
        got = stats(port)
    fcall = got.get("fcall", (0, 0))[0]
    print(f"per enqueue_and_wait ({requests} sequential calls, worker in this process):")
    for name in ("fcall", "blpop", "ssubscribe", "sunsubscribe", "rpush", "ping"):
        calls = got.get(name, (0, 0))[0]
        print(f"  {name:13} {calls / requests:6.2f}")
    print(
        f"  (script calls {fcall / requests:.2f}: enqueue, claim, complete_many; a status"
        " read would be a fourth)"
    )


async def per_job(url: str, port: int, jobs: int, concurrency: int) -> None:
    async with RedisStorage(url, key_prefix=f"hp-d{concurrency}") as storage:
        async with jq.open_queue(storage, name="d") as q:
            for k in range(0, jobs, 1000):
                await q.enqueue_many([(f"j-{i}", 1) for i in range(k, min(k + 1000, jobs))])
        done = trio.Event()
        count = 0

        async def handler(job: jq.Job[Any]) -> None:
            nonlocal count
            count += 1
            if count == jobs:
                done.set()

        reset(port)
        started = time.perf_counter()
        async with jq.open_queue(storage, handler, name="d", concurrency=concurrency):
            await done.wait()
            elapsed = time.perf_counter() - started
        calls, usec = stats(port).get("fcall", (0, 0))
    print(
        f"drain c{concurrency}: {calls / jobs:.3f} script calls per job, Redis script time "
        f"{usec / jobs:.0f} us per job ({jobs / elapsed:,.0f} jobs/s in-process, load-bound)"
    )


async def concurrent_enqueue(url: str, port: int, jobs: int, tasks: int = 100) -> None:
    """``tasks`` tasks each enqueueing its share of ``jobs`` through ``Queue.enqueue``:
    the script calls they share, and Redis's script time per job."""
    async with (
        RedisStorage(url, key_prefix="hp-conc") as storage,
        jq.open_queue(storage, name="c") as q,
    ):
        reset(port)

        async def lane(k: int) -> None:
            for i in range(k, jobs, tasks):
                await q.enqueue(f"c-{i}", {"x": 1})

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(tasks):
                nursery.start_soon(lane, k)
        elapsed = time.perf_counter() - started
        calls, usec = stats(port).get("fcall", (0, 0))
    print(
        f"enqueue from {tasks} tasks at once: {calls / jobs:.3f} script calls per job, Redis "
        f"script time {usec / jobs:.1f} us per job ({jobs / elapsed:,.0f} jobs/s, load-bound)"
    )


async def sequential_enqueue(url: str, calls: int) -> tuple[float, float]:
    async with (
        RedisStorage(url, key_prefix="hp-enq") as storage,
        jq.open_queue(storage, name="e") as q,
    ):
        for i in range(200):
            await q.enqueue(f"warm-{i}", {"x": 1})
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(calls):
            await q.enqueue(f"e-{i}", {"x": 1})
        return (time.perf_counter() - began) / calls, (time.process_time() - cpu) / calls


def raw_calls(port: int, calls: int) -> tuple[float, float]:
    """Round trip of the enqueue script and of PING from a plain blocking socket."""
    spec = script("enqueue")
    tag = "{hp-raw:e}"
    keys = [
        f"{tag}:{k}"
        for k in (
            "j:", "leases", "completed", "failed", "ev", "b:", "done:", "queue", "seq",
            "wake", "delayed", "ready:quarantine", "scheduled",
        )
    ]  # fmt: skip
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = hiredis.Reader()

        def call(data: bytes) -> Any:
            sock.sendall(data)
            reply = reader.gets()
            while reply is False:
                reader.feed(sock.recv(65536))
                reply = reader.gets()
            return reply

        call(hiredis.pack_command(("FUNCTION", "LOAD", "REPLACE", library().source)))
        times = []
        for packed in (
            [hiredis.pack_command(("PING",))] * calls,
            [
                hiredis.pack_command(
                    (
                        "FCALL",
                        spec.function,
                        13,
                        *keys,
                        "0.0",
                        f"raw-{i}",
                        b'{"x":1}',
                        3,
                        "3600.0",
                        "nonce",
                        0,
                        "",
                        "",
                    )
                )
                for i in range(calls)
            ],
        ):
            began = time.perf_counter()
            for data in packed:
                call(data)
            times.append((time.perf_counter() - began) / calls)
    return times[0], times[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 CPUs shared: timings are noisy)")
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as (port, _pid):
        url = f"redis://127.0.0.1:{port}/0"
        trio.run(per_request, url, port, args.requests)
        for concurrency in (10, 100):
            trio.run(per_job, url, port, args.jobs, concurrency)
        trio.run(concurrent_enqueue, url, port, args.jobs)
        reset(port)
        ping, raw = raw_calls(port, args.calls)
        raw_usec = stats(port)["fcall"][1] / args.calls
        wall, cpu = trio.run(sequential_enqueue, url, args.calls)
        print(
            f"sequential enqueue: {wall * 1e6:.0f} us per call ({cpu * 1e6:.0f} us CPU) through "
            f"Queue.enqueue; the same script from a raw socket {raw * 1e6:.0f} us (Redis "
            f"{raw_usec:.0f} us in the script); PING {ping * 1e6:.0f} us; "
            f"client's share {(wall - raw) * 1e6:.0f} us = {wall / raw:.2f}x the raw call"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
