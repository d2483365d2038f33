"""RedisStorage through Redis Sentinel (1 master, 1 replica, 3 sentinels, all real): URL
forms, the contract suite, and a killed master in the middle of a drain."""

from __future__ import annotations

import signal
import time
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
from trio_jobqueue.storage._base import ENQUEUE_MANY_MAX
from trio_jobqueue.storage._redis_trio import TrioRedisAdapter
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


def _wait_replica_synced(group: SentinelSet, timeout: float = 30.0) -> None:
    """Until the replica's link to the master is up (the module's group does not wait)."""
    assert group.replica is not None
    deadline = time.monotonic() + timeout
    while "master_link_status:up" not in node_command(group.replica.port, "INFO", "replication"):
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not sync with the master")
        time.sleep(0.05)


async def test_durable_enqueue_is_on_the_replica_when_it_returns(
    redis_sentinels: SentinelSet,
) -> None:
    """With durable_enqueue=1, enqueue, enqueue_many (several chunks) and enqueue_and_wait
    return only once the replica has the jobs: each is on the replica right away."""
    await trio.to_thread.run_sync(_wait_replica_synced, redis_sentinels)
    assert redis_sentinels.replica is not None
    replica = redis_sentinels.replica.port
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    storage = RedisStorage(
        redis_sentinels.url, key_prefix=prefix, durable_enqueue=1, durable_timeout=2.0
    )

    def on_replica(job_id: str) -> bool:
        key = storage.keys("q").job(job_id)
        return node_command(replica, "EXISTS", key).strip() == "1"

    async def handler(job: jq.Job[int]) -> int:
        return job.payload * 2

    with trio.fail_after(30):
        async with storage:
            async with jq.open_queue(storage, name="q") as producer:
                result = await producer.enqueue("one", 1)
                assert result.status == "queued"
                assert await trio.to_thread.run_sync(on_replica, "one")
                assert (await producer.enqueue("one", 1)).status == "duplicate"
                jobs = [(f"m{i}", i) for i in range(ENQUEUE_MANY_MAX + 5)]
                results = await producer.enqueue_many(jobs)
                assert {r.status for r in results} == {"queued"}
                assert await trio.to_thread.run_sync(on_replica, f"m{ENQUEUE_MANY_MAX + 4}")
            async with jq.open_queue(storage, handler, name="w") as queue:
                assert await queue.enqueue_and_wait("rr", 21, timeout=10) == 42


async def test_a_stalled_replica_fails_durable_enqueue_until_it_catches_up(
    redis_sentinels: SentinelSet,
) -> None:
    """With the replica stopped (SIGSTOP), a durable enqueue raises NotReplicatedError
    after durable_timeout with the job written; once the replica runs again, enqueueing
    the same id answers duplicate with no error (the replica confirmed it)."""
    await trio.to_thread.run_sync(_wait_replica_synced, redis_sentinels)
    assert redis_sentinels.replica is not None and redis_sentinels.replica.process is not None
    replica = redis_sentinels.replica.process
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    storage = RedisStorage(
        redis_sentinels.url, key_prefix=prefix, durable_enqueue=1, durable_timeout=0.2
    )
    with trio.fail_after(30):
        async with storage, jq.open_queue(storage, name="q") as queue:
            replica.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(jq.NotReplicatedError, match="0 of 1 replica"):
                    await queue.enqueue("late", 1)
            finally:
                replica.send_signal(signal.SIGCONT)
            assert (await queue.enqueue("late", 1)).status == "duplicate"


async def test_connections_follow_switch_master_before_any_command_fails(
    own_sentinels: SentinelSet,
) -> None:
    """After SENTINEL FAILOVER, the storage's connections move to the promoted replica
    on the sentinels' +switch-master, before any command got READONLY from the old
    master; the next enqueue goes to the new master. The sentinel asked first is killed
    beforehand: the subscription moves to another one."""
    assert own_sentinels.master is not None and own_sentinels.replica is not None
    old, new = own_sentinels.master.port, own_sentinels.replica.port
    storage = RedisStorage(own_sentinels.url, key_prefix="switch", retry_timeout=20.0)
    async with storage, jq.open_queue(storage, name="q") as queue:
        adapter = storage.adapter
        assert isinstance(adapter, TrioRedisAdapter)
        await queue.enqueue("before", 1)
        assert adapter.master_address == f"127.0.0.1:{old}"
        switched = adapter.next_switch
        own_sentinels.sentinels[0].kill()
        port = own_sentinels.sentinels[1].port
        await trio.to_thread.run_sync(node_command, port, "SENTINEL", "FAILOVER", SERVICE)
        with trio.fail_after(15):
            await switched.wait()
        assert adapter.switches == 1
        assert adapter.readonly_drops == 0
        assert adapter.sentinel is not None and adapter.sentinel.known == ("127.0.0.1", new)
        await queue.enqueue("after", 2)
        assert adapter.master_address == f"127.0.0.1:{new}"
        assert adapter.readonly_drops == 0
        status = await queue.get_status("before")
        assert status is not None and status.state == jq.JobState.QUEUED
