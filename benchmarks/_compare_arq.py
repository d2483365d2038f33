"""arq adapter of ``compare.py`` (runs in the peers' virtualenv).

``poll_delay=0.01`` for the worker and for ``Job.result`` (arq has no push notification;
its default 0.5 s would make it look far worse than it can be); ``max_jobs`` is the
concurrency; everything else is arq's default.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlparse

import anyio
from _compare_common import Handler, System, main
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func

POLL_DELAY = 0.01


class Arq(System):
    def __init__(self) -> None:
        self.settings = RedisSettings()
        self.pool: ArqRedis | None = None
        self.worker: Worker | None = None

    async def connect(self, url: str) -> None:
        parsed = urlparse(url)
        self.settings = RedisSettings(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 6379,
            database=int((parsed.path or "/0").lstrip("/") or 0),
        )
        self.pool = await create_pool(self.settings)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()

    async def prepare_worker(self, queue: str, concurrency: int, on_job: Handler) -> None:
        async def noop(ctx: Any, x: int) -> None:
            on_job()

        self.worker = Worker(
            functions=[func(noop, name="noop")],
            redis_settings=self.settings,
            queue_name=queue,
            max_jobs=concurrency,
            poll_delay=POLL_DELAY,
            handle_signals=False,
        )

    async def run_worker(self, stop: anyio.Event) -> None:
        assert self.worker is not None
        task = asyncio.ensure_future(self.worker.main())
        await stop.wait()
        task.cancel()
        await asyncio.wait([task], timeout=10)
        await self.worker.close()

    async def enqueue(self, queue: str, job_id: str) -> None:
        assert self.pool is not None
        await self.pool.enqueue_job("noop", 1, _job_id=job_id, _queue_name=queue)

    async def request(self, queue: str, job_id: str, timeout: float) -> Any:
        assert self.pool is not None
        job = await self.pool.enqueue_job("noop", 1, _job_id=job_id, _queue_name=queue)
        assert job is not None
        return await job.result(timeout=timeout, poll_delay=POLL_DELAY)


if __name__ == "__main__":
    main(Arq())
