"""The README's quickstart runs as written; the demo command runs end to end."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from trio_jobqueue._cli import run_demo

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
