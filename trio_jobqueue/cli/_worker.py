"""``trio-jobqueue worker MODULE:HANDLER``: a worker process with an embedded reaper (and,
with ``--schedules MODULE:SCHEDULES``, an embedded leader-elected scheduler).

Signals: the first SIGTERM/SIGINT starts a graceful shutdown (leave the ``open_queue``
block: stop claiming, give in-flight jobs ``--shutdown-grace`` seconds, release the rest
to the queue without consuming an attempt). A second signal ends the grace period at once
(``Queue.skip_grace``); unfinished jobs are still released. The signal-watching task
lives outside the ``open_queue`` block so that it keeps running during the shutdown.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import trio

from .._config import DEFAULT_SHUTDOWN_GRACE
from .._errors import JobQueueError
from .._queue import Queue, open_queue
from .._schedule import Schedule, check_schedules
from .._types import Job
from ..storage import Storage
from ._common import (
    CliError,
    ExitCode,
    add_storage_options,
    make_storage,
    positive_int,
    positive_seconds,
    queue_name,
    redacted,
    seconds,
    storage_url,
)

log = logging.getLogger("trio_jobqueue.cli")

DRAIN_POLL = 0.1
"""Seconds between two ``storage.stats`` checks of ``--burst``."""


def add_worker_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "worker",
        help="run a worker process (with an embedded reaper) until SIGTERM/SIGINT",
        description=(
            "Run HANDLER (an async or sync callable taking a Job) on the queue's jobs. "
            "SIGTERM/SIGINT: graceful shutdown; a second signal skips the grace period "
            "(unfinished jobs still return to the queue)."
        ),
    )
    parser.add_argument("handler", metavar="MODULE:HANDLER", help="e.g. myapp.jobs:send_email")
    add_storage_options(parser)
    parser.add_argument(
        "--concurrency", "-c", type=positive_int, default=1, metavar="N",
        help="jobs run at once in this process (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--burst", action="store_true",
        help="drain the queue, then exit 0 (default: off, serve until a signal)",
    )  # fmt: skip
    parser.add_argument(
        "--max-attempts", type=positive_int, default=3, metavar="N",
        help="attempts of jobs enqueued without their own value (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--visibility-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
        help="lease of a claimed job, renewed while it runs (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--shutdown-grace", type=seconds, default=DEFAULT_SHUTDOWN_GRACE, metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long running jobs may finish (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--job-timeout", type=positive_seconds, default=None, metavar="SECONDS",
        help="per-attempt deadline of the handler (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--result-ttl", type=positive_seconds, default=3600.0, metavar="SECONDS",
        help="how long results, errors and ids are kept (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-delay", type=seconds, default=None, metavar="SECONDS",
        help="fixed delay between attempts (default: exponential backoff with jitter)",
    )  # fmt: skip
    parser.add_argument(
        "--no-reaper", action="store_true",
        help="do not run the embedded reaper (default: the reaper runs)",
    )  # fmt: skip
    parser.add_argument(
        "--lock-ttl", type=positive_seconds, default=30.0, metavar="SECONDS",
        help="lease of the reaper (and scheduler) leader locks; a killed leader is replaced "
        "about 2 s after its death (when its registration expires), within this long in "
        "any case (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--schedules", default=None, metavar="MODULE:SCHEDULES",
        help="also run these cron/interval schedules (a list of jq.CronSchedule/"
        "jq.IntervalSchedule in MODULE); every worker given them competes to lead, each "
        "tick is enqueued once (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-id", default=None, metavar="ID",
        help="unique id of this worker (default: host:pid:random)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-port", type=tcp_port, default=None, metavar="PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (0: any free port, "
        "logged; needs the metrics extra) (default: off)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-bind", default="127.0.0.1", metavar="ADDR",
        help="address of --metrics-port; 0.0.0.0 (or ::) to be scraped from other hosts "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level; logs go to stderr (default: %(default)s)",
    )  # fmt: skip


def tcp_port(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be within 0..65535, not {value}")
    return value


def load_metrics() -> Any:
    """The default registry's ``Metrics`` (``--metrics-port``).

    Raises:
        CliError: ``prometheus_client`` is not installed.
    """
    try:
        from ..metrics import default_metrics
    except ImportError as exc:
        raise CliError(f"--metrics-port: {exc}") from exc
    return default_metrics()


def import_target(spec: str, what: str, example: str) -> Any:
    """Import ``MODULE:ATTR[.ATTR...]`` (the current directory is importable).

    Raises:
        CliError: malformed spec, module not found, import failure or missing attribute;
            the message names ``what`` (e.g. ``HANDLER``).
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise CliError(f"{what.lower()} must be MODULE:{what} (e.g. {example}), not {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise CliError(f"cannot import module {module_name!r}: {exc}") from exc
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    return target


def load_handler(spec: str) -> Callable[[Job[Any]], Any]:
    """Import the handler ``MODULE:ATTR[.ATTR...]``.

    Raises:
        CliError: malformed spec, module not found, import failure, missing attribute or
            not callable.
    """
    target = import_target(spec, "HANDLER", "myapp.jobs:send")
    if not callable(target):
        raise CliError(f"{spec!r} is not callable")
    handler: Callable[[Job[Any]], Any] = target
    return handler


def load_schedules(spec: str) -> tuple[Schedule, ...]:
    """Import the list of schedules ``MODULE:ATTR[.ATTR...]``.

    Raises:
        CliError: as :func:`import_target`, or not a list of schedules with distinct ids.
    """
    target = import_target(spec, "SCHEDULES", "myapp.jobs:SCHEDULES")
    try:
        schedules = check_schedules(target)
    except (TypeError, ValueError) as exc:
        raise CliError(f"--schedules {spec}: {exc}") from exc
    if not schedules:
        raise CliError(f"--schedules {spec}: the list is empty")
    return schedules


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )
    # watchfiles (the File backend's watcher) logs every change batch at INFO.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, getattr(logging, level)))


