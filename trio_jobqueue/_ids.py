"""Job ids: :func:`content_id` for natural dedup by payload, :func:`new_id` for unique ones."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from ._errors import SerializationError
from ._serde import Serializer

__all__ = ["content_id", "new_id"]


def content_id(payload: Any, *, serializer: Serializer | None = None, prefix: str = "") -> str:
    """A stable id derived from the payload: ``prefix`` plus the SHA-256 (hex) of its
    serialized bytes, so that enqueueing the same payload twice is a duplicate.

    With the default JSON serializer, dicts are hashed with sorted keys, so
    ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` give the same id; with ``serializer``,
    its bytes are hashed as they are (pass the queue's serializer for binary payloads).

    Raises:
        SerializationError: the payload cannot be serialized.
    """
    try:
        data = _canonical_json(payload) if serializer is None else serializer.dumps(payload)
    except Exception as exc:
        raise SerializationError(f"content_id: cannot serialize the payload: {exc!r}") from exc
    return prefix + hashlib.sha256(data).hexdigest()


def _canonical_json(payload: Any) -> bytes:
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def new_id(prefix: str = "") -> str:
    """A new unique id: ``prefix`` plus 32 random hex digits (a UUID4)."""
    return prefix + uuid.uuid4().hex
