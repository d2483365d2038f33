"""Redis Cluster against one Redis: what routing costs, and the Redis CPU per job per shard.

    python benchmarks/redis_cluster.py [--jobs 4000] [--requests 500] [--rounds 3]

Starts a private ``redis-server`` (no persistence) and a local 3-master/3-replica cluster
(the test fixtures' ``ClusterNodes``), then, in each round and in alternating order:

* **request/response**: one caller runs ``--requests`` ``enqueue_and_wait`` calls one
  after the other against a worker (concurrency 10) in the same process: p50/p95
  latency, and the client process's CPU per request (caller and worker together);
* **drain**: ``--jobs`` no-op jobs enqueued over 8 queue names (spread over the three
  shards on the cluster), then drained by ``--processes`` worker processes (2), each
  serving the 8 names (concurrency 10 each): jobs/s from "go" to the last completion,
  and Redis CPU per job (``INFO cpu`` user + sys deltas of every master, summed, and per
  shard).

The client process is the same for both, so the ratios show what the cluster path costs
the client; the per-shard CPU is the figure that carries to machines with more cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures_cluster import ClusterNodes, node_command
from fixtures_redis import RedisServer, require_redis_server

import trio_jobqueue as jq

NAMES = [f"bench{i}" for i in range(8)]


def cpu(port: int) -> float:
    info = node_command(port, "INFO", "cpu")
    fields = dict(
        line.split(":", 1) for line in info.splitlines() if ":" in line and not line.startswith("#")
    )
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


async def handler(job: jq.Job[int]) -> int:
    return job.payload


async def request_response(url: str, n: int) -> tuple[list[float], float]:
    storage = jq.storage_from_url(with_prefix(url, f"rr{uuid.uuid4().hex[:6]}"))
    latencies = []
    async with storage, jq.open_queue(storage, handler, name="rr", concurrency=10) as queue:
        await queue.enqueue_and_wait("warm-up", 0, timeout=10)
        cpu_start = time.process_time()
        for i in range(n):
            start = time.perf_counter()
            await queue.enqueue_and_wait(f"r{i}", i, timeout=10)
            latencies.append(time.perf_counter() - start)
        client_cpu = (time.process_time() - cpu_start) / n
    return latencies, client_cpu


async def serve(url: str) -> None:
    """A worker process: after "go" on stdin, 8 queues (concurrency 10 each) until killed."""
    await trio.to_thread.run_sync(sys.stdin.readline)
    storage = jq.storage_from_url(url)
    async with storage, trio.open_nursery() as nursery:
        for name in NAMES:

            async def consume(name: str = name) -> None:
                async with jq.open_queue(storage, handler, name=name, concurrency=10):
                    await trio.sleep_forever()

            nursery.start_soon(consume)


def with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}key_prefix={prefix}"


async def drain(url: str, n: int, ports: list[int], processes: int) -> tuple[float, list[float]]:
    """Enqueue ``n`` jobs over the 8 names, then drain them with ``processes`` worker
    processes: jobs/s from "go" to the last completion, Redis CPU per job per node."""
    url = with_prefix(url, f"dr{uuid.uuid4().hex[:6]}")
    per_name = n // len(NAMES)
    total = per_name * len(NAMES)
    storage = jq.storage_from_url(url)
    async with storage:
        async with trio.open_nursery() as nursery:
            for name in NAMES:

                async def produce(name: str = name) -> None:
                    async with jq.open_queue(storage, name=name) as producer:
                        for i in range(per_name):
                            await producer.enqueue(f"{name}-{i}", i)

                nursery.start_soon(produce)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        workers = [
            subprocess.Popen(  # noqa: ASYNC220 - two spawns before the measured part
                [sys.executable, __file__, "--serve", url],
                stdin=subprocess.PIPE,
                env=env,
            )
            for _ in range(processes)
        ]
        try:
            await trio.sleep(2.0)  # imports done; the workers wait for "go"
            before = [cpu(port) for port in ports]
            start = time.perf_counter()
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(b"go\n")
                worker.stdin.flush()
            while True:
                done = 0
                for name in NAMES:
                    done += (await storage.stats(name)).completed
                if done >= total:
                    break
                await trio.sleep(0.02)
            elapsed = time.perf_counter() - start
            after = [cpu(port) for port in ports]
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
    per_shard = [(a - b) / total * 1e6 for a, b in zip(after, before, strict=True)]
    return total / elapsed, per_shard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="worker processes of the drain")
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.serve)
        return
    print("load before:", os.getloadavg())
    single = RedisServer(require_redis_server())
    single.start()
    cluster = ClusterNodes()
    cluster.start()
    masters = [node.port for node in cluster.nodes if cluster.is_master(node)]
    results: dict[str, dict[str, list[float]]] = {"single": {}, "cluster": {}}
    try:
        for round_ in range(args.rounds):
            order = [("single", single.url, [single.port]), ("cluster", cluster.url, masters)]
            if round_ % 2:
                order.reverse()
            for label, url, ports in order:
                lat, client_cpu = trio.run(request_response, url, args.requests)
                rate, per_shard = trio.run(drain, url, args.jobs, ports, args.processes)
                got = results[label]
                got.setdefault("p50_us", []).append(statistics.median(lat) * 1e6)
                got.setdefault("p95_us", []).append(statistics.quantiles(lat, n=20)[18] * 1e6)
                got.setdefault("client_cpu_us_per_request", []).append(client_cpu * 1e6)
                got.setdefault("drain_jobs_s", []).append(rate)
                got.setdefault("redis_cpu_us_per_job", []).append(sum(per_shard))
                got.setdefault("max_shard_cpu_us_per_job", []).append(max(per_shard))
                print(
                    f"round {round_} {label}: p50 {got['p50_us'][-1]:.0f} us, "
                    f"drain {rate:.0f} jobs/s, Redis CPU/job {sum(per_shard):.1f} us "
                    f"(per shard {', '.join(f'{c:.1f}' for c in per_shard)})"
                )
    finally:
        cluster.cleanup()
        single.cleanup()
    print("medians over the rounds:")
    for metric in results["single"]:
        s = statistics.median(results["single"][metric])
        c = statistics.median(results["cluster"][metric])
        print(f"  {metric:26s} single {s:10.1f}  cluster {c:10.1f}  cluster/single {c / s:.2f}")
    print("load after:", os.getloadavg())
    subprocess.run(["uptime"], check=False)


if __name__ == "__main__":
    main()