async def wait_drained(storage: Storage, queue: Queue[Any, Any]) -> None:
    """Return once the queue has nothing queued, delayed or processing (anywhere) and
    this worker runs nothing, seen on two consecutive checks."""
    clean = 0
    while clean < 2:
        await trio.sleep(DRAIN_POLL)
        try:
            counts = await storage.stats(queue.name)
        except JobQueueError as exc:
            log.warning("stats failed while draining (%s); retrying", exc)
            clean = 0
            continue
        idle = counts.queued == counts.delayed == counts.processing == 0
        clean = clean + 1 if idle and queue.statistics().in_flight == 0 else 0


async def run_worker(args: argparse.Namespace) -> ExitCode:
    """The ``worker`` command (see the module docstring). Returns the exit code.

    Raises:
        CliError: a user mistake (before anything runs).
        StorageError: the storage could not be opened.
    """
    setup_logging(args.log_level)
    if args.worker_id is not None and not args.worker_id.strip():
        raise CliError("--worker-id must not be empty")
    handler = load_handler(args.handler)
    schedules = () if args.schedules is None else load_schedules(args.schedules)
    metrics = None if args.metrics_port is None else load_metrics()
    process = WorkerProcess(
        args=args,
        ns=queue_name(args),
        storage=make_storage(args),
        schedules=schedules,
        metrics=metrics,
    )
    await process.run(handler)
    return ExitCode.OK


