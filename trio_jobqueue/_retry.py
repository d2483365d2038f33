"""Retry-delay policies."""

from __future__ import annotations

import math
import random
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["ExponentialBackoff", "FixedDelay", "RetryPolicy", "as_retry_policy"]


@runtime_checkable
class RetryPolicy(Protocol):
    """Decides how long a failed attempt waits before the job is claimable again."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ...


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, not {value!r}")


@attrs.frozen
class FixedDelay:
    """The same delay after every failure (``0`` retries at once)."""

    seconds: float = attrs.field(converter=float, validator=_non_negative)

    def delay(self, attempt: int) -> float:
        return self.seconds


@attrs.frozen(kw_only=True)
class ExponentialBackoff:
    """``initial * factor ** (attempt - 1)``, capped at ``max_delay``, with jitter.

    ``jitter`` is the fraction of the delay that is randomised: the delay is drawn
    uniformly from ``[d * (1 - jitter), d]``. ``jitter=0`` is deterministic.
    """

    initial: float = attrs.field(default=1.0, converter=float, validator=_non_negative)
    """Delay after the first failed attempt, in seconds."""
    factor: float = attrs.field(default=2.0, converter=float, validator=_non_negative)
    max_delay: float = attrs.field(default=60.0, converter=float, validator=_non_negative)
    """Cap on any single delay, in seconds."""
    jitter: float = attrs.field(default=0.5, converter=float)

    @jitter.validator
    def _check_jitter(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, not {value!r}")

    def delay(self, attempt: int) -> float:
        exponent = max(attempt - 1, 0)
        try:
            base = self.initial * self.factor**exponent
        except OverflowError:
            base = math.inf
        base = min(base, self.max_delay)
        if self.jitter:
            base *= 1.0 - self.jitter * random.random()
        return base


DEFAULT_RETRY_POLICY = ExponentialBackoff()
"""1 s, 2 s, 4 s, ... capped at 60 s, each shortened by up to 50 % at random."""


def as_retry_policy(value: object) -> RetryPolicy:
    """Accept a number of seconds or a policy object."""
    if isinstance(value, bool):
        raise ValueError(f"retry_delay must be seconds or a RetryPolicy, not {value!r}")
    if isinstance(value, int | float):
        return FixedDelay(value)
    if isinstance(value, RetryPolicy):
        return value
    raise ValueError(f"retry_delay must be seconds or a RetryPolicy, not {value!r}")
