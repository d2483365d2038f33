"""RedisStorage at the Storage-ABC level: every method, and the SPEC §9 defects that
apply to Redis (binary payloads, NOSCRIPT, ids with ``:``/``{}``, per-entry TTLs,
fencing, cancel + re-enqueue, independent watchers)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.exceptions
import trio
from fixtures_redis import RedisServer, free_port, missing_tool, require_redis_server

from trio_jobqueue import StorageError
from trio_jobqueue._types import CancelStatus, EnqueueStatus, EventKind, JobState, UpdateTtlStatus
from trio_jobqueue.storage import EventRecord, Fence, SettleStatus
from trio_jobqueue.storage._common import STALLED_ERROR
from trio_jobqueue.storage._redis_common import RedisReplyError
from trio_jobqueue.storage._redis_keys import NamespaceKeys, hash_tag
from trio_jobqueue.storage.redis import RedisStorage, parse_events

pytestmark = pytest.mark.redis

Factory = Callable[[], RedisStorage]
NS = "emails"
BLOB = bytes(range(256)) + b"\r\n\x00{}:" + "ü✓".encode()
TRICKY_IDS = ["a:b", "{x}", "}{", "a:j:b", ":", "{", "ü✓ 🚀", "x" * 1024, "j:a", "lock:x"]


@pytest.fixture
async def storage(redis_storage_factory: Factory) -> AsyncIterator[RedisStorage]:
    async with redis_storage_factory() as s:
        assert isinstance(s, RedisStorage)
        yield s


async def enqueue(
    s: RedisStorage,
    job_id: str,
    payload: bytes = b"p",
    *,
    ttl: float = 100.0,
    max_attempts: int = 3,
    ns: str = NS,
) -> EnqueueStatus:
    out = await s.enqueue(ns, job_id, payload, max_attempts=max_attempts, result_ttl=ttl)
    return out.status


async def test_enqueue_dedup_and_status(storage: RedisStorage) -> None:
    """Enqueue accepts once; duplicates report the holder's state; status round-trips."""
    assert await enqueue(storage, "j1", BLOB) is EnqueueStatus.QUEUED
    dup = await storage.enqueue(NS, "j1", b"other", max_attempts=9, result_ttl=5)
    assert dup.status is EnqueueStatus.DUPLICATE and dup.existing_state is JobState.QUEUED
    rec = await storage.get_status(NS, "j1")
    assert rec is not None
    assert (rec.state, rec.attempts, rec.max_attempts, rec.result_ttl) == (
        JobState.QUEUED,
        0,
        3,
        100.0,
    )
    assert await storage.get_status(NS, "nope") is None
    [claim] = await storage.claim(NS, "w", limit=5, lease=30)
    assert claim.payload == BLOB and claim.max_attempts == 3
    assert await storage.complete(NS, "j1", claim.token, BLOB, ttl=50) is SettleStatus.OK
    done = await storage.enqueue(NS, "j1", b"x", max_attempts=1, result_ttl=1)
    assert done.status is EnqueueStatus.COMPLETED and done.result == BLOB


async def test_binary_payloads_intact(storage: RedisStorage) -> None:
    """Payload, result and error bytes come back identical everywhere (SPEC §9)."""
    payloads = [BLOB, b"", b"\xff" * 10_000, b"plain"]
    for i, payload in enumerate(payloads):
        await enqueue(storage, f"b{i}", payload)
    async with storage.subscribe_events(NS) as events:
        claims = await storage.claim(NS, "w", limit=10, lease=30)
        assert [c.payload for c in claims] == payloads
        await storage.complete(NS, "b0", claims[0].token, BLOB, ttl=10)
        await storage.fail(NS, "b1", claims[1].token, BLOB[::-1], ttl=10)
        await storage.retry(NS, "b2", claims[2].token, BLOB, delay=0)
        seen = [await events.receive() for _ in range(len(payloads) + 3)]
    assert seen[-3] == EventRecord(EventKind.COMPLETED, "b0", 1, result=BLOB)
    assert seen[-2] == EventRecord(EventKind.FAILED, "b1", 1, error=BLOB[::-1])
    assert seen[-1] == EventRecord(EventKind.FAILING, "b2", 1, error=BLOB)
    b0 = await storage.get_status(NS, "b0")
    b1 = await storage.get_status(NS, "b1")
    assert b0 is not None and b0.result == BLOB
    assert b1 is not None and b1.error == BLOB[::-1]


