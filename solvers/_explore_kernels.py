"""Numba kernel of exploration sampling: the constrained greedy with a draw at each free position.

Imports only numpy, numba and the greedy kernel module (solvers._greedy_kernels, whose helpers
decide feasibility, gains and relaxations); assumes valid input. The public wrapper is
solvers.explore.sample_slate; tests/naive_explore.py holds the slow twin that must draw exactly
the same slates with the same probabilities. Semantics (shared with the twin):

* Everything the greedy does before choosing stays as the greedy does it (solvers._greedy_kernels'
  module docstring): hard pins reserved first, shortages, pin conflicts, the feasibility test at
  each position (caps, windows, the min_count look-ahead), the soft gains, and the relaxation by
  rank when no candidate is feasible. Only the choice among the feasible candidates of a free
  position changes; pinned positions keep their item with probability 1 and draw nothing.
* The feasible candidates of free position p are ranked by (gain desc, index asc), gain being the
  greedy's gain(i, p); `best` is the first (the greedy's pick).
* EPSILON (epsilon in [0, 1], top_m >= 1): M = the first min(top_m, |feasible|) candidates of that
  ranking (top m *by the position's gain*, which is what the greedy ranks by, so soft rules and
  diversity count; ties at the m-th gain go to the lower index). Two draws a, b in [0, 1) are
  taken at every free position; the pick is M[floor(b |M|)] if a < epsilon, else best. The
  probability of item i is (1 - eps) [i = best] + eps [i in M] / |M|, and exactly 1 when |M| = 1.
* SOFTMAX (temperature T > 0, top_m optional): the support S = the feasible candidates (only the
  first top_m of the (gain desc, index asc) ranking when top_m < N: a truncated Plackett-Luce that
  stops its scan like EPSILON does) with
  (g_max - g_i) / T <= SOFTMAX_CUT (= 50: a weight below exp(-50) ~ 2e-22 of the best one is
  below float64 rounding of the sum for any N < 10^6, and cutting it lets the scan stop early),
  in scan order (utility desc, index asc). w_i = exp((g_i - g_max) / T), Z = sum of w over S in
  that order; one draw a in [0, 1): the pick is the first i of S whose running sum of w exceeds
  a Z (the last of S if rounding leaves none). Its probability is w_i / Z.
* Randomness: splitmix64 on a uint64 state array of one element (the seed), as PyNNDescent
  passes its rng state; a draw is (next >> 11) * 2^-53. The same seed gives the same slate in
  every process. `explore_counts` runs many draws in one call: sample j's seed is the j-th
  output of a splitmix64 stream seeded with the master seed.

Scan (no N x N work, no per-position pass over every candidate unless the scheme needs it): the
candidates are examined in the greedy's scan order (utility desc, index asc, built lazily in
sorted stretches by `_extend_order`), each by the greedy's own step (`_blocked`, `_capped_until`,
`_div_refresh`, `_gain`). A gain is at most pw[p] * u_i + bonus (div <= 0, pw >= 0; bonus = the
greedy's bound on the soft rewards at p), so EPSILON stops once that bound cannot reach the m-th
gain kept, and SOFTMAX once it is below the best gain minus SOFTMAX_CUT T (both with the greedy's
tiny slack, `_beyond_reach`). Diversity is folded lazily per candidate as in the greedy (its
non-heap path: every examined candidate is brought up to date; the stored values do not depend on
when the fold happens).

Reused from solvers._greedy_kernels (module attribute access, so no private name is imported):
PROBLEM_TYPES, TABLE_TYPES, _ranks, _count, _extend_order, _lookahead_worst, _blocked,
_capped_until, _gain, _div_refresh, _div_placed, _load, _calibration_deltas, _blockers_max_rank,
_relax_rank, _beyond_reach. Not reused: greedy_slate's body (set-up, pins, relaxation loop) is
repeated here in shortened form (no lazy heap, no look-ahead match lists), because it is one
function that picks the argmax inline.
"""

import numba as nb
import numpy as np

from solvers import _greedy_kernels as _gk
from solvers._greedy_kernels import PROBLEM_TYPES, TABLE_TYPES
from solvers.codes import (
    CALIBRATION, COVERAGE, DIV_DPP, DIV_MMR, MAX_COUNT, MIN_COUNT, PIN, RELAX_CONFLICT,
    RELAX_SHORTAGE, RULE_ATTR, RULE_BOUND, RULE_HARD, RULE_ITEM, RULE_KIND, RULE_POSITION,
    RULE_PRIORITY, RULE_TOP, RULE_VALUE, EXPLORE_EPSILON, EXPLORE_SOFTMAX, SOFTMAX_CUT,
)

