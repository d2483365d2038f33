"""The storage state machine: every backend against the model, and proof that it bites."""

from __future__ import annotations

import os
from collections.abc import Callable

import hypothesis
import pytest
from hypothesis import Phase

from trio_jobqueue import JobState
from trio_jobqueue.storage import (
    EnqueueOutcome,
    Fence,
    MemoryStorage,
    ReapResult,
    SettleStatus,
    Storage,
)
from trio_jobqueue.testing import DEFAULT_SETTINGS, THOROUGH_SETTINGS, run_storage_machine

SETTINGS = THOROUGH_SETTINGS if os.environ.get("TRIO_JOBQUEUE_THOROUGH") else DEFAULT_SETTINGS


def test_storage_matches_model(storage_factory: Callable[[], Storage]) -> None:
    """Random operation sequences never make a backend disagree with the model."""
    run_storage_machine(storage_factory, settings=SETTINGS)


# -- planted bugs: each subclass breaks one rule of the contract ---------------------------


class DedupIgnoresFailing(MemoryStorage):
    """Lets a new enqueue replace a job that is waiting for its retry."""

    async def enqueue(
        self, ns: str, job_id: str, payload: bytes, *, max_attempts: int, result_ttl: float
    ) -> EnqueueOutcome:
        record = await self.get_status(ns, job_id)
        if record is not None and record.state is JobState.FAILING:
            await self.cancel(ns, job_id)
        return await super().enqueue(
            ns, job_id, payload, max_attempts=max_attempts, result_ttl=result_ttl
        )


class RetryIgnoresDelay(MemoryStorage):
    """Makes a delayed retry claimable at once."""

    async def retry(
        self, ns: str, job_id: str, token: str, error: bytes, *, delay: float
    ) -> SettleStatus:
        return await super().retry(ns, job_id, token, error, delay=0.0)


class ReapIgnoresFence(MemoryStorage):
    """Reaps for a deposed leader."""

    async def reap(self, ns: str, *, fence: Fence | None = None) -> ReapResult:
        return await super().reap(ns)


class ReleaseConsumesAttempt(MemoryStorage):
    """Counts a graceful-shutdown release as an attempt (SPEC §3: it must not)."""

    async def release(self, ns: str, job_id: str, token: str) -> SettleStatus:
        status = await super().release(ns, job_id, token)
        if status is SettleStatus.OK:
            rec = self._spaces[ns].jobs[job_id]
            rec.attempts += 1
            rec.state = JobState.FAILING
        return status


BUG_HUNT = hypothesis.settings(
    DEFAULT_SETTINGS,
    max_examples=1000,
    phases=[Phase.generate],
    database=None,
    report_multiple_bugs=False,
    print_blob=False,
)


@pytest.mark.parametrize(
    "broken", [DedupIgnoresFailing, RetryIgnoresDelay, ReapIgnoresFence, ReleaseConsumesAttempt]
)
def test_machine_finds_planted_bug(broken: type[MemoryStorage]) -> None:
    """A backend with one planted contract violation is caught by the machine."""
    with pytest.raises(AssertionError):
        run_storage_machine(broken, settings=BUG_HUNT)
