"""The ``trio-jobqueue`` command line (also ``python -m trio_jobqueue``).

The parser, the entry point and the exit codes; the commands live in :mod:`._worker`
(``worker``), :mod:`._admin` (``enqueue``/``status``/``show``/``result``/``cancel``/``stats``),
:mod:`._operate` (``list``/``retry``/``delete``/``purge``/``pause``/``resume``), :mod:`._schedules`
(``schedules``), :mod:`._web` (``web``/``queues``) and :mod:`._demo` (``demo``). Reference:
``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import trio

from .._errors import InvalidJobError, StorageError
from ._admin import (
    add_admin_parsers,
    run_cancel,
    run_enqueue,
    run_result,
    run_show,
    run_stats,
    run_status,
)
from ._common import (
    PROG,
    URL_ENV,
    ArgumentParser,
    CliError,
    ExitCode,
    positive_int,
    seconds,
)
from ._demo import run_demo
from ._operate import (
    add_operate_parsers,
    run_delete,
    run_list,
    run_pause,
    run_purge,
    run_resume,
    run_retry,
)
from ._schedules import add_schedules_parser, run_schedules
from ._web import add_web_parsers, run_queues, run_web
from ._worker import add_worker_parser, run_worker


def _version() -> str:
    try:
        return importlib.metadata.version("trio-jobqueue")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command. Every option's help states its default and every
    command has a one-line ``help`` (``tests/test_cli.py`` walks the parser to check)."""
    parser = ArgumentParser(
        prog=PROG,
        description="A reliable job queue for trio applications.",
        epilog=(
            f"--storage defaults to ${URL_ENV}. Exit codes: 0 ok, 1 negative answer "
            "(unknown job, no result, job failed, not cancelled), 2 usage error, "
            "3 storage error, 4 wait timeout, 5 unhealthy (stats checks), "
            "130 interrupted, 141 stdout closed. See docs/cli.md."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {_version()}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_worker_parser(sub)
    add_admin_parsers(sub)
    add_operate_parsers(sub)
    add_schedules_parser(sub)
    add_web_parsers(sub)
    text = "run N jobs through an in-memory queue and report"
    demo = sub.add_parser("demo", help=text, description=text[0].upper() + text[1:] + ".")
    demo.add_argument(
        "--jobs", "-n", type=positive_int, default=10_000, metavar="N",
        help="how many jobs to run (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--concurrency", "-c", type=positive_int, default=100, metavar="N",
        help="jobs run at once (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--work", type=seconds, default=0.0, metavar="SECONDS",
        help="seconds each job sleeps (default: 0, a no-op job)",
    )  # fmt: skip
    return parser


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; ``[exc]`` for a plain
    exception."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _say(line: str) -> None:
    """One line on stderr; never fails (stderr may be a closed pipe too)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _fail(message: str, code: int) -> int:
    _say(f"{PROG}: error: " + " ".join(message.split()))
    return code


def _interrupted() -> int:
    # On a terminal the "^C" echo (or the demo's progress line) is still on the line.
    _say(("\n" if _isatty(sys.stderr) else "") + "interrupted")
    return ExitCode.INTERRUPTED


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def _stdout_gone() -> int:
    """The reader of stdout went away. Point stdout at /dev/null, so that the interpreter's
    final flush of what is still buffered does not fail again ("Exception ignored ...");
    the recipe of the Python docs (``signal`` module, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (captured in tests): nothing will flush it
    return ExitCode.BROKEN_PIPE


def _exit_code(exc: BaseException) -> int:
    """The exit code (after printing its one line) for an exception that ended a command,
    also when it arrives inside (nested) exception groups; re-raise what is a bug.

    Precedence: Ctrl-C anywhere in the group wins (130), then a closed stdout (141), then
    the first user-facing error (a :class:`CliError` with its code, a storage failure 3,
    invalid input 2). A group with anything else in it is re-raised whole (a traceback,
    exit 1: a bug)."""
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return _interrupted()
    known = (BrokenPipeError, CliError, StorageError, InvalidJobError, SystemExit)
    if not all(isinstance(leaf, known) for leaf in leaves):
        raise exc
    if any(isinstance(leaf, BrokenPipeError) for leaf in leaves):
        return _stdout_gone()
    leaf = leaves[0]
    if isinstance(leaf, SystemExit):  # --help, --version (or a handler calling sys.exit)
        return leaf.code if isinstance(leaf.code, int) else 0 if leaf.code is None else 1
    if isinstance(leaf, CliError):
        return _fail(str(leaf), leaf.code)
    if isinstance(leaf, StorageError):
        return _fail(f"storage failed: {leaf}", ExitCode.STORAGE)
    return _fail(str(leaf), ExitCode.USAGE)  # InvalidJobError: e.g. a bad option value


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    if command == "demo":
        trio.run(run_demo, args.jobs, args.concurrency, args.work, sys.stdout)
        return ExitCode.OK
    if command == "worker":
        return int(trio.run(run_worker, args))
    runners: dict[str, Callable[..., Awaitable[ExitCode]]] = {
        "enqueue": run_enqueue,
        "status": run_status,
        "result": run_result,
        "show": run_show,
        "cancel": run_cancel,
        "stats": run_stats,
        "schedules": run_schedules,
        "retry": run_retry,
        "list": run_list,
        "delete": run_delete,
        "purge": run_purge,
        "pause": run_pause,
        "resume": run_resume,
        "queues": run_queues,
        "web": run_web,
    }
    return int(trio.run(runners[command], args, sys.stdout))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-jobqueue`` / ``python -m trio_jobqueue``; returns the exit
    code (see :class:`~trio_jobqueue.cli._common.ExitCode`).

    Every failure a user can cause is one line on stderr, ``trio-jobqueue: error: ...``
    (argparse's usage errors included); Ctrl-C is the line ``interrupted`` and exit 130;
    a closed stdout (``| head -1``) ends the command quietly with exit 141."""
    try:
        code = _run(argv)
    except BaseException as exc:  # noqa: BLE001 - classified; what is not ours re-raises
        code = _exit_code(exc)
    if code != ExitCode.BROKEN_PIPE:
        try:
            sys.stdout.flush()  # a closed pipe shows up here at the latest
        except BrokenPipeError:
            code = _stdout_gone()
        except (OSError, ValueError):
            pass  # stdout closed or broken otherwise: nothing left to say
    return code
