"""HiGHS solver objects that never write to stdout.

HiGHS prints a copyright banner on stdout (from C, once per process) when the first `Highs`
object is made, before any option can turn it off. `new_highs` makes that first object with file
descriptor 1 pointed at /dev/null, under a lock, so neither a server's stdout nor an in-process
user's sees it, whichever code path makes the first solver; later objects are made directly.
Every object it returns already has `output_flag` off.
"""

from __future__ import annotations

import os
import sys
import threading

import highspy

_lock = threading.Lock()
_banner_done = False


def silence_banner() -> None:
    """Make the process's first HiGHS object with stdout silenced (idempotent, thread-safe)."""
    global _banner_done
    if _banner_done:
        return
    with _lock:
        if _banner_done:
            return
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
        _banner_done = True


def new_highs() -> highspy.Highs:
    """A `highspy.Highs` with output off; the banner never reaches stdout."""
    silence_banner()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h
