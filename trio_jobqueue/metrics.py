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

What a job costs: the counters and histograms are updated when a job is claimed and when
it is settled (a few microseconds, measured in ``docs/performance.md``); the gauges are
read when the registry is collected (jobs in flight, reaper leadership) or by one
periodic task per queue (queue depth, every ``depth_interval`` seconds: one
``Queue.counts()`` call, whatever the number of jobs).
"""

from __future__ import annotations

import contextlib
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
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily
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
class _Series:
    """One queue's label children (looked up once, not per job)."""

    counters: dict[str, Any]
    duration: Any
    wait: Any


class Metrics:
    """The metrics of the queues given it (``open_queue(..., metrics=...)``).

    Args:
        registry: where the metrics are registered (``prometheus_client.REGISTRY`` by
            default; ``None`` registers them nowhere: collect them with
            :meth:`collect`).
        prefix: the metric names' prefix.
        duration_buckets: buckets (seconds) of the handler duration histogram.
        wait_buckets: buckets (seconds) of the queue wait histogram.
        depth_interval: seconds between two reads of each queue's depth per state.

    Raises:
        ValueError: ``registry`` already has metrics of these names (make one
            ``Metrics`` per registry and share it between queues).
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
        self.registry = registry
        self.prefix = prefix
        self.depth_interval = float(depth_interval)
        self._own = CollectorRegistry(auto_describe=True)
        """Holds every metric; registered in ``registry`` as one collector."""
        self._counters = {
            outcome: Counter(
                f"{prefix}_jobs_{outcome}",
                _COUNTER_HELP[outcome],
                ["queue"],
                registry=self._own,
            )
            for outcome in OUTCOMES
        }
        self._duration = Histogram(
            f"{prefix}_handler_duration_seconds",
            "Run time of handlers that returned or raised (completed, retried, failed).",
            ["queue"],
            buckets=tuple(duration_buckets),
            registry=self._own,
        )
        self._wait = Histogram(
            f"{prefix}_queue_wait_seconds",
            "Time from enqueue (created_at) to the first claim of a job.",
            ["queue"],
            buckets=tuple(wait_buckets),
            registry=self._own,
        )
        self._depth = Gauge(
            f"{prefix}_queue_jobs",
            "Jobs in the storage per state (read every depth_interval seconds).",
            ["queue", "state"],
            registry=self._own,
        )
        self._live = _LiveCollector(self)
        self._own.register(self._live)
        self._series: dict[str, _Series] = {}
        self._queues: dict[int, Queue[Any, Any]] = {}
        if registry is not None:
            registry.register(self)

    # -- the registry's view --------------------------------------------------------------

    def collect(self) -> Iterable[prometheus_client.Metric]:
        """Every metric (the ``prometheus_client`` collector protocol)."""
        return self._own.collect()

    def describe(self) -> Iterable[prometheus_client.Metric]:
        """The metrics' names for the registry's duplicate check (no values)."""
        return list(self._own.collect())

    # -- the hooks a queue calls ----------------------------------------------------------

    def _bind(self, ns: str) -> _Series:
        series = self._series.get(ns)
        if series is None:
            series = self._series[ns] = _Series(
                counters={o: c.labels(queue=ns) for o, c in self._counters.items()},
                duration=self._duration.labels(queue=ns),
                wait=self._wait.labels(queue=ns),
            )
        return series

    def job_claimed(self, ns: str, claim: Claim, claimed_at: float) -> None:
        """A worker of ``ns`` claimed ``claim`` at ``claimed_at`` (storage clock)."""
        if claim.attempt == 1:
            series = self._series.get(ns) or self._bind(ns)
            series.wait.observe(max(claimed_at - claim.created_at, 0.0))

    def job_settled(self, ns: str, claim: Claim, outcome: str, duration: float) -> None:
        """A worker of ``ns`` settled ``claim`` with ``outcome`` after ``duration`` s."""
        series = self._series.get(ns) or self._bind(ns)
        series.counters[outcome].inc()
        if outcome in _RAN:
            series.duration.observe(duration)

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
                for state in STATES:
                    with contextlib.suppress(KeyError):
                        self._depth.remove(queue.name, state)

    async def update_depth(self, queue: Queue[Any, Any]) -> None:
        """Read ``queue``'s counts per state now (the periodic task calls this)."""
        try:
            counts = await queue.counts()
        except JobQueueError as exc:
            log.warning("metrics: cannot read the depth of queue %r (%s)", queue.name, exc)
            return
        for state, count in counts.items():
            self._depth.labels(queue=queue.name, state=state).set(count)


_COUNTER_HELP = {
    "completed": "Jobs whose handler returned and whose result was stored.",
    "failed": "Jobs that failed for good (their last attempt raised).",
    "retried": "Attempts that raised and were put back for a retry.",
    "released": "Jobs returned to the queue unfinished by a shutdown (attempt not consumed).",
    "fenced": "Outcomes the storage refused because the lease had been taken over.",
}


class _LiveCollector(Collector):
    """The gauges read from the queues' own state when the registry is collected."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[prometheus_client.Metric]:
        return list(self._families({}))

    def collect(self) -> Iterable[prometheus_client.Metric]:
        # May run in another thread (prometheus_client's own HTTP server): copy first.
        queues = list(self._metrics._queues.values())
        in_flight: dict[str, int] = {}
        leader: dict[str, int] = {}
        for queue in queues:
            worker = queue.worker
            if worker is not None:
                in_flight[queue.name] = in_flight.get(queue.name, 0) + worker.stats.in_flight
            if queue.reaper is not None:
                leads = int(bool(queue.reaper.is_leader))
                leader[queue.name] = max(leader.get(queue.name, 0), leads)
        return list(self._families({"in_flight": in_flight, "leader": leader}))

    def _families(self, values: dict[str, dict[str, int]]) -> Iterator[prometheus_client.Metric]:
        prefix = self._metrics.prefix
        flight = GaugeMetricFamily(
            f"{prefix}_jobs_in_flight",
            "Jobs this process's workers are running now.",
            labels=["queue"],
        )
        for name, count in sorted(values.get("in_flight", {}).items()):
            flight.add_metric([name], count)
        yield flight
        leads = GaugeMetricFamily(
            f"{prefix}_reaper_leader",
            "1 when this process's reaper of the queue holds the leader lock, else 0.",
            labels=["queue"],
        )
        for name, lead in sorted(values.get("leader", {}).items()):
            leads.add_metric([name], lead)
        yield leads


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
