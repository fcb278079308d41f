"""Compilation: a policy plus a request become a SlateProblem (flat arrays).

Policy-only work (which attributes and scores are needed, constraint kinds, bounds, priorities)
is done once per policy version in `compile_policy` and cached by the engine; `compile_request`
builds only the request-dependent arrays: utility, eligibility, value codes, pins, prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine import _request_kernels as _rk
from engine.errors import FieldIssue, InvalidRequest
from engine.policy import (
    AttributeFilter, Calibration, Coverage, FairPrefix, MaxCount, MinCount, NumericFilter, Pin,
    Policy, Window,
)
from engine.types import Candidates, RerankRequest
from solvers.codes import (
    ALL_VALUES, CALIBRATION, COVERAGE, DIV_NAMES, DIV_NONE, MAX_COUNT, MIN_COUNT, NO_MATCH, PIN,
    RELAX_PIN_INVALID, RELAX_SHORTAGE, RULE_ITEM, RULE_POSITION, RULE_VALUE, WINDOW,
)
from solvers.problem import ConstraintTable, SlateProblem

_KIND = {MaxCount: MAX_COUNT, MinCount: MIN_COUNT, Window: WINDOW, Pin: PIN, Coverage: COVERAGE,
         Calibration: CALIBRATION}
_DIVERSITY = {name: code for code, name in enumerate(DIV_NAMES) if code != DIV_NONE}


@dataclass(frozen=True)
class Row:
    """One row of the constraint table; a policy rule gives one row, a fair_prefix rule several."""

    owner: int  # index of the policy constraint
    kind: int
    attr: int  # row of SlateProblem.codes; -1 for pins
    value: str | None  # None: every value (caps, windows, coverage, calibration)
    bound: int
    top: int  # prefix length, 0 = the whole slate
    size: int
    hard: bool
    penalty: float
    priority: int
    label: str | None = None  # what this row asks, when it is one part of a larger rule


@dataclass(frozen=True)
class CompiledPolicy:
    """The request-independent part of a policy."""

    policy: Policy
    attributes: tuple[str, ...]  # rows of SlateProblem.codes, in first-use order
    needs_attribute: dict[str, str]  # attribute -> where the policy uses it (for error messages)
    rows: tuple[Row, ...]  # every rule but fair_prefix (expanded per request: it depends on K)
    fair: tuple[int, ...]  # indices of fair_prefix rules
    required: tuple[str, ...] = ()  # attributes every request must send
    # slate length -> _RowArrays (filled by requests; a CompiledPolicy lives as long as its
    # policy version, so the cache goes with it on reload)
    row_cache: dict = field(default_factory=dict, compare=False, repr=False)
    source: str = ""  # the policy's file, for messages that blame the policy ('' = unknown)

    def where(self) -> str:
        """`policy 'name' (file path)`: how messages name this policy."""
        return f"policy '{self.policy.name}'" + (f" (file {self.source})" if self.source else "")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.policy.constraints]


def compile_policy(policy: Policy, source: str = "") -> CompiledPolicy:
    attributes: list[str] = []
    needs: dict[str, str] = {}

    def attr_row(name: str, where: str) -> int:
        if name not in attributes:
            attributes.append(name)
            needs[name] = where
        return attributes.index(name)

    rows: list[Row] = []
    fair: list[int] = []
    for j, c in enumerate(policy.constraints):
        where = f"constraints[{j}] '{c.name}'"
        penalty = c.penalty or 0.0
        if isinstance(c, Pin):
            if c.attribute is not None:
                needs.setdefault(c.attribute, where)
            rows.append(Row(j, PIN, -1, None, 0, 0, 0, c.hard, penalty, c.priority))
        elif isinstance(c, FairPrefix):
            attr_row(c.attribute, where)
            fair.append(j)
        else:
            a = attr_row(c.attribute, where)
            kind, bound, size = _KIND[type(c)], 0, 0
            if isinstance(c, (MaxCount, Window)):
                bound = c.max
            elif isinstance(c, MinCount):
                bound = c.min
            if isinstance(c, Window):
                size = c.size
            value = getattr(c, "value", None)
            rows.append(Row(j, kind, a, value, bound, getattr(c, "within_top", None) or 0, size,
                            c.hard, penalty, c.priority))
    for j, f in enumerate(policy.filters):
        if isinstance(f, AttributeFilter):
            needs.setdefault(f.attribute, f"filters[{j}]")
    required = list(attributes)
    if policy.exposure is not None:
        for j, rule in enumerate(policy.exposure.amortized):
            needs.setdefault(rule.attribute, f"exposure.amortized[{j}] '{rule.name}'")
            required.append(rule.attribute)
        if policy.exposure.lp is not None:
            needs.setdefault(policy.exposure.lp.attribute, f"exposure.lp '{policy.exposure.lp.name}'")
            required.append(policy.exposure.lp.attribute)
    return CompiledPolicy(policy, tuple(attributes), needs, tuple(rows), tuple(fair),
                          tuple(dict.fromkeys(required)), source=source)


def fair_rows(cp: CompiledPolicy, L: int) -> list[Row]:
    """FA*IR m-tables as min_count rows: for each protected value, at least m(i) in the top i
    wherever the table steps up (Zehlike et al. 2017); the m-tables are cached per (L, p, alpha)."""
    from solvers.fair import multi_mtables, prefix_minimums

    out: list[Row] = []
    for j in cp.fair:
        c: FairPrefix = cp.policy.constraints[j]
        a = cp.attributes.index(c.attribute)
        tables = multi_mtables(L, [c.p] * len(c.protected), c.alpha, adjust=c.adjust,
                               correction=c.correction) if L else []
        for value, table in zip(c.protected, tables):
            for top, need in prefix_minimums(table):
                label = f"at least {need} of {c.attribute} = {value!r} in the top {top}"
                out.append(Row(j, MIN_COUNT, a, value, int(need), int(top), 0, c.hard,
                               c.penalty or 0.0, c.priority, label))
    return out


def position_weights(discount, length: int) -> np.ndarray:
    p = np.arange(1, length + 1, dtype=np.float64)
    if discount == "log2":
        return 1.0 / np.log2(1.0 + p)
    if discount == "reciprocal":
        return 1.0 / p
    if discount == "none":
        return np.ones(length, dtype=np.float64)
    return np.array(discount[:length], dtype=np.float64)


@dataclass
class Compiled:
    """A request compiled against a policy."""

    problem: SlateProblem
    index: np.ndarray  # int64[N_eligible]: eligible candidate -> index in the request
    weights: dict[str, float]
    slate_size: int
    rows: list[Row]  # one per ConstraintTable row
    reasons: dict[int, str] = field(default_factory=dict)  # row -> why it was pre-relaxed
    boost: np.ndarray | None = None  # float64[N_eligible]: exposure boost included in utility
    rule_rows: tuple[tuple[int, ...], ...] = ()  # the rows of each rule j of the policy


def _weights(policy: Policy, req: RerankRequest) -> dict[str, float]:
    scores = req.candidates.scores
    weights = dict(policy.objective.weights)
    issues = []
    for name, w in req.objective_weights.items():
        if name not in scores:
            issues.append(FieldIssue(f"objective_weights['{name}']",
                                     f"no score column {name!r} in candidates.scores (sent: {', '.join(sorted(scores)) or 'none'})"))
        weights[name] = float(w)
    for name in policy.objective.weights:
        if name not in scores and name not in req.objective_weights:
            issues.append(FieldIssue(f"candidates.scores['{name}']",
                                     f"required by policy '{policy.name}' (objective.weights) but not sent"))
    if issues:
        raise InvalidRequest(issues)
    return weights


def _eligible(policy: Policy, c: Candidates) -> np.ndarray:
    mask = np.ones(c.n, dtype=np.bool_)
    for j, f in enumerate(policy.filters):
        if isinstance(f, AttributeFilter):
            attr = c.attributes.get(f.attribute)
            if attr is None:
                raise InvalidRequest(f"candidates.attributes['{f.attribute}']",
                                     f"required by policy '{policy.name}' (filters[{j}]) but not sent")
            listed = f.in_ if f.in_ is not None else f.not_in
            lookup = {v: k for k, v in enumerate(attr.dictionary)}
            hit_codes = np.zeros(len(attr.dictionary) + 1, dtype=np.bool_)
            for v in listed:
                if v in lookup:
                    hit_codes[lookup[v]] = True
            hit = hit_codes[attr.codes]
            mask &= hit if f.in_ is not None else ~hit
        elif isinstance(f, NumericFilter):
            x = c.numeric.get(f.numeric)
            if x is None:
                raise InvalidRequest(f"candidates.numeric['{f.numeric}']",
                                     f"required by policy '{policy.name}' (filters[{j}]) but not sent")
            if f.min is not None:
                mask &= x >= f.min
            if f.max is not None:
                mask &= x <= f.max
    return mask


def request_utility(cp: CompiledPolicy, req: RerankRequest) -> np.ndarray:
    """The weighted utility of every candidate (before filters and boosts), float64[N]: what
    `compile_request` starts from. Raises InvalidRequest as compile_request does (unknown or
    missing weight columns, overflow). Pass it back as `compile_request(..., utility_all=)`."""
    weights = _weights(cp.policy, req)
    u, umax = _weighted_utility(weights, req.candidates)
    if umax < 0.0:
        _check_finite_utility(u, weights, req.candidates, req, cp)
    return u


def slate_position_weights(cp: CompiledPolicy, req: RerankRequest) -> np.ndarray:
    """The position weights of this request's slate length (K, or N when fewer candidates)."""
    K = req.slate_size or cp.policy.slate_size
    return _row_arrays(cp, max(min(K, req.candidates.n), 1)).position_weight