async def test_tricky_ids_and_names_do_not_collide(storage: RedisStorage) -> None:
    """Ids and queue names with ``:``, ``{}`` and unicode stay distinct (SPEC §9)."""
    names = [NS, "a:b", "a", "{q}", "ü"]
    for ns in names:
        for job_id in TRICKY_IDS:
            assert await enqueue(storage, job_id, f"{ns}/{job_id}".encode(), ns=ns) == "queued"
    for ns in names:
        claims = await storage.claim(ns, "w", limit=100, lease=30)
        assert [c.job_id for c in claims] == TRICKY_IDS
        assert [c.payload for c in claims] == [f"{ns}/{j}".encode() for j in TRICKY_IDS]
        for claim in claims:
            rec = await storage.get_status(ns, claim.job_id)
            assert rec is not None and rec.state is JobState.PROCESSING


async def test_every_key_of_a_queue_shares_one_hash_tag(storage: RedisStorage) -> None:
    """All keys of one namespace hash to one Cluster slot: one ``{prefix:name}`` tag."""
    ns = "we:ird{name}"
    await enqueue(storage, "{odd}:id", ns=ns)
    [claim] = await storage.claim(ns, "w", limit=1, lease=30)
    await storage.retry(ns, claim.job_id, claim.token, b"e", delay=100)
    await enqueue(storage, "done", ns=ns)
    [claim] = await storage.claim(ns, "w", limit=1, lease=30)
    await storage.complete(ns, "done", claim.token, b"r", ttl=100)
    await storage.acquire_lock(ns, "reaper:{x}", "me", ttl=10)
    tag = hash_tag(storage.key_prefix, ns)
    keys = await storage.server_command("KEYS", f"*{storage.key_prefix}*")
    assert len(keys) >= 5
    for key in keys:
        text = key.decode()
        start = text.index("{")
        assert "{" + text[start + 1 : text.index("}", start)] + "}" == tag
    assert NamespaceKeys.of("a:b", "c") != NamespaceKeys.of("a", "b:c")


async def test_scripts_reload_after_function_flush(storage: RedisStorage) -> None:
    """The scripts are reloaded transparently after ``FUNCTION FLUSH`` (what a restart
    without persistence leaves), the SPEC §9 ``NOSCRIPT`` case."""
    await enqueue(storage, "one")
    await storage.server_command("FUNCTION", "FLUSH")
    assert await enqueue(storage, "two") is EnqueueStatus.QUEUED
    await storage.server_command("FUNCTION", "FLUSH")
    claims = await storage.claim(NS, "w", limit=5, lease=30)
    assert [c.job_id for c in claims] == ["one", "two"]
    await storage.server_command("FUNCTION", "FLUSH")
    assert (await storage.stats(NS)).processing == 2


async def test_one_short_ttl_does_not_wipe_other_results(storage: RedisStorage) -> None:
    """Per-entry TTLs: a short TTL expires only its own job (SPEC §9)."""
    await enqueue(storage, "short", ttl=10)
    await enqueue(storage, "long", ttl=1000)
    for claim in await storage.claim(NS, "w", limit=2, lease=30):
        await storage.complete(NS, claim.job_id, claim.token, b"r", ttl=claim.result_ttl)
    keys = storage.keys(NS)
    # Only the per-job records carry a TTL; shared structures never do.
    shared_keys = (keys.queue, keys.seq, keys.leases, keys.completed, keys.failed, keys.delayed)
    for shared in shared_keys:
        assert await storage.server_command("PTTL", shared) in (-1, -2)
    assert await storage.server_command("PTTL", keys.job("short")) > 0
    await storage.advance_clock(20)
    assert await storage.get_status(NS, "short") is None
    long = await storage.get_status(NS, "long")
    assert long is not None and long.result == b"r"
    assert (await storage.stats(NS)).completed == 1
    # The expired id may be enqueued again.
    assert await enqueue(storage, "short") is EnqueueStatus.QUEUED


