"""Deterministic bucketing for experiments: a unit id -> one of 10,000 buckets; weights -> buckets.

Pure functions of their arguments (no state, no randomness, nothing that changes between
processes, machines or Python versions), in the manner of GrowthBook's SDK: one hash, bucket
ranges per variant, a lookup. The experiment file (`engine.experiments`) says which salt and
which ranges; this module only computes.

The hash (`bucket`)::

    bucket(salt, unit) = int.from_bytes(sha256(utf8(salt + "\\x1f" + unit))[:8], "big") % 10_000

that is: the salt, the byte 0x1F (ASCII unit separator) and the unit id, encoded as UTF-8; the
first 8 bytes of its SHA-256 digest read as a big-endian unsigned integer; that integer modulo
10,000. The unit id is hashed exactly as given: no trimming, no case folding, no Unicode
normalisation (a composed 'é' and 'e' + U+0301 are different ids). Salts never contain 0x1F
(experiment salts and layer names are names: letters, digits, '_', '.', '-'), so the first 0x1F
ends the salt and no two (salt, unit) pairs hash the same text. Modulo bias: 2**64 is not a
multiple of 10,000, so the low 1,616 buckets are more likely by about 1 part in 1.8e15: nothing
an experiment can see.

Buckets are allotted in hundredths of a percent: a weight of 12.34 (%) is 1,234 buckets. A
variant's buckets are a tuple of half-open ranges `(start, end)`, sorted and disjoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

#: Buckets per hash: weights have a resolution of 0.01 %.
BUCKETS = 10_000
#: Separates the salt from the unit id in the hashed text (ASCII "unit separator").
SEPARATOR = "\x1f"
#: Prefix of a layer's salt: the layer hash of layer `home` is `bucket("layer:home", unit)`. An
#: experiment's own salt is a name, which cannot contain ':', so the two hashes never coincide
#: (an experiment alone in its layer, named like it, would otherwise see its layer share and its
#: variant split drawn from the same number, and a half-layer share would fill only the lower
#: half of its variants' ranges).
LAYER_SALT_PREFIX = "layer:"

Range = tuple[int, int]
Ranges = tuple[Range, ...]


def bucket(salt: str, unit: str) -> int:
    """The bucket in [0, 10,000) of `unit` under `salt` (the recipe is in the module docstring).

    `unit` may be any text, empty included. A lone surrogate (which no valid UTF-8 text holds,
    but a Python str can) is encoded as its 3 bytes (`surrogatepass`) rather than raising.
    """
    text = f"{salt}{SEPARATOR}{unit}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") % BUCKETS


def layer_salt(layer: str) -> str:
    """The salt of a layer's hash (see LAYER_SALT_PREFIX)."""
    return LAYER_SALT_PREFIX + layer


# --- weights -> quotas -> ranges ------------------------------------------------------------------


def quota(weight: float) -> int:
    """Buckets for a weight in percent (0.01 resolution): 12.34 -> 1234. ValueError for a weight
    below 0, above 100 or not a multiple of 0.01 (within 1e-6 of one, for float arithmetic)."""
    scaled = weight * (BUCKETS / 100)
    q = round(scaled)
    if not 0 <= q <= BUCKETS or abs(scaled - q) > 1e-6:
        raise ValueError(f"a weight is a percentage between 0 and 100 in steps of 0.01, got {weight:g}")
    return q


def quotas(weights: Sequence[float]) -> tuple[int, ...]:
    """Buckets per variant; ValueError unless the weights are valid and sum to exactly 100."""
    out = tuple(quota(w) for w in weights)
    if sum(out) != BUCKETS:
        raise ValueError(f"the weights must sum to 100, got {sum(out) / (BUCKETS / 100):g}")
    return out


def ranges_from_weights(weights: Sequence[float]) -> tuple[Ranges, ...]:
    """Contiguous cumulative ranges in the given order: (50, 45, 5) -> ([0, 5000)), ([5000, 9500)),
    ([9500, 10000)). A weight of 0 gets no range."""
    out: list[Ranges] = []
    start = 0
    for q in quotas(weights):
        out.append(((start, start + q),) if q else ())
        start += q
    return tuple(out)