def _weighted_utility(weights: dict[str, float], cands: Candidates) -> tuple[np.ndarray, float]:
    """`_weighted_sum` in one kernel pass per four columns (engine._request_kernels: the same
    products and sums in the same order, so the same floats), and max |utility| when every
    utility is finite, -1.0 when one is not (a float64[N] C-contiguous column each, else
    `_weighted_sum`)."""
    n = cands.n
    columns = []
    for name, w in weights.items():
        if w != 0.0:
            x = cands.scores[name]
            if not (x.dtype == np.float64 and x.ndim == 1 and x.shape[0] == n and x.flags.c_contiguous):
                u = _weighted_sum(weights, cands)  # (a wrong length raises there, as it did)
                return u, _rk.finite_abs_max(u)
            columns.append((x, float(w)))
    if not columns:
        return np.zeros(n, dtype=np.float64), 0.0
    utility_all = np.empty(n, dtype=np.float64)
    umax = -1.0
    for g in range(0, len(columns), 4):  # four columns per pass
        group = columns[g:g + 4]
        k = len(group)
        group += [group[0]] * (4 - k)
        umax = _rk.weighted_columns(group[0][0], group[0][1], group[1][0], group[1][1], group[2][0],
                                    group[2][1], group[3][0], group[3][1], k, g == 0, utility_all)
    return utility_all, umax


