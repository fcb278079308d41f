"""A throwaway redis-server for tests and benchmarks: started as a subprocess on a free localhost
port, no persistence, killable and restartable on the same port (to simulate outages).

    with RedisServer() as server:        # or the `redis_server` pytest fixture below
        url = server.url                 # redis://127.0.0.1:<port>/0
        server.kill()                    # SIGKILL: a crash, connections refused
        server.start()                   # same port again, empty data
        server.pause(); server.resume()  # SIGSTOP / SIGCONT: a server that hangs

By default nothing is persisted (`--save '' --appendonly no`): a killed server comes back empty.
`RedisServer(durable=True)` runs with `--appendonly yes --appendfsync always` instead, so every
acknowledged write survives a kill -9 and the restart loads it back, as a production Redis with
an append-only file would.

If redis-server is missing, `require_redis_server()` skips the test, except under CI (the CI
environment variable set), where a missing server fails loudly: CI must run these tests.
`make test` installs redis-server first (the Makefile's `redis` target).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from testing.require import missing


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """Path of redis-server; pytest.skip without it (pytest.fail under CI)."""
    binary = redis_server_binary()
    if binary is None:
        message = ("redis-server not found on PATH: install it (apt-get install redis-server, or "
                   "`make test`, which installs it as root)")
        missing(message, "; CI is set, so the Redis tests must run")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int, timeout: float = 0.2) -> bool:
    """True if a Redis on 127.0.0.1:port answers PING (raw RESP, no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server subprocess bound to 127.0.0.1:port."""

    def __init__(self, port: int | None = None, binary: str | None = None,
                 durable: bool = False) -> None:
        self.binary = binary or redis_server_binary()
        if self.binary is None:
            raise RuntimeError("redis-server not found on PATH")
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart) on self.port; return once PING answers."""
        if self.running:
            return self
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.durable
               else ["--appendonly", "no"]),
             "--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port "
                                   f"{self.port}: {err.strip()}")
            if ping(self.port):
                return self
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout} s")

    def kill(self) -> None:
        """SIGKILL (a crash: data gone, port closed); returns once the process is reaped."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process must be able to die
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing is answered (a hung server)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def redis_server():
    """A running RedisServer, one per test (empty data); stopped afterwards.
    Import it into a test module: `from testing.redis_server import redis_server  # noqa: F401`."""
    binary = require_redis_server()
    server = RedisServer(binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.close()
