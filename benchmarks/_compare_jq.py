"""trio-jobqueue adapter of ``compare.py`` (Redis, File and Memory backends).

``--url redis://...`` uses RedisStorage, ``--url file:///dir`` FileStorage (``fsync`` on, the
default), ``--url memory://`` MemoryStorage (single process: the orchestrator sends ``drain``
and ``request`` with ``local_worker`` to the client instead of starting a worker process).
Queues use every default of ``open_queue`` (embedded reaper included) except ``concurrency``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio
import trio
from _compare_common import Handler, System, main

import trio_jobqueue as jq

PAYLOAD = {"x": 1}


def make_storage(url: str) -> jq.Storage:
    if url.startswith("memory:"):
        return jq.MemoryStorage()
    if url.startswith("file://"):
        return jq.FileStorage(url.removeprefix("file://"))
    return jq.RedisStorage(url)


class TrioJobQueue(System):
    backend = "trio"

    def __init__(self) -> None:
        self.stack = AsyncExitStack()
        self.storage: jq.Storage | None = None
        self.queues: dict[str, jq.Queue[Any, Any]] = {}
        self.worker_args: tuple[str, int, Handler] | None = None

    async def connect(self, url: str) -> None:
        # Opened once here (reference-counted), so connecting is not timed.
        self.storage = await self.stack.enter_async_context(make_storage(url))

    async def close(self) -> None:
        with trio.move_on_after(30):
            await self.stack.aclose()

    async def prepare_worker(self, queue: str, concurrency: int, on_job: Handler) -> None:
        self.worker_args = (queue, concurrency, on_job)

    async def run_worker(self, stop: anyio.Event) -> None:
        assert self.storage is not None and self.worker_args is not None
        queue, concurrency, on_job = self.worker_args

        async def noop(job: jq.Job[Any]) -> None:
            on_job()

        async with jq.open_queue(self.storage, noop, name=queue, concurrency=concurrency):
            await stop.wait()

    async def prepare_queue(self, queue: str, local_worker: int = 0) -> None:
        if queue in self.queues:
            return
        assert self.storage is not None
        handler = None
        if local_worker:

            async def handler(job: jq.Job[Any]) -> None:
                return None

        self.queues[queue] = await self.stack.enter_async_context(
            jq.open_queue(self.storage, handler, name=queue, concurrency=max(local_worker, 1))
        )

    async def enqueue(self, queue: str, job_id: str) -> None:
        await self.queues[queue].enqueue(job_id, PAYLOAD)

    async def request(self, queue: str, job_id: str, timeout: float) -> Any:
        return await self.queues[queue].enqueue_and_wait(job_id, PAYLOAD, timeout=timeout)


if __name__ == "__main__":
    main(TrioJobQueue())
