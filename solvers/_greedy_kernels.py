"""Numba kernel of the constrained greedy. Imports only numpy, numba and solvers.codes; assumes valid input.

The public wrapper is solvers.greedy.solve_greedy; tests/naive.py holds the slow twin that must
pick exactly the same slates. Semantics (shared with the twin):

* Positions are filled in order 0..L-1. Active hard pins are placed first: their items are
  reserved and pre-counted in every count rule, so earlier picks leave room for them.
* At a free position p, every unused, unreserved candidate i is either blocked by an active hard
  rule or has a gain  pw[p] * u[i] + soft bonuses - soft penalties; the best gain wins, ties to
  the lowest index. A soft min_count rule's bonus (its penalty) is given to a matching item only
  once the items it still misses outnumber the free positions after p in its prefix: the minimum
  is then met at the cheapest positions of the prefix instead of at its top. Blocked means: a max_count rule whose count for i's value is already at its
  bound (p inside its prefix); a window rule with a window containing p already holding `bound`
  items of i's value; or the min_count look-ahead: for the active hard min_count rules of one
  attribute, for every prefix end m, the items still needed by rules ending at or before m
  (per value, the largest need) must fit into the free positions after p and before m.
* When no candidate is feasible, the hard rule that gives way is the one that frees a candidate
  at the least cost: r* = min over candidates of the highest rank among its blockers; the rule of
  rank r* is relaxed, and the position is retried. Ranks order rules by priority (lowest first),
  ties to the later rule in the policy.
* At a pinned position, rules that the pinned item breaks (caps, windows, and the min_count
  look-ahead with the pinned item already counted) give way if they rank below the pin;
  if any outranks it, the pin gives way instead and the position is filled like a free one.
* A hard min_count rule that needs more items than unused matching candidates remain is relaxed
  as a shortage at the position where that becomes true.

Similarity diversity, coverage and calibration (definitions in solvers.problem) ride on the same
loop, so every hard rule, pin, relaxation and soft rule above keeps working with them:

* gain(i, p) = pw[p] * (u[i] + div_i(p)) + soft bonuses - soft penalties, div_i(p) <= 0 being the
  diversity term i would have at p given the items at positions < p (pins at later positions do
  not count). Coverage adds +penalty when p < top and no item of i's value is yet in the rule's
  prefix; calibration adds penalty * (KL(prefix) - KL(prefix + i)) when p < top. As for counts,
  "the prefix" holds the items placed at positions < p and the hard pins reserved at positions
  in [p, top). KL of an empty prefix is the KL against q = 0, i.e. log(1 / alpha): the gains then
  telescope to penalty * (log(1 / alpha) - KL(final prefix)), the objective's term plus a constant.
* Equivalences (no other rules, pw[p] > 0, so the pick at p is argmax_i u_i + div_i):
  DPP picks argmax_i u_i + beta * log r_i = argmax_i log(q_i^2 r_i), with q_i = exp(u_i / (2 beta)):
  that is Chen, Zhang & Zhou (2018)'s greedy MAP on L = diag(q) S diag(q) (their d_i^2 is
  q_i^2 r_i), and with a window their sliding-window variant, as long as every selected item's
  residual exceeds DPP_SPAN_EPS. Where they stop (the span is full: d2 below their epsilon), this
  slate goes on, every residual floored at DPP_EPS, i.e. by utility. MMR picks
  argmax_i u_i - beta * max(0, max_j cos) = classic MMR, lambda * u_i - (1 - lambda) * max_j sim,
  with lambda = 1 / (1 + beta) and sim = max(0, cos). tests/test_diversity.py checks both
  against numpy implementations.
* Lazy evaluation (no N x N kernel is ever built). Each candidate carries state folded in only when
  the scan examines it: dcnt[i] = slate positions already folded in. DPP without window keeps
  Chen's c-vector M[i, :p] and d2[i] (starting at 1): folding slate[t] = j gives
  e = (cos(i, j) - <M[j, :t], M[i, :t]>) / dsel[t], M[i, t] = e, d2[i] -= e^2, where dsel[t] =
  sqrt(d2 of j when it was placed), or 0 (e = 0) when that d2 <= DPP_SPAN_EPS: j adds nothing to
  the span. Every placed item, pins included, is brought up to date before it is placed, so dsel is
  right. MMR without window keeps a running max cosine. With a window w the per-candidate state
  is the cosine to each slate position (M[i, t], only the last w are computed); MMR takes the max
  over the window, DPP solves against the Cholesky factor of the window's similarity block
  (rebuilt after each placement, skipping members with pivot <= DPP_SPAN_EPS):
  r = 1 - ||Lw^{-1} x||^2. Cosines are <e_i, e_j> / sqrt(|e_i|^2 |e_j|^2) in float64, one dot
  routine computing both, so identical rows have cosine exactly 1. The arithmetic of a fold does
  not depend on when it happens, so the lazy scan changes no value.
* A full span: once d items that are not zero rows have joined the span (of the window), every
  residual is exactly 0 (1 for a zero row), so it is set without folding; without a window the
  key of the candidates not yet examined becomes max(u + beta * log(DPP_EPS), u0), u0 = the best
  utility of an unused zero row (the norms of all rows are computed once, when that happens).
* Without a window, a stale div is an upper bound (residuals only shrink and the max similarity
  only grows as the slate grows): lazy greedy (Minoux 1978). Candidates are examined best bound
  first: a max-heap holds those examined before, keyed by u + stale div, and the utility scan
  order supplies the others (key u, as div <= 0). The scan stops when pw[p] * (best key left) +
  bonus bound is below the best gain (with the scan's tiny slack): nothing left can win or tie,
  so the winner is the one the plain scan would pick. Examined candidates go back into the heap
  with their new keys. With a window (stale values are no bound) or without diversity, the
  utility-order scan runs as before. The bonus bound of position p adds the coverage rewards
  and, per calibration row, penalty x the largest KL decrease any value could give (computed
  once per position).
* pw >= 0 is assumed (as the scan's stop rule always did); penalties of coverage and calibration
  rows are >= 0 and those rows are never hard (solvers.greedy checks).

Speed-ups that change no pick (each keeps "best feasible gain, ties to the lowest index"):

* The scan order is built lazily, in sorted stretches of the best remaining items.
* The min_count look-ahead is worked out once per scan for an item matching no rule (the worst
  case: matching a rule only lowers its need). If that item passes, the look-ahead blocks nobody;
  if not, every item matching no rule with a need left is blocked, and (with pw[p] >= 0, outside
  the lazy diversity scan) only the matching items of those rules are examined, each against the
  scan's bound, instead of walking the utility order to wherever they are.
* The sort bound (sum_p pw[p] * the p-th best utility) is read off the scan order at the end.

Helpers that allocate nothing are compiled with `_nrt=False`: Numba otherwise reference-counts
every array argument of a call that is not inlined (two atomic operations, ~5 ns per array), and
the scan calls them for every candidate it examines. Small ones called in such a helper's loops
are inlined (`inline="always"`, merged at Numba's IR level: no call at all), among them
`_examine`, the one step every scan takes per candidate, with its parts (`_blocked`,
`_capped_until`, `_gain`). They are merged only into `_nrt=False` functions: merged into
greedy_slate, which allocates and so counts references, every array an inlined body binds
would be counted on every candidate (measured: the scans took twice as long). So the scans are
`_nrt=False` functions of their own (`_scan_lazy`, `_scan_list`), and greedy_slate, which does
the allocating, calls them once per position (and per stretch of the scan order).

Packed inputs (as PyNNDescent passes its graphs: a few typed arrays, not one argument per column):

* The rule table (solvers.problem.ConstraintTable; rule c is the policy's c-th rule):

      rules    int64[RULE_COLS, C]   the integer columns, one row each: rules[RULE_*, c]
                 RULE_KIND       MAX_COUNT | MIN_COUNT | WINDOW | PIN | COVERAGE | CALIBRATION
                 RULE_ATTR       row of codes (-1 for PIN)
                 RULE_VALUE      value code, ALL_VALUES or NO_MATCH (-1 for PIN)
                 RULE_BOUND      the max (max_count, window) or the min (min_count), else 0
                 RULE_TOP        length of the prefix the rule covers
                 RULE_SIZE       window size (window), else 0
                 RULE_HARD       1 hard, 0 soft
                 RULE_PRIORITY   higher = more important (the lowest gives way first)
                 RULE_ITEM       PIN: the pinned candidate, else -1
                 RULE_POSITION   PIN: its position, else -1
      penalty  float64[C]            cost per violation unit (soft rules)
      target   float64[T]            calibration targets, flat: row c's distribution over its
                                     attribute's values is target[toff[c]:toff[c + 1]]
      toff     int64[C + 1]          their offsets

  One row per column (PyNNDescent's heap is laid out the same way: heap[0] the indices, heap[1]
  the distances, heap[2] the flags): each column is a contiguous row, rules[RULE_KIND] a plain
  view. `solvers.problem.ConstraintTable` stores the block (`rules`; the RULE_* indices and
  RULE_COLUMNS are in solvers.codes) and its int columns are views of it, so `pack_table(table)`
  copies nothing (packing per call cost 1.5-2.7 µs: +10-17 % on a 12 µs solve).
  solvers._evaluate_kernels takes the same arrays.
* The problem arrays utility float64[N], position_weight float64[L], codes int64[A, N] and
  n_values int64[A]; the diversity inputs embeddings float32[N, d] ([0, 0] when off) and three
  scalars div_mode, div_weight (beta), div_window.
* PROBLEM_TYPES and TABLE_TYPES are the Numba types of the problem arrays and of the packed
  table, in argument order: every explicit signature of both kernel modules is built from them.
  The RULE_* indices are compile-time constants there too: after changing the layout, delete
  the `__pycache__` folder of `solvers/` (Numba's cache keys on each module's own source).
* Inside greedy_slate the per-candidate diversity state travels as one tuple `ds` to
  `_div_refresh` and `_div_placed` (whose docstring lists its members).
"""

