"""Query planning without a database: tier choice, step, and request validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysmon.core.metrics import InvalidInput
from sysmon.core.query import QueryLimits, QueryRequest, Tier, TierPolicy, choose_tier, effective_step, validate

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
S = timedelta(seconds=1)
US = timedelta(microseconds=1)


# --- choose_tier ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "tier"),
    [
        (timedelta(0), Tier.HOT),
        (timedelta(minutes=1), Tier.HOT),
        (timedelta(minutes=5), Tier.HOT),
        (timedelta(minutes=5) + US, Tier.RAW),
        (timedelta(hours=1), Tier.RAW),
        (timedelta(hours=24), Tier.RAW),
        (timedelta(hours=24) + US, Tier.ROLLUP_1M),
        (timedelta(days=3), Tier.ROLLUP_1M),
        (timedelta(days=7), Tier.ROLLUP_1M),
        (timedelta(days=7) + US, Tier.ROLLUP_1H),
        (timedelta(days=365), Tier.ROLLUP_1H),
    ],
)
def test_choose_tier_default_boundaries(age: timedelta, tier: Tier) -> None:
    assert choose_tier(NOW - age, NOW) is tier


def test_choose_tier_start_in_the_future_is_hot() -> None:
    assert choose_tier(NOW + timedelta(minutes=1), NOW) is Tier.HOT


@pytest.mark.parametrize(
    ("age", "tier"),
    [
        (timedelta(minutes=1), Tier.HOT),
        (timedelta(minutes=1) + US, Tier.RAW),
        (timedelta(hours=2), Tier.RAW),
        (timedelta(hours=2) + US, Tier.ROLLUP_1M),
        (timedelta(days=30), Tier.ROLLUP_1M),
        (timedelta(days=30) + US, Tier.ROLLUP_1H),
    ],
)
def test_choose_tier_custom_policy(age: timedelta, tier: Tier) -> None:
    policy = TierPolicy(hot_window=timedelta(minutes=1), raw_retention=timedelta(hours=2),
                        rollup_1m_retention=timedelta(days=30))
    assert choose_tier(NOW - age, NOW, policy) is tier


def test_choose_tier_compares_instants_not_wall_clocks() -> None:
    start = (NOW - timedelta(minutes=3)).astimezone(timezone(timedelta(hours=-8)))
    assert choose_tier(start, NOW) is Tier.HOT


def test_tier_values_are_the_names_users_see() -> None:
    assert [t.value for t in Tier] == ["hot", "raw", "1m", "1h"]


# --- effective_step ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "step", "expected"),
    [
        (Tier.HOT, timedelta(milliseconds=100), S),
        (Tier.HOT, timedelta(seconds=5), timedelta(seconds=5)),
        (Tier.RAW, timedelta(seconds=1.4), S),
        (Tier.RAW, timedelta(seconds=7.6), timedelta(seconds=8)),
        (Tier.RAW, timedelta(minutes=2), timedelta(minutes=2)),
        (Tier.ROLLUP_1M, timedelta(seconds=5), timedelta(minutes=1)),
        (Tier.ROLLUP_1M, timedelta(minutes=5), timedelta(minutes=5)),
        (Tier.ROLLUP_1H, timedelta(minutes=1), timedelta(hours=1)),
        (Tier.ROLLUP_1H, timedelta(hours=6), timedelta(hours=6)),
    ],
)
def test_effective_step(tier: Tier, step: timedelta, expected: timedelta) -> None:
    assert effective_step(tier, step) == expected


@given(st.sampled_from(list(Tier)), st.timedeltas(min_value=US, max_value=timedelta(days=30)))
def test_effective_step_is_whole_seconds_and_never_finer_than_the_tier(tier: Tier, step: timedelta) -> None:
    out = effective_step(tier, step)
    assert out.microseconds == 0
    assert out >= {Tier.HOT: S, Tier.RAW: S, Tier.ROLLUP_1M: timedelta(minutes=1),
                   Tier.ROLLUP_1H: timedelta(hours=1)}[tier]


# --- validate ------------------------------------------------------------------------------------


def req(**kw: object) -> QueryRequest:
    fields: dict[str, object] = {
        "metric": "system.cpu.utilization",
        "start": NOW - timedelta(hours=1),
        "end": NOW,
        "step": timedelta(seconds=15),
    }
    fields.update(kw)
    return QueryRequest(**fields)  # type: ignore[arg-type]


def invalid(r: QueryRequest, limits: QueryLimits | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate(r, limits or QueryLimits())
    return info.value


def test_valid_request_passes() -> None:
    validate(req(), QueryLimits())
    validate(req(hosts=["a", "b"], match={"cpu": "0"}, agg="max"), QueryLimits())


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(seconds=1)])
def test_start_not_before_end(delta: timedelta) -> None:
    e = invalid(req(start=NOW + delta, end=NOW))
    assert e.field == "start"
    assert e.message == f"start {(NOW + delta).isoformat()} is not before end {NOW.isoformat()}"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2026, 11, 24, 11), NOW),
        (NOW - timedelta(hours=1), datetime(2026, 11, 24, 12)),
        (datetime(2026, 11, 24, 11), datetime(2026, 11, 24, 12)),
    ],
)
def test_times_without_time_zone(start: datetime, end: datetime) -> None:
    e = invalid(req(start=start, end=end))
    assert e.field == "start"
    assert e.message == "times must carry a time zone"


@pytest.mark.parametrize("step", [timedelta(0), -S])
def test_step_must_be_positive(step: timedelta) -> None:
    e = invalid(req(step=step))
    assert (e.field, e.message) == ("step", "must be positive")


def test_too_many_points_suggests_a_step() -> None:
    # A day at 1 s is 86400 points: the suggestion must be a step that passes.
    r = req(start=NOW - timedelta(days=1), step=S)
    e = invalid(r)
    assert e.field == "step"
    assert e.message == "86400 points per series exceeds 11000; use a step of at least 8s"
    validate(req(start=NOW - timedelta(days=1), step=timedelta(seconds=8)), QueryLimits())


def test_points_at_the_limit_pass() -> None:
    limits = QueryLimits(max_points_per_series=60)
    validate(req(start=NOW - timedelta(minutes=1), step=S), limits)
    e = invalid(req(start=NOW - timedelta(minutes=1), step=timedelta(milliseconds=500)), limits)
    assert e.message == "120 points per series exceeds 60; use a step of at least 1s"


@given(st.integers(1, 10_000_000), st.integers(1, 20_000))
def test_the_suggested_step_is_accepted(seconds: int, max_points: int) -> None:
    limits = QueryLimits(max_points_per_series=max_points)
    r = req(start=NOW - timedelta(seconds=seconds), step=timedelta(milliseconds=1))
    error = _error_of(r, limits)
    if error is None:
        return
    assert error.field == "step"
    suggested = int(error.message.rsplit("at least ", 1)[1].rstrip("s"))
    validate(req(start=r.start, step=timedelta(seconds=suggested)), limits)


def _error_of(r: QueryRequest, limits: QueryLimits) -> InvalidInput | None:
    """validate()'s InvalidInput, or None; any other exception propagates and fails the test."""
    try:
        validate(r, limits)
    except InvalidInput as e:
        return e
    return None


