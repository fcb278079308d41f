"""The tail at half of the maximum load, cheaply: what makes Rerank's p99 longer than the echo's.

bench_load's open-loop point "half of max" alone (its server, echo floor, payload, client and
Poisson schedule), for Rerank and the echo floor at the same rate, interleaved, a few seconds
each, under the settings being compared (issue 16 item 3):

- `--layouts shared,split`: `shared`, nothing pinned (client and servers share both CPUs, as in
  bench_load); `split`, this client process (every thread) on CPU 0 and every server process
  (reranker workers, their heavy workers, the echo floor) on CPU 1, set on the live processes'
  threads (sched_setaffinity per thread) so both layouts run against the same servers;
- `--gc MODE,...`: the reranker's workers started once per mode: `default` (what serve does:
  gc.freeze() after warm-up), `off` (gc.disable() in every process), `gen0:N` (first-generation
  threshold N). Every worker counts its collections through gc.callbacks (generation, pause),
  so each row says how many collections ran in its window, how long the longest paused, and
  how many paused over 1 ms;
- `--workers N`: handler threads per process (serve --workers);
- `--variants FLAGS ...`: other serve flags, one server per string (e.g. '' '--gil-switch-ms 1');
- `--rate R`: req/s for every row; default: `--fraction` (0.5) of the best closed-loop
  throughput (C=32, 4 s) measured under each layout first.

Each row: p50 / p99 / p99.9 from the client, the rate, and for Rerank the server's own
`elapsed_us` total and queue p99 (responses parsed after the run); the CPUs this client and the
server's processes kept busy over the row (CPU s / wall s, from /proc). The load average is
recorded with every row: other work on the same cores shows there.

    python -m benchmarks.bench_tail [--duration 12] [--layouts shared,split] [--gc default]
                                    [--workers N] [--rate R] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

GC_ENV = "RERANKER_TAIL_GC"  # "<mode>;<folder>": set only in the reranker server's environment
PAUSE_MS = 1.0  # a collection pausing longer than this is counted apart
MAX_PAUSES = 20_000


# ------------------------------------------------------------- in the server's processes

def _gc_probe(spec: str) -> None:
    """Apply the GC mode and count collections: every 0.5 s, writes <folder>/gc-<pid>.json with
    the collections (wall clock start, generation, pause ms) so far. Runs in the reranker's
    processes only (this module is their __main__, so spawned workers import it too)."""
    mode, folder = spec.split(";", 1)
    if mode == "off":
        gc.disable()
    elif mode.startswith("gen0:"):
        _g0, g1, g2 = gc.get_threshold()
        gc.set_threshold(int(mode.split(":", 1)[1]), g1, g2)
    elif mode != "default":
        raise SystemExit(f"{GC_ENV}: mode must be default, off or gen0:N, got {mode!r}")
    pauses: list[tuple[float, int, float]] = []
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif len(pauses) < MAX_PAUSES:
            pauses.append((time.time(), info["generation"], (time.perf_counter() - started[0]) * 1e3))

    gc.callbacks.append(callback)
    path = Path(folder) / f"gc-{os.getpid()}.json"

    def dump() -> None:
        while True:
            time.sleep(0.5)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"mode": mode, "pauses": list(pauses)}))
            tmp.replace(path)

    threading.Thread(target=dump, name="gc-probe", daemon=True).start()


if os.environ.get(GC_ENV):
    _gc_probe(os.environ[GC_ENV])


# ------------------------------------------------------------- the client

def _tree(pid: int) -> list[int]:
    from benchmarks.bench_load import _children

    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def pin(pids: list[int], cpus: set[int] | None) -> int:
    """Every thread of every process in `pids` (and their descendants) on `cpus` (None: all
    CPUs). Returns the number of threads set."""
    cpus = cpus if cpus is not None else set(range(os.cpu_count() or 1))
    n = 0
    for root in pids:
        for pid in _tree(root):
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    os.sched_setaffinity(int(task.name), cpus)
                    n += 1
                except (OSError, ValueError):
                    pass
    return n


LAYOUTS = {"shared": (None, None), "split": ({0}, {1})}  # layout: (client CPUs, server CPUs)


def _gc_window(folder: Path, t0: float, t1: float) -> dict:
    pauses = []
    for path in folder.glob("gc-*.json"):
        try:
            pauses += json.loads(path.read_text())["pauses"]
        except (OSError, ValueError):
            pass
    inside = [p for p in pauses if t0 <= p[0] <= t1]
    return {"gc_collections": len(inside),
            "gc_gen2": sum(1 for p in inside if p[1] == 2),
            "gc_over_1ms": sum(1 for p in inside if p[2] > PAUSE_MS),
            "gc_max_pause_ms": max((p[2] for p in inside), default=0.0),
            "gc_pause_total_ms": sum(p[2] for p in inside)}


def _server_times(raws: list[bytes]) -> dict:
    import numpy as np

    from server._gen.reranker.v1 import reranker_pb2 as pb

    total, queue = [], []
    for raw in raws:
        elapsed = pb.RerankResponse.FromString(raw).diagnostics.elapsed_us
        total.append(elapsed.get("total", np.nan))
        queue.append(elapsed.get("queue", np.nan))
    if not total:
        return {}
    t, q = np.asarray(total) / 1e3, np.asarray(queue) / 1e3
    return {"server_total_p50_ms": float(np.nanpercentile(t, 50)),
            "server_total_p99_ms": float(np.nanpercentile(t, 99)),
            "server_queue_p99_ms": float(np.nanpercentile(q, 99))}


def _keeping(call, out: list[bytes]):
    """`call`, keeping every response's bytes in `out` (parsed after the run, off the clock)."""
    async def kept(payload, timeout):
        raw = await call(payload, timeout=timeout)
        out.append(raw)
        return raw
    return kept


