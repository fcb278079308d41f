"""Operating under faults (issue 9): rebalancing after a worker crash, cold start, and DPP
requests under CPU contention with BLAS threads pinned or not. (Heavy-caller isolation is
benchmarks/bench_admission.py.)

    .venv/bin/python -m benchmarks.bench_ops                 # every part (~5 minutes)
    .venv/bin/python -m benchmarks.bench_ops --only rebalance coldstart
    .venv/bin/python -m benchmarks.bench_ops --quick         # smoke run (~1.5 minutes)

Parts (real `reranker serve` processes on loopback; the clients share the 2 cores with them):

- rebalance: `serve --processes 2`, 8 connections under steady load; worker 0 is SIGKILLed; the
  share of calls answered by its replacement is followed for 75 s, with --max-connection-age 30
  (default) and 0 (never: the baseline). Target: >= 30 % within 60 s.
- coldstart: time to SERVING with an empty Numba cache (and with the cache it wrote), and the
  first request's latency per example policy against its budget (target: budget + 2 ms).
- firstrequest: in a fresh interpreter, Engine.rerank's first call per example policy after the
  warm-up, against the kernels-only warm-up of before (baseline, same run).
- dpp: Engine.rerank of a DPP policy (N=1000, K=50, d=64) with 1 BLAS thread and the library
  default, alone and next to a CPU-bound process, beside the greedy kernel alone.

Results: benchmarks/results/ops_<part>.json; tables printed as markdown for RESULTS.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console

from benchmarks.bench_grpc import POLICY, make_request
from benchmarks.bench_load import RERANKER, ROOT, _free_port, _wait_serving, stop
from benchmarks.common import parts_main, run_part, time_calls
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.servicer import WORKER_PID_METADATA_KEY

console = Console()
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def _server(policies: Path, *flags: str, processes: int = 1, env: dict | None = None,
            log: list | None = None, level: str = "WARNING"):
    """A `reranker serve` subprocess, SERVING; its JSON log records go to `log` if given."""
    address = f"127.0.0.1:{_free_port()}"
    cmd = [str(RERANKER), "serve", "--address", address, "--policies", str(policies),
           "--processes", str(processes), "--metrics-port", "-1", "--log-level", level, *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)

    def drain() -> None:
        for line in proc.stderr:
            if log is not None and line.startswith("{"):
                log.append(json.loads(line))

    threading.Thread(target=drain, daemon=True).start()
    _wait_serving(address, proc, timeout_s=300)
    return proc, address


def _channel(address: str, i: int = 0) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[*OPTIONS, ("grpc.use_local_subchannel_pool", 1),
                                                   ("bench.connection", i)])


def _pct(lat_ms: list[float], q: float) -> float | None:
    return float(np.percentile(lat_ms, q)) if lat_ms else None


# ------------------------------------------------------------------------------- rebalance

def _pid_of(call) -> int | None:
    for k, v in call.trailing_metadata() or ():
        if k == WORKER_PID_METADATA_KEY:
            return int(v)
    return None


def _rebalance_once(policies: Path, age: str, watch_s: float) -> dict:
    proc, address = _server(policies, "--max-connection-age", age, processes=2)
    req = make_request("dictionary", n=200)
    records: list[tuple[float, int | None, str]] = []
    stop_at = threading.Event()
    lock = threading.Lock()

    def client(i: int) -> None:
        with _channel(address, i) as ch:
            stub = pb_grpc.RerankerStub(ch)
            while not stop_at.is_set():
                try:
                    _, call = stub.Rerank.with_call(req, timeout=5)
                    item = (time.monotonic(), _pid_of(call), "OK")
                except grpc.RpcError as e:
                    item = (time.monotonic(), None, e.code().name)
                with lock:
                    records.append(item)
                time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(3.0)
        with lock:
            before = {p for _, p, _ in records[-200:] if p}
        victim = min(before)
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        time.sleep(watch_s)
    finally:
        stop_at.set()
        for t in threads:
            t.join(10)
        stop(proc)
    after = [(t - t_kill, p, c) for t, p, c in records if t > t_kill]
    survivors = before - {victim}
    new = lambda p: p is not None and p not in before  # noqa: E731
    windows = {}
    for start in range(0, int(watch_s), 5):
        got = [p for t, p, c in after if start <= t < start + 5 and c == "OK"]
        windows[start] = (sum(1 for p in got if new(p)) / len(got)) if got else 0.0
    reached = next((s + 5 for s, share in sorted(windows.items()) if share >= 0.3), None)
    errors = sum(1 for _, _, c in after if c != "OK")
    return {"max_connection_age_s": age, "calls_after_kill": len(after), "errors_after_kill": errors,
            "share_new_0_10s": round(np.mean([windows.get(0, 0), windows.get(5, 0)]), 3),
            "share_new_30_40s": round(np.mean([windows.get(30, 0), windows.get(35, 0)]), 3),
            "share_new_55_60s": round(windows.get(55, 0.0), 3),
            "share_new_last_5s": round(windows[max(windows)], 3),
            "s_to_30pct": reached, "survivors": len(survivors), "target": ">= 30 % within 60 s"}


def run_rebalance(quick: bool) -> list[dict]:
    watch = 40.0 if quick else 75.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies"
        policies.mkdir()
        (policies / "bench_feed.yaml").write_text(POLICY)
        for age in ("30", "0"):
            rows.append(_rebalance_once(policies, age if not quick or age == "0" else "10", watch))
            console.print(rows[-1])
    return rows


REBALANCE_COLUMNS = [("max_connection_age_s", "--max-connection-age s"), ("calls_after_kill", "calls after kill"),
                     ("errors_after_kill", "errors after kill"), ("share_new_0_10s", "replacement's share 0-10 s"),
                     ("share_new_30_40s", "30-40 s"), ("share_new_55_60s", "55-60 s"),
                     ("share_new_last_5s", "last 5 s"), ("s_to_30pct", "s to >= 30 %")]


# ------------------------------------------------------------------------------- cold start

def _example_request(policy: str, n: int = 1000) -> pb.RerankRequest:
    """A request with every column the example policies read."""
    rng = np.random.default_rng(3)
    req = pb.RerankRequest(policy=policy, request_id=f"cold-{policy}")
    c = req.candidates
    c.item_ids.extend(f"item-{j}" for j in range(n))
    for name in ("p_click", "p_add_to_cart", "p_purchase", "predicted_value", "relevance", "freshness"):
        c.scores[name].values.extend((rng.random(n) * 0.3).tolist())
    pools = {"availability": ["in_stock", "low_stock"], "category": ["shoes", "apparel", "home", "beauty", "sports", "toys"],
             "seller": [f"seller-{i}" for i in range(30)], "content_type": ["product", "video", "image"],
             "seller_tier": ["new", "established"], "brand": [f"brand-{i}" for i in range(12)], "sponsored": ["yes", "no"]}
    for name, pool in pools.items():
        c.attributes[name].dictionary.extend(pool)
        c.attributes[name].codes.extend(rng.integers(0, len(pool), n).tolist())
    c.numeric["price"].values.extend(rng.uniform(5, 300, n).tolist())
    c.embeddings.dim = 64
    c.embeddings.values.extend(rng.normal(size=n * 64).astype(np.float32).tolist())
    return req


def _cold_once(cache: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    t0 = time.monotonic()
    log: list[dict] = []
    proc, address = _server(ROOT / "policies", processes=2, env=env, log=log, level="INFO")
    to_serving = time.monotonic() - t0
    compiling = next((r["seconds"] for r in log if r.get("msg") == "kernels ready" and r.get("worker") is None), 0.0)
    firsts = {}
    try:
        with _channel(address) as ch:
            stub = pb_grpc.RerankerStub(ch)
            for policy in [p.name for p in stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies]:
                req = _example_request(policy)
                t = time.perf_counter()
                resp = stub.Rerank(req, timeout=30)
                ms = (time.perf_counter() - t) * 1e3
                firsts[policy] = (round(ms, 2), resp.diagnostics.budget_ms,
                                  round(resp.diagnostics.elapsed_us["total"] / 1e3, 2))
    finally:
        stop(proc)
    return {"to_serving_s": round(to_serving, 1), "compiling_s": compiling, "firsts": firsts}


def run_coldstart(quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for label in ("empty Numba cache", "cache written by the first start"):
            res = _cold_once(cache)
            for policy, (ms, budget, server_ms) in sorted(res["firsts"].items()):
                rows.append({"start": label, "to_serving_s": res["to_serving_s"],
                             "compiling_s": res["compiling_s"], "policy": policy,
                             "first_request_ms": ms, "server_ms": server_ms, "budget_ms": budget,
                             "within_budget_plus_2ms": ms <= budget + 2.0})
            console.print(res)
    return rows


COLD_COLUMNS = [("start", "start"), ("to_serving_s", "s to SERVING (2 processes)"),
                ("compiling_s", "of which compiling kernels s"), ("policy", "policy"),
                ("first_request_ms", "first request ms (client)"), ("server_ms", "server ms"),
                ("budget_ms", "budget ms"), ("within_budget_plus_2ms", "<= budget + 2 ms")]


# ---------------------------------------------------------------------- first request after warm-up

_FIRST = r"""
import json, sys, time
from engine.engine import Engine
from server import convert
from benchmarks.bench_ops import _example_request
if sys.argv[1] == "kernels only":  # the warm-up before issue 9: kernels on canned problems only
    Engine.warmup_policy = lambda self, loaded: self._compiled_policy(loaded)
