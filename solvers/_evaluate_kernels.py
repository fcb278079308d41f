"""Numba kernel computing violation and slack of every constraint for one slate.

Imports only numpy and numba. Assumes valid input (see solvers.evaluate for the checked wrapper).
The definitions are documented in solvers.problem; tests/naive.py has the slow twin.
"""

import numba as nb
import numpy as np

MAX_COUNT = 0
MIN_COUNT = 1
WINDOW = 2
PIN = 3
ALL_VALUES = -1

_SIG = nb.void(
    nb.int64[::1],  # slate
    nb.int64[:, ::1],  # codes
    nb.int64[::1],  # n_values
    nb.int64[::1],  # kind
    nb.int64[::1],  # attr
    nb.int64[::1],  # value
    nb.int64[::1],  # bound
    nb.int64[::1],  # top
    nb.int64[::1],  # size
    nb.int64[::1],  # item
    nb.int64[::1],  # position
    nb.float64[::1],  # out violation
    nb.float64[::1],  # out slack
)


@nb.njit(_SIG, cache=True, nogil=True)
def constraint_status(slate, codes, n_values, kind, attr, value, bound, top, size, item, position,
                      violation, slack):
    L = slate.shape[0]
    C = kind.shape[0]
    for c in range(C):
        k = kind[c]
        if k == PIN:
            p = position[c]
            ok = item[c] >= 0 and p < L and slate[p] == item[c]
            violation[c] = 0.0 if ok else 1.0
            slack[c] = 0.0 if ok else -1.0
            continue
        a = attr[c]
        v = value[c]
        b = bound[c]
        if k == MAX_COUNT or k == MIN_COUNT:
            m = min(top[c], L)
            if k == MIN_COUNT:
                cnt = 0
                if v >= 0:
                    for p in range(m):
                        if codes[a, slate[p]] == v:
                            cnt += 1
                violation[c] = float(max(0, b - cnt))
                slack[c] = float(cnt - b)
            else:
                counts = np.zeros(n_values[a], dtype=np.int64)
                for p in range(m):
                    counts[codes[a, slate[p]]] += 1
                if v == ALL_VALUES:
                    viol = 0
                    worst = 0
                    for g in range(counts.shape[0]):
                        if counts[g] > b:
                            viol += counts[g] - b
                        if counts[g] > worst:
                            worst = counts[g]
                else:
                    worst = counts[v] if v >= 0 else 0
                    viol = max(0, worst - b)
                violation[c] = float(viol)
                slack[c] = float(b - worst)
        else:  # WINDOW
            w = size[c]
            n_win = L - w + 1
            span = w
            if n_win < 1:
                n_win = 1
                span = L
            counts = np.zeros(n_values[a], dtype=np.int64)
            viol = 0
            worst = 0
            for p in range(span):
                counts[codes[a, slate[p]]] += 1
            for q in range(n_win):
                if q > 0:
                    counts[codes[a, slate[q - 1]]] -= 1
                    counts[codes[a, slate[q + span - 1]]] += 1
                if v == ALL_VALUES:
                    for g in range(counts.shape[0]):
                        if counts[g] > b:
                            viol += counts[g] - b
                        if counts[g] > worst:
                            worst = counts[g]
                elif v >= 0:
                    if counts[v] > b:
                        viol += counts[v] - b
                    if counts[v] > worst:
                        worst = counts[v]
            violation[c] = float(viol)
            slack[c] = float(b - worst)
