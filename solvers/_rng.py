"""splitmix64 (Steele, Lea & Flood 2014; Vigna's splitmix64.c), the one random-number generator
of the Numba kernels: exploration sampling (solvers._explore_kernels) and the estimators'
bootstrap (offline._estimator_kernels). A state is a uint64 array: one element per stream, so
a kernel can run several independent streams (one per bootstrap resample) side by side; the
same seed gives the same draws in every process."""

import numba as nb
import numpy as np

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@nb.njit(nb.uint64(nb.uint64[::1], nb.int64), cache=True, nogil=True, _nrt=False)
def splitmix64_at(state, b):
    """Advance stream b (state[b]) by the golden gamma and return the mixed value."""
    s = state[b] + _GAMMA
    state[b] = s
    z = s
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@nb.njit(nb.uint64(nb.uint64[::1]), cache=True, nogil=True, _nrt=False)
def splitmix64(state):
    """Advance the one stream of state[0] and return the mixed value."""
    return splitmix64_at(state, 0)
