"""RedisStorage through Redis Sentinel (1 master, 1 replica, 3 sentinels, all real): URL
forms, the contract suite, and a killed master in the middle of a drain."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import trio
from fixtures_cluster import node_command
from fixtures_sentinel import SERVICE, SentinelSet
from test_redis_faults import run_with_fault

import trio_jobqueue as jq
from trio_jobqueue import StorageError
from trio_jobqueue.storage import Storage, storage_from_url
from trio_jobqueue.storage.redis import RedisStorage
from trio_jobqueue.testing._checks import API_CHECKS, Check

pytestmark = [pytest.mark.redis]


def test_sentinel_url_forms() -> None:
    """Sentinel URLs name the sentinels and the master's name; bad ones are refused."""
    storage = RedisStorage("redis+sentinel://s1,s2:26380/mymaster/2?key_prefix=app")
    assert storage.key_prefix == "app" and not storage.cluster
    assert isinstance(storage_from_url("rediss+sentinel://s1/mymaster"), RedisStorage)
    with pytest.raises(ValueError, match="master's name"):
        RedisStorage("redis+sentinel://s1:26379")
    with pytest.raises(ValueError, match="trio client"):
        RedisStorage("redis+sentinel://s1/mymaster", client="asyncio")
    with pytest.raises(ValueError, match="invalid node"):
        RedisStorage("redis+sentinel://s1:x/mymaster")


@pytest.fixture
def sentinel_storage_factory(redis_sentinels: SentinelSet) -> Callable[[], Storage]:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    return lambda: RedisStorage(redis_sentinels.url, key_prefix=prefix, retry_timeout=5.0)


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_api_contract_through_sentinel(
    check: Check, sentinel_storage_factory: Callable[[], Storage]
) -> None:
    """The API conformance suite passes on the master the sentinels name."""
    with trio.fail_after(60):
        await check(sentinel_storage_factory)


@pytest.mark.slow
async def test_killed_master_mid_drain_loses_nothing(own_sentinels: SentinelSet) -> None:
    """The master killed in the middle of a 2,000-job drain: the sentinels promote the
    replica, workers go on, no job is lost (jobs in flight may run twice: printed)."""
    assert own_sentinels.master is not None and own_sentinels.replica is not None
    replica_port = own_sentinels.replica.port

    async def kill_master(storage: RedisStorage) -> None:
        assert own_sentinels.master is not None
        own_sentinels.master.kill()
        await trio.to_thread.run_sync(own_sentinels.wait_master, replica_port)

    lost, duplicated, _ = await run_with_fault(own_sentinels.url, kill_master, n_jobs=2000)
    print(f"sentinel failover: lost={lost} duplicated={duplicated}")
    assert lost == 0
    assert duplicated <= 8 * 4


@pytest.mark.slow
async def test_waiters_continue_after_a_sentinel_failover(own_sentinels: SentinelSet) -> None:
    """A queue (its worker and waiters) opened before ``SENTINEL FAILOVER`` demoted the
    master goes on serving enqueue_and_wait on the promoted replica (a killed master is
    the drain test's fault)."""
    assert own_sentinels.master is not None and own_sentinels.replica is not None
    replica_port = own_sentinels.replica.port
    storage = RedisStorage(own_sentinels.url, key_prefix="waiters", retry_timeout=20.0)

    async def handler(job: jq.Job[int]) -> int:
        return job.payload + 1

    async with storage, jq.open_queue(storage, handler, name="emails") as queue:
        assert await queue.enqueue_and_wait("before", 1, timeout=10) == 2
        port = own_sentinels.sentinels[0].port
        await trio.to_thread.run_sync(node_command, port, "SENTINEL", "FAILOVER", SERVICE)
        await trio.to_thread.run_sync(own_sentinels.wait_master, replica_port)
        with trio.fail_after(30):
            assert await queue.enqueue_and_wait("after", 2, timeout=20) == 3


async def test_an_unknown_master_name_fails_to_open(redis_sentinels: SentinelSet) -> None:
    """A master name the sentinels do not monitor fails the open within retry_timeout,
    and the message names it."""
    url = redis_sentinels.url.replace("/mymaster/", "/nosuchmaster/")
    with trio.fail_after(10), pytest.raises(StorageError, match="nosuchmaster"):
        async with RedisStorage(url, retry_timeout=0.5):
            pass
