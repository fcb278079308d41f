"""Slow, obviously-correct twins of the Numba kernels (plain Python, no numpy tricks).

Each function follows the semantics written in the kernel module's docstring literally: it scans
every candidate at every position, recounts from the slate each time, and never caches. The
diversity terms come straight from their definitions in solvers.problem: the largest cosine for
MMR, and for DPP the residual 1 - x^T S_BB^{-1} x from a linear solve; KL divergences are summed
exactly (math.fsum) so that equal distributions give equal values whatever the order.
"""

from __future__ import annotations

import math

import numpy as np

from solvers.codes import (
    ALL_VALUES, CALIBRATION, CALIBRATION_ALPHA, COVERAGE, DIV_MMR, DPP_EPS, DPP_SPAN_EPS, MAX_COUNT,
    MIN_COUNT, PIN, RELAX_CONFLICT, RELAX_SHORTAGE, WINDOW,
)
from solvers.problem import SlateProblem


class Similarity:
    """Cosine similarity of the problem's embedding rows, from the definition (zero rows: 0)."""

    def __init__(self, problem: SlateProblem):
        self.v = np.asarray(problem.embeddings, dtype=np.float32).astype(np.float64)
        self.n2 = [float(x @ x) for x in self.v]
        self._basis: dict[tuple[int, ...], list[int]] = {}  # memo only: same answer, less time

    def cos(self, i: int, j: int) -> float:
        """<e_i, e_j> / sqrt(|e_i|^2 |e_j|^2): exactly 1 for identical rows."""
        if self.n2[i] == 0.0 or self.n2[j] == 0.0:
            return 0.0
        return float(self.v[i] @ self.v[j]) / math.sqrt(self.n2[i] * self.n2[j])

    def s(self, i: int, j: int) -> float:
        """The similarity kernel S: cosine off the diagonal, 1 on it."""
        return 1.0 if i == j else self.cos(i, j)

    def residual(self, x: int, basis: list[int]) -> float:
        """1 - S_xB S_BB^{-1} S_Bx: the squared distance of x's unit vector from span(basis)."""
        if not basis:
            return 1.0
        S = np.array([[self.s(a, b) for b in basis] for a in basis])
        s = np.array([self.s(x, b) for b in basis])
        return float(1.0 - s @ np.linalg.solve(S, s))

    def basis(self, items: list[int]) -> list[int]:
        """The items (in order) whose residual given the earlier members exceeds DPP_SPAN_EPS."""
        key = tuple(items)
        if key not in self._basis:
            out: list[int] = []
            for j in items:
                if self.residual(j, out) > DPP_SPAN_EPS:
                    out.append(j)
            self._basis[key] = out
        return self._basis[key]


def diversity_term(problem: SlateProblem, sim: Similarity, above: list[int], i: int) -> float:
    """div of item i placed below the items `above` (all earlier positions, in order)."""
    if not (problem.div_mode and problem.div_weight > 0):
        return 0.0
    w = int(problem.div_window)
    prev = above[-w:] if w > 0 and len(above) > w else above
    beta = float(problem.div_weight)
    if problem.div_mode == DIV_MMR:
        return -beta * max([0.0] + [sim.cos(i, j) for j in prev])
    return beta * math.log(max(sim.residual(i, sim.basis(prev)), DPP_EPS))


def diversity_terms(problem: SlateProblem, slate: list[int]) -> list[float]:
    if not (problem.div_mode and problem.div_weight > 0):
        return [0.0] * len(slate)
    sim = Similarity(problem)
    return [diversity_term(problem, sim, list(slate[:p]), i) for p, i in enumerate(slate)]


def kl_divergence(target, counts, n: int) -> float:
    """KL(target || q~), q = counts / n (0 when n == 0), q~ = (1 - alpha) q + alpha target."""
    terms = []
    for v, tv in enumerate(target):
        tv = float(tv)
        if tv > 0:
            q = counts[v] / n if n > 0 else 0.0
            smoothed = (1.0 - CALIBRATION_ALPHA) * q + CALIBRATION_ALPHA * tv
            terms.append(tv * math.log(tv / smoothed))
    return math.fsum(terms)