def _weighted_sum(weights: dict[str, float], cands: Candidates) -> np.ndarray:
    utility_all = None
    with np.errstate(over="ignore", invalid="ignore"):
        for name, w in weights.items():
            if w != 0.0:
                if utility_all is None:
                    utility_all = np.multiply(cands.scores[name], w, dtype=np.float64)  # new array
                else:
                    utility_all += w * cands.scores[name]
    if utility_all is None:
        utility_all = np.zeros(cands.n, dtype=np.float64)
    return utility_all


def compile_request(cp: CompiledPolicy, req: RerankRequest,
                    boosts: dict[str, dict[str, float]] | None = None, *,
                    utility_all: np.ndarray | None = None) -> Compiled:
    """`boosts`: attribute -> value -> utility added to every candidate with that value (the
    amortized exposure controller's output; see engine.amortized). `utility_all`: this request's
    `request_utility`, if already computed (it is not modified)."""
    policy = cp.policy
    cands = req.candidates
    weights = _weights(policy, req)

    missing = [a for a in cp.required if a not in cands.attributes]
    if missing:
        raise InvalidRequest([FieldIssue(f"candidates.attributes['{a}']",
                                         f"required by policy '{policy.name}' ({cp.needs_attribute[a]}) but not sent")
                              for a in missing])

    if req.targets:
        _check_request_targets(policy, req)

    # utility over every candidate (pins by attribute need it before filtering)
    umax = -1.0  # max |utility| of every candidate, once known to be finite (-1: not known)
    if utility_all is None:
        utility_all, umax = _weighted_utility(weights, cands)
        if umax < 0.0:
            _check_finite_utility(utility_all, weights, cands, req, cp)  # raises
    elif boosts:
        utility_all = utility_all.copy()  # boosts are added in place below
    boost_all = None
    for attr_name, by_value in (boosts or {}).items():
        attr = cands.attributes.get(attr_name)
        if attr is None:
            raise InvalidRequest(f"candidates.attributes['{attr_name}']",
                                 f"required by policy '{policy.name}' (exposure.amortized) but not sent")
        per_code = np.array([by_value.get(v, 0.0) for v in attr.dictionary], dtype=np.float64)
        if per_code.any():
            boost_all = (boost_all if boost_all is not None else np.zeros(cands.n)) + per_code[attr.codes]
    if boost_all is not None:
        utility_all += boost_all
        _check_finite_utility(utility_all, weights, cands, req, cp)
    mask = _eligible(policy, cands) if policy.filters else None
    index = np.flatnonzero(mask) if mask is not None else np.arange(cands.n, dtype=np.int64)
    utility = np.ascontiguousarray(utility_all if mask is None else utility_all[index])
    n = index.shape[0]

    K = req.slate_size or policy.slate_size
    L = min(K, n)
    discount = policy.objective.position_discount
    if isinstance(discount, list) and len(discount) < K:
        raise InvalidRequest("slate_size", f"policy '{policy.name}' gives {len(discount)} position "
                                           f"weights (objective.position_discount), so at most {len(discount)}, got {K}")
    fixed = _row_arrays(cp, L)
    pw = fixed.position_weight
    # max |utility| of the eligible candidates: umax when utility is utility_all (no filter, no
    # boost), else one pass; the full check (which names the culprit) only when it would fail
    m = umax if mask is None and boost_all is None and umax >= 0.0 else _rk.finite_abs_max(utility)
    if n and not (m >= 0.0 and m * fixed.position_weight_sum <= MAX_OBJECTIVE_SCALE):
        _check_objective_range(utility, fixed.position_weight_sum, index, weights, cands)

    A = len(cp.attributes)
    codes = np.empty((A, n), dtype=np.int64)
    n_values = np.empty(A, dtype=np.int64)
    dictionaries = []
    for a, name in enumerate(cp.attributes):
        attr = cands.attributes[name]
        codes[a] = attr.codes if mask is None else attr.codes[index]
        n_values[a] = max(len(attr.dictionary), 1)
        dictionaries.append(attr.dictionary)
    lookups = _Lookups(dictionaries)

    rows = fixed.rows
    top, hard, penalty, priority = fixed.top, fixed.hard, fixed.penalty, fixed.priority
    # per request (the rest of the table is shared: see _row_arrays): the value codes of the
    # rows with a value in this request's dictionaries, the pins' items and positions, the
    # calibration targets. Without pins or calibration rows only the value codes differ between
    # requests, and the whole table is shared by the requests with the same codes
    # (`_RowArrays.tables`); else one copy of the packed table, whose value, item and position
    # rows this request writes.
    pins = fixed.pins
    values = tuple([lookups.code(rows[r].attr, rows[r].value) for r in fixed.value_rows])
    shared = not pins and not fixed.calibration
    table = fixed.tables.get(values) if shared else None
    if table is None:
        block = fixed.rules.copy()
        value, item, position = block[RULE_VALUE], block[RULE_ITEM], block[RULE_POSITION]
        for r, code in zip(fixed.value_rows, values):
            value[r] = code
    else:
        value = table.value  # read below, written by nobody
    active = fixed.all_active.copy()
    pre_reason = fixed.no_reason.copy()
    reasons: dict[int, str] = {}

    def pre_relax(r: int, code: int, why: str) -> None:
        if hard[r]:
            active[r] = False
            pre_reason[r] = code
        reasons[r] = why

    for r in fixed.min_rows:
        row = rows[r]
        rule = policy.constraints[row.owner]
        have = _rk.count_equal(codes[row.attr], int(value[r])) if value[r] >= 0 else 0
        prefix = int(top[r])
        if have < row.bound:
            pre_relax(r, RELAX_SHORTAGE, f"only {have} eligible candidate{'s' if have != 1 else ''} "
                                         f"{'has' if have == 1 else 'have'} {rule.attribute} = {row.value!r}; "
                                         f"{row.bound} required")
        elif prefix < row.bound:
            pre_relax(r, RELAX_SHORTAGE, f"the slate has only {prefix} position{'s' if prefix != 1 else ''} "
                                         f"for the {row.bound} items required")

    if table is None:
        _resolve_pins(policy, rows, cands, index, utility, L, pins, item, position, priority, hard,
                      pre_relax)
        target, target_offset = (_calibration_targets(policy, rows, req, cands, n_values, lookups)
                                  if fixed.calibration else (_NO_TARGET, fixed.no_target_offset))
        table = ConstraintTable.from_block(block, hard, penalty, target=target,
                                           target_offset=target_offset)
        if shared:
            if len(fixed.tables) >= _TABLE_CACHE_MAX:
                fixed.tables.clear()
            fixed.tables[values] = table
    diversity = {}
    if policy.diversity is not None:
        emb = cands.embeddings
        if emb is None:
            raise InvalidRequest("candidates.embeddings", f"required by policy '{policy.name}' "
                                                          f"(diversity: {policy.diversity.method}) but not sent")
        diversity = dict(embeddings=_unit_rows(emb[index]), div_mode=_DIVERSITY[policy.diversity.method],
                         div_weight=float(policy.diversity.weight), div_window=int(policy.diversity.window))
    problem = SlateProblem(utility, pw, codes, n_values, table, active, pre_reason, **diversity)
    boost = boost_all[index] if boost_all is not None else None
    return Compiled(problem, index, weights, K, rows, reasons, boost, fixed.rule_rows)


