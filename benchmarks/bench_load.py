"""Rerank under load: closed and open loop against the real server and an echo floor, plus a soak.

Processes (all on 127.0.0.1, every run bounded in time and in-flight count):
- the real server: `reranker serve --address 127.0.0.1:<free port> --policies <tmp>` with
  bench_grpc's `bench_feed` policy (3 attributes, 3 rules, greedy) at K=20, a subprocess, used
  once it reports gRPC health SERVING; `--processes P` for P in (1, 2) when the CLI has it;
- the echo floor: `benchmarks.echo_server`, another subprocess, answering every request with a
  canned real response of the same candidate count (same payloads both ways, no work);
- the client: this process, CLIENT_CONNECTIONS grpc.aio channels (TCP connections) per server,
  used round-robin; SO_REUSEPORT balances connections, not calls, and at random, so against
  several worker processes the connections are picked to be spread evenly over them
  (`_channels`: each worker gets CLIENT_CONNECTIONS / P); requests pre-serialised once
  (bench_grpc.make_request, dictionary-encoded, N in {200, 1000}, 3 score columns), responses
  not deserialised (status only), so the client spends as little CPU as it can. On a 2-core
  machine the client still shares the cores with the server: the figures are a lower bound.

Modes, for the server and then the echo at the same point:
- closed loop: C in {1, 4, 16, 64} coroutines, each with one call in flight;
- open loop: Poisson arrivals at fixed rates, fractions of the server's best closed-loop
  throughput for that N (up to and beyond saturation);
  latency is from the issue of each call (the client's timer lag after the schedule is reported
  apart, `send_lag_p99_ms`); arrivals never wait for responses, so queueing behind a saturated
  server counts; at most MAX_IN_FLIGHT calls outstanding, arrivals beyond that count as `dropped`.
- soak (`--soak SECONDS`): open loop at 70 % of the best N=1000 throughput, in 10 s windows,
  with the resident memory (VmRSS from /proc) of the server process and its children sampled
  every 2 s; RSS at idle after warm-up, after the soak, and the growth.

The machine's 1-minute load average is recorded with every point (`loadavg_1m`): anything else
running on the same cores (tests, builds) shows there and inflates both the server's and the
echo's tails.

    python -m benchmarks.bench_load [--quick] [--soak SECONDS] [--duration SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from testing.processes import stop  # noqa: F401 - re-exported for the other benchmarks
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.bench_grpc import ECHO_METHOD, POLICY, make_request
from benchmarks.common import markdown_table, print_table, save
from server._gen.reranker.v1 import reranker_pb2 as pb
from server.app import DEFAULT_MAX_MESSAGE_BYTES
from server.servicer import WORKER_PID_METADATA_KEY

ROOT = Path(__file__).resolve().parent.parent
RERANKER = Path(sys.executable).parent / "reranker"
PLOT = Path(__file__).parent / "latency_vs_load.png"
K = 20
SIZES = (200, 1000)
CONCURRENCY = (1, 4, 16, 64)
RATE_FRACTIONS = (0.1, 0.25, 0.5, 0.7, 0.9, 1.0, 1.2)
RATE_FRACTIONS_QUICK = (0.25, 0.5, 0.9, 1.2)
MAX_IN_FLIGHT = 2000
CLIENT_CONNECTIONS = 8  # per server; calls go round-robin over them
CALL_TIMEOUT_S = 10.0
SOAK_FRACTION = 0.7
SOAK_WINDOW_S = 10.0
RSS_EVERY_S = 2.0
RERANK_METHOD = "/reranker.v1.Reranker/Rerank"
RERANK_BATCH_METHOD = "/reranker.v1.Reranker/RerankBatch"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES)]
# Targets of issue 5 (2 cores, greedy policy, N=1000).
TARGET_RPS, TARGET_P99_MS, TARGET_P50_RATIO, TARGET_RSS_MB = 1500.0, 3.0, 2.0, 400.0

COLUMNS = [("server", "server"), ("processes", "processes"), ("n", "N"), ("mode", "mode"),
           ("concurrency", "C"), ("offered_rps", "offered req/s"), ("throughput_rps", "req/s"),
           ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
           ("calls", "calls"), ("errors", "errors"), ("error_codes", "error codes"),
           ("dropped", "dropped"),
           ("send_lag_p99_ms", "client send lag p99 ms"), ("loadavg_1m", "load avg 1 min")]
SOAK_COLUMNS = [("window", "window"), ("t_end_s", "t s"), ("offered_rps", "offered req/s"),
                ("throughput_rps", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                ("max_ms", "max ms"), ("errors", "errors"), ("rss_mb", "RSS MB per process"),
                ("loadavg_1m", "load avg 1 min")]


# ---------------------------------------------------------------- processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_help() -> str:
    return subprocess.run([str(RERANKER), "serve", "--help"], capture_output=True, text=True,
                          timeout=60, check=False).stdout


def has_processes_flag() -> bool:
    """Whether this checkout's `reranker serve` has multi-process serving."""
    return "--processes" in _serve_help()


