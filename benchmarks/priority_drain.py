"""What priorities cost a drain: all priority 0 against random priorities, and against an
older (FIFO-only) version of the library, in alternating runs.

    python benchmarks/priority_drain.py                          # Redis and Memory, this code only
    git worktree add /tmp/fifo <commit>                          # a version before priorities
    python benchmarks/priority_drain.py --baseline /tmp/fifo     # ... measured in the same run

Starts one private ``redis-server`` (no persistence, free loopback port) and runs, in every
round and in an order rotated by one each round, these variants of ``compare.py``'s drain
(the same adapter, processes and timing): a client process enqueues ``--jobs`` no-op jobs
with 100 calls in flight, then a worker process (Redis; Memory: the client's own process)
drains them at ``--concurrency`` and reports jobs/s from ``go`` to the last handler call,
with its CPU per job (and Redis's):

* ``p0``: this checkout, every job at the default priority (``enqueue`` without
  ``priority``, exactly the older version's call);
* ``prio``: this checkout, every job with a random priority in -1000..1000 (seeded);
* ``base``: with ``--baseline DIR``, the ``trio_jobqueue`` package in DIR (a worktree or an
  export of another commit, put first on ``PYTHONPATH`` of the client and the worker), all
  at the default priority.

Prints each round, the medians, and same-round ratios (``prio / p0``, ``prio / base``,
``p0 / base``; medians over the rounds) with a PASS/FAIL line for the target: random
priorities cost at most 10% of the drain rate. Prints the load before and after, and the
CPU share the machine's other processes took during each drain.

Run with ``worker`` or ``client`` as the first argument it is the adapter itself
(``compare.py``'s protocol; the priorities come from ``JQ_BENCH_PRIORITIES``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRIORITY_RANGE = (-1000, 1000)
TARGET = 0.90
"""Random priorities keep at least this share of the all-zero drain rate."""


# -- the adapter (client and worker processes) ------------------------------------------------


def adapter_main() -> None:
    from _compare_common import main
    from _compare_jq import PAYLOAD, TrioJobQueue

    class PriorityJobQueue(TrioJobQueue):
        """``compare.py``'s trio-jobqueue adapter; with ``JQ_BENCH_PRIORITIES=random``
        every enqueue draws a priority."""

        def __init__(self) -> None:
            super().__init__()
            self.rng = random.Random(int(os.environ.get("JQ_BENCH_SEED", "1")))
            self.random = os.environ.get("JQ_BENCH_PRIORITIES") == "random"

        async def enqueue(self, queue: str, job_id: str) -> None:
            if self.random:
                priority = self.rng.randint(*PRIORITY_RANGE)
                await self.queues[queue].enqueue(job_id, PAYLOAD, priority=priority)
            else:
                await self.queues[queue].enqueue(job_id, PAYLOAD)

    main(PriorityJobQueue())


# -- the orchestrator ---------------------------------------------------------------------------


def variants(baseline: Path | None) -> dict[str, tuple[str, Path | None]]:
    """name -> (JQ_BENCH_PRIORITIES, code directory or None for the installed package)."""
    out: dict[str, tuple[str, Path | None]] = {"p0": ("zero", None), "prio": ("random", None)}
    if baseline is not None:
        out["base"] = ("zero", baseline)
    return out


def package_of(env: dict[str, str]) -> str:
    """Where ``trio_jobqueue`` is imported from under ``env`` (checked, not assumed)."""
    probe = "import trio_jobqueue, os; print(os.path.dirname(trio_jobqueue.__file__))"
    return subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,  # as the variants run (the current directory would come first)
    ).stdout.strip()


def run_variant(
    compare: Any,
    settings: Any,
    concurrency: int,
    backend: str,
    name: str,
    spec: tuple[str, Path | None],
    rnd: int,
) -> dict[str, float]:
    mode, code = spec
    sysdef = compare.SystemDef(name, name, "project", Path(__file__).name, backend)
    launcher = compare.Launcher(sysdef, settings, rnd)
    launcher.env["JQ_BENCH_PRIORITIES"] = mode
    launcher.env["JQ_BENCH_SEED"] = str(rnd + 1)
    # This checkout's package unless another is given (never the installed one).
    launcher.env["PYTHONPATH"] = os.pathsep.join([str(code or REPO), launcher.env["PYTHONPATH"]])
    n = settings.jobs
    queue_name = f"{name}-{rnd}"
    client = launcher.start("client")
    try:
        client.send(cmd="enqueue", queue=queue_name, jobs=n, inflight=100, prefix="j")
        seconds = client.expect("seconds", compare.drain_timeout(n))["seconds"]
        out = {"enqueue_100": n / seconds}
        out |= compare.drain(launcher, client, queue_name, concurrency, n)
    finally:
        if client.popen.poll() is None:
            client.send(cmd="exit")
            client.popen.wait(timeout=30)
        client.kill()
    return {k.replace(f"_c{concurrency}", ""): v for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    import compare  # not at the top: the adapter processes may run another version
    from scheduled_jobs import load_line, scratch_dir

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--backends", default="redis,memory", help="of redis,memory,file")
    parser.add_argument("--baseline", type=Path, help="a checkout of an older commit")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.baseline is not None and not (args.baseline / "trio_jobqueue").is_dir():
        parser.error(f"{args.baseline} holds no trio_jobqueue package")
    names = variants(args.baseline.resolve() if args.baseline else None)

    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    results: dict[str, list[dict[str, dict[str, float]]]] = {b: [] for b in backends}
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, commit {compare.git_commit()}, "
        f"trio_jobqueue/ fingerprint {compare.code_fingerprint()}, {os.cpu_count()} CPUs, "
        f"{args.jobs:,} jobs, concurrency {args.concurrency}, {args.rounds} round(s)"
    )
    env = dict(os.environ, PYTHONPATH=str(HERE))
    for name, (mode, code) in names.items():
        probe = dict(env, PYTHONPATH=os.pathsep.join([str(code or REPO), str(HERE)]))
        print(f"  {name}: priorities {mode}, trio_jobqueue from {package_of(probe)}")
    print(load_line("before"), flush=True)
    with scratch_dir("jq-priority-") as workdir, compare.redis_server(workdir) as (port, redis_pid):
        settings = compare.Settings(
            jobs=args.jobs, rr_requests=0, rr_budget=0.0, port=port, redis_pid=redis_pid,
            workdir=workdir, peers_python=None, node=None, node_modules="",
        )  # fmt: skip
        order = list(names)
        for rnd in range(args.rounds):
            turn = order[rnd % len(order) :] + order[: rnd % len(order)]
            for backend in backends:
                row: dict[str, dict[str, float]] = {}
                for name in turn:
                    compare.redis_command(port, "FLUSHALL")
                    row[name] = run_variant(
                        compare, settings, args.concurrency, backend, name, names[name], rnd
                    )
                results[backend].append(row)
                cells = ", ".join(
                    f"{n} {row[n]['drain']:,.0f}/s ({row[n]['cpu']:.0f} us)" for n in turn
                )
                print(
                    f"round {rnd + 1} {backend:<6} {cells}; load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
    print(load_line("after"))
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(
            "WARNING: the machine was not quiet before the run: drain rates swing; compare "
            "same-round ratios and the CPU per job, and re-run when it is quiet"
        )
    print(render(compare, results, list(names)))
    checks = []
    for backend, rows in results.items():
        ratio = compare.ratio_of(rows, "prio", "p0", "drain")
        if ratio is not None:
            checks.append(
                (ratio >= TARGET, f"{backend}: drain with random priorities / all 0 = {ratio:.3f}")
            )
        base = compare.ratio_of(rows, "prio", "base", "drain")
        if base is not None:
            checks.append(
                (base >= TARGET, f"{backend}: drain with random priorities / baseline = {base:.3f}")
            )
    print(f"targets (>= {TARGET:.2f}, medians of same-round ratios):")
    for ok, text in checks:
        print(f"  {'PASS' if ok else 'FAIL'} {text}")
    return 0 if all(ok for ok, _ in checks) else 1


METRICS = [
    ("enqueue_100", "enqueue, 100 in flight", "jobs/s", "{:,.0f}"),
    ("drain", "drain", "jobs/s", "{:,.0f}"),
    ("cpu", "worker CPU/job", "us", "{:,.1f}"),
    ("redis_cpu", "Redis CPU/job", "us", "{:,.1f}"),
    ("commands", "Redis commands/job", "calls", "{:,.2f}"),
    ("others_busy", "other processes' CPU", "%", "{:,.0f}"),
]
RATIOS = [("prio", "p0"), ("prio", "base"), ("p0", "base")]


def render(
    compare: Any, results: dict[str, list[dict[str, dict[str, float]]]], names: list[str]
) -> str:
    lines = []
    for backend, rows in results.items():
        lines += ["", f"{backend}: medians over {len(rows)} round(s)"]
        head = f"{'metric':<26}{'unit':>7}" + "".join(f"{n:>10}" for n in names)
        lines += [head, "-" * len(head)]
        for key, label, unit, fmt in METRICS:
            values = [compare.median_of(rows, n, key) for n in names]
            if all(v is None for v in values):
                continue
            cells = "".join(f"{'-' if v is None else fmt.format(v):>10}" for v in values)
            lines.append(f"{label:<26}{unit:>7}{cells}")
        for a, b in RATIOS:
            per_round = [r[a]["drain"] / r[b]["drain"] for r in rows if a in r and b in r]
            if per_round:
                spread = ", ".join(f"{x:.3f}" for x in per_round)
                lines.append(
                    f"drain {a}/{b}: {statistics.median(per_round):.3f} (rounds: {spread})"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("worker", "client"):
        adapter_main()
    else:
        sys.exit(main())
