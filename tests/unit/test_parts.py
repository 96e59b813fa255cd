"""The part plan: any stream S3 can hold fits its 10,000 parts, within its part sizes."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.parts import (
    BUFFERED_PARTS,
    FIRST_PART_SIZE,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    GiB,
    MiB,
    PartPlan,
    parts_in_memory,
)

PLAN = PartPlan()
SIZES = list(PLAN.sizes())


def cut(sizes: list[int], total: int) -> list[int]:
    """The parts a stream of `total` bytes is uploaded in (the last one may be smaller)."""
    parts = []
    for size in sizes:
        if total <= 0:
            break
        parts.append(min(size, total))
        total -= size
    assert total <= 0, "the stream does not fit the plan"
    return parts


@settings(max_examples=300)
@given(st.integers(min_value=1, max_value=MAX_OBJECT_SIZE))
def test_any_stream_up_to_5_tib_fits_in_10000_parts_within_s3_part_sizes(total: int) -> None:
    parts = cut(SIZES, total)
    assert sum(parts) == total
    assert len(parts) <= MAX_PARTS
    assert all(MIN_PART_SIZE <= part <= MAX_PART_SIZE for part in parts[:-1])
    assert parts[-1] <= MAX_PART_SIZE


@settings(max_examples=100)
@given(st.integers(min_value=1, max_value=FIRST_PART_SIZE * MAX_PARTS // 10))
def test_streams_up_to_15_6_gib_keep_16_mib_parts(total: int) -> None:
    assert set(cut(SIZES, total)[:-1]) <= {FIRST_PART_SIZE}


@settings(max_examples=50)
@given(
    first=st.integers(min_value=MIN_PART_SIZE, max_value=64 * MiB),
    limit=st.integers(min_value=1, max_value=MAX_PARTS),
)
def test_sizes_never_shrink_stay_within_s3_limits_and_hold_5_tib_where_s3_can(
    first: int, limit: int
) -> None:
    plan = PartPlan(first=first, limit=limit)
    sizes = list(plan.sizes())
    assert len(sizes) == limit
    assert sizes[0] == first
    assert all(a <= b for a, b in pairwise(sizes))
    assert all(MIN_PART_SIZE <= size <= MAX_PART_SIZE for size in sizes)
    assert plan.capacity == sum(sizes)
    # Only a plan whose parts already reach S3's largest may hold less than 5 TiB.
    assert plan.capacity >= MAX_OBJECT_SIZE or plan.ceiling == MAX_PART_SIZE


def test_the_largest_part_is_the_smallest_that_holds_5_tib() -> None:
    assert PLAN.capacity >= MAX_OBJECT_SIZE
    assert max(SIZES) == PLAN.ceiling == 604 * MiB
    one_mib_less = PartPlan(largest=PLAN.capacity - MiB)
    assert one_mib_less.ceiling == PLAN.ceiling
    assert PartPlan(largest=PLAN.capacity + 1).ceiling == PLAN.ceiling + MiB


def test_a_lowered_limit_grows_from_the_first_part() -> None:
    """What the integration test relies on: 8 parts from 5 MiB, doubling each part."""
    plan = PartPlan(first=5 * MiB, limit=8)
    assert [size // MiB for size in plan.sizes()] == [5, 10, 20, 40, 80, 160, 320, 640]
    assert len(cut(list(plan.sizes()), 60 * MiB)) == 4  # 12 parts of 5 MiB


@pytest.mark.parametrize(
    ("first", "limit"), [(4 * MiB, 10), (6 * GiB, 10), (16 * MiB, 0), (16 * MiB, 10_001)]
)
def test_a_plan_outside_s3_limits_is_refused(first: int, limit: int) -> None:
    with pytest.raises(ValueError, match="S3 takes"):
        PartPlan(first=first, limit=limit)


@given(st.sampled_from(SIZES))
def test_memory_per_upload_is_bounded_and_reading_overlaps_an_upload(size: int) -> None:
    held = parts_in_memory(size)
    assert held >= 2
    # What an upload holds: `held` parts of this size, or `held - 1` and a next twice as big.
    worst = max(held * size, (held - 1) * size + min(2 * size, PLAN.ceiling))
    assert worst <= max(BUFFERED_PARTS * FIRST_PART_SIZE + FIRST_PART_SIZE, 2 * PLAN.ceiling)
