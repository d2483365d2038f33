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