#: scheme codes (to move into solvers.codes)
# EXPLORE_EPSILON, EXPLORE_SOFTMAX and SOFTMAX_CUT are in solvers.codes.

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_TWO_M53 = 1.0 / 9007199254740992.0


@nb.njit(nb.uint64(nb.uint64[::1]), cache=True, nogil=True, _nrt=False)
def splitmix64(state):
    """Advance state[0] by the golden gamma and return the mixed value (Steele et al. 2014)."""
    s = state[0] + _GAMMA
    state[0] = s
    z = s
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@nb.njit(nb.float64(nb.uint64[::1]), cache=True, nogil=True, _nrt=False)
def uniform01(state):
    """A draw in [0, 1): the top 53 bits of the next splitmix64 output times 2^-53."""
    return np.float64(splitmix64(state) >> _S11) * _TWO_M53


@nb.njit(cache=True, nogil=True, _nrt=False)
def _scan_explore(p, bonus, la_c0, j, n_order, order, used, reserved, capped_until, pw, u, ex,
                  scheme, m, keep_top, cut, cand, gbuf, n_c, best_g):
    """Examine order[j:n_order] at free position p (the greedy's step per candidate). EPSILON:
    and SOFTMAX with top_m < N (keep_top): keep the best m feasible by (gain desc, index asc) in
    cand/gbuf[:n_c], sorted; SOFTMAX over all: append every feasible candidate (scan order) with
    its gain. Stops when the next candidate's bound (pw[p] u + bonus) cannot reach the m-th gain
    (keep_top, once m are kept) or best_g - cut (SOFTMAX). Returns (n_c, best_g, j, stopped)."""
    (L, pw_, u_, slate, codes, rules, penalty, active, cnt, off, pinned_prefix, need_buf, la_need,
     capped_until_, cal, toff, emb, mode, beta, win, ds) = ex
    while j < n_order:
        i = order[j]
        if used[i] or reserved[i] or capped_until[i] > p:
            j += 1
            continue
        ub = pw[p] * u[i] + bonus
        if keep_top and n_c == m and _gk._beyond_reach(ub, cand[m - 1], gbuf[m - 1]):
            return n_c, best_g, j, True
        if scheme == EXPLORE_SOFTMAX and n_c > 0 and _gk._beyond_reach(ub + cut, cand[0], best_g):
            return n_c, best_g, j, True
        j += 1
        if _gk._blocked(i, p, L, slate, codes, rules, active, cnt, off, pinned_prefix, need_buf,
                        la_c0, la_need):
            capped_until[i] = _gk._capped_until(i, p, codes, rules, active, cnt, off)
            continue
        div = 0.0
        if mode != 0:
            div = _gk._div_refresh(i, p, slate, emb, mode, beta, win, ds)
        g = _gk._gain(i, p, L, pw, u, div, slate, codes, rules, penalty, cnt, off, cal, toff)
        if keep_top:
            # insertion into the sorted top m (gain desc, index asc)
            k = n_c if n_c < m else m - 1
            if n_c == m and not (g > gbuf[k] or (g == gbuf[k] and i < cand[k])):
                continue
            while k > 0 and (g > gbuf[k - 1] or (g == gbuf[k - 1] and i < cand[k - 1])):
                cand[k] = cand[k - 1]
                gbuf[k] = gbuf[k - 1]
                k -= 1
            cand[k] = i
            gbuf[k] = g
            if n_c < m:
                n_c += 1
            best_g = gbuf[0]
        else:
            cand[n_c] = i
            gbuf[n_c] = g
            n_c += 1
            if n_c == 1 or g > best_g:
                best_g = g
    return n_c, best_g, j, False


_SIG = nb.int64(
    *PROBLEM_TYPES,  # utility, position_weight, codes, n_values
    *TABLE_TYPES,  # rules, penalty, target, target_offset
    nb.float32[:, ::1],  # embeddings [N, d] ([0, 0] when diversity is off)
    nb.int64,  # div_mode
    nb.float64,  # div_weight (beta)
    nb.int64,  # div_window
    nb.boolean[::1],  # active (in/out)
    nb.int64,  # scheme: EXPLORE_EPSILON | EXPLORE_SOFTMAX
    nb.float64,  # epsilon
    nb.int64,  # top_m
    nb.float64,  # temperature
    nb.uint64[::1],  # rng state [1] (in/out)
    nb.int64[::1],  # slate (out)
    nb.float64[::1],  # slot_prob (out)
    nb.int64[::1],  # support (out): items with probability > 0 at each position (pins: 1)
    nb.int64[::1],  # reason (in: pre-solve reasons; out: RELAX_* of the relaxed rules, else 0)
    nb.int64[::1],  # relax_pos (out)
    nb.boolean[::1],  # relaxed (out)
)