@attrs.define(eq=False, kw_only=True)
class WorkerProcess:
    """One worker process: signals, the queue, ``--burst``. (The library's worker keeps
    its own registration in the storage's worker registry, which ``stats`` reads.)"""

    args: argparse.Namespace
    ns: str
    storage: Storage
    schedules: tuple[Schedule, ...] = ()
    metrics: Any = None
    """The ``Metrics`` of ``--metrics-port`` (``None``: off)."""
    queue: Queue[Any, Any] | None = None
    signals: int = 0
    stop: trio.Event = attrs.field(factory=trio.Event)
    """Set by the first signal (or when ``--burst`` drained the queue)."""
    storage_open: bool = False
    open_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    """Cancelled by a signal that arrives while the storage is still opening."""

    def options(self) -> dict[str, Any]:
        args = self.args
        options: dict[str, Any] = {
            "name": self.ns,
            "concurrency": args.concurrency,
            "max_attempts": args.max_attempts,
            "visibility_timeout": args.visibility_timeout,
            "job_timeout": args.job_timeout,
            "result_ttl": args.result_ttl,
            "shutdown_grace": args.shutdown_grace,
            "worker_id": args.worker_id,
            "reaper": not args.no_reaper,
            "lock_ttl": args.lock_ttl,
            "schedules": self.schedules,
            "metrics": self.metrics,
        }
        if args.retry_delay is not None:
            options["retry_delay"] = args.retry_delay
        return options

    def _skip_grace(self) -> None:
        if self.signals >= 2 and self.queue is not None:
            self.queue.skip_grace()

    async def _watch_signals(self, receiver: AsyncIterator[int]) -> None:
        async for signum in receiver:
            self.signals += 1
            name = signal.Signals(signum).name
            if self.signals == 1:
                log.info(
                    "%s: graceful shutdown (grace %.1f s); send it again to skip the grace",
                    name,
                    self.args.shutdown_grace,
                )
                self.stop.set()
                if not self.storage_open:
                    self.open_scope.cancel()  # still connecting: give up at once
            else:
                log.warning(
                    "%s again: ending the grace period; unfinished jobs return to the queue",
                    name,
                )
                self._skip_grace()

    async def run(self, handler: Callable[[Job[Any]], Any]) -> None:
        """Serve until a signal (or, with ``--burst``, until the queue is drained)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as receiver:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, receiver)
                # Signals are handled from here on (the tests wait for this line).
                log.info("opening %s for queue %r", redacted(storage_url(self.args)), self.ns)
                # Only the opening of the storage is stopped by cancellation: once it is
                # open, a signal sets `stop` and the open_queue block is left normally,
                # which runs the graceful shutdown (the worker's registration says
                # "stopping" meanwhile).
                with self.open_scope:
                    async with self.storage:
                        self.storage_open = True  # no checkpoint since the storage opened
                        if not self.open_scope.cancel_called:
                            await self._serve(handler)
                nursery.cancel_scope.cancel()

    async def _serve(self, handler: Callable[[Job[Any]], Any]) -> None:
        if self.metrics is None:
            await self._serve_queue(handler)
            return
        from ..metrics import serve_metrics

        args = self.args
        async with trio.open_nursery() as nursery:
            # Serves until the queue's shutdown is over (it counts the released jobs).
            try:
                port = await nursery.start(
                    functools.partial(serve_metrics, args.metrics_port, host=args.metrics_bind)
                )
            except OSError as exc:
                raise CliError(
                    f"--metrics-port: cannot listen on {args.metrics_bind}:{args.metrics_port}"
                    f" ({exc.strerror or exc})"
                ) from exc
            host = f"[{args.metrics_bind}]" if ":" in args.metrics_bind else args.metrics_bind
            log.info("serving Prometheus metrics at http://%s:%d/metrics", host, port)
            await self._serve_queue(handler)
            nursery.cancel_scope.cancel()

    async def _serve_queue(self, handler: Callable[[Job[Any]], Any]) -> None:
        args = self.args
        try:
            async with open_queue(self.storage, handler, **self.options()) as queue:
                self.queue = queue
                self._skip_grace()  # in case a second signal came while opening
                log.info(
                    "worker %s serving queue %r (concurrency %d, reaper %s, %s)%s",
                    queue.worker_id,
                    self.ns,
                    args.concurrency,
                    "off" if args.no_reaper else "on",
                    f"scheduler on: {len(self.schedules)} schedules"
                    if self.schedules
                    else "no schedules",
                    " in burst mode" if args.burst else "",
                )
                if args.burst:
                    async with trio.open_nursery() as race:
                        race.start_soon(self._drain, queue)
                        await self.stop.wait()
                        race.cancel_scope.cancel()
                else:
                    await self.stop.wait()
        finally:
            if self.queue is not None:
                _log_summary(self.queue)

    async def _drain(self, queue: Queue[Any, Any]) -> None:
        await wait_drained(self.storage, queue)
        log.info("burst: the queue is drained")
        self.stop.set()


def _log_summary(queue: Queue[Any, Any]) -> None:
    st = queue.statistics()
    log.info(
        "worker %s stopped: claimed=%d completed=%d retried=%d failed=%d released=%d "
        "fenced=%d lost_leases=%d",
        st.worker_id,
        st.claimed,
        st.completed,
        st.retried,
        st.failed,
        st.released,
        st.fenced,
        st.lost_leases,
    )
