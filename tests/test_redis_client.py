"""The trio-native Redis client (``trio_jobqueue.storage._redis_trio``): pipelining order
under cancellation, reconnects of both connections, close(), unix sockets and options."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
import trio
from fixtures_redis import RedisServer, require_redis_server

from trio_jobqueue import StorageError
from trio_jobqueue.storage._redis_trio import TrioRedisAdapter
from trio_jobqueue.storage.redis import RedisStorage


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.reconnects = 0
        self.got = trio.Event()
        self.reconnected = trio.Event()

    def on_message(self, data: bytes) -> None:
        self.messages.append(data)
        self.got.set()

    def on_reconnect(self) -> None:
        self.reconnects += 1
        self.reconnected.set()


async def test_pipelined_replies_stay_in_order_under_cancellation(
    redis_server: RedisServer,
) -> None:
    """Many concurrent calls, a third of them cancelled at random points: every call that
    completes gets its own reply, and the connection stays in sync afterwards."""
    adapter = TrioRedisAdapter(redis_server.url, retry_timeout=5.0)
    await adapter.open()
    try:
        rng = random.Random(7)
        mismatches: list[tuple[bytes, object]] = []
        completed = 0

        async def one(i: int) -> None:
            nonlocal completed
            value = f"v{i}-{'x' * rng.randrange(0, 3000)}".encode()
            with trio.CancelScope() as scope:
                if rng.random() < 0.33:
                    scope.deadline = trio.current_time() + rng.random() * 0.002
                reply = await adapter.command("ECHO", value)
                completed += 1
                if reply != value:
                    mismatches.append((value, reply))

        for _ in range(5):
            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(one, i)
        assert mismatches == []
        assert completed > 0
        for i in range(20):
            assert await adapter.command("ECHO", str(i)) == str(i).encode()
    finally:
        await adapter.close()


async def test_command_connection_reconnects_after_client_kill(
    redis_server: RedisServer,
) -> None:
    """Killing the command connection: calls in flight fail over to a new connection."""
    adapter = TrioRedisAdapter(redis_server.url, retry_timeout=5.0)
    killer = TrioRedisAdapter(redis_server.url, retry_timeout=5.0)
    await adapter.open()
    await killer.open()
    try:
        my_id = int(await adapter.command("CLIENT", "ID"))
        async with trio.open_nursery() as nursery:
            for i in range(50):

                async def echo(i: int = i) -> None:
                    assert await adapter.command("ECHO", str(i)) == str(i).encode()

                nursery.start_soon(echo)
            await killer.command("CLIENT", "KILL", "ID", my_id)
        assert int(await adapter.command("CLIENT", "ID")) != my_id
    finally:
        await adapter.close()
        await killer.close()


async def test_pubsub_reconnects_and_resubscribes(redis_server: RedisServer) -> None:
    """Killing the pub/sub connection: it comes back, re-subscribes, and on_reconnect runs."""
    adapter = TrioRedisAdapter(redis_server.url, retry_timeout=5.0)
    await adapter.open()
    try:
        handler = _Recorder()
        channel = f"chan-{random.random()}"
        async with adapter.subscription(channel, handler):
            await adapter.command("PUBLISH", channel, "one")
            with trio.fail_after(5):
                await handler.got.wait()
            await adapter.command("CLIENT", "KILL", "TYPE", "pubsub")
            with trio.fail_after(5):
                await handler.reconnected.wait()
            handler.got = trio.Event()
            await adapter.command("PUBLISH", channel, "two")
            with trio.fail_after(5):
                await handler.got.wait()
        assert handler.messages == [b"one", b"two"]
        assert handler.reconnects == 1
    finally:
        await adapter.close()


async def test_close_fails_calls_in_flight(redis_server: RedisServer) -> None:
    """close() fails a call waiting for its reply with StorageError (not Disconnected)."""
    adapter = TrioRedisAdapter(redis_server.url, retry_timeout=5.0)
    await adapter.open()
    errors: list[BaseException] = []

    async def blocked() -> None:
        try:
            await adapter.command("BLPOP", f"never-{random.random()}", 30)
        except StorageError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked)
            await trio.sleep(0.2)
            await adapter.close()
    assert len(errors) == 1
    assert "closed" in str(errors[0])
    with pytest.raises(StorageError):
        await adapter.command("PING")


async def test_unix_socket_and_db() -> None:
    """``unix://`` URLs with a database number (trio client; the asyncio client passes
    ``socket_keepalive`` to redis-py's unix connection, which rejects it)."""
    directory = Path(tempfile.mkdtemp(prefix="jq-sock-"))
    sock = directory / "redis.sock"
    server = RedisServer(require_redis_server(), extra=("--unixsocket", str(sock)))
    server.start()
    try:
        async with RedisStorage(f"unix://{sock}?db=2", key_prefix="unix", client="trio") as storage:
            info = (await storage.server_command("CLIENT", "INFO")).decode()
            assert " db=2 " in info
    finally:
        server.cleanup()


async def test_unsupported_option_is_rejected(redis_server: RedisServer) -> None:
    """redis-py-only options fail loudly with the trio client, pass with asyncio."""
    with pytest.raises(StorageError, match="not supported"):
        async with RedisStorage(redis_server.url, client="trio", health_check_interval=5):
            pass
    async with RedisStorage(redis_server.url, client="asyncio", health_check_interval=5) as storage:
        assert await storage.server_command("PING") is True


def test_client_option_validated() -> None:
    with pytest.raises(ValueError, match="client"):
        RedisStorage("redis://127.0.0.1:1/0", client="bogus")  # type: ignore[arg-type]
