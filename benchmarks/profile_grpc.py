"""Where a Rerank round trip's CPU goes in the server, native frames included (issue 16, item 1).

Starts the real server (`reranker serve --processes 1`, bench_grpc's policy and payload) and the
raw-bytes echo (benchmarks.echo_server --raw), drives each with sequential calls from this
process (bytes in, bytes out: no client protobuf), and samples the serving process with
`py-spy record --native` while it does. Every sample is put in one bucket by the innermost frame
that names one (rules in `BUCKETS`, leaf first): numba kernels, protobuf (upb), gRPC core and its
Cython layer, and our Python by module. Per bucket: share of the samples and CPU µs per call
(the share times the process's CPU time per call, read from /proc over a window just before the
profile, without py-spy, whose ptrace stops cost the target time), for the server and for the
echo side by side: what the echo also pays is gRPC's, the rest is ours.

    python -m benchmarks.profile_grpc [--encoding plain|dictionary] [--seconds S] [--rate HZ]

Needs py-spy (`.venv/bin/pip install py-spy`; not a project dependency) and the right to ptrace
the server (root here). A profile is a sample, not a benchmark: read the shares, and compare
with bench_grpc's same-run ratios for time.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from benchmarks.bench_grpc import ECHO_METHOD, N, POLICY, make_request
from benchmarks.common import print_table, save

# (bucket, test on one frame string "function (file:line)" as py-spy prints it); the first rule
# that matches the innermost-first walk of a stack names the sample's bucket.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("numba kernels (incl. dispatch)", ("_kernels", "numba", "nrt_")),
    ("protobuf (upb)", ("upb_", "_upb", "PyUpb", "google/protobuf", "[_message")),
    ("grpc native (cygrpc .so: C++ core + Cython)", ("grpc_core", "gpr_", "[cygrpc", "cygrpc")),
    ("grpc Python (grpc/_server.py, grpc/_common.py)", ("grpc/_server.py", "grpc/_common.py",
                                                        "grpc/__init__")),
    ("server: parse hook, admission, clock", ("server/app.py", "server/admission.py",
                                              "server/callclock.py")),
    ("server: encode", ("encode_result", "_encode", "server/encode.py")),
    ("server: decode (server/convert.py)", ("decode_request", "_decode", "server/convert.py")),
    ("server: metrics, servicer, logging", ("server/metrics.py", "server/servicer.py",
                                            "prometheus_client", "logging/")),
    ("engine: compile", ("engine/compile.py",)),
    ("engine: solve (portfolio, greedy, bound)", ("engine/portfolio.py", "solvers/")),
    ("engine: report, decide", ("engine/report.py", "engine/decide.py", "engine/engine.py",
                                "engine/types.py")),
]
# Only when no frame of the stack names one of the buckets above.
GENERIC: list[tuple[str, tuple[str, ...]]] = [
    ("threads, locks, queues (stdlib)", ("threading.py", "queue.py", "concurrent/futures",
                                         "pthread", "sem_", "__lll")),
    ("CPython interpreter, allocator, GC, libc", ("_Py", "Py", "gc_", "[python", "[libpython",
                                                  "[libc", "malloc", "free", "memcpy", "memmove")),
]


# A sample whose innermost frame is one of these is a thread waiting, not working: dropped
# (py-spy cannot tell idle threads apart when it unwinds native stacks).
WAITING = ("epoll_wait", "poll", "wait4", "pthread_cond_timedwait", "pthread_cond_wait", "sem_wait",
           "sem_timedwait", "sem_clockwait", "futex", "select", "nanosleep", "clock_nanosleep", "accept",
           "PyThread_acquire_lock_timed", "__lll_lock_wait")


# ... and so is one whose innermost Python frame is one of these and whose native frames below it
# are only the C library's and the interpreter's (a lock or queue wait py-spy could not name).
PY_WAITING = ("Condition.wait", "Event.wait", "Condition.__enter__", "_worker", "Thread.join",
              "serve", "Popen.wait", "select", "_run", "main", "wait")


def _waiting(frames: list[str]) -> bool:
    leaf = frames[-1].split(" (")[0]
    if leaf in WAITING or leaf == "syscall":  # syscall: grpc's futex waits
        return True
    py = [i for i, f in enumerate(frames) if ".py:" in f]
    if not py:
        return False
    inner = frames[py[-1]].split(" (")[0]
    below = frames[py[-1] + 1:]
    return inner in PY_WAITING and all("libc" in f or "libpython" in f or "PyThread" in f
                                       or "_queue" in f or "lock_" in f for f in below)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _libraries(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, library file name) of the executable mappings of `pid`, to name the native
    frames py-spy could not symbolise (it prints their address)."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and "x" in parts[1]:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, Path(parts[5]).name))
    return out


def _name_addresses(stack: list[str], libs: list[tuple[int, int, str]]) -> list[str]:
    named = []
    for frame in stack:
        if frame.startswith("0x"):
            try:
                addr = int(frame.split()[0], 16)
            except ValueError:
                named.append(frame)
                continue
            frame = next((f"[{lib}]" for lo, hi, lib in libs if lo <= addr < hi), frame)
        named.append(frame)
    return named


PROTOBUF = BUCKETS[1][0]
PROTOBUF_BY_CALLER = (("handle", "protobuf: parse the request"),
                      ("serializer", "protobuf: serialize the response"))


def _bucket(stack: list[str]) -> str:
    for rules in (BUCKETS, GENERIC):
        for frame in reversed(stack):  # innermost first
            for name, needles in rules:
                if any(n in frame for n in needles):
                    return _protobuf_step(stack) if name == PROTOBUF else name
    return "other"


def _protobuf_step(stack: list[str]) -> str:
    """upb's time split by the Python frame that called it: parsing, serializing, or the rest
    (building and reading messages in decode and encode)."""
    py = [f for f in stack if ".py:" in f]
    inner = py[-1].split(" (")[0] if py else ""
    for caller, name in PROTOBUF_BY_CALLER:
        if inner.endswith(caller):
            return name
    return "protobuf: build / read messages (decode, encode)"


def _record(pid: int, seconds: float, rate: int, out: Path) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    subprocess.run([py_spy, "record", "--native", "--format", "raw", "--rate", str(rate),
                    "--duration", str(int(seconds)), "--pid", str(pid), "--output", str(out)],
                   check=True, stdout=subprocess.DEVNULL)


def _profile(call, payload: bytes, pid: int, seconds: float, rate: int, tmp: Path, name: str) -> dict:
    """Sequential calls for `seconds` while py-spy samples `pid`; samples per bucket."""
    out = tmp / f"{name}.txt"
    stop = threading.Event()
    calls = [0]

    def drive() -> None:
        while not stop.is_set():
            call(payload, timeout=30)
            calls[0] += 1

    for _ in range(200):  # warm
        call(payload, timeout=30)
    libs = _libraries(pid)
    t = threading.Thread(target=drive, daemon=True)
    t.start()
    try:
        # CPU per call without the profiler (ptrace stops cost the target time of their own)
        cpu0, n0 = _cpu_seconds(pid), calls[0]
        time.sleep(max(seconds / 2, 2.0))
        cpu_us = (_cpu_seconds(pid) - cpu0) / max(calls[0] - n0, 1) * 1e6
        n1 = calls[0]
        _record(pid, seconds, rate, out)
        profiled_calls = calls[0] - n1
    finally:
        stop.set()
        t.join()
    counts: collections.Counter = collections.Counter()
    waiting = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = _name_addresses(stack.split(";"), libs)
        if _waiting(frames):
            waiting += int(n)
            continue
        counts[_bucket(frames)] += int(n)
    keep = os.environ.get("PROFILE_GRPC_KEEP")
    if keep:  # the raw stacks, for a closer look
        shutil.copy(out, Path(keep) / out.name)
    return {"calls": profiled_calls, "samples": sum(counts.values()), "buckets": dict(counts), "waiting_samples": waiting,
            "cpu_us_per_call": cpu_us,
            "seconds": seconds, "rate": rate}


def _worker_pid(channel: grpc.Channel, payload: bytes) -> int:
    from server.servicer import WORKER_PID_METADATA_KEY

    call = channel.unary_unary("/reranker.v1.Reranker/Rerank")
    _, info = call.with_call(payload, timeout=30)
    for key, value in info.trailing_metadata() or ():
        if key == WORKER_PID_METADATA_KEY:
            return int(value)
    raise RuntimeError("the server did not say which process answered")


def run(encoding: str = "plain", seconds: float = 15.0, rate: int = 400) -> dict:
    from benchmarks.bench_load import start_echo, start_server, stop
    from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc

    payload = make_request(encoding).SerializeToString()
    procs = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "policies").mkdir()
        (tmp / "responses").mkdir()
        (tmp / "policies" / "bench_feed.yaml").write_text(POLICY)
        try:
            proc, address = start_server(tmp / "policies", 1)
            procs.append(proc)
            with grpc.insecure_channel(address) as ch:
                canned = pb_grpc.RerankerStub(ch).Rerank(make_request(encoding), timeout=30)
                (tmp / "responses" / f"response_{N}.bin").write_bytes(canned.SerializeToString())
                pid = _worker_pid(ch, payload)
                print(f"server process {pid}: profiling {seconds:g} s of Rerank calls ...", flush=True)
                server = _profile(ch.unary_unary("/reranker.v1.Reranker/Rerank"), payload, pid,
                                  seconds, rate, tmp, "server")
            echo_proc, echo_address = start_echo(tmp / "responses", raw=True)
            procs.append(echo_proc)
            with grpc.insecure_channel(echo_address) as ch:
                print(f"raw echo process {echo_proc.pid}: profiling {seconds:g} s ...", flush=True)
                echo = _profile(ch.unary_unary(ECHO_METHOD), payload, echo_proc.pid, seconds, rate,
                                tmp, "echo")
        finally:
            for p in procs:
                stop(p)
    rows = []
    names = [n for _, n in PROTOBUF_BY_CALLER] + ["protobuf: build / read messages (decode, encode)"]
    names += [b for b, _ in BUCKETS + GENERIC if b != PROTOBUF] + ["other"]
    for name in names:
        row = {"bucket": name}
        for label, prof in (("server", server), ("echo", echo)):
            n = prof["buckets"].get(name, 0)
            row[f"{label}_share"] = share = n / max(prof["samples"], 1)
            row[f"{label}_us_per_call"] = share * prof["cpu_us_per_call"]
        rows.append(row)
    rows.append({"bucket": "all samples",
                 "server_share": 1.0, "server_us_per_call": server["cpu_us_per_call"],
                 "echo_share": 1.0, "echo_us_per_call": echo["cpu_us_per_call"]})
    meta = {"encoding": encoding, "seconds": seconds, "rate_hz": rate, "n": N,
            "server_calls": server["calls"], "echo_calls": echo["calls"],
            "server_samples": server["samples"], "echo_samples": echo["samples"],
            "server_cpu_us_per_call": server["cpu_us_per_call"],
            "echo_cpu_us_per_call": echo["cpu_us_per_call"],
            "loadavg_1m": os.getloadavg()[0],
            "note": "py-spy --native samples, waiting threads dropped; a bucket's CPU us per call = "
                    "its share of the samples x the process's CPU time per call (/proc, measured "
                    "just before, without the profiler)"}
    return {"rows": rows, "meta": meta}


COLUMNS = [("bucket", "where (innermost frame that names one)"),
           ("server_share", "server share"), ("server_us_per_call", "server µs / call"),
           ("echo_share", "raw echo share"), ("echo_us_per_call", "raw echo µs / call")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoding", choices=("plain", "dictionary"), default="plain")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=int, default=400, help="py-spy samples per second")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = run(args.encoding, args.seconds, args.rate)
    print_table(f"py-spy --native, {args.encoding} strings ({result['meta']['server_calls']} Rerank / "
                f"{result['meta']['echo_calls']} echo calls)", result["rows"], COLUMNS)
    save(f"profile_grpc_{args.encoding}", result["rows"], result["meta"])
    print(f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
