"""The echo floor of the load benchmark, as its own process.

Serves `benchmarks.bench_grpc.ECHO_METHOD` with bench_grpc's echo servicer and server options: the
request is deserialised by gRPC like the real server's, and the answer is a canned, real
`RerankResponse` of the same candidate count (read from `<responses>/response_<N>.bin`, where N is
the request's candidate count), so payloads match the real server's both ways with no work between.
With `--raw`, the raw-bytes echo: the request's bytes are not parsed at all (identity
deserialiser) and the answer is the canned response's bytes (the folder must hold one), which is
the floor of any gRPC Python server: transport, HTTP/2 and the handler hand-off, no protobuf.
The raw echo also times the steps of each call that the real server reports for its own
(server.callclock): queue (submitted to the handler pool -> a handler thread takes it), receive
(-> the handler has the bytes) and send (the handler returns -> the pool task ends); its
`STEPS_METHOD` answers them as JSON and starts over, so that a benchmark can set the real server's
steps beside the floor's (a few perf_counter_ns reads a call: < 1 µs). Binds 127.0.0.1 on a free port, prints the port on stdout, serves until SIGTERM / SIGINT.

    python -m benchmarks.echo_server --responses DIR [--raw [--busy-us US]] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from benchmarks.bench_grpc import ECHO_METHOD, ECHO_STEPS_METHOD, ECHO_THREADS, _Echo, _echo_server
from server._gen.reranker.v1 import reranker_pb2 as pb


class _EchoBySize(_Echo):
    """bench_grpc's echo, with one canned response per candidate count."""

    def __init__(self, responses: dict[int, pb.RerankResponse]):
        self.responses = responses
        self.response = next(iter(responses.values()))

    def __call__(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        return self.responses.get(len(request.candidates.item_ids), self.response)


def _load(folder: Path) -> dict[int, pb.RerankResponse]:
    out = {}
    for path in sorted(folder.glob("response_*.bin")):
        out[int(path.stem.split("_")[1])] = pb.RerankResponse.FromString(path.read_bytes())
    if not out:
        raise SystemExit(f"echo_server: no response_<N>.bin in {folder}")
    return out


class _StepClock:
    """The raw echo's steps, per call, in ns: queue, receive, send (see the module's doc)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.samples: list[tuple[int, int, int]] = []

    def pool(self, max_workers: int) -> futures.ThreadPoolExecutor:
        clock = self

        class StepPool(futures.ThreadPoolExecutor):
            def submit(self, fn, /, *args, **kwargs):
                submitted = time.perf_counter_ns()

                def run():
                    local = clock.local
                    local.started, local.handled, local.returned = time.perf_counter_ns(), 0, 0
                    try:
                        return fn(*args, **kwargs)
                    finally:
                        if local.returned:  # an echo call (not the steps call)
                            sample = (local.started - submitted, local.handled - local.started,
                                      time.perf_counter_ns() - local.returned)
                            with clock.lock:
                                clock.samples.append(sample)

                return super().submit(run)

        return StepPool(max_workers=max_workers)

    def echo(self, response: bytes, busy_us: float = 0.0, busy_kb: int = 256):
        """The echo's handler; with `busy_us`, it first works that long (numpy passes over a
        `busy_kb` KiB buffer, holding the interpreter lock as a handler of ours does), so that the
        steps around a handler that does work can be set beside those around one that does none."""
        local, perf = self.local, time.perf_counter_ns
        busy_ns = int(busy_us * 1e3)
        buffer = np.zeros(busy_kb * 1024 // 8) if busy_ns else None

        def handle(_request: bytes, _context) -> bytes:
            local.handled = perf()
            if busy_ns:
                until = local.handled + busy_ns
                while perf() < until:
                    np.add(buffer, 1.0, out=buffer)
            local.returned = perf()
            return response

        return handle

    def take(self, _request: bytes, _context) -> bytes:
        """The steps so far, as JSON {"queue": [ns...], "receive": [...], "send": [...]}; starts over."""
        with self.lock:
            samples, self.samples = self.samples, []
        return json.dumps({k: [s[i] for s in samples] for i, k in enumerate(("queue", "receive", "send"))}).encode()


def _raw_echo_server(response: bytes, threads: int = ECHO_THREADS, busy_us: float = 0.0) -> tuple[grpc.Server, int]:
    """`_echo_server` with no protobuf on either side: bytes in, the canned bytes out; the steps
    of each call timed (`_StepClock`), answered by ECHO_STEPS_METHOD; `busy_us`: see
    `_StepClock.echo`."""
    service, method = ECHO_METHOD.strip("/").split("/")
    steps_service, steps_method = ECHO_STEPS_METHOD.strip("/").split("/")
    assert steps_service == service
    clock = _StepClock()
    handler = grpc.method_handlers_generic_handler(service, {
        method: grpc.unary_unary_rpc_method_handler(clock.echo(response, busy_us)),
        steps_method: grpc.unary_unary_rpc_method_handler(clock.take)})
    return _echo_server(None, handler=handler, pool=clock.pool(threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=Path, required=True,
                        help="folder of response_<N>.bin canned responses")
    parser.add_argument("--raw", action="store_true",
                        help="answer the request's bytes unparsed with the one canned response's bytes")
    parser.add_argument("--threads", type=int, default=ECHO_THREADS,
                        help=f"handler threads (default {ECHO_THREADS})")
    parser.add_argument("--busy-us", type=float, default=0.0,
                        help="--raw: work this long in the handler before answering (not a floor then)")
    args = parser.parse_args()
    if args.raw:
        files = sorted(args.responses.glob("response_*.bin"))
        if len(files) != 1:
            raise SystemExit(f"echo_server --raw: want exactly one response_<N>.bin in {args.responses}, "
                             f"found {len(files)}")
        server, port = _raw_echo_server(files[0].read_bytes(), args.threads, args.busy_us)
    else:
        server, port = _echo_server(_EchoBySize(_load(args.responses)),
                                    pool=futures.ThreadPoolExecutor(max_workers=args.threads))
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
