"""Who hears what on Redis: one enqueue wakes one idle claimer (not every process), a
job's outcome reaches its watchers only, and both keep working when the server has no
sharded pub/sub or a connection dies (real redis-servers started by the tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio
from fixtures_redis import RedisServer, require_redis_server

import trio_jobqueue as jq
from trio_jobqueue.storage._redis_keys import done_shard
from trio_jobqueue.storage.redis import RedisStorage

pytestmark = pytest.mark.redis

NS = "route"


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    """A private redis-server: the command counters belong to this test alone."""
    server = RedisServer(require_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def _calls(info: bytes, command: str) -> int:
    for line in info.decode().splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def _blocked_in_blpop(storage: RedisStorage) -> int:
    clients = (await storage.server_command("CLIENT", "LIST")).decode().splitlines()
    return sum(" cmd=blpop " in f" {c} " and " flags=b " in f" {c} " for c in clients)


async def _wait_for_blocked(storage: RedisStorage, count: int) -> None:
    """Until ``count`` claimers wait in BLPOP, and their first claim scripts are done."""
    with trio.fail_after(10):
        while True:
            if await _blocked_in_blpop(storage) >= count:
                break
            await trio.sleep(0.02)
    await trio.sleep(0.3)


async def _scripts_run(storage: RedisStorage) -> int:
    """Script (``FCALL``) calls so far (``storage`` must use the trio client: raw INFO
    text)."""
    return _calls(await storage.server_command("INFO", "commandstats"), "fcall")


async def test_one_enqueue_runs_one_claim_with_several_idle_claimers(
    server: RedisServer,
) -> None:
    """Five idle claimers in five storage objects: one enqueue wakes exactly one of
    them, so Redis runs two scripts (the enqueue and one claim), not six; the others
    stay blocked, and the next enqueue wakes the next one."""
    claimers = [RedisStorage(server.url, claim_repoll=60.0) for _ in range(5)]
    send, receive = trio.open_memory_channel[tuple[int, list[str]]](5)
    producer = RedisStorage(server.url, client="trio")  # raw INFO text
    async with producer, trio.open_nursery() as nursery:
        for storage in claimers:
            await storage.__aenter__()

        async def claim(n: int, storage: RedisStorage) -> None:
            claims = await storage.claim(NS, f"w{n}", limit=1, lease=30, wait=60)
            await send.send((n, [c.job_id for c in claims]))

        try:
            for n, storage in enumerate(claimers):
                nursery.start_soon(claim, n, storage)
            await _wait_for_blocked(producer, 5)
            # Load the scripts (a first FCALL answered "function not found" counts too).
            await producer.enqueue("warm-up", "x", b"x", max_attempts=1, result_ttl=60)
            before = await _scripts_run(producer)
            await producer.enqueue(NS, "one", b"x", max_attempts=1, result_ttl=60)
            with trio.fail_after(5):
                first, ids = await receive.receive()
            assert ids == ["one"]
            await trio.sleep(0.3)  # time for any other claimer to (wrongly) wake up
            assert await _scripts_run(producer) - before == 2
            with pytest.raises(trio.WouldBlock):
                receive.receive_nowait()  # the other four still wait
            await producer.enqueue(NS, "two", b"x", max_attempts=1, result_ttl=60)
            with trio.fail_after(5):
                second, ids = await receive.receive()
            assert ids == ["two"] and second != first
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                for storage in claimers:
                    await storage.__aexit__(None, None, None)


async def _watcher_sees_only_its_own_job(server: RedisServer) -> None:
    # "a" and "b" are in different outcome shards (sha1: 86..., e9...).
    assert done_shard("a") != done_shard("b")
    async with RedisStorage(server.url) as watcher, RedisStorage(server.url) as other:
        for job_id in ("a", "b"):
            await other.enqueue(NS, job_id, b"x", max_attempts=1, result_ttl=60)
        claims = {c.job_id: c for c in await other.claim(NS, "w", limit=2, lease=30)}
        async with watcher.watch_job(NS, "a") as watch:
            before = watcher.adapter.pubsub_messages
            await other.complete(NS, "b", claims["b"].token, b"result of b", ttl=60)
            await trio.sleep(0.3)
            assert watcher.adapter.pubsub_messages == before  # b's outcome never came
            await other.complete(NS, "a", claims["a"].token, b"result of a", ttl=60)
            with trio.fail_after(5):
                record = await watch.wait()
            assert record is not None and (record.job_id, record.result) == ("a", b"result of a")
            assert watcher.adapter.pubsub_messages == before + 1


async def test_a_watcher_receives_only_its_jobs_outcome(server: RedisServer) -> None:
    """A process watching job a gets no message at all for the completion of job b of
    another outcome shard (counted on its pub/sub connection), then exactly one for a's,
    result included."""
    await _watcher_sees_only_its_own_job(server)


async def test_without_sharded_pub_sub_classic_channels_route_the_same() -> None:
    """On a server without SPUBLISH/SSUBSCRIBE (renamed away here, as on a proxy that
    lacks them) the storage falls back to classic pub/sub: watches, events and
    enqueue_and_wait work, and routing stays per job."""
    hidden = ("SPUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE")
    extra = tuple(arg for name in hidden for arg in ("--rename-command", name, ""))
    server = RedisServer(require_redis_server(), extra=extra)
    server.start()
    try:
        async with RedisStorage(server.url) as storage:
            assert storage._sharded is False
        await _watcher_sees_only_its_own_job(server)

        async def double(job: jq.Job[int]) -> int:
            return job.payload * 2

        storage = RedisStorage(server.url)
        async with jq.open_queue(storage, double, name=NS) as q, q.events() as events:
            assert await q.enqueue_and_wait("x", 21, timeout=10) == 42
            kinds = []
            with trio.fail_after(5):
                async for event in events:
                    kinds.append(event.kind)
                    if event.kind == "completed":
                        break
        assert kinds == ["enqueued", "started", "completed"]
    finally:
        server.cleanup()


async def test_sharded_pub_sub_is_used_on_redis_7(server: RedisServer) -> None:
    """On Redis 7 the job channels are sharded: the watch is an SSUBSCRIBE and the
    outcome an SPUBLISH."""
    async with RedisStorage(server.url, client="trio") as storage:
        assert storage._sharded is True
        await storage.enqueue(NS, "j", b"x", max_attempts=1, result_ttl=60)
        [claim] = await storage.claim(NS, "w", limit=1, lease=30)
        async with storage.watch_job(NS, "j") as watch:
            channels = await storage.server_command("PUBSUB", "SHARDCHANNELS", "*")
            assert storage.keys(NS).done_channel("j").encode() in channels
            await storage.complete(NS, "j", claim.token, b"r", ttl=60)
            with trio.fail_after(5):
                assert (await watch.wait()) is not None
        info = await storage.server_command("INFO", "commandstats")
        assert _calls(info, "spublish") >= 2 and _calls(info, "publish") == 0


async def test_blocking_wait_outlives_command_timeout(server: RedisServer) -> None:
    """The wake-up BLPOP waits longer than command_timeout without being cut (its
    deadline is its own timeout plus command_timeout): a claim blocked for 2.5 s with
    command_timeout=0.3 is woken by an enqueue at once, on its first connection."""
    storage = RedisStorage(
        server.url, command_timeout=0.3, health_check_interval=2.0, claim_repoll=60.0
    )
    async with storage, RedisStorage(server.url, client="trio") as producer:
        woke_after: list[float] = []

        async def claim() -> None:
            claims = await storage.claim(NS, "w", limit=1, lease=30, wait=30)
            assert [c.job_id for c in claims] == ["late"]
            woke_after.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim)
            await _wait_for_blocked(producer, 1)
            await trio.sleep(2.5)  # past one full BLPOP of 2 s, and 8x command_timeout
            enqueued = trio.current_time()
            await producer.enqueue(NS, "late", b"x", max_attempts=1, result_ttl=60)
        assert woke_after[0] - enqueued < 0.5
        assert storage._wakers is not None and storage._wakers.connections == 1


async def test_killed_wake_connection_is_replaced(server: RedisServer) -> None:
    """When the wake-up connection is killed, the blocked claim looks again and the
    listener reconnects: the next enqueue still wakes it at once (not after
    claim_repoll)."""
    storage = RedisStorage(server.url, claim_repoll=60.0)
    async with storage, RedisStorage(server.url, client="trio") as producer:
        done: list[float] = []

        async def claim() -> None:
            claims = await storage.claim(NS, "w", limit=1, lease=30, wait=30)
            assert [c.job_id for c in claims] == ["after-kill"]
            done.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim)
            await _wait_for_blocked(producer, 1)
            clients = (await producer.server_command("CLIENT", "LIST")).decode()
            [blocked] = [c for c in clients.splitlines() if " cmd=blpop " in f" {c} "]
            client_id = blocked.split("id=", 1)[1].split(" ", 1)[0]
            await producer.server_command("CLIENT", "KILL", "ID", client_id)
            await _wait_for_blocked(producer, 1)  # a new connection took over
            enqueued = trio.current_time()
            await producer.enqueue(NS, "after-kill", b"x", max_attempts=1, result_ttl=60)
        assert done[0] - enqueued < 0.5
        assert storage._wakers is not None and storage._wakers.connections == 2


@pytest.mark.parametrize("client", ["trio", "asyncio"])
async def test_idle_workers_run_two_claims_per_job(
    server: RedisServer, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four idle workers (four storage objects, as four processes would have) and 40
    jobs enqueued one at a time: about two claim scripts per job (the one that takes it
    and the worker's next, empty one), not one per idle worker; with either client."""
    from trio_jobqueue import _worker

    monkeypatch.setattr(_worker, "CLAIM_WAIT", 60.0)
    factory: Callable[[], RedisStorage] = lambda: RedisStorage(  # noqa: E731
        server.url, client=client, claim_repoll=60.0
    )

    async def handler(job: jq.Job[int]) -> int:
        return job.payload

    async with trio.open_nursery() as nursery:
        for n in range(4):
            await nursery.start(_serve_until_cancelled, factory(), handler, f"worker-{n}")
        admin = RedisStorage(server.url, client="trio")
        async with admin, jq.open_queue(factory(), name=NS) as q:
            await _wait_for_blocked(admin, 4)
            before = await _scripts_run(admin)
            for n in range(40):
                assert await q.enqueue_and_wait(f"j{n}", n, timeout=10) == n
            scripts = await _scripts_run(admin) - before
        nursery.cancel_scope.cancel()
    # Per job: enqueue + complete + about two claims (+ the odd reaper script).
    scripts_per_job = scripts / 40
    assert scripts_per_job < 4.5, scripts_per_job


async def _serve_until_cancelled(
    storage: RedisStorage,
    handler: Callable[[jq.Job[int]], object],
    worker_id: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with jq.open_queue(storage, handler, name=NS, worker_id=worker_id, reaper=False):
        task_status.started()
        await trio.sleep_forever()