@pytest.mark.parametrize("metric", ["", "1cpu", "system cpu", "cpu;drop table", "cpu\n"])
def test_bad_metric_name(metric: str) -> None:
    e = invalid(req(metric=metric))
    assert e.field == "metric"
    assert e.message == f"{metric!r} is not a metric name"


def test_too_many_hosts() -> None:
    limits = QueryLimits(max_hosts=3)
    validate(req(hosts=["a", "b", "c"]), limits)
    e = invalid(req(hosts=["a", "b", "c", "d"]), limits)
    assert (e.field, e.message) == ("hosts", "at most 3 hosts per query")


def test_metric_is_checked_first() -> None:
    e = invalid(req(metric="bad name", start=NOW, end=NOW, step=timedelta(0)))
    assert e.field == "metric"


_ZONES = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12)), timezone(timedelta(minutes=330))]
)


@settings(max_examples=300)
@given(
    metric=st.text(max_size=30) | st.sampled_from(["system.cpu.utilization", "a", "_x.y"]),
    start=st.datetimes(timezones=_ZONES) | st.datetimes(timezones=st.timezones()),
    end=st.datetimes(timezones=_ZONES) | st.datetimes(timezones=st.timezones()),
    step=st.timedeltas(),
    hosts=st.lists(st.text(max_size=5), max_size=8),
    match=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    agg=st.sampled_from(["avg", "min", "max"]),
    max_points=st.integers(1, 20_000),
    max_hosts=st.integers(0, 10),
)
def test_validate_raises_only_invalid_input(
    metric: str, start: datetime, end: datetime, step: timedelta, hosts: list[str], match: dict[str, str],
    agg: str, max_points: int, max_hosts: int,
) -> None:
    r = QueryRequest(metric=metric, start=start, end=end, step=step, hosts=hosts, match=match,
                     agg=agg)  # type: ignore[arg-type]
    error = _error_of(r, QueryLimits(max_points_per_series=max_points, max_hosts=max_hosts))
    if error is not None:
        assert error.field in {"metric", "start", "step", "hosts"}
        assert error.message
