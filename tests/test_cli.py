"""The command line, run as subprocesses: usage errors, admin commands, burst workers,
``stats`` with live workers, signal handling, Ctrl-C and closed pipes."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from _proc_harness import Worker, WorkerPool, cli_env, run_cli, spawn_cli, wait_for
from fixtures_redis import RedisServer

import trio_jobqueue as jq
import trio_jobqueue.__main__ as dunder_main
from trio_jobqueue.cli import main
from trio_jobqueue.cli._common import ExitCode
from trio_jobqueue.cli._main import _exit_code, build_parser


@pytest.fixture(params=["file", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL of each cross-process backend."""
    if request.param == "file":
        return f"file://{tmp_path}/queue"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def name() -> str:
    """A queue name unique to the test (isolates tests sharing one redis-server)."""
    return f"cli-{uuid.uuid4().hex[:10]}"


@attrs.frozen
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Awaitable[Done]]:
    """Run ``main(args)`` in a thread of this process (cheaper than a subprocess; the
    subprocess tests cover the entry point itself)."""
    lock = trio.Lock()

    async def run(*args: str) -> Done:
        async with lock:
            capsys.readouterr()
            code = await trio.to_thread.run_sync(main, list(args))
            captured = capsys.readouterr()
            return Done(code, captured.out, captured.err)

    return run


def _one_line_error(done: Done | subprocess.CompletedProcess[str]) -> str:
    err = done.stderr
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("trio-jobqueue: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stats", "--storage", "bogus://x"], "unknown storage URL"),
        (["stats", "--storage", "file://relative/path"], "file:///absolute/path"),
        (["stats"], "TRIO_JOBQUEUE_URL"),
        (["enqueue", "a", "{not json", "--storage", "memory://"], "not valid JSON"),
        (["enqueue", "", "{}", "--storage", "memory://"], "must not be empty"),
        (["worker", "no_such_module:handler", "--storage", "memory://"], "cannot import"),
        (["worker", "_proc_handlers:nope", "--storage", "memory://"], "no attribute"),
        (["worker", "_proc_handlers:not_callable", "--storage", "memory://"], "not callable"),
        (["worker", "_proc_handlers", "--storage", "memory://"], "MODULE:HANDLER"),
        (["status", "x", "--storage", "memory://", "--name", ""], "queue name"),
        (
            ["stats", "--watch", "--check-worker", "w", "--storage", "memory://"],
            "do not go with --watch",
        ),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args: list[str], needle: str) -> None:
    """Bad URL, missing storage, bad JSON, bad id, unknown module/handler: one clear line
    on stderr, exit code 2, no traceback."""
    done = run_cli(*args)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert needle in _one_line_error(done)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["demo", "--work", "-1"], "--work"),
        (["demo", "--work", "nan"], "--work"),
        (["demo", "--work", "inf"], "--work"),
        (["demo", "--jobs", "0"], "--jobs"),
        (["demo", "--concurrency", "x"], "--concurrency"),
        (["demo", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["--no-such-option"], "required: COMMAND"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        ([], "required: COMMAND"),
        (["worker", "m:h", "--concurrency", "0", "--storage", "memory://"], "--concurrency"),
        (["worker", "m:h", "--log-level", "LOUD"], "--log-level"),
        (["worker"], "MODULE:HANDLER"),
        (["stats", "--listen", "0"], "--listen was removed: stats reads the worker registry"),
        (["worker", "m:h", "--heartbeat-interval", "1"], "--heartbeat-interval was removed"),
        (["stats", "--min-workers", "0"], "--min-workers"),
        (["enqueue", "a"], "PAYLOAD_JSON"),
        (["enqueue", "a", "{}", "--timeout", "0"], "--timeout"),
    ],
)
def test_argparse_errors_are_one_line_and_exit_2(args: list[str], needle: str) -> None:
    """Usage errors of the parser and of every sub-command parser (bad values, unknown
    options and commands, missing arguments) are one `trio-jobqueue: error:` line, exit 2."""
    done = run_cli(*args)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert needle in _one_line_error(done)
    assert done.stdout == ""


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _walk(subparser, f"{path} {name}")


