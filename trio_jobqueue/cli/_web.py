"""``web`` (the dashboard, served by hypercorn's trio worker) and ``queues`` (the queue
names on a storage)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
from typing import Any, TextIO

import trio

from ._common import CliError, ExitCode, make_storage, redacted, storage_url

DEFAULT_BIND = "127.0.0.1:8080"
TOKEN_ENV = "TRIO_JOBQUEUE_WEB_TOKEN"
"""Environment variable giving the default ``--token`` (kept out of ``ps``)."""
AUTH_ENV = "TRIO_JOBQUEUE_WEB_AUTH"
"""Environment variable giving the default ``--auth`` (kept out of ``ps``)."""


def _storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", "-s", metavar="URL", default=None,
        help="the storage URL, as for every command (default: $TRIO_JOBQUEUE_URL)",
    )  # fmt: skip


def add_web_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "web",
        help="serve the web dashboard (queues, jobs, workers, retry/delete/cancel)",
        description=(
            "Serve the dashboard of every queue on the storage until Ctrl-C/SIGTERM. It "
            "binds to loopback unless told otherwise and refuses any other address "
            "without --auth or --token. Needs the 'web' extra. See docs/web.md."
        ),
    )
    _storage_option(p)
    p.add_argument(
        "--bind", "-b", default=DEFAULT_BIND, metavar="HOST:PORT",
        help="address to listen on; [::1]:8080 for IPv6 (default: %(default)s)",
    )  # fmt: skip
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--auth", default=None, metavar="USER:PASSWORD",
        help=f"require HTTP basic authentication (default: ${AUTH_ENV}, else none)",
    )  # fmt: skip
    who.add_argument(
        "--token", default=None, metavar="TOKEN",
        help=f"require this bearer token or a sign-in with it (default: ${TOKEN_ENV}, else none)",
    )  # fmt: skip
    p.add_argument(
        "--read-only", action="store_true",
        help="show everything, allow no action (default: off)",
    )  # fmt: skip
    p.add_argument(
        "--queue", "-q", action="append", default=None, metavar="NAME", dest="queues",
        help="show only this queue; repeat for more (default: every queue on the storage)",
    )  # fmt: skip

    p = sub.add_parser(
        "queues",
        help="list the queue names on the storage",
        description="Print the name of every queue that holds anything on the storage, one a line.",
    )
    _storage_option(p)


def parse_bind(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port).

    Raises:
        CliError: malformed.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise CliError(f"--bind must be HOST:PORT (e.g. {DEFAULT_BIND}), not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auth(args: argparse.Namespace) -> Any:
    from ..web import BasicAuth, TokenAuth

    auth = args.auth
    token = args.token
    if auth is None and token is None:
        auth = os.environ.get(AUTH_ENV) or None
        token = None if auth is not None else os.environ.get(TOKEN_ENV) or None
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise CliError("--auth must be USER:PASSWORD, both non-empty")
        return BasicAuth(user, password)
    if token is not None:
        if len(token) < 8:
            raise CliError("--token must be at least 8 characters")
        return TokenAuth(token)
    return None


async def run_web(args: argparse.Namespace, out: TextIO) -> ExitCode:
    host, port = parse_bind(args.bind)
    try:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        from ..web import create_app
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs the 'web' extra: pip install 'trio-jobqueue[web]' ({exc})"
        ) from exc
    auth = _auth(args)
    if auth is None and not is_loopback(host):
        raise CliError(
            f"refusing to serve the dashboard on {args.bind} without --auth or --token "
            "(anyone who reaches it could retry and delete jobs); bind to 127.0.0.1, or "
            "add authentication"
        )
    storage = make_storage(args)
    try:
        app = create_app(storage, queues=args.queues, read_only=args.read_only, auth=auth)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    # Opened here first so that an unreachable storage is the usual one-line error (exit
    # 3), not a failed lifespan inside the server.
    async with storage:
        await _serve(serve, app, config, out, args)
    return ExitCode.OK


async def _serve(serve: Any, app: Any, config: Any, out: TextIO, args: argparse.Namespace) -> None:
    try:
        await serve(
            app,
            config,
            shutdown_trigger=_signalled,
            task_status=_Announce(out, args),
        )
    except* OSError as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        reason = getattr(first, "strerror", None) or first
        raise CliError(f"cannot listen on {args.bind}: {reason}") from None


async def _signalled() -> None:
    """Returns at SIGTERM or SIGINT: hypercorn then closes the connections (live pages
    included) and ``web`` exits 0."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


class _Announce:
    """The ``task_status`` hypercorn reports its bound addresses to."""

    def __init__(self, out: TextIO, args: argparse.Namespace) -> None:
        self.out = out
        self.url = redacted(storage_url(args))

    def started(self, binds: list[str] | None = None) -> None:
        for bind in binds or []:
            self.out.write(f"dashboard of {self.url} on {bind}/\n")
        self.out.flush()


async def run_queues(args: argparse.Namespace, out: TextIO) -> ExitCode:
    async with make_storage(args) as storage:
        names = await storage.list_namespaces()
    for name in names:
        out.write(name + "\n")
    return ExitCode.OK
