"""Shared fixtures. Backend fixtures live in their own modules (one owner each)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures_cluster import *  # noqa: F403  (redis_cluster, own_cluster, cluster_storage_factory)
from fixtures_file import *  # noqa: F403  (file_storage_factory)
from fixtures_redis import *  # noqa: F403  (redis_server, redis_storage_factory)
from fixtures_redis import ServerPool, redis_backend_params, storage_factory_for
from fixtures_sentinel import *  # noqa: F403  (own_sentinels)

from trio_jobqueue.storage import MemoryStorage, Storage

StorageFactory = Callable[[], Storage]

BACKENDS = ["memory", *redis_backend_params(), "file"]
"""Backends of ``storage_factory``: Redis once per engine of ``$TRIO_JOBQUEUE_REDIS_SERVERS``
(``redis:<engine>``, test id ``redis-<engine>``; plain ``redis`` for the default)."""


@pytest.fixture
def memory_storage_factory() -> StorageFactory:
    """Memory keeps its data in the object, so "another process" is the same object."""
    shared = MemoryStorage()
    return lambda: shared


def _redis_pool(request: pytest.FixtureRequest) -> ServerPool:
    pool: ServerPool = request.getfixturevalue("redis_servers")
    return pool


@pytest.fixture(params=[*redis_backend_params(), "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL of each backend that several processes can share (the process tests
    run through the CLI and ``storage_from_url``)."""
    if request.param == "file":
        return f"file://{tmp_path}/queue"
    kind = request.param.partition(":")[2] or "redis"
    return _redis_pool(request).get(kind).url


@pytest.fixture(params=BACKENDS)
def storage_factory(request: pytest.FixtureRequest) -> StorageFactory:
    """A callable returning a fresh, unopened storage of each backend in turn.

    Storages from one factory share their backing store (same server / directory) but
    every test gets a store of its own.
    """
    backend, _, kind = request.param.partition(":")
    if kind:
        redis_factory: StorageFactory = storage_factory_for(_redis_pool(request).get(kind))
        return redis_factory
    factory: StorageFactory = request.getfixturevalue(f"{backend}_storage_factory")
    return factory
