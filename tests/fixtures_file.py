"""File fixtures (owned by the File backend work)."""

from __future__ import annotations

import pytest


@pytest.fixture
def file_storage_factory() -> object:
    pytest.fail("FileStorage is not implemented yet")
