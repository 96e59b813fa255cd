"""The monitor's pure rules: lag statistics, breach conditions, and paging once per breach."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.monitor.lag import (
    CONDITIONS,
    Alert,
    archive_failing,
    lag_breached,
    lag_stats,
    longest_run_over,
    percentile,
    plan_alerts,
    record_sent,
    standby_gone,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
lags = st.lists(st.floats(min_value=0, max_value=20_000, allow_nan=False), max_size=80)
condition_runs = st.lists(
    st.fixed_dictionaries({name: st.booleans() for name in CONDITIONS}), max_size=40
)


def test_stats_of_a_hundred_samples() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert lag_stats(samples) == {"count": 100, "p50_ms": 50.0, "p99_ms": 99.0, "max_ms": 100.0}


def test_stats_of_no_samples_are_empty_not_zero() -> None:
    assert lag_stats([]) == {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}


def test_one_outlier_in_fifty_shows_in_p99_not_in_p50() -> None:
    samples = [2.0] * 49 + [900.0]
    stats = lag_stats(samples)
    assert stats["p50_ms"] == 2.0 and stats["p99_ms"] == 900.0 and stats["max_ms"] == 900.0


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


@given(lags, st.floats(min_value=0.1, max_value=100))
def test_percentile_is_an_observed_value_within_the_range(values: list[float], q: float) -> None:
    if not values:
        return
    result = percentile(values, q)
    assert result in values
    assert min(values) <= result <= max(values)
    assert percentile(values, 100) == max(values)


@given(lags)
def test_p50_never_exceeds_p99_never_exceeds_max(values: list[float]) -> None:
    stats = lag_stats(values)
    if values:
        assert stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert stats["count"] == len(values)


def test_lag_pages_only_after_n_consecutive_samples_over_the_rpo() -> None:
    rpo = 1000.0
    assert not lag_breached([1500, 1500, 10, 1500, 1500], rpo, 3)
    assert lag_breached([10, 1500, 1500, 1500, 10], rpo, 3)
    assert not lag_breached([1000, 1000, 1000], rpo, 3)  # at the RPO is within it
    assert lag_breached([10_000.0], rpo, 1)
    assert not lag_breached([], rpo, 1)


@given(lags, st.integers(min_value=1, max_value=10))
def test_breach_iff_some_window_of_n_is_all_over(values: list[float], n: int) -> None:
    rpo = 1000.0
    windows = [values[i : i + n] for i in range(len(values) - n + 1)]
    expected = any(all(v > rpo for v in window) for window in windows)
    assert lag_breached(values, rpo, n) == expected
    assert longest_run_over(values, rpo) <= len(values)


def test_archive_failing_needs_new_failures_and_a_failure_newest() -> None:
    old, new = T0, T0 + timedelta(seconds=30)
    assert archive_failing(5, new, old, 4)
    assert not archive_failing(5, new, old, 5)  # nothing new, not open before
    assert archive_failing(5, new, old, 5, was_open=True)  # still failing while backing off
    assert not archive_failing(6, old, new, 5)  # failed, then archived since: recovered
    assert not archive_failing(0, None, new, None)
    assert archive_failing(1, new, None, None)  # first run, never archived, failing


def test_standby_gone_when_any_sign_is_missing() -> None:
    assert not standby_gone(True, True, True)
    assert standby_gone(False, True, True)
    assert standby_gone(True, False, True)
    assert standby_gone(True, None, True)  # slot missing
    assert standby_gone(True, True, False)


def test_breach_then_quiet_then_resolved() -> None:
    state: dict = {}
    sent = []
    for current in ({"standby_gone": True}, {"standby_gone": True}, {"standby_gone": False}):
        for alert in plan_alerts(state, current):
            sent.append(alert)
            state = record_sent(state, alert, {"since": T0.isoformat()})
    assert sent == [Alert("breach", "standby_gone"), Alert("resolved", "standby_gone")]
    assert state == {}


def test_an_undelivered_page_is_retried_next_run() -> None:
    state: dict = {}
    assert plan_alerts(state, {"lag": True}) == [Alert("breach", "lag")]
    # Delivery failed, so nothing was recorded: the next run pages again.
    assert plan_alerts(state, {"lag": True}) == [Alert("breach", "lag")]


def _replay(runs: list[dict[str, bool]]) -> tuple[list[Alert], dict]:
    state: dict = {}
    sent: list[Alert] = []
    for current in runs:
        for alert in plan_alerts(state, current):
            sent.append(alert)
            state = record_sent(state, alert, {})
    return sent, state


@settings(max_examples=300)
@given(condition_runs)
def test_pages_once_per_breach_and_resolves_at_most_once(runs: list[dict[str, bool]]) -> None:
    sent, state = _replay(runs)
    for name in CONDITIONS:
        kinds = [a.kind for a in sent if a.condition == name]
        # breach, resolved, breach, ...: never two pages in a row, never a resolved first.
        assert kinds == ["breach", "resolved"] * (len(kinds) // 2) + ["breach"] * (len(kinds) % 2)
        history = [False] + [run[name] for run in runs]
        turned_on = sum(1 for a, b in itertools.pairwise(history) if b and not a)
        assert kinds.count("breach") == turned_on
        assert (name in state) == history[-1]


@given(st.sampled_from(CONDITIONS), st.integers(min_value=1, max_value=50))
def test_a_condition_that_stays_on_pages_exactly_once(name: str, runs: int) -> None:
    sent, _ = _replay([{name: True}] * runs)
    assert sent == [Alert("breach", name)]