def _wait_serving(address: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before SERVING")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"server at {address} not SERVING after {timeout_s:.0f} s")


def start_server(policies: Path, processes: int | None, metrics_port: int = 0) -> tuple[subprocess.Popen, str]:
    """`reranker serve` on a free port, SERVING; `metrics_port` 0: any free one."""
    address = f"127.0.0.1:{_free_port()}"
    cmd = [str(RERANKER), "serve", "--address", address, "--policies", str(policies),
           "--log-level", "WARNING"]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    if "--metrics-port" in _serve_help():  # any free port: never collide with another server's
        cmd += ["--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_serving(address, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, address


def start_echo(responses: Path, raw: bool = False, threads: int | None = None,
               busy_us: float = 0.0) -> tuple[subprocess.Popen, str]:
    """The echo server subprocess (`benchmarks.echo_server`; `raw`: the raw-bytes echo; `threads`:
    its handler threads, default echo_server's; `busy_us`: the raw echo works that long a call)."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.echo_server", "--responses",
                             str(responses), *(["--raw"] if raw else []),
                             *(["--threads", str(threads)] if threads else []),
                             *(["--busy-us", str(busy_us)] if busy_us else [])], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"127.0.0.1:{port}"




def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_tree_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by `pid` and its descendants, by pid: shows
    how evenly the server processes shared the load."""
    out, todo, tick = {}, [pid], os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
        todo += _children(p)
    return out


def rss_tree_mb(pid: int) -> dict[int, float]:
    """VmRSS in MiB of `pid` and all its descendants, by pid."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        rss = _rss_mb(p)
        if rss is not None:
            out[p] = rss
        todo += _children(p)
    return out


# ---------------------------------------------------------------- load generation

def _stats(lat_s: list[float], elapsed_s: float) -> dict:
    a = np.asarray(lat_s) * 1e3
    if a.size == 0:
        return {"throughput_rps": 0.0, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                "max_ms": None}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"throughput_rps": a.size / elapsed_s, "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99), "max_ms": float(a.max())}


def _codes(codes: collections.Counter) -> str | None:
    return ", ".join(f"{k} {v}" for k, v in codes.most_common()) or None


async def closed_loop(call, payload: bytes, concurrency: int, duration_s: float) -> dict:
    """`concurrency` coroutines, each one call in flight, until `duration_s` has passed."""
    lat, errors, codes = [], 0, collections.Counter()
    perf = time.perf_counter
    t_start = perf()
    t_end = t_start + duration_s

    async def worker():
        nonlocal errors
        while perf() < t_end:
            t0 = perf()
            try:
                await call(payload, timeout=CALL_TIMEOUT_S)
                lat.append(perf() - t0)
            except grpc.RpcError as e:
                errors += 1
                codes[e.code().name] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = perf() - t_start
    return {"mode": "closed", "concurrency": concurrency, "offered_rps": None,
            "calls": len(lat) + errors, "errors": errors, "dropped": 0,
            "error_codes": _codes(codes), **_stats(lat, elapsed)}


async def open_loop(call, payload: bytes, rate: float, duration_s: float, seed: int = 0,
                    on_window=None, window_s: float | None = None) -> dict:
    """Poisson arrivals at `rate` per second for `duration_s`.

    Latency is from the moment the call is issued: asyncio's timer (epoll, 1 ms resolution) issues
    calls up to ~1 ms after their scheduled time, and counting that would put a client artefact into
    both the server's and the echo's figures; the lag (scheduled -> issued) is reported apart as
    `send_lag_p99_ms`. The schedule never waits for responses, so a slow server still meets a
    growing queue (no coordinated omission).

    With `on_window`, every `window_s` seconds the window's figures (by completion time) are passed
    to `on_window(dict)`; the returned figures cover the whole run."""
    rng = np.random.default_rng(seed)
    perf = time.perf_counter
    lat, done_at, lag, errors, dropped, in_flight = [], [], [], 0, 0, 0
    err_at: list[float] = []
    codes = collections.Counter()
    tasks: set[asyncio.Task] = set()

    async def one(t_sched: float):
        nonlocal errors, in_flight
        t_send = perf()
        lag.append(t_send - t_sched)
        try:
            await call(payload, timeout=CALL_TIMEOUT_S)
            now = perf()
            lat.append(now - t_send)
            done_at.append(now)
        except grpc.RpcError as e:
            errors += 1
            codes[e.code().name] += 1
            err_at.append(perf())
        finally:
            in_flight -= 1

    t_start = perf()
    t_end = t_start + duration_s
    t_next = t_start + rng.exponential(1.0 / rate)
    sent = 0
    while t_next < t_end:
        now = perf()
        if t_next > now:
            await asyncio.sleep(t_next - now)
        now = perf()
        while t_next <= now and t_next < t_end:
            sent += 1
            if in_flight >= MAX_IN_FLIGHT:
                dropped += 1
            else:
                in_flight += 1
                task = asyncio.create_task(one(t_next))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            t_next += rng.exponential(1.0 / rate)
    if tasks:
        await asyncio.wait(set(tasks), timeout=CALL_TIMEOUT_S + 1)
    elapsed = max(perf(), t_end) - t_start
    row = {"mode": "open", "concurrency": None, "offered_rps": rate, "calls": sent,
           "errors": errors, "error_codes": _codes(codes), "dropped": dropped,
           **_stats(lat, elapsed),
           "send_lag_p99_ms": float(np.percentile(lag, 99) * 1e3) if lag else None}
    if on_window is not None:
        lat_a, done_a, err_a = np.asarray(lat), np.asarray(done_at), np.asarray(err_at)
        edges = np.arange(t_start, t_end + 1e-9, window_s)
        if edges[-1] < t_end - 1e-9:
            edges = np.append(edges, t_end)
        for i, (a, b) in enumerate(itertools.pairwise(edges)):
            last = i == len(edges) - 2
            sel = (done_a >= a) & ((done_a < b) | last)
            errs = int(((err_a >= a) & ((err_a < b) | last)).sum()) if err_a.size else 0
            on_window({"window": i, "t_end_s": float(b - t_start), "offered_rps": rate,
                       "errors": errs, **_stats(list(lat_a[sel]), b - a)})
        row["dropped"] = dropped
    return row


def _stub(channel: grpc.aio.Channel, method: str):
    # bytes in, bytes out: the request is serialised once, the response is not parsed.
    return channel.unary_unary(method)


def _channel(address: str, i: int) -> grpc.aio.Channel:
    """A channel with its own TCP connection: grpc channels with the same arguments to the same
    address otherwise share one connection (the global subchannel pool)."""
    return grpc.aio.insecure_channel(address, options=[
        *CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1), ("bench.connection", i)])


async def _worker_pid(channel: grpc.aio.Channel) -> int | None:
    """The pid of the server process behind this connection: an empty RerankBatch (no work)
    answers with x-worker-pid in its trailing metadata; None if the server does not say."""
    call = channel.unary_unary(RERANK_BATCH_METHOD)(b"", timeout=CALL_TIMEOUT_S)
    await call
    pid = dict(await call.trailing_metadata() or ()).get(WORKER_PID_METADATA_KEY)
    return int(pid) if pid is not None else None


async def _channels(address: str, workers: int = 1) -> list[grpc.aio.Channel]:
    """CLIENT_CONNECTIONS channels, each its own TCP connection, spread evenly over `workers`
    server processes.

    SO_REUSEPORT gives each *connection* to a worker at random (a hash of its addresses and
    ports) and it stays there, so a few connections split unevenly: of 8 fresh connections to
    2 workers, 6:2 or worse about 3 times in 10 (measured: 13 of 64). The soak opens a new set
    at 70 % of the 2-worker maximum: with 6:2 one worker is offered 1.05x what it can serve, and
    the queue grows until the client drops. So with several workers, connect, ask each
    connection which worker it reached, and keep CLIENT_CONNECTIONS / workers per worker
    (surplus connections are closed)."""
    if workers <= 1:
        return [_channel(address, i) for i in range(CLIENT_CONNECTIONS)]
    per_worker = max(CLIENT_CONNECTIONS // workers, 1)
    kept: dict[int, list[grpc.aio.Channel]] = collections.defaultdict(list)
    for i in range(CLIENT_CONNECTIONS * 16):  # a 2-worker split needs ~2x as many tries
        channel = _channel(address, i)
        pid = await _worker_pid(channel)
        if pid is None:
            raise RuntimeError(f"{address}: no {WORKER_PID_METADATA_KEY} metadata to spread by")
        if len(kept[pid]) < per_worker:
            kept[pid].append(channel)
        else:
            await channel.close()
        if len(kept) == workers and all(len(c) == per_worker for c in kept.values()):
            # interleaved, so that round-robin alternates workers
            return [c for group in zip(*kept.values()) for c in group]
    for group in kept.values():
        for channel in group:
            await channel.close()
    raise RuntimeError(f"{address}: could not reach {workers} workers with {per_worker} "
                       f"connections each: {({p: len(c) for p, c in kept.items()})}")


def _round_robin(channels: list[grpc.aio.Channel], method: str):
    stubs = itertools.cycle([_stub(ch, method) for ch in channels])
    return lambda payload, timeout: next(stubs)(payload, timeout=timeout)


# ---------------------------------------------------------------- the run

def _prepare(tmp: Path, bound: str = "lagrangian") -> tuple[Path, Path, dict[int, bytes]]:
    """`bound`: the policy's solver.bound (the greedy answer's certificate: the Lagrangian bound,
    the default, or the sort bound, which costs almost nothing and certifies less)."""
    policies = tmp / "policies"
    policies.mkdir()
    policy = POLICY.replace("slate_size: 50", f"slate_size: {K}")
    if bound != "lagrangian":
        policy = policy.replace("  budget_ms: 10\n", f"  budget_ms: 10\n  bound: {bound}\n")
        assert f"bound: {bound}" in policy
    (policies / "bench_feed.yaml").write_text(policy)
    payloads = {}
    for n in SIZES:
        req = make_request("dictionary", n=n)
        req.slate_size = K
        payloads[n] = req.SerializeToString()
    return policies, tmp / "responses", payloads


def _canned_responses(address: str, payloads: dict[int, bytes], folder: Path) -> dict[int, int]:
    """Real responses, one per N, for the echo to send back; returns their sizes."""
    folder.mkdir(exist_ok=True)
    sizes = {}
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        call = ch.unary_unary(RERANK_METHOD)
        for n, payload in payloads.items():
            raw = call(payload, timeout=CALL_TIMEOUT_S)
            pb.RerankResponse.FromString(raw)  # a real response, or raise
            (folder / f"response_{n}.bin").write_bytes(raw)
            sizes[n] = len(raw)
    return sizes


async def _warm(call, payload: bytes, seconds: float) -> None:
    await closed_loop(call, payload, 4, seconds)


async def _sweep(addresses: dict[str, str], payloads: dict[int, bytes], processes: int,
                 quick: bool, duration_s: float, log) -> list[dict]:
    rows = []
    fractions = RATE_FRACTIONS_QUICK if quick else RATE_FRACTIONS
    channels = {"rerank": await _channels(addresses["rerank"], processes),
                "echo": await _channels(addresses["echo"])}
    calls = {"rerank": _round_robin(channels["rerank"], RERANK_METHOD),
             "echo": _round_robin(channels["echo"], ECHO_METHOD)}
    try:
        for n in SIZES:
            payload = payloads[n]
            for call in calls.values():
                await _warm(call, payload, 1.0 if quick else 3.0)
            best = {}
            for c in CONCURRENCY:
                for name, call in calls.items():
                    row = {"server": name, "processes": processes, "n": n,
                           **await closed_loop(call, payload, c, duration_s),
                           "loadavg_1m": os.getloadavg()[0]}
                    rows.append(row)
                    best[name] = max(best.get(name, 0.0), row["throughput_rps"])
                    log(row)
            for f in fractions:
                rate = f * best["rerank"]
                for name, call in calls.items():
                    row = {"server": name, "processes": processes, "n": n, "rate_fraction": f,
                           **await open_loop(call, payload, rate, duration_s, seed=int(1000 * f)),
                           "loadavg_1m": os.getloadavg()[0]}
                    rows.append(row)
                    log(row)
    finally:
        for chs in channels.values():
            for ch in chs:
                await ch.close()
    return rows


async def _soak(address: str, payload: bytes, rate: float, seconds: float, pid: int,
                log, processes: int = 1) -> tuple[dict, list[dict], list[dict]]:
    channels = await _channels(address, processes)
    call = _round_robin(channels, RERANK_METHOD)
    windows, rss = [], []
    t0 = time.monotonic()

    async def sample():
        while True:
            rss.append({"t_s": time.monotonic() - t0, "rss_mb": rss_tree_mb(pid),
                        "loadavg_1m": os.getloadavg()[0]})
            await asyncio.sleep(RSS_EVERY_S)

    sampler = asyncio.create_task(sample())

    def on_window(w):
        windows.append(w)

    try:
        total = await open_loop(call, payload, rate, seconds, seed=7, on_window=on_window,
                                window_s=SOAK_WINDOW_S)
    finally:
        sampler.cancel()
        for ch in channels:
            await ch.close()
    for w in windows:  # the RSS sample nearest each window's end
        near = min(rss, key=lambda s: abs(s["t_s"] - w["t_end_s"]))
        w["rss_mb"] = " / ".join(f"{v:.0f}" for v in near["rss_mb"].values())
        w["loadavg_1m"] = near["loadavg_1m"]
        log(w)
    return total, windows, rss


def run_all(quick: bool = False, soak_s: float = 0.0, duration_s: float | None = None,
            processes: tuple[int, ...] | None = None, plot: bool = True, log=print,
            bound: str = "lagrangian") -> dict:
    """Everything; returns {"rows", "soak", "meta", "targets"}."""
    duration_s = duration_s or (2.0 if quick else 10.0)
    multi = has_processes_flag()
    if processes is None:
        processes = (1, 2) if multi else (1,)
    rows, soak, meta = [], None, {
        "quick": quick, "duration_s": duration_s, "k": K, "sizes": SIZES,
        "concurrency": CONCURRENCY, "processes_flag": multi, "processes": processes,
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "client": "grpc.aio, 1 process (this one), pre-serialised requests, responses unparsed",
        "policy": f"bench_feed (max_count + min_count within_top + window, greedy), K=20, solver.bound {bound}",
    }
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        policies, responses, payloads = _prepare(tmp, bound)
        meta["request_bytes"] = {n: len(p) for n, p in payloads.items()}
        echo = None
        try:
            for p in processes:
                server, address = start_server(policies, p if multi else None)
                try:
                    if echo is None:
                        meta["response_bytes"] = _canned_responses(address, payloads, responses)
                        echo, echo_address = start_echo(responses)
                    cpu0 = cpu_tree_s(server.pid)
                    rows += asyncio.run(_sweep({"rerank": address, "echo": echo_address},
                                               payloads, p, quick, duration_s, log))
                    cpu1 = cpu_tree_s(server.pid)
                    meta[f"server_cpu_s_sweep_processes_{p}"] = {
                        pid: round(cpu1[pid] - cpu0.get(pid, 0.0), 2) for pid in cpu1}
                    log({"server_cpu_s_by_pid": meta[f"server_cpu_s_sweep_processes_{p}"]})
                    if soak_s > 0 and p == max(processes):
                        soak = _run_soak(address, server.pid, payloads[1000], rows, p, soak_s, log)
                finally:
                    stop(server)
        finally:
            if echo is not None:
                stop(echo)
    meta["loadavg_end"] = os.getloadavg()
    targets = check_targets(rows, soak)
    if plot:
        meta["plot"] = str(plot_latency(rows, PLOT))
    return {"rows": rows, "soak": soak, "meta": meta, "targets": targets}


def _best(rows: list[dict], server: str, n: int, processes: int) -> float:
    return max(r["throughput_rps"] for r in rows if r["server"] == server and r["n"] == n
               and r["processes"] == processes and r["mode"] == "closed")


def _run_soak(address: str, pid: int, payload: bytes, rows: list[dict], processes: int,
              seconds: float, log) -> dict:
    rate = SOAK_FRACTION * _best(rows, "rerank", 1000, processes)
    time.sleep(2.0)
    idle = rss_tree_mb(pid)
    total, windows, rss = asyncio.run(_soak(address, payload, rate, seconds, pid, log, processes))
    time.sleep(2.0)
    after = rss_tree_mb(pid)
    growth = {p: after.get(p, float("nan")) - v for p, v in idle.items()}
    first = rss[min(1, len(rss) - 1)]["rss_mb"]  # after the first seconds of load
    return {"processes": processes, "seconds": seconds, "rate_rps": rate, "total": total,
            "windows": windows, "rss_samples": rss, "rss_idle_mb": idle, "rss_after_mb": after,
            "rss_growth_mb": growth,
            "rss_growth_under_load_mb": {p: rss[-1]["rss_mb"].get(p, float("nan")) - v
                                         for p, v in first.items()}}


def check_targets(rows: list[dict], soak: dict | None) -> list[dict]:
    """Issue 5's targets at N=1000 with the most processes measured; each with met / not met."""
    p = max(r["processes"] for r in rows)
    at = [r for r in rows if r["n"] == 1000 and r["processes"] == p]
    best = _best(at, "rerank", 1000, p)
    out = [{"target": f"throughput >= {TARGET_RPS:,.0f} req/s", "value": f"{best:,.0f} req/s",
            "met": best >= TARGET_RPS}]
    half = [r for r in at if r["mode"] == "open" and r.get("rate_fraction") == 0.5]
    srv = next(r for r in half if r["server"] == "rerank")
    ech = next(r for r in half if r["server"] == "echo")
    out.append({"target": f"p99 <= {TARGET_P99_MS} ms at half of max throughput",
                "value": f"{srv['p99_ms']:.2f} ms at {srv['offered_rps']:,.0f} req/s offered",
                "met": srv["p99_ms"] <= TARGET_P99_MS})
    ratio = srv["p50_ms"] / ech["p50_ms"]
    out.append({"target": f"p50 <= {TARGET_P50_RATIO:g}x echo floor (half of max, same rate)",
                "value": f"{srv['p50_ms']:.2f} / {ech['p50_ms']:.2f} ms = {ratio:.2f}x",
                "met": ratio <= TARGET_P50_RATIO})
    c1 = {r["server"]: r for r in at if r["mode"] == "closed" and r["concurrency"] == 1}
    r1 = c1["rerank"]["p50_ms"] / c1["echo"]["p50_ms"]
    out.append({"target": f"p50 <= {TARGET_P50_RATIO:g}x echo floor (closed loop, C=1)",
                "value": f"{c1['rerank']['p50_ms']:.2f} / {c1['echo']['p50_ms']:.2f} ms = {r1:.2f}x",
                "met": r1 <= TARGET_P50_RATIO})
    if soak:
        errs = soak["total"]["errors"] + soak["total"]["dropped"]
        out.append({"target": "soak: no errors", "value": f"{errs} errors+dropped of "
                    f"{soak['total']['calls']:,} in {soak['seconds']:.0f} s", "met": errs == 0})
        worst = max(soak["rss_after_mb"].values())
        out.append({"target": f"RSS <= {TARGET_RSS_MB:.0f} MB per process", "value":
                    f"max {worst:.0f} MB after soak", "met": worst <= TARGET_RSS_MB})
        growth = max(soak["rss_growth_mb"].values())
        out.append({"target": "RSS flat over the soak (growth idle -> after <= 5 %)",
                    "value": f"max growth {growth:+.1f} MB",
                    "met": growth <= 0.05 * max(soak["rss_idle_mb"].values())})
    return out


def plot_latency(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    procs = sorted({r["processes"] for r in rows})
    fig, axes = plt.subplots(len(procs), len(SIZES), figsize=(6 * len(SIZES), 4.2 * len(procs)),
                             squeeze=False)
    for i, p in enumerate(procs):
        for j, n in enumerate(SIZES):
            ax = axes[i][j]
            for server, color in (("rerank", "tab:blue"), ("echo", "tab:gray")):
                sel = sorted((r for r in rows if r["mode"] == "open" and r["server"] == server
                              and r["n"] == n and r["processes"] == p and r["p50_ms"] is not None),
                             key=lambda r: r["offered_rps"])
                x = [r["offered_rps"] for r in sel]
                label = "Rerank (greedy)" if server == "rerank" else "echo floor"
                ax.plot(x, [r["p50_ms"] for r in sel], "o-", color=color, label=f"{label} p50")
                ax.plot(x, [r["p99_ms"] for r in sel], "s--", color=color, label=f"{label} p99")
            best = _best(rows, "rerank", n, p)
            ax.axvline(best, color="tab:red", lw=0.8, ls=":",
                       label=f"Rerank max closed-loop {best:,.0f}/s")
            if n == 1000:
                ax.axhline(TARGET_P99_MS, color="tab:green", lw=0.8, ls=":",
                           label=f"p99 target {TARGET_P99_MS:g} ms")
                ax.axvline(TARGET_RPS, color="tab:green", lw=0.8, ls="-.",
                           label=f"throughput target {TARGET_RPS:,.0f}/s")
            ax.set_yscale("log")
            ax.set_xlabel("offered load, req/s (Poisson)")
            ax.set_ylabel("latency, ms (log)")
            ax.set_title(f"N={n}, K={K}, server processes={p}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Rerank latency vs offered load, against an echo of the same payloads "
                 f"({os.cpu_count()} CPUs, client on the same machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(quick: bool = False) -> list[dict]:
    """Closed + open loop rows (no soak, no plot) for `benchmarks.run`."""
    return run_all(quick=quick, plot=False, log=lambda row: None)["rows"]


def _log_row(row: dict) -> None:
    keys = ("server", "processes", "n", "mode", "concurrency", "offered_rps", "window",
            "throughput_rps", "p50_ms", "p99_ms", "max_ms", "errors", "dropped", "rss_mb",
            "loadavg_1m", "server_cpu_s_by_pid")
    parts = []
    for k in keys:
        v = row.get(k)
        if v is not None:
            parts.append(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}")
    print("  " + " ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per point, fewer rates")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                        help="soak at 70%% of max throughput (N=1000) for this long; 0 = none")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="seconds per point (default 2 quick, 10 full)")
    parser.add_argument("--processes", type=int, nargs="+", default=None,
                        help="server process counts to measure (default 1 2 if the CLI has "
                             "--processes, else 1)")
    parser.add_argument("--bound", choices=("lagrangian", "sort"), default="lagrangian",
                        help="the policy's solver.bound (default lagrangian, the policies' default)")
    parser.add_argument("--out", default="load", help="results/<OUT>.json (default load)")
    args = parser.parse_args()
    result = run_all(quick=args.quick, soak_s=args.soak, duration_s=args.duration,
                     processes=tuple(args.processes) if args.processes else None, log=_log_row,
                     bound=args.bound, plot=args.out == "load")
    rows, soak, meta = result["rows"], result["soak"], result["meta"]
    if not meta["processes_flag"]:
        print("note: `reranker serve` has no --processes in this checkout: one server process")
    print_table("Rerank under load vs echo floor", rows, COLUMNS)
    if soak:
        print_table(f"Soak: {soak['seconds']:.0f} s at {soak['rate_rps']:,.0f} req/s (N=1000)",
                    soak["windows"], SOAK_COLUMNS)
        for label, key in (("idle after warm-up", "rss_idle_mb"), ("after soak", "rss_after_mb"),
                           ("growth", "rss_growth_mb"),
                           ("growth under load (first sample -> last)", "rss_growth_under_load_mb")):
            print(f"RSS {label}: " + ", ".join(f"pid {p}: {v:+.1f} MB" if "growth" in key
                                                else f"pid {p}: {v:.1f} MB"
                                                for p, v in soak[key].items()))
    target_cols = [("target", "target"), ("value", "measured"), ("met", "met")]
    print_table("Targets (N=1000, greedy)", result["targets"], target_cols)
    meta["targets"] = result["targets"]
    if soak:
        meta["soak"] = {k: v for k, v in soak.items() if k != "windows"}
        meta["soak_windows"] = soak["windows"]
    path = save(args.out, rows, meta)
    print(markdown_table(rows, COLUMNS))
    if soak:
        print(markdown_table(soak["windows"], SOAK_COLUMNS))
    print(markdown_table(result["targets"], target_cols))
    print(f"saved {path}" + (f", plot {meta['plot']}" if "plot" in meta else ""))


if __name__ == "__main__":
    main()
