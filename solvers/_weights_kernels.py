"""Numba kernel over the position weights. Imports only numpy and numba.

`monotone(w)`: whether every weight is >= 0 and none exceeds the one before it (the condition
under which the sort bound is valid and a plain greedy is optimal), i.e.
``all(x >= 0 for x in w) and all(a >= b for a, b in zip(w, w[1:]))``: a NaN weight makes it
False, as there. One pass, no list of Python floats (that check cost ~3 us at L=50 and ran two or
three times per request). tests/test_weights_kernels.py checks it against that expression.
"""

import numba as nb
import numpy as np  # noqa: F401 - the module imports only numpy and numba

_F64_IN = nb.types.Array(nb.float64, 1, "C", readonly=True)


@nb.njit(nb.boolean(_F64_IN), cache=True, nogil=True)
def monotone(w):
    n = w.shape[0]
    for i in range(n):
        if not w[i] >= 0.0:
            return False
        if i > 0 and not w[i - 1] >= w[i]:
            return False
    return True
