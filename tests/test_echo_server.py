"""The benchmarks' raw-bytes echo (benchmarks.echo_server): the canned bytes back, and its own
steps of each call (queue, receive, send) as bench_grpc reads them beside the real server's."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from benchmarks.bench_grpc import ECHO_METHOD, ECHO_STEPS_METHOD
from benchmarks.echo_server import _raw_echo_server


@pytest.fixture
def echo():
    def start(busy_us: float = 0.0):
        server, port = _raw_echo_server(b"canned", threads=2, busy_us=busy_us)
        server.start()
        servers.append(server)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return channel.unary_unary(ECHO_METHOD), channel.unary_unary(ECHO_STEPS_METHOD)

    servers, channels = [], []
    yield start
    for c in channels:
        c.close()
    for s in servers:
        s.stop(None)


def test_the_raw_echo_answers_its_canned_bytes_and_times_each_call(echo):
    call, steps = echo()
    steps(b"", timeout=10)  # nothing yet but the steps call itself, which is not counted
    assert [call(b"x" * n, timeout=10) for n in (0, 10, 70_000)] == [b"canned"] * 3
    taken = json.loads(steps(b"", timeout=10))
    assert sorted(taken) == ["queue", "receive", "send"]
    assert all(len(v) == 3 and min(v) >= 0 for v in taken.values()), taken
    assert json.loads(steps(b"", timeout=10)) == {"queue": [], "receive": [], "send": []}  # starts over


def test_a_busy_echo_works_at_least_as_long_as_asked_before_it_answers(echo):
    call, _ = echo(busy_us=20_000)
    t0 = time.perf_counter()
    assert call(b"x", timeout=10) == b"canned"
    assert time.perf_counter() - t0 >= 0.020
