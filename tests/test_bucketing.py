"""engine.bucketing: the published hash, weights -> ranges, and rebalancing with minimal movement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import bucketing
from engine.bucketing import BUCKETS, bucket, moved, owners, ranges_from_weights, rebalance

REPO = Path(__file__).resolve().parent.parent

# Test vectors, computed OUTSIDE Python so that they check the recipe, not this code:
#   printf '%s\x1f%s' "$salt" "$unit" | sha256sum | cut -c1-16        (the first 8 bytes, in hex)
#   echo "ibase=16; $(echo $HEX | tr a-f A-F) % 2710" | bc           (0x2710 = 10000)
# The decomposed 'é' and the unit holding 0x1F were written as bytes:
#   printf 'exp\x1fe\xcc\x81milie' | sha256sum     printf 'exp\x1fa\x1fb' | sha256sum
VECTORS = [
    # (salt, unit, first 8 bytes of the digest, bucket)
    ("home_feed_ranking_v2", "user-42", "adad3d68fa6a9716", 9030),
    ("hf-2026-12", "u1", "53b1563233b4b715", 9701),
    ("hf-2026-12", "", "d9fd3582ac851b16", 3062),  # empty unit id
    ("layer:home", "user-42", "af0aee9ba95a0400", 5696),  # a layer's salt
    ("exp", "\u00e9milie", "7c5cc9569de308b5", 6661),  # composed é: c3 a9
    ("exp", "e\u0301milie", "b449988bd9ca23fd", 5821),  # e + combining acute: not normalised
    ("exp", "\u7528\u6237123", "9d3765699c4e7116", 9942),  # CJK: e7 94 a8 e6 88 b7 31 32 33
    ("exp", "\U0001f642", "d44cb4963a4c63a4", 1140),  # 4-byte UTF-8: f0 9f 99 82
    ("", "", "ffe679bb831c95b6", 8438),  # empty salt and unit: the text is the one byte 0x1f
    ("exp", "  spaced ", "1a2f956acb89f50f", 5183),  # spaces are kept
    ("exp", "a\x1fb", "b484cfa58797bdb8", 7208),  # a separator inside the unit id
]


@pytest.mark.parametrize("salt, unit, head, expected", VECTORS)
def test_published_vectors(salt: str, unit: str, head: str, expected: int) -> None:
    assert int(head, 16) % BUCKETS == expected  # the vector table is consistent
    assert bucket(salt, unit) == expected


def test_same_bucket_in_another_process() -> None:
    # str hashing is salted per process (PYTHONHASHSEED); the bucket must not be.
    code = ("from engine.bucketing import bucket; "
            "print([bucket(s, u) for s, u in [('exp', 'user-1'), ('exp', '\\u00e9'), ('layer:home', '')]])")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, cwd=REPO).stdout
            for seed in ("1", "2")]
    here = str([bucket("exp", "user-1"), bucket("exp", "\u00e9"), bucket("layer:home", "")])
    assert runs == [here + "\n", here + "\n"]


def test_lone_surrogate_does_not_raise() -> None:
    assert 0 <= bucket("exp", "\ud800") < BUCKETS


# --- weights -> ranges --------------------------------------------------------------------------


def test_ranges_from_weights_are_cumulative_in_order() -> None:
    assert ranges_from_weights([50, 45, 5]) == (((0, 5000),), ((5000, 9500),), ((9500, 10000),))
    assert ranges_from_weights([0, 100]) == ((), ((0, 10000),))
    assert ranges_from_weights([33.33, 33.33, 33.34]) == (((0, 3333),), ((3333, 6666),), ((6666, 10000),))


@pytest.mark.parametrize("weights, message", [
    ([50, 40], "the weights must sum to 100, got 90"),
    ([50, 50.005], "steps of 0.01, got 50.005"),
    ([-1, 101], "between 0 and 100 in steps of 0.01, got -1"),
])
def test_bad_weights(weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ranges_from_weights(weights)


def test_split_of_100000_ids_is_within_1_percent_of_the_weights() -> None:
    weights = [50, 45, 5]
    table = owners(ranges_from_weights(weights))
    counts = [0, 0, 0]
    for k in range(100_000):
        counts[table[bucket("split-test", f"user-{k}")]] += 1
    for w, c in zip(weights, counts):
        assert abs(100 * c / 100_000 - w) <= 1.0, (weights, counts)


def test_owners_refuses_shared_and_out_of_range_buckets() -> None:
    with pytest.raises(ValueError, match="bucket 10 belongs to variants 0 and 1"):
        owners([((0, 20),), ((10, 30),)])
    with pytest.raises(ValueError, match=r"got \[9000, 10001\)"):
        owners([((9000, 10001),)])


# --- rebalance --------------------------------------------------------------------------------


def _units_moved(old: tuple, new: tuple, n: int = 100_000) -> int:
    a, b = owners(old), owners(new)
    return sum(a[x] != b[x] for x in (bucket("move-test", f"u{k}") for k in range(n)))


def test_moving_10_percent_from_a_to_b_moves_at_most_10_5_percent_of_units() -> None:
    old = ranges_from_weights([50, 50])
    new = rebalance(old, [40, 60])
    assert moved(old, new) == 1000
    assert _units_moved(old, new) <= 10_500


def test_three_variants_a_to_c_moves_only_the_10_percent() -> None:
    old = ranges_from_weights([40, 30, 30])
    new = rebalance(old, [30, 30, 40])
    assert moved(old, new) == 1000
    assert _units_moved(old, new) <= 10_500
    # The cumulative split of the new weights would move B's units too: twice as many.
    assert moved(old, ranges_from_weights([30, 30, 40])) == 2000
    assert new == (((0, 3000),), ((4000, 7000),), ((3000, 4000), (7000, 10000)))


def test_rebalance_adds_and_stops_variants() -> None:
    old = ranges_from_weights([50, 50]) + ((),)  # a third variant joins with no buckets
    new = rebalance(old, [40, 40, 20])
    assert new == (((0, 4000),), ((5000, 9000),), ((4000, 5000), (9000, 10000)))
    assert rebalance(new, [50, 50, 0])[2] == ()


def test_rebalance_refuses_ranges_that_are_not_a_partition() -> None:
    with pytest.raises(ValueError, match="leave bucket 9000 to no variant"):
        rebalance([((0, 5000),), ((5000, 9000),)], [50, 50])
    with pytest.raises(ValueError, match="2 variants have ranges but 3 weights"):
        rebalance(ranges_from_weights([50, 50]), [40, 30, 30])


def _to_percent(parts: list[int]) -> list[float]:
    """Integers -> quotas summing to 10,000 -> percent weights (exact hundredths)."""
    total = sum(parts)
    q = [p * BUCKETS // total for p in parts]
    q[-1] += BUCKETS - sum(q)
    return [x / 100 for x in q]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=2, max_size=6), st.data())
def test_rebalance_keeps_a_partition_with_the_new_quotas_and_moves_the_minimum(parts: list[int], data) -> None:
    old_w = _to_percent(parts)
    new_parts = data.draw(st.lists(st.integers(0, 40), min_size=len(parts), max_size=len(parts))
                          .filter(lambda xs: sum(xs) > 0))
    new_w = _to_percent(new_parts)
    # Start from a fragmented partition (itself a rebalance) as often as from a cumulative one.
    old = ranges_from_weights(old_w)
    if data.draw(st.booleans()):
        old = rebalance(rebalance(old, new_w), old_w)
    new = rebalance(old, new_w)
    table = owners(new)
    assert -1 not in table  # a partition of [0, 10000)
    assert [bucketing.size(r) for r in new] == [round(w * 100) for w in new_w]
    old_q = [bucketing.size(r) for r in old]
    assert moved(old, new) == sum(max(0, a - round(b * 100)) for a, b in zip(old_q, new_w))
    for r in new:  # normalised: sorted, disjoint, not touching
        assert all(s < e for s, e in r) and all(e1 < s2 for (_, e1), (s2, _) in zip(r, r[1:]))
