"""Dashboard page times with 1,000,000 jobs in Redis (a redis-server of its own).

    python benchmarks/web_page.py [--jobs 1000000] [--requests 50]

Fills one queue with ``--jobs`` queued jobs (``enqueue_many``), after a worker has run
2,000 jobs that failed and 2,000 that completed there, plus five small queues; then times
``--requests`` sequential requests of each page, over HTTP to the dashboard served by
hypercorn's trio worker on loopback (what a browser gets) and in-process through httpx's
ASGI transport (the app and the storage alone), and prints p50/p95 per page. The
overview is timed twice: with the list of queue names cached (the dashboard re-reads it
in the background; requests never wait for it) and while such a re-read (a full ``SCAN``
of the keyspace, timed on its own too) runs all the time. Target: every page at most
300 ms at 1M jobs. Prints the machine's load (``uptime``) before and after.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).parent))
from compare import free_port, redis_server

import trio_jobqueue as jq
from trio_jobqueue.storage.redis import RedisStorage
from trio_jobqueue.web import create_app


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


async def fill(url: str, jobs: int) -> None:
    async def handler(job: jq.Job[Any]) -> str:
        if job.id.startswith("bad-"):
            raise ValueError(f"cannot send {job.id}: mailbox full\n" + "detail " * 50)
        return "ok"

    storage = RedisStorage(url, key_prefix="bench")
    async with storage:
        async with jq.open_queue(
            storage, handler, name="big", max_attempts=1, concurrency=200
        ) as worker:
            specs = [(f"bad-{n}", {"n": n}) for n in range(2000)]
            specs += [(f"ok-{n}", {"n": n}) for n in range(2000)]
            await worker.enqueue_many(specs)
            async with worker.events() as events:
                counts = await worker.counts()
                done = counts["completed"] + counts["failed"]
                while done < 4000:
                    event = await events.receive()
                    done += event.kind in (jq.EventKind.COMPLETED, jq.EventKind.FAILED)
        async with jq.open_queue(storage, name="big") as queue:
            started = time.perf_counter()
            batch: list[tuple[str, Any]] = []
            for n in range(jobs):
                batch.append((f"job-{n:07d}", {"to": f"user{n}@example.com", "n": n}))
                if len(batch) == 50_000:
                    await queue.enqueue_many(batch)
                    batch = []
            if batch:
                await queue.enqueue_many(batch)
            took = time.perf_counter() - started
            print(f"enqueued {jobs} jobs in {took:.1f} s ({jobs / took:,.0f}/s)")
        for i in range(5):
            async with jq.open_queue(storage, name=f"small-{i}") as small:
                await small.enqueue_many([(f"s-{n}", n) for n in range(100)])


def stats(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms"


async def time_pages(
    client: httpx.AsyncClient, app: Any, jobs: int, requests: int, label: str
) -> None:
    first = await client.get("/queue", params={"name": "big", "state": "queued"})
    assert first.status_code == 200, first.status_code
    cursor = first.text.split("cursor=", 1)[1].split('"', 1)[0].replace("&amp;", "&")
    cursor = httpx.QueryParams("cursor=" + cursor)["cursor"]
    pages = {
        "overview (names cached)": ("/", {}),
        "overview (during a names SCAN)": ("/", {}),
        "queue: queued, page 1": ("/queue", {"name": "big", "state": "queued"}),
        "queue: queued, page 2 (cursor)": (
            "/queue",
            {"name": "big", "state": "queued", "cursor": cursor},
        ),
        "queue: failed, page 1": ("/queue", {"name": "big", "state": "failed"}),
        "queue: search by id (303 to job)": (
            "/queue",
            {"name": "big", "id": f"job-{jobs // 2:07d}"},
        ),
        "job page (failed, traceback)": ("/job", {"queue": "big", "id": "bad-7"}),
        "job page (queued)": ("/job", {"queue": "big", "id": f"job-{jobs - 1:07d}"}),
        "workers": ("/workers", {}),
    }
    storage = app.state.dashboard.storage
    print(f"\n{label}: {requests} sequential requests per page")

    async def scanning() -> None:
        while True:  # what the dashboard's background task does now and then
            await storage.list_namespaces()

    for name, (path, params) in pages.items():
        times = []
        async with trio.open_nursery() as nursery:
            if "SCAN" in name:
                nursery.start_soon(scanning)
            for _ in range(requests):
                t = time.perf_counter()
                response = await client.get(path, params=params)
                times.append(time.perf_counter() - t)
                assert response.status_code in (200, 303), (name, response.status_code)
            nursery.cancel_scope.cancel()
        print(f"  {name:34s} {stats(times)}")


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("trio_jobqueue").setLevel(logging.CRITICAL)  # 2,000 failures on purpose
    print(f"before: {load()}")
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as (port, _):
        url = f"redis://127.0.0.1:{port}/0"
        await fill(url, args.jobs)
        storage = RedisStorage(url, key_prefix="bench")
        async with storage:
            started = time.perf_counter()
            names = await storage.list_namespaces()
            took = time.perf_counter() - started
            keys = await storage.server_command("DBSIZE")
            print(
                f"list_namespaces: {len(names)} queues among {keys:,} keys in {took * 1000:.0f} ms"
            )
            app = create_app(storage)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                await time_pages(
                    client, app, args.jobs, args.requests, "in-process (ASGI transport)"
                )
            from hypercorn.config import Config
            from hypercorn.trio import serve

            http_port = free_port()
            config = Config()
            config.bind = [f"127.0.0.1:{http_port}"]
            config.accesslog = config.errorlog = None
            served = create_app(storage)
            async with trio.open_nursery() as nursery:
                await nursery.start(serve, served, config)
                base = f"http://127.0.0.1:{http_port}"
                async with httpx.AsyncClient(base_url=base) as client:
                    await time_pages(
                        client, served, args.jobs, args.requests, "over HTTP (hypercorn, trio)"
                    )
                nursery.cancel_scope.cancel()
    print(f"\nafter: {load()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    trio.run(main, parser.parse_args())
