"""Prometheus metrics of trio-jobqueue queues (the ``metrics`` extra: ``prometheus_client``).

Create one :class:`Metrics` per registry (usually one per process) and give it to every
queue you want measured; each metric has a ``queue`` label::

    from trio_jobqueue.metrics import Metrics, serve_metrics

    metrics = Metrics()  # registers in prometheus_client.REGISTRY
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_metrics, 9100)
        async with jq.open_queue(storage, handler, name="emails", metrics=metrics):
            ...

``open_queue(..., metrics=True)`` uses :func:`default_metrics` (the default registry's).
:func:`render` gives the exposition for an HTTP framework of your own. Every metric is
listed in ``docs/metrics.md``.

What a job costs: the counters and histograms are plain numbers, updated when a job is
claimed and when it is settled (about a microsecond, see ``docs/performance.md``), turned
into metric families when the registry is collected; the gauges are
read when the registry is collected (jobs in flight, reaper leadership) or by one
periodic task per queue (queue depth, every ``depth_interval`` seconds: one
``Queue.counts()`` call, whatever the number of jobs).
"""

from __future__ import annotations

import bisect
import functools
import gzip
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

try:
    import prometheus_client
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_jobqueue.metrics needs prometheus_client: pip install 'trio-jobqueue[metrics]'"
    ) from exc

from ._errors import JobQueueError

if TYPE_CHECKING:
    from ._queue import Queue
    from .storage import Claim

__all__ = [
    "DURATION_BUCKETS",
    "WAIT_BUCKETS",
    "Metrics",
    "default_metrics",
    "render",
    "serve_metrics",
]

log = logging.getLogger("trio_jobqueue.metrics")

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    math.inf,
)  # fmt: skip
"""Default buckets (seconds) of ``trio_jobqueue_handler_duration_seconds``."""
WAIT_BUCKETS = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    math.inf,
)  # fmt: skip
"""Default buckets (seconds) of ``trio_jobqueue_queue_wait_seconds``."""

OUTCOMES = ("completed", "failed", "retried", "released", "fenced")
_RAN = frozenset({"completed", "failed", "retried"})
"""Outcomes whose handler ran to its end (their duration is observed)."""
STATES = ("scheduled", "queued", "delayed", "processing", "completed", "failed")

REQUEST_TIMEOUT = 10.0
"""Seconds a scrape connection may take to send its request."""
MAX_REQUEST = 16384
"""Most bytes of a scrape request's head."""


@attrs.define(eq=False)
class _Counts:
    """One queue's counters and histograms, as plain numbers: a job adds to them without
    a lock or a label lookup (a ``prometheus_client`` counter and two histograms took
    about 8 µs per job); :meth:`Metrics.collect` turns them into metric families."""

    outcomes: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(OUTCOMES, 0))
    duration: list[int] = attrs.field(factory=list)
    """Observations per bucket (not cumulative), in the order of the bounds."""
    duration_sum: float = 0.0
    wait: list[int] = attrs.field(factory=list)
    wait_sum: float = 0.0


