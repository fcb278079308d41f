"""In-process cost of turning a Rerank request's bytes into engine arrays: upb's parse
(`RerankRequest.FromString`) and `server.convert.decode_request(msg, raw)`, for bench_grpc's
requests (N=1000, 3 scores, 3 attributes) with string columns dictionary-encoded and plain.

One process, no gRPC: each call parses the request's bytes afresh (timed: parse) and decodes that
message from them as the server does (timed: decode), the encodings alternating in blocks so that
drift of the machine hits both alike. Medians over `--calls` calls each.

Also measured, as a prototype for the parse (not used by the server): a "lite" RerankRequest
whose `candidates` field is declared `bytes` (built at run time from the generated descriptor),
so that upb parses only the request's top level and keeps the Candidates message as bytes for the
wire kernels; the one kernel pass over those bytes (`_wire_kernels.candidates_scan`); and a
prototype decoder of the lite message (`_lite_decode`: scores and attributes only, checked equal
to decode_request's once; it lacks validation a real one would need).

    python -m benchmarks.bench_decode [--calls 2000] [--profile]
    python -m benchmarks.bench_decode --against /work/wt   # A/B: that checkout's server/ vs this one

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
           ("parse_decode_us", "parse + decode µs"), ("lite_parse_us", "lite parse µs (candidates as bytes)"),
           ("scan_us", "candidates_scan µs"), ("lite_decode_us", "lite decode µs (prototype)"),
           ("lite_parse_decode_us", "lite parse + decode µs"),
           ("parse_over_dictionary", "parse / dictionary"), ("decode_over_dictionary", "decode / dictionary")]


def _lite_request_class():
    """RerankRequest with `candidates` declared `bytes` (same field number), in a pool of its own."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from server._gen.reranker.v1 import reranker_pb2 as pb

    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    proto.name = "reranker_lite.proto"
    for message in proto.message_type:
        if message.name == "RerankRequest":
            for field in message.field:
                if field.name == "candidates":
                    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                    field.ClearField("type_name")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("reranker.v1.RerankRequest"))


