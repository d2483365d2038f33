"""Decoding storage events into public :class:`JobEvent` objects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._errors import SerializationError
from ._serde import TypedCodec, decode_error
from ._types import EventKind, JobEvent
from .storage import EventRecord, Storage


class EventChannel(trio.abc.ReceiveChannel[JobEvent]):
    """A receive channel of :class:`JobEvent` that decodes storage events lazily.

    Results that cannot be decoded arrive as ``None`` rather than breaking the stream.
    """

    def __init__(self, raw: trio.MemoryReceiveChannel[EventRecord], codec: TypedCodec) -> None:
        self._raw = raw
        self._codec = codec

    async def receive(self) -> JobEvent:
        record = await self._raw.receive()
        return decode_event(record, self._codec)

    async def aclose(self) -> None:
        await self._raw.aclose()


def decode_event(record: EventRecord, codec: TypedCodec) -> JobEvent:
    result: Any = None
    if record.result is not None:
        try:
            result = codec.decode(record.result, "result", record.job_id)
        except SerializationError:
            result = None
    return JobEvent(
        kind=EventKind(record.kind),
        job_id=record.job_id,
        attempt=record.attempt,
        result=result,
        error=decode_error(record.error),
    )


@asynccontextmanager
async def open_event_channel(
    storage: Storage, ns: str, codec: TypedCodec
) -> AsyncIterator[EventChannel]:
    async with storage.subscribe_events(ns) as raw:
        channel = EventChannel(raw, codec)
        async with channel:
            yield channel
