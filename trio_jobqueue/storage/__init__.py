"""Storage backends and the contract they implement.

``RedisStorage`` and ``FileStorage`` are imported lazily so that the core package needs
neither redis nor watchfiles; a missing extra is reported with the ``pip install`` line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import (
    Claim as Claim,
)
from ._base import (
    ClaimBatch as ClaimBatch,
)
from ._base import (
    Completion as Completion,
)
from ._base import (
    EnqueueOutcome as EnqueueOutcome,
)
from ._base import (
    EnqueueSpec as EnqueueSpec,
)
from ._base import (
    EventRecord as EventRecord,
)
from ._base import (
    Fence as Fence,
)
from ._base import (
    FireStatus as FireStatus,
)
from ._base import (
    JobRecord as JobRecord,
)
from ._base import (
    LockHolder as LockHolder,
)
from ._base import (
    ReapedJob as ReapedJob,
)
from ._base import (
    ReapResult as ReapResult,
)
from ._base import (
    RecordPage as RecordPage,
)
from ._base import (
    SettleStatus as SettleStatus,
)
from ._base import (
    Storage as Storage,
)
from ._base import (
    StorageStats as StorageStats,
)
from ._base import (
    WorkerRecord as WorkerRecord,
)
from ._core import JobWatch as JobWatch
from ._url import storage_from_url as storage_from_url
from .memory import MemoryStorage as MemoryStorage

if TYPE_CHECKING:
    from .file import FileStorage as FileStorage
    from .redis import RedisStorage as RedisStorage

_LAZY = {"RedisStorage": ("redis", "redis"), "FileStorage": ("file", "file")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, extra = _LAZY[name]
        import importlib

        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ImportError as exc:
            raise ImportError(
                f"{name} needs optional dependencies: pip install 'trio-jobqueue[{extra}]'"
            ) from exc
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