async def test_expired_record_invisible_before_cleanup(storage: RedisStorage) -> None:
    """A record past its TTL is invisible although Redis has not removed it yet."""
    await enqueue(storage, "x", ttl=5)
    [claim] = await storage.claim(NS, "w", limit=1, lease=30)
    await storage.complete(NS, "x", claim.token, b"r", ttl=5)
    await storage.advance_clock(6)
    assert await storage.server_command("EXISTS", storage.keys(NS).job("x")) == 1
    assert (await storage.stats(NS)).completed == 0
    assert await storage.update_result_ttl(NS, "x", 100) is UpdateTtlStatus.NOT_FOUND
    assert await storage.cancel(NS, "x") is CancelStatus.NOT_FOUND


async def test_purge_expired_counts_and_removes(storage: RedisStorage) -> None:
    """purge_expired physically removes expired records only."""
    for job_id in ("a", "b", "c"):
        await enqueue(storage, job_id, ttl=5 if job_id != "c" else 500)
    for claim in await storage.claim(NS, "w", limit=3, lease=30):
        await storage.fail(NS, claim.job_id, claim.token, b"e", ttl=claim.result_ttl)
    await storage.advance_clock(10)
    assert await storage.purge_expired(NS) == 2
    assert await storage.server_command("EXISTS", storage.keys(NS).job("a")) == 0
    assert await storage.purge_expired(NS) == 0
    assert (await storage.stats(NS)).failed == 1


async def test_update_result_ttl(storage: RedisStorage) -> None:
    """update_result_ttl restarts a terminal job's TTL and reports other states."""
    await enqueue(storage, "t", ttl=10)
    assert await storage.update_result_ttl(NS, "t", 50) is UpdateTtlStatus.NOT_TERMINAL
    assert await storage.update_result_ttl(NS, "zz", 50) is UpdateTtlStatus.NOT_FOUND
    [claim] = await storage.claim(NS, "w", limit=1, lease=30)
    await storage.complete(NS, "t", claim.token, b"r", ttl=10)
    await storage.advance_clock(8)
    assert await storage.update_result_ttl(NS, "t", 50) is UpdateTtlStatus.UPDATED
    await storage.advance_clock(8)
    rec = await storage.get_status(NS, "t")
    assert rec is not None and rec.result_ttl == 50


async def test_late_outcome_of_stalled_worker_is_fenced(storage: RedisStorage) -> None:
    """A worker whose lease was reaped cannot overwrite the newer attempt (SPEC §9)."""
    await enqueue(storage, "f")
    [old] = await storage.claim(NS, "w1", limit=1, lease=10)
    await storage.advance_clock(11)
    result = await storage.reap(NS)
    assert [(r.job_id, r.attempt, r.failed) for r in result.stalled] == [("f", 1, False)]
    [new] = await storage.claim(NS, "w2", limit=1, lease=10)
    assert new.attempt == 2 and new.token != old.token
    assert await storage.heartbeat(NS, [("f", old.token), ("f", new.token)], lease=10) == [
        False,
        True,
    ]
    for late in (
        storage.complete(NS, "f", old.token, b"old", ttl=10),
        storage.fail(NS, "f", old.token, b"old", ttl=10),
        storage.retry(NS, "f", old.token, b"old", delay=0),
        storage.release(NS, "f", old.token),
    ):
        assert await late is SettleStatus.STALE
    assert await storage.complete(NS, "f", new.token, b"new", ttl=10) is SettleStatus.OK
    rec = await storage.get_status(NS, "f")
    assert rec is not None and rec.result == b"new" and rec.attempts == 2


