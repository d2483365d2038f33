"""OpenTelemetry spans (``trio_jobqueue.tracing``), recorded with the SDK's in-memory
exporter: a handler's span is the child of the span that enqueued its job, across a
real Redis queue and across processes; nothing is stored when nothing records."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
import trio
from _proc_harness import TESTS, cli_env
from fixtures_redis import RedisServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import trio_jobqueue as jq
from trio_jobqueue.storage.redis import RedisStorage
from trio_jobqueue.tracing import Tracing

pytestmark = pytest.mark.redis


def _recording() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def _parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def test_handler_span_is_child_of_enqueue_span_across_redis(
    redis_server: RedisServer,
) -> None:
    """On a Redis queue, each handler's CONSUMER span is the child of the PRODUCER span
    of its ``enqueue`` (or of its ``enqueue_many`` call), in the producer's trace; a span
    made in the handler is the handler span's child; a failing run records the error."""
    provider, exporter = _recording()
    tracing = Tracing(provider)
    tracer = provider.get_tracer("test")
    name = f"t-{uuid.uuid4().hex[:8]}"
    ran = trio.Event()
    seen: dict[str, Any] = {}

    async def handler(job: jq.Job[dict[str, int]]) -> None:
        with tracer.start_as_current_span(f"inner {job.id}"):
            seen[job.id] = job.payload
        if len(seen) == 4:
            ran.set()  # leaving the queue lets the last runs finish
        if job.id == "bad":
            raise ValueError("asked to fail")

    async with RedisStorage(redis_server.url) as storage:
        async with jq.open_queue(storage, name=name, tracing=tracing) as producer:
            with tracer.start_as_current_span("request"):
                await producer.enqueue("one", {"n": 1})
                await producer.enqueue_many([("two", {"n": 2}), ("three", {"n": 3})])
                await producer.enqueue("bad", {"n": 4}, max_attempts=1)
        async with jq.open_queue(storage, handler, name=name, concurrency=4, tracing=tracing):
            with trio.fail_after(20):
                await ran.wait()
    assert seen == {"one": {"n": 1}, "two": {"n": 2}, "three": {"n": 3}, "bad": {"n": 4}}

    spans = exporter.get_finished_spans()
    (request,) = _by_name(spans, "request")
    sends = _by_name(spans, f"enqueue {name}")
    (batch,) = _by_name(spans, f"enqueue_many {name}")
    assert len(sends) == 2 and all(s.kind is SpanKind.PRODUCER for s in (*sends, batch))
    assert {_parent_id(s) for s in (*sends, batch)} == {request.context.span_id}
    send_of = {s.attributes["messaging.message.id"]: s for s in sends}  # type: ignore[index]
    assert batch.attributes["messaging.batch.message_count"] == 2  # type: ignore[index]
    parent_of = {"one": send_of["one"], "two": batch, "three": batch, "bad": send_of["bad"]}
    for job_id, parent in parent_of.items():
        (run,) = [
            s
            for s in _by_name(spans, f"process {name}")
            if s.attributes["messaging.message.id"] == job_id  # type: ignore[index]
        ]
        assert run.kind is SpanKind.CONSUMER
        assert run.context.trace_id == request.context.trace_id
        assert _parent_id(run) == parent.context.span_id, job_id
        assert run.attributes["messaging.destination.name"] == name  # type: ignore[index]
        assert run.attributes["trio_jobqueue.attempt"] == 1  # type: ignore[index]
        (inner,) = _by_name(spans, f"inner {job_id}")
        assert _parent_id(inner) == run.context.span_id
        if job_id == "bad":
            assert run.status.status_code is StatusCode.ERROR
            assert [e.name for e in run.events] == ["exception"]
        else:
            assert run.status.status_code is StatusCode.UNSET


async def test_nothing_is_stored_when_no_span_records(redis_server: RedisServer) -> None:
    """With tracing on but no SDK recording (the API's no-op provider), a job's stored
    payload is the encoded payload alone."""
    name = f"n-{uuid.uuid4().hex[:8]}"
    tracing = Tracing(trace.NoOpTracerProvider())
    async with (
        RedisStorage(redis_server.url) as storage,
        jq.open_queue(storage, name=name, tracing=tracing) as queue,
    ):
        await queue.enqueue("one", {"n": 1})
        await queue.enqueue_many([("two", {"n": 2})])
        for job_id, n in (("one", 1), ("two", 2)):
            assert await storage.get_payload(name, job_id) == b'{"n":%d}' % n


def _run_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TESTS / "_otel_child.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd=TESTS,
    )


async def test_parent_child_link_across_processes(redis_server: RedisServer) -> None:
    """A job enqueued in one process under a span is run in another process under a
    span that is its child (same trace, parent = the producer's span)."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    produced = await trio.to_thread.run_sync(_run_child, "produce", redis_server.url, name)
    assert produced.returncode == 0, produced.stderr
    consumed = await trio.to_thread.run_sync(_run_child, "consume", redis_server.url, name)
    assert consumed.returncode == 0, consumed.stderr
    send = json.loads(produced.stdout)
    run = json.loads(consumed.stdout)
    assert run["trace_id"] == send["trace_id"]
    assert run["parent_id"] == send["span_id"]