class _Lookups:
    """value -> code in each attribute's dictionary, built only for the attributes asked about
    (a dict per attribute costs ~8 us at 50 values; most requests ask about one or none)."""

    __slots__ = ("dictionaries", "maps")

    def __init__(self, dictionaries: list[tuple[str, ...]]) -> None:
        self.dictionaries = dictionaries
        self.maps: dict[int, dict[str, int]] = {}

    def code(self, a: int, value: str) -> int:
        """The code of `value` in attribute a's dictionary, NO_MATCH if it is not there."""
        m = self.maps.get(a)
        if m is None:
            m = self.maps[a] = {v: k for k, v in enumerate(self.dictionaries[a])}
        return m.get(value, NO_MATCH)


@dataclass(frozen=True)
class _RowArrays:
    """The request-independent columns of the constraint table for one slate length: built once
    per (policy, L) and shared by every request's table. Nothing writes them (a request's own
    columns - value, item, position, active, pre_reason - are fresh arrays)."""

    rows: tuple[Row, ...]
    kind: np.ndarray
    attr: np.ndarray
    value: np.ndarray  # ALL_VALUES, or -1 where a request's dictionary decides (value_rows)
    bound: np.ndarray
    top: np.ndarray
    size: np.ndarray
    hard: np.ndarray
    penalty: np.ndarray
    priority: np.ndarray
    value_rows: tuple[int, ...]  # rows with a value, looked up in each request's dictionary
    min_rows: tuple[int, ...]
    pins: tuple[int, ...]
    rule_rows: tuple[tuple[int, ...], ...]  # the rows of each rule of the policy
    calibration: bool
    no_target_offset: np.ndarray
    position_weight: np.ndarray  # position_weights(policy discount, L)
    position_weight_sum: float  # its sum: the largest |objective| is |utility| max x this
    no_item: np.ndarray  # templates of the per-request columns, copied per request
    all_active: np.ndarray
    no_reason: np.ndarray
    rules: np.ndarray  # the packed table (ConstraintTable.rules) of these rows, item / position -1:
    #                    each request copies it and writes its value, item and position rows
    # value codes of value_rows -> the ConstraintTable of the requests with those codes, when
    # the rows have no pin and no calibration row (nothing else in the table depends on the
    # request); solvers and reports only read a problem's table
    tables: dict = field(default_factory=dict)