@nb.njit(_SIG, cache=True, nogil=True)
def explore_slate(u, pw, codes, n_values, rules, penalty, target, toff, emb, div_mode, beta,
                  div_window, active, scheme, epsilon, top_m, temperature, state, slate,
                  slot_prob, support, reason, relax_pos, relaxed):
    """Draw `slate` (module docstring); return the number of relaxed hard rules, or -1 - j when
    utility[j] is not finite (nothing else is then written)."""
    N = u.shape[0]
    L = pw.shape[0]
    C = rules.shape[1]
    kind = rules[RULE_KIND]
    attr = rules[RULE_ATTR]
    value = rules[RULE_VALUE]
    bound = rules[RULE_BOUND]
    top = rules[RULE_TOP]
    hard = rules[RULE_HARD]
    item = rules[RULE_ITEM]
    position = rules[RULE_POSITION]
    for i in range(N):
        if not np.isfinite(u[i]):
            return -1 - i
    rank = _gk._ranks(rules[RULE_PRIORITY])
    for c in range(C):
        relax_pos[c] = -1

    # --- count storage, as greedy_slate lays it out
    off = np.zeros(C + 1, dtype=np.int64)
    n_cal = 0
    n_cov = 0
    for c in range(C):
        width = 0
        if kind[c] == MAX_COUNT or kind[c] == COVERAGE:
            width = n_values[attr[c]]
            if kind[c] == COVERAGE:
                n_cov += 1
        elif kind[c] == MIN_COUNT:
            width = 1
        elif kind[c] == CALIBRATION:
            width = n_values[attr[c]] + 1
            n_cal += 1
        off[c + 1] = off[c] + width
    cnt = np.zeros(off[C] + 1, dtype=np.int64)
    need_buf = np.zeros(C, dtype=np.int64)
    la_need = np.zeros(C, dtype=np.int64)
    cal = np.zeros(target.shape[0], dtype=np.float64)

    # --- diversity state (greedy_slate's, without the lazy heap)
    mode = div_mode if beta > 0.0 else 0
    win = div_window if div_window < L - 1 else 0
    d = emb.shape[1]
    no_f = np.zeros(0)
    no_f2 = np.zeros((0, 0))
    no_i = np.zeros(0, dtype=np.int64)
    flat_dpp = mode == DIV_DPP and win == 0
    wd = win if (mode == DIV_DPP and win > 0) else 0
    n2, P, xi, xbuf, dcnt, dval = no_f, no_f2, no_f2, no_f, no_i, no_f
    if mode != 0:
        n2 = np.full(N, -1.0)
        P = np.zeros((L, d))
        xi = np.zeros((1, d))
        xbuf = np.zeros(L)
        dcnt = np.zeros(N, dtype=np.int64)
        dval = np.zeros(N)
    mx = np.zeros(N) if (mode == DIV_MMR and win == 0) else no_f
    d2 = np.ones(N) if flat_dpp else no_f
    M = np.empty((N, L)) if (mode == DIV_DPP or (mode != 0 and win > 0)) else no_f2
    dsel = np.zeros(L) if flat_dpp else no_f
    Wc = np.zeros((wd, wd)) if wd > 0 else no_f2
    Wd = np.zeros(wd) if wd > 0 else no_f
    ebuf = np.zeros(wd) if wd > 0 else no_f
    span_rank = np.zeros(2, dtype=np.int64)
    ds = (n2, P, dcnt, dval, mx, d2, M, dsel, Wc, Wd, ebuf, span_rank, xi, xbuf)

    used = np.zeros(N, dtype=np.bool_)
    reserved = np.zeros(N, dtype=np.bool_)
    capped_until = np.zeros(N, dtype=np.int64)
    pin_rule = np.full(L, -1, dtype=np.int64)
    for p in range(L):
        slate[p] = -1
        slot_prob[p] = 1.0
        support[p] = 1

    for c in range(C):
        if kind[c] == PIN and hard[c] != 0 and active[c]:
            q = position[c]
            slate[q] = item[c]
            pin_rule[q] = c
            reserved[item[c]] = True
            _gk._count(item[c], q, codes, rules, cnt, off, 1)
    pinned_prefix = np.zeros(L + 1, dtype=np.int64)
    for p in range(L):
        pinned_prefix[p + 1] = pinned_prefix[p] + (1 if pin_rule[p] >= 0 else 0)
    ex = (L, pw, u, slate, codes, rules, penalty, active, cnt, off, pinned_prefix, need_buf,
          la_need, capped_until, cal, toff, emb, mode, beta, win, ds)

    avail = np.zeros(C, dtype=np.int64)
    max_bonus = 0.0
    for c in range(C):
        if kind[c] == MIN_COUNT:
            if value[c] >= 0:
                a = attr[c]
                for i in range(N):
                    if codes[a, i] == value[c] and not reserved[i]:
                        avail[c] += 1
            if hard[c] == 0:
                max_bonus += penalty[c]

    order = np.empty(N, dtype=np.int64)
    n_order = 0
    cut_u = np.inf
    stretch = 2 * L + 32
    head = 0
    m = top_m if top_m < N else N
    keep_top = scheme == EXPLORE_EPSILON or m < N
    cand = np.empty(max(m, 1), dtype=np.int64)
    gbuf = np.empty(max(m, 1), dtype=np.float64)
    wbuf = np.empty(max(m, 1), dtype=np.float64)
    cut = SOFTMAX_CUT * temperature if scheme == EXPLORE_SOFTMAX else 0.0

    for p in range(L):
        for c in range(C):
            if kind[c] == MIN_COUNT and hard[c] != 0 and active[c] and p < top[c]:
                if bound[c] - cnt[off[c]] > avail[c]:
                    active[c] = False
                    reason[c] = RELAX_SHORTAGE
                    relax_pos[c] = p

        c_pin = pin_rule[p]
        if c_pin >= 0:
            i = slate[p]
            while True:
                worst = _gk._blockers_max_rank(i, p, L, slate, codes, rules, active, cnt, off,
                                               pinned_prefix, rank, need_buf, True)
                if worst < 0:
                    break
                if worst > rank[c_pin]:
                    active[c_pin] = False
                    reason[c_pin] = RELAX_CONFLICT
                    relax_pos[c_pin] = p
                    _gk._count(i, p, codes, rules, cnt, off, -1)
                    reserved[i] = False
                    for c in range(C):
                        if kind[c] == MIN_COUNT and value[c] >= 0 and codes[attr[c], i] == value[c]:
                            avail[c] += 1
                    slate[p] = -1
                    pin_rule[p] = -1
                    for r in range(p, L):
                        pinned_prefix[r + 1] = pinned_prefix[r] + (1 if pin_rule[r] >= 0 else 0)
                    head = 0
                    capped_until[:] = 0
                    break
                _gk._relax_rank(worst, p, rank, active, reason, relax_pos, capped_until)
            if pin_rule[p] >= 0:
                used[i] = True
                if mode != 0:
                    _gk._div_refresh(i, p, slate, emb, mode, beta, win, ds)
                    _gk._div_placed(i, p, slate, emb, mode, win, ds)
                continue

        bonus = max_bonus
        if n_cov + n_cal > 0:
            for c in range(C):
                if p < top[c]:
                    if kind[c] == COVERAGE:
                        bonus += penalty[c]
                    elif kind[c] == CALIBRATION:
                        bonus += penalty[c] * _gk._calibration_deltas(
                            c, n_values[attr[c]], cnt, off, target, toff, cal)

        n_c = 0
        while True:
            n_c = 0
            best_g = -np.inf
            la_c0 = _gk._lookahead_worst(p, codes, rules, active, cnt, off, pinned_prefix,
                                         need_buf, la_need)
            j = head
            while True:
                n_c, best_g, j, stopped = _scan_explore(
                    p, bonus, la_c0, j, n_order, order, used, reserved, capped_until, pw, u, ex,
                    scheme, m, keep_top, cut, cand, gbuf, n_c, best_g)
                if stopped or n_order == N:
                    break
                n_order, cut_u = _gk._extend_order(u, order, n_order, cut_u, stretch)
                stretch *= 2
            if n_c > 0:
                break
            r_star = -1
            for jj in range(n_order):
                i = order[jj]
                if used[i] or reserved[i]:
                    continue
                w = _gk._blockers_max_rank(i, p, L, slate, codes, rules, active, cnt, off,
                                           pinned_prefix, rank, need_buf, False)
                if r_star < 0 or w < r_star:
                    r_star = w
            if r_star < 0:
                break
            _gk._relax_rank(r_star, p, rank, active, reason, relax_pos, capped_until)

        if n_c == 0:
            break
        # --- the draw
        if scheme == EXPLORE_EPSILON:
            a = uniform01(state)
            b = uniform01(state)
            pick = cand[0]
            if a < epsilon:
                k = np.int64(b * n_c)
                if k >= n_c:
                    k = n_c - 1
                pick = cand[k]
            support[p] = n_c if epsilon > 0.0 else 1
            if n_c == 1:
                prob = 1.0
            elif pick == cand[0]:
                prob = (1.0 - epsilon) + epsilon / n_c
            else:
                prob = epsilon / n_c
        else:
            a = uniform01(state)
            if keep_top:  # the top m, in the draw's order: utility desc, index asc
                for k in range(1, n_c):
                    ci = cand[k]
                    cg = gbuf[k]
                    q = k
                    while q > 0 and (u[cand[q - 1]] < u[ci]
                                     or (u[cand[q - 1]] == u[ci] and cand[q - 1] > ci)):
                        cand[q] = cand[q - 1]
                        gbuf[q] = gbuf[q - 1]
                        q -= 1
                    cand[q] = ci
                    gbuf[q] = cg
            n_s = 0
            z = 0.0
            for k in range(n_c):
                if (best_g - gbuf[k]) / temperature <= SOFTMAX_CUT:
                    w = np.exp((gbuf[k] - best_g) / temperature)
                    cand[n_s] = cand[k]
                    wbuf[n_s] = w
                    z += w
                    n_s += 1
            target_w = a * z
            run = 0.0
            k = 0
            while k < n_s - 1:
                run += wbuf[k]
                if run > target_w:
                    break
                k += 1
            pick = cand[k]
            prob = wbuf[k] / z
            support[p] = n_s
        slot_prob[p] = prob
        slate[p] = pick
        used[pick] = True
        if mode != 0:
            _gk._div_refresh(pick, p, slate, emb, mode, beta, win, ds)
            _gk._div_placed(pick, p, slate, emb, mode, win, ds)
        _gk._count(pick, p, codes, rules, cnt, off, 1)
        for c in range(C):
            if kind[c] == MIN_COUNT and value[c] >= 0 and codes[attr[c], pick] == value[c]:
                avail[c] -= 1
        while head < n_order and (used[order[head]] or reserved[order[head]]):
            head += 1

    for c in range(C):
        if kind[c] == MIN_COUNT and hard[c] != 0 and active[c] and cnt[off[c]] < bound[c]:
            active[c] = False
            reason[c] = RELAX_SHORTAGE
            relax_pos[c] = L
    n_relaxed = 0
    for c in range(C):
        relaxed[c] = hard[c] != 0 and not active[c]
        if relaxed[c]:
            n_relaxed += 1
        else:
            reason[c] = 0
    return n_relaxed