def _lite_decode(lite_msg, raw: bytes):
    """Prototype (not the server's decoder): the engine's columns from a lite-parsed request, whose
    Candidates are bytes, with the wire kernels alone: one candidates_scan, scores by
    np.frombuffer, plain columns from the joined distinct values, dictionary columns' strings by
    upb from their StringColumn's bytes (small), item ids left as their offsets. No validation
    beyond what the kernel does (a real one must also check UTF-8, which upb does in the parse).
    Returns (scores, attributes as (codes, dictionary)) or None if this prototype cannot read them."""
    from server import _wire_kernels as wk
    from server import wire_layout
    from server._gen.reranker.v1 import reranker_pb2 as pb

    cands = lite_msg.candidates
    view = np.frombuffer(cands, dtype=np.uint8)
    n = 1000  # a real decoder would count the ids in the scan; the prototype knows N
    codes, first, info = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(2, np.int64)
    entries = np.empty((64, wk.E_WIDTH), dtype=np.int64)
    column_codes = np.empty((8, n), dtype=np.int64)
    text = np.empty(view.shape[0], dtype=np.uint8)
    if wk.candidates_scan(view, wire_layout.KERNEL_FIELDS, codes, first, info, entries, column_codes, text) < 0:
        return None
    scores, attributes = {}, {}
    for row in entries[:info[1]].tolist():
        field, key_at, key_len, value_at, value_len, data, count, top, distinct, text_at, text_len = row
        key = cands[key_at:key_at + key_len].decode() if key_at >= 0 else ""
        if field == wire_layout.SCORES and data >= 0:
            scores[key] = np.frombuffer(cands, dtype="<f8", count=count // 8, offset=data).astype(np.float64)
        elif field == wire_layout.ATTRIBUTES and data >= 0:
            if distinct >= 0:
                dictionary = tuple(str(text[text_at:text_at + text_len], "utf-8").split("\x00"))
            else:
                dictionary = tuple(pb.StringColumn.FromString(cands[value_at:value_at + value_len]).dictionary)
            attributes[key] = (column_codes[data, :count], dictionary)
    return scores, attributes


def measure(calls: int, block: int = 100) -> list[dict]:
    from benchmarks.bench_grpc import make_request
    from server import _wire_kernels as wk
    from server import convert, wire_layout
    from server._gen.reranker.v1 import reranker_pb2 as pb

    convert.warmup()
    lite = _lite_request_class()
    raws = {enc: make_request(enc).SerializeToString() for enc in ENCODINGS}
    parse = {enc: [] for enc in ENCODINGS}
    decode = {enc: [] for enc in ENCODINGS}
    lite_parse = {enc: [] for enc in ENCODINGS}
    scan = {enc: [] for enc in ENCODINGS}
    perf = time.perf_counter_ns
    from_string = pb.RerankRequest.FromString
    lite_from_string = lite.FromString
    joined = hasattr(wk, "E_WIDTH")  # the kernel takes the joined-values buffer (else: before it)
    width = getattr(wk, "E_WIDTH", 8)
    lite_decode = {enc: [] for enc in ENCODINGS}
    for raw in raws.values():  # warm-up, and the lite message must carry the same bytes
        for _ in range(50):
            convert.decode_request(from_string(raw), raw)
        assert pb.Candidates.FromString(lite_from_string(raw).candidates) == from_string(raw).candidates
        if joined:  # the prototype decodes what the server's decoder does
            got = _lite_decode(lite_from_string(raw), raw)
            want = convert.decode_request(from_string(raw), raw).candidates
            assert got is not None and sorted(got[0]) == sorted(want.scores)
            assert all(np.array_equal(got[0][k], want.scores[k]) for k in want.scores)
            assert {k: (c.tolist(), d) for k, (c, d) in got[1].items()} == {
                k: (a.codes.tolist(), a.dictionary) for k, a in want.attributes.items()}
    done = 0
    while done < calls:
        m = min(block, calls - done)
        for enc, raw in raws.items():
            p, d, lp, sc = parse[enc], decode[enc], lite_parse[enc], scan[enc]
            view = np.frombuffer(raw, dtype=np.uint8)
            for _ in range(m):
                t0 = perf()
                msg = from_string(raw)
                t1 = perf()
                convert.decode_request(msg, raw)
                t2 = perf()
                p.append(t1 - t0)
                d.append(t2 - t1)
            c = msg.candidates
            n = len(c.item_ids)
            ld = lite_decode[enc]
            for _ in range(m):
                t0 = perf()
                small = lite_from_string(raw)
                t1 = perf()
                lp.append(t1 - t0)
                if joined:
                    t0 = perf()
                    _lite_decode(small, raw)
                    ld.append(perf() - t0)
                # what a lite decoder's kernel pass costs (its outputs allocated as decode does)
                t0 = perf()
                offset, length = wk.submessage(view, wire_layout.REQUEST_CANDIDATES)
                cands = view[offset:offset + length]
                args = (cands, wire_layout.KERNEL_FIELDS, np.empty(n, np.int64), np.empty(n, np.int64),
                        np.empty(2, np.int64), np.empty((2 * 6 + 8, width), dtype=np.int64),
                        np.empty((3, n), np.int64))
                wk.candidates_scan(*args, np.empty(length, np.uint8)) if joined else wk.candidates_scan(*args)
                sc.append(perf() - t0)
            del small
        done += m
    rows = []
    for enc in ENCODINGS:
        p, d = np.asarray(parse[enc]) / 1e3, np.asarray(decode[enc]) / 1e3
        rows.append({"encoding": enc, "request_bytes": len(raws[enc]), "calls": calls,
                     "parse_us": float(np.median(p)), "decode_us": float(np.median(d)),
                     "parse_decode_us": float(np.median(p + d)),
                     "lite_parse_us": float(np.median(lite_parse[enc])) / 1e3,
                     "scan_us": float(np.median(scan[enc])) / 1e3,
                     "lite_decode_us": float(np.median(lite_decode[enc])) / 1e3 if lite_decode[enc] else None})
        if rows[-1]["lite_decode_us"] is not None:
            rows[-1]["lite_parse_decode_us"] = rows[-1]["lite_parse_us"] + rows[-1]["lite_decode_us"]
    for row in rows:
        row["parse_over_dictionary"] = row["parse_us"] / rows[0]["parse_us"]
        row["decode_over_dictionary"] = row["decode_us"] / rows[0]["decode_us"]
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
              ("this_parse_decode_us", "this parse + decode µs")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="cProfile the plain decode instead")
    ap.add_argument("--against", type=Path, help="A/B against the server/ code of that checkout")
    ap.add_argument("--rounds", type=int, default=4, help="with --against: child runs per side")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls)))
        return
    from benchmarks.common import markdown_table, print_table, save

    if args.profile:
        profile(args.calls)
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