import numba as nb
import numpy as np

from solvers.codes import (
    ALL_VALUES, CALIBRATION, CALIBRATION_ALPHA, COVERAGE, DIV_DPP, DIV_MMR, DPP_EPS, DPP_SPAN_EPS,
    MAX_COUNT, MIN_COUNT, PIN, RELAX_CONFLICT, RELAX_SHORTAGE, RULE_ATTR, RULE_BOUND,
    RULE_HARD, RULE_ITEM, RULE_KIND, RULE_POSITION, RULE_PRIORITY, RULE_SIZE, RULE_TOP, RULE_VALUE,
    WINDOW,
)

NEG_INF = -np.inf

# --- the packed rule table -----------------------------------------------------------------------

# The RULE_* row indices and RULE_COLUMNS are in solvers.codes (ConstraintTable stores the block).


def pack_table(table):
    """A solvers.problem.ConstraintTable as the kernels take it (the layout above).

    Parameters
    ----------
    table : ConstraintTable
        The rules, one row each.

    Returns
    -------
    rules : ndarray of int64, shape (RULE_COLS, C)
        C-contiguous: the table's own block (`ConstraintTable.rules`, built once when the
        table is made; its int columns are views of it), so nothing is copied here.
    penalty : ndarray of float64, shape (C,)
    target : ndarray of float64, shape (T,)
        The calibration targets, flat.
    target_offset : ndarray of int64, shape (C + 1,)
    """
    t = table
    return (t.rules, np.ascontiguousarray(t.penalty, dtype=np.float64),
            np.ascontiguousarray(t.target, dtype=np.float64),
            np.ascontiguousarray(t.target_offset, dtype=np.int64))


#: Numba types of the problem arrays: utility [N], position_weight [>= L], codes [A, N], n_values [A]
PROBLEM_TYPES = (nb.float64[::1], nb.float64[::1], nb.int64[:, ::1], nb.int64[::1])
#: Numba types of the packed rule table: rules [RULE_COLS, C], penalty [C], target (flat),
#: target_offset [C + 1]
TABLE_TYPES = (nb.int64[:, ::1], nb.float64[::1], nb.float64[::1], nb.int64[::1])