def test_every_option_shows_its_default_and_every_command_has_a_description() -> None:
    """Walking the whole parser: every option of every command has help text stating its
    default, every positional argument has help, every sub-command a one-line help."""
    commands: list[str] = []
    for path, action in _walk(build_parser(), "trio-jobqueue"):
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                help_text = choice.help or ""
                assert help_text.strip() and "\n" not in help_text, (path, choice.dest)
                commands.append(choice.dest)
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        what = f"{path} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, what
        if action.option_strings:
            assert "(default: " in action.help, what
    assert sorted(commands) == sorted(
        [
            "worker",
            "enqueue",
            "status",
            "result",
            "cancel",
            "stats",
            "show",
            "list",
            "retry",
            "delete",
            "purge",
            "pause",
            "resume",
            "schedules",
            "web",
            "queues",
            "demo",
        ]
    )
    demo_help = run_cli("demo", "--help").stdout
    assert "(default: 10000)" in demo_help and "(default: 0, a no-op job)" in demo_help


def test_version_prints_the_installed_version() -> None:
    """`--version` prints `trio-jobqueue <version>` (from the package metadata), exit 0."""
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"trio-jobqueue {importlib.metadata.version('trio-jobqueue')}\n"


def test_console_script_and_python_m_run_the_cli_package() -> None:
    """pyproject's `trio-jobqueue` script names trio_jobqueue.cli:main, the function that
    `python -m trio_jobqueue` runs (the package's only public entry point)."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"trio-jobqueue": "trio_jobqueue.cli:main"}
    assert dunder_main.main is main


def test_storage_that_cannot_be_opened_exits_3(tmp_path: Path) -> None:
    """A storage that fails to open is one line and exit code 3."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run_cli("stats", "--storage", f"file://{blocker}/queue")
    assert done.returncode == ExitCode.STORAGE
    assert "storage failed" in _one_line_error(done)


def test_storage_url_from_environment(tmp_path: Path, name: str) -> None:
    """--storage defaults to $TRIO_JOBQUEUE_URL (and --name to $TRIO_JOBQUEUE_NAME)."""
    env = cli_env()
    env["TRIO_JOBQUEUE_URL"] = f"file://{tmp_path}/q"
    env["TRIO_JOBQUEUE_NAME"] = name
    assert run_cli("enqueue", "a", "{}", env=env).stdout == "queued\n"
    done = run_cli("stats", "--json", env=env)
    assert json.loads(done.stdout)["jobs"]["queued"] == 1
    assert json.loads(done.stdout)["queue"] == name


