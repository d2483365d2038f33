"""Operating a queue from another process: pause stops the workers of other processes and
resume restarts them; the CLI's retry, delete, purge, pause and resume; content ids."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from _proc_harness import WorkerPool, run_cli

import trio_jobqueue as jq


async def _fail_jobs(url: str, name: str, ids: list[str]) -> None:
    """Make ``ids`` failed jobs (claimed and failed through the storage, no worker)."""
    storage = jq.storage_from_url(url)
    async with storage:
        for job_id in ids:
            await storage.enqueue(name, job_id, b"{}", max_attempts=1, result_ttl=600)
        claims = await storage.claim(name, "op-test", limit=len(ids), lease=60)
        for claim in claims:
            await storage.fail(
                name, claim.job_id, claim.token, b'{"type":"X","message":"m"}', ttl=600
            )


@pytest.mark.slow
async def test_pause_stops_workers_of_other_processes(url: str, tmp_path: Path) -> None:
    """Pause from this process: two worker processes start none of the jobs enqueued
    meanwhile (they stay queued); resume: they run all of them, each once."""
    name = f"pause-{time.monotonic_ns()}"
    with WorkerPool(tmp_path, url, name, handler="_wake_handlers:started_at") as pool:
        pool.start()
        pool.start()
        async with jq.open_queue(jq.storage_from_url(url), name=name) as q:
            await q.enqueue_and_wait("warm-up", None, timeout=60)
            await q.pause()
            paused_at = time.time()
            for n in range(10):
                assert (await q.enqueue(f"job-{n}", n)).status == "queued"
            await trio.sleep(1.5)  # what is observed is that nothing happens meanwhile
            for n in range(10):
                status = await q.get_status(f"job-{n}")
                assert status is not None and status.state == "queued", status
            # Read before the call: a worker may start a job as soon as the resume is
            # stored, before the call has returned here.
            resumed_at = time.time()
            await q.resume()
            with trio.fail_after(30):
                started = [await q.enqueue_and_wait(f"job-{n}", n, timeout=30) for n in range(10)]
    assert min(started) >= resumed_at > paused_at + 1.5
    print(f"resume -> first start {(min(started) - resumed_at) * 1e3:.1f} ms")


def test_cli_retry_delete_purge_pause_resume(url: str) -> None:
    """The operator commands do what they print: retry one failed job or all, delete one
    job, purge a state, pause and resume (stats shows it); mistakes are one usage line."""
    name = f"ops-{uuid.uuid4().hex[:8]}"
    trio.run(_fail_jobs, url, name, ["f1", "f2", "f3"])
    common = ["--storage", url, "--name", name]

    def cli(*args: str) -> tuple[int, str]:
        done = run_cli(*args, *common)
        return done.returncode, done.stdout if done.returncode in (0, 1) else done.stderr

    assert cli("retry", "f1") == (0, "retried\n")
    assert cli("retry", "f1") == (1, "not_failed\n")
    assert cli("retry", "nobody") == (1, "not_found\n")
    assert cli("retry", "--all-failed") == (0, "retried 2\n")
    assert cli("delete", "f1") == (0, "deleted\n")
    assert cli("delete", "f1") == (1, "not_found\n")
    assert cli("purge", "--state", "queued", "--limit", "1") == (0, "deleted 1\n")
    assert cli("purge", "--state", "queued") == (0, "deleted 1\n")
    assert cli("pause") == (0, "paused\n")
    code, out = cli("stats", "--json")
    assert code == 0 and json.loads(out)["paused"] is True
    assert "PAUSED" in cli("stats")[1]
    assert cli("resume") == (0, "resumed\n")
    code, out = cli("stats", "--json")
    assert json.loads(out)["paused"] is False
    for bad, needle in [
        (["retry"], "give a job ID or --all-failed"),
        (["retry", "f2", "--all-failed"], "give a job ID or --all-failed"),
        (["purge", "--state", "processing"], "invalid choice"),
        (["purge"], "--state"),
        (["delete", ""], "must not be empty"),
    ]:
        done = run_cli(*bad, *common)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], (bad, done)


def test_content_id_is_stable_and_new_id_unique() -> None:
    """content_id hashes the payload (dict key order does not matter, a prefix is kept,
    an unencodable payload is a SerializationError); new_id never repeats."""
    a = jq.content_id({"a": 1, "b": [1, 2]})
    assert a == jq.content_id({"b": [1, 2], "a": 1})
    assert a != jq.content_id({"a": 2, "b": [1, 2]})
    assert len(a) == 64 and int(a, 16) >= 0
    assert jq.content_id("x", prefix="mail:").startswith("mail:")
    assert jq.content_id(b"\x00", serializer=jq.BytesSerializer()) == jq.content_id(
        b"\x00", serializer=jq.BytesSerializer()
    )
    with pytest.raises(jq.SerializationError):
        jq.content_id(float("nan"))
    ids = {jq.new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert jq.new_id("job-").startswith("job-")


async def test_content_id_dedups_the_same_payload() -> None:
    """Enqueueing one payload twice under its content id is a duplicate."""
    async with jq.open_queue(jq.MemoryStorage(), name="cid") as q:
        payload = {"to": "a@example.com", "body": "hi"}
        assert (await q.enqueue(jq.content_id(payload), payload)).status == "queued"
        again = await q.enqueue(jq.content_id(dict(reversed(payload.items()))), payload)
        assert again.status == "duplicate"


async def test_enqueue_many_of_10000_jobs_with_100_duplicates(
    storage_factory: Callable[[], jq.Storage],
) -> None:
    """10,000 jobs in one call, 100 of them repeating earlier ids: exactly the first of
    each id is accepted (the repeats report duplicate), and every accepted job is there."""
    ids = [f"bulk-{n}" for n in range(9900)] + [f"bulk-{n * 99}" for n in range(100)]
    async with jq.open_queue(storage_factory(), name=f"bulk-{uuid.uuid4().hex[:8]}") as q:
        results = await q.enqueue_many((job_id, n) for n, job_id in enumerate(ids))
        assert [r.status for r in results[:9900]] == ["queued"] * 9900
        assert all(r.status == "duplicate" for r in results[9900:])
        stats = await q.storage.stats(q.name)
        assert stats.queued == 9900, stats
        claims = await q.storage.claim(q.name, "w", limit=1, lease=60)
        assert claims[0].job_id == "bulk-0" and claims[0].payload == b"0"


def test_cli_enqueue_from_file(url: str, tmp_path: Path) -> None:
    """`enqueue --from-file` enqueues a JSON Lines file (options per line) and prints the
    count per status; a bad line is one usage line naming it, and nothing is enqueued."""
    name = f"ff-{uuid.uuid4().hex[:8]}"
    common = ["--storage", url, "--name", name]
    good = tmp_path / "jobs.jsonl"
    good.write_text(
        '{"id": "a", "payload": {"x": 1}}\n'
        '{"id": "b", "payload": 2, "delay": 600, "priority": 3}\n'
        "\n"
        '{"id": "a", "payload": 3}\n'
    )
    done = run_cli("enqueue", "--from-file", str(good), *common)
    assert (done.returncode, done.stdout) == (0, "duplicate 1, queued 1, scheduled 1\n"), done
    status = json.loads(run_cli("status", "b", "--json", *common).stdout)
    assert (status["state"], status["priority"]) == ("scheduled", 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "c", "payload": 1}\n{"id": "d", "payload": 1, "priority": 5000}\n')
    for lines, needle in [
        (bad, "bad.jsonl:2: priority 5000"),
    ]:
        done = run_cli("enqueue", "--from-file", str(lines), *common)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1 and needle in err[0], done
    assert run_cli("status", "c", *common).returncode == 1  # nothing was written
    not_json = tmp_path / "x.jsonl"
    not_json.write_text("{oops\n")
    done = run_cli("enqueue", "--from-file", str(not_json), *common)
    assert done.returncode == 2 and "x.jsonl:1: not valid JSON" in done.stderr
    done = run_cli("enqueue", "a", "{}", "--from-file", str(good), *common)
    assert done.returncode == 2 and "--from-file replaces ID" in done.stderr


def test_cli_list_pages_through_a_state(url: str) -> None:
    """`list --state` prints a page in the state's order and the cursor of the next one;
    following it reaches the end; --json gives the same jobs; a bad cursor is exit 2."""
    name = f"ls-{uuid.uuid4().hex[:8]}"
    trio.run(_fail_jobs, url, name, ["f1", "f2", "f3"])
    common = ["--storage", url, "--name", name]
    seen: list[str] = []
    args = ["list", "--state", "failed", "--limit", "2", *common]
    for _ in range(3):
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].split() == ["ID", "ATTEMPTS", "PRIORITY", "WHEN", "ERROR"]
        seen += [line.split()[0] for line in lines[1:-1]]
        assert "X: m" in done.stdout
        if lines[-1].endswith("; end"):
            break
        args = [
            "list",
            "--state",
            "failed",
            "--limit",
            "2",
            "--cursor",
            lines[-1].split()[-1],
            *common,
        ]
    assert sorted(seen) == ["f1", "f2", "f3"] and len(seen) == 3, seen
    data = json.loads(run_cli("list", "--state", "failed", "--json", *common).stdout)
    assert [job["id"] for job in data["jobs"]] == seen and data["cursor"] is None
    assert all(job["state"] == "failed" for job in data["jobs"])
    done = run_cli("list", "--state", "failed", "--cursor", "garbage", *common)
    assert done.returncode == 2 and "not a cursor" in done.stderr
    done = run_cli("list", "--state", "failed", "--limit", "1001", *common)
    assert done.returncode == 2 and "--limit" in done.stderr


def test_cli_show_prints_payload_error_and_traceback(url: str) -> None:
    """`show ID` prints the payload, state, attempts, priority, times and the last error
    with its traceback; --json has every field and the payload; unknown: exit 1."""
    name = f"show-{uuid.uuid4().hex[:8]}"
    common = ["--storage", url, "--name", name]

    async def failed_with_traceback() -> None:
        storage = jq.storage_from_url(url)
        async with storage:
            await storage.enqueue(
                name, "s1", b'{"to": "a@b"}', max_attempts=1, result_ttl=600, priority=4
            )
            (claim,) = await storage.claim(name, "w", limit=1, lease=60)
            error = json.dumps(
                {
                    "type": "ValueError",
                    "message": "bad address",
                    "traceback": "Traceback (most recent call last):\n  boom\nValueError: bad\n",
                }
            ).encode()
            await storage.fail(name, "s1", claim.token, error, ttl=600)

    trio.run(failed_with_traceback)
    done = run_cli("show", "s1", *common)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    needles = [
        'payload:   {"to": "a@b"}',
        "state:     failed",
        "attempts:  1/1",
        "priority:  4",
        "error:     ValueError: bad address",
        "Traceback (most recent",
    ]
    for needle in needles:
        assert needle in text, (needle, text)
    data = json.loads(run_cli("show", "s1", "--json", *common).stdout)
    assert data["payload"] == {"to": "a@b"} and data["error"]["type"] == "ValueError"
    assert run_cli("show", "nobody", *common).returncode == 1
