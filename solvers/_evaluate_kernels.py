"""Numba kernels scoring one slate: violation and slack of every constraint, and the similarity
diversity term of every position.

Imports only numpy, numba, solvers.codes (which holds the packed rule table's layout, RULE_*)
and, from solvers._greedy_kernels, the Numba types of the problem and table arguments and the
incremental Cholesky row, so that both kernel modules declare the table once and compute the DPP
residuals in one order. Assumes valid input (see
solvers.evaluate for the wrapper). The definitions are documented in solvers.problem;
tests/naive.py has the slow twins.
"""

import numba as nb
import numpy as np

from solvers._greedy_kernels import PROBLEM_TYPES, TABLE_TYPES, cholesky_row
from solvers.codes import (
    ALL_VALUES, CALIBRATION, CALIBRATION_ALPHA, COVERAGE, DIV_MMR, DPP_EPS, MAX_COUNT, MIN_COUNT, PIN,
    RULE_ATTR, RULE_BOUND, RULE_HARD, RULE_ITEM, RULE_KIND, RULE_POSITION, RULE_SIZE, RULE_TOP,
    RULE_VALUE,
)

_SIG = nb.void(
    nb.int64[::1],  # slate [L]
    *PROBLEM_TYPES,  # utility, position_weight, codes, n_values
    *TABLE_TYPES,  # rules, penalty, target, target_offset
    nb.float64[::1],  # out violation [C]
    nb.float64[::1],  # out slack [C]
    nb.float64[::1],  # out [utility part, penalty part]
)


@nb.njit(cache=True, nogil=True)
def _rows_status(slate, codes, n_values, rules, target, toff, violation, slack):
    L = slate.shape[0]
    N = codes.shape[1]
    for c in range(rules.shape[1]):
        k = rules[RULE_KIND, c]
        a = rules[RULE_ATTR, c]
        v = rules[RULE_VALUE, c]
        b = rules[RULE_BOUND, c]
        top = rules[RULE_TOP, c]
        if k == COVERAGE or k == CALIBRATION:
            m = min(top, L)
            counts = np.zeros(n_values[a], dtype=np.int64)
            for p in range(m):
                counts[codes[a, slate[p]]] += 1
            if k == COVERAGE:
                seen = np.zeros(n_values[a], dtype=np.bool_)
                n_distinct = 0
                for i in range(N):
                    if not seen[codes[a, i]]:
                        seen[codes[a, i]] = True
                        n_distinct += 1
                covered = 0
                for g in range(counts.shape[0]):
                    if counts[g] > 0:
                        covered += 1
                viol = float(min(top, n_distinct) - covered)
            else:
                viol = 0.0
                keep = 1.0 - CALIBRATION_ALPHA
                for g in range(counts.shape[0]):
                    tg = target[toff[c] + g]
                    if tg > 0.0:
                        q = counts[g] / m if m > 0 else 0.0
                        viol += tg * np.log(tg / (keep * q + CALIBRATION_ALPHA * tg))
            violation[c] = viol
            slack[c] = -viol
            continue
        if k == PIN:
            p = rules[RULE_POSITION, c]
            item = rules[RULE_ITEM, c]
            ok = item >= 0 and p < L and slate[p] == item
            violation[c] = 0.0 if ok else 1.0
            slack[c] = 0.0 if ok else -1.0
            continue
        if k == MAX_COUNT or k == MIN_COUNT:
            m = min(top, L)
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
            w = rules[RULE_SIZE, c]
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


@nb.njit(_SIG, cache=True, nogil=True)
def constraint_status(slate, u, pw, codes, n_values, rules, penalty, target, toff, violation,
                      slack, parts):
    """violation and slack of every row; parts = [sum_p pw[p] * u[slate[p]], sum over soft rows
    of penalty * violation] (both summed in order). The table is packed as for greedy_slate
    (solvers._greedy_kernels)."""
    L = slate.shape[0]
    C = rules.shape[1]
    up = 0.0
    for p in range(L):
        up += pw[p] * u[slate[p]]
    parts[0] = up
    _rows_status(slate, codes, n_values, rules, target, toff, violation, slack)
    pp = 0.0
    for c in range(C):
        if rules[RULE_HARD, c] == 0:
            pp += penalty[c] * violation[c]
    parts[1] = pp


_SORT_BOUND_SIG = nb.float64(nb.float64[::1], nb.float64[::1])  # utility [N], position_weight


@nb.njit(_SORT_BOUND_SIG, cache=True, nogil=True)
def sort_bound(u, pw):
    """sum_p pw[p] * (the p-th largest of u), p < min(len(pw), len(u)), summed in order (as the
    greedy kernel sums its info[0])."""
    N = u.shape[0]
    L = min(pw.shape[0], N)
    if L == 0:
        return 0.0
    if L < N:
        cut = np.partition(u, N - L)[N - L]  # the L-th largest value
        vals = np.empty(L)
        k = 0
        for i in range(N):
            if u[i] > cut:
                vals[k] = u[i]
                k += 1
        for j in range(k, L):
            vals[j] = cut
    else:
        vals = u.copy()
    vals.sort()
    s = 0.0
    for p in range(L):
        s += pw[p] * vals[L - 1 - p]
    return s


@nb.njit(cache=True, nogil=True)
def _dot(a, b):
    s = 0.0
    for k in range(a.shape[0]):
        s += a[k] * b[k]
    return s


_DIV_SIG = nb.void(
    nb.int64[::1],  # slate
    nb.float32[:, ::1],  # embeddings [N, d]
    nb.int64,  # div_mode
    nb.float64,  # div_weight (beta)
    nb.int64,  # div_window (0 = every earlier position)
    nb.float64[::1],  # out div [L]
)


@nb.njit(_DIV_SIG, cache=True, nogil=True)
def slate_diversity(slate, emb, div_mode, beta, window, div):
    """div[p] = the diversity term of slate[p] given the items above it (solvers.problem)."""
    L = slate.shape[0]
    d = emb.shape[1]
    # cosine matrix of the slate's items (a zero row is similar to nothing)
    x = np.zeros((L, d))
    n2 = np.zeros(L)
    for p in range(L):
        for k in range(d):
            x[p, k] = np.float64(emb[slate[p], k])
        n2[p] = _dot(x[p], x[p])
    S = np.zeros((L, L))
    for p in range(L):
        for q in range(p):
            if n2[p] > 0.0 and n2[q] > 0.0:
                S[p, q] = _dot(x[p], x[q]) / np.sqrt(n2[p] * n2[q])
                S[q, p] = S[p, q]
    if window >= L - 1:
        window = 0  # the window reaches every earlier position
    if div_mode == DIV_MMR:
        for p in range(L):
            lo = max(0, p - window) if window > 0 else 0
            m = 0.0
            for q in range(lo, p):
                if S[p, q] > m:
                    m = S[p, q]
            div[p] = -beta * m
        return
    Cv = np.zeros((L, L))  # row a: c-vector of the a-th item of the current sequence
    piv = np.zeros(L)
    if window == 0:
        # one incremental Cholesky over the slate in order (Chen et al.'s recurrence)
        for a in range(L):
            div[a] = beta * np.log(max(cholesky_row(S[a], Cv, piv, a), DPP_EPS))
        return
    for p in range(L):
        # the same recurrence over the window's items, then slate[p] against them
        lo = max(0, p - window)
        r = 1.0
        for a in range(p - lo + 1):
            r = cholesky_row(S[lo + a, lo:], Cv, piv, a)
        div[p] = beta * np.log(max(r, DPP_EPS))