async def test_admin_commands_and_burst_worker(
    url: str, name: str, tmp_path: Path, cli: Callable[..., Awaitable[Done]]
) -> None:
    """enqueue/status/result/cancel print what they did and use the documented exit codes;
    `worker --burst` drains the queue (async and sync handlers) and exits 0."""
    s = ["--storage", url, "--name", name]

    async def run(*args: str) -> tuple[int, str, str]:
        done = await cli(*args, *s)
        return done.returncode, done.stdout, done.stderr

    assert await run("enqueue", "a", '{"n": 1}') == (0, "queued\n", "")
    assert await run("enqueue", "a", '{"n": 2}') == (0, "duplicate (queued)\n", "")
    assert (await run("enqueue", "bad", '{"fail": true}', "--max-attempts", "1"))[0] == 0
    assert (await run("enqueue", "c", "null"))[0] == 0
    assert await run("cancel", "c") == (0, "cancelled\n", "")
    code, out, _ = await run("cancel", "c")
    assert (code, out) == (ExitCode.NEGATIVE, "not_found\n")
    code, out, _ = await run("status", "a")
    assert code == 0 and "state:     queued" in out and "attempts:  0/3" in out
    code, _, err = await run("result", "a")
    assert code == ExitCode.NEGATIVE and "it is queued" in err
    code, _, err = await run("status", "never")
    assert code == ExitCode.NEGATIVE and "unknown" in err
    code, _, err = await run("enqueue", "w", "{}", "--wait", "--timeout", "0.3")
    assert code == ExitCode.TIMEOUT and "keeps running" in err

    with WorkerPool(tmp_path, url, name) as pool:
        w = pool.start("--burst", "--concurrency", "4")
        assert await pool.wait(w, 60) == 0, w.stderr()
        assert "burst: the queue is drained" in w.stderr()
        pool.handler = "_proc_handlers:record_sync"
        assert (await run("enqueue", "s", "{}"))[0] == 0
        w2 = pool.start("--burst")
        assert await pool.wait(w2, 60) == 0, w2.stderr()

    code, out, _ = await run("result", "a")
    assert code == 0 and json.loads(out) == {"pid": w.pid, "attempt": 1}
    assert json.loads((await run("result", "s"))[1])["pid"] == w2.pid
    code, out, _ = await run("status", "bad", "--json")
    status = json.loads(out)
    assert code == 0 and status["state"] == "failed"
    assert status["error"]["type"] == "ValueError" and status["attempts"] == 1
    code, _, err = await run("result", "bad")
    assert code == ExitCode.NEGATIVE and "failed" in err
    # A completed id answers at once with the cached result.
    code, out, _ = await run("enqueue", "a", "{}")
    assert code == 0 and out.splitlines()[0] == "completed"
    code, out, _ = await run("enqueue", "a", "{}", "--wait")
    assert code == 0 and json.loads(out)["pid"] == w.pid
    code, _, err = await run("enqueue", "bad", "{}", "--wait")
    assert code == ExitCode.NEGATIVE and "ValueError: asked to fail" in err
    stats = json.loads((await run("stats", "--json"))[1])
    assert stats["jobs"] == {
        "queued": 0, "delayed": 0, "processing": 0, "completed": 3, "failed": 1,
        "scheduled": 0,
    }  # fmt: skip
    assert stats["depth"] == 0


async def test_enqueue_wait_gets_result_from_worker_process(
    url: str, name: str, tmp_path: Path
) -> None:
    """`enqueue --wait` prints the result computed by a worker process."""
    with WorkerPool(tmp_path, url, name) as pool:
        w = pool.start()
        done = await trio.to_thread.run_sync(
            lambda: run_cli(
                "enqueue",
                "x",
                '{"sleep": 0.2}',
                "--wait",
                "--timeout",
                "30",
                "--storage",
                url,
                "--name",
                name,
            )
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"pid": w.pid, "attempt": 1}