@nb.njit(cache=True, nogil=True)
def _extend_order(u, order, n_order, below, want):
    """Append to `order` the next stretch of the scan order (utility desc, index asc): every item
    with cut <= utility < below, for a cut chosen so that about 1.25 `want` items come (read off a
    sample of ~128 of the remaining items; any cut gives the same order, a good one saves
    sorting). order[:n_order] must hold exactly the items with utility >= below. Returns the new
    length and the new cut (-inf once every item is in)."""
    N = u.shape[0]
    m = N - n_order  # the items with utility < below
    if m <= 0:
        return n_order, -np.inf
    cut = -np.inf
    if m > 2 * want:
        stride = max(1, m // 128)
        ns = 0
        for i in range(0, N, stride):
            if u[i] < below:
                ns += 1
        sample = np.empty(ns)
        ns = 0
        for i in range(0, N, stride):
            if u[i] < below:
                sample[ns] = u[i]
                ns += 1
        r = (want * ns * 5) // (4 * m) + 2  # rank from the top of the sampled cut
        if r < ns:
            cut = np.partition(sample, ns - 1 - r)[ns - 1 - r]
    rest = np.empty(m, dtype=np.int64)
    k = 0
    for i in range(N):
        if u[i] < below and u[i] >= cut:
            rest[k] = i
            k += 1
    vals = np.empty(k)
    for j in range(k):
        vals[j] = -u[rest[j]]
    # rest is in index order, so a stable sort on -utility breaks ties by lowest index
    perm = np.argsort(vals, kind="mergesort")
    for j in range(k):
        order[n_order + j] = rest[perm[j]]
    return n_order + k, (cut if n_order + k < N else -np.inf)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _window_hits(slate, codes, a, code, p, w, L, bound):
    """Number of windows containing p that already hold >= bound items with `code` (p excluded)."""
    if L < w:
        cnt = 0
        for r in range(L):
            if r != p and slate[r] >= 0 and codes[a, slate[r]] == code:
                cnt += 1
        return 1 if cnt >= bound else 0
    q_lo = max(0, p - w + 1)
    q_hi = min(p, L - w)
    hits = 0
    # sliding count over windows [q, q + w) for q in q_lo..q_hi
    cnt = 0
    for r in range(q_lo, q_lo + w):
        if r != p and slate[r] >= 0 and codes[a, slate[r]] == code:
            cnt += 1
    if cnt >= bound:
        hits += 1
    for q in range(q_lo + 1, q_hi + 1):
        r_out = q - 1
        r_in = q + w - 1
        if r_out != p and slate[r_out] >= 0 and codes[a, slate[r_out]] == code:
            cnt -= 1
        if r_in != p and slate[r_in] >= 0 and codes[a, slate[r_in]] == code:
            cnt += 1
        if cnt >= bound:
            hits += 1
    return hits


@nb.njit(cache=True, nogil=True, _nrt=False)
def _free_between(pinned_prefix, p, m):
    """Free (unpinned) positions r with p < r < m."""
    if m <= p + 1:
        return 0
    return (m - p - 1) - (pinned_prefix[m] - pinned_prefix[p + 1])

@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _live_hard_min(rules, active, c, p):
    """Whether rule c is an active hard min_count rule whose prefix still holds position p."""
    return (rules[RULE_KIND, c] == MIN_COUNT and rules[RULE_HARD, c] != 0 and active[c]
            and p < rules[RULE_TOP, c])


@nb.njit(cache=True, nogil=True, _nrt=False)
def _min_lookahead_blocker(i, p, codes, rules, active, cnt, off, pinned_prefix, need_buf,
                           self_counted):
    """Index of the hard min_count rule whose prefix would overflow if i were placed at p, or -1
    (i = -1: an item matching no rule, the worst case; need_buf then holds each rule's need).

    For each active rule c0 (prefix end m0), the needs of the same attribute's rules ending at or
    before m0 are summed, one per value (the largest), and compared with the free positions left
    between p and m0. Rules of one attribute and different values are disjoint, so the sum is a
    necessary condition; across attributes an item may serve several rules, so none is summed."""
    C = rules.shape[1]
    for c in range(C):
        if _live_hard_min(rules, active, c, p):
            v = rules[RULE_VALUE, c]
            need = rules[RULE_BOUND, c] - cnt[off[c]]
            if not self_counted and i >= 0 and v >= 0 and codes[rules[RULE_ATTR, c], i] == v:
                need -= 1
            need_buf[c] = need if need > 0 else 0
        else:
            need_buf[c] = 0
    for c0 in range(C):
        if not _live_hard_min(rules, active, c0, p):
            continue
        a0 = rules[RULE_ATTR, c0]
        m0 = rules[RULE_TOP, c0]
        total = 0
        # per value: the largest need among rules of this attribute ending at or before m0
        for c in range(C):
            if not _live_hard_min(rules, active, c, p):
                continue
            if rules[RULE_ATTR, c] != a0 or rules[RULE_TOP, c] > m0 or need_buf[c] == 0:
                continue
            # count each value once: only the first rule (in index order) holding the max need
            dominated = False
            for c2 in range(C):
                if c2 == c or not _live_hard_min(rules, active, c2, p):
                    continue
                if (rules[RULE_ATTR, c2] != a0 or rules[RULE_VALUE, c2] != rules[RULE_VALUE, c]
                        or rules[RULE_TOP, c2] > m0):
                    continue
                if need_buf[c2] > need_buf[c] or (need_buf[c2] == need_buf[c] and c2 < c):
                    dominated = True
                    break
            if not dominated:
                total += need_buf[c]
        if total > _free_between(pinned_prefix, p, m0):
            return c0
    return -1


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _cap_or_window_forbids(c, i, p, L, slate, codes, rules, cnt, off, self_counted):
    """Whether rule c, if it is a max_count or a window, forbids placing i at p (the caller checks
    that c is hard and active). self_counted: i is a reserved pin already in the counts."""
    k = rules[RULE_KIND, c]
    if k == MAX_COUNT:
        if p >= rules[RULE_TOP, c]:
            return False
        code = codes[rules[RULE_ATTR, c], i]
        v = rules[RULE_VALUE, c]
        if v != ALL_VALUES and v != code:
            return False
        n_now = cnt[off[c] + code]
        if self_counted:
            n_now -= 1
        return n_now >= rules[RULE_BOUND, c]
    if k == WINDOW:
        a = rules[RULE_ATTR, c]
        code = codes[a, i]
        v = rules[RULE_VALUE, c]
        if v != ALL_VALUES and v != code:
            return False
        return _window_hits(slate, codes, a, code, p, rules[RULE_SIZE, c], L,
                            rules[RULE_BOUND, c]) > 0
    return False


@nb.njit(cache=True, nogil=True, _nrt=False)
def _blockers_max_rank(i, p, L, slate, codes, rules, active, cnt, off, pinned_prefix, rank,
                       need_buf, self_counted):
    """Highest rank among the active hard rules that forbid placing i at p (-1: none).
    (`_blocked` is the scan's cheaper yes/no version.)

    self_counted: i is a reserved pin already included in the counts.
    """
    worst = -1
    for c in range(rules.shape[1]):
        if rules[RULE_HARD, c] != 0 and active[c] and rank[c] > worst and _cap_or_window_forbids(
                c, i, p, L, slate, codes, rules, cnt, off, self_counted):
            worst = rank[c]
    # the rule whose prefix overflows is blamed (others of its attribute may be involved too)
    c0 = _min_lookahead_blocker(i, p, codes, rules, active, cnt, off, pinned_prefix, need_buf,
                                self_counted)
    if c0 >= 0 and rank[c0] > worst:
        worst = rank[c0]
    return worst


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _lookahead_excludes(i, codes, rules, la_need):
    """While the look-ahead blocks an item matching no rule (`_lookahead_worst` >= 0): whether i
    matches no rule with a need left (la_need), so that it is blocked too."""
    for c in range(rules.shape[1]):
        v = rules[RULE_VALUE, c]
        if la_need[c] > 0 and v >= 0 and codes[rules[RULE_ATTR, c], i] == v:
            return False
    return True


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _blocked(i, p, L, slate, codes, rules, active, cnt, off, pinned_prefix, need_buf, la_c0,
             la_need):
    """Whether an active hard rule forbids placing i (not a reserved pin) at p: the test
    `_blockers_max_rank(..., self_counted=False) >= 0`, made cheap with the
    look-ahead's worst case computed once per scan (`_lookahead_worst`: la_c0, la_need).

    Needs only shrink when i matches a rule, and the look-ahead total grows with the needs, so:
    la_c0 < 0 (an item matching nothing passes) means no item is blocked by the look-ahead; and
    an item matching no rule with a need left has exactly the worst-case needs: it is blocked."""
    if la_c0 >= 0 and _lookahead_excludes(i, codes, rules, la_need):
        return True
    for c in range(rules.shape[1]):
        if rules[RULE_HARD, c] != 0 and active[c] and _cap_or_window_forbids(
                c, i, p, L, slate, codes, rules, cnt, off, False):
            return True
    if la_c0 >= 0:
        return _min_lookahead_blocker(i, p, codes, rules, active, cnt, off, pinned_prefix,
                                      need_buf, False) >= 0
    return False


@nb.njit(cache=True, nogil=True, _nrt=False)
def _lookahead_worst(p, codes, rules, active, cnt, off, pinned_prefix, need_buf, la_need):
    """The look-ahead for an item matching no rule (see `_blocked`): the blamed rule or -1, and
    each rule's need in la_need. Valid while p, the counts and the active rules stay as they are."""
    c0 = _min_lookahead_blocker(-1, p, codes, rules, active, cnt, off, pinned_prefix, need_buf,
                                False)
    for c in range(rules.shape[1]):
        la_need[c] = need_buf[c]
    return c0


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _capped_until(i, p, codes, rules, active, cnt, off):
    """First position from which i may fit again under the active hard max_count rules (p when
    none blocks it). Counts only grow, so a cap that is full now stays full up to its prefix end
    unless a rule is relaxed or a pin released (the caller then forgets these marks)."""
    until = p
    for c in range(rules.shape[1]):
        top = rules[RULE_TOP, c]
        if rules[RULE_KIND, c] == MAX_COUNT and rules[RULE_HARD, c] != 0 and active[c] and p < top:
            code = codes[rules[RULE_ATTR, c], i]
            v = rules[RULE_VALUE, c]
            if (v == ALL_VALUES or v == code) and cnt[off[c] + code] >= rules[RULE_BOUND, c]:
                if top > until:
                    until = top
    return until


# --- similarity diversity ------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True, _nrt=False, fastmath={"reassoc", "contract"})
def _dot64(A, a, B, b):
    """<A[a], B[b]> of float64 rows (reassociated so it vectorises; the same function computes
    the squared norms, so identical rows have <x, y> == |x|^2 == |y|^2 and cosine exactly 1).
    Rows are passed by index: a slice would cost a reference count per call."""
    s = 0.0
    for k in range(A.shape[1]):
        s += A[a, k] * B[b, k]
    return s


@nb.njit(cache=True, nogil=True, _nrt=False)
def _load(emb, i, X, x, n2):
    """X[x] = row i in float64; n2[i] = |row i|^2 if not known yet (< 0)."""
    for k in range(X.shape[1]):
        X[x, k] = np.float64(emb[i, k])
    if n2[i] < 0.0:
        n2[i] = _dot64(X, x, X, x)


@nb.njit(cache=True, nogil=True, _nrt=False, fastmath={"reassoc", "contract"})
def _dot_rows(M, a, b, n):
    """<M[a, :n], M[b, :n]>."""
    s = 0.0
    for k in range(n):
        s += M[a, k] * M[b, k]
    return s


@nb.njit(cache=True, nogil=True, _nrt=False)
def _cos_batch(emb, i, n2, P, slate, t0, t1, xi, out):
    """out[t] = cos(row i, item placed at t) = <e_i, e_j> / sqrt(|e_i|^2 |e_j|^2) for
    t0 <= t < t1, P[t] holding e_j in float64 (exactly 1 for identical rows, +-1 for parallel
    rows in one dimension; 0 when either is a zero row)."""
    _load(emb, i, xi, 0, n2)
    for t in range(t0, t1):
        n2j = n2[slate[t]]
        if n2[i] == 0.0 or n2j == 0.0:
            out[t] = 0.0
        else:
            out[t] = _dot64(xi, 0, P, t) / np.sqrt(n2[i] * n2j)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _div_refresh(i, p, slate, emb, mode, beta, w, ds):
    """Bring candidate i's diversity state up to position p (fold in slate[dcnt[i]..p-1]) and
    return div_i(p). Without a window the stored value, once stale, is an upper bound.

    ds = (n2, P, dcnt, dval, mx, d2, M, dsel, Wc, Wd, ebuf, rank, xi, xbuf), greedy_slate's
    diversity state (the module docstring). rank[0] (rank[1]): members of the span (of the
    window's span) that are not zero rows; once it reaches d every other residual is exactly 0
    (1 for a zero row), without computing it."""
    n2, P, dcnt, dval, mx, d2, M, dsel, Wc, Wd, ebuf, rank, xi, xbuf = ds
    if dcnt[i] == p:
        return dval[i]
    d = emb.shape[1]
    if w == 0:
        if mode == DIV_MMR:
            _cos_batch(emb, i, n2, P, slate, dcnt[i], p, xi, xbuf)
            m = mx[i]
            for t in range(dcnt[i], p):
                if xbuf[t] > m:
                    m = xbuf[t]
            mx[i] = m
            dv = -beta * m
        else:
            if rank[0] >= d:  # the span is full
                if n2[i] < 0.0:
                    _load(emb, i, xi, 0, n2)
                r = 1.0 if n2[i] == 0.0 else 0.0
            else:
                _cos_batch(emb, i, n2, P, slate, dcnt[i], p, xi, xbuf)
                r = d2[i]
                for t in range(dcnt[i], p):
                    if dsel[t] > 0.0:
                        e = (xbuf[t] - _dot_rows(M, slate[t], i, t)) / dsel[t]
                        M[i, t] = e
                        r -= e * e
                    else:
                        M[i, t] = 0.0
            d2[i] = r
            dv = beta * np.log(max(r, DPP_EPS))
    else:
        lo = max(0, p - w)
        _cos_batch(emb, i, n2, P, slate, max(dcnt[i], lo), p, xi, xbuf)
        for t in range(max(dcnt[i], lo), p):
            M[i, t] = xbuf[t]
        if mode == DIV_MMR:
            m = 0.0
            for t in range(lo, p):
                if M[i, t] > m:
                    m = M[i, t]
            dv = -beta * m
        elif rank[1] >= d:  # the window spans everything
            r = 1.0 if n2[i] == 0.0 else 0.0
            dv = beta * np.log(max(r, DPP_EPS))
        else:
            r = 1.0
            for k in range(p - lo):
                e = 0.0
                if Wd[k] > 0.0:
                    acc = 0.0
                    for l in range(k):
                        acc += Wc[k, l] * ebuf[l]
                    e = (M[i, lo + k] - acc) / Wd[k]
                ebuf[k] = e
                r -= e * e
            dv = beta * np.log(max(r, DPP_EPS))
    dcnt[i] = p
    dval[i] = dv
    return dv


@nb.njit(cache=True, nogil=True, _nrt=False)
def cholesky_row(s, Cv, piv, a):
    """Row a of an incremental Cholesky factor (rows Cv, pivots piv) of a similarity matrix,
    s[b] being row a's similarity with row b < a; a row whose residual is <= DPP_SPAN_EPS gets
    pivot 0 (it adds nothing to the span). Returns the residual. Shared with
    solvers._evaluate_kernels, so both compute it in one order (Numba's cache does not see a
    change here from that module: delete solvers/__pycache__ after changing it)."""
    r = 1.0
    for b in range(a):
        e = 0.0
        if piv[b] > 0.0:
            acc = 0.0
            for m in range(b):
                acc += Cv[b, m] * Cv[a, m]
            e = (s[b] - acc) / piv[b]
        Cv[a, b] = e
        r -= e * e
    piv[a] = np.sqrt(r) if r > DPP_SPAN_EPS else 0.0
    return r


@nb.njit(cache=True, nogil=True, _nrt=False)
def _window_factor(p, slate, w, n2, M, Wc, Wd):
    """Cholesky factor (rows Wc, pivots Wd) of the similarity block of the window of position p,
    the items at positions max(0, p - w)..p-1, in slate order; a member whose residual given the
    earlier members is <= DPP_SPAN_EPS gets pivot 0 (it adds nothing to the span). M[j, t] holds
    the cosine of slate item j with the item at position t (every placed item was brought up to
    date at its own position, and the window only reaches back w positions). Returns the number
    of members that are not zero rows."""
    lo = max(0, p - w)
    members = 0
    for k in range(p - lo):
        j = slate[lo + k]
        cholesky_row(M[j, lo:], Wc, Wd, k)
        if Wd[k] > 0.0 and n2[j] > 0.0:
            members += 1
    return members


@nb.njit(cache=True, nogil=True, _nrt=False)
def _div_placed(j, p, slate, emb, mode, w, ds):
    """Item j (brought up to date at p) is placed at p: keep its row and record what the next
    positions need (ds: as for `_div_refresh`)."""
    n2, P, dcnt, dval, mx, d2, M, dsel, Wc, Wd, ebuf, rank, xi, xbuf = ds
    _load(emb, j, P, p, n2)
    if w == 0:
        if mode == DIV_DPP:
            dsel[p] = np.sqrt(d2[j]) if d2[j] > DPP_SPAN_EPS else 0.0
            if dsel[p] > 0.0 and n2[j] > 0.0:
                rank[0] += 1
    elif mode == DIV_DPP:
        rank[1] = _window_factor(p + 1, slate, w, n2, M, Wc, Wd)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _heap_set(hkey, hidx, pos, key, i):
    hkey[pos] = key
    hidx[pos] = i


@nb.njit(cache=True, nogil=True, _nrt=False)
def _heap_push(hkey, hidx, n, key, i):
    """Insert (key, i) into the max-heap hkey/hidx[:n] (the caller then counts n + 1)."""
    pos = n
    while pos > 0:
        parent = (pos - 1) >> 1
        if hkey[parent] >= key:
            break
        _heap_set(hkey, hidx, pos, hkey[parent], hidx[parent])  # the parent moves down
        pos = parent
    _heap_set(hkey, hidx, pos, key, i)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _heap_pop(hkey, hidx, n):
    """Remove and return the item with the largest key of hkey/hidx[:n] (the caller then counts
    n - 1)."""
    top = hidx[0]
    n -= 1
    if n > 0:
        key = hkey[n]
        i = hidx[n]
        pos = 0
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            if child + 1 < n and hkey[child + 1] > hkey[child]:
                child += 1
            if hkey[child] <= key:
                break
            _heap_set(hkey, hidx, pos, hkey[child], hidx[child])  # the larger child moves up
            pos = child
        _heap_set(hkey, hidx, pos, key, i)
    return top


# --- calibration ---------------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True, _nrt=False)
def _calibration_deltas(c, nv, cnt, off, target, toff, out):
    """out[toff[c] + g] = KL(prefix) - KL(prefix + one item of value g) for calibration row c,
    whose counts are cnt[off[c] + v] (v < nv) and total cnt[off[c] + nv]; returns the max."""
    base = off[c]
    tb = toff[c]
    n = cnt[base + nv]
    keep = 1.0 - CALIBRATION_ALPHA
    before = 0.0
    after = 0.0  # KL with the total n + 1 and unchanged counts (corrected per g below)
    for v in range(nv):
        tv = target[tb + v]
        if tv > 0.0:
            q = cnt[base + v] / n if n > 0 else 0.0
            before += tv * np.log(tv / (keep * q + CALIBRATION_ALPHA * tv))
            after += tv * np.log(tv / (keep * (cnt[base + v] / (n + 1)) + CALIBRATION_ALPHA * tv))
    best = -np.inf
    for g in range(nv):
        tg = target[tb + g]
        kl = after
        if tg > 0.0:
            smooth = CALIBRATION_ALPHA * tg
            old = tg * np.log(tg / (keep * (cnt[base + g] / (n + 1)) + smooth))
            new = tg * np.log(tg / (keep * ((cnt[base + g] + 1) / (n + 1)) + smooth))
            kl = after - old + new
        d = before - kl
        out[tb + g] = d
        if d > best:
            best = d
    return best

@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _gain(i, p, L, pw, u, div, slate, codes, rules, penalty, cnt, off, cal, toff):
    g = pw[p] * (u[i] + div)
    for c in range(rules.shape[1]):
        if rules[RULE_HARD, c] != 0:
            continue
        k = rules[RULE_KIND, c]
        a = rules[RULE_ATTR, c]
        v = rules[RULE_VALUE, c]
        bound = rules[RULE_BOUND, c]
        top = rules[RULE_TOP, c]
        if k == MAX_COUNT:
            if p < top:
                code = codes[a, i]
                if (v == ALL_VALUES or v == code) and cnt[off[c] + code] >= bound:
                    g -= penalty[c]
        elif k == MIN_COUNT:
            if p < top and v >= 0 and codes[a, i] == v:
                if cnt[off[c]] < bound:
                    # deferred: the bonus counts only once the items still missing no longer fit
                    # in the free positions after p, so the minimum is met at the cheapest
                    # (lowest-weight) positions of its prefix rather than at the top
                    free = 0
                    for r in range(p + 1, min(top, L)):
                        if slate[r] < 0:
                            free += 1
                    if bound - cnt[off[c]] > free:
                        g += penalty[c]
        elif k == WINDOW:
            code = codes[a, i]
            if v == ALL_VALUES or v == code:
                g -= penalty[c] * _window_hits(slate, codes, a, code, p, rules[RULE_SIZE, c], L,
                                               bound)
        elif k == PIN:
            item = rules[RULE_ITEM, c]
            position = rules[RULE_POSITION, c]
            if item >= 0 and position < L:
                if p == position and i != item:
                    g -= penalty[c]
                elif i == item and p != position:
                    g -= penalty[c]
        elif k == COVERAGE:
            if p < top and cnt[off[c] + codes[a, i]] == 0:
                g += penalty[c]
        else:  # CALIBRATION
            if p < top:
                g += penalty[c] * cal[toff[c] + codes[a, i]]
    return g


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _count(i, p, codes, rules, cnt, off, delta):
    for c in range(rules.shape[1]):
        k = rules[RULE_KIND, c]
        if k != PIN and k != WINDOW and p < rules[RULE_TOP, c]:
            code = codes[rules[RULE_ATTR, c], i]
            if k == MIN_COUNT:
                v = rules[RULE_VALUE, c]
                if v >= 0 and code == v:
                    cnt[off[c]] += delta
            else:  # MAX_COUNT, COVERAGE: per value; CALIBRATION: per value and the total
                cnt[off[c] + code] += delta
                if k == CALIBRATION:
                    cnt[off[c + 1] - 1] += delta


# --- the scan ------------------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _beyond_reach(bound, best, best_g):
    """Whether a candidate whose gain is at most `bound` can neither beat nor tie best_g (with a
    tiny relative slack, so that rounding never ends a scan early)."""
    return best >= 0 and bound + 1e-12 * (1.0 + abs(best_g)) < best_g


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _examine(i, p, la_c0, best, best_g, ex):
    """The step every scan takes per candidate at free position p: candidate i (unused,
    unreserved) is either blocked by an active hard rule (its capped_until mark is then set) or
    has a gain; returns the new (best, best_g): the best feasible gain, ties to the lowest index.
    ex: greedy_slate's scan context (see there)."""
    (L, pw, u, slate, codes, rules, penalty, active, cnt, off, pinned_prefix, need_buf, la_need,
     capped_until, cal, toff, emb, mode, beta, win, ds) = ex
    if _blocked(i, p, L, slate, codes, rules, active, cnt, off, pinned_prefix, need_buf, la_c0,
                la_need):
        capped_until[i] = _capped_until(i, p, codes, rules, active, cnt, off)
        return best, best_g
    div = 0.0
    if mode != 0:
        div = _div_refresh(i, p, slate, emb, mode, beta, win, ds)
    g = _gain(i, p, L, pw, u, div, slate, codes, rules, penalty, cnt, off, cal, toff)
    if g > best_g or (g == best_g and i < best) or best < 0:
        return i, g
    return best, best_g


# The scans of a free position (the lazy one for diversity without a window; `_scan_list` for
# the look-ahead's matches and for the plain walk down the scan order). Each is compiled without
# reference counting, with `_examine` merged into its loop, so a candidate costs no call. None
# allocates, so extending the scan order (`_extend_order` allocates) is left to greedy_slate: a
# scan that reaches the end of order[:n_order] returns, greedy_slate extends the order if items
# are left and calls it again, which resumes where it stopped (its state is in its arguments).

@nb.njit(cache=True, nogil=True, _nrt=False)
def _scan_lazy(p, bonus, la_c0, best, best_g, sp, n_order, n_def, hsize, order, used, reserved,
               seen, capped_until, hkey, hidx, defer, full_span, floor_div, u0, pw, u, ex):
    """Examine candidates by their bound on u + div, best first: the heap hkey/hidx[:hsize] holds
    those examined before (u + stale div), the scan order from sp the rest (u; the cap once the
    span is full); stop when the best bound left cannot reach best_g. Each candidate examined is
    recorded in defer[:n_def]. Returns (best, best_g, sp, n_def, hsize, more)."""
    N = u.shape[0]
    while True:
        while True:  # the next unseen candidate of the scan order
            if sp == n_order:
                if n_order == N:
                    break
                return best, best_g, sp, n_def, hsize, True
            i = order[sp]
            if used[i] or reserved[i] or seen[i]:
                sp += 1
                continue
            break
        key_s = NEG_INF
        if sp < n_order:
            key_s = u[order[sp]]
            if full_span:
                key_s = max(key_s + floor_div, u0)
        if hsize == 0 and sp == n_order:
            break
        from_heap = hsize > 0 and hkey[0] >= key_s
        key = hkey[0] if from_heap else key_s
        if _beyond_reach(pw[p] * key + bonus, best, best_g):
            break
        if from_heap:
            i = _heap_pop(hkey, hidx, hsize)
            hsize -= 1
            if used[i] or reserved[i]:
                continue  # dropped (a released pin is pushed again)
        else:
            i = order[sp]
            sp += 1
            seen[i] = True
        defer[n_def] = i  # back into the heap after this scan
        n_def += 1
        if capped_until[i] > p:
            continue
        best, best_g = _examine(i, p, la_c0, best, best_g, ex)
    return best, best_g, sp, n_def, hsize, False


@nb.njit(cache=True, nogil=True, _nrt=False)
def _scan_list(p, bonus, la_c0, best, best_g, j, end, items, by_utility, used, reserved,
               capped_until, pw, u, ex):
    """Examine items[j:end], skipping those out of reach (a gain of at most pw[p] * u + bonus
    cannot beat best_g); with by_utility (items in utility order, the scan order) the first one
    out of reach ends the scan, as none after it can do better. Returns (best, best_g, j,
    stopped): stopped when it ended that way."""
    while j < end:
        i = items[j]
        j += 1
        if used[i] or reserved[i] or capped_until[i] > p:
            continue
        if _beyond_reach(pw[p] * u[i] + bonus, best, best_g):
            if by_utility:
                return best, best_g, j, True
            continue
        best, best_g = _examine(i, p, la_c0, best, best_g, ex)
    return best, best_g, j, False


@nb.njit(cache=True, nogil=True, _nrt=False)
def _relax_rank(r, p, rank, active, reason, relax_pos, capped_until):
    """The rule of rank r gives way at position p (a conflict); the capped marks are forgotten,
    as a relaxed cap frees the items it held back."""
    for c in range(rank.shape[0]):
        if rank[c] == r:
            active[c] = False
            reason[c] = RELAX_CONFLICT
            relax_pos[c] = p
    for i in range(capped_until.shape[0]):
        capped_until[i] = 0


# --- set-up and per-position steps (shared with solvers._explore_kernels) ------------------------
# greedy_slate and the exploration kernel fill a slate the same way but for the choice at a free
# position: both are built from these steps, so the rules around the choice are written once.
# The set-up ones allocate (called once per slate); the per-position ones are `_nrt=False` (no
# reference counting at their call, as for the scan helpers).

@nb.njit(cache=True, nogil=True, inline="always")
def _count_state(rules, n_values, n_target):
    """The count storage: one slot per value for max_count and coverage, one slot for min_count,
    one per value plus the total for calibration. Returns (off [C + 1], cnt (zeros), need_buf,
    la_need [C] (zeros), cal [n_target] (zeros), n_cov, n_cal): rule c counts in
    cnt[off[c]:off[c + 1]]; la_need holds the look-ahead needs of an item matching no rule, cal
    the per-value KL decreases at the current position."""
    C = rules.shape[1]
    off = np.zeros(C + 1, dtype=np.int64)
    n_cal = 0
    n_cov = 0
    for c in range(C):
        k = rules[RULE_KIND, c]
        width = 0
        if k == MAX_COUNT or k == COVERAGE:
            width = n_values[rules[RULE_ATTR, c]]
            if k == COVERAGE:
                n_cov += 1
        elif k == MIN_COUNT:
            width = 1
        elif k == CALIBRATION:
            width = n_values[rules[RULE_ATTR, c]] + 1
            n_cal += 1
        off[c + 1] = off[c] + width
    cnt = np.zeros(off[C] + 1, dtype=np.int64)
    return (off, cnt, np.zeros(C, dtype=np.int64), np.zeros(C, dtype=np.int64),
            np.zeros(n_target, dtype=np.float64), n_cov, n_cal)


@nb.njit(cache=True, nogil=True, inline="always")
def _diversity_state(N, L, emb, div_mode, beta, div_window):
    """(mode, win, ds): the diversity mode in force (0 when beta is 0), the window (0 when it
    reaches back to position 0: no window) and the per-candidate state `ds` of `_div_refresh`
    (the module docstring). What the mode does not use is one shared empty array (an allocation
    costs ~40 ns; most calls have no diversity)."""
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
        n2 = np.full(N, -1.0)  # squared norms (-1: not computed yet)
        P = np.zeros((L, d))  # rows of the placed items, in float64
        xi = np.zeros((1, d))  # the candidate's row in float64
        xbuf = np.zeros(L)  # a candidate's cosines to the positions it folds in
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
    return mode, win, (n2, P, dcnt, dval, mx, d2, M, dsel, Wc, Wd, ebuf, span_rank, xi, xbuf)


@nb.njit(cache=True, nogil=True, inline="always")
def _slate_state(N, codes, rules, active, cnt, off, slate):
    """Clear `slate` to -1 and reserve the active hard pins (compile guarantees distinct items
    and positions < L): their items are placed, reserved and pre-counted. Returns (used,
    reserved, capped_until (zeros: i is blocked by a full cap while p < capped_until[i]),
    pin_rule (the pin rule of each position, -1), pinned_prefix [L + 1])."""
    L = slate.shape[0]
    used = np.zeros(N, dtype=np.bool_)
    reserved = np.zeros(N, dtype=np.bool_)
    capped_until = np.zeros(N, dtype=np.int64)
    pin_rule = np.full(L, -1, dtype=np.int64)
    for p in range(L):
        slate[p] = -1
    for c in range(rules.shape[1]):
        if rules[RULE_KIND, c] == PIN and rules[RULE_HARD, c] != 0 and active[c]:
            q = rules[RULE_POSITION, c]
            i = rules[RULE_ITEM, c]
            slate[q] = i
            pin_rule[q] = c
            reserved[i] = True
            _count(i, q, codes, rules, cnt, off, 1)
    pinned_prefix = np.zeros(L + 1, dtype=np.int64)
    for p in range(L):
        pinned_prefix[p + 1] = pinned_prefix[p] + (1 if pin_rule[p] >= 0 else 0)
    return used, reserved, capped_until, pin_rule, pinned_prefix


@nb.njit(cache=True, nogil=True, inline="always")
def _min_count_state(N, codes, rules, penalty, reserved):
    """Per min_count rule: avail [C], the matching candidates still available (reserved pins
    excluded); every matching candidate of each hard one (reserved or not), in index order, in
    matches[moff[c]:moff[c + 1]], filled by `_fill_matches` the first time the look-ahead leaves
    only them (matches_known [C]). Returns (avail, moff, matches, matches_known, max_bonus,
    hard_top): the sum of the soft min_count rewards (part of every position's bonus bound) and
    the end of the longest hard min_count prefix (no shortage can arise at a position past it)."""
    C = rules.shape[1]
    avail = np.zeros(C, dtype=np.int64)
    moff = np.zeros(C + 1, dtype=np.int64)
    max_bonus = 0.0
    hard_top = 0
    for c in range(C):
        n_match = 0
        if rules[RULE_KIND, c] == MIN_COUNT:
            if rules[RULE_HARD, c] != 0 and rules[RULE_TOP, c] > hard_top:
                hard_top = rules[RULE_TOP, c]
            v = rules[RULE_VALUE, c]
            if v >= 0:
                a = rules[RULE_ATTR, c]
                for i in range(N):
                    if codes[a, i] == v:
                        n_match += 1
                        if not reserved[i]:
                            avail[c] += 1
            if rules[RULE_HARD, c] == 0:
                max_bonus += penalty[c]
                n_match = 0
        moff[c + 1] = moff[c] + n_match
    return (avail, moff, np.empty(moff[C], dtype=np.int64), np.zeros(C, dtype=np.bool_),
            max_bonus, hard_top)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _fill_matches(c, codes, rules, moff, matches, matches_known):
    """Fill rule c's matches (`_min_count_state`) if not done yet."""
    if matches_known[c]:
        return
    matches_known[c] = True
    a = rules[RULE_ATTR, c]
    v = rules[RULE_VALUE, c]
    k = moff[c]
    for i in range(codes.shape[1]):
        if codes[a, i] == v:
            matches[k] = i
            k += 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def _shortages(p, rules, active, cnt, off, avail, reason, relax_pos):
    """Relax, as shortages at p, the active hard min_count rules whose prefix holds p and that
    need more items than the candidates left can give."""
    for c in range(rules.shape[1]):
        if (rules[RULE_KIND, c] == MIN_COUNT and rules[RULE_HARD, c] != 0 and active[c]
                and p < rules[RULE_TOP, c]):
            if rules[RULE_BOUND, c] - cnt[off[c]] > avail[c]:
                active[c] = False
                reason[c] = RELAX_SHORTAGE
                relax_pos[c] = p


@nb.njit(cache=True, nogil=True, _nrt=False)
def _pin_gives_way(p, L, slate, codes, rules, active, cnt, off, pinned_prefix, rank, need_buf,
                   reason, relax_pos, capped_until, reserved, avail, pin_rule):
    """Pinned position p: relax, lowest rank first, the rules that its item breaks while they
    rank below the pin. Returns True when a rule outranking it forbids it: the pin then gives way
    (relaxed as a conflict; its item is unreserved, uncounted and available again, the position
    free, the capped marks forgotten), and the position is to be filled like a free one."""
    c_pin = pin_rule[p]
    i = slate[p]
    while True:
        worst = _blockers_max_rank(i, p, L, slate, codes, rules, active, cnt, off, pinned_prefix,
                                   rank, need_buf, True)
        if worst < 0:
            return False
        if worst > rank[c_pin]:
            active[c_pin] = False
            reason[c_pin] = RELAX_CONFLICT
            relax_pos[c_pin] = p
            _count(i, p, codes, rules, cnt, off, -1)
            reserved[i] = False
            for c in range(rules.shape[1]):
                v = rules[RULE_VALUE, c]
                if rules[RULE_KIND, c] == MIN_COUNT and v >= 0 and codes[rules[RULE_ATTR, c], i] == v:
                    avail[c] += 1
            slate[p] = -1
            pin_rule[p] = -1
            for r in range(p, L):
                pinned_prefix[r + 1] = pinned_prefix[r] + (1 if pin_rule[r] >= 0 else 0)
            for j in range(capped_until.shape[0]):
                capped_until[j] = 0  # counts went down
            return True
        _relax_rank(worst, p, rank, active, reason, relax_pos, capped_until)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _bonus_bound(p, max_bonus, rules, penalty, n_values, cnt, off, target, toff, cal):
    """Bound on the soft bonuses at p: max_bonus (the min_count rewards) plus the coverage rewards
    and, per calibration row, the largest KL decrease (the per-value decreases are tabled into
    cal). Only needed when there are coverage or calibration rows (else it is max_bonus)."""
    bonus = max_bonus
    for c in range(rules.shape[1]):
        if p < rules[RULE_TOP, c]:
            k = rules[RULE_KIND, c]
            if k == COVERAGE:
                bonus += penalty[c]
            elif k == CALIBRATION:
                bonus += penalty[c] * _calibration_deltas(
                    c, n_values[rules[RULE_ATTR, c]], cnt, off, target, toff, cal)
    return bonus


@nb.njit(cache=True, nogil=True, _nrt=False)
def _relax_cheapest(p, L, n_order, order, used, reserved, slate, codes, rules, active, cnt, off,
                    pinned_prefix, rank, need_buf, reason, relax_pos, capped_until):
    """No candidate is feasible at p: relax the rule whose relaxation frees a candidate most
    cheaply (r* = min over the candidates of order[:n_order], which must hold them all, of the
    highest rank among their blockers). Returns False when no candidate is left at all."""
    r_star = -1
    for jj in range(n_order):
        i = order[jj]
        if used[i] or reserved[i]:
            continue
        w = _blockers_max_rank(i, p, L, slate, codes, rules, active, cnt, off, pinned_prefix,
                               rank, need_buf, False)
        if r_star < 0 or w < r_star:
            r_star = w
    if r_star < 0:
        return False
    _relax_rank(r_star, p, rank, active, reason, relax_pos, capped_until)
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def _placed(i, p, codes, rules, cnt, off, avail):
    """i was placed at free position p: count it and take it from the min_count rules' available
    items."""
    _count(i, p, codes, rules, cnt, off, 1)
    for c in range(rules.shape[1]):
        v = rules[RULE_VALUE, c]
        if rules[RULE_KIND, c] == MIN_COUNT and v >= 0 and codes[rules[RULE_ATTR, c], i] == v:
            avail[c] -= 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def _finish(L, rules, active, cnt, off, reason, relax_pos, relaxed):
    """A hard minimum the slate could not reach (e.g. fewer positions than it needs) is a
    shortage at L; mark the relaxed hard rules (reason 0 for the others). Returns their number."""
    n_relaxed = 0
    for c in range(rules.shape[1]):
        hard = rules[RULE_HARD, c] != 0
        if (rules[RULE_KIND, c] == MIN_COUNT and hard and active[c]
                and cnt[off[c]] < rules[RULE_BOUND, c]):
            active[c] = False
            reason[c] = RELAX_SHORTAGE
            relax_pos[c] = L
        relaxed[c] = hard and not active[c]
        if relaxed[c]:
            n_relaxed += 1
        else:
            reason[c] = 0
    return n_relaxed


#: the diversity arguments both kernels take after the table: embeddings [N, d] ([0, 0] when
#: diversity is off), div_mode, div_weight (beta), div_window
DIVERSITY_TYPES = (nb.float32[:, ::1], nb.int64, nb.float64, nb.int64)

_SIG = nb.int64(
    *PROBLEM_TYPES,  # utility, position_weight, codes, n_values
    *TABLE_TYPES,  # rules, penalty, target, target_offset
    *DIVERSITY_TYPES,  # embeddings, div_mode, div_weight, div_window
    nb.boolean[::1],  # active (in/out)
    nb.int64[::1],  # slate (out)
    nb.int64[::1],  # reason (in: pre-solve reasons; out: RELAX_* of the relaxed rules, else 0)
    nb.int64[::1],  # relax_pos (out)
    nb.boolean[::1],  # relaxed (out): hard and not active at the end
    nb.float64[::1],  # info (out): [sort bound]
)


@nb.njit(cache=True, nogil=True)
def _ranks(priority):
    """Rank of each rule in the order rules give way: lowest priority first, ties to the later
    rule (solvers.greedy.constraint_ranks)."""
    C = priority.shape[0]
    rev = np.empty(C, dtype=np.int64)
    for c in range(C):
        rev[c] = C - 1 - c
    perm = np.argsort(priority[rev], kind="mergesort")  # stable: later rules first among ties
    rank = np.empty(C, dtype=np.int64)
    for k in range(C):
        rank[rev[perm[k]]] = k
    return rank


@nb.njit(_SIG, cache=True, nogil=True)
def greedy_slate(u, pw, codes, n_values, rules, penalty, target, toff, emb, div_mode, beta,
                 div_window, active, slate, reason, relax_pos, relaxed, info):
    """Fill `slate`; return the number of relaxed hard rules, or -1 - j when utility[j] is not
    finite (nothing else is then written). info[0] = the sort bound: sum_p pw[p] * (p-th largest
    utility), the objective_upper_bound_unconstrained of solvers.evaluate."""
    N = u.shape[0]
    L = pw.shape[0]
    C = rules.shape[1]
    value = rules[RULE_VALUE]
    for i in range(N):
        if not np.isfinite(u[i]):
            return -1 - i
    rank = _ranks(rules[RULE_PRIORITY])
    for c in range(C):
        relax_pos[c] = -1

    # --- set-up (shared with the exploration kernel): counts, diversity, pins, min_count rules
    off, cnt, need_buf, la_need, cal, n_cov, n_cal = _count_state(rules, n_values, target.shape[0])
    mode, win, ds = _diversity_state(N, L, emb, div_mode, beta, div_window)
    d = emb.shape[1]
    n2, dval = ds[0], ds[3]
    span_rank = ds[11]
    xi = ds[12]
    no_f = np.zeros(0)
    no_i = np.zeros(0, dtype=np.int64)
    floor_div = beta * np.log(DPP_EPS)
    zero_rows = no_i  # known once the span is full (DPP without window)
    zero_known = False
    lazy = mode != 0 and win == 0  # stale div values are upper bounds
    hkey = np.empty(N) if lazy else no_f  # max-heap of examined candidates by u + stale div
    hidx = np.empty(N, dtype=np.int64) if lazy else no_i
    hsize = 0
    seen = np.zeros(N if lazy else 0, dtype=np.bool_)  # taken from the scan order into the heap
    defer = np.empty(N, dtype=np.int64) if lazy else no_i  # examined during the current scan
    sp = 0  # order[:sp] are seen, used or reserved

    used, reserved, capped_until, pin_rule, pinned_prefix = _slate_state(N, codes, rules, active,
                                                                         cnt, off, slate)
    # the scan context `_examine` reads: arrays changed in place only, and constants
    ex = (L, pw, u, slate, codes, rules, penalty, active, cnt, off, pinned_prefix, need_buf,
          la_need, capped_until, cal, toff, emb, mode, beta, win, ds)
    avail, moff, matches, matches_known, max_bonus, hard_top = _min_count_state(
        N, codes, rules, penalty, reserved)

    # --- lazy scan order: sorted stretches of the best remaining items, extended on demand
    order = np.empty(N, dtype=np.int64)
    n_order = 0
    cut = np.inf  # every item with utility >= cut is already in order[:n_order]
    stretch = 2 * L + 32
    head = 0  # order[:head] are all used or reserved

    for p in range(L):
        if p < hard_top:
            _shortages(p, rules, active, cnt, off, avail, reason, relax_pos)
        if pin_rule[p] >= 0:
            i = slate[p]
            if not _pin_gives_way(p, L, slate, codes, rules, active, cnt, off, pinned_prefix,
                                  rank, need_buf, reason, relax_pos, capped_until, reserved,
                                  avail, pin_rule):
                used[i] = True
                if mode != 0:
                    _div_refresh(i, p, slate, emb, mode, beta, win, ds)
                    _div_placed(i, p, slate, emb, mode, win, ds)
                continue
            # the freed item may sit before `head` in the scan order
            head = 0
            if lazy:
                seen[i] = True
                _heap_push(hkey, hidx, hsize, u[i] + dval[i], i)
                hsize += 1

        bonus = max_bonus
        if n_cov + n_cal > 0:
            bonus = _bonus_bound(p, max_bonus, rules, penalty, n_values, cnt, off, target, toff,
                                 cal)

        # once the span is full (DPP without window) every div is the floor, but for zero rows
        # (div 0): a candidate's gain is then at most pw * max(u + floor, u0) + bonus, u0 = the
        # best utility of an unused zero row. full_span is False otherwise.
        full_span = mode == DIV_DPP and win == 0 and d > 0 and span_rank[0] >= d
        u0 = -np.inf
        if full_span:
            if not zero_known:
                zero_known = True
                n_zero = 0
                for i in range(N):
                    if n2[i] < 0.0:
                        _load(emb, i, xi, 0, n2)
                    if n2[i] == 0.0:
                        n_zero += 1
                zero_rows = np.empty(n_zero, dtype=np.int64)
                n_zero = 0
                for i in range(N):
                    if n2[i] == 0.0:
                        zero_rows[n_zero] = i
                        n_zero += 1
            for z in zero_rows:
                if not used[z] and not reserved[z] and u[z] > u0:
                    u0 = u[z]

        # free position: best feasible gain, ties to the lowest index
        while True:
            best = -1
            best_g = NEG_INF
            la_c0 = _lookahead_worst(p, codes, rules, active, cnt, off, pinned_prefix, need_buf,
                                     la_need)
            if lazy:
                n_def = 0
                while True:
                    best, best_g, sp, n_def, hsize, more = _scan_lazy(
                        p, bonus, la_c0, best, best_g, sp, n_order, n_def, hsize, order, used,
                        reserved, seen, capped_until, hkey, hidx, defer, full_span, floor_div, u0,
                        pw, u, ex)
                    if not more:
                        break
                    n_order, cut = _extend_order(u, order, n_order, cut, stretch)
                    stretch *= 2
                for k in range(n_def):
                    if defer[k] != best:
                        _heap_push(hkey, hidx, hsize, u[defer[k]] + dval[defer[k]], defer[k])
                        hsize += 1
            if not lazy and la_c0 >= 0 and pw[p] >= 0.0:
                # the look-ahead admits only items matching a rule with a need left (`_blocked`):
                # examine just those (the best feasible gain, ties to the lowest index, is the
                # same in any order). Nothing feasible: the scan of the whole order below runs
                # (and sees every candidate, as the relaxation needs).
                for c in range(C):
                    if la_need[c] <= 0 or value[c] < 0:
                        continue
                    _fill_matches(c, codes, rules, moff, matches, matches_known)
                    best, best_g, _, _ = _scan_list(p, bonus, la_c0, best, best_g, moff[c],
                                                    moff[c + 1], matches, False, used, reserved,
                                                    capped_until, pw, u, ex)
            j = head
            plain = not lazy and best < 0  # (decided once: the scan goes on past a stretch)
            while plain:
                best, best_g, j, stopped = _scan_list(p, bonus, la_c0, best, best_g, j, n_order,
                                                      order, True, used, reserved, capped_until,
                                                      pw, u, ex)
                if stopped or n_order == N:
                    break
                n_order, cut = _extend_order(u, order, n_order, cut, stretch)
                stretch *= 2
            if best >= 0:
                break
            if not _relax_cheapest(p, L, n_order, order, used, reserved, slate, codes, rules,
                                   active, cnt, off, pinned_prefix, rank, need_buf, reason,
                                   relax_pos, capped_until):
                break  # no candidate left at all (cannot happen when L <= N)

        if best < 0:
            break
        slate[p] = best
        used[best] = True
        if mode != 0:
            _div_placed(best, p, slate, emb, mode, win, ds)
        _placed(best, p, codes, rules, cnt, off, avail)
        while head < n_order and (used[order[head]] or reserved[order[head]]):
            head += 1

    n_relaxed = _finish(L, rules, active, cnt, off, reason, relax_pos, relaxed)

    # the sort bound, from the scan order (the L best utilities, best first)
    while n_order < min(L, N):
        n_order, cut = _extend_order(u, order, n_order, cut, L - n_order)
    sb = 0.0
    for p in range(min(L, n_order)):
        sb += pw[p] * u[order[p]]
    info[0] = sb
    return n_relaxed
