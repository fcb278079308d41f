"""In-process cost of turning a Rerank request's bytes into engine arrays: upb's parse
(`RerankRequest.FromString`) and `server.convert.decode_request(msg, raw)`, for bench_grpc's
requests (N=1000, 3 scores, 3 attributes) with string columns dictionary-encoded and plain.

One process, no gRPC: each call parses the request's bytes afresh (timed: parse) and decodes that
message from them as the server does (timed: decode), the encodings alternating in blocks so that
drift of the machine hits both alike. Medians over `--calls` calls each.

Also measured, interleaved with those: the lite parse the server now uses for Rerank
(`convert.parse_rerank`: upb parses the request's top level only, its `candidates` declared
`bytes`; the wire kernels check and read the Candidates) and `decode_request` of what it gives,
checked equal to the full path's once; and the one kernel pass over the Candidates bytes alone
(`_wire_kernels.candidates_scan`).

    python -m benchmarks.bench_decode [--calls 2000] [--profile]
    python -m benchmarks.bench_decode --against /work/wt   # A/B: that checkout's server/ vs this one
    python -m benchmarks.bench_decode --batch 8 --calls 300  # a RerankBatch: full parse vs parse_rerank_batch

`--against DIR` runs the measurement in child processes, alternately with this checkout's code
and with DIR's (DIR on PYTHONPATH: its `server` package, its generated code), several rounds, and
reports both and their ratio. `--profile`: cProfile of the plain decode (top functions).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENCODINGS = ("dictionary", "plain")
COLUMNS = [("encoding", "string columns"), ("request_bytes", "request bytes"),
           ("parse_us", "parse µs (FromString)"), ("decode_us", "decode µs (decode_request)"),
           ("parse_decode_us", "parse + decode µs"), ("lite_parse_us", "lite parse µs (parse_rerank)"),
           ("lite_decode_us", "lite decode µs"), ("lite_parse_decode_us", "lite parse + decode µs"),
           ("lite_over_full", "lite / full parse + decode"), ("scan_us", "candidates_scan µs"),
           ("parse_over_dictionary", "parse / dictionary"), ("decode_over_dictionary", "decode / dictionary"),
           ("lite_over_dictionary", "lite parse + decode / dictionary")]


def _same_request(a, b) -> None:
    """The lite path's engine request equals the full path's (map order aside)."""
    assert (a.policy, a.slate_size, a.solver, a.request_id) == (b.policy, b.slate_size, b.solver, b.request_id)
    x, y = a.candidates, b.candidates
    assert list(x.item_ids) == list(y.item_ids) and x.id_check == y.id_check
    for kind in ("scores", "numeric"):
        u, v = getattr(x, kind), getattr(y, kind)
        assert set(u) == set(v) and all(np.array_equal(u[k], v[k]) for k in v)
    assert {k: (c.codes.tolist(), c.dictionary) for k, c in x.attributes.items()} == {
        k: (c.codes.tolist(), c.dictionary) for k, c in y.attributes.items()}


def measure(calls: int, block: int = 100) -> list[dict]:
    from benchmarks.bench_grpc import make_request
    from server import _wire_kernels as wk
    from server import convert, wire_layout
    from server._gen.reranker.v1 import reranker_pb2 as pb

    convert.warmup()
    raws = {enc: make_request(enc).SerializeToString() for enc in ENCODINGS}
    parse = {enc: [] for enc in ENCODINGS}
    decode = {enc: [] for enc in ENCODINGS}
    lite_parse = {enc: [] for enc in ENCODINGS}
    lite_decode = {enc: [] for enc in ENCODINGS}
    scan = {enc: [] for enc in ENCODINGS}
    perf = time.perf_counter_ns
    from_string = pb.RerankRequest.FromString
    parse_rerank = getattr(convert, "parse_rerank", None)  # None: a checkout before the lite parse
    width = getattr(wk, "E_WIDTH", 8)
    joined = hasattr(wk, "E_WIDTH")  # the kernel takes the joined-values buffer (else: before it)
    for raw in raws.values():  # warm-up, and the lite path must decode what the full one does
        for _ in range(50):
            convert.decode_request(from_string(raw), raw)
        if parse_rerank is not None:
            lite = parse_rerank(raw)
            assert type(lite) is convert.LiteRerankRequest
            _same_request(convert.decode_request(lite, raw), convert.decode_request(from_string(raw), raw))
    done = 0
    while done < calls:
        m = min(block, calls - done)
        for enc, raw in raws.items():
            p, d, lp, ld, sc = parse[enc], decode[enc], lite_parse[enc], lite_decode[enc], scan[enc]
            view = np.frombuffer(raw, dtype=np.uint8)
            for _ in range(m):
                t0 = perf()
                msg = from_string(raw)
                t1 = perf()
                convert.decode_request(msg, raw)
                t2 = perf()
                p.append(t1 - t0)
                d.append(t2 - t1)
            if parse_rerank is not None:
                for _ in range(m):
                    t0 = perf()
                    small = parse_rerank(raw)
                    t1 = perf()
                    convert.decode_request(small, raw)
                    t2 = perf()
                    lp.append(t1 - t0)
                    ld.append(t2 - t1)
            c = msg.candidates
            n = len(c.item_ids)
            for _ in range(m):  # the kernel pass alone (its outputs allocated as decode does)
                t0 = perf()
                offset, length = wk.submessage(view, wire_layout.REQUEST_CANDIDATES)
                cands = view[offset:offset + length]
                args = (cands, wire_layout.KERNEL_FIELDS, np.empty(n, np.int64), np.empty(n, np.int64),
                        np.empty(2, np.int64), np.empty((2 * 6 + 8, width), dtype=np.int64),
                        np.empty((3, n), np.int64))
                wk.candidates_scan(*args, np.empty(length, np.uint8)) if joined else wk.candidates_scan(*args)
                sc.append(perf() - t0)
        done += m
    rows = []
    for enc in ENCODINGS:
        p, d = np.asarray(parse[enc]) / 1e3, np.asarray(decode[enc]) / 1e3
        row = {"encoding": enc, "request_bytes": len(raws[enc]), "calls": calls,
               "parse_us": float(np.median(p)), "decode_us": float(np.median(d)),
               "parse_decode_us": float(np.median(p + d)), "scan_us": float(np.median(scan[enc])) / 1e3}
        if lite_parse[enc]:
            lp, ld = np.asarray(lite_parse[enc]) / 1e3, np.asarray(lite_decode[enc]) / 1e3
            row.update(lite_parse_us=float(np.median(lp)), lite_decode_us=float(np.median(ld)),
                       lite_parse_decode_us=float(np.median(lp + ld)))
            row["lite_over_full"] = row["lite_parse_decode_us"] / row["parse_decode_us"]
        rows.append(row)
    for row in rows:
        row["parse_over_dictionary"] = row["parse_us"] / rows[0]["parse_us"]
        row["decode_over_dictionary"] = row["decode_us"] / rows[0]["decode_us"]
        if "lite_parse_decode_us" in row:
            row["lite_over_dictionary"] = row["lite_parse_decode_us"] / rows[0]["lite_parse_decode_us"]
    return rows


def profile(calls: int, encoding: str = "plain", top: int = 18) -> None:
    import cProfile
    import pstats

    from benchmarks.bench_grpc import make_request
    from server import convert
    from server._gen.reranker.v1 import reranker_pb2 as pb

    convert.warmup()
    raw = make_request(encoding).SerializeToString()
    msgs = [pb.RerankRequest.FromString(raw) for _ in range(calls)]
    convert.decode_request(msgs[0], raw)
    prof = cProfile.Profile()
    prof.enable()
    for msg in msgs:
        convert.decode_request(msg, raw)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def _loadavg() -> float:
    return os.getloadavg()[0]


def _child(tree: Path | None, calls: int) -> list[dict]:
    """One measurement in a child process, with `tree`'s code (None: this checkout's)."""
    env = dict(os.environ)
    here = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(tree or here)
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--calls", str(calls)],
                         env=env, cwd=str(tree or here), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def against(tree: Path, calls: int, rounds: int) -> tuple[list[dict], dict]:
    """Alternating child runs of the base (`tree`) and this checkout; medians over the rounds."""
    runs: dict[str, list[list[dict]]] = {"base": [], "this": []}
    load = [_loadavg()]
    for r in range(rounds):
        order = (("base", tree), ("this", None)) if r % 2 == 0 else (("this", None), ("base", tree))
        for name, where in order:
            runs[name].append(_child(where, calls))
        load.append(_loadavg())
    rows = []
    for enc_i, enc in enumerate(ENCODINGS):
        row = {"encoding": enc}
        for name in runs:
            for key in ("parse_us", "decode_us", "parse_decode_us"):
                row[f"{name}_{key}"] = float(np.median([run[enc_i][key] for run in runs[name]]))
        row["decode_this_over_base"] = row["this_decode_us"] / row["base_decode_us"]
        if all("lite_parse_decode_us" in run[enc_i] for run in runs["this"]):  # as this server parses Rerank
            row["this_lite_parse_decode_us"] = float(np.median([run[enc_i]["lite_parse_decode_us"]
                                                                for run in runs["this"]]))
            row["this_lite_over_base"] = row["this_lite_parse_decode_us"] / row["base_parse_decode_us"]
        rows.append(row)
    for row in rows:
        row["this_decode_over_dictionary"] = row["this_decode_us"] / rows[0]["this_decode_us"]
        row["base_decode_over_dictionary"] = row["base_decode_us"] / rows[0]["base_decode_us"]
    return rows, {"base": str(tree), "rounds": rounds, "calls": calls, "loadavg_1m": load}


AB_COLUMNS = [("encoding", "string columns"), ("base_parse_us", "base parse µs"),
              ("this_parse_us", "this parse µs"), ("base_decode_us", "base decode µs"),
              ("this_decode_us", "this decode µs"), ("decode_this_over_base", "decode this / base"),
              ("base_decode_over_dictionary", "base decode / dictionary"),
              ("this_decode_over_dictionary", "this decode / dictionary"),
              ("base_parse_decode_us", "base parse + decode µs"),
              ("this_parse_decode_us", "this parse + decode µs"),
              ("this_lite_parse_decode_us", "this lite parse + decode µs"),
              ("this_lite_over_base", "this lite / base parse + decode")]


BATCH_COLUMNS = [("encoding", "string columns"), ("requests", "requests"), ("batch_bytes", "batch bytes"),
                 ("full_us", "parse + decode µs (RerankBatchRequest.FromString)"),
                 ("lite_us", "parse + decode µs (parse_rerank_batch)"), ("lite_over_full", "lite / full")]


def measure_batch(calls: int, size: int, block: int = 20) -> list[dict]:
    """A RerankBatch of `size` of bench_grpc's requests (seeds 0..size-1): upb's parse of the
    batch and `decode_request` of each request, against `convert.parse_rerank_batch` (each
    request read by the lite parse) and the same decodes; interleaved in blocks."""
    from benchmarks.bench_grpc import make_request
    from server import convert
    from server._gen.reranker.v1 import reranker_pb2 as pb

    convert.warmup()
    raws = {enc: pb.RerankBatchRequest(requests=[make_request(enc, seed=i) for i in range(size)]).SerializeToString()
            for enc in ENCODINGS}
    ways = {"full": pb.RerankBatchRequest.FromString, "lite": convert.parse_rerank_batch}
    times = {(enc, way): [] for enc in ENCODINGS for way in ways}
    perf = time.perf_counter_ns
    for raw in raws.values():  # warm-up; both ways decode the same requests
        for a, b in zip(ways["lite"](raw).requests, ways["full"](raw).requests, strict=True):
            assert type(a) is convert.LiteRerankRequest
            _same_request(convert.decode_request(a), convert.decode_request(b))
    done = 0
    while done < calls:
        m = min(block, calls - done)
        for enc, raw in raws.items():
            for way, parse in ways.items():
                out = times[enc, way]
                for _ in range(m):
                    t0 = perf()
                    for one in parse(raw).requests:
                        convert.decode_request(one)
                    out.append(perf() - t0)
        done += m
    rows = []
    for enc in ENCODINGS:
        full, lite = (float(np.median(times[enc, w])) / 1e3 for w in ways)
        rows.append({"encoding": enc, "requests": size, "batch_bytes": len(raws[enc]), "calls": calls,
                     "full_us": full, "lite_us": lite, "lite_over_full": lite / full})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="cProfile the plain decode instead")
    ap.add_argument("--against", type=Path, help="A/B against the server/ code of that checkout")
    ap.add_argument("--rounds", type=int, default=4, help="with --against: child runs per side")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, metavar="B",
                    help="a RerankBatch of B requests instead: full parse + decodes vs parse_rerank_batch")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls)))
        return
    from benchmarks.common import markdown_table, print_table, save

    if args.profile:
        profile(args.calls)
        return
    if args.batch:
        load0 = _loadavg()
        rows = measure_batch(args.calls, args.batch)
        meta = {"calls": args.calls, "requests": args.batch, "loadavg_1m": [load0, _loadavg()]}
        print_table(f"RerankBatch of {args.batch}: parse and decode, in process (load average {load0:.2f} -> "
                    f"{meta['loadavg_1m'][1]:.2f})", rows, BATCH_COLUMNS)
        print(save("decode_batch", rows, meta))
        print(markdown_table(rows, BATCH_COLUMNS))
        return
    if args.against is not None:
        rows, meta = against(args.against.resolve(), args.calls, args.rounds)
        title = f"decode A/B against {meta['base']} (load average {', '.join(f'{x:.2f}' for x in meta['loadavg_1m'])})"
        print_table(title, rows, AB_COLUMNS)
        print(save("decode_ab", rows, meta))
        print(markdown_table(rows, AB_COLUMNS))
        return
    load0 = _loadavg()
    rows = measure(args.calls)
    meta = {"calls": args.calls, "loadavg_1m": [load0, _loadavg()]}
    print_table(f"parse and decode, in process (load average {load0:.2f} -> {meta['loadavg_1m'][1]:.2f})",
                rows, COLUMNS)
    print(save("decode", rows, meta))
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
