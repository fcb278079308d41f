"""CP-SAT solver objects with a parameter set, a time limit and no search log.

The one place that turns a parameter dict (`solvers.exact.cpsat.CPSAT_PARAMS`,
`solvers.exact.conflict.CONFLICT_PARAMS`) into a `CpSolver`, as `solvers._highs` does for HiGHS.
"""

from __future__ import annotations

from ortools.sat.python import cp_model


def new_cp_solver(time_limit: float, params: dict[str, object]) -> cp_model.CpSolver:
    """A CP-SAT solver with `params`, at most `time_limit` seconds (1 ms at least), silent.

    Parameters
    ----------
    time_limit : float
        Seconds the solve may take (`max_time_in_seconds`); values below 1 ms become 1 ms.
    params : dict
        CP-SAT parameter names (fields of `SatParameters`) and values.

    Returns
    -------
    ortools.sat.python.cp_model.CpSolver
        The solver, ready for `solve(model)`.
    """
    solver = cp_model.CpSolver()
    for k, v in params.items():
        setattr(solver.parameters, k, v)
    solver.parameters.max_time_in_seconds = max(float(time_limit), 1e-3)
    solver.parameters.log_search_progress = False
    return solver
