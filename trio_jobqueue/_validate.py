"""Input checks shared by the queue and the storages (SPEC §8)."""

from __future__ import annotations

import datetime
import math
from numbers import Real
from typing import TypeGuard

from ._errors import InvalidJobError, InvalidTtlError
from .storage._base import MAX_PRIORITY, MIN_PRIORITY

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


def _is_number(value: object) -> TypeGuard[Real]:
    """A real number that is not a bool (``float`` and ``int`` without the ABC check, which
    costs a microsecond on every enqueue)."""
    kind = type(value)
    if kind is float or kind is int:
        return True
    return kind is not bool and isinstance(value, Real)


def check_ttl(value: object, what: str = "ttl") -> float:
    """Return ``value`` as a float if it is a number > 0 and at most :data:`MAX_TTL`,
    else raise :class:`InvalidTtlError` naming it."""
    if not _is_number(value):
        raise InvalidTtlError(value, what)
    ttl = float(value)
    if not math.isfinite(ttl) or ttl <= 0 or ttl > MAX_TTL:
        raise InvalidTtlError(value, what)
    return ttl


def check_duration(value: object, what: str, *, allow_zero: bool = True) -> float:
    """A non-negative finite number of seconds (``ValueError`` naming ``what`` otherwise)."""
    if not _is_number(value):
        raise ValueError(f"{what} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"invalid {what} {value!r}")
    return seconds


def check_max_attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidJobError(f"max_attempts must be an int >= 1, not {value!r}")
    return value


def check_priority(value: object) -> int:
    """An int within ``MIN_PRIORITY..MAX_PRIORITY`` (:class:`InvalidJobError` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"priority must be an int, not {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidJobError(
            f"priority {value!r} is out of range: it must be within {MIN_PRIORITY}..{MAX_PRIORITY}"
        )
    return value


def check_due(delay: object, run_at: object) -> tuple[float | None, float | None]:
    """``(delay, run_at)`` as floats (``run_at`` in epoch seconds), or
    :class:`InvalidJobError` naming the bad value: at most one of the two; ``delay``
    finite and >= 0; ``run_at`` an epoch number >= 0 or an aware ``datetime``."""
    if delay is not None and run_at is not None:
        raise InvalidJobError(
            f"give delay or run_at, not both (delay={delay!r}, run_at={run_at!r})"
        )
    if delay is not None:
        if not _is_number(delay):
            raise InvalidJobError(f"delay must be a number of seconds, not {delay!r}")
        seconds = float(delay)
        if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_TTL:
            raise InvalidJobError(
                f"delay must be a finite number of seconds >= 0 (at most {MAX_TTL:g}), "
                f"not {delay!r}"
            )
        return seconds, None
    if run_at is None:
        return None, None
    if isinstance(run_at, datetime.datetime):
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise InvalidJobError(
                f"run_at {run_at!r} is a naive datetime: give it a time zone "
                "(for instance datetime.now(timezone.utc) + timedelta(minutes=10))"
            )
        return None, run_at.timestamp()
    if not _is_number(run_at):
        raise InvalidJobError(f"run_at must be epoch seconds or an aware datetime, not {run_at!r}")
    when = float(run_at)
    if not math.isfinite(when) or when < 0 or when > MAX_TTL:
        raise InvalidJobError(
            f"run_at must be epoch seconds >= 0 (at most {MAX_TTL:g}), not {run_at!r}"
        )
    return None, when
