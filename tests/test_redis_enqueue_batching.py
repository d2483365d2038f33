"""Concurrent ``enqueue()`` calls of one Redis storage share script calls (real
redis-server, behind a loopback proxy that can hold the traffic): each job's outcome is
what it would be alone, a call cancelled before it was sent writes nothing, and the jobs
of a batch whose sending task was cancelled mid-call, or whose reply was lost, still get
their outcomes, once."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from _tcp_proxy import TcpProxy
from fixtures_redis import RedisServer

from trio_jobqueue import EnqueueStatus, JobState, StorageError
from trio_jobqueue.storage import EnqueueOutcome
from trio_jobqueue.storage._redis_common import script
from trio_jobqueue.storage.redis import ENQUEUE_CALLS, RedisStorage

pytestmark = pytest.mark.redis

NS = "batching"
CLIENTS = ["trio", "asyncio"]


def _fcalls(info: bytes | dict[str, dict[str, int]]) -> int:
    if isinstance(info, dict):  # redis-py parses INFO
        return int(info.get("cmdstat_fcall", {}).get("calls", 0))
    for line in info.decode().splitlines():
        if line.startswith("cmdstat_fcall:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def _enqueue(storage: RedisStorage, job_id: str, **options: float) -> EnqueueOutcome:
    return await storage.enqueue(
        NS, job_id, f"p-{job_id}".encode(), max_attempts=3, result_ttl=600, **options
    )


@pytest.mark.parametrize("client", CLIENTS)
async def test_concurrent_enqueues_share_calls_and_answer_each_job(
    redis_server: RedisServer, client: str
) -> None:
    """300 enqueues from 100 tasks at once take far fewer script calls than jobs, and
    each call answers for its own job as if alone: queued, scheduled, a duplicate of a
    live job (also of one enqueued in the same batch) and a completed job's result;
    each task's jobs are claimed in its order, with its payloads."""
    storage = RedisStorage(redis_server.url, key_prefix=f"eb-{uuid.uuid4().hex[:8]}", client=client)  # type: ignore[arg-type]
    async with storage:
        await _enqueue(storage, "done")
        [claim] = await storage.claim(NS, "w", limit=1, lease=30)
        await storage.complete(NS, "done", claim.token, b"result", ttl=600)
        await _enqueue(storage, "held")
        before = _fcalls(await storage.server_command("INFO", "commandstats"))
        outcomes: dict[str, EnqueueOutcome] = {}

        async def producer(lane: int) -> None:
            for n in range(3):
                job_id = f"lane{lane:03d}-{n}"
                outcomes[job_id] = await _enqueue(storage, job_id)

        async def one(job_id: str, **options: float) -> None:
            outcomes[job_id] = await _enqueue(storage, job_id, **options)

        async def one_twice(key: str) -> None:
            outcomes[key] = await _enqueue(storage, "twice")

        async with trio.open_nursery() as nursery:
            for lane in range(100):
                nursery.start_soon(producer, lane)
            nursery.start_soon(functools.partial(one, "later", delay=3600))
            nursery.start_soon(one, "held")
            nursery.start_soon(one, "done")
            for key in ("twice-a", "twice-b"):
                nursery.start_soon(one_twice, key)

        calls = _fcalls(await storage.server_command("INFO", "commandstats")) - before
        print(f"{client}: {len(outcomes)} enqueues in {calls} script calls")
        assert calls <= len(outcomes) / 3
        for lane in range(100):
            for n in range(3):
                assert outcomes[f"lane{lane:03d}-{n}"].status is EnqueueStatus.QUEUED
        assert outcomes["later"].status is EnqueueStatus.SCHEDULED
        assert outcomes["held"] == EnqueueOutcome(EnqueueStatus.DUPLICATE, JobState.QUEUED)
        assert outcomes["done"] == EnqueueOutcome(
            EnqueueStatus.COMPLETED, JobState.COMPLETED, b"result"
        )
        twice = sorted(outcomes[key].status.value for key in ("twice-a", "twice-b"))
        assert twice == ["duplicate", "queued"]
        claimed: list[tuple[str, bytes]] = []
        while batch := await storage.claim(NS, "w", limit=100, lease=30):
            claimed += [(c.job_id, c.payload) for c in batch]
        ids = [job_id for job_id, _ in claimed]
        assert sorted(ids) == sorted(
            ["held", "twice", *(f"lane{lane:03d}-{n}" for lane in range(100) for n in range(3))]
        )
        assert all(payload == f"p-{job_id}".encode() for job_id, payload in claimed)
        for lane in range(100):
            mine = [i for i in ids if i.startswith(f"lane{lane:03d}-")]
            assert mine == sorted(mine)
        assert (await storage.stats(NS)).scheduled == 1


