"""Exposure ledger: one request's snapshot + record round trip, in-process vs Redis.

The Redis rows use a real redis-server started by the bench on a free localhost port (as the
tests do; needs redis-server on PATH). Rows:
  memory             InProcessLedger (the baseline of the ratios)
  redis              RedisLedger, one HGETALL + one script call per round trip
  redis stale<=50ms  RedisLedger(max_staleness_s=0.05): the snapshot mostly from the local mirror
  redis down         RedisLedger with the server killed: answered from the mirror, queued
Latency: median and p99 of single-thread round trips; "2x PING" is the floor of two Redis round
trips through the same client library, measured in the same run. Throughput: round trips per second summed
over `threads` threads running for a fixed time. "exact" checks, after the run (and after the
restarted server caught up, for "redis down"), that Redis holds exactly what was recorded.

    python -m benchmarks.bench_ledger [--quick]
"""

from __future__ import annotations

import threading
import time

import numpy as np

from benchmarks.common import bench_main, time_calls
from engine.ledger import InProcessLedger, RedisLedger
from testing.redis_server import RedisServer

COLUMNS = [("backend", "backend"), ("groups", "groups"), ("threads", "threads"),
           ("median_us", "round trip µs"), ("p99_us", "p99 µs"), ("floor_us", "2x PING µs"),
           ("over_memory", "× in-process"), ("throughput", "round trips/s"), ("exact", "exact")]

NS = "bench/new_sellers"


def _deltas(groups: int) -> dict[str, tuple[float, float]]:
    return {f"g{i}": (0.125, 0.25) for i in range(groups)}


def _round_trip(ledger, deltas):
    def call():
        ledger.snapshot(NS)
        ledger.record(NS, deltas)
    return call


def _throughput(ledger, deltas, threads: int, seconds: float) -> tuple[float, int]:
    stop = threading.Event()
    counts = [0] * threads

    def work(t: int) -> None:
        call, n = _round_trip(ledger, deltas), 0
        while not stop.is_set():
            call()
            n += 1
        counts[t] = n

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for th in pool:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in pool:
        th.join()
    return sum(counts) / (time.perf_counter() - t0), sum(counts)


def _exact(snapshot, calls: int, groups: int) -> bool:
    return snapshot == {f"g{i}": (0.125 * calls, 0.25 * calls) for i in range(groups)}


def _measure(name: str, make, groups: int, threads_list, reps: int, seconds: float,
             before_check=None) -> list[dict]:
    rows = []
    deltas = _deltas(groups)
    for threads in threads_list:
        ledger = make()
        lat = time_calls(_round_trip(ledger, deltas), reps, warmup=20)
        tput, calls = _throughput(ledger, deltas, threads, seconds)
        if before_check is not None:
            before_check(ledger)
        total = reps + 20 + calls
        exact = _exact(ledger.snapshot(NS), total, groups)
        ledger.close()
        rows.append(dict(backend=name, groups=groups, threads=threads,
                         median_us=float(np.median(lat)), p99_us=float(np.percentile(lat, 99)),
                         throughput=tput, exact=exact))
    return rows


def run(quick: bool = False) -> list[dict]:
    reps = 300 if quick else 3000
    seconds = 0.3 if quick else 2.0
    threads_list = (1, 8)
    rows: list[dict] = []
    with RedisServer() as server:
        def fresh(**options) -> RedisLedger:
            import redis

            server.start()
            with redis.Redis.from_url(server.url) as client:
                client.flushdb()  # each row starts from an empty ledger
            return RedisLedger(server.url, **options)

        def down() -> RedisLedger:
            ledger = fresh(retry_interval_s=0.05)
            server.kill()
            ledger.snapshot(NS)  # the first failing call starts the outage
            return ledger

        def restart_and_catch_up(ledger: RedisLedger) -> None:
            server.start()
            deadline = time.monotonic() + 10
            while not (ledger.healthy and ledger.stats.pending == 0) and time.monotonic() < deadline:
                time.sleep(0.01)

        import redis

        with redis.Redis.from_url(server.url) as client:
            floor = 2 * float(np.median(time_calls(client.ping, reps)))
        for groups in (2, 20):
            memory = _measure("memory", InProcessLedger, groups, threads_list, reps, seconds)
            base = memory[0]["median_us"]
            rows += memory
            rows += _measure("redis", fresh, groups, threads_list, reps, seconds)
            rows += _measure("redis stale<=50ms", lambda: fresh(max_staleness_s=0.05), groups,
                             threads_list, reps, seconds)
            rows += _measure("redis down", down, groups, (1,), reps, seconds,
                             before_check=restart_and_catch_up)
            for row in rows:
                if row["groups"] == groups:
                    row["over_memory"] = row["median_us"] / base
                    if row["backend"] in ("redis", "redis stale<=50ms"):
                        row["floor_us"] = floor
    return rows


def main() -> None:
    bench_main("ledger", "Ledger snapshot + record round trip (medians)", run, COLUMNS, __doc__)


if __name__ == "__main__":
    main()
