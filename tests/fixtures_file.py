"""File fixtures (owned by the File backend work)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from trio_jobqueue.storage.file import FileStorage

__all__ = ["file_storage_factory"]


@pytest.fixture
def file_storage_factory(tmp_path: Path) -> Callable[[], FileStorage]:
    """Fresh, unopened FileStorages sharing one directory (two objects = two "processes")."""
    root = tmp_path / "queue"

    def make() -> FileStorage:
        return FileStorage(root)

    return make