async def _blocked() -> None:
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)


@asynccontextmanager
async def _opened(proxy: TcpProxy, client: str, **options: float) -> AsyncIterator[RedisStorage]:
    """A storage through ``proxy``, connected (by default with deadlines far beyond a
    test's holds)."""
    settings = {"command_timeout": 30.0, "health_check_interval": 60.0, **options}
    storage = RedisStorage(
        proxy.url,
        key_prefix=f"eb-{uuid.uuid4().hex[:8]}",
        client=client,  # type: ignore[arg-type]
        **settings,  # type: ignore[arg-type]
    )
    async with storage:
        assert await storage.server_command("PING") is not None
        yield storage


@pytest.fixture
async def proxy(redis_server: RedisServer, nursery: trio.Nursery) -> TcpProxy:
    tcp_proxy = TcpProxy(redis_server.port)
    await nursery.start(tcp_proxy.serve)
    return tcp_proxy


def _runner(
    storage: RedisStorage, outcomes: dict[str, EnqueueOutcome], nursery: trio.Nursery
) -> Callable[[list[str]], Awaitable[dict[str, trio.CancelScope]]]:
    """Starts enqueues of the given ids one after the other (each waits in line, or on
    the server, before the next starts) and returns their cancel scopes."""

    async def run(job_id: str, scope: trio.CancelScope) -> None:
        with scope:
            outcomes[job_id] = await _enqueue(storage, job_id)

    async def start(job_ids: list[str]) -> dict[str, trio.CancelScope]:
        scopes = {job_id: trio.CancelScope() for job_id in job_ids}
        for job_id, scope in scopes.items():
            nursery.start_soon(run, job_id, scope)
            await _blocked()
        return scopes

    return start


@asynccontextmanager
async def _held(
    proxy: TcpProxy, storage: RedisStorage, outcomes: dict[str, EnqueueOutcome]
) -> AsyncIterator[Callable[[list[str]], Awaitable[dict[str, trio.CancelScope]]]]:
    """While the proxy holds all traffic: the enqueue starter of :func:`_runner`; the
    traffic flows again at the end, and every enqueue started has returned after."""
    proxy.freeze()
    async with trio.open_nursery() as nursery:
        yield _runner(storage, outcomes, nursery)
        proxy.thaw()


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_enqueue_cancelled_before_it_was_sent_writes_nothing(
    proxy: TcpProxy, client: str
) -> None:
    """While ENQUEUE_CALLS calls wait on a server that does not answer, a further enqueue
    waits for its turn; cancelled then, it returns at once and its job never exists,
    while the calls under way go through."""
    outcomes: dict[str, EnqueueOutcome] = {}
    async with _opened(proxy, client) as storage:
        async with _held(proxy, storage, outcomes) as start:
            scopes = await start([f"sent-{n}" for n in range(ENQUEUE_CALLS)])
            (await start(["waiting"]))["waiting"].cancel()
            await _blocked()
            assert "waiting" not in outcomes
        assert sorted(outcomes) == sorted(scopes)
        assert all(o.status is EnqueueStatus.QUEUED for o in outcomes.values())
        assert await storage.get_status(NS, "waiting") is None
        assert (await storage.stats(NS)).queued == ENQUEUE_CALLS


