"""Garbage collection's circuit breaker: a pure rule over the planned sweeps of both regions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.backup.gc import gc_breaker
from include.backup_dr.engines.base import Sweep


def _sweep(doomed: int, total: int, what: str = "media blobs") -> Sweep:
    return Sweep(what, total, doomed, [], lambda: 0)


def test_breaker_names_the_region_what_and_the_numbers() -> None:
    reason = gc_breaker(
        [("eu-west-1", _sweep(1, 10)), ("eu-central-1", _sweep(6, 10))], max_delete_fraction=0.5
    )
    assert reason is not None
    assert "media blobs in eu-central-1: 6 of 10" in reason
    assert "eu-west-1" not in reason
    assert "more than 50%" in reason and "override_circuit_breaker=true" in reason


def test_breaker_holds_at_the_fraction_and_for_a_single_deletion() -> None:
    assert gc_breaker([("eu-west-1", _sweep(5, 10))], max_delete_fraction=0.5) is None
    assert gc_breaker([("eu-west-1", _sweep(1, 1))], max_delete_fraction=0.5) is None
    assert gc_breaker([("eu-west-1", _sweep(0, 0))], max_delete_fraction=0.5) is None
    assert gc_breaker([("eu-west-1", _sweep(2, 2))], max_delete_fraction=0.5) is not None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["eu-west-1", "eu-central-1"]), st.integers(0, 50), st.integers(0, 50)
        ),
        max_size=6,
    ),
    st.floats(0.01, 1.0),
)
def test_breaker_trips_exactly_when_a_sweep_deletes_too_large_a_share(plans, fraction) -> None:
    sweeps = [(region, _sweep(min(doomed, total), total)) for region, doomed, total in plans]
    reason = gc_breaker(sweeps, fraction)
    too_large = [s for _, s in sweeps if s.doomed > 1 and s.doomed > fraction * s.total]
    assert (reason is not None) == bool(too_large)
    for region, sweep in sweeps:
        if sweep in too_large:
            assert f"{sweep.what} in {region}: {sweep.doomed} of {sweep.total}" in reason
