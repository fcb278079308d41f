"""gRPC round trip of Rerank against two echo floors of the same payload size, in the same run.

Three servers, each a process of its own, each on a free localhost port; the client is this
process, one call at a time, calls alternating between the servers in blocks of 50 so that drift
of the machine hits all three alike:
- the real one (`reranker serve --processes 1`) with a home_feed-like policy: N=1000 candidates,
  3 score columns (p_click, p_add_to_cart, p_purchase), 3 attributes (category, seller_tier,
  seller), K=50, max_count + min_count(within_top) + window, greedy solver; string columns
  dictionary-encoded and plain;
- the parsed echo (`benchmarks.echo_server`): the same request deserialised by gRPC like the
  real server's, a canned response of the real response's size, no work in between;
- the raw-bytes echo (`benchmarks.echo_server --raw`): no protobuf either way, the floor of any
  gRPC Python server (transport, HTTP/2, the hand-off to a handler thread).

Reported: medians and p99 of the three, Rerank over each echo, the server's own stage timings
(`diagnostics.elapsed_us`, medians) and the unaccounted time, Rerank - raw echo - server total:
what the call costs beyond the transport floor and beyond every stage the server reports. The
raw echo times its own queue, receive and send as the real server does (server.callclock), so the
unaccounted time splits into "Rerank's gRPC steps took longer than the echo's" and what is left
(the poller thread, the transport, the client). With `--echo-busy-us US` the raw echo's handler
works US µs before it answers (a diagnostic, no floor then): its steps show what a handler that
works costs gRPC's own steps around it.

    python -m benchmarks.bench_grpc [--quick] [--calls 2000] [--echo-threads T] [--echo-busy-us US]
    python -m benchmarks.bench_grpc --in-process      # the earlier layout: server in this process
    python -m benchmarks.bench_grpc --decision-log    # server time with the decision log off / on
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console

from benchmarks.common import markdown_table, save
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import DEFAULT_MAX_MESSAGE_BYTES, create_server

N, K = 1000, 50
STAGES = ("decode", "compile", "solve", "report", "encode", "total")
ECHO_METHOD = "/reranker.bench.Echo/Rerank"
#: the raw echo's own steps (queue, receive, send) since the last call, as JSON (benchmarks.echo_server)
ECHO_STEPS_METHOD = "/reranker.bench.Echo/Steps"

POLICY = f"""\
name: bench_feed
version: bench-1
description: home_feed-like policy for the gRPC benchmark (3 attributes, 3 rules, greedy).
slate_size: {K}
objective:
  weights: {{p_click: 1.0, p_add_to_cart: 3.0, p_purchase: 10.0}}
  position_discount: log2
constraints:
  - {{name: max_3_per_category, type: max_count, attribute: category, max: 3}}
  - {{name: new_sellers_in_top_10, type: min_count, attribute: seller_tier, value: new, min: 3, within_top: 10}}
  - {{name: spread_sellers, type: window, attribute: seller, size: 3, max: 1}}
solver:
  mode: greedy
  budget_ms: 10