engine = Engine.from_directory("policies")
t = time.perf_counter(); engine.warmup(); convert.warmup(); warm = time.perf_counter() - t
out = {"warmup_s": warm}
for policy in sorted(p.name for p in engine.list_policies()):
    req = convert.decode_request(_example_request(policy))
    times = []
    for _ in range(3):
        t = time.perf_counter(); engine.rerank(req); times.append((time.perf_counter() - t) * 1e3)
    out[policy] = times
print(json.dumps(out))
"""


def run_firstrequest(quick: bool) -> list[dict]:
    """Engine.rerank's first and later calls per example policy, in a fresh interpreter after
    each warm-up (baseline: the kernels-only warm-up, same run)."""
    rows = []
    for mode in ("kernels only", "every policy's paths"):
        proc = subprocess.run([sys.executable, "-c", _FIRST, mode], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        for policy in sorted(k for k in out if k != "warmup_s"):
            first, *later = out[policy]
            rows.append({"warmup": mode, "warmup_s": out["warmup_s"], "policy": policy,
                         "first_ms": first, "later_ms": float(np.median(later))})
    return rows


FIRST_COLUMNS = [("warmup", "warm-up"), ("warmup_s", "warm-up s"), ("policy", "policy"),
                 ("first_ms", "first Engine.rerank ms"), ("later_ms", "later calls ms (median)")]


# ------------------------------------------------------------------------------- dpp / BLAS

DPP_POLICY = """\
name: dpp_only
version: "1"
slate_size: 50
objective:
  weights: {p_click: 1.0}
