"""The metric model: series ids, the edge checks and their messages, and the small helpers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sysmon.core.metrics import (
    InvalidInput,
    Limits,
    check_host_id,
    check_series,
    check_session_id,
    first_non_finite,
    format_series,
    series_id,
)

LIM = Limits()
CPU = "system.cpu.utilization"

# --- series_id ----------------------------------------------------------------------------------


def test_series_id_is_pinned() -> None:
    # Ids are stored in PostgreSQL and Redis: changing the derivation orphans every stored series.
    assert series_id("node-1", CPU, {"cpu": "0", "state": "user"}) == 450208838341033550
    assert series_id("h", "n", {}) == -5261963293893618833


def test_series_id_is_stable_across_calls_and_dict_instances() -> None:
    a = series_id("node-1", CPU, {"cpu": "0", "state": "user"})
    b = series_id("node-1", CPU, dict([("cpu", "0"), ("state", "user")]))
    assert a == b


def test_series_id_does_not_depend_on_attribute_order() -> None:
    assert series_id("h", CPU, {"cpu": "0", "state": "user"}) == series_id("h", CPU, {"state": "user", "cpu": "0"})


@pytest.mark.parametrize(
    ("other_host", "other_name", "other_attrs"),
    [
        ("node-2", CPU, {"cpu": "0"}),  # host
        ("node-1", "system.cpu.time", {"cpu": "0"}),  # name
        ("node-1", CPU, {"cpu": "1"}),  # value
        ("node-1", CPU, {"core": "0"}),  # key
        ("node-1", CPU, {}),  # no attributes
        ("node-1", CPU, {"cpu": "0", "state": "user"}),  # one more attribute
        ("node-1", CPU, {"0": "cpu"}),  # key and value swapped
        ("node-1", CPU, {"cp": "u0"}),  # same characters, split elsewhere
    ],
)
def test_series_id_distinguishes_every_part(other_host: str, other_name: str, other_attrs: dict[str, str]) -> None:
    assert series_id("node-1", CPU, {"cpu": "0"}) != series_id(other_host, other_name, other_attrs)


def test_series_id_separates_host_from_name() -> None:
    assert series_id("ab", "c", {}) != series_id("a", "bc", {})


@given(
    st.text(min_size=1, max_size=20),
    st.text(min_size=1, max_size=40),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5),
)
def test_series_id_is_a_signed_64_bit_int_independent_of_order(host: str, name: str, attrs: dict[str, str]) -> None:
    sid = series_id(host, name, attrs)
    assert -(2**63) <= sid < 2**63
    assert series_id(host, name, dict(reversed(list(attrs.items())))) == sid


# --- check_host_id / check_session_id ------------------------------------------------------------


@pytest.mark.parametrize("host", ["node-1", "ip-10-0-0-1.ec2.internal", "A", "0abc", "host_1"])
def test_valid_host_ids(host: str) -> None:
    check_host_id(host, LIM)


def test_empty_host_id() -> None:
    with pytest.raises(InvalidInput) as info:
        check_host_id("", LIM)
    assert info.value.field == "host_id"
    assert info.value.message == "must not be empty"
    assert str(info.value) == "host_id: must not be empty"


def test_host_id_length_limit() -> None:
    check_host_id("h" * 10, Limits(max_host_id_length=10))
    with pytest.raises(InvalidInput) as info:
        check_host_id("h" * 11, Limits(max_host_id_length=10))
    assert info.value.field == "host_id"
    assert info.value.message == "longer than 10 characters"


@pytest.mark.parametrize("host", ["-node", ".node", "node 1", "node/1", "node:1", "nöde", "node\n", "_x"])
def test_host_id_charset(host: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_host_id(host, LIM)
    assert info.value.field == "host_id"
    assert info.value.message == f"{host!r} must start with a letter or digit and contain only [A-Za-z0-9._-]"


@pytest.mark.parametrize("session", ["abc", "0f3e-11aa", "s.1_2"])
def test_valid_session_ids(session: str) -> None:
    check_session_id(session, LIM)


def test_empty_session_id() -> None:
    with pytest.raises(InvalidInput) as info:
        check_session_id("", LIM)
    assert (info.value.field, info.value.message) == ("session_id", "must not be empty")


@pytest.mark.parametrize("session", ["s" * 9, "bad session", "-abc", "a/b"])
def test_session_id_length_and_charset(session: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_session_id(session, Limits(max_session_id_length=8))
    assert info.value.field == "session_id"
    assert info.value.message == "must be 1-8 characters of [A-Za-z0-9._-], starting with a letter or digit"


def test_session_id_at_the_length_limit() -> None:
    check_session_id("s" * 8, Limits(max_session_id_length=8))


# --- check_series ----------------------------------------------------------------------------------


def test_valid_series() -> None:
    check_series(CPU, {"cpu": "0", "state": "user"}, "1", LIM)
    check_series("system.cpu.load_average.1m", {}, "{thread}", LIM)
    check_series("_x", {"device": "/dev/sda1", "mountpoint": "/ with spaces and ünïcode"}, "", LIM)


def _series_error(name: str, attrs: dict[str, str], unit: str = "1", limits: Limits = LIM) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        check_series(name, attrs, unit, limits)
    return info.value


def test_empty_name() -> None:
    e = _series_error("", {})
    assert (e.field, e.message) == ("name", "must not be empty")


def test_name_too_long_shows_a_prefix_and_the_limit() -> None:
    name = "a" * 50
    e = _series_error(name, {}, limits=Limits(max_name_length=49))
    assert e.field == "name"
    assert e.message == f"{'a' * 40!r}... is longer than 49 characters"


@pytest.mark.parametrize("name", ["1abc", "system-cpu", "system cpu", ".cpu", "cpu\n", "cpu{a}"])
def test_name_charset(name: str) -> None:
    e = _series_error(name, {})
    assert e.field == "name"
    assert e.message == f"{name!r} must match [A-Za-z_][A-Za-z0-9_.]*"


def test_too_many_attributes() -> None:
    e = _series_error(CPU, {"a": "1", "b": "2", "c": "3"}, limits=Limits(max_attributes=2))
    assert e.field == "attributes"
    assert e.message == f"{CPU} has 3 attributes, more than 2"


def test_attributes_at_the_limit() -> None:
    check_series(CPU, {"a": "1", "b": "2"}, "1", Limits(max_attributes=2))


@pytest.mark.parametrize("key", ["", "1cpu", "cpu-id", "k y", "k\x00"])
def test_bad_attribute_key(key: str) -> None:
    e = _series_error(CPU, {key: "v"})
    assert e.field == "attributes"
    assert e.message == f"{CPU}: key {key!r} must match [A-Za-z_][A-Za-z0-9_.]* and be at most 64 characters"


def test_attribute_key_too_long() -> None:
    e = _series_error(CPU, {"k" * 5: "v"}, limits=Limits(max_attribute_key_length=4))
    assert e.field == "attributes"
    assert "key 'kkkkk'" in e.message
    assert "at most 4 characters" in e.message


def test_attribute_value_too_long() -> None:
    e = _series_error(CPU, {"cpu": "x" * 11}, limits=Limits(max_attribute_value_length=10))
    assert e.field == "attributes"
    assert e.message == f"{CPU}: value of 'cpu' is longer than 10 characters"


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "tab\t", "del\x7f"])
def test_attribute_value_with_control_characters(value: str) -> None:
    e = _series_error(CPU, {"cpu": value})
    assert e.field == "attributes"
    assert e.message == f"{CPU}: value of 'cpu' contains control characters"


@pytest.mark.parametrize("unit", ["u" * 33, "By\n"])
def test_bad_unit(unit: str) -> None:
    e = _series_error(CPU, {}, unit=unit)
    assert e.field == "unit"
    assert e.message == f"{CPU}: unit must be at most 32 printable characters"


def test_invalid_input_is_a_value_error() -> None:
    assert issubclass(InvalidInput, ValueError)


# --- first_non_finite / format_series --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "index"),
    [
        ([], None),
        ([0.0, -1.5, 1e308], None),
        ([math.nan], 0),
        ([1.0, math.inf, math.nan], 1),
        ([1.0, 2.0, -math.inf], 2),
    ],
)
def test_first_non_finite(values: list[float], index: int | None) -> None:
    assert first_non_finite(values) == index


def test_first_non_finite_accepts_a_generator() -> None:
    assert first_non_finite(v for v in [1.0, 2.0, math.nan]) == 2
    assert first_non_finite(iter([1.0, 2.0])) is None


def test_format_series_without_attributes_is_the_name() -> None:
    assert format_series(CPU, {}) == CPU


def test_format_series_sorts_attributes_prometheus_style() -> None:
    assert format_series(CPU, {"state": "user", "cpu": "0"}) == 'system.cpu.utilization{cpu="0",state="user"}'
