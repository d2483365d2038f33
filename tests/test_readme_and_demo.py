"""The README's quickstart runs as written, its install line works from a checkout, it
promises only what the queue keeps; the demo command runs end to end."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from trio_jobqueue.cli._demo import run_demo

ROOT = Path(__file__).resolve().parent.parent


def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    """The first Python block of README.md runs and prints what its comments say."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    script = tmp_path / "quickstart.py"
    script.write_text(block.group(1))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == [
        "queued",
        "duplicate",
        "{'sent_to': 'b@example.com', 'attempt': 1}",
    ]


def test_readme_install_line_works_from_a_checkout() -> None:
    """The package is not on a registry: every `pip install` of README's Install section
    installs the checkout itself (`.`, editable or not) with extras that pyproject.toml
    defines, never a package name that pip would look up on an index."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Install") : text.index("## Quickstart")]
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    commands = [
        shlex.split(line.split("#")[0])
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if line.strip().startswith("pip install")
    ]
    commands += [shlex.split(c) for c in re.findall(r"`(pip install [^`]+)`", section)]
    assert commands
    for words in commands:
        targets = [w for w in words[2:] if not w.startswith("-")]
        assert len(targets) == 1, words
        target = targets[0]
        path, _, rest = target.partition("[")
        assert path == ".", f"{words}: installs from an index, not from the checkout"
        for extra in rest.rstrip("]").split(",") if rest else []:
            assert extra in extras, (words, extra)


def test_readme_promises_at_least_once_delivery_and_explains_duplicate() -> None:
    """README states the delivery guarantee the queue keeps (at-least-once, fenced
    outcomes, reruns only after a process died or lost its lease), not "never run twice",
    and says what the `duplicate` enqueue status means."""
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "never silently run twice" not in text and "exactly once" not in text
    assert "at-least-once with fenced outcomes" in text
    assert "only when a process died (or lost its lease" in text
    assert "answers `duplicate`" in text and "already taken" in text


def test_demo_command_prints_throughput_and_percentiles() -> None:
    """`python -m trio_jobqueue demo` completes every job and reports figures."""
    done = subprocess.run(
        [sys.executable, "-m", "trio_jobqueue", "demo", "--jobs", "500"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "completed 500 jobs" in done.stdout
    assert re.search(r"p50 [\d.]+ ms +p95 [\d.]+ ms +p99 [\d.]+ ms", done.stdout)


def test_demo_rejects_bad_arguments() -> None:
    """A bad --jobs value is one clear line and a non-zero exit, not a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "trio_jobqueue", "demo", "--jobs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr


async def test_run_demo_counts_every_job() -> None:
    """run_demo's figures cover exactly the jobs it enqueued."""
    out = io.StringIO()
    figures = await run_demo(300, 20, 0.0, out)
    assert figures["jobs"] == 300 and figures["throughput"] > 0
    assert figures["p50_ms"] <= figures["p99_ms"]
