"""RedisStorage on a real local Redis Cluster (3 masters, 3 replicas): URL forms, routing
through any seed, redirections, the contract suite, the state machine, and failovers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import hypothesis
import pytest
import trio
from fixtures_cluster import ClusterNodes, node_command
from fixtures_redis import RedisServer
from test_redis_faults import NS, run_with_fault

import trio_jobqueue as jq
from trio_jobqueue import StorageError
from trio_jobqueue.storage import Storage, storage_from_url
from trio_jobqueue.storage._redis_cluster import ClusterAdapter, key_slot
from trio_jobqueue.storage.redis import RedisStorage
from trio_jobqueue.testing import DEFAULT_SETTINGS, run_storage_machine
from trio_jobqueue.testing._checks import API_CHECKS, Check

pytestmark = [pytest.mark.redis]

EXAMPLES = int(os.environ.get("TRIO_JOBQUEUE_MACHINE_EXAMPLES") or 50)


def test_cluster_url_forms() -> None:
    """Cluster URLs name one or more seeds; bad ones are refused before anything runs."""
    storage = RedisStorage("redis+cluster://h1:7000,h2,[::1]:7002/?key_prefix=app")
    assert storage.cluster and storage.key_prefix == "app"
    assert RedisStorage("redis://h1:7000", cluster=True).cluster
    assert RedisStorage("redis://h1:7000?cluster=true").cluster
    assert isinstance(storage_from_url("rediss+cluster://h1:7000"), RedisStorage)
    with pytest.raises(ValueError, match="trio client"):
        RedisStorage("redis+cluster://h1:7000", client="asyncio")
    with pytest.raises(ValueError, match="database 0"):
        RedisStorage("redis+cluster://h1:7000/2")
    with pytest.raises(ValueError, match="invalid node"):
        RedisStorage("redis+cluster://h1:notaport")
    with pytest.raises(ValueError, match="at least one"):
        RedisStorage("redis+cluster://")


def test_key_slot_matches_the_server(redis_cluster: ClusterNodes) -> None:
    """The client computes the same slot as Redis for tagged, untagged and odd keys."""
    port = redis_cluster.nodes[0].port
    for key in ["{jq:emails}:q", "plain", "{}x", "a{b}c{d}", "{:x}", "é{ü}"]:
        assert key_slot(key) == int(node_command(port, "CLUSTER", "KEYSLOT", key))


def _names_on_every_shard(cluster: ClusterNodes, prefix: str) -> list[str]:
    """Queue names whose slots land on all three masters (two per master at least)."""
    by_master: dict[int, list[str]] = {}
    for i in range(200):
        name = f"q{i}"
        port = cluster.master_of_slot(key_slot(f"{{{prefix}:{name}}}")).port
        if len(by_master.setdefault(port, [])) < 3:
            by_master[port].append(name)
        if len(by_master) == 3 and all(len(v) >= 3 for v in by_master.values()):
            break
    assert len(by_master) == 3
    return [name for names in by_master.values() for name in names]


async def test_every_queue_works_through_any_seed(redis_cluster: ClusterNodes) -> None:
    """Queues on every shard work whichever single node seeds the storage."""
    prefix = f"seed-{uuid.uuid4().hex[:8]}"
    names = _names_on_every_shard(redis_cluster, prefix)
    for index in range(len(redis_cluster.nodes)):
        storage = RedisStorage(redis_cluster.seed_url(index), key_prefix=prefix)
        async with storage:

            async def handler(job: jq.Job[int]) -> int:
                return job.payload + 1

            for name in names:
                async with jq.open_queue(storage, handler, name=name) as queue:
                    assert await queue.enqueue_and_wait(f"j{index}", index, timeout=10) == index + 1
            adapter = storage.adapter
            assert isinstance(adapter, ClusterAdapter)
            assert adapter.redirects == 0
            assert len(adapter._nodes) == 3  # one client per master, none for replicas


async def test_durable_enqueue_on_every_shard(redis_cluster: ClusterNodes) -> None:
    """durable_enqueue=1 on the cluster: enqueues and a bulk enqueue to queues on every
    shard return once the shard's replica confirmed them."""
    prefix = f"durable-{uuid.uuid4().hex[:8]}"
    names = _names_on_every_shard(redis_cluster, prefix)
    storage = RedisStorage(
        redis_cluster.url, key_prefix=prefix, durable_enqueue=1, durable_timeout=2.0
    )
    with trio.fail_after(30):
        async with storage:
            for name in names:
                async with jq.open_queue(storage, name=name) as queue:
                    assert (await queue.enqueue("one", 1)).status == "queued"
                    results = await queue.enqueue_many([("a", 1), ("b", 2)])
                    assert [r.status for r in results] == ["queued", "queued"]


