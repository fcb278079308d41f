"""Slow, obviously-correct twin of solvers._explore_kernels (plain Python).

It follows the definitions of that module's docstring literally: at every position it recounts
from the slate, tests every candidate with the rules of tests/naive.greedy (whose feasibility,
gains and relaxations it repeats, as a state machine that can stop after any position), ranks the
feasible candidates and draws with a pure-Python splitmix64, so a seed gives the kernel's slate.

`Explorer.distribution(p)` is the law of position p given the positions before it; `sample`
draws a whole slate, and `exact_law` enumerates every slate by recursion over positions (tiny
problems only), giving the exact probability of each slate, prefix and item at position.

Softmax weights use math.exp; the kernel's exp_nonpos is within 1 unit in the last place of it,
so the tests compare probabilities with a relative tolerance and slates exactly (a pick could
only differ if a * Z fell within that rounding of a running sum).
"""

from __future__ import annotations

import copy
import math

from solvers.codes import EXPLORE_EPSILON, SOFTMAX_CUT
from solvers.codes import (
    ALL_VALUES, CALIBRATION, COVERAGE, MAX_COUNT, MIN_COUNT, PIN, RELAX_CONFLICT, RELAX_SHORTAGE,
    WINDOW,
)
from solvers.problem import SlateProblem
from tests.naive import Similarity, diversity_term, kl_divergence, ranks, windows

MASK = (1 << 64) - 1


class SplitMix64:
    """splitmix64 (Steele, Lea & Flood 2014): state += gamma, then the mix; draws in [0, 1)."""

    def __init__(self, seed: int):
        self.state = seed & MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next() >> 11) / 2.0**53


