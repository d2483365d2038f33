"""The API-level conformance suite (``trio_jobqueue.testing.API_CHECKS``) on every backend."""

from __future__ import annotations

import pytest
import trio

from trio_jobqueue.testing._checks import API_CHECKS, Check, StorageFactory


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_api_contract(check: Check, storage_factory: StorageFactory) -> None:
    """Each check asserts one user-visible behaviour of SPEC §3/§8/§9 (see its docstring)."""
    with trio.fail_after(60):
        await check(storage_factory)


@pytest.mark.parametrize("order", [("x/y", "a:b"), ("a:b", "x/y")])
async def test_one_complete_many_lists_its_jobs_by_id(
    storage_factory: StorageFactory, order: tuple[str, str]
) -> None:
    """The jobs one ``complete_many`` call stores finish at one instant, so listing the
    completed jobs orders them by id among themselves, whatever the order of the call's
    items, on every backend (the model of the state machine says the same)."""
    from trio_jobqueue import JobState
    from trio_jobqueue.storage import Completion

    async with storage_factory() as storage:
        for job_id in ("a:b", "x/y"):
            await storage.enqueue("q", job_id, b"", max_attempts=1, result_ttl=100.0)
        batch = await storage.claim_nowait("q", "w1", limit=2, lease=100.0)
        tokens = {c.job_id: c.token for c in batch.claims}
        items = [Completion(job_id, tokens[job_id], b"", 100.0) for job_id in order]
        assert [str(s) for s in await storage.complete_many("q", items)] == ["ok", "ok"]
        listed: list[str] = []
        cursor = None
        while True:
            page = await storage.list_jobs("q", JobState.COMPLETED, limit=1, cursor=cursor)
            listed += [r.job_id for r in page.records]
            cursor = page.cursor
            if cursor is None:
                break
    assert listed == ["x/y", "a:b"]
