"""The dashboard's ASGI app driven in-process (httpx's ASGI transport, raw ASGI for the event
stream): pages, escaping, auth, CSRF, read-only, bad input. The browser test is
tests/test_web_browser.py."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import trio_jobqueue as jq
from trio_jobqueue.web import BasicAuth, TokenAuth, create_app

HOSTILE = '<script>alert("x")</script>'


async def _boom(job: jq.Job[Any]) -> None:
    raise ValueError(f"bad payload {job.payload!r} {HOSTILE}")


@asynccontextmanager
async def _dashboard(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, jq.Queue[Any, Any]]]:
    """A Memory storage whose queue ``mail`` has a failed job ``f-1`` (hostile payload), a
    failed job with a hostile id and a queued job ``q-1``; an httpx client on its app."""
    storage = jq.MemoryStorage()
    async with storage:
        async with jq.open_queue(storage, _boom, name="mail", max_attempts=1) as worker:
            for job_id in ("f-1", HOSTILE):
                with pytest.raises(jq.JobFailedError):
                    await worker.enqueue_and_wait(job_id, {"to": HOSTILE}, timeout=10)
        queue: jq.Queue[Any, Any]
        async with jq.open_queue(storage, name="mail") as queue:
            await queue.enqueue("q-1", {"big": "x" * 10_000})
            app = create_app(storage, **options)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
                yield client, queue


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None, "no action form on the page"
    return found.group(1)


async def test_pages_show_counts_and_escape_hostile_ids_and_payloads() -> None:
    """The overview shows the queue's counts; lists and the job page show a `<script>` id,
    payload and error as text (escaped); a large payload is cut in the list."""
    async with _dashboard() as (client, _):
        overview = await client.get("/")
        assert overview.status_code == 200
        assert re.search(r'data-count="failed">2<', overview.text)
        assert re.search(r'data-count="queued">1<', overview.text)
        failed = await client.get("/queue", params={"name": "mail", "state": "failed"})
        assert failed.status_code == 200
        assert HOSTILE not in failed.text and "&lt;script&gt;" in failed.text
        queued = await client.get("/queue", params={"name": "mail", "state": "queued"})
        assert "x" * 200 not in queued.text and "x" * 100 in queued.text
        job = await client.get("/job", params={"queue": "mail", "id": HOSTILE})
        assert job.status_code == 200
        assert HOSTILE not in job.text and "Traceback" in job.text and "ValueError" in job.text
        workers = await client.get("/workers")
        assert workers.status_code == 200


async def test_every_response_carries_the_security_headers() -> None:
    """A strict CSP without inline script (the script is a file), nosniff, no framing."""
    async with _dashboard() as (client, _):
        for path in ("/", "/static/app.js", "/job?queue=mail&id=nope"):
            response = await client.get(path)
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
        page = await client.get("/")
        assert "<script>" not in page.text and 'src="/static/app.js"' in page.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/job?queue=mail&id=nope", 404),
        ("/job?queue=mail&id=", 400),
        ("/job?queue=&id=f-1", 400),
        ("/queue?name=mail&state=bogus", 400),
        ("/queue?name=mail&state=queued&cursor=garbage", 400),
        ("/static/nope.js", 404),
    ],
)
async def test_bad_requests_get_a_clear_status(path: str, status: int) -> None:
    """Unknown jobs are 404; malformed ids, names, states and cursors a 4xx page."""
    async with _dashboard() as (client, _):
        response = await client.get(path)
        assert response.status_code == status, response.text
        assert 'id="error-message"' in response.text


async def test_retry_with_the_csrf_token_runs_the_job_again() -> None:
    """Retry (as the page's script posts it) moves the failed job back to queued."""
    async with _dashboard() as (client, queue):
        page = await client.get("/queue", params={"name": "mail", "state": "failed"})
        form = {"csrf": _csrf(page.text), "action": "retry", "queue": "mail", "id": "f-1"}
        done = await client.post("/action", data=form, headers={"x-requested-with": "fetch"})
        assert done.status_code == 200 and done.json()["status"] == "retried"
        status = await queue.get_status("f-1")
        assert status is not None and status.state is jq.JobState.QUEUED
        # Without the script: a plain form post answers 303 back to the job's page.
        form["id"] = HOSTILE
        plain = await client.post("/action", data=form)
        assert plain.status_code == 303 and plain.headers["location"].startswith("/job?")


async def test_actions_without_a_valid_csrf_token_or_from_another_origin_are_refused() -> None:
    """No token, a wrong token, a token without its cookie, another Origin: 403 and the
    job stays failed."""
    async with _dashboard() as (client, queue):
        page = await client.get("/")
        token = _csrf(page.text)
        base = {"action": "retry", "queue": "mail", "id": "f-1"}
        assert (await client.post("/action", data=base)).status_code == 403
        wrong = {**base, "csrf": "0" * 64}
        assert (await client.post("/action", data=wrong)).status_code == 403
        good = {**base, "csrf": token}
        foreign = await client.post("/action", data=good, headers={"origin": "http://evil"})
        assert foreign.status_code == 403
        transport = client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as fresh:
            assert (await fresh.post("/action", data=good)).status_code == 403
        status = await queue.get_status("f-1")
        assert status is not None and status.state is jq.JobState.FAILED


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"action": "explode", "queue": "mail", "id": "f-1"}, 400),
        ({"action": "retry", "queue": "mail"}, 400),
        ({"action": "delete", "queue": "", "id": "f-1"}, 400),
        ({"action": "delete", "queue": "mail", "id": "x" * 5000}, 400),
    ],
)
async def test_bad_action_input_is_a_4xx_and_writes_nothing(
    form: dict[str, str], status: int
) -> None:
    """An unknown action, a missing or invalid id or queue name: a 4xx, nothing deleted."""
    async with _dashboard() as (client, queue):
        token = _csrf((await client.get("/")).text)
        response = await client.post("/action", data={**form, "csrf": token})
        assert response.status_code == status, response.text
        assert (await queue.counts())["failed"] == 2


