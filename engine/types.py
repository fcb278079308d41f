"""The engine's public request / result types (plain dataclasses over numpy arrays).

`server/` converts protobuf to and from these; in-process users build them directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

SolverMode = Literal["auto", "greedy", "exact"]


@dataclass(frozen=True, slots=True)
class Attribute:
    """A dictionary-encoded string column: value of candidate i is dictionary[codes[i]]."""

    codes: np.ndarray  # int64[N], each in [0, len(dictionary))
    dictionary: tuple[str, ...]

    @staticmethod
    def from_values(values, path: str = "values") -> "Attribute":
        """Dictionary-encode a sequence of strings (a list, tuple or numpy array); `path` names the
        column in errors (InvalidRequest)."""
        values = _sequence(values, path, "a sequence of strings")
        index: dict[str, int] = {}
        try:
            codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64)
        except TypeError:  # an unhashable value (a list, a dict, ...): named below
            index = {None: 0}
        dictionary = tuple(index)
        if any(type(v) is not str for v in dictionary):  # only the distinct values: cheap
            bad = next((j for j, v in enumerate(values) if not isinstance(v, str)), None)
            if bad is not None:
                raise _invalid(f"{path}[{bad}]", f"must be a string, got {values[bad]!r}")
            dictionary = tuple(str(v) for v in dictionary)  # str subclasses as plain str
        return Attribute(codes, dictionary)

    def values(self) -> list[str]:
        d = self.dictionary
        return [d[c] for c in self.codes.tolist()]


@dataclass(frozen=True, slots=True)
class Candidates:
    """Columnar candidates; every column has one entry per candidate (validated by the engine)."""

    item_ids: Sequence[str]  # a list, or any sequence with len / indexing / index() (take(rows): optional)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # float64[N] each
    attributes: dict[str, Attribute] = field(default_factory=dict)
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # float64[N] each
    embeddings: np.ndarray | None = None  # float32[N, dim]
    # What a decoder already knows of item_ids (None: the engine finds out itself)
    id_check: "IdCheck | None" = None

    def __post_init__(self) -> None:
        """Accept plain Python sequences as well as numpy arrays (in-process callers): score and
        numeric columns become float64 arrays, attribute columns given as lists of strings become
        `Attribute`s, embeddings a float32 matrix. Arrays of the right dtype are kept as they are
        (the server's decoder sends those), so this costs a few dict lookups per request."""
        for kind in ("scores", "numeric"):
            columns = getattr(self, kind)
            if any(type(v) is not np.ndarray or v.dtype != np.float64 for v in columns.values()):
                object.__setattr__(self, kind, {name: _float_column(f"candidates.{kind}['{name}'].values", v)
                                                for name, v in columns.items()})
        if any(not isinstance(a, Attribute) or type(a.codes) is not np.ndarray or type(a.dictionary) is not tuple
               for a in self.attributes.values()):
            object.__setattr__(self, "attributes", {
                name: a if isinstance(a, Attribute) and type(a.codes) is np.ndarray
                and type(a.dictionary) is tuple else _attribute_column(name, a)
                for name, a in self.attributes.items()})
        e = self.embeddings
        if e is not None and (type(e) is not np.ndarray or e.dtype != np.float32 or e.ndim != 2):
            try:
                m = np.asarray(e, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise _invalid("candidates.embeddings.values", f"must be a matrix of numbers (one row "
                               f"per item_id), got {type(e).__name__}: {exc}") from None
            if m.ndim != 2:
                raise _invalid("candidates.embeddings.values",
                               f"must be a matrix (one row per item_id), got shape {m.shape}")
            object.__setattr__(self, "embeddings", np.ascontiguousarray(m))

    @property
    def n(self) -> int:
        return len(self.item_ids)


def _invalid(path: str, message: str):
    from engine.errors import InvalidRequest  # engine.errors imports nothing of ours: no cycle

    return InvalidRequest(path, message)


def _sequence(values, path: str, expected: str) -> list | tuple:
    """`values` as a list or tuple (numpy arrays, pandas Series and other iterables are listed);
    strings, bytes, mappings, sets and non-iterables are refused naming `path`."""
    if isinstance(values, list | tuple):
        return values
    if isinstance(values, np.ndarray):
        return values.tolist()
    if not isinstance(values, str | bytes | Mapping | Set):
        try:
            return list(values)
        except TypeError:
            pass
    raise _invalid(path, f"must be {expected}, got {type(values).__name__}")


def _float_column(path: str, values) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise _invalid(path, f"must be a sequence of numbers, got a {type(values).__name__}")
    if not isinstance(values, np.ndarray | list | tuple):
        values = _sequence(values, path, "a sequence of numbers")
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _invalid(path, f"must be a sequence of numbers, got {type(values).__name__} ({exc})") from None
    if out.ndim != 1:
        raise _invalid(path, f"must be one number per item_id (a flat sequence), got shape {out.shape}")
    return out


def _attribute_column(name: str, a) -> Attribute:
    """A column given as a sequence of strings, or an `Attribute` built by hand with plain lists."""
    path = f"candidates.attributes['{name}']"
    if not isinstance(a, Attribute):
        return Attribute.from_values(_sequence(a, path, "an Attribute or a sequence of strings"), path)
    if isinstance(a.codes, (str, bytes)):
        raise _invalid(f"{path}.codes", f"must be a sequence of integers, got a {type(a.codes).__name__}")
    try:
        codes = np.asarray(a.codes)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"{path}.codes", f"must be a sequence of integers, got {type(a.codes).__name__} "
                                        f"({exc})") from None
    if codes.ndim != 1 or (codes.size and codes.dtype.kind not in "iu"):
        raise _invalid(f"{path}.codes", f"must be a flat sequence of integers (one per item_id), got "
                                        f"dtype {codes.dtype} and shape {codes.shape}")
    if isinstance(a.dictionary, (str, bytes)):
        raise _invalid(f"{path}.dictionary", f"must be a sequence of strings, got a {type(a.dictionary).__name__}")
    dictionary = tuple(a.dictionary)
    bad = next((j for j, v in enumerate(dictionary) if not isinstance(v, str)), None)
    if bad is not None:
        raise _invalid(f"{path}.dictionary[{bad}]", f"must be a string, got {dictionary[bad]!r}")
    return Attribute(np.ascontiguousarray(codes, dtype=np.int64), dictionary)


@dataclass(frozen=True, slots=True)
class IdCheck:
    """Facts about `Candidates.item_ids` found by a decoder that had them at hand (the server
    finds them on the wire), so that validation need not look at every id again."""

    first_empty: int = -1  # index of the first empty id, -1: none
    duplicate: tuple[int, int] | None = None  # (index of the first repeat, index of its original)


@dataclass(frozen=True, slots=True)
class RerankRequest:
    policy: str
    candidates: Candidates
    slate_size: int = 0  # 0 = the policy's
    budget_ms: float = 0.0  # 0 = the policy's
    solver: SolverMode | None = None  # None = the policy's
    objective_weights: dict[str, float] = field(default_factory=dict)  # overrides per column
    explain: bool = False
    # per calibration rule without a target in the policy: value -> share (rule name -> ...)
    targets: dict[str, dict[str, float]] = field(default_factory=dict)
    request_id: str = ""
    user_id: str = ""
    deadline_ms: float | None = None  # time left before the caller's deadline, if any


# Not frozen: K of these are made per request, and a frozen dataclass's __init__ is ~4x slower.
@dataclass(slots=True)
class SlateItem:
    item_id: str
    index: int  # into the request's candidates
    position: int  # 1-based
    utility: float  # combined (undiscounted) utility of the item
    contributions: dict[str, float] = field(default_factory=dict)  # explain: weight * score per column


class SlateItems(Sequence):
    """A slate's items as columns (ids, candidate indices, utilities, explain's contributions),
    behaving as a read-only `list[SlateItem]` (len, indexing, slices, iteration, ==, +): the
    `SlateItem`s are built on first use and kept, so callers that never look at them (the
    server's encoder reads `columns()`) make none. Positions are 1..K. Pickles and copies as a
    plain list of `SlateItem`."""

    __slots__ = ("item_ids", "indices", "utilities", "contributions", "_items")

    def __init__(self, item_ids: list[str], indices: np.ndarray, utilities: np.ndarray,
                 contributions: dict[str, np.ndarray] | None = None) -> None:
        """item_ids: the slate's ids (K); indices: int64[K] into the request's candidates;
        utilities: float64[K]; contributions: column -> float64[K] (explain), None or empty: none.
        (Not `index` / `utility`: `index()` is the list method, which callers may use.)"""
        if not (len(item_ids) == len(indices) == len(utilities)):
            raise ValueError(f"SlateItems: item_ids, indices and utilities must have one entry per "
                             f"position, got {len(item_ids)}, {len(indices)}, {len(utilities)}")
        self.item_ids = item_ids
        self.indices = indices
        self.utilities = utilities
        self.contributions = contributions or None
        self._items: list[SlateItem] | None = None

    def columns(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray] | None:
        """(ids, index int64, position int64, utility float64); None with contributions."""
        if self.contributions:
            return None
        return (self.item_ids, self.indices, np.arange(1, len(self.item_ids) + 1, dtype=np.int64),
                self.utilities)

    def _list(self) -> list[SlateItem]:
        items = self._items
        if items is None:
            ids = self.item_ids
            if self.contributions:
                names = list(self.contributions)
                rows = zip(*(self.contributions[n].tolist() for n in names))
                contrib = [dict(zip(names, row)) for row in rows]
            else:
                contrib = [{} for _ in ids]
            items = self._items = [SlateItem(ids[p], r, p + 1, u, contrib[p])
                                   for p, (r, u) in enumerate(zip(self.indices.tolist(), self.utilities.tolist()))]
        return items

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, i):
        return self._list()[i]

    def __iter__(self):
        return iter(self._list())

    def __eq__(self, other) -> bool:
        if isinstance(other, SlateItems | list | tuple):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None  # like a list

    def __add__(self, other):
        return self._list() + list(other)

    def __radd__(self, other):
        return list(other) + self._list()

    def __repr__(self) -> str:
        return repr(self._list())

    def __reduce__(self):
        return (list, (self._list(),))