async def test_stats_lists_live_workers_in_flight_jobs_and_leader(
    url: str, name: str, tmp_path: Path, cli: Callable[..., Awaitable[Done]]
) -> None:
    """`stats` answers at once from the worker registry: counts per state, each live worker
    (host/pid, state, in-flight/concurrency, counters, leadership, job ids) and the reaper
    leader; --check-worker/--min-workers exit 5 when unmet, also as soon as a worker stops
    (its registration withdrawn, `stopping` during its grace) or is SIGKILLed (expired)."""
    s = ["--storage", url, "--name", name]
    async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as q:
        await q.enqueue("ok", {})
        await q.enqueue("bad", {"fail": True}, max_attempts=1)
        for i in range(3):
            await q.enqueue(f"long-{i}", {"sleep": 30})
        with WorkerPool(tmp_path, url, name) as pool:
            alpha = pool.start("--concurrency", "2", "--worker-id", "alpha")
            beta = pool.start("--concurrency", "2", "--worker-id", "beta", "--shutdown-grace", "60")

            async def settled() -> bool:
                workers = await q.workers()
                counters = [w.counters for w in workers]
                return (
                    len(workers) == 2
                    and sum(w.in_flight for w in workers) == 3
                    and sum(c.get("completed", 0) for c in counters) == 1
                    and sum(c.get("failed", 0) for c in counters) == 1
                )

            await wait_for(settled, 30, "two registered workers running the three long jobs")

            async def stats(*extra: str) -> tuple[int, dict[str, Any], str]:
                done = await cli("stats", "--json", *extra, *s)
                return done.returncode, json.loads(done.stdout), done.stderr

            started = time.monotonic()
            code, data, _ = await stats()
            elapsed = time.monotonic() - started
            assert code == 0
            # No listening period (the announcements it replaced took 1.5 s at least).
            assert elapsed < 1.5, elapsed
            assert data["jobs"] == {
                "queued": 0, "delayed": 0, "processing": 3, "completed": 1, "failed": 1,
                "scheduled": 0,
            }  # fmt: skip
            workers = {w["id"]: w for w in data["workers"]}
            assert sorted(workers) == ["alpha", "beta"]
            assert {w["pid"] for w in workers.values()} == {alpha.pid, beta.pid}
            assert all(w["host"] and w["kind"] == "worker" for w in workers.values())
            assert {(w["state"], w["concurrency"]) for w in workers.values()} == {("running", 2)}
            assert sorted(j for w in workers.values() for j in w["jobs"]) == [
                f"long-{i}" for i in range(3)
            ]
            assert sum(w["in_flight"] for w in workers.values()) == 3
            assert sum(w["counters"]["completed"] for w in workers.values()) == 1
            assert sum(w["counters"]["failed"] for w in workers.values()) == 1
            assert sum(w["counters"]["fenced"] for w in workers.values()) == 0
            assert data["leader"] in ("alpha", "beta") and data["leader_registered"]
            assert isinstance(data["leader_epoch"], int)
            assert [i for i, w in workers.items() if w["is_reaper_leader"]] == [data["leader"]]

            assert (await stats("--check-worker", "alpha"))[0] == 0
            code, _, err = await stats("--check-worker", "gamma")
            assert code == ExitCode.UNHEALTHY and "'gamma' is not registered" in err
            _one_line_error(Done(code, "", err))
            assert (await stats("--min-workers", "2"))[0] == 0
            code, _, err = await stats("--min-workers", "3")
            assert code == ExitCode.UNHEALTHY and "2 live workers, fewer than 3" in err

            text = (await cli("stats", *s)).stdout
            assert "workers: 2 live" in text and "HOST:PID" in text
            line = next(row for row in text.splitlines() if row.strip().startswith("alpha "))
            assert f":{alpha.pid}" in line and "running" in line and "long-" in line
            assert f"reaper leader: {data['leader']} (epoch {data['leader_epoch']})" in text

            # beta in its grace period: still registered, as `stopping`.
            beta.proc.send_signal(signal.SIGTERM)

            async def beta_stopping() -> bool:
                info = next((w for w in await q.workers() if w.id == "beta"), None)
                return info is not None and info.state == "stopping"

            await wait_for(beta_stopping, 10, "beta to report stopping")
            code, data, _ = await stats("--check-worker", "beta")
            assert code == 0
            assert {w["id"]: w["state"] for w in data["workers"]}["beta"] == "stopping"
            beta.proc.send_signal(signal.SIGTERM)  # end the grace: it leaves the registry
            assert await pool.wait(beta, 20) == 0, beta.stderr()
            code, data, err = await stats("--check-worker", "beta")
            assert code == ExitCode.UNHEALTHY and "'beta' is not registered" in err
            assert [w["id"] for w in data["workers"]] == ["alpha"]
            assert (await stats("--min-workers", "2"))[0] == ExitCode.UNHEALTHY

            # SIGKILLed: nothing withdraws it; its registration expires within ~2 s.
            alpha.proc.kill()
            killed_at = time.monotonic()
            await pool.wait(alpha, 10)

            async def alpha_gone() -> bool:
                return (await stats("--check-worker", "alpha"))[0] == ExitCode.UNHEALTHY

            await wait_for(alpha_gone, 10, "the probe to report alpha dead")
            assert time.monotonic() - killed_at < 5.0
            code, data, _ = await stats()
            assert code == 0 and data["workers"] == []
            # A lock still held in a dead worker's name is shown as such.
            assert data["leader"] in (None, "alpha") and not data["leader_registered"]


