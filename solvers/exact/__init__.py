"""Exact slate solvers: the reduced assignment model, LP pricing, HiGHS MIP and CP-SAT backends,
minimal conflicts of hard rules and relaxation by priority.

Modules, each importing only those above it in this list:

- `model`: the reduced exact model (classes, pins, count rows) and `exact_unsupported`;
- `pricing`: LP pricing, bounds, reduced-cost fixing, infeasibility proofs (HiGHS LP);
- `driver`: the budgeted exact solve shared by the backends (`exact_solve`, `Run`) and
  `relax_by_priority`, which takes the conflict finder as an argument;
- `conflict`: the minimal-conflict search (`find_conflict`, CP-SAT; it takes the MIP that decides
  the whole rule set first as an argument, `decide`);
- `highs_mip`, `cpsat`: one module per backend (`solve_mip`, `solve_cpsat`).

Public API: `exact_unsupported`, `solve_mip`, `solve_cpsat`, `find_conflict` (the MIP-first
search: `highs_mip.find_conflict_mip_first`),
`ConflictSearchTimeout`, `warmup`. Importing this package loads no solver library: only
`exact_unsupported` (numpy) is imported eagerly; the other names load HiGHS / OR-Tools on first
use (module `__getattr__`, PEP 562), so that greedy-only users never pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from solvers.exact.model import exact_unsupported

if TYPE_CHECKING:  # for type checkers and readers; at run time the names load lazily below
    from solvers.exact.conflict import ConflictSearchTimeout
    from solvers.exact.highs_mip import find_conflict_mip_first as find_conflict
    from solvers.exact.cpsat import solve_cpsat
    from solvers.exact.highs_mip import solve_mip

__all__ = ["exact_unsupported", "solve_mip", "solve_cpsat", "find_conflict",
           "ConflictSearchTimeout", "warmup"]


def warmup() -> None:
    """Run every exact code path once (HiGHS LP and MIP with and without a start, relaxation
    with a conflict search, CP-SAT cold and with a hint), so that the first request does not
    pay imports or one-time initialisation."""
    # Lazy on purpose: the backends import HiGHS and OR-Tools (see the module docstring).
    from solvers.exact import cpsat, highs_mip

    highs_mip.warmup()
    cpsat.warmup()


def __getattr__(name: str):
    """The backend names, imported on first use (see the module docstring)."""
    # Lazy on purpose: importing solvers.exact must not load HiGHS / OR-Tools.
    if name == "solve_mip":
        from solvers.exact.highs_mip import solve_mip as value
    elif name == "solve_cpsat":
        from solvers.exact.cpsat import solve_cpsat as value
    elif name == "find_conflict":
        from solvers.exact.highs_mip import find_conflict_mip_first as value
    elif name == "ConflictSearchTimeout":
        from solvers.exact.conflict import ConflictSearchTimeout as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups find it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