def slate_indices(items, dtype=np.int64) -> np.ndarray:
    """The candidate index of every slate position, as an array: read from the columns of a
    `SlateItems` (no `SlateItem` is built), else from each item's `index`."""
    if isinstance(items, SlateItems):
        return np.asarray(items.indices, dtype=dtype)
    return np.fromiter((it.index for it in items), dtype, len(items))


@dataclass(slots=True)  # not frozen, like SlateItem: made per rule per request
class ConstraintReport:
    name: str
    kind: str  # the rule's type: max_count | min_count | window | pin | coverage | calibration | fair_prefix
    hard: bool
    satisfied: bool
    slack: float  # >= 0 when satisfied; how far from binding (see solvers.problem)
    violation: float  # units of violation (0 when satisfied)
    penalty: float  # objective cost paid for a soft rule (penalty * violation)
    relaxed: bool  # a hard rule that was given up
    reason: str = ""  # why it was relaxed, in the policy's words
    cost: float | None = None  # explain: objective gained if this rule were dropped (greedy estimate)


@dataclass(frozen=True, slots=True)
class ConflictReport:
    rules: list[str]  # constraint names, in policy order
    description: str


@dataclass(frozen=True, slots=True)
class ExposureLPReport:
    status: str  # LP status, or "skipped: <why>"
    objective: float  # expected utility of the fair ranking distribution
    expected_exposure: dict[str, float]  # group -> expected exposure over the top M
    solve_ms: float


