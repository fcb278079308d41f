"""Baselines measured in the same run as the engine.

`python_greedy` is what a team writes without this project: a clear, reasonably efficient
plain-Python greedy for the same rules (caps per value, minimum within a prefix with look-ahead,
spacing windows), over a sorted candidate list. It follows the engine's greedy semantics for
these rules, so the two pick the same slate (the benchmark checks it).
"""

from __future__ import annotations

import numpy as np


def topk_argpartition(utility: np.ndarray, k: int) -> np.ndarray:
    """The floor: top-k by utility, ordered; no rules at all."""
    k = min(k, utility.shape[0])
    idx = np.argpartition(-utility, k - 1)[:k]
    return idx[np.argsort(-utility[idx], kind="stable")]


def python_greedy(utility, codes_cap, cap, codes_min, min_value, min_count, min_top,
                  codes_win, win_size, win_max, k):
    """Caps (at most `cap` per value of codes_cap), a minimum (>= min_count of min_value among
    codes_min in the top min_top) and a window (<= win_max per value of codes_win in any
    win_size consecutive positions)."""
    n = len(utility)
    order = sorted(range(n), key=lambda i: (-utility[i], i))
    cap_codes, min_codes, win_codes = codes_cap.tolist(), codes_min.tolist(), codes_win.tolist()
    L = min(k, n)
    cap_count: dict[int, int] = {}
    have_min = 0
    slate: list[int] = []
    used = set()
    for p in range(L):
        best = -1
        for i in order:
            if i in used:
                continue
            if cap_count.get(cap_codes[i], 0) >= cap:
                continue
            window = slate[max(0, p - win_size + 1):]
            if sum(1 for j in window if win_codes[j] == win_codes[i]) >= win_max:
                continue
            if p < min_top:
                need = min_count - have_min - (1 if min_codes[i] == min_value else 0)
                if need > min_top - p - 1:
                    continue
            best = i
            break
        if best < 0:
            break
        slate.append(best)
        used.add(best)
        cap_count[cap_codes[best]] = cap_count.get(cap_codes[best], 0) + 1
        if p < min_top and min_codes[best] == min_value:
            have_min += 1
    return slate


def python_greedy_fullscan(utility, codes_cap, cap, codes_min, min_value, min_count, min_top,
                           codes_win, win_size, win_max, k):
    """The same rules written the common way (as most MMR / re-ranking scripts are): at every
    position, score every remaining candidate, drop the infeasible ones, take the best."""
    n = len(utility)
    u = utility.tolist()
    cap_codes, min_codes, win_codes = codes_cap.tolist(), codes_min.tolist(), codes_win.tolist()
    L = min(k, n)
    remaining = list(range(n))
    slate: list[int] = []
    for p in range(L):
        best, best_score = -1, float("-inf")
        for i in remaining:
            if sum(1 for j in slate if cap_codes[j] == cap_codes[i]) >= cap:
                continue
            window = slate[max(0, p - win_size + 1):]
            if sum(1 for j in window if win_codes[j] == win_codes[i]) >= win_max:
                continue
            if p < min_top:
                have = sum(1 for j in slate if min_codes[j] == min_value)
                if min_count - have - (min_codes[i] == min_value) > min_top - p - 1:
                    continue
            if u[i] > best_score:
                best, best_score = i, u[i]
        if best < 0:
            break
        slate.append(best)
        remaining.remove(best)
    return slate