async def _point(name: str, call, payload: bytes, rate: float, duration_s: float, seed: int,
                 gc_dir: Path | None, server_pid: int) -> dict:
    import numpy as np

    from benchmarks import bench_load

    raws: list[bytes] = []
    lat: list[float] = []
    timed = _keeping(call, raws)

    async def measured(p, timeout):
        t0 = time.perf_counter()
        out = await timed(p, timeout)
        lat.append(time.perf_counter() - t0)
        return out

    t0, c0, s0 = time.time(), time.process_time(), sum(bench_load.cpu_tree_s(server_pid).values())
    row = await bench_load.open_loop(measured, payload, rate, duration_s, seed=seed)
    t1, c1, s1 = time.time(), time.process_time(), sum(bench_load.cpu_tree_s(server_pid).values())
    # CPUs busy with this client and with the server's processes (the rest of the machine's
    # load is other work sharing the cores)
    row["client_cpus"] = (c1 - c0) / (t1 - t0)
    row["server_cpus"] = (s1 - s0) / (t1 - t0)
    row["p999_ms"] = float(np.percentile(np.asarray(lat) * 1e3, 99.9)) if lat else None
    row["server"] = name
    if name == "rerank":
        row.update(_server_times(raws))
        if gc_dir is not None:
            row.update(_gc_window(gc_dir, t0, t1))
    return row


COLUMNS = [("gc", "server GC"), ("flags", "serve flags"), ("workers", "handler threads"), ("layout", "CPUs"),
           ("server", "server"), ("offered_rps", "rate req/s"), ("throughput_rps", "done req/s"),
           ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"),
           ("p99_over_echo", "p99 / echo p99"), ("server_total_p50_ms", "server total p50 ms"),
           ("server_total_p99_ms", "server total p99 ms"),
           ("server_queue_p99_ms", "server queue p99 ms"), ("gc_collections", "GCs"),
           ("gc_gen2", "gen-2 GCs"), ("gc_over_1ms", "GCs > 1 ms"), ("gc_max_pause_ms", "longest GC ms"),
           ("client_cpus", "client CPUs"), ("server_cpus", "server CPUs"),
           ("errors", "errors"), ("loadavg_1m", "load 1 min")]