"""

IN_PROCESS_COLUMNS = [("encoding", "string columns"), ("request_bytes", "request bytes"), ("response_bytes", "response bytes"),
           ("echo_median_us", "echo median µs"), ("echo_p95_us", "echo p95 µs"),
           ("echo_p99_us", "echo p99 µs"),
           ("rerank_median_us", "Rerank median µs"), ("rerank_p95_us", "Rerank p95 µs"),
           ("rerank_p99_us", "Rerank p99 µs"),
           ("overhead_median_us", "Rerank - echo, median µs"), ("rerank_over_echo", "Rerank / echo (medians)"),
           *[(f"server_{s}_us", f"server {s} µs (median)") for s in STAGES]]


def make_request(encoding: str = "dictionary", n: int = N, seed: int = 0) -> pb.RerankRequest:
    """A home_feed-like request; string columns plain or dictionary-encoded."""
    rng = np.random.default_rng(seed)
    req = pb.RerankRequest(policy="bench_feed", request_id="bench", slate_size=K,
                           solver=pb.SOLVER_MODE_GREEDY)
    c = req.candidates
    c.item_ids.extend(f"sku-{i:07d}" for i in rng.permutation(10 * n)[:n].tolist())
    p_click = rng.beta(2.0, 14.0, n)
    p_atc = p_click * rng.beta(2.0, 5.0, n)
    c.scores["p_click"].values.extend(p_click.tolist())
    c.scores["p_add_to_cart"].values.extend(p_atc.tolist())
    c.scores["p_purchase"].values.extend((p_atc * rng.beta(3.0, 4.0, n)).tolist())
    columns = {
        "category": ([f"cat-{j:02d}" for j in range(20)], rng.integers(0, 20, n)),
        "seller_tier": (["established", "new"], (rng.random(n) < 0.05).astype(np.int64)),
        "seller": ([f"seller-{j:03d}" for j in range(50)], rng.integers(0, 50, n)),
    }
    for name, (dictionary, codes) in columns.items():
        col = c.attributes[name]
        if encoding == "dictionary":
            col.dictionary.extend(dictionary)
            col.codes.extend(codes.tolist())
        else:
            col.values.extend(dictionary[j] for j in codes.tolist())
    return req


def _percentiles(samples_us: np.ndarray) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(samples_us, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def _measure(encoding: str, rerank, echo, echo_servicer: "_Echo", calls: int, warmup: int,
             block: int = 50) -> dict:
    req = make_request(encoding)
    canned = rerank(req, timeout=10)  # the echo answers with a response of the real size
    echo_servicer.response = canned
    for _ in range(warmup):
        rerank(req, timeout=10)
        echo(req, timeout=10)
    t_rerank, t_echo, stages = [], [], {s: [] for s in STAGES}
    perf = time.perf_counter_ns
    while len(t_rerank) < calls:
        for _ in range(min(block, calls - len(t_rerank))):
            t0 = perf()
            resp = rerank(req, timeout=10)
            t_rerank.append((perf() - t0) / 1e3)
            for s in STAGES:
                stages[s].append(resp.diagnostics.elapsed_us[s])
        for _ in range(block):
            t0 = perf()
            echo(req, timeout=10)
            t_echo.append((perf() - t0) / 1e3)
    rr, ee = np.asarray(t_rerank), np.asarray(t_echo[:calls])
    r50, r95, r99 = _percentiles(rr)
    e50, e95, e99 = _percentiles(ee)
    return {
        "encoding": encoding, "n": N, "k": K, "calls": calls,
        "request_bytes": req.ByteSize(), "response_bytes": canned.ByteSize(),
        "echo_median_us": e50, "echo_p95_us": e95, "echo_p99_us": e99,
        "rerank_median_us": r50, "rerank_p95_us": r95, "rerank_p99_us": r99,
        "overhead_median_us": r50 - e50, "rerank_over_echo": r50 / e50,
        **{f"server_{s}_us": float(np.median(v)) for s, v in stages.items()},
    }


LOG_COLUMNS = [("mode", "decision log"), ("calls", "calls"), ("server_median_us", "server total µs (median)"),
               ("server_p99_us", "server total µs p99"), ("rtt_median_us", "round trip µs (median)"),
               ("rtt_p99_us", "round trip µs p99"), ("over_off", "server median / log off"),
               ("written", "records written"), ("dropped", "records dropped"),
               ("decode_us", "decode µs"), ("engine_us", "compile+solve+report µs"), ("encode_us", "encode µs"),
               ("rest_us", "rest µs (offer, bookkeeping)")]


def measure_decision_log(engine, rerank, calls: int, warmup: int, block: int = 100) -> list[dict]:
    """Server time with the decision log off and on (Parquet in a temporary folder), in
    alternating blocks of `block` calls over the same channel; the log is switched by setting
    `engine.decision_log`, which the engine reads on every call. Per mode also the median of
    each server stage, and of the rest of the server time (the engine's offer to the log and
    bookkeeping), to say where the difference is."""
    from engine.decision_log import DecisionLog, ParquetSink

    req = make_request("dictionary")
    with tempfile.TemporaryDirectory(prefix="bench-grpc-log-") as folder:
        log = DecisionLog(ParquetSink(folder))
        samples = {"off": ([], []), "on": ([], [])}
        parts = {mode: {k: [] for k in ("decode", "engine", "encode", "rest")} for mode in samples}
        for mode in ("off", "on") * 2:  # warm both paths
            engine.decision_log = log if mode == "on" else None
            for _ in range(warmup // 4):
                rerank(req, timeout=10)
        perf = time.perf_counter_ns
        while len(samples["on"][0]) < calls:
            for mode in ("off", "on"):
                engine.decision_log = log if mode == "on" else None
                server, rtt = samples[mode]
                for _ in range(block):
                    t0 = perf()
                    resp = rerank(req, timeout=10)
                    rtt.append((perf() - t0) / 1e3)
                    e = resp.diagnostics.elapsed_us
                    server.append(e["total"])
                    engine_us = e["compile"] + e["solve"] + e["report"]
                    for k, v in (("decode", e["decode"]), ("engine", engine_us), ("encode", e["encode"]),
                                 ("rest", e["total"] - e["decode"] - engine_us - e["encode"])):
                        parts[mode][k].append(v)
        engine.decision_log = None
        log.close(30)
        stats = log.stats
    rows = []
    for mode in ("off", "on"):
        server, rtt = (np.asarray(v) for v in samples[mode])
        rows.append({"mode": mode, "calls": len(server),
                     "server_median_us": float(np.median(server)),
                     "server_p99_us": float(np.percentile(server, 99)),
                     "rtt_median_us": float(np.median(rtt)), "rtt_p99_us": float(np.percentile(rtt, 99)),
                     "written": stats.written if mode == "on" else None,
                     "dropped": stats.dropped if mode == "on" else None,
                     **{f"{k}_us": float(np.median(v)) for k, v in parts[mode].items()}})
    for row in rows:
        row["over_off"] = row["server_median_us"] / rows[0]["server_median_us"]
    return rows


class _Echo:
    """Answers every request with a canned response: gRPC + protobuf cost, no work."""

    response: pb.RerankResponse = pb.RerankResponse()

    def __call__(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        return self.response


#: handler threads of the echo servers
ECHO_THREADS = 8


def _echo_server(echo: _Echo | None, handler=None, pool=None) -> tuple[grpc.Server, int]:
    """An echo server with the real server's message limits; `handler` (a generic RPC handler)
    replaces the parsed echo's, `pool` the handler pool (ECHO_THREADS threads)."""
    server = grpc.server(
        pool or futures.ThreadPoolExecutor(max_workers=ECHO_THREADS),
        options=[("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)],
    )
    if handler is None:
        service, method = ECHO_METHOD.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=pb.RerankRequest.FromString,
            response_serializer=pb.RerankResponse.SerializeToString)})
    server.add_generic_rpc_handlers((handler,))
    return server, server.add_insecure_port("127.0.0.1:0")