class Explorer:
    """The sampling process of one problem, position by position (state copied to branch)."""

    def __init__(self, problem: SlateProblem, scheme: int, epsilon: float = 0.0,
                 top_m: int | None = None, temperature: float = 1.0):
        self.problem = problem
        self.scheme, self.eps, self.T = scheme, float(epsilon), float(temperature)
        self.m = len(problem.utility) if top_m is None else int(top_m)  # None: all
        t = problem.constraints
        self.u = [float(x) for x in problem.utility]
        self.pw = [float(x) for x in problem.position_weight]
        self.N, self.L, self.C = len(self.u), len(self.pw), t.n
        self.rank = ranks(t.priority)
        self.active = [bool(x) for x in problem.active]
        self.reason = [0] * self.C
        self.relax_pos = [-1] * self.C
        self.slate = [-1] * self.L
        self.pin_of = [-1] * self.L
        for c in range(self.C):
            if t.kind[c] == PIN and t.hard[c] and self.active[c]:
                self.slate[int(t.position[c])] = int(t.item[c])
                self.pin_of[int(t.position[c])] = c
        self.sim = Similarity(problem) if problem.div_mode and problem.div_weight > 0 else None
        self.done = False  # no candidate left (cannot happen when L <= N)

    # --- the greedy's rules, as tests/naive.greedy states them -----------------------------------
    def code(self, i, c):
        return int(self.problem.codes[int(self.problem.constraints.attr[c])][i])

    def matches(self, i, c):
        v = int(self.problem.constraints.value[c])
        return v == ALL_VALUES or self.code(i, c) == v

    def prefix_count(self, c, g):
        top = int(self.problem.constraints.top[c])
        return sum(1 for r in range(min(top, self.L))
                   if self.slate[r] >= 0 and self.code(self.slate[r], c) == g)

    def window_hits(self, c, i, p):
        t = self.problem.constraints
        g = self.code(i, c)
        hits = 0
        for lo, hi in windows(self.L, int(t.size[c])):
            if lo <= p < hi:
                n = sum(1 for r in range(lo, hi)
                        if r != p and self.slate[r] >= 0 and self.code(self.slate[r], c) == g)
                hits += n >= int(t.bound[c])
        return hits

    def hard_min(self, c, p):
        t = self.problem.constraints
        return t.kind[c] == MIN_COUNT and t.hard[c] and self.active[c] and p < t.top[c]

    def lookahead_blocker(self, i, p, is_pin):
        t = self.problem.constraints
        need = {}
        for c in range(self.C):
            if self.hard_min(c, p):
                v = int(t.value[c])
                counted = is_pin or not (v >= 0 and self.code(i, c) == v)
                need[c] = max(0, int(t.bound[c]) - self.prefix_count(c, v) - (0 if counted else 1))
        for c0 in need:
            per_value: dict[int, int] = {}
            for c in need:
                if t.attr[c] == t.attr[c0] and t.top[c] <= t.top[c0]:
                    per_value[int(t.value[c])] = max(per_value.get(int(t.value[c]), 0), need[c])
            free = sum(1 for r in range(p + 1, int(t.top[c0])) if self.pin_of[r] < 0)
            if sum(per_value.values()) > free:
                return c0
        return -1

    def blockers(self, i, p, is_pin):
        t = self.problem.constraints
        out = []
        for c in range(self.C):
            if not (t.hard[c] and self.active[c]) or not self.matches(i, c):
                continue
            if t.kind[c] == MAX_COUNT and p < t.top[c]:
                if self.prefix_count(c, self.code(i, c)) - (1 if is_pin else 0) >= t.bound[c]:
                    out.append(self.rank[c])
            elif t.kind[c] == WINDOW and self.window_hits(c, i, p) > 0:
                out.append(self.rank[c])
        c0 = self.lookahead_blocker(i, p, is_pin)
        if c0 >= 0:
            out.append(self.rank[c0])
        return out

    def gain(self, i, p):
        t = self.problem.constraints
        div = diversity_term(self.problem, self.sim, self.slate[:p], i) if self.sim else 0.0
        g = self.pw[p] * (self.u[i] + div)
        for c in range(self.C):
            if t.hard[c]:
                continue
            kind, top, b, pen = int(t.kind[c]), int(t.top[c]), int(t.bound[c]), float(t.penalty[c])
            if kind == MAX_COUNT and p < top and self.matches(i, c):
                if self.prefix_count(c, self.code(i, c)) >= b:
                    g -= pen
            elif kind == MIN_COUNT and p < top and t.value[c] >= 0 and self.code(i, c) == t.value[c]:
                missing = b - self.prefix_count(c, int(t.value[c]))
                free_after = sum(1 for r in range(p + 1, min(top, self.L)) if self.slate[r] < 0)
                if missing > free_after:
                    g += pen
            elif kind == WINDOW and self.matches(i, c):
                g -= pen * self.window_hits(c, i, p)
            elif kind == PIN and t.item[c] >= 0 and t.position[c] < self.L:
                if (p == t.position[c]) != (i == t.item[c]):
                    g -= pen
            elif kind == COVERAGE and p < top:
                if self.prefix_count(c, self.code(i, c)) == 0:
                    g += pen
            elif kind == CALIBRATION and p < top:
                counts = [self.prefix_count(c, v)
                          for v in range(int(self.problem.n_values[t.attr[c]]))]
                after = list(counts)
                after[self.code(i, c)] += 1
                target = t.target_of(c)
                n = sum(counts)
                g += pen * (kl_divergence(target, counts, n) - kl_divergence(target, after, n + 1))
        return g

    def relax(self, c, why, p):
        self.active[c] = False
        self.reason[c] = why
        self.relax_pos[c] = p

    # --- one position ------------------------------------------------------------------------------
    def distribution(self, p):
        """The law of position p given the slate above: [(item, probability > 0)], in the order
        the draw walks it (EPSILON: the rank order of M; SOFTMAX: utility desc, index asc), and
        whether p is pinned. Applies the relaxations the greedy makes at p first."""
        t = self.problem.constraints
        placed = {i for i in self.slate if i >= 0}
        for c in range(self.C):
            if self.hard_min(c, p):
                v = int(t.value[c])
                available = sum(1 for i in range(self.N)
                                if i not in placed and v >= 0 and self.code(i, c) == v)
                if t.bound[c] - self.prefix_count(c, v) > available:
                    self.relax(c, RELAX_SHORTAGE, p)
        if self.pin_of[p] >= 0:
            i, cp = self.slate[p], self.pin_of[p]
            while True:
                b = self.blockers(i, p, True)
                if not b:
                    break
                if max(b) > self.rank[cp]:
                    self.relax(cp, RELAX_CONFLICT, p)
                    self.slate[p] = -1
                    self.pin_of[p] = -1
                    break
                self.relax(self.rank.index(max(b)), RELAX_CONFLICT, p)
            if self.pin_of[p] >= 0:
                return [(i, 1.0)], True
        while True:
            taken = {i for i in self.slate if i >= 0}
            free = [i for i in range(self.N) if i not in taken]
            feasible = [i for i in free if not self.blockers(i, p, False)]
            if feasible:
                break
            if not free:
                return [], False
            r_star = min(max(self.blockers(i, p, False)) for i in free)
            self.relax(self.rank.index(r_star), RELAX_CONFLICT, p)
        gains = {i: self.gain(i, p) for i in feasible}
        if self.scheme == EXPLORE_EPSILON:
            ranking = sorted(feasible, key=lambda i: (-gains[i], i))
            M = ranking[:min(self.m, len(ranking))]
            if len(M) == 1:
                return [(M[0], 1.0)], False
            law = [(M[0], (1.0 - self.eps) + self.eps / len(M))]
            law += [(i, self.eps / len(M)) for i in M[1:]]
            return [(i, q) for i, q in law if q > 0], False
        if self.m < len(feasible):  # only the top m by (gain desc, index asc)
            feasible = sorted(feasible, key=lambda i: (-gains[i], i))[:self.m]
        g_max = max(gains[i] for i in feasible)
        support = [i for i in sorted(feasible, key=lambda i: (-self.u[i], i))
                   if (g_max - gains[i]) / self.T <= SOFTMAX_CUT]
        w = [math.exp((gains[i] - g_max) / self.T) for i in support]
        z = 0.0
        for x in w:
            z += x
        return [(i, x / z) for i, x in zip(support, w)], False

    def draw(self, p, law, pinned, rng: SplitMix64):
        """The item the kernel's draw picks from `law` (the same stream of draws)."""
        if pinned:
            return law[0][0], 1.0
        if self.scheme == EXPLORE_EPSILON:
            a, b = rng.uniform(), rng.uniform()
            # law lists M (without zero-probability members when eps = 0, then |M| is moot)
            M = self._M
            pick = M[0]
            if a < self.eps:
                pick = M[min(int(b * len(M)), len(M) - 1)]
            return pick, dict(law)[pick]
        a = rng.uniform()
        items = [i for i, _ in law]
        g = self._gains_support
        g_max = max(g)
        w = [math.exp((x - g_max) / self.T) for x in g]
        z = 0.0
        for x in w:
            z += x
        run = 0.0
        k = 0
        while k < len(items) - 1:
            run += w[k]
            if run > a * z:
                break
            k += 1
        return items[k], w[k] / z

    def clone(self) -> "Explorer":
        """A copy to branch on (the problem and the similarity memo are shared)."""
        other = copy.copy(self)
        for name in ("active", "reason", "relax_pos", "slate", "pin_of"):
            setattr(other, name, list(getattr(self, name)))
        return other

    def place(self, p, i):
        self.slate[p] = i

    def finish(self):
        t = self.problem.constraints
        for c in range(self.C):
            if t.kind[c] == MIN_COUNT and t.hard[c] and self.active[c]:
                if self.prefix_count(c, int(t.value[c])) < t.bound[c]:
                    self.relax(c, RELAX_SHORTAGE, self.L)
        relaxed = [bool(t.hard[c]) and not self.active[c] for c in range(self.C)]
        reason = [r if x else 0 for r, x in zip(self.reason, relaxed)]
        return relaxed, reason


