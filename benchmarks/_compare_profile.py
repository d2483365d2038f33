"""Where the trio-jobqueue Redis worker spends its CPU: py-spy over one drain.

    pip install py-spy          # not a project dependency
    python benchmarks/_compare_profile.py [--jobs 20000] [--concurrency 100] [--out DIR]

Starts a private redis-server (like ``compare.py``), enqueues ``--jobs`` no-op jobs, then
drains them with the worker of ``_compare_jq.py`` running under ``py-spy record`` (raw
collapsed stacks; ``--gil``: only samples of a thread holding the GIL, i.e. running Python
code, so waiting in epoll or in a syscall that releases the GIL is not counted). Prints the
worker's CPU per job split into user and system (kernel: mostly socket syscalls) time, and a
breakdown of the samples:

* by *layer*: the innermost frame that belongs to a known package (trio core, trio-asyncio,
  asyncio, redis-py, hiredis, trio_jobqueue's worker / storage / serializer, attrs, ...);
* by *operation*: the outermost worker frame of the stack (claim loop, per-job task,
  heartbeats, pub/sub reader). redis-py's coroutines run in asyncio tasks that
  trio-asyncio's loop drives, whose stacks do not show the trio caller: they are counted
  as "asyncio loop";
* the top self-time functions.

``--out`` keeps the raw stacks (``worker.txt``) for flame graphs (``speedscope``, inferno).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import compare

# (substring of a frame's file path, layer name); first match from the innermost frame wins
LAYERS = [
    ("trio_jobqueue/storage/_redis_adapter", "jq: redis adapter (trio<->asyncio glue)"),
    ("trio_jobqueue/storage/_redis_trio", "jq: trio-native Redis client (pack, calls, replies)"),
    ("trio_jobqueue/storage/_redis_common", "jq: RedisStorage (args, replies, pub/sub parsing)"),
    ("trio_jobqueue/storage/redis", "jq: RedisStorage (args, replies, pub/sub parsing)"),
    ("trio_jobqueue/storage/_redis_keys", "jq: RedisStorage (args, replies, pub/sub parsing)"),
    ("trio_jobqueue/_worker", "jq: worker (claim loop, per-job task, settle)"),
    ("trio_jobqueue/_serde", "jq: serializer"),
    ("trio_jobqueue/_reaper", "jq: reaper"),
    ("trio_jobqueue/", "jq: other"),
    ("_compare_", "benchmark harness"),
    ("<frozen importlib", "imports (start-up, not per job)"),
    ("attr/_make", "imports (start-up, not per job)"),
    ("trio_asyncio/", "trio-asyncio bridge"),
    ("redis/_parsers", "redis-py: reply parsing (hiredis wrapper)"),
    ("redis/asyncio/connection", "redis-py: connection (pack, send, read)"),
    ("redis/asyncio/client", "redis-py: client (execute_command, pool)"),
    ("redis/asyncio/", "redis-py: other asyncio"),
    ("redis/", "redis-py: other"),
    ("hiredis", "hiredis"),
    ("asyncio/", "asyncio (futures, streams, selector loop)"),
    ("trio/_core/_run", "trio: scheduler"),
    ("trio/_core/_io", "trio: I/O (epoll)"),
    ("trio/", "trio: other"),
    ("outcome/", "trio: other"),
    ("sniffio/", "trio: other"),
    ("attr/", "attrs"),
    ("attrs/", "attrs"),
    ("json/", "json"),
    ("selectors", "asyncio (futures, streams, selector loop)"),
    ("socket", "socket"),
    ("contextlib", "contextlib"),
    ("threading", "threads"),
]

# (function name as py-spy prints it, file substring, operation); outermost match wins so
# the operation is the storage call a sample serves.
OPERATIONS = [
    ("_read_pubsub", "_redis_adapter", "pub/sub reader (receive + parse + dispatch events)"),
    ("_heartbeat_loop", "_worker", "heartbeats (lease renewal)"),
    ("_claim_loop", "_worker", "claim (claim loop + claim script)"),
    ("_settle", "_worker", "settle (complete script)"),
    ("_execute", "_worker", "run handler (decode payload, Job, call)"),
    ("_run_job", "_worker", "per-job task (spawn, scopes, bookkeeping)"),
    ("run", "_reaper", "reaper"),
]


def user_system(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / compare.CLK_TCK, int(fields[12]) / compare.CLK_TCK


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for needle, layer in LAYERS:
            if needle in frame:
                return layer
    return "other: " + (frames[-1] if frames else "?")


def operation_of(frames: list[str]) -> str:
    for frame in frames:  # outermost first
        for func, where, op in OPERATIONS:
            name = frame.split(" (", 1)[0]
            if (name == func or name.endswith("." + func)) and where in frame:
                return op
    if any("trio_asyncio" in f for f in frames) or any("asyncio/" in f for f in frames):
        return "asyncio loop outside a jq call (callbacks, selector)"
    if any("trio/_core/_run" in f for f in frames):
        return "trio scheduler (between tasks)"
    return "other"


def summarize(raw: Path, jobs: int, top: int = 25) -> str:
    layers: collections.Counter[str] = collections.Counter()
    ops: collections.Counter[str] = collections.Counter()
    selfs: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        # drop the thread/process header frames py-spy may add
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        total += n
        layers[layer_of(frames)] += n
        ops[operation_of(frames)] += n
        selfs[frames[-1] if frames else "?"] += n
    out = [f"{total} samples holding the GIL over {jobs:,} jobs", ""]
    out += ["by layer (innermost known frame):"]
    out += [f"  {n / total * 100:5.1f}%  {name}" for name, n in layers.most_common()]
    out += ["", "by operation (outermost worker/storage frame):"]
    out += [f"  {n / total * 100:5.1f}%  {name}" for name, n in ops.most_common()]
    out += ["", f"top {top} functions by self time:"]
    out += [f"  {n / total * 100:5.1f}%  {name}" for name, n in selfs.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, help="keep the raw stacks in this directory")
    parser.add_argument("--summarize", type=Path, help="only summarize an existing raw file")
    parser.add_argument(
        "--code",
        type=Path,
        help="a directory holding the trio_jobqueue package to profile instead of the "
        "installed one (e.g. `git archive <commit> trio_jobqueue | tar -x -C DIR`)",
    )
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize, args.jobs))
        return 0
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="jq-profile-"))
    out = args.out or workdir
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "worker.txt"
    try:
        with compare.redis_server(workdir) as (port, redis_pid):
            url = f"redis://127.0.0.1:{port}/0"
            path = [str(args.code)] if args.code else []
            env = dict(compare.os.environ, PYTHONPATH=":".join([*path, str(compare.HERE)]))
            script = str(compare.HERE / "_compare_jq.py")
            client = compare.Proc(
                [sys.executable, script, "client", "--url", url],
                env=env,
                logdir=workdir,
                tag="client",
            )
            try:
                client.expect("ready", 60)
                client.send(cmd="enqueue", queue="prof", jobs=args.jobs, inflight=100, prefix="p")
                client.expect("seconds", compare.drain_timeout(args.jobs))
            finally:
                client.send(cmd="exit")
                client.kill()
            worker = compare.Proc(
                [
                    *(pyspy, "record", "--rate", str(args.rate), "--format", "raw"),
                    *("--full-filenames", "--nonblocking", "--gil", "--output", str(raw), "--"),
                    *(sys.executable, script, "worker", "--url", url, "--queue", "prof"),
                    *("--concurrency", str(args.concurrency)),
                ],
                env=env,
                logdir=workdir,
                tag="worker",
            )  # fmt: skip
            try:
                worker.expect("ready", 60)
                # py-spy is the child; the worker is its child
                pid = int(
                    subprocess.run(
                        ["pgrep", "-P", str(worker.pid)], capture_output=True, text=True,
                        timeout=10, check=False,
                    ).stdout.split()[0]
                )  # fmt: skip
                user0, sys0 = user_system(pid)
                redis0 = compare.proc_cpu(redis_pid)
                worker.send(cmd="go", jobs=args.jobs)
                done = worker.expect("done", compare.drain_timeout(args.jobs))
                user1, sys1 = user_system(pid)
                user, system = user1 - user0, sys1 - sys0
                redis_cpu = compare.proc_cpu(redis_pid) - redis0
                worker.send(cmd="stop")
                worker.expect("stopped", 60)
                deadline = time.monotonic() + 60
                while worker.popen.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                worker.kill()
        per_job = 1e6 / args.jobs
        print(
            f"drain c{args.concurrency}: {args.jobs / done['done']:,.0f} jobs/s under py-spy "
            f"(rate {args.rate}/s); worker CPU {(user + system) * per_job:.0f} us/job "
            f"({user * per_job:.0f} user + {system * per_job:.0f} system), Redis "
            f"{redis_cpu * per_job:.0f} us/job"
        )
        print(summarize(raw, args.jobs))
        if args.out:
            print(f"\nraw stacks: {raw}")
    finally:
        if not args.out:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