async def test_queues_outside_the_allowed_list_are_not_found() -> None:
    """With ``queues=``, other names are 404 for pages and actions alike."""
    async with _dashboard(queues=["other"]) as (client, queue):
        assert (await client.get("/queue", params={"name": "mail"})).status_code == 404
        token = _csrf((await client.get("/queue", params={"name": "other"})).text)
        form = {"csrf": token, "action": "retry_failed", "queue": "mail"}
        assert (await client.post("/action", data=form)).status_code == 404
        assert (await queue.counts())["failed"] == 2


async def test_read_only_hides_and_refuses_actions() -> None:
    """Read-only pages have no action form, and a posted action is 403."""
    async with _dashboard(read_only=True) as (client, queue):
        page = await client.get("/queue", params={"name": "mail", "state": "failed"})
        assert 'name="csrf"' not in page.text and "read-only" in page.text
        form = {"action": "retry_failed", "queue": "mail", "csrf": "x"}
        assert (await client.post("/action", data=form)).status_code == 403
        assert (await queue.counts())["failed"] == 2


async def test_basic_auth_guards_every_page_but_the_assets() -> None:
    """Without or with wrong credentials: 401 with a Basic challenge; right ones: 200."""
    async with _dashboard(auth=BasicAuth("admin", "s3cret:x")) as (client, _):
        denied = await client.get("/")
        assert denied.status_code == 401 and "Basic" in denied.headers["www-authenticate"]
        wrong = base64.b64encode(b"admin:nope").decode()
        assert (
            await client.get("/", headers={"authorization": f"Basic {wrong}"})
        ).status_code == 401
        assert (await client.get("/", headers={"authorization": "Basic %%%"})).status_code == 401
        right = base64.b64encode(b"admin:s3cret:x").decode()
        ok = await client.get("/", headers={"authorization": f"Basic {right}"})
        assert ok.status_code == 200
        assert (await client.get("/static/style.css")).status_code == 200


async def test_token_auth_by_header_or_sign_in() -> None:
    """A bearer token works as a header; the sign-in form sets a session cookie."""
    async with _dashboard(auth=TokenAuth("tok-123456")) as (client, _):
        denied = await client.get("/")
        assert denied.status_code == 401 and 'name="token"' in denied.text
        bearer = await client.get("/", headers={"authorization": "Bearer tok-123456"})
        assert bearer.status_code == 200
        assert (await client.post("/login", data={"token": "wrong"})).status_code == 401
        assert (await client.get("/")).status_code == 401
        signed = await client.post("/login", data={"token": "tok-123456"})
        assert signed.status_code == 303
        assert (await client.get("/")).status_code == 200


