"""Schedules imported by the scheduler process tests (``--schedules _proc_schedules:...``)."""

from __future__ import annotations

import trio_jobqueue as jq

EVERY_SECOND = [jq.IntervalSchedule(id="tick", every=1.0, misfire=jq.Misfire.ALL)]
"""One tick a second; a new leader enqueues every tick missed during a take-over."""

NOT_A_LIST = 42