async def test_moved_reply_is_followed(redis_cluster: ClusterNodes) -> None:
    """A stale slot map costs one MOVED redirection, after which requests go direct."""
    storage = RedisStorage(redis_cluster.url, key_prefix=f"moved-{uuid.uuid4().hex[:8]}")
    async with storage:
        adapter = storage.adapter
        assert isinstance(adapter, ClusterAdapter)
        slot = key_slot(storage.keys("emails").wake)
        owner = adapter._slots[slot]
        wrong = next(a for a in adapter._slots if a is not None and a != owner)
        adapter._slots[slot] = wrong  # as if the slot had moved since the map was read
        outcome = await storage.enqueue("emails", "a", b"x", max_attempts=1, result_ttl=60)
        assert outcome.status == "queued"
        assert adapter.redirects == 1
        assert adapter._slots[slot] == owner
        record = await storage.get_status("emails", "a")
        assert record is not None and record.state == "queued"
        assert adapter.redirects == 1


async def test_requests_during_a_slot_migration(own_cluster: ClusterNodes) -> None:
    """While a queue's slot migrates, a one-key request follows ASK to the importing node
    and a script (several keys: TRYAGAIN) is retried until the slot has moved; the queue
    then works on its new master."""
    prefix = f"ask-{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(own_cluster.url, key_prefix=prefix)
    slot = key_slot(storage.keys("emails").wake)
    source = own_cluster.master_of_slot(slot)
    target = next(
        node for node in own_cluster.nodes if node != source and own_cluster.is_master(node)
    )
    source_id = node_command(source.port, "CLUSTER", "MYID").strip()
    target_id = node_command(target.port, "CLUSTER", "MYID").strip()
    node_command(target.port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    node_command(source.port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    async with storage:
        adapter = storage.adapter
        assert isinstance(adapter, ClusterAdapter)
        assert await storage.is_paused("emails") is False
        assert adapter.redirects == 1  # ASK, followed once

        def finish_migration() -> None:
            for node in own_cluster.live():
                if own_cluster.is_master(node):
                    node_command(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

        async with trio.open_nursery() as nursery:

            async def later() -> None:
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(finish_migration)

            nursery.start_soon(later)
            outcome = await storage.enqueue("emails", "a", b"x", max_attempts=1, result_ttl=60)
        assert outcome.status == "queued"
        record = await storage.get_status("emails", "a")
        assert record is not None and record.state == "queued"
        assert adapter._slots[slot] == f"127.0.0.1:{target.port}"


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_api_contract_on_the_cluster(
    check: Check, cluster_storage_factory: Callable[[], Storage]
) -> None:
    """The API conformance suite passes on the cluster (storages seeded from different
    nodes)."""
    with trio.fail_after(60):
        await check(cluster_storage_factory)


def test_storage_machine_on_the_cluster(cluster_storage_factory: Callable[[], Storage]) -> None:
    """Random operation sequences never make the cluster backend disagree with the model."""
    settings = hypothesis.settings(DEFAULT_SETTINGS, max_examples=EXAMPLES)
    run_storage_machine(cluster_storage_factory, settings=settings)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["CLUSTER FAILOVER", "kill the master"])
async def test_master_failover_mid_drain_loses_nothing(own_cluster: ClusterNodes, how: str) -> None:
    """A failover of the queue's master in the middle of a 2,000-job drain loses no job;
    only jobs in flight at the failover may run twice (counted and printed)."""
    slot = key_slot(f"{{fault:{NS}}}")
    master = own_cluster.master_of_slot(slot)
    replica = own_cluster.replica_of(master)

    async def fail_over(storage: RedisStorage) -> None:
        if how == "CLUSTER FAILOVER":
            await trio.to_thread.run_sync(node_command, replica.port, "CLUSTER", "FAILOVER")
        else:
            master.kill()
        with trio.fail_after(30):
            while (await trio.to_thread.run_sync(own_cluster.owner, slot)) != replica:  # noqa: ASYNC110 - the cluster's state, not ours
                await trio.sleep(0.05)

    lost, duplicated, _ = await run_with_fault(own_cluster.url, fail_over, n_jobs=2000)
    print(f"{how}: lost={lost} duplicated={duplicated}")
    assert lost == 0
    assert duplicated <= 8 * 4  # at most the jobs in flight (4 workers x 8 per claim)


@pytest.mark.slow
async def test_waiters_and_event_feeds_follow_a_failover(own_cluster: ClusterNodes) -> None:
    """After a failover of a queue's master, an event feed opened before it still gets
    the queue's events and enqueue_and_wait still returns (sharded channels move)."""
    storage = RedisStorage(own_cluster.url, key_prefix="follow", retry_timeout=20.0)
    slot = key_slot(storage.keys("emails").wake)
    master = own_cluster.master_of_slot(slot)
    replica = own_cluster.replica_of(master)

    async def handler(job: jq.Job[int]) -> int:
        return job.payload + 1

    async with (
        storage,
        jq.open_queue(storage, handler, name="emails") as queue,
        queue.events() as events,
    ):
        assert await queue.enqueue_and_wait("before", 1, timeout=10) == 2
        await trio.to_thread.run_sync(node_command, replica.port, "CLUSTER", "FAILOVER")
        started = trio.current_time()
        # Liveness bounds, generous for a loaded machine; the phases' times are printed.
        with trio.fail_after(30):
            while (await trio.to_thread.run_sync(own_cluster.owner, slot)) != replica:  # noqa: ASYNC110 - the cluster's state, not ours
                await trio.sleep(0.05)
        promoted = trio.current_time()
        with trio.fail_after(30):
            assert await queue.enqueue_and_wait("after", 2, timeout=25) == 3
        answered = trio.current_time()
        # The feed follows the channel to the new master: the events published once it
        # has moved arrive (those published while it moved may be a `missed` marker), so
        # probe jobs go in until one's completion comes through the feed.
        probes = 0
        with trio.fail_after(30):
            while True:
                probes += 1
                await queue.enqueue_and_wait(f"probe-{probes}", probes, timeout=25)
                with trio.move_on_after(1):
                    async for event in events:
                        if event.kind == "completed" and event.job_id.startswith("probe-"):
                            break
                    else:
                        raise AssertionError("the event feed ended")
                    break
        print(
            f"failover: replica promoted {promoted - started:.2f} s after CLUSTER FAILOVER,"
            f" enqueue_and_wait answered {answered - promoted:.2f} s later, the feed"
            f" delivered a probe's completion {trio.current_time() - answered:.2f} s after"
            f" that ({probes} probe(s))"
        )


async def test_a_seed_that_is_not_a_cluster_node_is_refused(redis_server: RedisServer) -> None:
    """A cluster URL naming a plain Redis fails to open with an error that says so."""
    storage = RedisStorage(f"redis+cluster://127.0.0.1:{redis_server.port}", retry_timeout=1.0)
    with pytest.raises(StorageError, match="Cluster node"):
        async with storage:
            pass


def test_the_client_default_applies_to_single_servers_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$TRIO_JOBQUEUE_REDIS_CLIENT=asyncio leaves cluster and sentinel URLs on the trio
    client; single servers follow it."""
    monkeypatch.setenv("TRIO_JOBQUEUE_REDIS_CLIENT", "asyncio")
    assert RedisStorage("redis+cluster://h1:7000").client == "trio"
    assert RedisStorage("redis+sentinel://s1/mymaster").client == "trio"
    assert RedisStorage("redis://h1:7000").client == "asyncio"
