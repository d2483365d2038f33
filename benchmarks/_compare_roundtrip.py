"""CPU per Redis round trip through each client stack a trio program can use.

    python benchmarks/_compare_roundtrip.py [--calls 20000]

Starts a private redis-server and measures the client process's CPU (user + system) per
call, sequentially and with 100 calls in flight, for:

* ``jq adapter``: trio-jobqueue's ``RedisAdapter.command`` (trio -> trio-asyncio ->
  redis-py asyncio + hiredis);
* ``jq RedisStorage.stats``: one storage script call end to end (argument building, the
  adapter's script runner and whatever batching it does, reply decoding);
* ``redis-py asyncio``: the same client on a plain asyncio loop (what SAQ/arq pay);
* ``trio + hiredis``: a minimal trio-native client (``trio.SocketStream`` + ``hiredis.Reader``,
  pipelining the in-flight calls on one connection) - the floor for a trio-native adapter.

Plus the costs a job pays in the worker besides its round trips: receiving one pub/sub
message through the adapter (published by ``redis-cli`` from another process), spawning a
trio task, and parsing one event message (``parse_events``). These are the numbers behind the CPU
budget in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import sys
import tempfile
import time
from pathlib import Path

import compare
import hiredis
import redis.asyncio as aioredis
import trio

SCRIPT = "return ARGV[1]"


def report(label: str, calls: int, cpu: float, wall: float) -> None:
    print(f"  {label:<44} {cpu / calls * 1e6:7.1f} us CPU/call  {calls / wall:10,.0f} calls/s")


async def run_lanes(calls: int, inflight: int, one) -> None:  # type: ignore[no-untyped-def]
    left = calls

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(lane)


async def jq_adapter(url: str, calls: int, inflight: int) -> tuple[float, float]:
    # Imported late: trio-asyncio replaces asyncio.run's loop, which the plain asyncio
    # measurement (run first) must not see.
    from trio_jobqueue.storage._redis_adapter import RedisAdapter

    adapter = RedisAdapter(url)
    await adapter.open()
    try:
        sha = await adapter.command("SCRIPT", "LOAD", SCRIPT)

        async def one() -> None:
            await adapter.command("EVALSHA", sha, 0, "x")

        await run_lanes(200, inflight, one)
        cpu, wall = time.process_time(), time.perf_counter()
        await run_lanes(calls, inflight, one)
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await adapter.close()


async def jq_storage_script(url: str, calls: int, inflight: int) -> tuple[float, float]:
    """A RedisStorage script call as the worker makes it (``stats.lua``: 7 keys, reads 5
    counters), through the storage's own path (script runner, batching if any)."""
    import trio_jobqueue as jq

    async with jq.RedisStorage(url) as storage:

        async def one() -> None:
            await storage.stats("bench")

        await run_lanes(200, inflight, one)
        cpu, wall = time.process_time(), time.perf_counter()
        await run_lanes(calls, inflight, one)
        return time.process_time() - cpu, time.perf_counter() - wall


def redis_py_asyncio(url: str, calls: int, inflight: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        client = aioredis.Redis.from_url(url)
        sha = await client.script_load(SCRIPT)
        left = calls

        async def lane() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await client.evalsha(sha, 0, "x")

        for _ in range(200):
            await client.evalsha(sha, 0, "x")
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        result = time.process_time() - cpu, time.perf_counter() - wall
        await client.aclose()
        return result

    return asyncio.run(main())


class TrioHiredis:
    """Just enough of a trio-native client: one connection, pipelined, FIFO replies."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[list[object]] = collections.deque()
        self.send_lock = trio.Lock()

    @staticmethod
    def pack(*args: object) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    async def reader_task(self) -> None:
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                slot = self.waiters.popleft()
                slot[1] = reply
                event = slot[0]
                assert isinstance(event, trio.Event)
                event.set()

    async def call(self, *args: object) -> object:
        slot: list[object] = [trio.Event(), None]
        self.waiters.append(slot)
        async with self.send_lock:
            await self.stream.send_all(self.pack(*args))
        event = slot[0]
        assert isinstance(event, trio.Event)
        await event.wait()
        return slot[1]


async def trio_hiredis(port: int, calls: int, inflight: int) -> tuple[float, float]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = TrioHiredis(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.reader_task)
        sha = await client.call("SCRIPT", "LOAD", SCRIPT)

        async def one() -> None:
            await client.call(b"EVALSHA", sha, b"0", b"x")

        await run_lanes(200, inflight, one)
        cpu, wall = time.process_time(), time.perf_counter()
        await run_lanes(calls, inflight, one)
        result = time.process_time() - cpu, time.perf_counter() - wall
        nursery.cancel_scope.cancel()
    await stream.aclose()
    return result


async def task_spawn(n: int) -> tuple[float, float]:
    async def job() -> None:
        with trio.CancelScope():
            await trio.lowlevel.checkpoint()

    cpu, wall = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(job)
            if len(nursery.child_tasks) >= 100:
                await trio.lowlevel.checkpoint()
    return time.process_time() - cpu, time.perf_counter() - wall


async def pubsub_receive(url: str, port: int, n: int) -> tuple[float, float]:
    """CPU of receiving one pub/sub message through the adapter's reader task; the
    messages are published by ``redis-cli`` in another process."""
    import subprocess

    from trio_jobqueue.storage._redis_adapter import RedisAdapter

    got = 0
    done = trio.Event()

    class Handler:
        def on_message(self, data: bytes) -> None:
            nonlocal got
            got += 1
            if got == n:
                done.set()

        def on_reconnect(self) -> None:
            pass

    adapter = RedisAdapter(url)
    await adapter.open()
    try:
        async with adapter.subscription("bench-channel", Handler()):
            message = "completed 1 9 4 -1\nd100-1234null"
            argv = ["redis-cli", "-p", str(port), "-r", str(n), "PUBLISH", "bench-channel", message]
            cpu, wall = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        trio.run_process, argv, stdout=subprocess.DEVNULL, check=False
                    )
                )
                with trio.move_on_after(120):
                    await done.wait()
            return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await adapter.close()


def event_parse(n: int) -> tuple[float, float]:
    from trio_jobqueue.storage.redis import parse_events

    job_id, result = b"d100-1234", b"null"
    message = b"completed 1 %d %d -1\n%s%s" % (len(job_id), len(result), job_id, result)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        parse_events(message)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    n = args.calls
    with (
        tempfile.TemporaryDirectory(prefix="jq-roundtrip-") as tmp,
        compare.redis_server(Path(tmp)) as (port, _),
    ):
        url = f"redis://127.0.0.1:{port}/0"
        plain = {k: redis_py_asyncio(url, n, k) for k in (1, 100)}  # before trio-asyncio loads
        for inflight in (1, 100):
            print(f"EVALSHA of a one-line script, {inflight} in flight:")
            report("jq adapter (trio-asyncio + redis-py)", n, *trio.run(
                jq_adapter, url, n, inflight))  # fmt: skip
            report("jq RedisStorage.stats (script runner)", n, *trio.run(
                jq_storage_script, url, n, inflight))  # fmt: skip
            report("redis-py asyncio on asyncio", n, *plain[inflight])
            report("trio + hiredis (pipelined)", n, *trio.run(trio_hiredis, port, n, inflight))
        print("pub/sub:")
        report("receive one message (adapter reader, bridged)", n, *trio.run(
            pubsub_receive, url, port, n))  # fmt: skip
    print("per-job costs besides round trips:")
    report("trio task + cancel scope (spawn, run, exit)", n, *trio.run(task_spawn, n))
    report("parse one pub/sub event (parse_events)", n, *event_parse(n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
