"""SAQ adapter of ``compare.py`` (runs in the peers' virtualenv).

Defaults everywhere except ``concurrency``. Request/response is ``enqueue`` then
``Job.refresh(until_complete=...)``, SAQ's pub/sub wait (``Queue.apply`` polls every 0.5 s,
which would put its p50 near a second). ``refresh`` reads the job, then subscribes: a
completion in between is missed and the wait runs into its timeout, counted as an error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from _compare_common import Handler, System, main
from saq import Queue, Status, Worker


class Saq(System):
    def __init__(self) -> None:
        self.url = ""
        self.queues: dict[str, Queue] = {}
        self.worker: Worker | None = None

    async def _queue(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue.from_url(self.url, name=name)
            await queue.connect()
        return queue

    async def connect(self, url: str) -> None:
        self.url = url

    async def close(self) -> None:
        for queue in self.queues.values():
            await queue.disconnect()

    async def prepare_worker(self, queue: str, concurrency: int, on_job: Handler) -> None:
        async def noop(ctx: Any, **kwargs: Any) -> None:
            on_job()

        self.worker = Worker(
            await self._queue(queue), functions=[("noop", noop)], concurrency=concurrency
        )

    async def run_worker(self, stop: anyio.Event) -> None:
        assert self.worker is not None
        task = asyncio.ensure_future(self.worker.start())
        await stop.wait()
        await self.worker.stop()
        await asyncio.wait([task], timeout=10)

    async def prepare_queue(self, queue: str, local_worker: int = 0) -> None:
        await self._queue(queue)

    async def enqueue(self, queue: str, job_id: str) -> None:
        await self.queues[queue].enqueue("noop", key=job_id, x=1)

    async def request(self, queue: str, job_id: str, timeout: float) -> Any:
        job = await self.queues[queue].enqueue("noop", key=job_id, x=1)
        assert job is not None
        await job.refresh(until_complete=timeout)
        if job.status != Status.COMPLETE:
            raise TimeoutError(f"job {job_id} is {job.status} after {timeout} s")
        return job.result


if __name__ == "__main__":
    main(Saq())
