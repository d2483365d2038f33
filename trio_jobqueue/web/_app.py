"""The dashboard's ASGI app: routes, authentication, CSRF, live updates.

Every page is server-rendered (Jinja2, autoescaped); one small script (``static/app.js``,
no framework) keeps a page live: it listens to the page's server-sent events and, when
something happened, fetches the page's fragment again (``?fragment=1``) and swaps it in.
Actions are POST forms carrying a CSRF token; the script submits them with ``fetch`` (no
reload), and without the script they work as plain forms (303 back to the page).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import importlib.resources
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import jinja2
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .._config import QueueConfig
from .._errors import InvalidJobError, StorageError
from .._queue import Queue, _new_queue
from .._types import JobState, JobStatus, WorkerInfo
from .._validate import check_job_id, check_name
from ..storage import Storage
from ._view import LenientJson, Throughput, chart, short, show_value, when

__all__ = ["BasicAuth", "TokenAuth", "create_app"]

log = logging.getLogger("trio_jobqueue.web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PAGE_SIZE = 50
"""Jobs per page of a queue's list."""
LIST_PREVIEW = 120
"""Characters of a payload or error shown in lists."""
DETAIL_LIMIT = 64 * 1024
"""Characters of a payload, result or traceback shown on a job's page."""
NAMES_TTL = 10.0
"""Seconds the list of queue names is reused before the storage is asked again (at least;
see :meth:`_Dashboard.names`)."""
NAMES_SHARE = 0.05
"""Most of the time spent re-reading the queue names (a Redis ``SCAN`` of every key):
after a read that took ``t`` seconds, the next waits at least ``t / NAMES_SHARE``."""
MAX_FOLLOWED = 100
"""Most queues whose events the dashboard follows at once (throughput, live pages)."""
MAX_FORM = 16 * 1024
"""Largest action form accepted (bytes)."""
TICK = 5.0
"""Seconds between refresh hints on live pages (workers and counts change without events)."""
STATES = [
    JobState.FAILED,
    JobState.FAILING,
    JobState.PROCESSING,
    JobState.QUEUED,
    JobState.SCHEDULED,
    JobState.COMPLETED,
]
"""The tabs of a queue's page, in order."""
COUNT_OF = {
    JobState.SCHEDULED: "scheduled",
    JobState.QUEUED: "queued",
    JobState.FAILING: "delayed",
    JobState.PROCESSING: "processing",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
}
"""Which of ``Queue.counts()`` a tab shows (``failing`` jobs waiting out their delay are
``delayed``; those whose retry is due count as ``queued``)."""
CSRF_COOKIE = "jq_csrf"
AUTH_COOKIE = "jq_auth"
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
ACTIONS = {"retry", "delete", "cancel", "retry_failed", "pause", "resume"}
JOB_ACTIONS = {"retry", "delete", "cancel"}


@attrs.frozen
class BasicAuth:
    """HTTP basic authentication with one user name and password."""

    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class TokenAuth:
    """A bearer token: ``Authorization: Bearer <token>``, or typed once into the login
    form (the browser then keeps a session cookie)."""

    token: str = attrs.field(repr=False)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _asset(name: str) -> bytes:
    return importlib.resources.files(__package__).joinpath("static", name).read_bytes()


