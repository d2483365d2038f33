"""Drive an async :class:`~trio_jobqueue.storage.Storage` from synchronous code.

Hypothesis runs state-machine rules as plain functions, while storages are trio objects
that must live inside one ``trio.run`` (MemoryStorage's events, a Redis connection pool,
a file watcher). :func:`open_storage_portal` starts a background thread that runs
``trio.run``, opens the storage there and keeps it open; :meth:`StoragePortal.run` hands one
coroutine call at a time to that loop with ``trio.from_thread.run`` and returns its result
(or raises its exception) in the calling thread.

The background loop uses trio's real clock; tests move a storage's time with
``Storage.advance_clock``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import trio

from ..storage import Storage

__all__ = ["StoragePortal", "open_storage_portal"]

T = TypeVar("T")


@attrs.frozen
class StoragePortal:
    """An opened storage living in a trio loop on another thread."""

    storage: Storage
    """The opened storage. Call its methods only through :meth:`run`."""
    _token: trio.lowlevel.TrioToken

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await afn(*args, **kwargs)`` in the storage's loop and return its result.

        Blocks the calling thread until the call finishes; its exception is re-raised here.
        Must not be called from the portal's own loop.
        """
        return trio.from_thread.run(functools.partial(afn, *args, **kwargs), trio_token=self._token)


@contextmanager
def open_storage_portal(make_storage: Callable[[], Storage]) -> Iterator[StoragePortal]:
    """Open ``make_storage()`` in a trio loop on a background thread for the ``with`` body.

    On exit the storage is closed, the loop ends and the thread is joined. An error while
    opening or closing the storage is raised in the calling thread.
    """
    storage = make_storage()
    started = threading.Event()
    outcome: dict[str, Any] = {}

    async def serve() -> None:
        stop = trio.Event()
        async with storage:
            outcome["token"] = trio.lowlevel.current_trio_token()
            outcome["stop"] = stop
            started.set()
            await stop.wait()

    def loop() -> None:
        try:
            trio.run(serve)
        except Exception as exc:  # noqa: BLE001  (re-raised in the opening thread)
            outcome["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=loop, name="trio-jobqueue-storage-portal", daemon=True)
    thread.start()
    started.wait()
    if "token" not in outcome:
        thread.join()
        raise outcome["error"]
    token: trio.lowlevel.TrioToken = outcome["token"]
    stop: trio.Event = outcome["stop"]
    try:
        yield StoragePortal(storage, token)
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join()
        error = outcome.get("error")
        if error is not None:
            raise error
