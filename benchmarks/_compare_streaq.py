"""streaQ adapter of ``compare.py`` (runs in the peers' virtualenv, on trio through anyio).

One ``Worker`` object per queue name (streaQ binds the queue to the worker object); the
client side uses the same objects, entered as context managers, to enqueue and to wait for
results (``Task.result``). Defaults everywhere except ``concurrency``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio
from _compare_common import Handler, System, main
from streaq import Worker

_on_job: Handler = lambda: None  # noqa: E731


async def noop(x: int) -> None:
    _on_job()


class Streaq(System):
    backend = "trio"

    def __init__(self) -> None:
        self.url = ""
        self.stack = AsyncExitStack()
        self.workers: dict[str, Worker[Any]] = {}
        self.tasks: dict[str, Any] = {}
        self.worker: Worker[Any] | None = None

    def _make(self, queue: str, concurrency: int = 16) -> tuple[Worker[Any], Any]:
        worker: Worker[Any] = Worker(
            redis_url=self.url,
            queue_name=queue,
            concurrency=concurrency,
            anyio_backend="trio",
            handle_signals=False,
        )
        return worker, worker.task(name="noop")(noop)

    async def connect(self, url: str) -> None:
        self.url = url

    async def close(self) -> None:
        with anyio.move_on_after(30, shield=True):
            await self.stack.aclose()

    async def prepare_worker(self, queue: str, concurrency: int, on_job: Handler) -> None:
        global _on_job
        _on_job = on_job
        self.worker, _ = self._make(queue, concurrency)

    async def run_worker(self, stop: anyio.Event) -> None:
        assert self.worker is not None
        async with anyio.create_task_group() as tg:
            await tg.start(self.worker.run_async)
            await stop.wait()
            tg.cancel_scope.cancel()

    async def prepare_queue(self, queue: str, local_worker: int = 0) -> None:
        if queue not in self.workers:
            worker, task = self._make(queue)
            await self.stack.enter_async_context(worker)
            self.workers[queue], self.tasks[queue] = worker, task

    async def enqueue(self, queue: str, job_id: str) -> None:
        task = self.tasks[queue].enqueue(1)
        task.id = job_id
        await task

    async def request(self, queue: str, job_id: str, timeout: float) -> Any:
        task = self.tasks[queue].enqueue(1)
        task.id = job_id
        await task
        return (await task.result(timeout=int(timeout))).result


if __name__ == "__main__":
    main(Streaq())
