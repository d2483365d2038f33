"""Serializers: the protocol, JSON (the default), raw bytes, and typed values via cattrs."""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

import cattrs

from ._errors import SerializationError
from ._types import JobError

__all__ = ["BytesSerializer", "JsonSerializer", "Serializer", "TypedCodec"]


@runtime_checkable
class Serializer(Protocol):
    """Turns payloads and results into bytes and back. Must be deterministic and pure."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    """UTF-8 JSON (the default). ``NaN``/``Infinity`` are rejected, not written."""

    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    _decoder = json.JSONDecoder()

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value).encode()

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data.decode())


class BytesSerializer:
    """Passes ``bytes`` through untouched (binary payloads); anything else is an error."""

    def dumps(self, value: Any) -> bytes:
        if value is None:
            return b""
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"BytesSerializer encodes bytes, not {type(value).__name__}")
        return bytes(value)

    def loads(self, data: bytes) -> Any:
        return bytes(data)


_converter = cattrs.Converter()


class TypedCodec:
    """Serializer plus optional cattrs (un)structuring to a declared type.

    All failures surface as :class:`SerializationError` naming what was being encoded.
    """

    def __init__(self, serializer: Serializer, type_: Any = None) -> None:
        self.serializer = serializer
        self.type = type_

    def encode(self, value: Any, what: str, job_id: str) -> bytes:
        """Encode the ``what`` (``"payload"``/``"result"``) of job ``job_id``."""
        try:
            raw = _converter.unstructure(value) if self.type is not None else value
            return self.serializer.dumps(raw)
        except Exception as exc:
            raise SerializationError(f"cannot encode {what} of {job_id!r}: {exc}") from exc

    def decode(self, data: bytes, what: str, job_id: str) -> Any:
        try:
            raw = self.serializer.loads(data)
            return _converter.structure(raw, self.type) if self.type is not None else raw
        except Exception as exc:
            raise SerializationError(f"cannot decode {what} of {job_id!r}: {exc}") from exc


def encode_error(error: JobError) -> bytes:
    """Errors are always stored as JSON, whatever the queue's serializer."""
    return json.dumps(
        {
            "type": error.type,
            "message": error.message,
            "traceback": error.traceback,
            "details": error.details,
        },
        ensure_ascii=False,
        default=repr,
    ).encode()


def decode_error(data: bytes | None) -> JobError | None:
    if data is None:
        return None
    try:
        raw = json.loads(data)
        return JobError(
            type=str(raw["type"]),
            message=str(raw["message"]),
            traceback=raw.get("traceback"),
            details=raw.get("details"),
        )
    except (ValueError, KeyError, TypeError):
        return JobError(type="CorruptError", message=repr(data[:200]))