@pytest.mark.parametrize("client", CLIENTS)
async def test_the_jobs_of_a_cancelled_senders_batch_still_get_their_outcomes(
    proxy: TcpProxy, client: str
) -> None:
    """The task sending a batch of waiting enqueues is cancelled while the server holds
    the call: another task of the batch sends it again, as it was, and every job of it
    is reported queued (not a duplicate of itself) and exists once; a later enqueue goes
    after them."""
    outcomes: dict[str, EnqueueOutcome] = {}
    async with _opened(proxy, client) as storage:
        async with _held(proxy, storage, outcomes) as start:
            first = await start([f"first-{n}" for n in range(ENQUEUE_CALLS)])
            batch = await start([f"batch-{n}" for n in range(3)])  # in line in this order
            # Cancelling a first call lets the oldest waiting task send the batch.
            first["first-0"].cancel()
            await _blocked()
            batch["batch-0"].cancel()  # ... and that one is cancelled mid-call in turn
            await _blocked()
            await start(["after"])
        assert sorted(outcomes) == ["after", "batch-1", "batch-2", "first-1"]
        assert all(o.status is EnqueueStatus.QUEUED for o in outcomes.values())
        for job_id in ("batch-0", "batch-1", "batch-2", "after"):
            record = await storage.get_status(NS, job_id)
            assert record is not None and record.state is JobState.QUEUED
        claimed = [c.job_id for c in await storage.claim(NS, "w", limit=100, lease=30)]
        # first-0 was cancelled after it was handed to the client: written or not.
        assert claimed.count("first-0") <= 1
        assert sorted(i for i in claimed if i != "first-0") == sorted(
            ["first-1", "batch-0", "batch-1", "batch-2", "after"]
        )
        assert claimed.index("after") > max(claimed.index(f"batch-{n}") for n in range(3))


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_shared_call_whose_reply_is_lost_answers_each_job_once(
    proxy: TcpProxy, client: str
) -> None:
    """The reply of a shared enqueue call is lost (the server ran it, the link is reset):
    the call is sent again and every job of it is answered queued, none a duplicate of
    itself, and each exists once."""
    marker = script("enqueue_many").marker
    outcomes: dict[str, EnqueueOutcome] = {}
    async with _opened(proxy, client) as storage:
        lost = trio.Event()

        async def lose_one_reply() -> None:
            await proxy.lose_reply_to(marker)
            lost.set()

        async def producer(lane: int) -> None:
            for n in range(4):
                job_id = f"lane{lane:02d}-{n}"
                outcomes[job_id] = await _enqueue(storage, job_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lose_one_reply)
            await _blocked()
            with trio.fail_after(20):
                async with trio.open_nursery() as producers:
                    for lane in range(50):
                        producers.start_soon(producer, lane)
            assert lost.is_set()
        assert len(outcomes) == 200
        assert all(o.status is EnqueueStatus.QUEUED for o in outcomes.values())
        claimed: list[str] = []
        while batch := await storage.claim(NS, "w", limit=100, lease=30):
            claimed += [c.job_id for c in batch]
        assert sorted(claimed) == sorted(outcomes)


async def _enqueue_all(storage: RedisStorage, job_ids: list[str]) -> dict[str, object]:
    """Enqueue ``job_ids`` from one task each, at once: each one's outcome or error."""
    results: dict[str, object] = {}

    async def one(job_id: str) -> None:
        try:
            results[job_id] = await _enqueue(storage, job_id)
        except StorageError as exc:
            results[job_id] = exc

    async with trio.open_nursery() as nursery:
        for job_id in job_ids:
            nursery.start_soon(one, job_id)
    return results


@pytest.mark.parametrize("client", CLIENTS)
async def test_enqueues_in_line_on_a_silent_server_fail_and_none_hangs(
    proxy: TcpProxy, client: str
) -> None:
    """While the server answers nothing, 30 enqueues made at once (two calls under way,
    the rest waiting in line) each raise StorageError once retry_timeout is over (those
    in line with the calls under way, not after another retry_timeout each), none
    hanging; once traffic flows again, enqueues succeed."""
    async with _opened(proxy, client, command_timeout=0.5, retry_timeout=1.5) as storage:
        proxy.freeze()
        began = trio.current_time()
        with trio.fail_after(15):
            results = await _enqueue_all(storage, [f"silent-{n:02d}" for n in range(30)])
        elapsed = trio.current_time() - began
        print(f"{client}: 30 enqueues gave up after {elapsed:.2f} s")
        assert all(isinstance(r, StorageError) for r in results.values())
        # Those waiting in line fail with the calls under way: retry_timeout once.
        assert elapsed <= 1.5 + 0.5 + 1.0
        proxy.thaw(stale="drop")
        with trio.fail_after(5):
            assert (await _enqueue(storage, "after")).status is EnqueueStatus.QUEUED
