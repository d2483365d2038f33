"""Redis fixtures (owned by the Redis backend work).

Tests never use a Redis that they did not start: ``redis_server`` runs a private
``redis-server`` on a free port for the whole session (no persistence), and every test
gets its own ``key_prefix``. Fault tests start their own :class:`RedisServer` (AOF on)
and kill/restart it. Without a ``redis-server`` binary the Redis tests skip locally and
**fail** in CI (``CI=true``).
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

import attrs
import pytest

__all__ = [
    "RedisServer",
    "free_port",
    "redis_server",
    "redis_storage_factory",
    "require_redis_server",
]


def require_redis_server() -> str:
    """Path of ``redis-server``; skip (locally) or fail (CI) without it."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server (no persistence) for the whole test session."""
    server = RedisServer(require_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_storage_factory(redis_server: RedisServer) -> Callable[[], object]:
    """Fresh, unopened RedisStorage objects sharing one key prefix unique to the test."""
    from trio_jobqueue.storage.redis import RedisStorage

    prefix = f"test-{uuid.uuid4().hex[:12]}"

    def factory() -> RedisStorage:
        return RedisStorage(redis_server.url, key_prefix=prefix, retry_timeout=5.0)

    return factory