async def test_event_stream_sends_the_jobs_events_and_change_hints() -> None:
    """The job page's stream carries that job's events as they happen (raw ASGI)."""
    storage = jq.MemoryStorage()
    async with storage, jq.open_queue(storage, name="mail") as queue:
        app = create_app(storage)
        to_app, from_test = trio.open_memory_channel[dict[str, Any]](10)
        to_test, from_app = trio.open_memory_channel[dict[str, Any]](100)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/events",
            "raw_path": b"/events",
            "root_path": "",
            "query_string": b"queue=mail&job=j-1",
            "headers": [(b"host", b"dash")],
            "server": ("dash", 80),
            "client": ("127.0.0.1", 1),
        }
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app, scope, from_test.receive, to_test.send)
            start = await from_app.receive()
            assert start["status"] == 200
            assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
            assert (await from_app.receive())["body"].startswith(b": live")
            await trio.sleep(0.05)  # the feed subscribes
            await queue.enqueue("j-1", {"n": 1})
            body = b""
            with trio.fail_after(10):
                while b"event: job" not in body:
                    body += (await from_app.receive())["body"]
            data = body.split(b"event: job\ndata: ", 1)[1].split(b"\n", 1)[0]
            assert json.loads(data)["kind"] == "enqueued"
            await to_app.send({"type": "http.disconnect"})
    # The app returned once the client went away (the nursery closed).


def test_importing_the_package_does_not_import_the_web_stack() -> None:
    """`import trio_jobqueue` loads neither Starlette, hypercorn nor Jinja2."""
    code = (
        "import sys, trio_jobqueue, trio_jobqueue.cli\n"
        "loaded = [m for m in ('starlette', 'hypercorn', 'jinja2') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_jobqueue", *args], capture_output=True, text=True, timeout=60
    )


