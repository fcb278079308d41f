"""The echo floor of the load benchmark, as its own process.

Serves `benchmarks.bench_grpc.ECHO_METHOD` with bench_grpc's echo servicer and server options: the
request is deserialised by gRPC like the real server's, and the answer is a canned, real
`RerankResponse` of the same candidate count (read from `<responses>/response_<N>.bin`, where N is
the request's candidate count), so payloads match the real server's both ways with no work between.
With `--raw`, the raw-bytes echo: the request's bytes are not parsed at all (identity
deserialiser) and the answer is the canned response's bytes (the folder must hold one), which is
the floor of any gRPC Python server: transport, HTTP/2 and the handler hand-off, no protobuf.
Binds 127.0.0.1 on a free port, prints the port on stdout, serves until SIGTERM / SIGINT.

    python -m benchmarks.echo_server --responses DIR [--raw]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import grpc

from benchmarks.bench_grpc import ECHO_METHOD, _Echo, _echo_server
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


def _raw_echo_server(response: bytes) -> tuple[grpc.Server, int]:
    """`_echo_server` with no protobuf on either side: bytes in, the canned bytes out."""
    service, method = ECHO_METHOD.strip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: response)
    return _echo_server(None, handler=grpc.method_handlers_generic_handler(service, {method: handler}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=Path, required=True,
                        help="folder of response_<N>.bin canned responses")
    parser.add_argument("--raw", action="store_true",
                        help="answer the request's bytes unparsed with the one canned response's bytes")
    args = parser.parse_args()
    if args.raw:
        files = sorted(args.responses.glob("response_*.bin"))
        if len(files) != 1:
            raise SystemExit(f"echo_server --raw: want exactly one response_<N>.bin in {args.responses}, "
                             f"found {len(files)}")
        server, port = _raw_echo_server(files[0].read_bytes())
    else:
        server, port = _echo_server(_EchoBySize(_load(args.responses)))
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
