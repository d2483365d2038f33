"""Input checks shared by the queue and the storages (SPEC §8)."""

from __future__ import annotations

import math
from numbers import Real

from ._errors import InvalidJobError, InvalidTtlError

MAX_JOB_ID_LENGTH = 1024
"""Longest accepted job id, in characters."""
MAX_NAME_LENGTH = 200
"""Longest accepted queue name, in characters."""
MAX_TTL = 1e15
"""Longest accepted TTL or lease, in seconds (about 31.7 million years: "forever")."""


def check_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is acceptable, else raise :class:`InvalidJobError`."""
    if not isinstance(job_id, str):
        raise InvalidJobError(f"job id must be a str, not {type(job_id).__name__}")
    if not job_id:
        raise InvalidJobError("job id must not be empty")
    if len(job_id) > MAX_JOB_ID_LENGTH:
        raise InvalidJobError(
            f"job id is {len(job_id)} characters long; the limit is {MAX_JOB_ID_LENGTH}"
        )
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJobError(f"job id {job_id!r} is not valid unicode text") from exc
    return job_id


def check_name(name: object) -> str:
    """Validate a queue (namespace) name."""
    if not isinstance(name, str) or not name:
        raise InvalidJobError(f"queue name must be a non-empty str, not {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidJobError(f"queue name is longer than {MAX_NAME_LENGTH} characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJobError(f"queue name {name!r} is not valid unicode text") from exc
    return name


def check_ttl(value: object, what: str = "ttl") -> float:
    """Return ``value`` as a float if it is a number > 0 and at most :data:`MAX_TTL`,
    else raise :class:`InvalidTtlError` naming it."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidTtlError(value, what)
    ttl = float(value)
    if not math.isfinite(ttl) or ttl <= 0 or ttl > MAX_TTL:
        raise InvalidTtlError(value, what)
    return ttl


def check_duration(value: object, what: str, *, allow_zero: bool = True) -> float:
    """A non-negative finite number of seconds (``ValueError`` naming ``what`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"invalid {what} {value!r}")
    return seconds


def check_max_attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidJobError(f"max_attempts must be an int >= 1, not {value!r}")
    return value