diversity: {method: dpp, weight: 0.3}
solver: {mode: greedy, budget_ms: 50}
"""

_BURNER = "import numpy as np, time\nend = time.time() + {s}\na = np.random.rand(400, 400)\nwhile time.time() < end:\n    a @ a\n"


def run_dpp(quick: bool) -> list[dict]:
    from threadpoolctl import threadpool_limits

    from engine.engine import Engine
    from engine.policy_loader import LoadedPolicy, PolicyStore, parse_policy_text
    from engine.types import Attribute, Candidates, RerankRequest
    from engine.compile import compile_request
    from solvers.greedy import solve_greedy

    store = PolicyStore()
    store.add(LoadedPolicy(parse_policy_text(DPP_POLICY), "<text>", "0" * 64, 0.0))
    engine = Engine(store)
    engine.warmup()
    rng = np.random.default_rng(5)
    n, d = 1000, 64
    req = RerankRequest("dpp_only", Candidates([f"i{j}" for j in range(n)], {"p_click": rng.random(n)},
                                               {"c": Attribute.from_values(["a"] * n)}, {},
                                               rng.normal(size=(n, d)).astype(np.float32)))
    cp = engine._compiled_policy(store.get("dpp_only"))
    problem = compile_request(cp, req).problem
    reps = 200 if quick else 1000
    rows = []

    def timed(fn) -> np.ndarray:  # milliseconds per call
        return time_calls(fn, reps, warmup=20) / 1000.0

    for load in ("idle", "1 CPU-bound process beside"):
        burner = None
        if load != "idle":
            burner = subprocess.Popen([sys.executable, "-c", _BURNER.format(s=600)])
            time.sleep(0.5)
        try:
            kernel = timed(lambda: solve_greedy(problem, active=problem.active))
            for blas in (1, None):
                with threadpool_limits(limits=blas if blas else os.cpu_count()):
                    t = timed(lambda: engine.rerank(req))
                rows.append({"machine": load, "blas_threads": blas or f"default ({os.cpu_count()})",
                             "rerank_p50_ms": float(np.median(t)), "rerank_p99_ms": float(np.percentile(t, 99)),
                             "kernel_p50_ms": float(np.median(kernel)),
                             "rerank_over_kernel": float(np.median(t) / np.median(kernel))})
                console.print(rows[-1])
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    return rows


DPP_COLUMNS = [("machine", "machine"), ("blas_threads", "BLAS threads"), ("rerank_p50_ms", "Engine.rerank p50 ms"),
               ("rerank_p99_ms", "p99 ms"), ("kernel_p50_ms", "greedy kernel alone p50 ms"),
               ("rerank_over_kernel", "rerank / kernel")]


PARTS = {"rebalance": (run_rebalance, REBALANCE_COLUMNS),
         "coldstart": (run_coldstart, COLD_COLUMNS), "firstrequest": (run_firstrequest, FIRST_COLUMNS),
         "dpp": (run_dpp, DPP_COLUMNS)}


def run(quick: bool = False) -> list[dict]:
    return [row for name in PARTS for row in _run_part(name, quick)]


def _run_part(name: str, quick: bool) -> list[dict]:
    return run_part("ops", name, PARTS, quick)


def main() -> None:
    parts_main(__doc__, _run_part, PARTS)


if __name__ == "__main__":
    main()