_NO_TARGET = np.zeros(0, dtype=np.float64)
_ROW_CACHE_MAX = 64  # slate lengths per policy
_TABLE_CACHE_MAX = 32  # shared tables per slate length (distinct value codes)


def _row_arrays(cp: CompiledPolicy, L: int) -> _RowArrays:
    cache = cp.row_cache
    got = cache.get(L)
    if got is not None:
        return got
    rows = tuple(cp.rows) + (tuple(fair_rows(cp, L)) if cp.fair else ())
    C = len(rows)
    i64 = lambda values: np.array(values, dtype=np.int64)  # noqa: E731
    got = _RowArrays(
        rows=rows,
        kind=i64([r.kind for r in rows]),
        attr=i64([r.attr for r in rows]),
        value=i64([-1 if r.kind == PIN or r.value is not None else ALL_VALUES for r in rows]),
        bound=i64([r.bound for r in rows]),
        top=i64([min(r.top, L) if r.top > 0 else L for r in rows]),
        size=i64([r.size for r in rows]),
        hard=np.array([r.hard for r in rows], dtype=np.bool_),
        penalty=np.array([r.penalty for r in rows], dtype=np.float64),
        priority=i64([r.priority for r in rows]),
        value_rows=tuple(r for r, row in enumerate(rows) if row.kind != PIN and row.value is not None),
        min_rows=tuple(r for r, row in enumerate(rows) if row.kind == MIN_COUNT),
        pins=tuple(r for r, row in enumerate(rows) if row.kind == PIN),
        rule_rows=tuple(tuple(r for r, row in enumerate(rows) if row.owner == j)
                        for j in range(len(cp.policy.constraints))),
        calibration=any(row.kind == CALIBRATION for row in rows),
        no_target_offset=np.zeros(C + 1, dtype=np.int64),
        position_weight=(pw := position_weights(cp.policy.objective.position_discount, L)),
        position_weight_sum=float(pw.sum()),
        no_item=np.full(C, -1, dtype=np.int64),
        all_active=np.ones(C, dtype=np.bool_),
        no_reason=np.zeros(C, dtype=np.int64),
        rules=None,
    )
    object.__setattr__(got, "rules", ConstraintTable(  # the same columns, packed once
        got.kind, got.attr, got.value, got.bound, got.top, got.size, got.hard, got.penalty,
        got.priority, got.no_item, got.no_item).rules)
    if len(cache) >= _ROW_CACHE_MAX:
        cache.clear()
    cache[L] = got
    return got


