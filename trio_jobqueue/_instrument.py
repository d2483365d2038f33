"""The seam through which metrics and tracing observe a queue.

:mod:`trio_jobqueue.metrics` and :mod:`trio_jobqueue.tracing` implement these hooks; the
core only calls them, and imports neither module (nor ``prometheus_client`` nor
``opentelemetry``) unless ``open_queue(metrics=True)`` or ``tracing=True`` asks for the
default object. A queue without them pays one ``is None`` test per job and per enqueue.

The trace context of a traced enqueue travels in front of the job's encoded payload, in
a *trace frame*::

    b"\\x00jq:tc\\x00" + 2-byte big-endian length n + n bytes of carrier + payload

The carrier is the propagator's headers (``traceparent``, ``tracestate``, ...) as compact
JSON. Every backend stores the payload bytes as they are, so the frame needs nothing
from a storage; every reader of a payload in this package (the worker, ``get_payload``,
``after_execution``) strips it first, with or without tracing installed. A payload
without a frame costs nothing and stores no byte more. The marker starts with a NUL
byte, which no JSON document (the default serializer) can begin with.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    from ._queue import Queue
    from .storage import Claim

__all__ = [
    "TRACE_MARK",
    "MetricsHook",
    "TracingHook",
    "as_metrics",
    "as_tracing",
    "frame_trace",
    "split_trace",
]

TRACE_MARK = b"\x00jq:tc\x00"
"""The first bytes of a framed payload."""
_HEAD = len(TRACE_MARK) + 2
MAX_CARRIER = 0xFFFF


def frame_trace(carrier: bytes, payload: bytes) -> bytes:
    """``payload`` with the trace ``carrier`` in front (see the module docstring)."""
    if len(carrier) > MAX_CARRIER:
        return payload  # a propagator gone mad: the job goes without its context
    return TRACE_MARK + len(carrier).to_bytes(2, "big") + carrier + payload


def split_trace(payload: bytes) -> tuple[bytes | None, bytes]:
    """``(carrier, payload)`` of a framed payload; ``(None, payload)`` for any other
    (including a frame cut short, which is left as it is)."""
    if not payload.startswith(TRACE_MARK):
        return None, payload
    size = int.from_bytes(payload[len(TRACE_MARK) : _HEAD], "big")
    end = _HEAD + size
    if len(payload) < end:
        return None, payload
    return payload[_HEAD:end], payload[end:]


class MetricsHook(Protocol):
    """What a queue calls on its ``metrics`` object (:class:`trio_jobqueue.metrics.Metrics`)."""

    def job_claimed(self, ns: str, claim: Claim, claimed_at: float) -> None:
        """A worker claimed ``claim`` at ``claimed_at`` (storage clock, like
        ``claim.created_at``). Called on the worker's hot path."""

    def job_settled(self, ns: str, claim: Claim, outcome: str, duration: float) -> None:
        """One attempt was settled: ``outcome`` is ``completed``, ``retried``, ``failed``,
        ``released`` or ``fenced``; ``duration`` is the handler's run time (seconds).
        Called on the worker's hot path: must be quick and must not raise."""

    async def serve(self, queue: Queue[Any, Any], *, task_status: trio.TaskStatus[None]) -> None:
        """Watch ``queue`` (periodic gauges) until cancelled; started in the queue's
        nursery before its first job."""


class TracingHook(Protocol):
    """What a queue calls on its ``tracing`` object (:class:`trio_jobqueue.tracing.Tracing`)."""

    def enqueue_span(
        self, ns: str, job_ids: Sequence[str], operation: str
    ) -> AbstractContextManager[bytes | None]:
        """A producer span around one enqueue (or one ``enqueue_many`` call); yields the
        carrier to frame the payloads with (``None``: send them as they are)."""

    def handler_span(
        self, ns: str, claim: Claim, carrier: bytes | None
    ) -> AbstractContextManager[object]:
        """A consumer span around one handler run, the child of ``carrier``'s span."""


def as_metrics(value: object) -> MetricsHook | None:
    """The ``metrics`` option: ``None``/``False``, ``True`` (the default registry's
    :class:`~trio_jobqueue.metrics.Metrics`) or a metrics object."""
    if value is None or value is False:
        return None
    if value is True:
        from .metrics import default_metrics

        return default_metrics()
    if not callable(getattr(value, "job_settled", None)) or not callable(
        getattr(value, "serve", None)
    ):
        raise TypeError(f"metrics must be a trio_jobqueue.metrics.Metrics, not {value!r}")
    hook: MetricsHook = value  # type: ignore[assignment]
    return hook


def as_tracing(value: object) -> TracingHook | None:
    """The ``tracing`` option: ``None``/``False``, ``True`` (a
    :class:`~trio_jobqueue.tracing.Tracing` on the global tracer provider) or a tracing
    object."""
    if value is None or value is False:
        return None
    if value is True:
        from .tracing import Tracing

        return Tracing()
    if not callable(getattr(value, "enqueue_span", None)) or not callable(
        getattr(value, "handler_span", None)
    ):
        raise TypeError(f"tracing must be a trio_jobqueue.tracing.Tracing, not {value!r}")
    hook: TracingHook = value  # type: ignore[assignment]
    return hook
