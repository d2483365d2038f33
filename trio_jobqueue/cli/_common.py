"""Shared pieces of the command line: exit codes, the one-line error, the parser class,
storage options."""

from __future__ import annotations

import argparse
import datetime
import enum
import math
import os
import urllib.parse
from typing import NoReturn

from .._validate import check_job_id, check_name
from ..storage import Storage, storage_from_url
from ..storage._base import MAX_PRIORITY, MIN_PRIORITY

URL_ENV = "TRIO_JOBQUEUE_URL"
"""Environment variable giving the default ``--storage`` URL."""
NAME_ENV = "TRIO_JOBQUEUE_NAME"
"""Environment variable giving the default ``--name`` (queue name)."""


class ExitCode(enum.IntEnum):
    """Process exit codes of every command (documented in ``docs/cli.md``)."""

    OK = 0
    """Success; for ``worker``: stopped gracefully (signal, or ``--burst`` drained)."""
    NEGATIVE = 1
    """The command ran but the answer is "no": unknown job, no result, job failed, job not
    cancelled. Also an unexpected internal error (with a traceback: a bug)."""
    USAGE = 2
    """A user mistake: bad arguments, bad URL, missing storage, unknown module or handler,
    bad JSON, invalid job id or option. Nothing was written."""
    STORAGE = 3
    """The storage failed or could not be reached."""
    TIMEOUT = 4
    """``enqueue --wait`` gave up waiting (the job keeps running)."""
    UNHEALTHY = 5
    """``stats --check-worker``/``--min-workers``: the expected workers are not live."""
    INTERRUPTED = 130
    """Interrupted by Ctrl-C (SIGINT) outside a worker's graceful shutdown (128 + SIGINT)."""
    BROKEN_PIPE = 141
    """The reader of stdout went away (``... | head -1``): output stopped quietly. 128 +
    SIGPIPE, the status a coreutils command killed by SIGPIPE reports to the shell."""


class CliError(Exception):
    """A user-facing failure: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


PROG = "trio-jobqueue"

REMOVED_OPTIONS = {
    "--listen": "stats reads the worker registry and answers at once",
    "--heartbeat-interval": "workers refresh their registration every 0.5 s by themselves",
}
"""Options of earlier versions: a usage error that names one says why it went away."""


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: they raise :class:`CliError`
    (exit 2), which ``main`` prints as ``trio-jobqueue: error: ...``. Sub-command parsers
    made by ``add_subparsers`` are of the same class, so this holds for every command."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        where = f"{command}: " if command else ""
        hint = f"{PROG} {command} --help" if command else f"{PROG} --help"
        text = " ".join(f"{where}{message}".split())  # one line, whatever argparse says
        if message.startswith("unrecognized arguments:"):
            words = {word.partition("=")[0] for word in message.split()}
            text += "".join(
                f"; {option} was removed: {why}"
                for option, why in REMOVED_OPTIONS.items()
                if option in words
            )
        raise CliError(f"{text} (see '{hint}')", ExitCode.USAGE)


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        "-s",
        metavar="URL",
        default=None,
        help=(
            "memory://, redis://host[:port][/db], rediss://..., unix://..., "
            "redis+cluster://h1:p1,h2:p2, redis+sentinel://s1,s2/mymaster or "
            "file:///abs/path; storage options go in the query, e.g. "
            f"file:///var/q?fsync=0 (default: ${URL_ENV})"
        ),
    )
    parser.add_argument(
        "--name",
        "-q",
        metavar="QUEUE",
        default=None,
        help=f"queue name (default: ${NAME_ENV}, else 'default')",
    )


def storage_url(args: argparse.Namespace) -> str:
    url: str | None = args.storage or os.environ.get(URL_ENV) or None
    if url is None:
        raise CliError(f"no storage given: pass --storage URL or set ${URL_ENV}")
    return url


def redacted(url: str) -> str:
    """``url`` without user name and password (for logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def make_storage(args: argparse.Namespace) -> Storage:
    """Build the (unopened) storage named by ``--storage``/``$TRIO_JOBQUEUE_URL``.

    Raises:
        CliError: no URL, a malformed URL, or a backend whose extra is not installed.
    """
    url = storage_url(args)
    try:
        return storage_from_url(url)
    except ImportError as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def queue_name(args: argparse.Namespace) -> str:
    name = args.name if args.name is not None else os.environ.get(NAME_ENV) or "default"
    try:
        return check_name(name)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0:  # NaN and inf are refused here too
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def job_id_arg(text: str) -> str:
    """A job id from the command line (a one-line usage error when it is not valid)."""
    try:
        return check_job_id(text)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def aware_time(text: str) -> datetime.datetime:
    """argparse type: an ISO 8601 time with a UTC offset (or ``Z``)."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-12-24T08:00:00Z, not {text!r}"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset: add Z or +HH:MM (e.g. {text}Z)"
        )
    return when


def priority(text: str) -> int:
    """argparse type: an integer within the accepted priorities."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(
            f"must be within {MIN_PRIORITY}..{MAX_PRIORITY}, not {value}"
        )
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value
