"""API-level conformance checks (filled in by the queue work)."""

from __future__ import annotations

API_CHECKS: list[object] = []