#: the server's steps of a call as its responses report them (server.callclock)
STEPS = ("queue", "receive", "parse", "admission", "decode", "compile", "solve", "report", "encode", "total")

OUT_COLUMNS = [("encoding", "string columns"), ("request_bytes", "request bytes"),
               ("raw_echo_median_us", "raw-bytes echo median µs"), ("raw_echo_p99_us", "raw-bytes echo p99 µs"),
               ("echo_median_us", "parsed echo median µs"), ("echo_p99_us", "parsed echo p99 µs"),
               ("rerank_median_us", "Rerank median µs (stub client)"), ("rerank_p99_us", "Rerank p99 µs (stub client)"),
               ("rerank_bytes_median_us", "Rerank median µs (bytes client)"),
               ("rerank_bytes_p99_us", "Rerank p99 µs (bytes client)"),
               ("rerank_over_raw_echo", "Rerank / raw echo (stub client)"),
               ("rerank_bytes_over_raw_echo", "Rerank / raw echo (bytes client)"),
               ("rerank_over_echo", "Rerank / parsed echo (stub client)"),
               ("client_protobuf_us", "client protobuf µs (stub - bytes client)"),
               *[(f"server_{s}_us", f"server {s} µs") for s in STEPS],
               ("server_serialize_mean_us", "server serialize µs (mean)"),
               ("server_send_mean_us", "server send µs (mean)"),
               ("unaccounted_us", "unaccounted µs (bytes client - raw echo - server total)"),
               ("unaccounted_after_us", "... less serialize and send (the echo sends too)"),
               ("raw_echo_queue_us", "raw echo queue µs"), ("raw_echo_receive_us", "raw echo receive µs"),
               ("raw_echo_send_mean_us", "raw echo send µs (mean)"),
               ("steps_over_echo_us", "Rerank's queue + receive + send - the raw echo's µs"),
               ("left_us", "left: unaccounted - serialize - that (poller, transport, client)")]


