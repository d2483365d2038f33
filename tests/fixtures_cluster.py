"""Redis Cluster fixtures: a local 3-master, 3-replica cluster on free loopback ports.

``redis_cluster`` is one cluster for the whole session (tests that do not kill nodes
share it; each uses its own ``key_prefix``); ``own_cluster`` is a fresh one per test, for
fault tests that fail a master over or kill it. Nodes run ``redis-server
--cluster-enabled yes`` (no persistence; ``cluster-node-timeout`` 1 s, so a killed
master is replaced within about 2 s), and ``redis-cli --cluster create ...
--cluster-replicas 1 --cluster-yes`` joins them (the session's cluster has a node
timeout of 10 s instead, so that a loaded machine never fails one of its masters over).
Without ``redis-server`` or ``redis-cli`` the cluster tests skip locally and fail in CI.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import attrs
import pytest
from fixtures_redis import RedisServer, missing_tool, require_redis_server

__all__ = [
    "ClusterNodes",
    "cluster_storage_factory",
    "node_command",
    "own_cluster",
    "redis_cluster",
    "running",
]

NODE_TIMEOUT_MS = 1000


def require_redis_cli() -> str:
    """Path of ``redis-cli``; skip (locally) or fail (CI) without it."""
    path = shutil.which("redis-cli")
    if path is None:
        missing_tool("redis-cli is not installed (apt-get install redis-tools)")
        raise AssertionError("unreachable")
    return path


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (``port + 10000``) is free too."""
    while True:
        with socket.socket() as sock, socket.socket() as bus:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            if port + 10000 > 65535:
                continue
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port


def node_command(port: int, *args: str, timeout: float = 5.0) -> str:
    """One command on a node through ``redis-cli`` (its reply as text)."""
    done = subprocess.run(
        [require_redis_cli(), "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


def _info_field(text: str, field: str) -> str:
    for line in text.splitlines():
        name, _, value = line.strip().partition(":")
        if name == field:
            return value
    return ""


@attrs.define
class ClusterNodes:
    """Six ``redis-server`` nodes joined as 3 masters with one replica each."""

    nodes: list[RedisServer] = attrs.Factory(list)
    node_timeout_ms: int = NODE_TIMEOUT_MS
    """``cluster-node-timeout``: a master silent that long is failed over."""

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL that names every node as a seed."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{seeds}"

    def seed_url(self, index: int) -> str:
        """A ``redis+cluster://`` URL with node ``index`` as the only seed."""
        return f"redis+cluster://127.0.0.1:{self.nodes[index].port}"

    def start(self) -> None:
        binary = require_redis_server()
        for _ in range(6):
            node = RedisServer(
                binary,
                port=cluster_port(),
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--cluster-config-file", "nodes.conf",
                    # Replicas sync at once (the default waits 5 s for more replicas).
                    "--repl-diskless-sync-delay", "0",
                ),
            )  # fmt: skip
            self.nodes.append(node)
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [require_redis_cli(), "--cluster", "create", *addresses,
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=True,
        )  # fmt: skip
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports ``cluster_state:ok`` with 3 masters that own
        all slots, and every replica has synced with its master."""
        deadline = time.monotonic() + timeout
        while True:
            if self._all_ok():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the local Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def _all_ok(self) -> bool:
        try:
            for node in self.live():
                info = node_command(node.port, "CLUSTER", "INFO")
                if _info_field(info, "cluster_state") != "ok":
                    return False
                if _info_field(info, "cluster_slots_ok") != "16384":
                    return False
                if _info_field(info, "cluster_size") != "3":
                    return False
                # A replica that never synced is not eligible for a failover.
                replication = node_command(node.port, "INFO", "replication")
                role = _info_field(replication, "role")
                if role == "slave" and _info_field(replication, "master_link_status") != "up":
                    return False
        except (subprocess.SubprocessError, OSError):
            return False
        return True

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def topology(self) -> list[tuple[int, str, str, list[tuple[int, int]]]]:
        """``(port, flags, master id or "-", slot ranges)`` of every node, from
        ``CLUSTER NODES`` on a live node, plus each node's id as the flags' neighbour."""
        out = node_command(self.live()[0].port, "CLUSTER", "NODES")
        rows = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            ranges = []
            for part in fields[8:]:
                if part.startswith("["):
                    continue  # a slot being migrated
                first, _, last = part.partition("-")
                ranges.append((int(first), int(last or first)))
            rows.append((port, fields[2], fields[3], ranges))
        return rows

    def owner(self, slot: int) -> RedisServer | None:
        """The live master that owns ``slot`` now (``None`` during a failover)."""
        for port, flags, _, ranges in self.topology():
            owns = any(first <= slot <= last for first, last in ranges)
            if owns and "master" in flags and "fail" not in flags:
                return self.node(port)
        return None

    def master_of_slot(self, slot: int) -> RedisServer:
        """The node that owns ``slot`` now."""
        found = self.owner(slot)
        if found is None:
            raise RuntimeError(f"no master owns slot {slot}")
        return found

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A live replica of ``master``."""
        master_id = node_command(master.port, "CLUSTER", "MYID").strip()
        for port, flags, of, _ in self.topology():
            if "slave" in flags and of == master_id and "fail" not in flags:
                return self.node(port)
        raise RuntimeError(f"master on port {master.port} has no live replica")

    def is_master(self, node: RedisServer) -> bool:
        """Whether ``node`` is a master now (as it says itself)."""
        return _info_field(node_command(node.port, "INFO", "replication"), "role") == "master"

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def cleanup(self) -> None:
        # SIGKILL: nothing to persist, and a stopping cluster node takes ~1 s to exit.
        for node in self.nodes:
            if node.process is not None:
                node.process.kill()
        for node in self.nodes:
            node.kill()
            node.cleanup()


class _Group(Protocol):
    def start(self) -> None: ...

    def cleanup(self) -> None: ...


G = TypeVar("G", bound=_Group)


@contextmanager
def running(group: G, start: Callable[[], None] | None = None) -> Iterator[G]:
    """``group`` started (by ``start``, else ``group.start``), cleaned up afterwards."""
    try:
        (start or group.start)()
        yield group
    finally:
        group.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterNodes]:
    """One local 3-master/3-replica cluster for the session (tests must not kill nodes;
    a node timeout of 10 s, so that a loaded machine never fails a master over)."""
    with running(ClusterNodes(node_timeout_ms=10_000)) as cluster:
        yield cluster


@pytest.fixture
def own_cluster() -> Iterator[ClusterNodes]:
    """A fresh local cluster that the test may fail over or kill nodes of."""
    with running(ClusterNodes()) as cluster:
        yield cluster


@pytest.fixture
def cluster_storage_factory(redis_cluster: ClusterNodes) -> Callable[[], Any]:
    """Fresh, unopened cluster RedisStorage objects sharing one key prefix unique to the
    test; each seeds from a different node (every node must route every queue)."""
    from trio_jobqueue.storage.redis import RedisStorage

    prefix = f"test-{uuid.uuid4().hex[:12]}"
    made = [0]

    def factory() -> RedisStorage:
        index = made[0] % len(redis_cluster.nodes)
        made[0] += 1
        return RedisStorage(redis_cluster.seed_url(index), key_prefix=prefix, retry_timeout=5.0)

    return factory
