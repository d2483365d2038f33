"""Serializers: the protocol, JSON (the default), raw bytes, and typed values via cattrs."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import cattrs
import trio

from ._errors import SerializationError
from ._types import JobError

__all__ = [
    "BytesSerializer",
    "JsonSerializer",
    "Serializer",
    "TypedCodec",
    "describe_exception",
    "error_from_exception",
]

MAX_ERROR_TEXT = 64 * 1024
"""Longest stored error message or traceback, in characters (longer ones are cut)."""


@runtime_checkable
class Serializer(Protocol):
    """Turns payloads and results into bytes and back. Must be deterministic and pure."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _one_shot_encoder(encoder: json.JSONEncoder) -> Callable[[Any, int], Any] | None:
    """The C encoder that ``encoder.encode`` makes on every call (about half its cost
    for a small value), made once; ``None`` without the C accelerator. Without the
    circular-reference bookkeeping (state kept between calls): a cycle fails as a
    ``RecursionError`` instead of a ``ValueError``."""
    make: Callable[..., Callable[[Any, int], Any]] | None = getattr(
        json.encoder, "c_make_encoder", None
    )
    if make is None or encoder.indent is not None:
        return None
    return make(
        None,
        encoder.default,
        json.encoder.encode_basestring,
        encoder.indent,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )


_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_FAST_JSON = _one_shot_encoder(_JSON_ENCODER)


class JsonSerializer:
    """UTF-8 JSON (the default). ``NaN``/``Infinity`` are rejected, not written."""

    _encoder = _JSON_ENCODER
    _decoder = json.JSONDecoder()
    _scan = _decoder.scan_once  # type: ignore[attr-defined]  # set by __init__, not in the stubs

    def dumps(self, value: Any) -> bytes:
        if value is None:  # most handlers return nothing
            return b"null"
        if _FAST_JSON is not None:
            return "".join(_FAST_JSON(value, 0)).encode()
        return self._encoder.encode(value).encode()

    def loads(self, data: bytes) -> Any:
        text = data.decode()
        # The scanner alone (what ``decode`` calls after skipping whitespace) when the
        # value spans the whole text; otherwise (whitespace around it, an error) the
        # full ``decode``, which also makes the error message.
        try:
            value, end = self._scan(text, 0)
        except (StopIteration, ValueError):
            end = -1
        if end == len(text):
            return value
        return self._decoder.decode(text)


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


def _plain_text(text: str) -> str:
    """``text`` as a plain ``str`` that always encodes as UTF-8, at most
    :data:`MAX_ERROR_TEXT` characters. ``str.encode`` is called unbound so that a ``str``
    subclass cannot interfere; lone surrogates become backslash escapes."""
    plain = str.encode(text, "utf-8", "backslashreplace").decode("utf-8")
    if len(plain) > MAX_ERROR_TEXT:
        cut = len(plain) - MAX_ERROR_TEXT
        plain = f"{plain[:MAX_ERROR_TEXT]}... [{cut} characters cut]"
    return plain


def _type_name(value: object) -> str:
    try:
        name = type(value).__name__
        if isinstance(name, str) and name:
            return _plain_text(name)
    except Exception:  # noqa: BLE001 - an odd metaclass must not break error reporting
        pass
    return "UnknownError"


def describe_exception(exc: BaseException) -> str:
    """``str(exc)``, or ``repr(exc)``, or a placeholder: never raises (some exceptions'
    ``__str__`` does)."""
    for render in (str, repr):
        try:
            text = render(exc)
            if isinstance(text, str):
                return _plain_text(text)
        except Exception:  # noqa: BLE001 - a broken __str__/__repr__ is reported, not raised
            continue
    return f"<unprintable {_type_name(exc)} object>"


def _format_traceback(exc: BaseException, type_name: str, message: str) -> str | None:
    try:
        return _plain_text("".join(traceback.format_exception(exc)))
    except Exception:  # noqa: BLE001 - fall back to the frames alone
        pass
    try:
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return _plain_text(f"Traceback (most recent call last):\n{frames}{type_name}: {message}\n")
    except Exception:  # noqa: BLE001
        return None


def error_from_exception(exc: BaseException, *, context: BaseException | None = None) -> JobError:
    """A best-effort :class:`JobError` for ``exc``; never raises, whatever ``exc`` is.

    ``context`` (e.g. the exception group ``exc`` was taken from) gives the traceback
    instead of ``exc`` itself.
    """
    type_name = _type_name(exc)
    message = describe_exception(exc)
    return JobError(
        type=type_name,
        message=message,
        traceback=_format_traceback(context if context is not None else exc, type_name, message),
    )


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
            data = self.serializer.dumps(raw)
        except BaseException as exc:  # any failure of user code; control flow re-raised
            if is_control_flow(exc):
                raise
            raise _serializer_failure(exc, f"cannot encode {what} of {job_id!r}") from exc
        if isinstance(data, bytes):
            return data
        if isinstance(data, bytearray | memoryview):
            return bytes(data)
        raise SerializationError(
            f"cannot encode {what} of {job_id!r}: the serializer returned "
            f"{_type_name(data)}, not bytes"
        )

    def decode(self, data: bytes, what: str, job_id: str) -> Any:
        try:
            raw = self.serializer.loads(data)
            return _converter.structure(raw, self.type) if self.type is not None else raw
        except BaseException as exc:  # any failure of user code; control flow re-raised
            if is_control_flow(exc):
                raise
            raise _serializer_failure(exc, f"cannot decode {what} of {job_id!r}") from exc


CONTROL_FLOW = (trio.Cancelled, KeyboardInterrupt, SystemExit)
"""Exceptions that are never a job's (or a serializer's) failure: cancellation, and the
interpreter being asked to exit."""


def is_control_flow(exc: BaseException) -> bool:
    """``exc`` is, or is a group containing, one of :data:`CONTROL_FLOW`."""
    if isinstance(exc, CONTROL_FLOW):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(CONTROL_FLOW) is not None
    return False


def _serializer_failure(exc: BaseException, doing: str) -> SerializationError:
    """What a serializer's failure becomes: any error (even an odd ``BaseException``
    subclass, or one whose ``str()`` raises) is a :class:`SerializationError` with a
    message that can be printed. (Cancellation and interpreter exits are re-raised by
    the caller before this.)"""
    return SerializationError(f"{doing}: {_type_name(exc)}: {describe_exception(exc)}")


def encode_error(error: JobError) -> bytes:
    """Errors are always stored as JSON, whatever the queue's serializer. Never raises:
    ``details`` that cannot be encoded are dropped, text that is not valid UTF-8 is
    escaped."""
    fields = {
        "type": _plain_text(str(error.type)),
        "message": _plain_text(str(error.message)),
        "traceback": None if error.traceback is None else _plain_text(str(error.traceback)),
    }
    try:
        return json.dumps(
            {**fields, "details": error.details}, ensure_ascii=False, default=repr
        ).encode("utf-8")
    except Exception:  # noqa: BLE001 - odd details (a repr that raises, surrogates)
        return json.dumps({**fields, "details": None}, ensure_ascii=False).encode("utf-8")


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