@dataclass(frozen=True, slots=True)
class RerankResult:
    items: list[SlateItem]  # or SlateItems (the engine's answers): a list of SlateItem to every reader
    policy: str
    policy_version: str
    solver: str  # which solver produced the slate
    status: str  # optimal | feasible | relaxed
    objective: float
    bound: float | None  # proven upper bound, when known
    gap: float | None  # (bound - objective) / bound, or bound - objective (see gap_kind), when known
    constraints: list[ConstraintReport]
    elapsed_us: dict[str, float]  # per stage: compile, solve, report, ... (server adds decode/encode)
    eligible: int  # candidates left after filters
    request_id: str = ""
    budget_ms: float = 0.0  # the solve budget that applied (policy / request, capped by deadline)
    exact_status: str = ""  # what the exact solver said when it ran: optimal, feasible, timeout...;
    #                         "skipped: <reason>" when the problem has terms only the greedy models
    conflicts: list[ConflictReport] = field(default_factory=list)  # minimal conflicting rule sets
    boosts: dict[str, float] = field(default_factory=dict)  # "attribute=value" -> exposure boost
    exposure_lp: ExposureLPReport | None = None
    policy_digest: str = ""  # sha256 of the policy file's bytes that served the answer
    experiment: "ExperimentReport | None" = None  # the experiment variant that served, if any
    propensities: "Propensities | None" = None  # exploration policies: how likely the slate was
    # "relative": gap = (bound - objective) / bound; "absolute": gap = bound - objective, used when
    # no relative gap makes sense (bound <= 0, or objective < 0 < bound); "" when gap is None
    gap_kind: str = ""
    # how `bound` was obtained: "lagrangian" (linear rules relaxed, non-linear terms bounded),
    # "sort", "sort (fallback: <why>)", "exact" (the MIP), "" when unknown
    bound_method: str = ""


@dataclass(frozen=True, slots=True)
class Propensities:
    """How likely a stochastic (exploration) slate was, for off-policy estimators."""

    seed: int  # what drew it: engine.decide.exploration_seed(request id, policy digest)
    scheme: str  # "epsilon" | "softmax"
    joint: float  # P(this whole slate)
    cascade: tuple[float, ...]  # cascade[p] = P(positions 0..p as drawn)
    marginal: tuple[float, ...] | None = None  # P(item of position p at position p); None: not computed
    marginal_samples: int = 0  # Monte Carlo draws behind `marginal` (0: exact, or not computed)
    marginal_stderr: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    """Which experiment and variant served an answer, and the unit's buckets (engine.bucketing)."""

    experiment: str
    variant: str
    bucket: int  # 0..9999: the unit's bucket in the experiment (its variant's ranges hold it)
    holdout: bool = False  # the variant is the experiment's holdout (served by its control)
    layer: str = ""
    layer_bucket: int = -1  # 0..9999: the unit's bucket in the layer
    unit: str = ""  # which id was hashed: "user_id" or "request_id"


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    name: str
    version: str
    source: str  # file it was loaded from
    digest: str  # sha256 of the file's bytes
    slate_size: int
    solver_mode: str
    budget_ms: float
    constraints: list[str]
    description: str = ""
    file_digest: str = ""  # sha256 of the file's bytes on disk now ("" if unreadable / not a file)
    file_invalid: bool = False  # the file on disk is invalid now: `digest` is an older, valid version
    file_error: str = ""  # its first error ("path: message"), when file_invalid
    last_good: bool = False  # the live version was restored from the state directory
