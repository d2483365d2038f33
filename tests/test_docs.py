"""The user documentation: code it shows runs as written, and it carries no references to
the project's internal planning documents."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USER_DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

INTERNAL = re.compile(r"SPEC|§|\b[Ii]ssues? #?\d")
"""References to the specification, its sections, or tracker items by number."""


def test_user_docs_carry_no_internal_references() -> None:
    """README.md and docs/*.md never point readers at the internal specification or at
    tracker items ("SPEC §9", "Issue 6's targets")."""
    assert len(USER_DOCS) > 5
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in USER_DOCS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if INTERNAL.search(line)
    ]
    assert found == []


def _python_block_after(text: str, heading: str) -> str:
    section = text[text.index(heading) :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, heading
    return block.group(1)


def test_writing_a_backend_snippet_runs_as_written(tmp_path: Path) -> None:
    """The "Proving it" code of docs/writing-a-backend.md, saved as a test file and run
    with pytest in an empty directory (no project configuration), passes every test."""
    code = _python_block_after(
        (ROOT / "docs" / "writing-a-backend.md").read_text(), "## Proving it"
    )
    (tmp_path / "test_my_backend.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_backend.py"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and "failed" not in summary and "error" not in summary, summary
    from trio_jobqueue.testing import API_CHECKS

    assert int(passed.group(1)) == 1 + len(API_CHECKS), summary


def test_docs_state_the_sigkill_recovery_bound() -> None:
    """docs/cli.md and docs/production.md promise what tests/test_sigkill_recovery.py
    measures: a SIGKILLed worker's jobs are back within about visibility timeout + 2 s, also
    when it led the reaper (its lock is taken once its registration expires), with
    visibility timeout + lock TTL as the worst case -- not the lock TTL as the usual wait,
    nor the visibility timeout alone."""
    cli = " ".join((ROOT / "docs" / "cli.md").read_text().split())
    assert "back in the queue within about **`--visibility-timeout` + 2 s**" in cli
    assert "never later than `--visibility-timeout` + `--lock-ttl`" in cli
    assert "back in the queue within **`--visibility-timeout` + `--lock-ttl`**" not in cli
    assert "re-run after at most S" not in cli
    production = " ".join((ROOT / "docs" / "production.md").read_text().split())
    assert "within about `--visibility-timeout` + 2 s, also when the dead worker was" in production
    assert "never later than `--visibility-timeout` + `--lock-ttl`" in production
    assert "(≤ `--visibility-timeout`)" not in production


def test_docs_drop_the_removed_cli_options() -> None:
    """No user doc still passes `--listen` or `--heartbeat-interval` as a live option
    (both were removed with the CLI's announcements): only a paragraph about earlier
    versions names them."""
    for path in USER_DOCS:
        for paragraph in path.read_text().split("\n\n"):
            if "--listen" in paragraph or "--heartbeat-interval" in paragraph:
                assert "earlier versions" in " ".join(paragraph.split()).lower(), paragraph
