"""Numba kernels scoring one slate: violation and slack of every constraint, and the similarity
diversity term of every position.

Imports only numpy, numba and solvers.codes. Assumes valid input (see solvers.evaluate for the wrapper).
The definitions are documented in solvers.problem; tests/naive.py has the slow twins.
"""

import numba as nb
import numpy as np

from solvers.codes import (
    ALL_VALUES, CALIBRATION, CALIBRATION_ALPHA, COVERAGE, DIV_MMR, DPP_EPS, DPP_SPAN_EPS, MAX_COUNT,
    MIN_COUNT, PIN,
)

_SIG = nb.void(
    nb.int64[::1],  # slate [L]
    nb.float64[::1],  # utility [N]
    nb.float64[::1],  # position_weight [>= L]
    nb.int64[:, ::1],  # codes
    nb.int64[::1],  # n_values
    nb.int64[::1],  # kind
    nb.int64[::1],  # attr
    nb.int64[::1],  # value
    nb.int64[::1],  # bound
    nb.int64[::1],  # top
    nb.int64[::1],  # size
    nb.boolean[::1],  # hard
    nb.float64[::1],  # penalty
    nb.int64[::1],  # item
    nb.int64[::1],  # position
    nb.float64[::1],  # target (calibration distributions, flat)
    nb.int64[::1],  # target_offset [C + 1]
    nb.float64[::1],  # out violation
    nb.float64[::1],  # out slack
    nb.float64[::1],  # out [utility part, penalty part]
)


@nb.njit(cache=True, nogil=True)
def _rows_status(slate, codes, n_values, kind, attr, value, bound, top, size, item, position,
                 target, toff, violation, slack):
    L = slate.shape[0]
    C = kind.shape[0]
    N = codes.shape[1]
    for c in range(C):
        k = kind[c]
        if k == COVERAGE or k == CALIBRATION:
            a = attr[c]
            m = min(top[c], L)
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
                viol = float(min(top[c], n_distinct) - covered)
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


@nb.njit(_SIG, cache=True, nogil=True)
def constraint_status(slate, u, pw, codes, n_values, kind, attr, value, bound, top, size, hard,
                      penalty, item, position, target, toff, violation, slack, parts):
    """violation and slack of every row; parts = [sum_p pw[p] * u[slate[p]], sum over soft rows
    of penalty * violation] (both summed in order)."""
    L = slate.shape[0]
    C = kind.shape[0]
    up = 0.0
    for p in range(L):
        up += pw[p] * u[slate[p]]
    parts[0] = up
    _rows_status(slate, codes, n_values, kind, attr, value, bound, top, size, item, position,
                 target, toff, violation, slack)
    pp = 0.0
    for c in range(C):
        if not hard[c]:
            pp += penalty[c] * violation[c]
    parts[1] = pp


@nb.njit(nb.float64(nb.float64[::1], nb.float64[::1]), cache=True, nogil=True)
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


@nb.njit(cache=True, nogil=True)
def _cholesky_row(S, Cv, piv, a, n_before, lo):
    """Row a of the incremental Cholesky of S over positions lo, lo+1, ... (against the n_before
    earlier rows; a row whose residual is <= DPP_SPAN_EPS gets pivot 0 and adds nothing).
    Returns the residual of row a and stores its pivot."""
    r = 1.0
    for b in range(n_before):
        e = 0.0
        if piv[b] > 0.0:
            acc = 0.0
            for m in range(b):
                acc += Cv[a, m] * Cv[b, m]
            e = (S[lo + a, lo + b] - acc) / piv[b]
        Cv[a, b] = e
        r -= e * e
    piv[a] = np.sqrt(r) if r > DPP_SPAN_EPS else 0.0
    return r


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
            div[a] = beta * np.log(max(_cholesky_row(S, Cv, piv, a, a, 0), DPP_EPS))
        return
    for p in range(L):
        # the same recurrence over the window's items, then slate[p] against them
        lo = max(0, p - window)
        r = 1.0
        for a in range(p - lo + 1):
            r = _cholesky_row(S, Cv, piv, a, a, lo)
        div[p] = beta * np.log(max(r, DPP_EPS))
