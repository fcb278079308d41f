"""Stopping a child process the way every test and benchmark here does: SIGTERM, wait, SIGKILL."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate `proc` if it still runs; kill it if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