def _start_reranker(policies: Path, processes: int, workers: int | None, gc_mode: str,
                    gc_dir: Path, flags: str = ""):
    import subprocess

    from benchmarks.bench_load import ROOT, _free_port, _wait_serving, stop

    address = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "benchmarks.bench_tail", "--serve", "--address", address,
           "--policies", str(policies), "--processes", str(processes), "--metrics-port", "0",
           "--log-level", "WARNING", "--watch-interval", "0"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    cmd += shlex.split(flags)
    env = dict(os.environ, **{GC_ENV: f"{gc_mode};{gc_dir}"})
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
    try:
        _wait_serving(address, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, address


def run(duration_s: float = 12.0, layouts=("shared", "split"), gc_modes=("default",),
        workers: int | None = None, rate: float | None = None, fraction: float = 0.5,
        repeats: int = 1, processes: int = 2, n: int = 1000, variants=("",), log=print) -> dict:
    from benchmarks import bench_load

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policies, responses, payloads = bench_load._prepare(tmp)
        payload = payloads[n]
        for gc_mode, flags in itertools.product(gc_modes, variants):
            gc_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="gc-"))
            server, address = _start_reranker(policies, processes, workers, gc_mode, gc_dir, flags)
            echo = None
            try:
                bench_load._canned_responses(address, payloads, responses)
                echo, echo_address = bench_load.start_echo(responses)

                async def session():
                    out = []
                    chans = {"rerank": await bench_load._channels(address, processes),
                             "echo": await bench_load._channels(echo_address)}
                    calls = {"rerank": bench_load._round_robin(chans["rerank"], bench_load.RERANK_METHOD),
                             "echo": bench_load._round_robin(chans["echo"], bench_load.ECHO_METHOD)}
                    try:
                        for call in calls.values():
                            await bench_load._warm(call, payload, 2.0)
                        for r in range(repeats):
                            for layout in layouts:
                                client_cpus, server_cpus = LAYOUTS[layout]
                                pin([os.getpid()], client_cpus)
                                pin([server.pid, echo.pid], server_cpus)
                                at = rate
                                best = None
                                if at is None:
                                    best = (await bench_load.closed_loop(calls["rerank"], payload, 32, 4.0))["throughput_rps"]
                                    at = fraction * best
                                pair = {}
                                for name in ("rerank", "echo"):
                                    row = await _point(name, calls[name], payload, at, duration_s,
                                                       seed=1000 * r + 7, gc_dir=gc_dir,
                                                       server_pid=(server if name == "rerank" else echo).pid)
                                    row.update(gc=gc_mode, flags=flags or "-", workers=workers, layout=layout,
                                               repeat=r, max_rps=best, n=n, processes=processes,
                                               loadavg_1m=os.getloadavg()[0])
                                    pair[name] = row
                                    log(row)
                                pair["rerank"]["p99_over_echo"] = pair["rerank"]["p99_ms"] / pair["echo"]["p99_ms"]
                                out += [pair["rerank"], pair["echo"]]
                    finally:
                        pin([os.getpid()], None)
                        for chs in chans.values():
                            for ch in chs:
                                await ch.close()
                    return out

                rows += asyncio.run(session())
            finally:
                bench_load.stop(server)
                if echo is not None:
                    bench_load.stop(echo)
    meta = {"duration_s": duration_s, "layouts": list(layouts), "gc_modes": list(gc_modes),
            "variants": list(variants),
            "workers": workers, "rate": rate, "fraction": fraction, "repeats": repeats,
            "processes": processes, "n": n, "k": bench_load.K, "cpus": os.cpu_count(),
            "client": "grpc.aio in this process, bench_load's 8 connections and Poisson schedule"}
    return {"rows": rows, "meta": meta}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":  # the reranker itself, with the GC probe
        from server.cli import main as cli_main

        raise SystemExit(cli_main(["serve", *sys.argv[2:]]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per row (default 12)")
    parser.add_argument("--layouts", default="shared,split", help="CPU layouts: shared, split")
    parser.add_argument("--gc", default="default", help="server GC modes: default, off, gen0:N")
    parser.add_argument("--workers", type=int, default=None, help="handler threads per process")
    parser.add_argument("--rate", type=float, default=None, help="req/s for every row")
    parser.add_argument("--fraction", type=float, default=0.5, help="of max, when no --rate")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=[""], metavar="FLAGS",
                        help="serve flags, one server per string, e.g. '' '--gil-switch-ms 1'")
    parser.add_argument("--out", default="tail", help="results/<OUT>.json (default tail)")
    args = parser.parse_args()
    layouts = tuple(args.layouts.split(","))
    for layout in layouts:
        if layout not in LAYOUTS:
            parser.error(f"--layouts: each must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if "split" in layouts and (os.cpu_count() or 1) < 2:
        parser.error("--layouts split needs 2 CPUs")

    from benchmarks.common import markdown_table, print_table, save

    def log(row):
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                          if k in dict(COLUMNS) or k in ("max_rps", "repeat")}), flush=True)

    result = run(args.duration, layouts, tuple(args.gc.split(",")), args.workers, args.rate,
                 args.fraction, args.repeats, args.processes, variants=tuple(args.variants), log=log)
    print_table("the tail at half of max load", result["rows"], COLUMNS)
    print(markdown_table(result["rows"], COLUMNS))
    print(f"saved {save(args.out, result['rows'], result['meta'])}")


if __name__ == "__main__":
    main()
