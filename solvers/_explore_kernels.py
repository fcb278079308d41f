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
  a Z (the last of S if rounding leaves none). Its probability is w_i / Z. The kernel evaluates
  exp by `exp_nonpos` (within 1 unit in the last place of libm's exp; the twin uses math.exp, so
  the two agree to rounding: slot probabilities to ~1e-15 relative, and the same pick unless a Z
  falls within that rounding of a running sum). The reported probability is the one the
  kernel's own weights draw with, exact to float64 rounding.
* Randomness: splitmix64 on a uint64 state array of one element (the seed), as PyNNDescent
  passes its rng state; a draw is (next >> 11) * 2^-53. The same seed gives the same slate in
  every process. `explore_counts` runs many draws in one call: sample j's seed is the j-th
  output of a splitmix64 stream seeded with the master seed.

Scan (no N x N work, no per-position pass over every candidate unless the scheme needs it): the
candidates are examined in the greedy's scan order (utility desc, index asc, built lazily in
sorted stretches by `_extend_order`; at once for the full softmax, which needs all of it), each
by the greedy's own step (`_feasible_gain`: `_blocked`, `_capped_until`, `_div_refresh`, `_gain`),
with two short cuts that change no verdict: a hard window rule's verdict depends on the item's
value and the slate only, so it is worked out once per (value, position) (`_blocked_memo`), and
without soft rules the gain is pw[p] (u_i + div) (what `_gain` adds up to then). A gain is at most pw[p] * u_i + bonus (div <= 0, pw >= 0; bonus = the
greedy's bound on the soft rewards at p), so EPSILON stops once that bound cannot reach the m-th
gain kept, and SOFTMAX once it is below the best gain minus SOFTMAX_CUT T (both with the greedy's
tiny slack, `_beyond_reach`). Diversity is folded lazily per candidate as in the greedy (its
non-heap path: every examined candidate is brought up to date; the stored values do not depend on
when the fold happens).

Shared with solvers._greedy_kernels (module attribute access, so no private name is imported):
the set-up (`_count_state`, `_diversity_state`, `_slate_state` with the hard pins reserved,
`_min_count_state`), the per-position steps around the choice (`_shortages`, `_pin_gives_way`,
`_bonus_bound`, `_lookahead_worst`, `_relax_cheapest`, `_placed`, `_finish`) and the per-candidate
step (`_blocked`, `_capped_until`, `_div_refresh`, `_gain`, `_beyond_reach`): greedy_slate is built
from the same pieces, so the rules around the choice are written once. As in the greedy, when the
min_count look-ahead admits only the items matching a rule with a need left, only those items
(`_fill_matches`) are examined (`_scan_matches`; the kept set does not depend on the order).
"""

import numba as nb
import numpy as np

from solvers import _greedy_kernels as _gk
from solvers._greedy_kernels import DIVERSITY_TYPES, PROBLEM_TYPES, TABLE_TYPES
from solvers._rng import splitmix64
from solvers.codes import (
    ALL_VALUES, EXPLORE_EPSILON, EXPLORE_SOFTMAX, RULE_ATTR, RULE_BOUND, RULE_HARD, RULE_KIND,
    RULE_PRIORITY, RULE_SIZE, RULE_VALUE, SOFTMAX_CUT, WINDOW,
)

_S11 = np.uint64(11)
_TWO_M53 = 1.0 / 9007199254740992.0


@nb.njit(nb.float64(nb.uint64[::1]), cache=True, nogil=True, _nrt=False)
def uniform01(state):
    """A draw in [0, 1): the top 53 bits of the next splitmix64 output times 2^-53."""
    return np.float64(splitmix64(state) >> _S11) * _TWO_M53


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _blocked_memo(i, p, L, slate, codes, rules, active, cnt, off, pinned_prefix, need_buf, la_c0,
                  la_need, wmemo, woff):
    """`_gk._blocked`, with each hard window rule's verdict worked out once per (value, position)
    instead of once per candidate: wmemo[woff[c] + code] = 2 (p + 1) + blocked. The verdict reads
    the slate at positions other than p only, which does not change while p is being filled."""
    if la_c0 >= 0 and _gk._lookahead_excludes(i, codes, rules, la_need):
        return True
    for c in range(rules.shape[1]):
        if rules[RULE_HARD, c] == 0 or not active[c]:
            continue
        if rules[RULE_KIND, c] == WINDOW:
            a = rules[RULE_ATTR, c]
            code = codes[a, i]
            v = rules[RULE_VALUE, c]
            if v != ALL_VALUES and v != code:
                continue
            k = woff[c] + code
            key = wmemo[k]
            if (key >> 1) != p + 1:
                hits = _gk._window_hits(slate, codes, a, code, p, rules[RULE_SIZE, c], L,
                                        rules[RULE_BOUND, c])
                key = 2 * (p + 1) + (1 if hits > 0 else 0)
                wmemo[k] = key
            if key & 1:
                return True
        elif _gk._cap_or_window_forbids(c, i, p, L, slate, codes, rules, cnt, off, False):
            return True
    if la_c0 >= 0:
        return _gk._min_lookahead_blocker(i, p, codes, rules, active, cnt, off, pinned_prefix,
                                          need_buf, False) >= 0
    return False


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _feasible_gain(i, p, la_c0, ex, xk):
    """The greedy's step for candidate i at free position p: (False, 0) when an active hard rule
    blocks it (its capped_until mark is then set), else (True, gain(i, p)). xk = (wmemo, woff,
    n_soft): the window verdicts (`_blocked_memo`) and the number of soft rules (none: the gain
    is pw[p] (u_i + div), as `_gain` would find it)."""
    (L, pw, u, slate, codes, rules, penalty, active, cnt, off, pinned_prefix, need_buf, la_need,
     capped_until, cal, toff, emb, mode, beta, win, ds) = ex
    wmemo, woff, n_soft = xk
    if _blocked_memo(i, p, L, slate, codes, rules, active, cnt, off, pinned_prefix, need_buf,
                     la_c0, la_need, wmemo, woff):
        capped_until[i] = _gk._capped_until(i, p, codes, rules, active, cnt, off)
        return False, 0.0
    div = 0.0
    if mode != 0:
        div = _gk._div_refresh(i, p, slate, emb, mode, beta, win, ds)
    if n_soft == 0:
        return True, pw[p] * (u[i] + div)
    return True, _gk._gain(i, p, L, pw, u, div, slate, codes, rules, penalty, cnt, off, cal, toff)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _keep(i, p, la_c0, ex, xk, m, keep_top, cand, gbuf, n_c, best_g):
    """Candidate i, if feasible at p (`_feasible_gain`), is kept: into the sorted top m (gain
    desc, index asc) with keep_top, else appended. Returns (n_c, best_g)."""
    ok, g = _feasible_gain(i, p, la_c0, ex, xk)
    if not ok:
        return n_c, best_g
    if keep_top:
        k = n_c if n_c < m else m - 1
        if n_c == m and not (g > gbuf[k] or (g == gbuf[k] and i < cand[k])):
            return n_c, best_g
        while k > 0 and (g > gbuf[k - 1] or (g == gbuf[k - 1] and i < cand[k - 1])):
            cand[k] = cand[k - 1]
            gbuf[k] = gbuf[k - 1]
            k -= 1
        cand[k] = i
        gbuf[k] = g
        if n_c < m:
            n_c += 1
        return n_c, gbuf[0]
    cand[n_c] = i
    gbuf[n_c] = g
    if n_c == 0 or g > best_g:
        best_g = g
    return n_c + 1, best_g


@nb.njit(cache=True, nogil=True, _nrt=False)
def _by_utility(u, cand, gbuf, n_c):
    """Sort cand/gbuf[:n_c] into the scan order (utility desc, index asc): insertion sort."""
    for k in range(1, n_c):
        ci = cand[k]
        cg = gbuf[k]
        q = k
        while q > 0 and (u[cand[q - 1]] < u[ci] or (u[cand[q - 1]] == u[ci] and cand[q - 1] > ci)):
            cand[q] = cand[q - 1]
            gbuf[q] = gbuf[q - 1]
            q -= 1
        cand[q] = ci
        gbuf[q] = cg


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 in two parts (fdlibm's): t * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10


@nb.njit(cache=True, nogil=True, _nrt=False)
def exp_nonpos(x, n, bits, scale):
    """x[k] = exp(x[k]) for k < n, x[k] <= 0 (below -700 as at -700): 2^t e^r, t = round(x /
    ln 2), r = x - t ln 2 in [-0.35, 0.35], e^r by its Taylor polynomial of degree 13 (truncation
    below 2^-60), 2^t built in the exponent bits (bits: int64 scratch, scale: a float64 view of
    it). No call and no branch in the loops, so they vectorise (libm's exp is a call per item,
    ~3x slower here); within a few units in the last place of exp."""
    for k in range(n):
        xk = max(x[k], -700.0)
        t = np.floor(xk * _LOG2E + 0.5)
        r = (xk - t * _LN2_HI) - t * _LN2_LO
        q = 1.0 + r * (1.0 + r * (0.5 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * (
            _C7 + r * (_C8 + r * (_C9 + r * (_C10 + r * (_C11 + r * (_C12 + r * _C13))))))))))))
        x[k] = q
        bits[k] = (np.int64(t) + 1023) << 52
    for k in range(n):
        x[k] *= scale[k]


_C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = (
    1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0, 1.0 / 40320.0, 1.0 / 362880.0,
    1.0 / 3628800.0, 1.0 / 39916800.0, 1.0 / 479001600.0, 1.0 / 6227020800.0)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _softmax_draw(a, cand, gbuf, wbuf, bits, scale, n_c, best_g, temperature):
    """SOFTMAX's draw from cand/gbuf[:n_c] (scan order; best_g their best gain) with the uniform
    a: x = (g - best_g) / T (gbuf is overwritten with it), the support (-x <= SOFTMAX_CUT,
    compacted into cand/wbuf) with weights exp(x) (`exp_nonpos`) and normaliser Z summed in scan
    order, and the first item whose running weight exceeds a Z. Returns (pick, prob, support
    size)."""
    for k in range(n_c):
        x = (gbuf[k] - best_g) / temperature  # = -((best_g - g) / T) exactly
        gbuf[k] = x
        wbuf[k] = x
    exp_nonpos(wbuf, n_c, bits, scale)
    n_s = 0
    z = 0.0
    for k in range(n_c):
        if -gbuf[k] <= SOFTMAX_CUT:
            w = wbuf[k]
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
    return cand[k], wbuf[k] / z, n_s


@nb.njit(cache=True, nogil=True, _nrt=False)
def _scan_explore(p, bonus, la_c0, j, n_order, order, used, reserved, capped_until, pw, u, ex,
                  xk, scheme, m, keep_top, cut, cand, gbuf, n_c, best_g):
    """Examine order[j:n_order] at free position p (the greedy's step per candidate). EPSILON:
    and SOFTMAX with top_m < N (keep_top): keep the best m feasible by (gain desc, index asc) in
    cand/gbuf[:n_c], sorted; SOFTMAX over all: append every feasible candidate (scan order) with
    its gain. Stops when the next candidate's bound (pw[p] u + bonus) cannot reach the m-th gain
    (keep_top, once m are kept) or best_g - cut (SOFTMAX). Returns (n_c, best_g, j, stopped)."""
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
        n_c, best_g = _keep(i, p, la_c0, ex, xk, m, keep_top, cand, gbuf, n_c, best_g)
    return n_c, best_g, j, False


@nb.njit(cache=True, nogil=True, _nrt=False)
def _scan_all(p, bonus, la_c0, j, n_order, order, used, reserved, capped_until, pw, u, ex, xk,
              cut, cand, gbuf, n_c, best_g):
    """`_scan_explore` for SOFTMAX over every feasible candidate (no top m): append each feasible
    candidate of order[j:n_order] with its gain; stop where the bound pw[p] u + bonus is below
    best_g - cut. Returns (n_c, best_g, j, stopped)."""
    pwp = pw[p]
    while j < n_order:
        i = order[j]
        if used[i] or reserved[i] or capped_until[i] > p:
            j += 1
            continue
        if n_c > 0 and _gk._beyond_reach(pwp * u[i] + bonus + cut, cand[0], best_g):
            return n_c, best_g, j, True
        j += 1
        ok, g = _feasible_gain(i, p, la_c0, ex, xk)
        if ok:
            cand[n_c] = i
            gbuf[n_c] = g
            n_c += 1
            if n_c == 1 or g > best_g:
                best_g = g
    return n_c, best_g, j, False


@nb.njit(cache=True, nogil=True, _nrt=False)
def _scan_matches(p, bonus, la_c0, c, j, end, matches, used, reserved, capped_until, pw, u, ex,
                  xk, scheme, m, keep_top, cut, cand, gbuf, n_c, best_g, la_need):
    """The look-ahead admits only items matching a rule with a need left: examine rule c's
    matches[j:end] (an item matching an earlier such rule was examined with it), keeping them as
    `_scan_explore` does; out of reach items are skipped (not in scan order: nothing ends the
    scan). Returns (n_c, best_g)."""
    codes = ex[4]
    rules = ex[5]
    while j < end:
        i = matches[j]
        j += 1
        if used[i] or reserved[i] or capped_until[i] > p:
            continue
        dup = False
        for c2 in range(c):
            v2 = rules[RULE_VALUE, c2]
            if la_need[c2] > 0 and v2 >= 0 and codes[rules[RULE_ATTR, c2], i] == v2:
                dup = True
                break
        if dup:
            continue
        ub = pw[p] * u[i] + bonus
        if keep_top and n_c == m and _gk._beyond_reach(ub, cand[m - 1], gbuf[m - 1]):
            continue
        if scheme == EXPLORE_SOFTMAX and n_c > 0 and _gk._beyond_reach(ub + cut, cand[0], best_g):
            continue
        n_c, best_g = _keep(i, p, la_c0, ex, xk, m, keep_top, cand, gbuf, n_c, best_g)
    return n_c, best_g


_SIG = nb.int64(
    *PROBLEM_TYPES,  # utility, position_weight, codes, n_values
    *TABLE_TYPES,  # rules, penalty, target, target_offset
    *DIVERSITY_TYPES,  # embeddings, div_mode, div_weight, div_window
    nb.boolean[::1],  # active (in/out)
    nb.int64,  # scheme: EXPLORE_EPSILON | EXPLORE_SOFTMAX
    nb.float64,  # epsilon
    nb.int64,  # top_m
    nb.float64,  # temperature
    nb.uint64[::1],  # rng state [1] (in/out)
    nb.int64[::1],  # slate (out)
    nb.float64[::1],  # slot_prob (out)
    nb.int64[::1],  # support (out): items with probability > 0 at each position (pins: 1)
    nb.float64[::1],  # cascade (out): running products of slot_prob
    nb.int64[::1],  # reason (in: pre-solve reasons; out: RELAX_* of the relaxed rules, else 0)
    nb.int64[::1],  # relax_pos (out)
    nb.boolean[::1],  # relaxed (out)
    nb.float64[::1],  # info (out): [log joint = sum over positions of log slot_prob, in order]
)


@nb.njit(_SIG, cache=True, nogil=True)
def explore_slate(u, pw, codes, n_values, rules, penalty, target, toff, emb, div_mode, beta,
                  div_window, active, scheme, epsilon, top_m, temperature, state, slate,
                  slot_prob, support, cascade, reason, relax_pos, relaxed, info):
    """Draw `slate` (module docstring); return the number of relaxed hard rules, or -1 - j when
    utility[j] is not finite (nothing else is then written)."""
    N = u.shape[0]
    L = pw.shape[0]
    C = rules.shape[1]
    value = rules[RULE_VALUE]
    for i in range(N):
        if not np.isfinite(u[i]):
            return -1 - i
    rank = _gk._ranks(rules[RULE_PRIORITY])
    for c in range(C):
        relax_pos[c] = -1

    # --- the greedy's set-up (solvers._greedy_kernels): counts, diversity, pins, min_count rules
    off, cnt, need_buf, la_need, cal, n_cov, n_cal = _gk._count_state(rules, n_values,
                                                                      target.shape[0])
    mode, win, ds = _gk._diversity_state(N, L, emb, div_mode, beta, div_window)
    used, reserved, capped_until, pin_rule, pinned_prefix = _gk._slate_state(
        N, codes, rules, active, cnt, off, slate)
    ex = (L, pw, u, slate, codes, rules, penalty, active, cnt, off, pinned_prefix, need_buf,
          la_need, capped_until, cal, toff, emb, mode, beta, win, ds)
    avail, moff, matches, matches_known, max_bonus, hard_top = _gk._min_count_state(
        N, codes, rules, penalty, reserved)
    for p in range(L):
        slot_prob[p] = 1.0
        support[p] = 1
    woff = np.full(C, -1, dtype=np.int64)  # each window rule's verdicts (`_blocked_memo`)
    n_memo = 0
    for c in range(C):
        if rules[RULE_KIND, c] == WINDOW:
            woff[c] = n_memo
            n_memo += n_values[rules[RULE_ATTR, c]]
    wmemo = np.zeros(n_memo, dtype=np.int64)
    n_soft = 0
    for c in range(C):
        if rules[RULE_HARD, c] == 0:
            n_soft += 1
    xk = (wmemo, woff, n_soft)

    order = np.empty(N, dtype=np.int64)
    n_order = 0
    cut_u = np.inf
    stretch = 2 * L + 32
    head = 0
    m = top_m if top_m < N else N
    keep_top = scheme == EXPLORE_EPSILON or m < N
    if not keep_top:
        stretch = N  # every position sees every feasible candidate: sort them all at once
    cand = np.empty(max(m, 1), dtype=np.int64)
    gbuf = np.empty(max(m, 1), dtype=np.float64)
    wbuf = np.empty(max(m, 1), dtype=np.float64)
    bits = np.empty(max(m, 1), dtype=np.int64)  # exp_nonpos's scratch
    scale = bits.view(np.float64)
    cut = SOFTMAX_CUT * temperature if scheme == EXPLORE_SOFTMAX else 0.0
    run_prob = 1.0
    log_joint = 0.0
    filled = 0  # positions filled (all L unless no candidate is left)

    for p in range(L):
        if p < hard_top:
            _gk._shortages(p, rules, active, cnt, off, avail, reason, relax_pos)
        if pin_rule[p] >= 0:
            i = slate[p]
            if not _gk._pin_gives_way(p, L, slate, codes, rules, active, cnt, off, pinned_prefix,
                                      rank, need_buf, reason, relax_pos, capped_until, reserved,
                                      avail, pin_rule):
                used[i] = True
                if mode != 0:
                    _gk._div_refresh(i, p, slate, emb, mode, beta, win, ds)
                    _gk._div_placed(i, p, slate, emb, mode, win, ds)
                cascade[p] = run_prob
                filled += 1
                continue
            head = 0  # the freed item may sit before `head` in the scan order

        bonus = max_bonus
        if n_cov + n_cal > 0:
            bonus = _gk._bonus_bound(p, max_bonus, rules, penalty, n_values, cnt, off, target,
                                     toff, cal)

        n_c = 0
        best_g = -np.inf
        while True:
            n_c = 0
            best_g = -np.inf
            la_c0 = _gk._lookahead_worst(p, codes, rules, active, cnt, off, pinned_prefix,
                                         need_buf, la_need)
            if la_c0 >= 0 and pw[p] >= 0.0:
                # the greedy's short cut: only the matches of rules with a need left can be
                # feasible (`_blocked`); the kept set does not depend on the order examined
                for c in range(C):
                    if la_need[c] <= 0 or value[c] < 0:
                        continue
                    _gk._fill_matches(c, codes, rules, moff, matches, matches_known)
                    n_c, best_g = _scan_matches(p, bonus, la_c0, c, moff[c], moff[c + 1],
                                                matches, used, reserved, capped_until, pw, u, ex,
                                                xk, scheme, m, keep_top, cut, cand, gbuf,
                                                n_c, best_g, la_need)
                if n_c > 0 and not keep_top:  # appended in match order: into the scan order
                    _by_utility(u, cand, gbuf, n_c)
            j = head
            while n_c == 0:  # (nothing feasible among the matches: see every candidate)
                if keep_top:
                    n_c, best_g, j, stopped = _scan_explore(
                        p, bonus, la_c0, j, n_order, order, used, reserved, capped_until, pw, u,
                        ex, xk, scheme, m, keep_top, cut, cand, gbuf, n_c, best_g)
                else:
                    n_c, best_g, j, stopped = _scan_all(
                        p, bonus, la_c0, j, n_order, order, used, reserved, capped_until, pw, u,
                        ex, xk, cut, cand, gbuf, n_c, best_g)
                if stopped or n_order == N:
                    break
                n_order, cut_u = _gk._extend_order(u, order, n_order, cut_u, stretch)
                stretch *= 2
            if n_c > 0:
                break
            if not _gk._relax_cheapest(p, L, n_order, order, used, reserved, slate, codes, rules,
                                       active, cnt, off, pinned_prefix, rank, need_buf, reason,
                                       relax_pos, capped_until):
                break  # no candidate left at all (cannot happen when L <= N)

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
                _by_utility(u, cand, gbuf, n_c)
            pick, prob, n_s = _softmax_draw(a, cand, gbuf, wbuf, bits, scale, n_c, best_g,
                                            temperature)
            support[p] = n_s
        slot_prob[p] = prob
        run_prob *= prob
        cascade[p] = run_prob
        log_joint += np.log(prob)
        filled += 1
        slate[p] = pick
        used[pick] = True
        if mode != 0:
            _gk._div_refresh(pick, p, slate, emb, mode, beta, win, ds)
            _gk._div_placed(pick, p, slate, emb, mode, win, ds)
        _gk._placed(pick, p, codes, rules, cnt, off, avail)
        while head < n_order and (used[order[head]] or reserved[order[head]]):
            head += 1

    for p in range(filled, L):
        cascade[p] = run_prob
    info[0] = log_joint
    return _gk._finish(L, rules, active, cnt, off, reason, relax_pos, relaxed)


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
    cascade = np.empty(L)
    info = np.empty(1)
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
                          slate, slot_prob, support, cascade, reason, relax_pos, relaxed, info)
        if r < 0:
            return r
        for p in range(L):
            if slate[p] >= 0:
                counts[slate[p], p] += 1
            else:
                short += 1
                break
    return short