_COUNTS_SIG = nb.int64(
    *PROBLEM_TYPES, *TABLE_TYPES, nb.float32[:, ::1], nb.int64, nb.float64, nb.int64,
    nb.boolean[::1],  # active (not changed: each draw starts from a copy)
    nb.int64, nb.float64, nb.int64, nb.float64,  # scheme, epsilon, top_m, temperature
    nb.uint64,  # master seed
    nb.int64,  # samples
    nb.int64[:, ::1],  # counts [N, L] (out): draws with item i at position p
)


@nb.njit(_COUNTS_SIG, cache=True, nogil=True)
def explore_counts(u, pw, codes, n_values, rules, penalty, target, toff, emb, div_mode, beta,
                   div_window, active, scheme, epsilon, top_m, temperature, seed, samples,
                   counts):
    """Draw `samples` slates (sample j seeded by the j-th splitmix64 output of `seed`) and count
    item i at position p in counts[i, p]. Returns the number of draws whose slate was shorter
    than L (no candidate left), or -1 - j for a non-finite utility[j]."""
    L = pw.shape[0]
    C = rules.shape[1]
    master = np.empty(1, dtype=np.uint64)
    master[0] = seed
    state = np.empty(1, dtype=np.uint64)
    act = np.empty(C, dtype=np.bool_)
    slate = np.empty(L, dtype=np.int64)
    slot_prob = np.empty(L)
    support = np.empty(L, dtype=np.int64)
    reason = np.zeros(C, dtype=np.int64)
    relax_pos = np.empty(C, dtype=np.int64)
    relaxed = np.empty(C, dtype=np.bool_)
    counts[:, :] = 0
    short = 0
    for s in range(samples):
        state[0] = splitmix64(master)
        act[:] = active
        reason[:] = 0
        r = explore_slate(u, pw, codes, n_values, rules, penalty, target, toff, emb, div_mode,
                          beta, div_window, act, scheme, epsilon, top_m, temperature, state,
                          slate, slot_prob, support, reason, relax_pos, relaxed)
        if r < 0:
            return r
        for p in range(L):
            if slate[p] >= 0:
                counts[slate[p], p] += 1
            else:
                short += 1
                break
    return short
