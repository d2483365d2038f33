"""Redis Sentinel fixtures: 1 master, 1 replica and 3 sentinels on free loopback ports.

``redis_sentinels`` is shared by a test module; ``own_sentinels`` is fresh per test (for
fault tests that kill the master). Sentinels watch
the master as ``mymaster`` with quorum 2 and ``down-after-milliseconds`` 1000, so a
killed master is replaced within a few seconds. Without ``redis-server`` the sentinel
tests skip locally and fail in CI.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import attrs
import pytest
from fixtures_cluster import node_command, running
from fixtures_redis import RedisServer, require_redis_server

__all__ = ["SERVICE", "SentinelSet", "own_sentinels", "redis_sentinels"]

SERVICE = "mymaster"


@attrs.define
class SentinelSet:
    """A master, its replica and three sentinels watching them."""

    master: RedisServer | None = None
    replica: RedisServer | None = None
    sentinels: list[RedisServer] = attrs.Factory(list)
    down_after_ms: int = 1000
    """``down-after-milliseconds``: a master silent that long is failed over."""

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, *, for_failover: bool = True) -> None:
        """Start the servers; ``for_failover``: also wait until the sentinels know each
        other and the replica (they say hello every 2 s: about 5 s)."""
        binary = require_redis_server()
        self.master = RedisServer(binary, appendonly=True)
        self.master.start()
        self.replica = RedisServer(
            binary,
            appendonly=True,
            extra=("--replicaof", "127.0.0.1", str(self.master.port),
                   "--repl-diskless-sync-delay", "0"),
        )  # fmt: skip
        self.replica.start()
        for _ in range(3):
            sentinel = RedisServer(binary)
            conf = sentinel.workdir / "sentinel.conf"
            conf.write_text(
                f"port {sentinel.port}\n"
                "bind 127.0.0.1\n"
                f"dir {sentinel.workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            # A sentinel is redis-server --sentinel with a config file it may rewrite.
            sentinel.process = subprocess.Popen(
                [binary, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.sentinels.append(sentinel)
        if for_failover:
            self.wait_ready()
        else:
            self.wait_master(self.master.port)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every sentinel knows the replica and the two other sentinels (a
        failover needs them), and the replica has synced."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ready = all(self._knows_all(s.port) for s in self.sentinels)
                assert self.replica is not None
                link = node_command(self.replica.port, "INFO", "replication")
                ready = ready and "master_link_status:up" in link
            except (subprocess.SubprocessError, OSError):
                ready = False
            if ready:
                return
            time.sleep(0.1)
        raise RuntimeError("the sentinels did not discover each other and the replica")

    @staticmethod
    def _knows_all(port: int) -> bool:
        master = node_command(port, "SENTINEL", "MASTER", SERVICE)
        fields = master.split()
        values = dict(zip(fields[::2], fields[1::2], strict=False))
        return values.get("num-slaves") == "1" and values.get("num-other-sentinels") == "2"

    def current_master_port(self) -> int | None:
        """The master's port as the first live sentinel names it."""
        for sentinel in self.sentinels:
            try:
                out = node_command(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            except (subprocess.SubprocessError, OSError):
                continue
            lines = out.split()
            if len(lines) == 2:
                return int(lines[1])
        return None

    def wait_master(self, port: int, timeout: float = 30.0) -> None:
        """Until the sentinels name the server on ``port`` as the master."""
        deadline = time.monotonic() + timeout
        while self.current_master_port() != port:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinels did not promote the server on port {port}")
            time.sleep(0.05)

    def cleanup(self) -> None:
        for server in [*self.sentinels, self.master, self.replica]:
            if server is not None:
                server.kill()
                server.cleanup()


@pytest.fixture(scope="module")
def redis_sentinels() -> Iterator[SentinelSet]:
    """One master + replica + 3 sentinels for a test module (tests must not kill nodes)."""
    group = SentinelSet(down_after_ms=10_000)  # never failed over on a loaded machine
    with running(group, lambda: group.start(for_failover=False)):
        yield group


@pytest.fixture
def own_sentinels() -> Iterator[SentinelSet]:
    """A fresh master + replica + 3 sentinels that the test may kill the master of."""
    with running(SentinelSet()) as group:
        yield group