async def test_cancel_then_reenqueue_runs_new_payload(storage: RedisStorage) -> None:
    """Cancel removes record and message: a re-enqueue runs only the new payload."""
    await enqueue(storage, "c", b"stale")
    await enqueue(storage, "other")
    assert await storage.cancel(NS, "c") is CancelStatus.CANCELLED
    assert await storage.cancel(NS, "c") is CancelStatus.NOT_FOUND
    await enqueue(storage, "c", b"fresh")
    claims = await storage.claim(NS, "w", limit=10, lease=30)
    assert [(c.job_id, c.payload) for c in claims] == [("other", b"p"), ("c", b"fresh")]
    assert await storage.cancel(NS, "c") is CancelStatus.PROCESSING
    await storage.complete(NS, "c", claims[1].token, b"", ttl=10)
    assert await storage.cancel(NS, "c") is CancelStatus.COMPLETED


async def test_cancel_delayed_failing_job(storage: RedisStorage) -> None:
    """A failing job waiting out its delay is cancellable and never claimed again."""
    await enqueue(storage, "d")
    [claim] = await storage.claim(NS, "w", limit=1, lease=30)
    await storage.retry(NS, "d", claim.token, b"e", delay=50)
    assert (await storage.stats(NS)).delayed == 1
    assert await storage.cancel(NS, "d") is CancelStatus.CANCELLED
    await storage.advance_clock(60)
    assert await storage.claim(NS, "w", limit=1, lease=30) == []


async def test_retry_delay_release_and_ordering(storage: RedisStorage) -> None:
    """Delayed retries become claimable at their due time; release goes to the head and
    un-consumes the attempt."""
    for job_id in ("a", "b", "c"):
        await enqueue(storage, job_id)
    a, b, c = await storage.claim(NS, "w", limit=3, lease=30)
    await storage.retry(NS, "a", a.token, b"e", delay=20)
    await storage.retry(NS, "b", b.token, b"e", delay=10)
    assert await storage.release(NS, "c", c.token) is SettleStatus.OK
    rec = await storage.get_status(NS, "c")
    assert rec is not None and rec.state is JobState.QUEUED and rec.attempts == 0
    rec = await storage.get_status(NS, "b")
    assert rec is not None and rec.state is JobState.FAILING and rec.due_at is not None
    await storage.advance_clock(25)
    await enqueue(storage, "d")
    claims = await storage.claim(NS, "w", limit=10, lease=30)
    assert [(x.job_id, x.attempt) for x in claims] == [("c", 1), ("d", 1), ("b", 2), ("a", 2)]


async def test_reap_exhausted_and_fenced(storage: RedisStorage) -> None:
    """Reap fails exhausted jobs with the Stalled error and obeys the fence."""
    await enqueue(storage, "r", max_attempts=1)
    await storage.claim(NS, "w", limit=1, lease=5)
    epoch = await storage.acquire_lock(NS, "reaper", "me", ttl=100)
    assert epoch is not None
    await storage.advance_clock(6)
    stale = Fence("reaper", "me", epoch + 1)
    assert (await storage.reap(NS, fence=stale)).fenced
    result = await storage.reap(NS, fence=Fence("reaper", "me", epoch))
    assert not result.fenced and result.next_deadline is None
    assert [(r.job_id, r.failed) for r in result.stalled] == [("r", True)]
    rec = await storage.get_status(NS, "r")
    assert rec is not None and rec.state is JobState.FAILED and rec.error == STALLED_ERROR


async def test_leader_lock_epochs(storage: RedisStorage) -> None:
    """Locks: acquire/renew/release with epochs that only grow."""
    e1 = await storage.acquire_lock(NS, "L", "a", ttl=10)
    assert e1 == 1
    assert await storage.acquire_lock(NS, "L", "b", ttl=10) is None
    assert await storage.acquire_lock(NS, "L", "a", ttl=10) == 1
    assert await storage.renew_lock(NS, "L", "a", 1, ttl=10)
    assert not await storage.renew_lock(NS, "L", "b", 1, ttl=10)
    await storage.advance_clock(11)
    assert not await storage.renew_lock(NS, "L", "a", 1, ttl=10)
    assert await storage.acquire_lock(NS, "L", "b", ttl=10) == 2
    assert not await storage.release_lock(NS, "L", "a", 1)
    assert await storage.release_lock(NS, "L", "b", 2)
    assert await storage.acquire_lock(NS, "L", "a", ttl=10) == 3