async def test_stats_shows_a_stand_alone_reaper_as_such(
    tmp_path: Path, name: str, cli: Callable[..., Awaitable[Done]]
) -> None:
    """A stand-alone reaper (open_reaper in this process) is listed with kind `reaper`, leads
    the reaper lock, passes --check-worker, and is not counted by --min-workers."""
    url = f"file://{tmp_path}/q"
    s = ["--storage", url, "--name", name]
    async with jq.storage_from_url(url) as storage:
        async with jq.open_reaper(storage, name=name, owner="sweeper") as reaper:
            await wait_for(lambda: reaper.is_leader, 10, "the reaper to lead")
            done = await cli("stats", "--json", *s)
            data = json.loads(done.stdout)
            assert [(w["id"], w["kind"], w["is_reaper_leader"]) for w in data["workers"]] == [
                ("sweeper", "reaper", True)
            ]
            assert (data["leader"], data["leader_registered"]) == ("sweeper", True)
            assert (await cli("stats", "--check-worker", "sweeper", *s)).returncode == 0
            done = await cli("stats", "--min-workers", "1", *s)
            assert done.returncode == ExitCode.UNHEALTHY and "0 live workers" in done.stderr
            text = (await cli("stats", *s)).stdout
            assert "workers: 0 live, stand-alone reapers: 1" in text
            assert "sweeper" in text and " reaper " in text
        # Stopped, it withdrew its registration and released the lock.
        data = json.loads((await cli("stats", "--json", *s)).stdout)
        assert data["workers"] == [] and data["leader"] is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_lets_running_job_finish(
    url: str, name: str, tmp_path: Path, sig: signal.Signals
) -> None:
    """One SIGTERM/SIGINT: stop claiming, let the running job finish within the grace
    period, exit 0; the queued job stays queued for the next worker."""
    async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as q:
        await q.enqueue("running", {"sleep": 1.5})
        with WorkerPool(tmp_path, url, name) as pool:
            w = pool.start("--shutdown-grace", "20")
            await wait_for(lambda: pool.runs_per_job()["running"] == 1, 30, "the job to start")
            await q.enqueue("waiting", {})
            w.proc.send_signal(sig)
            started = time.monotonic()
            assert await pool.wait(w, 30) == 0, w.stderr()
            assert time.monotonic() - started >= 0.5  # it waited for the job
        status = await q.get_status("running")
        assert status is not None and status.state == "completed"
        waiting = await q.get_status("waiting")
        assert waiting is not None and waiting.state in ("queued", "completed")
        assert f"{sig.name}: graceful shutdown" in w.stderr()
        assert "completed=1" in w.stderr()


async def test_second_signal_skips_grace_and_releases_jobs(
    url: str, name: str, tmp_path: Path
) -> None:
    """A second SIGTERM ends the grace period at once; the unfinished jobs go back to the
    queue with their attempt not consumed, and the worker exits 0."""
    async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as q:
        for i in range(2):
            await q.enqueue(f"slow-{i}", {"sleep": 60})
        with WorkerPool(tmp_path, url, name) as pool:
            w = pool.start("--concurrency", "2", "--shutdown-grace", "60")
            await wait_for(lambda: len(pool.executions()) == 2, 30, "both jobs to start")
            w.proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: "graceful shutdown" in w.stderr(), 10, "the first signal")
            await trio.sleep(0.3)
            assert w.proc.poll() is None  # still in its grace period
            started = time.monotonic()
            w.proc.send_signal(signal.SIGTERM)
            assert await pool.wait(w, 15) == 0, w.stderr()
            assert time.monotonic() - started < 5
        for i in range(2):
            status = await q.get_status(f"slow-{i}")
            assert status is not None
            assert (status.state, status.attempts) == ("queued", 0)
        assert "ending the grace period" in w.stderr()
        assert "released=2" in w.stderr()


