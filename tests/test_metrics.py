"""Prometheus metrics (``trio_jobqueue.metrics``): scraped over HTTP from ``serve_metrics``
after jobs that complete, retry, fail and are released, on Memory and on a real Redis;
the scrape endpoint's HTTP handling; the worker CLI's ``--metrics-port``."""

from __future__ import annotations

import contextlib
import gzip
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _proc_harness import TESTS, cli_env
from fixtures_redis import free_port
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import trio_jobqueue as jq
from trio_jobqueue.metrics import STATES, Metrics, render, serve_metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(
    port: int, path: str = "/metrics", *, method: str = "GET", headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to 127.0.0.1:port: (status, headers, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


def parse(body: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape(port: int) -> Samples:
    status, _, body = await http_get(port)
    assert status == 200, body
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Callable[[], jq.Storage]:
    factory: Callable[[], jq.Storage] = request.getfixturevalue(f"{request.param}_storage_factory")
    return factory


async def test_counters_histograms_and_gauges_scraped_over_http(
    backend: Callable[[], jq.Storage],
) -> None:
    """After jobs that complete, retry then complete, fail for good and one released by
    the shutdown, a scrape shows each counter, the histograms' counts, the job in
    flight, reaper leadership and the depth per state; after the queue stops, the
    counters stay and its gauges go."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, depth_interval=3600)
    name = f"m-{uuid.uuid4().hex[:8]}"
    holding = trio.Event()

    async def handler(job: jq.Job[str]) -> str:
        if job.payload == "hold":
            holding.set()
            await trio.sleep_forever()
        if job.payload == "bad" or (job.payload == "flaky" and job.attempt == 1):
            raise ValueError(job.payload)
        return "ok"

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, 0, registry)
        async with jq.open_queue(
            backend(), handler, name=name, concurrency=4, max_attempts=2, retry_delay=0,
            shutdown_grace=0, metrics=metrics,
        ) as queue:  # fmt: skip
            for job_id in ("ok-1", "ok-2"):
                assert await queue.enqueue_and_wait(job_id, "ok", timeout=20) == "ok"
            assert await queue.enqueue_and_wait("flaky", "flaky", timeout=20) == "ok"
            with pytest.raises(jq.JobFailedError):
                await queue.enqueue_and_wait("bad", "bad", timeout=20)
            await queue.enqueue("hold", "hold")
            with trio.fail_after(20):
                await holding.wait()
            await metrics.update_depth(queue)
            live = await scrape(port)
        after = await scrape(port)
        nursery.cancel_scope.cancel()

    q = {"queue": name}
    for samples in (live, after):
        assert value(samples, "trio_jobqueue_jobs_completed_total", **q) == 3
        assert value(samples, "trio_jobqueue_jobs_retried_total", **q) == 2
        assert value(samples, "trio_jobqueue_jobs_failed_total", **q) == 1
        assert value(samples, "trio_jobqueue_jobs_fenced_total", **q) == 0
        # completed x3, retried x2, failed x1: the handlers that ran to their end
        assert value(samples, "trio_jobqueue_handler_duration_seconds_count", **q) == 6
        # the first attempts of ok-1, ok-2, flaky, bad, hold
        assert value(samples, "trio_jobqueue_queue_wait_seconds_count", **q) == 5
    assert value(live, "trio_jobqueue_jobs_released_total", **q) == 0
    assert value(after, "trio_jobqueue_jobs_released_total", **q) == 1
    assert value(live, "trio_jobqueue_jobs_in_flight", **q) == 1
    assert value(live, "trio_jobqueue_reaper_leader", **q) == 1
    depth = {s: value(live, "trio_jobqueue_queue_jobs", queue=name, state=s) for s in STATES}
    assert depth == {
        "scheduled": 0, "queued": 0, "delayed": 0, "processing": 1, "completed": 3, "failed": 1,
    }  # fmt: skip
    assert value(after, "trio_jobqueue_jobs_in_flight", **q) is None
    assert value(after, "trio_jobqueue_reaper_leader", **q) is None
    assert value(after, "trio_jobqueue_queue_jobs", queue=name, state="completed") is None


async def test_scrape_endpoint_speaks_http() -> None:
    """The endpoint answers GET and HEAD at /metrics and /, gzips and speaks OpenMetrics
    when asked, refuses other paths, methods and garbage, and survives a client that
    hangs up mid-request."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.job_settled("q", _claim(), "completed", 0.25)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, 0, registry)
        status, headers, body = await http_get(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b'trio_jobqueue_jobs_completed_total{queue="q"} 1.0' in body
        status, headers, zipped = await http_get(port, headers="Accept-Encoding: gzip\r\n")
        assert headers["content-encoding"] == "gzip" and gzip.decompress(zipped) == body
        accept = "Accept: application/openmetrics-text; version=1.0.0\r\n"
        status, headers, body = await http_get(port, headers=accept)
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        status, headers, body = await http_get(port, method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert (await http_get(port, "/other"))[0] == 404
        assert (await http_get(port, method="POST"))[0] == 405
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /metr")
        await stream.aclose()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"nonsense\r\n\r\n")
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 400 ")
        assert (await http_get(port))[0] == 200
        nursery.cancel_scope.cancel()


def _claim() -> Any:
    from trio_jobqueue.storage import Claim

    return Claim("j", b"{}", 1, 3, 0.0, "t", 30.0, 60.0)


async def test_default_registry_and_render() -> None:
    """``metrics=True`` counts into the default registry, which ``render`` exposes; a
    second ``Metrics`` on one registry is refused."""
    name = f"d-{uuid.uuid4().hex[:8]}"

    async def handler(job: jq.Job[int]) -> int:
        return job.payload

    async with jq.open_queue(jq.MemoryStorage(), handler, name=name, metrics=True) as queue:
        await queue.enqueue_and_wait("one", 1, timeout=20)
    body, content_type = render()
    assert content_type.startswith("text/plain")
    assert value(parse(body), "trio_jobqueue_jobs_completed_total", queue=name) == 1
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


def test_importing_the_package_imports_neither_extra() -> None:
    """``import trio_jobqueue`` loads neither prometheus_client nor opentelemetry."""
    code = (
        "import sys, trio_jobqueue; "
        "print(sorted({'prometheus_client', 'opentelemetry'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60
    )
    assert out.stdout.strip() == "[]", out


def _spawn_worker(url: str, name: str, port: int, runs: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "trio_jobqueue", "worker", "_proc_handlers:record",
            "--storage", url, "--name", name, "--metrics-port", str(port),
            "--max-attempts", "1", "--log-level", "WARNING",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(runs), cwd=TESTS,
    )  # fmt: skip


@pytest.mark.redis
async def test_worker_cli_serves_metrics(redis_server: Any, tmp_path: Path) -> None:
    """``trio-jobqueue worker --metrics-port`` serves the counters of the jobs it ran."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    port = free_port()
    proc = _spawn_worker(redis_server.url, name, port, tmp_path)
    try:
        async with jq.open_queue(jq.RedisStorage(redis_server.url), name=name) as queue:
            await queue.enqueue_many([("a", {}), ("b", {}), ("c", {"fail": True})])
            samples: Samples = {}
            with trio.fail_after(30):
                while value(samples, "trio_jobqueue_jobs_failed_total", queue=name) != 1 or (
                    value(samples, "trio_jobqueue_jobs_completed_total", queue=name) != 2
                ):
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    await trio.sleep(0.05)  # the worker is another process
                    with contextlib.suppress(OSError):  # not listening yet
                        samples = await scrape(port)
        assert value(samples, "trio_jobqueue_jobs_in_flight", queue=name) == 0
        assert value(samples, "trio_jobqueue_reaper_leader", queue=name) == 1
        assert value(samples, "process_cpu_seconds_total") is not None  # the default registry
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


async def test_a_failing_metrics_hook_never_stops_a_job(caplog: pytest.LogCaptureFixture) -> None:
    """A metrics object whose hooks raise is logged; the jobs complete all the same."""

    class Broken(Metrics):
        def job_claimed(self, ns: str, claim: Any, claimed_at: float) -> None:
            raise RuntimeError("claimed hook")

        def job_settled(self, ns: str, claim: Any, outcome: str, duration: float) -> None:
            raise RuntimeError("settled hook")

    async def handler(job: jq.Job[int]) -> int:
        return job.payload * 2

    async with jq.open_queue(jq.MemoryStorage(), handler, metrics=Broken(None)) as queue:
        assert await queue.enqueue_and_wait("one", 21, timeout=20) == 42
        assert queue.statistics().completed == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "the metrics hook failed (job 'one')"
    ] * 2
