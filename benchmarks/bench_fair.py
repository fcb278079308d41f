"""Multi-group FA*IR: protected items the exact multinomial correction requires, against
Bonferroni at the same alpha, and the true type I error of each.

For k (slate length) x G protected groups of equal minimal proportion p x alpha, both corrections
give one m-table per group (solvers.fair.multi_mtables): "multinomial" (the default of a
`fair_prefix` rule) at one level whose exact multinomial failure probability is <= alpha,
"bonferroni" (the policy's opt-in) at alpha / G per group. Reported: the protected items required
in the whole slate (sum over groups of m_g(k)), the required placements summed over every prefix
(sum over groups and prefixes of m_g(i): how much earlier the items must come), the exact
probability that a fair ranking fails the tables (solvers.fair.multinomial_failure_probability,
the baseline's true type I error beside the stated alpha), and the time to build the tables
(cold, cache cleared; one build per row, a rough figure).

    python -m benchmarks.bench_fair [--quick]
"""

from __future__ import annotations

import time

from benchmarks.common import bench_main
from solvers import fair
from solvers.fair import multi_mtables, multinomial_failure_probability

GRID = [(k, G, p, alpha) for k in (10, 20, 50, 100) for G, p in ((2, 0.2), (2, 0.3), (3, 0.15),
                                                                  (3, 0.25), (4, 0.1), (5, 0.1))
        for alpha in (0.05, 0.1)]
QUICK = [(20, 2, 0.2, 0.1), (50, 3, 0.15, 0.1), (100, 4, 0.1, 0.05)]


def run(quick: bool) -> list[dict]:
    rows = []
    for k, G, p, alpha in (QUICK if quick else GRID):
        ps = [p] * G
        out = {"k": k, "G": G, "p": p, "alpha": alpha}
        for name in ("multinomial", "bonferroni"):
            fair._multi_cached.cache_clear()
            fair._adjusted_alpha_multinomial_cached.cache_clear()
            fair._fair_mtable_cached.cache_clear()
            fair._adjusted_alpha_cached.cache_clear()
            t0 = time.perf_counter()
            tables = multi_mtables(k, ps, alpha, correction=name)
            ms = (time.perf_counter() - t0) * 1e3
            short = name[:5]
            out[f"{short}_items"] = sum(int(t[-1]) for t in tables)
            out[f"{short}_placements"] = sum(int(t.sum()) for t in tables)
            out[f"{short}_fail_pct"] = 100.0 * multinomial_failure_probability(tables, ps)
            out[f"{short}_ms"] = ms
        out["more_items"] = out["multi_items"] - out["bonfe_items"]
        out["more_placements"] = out["multi_placements"] - out["bonfe_placements"]
        rows.append(out)
    return rows


COLUMNS = [("k", "k"), ("G", "groups"), ("p", "p"), ("alpha", "alpha"),
           ("multi_items", "items (multinomial)"), ("bonfe_items", "items (Bonferroni)"),
           ("more_items", "+items"),
           ("multi_placements", "placements (multinomial)"),
           ("bonfe_placements", "placements (Bonferroni)"), ("more_placements", "+placements"),
           ("multi_fail_pct", "type I % (multinomial)"), ("bonfe_fail_pct", "type I % (Bonferroni)"),
           ("multi_ms", "build ms (multinomial)"), ("bonfe_ms", "build ms (Bonferroni)")]


def main() -> None:
    bench_main("fair", "Multi-group FA*IR: exact multinomial correction vs Bonferroni", run,
               COLUMNS, __doc__)


if __name__ == "__main__":
    main()