async def test_signal_while_storage_unreachable_exits_promptly(tmp_path: Path) -> None:
    """SIGTERM while the worker is still connecting stops it at once (exit 0)."""
    with WorkerPool(tmp_path, "redis://127.0.0.1:9/0", "x") as pool:
        w = pool.start()
        await wait_for(lambda: "opening redis://" in w.stderr(), 30, "signal handling")
        await trio.sleep(0.2)
        assert w.proc.poll() is None
        w.proc.send_signal(signal.SIGTERM)
        assert await pool.wait(w, 10) == 0, w.stderr()


async def test_stats_watch_refreshes_until_signal(tmp_path: Path, name: str) -> None:
    """`stats --watch` prints a fresh snapshot every interval, counts and workers read from
    the registry each time (a worker appears while it runs, with its counters, and is gone
    once it stopped), and exits 0 on SIGINT."""
    url = f"file://{tmp_path}/q"
    out = tmp_path / "watch.out"

    def snapshots() -> list[dict[str, Any]]:
        lines = out.read_text().splitlines()
        return [json.loads(line) for line in lines[:-1]]  # the last one may be partial

    proc = spawn_cli(
        "stats", "--watch", "--json", "--interval", "0.2", "--storage", url, "--name", name,
        stdout=out,
    )  # fmt: skip
    try:
        async with jq.storage_from_url(url) as storage, jq.open_queue(storage, name=name) as q:
            await wait_for(lambda: len(snapshots()) >= 2, 30, "two snapshots")
            await q.enqueue("a", {})
            await wait_for(lambda: snapshots()[-1]["jobs"]["queued"] == 1, 10, "a fresh count")
            with WorkerPool(tmp_path, url, name) as pool:
                w = pool.start("--worker-id", "watched")
                await wait_for(
                    lambda: (
                        [(x["id"], x["counters"]["completed"]) for x in snapshots()[-1]["workers"]]
                        == [("watched", 1)]
                    ),
                    30,
                    "the worker (having completed the job) in a snapshot",
                )
                w.proc.send_signal(signal.SIGTERM)
                assert await pool.wait(w, 20) == 0, w.stderr()
            await wait_for(lambda: snapshots()[-1]["workers"] == [], 10, "the worker gone")
        proc.send_signal(signal.SIGINT)
        _, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=10))
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    final = [json.loads(line) for line in out.read_text().splitlines()]
    assert final[0]["jobs"]["queued"] == 0 and final[-1]["jobs"]["completed"] == 1
    assert final[-1]["workers"] == [] and final[-1]["leader"] is None


