"""OpenTelemetry spans of trio-jobqueue queues (the ``otel`` extra: ``opentelemetry-api``).

Give a :class:`Tracing` to the producers and the workers of a queue::

    from trio_jobqueue.tracing import Tracing

    async with jq.open_queue(storage, handler, tracing=Tracing()) as queue:
        ...

``open_queue(..., tracing=True)`` is the same on the global tracer provider. Each
``enqueue`` (and ``enqueue_and_wait``) is a ``PRODUCER`` span, each ``enqueue_many`` call
one span for all its jobs, and every handler run a ``CONSUMER`` span that is the child
of the span that enqueued the job, in whatever process the worker runs: the producer's
trace context (W3C ``traceparent``/``tracestate``, through the global propagator) is
stored in front of the job's payload (a few dozen bytes, only for jobs enqueued while a
span records). Spans made inside a handler are children of its span. The attributes
are listed in ``docs/metrics.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import trio

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_jobqueue.tracing needs opentelemetry-api: pip install 'trio-jobqueue[otel]'"
    ) from exc

from ._serde import describe_exception

if TYPE_CHECKING:
    from .storage import Claim

__all__ = ["Tracing"]

SYSTEM = "trio_jobqueue"
"""The ``messaging.system`` attribute of every span."""


class Tracing:
    """Spans of enqueues and handler runs (``open_queue(..., tracing=...)``).

    Args:
        tracer_provider: where the spans go (default: the global tracer provider, as
            ``opentelemetry.trace.get_tracer`` finds it when the queue first traces).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        from . import __version__

        self.tracer = trace.get_tracer(SYSTEM, __version__, tracer_provider=tracer_provider)

    @contextmanager
    def enqueue_span(
        self, ns: str, job_ids: Sequence[str], operation: str
    ) -> Iterator[bytes | None]:
        """A ``PRODUCER`` span named ``"<operation> <queue>"`` around one enqueue call;
        yields the trace context to store with the jobs (``None`` when nothing records:
        the payloads stay as they are)."""
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": ns,
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
        }
        if len(job_ids) == 1:
            attributes["messaging.message.id"] = job_ids[0]
        else:
            attributes["messaging.batch.message_count"] = len(job_ids)
        with self.tracer.start_as_current_span(
            f"{operation} {ns}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            if span.is_recording():
                propagate.inject(carrier)
            yield json.dumps(carrier, separators=(",", ":")).encode() if carrier else None

    @contextmanager
    def handler_span(self, ns: str, claim: Claim, carrier: bytes | None) -> Iterator[object]:
        """A ``CONSUMER`` span named ``"process <queue>"`` around one handler run, the
        child of the span ``carrier`` names (a new trace without one). An exception the
        handler raises is recorded and sets the status to error; a cancellation (the
        job's timeout or the worker's shutdown) sets ``trio_jobqueue.cancelled``."""
        parent = None
        if carrier:
            try:
                headers = json.loads(carrier)
            except ValueError:
                headers = None
            if isinstance(headers, dict):
                parent = propagate.extract(headers)
        span = self.tracer.start_span(
            f"process {ns}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.destination.name": ns,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.message.id": claim.job_id,
                "trio_jobqueue.attempt": claim.attempt,
                "trio_jobqueue.max_attempts": claim.max_attempts,
            },
        )
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                yield span
            except trio.Cancelled:
                span.set_attribute("trio_jobqueue.cancelled", True)
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, describe_exception(exc)))
                raise