def windows(L: int, w: int) -> list[tuple[int, int]]:
    """The windows [q, q + w) of a slate of length L (one window [0, L) when L < w)."""
    if L < w:
        return [(0, L)]
    return [(q, q + w) for q in range(L - w + 1)]


def constraint_status(problem: SlateProblem, slate: list[int]) -> tuple[list[float], list[float]]:
    """(violation, slack) of every constraint, from the definitions in solvers.problem."""
    t = problem.constraints
    codes = problem.codes
    L = len(slate)
    violation, slack = [], []
    for c in range(t.n):
        kind, a, v, b = int(t.kind[c]), int(t.attr[c]), int(t.value[c]), int(t.bound[c])
        if kind in (COVERAGE, CALIBRATION):
            prefix = [int(codes[a][i]) for i in slate[: min(int(t.top[c]), L)]]
            if kind == COVERAGE:
                max_coverable = min(int(t.top[c]), len({int(x) for x in codes[a]}))
                violation.append(float(max_coverable - len(set(prefix))))
            else:
                counts = [prefix.count(g) for g in range(int(problem.n_values[a]))]
                violation.append(kl_divergence(t.target_of(c), counts, len(prefix)))
            slack.append(-violation[-1])
        elif kind == PIN:
            ok = t.item[c] >= 0 and t.position[c] < L and slate[t.position[c]] == t.item[c]
            violation.append(0.0 if ok else 1.0)
            slack.append(-violation[-1])
        elif kind == MIN_COUNT:
            m = min(int(t.top[c]), L)
            count = sum(1 for p in range(m) if v >= 0 and codes[a][slate[p]] == v)
            violation.append(float(max(0, b - count)))
            slack.append(float(count - b))
        elif kind == MAX_COUNT:
            m = min(int(t.top[c]), L)
            counts: dict[int, int] = {}
            for p in range(m):
                g = int(codes[a][slate[p]])
                counts[g] = counts.get(g, 0) + 1
            vals = list(counts) if v == ALL_VALUES else [v]
            violation.append(float(sum(max(0, counts.get(g, 0) - b) for g in vals)))
            slack.append(float(b - max([counts.get(g, 0) for g in vals], default=0)))
        else:
            total, worst = 0, 0
            for lo, hi in windows(L, int(t.size[c])):
                counts = {}
                for p in range(lo, hi):
                    g = int(codes[a][slate[p]])
                    counts[g] = counts.get(g, 0) + 1
                vals = list(counts) if v == ALL_VALUES else [v]
                total += sum(max(0, counts.get(g, 0) - b) for g in vals)
                worst = max([worst] + [counts.get(g, 0) for g in vals])
            violation.append(float(total))
            slack.append(float(b - worst))
    return violation, slack


def objective(problem: SlateProblem, slate: list[int]) -> float:
    violation, _ = constraint_status(problem, slate)
    t = problem.constraints
    div = diversity_terms(problem, slate)
    value = sum(problem.position_weight[p] * (problem.utility[i] + div[p]) for p, i in enumerate(slate))
    return value - sum(t.penalty[c] * violation[c] for c in range(t.n) if not t.hard[c])


def sort_bound(problem: SlateProblem) -> float:
    """sum_p position_weight[p] * (the p-th largest utility), summed in position order."""
    best = sorted((float(x) for x in problem.utility), reverse=True)
    total = 0.0
    for p in range(problem.length):
        total += float(problem.position_weight[p]) * best[p]
    return total


def ranks(priority) -> list[int]:
    """Rank 0 gives way first: lowest priority, then the later rule."""
    order = sorted(range(len(priority)), key=lambda c: (int(priority[c]), -c))
    rank = [0] * len(priority)
    for r, c in enumerate(order):
        rank[c] = r
    return rank