async def test_worker_storage_failure_exits_3(tmp_path: Path) -> None:
    """A worker whose storage cannot be opened prints one line and exits 3."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = await trio.to_thread.run_sync(
        lambda: run_cli("worker", "_proc_handlers:record", "--storage", f"file://{blocker}/q")
    )
    assert done.returncode == ExitCode.STORAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert "trio-jobqueue: error: storage failed" in done.stderr


async def test_sigterm_at_any_moment_of_startup_exits_promptly(tmp_path: Path) -> None:
    """SIGTERM while the worker is opening its storage and starting its services (at
    staggered moments) always ends in a prompt, clean exit 0: a half-opened queue never
    waits forever for its shielded services."""
    url = f"file://{tmp_path}/q"
    with WorkerPool(tmp_path, url, "startup") as pool:
        workers = [pool.start() for _ in range(8)]

        async def stop(index: int, worker: Worker) -> None:
            await wait_for(lambda: "opening file://" in worker.stderr(), 60, "signal handling")
            await trio.sleep(index * 0.03)
            worker.proc.send_signal(signal.SIGTERM)
            assert await pool.wait(worker, 20) == 0, worker.stderr()

        async with trio.open_nursery() as nursery:
            for index, worker in enumerate(workers):
                nursery.start_soon(stop, index, worker)


# -- Ctrl-C and closed pipes -------------------------------------------------------------


def _assert_interrupted(proc: subprocess.Popen[str], err: str) -> None:
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1] == "interrupted", err
    assert err.count("interrupted") == 1, err


def _sigint_default() -> None:
    # A process started in the background of a non-interactive shell inherits SIGINT
    # ignored, and Python then keeps it ignored; the child must get Ctrl-C whatever
    # started the test run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trio_jobqueue", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=Path(__file__).parent,
        preexec_fn=_sigint_default,
    )


def test_ctrl_c_during_demo_is_one_line_and_exit_130() -> None:
    """SIGINT while `demo --jobs 10000000` runs (the KeyboardInterrupt surfaces inside
    trio's nested exception groups): the line `interrupted`, no traceback, exit 130."""
    proc = _spawn("demo", "--jobs", "10000000")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("demo: 10,000,000 jobs")
        time.sleep(0.5)  # well into the run: enqueueing, working, reporting progress
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _assert_interrupted(proc, err)


async def test_ctrl_c_during_admin_command_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """SIGINT while `enqueue --wait` waits for a result: `interrupted`, exit 130."""
    url = f"file://{tmp_path}/q"
    proc = _spawn("enqueue", "job", "{}", "--wait", "--timeout", "600", "--storage", url)
    try:
        async with jq.storage_from_url(url) as storage, jq.open_queue(storage) as queue:
            # The job exists once the command is past its enqueue, waiting.
            deadline = time.monotonic() + 60
            while await queue.get_status("job") is None:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                await trio.sleep(0.05)
        await trio.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _assert_interrupted(proc, err)


def test_interrupt_inside_nested_exception_groups_exits_130(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A KeyboardInterrupt nested in exception groups next to other errors is still a
    Ctrl-C: one line, exit 130, nothing re-raised."""
    group = BaseExceptionGroup(
        "outer",
        [ValueError("x"), BaseExceptionGroup("inner", [OSError("y"), KeyboardInterrupt()])],
    )
    assert _exit_code(group) == ExitCode.INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted"
    stale = ExceptionGroup("g", [ExceptionGroup("h", [jq.StorageError("down")])])
    assert _exit_code(stale) == ExitCode.STORAGE
    assert capsys.readouterr().err == "trio-jobqueue: error: storage failed: down\n"


@pytest.fixture
def queue_url(tmp_path: Path) -> str:
    """A File queue holding the queued job `x`."""
    url = f"file://{tmp_path}/q"

    async def fill() -> None:
        async with jq.storage_from_url(url) as storage, jq.open_queue(storage) as q:
            await q.enqueue("x", {"n": 1})

    trio.run(fill)
    return url


@pytest.mark.parametrize(
    "args",
    [
        ["status", "x"],
        ["status", "x", "--json"],
        ["stats"],
        ["stats", "--json", "--watch", "--interval", "0.05"],
        ["enqueue", "y", "{}"],
        ["demo", "--jobs", "2000"],
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_closed_stdout_exits_quietly_with_141(queue_url: str, args: list[str]) -> None:
    """Output into a pipe whose reader is gone: no traceback, no "Exception ignored"
    message, nothing at all on stderr, exit 141 (128 + SIGPIPE, as coreutils report)."""
    if args[0] != "demo":
        args = [*args, "--storage", queue_url]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes anything
    try:
        done = subprocess.run(
            [sys.executable, "-m", "trio_jobqueue", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=cli_env(),
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (ExitCode.BROKEN_PIPE, "")


def test_pipe_into_head_is_quiet(queue_url: str) -> None:
    """`trio-jobqueue status x | head -1` prints the first line and nothing on stderr,
    whichever of the two processes finishes first."""
    done = subprocess.run(
        ["bash", "-c", '"$0" -m trio_jobqueue status x --storage "$1" | head -1; '
         'echo "exit=${PIPESTATUS[0]}"', sys.executable, queue_url],
        capture_output=True, text=True, timeout=60, env=cli_env(),
    )  # fmt: skip
    assert done.stderr == ""
    first, status = done.stdout.splitlines()
    assert first == "id:        x"
    assert status in ("exit=0", "exit=141")