def test_web_refuses_a_public_address_without_auth() -> None:
    """`web --bind 0.0.0.0:...` without --auth/--token: one-line error, exit 2."""
    done = _cli("web", "--storage", "memory://", "--bind", "0.0.0.0:0")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "without --auth or --token" in done.stderr
    bad = _cli("web", "--storage", "memory://", "--bind", "nope")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def test_queues_command_lists_the_names(tmp_path: Path) -> None:
    """`queues` prints every queue holding something, one a line."""
    url = f"file://{tmp_path}/q"
    for name in ("b-queue", "a queue/ü"):
        assert _cli("enqueue", "j", "{}", "--storage", url, "--name", name).returncode == 0
    done = _cli("queues", "--storage", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a queue/ü\nb-queue\n"


async def test_mounted_under_a_path_links_and_actions_follow_it() -> None:
    """Mounted at /jobs of another Starlette app (its lifespan run by the host's), every
    link, form and redirect carries the prefix."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.routing import Mount

    storage = jq.MemoryStorage()
    async with storage, jq.open_queue(storage, name="mail") as queue:
        await queue.enqueue("a", 1)
        dashboard = create_app(storage)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with dashboard.router.lifespan_context(dashboard):
                yield

        host = Starlette(routes=[Mount("/jobs", app=dashboard)], lifespan=lifespan)
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            page = await client.get("/jobs/queue", params={"name": "mail", "state": "queued"})
            assert page.status_code == 200
            links = re.findall(r'\s(?:href|src|action)="([^"]+)"', page.text)
            assert links and [x for x in links if not x.startswith("/jobs/")] == [], links
            form = {"csrf": _csrf(page.text), "action": "delete", "queue": "mail", "id": "a"}
            done = await client.post("/jobs/action", data=form)
            assert done.status_code == 303 and done.headers["location"] == "/jobs/queue?name=mail"
        assert await queue.get_status("a") is None


def test_web_command_serves_until_sigterm(tmp_path: Path) -> None:
    """`web` prints its address, serves the pages, refuses a second server on the same
    port (exit 2), fails with exit 3 on an unreachable storage, and exits 0 on SIGTERM."""
    import signal

    from fixtures_redis import free_port

    port = free_port()
    url = f"file://{tmp_path}/q"
    assert _cli("enqueue", "j-1", "{}", "--storage", url, "--name", "mail").returncode == 0
    args = [sys.executable, "-m", "trio_jobqueue", "web", "-s", url, "-b", f"127.0.0.1:{port}"]
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as server:
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert line == f"dashboard of {url} on http://127.0.0.1:{port}/\n", line
            page = httpx.get(f"http://127.0.0.1:{port}/queue?name=mail&state=queued", timeout=10)
            assert page.status_code == 200 and "j-1" in page.text
            taken = _cli("web", "-s", url, "-b", f"127.0.0.1:{port}")
            assert taken.returncode == 2 and "cannot listen on" in taken.stderr, taken.stderr
            server.send_signal(signal.SIGTERM)
            _, errors = server.communicate(timeout=20)
            assert server.returncode == 0, errors
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
    down = _cli("web", "-s", "redis://127.0.0.1:1/0?retry_timeout=0.2", "-b", "127.0.0.1:0")
    assert down.returncode == 3 and down.stderr.startswith("trio-jobqueue: error: storage failed")


async def test_cancel_returns_to_the_queue_and_a_proxy_host_is_same_origin() -> None:
    """Cancelling a queued job (a form posted through a proxy that set X-Forwarded-Host)
    removes it and answers 303 to its queue; static files keep their own caching."""
    async with _dashboard() as (client, queue):
        token = _csrf((await client.get("/")).text)
        form = {"csrf": token, "action": "cancel", "queue": "mail", "id": "q-1"}
        headers = {"origin": "https://jobs.example", "x-forwarded-host": "jobs.example"}
        done = await client.post("/action", data=form, headers=headers)
        assert done.status_code == 303 and done.headers["location"] == "/queue?name=mail"
        assert await queue.get_status("q-1") is None
        asset = await client.get("/static/app.js")
        assert asset.headers.get_list("cache-control") == ["public, max-age=3600"]


async def test_metrics_route_exposes_every_queues_depth_paused_flag_and_workers() -> None:
    """`/metrics` on the dashboard is a Prometheus scrape of each queue's jobs per state,
    paused flag and live workers, read from the storage at the scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    async with _dashboard() as (client, queue):
        await queue.pause()
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }
        assert samples[("trio_jobqueue_queue_jobs", (("queue", "mail"), ("state", "failed")))] == 2
        assert samples[("trio_jobqueue_queue_jobs", (("queue", "mail"), ("state", "queued")))] == 1
        assert samples[("trio_jobqueue_queue_paused", (("queue", "mail"),))] == 1
        assert samples[("trio_jobqueue_queue_workers", (("queue", "mail"),))] == 0


@pytest.mark.redis
async def test_a_silent_storage_is_a_503_page_and_the_dashboard_recovers(
    redis_server: Any,
) -> None:
    """With the Redis connection gone silent (a proxy relays nothing, no FIN, no RST), a
    page answers 503 naming the storage failure within the storage's timeouts instead of
    hanging; once the network is back the same dashboard serves pages again."""
    from _tcp_proxy import TcpProxy

    from trio_jobqueue.storage.redis import RedisStorage

    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(redis_server.port)
        await nursery.start(proxy.serve)
        storage = RedisStorage(
            proxy.url,
            key_prefix=f"web-{time.monotonic_ns()}",
            command_timeout=0.5,
            retry_timeout=1.0,
        )
        async with storage, jq.open_queue(storage, name="mail") as queue:
            await queue.enqueue("q-1", {"n": 1})
            app = create_app(storage, queues=["mail"])
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
                page = {"name": "mail", "state": "queued"}
                assert (await client.get("/queue", params=page)).status_code == 200
                proxy.freeze()
                with trio.fail_after(30):
                    failed = await client.get("/queue", params=page)
                assert failed.status_code == 503
                assert "the storage failed" in failed.text
                proxy.thaw(stale="drop")
                with trio.fail_after(30):
                    back = await client.get("/queue", params=page)
                assert back.status_code == 200 and "q-1" in back.text
        nursery.cancel_scope.cancel()