def greedy(problem: SlateProblem) -> tuple[list[int], list[bool], list[int], list[int]]:
    """Twin of solvers._greedy_kernels.greedy_slate: (slate, active, reason, relax_pos)."""
    t = problem.constraints
    u = [float(x) for x in problem.utility]
    pw = [float(x) for x in problem.position_weight]
    codes = problem.codes
    N, L, C = len(u), len(pw), t.n
    kind = [int(x) for x in t.kind]
    attr, value, bound = [int(x) for x in t.attr], [int(x) for x in t.value], [int(x) for x in t.bound]
    top, size = [int(x) for x in t.top], [int(x) for x in t.size]
    hard, penalty = [bool(x) for x in t.hard], [float(x) for x in t.penalty]
    item, position = [int(x) for x in t.item], [int(x) for x in t.position]
    rank = ranks(t.priority)
    active = [bool(x) for x in problem.active]
    reason = [0] * C
    relax_pos = [-1] * C

    slate = [-1] * L
    pin_of = [-1] * L  # rule pinning each position
    for c in range(C):
        if kind[c] == PIN and hard[c] and active[c]:
            slate[position[c]] = item[c]
            pin_of[position[c]] = c

    def code(i, c):
        return int(codes[attr[c]][i])

    def matches(i, c):  # does item i fall under rule c's value?
        return value[c] == ALL_VALUES or code(i, c) == value[c]

    def prefix_count(c, g):
        """Items (placed or reserved by a pin) with value g at positions < top[c]."""
        return sum(1 for r in range(min(top[c], L)) if slate[r] >= 0 and code(slate[r], c) == g)

    def window_hits(c, i, p):
        g = code(i, c)
        hits = 0
        for lo, hi in windows(L, size[c]):
            if lo <= p < hi:
                n = sum(1 for r in range(lo, hi) if r != p and slate[r] >= 0 and code(slate[r], c) == g)
                hits += n >= bound[c]
        return hits

    def free_between(p, m):
        return sum(1 for r in range(p + 1, m) if pin_of[r] < 0)

    def hard_min(c, p):
        return kind[c] == MIN_COUNT and hard[c] and active[c] and p < top[c]

    def lookahead_blocker(i, p, is_pin):
        need = {}
        for c in range(C):
            if hard_min(c, p):
                counted = is_pin or not (value[c] >= 0 and code(i, c) == value[c])
                n = bound[c] - prefix_count(c, value[c]) - (0 if counted else 1)
                need[c] = max(0, n)
        for c0 in need:
            per_value: dict[int, int] = {}
            for c in need:
                if attr[c] == attr[c0] and top[c] <= top[c0]:
                    per_value[value[c]] = max(per_value.get(value[c], 0), need[c])
            if sum(per_value.values()) > free_between(p, top[c0]):
                return c0
        return -1

    def blockers(i, p, is_pin):
        """Ranks of the active hard rules that forbid i at p."""
        out = []
        for c in range(C):
            if not (hard[c] and active[c]) or not matches(i, c):
                continue
            if kind[c] == MAX_COUNT and p < top[c]:
                n = prefix_count(c, code(i, c)) - (1 if is_pin else 0)
                if n >= bound[c]:
                    out.append(rank[c])
            elif kind[c] == WINDOW and window_hits(c, i, p) > 0:
                out.append(rank[c])
        c0 = lookahead_blocker(i, p, is_pin)
        if c0 >= 0:
            out.append(rank[c0])
        return out

    sim = Similarity(problem) if problem.div_mode and problem.div_weight > 0 else None

    def gain(i, p):
        div = diversity_term(problem, sim, slate[:p], i) if sim is not None else 0.0
        g = pw[p] * (u[i] + div)
        for c in range(C):
            if hard[c]:
                continue
            if kind[c] == MAX_COUNT and p < top[c] and matches(i, c):
                if prefix_count(c, code(i, c)) >= bound[c]:
                    g -= penalty[c]
            elif kind[c] == MIN_COUNT and p < top[c] and value[c] >= 0 and code(i, c) == value[c]:
                missing = bound[c] - prefix_count(c, value[c])
                free_after = sum(1 for r in range(p + 1, min(top[c], L)) if slate[r] < 0)
                if missing > free_after:  # deferred bonus: only once the rest no longer fits
                    g += penalty[c]
            elif kind[c] == WINDOW and matches(i, c):
                g -= penalty[c] * window_hits(c, i, p)
            elif kind[c] == PIN and item[c] >= 0 and position[c] < L:
                if (p == position[c]) != (i == item[c]):
                    g -= penalty[c]
            elif kind[c] == COVERAGE and p < top[c]:
                if prefix_count(c, code(i, c)) == 0:
                    g += penalty[c]
            elif kind[c] == CALIBRATION and p < top[c]:
                counts = [prefix_count(c, v) for v in range(int(problem.n_values[attr[c]]))]
                n = sum(counts)
                after = list(counts)
                after[code(i, c)] += 1
                target = t.target_of(c)
                g += penalty[c] * (kl_divergence(target, counts, n)
                                   - kl_divergence(target, after, n + 1))
        return g

    def relax(c, why, p):
        active[c] = False
        reason[c] = why
        relax_pos[c] = p

    for p in range(L):
        placed = {i for i in slate if i >= 0}
        for c in range(C):
            if hard_min(c, p):
                available = sum(1 for i in range(N) if i not in placed and value[c] >= 0 and code(i, c) == value[c])
                if bound[c] - prefix_count(c, value[c]) > available:
                    relax(c, RELAX_SHORTAGE, p)
        if pin_of[p] >= 0:
            i, cp = slate[p], pin_of[p]
            while True:
                b = blockers(i, p, True)
                if not b:
                    break
                if max(b) > rank[cp]:
                    relax(cp, RELAX_CONFLICT, p)
                    slate[p] = -1
                    pin_of[p] = -1
                    break
                relax(rank.index(max(b)), RELAX_CONFLICT, p)
            if pin_of[p] >= 0:
                continue
        while True:
            taken = {i for i in slate if i >= 0}
            free = [i for i in range(N) if i not in taken]
            feasible = [i for i in free if not blockers(i, p, False)]
            if feasible:
                best = max(feasible, key=lambda i: (gain(i, p), -i))
                slate[p] = best
                break
            if not free:
                return slate, active, reason, relax_pos
            r_star = min(max(blockers(i, p, False)) for i in free)
            relax(rank.index(r_star), RELAX_CONFLICT, p)
    for c in range(C):
        if kind[c] == MIN_COUNT and hard[c] and active[c] and prefix_count(c, value[c]) < bound[c]:
            relax(c, RELAX_SHORTAGE, L)
    return slate, active, reason, relax_pos


