"""HiGHS solver objects that never write to stdout.

HiGHS prints a copyright banner on stdout (from C, once per process) when the first `Highs`
object is made, before any option can turn it off. `new_highs` (through `silence_banner`) makes
that first object with file descriptor 1 pointed at /dev/null, under a lock, so neither a
server's stdout nor an in-process user's sees it, whichever caller of `new_highs` (the exact
solvers in solvers.exact) makes the first solver; later objects are made directly. Every object
it returns already has `output_flag` off.

Only objects made through this module are covered: CVXPY's HIGHS backend (e.g.
`ExposureLP(..., solver="HIGHS")` in solvers.exposure_lp) makes its own `highspy.Highs`, and if
that is the process's first one the banner reaches stdout, unless `silence_banner()` has run
before.
"""

from __future__ import annotations

import os
import sys
import threading

import highspy

_lock = threading.Lock()
_banner_done = False


def silence_banner() -> None:
    """Make the process's first HiGHS object with stdout silenced (idempotent, thread-safe).

    The first call makes (and drops) one `highspy.Highs` with file descriptor 1 pointed at
    /dev/null, after flushing sys.stdout, then restores descriptor 1; later calls return at once.
    Call it before anything else (e.g. CVXPY's HIGHS backend) makes a HiGHS object to keep the
    banner off stdout; once another object has been made, the banner has already been printed.

    Returns
    -------
    None
    """
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
    """A `highspy.Highs` with output off; the banner never reaches stdout.

    Calls `silence_banner` first, so the process's first HiGHS object is made silently.

    Returns
    -------
    highspy.Highs
        A new, empty solver object with the option `output_flag` set to False.
    """
    silence_banner()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h
