"""Numba kernels of the request path's checks and sums (validation, compile). Imports only numpy
and numba; assumes valid input (engine.validate / engine.compile choose when to call them and
build every message themselves).

Each replaces a few numpy calls that allocate a temporary per column (`~np.isfinite(x)`,
`w * x`, `np.abs(u)`) by one pass that allocates nothing, with the same floating-point
operations in the same order, so every result is the same bit for bit:

* `first_non_finite(x)`: the first j with x[j] NaN or infinite, -1 when there is none.
* `scale_into(x, w, out)`: out[i] = x[i] * w (what `np.multiply(x, w)` computes).
* `add_scaled(x, w, out)`: out[i] += w * x[i] (what `out += w * x` computes).
* `finite_abs_max(u)`: max_i |u[i]| (0.0 for an empty u) when every u[i] is finite, -1.0 as soon
  as one is not.
* `count_equal(x, v)`: how many x[i] == v (`np.count_nonzero(x == v)`).
* `weighted_columns(x0, w0, x1, w1, x2, w2, x3, w3, k, first, out)`: the first k of up to four
  columns, weighted, into out: out[i] = x0[i] * w0 (`first`) or out[i] + w0 * x0[i], then
  + w1 * x1[i], ... in column order (per element the same operations as `scale_into` /
  `add_scaled` column by column); returns `finite_abs_max(out)`. Unused columns are any array.

Input arrays are typed read-only (a writable array is accepted as well), so that columns a caller
passes as read-only views need no copy. tests/test_request_kernels.py checks every kernel against
the numpy expressions above.
"""

import numba as nb
import numpy as np

_F64_IN = nb.types.Array(nb.float64, 1, "C", readonly=True)
_I64_IN = nb.types.Array(nb.int64, 1, "C", readonly=True)


@nb.njit(nb.int64(_F64_IN), cache=True, nogil=True)
def first_non_finite(x):
    for i in range(x.shape[0]):
        if not np.isfinite(x[i]):
            return i
    return -1


@nb.njit(nb.void(_F64_IN, nb.float64, nb.float64[::1]), cache=True, nogil=True)
def scale_into(x, w, out):
    for i in range(x.shape[0]):
        out[i] = x[i] * w


@nb.njit(nb.void(_F64_IN, nb.float64, nb.float64[::1]), cache=True, nogil=True)
def add_scaled(x, w, out):
    for i in range(x.shape[0]):
        out[i] += w * x[i]


@nb.njit(nb.float64(_F64_IN), cache=True, nogil=True)
def finite_abs_max(u):
    m = 0.0
    for i in range(u.shape[0]):
        x = u[i]
        if not np.isfinite(x):
            return -1.0
        a = abs(x)
        if a > m:
            m = a
    return m


@nb.njit(nb.int64(_I64_IN, nb.int64), cache=True, nogil=True)
def count_equal(x, v):
    n = 0
    for i in range(x.shape[0]):
        if x[i] == v:
            n += 1
    return n


@nb.njit(nb.float64(_F64_IN, nb.float64, _F64_IN, nb.float64, _F64_IN, nb.float64, _F64_IN,
                    nb.float64, nb.int64, nb.boolean, nb.float64[::1]), cache=True, nogil=True)
def weighted_columns(x0, w0, x1, w1, x2, w2, x3, w3, k, first, out):
    m = 0.0
    bad = False
    for i in range(out.shape[0]):
        v = x0[i] * w0 if first else out[i] + w0 * x0[i]
        if k > 1:
            v += w1 * x1[i]
        if k > 2:
            v += w2 * x2[i]
        if k > 3:
            v += w3 * x3[i]
        out[i] = v
        if not np.isfinite(v):
            bad = True
        else:
            a = abs(v)
            if a > m:
                m = a
    return -1.0 if bad else m
