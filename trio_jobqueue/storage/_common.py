"""Small helpers shared by the storage backends."""

from __future__ import annotations

from .._serde import encode_error
from .._types import JobError

STALLED_ERROR: bytes = encode_error(
    JobError(
        type="Stalled",
        message="the job's lease expired: its worker died, hung or lost its connection",
    )
)
"""The error stored when the reaper recovers a job whose lease expired."""


def lock_expired(expires_at: float, now: float) -> bool:
    return expires_at <= now
