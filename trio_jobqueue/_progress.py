"""Progress of a running job: validation, encoding, and the worker's rate limiter.

Progress always travels as compact JSON (never through the queue's serializer): a float in
``[0, 1]`` or a small dict, so that every process (the CLI included) can read it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .storage import SettleStatus

__all__ = ["MAX_PROGRESS_BYTES", "PROGRESS_INTERVAL", "ProgressReporter"]

MAX_PROGRESS_BYTES = 4096
"""Largest encoded (UTF-8 JSON) progress value accepted."""
PROGRESS_INTERVAL = 0.1
"""Least time between two progress writes of one attempt (seconds)."""


def encode_progress(value: Any) -> bytes:
    """``value`` as stored; ``ValueError`` naming it when it is not acceptable."""
    if isinstance(value, bool) or not isinstance(value, int | float | dict):
        raise ValueError(
            f"progress must be a float in [0, 1] or a JSON-encodable dict, not {value!r}"
        )
    if not isinstance(value, dict):
        number = float(value)
        if not (math.isfinite(number) and 0.0 <= number <= 1.0):
            raise ValueError(f"progress must be within [0, 1], not {value!r}")
        return repr(number).encode("ascii")
    try:
        data = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8"
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"progress {value!r:.200} is not JSON-encodable: {exc}") from None
    if len(data) > MAX_PROGRESS_BYTES:
        raise ValueError(
            f"progress {value!r:.200} encodes to {len(data)} bytes; the limit is "
            f"{MAX_PROGRESS_BYTES}"
        )
    return data


def decode_progress(data: bytes | None) -> float | dict[str, Any] | None:
    """The stored bytes back as a value (``None`` for none, or for bytes that do not
    decode: progress is informative, never worth an error)."""
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


Write = Callable[[bytes], Awaitable[SettleStatus | None]]
"""Stores one encoded value for the attempt (``None``: the storage could not be reached)."""


@attrs.define(eq=False)
class ProgressReporter:
    """One attempt's progress writes: at most one per :data:`PROGRESS_INTERVAL`, the latest
    value of a burst written when the interval has passed (by a task in ``nursery``), and
    whatever is pending written by :meth:`close` before the outcome is stored. Writes are
    serialized, so a later value never lands before an earlier one."""

    write: Write
    nursery: trio.Nursery
    interval: float = PROGRESS_INTERVAL
    writes: int = 0
    """Storage writes made."""
    stale: bool = False
    """A write was rejected: this attempt no longer owns the job."""
    _last: float = -math.inf
    _pending: bytes | None = None
    _flushing: bool = False
    _nap: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _done: trio.Event = attrs.field(factory=trio.Event)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _closed: bool = False

    async def report(self, data: bytes) -> bool:
        """Store ``data`` now, or keep it for the next write (see the class docstring)."""
        if self.stale or self._closed:
            await trio.lowlevel.checkpoint()
            return False
        if (
            self._flushing
            or self._lock.locked()
            or trio.current_time() - self._last < self.interval
        ):
            self._pending = data
            if not self._flushing:
                self._flushing = True
                self._done = trio.Event()
                self.nursery.start_soon(self._flush_later, name="trio_jobqueue progress")
            await trio.lowlevel.checkpoint()
            return True
        return await self._write(data)

    async def _write(self, data: bytes) -> bool:
        async with self._lock:
            if self.stale:
                return False
            self._last = trio.current_time()
            self.writes += 1
            if await self.write(data) is SettleStatus.STALE:
                self.stale = True
                self._pending = None
        return not self.stale

    async def _flush_later(self) -> None:
        try:
            while self._pending is not None and not self.stale:
                if not self._closed:
                    self._nap = trio.CancelScope(deadline=self._last + self.interval)
                    with self._nap:
                        await trio.sleep_forever()
                data, self._pending = self._pending, None
                if data is not None:
                    await self._write(data)
        finally:
            self._flushing = False
            self._done.set()

    async def close(self) -> None:
        """Write what is pending now and stop (the caller shields it): called before the
        attempt's outcome is stored, so the last value reported always lands first."""
        self._closed = True
        if self._flushing:
            self._nap.cancel()
            await self._done.wait()
