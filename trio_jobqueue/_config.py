"""Options of the worker, the reaper and the scheduler, validated once: :class:`QueueConfig`
for ``open_queue``/``serve_worker``, :class:`ReaperConfig` for
``open_reaper``/``serve_reaper``, :class:`SchedulerConfig` for
``open_scheduler``/``serve_scheduler``.

Building a config checks every option (the error names it: ``ValueError``, its
``InvalidJobError``/``InvalidTtlError`` subclasses, or ``TypeError`` for something that
should be callable) before the caller opens anything. The checks are the shared ones of
:mod:`._validate`. A config keeps the values as given once they passed (an ``int`` timeout
stays an ``int``); the worker and the reaper take ``float()`` of them when built.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

import attrs

from ._instrument import MetricsHook, TracingHook, as_metrics, as_tracing
from ._retry import DEFAULT_RETRY_POLICY, RetryPolicy, as_retry_policy
from ._schedule import Schedule, check_schedules
from ._serde import JsonSerializer, Serializer
from ._validate import check_duration, check_max_attempts, check_name, check_ttl
from ._worker import AfterExecution, Handler, is_async_callable

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_SHUTDOWN_GRACE",
    "QueueConfig",
    "ReaperConfig",
    "SchedulerConfig",
    "default_worker_id",
]

DEFAULT_NAME = "default"
"""The queue name (namespace) used when none is given."""
DEFAULT_SHUTDOWN_GRACE = 10.0
"""Seconds in-flight jobs get to finish when a worker stops, unless told otherwise."""


def default_worker_id() -> str:
    """A new ``host:pid:random`` id (for a worker, or a reaper's identity in the lock)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


# -- converters: defaults that are computed, or depend on nothing but the value ---------


def _name_or_default(value: str | None) -> str:
    return DEFAULT_NAME if value is None else value


def _id_or_new(value: str | None) -> str:
    return default_worker_id() if value is None else value


def _serializer_or_json(value: Serializer | None) -> Serializer:
    return JsonSerializer() if value is None else value


def _optional_bool(value: object) -> bool | None:
    return None if value is None else bool(value)


# -- validators (attrs signature: instance, attribute, value) ---------------------------


def _name(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    check_name(value)


def _ttl(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    check_ttl(value, attribute.name)


def _duration(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    check_duration(value, attribute.name)


def _positive_duration(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_duration(value, attribute.name, allow_zero=False)


def _max_attempts(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    check_max_attempts(value)


def _concurrency(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, not {value!r}")


def _callable(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        raise TypeError(f"{attribute.name} must be callable, not {value!r}")


def _identity(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty str, not {value!r}")


def _serializer(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Serializer):
        raise TypeError(f"{attribute.name} must have dumps(value) -> bytes and loads(bytes)")


def _schedules(value: object) -> tuple[Schedule, ...]:
    return check_schedules(value)


# -- the configs ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ReaperConfig:
    """The options of ``open_reaper``/``serve_reaper`` (see ``docs/configuration.md``)."""

    name: str = attrs.field(default=None, converter=_name_or_default, validator=_name)
    """The queue name to watch."""
    visibility_timeout: float = attrs.field(default=30.0, validator=_ttl)
    """The workers' lease; sets the default scan interval."""
    leader_election: bool = attrs.field(default=True, converter=bool)
    """Compete for the ``reaper`` lock so that one reaper acts."""
    lock_ttl: float = attrs.field(default=30.0, validator=_ttl)
    """Lease of the leader lock: a dead leader is replaced within it."""
    interval: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive_duration)
    )
    """Seconds between scans; ``None``: half the visibility timeout, at most 5 s."""
    owner: str = attrs.field(default=None, converter=_id_or_new, validator=_identity)
    """This reaper's identity in the lock."""

    @property
    def scan_interval(self) -> float:
        if self.interval is not None:
            return float(self.interval)
        return max(min(float(self.visibility_timeout) / 2, 5.0), 0.01)


@attrs.frozen(kw_only=True)
class SchedulerConfig:
    """The options of ``open_scheduler``/``serve_scheduler`` and of a queue's embedded
    scheduler (see ``docs/scheduling.md``)."""

    schedules: tuple[Schedule, ...] = attrs.field(converter=_schedules)
    """The schedules to run (distinct ids)."""
    name: str = attrs.field(default=None, converter=_name_or_default, validator=_name)
    max_attempts: int = attrs.field(default=3, validator=_max_attempts)
    """Attempts of the jobs of schedules that set none."""
    result_ttl: float = attrs.field(default=3600.0, validator=_ttl)
    """Result TTL of the jobs of schedules that set none."""
    lock_ttl: float = attrs.field(default=30.0, validator=_ttl)
    """Lease of the ``scheduler`` leader lock."""
    owner: str = attrs.field(default=None, converter=_id_or_new, validator=_identity)
    """This scheduler's identity in the lock (and the registry)."""
    serializer: Serializer = attrs.field(
        default=None, converter=_serializer_or_json, validator=_serializer
    )
    payload_type: Any = None


@attrs.frozen(kw_only=True)
class QueueConfig:
    """The options of ``open_queue``/``serve_worker`` (see ``docs/configuration.md``).

    Every option is checked even without a handler (a producer-only queue), so a typo
    fails the same way whichever process reads the configuration.
    """

    handler: Handler | None = attrs.field(
        default=None, validator=attrs.validators.optional(_callable)
    )
    """Runs each job; ``None``: producer only."""
    name: str = attrs.field(default=None, converter=_name_or_default, validator=_name)
    concurrency: int = attrs.field(default=1, validator=_concurrency)
    max_attempts: int = attrs.field(default=3, validator=_max_attempts)
    retry_delay: RetryPolicy = attrs.field(default=DEFAULT_RETRY_POLICY, converter=as_retry_policy)
    """A number of seconds (a fixed delay) is converted to a policy."""
    visibility_timeout: float = attrs.field(default=30.0, validator=_ttl)
    job_timeout: float | None = attrs.field(default=None)
    result_ttl: float = attrs.field(default=3600.0, validator=_ttl)
    shutdown_grace: float = attrs.field(default=DEFAULT_SHUTDOWN_GRACE, validator=_duration)
    after_execution: AfterExecution | None = attrs.field(
        default=None, validator=attrs.validators.optional(_callable)
    )
    serializer: Serializer = attrs.field(
        default=None, converter=_serializer_or_json, validator=_serializer
    )
    payload_type: Any = None
    result_type: Any = None
    worker_id: str = attrs.field(default=None, converter=_id_or_new, validator=_identity)
    reaper: bool | None = attrs.field(default=None, converter=_optional_bool)
    """Run an embedded reaper; ``None``: when there is a handler."""
    lock_ttl: float = attrs.field(default=30.0, validator=_ttl)
    schedules: tuple[Schedule, ...] = attrs.field(default=(), converter=_schedules)
    """Schedules for the embedded scheduler (none: no scheduler runs)."""
    metrics: MetricsHook | None = attrs.field(default=None, converter=as_metrics)
    """Prometheus metrics of the queue (``trio_jobqueue.metrics``; ``True``: the default
    registry's)."""
    tracing: TracingHook | None = attrs.field(default=None, converter=as_tracing)
    """OpenTelemetry spans of enqueues and handler runs (``trio_jobqueue.tracing``;
    ``True``: the global tracer provider's)."""

    @job_timeout.validator
    def _check_job_timeout(self, attribute: attrs.Attribute[float | None], value: object) -> None:
        if value is None:
            return
        check_ttl(value, attribute.name)
        # Validators run after every field is set, and handler's ran first.
        if self.handler is not None and not is_async_callable(self.handler):
            raise ValueError(
                "job_timeout needs an async handler: a sync handler runs in a thread, which "
                "cannot be interrupted (write the handler as `async def`, or drop job_timeout)"
            )

    @property
    def runs_reaper(self) -> bool:
        return self.handler is not None if self.reaper is None else self.reaper

    def reaper_config(self) -> ReaperConfig:
        """The embedded reaper's options: leader-elected, identified by the worker id."""
        return ReaperConfig(
            name=self.name,
            visibility_timeout=self.visibility_timeout,
            lock_ttl=self.lock_ttl,
            owner=self.worker_id,
        )

    def scheduler_config(self) -> SchedulerConfig | None:
        """The embedded scheduler's options (``None`` without schedules): leader-elected,
        identified by the worker id, the queue's defaults and serializer."""
        if not self.schedules:
            return None
        return SchedulerConfig(
            schedules=self.schedules,
            name=self.name,
            max_attempts=self.max_attempts,
            result_ttl=self.result_ttl,
            lock_ttl=self.lock_ttl,
            owner=self.worker_id,
            serializer=self.serializer,
            payload_type=self.payload_type,
        )
