"""The trio-native Redis client (``trio_jobqueue.storage._redis_trio``): pipelining order
under cancellation, reconnects of both connections, close(), unix sockets and options;
Redis URLs and storage options (both clients), and server error text."""

from __future__ import annotations

import math
import random
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio
from fixtures_redis import RedisServer, require_redis_server

from trio_jobqueue import StorageError
from trio_jobqueue.storage._redis_common import RedisReplyError, Subscriptions
from trio_jobqueue.storage._redis_trio import TrioRedisAdapter
from trio_jobqueue.storage._redis_url import parse_url
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



async def test_a_subscription_cancelled_before_its_confirmation_leaves_no_user_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A use cancelled while it waits for the server's confirmation counts no user, so
    the channel is unsubscribed once its linger ends; a confirmed one is entered at once."""
    subs = Subscriptions()
    subscribed: dict[str, object] = {}
    with trio.move_on_after(1):
        async with subs.use("ch", _Recorder(), timeout=10.0, linger=2.0):
            raise AssertionError("entered before the server confirmed the subscription")
    add, drop, _ = subs.plan(subscribed, fresh=False)  # type: ignore[arg-type]
    assert [c.name for c in add] == ["ch"] and not drop
    subs.dispatch("ssubscribe", b"ch", 1)
    async with subs.use("ch", _Recorder(), timeout=10.0, linger=2.0):
        assert trio.current_time() == 1.0  # confirmed: no wait
        assert subs.channels["ch"].users == 1
    await trio.sleep(3)
    add, drop, _ = subs.plan(subscribed, fresh=False)  # type: ignore[arg-type]
    assert not add and [c.name for c in drop] == ["ch"] and "ch" not in subs.channels

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
    with pytest.raises(ValueError, match="not supported by the trio Redis client"):
        RedisStorage(redis_server.url, client="trio", max_connections=5)
    async with RedisStorage(redis_server.url, client="asyncio", max_connections=5) as storage:
        assert await storage.server_command("PING") is True


def test_client_option_validated() -> None:
    """An unknown ``client`` is refused at construction."""
    with pytest.raises(ValueError, match="client"):
        RedisStorage("redis://127.0.0.1:1/0", client="bogus")  # type: ignore[arg-type]


# -- URLs and options ---------------------------------------------------------------------


def test_storage_options_from_url_query_and_keywords_win() -> None:
    """Every storage option can come from the URL; explicit keyword arguments win; the
    connection options land in ``options`` as typed values."""
    url = (
        "redis://h:1/2?key_prefix=myapp&retry_timeout=5&command_timeout=2"
        "&health_check_interval=3&claim_repoll=1.5&script_timeout=4&client=asyncio"
        "&socket_connect_timeout=0.5&ssl_check_hostname=false&ssl_cert_reqs=none"
        "&ssl_min_version=TLSv1_2&ssl_ca_certs=/etc/ca%20file.pem"
    )
    storage = RedisStorage(url)
    assert (storage.key_prefix, storage.retry_timeout, storage.command_timeout) == (
        "myapp",
        5.0,
        2.0,
    )
    assert (storage.health_check_interval, storage.claim_repoll, storage.script_timeout) == (
        3.0,
        1.5,
        4.0,
    )
    assert storage.client == "asyncio"
    assert storage.options == {
        "socket_connect_timeout": 0.5,
        "ssl_check_hostname": False,
        "ssl_cert_reqs": "none",
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
        "ssl_ca_certs": "/etc/ca file.pem",
    }
    override = RedisStorage(url, key_prefix="kw", command_timeout=0.25, client="trio")
    assert (override.key_prefix, override.command_timeout, override.client) == (
        "kw",
        0.25,
        "trio",
    )
    defaults = RedisStorage("redis://h/0", client="trio")
    assert (defaults.key_prefix, defaults.retry_timeout, defaults.command_timeout) == (
        "jq",
        10.0,
        5.0,
    )
    assert defaults.health_check_interval == 5.0
    assert "pw" not in repr(RedisStorage("redis://u:pw@h/0"))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://h/0?bogus=1&key_prefix=x&other=2", "unknown option(s) 'bogus', 'other'"),
        ("redis://h/0?command_timeout=abc", "invalid command_timeout 'abc'"),
        ("redis://h/0?command_timeout=0", "invalid command_timeout '0'"),
        ("redis://h/0?retry_timeout=inf", "invalid retry_timeout 'inf'"),
        ("redis://h/0?health_check_interval=-1", "invalid health_check_interval '-1'"),
        ("redis://h/0?db=x", "invalid db 'x'"),
        ("redis://h/x", "invalid database number 'x'"),
        ("redis://h:port/0", "invalid port"),
        ("redis://h/0?client=sync", "invalid client 'sync'"),
        ("redis://h/0?ssl_check_hostname=maybe", "invalid ssl_check_hostname 'maybe'"),
        ("redis://h/0?key_prefix=", "invalid key_prefix ''"),
        ("redis://h/0?db=1&db=2", "'db' is given twice"),
        ("http://h/0", "unsupported Redis URL scheme 'http'"),
    ],
)
def test_bad_url_is_refused_naming_what(url: str, words: str) -> None:
    """Unknown URL parameters and invalid values raise ValueError naming them."""
    with pytest.raises(ValueError) as info:
        RedisStorage(url, client="trio")
    assert words in str(info.value)
    if "unknown" in words:
        assert "in the Redis URL; accepted: " in str(info.value)
        assert "command_timeout" in str(info.value)


@pytest.mark.parametrize(
    "options",
    [{"command_timeout": 0}, {"retry_timeout": -1.0}, {"health_check_interval": math.nan}],
)
def test_bad_keyword_option_is_refused(options: dict[str, float]) -> None:
    """Durations given as keywords are validated too (finite, > 0)."""
    with pytest.raises(ValueError, match="invalid"):
        RedisStorage("redis://h/0", **options)  # type: ignore[arg-type]


def test_parse_url_forms() -> None:
    """User and password percent-decoded, IPv6 hosts, /db paths, unix sockets."""
    url = parse_url("redis://us%40er:p%3Ass@[::1]:6380/3?command_timeout=1")
    assert (url.username, url.password, url.host, url.port, url.db) == (
        "us@er",
        "p:ss",
        "::1",
        6380,
        3,
    )
    assert url.address == "[::1]:6380"
    assert url.base == "redis://us%40er:p%3Ass@[::1]:6380/3"
    assert url.query == {"command_timeout": "1"}
    bare = parse_url("rediss://example.com")
    assert (bare.scheme, bare.host, bare.port, bare.db, bare.password) == (
        "rediss",
        "example.com",
        6379,
        None,
        None,
    )
    assert parse_url("redis://:secret@h/").password == "secret"
    unix = parse_url("unix:///run/redis.sock?db=2")
    assert (unix.path, unix.query, unix.address) == ("/run/redis.sock", {"db": "2"}, unix.path)


@pytest.mark.parametrize("client", ["trio", "asyncio"])
async def test_url_options_reach_the_server(redis_server: RedisServer, client: str) -> None:
    """Storage options in the URL configure the storage and never reach redis-py; the
    database comes from ``?db=`` too."""
    prefix = f"fromurl-{random.randrange(10**9)}"
    url = f"{redis_server.url}?key_prefix={prefix}&db=4&command_timeout=2&retry_timeout=3"
    async with RedisStorage(url, client=client) as storage:  # type: ignore[arg-type]
        assert storage.key_prefix == prefix
        info = (await storage.server_command("CLIENT", "INFO")).decode()
        assert " db=4 " in info
        await storage.enqueue("q", "j", b"x", max_attempts=1, result_ttl=60)
        keys = await storage.server_command("KEYS", f"*{prefix}*")
        assert keys and all(prefix.encode() in key for key in keys)


def test_trio_client_does_not_import_redis_py() -> None:
    """The default client runs without redis-py: importing the storage and opening it
    with client="trio" imports no ``redis`` module (only hiredis)."""
    code = (
        "import sys, trio\n"
        "from trio_jobqueue.storage.redis import RedisStorage\n"
        "async def main():\n"
        "    try:\n"
        "        async with RedisStorage('redis://127.0.0.1:1/0', retry_timeout=0.1,"
        " client='trio'):\n"
        "            pass\n"
        "    except Exception:\n"
        "        pass\n"
        "trio.run(main)\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("client", ["trio", "asyncio"])
async def test_server_error_replies_keep_the_servers_text(client: str) -> None:
    """StorageError for an error reply carries the server's own text (OOM at maxmemory,
    unknown command), not only a class name; the trio client raises it from a
    RedisReplyError with the code."""
    server = RedisServer(require_redis_server())
    server.start()
    try:
        async with RedisStorage(server.url, client=client) as storage:  # type: ignore[arg-type]
            with pytest.raises(StorageError) as unknown:
                await storage.server_command("NO-SUCH-COMMAND")
            assert "unknown command" in str(unknown.value)
            await storage.server_command("CONFIG", "SET", "maxmemory", "1")
            with pytest.raises(StorageError) as oom:
                await storage.server_command("SET", "k", "v")
            await storage.server_command("CONFIG", "SET", "maxmemory", "0")
        message = str(oom.value)
        assert "OOM command not allowed when used memory > 'maxmemory'." in message
        assert f"127.0.0.1:{server.port}" in message
        if client == "trio":
            assert isinstance(oom.value.__cause__, RedisReplyError)
            assert oom.value.__cause__.code == "OOM"
    finally:
        server.cleanup()


@pytest.mark.parametrize("client", ["trio", "asyncio"])
async def test_scripts_load_again_after_function_flush_also_in_a_batch(
    redis_server: RedisServer, client: str
) -> None:
    """After ``FUNCTION FLUSH`` (what a restart without persistence leaves) both clients
    load the scripts again and resend the calls that were refused, a lone call as well as
    a batch of concurrent ones; every job is stored exactly once."""
    async with RedisStorage(
        redis_server.url, key_prefix=f"flush-{client}", client=client  # type: ignore[arg-type]
    ) as storage:
        await storage.enqueue("q", "lone-0", b"x", max_attempts=1, result_ttl=60)
        await storage.server_command("FUNCTION", "FLUSH")
        await storage.enqueue("q", "lone-1", b"x", max_attempts=1, result_ttl=60)
        await storage.server_command("FUNCTION", "FLUSH")
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(
                    lambda n=n: storage.enqueue(
                        "q", f"many-{n}", b"x", max_attempts=1, result_ttl=60
                    )
                )
        stats = await storage.stats("q")
    assert stats.queued == 22