class Metrics(Collector):
    """The metrics of the queues given it (``open_queue(..., metrics=...)``): a
    ``prometheus_client`` collector.

    Args:
        registry: where to register (``prometheus_client.REGISTRY`` by default; ``None``
            registers nowhere: register it yourself, or call :meth:`collect`).
        prefix: the metric names' prefix.
        duration_buckets: upper bounds (seconds) of the handler duration histogram's
            buckets (``+Inf`` is added when missing).
        wait_buckets: upper bounds (seconds) of the queue wait histogram's buckets.
        depth_interval: seconds between two reads of each queue's depth per state.

    Raises:
        ValueError: ``registry`` already has metrics of these names (make one
            ``Metrics`` per registry and share it between queues), or bad buckets or
            interval.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        prefix: str = "trio_jobqueue",
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
        wait_buckets: Sequence[float] = WAIT_BUCKETS,
        depth_interval: float = 5.0,
    ) -> None:
        if not (isinstance(depth_interval, int | float) and depth_interval > 0):
            raise ValueError(f"depth_interval must be a number > 0, not {depth_interval!r}")
        self.prefix = prefix
        self.depth_interval = float(depth_interval)
        self._duration_bounds = _bounds(duration_buckets, "duration_buckets")
        self._wait_bounds = _bounds(wait_buckets, "wait_buckets")
        self._counts: dict[str, _Counts] = {}
        self._depth: dict[str, dict[str, int]] = {}
        self._queues: dict[int, Queue[Any, Any]] = {}
        if registry is not None:
            registry.register(self)

    # -- the hooks a queue calls (the worker's hot path) ----------------------------------

    def _bind(self, ns: str) -> _Counts:
        counts = self._counts.get(ns)
        if counts is None:
            counts = self._counts[ns] = _Counts(
                duration=[0] * len(self._duration_bounds), wait=[0] * len(self._wait_bounds)
            )
        return counts

    def job_claimed(self, ns: str, claim: Claim, claimed_at: float) -> None:
        """A worker of ``ns`` claimed ``claim`` at ``claimed_at`` (storage clock)."""
        if claim.attempt == 1:
            counts = self._counts.get(ns) or self._bind(ns)
            wait = claimed_at - claim.created_at
            if wait < 0.0:  # clocks of two hosts (File on a shared volume)
                wait = 0.0
            counts.wait[bisect.bisect_left(self._wait_bounds, wait)] += 1
            counts.wait_sum += wait

    def job_settled(self, ns: str, claim: Claim, outcome: str, duration: float) -> None:
        """A worker of ``ns`` settled ``claim`` with ``outcome`` after ``duration`` s."""
        counts = self._counts.get(ns) or self._bind(ns)
        counts.outcomes[outcome] += 1
        if outcome in _RAN:
            counts.duration[bisect.bisect_left(self._duration_bounds, duration)] += 1
            counts.duration_sum += duration

    async def serve(
        self,
        queue: Queue[Any, Any],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Measure ``queue`` until cancelled: its in-flight jobs and reaper leadership
        (read at collection) and its depth per state (read every ``depth_interval``).
        ``open_queue``/``serve_worker`` run this in their nursery."""
        self._bind(queue.name)
        key = id(queue)
        self._queues[key] = queue
        try:
            task_status.started()
            while True:
                await self.update_depth(queue)
                await trio.sleep(self.depth_interval)
        finally:
            del self._queues[key]
            if not any(q.name == queue.name for q in self._queues.values()):
                self._depth.pop(queue.name, None)

    async def update_depth(self, queue: Queue[Any, Any]) -> None:
        """Read ``queue``'s counts per state now (the periodic task calls this)."""
        try:
            counts = await queue.counts()
        except JobQueueError as exc:
            log.warning("metrics: cannot read the depth of queue %r (%s)", queue.name, exc)
            return
        if any(q.name == queue.name for q in self._queues.values()):
            self._depth[queue.name] = counts

    # -- the registry's view --------------------------------------------------------------

    def describe(self) -> Iterable[prometheus_client.Metric]:
        """The metrics' names, without values (the registry's duplicate check)."""
        return list(self._families(describe=True))

    def collect(self) -> Iterable[prometheus_client.Metric]:
        """Every metric with its current values."""
        return list(self._families(describe=False))

    def _families(self, *, describe: bool) -> Iterator[prometheus_client.Metric]:
        # May run in another thread (prometheus_client's own HTTP server): copy first.
        counts = {} if describe else dict(self._counts)
        queues = [] if describe else list(self._queues.values())
        depth = {} if describe else dict(self._depth)
        prefix = self.prefix
        for outcome in OUTCOMES:
            family = CounterMetricFamily(
                f"{prefix}_jobs_{outcome}", _COUNTER_HELP[outcome], labels=["queue"]
            )
            for ns, c in sorted(counts.items()):
                family.add_metric([ns], c.outcomes[outcome])
            yield family
        for name, help_text, bounds, which in (
            (
                "handler_duration_seconds",
                "Run time of handlers that returned or raised (completed, retried, failed).",
                self._duration_bounds,
                "duration",
            ),
            (
                "queue_wait_seconds",
                "Time from enqueue (created_at) to the first claim of a job.",
                self._wait_bounds,
                "wait",
            ),
        ):
            histogram = HistogramMetricFamily(f"{prefix}_{name}", help_text, labels=["queue"])
            for ns, c in sorted(counts.items()):
                cumulative, buckets = 0, []
                for bound, n in zip(bounds, list(getattr(c, which)), strict=True):
                    cumulative += n
                    buckets.append((_bound_label(bound), cumulative))
                histogram.add_metric([ns], buckets, getattr(c, f"{which}_sum"))
            yield histogram
        in_flight: dict[str, int] = {}
        leader: dict[str, int] = {}
        for queue in queues:
            if queue.worker is not None:
                in_flight[queue.name] = in_flight.get(queue.name, 0) + queue.worker.stats.in_flight
            if queue.reaper is not None:
                leading = int(bool(queue.reaper.is_leader))
                leader[queue.name] = max(leader.get(queue.name, 0), leading)
        flight = GaugeMetricFamily(
            f"{prefix}_jobs_in_flight",
            "Jobs this process's workers are running now.",
            labels=["queue"],
        )
        for ns, n in sorted(in_flight.items()):
            flight.add_metric([ns], n)
        yield flight
        jobs = GaugeMetricFamily(
            f"{prefix}_queue_jobs",
            "Jobs in the storage per state (read every depth_interval seconds).",
            labels=["queue", "state"],
        )
        for ns, per_state in sorted(depth.items()):
            for state, n in per_state.items():
                jobs.add_metric([ns, state], n)
        yield jobs
        leads = GaugeMetricFamily(
            f"{prefix}_reaper_leader",
            "1 when this process's reaper of the queue holds the leader lock, else 0.",
            labels=["queue"],
        )
        for ns, n in sorted(leader.items()):
            leads.add_metric([ns], n)
        yield leads


