"""Durable enqueue (``durable_enqueue``/``durable_timeout``) on a server with no replica:
the write is made, the confirmation is missing, and the error says so; bad settings are
refused before anything is sent. (With a replica: ``test_redis_sentinel.py``.)"""

from __future__ import annotations

import uuid

import pytest
import trio
from fixtures_redis import RedisServer

import trio_jobqueue as jq
from trio_jobqueue.storage import storage_from_url
from trio_jobqueue.storage._base import Fence
from trio_jobqueue.storage.redis import RedisStorage

pytestmark = [pytest.mark.redis]


@pytest.mark.parametrize(
    ("url_query", "kwargs", "match"),
    [
        ("durable_enqueue=-1", {}, "invalid durable_enqueue '-1'"),
        ("durable_enqueue=one", {}, "invalid durable_enqueue 'one'"),
        ("", {"durable_enqueue": True}, "invalid durable_enqueue True"),
        ("", {"durable_enqueue": 1.5}, "invalid durable_enqueue 1.5"),
        ("durable_timeout=0", {}, "invalid durable_timeout '0'"),
        ("durable_timeout=nan", {}, "invalid durable_timeout 'nan'"),
        ("durable_enqueue=1&durable_timeout=5", {}, "less than command_timeout"),
        (
            "",
            {"durable_enqueue": 1, "durable_timeout": 3, "command_timeout": 2},
            "less than command_timeout",
        ),
        ("durable_enqueue=1", {"client": "asyncio"}, "durable_enqueue needs the trio client"),
    ],
)
def test_bad_durable_settings_are_refused_in_one_line(
    url_query: str, kwargs: dict[str, object], match: str
) -> None:
    """Invalid durable_enqueue/durable_timeout values (URL or keyword) raise a one-line
    ValueError naming them, before any connection is made."""
    url = "redis://127.0.0.1:1/0" + (f"?{url_query}" if url_query else "")
    with pytest.raises(ValueError, match=match) as caught:
        RedisStorage(url, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_durable_settings_from_the_url_and_keywords() -> None:
    """The URL parameters set durable enqueue; keywords win; it is off by default."""
    assert RedisStorage("redis://h/0").durable_enqueue == 0
    storage = storage_from_url("redis://h/0?durable_enqueue=2&durable_timeout=0.25")
    assert isinstance(storage, RedisStorage)
    assert (storage.durable_enqueue, storage.durable_timeout) == (2, 0.25)
    assert "durable_enqueue=2" in repr(storage)
    storage = RedisStorage("redis://h/0?durable_enqueue=2", durable_enqueue=1)
    assert (storage.durable_enqueue, storage.durable_timeout) == (1, 0.5)
    assert RedisStorage("redis://h/0", command_timeout=0.1).durable_enqueue == 0  # off: unchecked


async def test_durable_enqueue_without_a_replica_raises_after_the_timeout(
    redis_server: RedisServer,
) -> None:
    """With no replica, enqueue, enqueue_many and a schedule's fire raise
    NotReplicatedError after durable_timeout; the jobs are written, and enqueueing them
    again is a duplicate that raises the same way."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    storage = RedisStorage(
        redis_server.url, key_prefix=prefix, durable_enqueue=1, durable_timeout=0.1
    )
    async with storage, jq.open_queue(storage, name="q") as queue:
        started = trio.current_time()
        with pytest.raises(jq.NotReplicatedError, match="0 of 1 replica") as caught:
            await queue.enqueue("a", 1)
        assert trio.current_time() - started >= 0.1
        assert (caught.value.wanted, caught.value.confirmed) == (1, 0)
        assert "may or may not survive a failover" in str(caught.value)
        assert "enqueueing the same id again is safe" in str(caught.value)
        status = await queue.get_status("a")
        assert status is not None and status.state == jq.JobState.QUEUED
        with pytest.raises(jq.NotReplicatedError):
            await queue.enqueue("a", 2)  # a duplicate: confirmed again, not rewritten
        with pytest.raises(jq.NotReplicatedError, match="every job of enqueue_many"):
            await queue.enqueue_many([(f"m{i}", i) for i in range(3)])
        assert [(await queue.get_status(f"m{i}")) is not None for i in range(3)] == [True] * 3
        epoch = await storage.acquire_lock("q", "scheduler", "me", ttl=10)
        assert epoch is not None
        fence = Fence("scheduler", "me", epoch)
        with pytest.raises(jq.NotReplicatedError, match="schedule 'every'"):
            await storage.fire_schedule(
                "q", "every", 1.0, "tick-1", b"{}", max_attempts=1, result_ttl=60, fence=fence
            )
        assert await queue.get_status("tick-1") is not None


async def test_durable_enqueue_off_sends_no_wait(redis_server: RedisServer) -> None:
    """Without durable_enqueue, an enqueue sends no WAIT (no cost when off)."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    async with RedisStorage(redis_server.url, key_prefix=prefix) as storage:
        before = await storage.server_command("INFO", "commandstats")
        await storage.enqueue("q", "a", b"1", max_attempts=1, result_ttl=60)
        after = await storage.server_command("INFO", "commandstats")

    def waits(info: bytes) -> str:
        lines = [line for line in info.decode().splitlines() if line.startswith("cmdstat_wait:")]
        return lines[0].split(",")[0] if lines else "none"

    assert waits(before) == waits(after)


async def test_concurrent_durable_enqueues_share_their_wait(redis_server: RedisServer) -> None:
    """Durable enqueues made at the same time wait for the replicas together: 20 of them
    without a replica all raise after about as long as one alone takes, not twenty times."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    storage = RedisStorage(
        redis_server.url, key_prefix=prefix, durable_enqueue=1, durable_timeout=0.1
    )
    failures: list[jq.NotReplicatedError] = []

    async def enqueue(queue: jq.Queue[int, None], job_id: str) -> None:
        try:
            await queue.enqueue(job_id, 1)
        except jq.NotReplicatedError as exc:
            failures.append(exc)

    async with storage, jq.open_queue(storage, name="q") as queue:
        started = trio.current_time()
        await enqueue(queue, "alone")
        alone = trio.current_time() - started
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(enqueue, queue, f"c{i}")
        together = trio.current_time() - started
        assert len(failures) == 21
        # Measured in the same run: one at a time, twenty would take twenty times as long.
        assert together < 5 * alone, (together, alone)
        assert all([await queue.get_status(f"c{i}") is not None for i in range(20)])