def brute_force_best(problem: SlateProblem) -> float:
    """Best objective over all slates honouring every active hard rule (tiny problems only)."""
    from itertools import permutations

    t = problem.constraints
    best = -math.inf
    for slate in permutations(range(problem.n), problem.length):
        violation, _ = constraint_status(problem, list(slate))
        if any(t.hard[c] and problem.active[c] and violation[c] > 0 for c in range(t.n)):
            continue
        best = max(best, objective(problem, list(slate)))
    return best


def lagrangian_dual(problem: SlateProblem, use, mu) -> float:
    """D(mu) of solvers._bound_kernels.lagrangian_bound by enumeration of every slate.

    The max over slates of length L that put every hard pin of `use` at its position, of
        sum_p w[p] * u[s[p]]  +  sum over soft pins of -penalty * (1 - [pinned item at its cell])
        + sum over max / window row entries of mu * (bound - count)
        + sum over min row entries of mu * (count - bound)
        - sum over soft min rows that match nothing of penalty * bound
        + per coverage row: sum over the values v some candidate has of mu_v * count_v(prefix)
          + the largest sum of at most max_coverable of (penalty - mu_v) > 0 - penalty * max_coverable
    with the multipliers laid out as the kernel lays them out (per row of `use`, one entry per
    value of its attribute, times the windows of a window row). Tiny problems only.
    """
    from itertools import permutations

    t = problem.constraints
    L, N = problem.length, problem.n
    codes = problem.codes
    entries = []  # (multiplier, +1 max / -1 min, bound, positions, attr, value)
    off = 0
    for c in range(t.n):
        kind = int(t.kind[c])
        if use[c] and kind == COVERAGE:
            off += int(problem.n_values[t.attr[c]])  # its entries: below
        if not use[c] or kind not in (MAX_COUNT, MIN_COUNT, WINDOW):
            continue
        a, v, b = int(t.attr[c]), int(t.value[c]), int(t.bound[c])
        nv = int(problem.n_values[a])
        if kind == WINDOW:
            wins = windows(L, int(t.size[c]))
            for code in range(nv):
                for s, (lo, hi) in enumerate(wins):
                    if v in (ALL_VALUES, code):
                        entries.append((mu[off + code * len(wins) + s], 1, b, range(lo, hi), a, code))
            off += nv * len(wins)
        else:
            top = min(int(t.top[c]), L)
            for code in range(nv):
                if kind == MAX_COUNT and v in (ALL_VALUES, code):
                    entries.append((mu[off + code], 1, b, range(top), a, code))
                if kind == MIN_COUNT and v == code:
                    entries.append((mu[off + code], -1, b, range(top), a, code))
            off += nv
    coverage = []  # (multipliers by present value, top, max_coverable, penalty, attr)
    off = 0
    for c in range(t.n):
        kind = int(t.kind[c])
        if not use[c] or kind not in (MAX_COUNT, MIN_COUNT, WINDOW, COVERAGE):
            continue
        a = int(t.attr[c])
        nv = int(problem.n_values[a])
        if kind == COVERAGE:
            present = sorted(set(int(x) for x in codes[a]))
            top = min(int(t.top[c]), L)
            coverage.append(({v: mu[off + v] for v in present}, top, min(top, len(present)),
                             float(t.penalty[c]), a))
        off += nv * (len(windows(L, int(t.size[c]))) if kind == WINDOW else 1)
    const = 0.0
    for c in range(t.n):
        if use[c] and t.kind[c] == MIN_COUNT and not t.hard[c] and not 0 <= t.value[c] < problem.n_values[t.attr[c]]:
            const -= float(t.penalty[c]) * max(0, int(t.bound[c]))
    pins = [(int(t.item[c]), int(t.position[c]), bool(t.hard[c]), float(t.penalty[c]))
            for c in range(t.n) if use[c] and t.kind[c] == PIN]
    best = -math.inf
    for slate in permutations(range(N), L):
        if any(h and not (0 <= pos < L and slate[pos] == it) for it, pos, h, _ in pins):
            continue
        val = sum(problem.position_weight[p] * problem.utility[slate[p]] for p in range(L))
        for it, pos, h, pen in pins:
            if not h:
                val -= pen * (0.0 if 0 <= pos < L and slate[pos] == it else 1.0)
        for m, sign, b, positions, a, code in entries:
            count = sum(1 for p in positions if codes[a, slate[p]] == code)
            val += m * (b - count) if sign > 0 else m * (count - b)
        for lam, top, most, pen, a in coverage:
            val += sum(m * sum(1 for p in range(top) if codes[a, slate[p]] == v) for v, m in lam.items())
            gains = sorted((pen - m for m in lam.values() if pen - m > 0), reverse=True)[:most]
            val += sum(gains) - pen * most
        best = max(best, val + const)
    return best