async def storage_snapshot(
    queues: Iterable[Queue[Any, Any]], *, prefix: str = "trio_jobqueue"
) -> CollectorRegistry:
    """A registry holding what any process can read of ``queues`` from their storage
    (the web dashboard's ``/metrics``): ``<prefix>_queue_jobs`` (jobs per state, read
    now), ``<prefix>_queue_paused`` (1 when paused) and ``<prefix>_queue_workers`` (live
    workers in the registry). The counters and histograms of job outcomes live in the
    worker processes (their ``--metrics-port``), not here."""
    jobs = GaugeMetricFamily(
        f"{prefix}_queue_jobs", "Jobs in the storage per state.", labels=["queue", "state"]
    )
    paused = GaugeMetricFamily(
        f"{prefix}_queue_paused", "1 when the queue is paused, else 0.", labels=["queue"]
    )
    workers = GaugeMetricFamily(
        f"{prefix}_queue_workers", "Live workers of the queue (its registry).", labels=["queue"]
    )
    for queue in queues:
        counts = await queue.counts()
        for state, n in counts.items():
            jobs.add_metric([queue.name, state], n)
        paused.add_metric([queue.name], int(await queue.is_paused()))
        workers.add_metric([queue.name], len(await queue.workers()))
    families = [jobs, paused, workers]

    class _Snapshot(Collector):
        def collect(self) -> Iterator[prometheus_client.Metric]:
            yield from families

    registry = CollectorRegistry()
    registry.register(_Snapshot())
    return registry


def _bound_label(bound: float) -> str:
    """A bucket's ``le`` label as ``prometheus_client`` writes it."""
    return "+Inf" if bound == math.inf else repr(bound)


def _bounds(buckets: Sequence[float], what: str) -> tuple[float, ...]:
    bounds = tuple(sorted(float(b) for b in buckets))
    if not bounds or any(math.isnan(b) for b in bounds) or len(set(bounds)) != len(bounds):
        raise ValueError(f"{what} must be distinct numbers, not {buckets!r}")
    return bounds if bounds[-1] == math.inf else (*bounds, math.inf)


