"""Counter-based random numbers: every draw is a pure function of (seed, shard, stream, keys).

Common random numbers need the same user, item and noise to arise whatever the policy does, even
though policies change which users come back, which sellers survive and how long sessions last.
A sequential generator cannot do that (a policy that shows one more slate shifts every later
draw); so each component draws from its own stream (STREAM_* below), and each number is the
splitmix64 hash of its identity: the noise of item j in the ranking of user u's step s on day d
is `normal(key, NOISE, u, d, s, j)` under every policy. Vectorised over numpy uint64 arrays
(keys broadcast); wrap-around multiplication is what splitmix64 wants.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53

# One stream per component and purpose (never reuse a number for two purposes).
USER_ARRIVALS, USER_INTEREST, USER_VISIT, USER_BUDGET, USER_RETURN = 1, 2, 3, 4, 5
CLICK, PURCHASE = 10, 11
SELLER_ARRIVALS, SELLER_QUALITY = 20, 21
ITEM_ATTRS, ITEM_LIFE, ITEM_STOCK = 30, 31, 32
RANKER_NOISE = 40
CALIBRATION = 50


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash64(base: int, *keys) -> np.ndarray:
    """uint64 hash of `base` and the keys (ints or integer arrays, broadcast together)."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(base, dtype=np.uint64) * _GAMMA + _GAMMA)
        for k in keys:
            h = _mix(h ^ ((np.asarray(k).astype(np.uint64) + np.uint64(1)) * _GAMMA))
    return h


def stream_key(seed: int, shard: int, stream: int) -> int:
    """The base of one component's stream in one (seed, shard)."""
    return int(hash64(seed, shard, stream))


def uniform(base: int, *keys) -> np.ndarray:
    """Uniform draws in (0, 1), one per broadcast key."""
    return ((hash64(base, *keys) >> np.uint64(11)).astype(np.float64) + 0.5) * _INV53


def normal(base: int, *keys) -> np.ndarray:
    """Standard normal draws (inverse CDF of `uniform`)."""
    return ndtri(uniform(base, *keys))


def poisson(base: int, lam: float, *keys) -> np.ndarray:
    """Poisson(lam) draws by inverting the CDF of one uniform each (lam up to a few thousand)."""
    u = uniform(base, *keys)
    if lam <= 0:
        return np.zeros(np.shape(u), dtype=np.int64)
    from scipy.stats import poisson as _p

    return _p.ppf(u, lam).astype(np.int64)
