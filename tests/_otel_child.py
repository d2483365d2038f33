"""One side of the cross-process tracing test (``tests/test_tracing.py``), run as
``python _otel_child.py produce|consume REDIS_URL QUEUE``: prints the span that matters
(the enqueue's, or the handler run's) as JSON on stdout."""

from __future__ import annotations

import json
import sys

import trio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import trio_jobqueue as jq
from trio_jobqueue.storage.redis import RedisStorage
from trio_jobqueue.tracing import Tracing


async def main(role: str, url: str, name: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    done = trio.Event()

    async def handler(job: jq.Job[str]) -> None:
        done.set()

    async with RedisStorage(url) as storage:
        if role == "produce":
            async with jq.open_queue(storage, name=name, tracing=tracing) as queue:
                with provider.get_tracer("child").start_as_current_span("request"):
                    await queue.enqueue("job", "payload")
            wanted = f"enqueue {name}"
        else:
            async with jq.open_queue(storage, handler, name=name, tracing=tracing):
                with trio.fail_after(20):
                    await done.wait()
            wanted = f"process {name}"
    (span,) = [s for s in exporter.get_finished_spans() if s.name == wanted]
    print(
        json.dumps(
            {
                "trace_id": span.context.trace_id,
                "span_id": span.context.span_id,
                "parent_id": None if span.parent is None else span.parent.span_id,
            }
        )
    )


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