def _weight_source(name: str, req: RerankRequest, cp: CompiledPolicy) -> str:
    """Where a weight comes from, for messages: the request's override or the policy's."""
    if name in req.objective_weights:
        return f"objective_weights['{name}']"
    return f"{cp.where()}, objective.weights.{name}"


def _check_finite_utility(utility: np.ndarray, weights: dict[str, float], cands: Candidates,
                          req: RerankRequest, cp: CompiledPolicy) -> None:
    """Finite scores and weights can still overflow when multiplied or summed (1e308 x 10):
    name the column (and the weight) whose weighted value is not finite."""
    if np.isfinite(utility).all():
        return
    j = int(np.argmax(~np.isfinite(utility)))
    with np.errstate(over="ignore", invalid="ignore"):
        for name, w in weights.items():
            x = float(cands.scores[name][j])
            if not np.isfinite(w * x):
                raise InvalidRequest(f"candidates.scores['{name}'].values[{j}]",
                                     f"weight {w:g} ({_weight_source(name, req, cp)}) x score {x:g} "
                                     f"overflows; scale the scores or the weight down")
    raise InvalidRequest("candidates.scores", f"the weighted sum of scores overflows for candidate {j} "
                                              f"(candidates.item_ids[{j}]); scale the scores or weights down")


