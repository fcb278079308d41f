"""The greedy slate and its evaluation in one kernel call. Imports only numba and the two kernel
modules it chains (which import only numpy, numba and solvers.codes).

`greedy_evaluated` runs solvers._greedy_kernels.greedy_slate and then, when it succeeded,
solvers._evaluate_kernels.constraint_status on the slate it wrote: the same two kernels on the
same arrays as `solve_greedy_with_bound` followed by `evaluate`, without a second trip through
Python between them (the wrapper's checks, allocations and Numba's argument unboxing cost more
than the evaluation itself at N=1000, K=50). Arguments: greedy_slate's, then constraint_status'
outputs (violation [C], slack [C], parts [2]); returns greedy_slate's result (the number of
relaxed rules, or -1 - j when utility j is not finite: then nothing is evaluated).
tests/test_engine_glue.py checks it against the two calls.
"""

import numba as nb

from solvers._evaluate_kernels import constraint_status
from solvers._greedy_kernels import DIVERSITY_TYPES, PROBLEM_TYPES, TABLE_TYPES, greedy_slate

_SIG = nb.int64(
    *PROBLEM_TYPES, *TABLE_TYPES, *DIVERSITY_TYPES,  # as greedy_slate
    nb.boolean[::1], nb.int64[::1], nb.int64[::1], nb.int64[::1], nb.boolean[::1],  # active, slate,
    nb.float64[::1],  # reason, relax_pos, relaxed, info: greedy_slate's in / out arrays
    nb.float64[::1], nb.float64[::1], nb.float64[::1],  # violation, slack, parts (constraint_status)
)


@nb.njit(_SIG, cache=True, nogil=True)
def greedy_evaluated(u, pw, codes, n_values, rules, penalty, target, toff, emb, div_mode, beta,
                     window, active, slate, reason, relax_pos, relaxed, info, violation, slack,
                     parts):
    n_relaxed = greedy_slate(u, pw, codes, n_values, rules, penalty, target, toff, emb, div_mode,
                             beta, window, active, slate, reason, relax_pos, relaxed, info)
    if n_relaxed >= 0:
        constraint_status(slate, u, pw, codes, n_values, rules, penalty, target, toff, violation,
                          slack, parts)
    return n_relaxed
