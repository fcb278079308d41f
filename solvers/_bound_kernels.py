"""Numba kernel of the Lagrangian bound. Imports only numpy, numba and solvers.codes; assumes valid
input (solvers.bound validates, packs and interprets).

The relaxation. The linear rules (MAX_COUNT, MIN_COUNT, WINDOW rows, hard and soft, one row per
value and per window as `evaluate` counts them) are moved into the objective with multipliers
mu >= 0 (at most the row's penalty for a soft row); pins are kept exactly (hard pins fix their
item and position, soft pins are a bonus at their cell). What is left is an assignment problem
(each position one item, each item at most once) with costs

    c'(j, p) = w[p] * u[j] - price(j, p),   price(j, p) = sum of +mu (max rows) / -mu (min rows)
                                                          over the rows holding j's value at p

and D(mu) = max over assignments of sum c' + sum_max mu * bound - sum_min mu * bound + pin
constants is an upper bound on every slate that meets the hard rows, for every mu in range
(weak duality: each relaxed term mu * slack is >= 0 on such slates, and for a soft row
-penalty * max(0, excess) <= -mu * excess when 0 <= mu <= penalty).

The assignment is solved exactly (Hungarian / shortest augmenting paths, O(P^2 M)) over a
candidate set reduced safely by dominance: scanning items by utility, item i dominates every
later item at every free position p once c'(i, p) >= w[p] * u_next - price_min(p), where
u_next is the largest utility not yet scanned and price_min(p) <= every item's price at p; when
as many dominating items as free positions have been scanned, no later item can be needed
(an optimal assignment using one could swap it for an unused dominating item). This needs
w >= 0; with a negative weight every item is kept.

mu is minimised by projected subgradient steps (Polyak's step towards a target, the best known
objective of a slate that meets the hard rows, halving the step factor after `STALL` steps
without improvement). Every iterate's D is a valid bound; the smallest is returned.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from solvers.codes import (
    ALL_VALUES, COVERAGE, MAX_COUNT, MIN_COUNT, PIN, RULE_ATTR, RULE_BOUND, RULE_ITEM, RULE_KIND,
    RULE_POSITION, RULE_SIZE, RULE_TOP, RULE_VALUE, WINDOW,
)

STALL = 6
#: the steps stop when the bound is within STOP_REL (relative) of the target (the MIP's own
#: optimality gap is 1e-7: solvers.exact.highs_mip.MIP_REL_GAP), or when the STALL steps before
#: a halving of the step gained less than STALL_REL
STOP_REL = 5e-8
STALL_REL = 1e-6
#: out[3] codes
BOUND_OK = 0
BOUND_NOT_FINITE = 1
BOUND_PIN_CLASH = 2

_SIG = nb.void(nb.float64[::1], nb.float64[::1], nb.int64[:, ::1], nb.int64[::1],
               nb.int64[:, ::1], nb.float64[::1], nb.boolean[::1], nb.boolean[::1],
               nb.float64, nb.int64, nb.float64[::1], nb.float64[::1])
#: most distinct (attribute, value) pairs of min rows told apart by the candidate classes
MAX_MIN_PAIRS = 62


@nb.njit(nb.int64(nb.float64[:, ::1], nb.int64, nb.int64, nb.int64[::1], nb.float64[::1],
                  nb.float64[::1], nb.float64[::1], nb.int64[::1], nb.boolean[::1],
                  nb.int64[::1]), cache=True, nogil=True)
def _assign(a, n, m, p, uu, vv, minv, way, used, assign):
    """Max-weight assignment of rows 1..n to distinct columns 1..m (n <= m), warm-started.

    The weight of (row i, column j) is a[j - 1, i - 1] (a holds one line per column: an item).
    Shortest augmenting paths with potentials (the e-maxx formulation of the Hungarian method)
    on the costs -a, started from a partial matching: p[j] = the row matched to column j (0:
    free) and vv[j] the column potentials of the previous solve on matched columns (read; the
    others are ignored). The start is made dual feasible (see below), and every unmatched row
    is then added by one augmenting path, which keeps the potentials feasible and the matches
    tight: the result is optimal for these costs whatever the start; on exit vv holds the
    column potentials. Returns 0 (assign[i - 1] = column - 1 of row i), or 1 when a
    cost is not finite.
    """
    INF = np.inf
    # Optimality of a rectangular assignment (min cost of -a, every row matched, a column at
    # most once): potentials with u[i] + v[j] <= -a for all (i, j), equality on matches, v <= 0
    # and v = 0 on free columns. e-maxx keeps exactly this (a free column is never in a search
    # tree, so its v stays 0). The start restores it for the kept matches: free columns get
    # v = 0, matched ones keep the v given (<= 0, from the previous solve); each kept row's u is
    # the largest feasible one; a match that is then not tight is dropped (its column freed,
    # v = 0), until none is dropped (at most three rounds, then a cold start).
    rows_in = np.zeros(n + 1, dtype=np.bool_)
    vv[0] = 0.0
    for j in range(1, m + 1):
        if p[j] > 0:
            rows_in[p[j]] = True
            if vv[j] > 0.0:
                vv[j] = 0.0
        else:
            vv[j] = 0.0
    for _pass in range(4):
        if _pass == 3:
            # still dropping: the start is not worth repairing, start cold (always valid)
            for j in range(1, m + 1):
                p[j] = 0
                vv[j] = 0.0
            for i in range(1, n + 1):
                rows_in[i] = False
            break
        for i in range(1, n + 1):
            if rows_in[i]:
                best = INF
                for j in range(1, m + 1):
                    x = -a[j - 1, i - 1] - vv[j]
                    if x < best:
                        best = x
                uu[i] = best
        dropped = False
        for j in range(1, m + 1):
            i = p[j]
            if i > 0:
                red = -a[j - 1, i - 1] - uu[i] - vv[j]
                if red > 1e-12 * (1.0 + abs(a[j - 1, i - 1])):
                    p[j] = 0
                    vv[j] = 0.0
                    rows_in[i] = False
                    dropped = True
        if not dropped:
            break
    for i in range(1, n + 1):
        if rows_in[i]:
            continue
        p[0] = i
        j0 = 0
        for j in range(m + 1):
            minv[j] = INF
            used[j] = False
        while True:
            used[j0] = True
            i0 = p[j0]
            delta = INF
            j1 = -1
            for j in range(1, m + 1):
                if not used[j]:
                    cur = -a[j - 1, i0 - 1] - uu[i0] - vv[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta = minv[j]
                        j1 = j
            if j1 < 0 or not np.isfinite(delta):
                return 1
            for j in range(m + 1):
                if used[j]:
                    uu[p[j]] += delta
                    vv[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    for j in range(1, m + 1):
        if p[j] > 0:
            assign[p[j] - 1] = j - 1
    return 0


@nb.njit(nb.void(nb.float64[::1], nb.int64[::1], nb.int64, nb.int64), cache=True, nogil=True)
def _sift_down(key, heap, n, i):
    """Max-heap on key[heap[.]] (ties: the lower item index first) of size n, from slot i."""
    while True:
        l = 2 * i + 1
        if l >= n:
            return
        b = l
        r = l + 1
        if r < n and (key[heap[r]] > key[heap[l]]
                      or (key[heap[r]] == key[heap[l]] and heap[r] < heap[l])):
            b = r
        if key[heap[b]] > key[heap[i]] or (key[heap[b]] == key[heap[i]] and heap[b] < heap[i]):
            t = heap[b]
            heap[b] = heap[i]
            heap[i] = t
            i = b
        else:
            return


@nb.njit(cache=True, nogil=True)
def _nth(k, r, u, heap, hstart, hsize, seq, slen):
    """The r-th best item (0-based) of class k, popping its heap lazily; -1 when exhausted.
    Class k's heap is heap[hstart[k]:hstart[k] + hsize[k]]; its popped items go to
    seq[hstart[k]:hstart[k] + slen[k]] (a class has as many slots in both as items)."""
    base = hstart[k]
    while slen[k] <= r:
        n = hsize[k]
        if n == 0:
            return -1
        h = heap[base:base + n]
        top = h[0]
        h[0] = h[n - 1]
        hsize[k] = n - 1
        _sift_down(u, h, n - 1, 0)
        seq[base + slen[k]] = top
        slen[k] += 1
    return seq[base + r]


@nb.njit(cache=True, nogil=True)
def _price_of(j, p, codes, attrs, tab_off, tab, L):
    s = 0.0
    for q in range(attrs.shape[0]):
        a = attrs[q]
        s += tab[tab_off[q] + codes[a, j] * L + p]
    return s


@nb.njit(_SIG, cache=True, nogil=True)
def lagrangian_bound(u, w, codes, n_values, rules, penalty, hard, use, target, max_iter, mu, out):
    """Smallest D(mu) over at most `max_iter` subgradient steps from the given `mu` (in / out).

    u[N] utilities, w[L] position weights, codes / n_values / rules / penalty as the greedy
    takes them, hard[C] (the table's hard column), use[C] the rows the bound honours (hard rows
    the slate must meet and soft rows; others ignored), target the objective of a known slate
    meeting the hard rows in `use` (-inf if none). mu holds the multipliers, laid out per row c
    in order (one per value of its attribute, times its windows for WINDOW; see
    solvers.bound.multiplier_size; any other length starts from 0). out[0] = bound, out[1] = steps taken, out[2] = D at the
    starting mu, out[3] = status (BOUND_OK, BOUND_NOT_FINITE, BOUND_PIN_CLASH), out[4] = the
    number of items the last assignment kept.
    """
    N = u.shape[0]
    L = w.shape[0]
    C = rules.shape[1]
    A = codes.shape[0]
    out[0] = np.inf
    out[1] = 0.0
    out[2] = np.inf
    out[3] = BOUND_OK
    out[4] = 0.0
    # ---- multiplier layout and price tables (one [n_values, L] block per attribute read) ----
    off = np.zeros(C + 1, dtype=np.int64)
    nw = np.ones(C, dtype=np.int64)
    slot = np.full(A, -1, dtype=np.int64)
    n_attr = 0
    for c in range(C):
        width = 0
        kind = rules[RULE_KIND, c]
        if use[c] and (kind == MAX_COUNT or kind == MIN_COUNT or kind == WINDOW
                       or kind == COVERAGE):
            a = rules[RULE_ATTR, c]
            nv = n_values[a]
            if kind == WINDOW:
                nw[c] = max(1, L - rules[RULE_SIZE, c] + 1)
                width = nv * nw[c]
            else:
                width = nv
            if slot[a] < 0:
                slot[a] = n_attr
                n_attr += 1
        off[c + 1] = off[c] + width
    attrs = np.empty(n_attr, dtype=np.int64)
    tab_off = np.zeros(n_attr + 1, dtype=np.int64)
    for a in range(A):
        if slot[a] >= 0:
            attrs[slot[a]] = a
    for q in range(n_attr):
        tab_off[q + 1] = tab_off[q] + n_values[attrs[q]] * L
    tab = np.zeros(tab_off[n_attr])
    if mu.shape[0] != off[C]:
        mu = np.zeros(off[C])  # no (or a mis-sized) warm start: start from 0
    # The multipliers that can move are kept in a list (`act`): every entry of a min row, every
    # entry with mu > 0, and every max / window entry that a relaxed slate has violated. An
    # entry outside the list has mu = 0 and a subgradient that the projection cancels (a max
    # row the slate does not exceed), so leaving it out changes no step.
    E = off[C]
    act = np.empty(E, dtype=np.int64)
    ent_rule = np.full(E, -1, dtype=np.int64)  # rule of each listed entry
    n_act = 0
    # coverage rows (linearised): entry v is the multiplier of y_v <= (items of value v in the
    # prefix), for the values some candidate has; cov_max[c] = min(top, values present)
    cov_present = np.zeros(E, dtype=np.bool_)
    cov_max = np.zeros(C, dtype=np.int64)
    for c in range(C):
        if off[c + 1] > off[c] and rules[RULE_KIND, c] == COVERAGE:
            a = rules[RULE_ATTR, c]
            for j in range(N):
                cov_present[off[c] + codes[a, j]] = True
            n_here = 0
            for k in range(off[c], off[c + 1]):
                n_here += cov_present[k]
            cov_max[c] = min(min(rules[RULE_TOP, c], L), n_here)
    for c in range(C):
        v = rules[RULE_VALUE, c]
        if rules[RULE_KIND, c] == COVERAGE:
            for k in range(off[c], off[c + 1]):
                if cov_present[k]:
                    act[n_act] = k
                    ent_rule[k] = c
                    n_act += 1
            continue
        for k in range(off[c], off[c + 1]):
            code = (k - off[c]) // nw[c] if rules[RULE_KIND, c] == WINDOW else k - off[c]
            if v != ALL_VALUES and code != v:
                continue  # not a row of this rule (a named value's rule has one per window)
            listed = mu[k] > 0.0
            if rules[RULE_KIND, c] == MIN_COUNT:
                # a min row over ALL_VALUES / NO_MATCH counts nothing: no row, no multiplier
                # (its violation is a constant); a named value's min row is always listed
                listed = v != ALL_VALUES
            if listed:
                act[n_act] = k
                ent_rule[k] = c
                n_act += 1
    cnt = np.zeros(E)
    touched = np.empty(E, dtype=np.int64)
    # ---- pins: hard ones fix a cell, soft ones are a bonus ----------------------------------
    fixed_item = np.full(L, -1, dtype=np.int64)
    is_fixed = np.zeros(N, dtype=np.bool_)
    bonus_item = np.full(L, -1, dtype=np.int64)
    bonus = np.zeros(L)
    const0 = 0.0
    for c in range(C):
        if not use[c] or rules[RULE_KIND, c] != PIN:
            continue
        it = rules[RULE_ITEM, c]
        pos = rules[RULE_POSITION, c]
        ok = it >= 0 and it < N and pos >= 0 and pos < L
        if hard[c]:
            if not ok or fixed_item[pos] >= 0 or is_fixed[it]:
                out[3] = BOUND_PIN_CLASH
                return
            fixed_item[pos] = it
            is_fixed[it] = True
        else:
            const0 -= penalty[c]
            if ok:
                if bonus_item[pos] == it:
                    bonus[pos] += penalty[c]
                elif bonus_item[pos] < 0 or penalty[c] > bonus[pos]:
                    # two soft pins on one cell: at most one can pay; the cell keeps the larger
                    # bonus (valid: the other is then bounded by its constant alone)
                    bonus_item[pos] = it
                    bonus[pos] = penalty[c]
    free = np.empty(L, dtype=np.int64)
    P = 0
    for p in range(L):
        if fixed_item[p] < 0:
            free[P] = p
            P += 1
    nonneg = True
    for p in range(L):
        if w[p] < 0:
            nonneg = False
    special = np.zeros(N, dtype=np.bool_)  # soft-pinned items: always candidates
    n_special = 0
    for p in range(L):
        j = bonus_item[p]
        if j >= 0 and not is_fixed[j] and not special[j]:
            special[j] = True
            n_special += 1
    # ---- candidate classes: items matching the same min rows' (attribute, value) pairs -------
    # (within a class every price is >= the class's min-row part, which the scan uses)
    pair_attr = np.empty(MAX_MIN_PAIRS, dtype=np.int64)
    pair_val = np.empty(MAX_MIN_PAIRS, dtype=np.int64)
    row_pair = np.full(C, -1, dtype=np.int64)
    n_pairs = 0
    for c in range(C):
        if not use[c] or rules[RULE_KIND, c] != MIN_COUNT:
            continue
        a = rules[RULE_ATTR, c]
        v = rules[RULE_VALUE, c]
        if v < 0 or v >= n_values[a]:
            continue
        found = -1
        for q in range(n_pairs):
            if pair_attr[q] == a and pair_val[q] == v:
                found = q
        if found < 0 and n_pairs < MAX_MIN_PAIRS:
            pair_attr[n_pairs] = a
            pair_val[n_pairs] = v
            found = n_pairs
            n_pairs += 1
        row_pair[c] = found  # -1: too many pairs, the row lowers every class's floor instead
    sig_of = np.empty(N, dtype=np.int64)
    klass = np.empty(N, dtype=np.int64)
    ksig = np.empty(N, dtype=np.int64)
    K = 0
    for j in range(N):
        sg = 0
        for q in range(n_pairs):
            if codes[pair_attr[q], j] == pair_val[q]:
                sg |= 1 << q
        sig_of[j] = sg
        found = -1
        for k in range(K):
            if ksig[k] == sg:
                found = k
                break
        if found < 0:
            ksig[K] = sg
            found = K
            K += 1
        klass[j] = found
    if not nonneg:
        for j in range(N):
            klass[j] = 0  # no dominance: one class, scanned to the end
        K = 1
    hsize = np.zeros(K, dtype=np.int64)
    for j in range(N):
        if not is_fixed[j] and not special[j]:
            hsize[klass[j]] += 1
    hstart = np.zeros(K + 1, dtype=np.int64)
    for k in range(K):
        hstart[k + 1] = hstart[k] + hsize[k]
    heap = np.empty(max(hstart[K], 1), dtype=np.int64)
    fill = hstart[:K].copy()
    for j in range(N):
        if not is_fixed[j] and not special[j]:
            heap[fill[klass[j]]] = j
            fill[klass[j]] += 1
    for k in range(K):
        n = hsize[k]
        h = heap[hstart[k]:hstart[k] + n]
        for i in range(n // 2 - 1, -1, -1):
            _sift_down(u, h, n, i)
    seq = np.empty(max(hstart[K], 1), dtype=np.int64)
    slen = np.zeros(K, dtype=np.int64)
    # ---- work arrays -------------------------------------------------------------------
    cand = np.empty(N, dtype=np.int64)
    cost = np.empty((N, max(P, 1)))  # one line per candidate: only the lines used are touched
    dom = np.empty(N)
    assign = np.empty(max(P, 1), dtype=np.int64)
    pcol = np.zeros(N + 1, dtype=np.int64)  # the assignment's column -> row (1-based)
    uu = np.zeros(L + 1)  # row potentials, kept from one step to the next (warm start)
    vv = np.empty(N + 1)
    minv = np.empty(N + 1)
    way = np.empty(N + 1, dtype=np.int64)
    used = np.empty(N + 1, dtype=np.bool_)
    row_item = np.full(max(P, 1), -1, dtype=np.int64)  # item at each free position, last step
    v_item = np.zeros(N)  # column potential of each item in the last solve
    col_of = np.full(N, -1, dtype=np.int64)
    floor = np.empty((K, L))
    g = np.zeros(off[C])
    chosen = np.empty(L, dtype=np.int64)
    lam = 1.0
    best = np.inf
    last_halving = np.inf
    since = 0
    steps = 0
    for it_ in range(max_iter + 1):
        # ---- price tables from the listed multipliers ------------------------------------------
        for k in range(tab.shape[0]):
            tab[k] = 0.0
        for k in range(K):
            for p in range(L):
                floor[k, p] = 0.0
        for i in range(n_act):
            k = act[i]
            m_ = mu[k]
            if m_ == 0.0:
                continue
            c = ent_rule[k]
            kind = rules[RULE_KIND, c]
            a = rules[RULE_ATTR, c]
            base = tab_off[slot[a]]
            rel = k - off[c]
            if kind == WINDOW:
                code = rel // nw[c]
                s0 = rel - code * nw[c]
                for p in range(s0, min(s0 + rules[RULE_SIZE, c], L)):
                    tab[base + code * L + p] += m_
            elif kind == MAX_COUNT:
                for p in range(min(rules[RULE_TOP, c], L)):
                    tab[base + rel * L + p] += m_
            elif kind == COVERAGE:
                for p in range(min(rules[RULE_TOP, c], L)):
                    tab[base + rel * L + p] -= m_  # a bonus (the floors take its row's largest)
            else:
                top = min(rules[RULE_TOP, c], L)
                for p in range(top):
                    tab[base + rel * L + p] -= m_
                q = row_pair[c]
                for kc in range(K):
                    if q < 0 or (ksig[kc] >> q) & 1:
                        for p in range(top):
                            floor[kc, p] -= m_
        for c in range(C):
            if off[c + 1] > off[c] and rules[RULE_KIND, c] == COVERAGE:
                mx = 0.0
                for k in range(off[c], off[c + 1]):
                    if mu[k] > mx:
                        mx = mu[k]
                if mx > 0.0:
                    for kc in range(K):
                        for p in range(min(rules[RULE_TOP, c], L)):
                            floor[kc, p] -= mx
        # ---- candidates: per class, scan by utility until enough dominating items ----------
        m = 0
        for j in range(N):
            if special[j]:
                cand[m] = j
                for q in range(P):
                    p = free[q]
                    cc = w[p] * u[j] - _price_of(j, p, codes, attrs, tab_off, tab, L)
                    if bonus_item[p] == j:
                        cc += bonus[p]
                    cost[m, q] = cc
                m += 1
        for k in range(K):
            first = m
            r = 0
            while True:
                j = _nth(k, r, u, heap, hstart, hsize, seq, slen)
                if j < 0:
                    break
                cand[m] = j
                d = np.inf
                for q in range(P):
                    p = free[q]
                    cc = w[p] * u[j] - _price_of(j, p, codes, attrs, tab_off, tab, L)
                    cost[m, q] = cc
                    x = cc + floor[k, p]  # c' >= w * u_next - floor: dominates
                    if w[p] > 0:
                        dq = x / w[p]
                    elif x >= 0:
                        dq = np.inf
                    else:
                        dq = -np.inf
                    if dq < d:
                        d = dq
                dom[m] = d
                m += 1
                r += 1
                if not nonneg or m - first < P:
                    continue
                nxt = _nth(k, r, u, heap, hstart, hsize, seq, slen)
                if nxt < 0:
                    break
                un = u[nxt]
                n_dom = 0
                for i in range(first, m):
                    if dom[i] >= un:
                        n_dom += 1
                if n_dom >= P:
                    break
        out[4] = m
        # ---- the assignment ----------------------------------------------------------------
        val = 0.0
        if P > 0:
            if m < P:
                out[3] = BOUND_PIN_CLASH  # fewer items than free positions: not a valid problem
                return
            for i in range(m):
                col_of[cand[i]] = i
            for j in range(m + 1):
                pcol[j] = 0
            for q in range(P):
                if row_item[q] >= 0 and col_of[row_item[q]] >= 0:
                    pcol[col_of[row_item[q]] + 1] = q + 1
            for i in range(m):
                vv[i + 1] = v_item[cand[i]]
            if it_ == 0:
                # first solve: start from the sort (the optimum of w[p] * u[j] for weights that
                # do not increase, with its closed-form duals pi[q] = pi[q + 1] + (w[q] -
                # w[q + 1]) * u(q + 1), pi[last] = w[last] * u(next)); _assign repairs any of
                # it that does not hold for these costs, so this only saves time
                srt = np.argsort(-u[cand[:m]], kind="mergesort")
                un = u[cand[srt[P]]] if m > P else 0.0
                pi = w[free[P - 1]] * un
                for q in range(P - 1, -1, -1):
                    col = srt[q]
                    if q < P - 1:
                        pi += (w[free[q]] - w[free[q + 1]]) * u[cand[srt[q + 1]]]
                    pcol[col + 1] = q + 1
                    vv[col + 1] = -(cost[col, q] - pi)
            if _assign(cost, P, m, pcol, uu, vv, minv, way, used, assign) != 0:
                out[3] = BOUND_NOT_FINITE
                return
            for i in range(m):
                col_of[cand[i]] = -1
                v_item[cand[i]] = vv[i + 1]
            for q in range(P):
                val += cost[assign[q], q]
                chosen[free[q]] = cand[assign[q]]
                row_item[q] = cand[assign[q]]
        for p in range(L):
            if fixed_item[p] >= 0:
                j = fixed_item[p]
                chosen[p] = j
                val += w[p] * u[j] - _price_of(j, p, codes, attrs, tab_off, tab, L)
        # ---- D(mu) and its subgradient ---------------------------------------------------------
        # counts of the relaxed slate on every row entry it touches
        n_t = 0
        for p in range(L):
            j = chosen[p]
            for c in range(C):
                if off[c + 1] == off[c]:
                    continue
                kind = rules[RULE_KIND, c]
                v = ALL_VALUES if kind == COVERAGE else rules[RULE_VALUE, c]
                code = codes[rules[RULE_ATTR, c], j]
                if v != ALL_VALUES and code != v:
                    continue
                if kind == MIN_COUNT and v < 0:
                    continue
                if kind == WINDOW:
                    kk = nw[c]
                    for s0 in range(max(0, p - rules[RULE_SIZE, c] + 1), min(p, kk - 1) + 1):
                        k = off[c] + code * kk + s0
                        if cnt[k] == 0.0:
                            touched[n_t] = k
                            n_t += 1
                            if ent_rule[k] < 0:
                                ent_rule[k] = c
                        cnt[k] += 1.0
                elif p < rules[RULE_TOP, c]:
                    k = off[c] + code
                    if cnt[k] == 0.0:
                        touched[n_t] = k
                        n_t += 1
                        if ent_rule[k] < 0:
                            ent_rule[k] = c
                    cnt[k] += 1.0
        # a violated max / window entry joins the list
        for i in range(n_t):
            k = touched[i]
            c = ent_rule[k]
            kind = rules[RULE_KIND, c]
            if kind != MIN_COUNT and kind != COVERAGE and cnt[k] > rules[RULE_BOUND, c]:
                listed = False
                for i2 in range(n_act):
                    if act[i2] == k:
                        listed = True
                        break
                if not listed:
                    act[n_act] = k
                    n_act += 1
        const = const0
        for c in range(C):
            # min rows that match nothing (NO_MATCH, ALL_VALUES): a constant violation
            if use[c] and rules[RULE_KIND, c] == MIN_COUNT and not hard[c]:
                v = rules[RULE_VALUE, c]
                if v < 0 or v >= n_values[rules[RULE_ATTR, c]]:
                    const -= penalty[c] * max(0, rules[RULE_BOUND, c])
        norm = 0.0
        for c in range(C):
            # coverage: penalty * covered - penalty * max_coverable <= max over y in [0, 1] with
            # sum(y) <= max_coverable of sum (penalty - mu_v) y_v, + sum mu_v * count_v (in the
            # prices), - penalty * max_coverable: take the largest positive penalty - mu_v
            if off[c + 1] == off[c] or rules[RULE_KIND, c] != COVERAGE:
                continue
            pen = penalty[c]
            const -= pen * cov_max[c]
            for k in range(off[c], off[c + 1]):
                g[k] = -cnt[k]  # y - count, y added below
            for _r in range(cov_max[c]):
                kb = -1
                vb = 0.0
                for k in range(off[c], off[c + 1]):
                    if cov_present[k] and g[k] <= 0.0 and g[k] == -cnt[k] and pen - mu[k] > vb:
                        kb = k
                        vb = pen - mu[k]
                if kb < 0:
                    break
                const += vb
                g[kb] += 1.0  # y = 1 (marked: g no longer equals -count)
            for k in range(off[c], off[c + 1]):
                if not cov_present[k]:
                    g[k] = 0.0
                    continue
                gk = g[k]
                if (mu[k] <= 0.0 and gk < 0.0) or (mu[k] >= pen and gk > 0.0):
                    gk = 0.0
                g[k] = gk
                norm += gk * gk
        for i in range(n_act):
            k = act[i]
            c = ent_rule[k]
            b = rules[RULE_BOUND, c]
            if rules[RULE_KIND, c] == COVERAGE:
                continue  # done above
            if rules[RULE_KIND, c] == MIN_COUNT:
                const -= mu[k] * b
                gk = b - cnt[k]  # D's subgradient is count - bound: step against it
            else:
                const += mu[k] * b
                gk = cnt[k] - b
            cap = np.inf if hard[c] else penalty[c]
            if (mu[k] <= 0.0 and gk < 0.0) or (mu[k] >= cap and gk > 0.0):
                gk = 0.0  # a step along this coordinate would be projected away
            g[k] = gk
            norm += gk * gk
        for i in range(n_t):
            cnt[touched[i]] = 0.0
        D = val + const
        if not np.isfinite(D):
            out[3] = BOUND_NOT_FINITE
            return
        if it_ == 0:
            out[2] = D
        if it_ == 0 or D < best - 1e-12 * max(1.0, abs(best)):
            best = D
            since = 0
        else:
            since += 1
            if since >= STALL:
                lam *= 0.5
                since = 0
                if last_halving - best <= STALL_REL * max(1.0, abs(best)):
                    break  # STALL steps gained (almost) nothing: more would not either
                last_halving = best
        if it_ == max_iter:
            break
        if np.isfinite(target) and best - target <= STOP_REL * max(1.0, abs(target)):
            break  # the bound meets a known slate's objective: that slate is optimal
        if norm == 0.0:
            break  # the relaxed slate meets every row with complementary slack: D is optimal
        # ---- projected step: mu <- clip(mu + t * g) on the listed entries ---------------------
        # (the projection keeps every mu in [0, cap], so each D above is a valid bound)
        gap = D - target if np.isfinite(target) and target < D else 0.01 * max(abs(D), 1.0)
        t = lam * gap / norm
        for i in range(n_act):
            k = act[i]
            c = ent_rule[k]
            cap = np.inf if hard[c] else penalty[c]
            x = mu[k] + t * g[k]
            if x < 0.0:
                x = 0.0
            elif x > cap:
                x = cap
            mu[k] = x
        steps += 1
    out[0] = best
    out[1] = steps
