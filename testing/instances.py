"""The canned instance set every exact backend runs against (CVXPY's solver-test-helper pattern).

Three families, all built directly as ConstraintTable arrays through `build`:
- TINY: N <= 7, L <= 4; the optimum is computed by `brute_force` over every slate.
- MEDIUM: N 100-300, L 10-20, seeded: caps, prefix minimums, windows, pins, soft rules; checked
  against a second, independent backend.
- INFEASIBLE: hard rules that cannot hold together given the candidates, each with its known
  minimal conflict (a set of constraint rows).

Rules are written with small constructors (`cap`, `at_least`, `window`, `pin`, `coverage`) so an
instance reads like the policy it stands for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from solvers.evaluate import evaluate
from solvers.codes import ALL_VALUES, COVERAGE, MAX_COUNT, MIN_COUNT, NO_MATCH, PIN, WINDOW
from solvers.problem import ConstraintTable, SlateProblem

# ---------------------------------------------------------------------------------------------
# Rule constructors and the array builder
# ---------------------------------------------------------------------------------------------


def _rule(kind, *, attr=-1, value=-1, bound=0, top=None, size=0, hard=True, penalty=0.0,
          priority=0, item=-1, position=-1) -> dict:
    return dict(kind=kind, attr=attr, value=value, bound=bound, top=top, size=size, hard=hard,
                penalty=0.0 if hard else float(penalty), priority=priority, item=item,
                position=position)


def cap(attr: int, bound: int, *, value: int = ALL_VALUES, top: int | None = None,
        hard: bool = True, penalty: float = 1.0, priority: int = 0) -> dict:
    """At most `bound` items per value (or of `value`) of `attr` in the top `top` (default all)."""
    return _rule(MAX_COUNT, attr=attr, value=value, bound=bound, top=top, hard=hard,
                 penalty=penalty, priority=priority)


def at_least(attr: int, value: int, bound: int, *, top: int | None = None, hard: bool = True,
             penalty: float = 1.0, priority: int = 0) -> dict:
    """At least `bound` items with `value` of `attr` in the top `top` (default all)."""
    return _rule(MIN_COUNT, attr=attr, value=value, bound=bound, top=top, hard=hard,
                 penalty=penalty, priority=priority)


def window(attr: int, size: int, bound: int, *, value: int = ALL_VALUES, hard: bool = True,
           penalty: float = 1.0, priority: int = 0) -> dict:
    """At most `bound` items per value (or of `value`) in any `size` consecutive positions."""
    return _rule(WINDOW, attr=attr, value=value, bound=bound, size=size, hard=hard,
                 penalty=penalty, priority=priority)


def pin(item: int, position: int, *, hard: bool = True, penalty: float = 1.0,
        priority: int = 0) -> dict:
    """Candidate `item` at 0-based `position`."""
    return _rule(PIN, item=item, position=position, hard=hard, penalty=penalty, priority=priority)


def coverage(attr: int, penalty: float, *, top: int | None = None, priority: int = 0) -> dict:
    """Reward `penalty` per distinct value of `attr` in the top `top` (default all); soft only."""
    return _rule(COVERAGE, attr=attr, top=top, hard=False, penalty=penalty, priority=priority)


def build(utility, weights, codes, rules: list[dict], *, n_values=None,
          active=None) -> SlateProblem:
    """A SlateProblem from plain lists. `codes` is [A][N]; `top=None` means the whole slate."""
    u = np.ascontiguousarray(utility, dtype=np.float64)
    w = np.ascontiguousarray(weights, dtype=np.float64)
    c = np.ascontiguousarray(np.asarray(codes, dtype=np.int64).reshape(-1, u.shape[0]))
    if n_values is None:
        n_values = c.max(axis=1) + 1 if c.size else np.ones(c.shape[0], dtype=np.int64)
    table = ConstraintTable.from_rows(rules, length=w.shape[0])
    C = len(rules)
    act = np.ones(C, dtype=np.bool_) if active is None else np.asarray(active, dtype=np.bool_)
    return SlateProblem(u, w, c, np.ascontiguousarray(n_values, dtype=np.int64), table, act,
                        np.zeros(C, dtype=np.int64))


def dcg(L: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, L + 2))


# ---------------------------------------------------------------------------------------------
# Checker helpers shared by every backend's tests
# ---------------------------------------------------------------------------------------------


def active_hard(problem: SlateProblem) -> np.ndarray:
    return problem.constraints.hard & np.asarray(problem.active, dtype=np.bool_)


def is_valid(problem: SlateProblem, slate: np.ndarray) -> bool:
    """Distinct, in range, length L, every active hard rule met (by evaluate)."""
    slate = np.asarray(slate)
    L, N = problem.length, problem.n
    if slate.shape != (L,):
        return False
    if L and (slate.min() < 0 or slate.max() >= N or np.unique(slate).shape[0] != L):
        return False
    ev = evaluate(problem, slate.astype(np.int64))
    return bool(np.all(ev.violation[active_hard(problem)] == 0.0))


def brute_force(problem: SlateProblem) -> tuple[float, np.ndarray | None]:
    """(best objective, a best slate) over every ordered slate of length L, honouring the active
    hard rules; soft rules priced by evaluate. (-inf, None) when no slate meets the hard rules."""
    best, arg = -np.inf, None
    hard = active_hard(problem)
    for perm in itertools.permutations(range(problem.n), problem.length):
        s = np.array(perm, dtype=np.int64)
        ev = evaluate(problem, s)
        if np.any(ev.violation[hard] != 0.0):
            continue
        if ev.objective > best + 1e-12:
            best, arg = ev.objective, s
    return best, arg


def with_active(problem: SlateProblem, rows) -> SlateProblem:
    """The same problem with exactly `rows` as the active hard rules (soft rules unchanged)."""
    import dataclasses

    act = np.zeros(problem.constraints.n, dtype=np.bool_)
    act[list(rows)] = True
    act |= ~problem.constraints.hard
    return dataclasses.replace(problem, active=act)


# ---------------------------------------------------------------------------------------------
# The instances
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    name: str
    family: str  # tiny | medium | infeasible
    make: Callable[[], SlateProblem]
    conflict: frozenset[int] | None = None  # infeasible: the known minimal conflict
    tags: tuple[str, ...] = field(default=())

    def problem(self) -> SlateProblem:
        return self.make()


# codes for tiny instances: attr 0 = category (3 values), attr 1 = seller (3 values),
# attr 2 = is_new (0/1)
_U7 = [0.9, 0.85, 0.8, 0.6, 0.55, 0.3, 0.1]
_CODES7 = [[0, 0, 0, 1, 1, 2, 2],
           [0, 1, 0, 1, 2, 2, 0],
           [0, 0, 0, 0, 1, 0, 1]]


def _tiny(name, rules, *, u=_U7, w=None, codes=_CODES7, L=4, active=None, n_values=None):
    w = dcg(L) if w is None else w
    return Instance(name, "tiny", lambda: build(u, w, codes, rules, active=active,
                                                n_values=n_values))


TINY: list[Instance] = [
    _tiny("sort", []),
    _tiny("cap_all", [cap(0, 1)], L=3),
    _tiny("cap_value_prefix", [cap(0, 1, value=0, top=2)]),
    _tiny("min_prefix", [at_least(2, 1, 2, top=3)]),
    _tiny("window_all", [window(1, 2, 1)]),
    _tiny("window_value", [window(0, 3, 1, value=0)]),
    _tiny("window_longer_than_slate", [window(0, 6, 2)], L=3),
    _tiny("hard_pin", [pin(6, 1), cap(0, 2)]),
    _tiny("soft_pin", [pin(6, 0, hard=False, penalty=0.3)]),
    _tiny("soft_pin_expensive", [pin(6, 0, hard=False, penalty=5.0)]),
    _tiny("soft_cap_all", [cap(0, 1, hard=False, penalty=0.05)]),
    _tiny("soft_min", [at_least(2, 1, 2, top=2, hard=False, penalty=0.2)]),
    _tiny("soft_window", [window(1, 2, 0, hard=False, penalty=0.07)]),
    _tiny("soft_min_no_match", [at_least(0, NO_MATCH, 2, hard=False, penalty=0.5), cap(0, 2)]),
    _tiny("mixed", [cap(0, 2), at_least(2, 1, 1, top=2), window(1, 2, 1), pin(3, 3)]),
    _tiny("mixed_soft", [cap(0, 1, hard=False, penalty=0.1), at_least(2, 1, 2, top=3),
                         window(1, 3, 1, hard=False, penalty=0.15), pin(5, 0, hard=False,
                                                                         penalty=0.2)]),
    _tiny("inactive_hard", [at_least(2, 1, 2, top=1), cap(0, 1)], active=[False, True], L=3),
    _tiny("ties", [cap(0, 1)], u=[1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5], L=3),
    _tiny("negative_utility", [at_least(2, 1, 2)], u=[0.5, 0.2, -0.1, -0.3, -0.8, -1.0, -2.0]),
    _tiny("flat_weights", [window(0, 2, 1)], w=[1.0, 1.0, 1.0, 1.0]),
    _tiny("increasing_weights", [cap(0, 2)], w=[0.2, 0.5, 0.7, 1.0]),
    _tiny("negative_weight", [cap(1, 2)], w=[1.0, 0.5, 0.0, -0.3]),
    _tiny("all_pinned", [pin(4, 0), pin(0, 1)], L=2),
    _tiny("slate_is_everything", [window(1, 2, 1)], u=_U7[:4], codes=[r[:4] for r in _CODES7]),
    _tiny("single_position", [at_least(2, 1, 1)], L=1),
    _tiny("infeasible_tiny", [cap(0, 1)]),  # 3 categories, 4 positions, at most 1 each
]


# COVERAGE rows (soft, a reward per distinct value in a prefix) mixed with the other rules; kept
# apart from TINY, whose instances every exact backend and the bound tests take as they are.
TINY_COVERAGE: list[Instance] = [
    _tiny("cov_plain", [coverage(0, 0.3)]),
    _tiny("cov_prefix_and_cap", [coverage(1, 0.5, top=2), cap(0, 2)]),
    _tiny("cov_hard_pin_inside_prefix", [pin(6, 0), coverage(0, 0.4, top=3)]),
    _tiny("cov_hard_pin_outside_prefix", [pin(5, 3), coverage(0, 0.4, top=2)]),
    _tiny("cov_big_reward_soft_window", [coverage(0, 2.0, top=3),
                                         window(1, 2, 1, hard=False, penalty=0.1)]),
    _tiny("cov_soft_pin_and_min", [coverage(2, 0.6, top=2), at_least(2, 1, 1, top=3),
                                   pin(4, 1, hard=False, penalty=0.2)]),
    _tiny("cov_two_rows", [coverage(0, 0.25, top=2), coverage(1, 0.35), cap(1, 1, top=2)]),
    _tiny("cov_top_one", [coverage(0, 1.0, top=1), window(0, 2, 1)]),
    _tiny("cov_increasing_weights", [coverage(0, 0.3, top=2)], w=[0.2, 0.5, 0.7, 1.0]),
    _tiny("cov_negative_weight", [coverage(1, 0.4, top=3)], w=[1.0, 0.5, 0.0, -0.3]),
    _tiny("cov_unused_value", [coverage(0, 0.5)], n_values=[5, 3, 2]),
    _tiny("cov_all_pinned", [pin(4, 0), pin(0, 1), coverage(0, 0.7)], L=2),
    # the pinned item is the only one of its value: the pin alone covers it
    _tiny("cov_pin_covers_a_unique_value", [pin(6, 1), coverage(0, 0.4, top=3)],
          codes=[[0, 0, 0, 1, 1, 2, 3]]),
]


def medium_problem(seed: int, n: int, L: int, *, caps=True, mins=True, windows=True, pins=True,
                   soft=True, n_cat: int = 12, n_seller: int = 40) -> SlateProblem:
    """A seeded mixed instance: category caps, a new-seller minimum in a prefix, seller
    spacing windows, pins and (optionally) soft rules. Utilities are lognormal-ish ranker
    scores; ~15 % of sellers are new. Always feasible for the default parameters."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, n_cat, size=n)
    seller = rng.integers(0, n_seller, size=n)
    new_sellers = rng.permutation(n_seller)[: max(2, n_seller * 15 // 100)]
    is_new = np.isin(seller, new_sellers).astype(np.int64)
    u = np.round(np.exp(rng.normal(0.0, 0.6, size=n)) * (1.0 - 0.3 * is_new), 6)
    codes = [cat, seller, is_new]
    rules: list[dict] = []
    if caps:
        rules.append(cap(0, max(2, L // 5)))  # per category over the slate
        rules.append(cap(0, 1, top=3))  # top 3 all different categories
    if mins:
        rules.append(at_least(2, 1, max(1, L // 5), top=max(3, L // 2)))
    if windows:
        rules.append(window(1, 3, 1))  # seller spacing
    if pins:
        order = np.argsort(-u)
        rules.append(pin(int(order[n // 3]), 2))
    if soft:
        rules.append(window(0, 4, 1, hard=False, penalty=0.15))
        rules.append(at_least(2, 1, 1, top=2, hard=False, penalty=0.4))
    return build(u, dcg(L), codes, rules, n_values=[n_cat, n_seller, 2])


MEDIUM: list[Instance] = [
    Instance("medium_n100_l10", "medium", lambda: medium_problem(1, 100, 10)),
    Instance("medium_n200_l15", "medium", lambda: medium_problem(2, 200, 15)),
    Instance("medium_n300_l20", "medium", lambda: medium_problem(3, 300, 20)),
    Instance("medium_caps_windows", "medium",
             lambda: medium_problem(4, 250, 20, mins=False, pins=False, soft=False)),
    Instance("medium_min_heavy", "medium",
             lambda: build(*_min_heavy(5))),
    Instance("medium_soft_only", "medium",
             lambda: medium_problem(6, 150, 12, caps=False, mins=False, windows=False,
                                    pins=False)),
]


def _min_heavy(seed: int):
    """Two minimums in nested prefixes plus spacing: the greedy's weak spot."""
    rng = np.random.default_rng(seed)
    n, L = 200, 15
    cat = rng.integers(0, 8, size=n)
    seller = rng.integers(0, 30, size=n)
    fresh = (rng.random(n) < 0.08).astype(np.int64)
    u = np.round(rng.gamma(2.0, 0.5, size=n) * (1.0 - 0.4 * fresh), 6)
    rules = [at_least(2, 1, 3, top=5), at_least(0, 3, 2, top=4), window(1, 4, 1), cap(0, 3),
             window(2, 2, 1, value=1, hard=False, penalty=0.2)]
    return u, dcg(L), [cat, seller, fresh], rules


def _inf_spacing():
    # Only sellers 0 and 1 are new; "at least 4 new in the top 5" needs one of them twice in 4
    # consecutive positions, which "at most 1 per seller in any 4 positions" forbids. The cap on
    # category (row 2) is satisfiable with either rule: it is not part of the conflict.
    seller = [0, 1, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7]
    new = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    cat = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    u = np.linspace(1.0, 0.2, 12)
    rules = [at_least(1, 1, 4, top=5, priority=2), window(0, 4, 1, priority=1), cap(2, 3)]
    return build(u, dcg(6), [seller, new, cat], rules)


def _inf_pins_cap():
    # Two pinned items of category 0 at positions 0 and 1 against "at most 1 of category 0 in
    # the top 3": the three rules conflict together, no two of them do.
    cat = [0, 0, 0, 1, 1, 2, 2, 2]
    u = np.linspace(1.0, 0.3, 8)
    rules = [cap(0, 2), pin(0, 0), pin(1, 1), cap(0, 1, value=0, top=3), at_least(0, 2, 1)]
    return build(u, dcg(4), [cat], rules)


def _inf_min_too_big():
    # "at least 4 of value 1 in the top 3" can never hold.
    codes = [[0, 1, 1, 1, 1, 0, 0]]
    rules = [cap(0, 3), at_least(0, 1, 4, top=3)]
    return build(np.linspace(1, 0, 7), dcg(4), codes, rules)


def _inf_two_mins():
    # Two minimums of different values of one attribute in the same 3-position prefix.
    codes = [[0, 0, 1, 1, 2, 2, 2, 2, 2, 2]]
    rules = [window(0, 2, 1, value=2), at_least(0, 0, 2, top=3), at_least(0, 1, 2, top=3)]
    return build(np.linspace(1, 0, 10), dcg(5), codes, rules)


def _inf_shortage():
    # "at least 3 of value 1" but only 2 candidates have it, plus an unrelated window.
    codes = [[1, 0, 1, 0, 0, 0, 0, 0], [0, 1, 2, 0, 1, 2, 0, 1]]
    rules = [window(1, 2, 1), at_least(0, 1, 3)]
    return build(np.linspace(1, 0, 8), dcg(5), codes, rules)


def _inf_pin_clash():
    codes = [[0, 1, 0, 1, 0, 1]]
    rules = [cap(0, 2), pin(2, 1), pin(3, 1)]
    return build(np.linspace(1, 0, 6), dcg(3), codes, rules)


def _inf_medium():
    # A medium instance made infeasible: a minimum that the windows and caps cannot admit.
    p = medium_problem(11, 200, 12, pins=False, soft=False)
    rules = [cap(0, 3), cap(0, 1, top=3), at_least(2, 1, 4, top=5), window(2, 2, 1, value=1),
             window(1, 3, 1)]
    return build(p.utility, p.position_weight, p.codes, rules, n_values=p.n_values)


INFEASIBLE: list[Instance] = [
    Instance("inf_spacing", "infeasible", _inf_spacing, frozenset({0, 1})),
    Instance("inf_pins_cap", "infeasible", _inf_pins_cap, frozenset({1, 2, 3})),
    Instance("inf_min_too_big", "infeasible", _inf_min_too_big, frozenset({1})),
    Instance("inf_two_mins", "infeasible", _inf_two_mins, frozenset({1, 2})),
    Instance("inf_shortage", "infeasible", _inf_shortage, frozenset({1})),
    Instance("inf_pin_clash", "infeasible", _inf_pin_clash, frozenset({1, 2})),
    # at least 4 new in the top 5 against at most 1 new in any 2 consecutive positions
    Instance("inf_medium", "infeasible", _inf_medium, frozenset({2, 3})),
]

ALL: list[Instance] = TINY + MEDIUM + INFEASIBLE


def random_tiny(seed: int) -> SlateProblem:
    """A random tiny instance (N <= 7, L <= 4) for property tests; may be infeasible."""
    u, w, codes, rules, n_values = _random_tiny_parts(np.random.default_rng(seed))
    return build(u, w, codes, rules, n_values=n_values)


def random_tiny_coverage(seed: int) -> SlateProblem:
    """`random_tiny(seed)` plus one or two COVERAGE rows (random attribute, top, reward) at
    random places among its rules, drawn from a second generator; a hard pin inside a coverage
    prefix is made likely by adding one with probability 1/2. May be infeasible."""
    u, w, codes, rules, n_values = _random_tiny_parts(np.random.default_rng(seed))
    rng = np.random.default_rng([seed, 15])
    L, n, A = w.shape[0], u.shape[0], len(codes)
    if rng.random() < 0.5:
        rules.append(pin(int(rng.integers(0, n)), int(rng.integers(0, L)),
                         hard=bool(rng.random() < 0.7), penalty=0.5))
    for _ in range(int(rng.integers(1, 3))):
        row = coverage(int(rng.integers(0, A)), float(np.round(rng.uniform(0.05, 1.5), 3)),
                       top=int(rng.integers(1, L + 1)) if rng.random() < 0.7 else None)
        rules.insert(int(rng.integers(0, len(rules) + 1)), row)
    return build(u, w, codes, rules, n_values=n_values)


def _random_tiny_parts(rng: np.random.Generator):
    """(utility, weights, codes, rules, n_values) of `random_tiny`."""
    n = int(rng.integers(1, 8))
    L = int(rng.integers(1, min(n, 4) + 1))
    A = int(rng.integers(1, 3))
    n_values = rng.integers(1, 4, size=A)
    codes = [rng.integers(0, n_values[a], size=n) for a in range(A)]
    u = np.round(rng.normal(size=n), 3) if rng.random() < 0.8 else rng.integers(0, 3, n) * 0.5
    w = np.sort(rng.uniform(0.1, 1.0, size=L))[::-1] if rng.random() < 0.7 else dcg(L)
    rules: list[dict] = []
    for _ in range(int(rng.integers(0, 5))):
        kind = int(rng.choice(4, p=[0.3, 0.3, 0.25, 0.15]))
        a = int(rng.integers(0, A))
        hard = bool(rng.random() < 0.6)
        pen = float(np.round(rng.uniform(0.05, 1.5), 3))
        pr = int(rng.integers(0, 3))
        if kind == MAX_COUNT:
            v = ALL_VALUES if rng.random() < 0.5 else int(rng.integers(0, n_values[a]))
            rules.append(cap(a, int(rng.integers(0, 3)), value=v, top=int(rng.integers(1, L + 1)),
                             hard=hard, penalty=pen, priority=pr))
        elif kind == MIN_COUNT:
            top = int(rng.integers(1, L + 1))
            rules.append(at_least(a, int(rng.integers(0, n_values[a])),
                                  int(rng.integers(1, top + 1)), top=top, hard=hard,
                                  penalty=pen, priority=pr))
        elif kind == WINDOW:
            v = ALL_VALUES if rng.random() < 0.5 else int(rng.integers(0, n_values[a]))
            size = int(rng.integers(2, 4))
            rules.append(window(a, size, int(rng.integers(0, size)), value=v, hard=hard,
                                penalty=pen, priority=pr))
        else:
            rules.append(pin(int(rng.integers(0, n)), int(rng.integers(0, L)), hard=hard,
                             penalty=pen, priority=pr))
    return u, w, codes, rules, n_values
