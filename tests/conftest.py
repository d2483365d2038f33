"""Shared fixtures. Backend fixtures live in their own modules (one owner each)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures_file import *  # noqa: F403  (file_storage_factory)
from fixtures_redis import *  # noqa: F403  (redis_server, redis_storage_factory)
from fixtures_redis import RedisServer

from trio_jobqueue.storage import MemoryStorage, Storage

StorageFactory = Callable[[], Storage]

BACKENDS = ["memory", "redis", "file"]


@pytest.fixture
def memory_storage_factory() -> StorageFactory:
    """Memory keeps its data in the object, so "another process" is the same object."""
    shared = MemoryStorage()
    return lambda: shared


@pytest.fixture(params=["redis", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL of each backend that several processes can share (the process tests
    run through the CLI and ``storage_from_url``)."""
    if request.param == "file":
        return f"file://{tmp_path}/queue"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture(params=BACKENDS)
def storage_factory(request: pytest.FixtureRequest) -> StorageFactory:
    """A callable returning a fresh, unopened storage of each backend in turn.

    Storages from one factory share their backing store (same server / directory) but
    every test gets a store of its own.
    """
    factory: StorageFactory = request.getfixturevalue(f"{request.param}_storage_factory")
    return factory
