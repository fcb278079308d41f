"""Where the time of one call goes inside a server process: the steps gRPC's sync server takes
around our handler, timed by the pieces of it that are ours.

A call's life in this process, and who can see each step:

1. gRPC's poller thread reads the call from the socket and hands it to the handler pool
   (`server.app._ShedCountingPool.submit`: the clock starts, `submitted`);
2. a handler thread takes it (`started`): **queue** = started - submitted;
3. on that thread gRPC asks its poller for the message body and waits for it, then calls our
   handler with the raw bytes (`handled`): **receive** = handled - started;
4. the handler parses the message (`parsed`): **parse** = parsed - handled;
5. the servicer: admission (expiry check, work estimate, lane), then decode, compile, solve,
   report, encode and the metrics of the answer; `elapsed_us["total"]` runs from `handled` to the
   encoded response, so it holds every step of ours before the answer leaves;
6. after the handler returns, gRPC serializes the response (`server.app._serializer`:
   **serialize**) and sends it with the status and trailers (**send**: from the end of the
   serializer to the end of the pool task). These two happen after the response is built, so
   they cannot be in its diagnostics: they go to the `reranker_call_step_seconds` histogram.

Steps 2-4 are reported in each response's `elapsed_us` (queue, receive, parse), next to the
engine's stages. What no step here sees is the client's own work and the transport: a
benchmark's round trip minus the raw-bytes echo's shows that (benchmarks/bench_grpc.py).
"""

from __future__ import annotations

import threading
import time

_local = threading.local()


class CallClock:
    """perf_counter_ns instants of one call on the thread that handles it (0: not reached)."""

    __slots__ = ("submitted", "started", "handled", "parsed", "serialized_from", "serialized_to")

    def __init__(self, submitted: int) -> None:
        self.submitted = submitted
        self.started = time.perf_counter_ns()
        self.handled = 0
        self.parsed = 0
        self.serialized_from = 0
        self.serialized_to = 0

    def steps_us(self) -> dict[str, float]:
        """queue, receive and parse in microseconds (those reached so far)."""
        out = {"queue": (self.started - self.submitted) / 1e3}
        if self.handled:
            out["receive"] = (self.handled - self.started) / 1e3
            if self.parsed:
                out["parse"] = (self.parsed - self.handled) / 1e3
        return out


def start(submitted_ns: int) -> CallClock:
    """A handler thread takes a call that the poller submitted at `submitted_ns`."""
    clock = CallClock(submitted_ns)
    _local.clock = clock
    return clock


def current() -> CallClock | None:
    """The clock of the call this thread handles; None outside the server's handler pool (a
    servicer called directly, in tests)."""
    return getattr(_local, "clock", None)


def finish() -> None:
    _local.clock = None
