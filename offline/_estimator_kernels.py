"""Numba kernel of the round bootstrap: sums of resampled per-round statistics.

Imports only numpy and numba; assumes valid input. The public wrapper is
offline.estimators.bootstrap_sums; tests/naive_estimators.py holds the slow twin that must give
exactly the same sums. Semantics (shared with the twin):

* Input: S float64[n, m] (one row of m statistics per round), chunk (rounds per chunk), the
  chunk totals C int64[B, J] (J = ceil(n / chunk)) and one splitmix64 state per resample,
  state uint64[B]. Resample b takes C[b, j] rounds uniformly at random, with replacement, from
  chunk j (rounds j*chunk .. min(n, (j+1)*chunk) - 1), for every j, and out[b] is the sum of
  their rows of S.
* When C[b] ~ Multinomial(n, (size_j / n)_j) (the wrapper draws it so), the rounds taken by
  resample b have exactly the law of n draws with replacement from all n rounds: given the
  number of draws that land in each chunk, the draws are uniform inside it. The chunking only
  keeps the rows a resample reads inside a cache-sized window.
* Randomness: splitmix64 (Steele, Lea & Flood 2014) on state[b]; a round index inside a chunk
  of size s is drawn with Lemire's multiply-shift on the top 32 bits of the output, with his
  rejection step, so every index has probability exactly 1 / s.
* Loop order: chunks outer, resamples inner, draws of one (b, j) in order.
"""

import numba as nb
import numpy as np

from solvers._rng import splitmix64_at

_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO32 = np.uint64(1 << 32)


@nb.njit(nb.int64(nb.uint64[::1], nb.int64, nb.uint64), cache=True, nogil=True, _nrt=False)
def below(state, b, s):
    """A uniform integer in [0, s), 1 <= s < 2^32 (Lemire 2019, with rejection: exact)."""
    x = splitmix64_at(state, b) >> _S32
    prod = x * s
    low = prod & _LOW32
    if low < s:
        threshold = (_TWO32 - s) % s
        while low < threshold:
            x = splitmix64_at(state, b) >> _S32
            prod = x * s
            low = prod & _LOW32
    return nb.int64(prod >> _S32)


_SIG = nb.void(nb.float64[:, ::1], nb.int64, nb.int64[:, ::1], nb.uint64[::1], nb.float64[:, ::1])


@nb.njit(_SIG, cache=True, nogil=True, _nrt=False)
def bootstrap_sums(stats, chunk, totals, state, out):
    """out[b, :] = sum of the rows of `stats` drawn by resample b (see the module docstring)."""
    n, m = stats.shape
    n_boot, n_chunks = totals.shape
    for b in range(n_boot):
        for c in range(m):
            out[b, c] = 0.0
    for j in range(n_chunks):
        lo = j * chunk
        size = min(chunk, n - lo)
        s = nb.uint64(size)
        for b in range(n_boot):
            t = totals[b, j]
            if m == 1:
                acc = 0.0
                for _ in range(t):
                    acc += stats[lo + below(state, b, s), 0]
                out[b, 0] += acc
            else:
                for _ in range(t):
                    i = lo + below(state, b, s)
                    for c in range(m):
                        out[b, c] += stats[i, c]


_WIDE_SIG = nb.void(nb.float64[:, ::1], nb.int64, nb.int64[:, ::1], nb.uint64[::1],
                    nb.float64[::1], nb.float64[:, ::1])


@nb.njit(_WIDE_SIG, cache=True, nogil=True, _nrt=False, fastmath=True)
def bootstrap_sums_wide(stats_t, chunk, totals, state, counts, out):
    """bootstrap_sums for several columns, with stats given transposed (stats_t float64[m, n]):
    the same draws, in the same order, counted per round of the chunk (counts: scratch of at
    least `chunk` entries), then one dot product per column. Equal to bootstrap_sums up to the
    order of the floating-point additions."""
    m, n = stats_t.shape
    n_boot, n_chunks = totals.shape
    for b in range(n_boot):
        for c in range(m):
            out[b, c] = 0.0
    for j in range(n_chunks):
        lo = j * chunk
        size = min(chunk, n - lo)
        s = nb.uint64(size)
        for b in range(n_boot):
            for i in range(size):
                counts[i] = 0.0
            for _ in range(totals[b, j]):
                counts[below(state, b, s)] += 1.0
            for c in range(m):
                acc = 0.0
                for i in range(size):
                    acc += counts[i] * stats_t[c, lo + i]
                out[b, c] += acc


def warmup() -> None:
    """Compile (or load from the cache) the kernel on a tiny input."""
    stats = np.ones((3, 2))
    out = np.empty((2, 2))
    bootstrap_sums(stats, 2, np.array([[2, 1], [1, 2]], dtype=np.int64),
                   np.array([1, 2], dtype=np.uint64), out)
    bootstrap_sums(stats[:, :1].copy(), 2, np.array([[2, 1], [1, 2]], dtype=np.int64),
                   np.array([1, 2], dtype=np.uint64), out[:, :1].copy())
    bootstrap_sums_wide(np.ascontiguousarray(stats.T), 2, np.array([[2, 1], [1, 2]], dtype=np.int64),
                        np.array([1, 2], dtype=np.uint64), np.empty(2), out)