_COUNTER_HELP = {
    "completed": "Jobs whose handler returned and whose result was stored.",
    "failed": "Jobs that failed for good (their last attempt raised).",
    "retried": "Attempts that raised and were put back for a retry.",
    "released": "Jobs returned to the queue unfinished by a shutdown (attempt not consumed).",
    "fenced": "Outcomes the storage refused because the lease had been taken over.",
}


@functools.cache
def default_metrics() -> Metrics:
    """The :class:`Metrics` of ``prometheus_client.REGISTRY`` (made on first use), which
    ``open_queue(..., metrics=True)`` and ``trio-jobqueue worker --metrics-port`` use."""
    return Metrics()


def render(
    registry: CollectorRegistry | None = None, accept: str | None = None
) -> tuple[bytes, str]:
    """The exposition of ``registry`` (default: ``prometheus_client.REGISTRY``) and its
    content type, in the format the ``Accept`` header ``accept`` asks for (OpenMetrics
    or the Prometheus text format, the default), e.g. for a ``/metrics`` route::

        body, content_type = render(registry, request.headers.get("accept"))

    Collecting runs synchronously (about a millisecond for a few hundred series)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY if registry is None else registry), content_type


async def serve_metrics(
    port: int,
    registry: CollectorRegistry | None = None,
    *,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``registry`` (default: ``prometheus_client.REGISTRY``) over HTTP on
    ``host:port`` at ``/metrics`` (and ``/``) until cancelled; for ``nursery.start``,
    which returns the bound port (useful with ``port=0``).

    A small HTTP/1.1 server on trio's own sockets, one request per connection (what
    Prometheus sends): ``GET``/``HEAD``, ``Accept`` picks the format, ``Accept-Encoding:
    gzip`` compresses. (``prometheus_client.start_http_server`` would run a thread of its
    own outside the nursery: it would outlive the task, and its errors could not reach
    the caller.) Binds to the loopback by default; pass ``host="0.0.0.0"`` (or an
    address) to be scraped from elsewhere.

    Raises:
        OSError: the address cannot be bound (before ``task_status.started``).
    """
    handler = functools.partial(_handle, REGISTRY if registry is None else registry)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


async def _handle(registry: CollectorRegistry, stream: trio.SocketStream) -> None:
    """Answer one scrape on ``stream``, then close it. Never raises (a failing
    connection must not stop the server)."""
    try:
        with trio.move_on_after(REQUEST_TIMEOUT):
            head = await _read_head(stream)
            if head is None:
                await _respond(stream, 431, b"request head too large\n")
            elif head:
                await _answer(registry, stream, head)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the scraper went away
    except Exception:
        log.exception("metrics: a scrape failed")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await stream.aclose()


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request's head (``b""``: the connection closed first; ``None``: too large)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_REQUEST:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return b""
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


async def _answer(registry: CollectorRegistry, stream: trio.SocketStream, head: bytes) -> None:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        await _respond(stream, 400, b"bad request line\n")
        return
    method, target = parts[0], parts[1]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip().decode("latin-1")
    if target.split(b"?", 1)[0] not in (b"/metrics", b"/"):
        await _respond(stream, 404, b"not found: the metrics are at /metrics\n")
        return
    if method not in (b"GET", b"HEAD"):
        await _respond(stream, 405, b"only GET and HEAD\n", extra=[("Allow", "GET, HEAD")])
        return
    try:
        body, content_type = render(registry, headers.get(b"accept"))
    except Exception:
        log.exception("metrics: collecting the registry failed")
        await _respond(stream, 500, b"collecting the metrics failed (see the logs)\n")
        return
    extra = []
    if "gzip" in headers.get(b"accept-encoding", ""):
        body = gzip.compress(body, compresslevel=5)
        extra.append(("Content-Encoding", "gzip"))
    await _respond(stream, 200, body, content_type, extra, head_only=method == b"HEAD")


async def _respond(
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra: list[tuple[str, str]] | None = None,
    *,
    head_only: bool = False,
) -> None:
    fields = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())),
        ("Connection", "close"),
        *(extra or []),
    ]
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields
    )
    await stream.send_all(head.encode("latin-1") + b"\r\n" + (b"" if head_only else body))