@attrs.define(eq=False)
class _Dashboard:
    storage: Storage
    queues: tuple[str, ...] | None
    read_only: bool
    auth: BasicAuth | TokenAuth | None
    secret: bytes = attrs.field(factory=lambda: secrets.token_bytes(32))
    throughput: Throughput = attrs.field(factory=Throughput)
    _handles: dict[str, Queue[Any, Any]] = attrs.field(factory=dict)
    _names: list[str] | None = None
    _names_at: float = -1e9
    _names_took: float = 0.0
    _refreshing: bool = False
    """Whether the lifespan's task keeps the names fresh (requests then never scan)."""
    _open_lock: trio.Lock = attrs.field(factory=trio.Lock)
    _opened_here: bool = False
    env: jinja2.Environment = attrs.field(init=False)
    assets: dict[str, tuple[bytes, bytes]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader(__package__, "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.assets = {
            "app.js": (b"text/javascript; charset=utf-8", _asset("app.js")),
            "style.css": (b"text/css; charset=utf-8", _asset("style.css")),
        }

    # -- storage and queues --------------------------------------------------------

    async def ensure_open(self) -> None:
        """Open the storage on first use when the server did not run the app's lifespan
        (it stays open until the lifespan's end, or the process's)."""
        if self.storage.is_open:
            return
        async with self._open_lock:
            if not self.storage.is_open:
                await self.storage.__aenter__()
                self._opened_here = True

    def queue(self, name: str) -> Queue[Any, Any]:
        handle = self._handles.get(name)
        if handle is None:
            config = QueueConfig(name=name, serializer=LenientJson())
            handle = self._handles[name] = _new_queue(self.storage, config)
        return handle

    def allowed(self, name: str) -> str:
        try:
            check_name(name)
        except InvalidJobError as exc:
            raise _HttpError(400, str(exc)) from None
        if self.queues is not None and name not in self.queues:
            raise _HttpError(404, "no such queue on this dashboard")
        return name

    async def names(self) -> list[str]:
        """The queues to show: ``queues=``, else the storage's, cached.

        With the lifespan running, its task re-reads them in the background and requests
        never wait for it (but the first); otherwise a request re-reads them when they
        are older than the refresh interval (:meth:`_names_due`).
        """
        if self.queues is not None:
            return list(self.queues)
        if self._names is None or (not self._refreshing and self._names_due()):
            await self.refresh_names()
        assert self._names is not None
        return self._names

    def _names_due(self) -> bool:
        wait = max(NAMES_TTL, self._names_took / NAMES_SHARE)
        return trio.current_time() - self._names_at >= wait

    async def refresh_names(self) -> None:
        started = trio.current_time()
        self._names = await self.storage.list_namespaces()
        self._names_at = trio.current_time()
        self._names_took = self._names_at - started

    # -- the lifespan: storage and the throughput counter ---------------------------

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        async with self.storage, trio.open_nursery() as nursery:
            nursery.start_soon(self._count_throughput)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
        if self._opened_here:
            self._opened_here = False
            await self.storage.__aexit__(None, None, None)

    async def _count_throughput(self) -> None:
        self.throughput.started = time.time()
        followed: set[str] = set()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    if self.queues is None and (self._names is None or self._names_due()):
                        await self.refresh_names()
                    names = await self.names()
                    self._refreshing = self.queues is None
                except StorageError as exc:
                    log.warning("cannot list the queues: %s", exc)
                    self._refreshing = False
                    names = []
                for name in names:
                    if name not in followed and len(followed) < MAX_FOLLOWED:
                        followed.add(name)
                        nursery.start_soon(self._follow, name)
                await trio.sleep(NAMES_TTL / 2)

    async def _follow(self, name: str) -> None:
        while True:
            try:
                async with self.queue(name).events() as events:
                    async for event in events:
                        self.throughput.record(name, event.kind, time.time())
            except StorageError as exc:
                log.warning("lost the events of queue %r: %s", name, exc)
            except Exception:
                # The chart is not worth the server: log, and follow again.
                log.exception("counting the events of queue %r failed", name)
            await trio.sleep(1.0)

    # -- sessions, CSRF -------------------------------------------------------------

    def csrf_token(self, session: str) -> str:
        return hmac.new(self.secret, b"csrf:" + session.encode(), hashlib.sha256).hexdigest()

    def auth_cookie(self) -> str:
        assert isinstance(self.auth, TokenAuth)
        return hmac.new(self.secret, b"auth:" + self.auth.token.encode(), "sha256").hexdigest()

    def authorized(self, headers: dict[bytes, bytes], cookies: dict[str, str]) -> bool:
        if self.auth is None:
            return True
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, value = given.partition(" ")
        if isinstance(self.auth, BasicAuth):
            if scheme.lower() != "basic":
                return False
            try:
                user, _, password = base64.b64decode(value, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return False
            want_user = self.auth.username.encode("utf-8")
            want_password = self.auth.password.encode("utf-8")
            # Both compared (no early exit on the user name).
            ok_user = hmac.compare_digest(user, want_user)
            ok_password = hmac.compare_digest(password, want_password)
            return ok_user and ok_password
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.encode("utf-8"), self.auth.token.encode("utf-8"))
        cookie = cookies.get(AUTH_COOKIE, "")
        return hmac.compare_digest(cookie.encode("latin-1"), self.auth_cookie().encode())

    # -- rendering ------------------------------------------------------------------

    def render(self, request: Request, template: str, **context: Any) -> Response:
        session, fresh = _session(request)
        base = request.scope.get("root_path", "")
        page = self.env.get_template(template).render(
            base=base,
            url=lambda path, **params: _url(base, path, params),
            csrf=self.csrf_token(session),
            read_only=self.read_only,
            fragment=request.query_params.get("fragment") == "1",
            **context,
        )
        response = HTMLResponse(page)
        if fresh:
            _set_cookie(response, request, CSRF_COOKIE, session)
        return response


def _url(base: str, path: str, params: dict[str, Any]) -> str:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return f"{base}{path}" + (f"?{query}" if query else "")


def _session(request: Request) -> tuple[str, bool]:
    session = request.cookies.get(CSRF_COOKIE, "")
    if len(session) >= 32 and session.isascii() and session.isalnum():
        return session, False
    return secrets.token_hex(24), True


def _set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=(request.scope.get("root_path", "") or "") + "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


# -- the security layer ------------------------------------------------------------------


@attrs.define
class _Security:
    """Pure ASGI middleware: authentication first, then security headers on every
    response."""

    app: Callable[[Scope, Receive, Send], Awaitable[None]]
    dash: _Dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = headers
            await send(message)

        request = Request(scope)
        headers = dict(scope.get("headers", []))
        path = scope.get("path", "")[len(scope.get("root_path", "")) :] or "/"
        public = path.startswith("/static/") or (
            path == "/login" and isinstance(self.dash.auth, TokenAuth)
        )
        if public or self.dash.authorized(headers, dict(request.cookies)):
            await self.app(scope, receive, secured)
            return
        if isinstance(self.dash.auth, BasicAuth):
            response: Response = Response(
                "authentication required\n",
                status_code=401,
                headers={"www-authenticate": 'Basic realm="trio-jobqueue", charset="UTF-8"'},
            )
        else:
            page = self.dash.env.get_template("login.html").render(
                base=scope.get("root_path", ""), failed=False
            )
            response = HTMLResponse(page, status_code=401)
        await response(scope, receive, secured)


# -- pages -------------------------------------------------------------------------------


def _status_row(job: JobStatus, payload: Any, now: float) -> dict[str, Any]:
    error = None if job.error is None else f"{job.error.type}: {job.error.message}"
    return {
        "id": job.id,
        "state": job.state.value,
        "attempts": f"{job.attempts}/{job.max_attempts}",
        "priority": job.priority,
        "created": when(job.created_at, now),
        "when": when(job.run_at or job.finished_at, now),
        "payload": short(payload, LIST_PREVIEW),
        "error": None if error is None else short(error, LIST_PREVIEW),
    }


def _worker_row(worker: WorkerInfo, now: float) -> dict[str, Any]:
    return {
        "id": worker.id,
        "kind": worker.kind,
        "host": worker.host,
        "pid": worker.pid,
        "state": worker.state,
        "started": when(worker.started_at, now),
        "seen": when(worker.last_seen, now),
        "concurrency": worker.concurrency,
        "in_flight": worker.in_flight,
        "jobs": list(worker.jobs[:20]),
        "more_jobs": max(len(worker.jobs) - 20, 0),
        "leader": worker.is_reaper_leader,
        "completed": worker.counters.get("completed", 0),
        "failed": worker.counters.get("failed", 0),
    }


async def _gather(calls: Iterable[Callable[[], Awaitable[Any]]], limit: int = 16) -> list[Any]:
    """Run ``calls`` concurrently (at most ``limit`` at once); their results in order."""
    pending = list(calls)
    results: list[Any] = [None] * len(pending)
    limiter = trio.CapacityLimiter(limit)

    async def one(index: int, call: Callable[[], Awaitable[Any]]) -> None:
        async with limiter:
            results[index] = await call()

    async with trio.open_nursery() as nursery:
        for index, call in enumerate(pending):
            nursery.start_soon(one, index, call)
    return results


async def _overview(dash: _Dashboard, request: Request) -> Response:
    names = await dash.names()
    now = time.time()

    async def row(name: str) -> dict[str, Any]:
        queue = dash.queue(name)
        counts = await queue.counts()
        paused = await queue.is_paused()
        workers = await queue.workers()
        buckets = dash.throughput.buckets(name, now)
        return {
            "name": name,
            "counts": counts,
            "paused": paused,
            "workers": sum(1 for w in workers if w.kind == "worker"),
            "in_flight": sum(w.in_flight for w in workers),
            "chart": chart(buckets),
        }

    rows = await _gather([functools.partial(row, name) for name in names])
    return dash.render(
        request,
        "overview.html",
        title="Queues",
        rows=rows,
        counting=dash.throughput.started is not None,
        live=_url(request.scope.get("root_path", ""), "/events", {}),
    )


async def _queue_page(dash: _Dashboard, request: Request) -> Response:
    params = request.query_params
    name = dash.allowed(params.get("name", ""))
    queue = dash.queue(name)
    search = params.get("id")
    base = request.scope.get("root_path", "")
    if search:
        try:
            job_id = check_job_id(search)
        except InvalidJobError as exc:
            raise _HttpError(400, str(exc)) from None
        if await queue.get_status(job_id) is not None:
            return RedirectResponse(_url(base, "/job", {"queue": name, "id": job_id}), 303)
    counts = await queue.counts()
    state_text = params.get("state")
    if state_text is None:
        state = JobState.FAILED if counts["failed"] else JobState.QUEUED
    else:
        try:
            state = JobState(state_text)
        except ValueError:
            raise _HttpError(400, f"unknown job state {state_text!r}") from None
    cursor = params.get("cursor") or None
    try:
        page = await queue.list_jobs(state, limit=PAGE_SIZE, cursor=cursor)
    except InvalidJobError as exc:
        raise _HttpError(400, str(exc)) from None
    payloads = await _gather([functools.partial(queue.get_payload, job.id) for job in page.jobs])
    now = time.time()
    rows = [_status_row(j, p, now) for j, p in zip(page.jobs, payloads, strict=True)]
    tabs = [{"state": s.value, "count": counts[COUNT_OF[s]]} for s in STATES]
    return dash.render(
        request,
        "queue.html",
        title=f"Queue {name}",
        name=name,
        state=state.value,
        tabs=tabs,
        rows=rows,
        cursor=cursor,
        next_cursor=page.cursor,
        paused=await queue.is_paused(),
        search=search or "",
        not_found=bool(search),
        live=_url(base, "/events", {"queue": name}),
    )


async def _job_page(dash: _Dashboard, request: Request) -> Response:
    params = request.query_params
    name = dash.allowed(params.get("queue", ""))
    try:
        job_id = check_job_id(params.get("id", ""))
    except InvalidJobError as exc:
        raise _HttpError(400, str(exc)) from None
    queue = dash.queue(name)
    status = await queue.get_status(job_id)
    if status is None:
        raise _HttpError(404, "no such job (never enqueued, deleted, cancelled or expired)")
    payload = await queue.get_payload(job_id)
    now = time.time()
    shown_payload, cut_payload = show_value(payload, DETAIL_LIMIT)
    result = None
    if status.state is JobState.COMPLETED:
        result = show_value(status.result, DETAIL_LIMIT)
    error = None
    if status.error is not None:
        trace, cut_trace = show_value(status.error.traceback or "", DETAIL_LIMIT)
        error = {
            "type": status.error.type,
            "message": status.error.message,
            "traceback": status.error.traceback and trace,
            "cut": cut_trace,
            "details": None
            if status.error.details is None
            else show_value(status.error.details, DETAIL_LIMIT)[0],
        }
    progress = None if status.progress is None else show_value(status.progress, 4096)[0]
    base = request.scope.get("root_path", "")
    return dash.render(
        request,
        "job.html",
        title=f"Job {job_id}",
        name=name,
        job={
            "id": job_id,
            "state": status.state.value,
            "attempts": status.attempts,
            "max_attempts": status.max_attempts,
            "priority": status.priority,
            "created": when(status.created_at, now),
            "run_at": when(status.run_at, now),
            "finished": when(status.finished_at, now),
            "expires": when(status.expires_at, now),
            "progress": progress,
        },
        payload=shown_payload,
        payload_cut=cut_payload,
        result=result,
        error=error,
        live=_url(base, "/events", {"queue": name, "job": job_id}),
    )


async def _workers_page(dash: _Dashboard, request: Request) -> Response:
    wanted = request.query_params.get("queue")
    names = [dash.allowed(wanted)] if wanted else await dash.names()
    now = time.time()

    async def group(name: str) -> dict[str, Any]:
        workers = await dash.queue(name).workers()
        return {"name": name, "workers": [_worker_row(w, now) for w in workers]}

    groups = await _gather([functools.partial(group, name) for name in names])
    return dash.render(
        request,
        "workers.html",
        title="Workers",
        groups=[g for g in groups if g["workers"] or wanted],
        queue=wanted,
        live=_url(request.scope.get("root_path", ""), "/events", {"queue": wanted}),
    )


# -- actions -----------------------------------------------------------------------------


async def _read_form(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise _HttpError(415, "send the form as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise _HttpError(413, "form too large")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), strict_parsing=False)
    except UnicodeDecodeError:
        raise _HttpError(400, "the form is not UTF-8") from None
    return dict(pairs)


def _check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        if origin == "null":
            raise _HttpError(403, "cross-origin request refused")
        return
    # Behind a reverse proxy that rewrites Host, the browser's host is X-Forwarded-Host.
    hosts = {request.headers.get("host", "")}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip())
    if urllib.parse.urlsplit(origin).netloc not in hosts:
        raise _HttpError(403, "cross-origin request refused")


MESSAGES = {
    "retried": "Retried: the job is queued again.",
    "not_failed": "Not retried: the job is not failed.",
    "deleted": "Deleted.",
    "processing": "Not deleted: a worker is running it (cancel it first).",
    "cancelled": "Cancelled: the job was removed.",
    "cancelling": "Cancelling: the worker running it is told to stop.",
    "completed": "Not cancelled: the job already completed.",
    "not_found": "No such job.",
    "paused": "Paused: workers stop claiming (running jobs finish).",
    "resumed": "Resumed: workers claim again.",
}


async def _action(dash: _Dashboard, request: Request) -> Response:
    if dash.read_only:
        raise _HttpError(403, "this dashboard is read-only")
    _check_origin(request)
    form = await _read_form(request)
    session = request.cookies.get(CSRF_COOKIE, "")
    token = form.get("csrf", "")
    if not session or not hmac.compare_digest(
        token.encode("utf-8"), dash.csrf_token(session).encode("utf-8")
    ):
        raise _HttpError(403, "missing or wrong CSRF token: reload the page and try again")
    what = form.get("action", "")
    if what not in ACTIONS:
        raise _HttpError(400, f"unknown action {what!r}")
    name = dash.allowed(form.get("queue", ""))
    queue = dash.queue(name)
    base = request.scope.get("root_path", "")
    job_id = None
    if what in JOB_ACTIONS:
        try:
            job_id = check_job_id(form.get("id", ""))
        except InvalidJobError as exc:
            raise _HttpError(400, str(exc)) from None
    outcome, ok, message = await _apply(queue, what, job_id)
    if request.headers.get("x-requested-with") == "fetch":
        return JSONResponse({"ok": ok, "status": outcome, "message": message})
    if job_id is not None and outcome not in GONE:
        target = _url(base, "/job", {"queue": name, "id": job_id})
    else:
        target = _url(base, "/queue", {"name": name})
    return RedirectResponse(target, status_code=303)


GONE = ("deleted", "cancelled", "cancelling", "not_found")
"""Outcomes after which the job's page is a 404: go back to the queue."""


async def _apply(queue: Queue[Any, Any], what: str, job_id: str | None) -> tuple[str, bool, str]:
    """Run one validated action: (outcome, whether it acted, the message to show)."""
    if what == "retry_failed":
        count = await queue.retry_failed()
        return "retried_all", True, f"Retried {count} failed job(s)."
    if what in ("pause", "resume"):
        await (queue.pause() if what == "pause" else queue.resume())
        outcome = "paused" if what == "pause" else "resumed"
        return outcome, True, MESSAGES[outcome]
    assert job_id is not None
    if what == "retry":
        outcome = str((await queue.retry(job_id)).status)
        ok = outcome == "retried"
    elif what == "delete":
        outcome = str((await queue.delete(job_id)).status)
        ok = outcome == "deleted"
    else:
        outcome = str((await queue.cancel(job_id, force=True)).status)
        ok = outcome in ("cancelled", "cancelling")
    return outcome, ok, MESSAGES.get(outcome, outcome)


async def _metrics(dash: _Dashboard, request: Request) -> Response:
    """Prometheus exposition of every shown queue's depth per state, paused flag and live
    workers, read from the storage at each scrape."""
    try:
        from .. import metrics
    except ImportError:
        raise _HttpError(
            404, "/metrics needs prometheus_client: pip install 'trio-jobqueue[metrics]'"
        ) from None
    registry = await metrics.storage_snapshot([dash.queue(name) for name in await dash.names()])
    body, content_type = metrics.render(registry, request.headers.get("accept"))
    return Response(body, headers={"content-type": content_type})


async def _login(dash: _Dashboard, request: Request) -> Response:
    assert isinstance(dash.auth, TokenAuth)
    base = request.scope.get("root_path", "")
    if request.method == "GET":
        return HTMLResponse(dash.env.get_template("login.html").render(base=base, failed=False))
    _check_origin(request)
    form = await _read_form(request)
    given = form.get("token", "").encode("utf-8")
    if not hmac.compare_digest(given, dash.auth.token.encode("utf-8")):
        page = dash.env.get_template("login.html").render(base=base, failed=True)
        return HTMLResponse(page, status_code=401)
    response = RedirectResponse(base + "/", status_code=303)
    _set_cookie(response, request, AUTH_COOKIE, dash.auth_cookie())
    return response


async def _static(dash: _Dashboard, request: Request) -> Response:
    found = dash.assets.get(request.path_params["file"])
    if found is None:
        raise _HttpError(404, "no such file")
    kind, body = found
    return Response(
        body, media_type=kind.decode(), headers={"cache-control": "public, max-age=3600"}
    )


# -- live updates ------------------------------------------------------------------------


class _EventStream(Response):
    """Server-sent events: ``job`` messages (the job page's own events, as they happen)
    and ``change`` hints (something happened on the queues shown; at most 4 a second),
    plus a ``change`` every :data:`TICK` seconds."""

    def __init__(self, dash: _Dashboard, names: list[str], job_id: str | None) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.dash = dash
        self.names = names
        self.job_id = job_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        # None: "something changed"; a str: one of the job's events, as JSON.
        inbox, outbox = trio.open_memory_channel[str | None](256)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._until_disconnect, receive, nursery.cancel_scope)
            for name in self.names[:MAX_FOLLOWED]:
                nursery.start_soon(self._feed, name, inbox.clone())
            inbox.close()
            with contextlib.suppress(OSError):  # the client went away mid-write
                await self._pump(send, outbox)
            nursery.cancel_scope.cancel()

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _feed(self, name: str, out: trio.MemorySendChannel[str | None]) -> None:
        with out:
            try:
                async with self.dash.queue(name).events() as events:
                    async for event in events:
                        message: str | None = None
                        if self.job_id is not None and event.job_id == self.job_id:
                            fields = {"kind": event.kind.value, "attempt": event.attempt}
                            if event.error is not None:
                                fields["error"] = f"{event.error.type}: {event.error.message}"
                            message = json.dumps(fields)
                        with contextlib.suppress(trio.WouldBlock):
                            # A full inbox already holds a change: nothing is lost.
                            out.send_nowait(message)
            except StorageError as exc:
                log.warning("live updates of queue %r stopped: %s", name, exc)

    @staticmethod
    async def _pump(send: Send, outbox: trio.MemoryReceiveChannel[str | None]) -> None:
        await send({"type": "http.response.body", "body": b": live\n\n", "more_body": True})
        while True:
            lines = []
            with trio.move_on_after(TICK):
                try:
                    first = await outbox.receive()
                except trio.EndOfChannel:
                    await trio.sleep_forever()  # no feed left: ticks only
                await trio.sleep(0.25)  # gather what comes with it: at most 4 sends a second
                pending = [first]
                while True:
                    try:
                        pending.append(outbox.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                lines = [f"event: job\ndata: {m}\n\n" for m in pending if m is not None]
            lines.append("event: change\ndata: {}\n\n")
            body = "".join(lines).encode("utf-8")
            await send({"type": "http.response.body", "body": body, "more_body": True})


async def _events(dash: _Dashboard, request: Request) -> Response:
    params = request.query_params
    job_id = None
    if params.get("queue"):
        names = [dash.allowed(params["queue"])]
        if params.get("job"):
            try:
                job_id = check_job_id(params["job"])
            except InvalidJobError as exc:
                raise _HttpError(400, str(exc)) from None
    else:
        names = await dash.names()
    return _EventStream(dash, names, job_id)


# -- the app -------------------------------------------------------------------------------


def _endpoint(
    dash: _Dashboard, view: Callable[[_Dashboard, Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            await dash.ensure_open()
            return await view(dash, request)
        except _HttpError as exc:
            return _error(dash, request, exc.status, exc.message)
        except StorageError as exc:
            log.warning("storage failed: %s", exc)
            return _error(dash, request, 503, f"the storage failed: {exc}")

    return endpoint


def _error(dash: _Dashboard, request: Request, status: int, message: str) -> Response:
    if request.headers.get("x-requested-with") == "fetch":
        return JSONResponse({"ok": False, "status": "error", "message": message}, status)
    page = dash.env.get_template("error.html").render(
        base=request.scope.get("root_path", ""), status=status, message=message
    )
    return HTMLResponse(page, status_code=status)


def create_app(
    storage: Storage,
    *,
    queues: Iterable[str] | None = None,
    read_only: bool = False,
    auth: BasicAuth | TokenAuth | None = None,
) -> Starlette:
    """The dashboard as an ASGI app (a Starlette application) for ``storage``.

    Args:
        storage: any storage (unopened or open). The app's lifespan opens it (and
            counts the throughput chart's completions from the queues' events); a server
            that does not run the lifespan gets the storage opened on the first request.
        queues: the queue names to show; ``None`` (default): every queue on the storage
            (``Storage.list_namespaces``, re-read in the background every 10 s, or less
            often when that takes long: at most 5% of the time).
        read_only: hide every action and refuse them (403).
        auth: :class:`BasicAuth` or :class:`TokenAuth`; ``None`` (default): no
            authentication. Serve without it on a loopback address only.

    Raises:
        ValueError: a queue name is invalid.
        TypeError: ``auth`` is neither ``BasicAuth``, ``TokenAuth`` nor ``None``.
    """
    names = None if queues is None else tuple(check_name(name) for name in queues)
    if auth is not None and not isinstance(auth, BasicAuth | TokenAuth):
        raise TypeError(f"auth must be BasicAuth, TokenAuth or None, not {auth!r}")
    dash = _Dashboard(storage, names, bool(read_only), auth)
    routes = [
        Route("/", _endpoint(dash, _overview)),
        Route("/queue", _endpoint(dash, _queue_page)),
        Route("/job", _endpoint(dash, _job_page)),
        Route("/workers", _endpoint(dash, _workers_page)),
        Route("/events", _endpoint(dash, _events)),
        Route("/action", _endpoint(dash, _action), methods=["POST"]),
        Route("/static/{file}", _endpoint(dash, _static)),
        Route("/metrics", _endpoint(dash, _metrics)),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
    ]
    if isinstance(auth, TokenAuth):
        routes.append(Route("/login", _endpoint(dash, _login), methods=["GET", "POST"]))
    app = Starlette(routes=routes, lifespan=dash.lifespan)
    app.state.dashboard = dash  # for tools and benchmarks (private: may change)
    app.add_middleware(_Security, dash=dash)
    return app