def _law_with_internals(ex: Explorer, p):
    """distribution(p), plus what `draw` needs to replay the kernel's arithmetic (M for EPSILON,
    the support's gains for SOFTMAX)."""
    law, pinned = ex.distribution(p)
    if not pinned and law:
        if ex.scheme == EXPLORE_EPSILON:
            t_items = [i for i, _ in law]
            # M in rank order, also when eps = 0 drops its other members from the law
            if ex.eps == 0.0 or len(law) == 1:
                ex._M = t_items[:1]
            else:
                ex._M = t_items
        else:
            ex._gains_support = [ex.gain(i, p) for i, _ in law]
    return law, pinned


def sample(problem: SlateProblem, scheme: int, *, epsilon=0.0, top_m=None, temperature=1.0,
           seed: int) -> dict:
    """One draw: slate, slot_prob, support, relaxed, reason, relax_pos (as the kernel)."""
    ex = Explorer(problem, scheme, epsilon, top_m, temperature)
    rng = SplitMix64(seed)
    slot_prob, support = [1.0] * ex.L, [1] * ex.L
    for p in range(ex.L):
        law, pinned = _law_with_internals(ex, p)
        if not law:
            break
        if not pinned and scheme == EXPLORE_EPSILON:
            support[p] = len(ex._M) if epsilon > 0 else 1
        elif not pinned:
            support[p] = len(law)
        i, q = ex.draw(p, law, pinned, rng)
        ex.place(p, i)
        slot_prob[p] = q
    relaxed, reason = ex.finish()
    relax_pos = [ex.relax_pos[c] for c in range(ex.C)]
    return dict(slate=list(ex.slate), slot_prob=slot_prob, support=support, relaxed=relaxed,
                reason=reason, relax_pos=relax_pos)


def exact_law(problem: SlateProblem, scheme: int, *, epsilon=0.0, top_m=None,
              temperature=1.0) -> dict[tuple[int, ...], float]:
    """Every slate the sampling can give, with its exact probability (recursion over positions,
    branching on every item of positive probability)."""
    out: dict[tuple[int, ...], float] = {}

    def rec(ex: Explorer, p: int, prob: float):
        if p == ex.L:
            key = tuple(ex.slate)
            out[key] = out.get(key, 0.0) + prob
            return
        law, _ = ex.distribution(p)
        for k, (i, q) in enumerate(law):
            child = ex if k == len(law) - 1 else ex.clone()
            child.place(p, i)
            rec(child, p + 1, prob * q)

    rec(Explorer(problem, scheme, epsilon, top_m, temperature), 0, 1.0)
    return out