def size(ranges: Ranges) -> int:
    """Number of buckets in `ranges`."""
    return sum(end - start for start, end in ranges)


def contains(ranges: Ranges, b: int) -> bool:
    """Whether bucket `b` is in one of `ranges`."""
    return any(start <= b < end for start, end in ranges)


def to_ranges(buckets: Sequence[int]) -> Ranges:
    """Sorted, distinct buckets -> the fewest half-open ranges covering exactly them."""
    out: list[list[int]] = []
    for b in buckets:
        if out and out[-1][1] == b:
            out[-1][1] = b + 1
        else:
            out.append([b, b + 1])
    return tuple((s, e) for s, e in out)


def owners(ranges: Sequence[Ranges]) -> tuple[int, ...]:
    """Bucket -> index of the variant whose ranges hold it (-1: none), for a lookup per request.
    ValueError if a range leaves [0, 10,000) or two variants share a bucket."""
    table = [-1] * BUCKETS
    for i, rs in enumerate(ranges):
        for start, end in rs:
            if not 0 <= start < end <= BUCKETS:
                raise ValueError(f"a range is [start, end) with 0 <= start < end <= {BUCKETS}, got [{start}, {end})")
            for b in range(start, end):
                if table[b] != -1:
                    raise ValueError(f"bucket {b} belongs to variants {table[b]} and {i}")
                table[b] = i
    return tuple(table)


# --- changing the weights ------------------------------------------------------------------------


def rebalance(old_ranges: Sequence[Ranges], new_weights: Sequence[float]) -> tuple[Ranges, ...]:
    """New ranges for new weights that move as few units as possible from the old ranges.

    Every variant keeps the lowest-numbered part of its old buckets, up to its new quota; the
    buckets so freed, in increasing order, go to the variants that grow, in the given order,
    each taking what it lacks. Exactly sum(max(0, old - new)) buckets change variant, the least
    any assignment with the new quotas can move: a variant that shrinks must lose that many, and
    here no other bucket moves. A variant added to an experiment comes with old ranges `()`; one
    to be stopped gets weight 0.

    Why a function of the weights alone cannot do this (and the file carries the ranges): with
    3 or more variants, suppose buckets(w) moved the minimum between every two weight vectors.
    Between two vectors giving variant i the same quota, i may then neither lose nor gain a
    bucket, so its set depends on its own quota alone: S_i(q), growing with q. Variants 1 and 2
    with one bucket each (S_1(1), S_2(1)) and variant 3 with the rest must be disjoint; but
    (1, 0, 9999) and (0, 1, 9999) give variant 3 the same set S_3(9999), so S_1(1) and S_2(1)
    are both the one bucket left outside it: the same bucket. With 2 variants the cumulative
    split of `ranges_from_weights` is already minimal.

    `old_ranges` must partition [0, 10,000) (ValueError otherwise, or if the counts differ).
    """
    if len(old_ranges) != len(new_weights):
        raise ValueError(f"{len(old_ranges)} variants have ranges but {len(new_weights)} weights were given")
    table = owners(old_ranges)
    if -1 in table:
        raise ValueError(f"the old ranges leave bucket {table.index(-1)} to no variant: they must cover "
                         f"[0, {BUCKETS})")
    new_q = quotas(new_weights)
    kept: list[list[int]] = [[] for _ in new_q]
    freed: list[int] = []
    for b, i in enumerate(table):  # increasing b: each variant keeps its lowest-numbered buckets
        (kept[i] if len(kept[i]) < new_q[i] else freed).append(b)
    it = iter(freed)
    for i, q in enumerate(new_q):
        kept[i].extend(next(it) for _ in range(q - len(kept[i])))
    return tuple(to_ranges(sorted(k)) for k in kept)


def moved(old_ranges: Sequence[Ranges], new_ranges: Sequence[Ranges]) -> int:
    """Buckets whose variant differs between two partitions of [0, 10,000)."""
    return sum(a != b for a, b in zip(owners(old_ranges), owners(new_ranges)))
