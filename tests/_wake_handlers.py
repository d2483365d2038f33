"""Handler of the cross-process wake-up tests (``_wake_handlers:started_at``)."""

from __future__ import annotations

import time
from typing import Any

from trio_jobqueue import Job


async def started_at(job: Job[Any]) -> float:
    """Return the wall-clock time at which the handler started."""
    return time.time()
