"""The integer codes and numeric constants that every part of the solve agrees on.

One source of truth, with no imports, so that the Numba kernel modules (which import only numpy,
numba and this module), `solvers.problem`, `engine.compile`, `engine.portfolio` and the slow
twins in `tests/naive.py` all read the same values. `tests/test_codes.py` fails if any other
module defines one of these names again.

The kernels read these names as compile-time constants. Numba's on-disk cache keys on the
kernel module's own source, not on this file: after changing a value here, delete the
`__pycache__` folders of `solvers/` (changing a code is a breaking change anyway).

Meanings are documented in `solvers.problem` (violation units per kind, the diversity terms).
"""

# Constraint kinds (ConstraintTable.kind), in the order of KIND_NAMES.
MAX_COUNT = 0
MIN_COUNT = 1
WINDOW = 2
PIN = 3
COVERAGE = 4  # soft only
CALIBRATION = 5  # soft only
KIND_NAMES = ("max_count", "min_count", "window", "pin", "coverage", "calibration")

# Similarity diversity methods (SlateProblem.div_mode), in the order of DIV_NAMES; the policy's
# `diversity.method` is one of DIV_NAMES[1:].
DIV_NONE = 0
DIV_MMR = 1
DIV_DPP = 2
DIV_NAMES = ("none", "mmr", "dpp")

# Solver modes (policy `solver.mode`, request `solver`): greedy only; greedy then exact when the
# budget and the problem allow; exact asked for (still greedy first, as the warm start).
SOLVER_MODES = ("greedy", "auto", "exact")

# Exploration schemes (solvers.explore.sample_slate), in the order of EXPLORE_NAMES; the policy's
# `exploration.scheme` is one of EXPLORE_NAMES[1:].
EXPLORE_NONE = 0
EXPLORE_EPSILON = 1
EXPLORE_SOFTMAX = 2
EXPLORE_NAMES = ("none", "epsilon", "softmax")
SOFTMAX_CUT = 50.0  # softmax support: candidates within SOFTMAX_CUT * T of the best gain

# Special ConstraintTable.value codes.
ALL_VALUES = -1  # the rule applies to every value of the attribute separately
NO_MATCH = -2  # the rule's value does not occur among the candidates: nothing matches

# Reasons a solver relaxed a hard constraint (SolveResult.relax_reason).
RELAX_NONE = 0
RELAX_CONFLICT = 1  # no candidate could be placed at some position without breaking it
RELAX_SHORTAGE = 2  # fewer matching candidates than the rule needs
RELAX_PIN_INVALID = 3  # pinned item not eligible, position beyond the slate, or clashing pin
RELAX_INFEASIBLE = 4  # an exact solver proved the rules cannot all hold together

# The packed rule table (ConstraintTable.rules, the kernels' `rules` argument): int64[RULE_COLS, C],
# row RULE_X holding the table's column RULE_COLUMNS[RULE_X] (hard as 0 / 1).
RULE_KIND = 0
RULE_ATTR = 1
RULE_VALUE = 2
RULE_BOUND = 3
RULE_TOP = 4
RULE_SIZE = 5
RULE_HARD = 6
RULE_PRIORITY = 7
RULE_ITEM = 8
RULE_POSITION = 9
RULE_COLS = 10
RULE_COLUMNS = ("kind", "attr", "value", "bound", "top", "size", "hard", "priority", "item",
                "position")

# Numeric constants of the objective (see solvers.problem for the definitions).
CALIBRATION_ALPHA = 0.01  # q~ = (1 - alpha) q + alpha t
DPP_EPS = 1e-10  # residual floor inside the log
DPP_SPAN_EPS = 1e-6  # an item whose residual is <= this adds nothing to the span
