"""Redis fixtures (owned by the Redis backend work)."""

from __future__ import annotations

import pytest


@pytest.fixture
def redis_storage_factory() -> object:
    pytest.fail("RedisStorage is not implemented yet")