async def test_blocked_claim_wakes_on_enqueue(storage: RedisStorage) -> None:
    """A blocked claim returns as soon as a job is enqueued, long before its wait."""
    got: list[str] = []

    async def worker(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        claims = await storage.claim(NS, "w", limit=1, lease=30, wait=60)
        got.extend(c.job_id for c in claims)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker)
            await trio.sleep(0.2)  # let the claim block (an event cannot tell us)
            await enqueue(storage, "wake")
    assert got == ["wake"]


async def test_blocked_claim_sees_delayed_retry_at_due_time(storage: RedisStorage) -> None:
    """A blocked claim wakes when a delayed retry becomes due (no event fires then)."""
    await enqueue(storage, "later")
    [claim] = await storage.claim(NS, "w", limit=1, lease=30)
    await storage.retry(NS, "later", claim.token, b"e", delay=0.3)
    with trio.fail_after(10):
        claims = await storage.claim(NS, "w", limit=1, lease=30, wait=60)
    assert [(c.job_id, c.attempt) for c in claims] == [("later", 2)]


async def test_claim_wait_times_out_empty(storage: RedisStorage) -> None:
    """With nothing to do, a blocked claim returns [] after its wait."""
    assert await storage.claim(NS, "w", limit=3, lease=30, wait=0.1) == []


async def test_watch_is_active_when_it_yields(storage: RedisStorage) -> None:
    """A completion right after the watch opens is seen (no lost wake-up)."""
    await enqueue(storage, "w1")
    [claim] = await storage.claim(NS, "w", limit=1, lease=30)
    async with storage.watch_job(NS, "w1") as watch:
        await storage.complete(NS, "w1", claim.token, b"r", ttl=10)
        with trio.fail_after(10):
            await watch.wait()


async def test_one_watchers_exit_does_not_silence_another(storage: RedisStorage) -> None:
    """Several watchers of one id are independent (SPEC §9)."""
    await enqueue(storage, "shared")
    [claim] = await storage.claim(NS, "w", limit=1, lease=30)
    async with storage.watch_job(NS, "shared") as keep:
        async with storage.watch_job(NS, "shared"):
            pass
        async with storage.watch_job(NS, "other-id"):
            pass
        await storage.complete(NS, "shared", claim.token, b"r", ttl=10)
        with trio.fail_after(10):
            await keep.wait()


async def test_cancel_wakes_watchers_and_events(storage: RedisStorage) -> None:
    """Cancel emits ``cancelled`` and wakes the job's watchers."""
    await enqueue(storage, "k")
    async with storage.subscribe_events(NS) as events, storage.watch_job(NS, "k") as watch:
        await storage.cancel(NS, "k")
        with trio.fail_after(10):
            await watch.wait()
            assert await events.receive() == EventRecord(EventKind.CANCELLED, "k", 0)


async def test_event_sequence(storage: RedisStorage) -> None:
    """Each transition publishes its event with the attempt number."""
    async with storage.subscribe_events(NS) as events:
        await enqueue(storage, "e", max_attempts=2)
        [c1] = await storage.claim(NS, "w", limit=1, lease=5)
        await storage.release(NS, "e", c1.token)
        await storage.claim(NS, "w", limit=1, lease=5)
        await storage.advance_clock(6)
        await storage.reap(NS)
        [c3] = await storage.claim(NS, "w", limit=1, lease=5)
        await storage.fail(NS, "e", c3.token, b"boom", ttl=5)
        with trio.fail_after(10):
            seen = [(e.kind.value, e.attempt) for e in [await events.receive() for _ in range(7)]]
    assert seen == [
        ("enqueued", 0),
        ("started", 1),
        ("requeued", 1),
        ("started", 1),
        ("stalled", 1),
        ("started", 2),
        ("failed", 2),
    ]