#: Largest |utility| x (sum of position weights) a request may reach. A slate's objective, its
#: bound and the gap between them (bound - objective) are sums of such terms, and the exact
#: model's big-M is 10 x the largest column cost x the slate length (<= 1000): 1e300 keeps every
#: one of them finite (1e304 at most), with room for penalties and diversity terms.
MAX_OBJECTIVE_SCALE = 1e300


def _check_objective_range(utility: np.ndarray, scale: float, index: np.ndarray,
                           weights: dict[str, float], cands: Candidates) -> None:
    """Every utility is finite, but K of them summed (with the position weights) may not be:
    refuse requests whose objective could overflow, naming the largest weighted score."""
    if utility.shape[0] == 0:
        return
    if float(np.abs(utility).max()) * scale <= MAX_OBJECTIVE_SCALE:
        return
    j = int(index[int(np.argmax(np.abs(utility)))])
    name = max(weights, key=lambda c: abs(weights[c] * float(cands.scores[c][j])) if c in cands.scores else -1.0)
    raise InvalidRequest(
        f"candidates.scores['{name}'].values[{j}]",
        f"the slate objective would overflow: utility {utility[int(np.argmax(np.abs(utility)))]:g} of "
        f"candidates.item_ids[{j}] times the slate's position weights (sum {scale:g}) exceeds "
        f"{MAX_OBJECTIVE_SCALE:.3g}; scale the scores or weights down")


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero: similar to nothing)."""
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.ascontiguousarray(emb / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _check_request_targets(policy: Policy, req: RerankRequest) -> None:
    """The request's `targets`: each names a calibration rule of the policy, gives some value
    that occurs among the candidates a share > 0, and no share is negative or non-finite.
    (Shares are normalised to sum to 1, so only their ratios matter.)"""
    rules = {c.name: c for c in policy.constraints}
    calibration = sorted(name for name, c in rules.items() if isinstance(c, Calibration))
    listed = ", ".join(calibration) or "none"
    issues = []
    for name, shares in req.targets.items():
        path = f"targets['{name}']"
        rule = rules.get(name)
        if rule is None:
            issues.append(FieldIssue(path, f"no calibration rule named {name!r} in policy "
                                           f"'{policy.name}' (calibration rules: {listed})"))
            continue
        if not isinstance(rule, Calibration):
            issues.append(FieldIssue(path, f"rule {name!r} of policy '{policy.name}' is a {rule.type} "
                                           f"rule, not a calibration rule (calibration rules: {listed})"))
            continue
        bad = [(v, x) for v, x in shares.items() if not (np.isfinite(x) and x >= 0)]
        if bad:
            v, x = bad[0]
            issues.append(FieldIssue(f"{path}['{v}']", f"must be a finite number >= 0, got {x}"))
            continue
        if not shares or not any(x > 0 for x in shares.values()):
            issues.append(FieldIssue(path, "must give some value a share > 0 (shares are normalised "
                                           f"to sum to 1), got {'no shares' if not shares else 'only zeros'}"))
            continue
        attr = req.candidates.attributes.get(rule.attribute)
        if attr is None:
            continue  # reported as a missing attribute column
        present = set(attr.dictionary)
        if not any(x > 0 and v in present for v, x in shares.items()):
            sent = ", ".join(repr(v) for v in list(attr.dictionary)[:10])
            more = ", ..." if len(attr.dictionary) > 10 else ""
            issues.append(FieldIssue(path, f"none of its values with a share > 0 "
                                           f"({', '.join(repr(v) for v, x in shares.items() if x > 0)}) "
                                           f"occurs in candidates.attributes['{rule.attribute}'] "
                                           f"(values sent: {sent or 'none'}{more})"))
    if issues:
        raise InvalidRequest(issues)


def _calibration_targets(policy: Policy, rows: list[Row], req: RerankRequest, cands: Candidates,
                         n_values: np.ndarray, lookups: "_Lookups"):
    """Flat target distributions of the calibration rows over their attribute's value codes.

    Target shares of values absent from the request cannot be met by any slate; the rest are
    renormalised to sum to 1."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    chunks = []
    for r, row in enumerate(rows):
        width = 0
        if row.kind == CALIBRATION:
            rule: Calibration = policy.constraints[row.owner]
            shares = req.targets.get(rule.name, rule.target)  # the request's, else the policy's
            path = f"targets['{rule.name}']"
            if shares is None:
                raise InvalidRequest(path, f"required by policy '{policy.name}' (constraints[{row.owner}] "
                                           f"'{rule.name}' has no target): a share per {rule.attribute} value")
            vec = np.zeros(int(n_values[row.attr]), dtype=np.float64)
            for v, share in shares.items():
                if not (share >= 0 and np.isfinite(share)):
                    raise InvalidRequest(f"{path}['{v}']", f"must be a finite number >= 0, got {share}")
                k = lookups.code(row.attr, v)
                if k >= 0:
                    vec[k] += share
            total = vec.sum()
            if total <= 0:
                vec[:] = 1.0 / vec.shape[0]  # nothing of the target is among the candidates
            else:
                vec /= total
            chunks.append(vec)
            width = vec.shape[0]
        offsets[r + 1] = offsets[r] + width
    target = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float64)
    return target, offsets


