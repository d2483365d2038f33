"""Small structured-concurrency helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for a context manager's background tasks.

    Exception-group policy: our background tasks never raise (they report and retry), so
    a group with a single exception can only carry what the ``async with`` body raised (or
    a cancellation); it is re-raised unwrapped so that ``except ValueError`` around the
    block keeps working. A group of several exceptions is raised as is.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            inner = group.exceptions[0]
            raise inner from inner.__cause__
        raise
