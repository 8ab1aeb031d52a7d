"""Durations as users write them (5s, 1m30s, 7d): parsing, formatting, and in a pydantic model."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sysmon.core.durations import Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5s", timedelta(seconds=5)),
        ("1m", timedelta(minutes=1)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("1m30s", timedelta(seconds=90)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(days=7)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
        ("0.5s", timedelta(milliseconds=500)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("  5m  ", timedelta(minutes=5)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("1h1h", timedelta(hours=2)),
    ],
)
def test_parse_strings(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(30, timedelta(seconds=30)), (2.5, timedelta(seconds=2.5)), (0, timedelta(0))],
)
def test_parse_numbers_as_seconds(value: float, expected: timedelta) -> None:
    assert parse_duration(value) == expected


def test_parse_timedelta_passes_through() -> None:
    td = timedelta(minutes=3)
    assert parse_duration(td) is td


@pytest.mark.parametrize("text", ["", "   ", "5", "5x", "m5", "5m5", "5 m", "5M", "-5s", "+5s", "1.s", ".5s",
                                  "5s ms", "five minutes", "1e3s"])
def test_parse_rejects_bad_strings_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*: use a number with a unit, e\.g\. 30s, 5m, 24h, 7d"):
        parse_duration(text)


def test_parse_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError, match="a duration cannot be negative"):
        parse_duration(-1)
    with pytest.raises(ValueError, match="a duration cannot be negative"):
        parse_duration(-0.5)


@pytest.mark.parametrize("value", [True, False])
def test_parse_rejects_booleans(value: bool) -> None:
    with pytest.raises(ValueError, match="a duration is a number of seconds or a string"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["99999999999w", 1e20, float("inf")])
def test_parse_out_of_range_is_a_value_error(value: str | float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=300), "5m"),
        (timedelta(seconds=90_000), "1d1h"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=7), "7d"),
        (timedelta(milliseconds=1500), "1s500ms"),
        (timedelta(milliseconds=1), "1ms"),
        (timedelta(hours=24), "1d"),
        (timedelta(days=1, seconds=1), "1d1s"),
    ],
)
def test_format_shortest_exact_form(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


def test_format_rounds_to_milliseconds() -> None:
    assert format_duration(timedelta(microseconds=400)) == "0s"
    assert format_duration(timedelta(microseconds=1600)) == "2ms"


@given(st.integers(min_value=0, max_value=10**12))
def test_format_then_parse_round_trips_whole_milliseconds(ms: int) -> None:
    td = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(td)) == td


class Model(BaseModel):
    every: Duration = timedelta(seconds=5)


def test_model_accepts_strings_numbers_and_timedeltas() -> None:
    assert Model(every="2m").every == timedelta(minutes=2)
    assert Model(every=45).every == timedelta(seconds=45)
    assert Model(every=timedelta(hours=1)).every == timedelta(hours=1)
    assert Model().every == timedelta(seconds=5)


def test_model_serializes_to_the_short_form_in_json_only() -> None:
    m = Model(every="90s")
    assert m.model_dump_json() == '{"every":"1m30s"}'
    assert m.model_dump() == {"every": timedelta(seconds=90)}
    assert Model.model_validate_json(m.model_dump_json()) == m


def test_model_rejects_bad_duration_with_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        Model(every="5 minutes")
    err = info.value.errors()[0]
    assert err["loc"] == ("every",)
    assert "invalid duration '5 minutes'" in err["msg"]


def test_model_rejects_negative_number() -> None:
    with pytest.raises(ValidationError, match="a duration cannot be negative"):
        Model(every=-3)


def test_model_rejects_out_of_range_duration_with_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        Model(every="99999999999w")