def _resolve_pins(policy: Policy, rows: list[Row], cands: Candidates, index: np.ndarray,
                  utility: np.ndarray, L: int, pins: list[int], item: np.ndarray,
                  position: np.ndarray, priority: np.ndarray, hard: np.ndarray, pre_relax) -> None:
    """Pins by item id or by attribute value -> eligible candidate indices; clashes between hard
    pins are settled by rank (the more important pin keeps its place)."""
    if not pins:
        return
    from solvers.greedy import constraint_ranks

    rank = constraint_ranks(priority)
    taken_pos: dict[int, int] = {}
    taken_item: dict[int, int] = {}
    for r in sorted(pins, key=lambda r: -rank[r]):  # most important pins choose first
        c: Pin = policy.constraints[rows[r].owner]
        position[r] = c.position - 1
        if c.item is not None:
            try:
                row = cands.item_ids.index(c.item)
            except ValueError:
                pre_relax(r, RELAX_PIN_INVALID, f"item {c.item!r} is not among the candidates")
                continue
            k = int(np.searchsorted(index, row))  # index is sorted: position of row if eligible
            if k >= index.shape[0] or index[k] != row:
                pre_relax(r, RELAX_PIN_INVALID, f"item {c.item!r} was removed by the policy's filters")
                continue
        else:
            attr = cands.attributes.get(c.attribute)
            if attr is None:
                pre_relax(r, RELAX_PIN_INVALID, f"candidates carry no attribute {c.attribute!r}")
                continue
            code = {v: q for q, v in enumerate(attr.dictionary)}.get(c.value, NO_MATCH)
            match = attr.codes[index] == code
            if hard[r]:
                for other in taken_item:
                    match[other] = False
            if not match.any():
                pre_relax(r, RELAX_PIN_INVALID, f"no eligible candidate has {c.attribute} = {c.value!r}")
                continue
            cand = np.flatnonzero(match)
            k = int(cand[np.argmax(utility[cand])])  # argmax: first (lowest index) among ties
        item[r] = k
        if c.position > L:
            pre_relax(r, RELAX_PIN_INVALID, f"position {c.position} is beyond the slate ({L} items)")
            continue
        if not hard[r]:
            continue
        if position[r] in taken_pos:
            other = policy.constraints[rows[taken_pos[int(position[r])]].owner].name
            pre_relax(r, RELAX_PIN_INVALID, f"position {c.position} is already pinned by '{other}'")
            continue
        if k in taken_item:
            other = policy.constraints[rows[taken_item[k]].owner].name
            pre_relax(r, RELAX_PIN_INVALID, f"the same item is already pinned by '{other}'")
            continue
        taken_pos[int(position[r])] = r
        taken_item[k] = r