async def test_stats(storage: RedisStorage) -> None:
    """stats counts live jobs per state."""
    for i in range(5):
        await enqueue(storage, f"s{i}")
    c = await storage.claim(NS, "w", limit=4, lease=30)
    await storage.complete(NS, "s0", c[0].token, b"", ttl=10)
    await storage.fail(NS, "s1", c[1].token, b"", ttl=10)
    await storage.retry(NS, "s2", c[2].token, b"", delay=100)
    stats = await storage.stats(NS)
    assert (stats.queued, stats.delayed, stats.processing, stats.completed, stats.failed) == (
        1,
        1,
        1,
        1,
        1,
    )
    # Read-only: a due retry counts as queued but is not moved ahead of later enqueues.
    await storage.advance_clock(150)
    assert (await storage.stats(NS)).queued == 2
    await enqueue(storage, "s5")
    claims = await storage.claim(NS, "w", limit=5, lease=30)
    assert [x.job_id for x in claims] == ["s4", "s5", "s2"]


async def test_foreign_ready_entry_is_skipped(storage: RedisStorage) -> None:
    """A foreign id added to the ready set does not break claiming."""
    await storage.server_command("ZADD", storage.keys(NS).queue, 0, b"\xffnot-a-job")
    await enqueue(storage, "real")
    claims = await storage.claim(NS, "w", limit=5, lease=30)
    assert [c.job_id for c in claims] == ["real"]


async def test_shared_by_tasks_opened_and_closed_in_different_tasks(
    redis_storage_factory: Factory,
) -> None:
    """The first and the last user of a storage may be different tasks."""
    storage = redis_storage_factory()
    first_in = trio.Event()
    second_in = trio.Event()
    first_out = trio.Event()

    async def first() -> None:
        async with storage:
            first_in.set()
            await enqueue(storage, "from-first")
            await second_in.wait()
        first_out.set()

    async def second() -> None:
        await first_in.wait()
        async with storage:
            second_in.set()
            await first_out.wait()
            assert await enqueue(storage, "from-second") is EnqueueStatus.QUEUED
            claims = await storage.claim(NS, "w", limit=5, lease=30, wait=1)
            assert [c.job_id for c in claims] == ["from-first", "from-second"]

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            nursery.start_soon(second)
    assert not storage.is_open
    async with storage:  # reopens cleanly
        assert (await storage.stats(NS)).processing == 2


def test_url_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No URL: ``$REDIS_URL``, else ``redis://localhost:6379/0``."""
    monkeypatch.setenv("REDIS_URL", "redis://example:1234/5")
    assert RedisStorage().url == "redis://example:1234/5"
    monkeypatch.delenv("REDIS_URL")
    assert RedisStorage().url == "redis://localhost:6379/0"


async def test_password_acl_user_and_db(redis_server: RedisServer) -> None:
    """ACL user + password and a database number in the URL work; bad auth raises."""
    async with RedisStorage(redis_server.url, key_prefix="acl-setup") as admin:
        await admin.server_command(
            "ACL", "SETUSER", "jqtest", "on", ">s3cret:pw", "~*", "&*", "+@all"
        )
    url = f"redis://jqtest:s3cret%3Apw@127.0.0.1:{redis_server.port}/3"
    async with RedisStorage(url, key_prefix=f"acl-{os.getpid()}-{time.time_ns()}") as s:
        assert await enqueue(s, "in-db-3") is EnqueueStatus.QUEUED
        assert await s.server_command("CLIENT", "INFO") is not None
        info = (await s.server_command("CLIENT", "INFO")).decode()
        assert " db=3 " in info and " user=jqtest " in info
    bad = RedisStorage(f"redis://jqtest:wrong@127.0.0.1:{redis_server.port}/0", retry_timeout=0.5)
    with pytest.raises(StorageError) as info_:
        async with bad:
            pass
    # The server's refusal, with its text: our RedisReplyError (code WRONGPASS) from the
    # trio client, redis-py's AuthenticationError from the asyncio one.
    assert "refused the credentials" in str(info_.value)
    assert "invalid username-password pair" in str(info_.value)
    cause = info_.value.__cause__
    if bad.client == "trio":
        assert isinstance(cause, RedisReplyError) and cause.code == "WRONGPASS"
    else:
        assert isinstance(cause, redis.exceptions.AuthenticationError)