def _measure_processes(encoding: str, calls: int, warmup: int, rerank, rerank_bytes, echo, raw_echo,
                       scrape, raw_steps, block: int = 50) -> dict:
    """Round trips to the three servers in alternating blocks (so that drift hits all alike):
    Rerank through the generated stub (a client that serializes the request and parses the
    answer) and as bytes (the raw echo's client work), the parsed echo, the raw-bytes echo.
    `raw_steps()`: the raw echo's own queue / receive / send per call since the last call (ns)."""
    req = make_request(encoding)
    raw_req = req.SerializeToString()
    for _ in range(warmup):
        rerank(req, timeout=10)
        rerank_bytes(raw_req, timeout=10)
        echo(req, timeout=10)
        raw_echo(raw_req, timeout=10)
    times = {"rerank": [], "rerank_bytes": [], "echo": [], "raw": []}
    stages = {s: [] for s in STEPS}
    before = scrape()
    raw_steps()  # drop the warm-up's
    perf = time.perf_counter_ns
    while len(times["rerank"]) < calls:
        for _ in range(block):
            t0 = perf()
            resp = rerank(req, timeout=10)
            times["rerank"].append((perf() - t0) / 1e3)
            e = resp.diagnostics.elapsed_us
            for s in STEPS:
                stages[s].append(e[s])
        for key, call, arg in (("rerank_bytes", rerank_bytes, raw_req), ("echo", echo, req),
                               ("raw", raw_echo, raw_req)):
            for _ in range(block):
                t0 = perf()
                call(arg, timeout=10)
                times[key].append((perf() - t0) / 1e3)
    after = scrape()
    echo_steps = {k: np.asarray(v, dtype=np.float64) / 1e3 for k, v in raw_steps().items()}
    steps_mean = {s: (after[s][0] - before[s][0]) / max(after[s][1] - before[s][1], 1) * 1e6
                  for s in ("serialize", "send")}
    r50, _, r99 = _percentiles(np.asarray(times["rerank"]))
    b50, _, b99 = _percentiles(np.asarray(times["rerank_bytes"]))
    e50, _, e99 = _percentiles(np.asarray(times["echo"]))
    w50, _, w99 = _percentiles(np.asarray(times["raw"]))
    med = {s: float(np.median(v)) for s, v in stages.items()}
    unaccounted = b50 - w50 - med["total"]
    echo_queue, echo_receive = (float(np.median(echo_steps[k])) for k in ("queue", "receive"))
    echo_send = float(np.mean(echo_steps["send"]))
    over_echo = (med["queue"] - echo_queue) + (med["receive"] - echo_receive) + (steps_mean["send"] - echo_send)
    return {
        "encoding": encoding, "n": N, "k": K, "calls": len(times["rerank"]), "request_bytes": len(raw_req),
        "raw_echo_median_us": w50, "raw_echo_p99_us": w99, "echo_median_us": e50, "echo_p99_us": e99,
        "rerank_median_us": r50, "rerank_p99_us": r99, "rerank_bytes_median_us": b50, "rerank_bytes_p99_us": b99,
        "rerank_over_raw_echo": r50 / w50, "rerank_bytes_over_raw_echo": b50 / w50, "rerank_over_echo": r50 / e50,
        "client_protobuf_us": r50 - b50,
        **{f"server_{s}_us": v for s, v in med.items()},
        "server_serialize_mean_us": steps_mean["serialize"], "server_send_mean_us": steps_mean["send"],
        "unaccounted_us": unaccounted,
        "unaccounted_after_us": unaccounted - steps_mean["serialize"] - steps_mean["send"],
        "raw_echo_queue_us": echo_queue, "raw_echo_receive_us": echo_receive, "raw_echo_send_mean_us": echo_send,
        "raw_echo_steps_calls": len(echo_steps["send"]),
        "steps_over_echo_us": over_echo, "left_us": unaccounted - steps_mean["serialize"] - over_echo,
    }


