"""Decoding storage events into public :class:`JobEvent` objects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._errors import SerializationError
from ._progress import decode_progress
from ._serde import TypedCodec, decode_error
from ._types import EventKind, JobEvent, JobState
from .storage import EventRecord, Storage


class EventChannel(trio.abc.ReceiveChannel[JobEvent]):
    """A receive channel of :class:`JobEvent` that decodes storage events lazily.

    Results that cannot be decoded arrive as ``None`` rather than breaking the stream. A
    result too large to travel with its event is read from the storage when the event is
    received (``None`` if it expired meanwhile). Where events were lost (a slow
    consumer, a lost connection) the stream holds a ``missed`` event; :attr:`missed`
    counts the events known to be lost so far.
    """

    def __init__(
        self,
        raw: trio.abc.ReceiveChannel[EventRecord],
        codec: TypedCodec,
        storage: Storage,
        ns: str,
    ) -> None:
        self._raw = raw
        self._codec = codec
        self._storage = storage
        self._ns = ns
        self.missed = 0
        """Events known to be lost so far (markers with an unknown count add nothing)."""

    async def receive(self) -> JobEvent:
        record = await self._raw.receive()
        if record.kind is EventKind.MISSED:
            self.missed += record.missed
        elif record.result_ref and record.result is None:
            stored = await self._storage.get_status(self._ns, record.job_id)
            if stored is not None and stored.state is JobState.COMPLETED:
                return decode_event(record, self._codec, stored.result)
        return decode_event(record, self._codec, record.result)

    async def aclose(self) -> None:
        await self._raw.aclose()


def decode_event(record: EventRecord, codec: TypedCodec, data: bytes | None) -> JobEvent:
    if record.kind is EventKind.PROGRESS:
        # A progress event carries the reported value (JSON) where others carry a result.
        return JobEvent(
            kind=EventKind.PROGRESS,
            job_id=record.job_id,
            attempt=record.attempt,
            progress=decode_progress(record.result),
        )
    result: Any = None
    if data is not None:
        try:
            result = codec.decode(data, "result", record.job_id)
        except SerializationError:
            result = None
    return JobEvent(
        kind=EventKind(record.kind),
        job_id=record.job_id,
        attempt=record.attempt,
        result=result,
        error=decode_error(record.error),
        missed=record.missed,
    )


@asynccontextmanager
async def open_event_channel(
    storage: Storage, ns: str, codec: TypedCodec
) -> AsyncIterator[EventChannel]:
    async with storage.subscribe_events(ns) as raw:
        channel = EventChannel(raw, codec, storage, ns)
        async with channel:
            yield channel