async def test_unreachable_server_raises_storage_error_from_driver() -> None:
    """Connection errors are retried briefly, then raised as StorageError from the OS
    error (the same with either client), naming the address and what happened."""
    port = free_port()
    storage = RedisStorage(f"redis://127.0.0.1:{port}/0", retry_timeout=0.3)
    with pytest.raises(StorageError) as info:
        async with storage:
            pass
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert f"cannot connect to Redis at 127.0.0.1:{port}: connection refused" in str(info.value)


def test_parse_events_round_trip_shapes() -> None:
    """The Lua event encoding parses back with None vs empty bytes kept apart."""
    data = b"completed 2 3 0 -1\na:b" + b"failed 1 1 -1 2\nx\x00\n"
    assert parse_events(data) == [
        EventRecord(EventKind.COMPLETED, "a:b", 2, result=b"", error=None),
        EventRecord(EventKind.FAILED, "x", 1, result=None, error=b"\x00\n"),
    ]


def _make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (needs the openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_tool("the openssl command is not installed")
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=jq-test-ca", "-keyout", str(ca_key), "-out", str(ca)])  # fmt: skip
    run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(csr)])  # fmt: skip
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)])  # fmt: skip
    return ca, cert, key


async def test_rediss_tls(tmp_path: Path) -> None:
    """``rediss://`` connects over TLS (server certificate checked against a CA)."""
    ca, cert, key = _make_tls_files(tmp_path)
    tls_port = free_port()
    server = RedisServer(
        require_redis_server(),
        extra=("--tls-port", str(tls_port), "--tls-cert-file", str(cert),
               "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
               "--tls-auth-clients", "no"),
    )  # fmt: skip
    server.start()
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0"
        async with RedisStorage(url, key_prefix="tls", ssl_ca_certs=str(ca)) as storage:
            assert await enqueue(storage, "secure") is EnqueueStatus.QUEUED
            [claim] = await storage.claim(NS, "w", limit=1, lease=30)
            assert claim.job_id == "secure"
        untrusted = RedisStorage(url, key_prefix="tls", retry_timeout=0.3)
        with pytest.raises(StorageError):
            async with untrusted:
                pass
    finally:
        server.cleanup()


async def test_corrupt_job_record_is_quarantined(storage: RedisStorage) -> None:
    """A job record with foreign bytes (or of a foreign type) never blocks the queue and
    reads as StorageError."""
    for job_id in ("bad", "good", "hash"):
        await enqueue(storage, job_id)
    keys = storage.keys(NS)
    await storage.server_command("SET", keys.job("bad"), b"\xff-not-a-record")
    await storage.server_command("DEL", keys.job("hash"))
    await storage.server_command("HSET", keys.job("hash"), "state", "queued")
    claims = await storage.claim(NS, "w", limit=5, lease=30)
    assert [c.job_id for c in claims] == ["good"]
    assert await storage.server_command("LRANGE", keys.quarantine, 0, -1) == [b"bad", b"hash"]
    for job_id in ("bad", "hash"):
        with pytest.raises(StorageError, match="corrupt"):
            await storage.get_status(NS, job_id)
        with pytest.raises(StorageError, match="corrupt"):
            await enqueue(storage, job_id)
    assert await storage.cancel(NS, "bad") is CancelStatus.CANCELLED  # the way to clear it
    assert await enqueue(storage, "bad") is EnqueueStatus.QUEUED
