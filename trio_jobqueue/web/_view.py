"""What the pages show: values made readable (and bounded), the throughput record and its
chart. No I/O here."""

from __future__ import annotations

import collections
import datetime
import json
import math
from typing import Any

import attrs

from .._types import EventKind

__all__ = ["LenientJson", "Raw", "Throughput", "chart", "show_value", "when"]

BUCKET = 20.0
"""Seconds per bar of the throughput chart."""
BUCKETS = 30
"""Bars of the chart: the last ten minutes."""


@attrs.frozen
class Raw:
    """Stored bytes that are not JSON (another serializer wrote them)."""

    data: bytes


class LenientJson:
    """The dashboard's serializer: JSON where the bytes are JSON, else :class:`Raw`, so a
    queue written with another serializer is still shown (never an error page)."""

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError:  # UnicodeDecodeError included
            return Raw(bytes(data))


def show_value(value: Any, limit: int) -> tuple[str, int]:
    """``value`` as text of at most ``limit`` characters, and how many were cut."""
    if isinstance(value, Raw):
        try:
            text = value.data.decode("utf-8")
        except UnicodeDecodeError:
            text = f"<{len(value.data)} bytes> " + value.data[: limit // 2 + 1].hex(" ")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    if len(text) <= limit:
        return text, 0
    return text[:limit], len(text) - limit


def short(value: Any, limit: int = 120) -> str:
    """A one-line preview for lists."""
    if isinstance(value, Raw) or not isinstance(value, str):
        text, _ = show_value(value, limit * 4)
    else:
        text = value
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(ts: float | None, now: float) -> dict[str, str] | None:
    """``{"iso": ..., "ago": ...}`` for a timestamp (``None`` stays ``None``)."""
    if ts is None or not math.isfinite(ts):
        return None
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    delta = now - ts
    span = abs(delta)
    if span < 60:
        text = f"{span:.0f} s"
    elif span < 3600:
        text = f"{span / 60:.0f} min"
    elif span < 86400:
        text = f"{span / 3600:.1f} h"
    else:
        text = f"{span / 86400:.1f} d"
    return {
        "iso": moment.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "ago": f"{text} ago" if delta >= 0 else f"in {text}",
    }


@attrs.define
class Throughput:
    """Completed and failed jobs per :data:`BUCKET` seconds, per queue, for the last
    :data:`BUCKETS` buckets, counted from the queues' events while the dashboard runs."""

    _series: dict[str, collections.deque[list[float]]] = attrs.field(factory=dict)
    started: float | None = None
    """Epoch seconds when counting began (``None``: not counting)."""

    def record(self, queue: str, kind: EventKind, now: float) -> None:
        if kind is EventKind.COMPLETED:
            column = 1
        elif kind is EventKind.FAILED:
            column = 2
        else:
            return
        start = math.floor(now / BUCKET) * BUCKET
        series = self._series.get(queue)
        if series is None:
            series = self._series[queue] = collections.deque(maxlen=BUCKETS)
        if not series or series[-1][0] < start:
            series.append([start, 0.0, 0.0])
        series[-1][column] += 1

    def buckets(self, queue: str, now: float) -> list[tuple[float, int, int]]:
        """The last :data:`BUCKETS` buckets, oldest first: (start, completed, failed)."""
        last = math.floor(now / BUCKET) * BUCKET
        seen = {int(b[0]): b for b in self._series.get(queue, ())}
        out = []
        for i in range(BUCKETS - 1, -1, -1):
            start = last - i * BUCKET
            found = seen.get(int(start))
            out.append((start, int(found[1]), int(found[2])) if found else (start, 0, 0))
        return out


def chart(
    buckets: list[tuple[float, int, int]], *, width: int = 240, height: int = 36
) -> dict[str, Any]:
    """Bars for an inline SVG: completed (bottom) and failed (stacked on top)."""
    top = max((c + f for _, c, f in buckets), default=0)
    step = width / max(len(buckets), 1)
    bars = []
    for i, (start, done, failed) in enumerate(buckets):
        if not done and not failed:
            continue
        scale = (height - 2) / top
        h_done = done * scale
        h_failed = failed * scale
        label = datetime.datetime.fromtimestamp(start, datetime.UTC).strftime("%H:%M:%S")
        bars.append(
            {
                "x": round(i * step + 0.5, 1),
                "w": round(max(step - 1, 1), 1),
                "done_y": round(height - h_done, 1),
                "done_h": round(h_done, 1),
                "failed_y": round(height - h_done - h_failed, 1),
                "failed_h": round(h_failed, 1),
                "title": f"{label} UTC: {done} completed, {failed} failed",
            }
        )
    total_done = sum(c for _, c, _ in buckets)
    total_failed = sum(f for _, _, f in buckets)
    minutes = len(buckets) * BUCKET / 60
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "summary": f"{total_done} completed, {total_failed} failed in the last {minutes:g} min",
        "rate": f"{(total_done + total_failed) / (len(buckets) * BUCKET):.1f}/s",
    }
