"""Schedule values (:class:`CronSchedule`, :class:`IntervalSchedule`), their tick
arithmetic and the misfire policy. Pure code: no I/O, no clock of its own (times are passed
in as epoch seconds), so every scheduler, in any process, computes the same ticks.

A *tick* is an instant (epoch seconds) at which a schedule is due. Its job id is
``f"{schedule.id}@{iso}"``: the tick in the schedule's local time with its UTC offset
(``nightly@2026-12-02T03:00:00+01:00``; interval schedules in UTC), so two fallback-hour
ticks of one wall-clock time still get two ids. Cron expressions are parsed and iterated
by ``cronsim`` (the reasons are in ``docs/scheduling.md``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from numbers import Real
from typing import Any, ClassVar, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import cronsim

from ._validate import MAX_JOB_ID_LENGTH, check_max_attempts, check_priority, check_ttl

__all__ = [
    "DEFAULT_MAX_CATCHUP",
    "DEFAULT_MISFIRE_GRACE",
    "CronSchedule",
    "IntervalSchedule",
    "Misfire",
    "Schedule",
    "check_schedules",
    "due_ticks",
]

DEFAULT_MISFIRE_GRACE = 1.0
"""Seconds a tick may be late and still count as on time (not missed)."""
DEFAULT_MAX_CATCHUP = 100
"""With ``Misfire.ALL``: at most this many missed ticks are enqueued (the newest ones)."""
MAX_SCHEDULE_ID_LENGTH = MAX_JOB_ID_LENGTH - 64
"""Longest schedule id: the tick's job id adds ``@`` and the time (at most 32 characters)."""
_SCAN_LIMIT = 100_000
"""Most ticks looked at in one planning step (a bound, whatever the expression)."""

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The usual nicknames (cronsim itself takes 5 or 6 fields only)."""


class Misfire(enum.StrEnum):
    """What a scheduler does with ticks that passed while no scheduler ran (older than
    the schedule's ``misfire_grace`` when a leader first sees them)."""

    LATEST = "latest"
    """Enqueue only the newest missed tick (the default): the job runs once, late."""
    ALL = "all"
    """Enqueue every missed tick, oldest first, at most ``max_catchup`` (the newest)."""
    SKIP = "skip"
    """Enqueue none of them; wait for the next tick."""


# -- validators ---------------------------------------------------------------------------


def _schedule_id(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"schedule id must be a non-empty str, not {value!r}")
    if len(value) > MAX_SCHEDULE_ID_LENGTH:
        raise ValueError(
            f"schedule id is {len(value)} characters long; the limit is {MAX_SCHEDULE_ID_LENGTH}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"schedule id {value!r} is not valid unicode text") from exc


def _priority(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    check_priority(value)


def _max_attempts(instance: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is not None:
        check_max_attempts(value)


def _result_ttl(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_ttl(value, attribute.name)


def _seconds(value: object, what: str, *, positive: bool, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or (math.isinf(seconds) and not allow_inf) or seconds < 0:
        raise ValueError(f"invalid {what} {value!r}")
    if positive and seconds == 0:
        raise ValueError(f"{what} must be > 0, not {value!r}")
    return seconds


def _grace(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    _seconds(value, attribute.name, positive=False)


def _max_catchup(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _SCAN_LIMIT:
        raise ValueError(f"max_catchup must be an int within 1..{_SCAN_LIMIT}, not {value!r}")


def _misfire(value: object) -> Misfire:
    try:
        return Misfire(value)  # type: ignore[arg-type]  # checked here
    except ValueError:
        choices = ", ".join(repr(m.value) for m in Misfire)
        raise ValueError(f"misfire must be one of {choices}, not {value!r}") from None


def _load_zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValueError(f"tz must be an IANA time zone name such as 'Europe/Rome', not {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {name!r} (tz must be an IANA name)") from exc


# -- the schedules ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _ScheduleBase:
    """What every schedule has; the tick arithmetic lives in the subclasses."""

    id: str = attrs.field(validator=_schedule_id)
    """Unique within the scheduler's list; the prefix of every tick's job id, and the key
    of the schedule's cursor (the last tick fired) in the storage."""
    payload: Any = None
    """The payload of every tick's job (encoded with the queue's serializer)."""
    priority: int = attrs.field(default=0, validator=_priority)
    """The jobs' priority (higher runs first)."""
    max_attempts: int | None = attrs.field(default=None, validator=_max_attempts)
    """The jobs' attempts; ``None``: the queue's (or scheduler's) default."""
    result_ttl: float | None = attrs.field(default=None, validator=_result_ttl)
    """The jobs' result TTL; ``None``: the queue's (or scheduler's) default."""
    misfire: Misfire = attrs.field(default=Misfire.LATEST, converter=_misfire)
    """What to do with ticks missed while no scheduler ran (see :class:`Misfire`)."""
    max_catchup: int = attrs.field(default=DEFAULT_MAX_CATCHUP, validator=_max_catchup)
    """With ``Misfire.ALL``: the most missed ticks enqueued at once (the newest)."""
    misfire_grace: float = attrs.field(default=DEFAULT_MISFIRE_GRACE, validator=_grace)
    """Seconds a tick may be late and still count as on time (always enqueued)."""

    def next_tick(self, after: float) -> float:
        """The first tick strictly after ``after`` (epoch seconds)."""
        raise NotImplementedError

    def ticks_back(self, until: float) -> Iterator[float]:
        """The ticks at or before ``until``, newest first (without end)."""
        raise NotImplementedError

    def tick_time(self, tick: float) -> datetime:
        """The tick as an aware datetime in the schedule's time zone."""
        raise NotImplementedError

    def job_id(self, tick: float) -> str:
        """The job id of one tick: ``f"{id}@{local time with UTC offset}"``."""
        return f"{self.id}@{self.tick_time(tick).isoformat()}"


@attrs.frozen(kw_only=True)
class CronSchedule(_ScheduleBase):
    """Due at every instant that matches the cron expression in the time zone ``tz``.

    ``cron`` has 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds
    last, or is one of ``@yearly @monthly @weekly @daily @hourly``; the syntax is
    cronsim's (``L``, ``W``, ``#`` included). Time zones and DST follow the IANA database
    (``zoneinfo``): a time that falls into a spring-forward gap runs once, just after the
    gap (02:30 runs at 03:00); a time that occurs twice on a fall-back day runs once, at
    its first occurrence, except for expressions with a wildcard hour, which run in both
    passes of the repeated hour (as cron does).

    Raises:
        ValueError: a bad expression (with cronsim's message), an unknown ``tz``, or any
            other invalid field; nothing is built.
    """

    cron: str = attrs.field()
    """The expression, e.g. ``"0 3 * * *"``."""
    tz: str = attrs.field(default="UTC")
    """An IANA time zone name, e.g. ``"Europe/Rome"``."""
    _zone: ZoneInfo = attrs.field(init=False, eq=False, repr=False)
    _expr: str = attrs.field(init=False, eq=False, repr=False)

    kind: ClassVar[str] = "cron"

    @cron.validator
    def _check_cron(self, attribute: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"cron must be a non-empty str, not {value!r}")

    def __attrs_post_init__(self) -> None:
        zone = _load_zone(self.tz)
        expr = _ALIASES.get(self.cron.strip().lower(), self.cron)
        try:
            cronsim.CronSim(expr, datetime(2000, 1, 1, tzinfo=zone))
        except cronsim.CronSimError as exc:
            raise ValueError(f"bad cron expression {self.cron!r}: {exc}") from exc
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_expr", expr)

    def next_tick(self, after: float) -> float:
        start = datetime.fromtimestamp(after, self._zone)
        # cronsim may yield a time before ``start`` when ``start`` is in the second pass
        # of a repeated (fall-back) hour: keep iterating until strictly after.
        for count, moment in enumerate(cronsim.CronSim(self._expr, start)):
            tick = moment.timestamp()
            if tick > after:
                return tick
            if count > _SCAN_LIMIT:
                break
        raise RuntimeError(f"schedule {self.id!r}: no tick after {after}")  # pragma: no cover

    def ticks_back(self, until: float) -> Iterator[float]:
        # cronsim's reverse iteration starts strictly before its start: start a second
        # late and drop what is after ``until``.
        start = datetime.fromtimestamp(math.floor(until) + 1, self._zone)
        last = math.inf
        for moment in cronsim.CronSim(self._expr, start, reverse=True):
            tick = moment.timestamp()
            if tick <= until and tick < last:
                last = tick
                yield tick

    def tick_time(self, tick: float) -> datetime:
        return datetime.fromtimestamp(tick, self._zone)


@attrs.frozen(kw_only=True)
class IntervalSchedule(_ScheduleBase):
    """Due every ``every`` seconds, at ``anchor + k * every`` for whole ``k``: the ticks
    are the same in every process (by default multiples of ``every`` since the epoch, so
    ``every=300`` ticks at :00, :05, :10 ... of UTC).

    Raises:
        ValueError: ``every`` is not a finite number > 0, ``anchor`` is not finite, or
            another field is invalid; nothing is built.
    """

    every: float = attrs.field()
    """Seconds between two ticks (> 0)."""
    anchor: float = attrs.field(default=0.0)
    """Epoch seconds of one tick; the others follow every ``every`` seconds."""

    kind: ClassVar[str] = "interval"

    @every.validator
    def _check_every(self, attribute: attrs.Attribute[float], value: object) -> None:
        _seconds(value, "every", positive=True)

    @anchor.validator
    def _check_anchor(self, attribute: attrs.Attribute[float], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"anchor must be finite epoch seconds, not {value!r}")

    def _at(self, k: int) -> float:
        return float(self.anchor) + k * float(self.every)

    def _index_at_or_before(self, moment: float) -> int:
        # Floating-point division can be one off at a boundary; correct it with the
        # exact tick formula so that every caller agrees on which tick is which.
        k = math.floor((moment - float(self.anchor)) / float(self.every))
        while self._at(k) > moment:
            k -= 1
        while self._at(k + 1) <= moment:
            k += 1
        return k

    def next_tick(self, after: float) -> float:
        return self._at(self._index_at_or_before(after) + 1)

    def ticks_back(self, until: float) -> Iterator[float]:
        k = self._index_at_or_before(until)
        while True:
            yield self._at(k)
            k -= 1

    def tick_time(self, tick: float) -> datetime:
        return datetime.fromtimestamp(tick, UTC)


Schedule: TypeAlias = CronSchedule | IntervalSchedule


# -- planning -----------------------------------------------------------------------------


def due_ticks(schedule: Schedule, cursor: float | None, now: float) -> list[float]:
    """The ticks to fire now, oldest first, given the schedule's ``cursor`` (the last tick
    fired, from any process; ``None``: never fired) and the time ``now``.

    A tick in ``(cursor, now]`` is *on time* if at most ``misfire_grace`` seconds old,
    else *missed*. On-time ticks are always fired. Missed ones follow the misfire policy:
    ``LATEST`` fires the newest missed tick when no tick is on time; ``ALL`` fires the
    newest ``max_catchup`` of them; ``SKIP`` none. A schedule that never fired starts
    now: only its newest on-time tick is fired (no catch-up of the past).
    """
    horizon = now - float(schedule.misfire_grace)
    floor = horizon if cursor is None else cursor
    on_time: list[float] = []
    missed: list[float] = []
    wanted = {Misfire.LATEST: 1, Misfire.ALL: schedule.max_catchup, Misfire.SKIP: 0}
    limit = wanted[schedule.misfire] if cursor is not None else 0
    for count, tick in enumerate(schedule.ticks_back(now)):
        if tick <= floor or count >= _SCAN_LIMIT:
            break
        if tick > horizon:
            on_time.append(tick)
        elif len(missed) < limit:
            missed.append(tick)
        else:
            break
    if cursor is None:
        return on_time[:1]  # newest first: only the tick due now
    if schedule.misfire is Misfire.LATEST and on_time:
        missed = []
    return sorted(missed + on_time)


def check_schedules(schedules: object) -> tuple[Schedule, ...]:
    """``schedules`` as a tuple, if it is an iterable of schedules with distinct ids.

    Raises:
        TypeError: not an iterable of :class:`CronSchedule`/:class:`IntervalSchedule`.
        ValueError: two schedules share an id.
    """
    if isinstance(schedules, str | bytes | _ScheduleBase) or not hasattr(schedules, "__iter__"):
        raise TypeError(
            f"schedules must be a list of CronSchedule/IntervalSchedule, not {schedules!r}"
        )
    result = tuple(schedules)
    seen: set[str] = set()
    for schedule in result:
        if not isinstance(schedule, CronSchedule | IntervalSchedule):
            raise TypeError(
                f"schedules must hold CronSchedule/IntervalSchedule values, not {schedule!r}"
            )
        if schedule.id in seen:
            raise ValueError(f"two schedules have the id {schedule.id!r} (ids must be unique)")
        seen.add(schedule.id)
    return result


def describe(schedule: Schedule) -> str:
    """One line for logs and the CLI: ``cron '0 3 * * *' Europe/Rome`` / ``every 300 s``."""
    if isinstance(schedule, CronSchedule):
        return f"cron {schedule.cron!r} {schedule.tz}"
    return f"every {float(schedule.every):g} s"