def _step_scraper(metrics_port: int):
    """() -> {step: (sum s, count)} of the server's reranker_call_step_seconds."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[str, tuple[float, float]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out = {s: [0.0, 0.0] for s in ("serialize", "send")}
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                step = smp.labels.get("step")
                if step in out and smp.name == "reranker_call_step_seconds_sum":
                    out[step][0] = smp.value
                elif step in out and smp.name == "reranker_call_step_seconds_count":
                    out[step][1] = smp.value
        return {k: tuple(v) for k, v in out.items()}

    return scrape


def run_processes(quick: bool = False, calls: int | None = None, echo_threads: int | None = None,
                  echo_busy_us: float = 0.0) -> dict:
    """The real server (`reranker serve --processes 1`), the parsed echo and the raw-bytes echo,
    each a process of its own; the client is this process, one call at a time. `echo_threads`:
    the echoes' handler threads (default ECHO_THREADS). `echo_busy_us`: the raw echo's handler
    works that long before it answers (no longer a floor then: a diagnostic of what doing work
    costs gRPC's own steps around the handler)."""
    from benchmarks.bench_load import _free_port, start_echo, start_server, stop

    calls = calls or (200 if quick else 2000)
    warmup = 50 if quick else 200
    encodings = ("dictionary",) if quick else ("dictionary", "plain")
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        policies, responses = Path(tmp) / "policies", Path(tmp) / "responses"
        policies.mkdir()
        responses.mkdir()
        (policies / "bench_feed.yaml").write_text(POLICY)
        try:
            metrics_port = _free_port()
            proc, address = start_server(policies, 1, metrics_port=metrics_port)
            procs.append(proc)
            with grpc.insecure_channel(address) as ch:
                canned = pb_grpc.RerankerStub(ch).Rerank(make_request(), timeout=30)
            (responses / f"response_{N}.bin").write_bytes(canned.SerializeToString())
            echo_proc, echo_address = start_echo(responses, threads=echo_threads)
            procs.append(echo_proc)
            raw_proc, raw_address = start_echo(responses, raw=True, threads=echo_threads, busy_us=echo_busy_us)
            procs.append(raw_proc)
            with grpc.insecure_channel(address) as ch_real, grpc.insecure_channel(echo_address) as ch_echo, \
                    grpc.insecure_channel(raw_address) as ch_raw:
                rerank = pb_grpc.RerankerStub(ch_real).Rerank
                rerank_bytes = ch_real.unary_unary("/reranker.v1.Reranker/Rerank")  # bytes both ways
                echo = ch_echo.unary_unary(ECHO_METHOD, request_serializer=pb.RerankRequest.SerializeToString,
                                           response_deserializer=pb.RerankResponse.FromString)
                raw_echo = ch_raw.unary_unary(ECHO_METHOD)  # bytes both ways
                scrape = _step_scraper(metrics_port)
                take_steps = ch_raw.unary_unary(ECHO_STEPS_METHOD)
                raw_steps = lambda: json.loads(take_steps(b"", timeout=10))  # noqa: E731
                rows = [_measure_processes(enc, calls, warmup, rerank, rerank_bytes, echo, raw_echo, scrape,
                                           raw_steps)
                        for enc in encodings]
        finally:
            for p in procs:
                stop(p)
    meta = {"quick": quick, "calls": calls, "warmup": warmup, "n": N, "k": K, "layout": "processes",
            "echo_threads": echo_threads or ECHO_THREADS, "raw_echo_busy_us": echo_busy_us, "server_threads": "reranker serve's default",
            "policy": "bench_feed (max_count + min_count within_top + window, greedy)",
            "client": "sync stub and a bytes client, one call at a time; server, parsed echo and raw echo "
                      "each in a process of its own"}
    return {"rows": rows, "meta": meta}


#: the columns of the default layout (benchmarks.run prints these)
COLUMNS = OUT_COLUMNS


def run(quick: bool = False, calls: int | None = None, decision_log: bool = False,
        in_process: bool = False, echo_threads: int | None = None, echo_busy_us: float = 0.0) -> dict:
    """Measure; returns {"rows": [one dict per string encoding], "meta": {...}}. By default
    every server runs in a process of its own (`run_processes`); with `in_process` (or
    `decision_log`, which switches the log of the server's engine between calls) the real server
    and the parsed echo share this process (and "log_rows": the decision log off / on)."""
    if not (in_process or decision_log):
        return run_processes(quick, calls, echo_threads, echo_busy_us)
    from engine.engine import Engine

    calls = calls or (200 if quick else 2000)
    warmup = 50 if quick else 200
    encodings = ("dictionary",) if quick else ("dictionary", "plain")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_feed.yaml").write_text(POLICY)
        engine = Engine.from_directory(tmp)
    engine.warmup()
    real, real_port = create_server("127.0.0.1:0", engine, max_workers=8)
    echo_servicer = _Echo()
    echo, echo_port = _echo_server(echo_servicer)
    real.start()
    echo.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{real_port}") as ch_real, \
                grpc.insecure_channel(f"127.0.0.1:{echo_port}") as ch_echo:
            rerank = pb_grpc.RerankerStub(ch_real).Rerank
            echo_call = ch_echo.unary_unary(ECHO_METHOD, request_serializer=pb.RerankRequest.SerializeToString,
                                            response_deserializer=pb.RerankResponse.FromString)
            rows = [_measure(enc, rerank, echo_call, echo_servicer, calls, warmup) for enc in encodings]
            log_rows = measure_decision_log(engine, rerank, calls, warmup) if decision_log else None
    finally:
        real.stop(None)
        echo.stop(None)
    meta = {"quick": quick, "calls": calls, "warmup": warmup, "n": N, "k": K,
            "policy": "bench_feed (max_count + min_count within_top + window, greedy)",
            "client": "sync stub, one call at a time, same process as both servers"}
    return {"rows": rows, "meta": meta, "log_rows": log_rows}


def print_result(result: dict, columns: list[tuple[str, str]] | None = None) -> None:
    """One row per metric, one column per string encoding."""
    from rich.table import Table

    rows, meta = result["rows"], result["meta"]
    table = Table(title=f"gRPC round trip, N={meta['n']}, K={meta['k']}, {meta['calls']} calls each")
    table.add_column("metric")
    for row in rows:
        table.add_column(f"{row['encoding']} strings", justify="right")
    for key, label in columns or IN_PROCESS_COLUMNS:
        table.add_row(label, *[_fmt(row[key]) for row in rows])
    Console().print(table)


def _fmt(v: float | str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description="gRPC Rerank round trip vs an echo of the same size")
    parser.add_argument("--quick", action="store_true", help="200 calls, dictionary encoding only")
    parser.add_argument("--calls", type=int, default=None, help="calls per server and encoding")
    parser.add_argument("--decision-log", action="store_true",
                        help="also server time with the decision log off / on (alternating blocks)")
    parser.add_argument("--in-process", action="store_true",
                        help="the earlier layout: real server and parsed echo in the client's process "
                             "(they share its interpreter lock); the default runs each server in a "
                             "process of its own, with the raw-bytes echo beside them")
    parser.add_argument("--echo-threads", type=int, default=None,
                        help=f"handler threads of the echo servers (default {ECHO_THREADS}; the real "
                             "server runs reranker serve's default)")
    parser.add_argument("--echo-busy-us", type=float, default=0.0,
                        help="a diagnostic: the raw echo's handler works this long (holding the GIL, "
                             "touching 256 KiB) before answering, so its queue / receive / send show "
                             "what a handler's work costs gRPC's steps around it")
    args = parser.parse_args()
    if not (args.in_process or args.decision_log):
        result = run(quick=args.quick, calls=args.calls, echo_threads=args.echo_threads,
                     echo_busy_us=args.echo_busy_us)
        path = save("grpc", result["rows"], result["meta"])
        print_result(result, OUT_COLUMNS)
        Console().out(markdown_table(result["rows"], OUT_COLUMNS))
        Console().out(f"saved {path}")
        return
    result = run(quick=args.quick, calls=args.calls, decision_log=args.decision_log, in_process=True)
    if result["log_rows"]:
        from benchmarks.common import print_table

        print_table("server time, decision log off / on", result["log_rows"], LOG_COLUMNS)
        Console().out(markdown_table(result["log_rows"], LOG_COLUMNS))
        Console().out(f"saved {save('grpc_decision_log', result['log_rows'], result['meta'])}")
    path = save("grpc_in_process", result["rows"], result["meta"])
    print_result(result)
    Console().out(markdown_table(result["rows"], IN_PROCESS_COLUMNS))
    Console().out(f"saved {path}")


if __name__ == "__main__":
    main()
