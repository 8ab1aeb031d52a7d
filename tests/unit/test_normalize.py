"""StreamDecoder: one Push stream's batches -> NormalizedBatch, or a BatchError naming the broken limit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import grpc
import pytest

from sysmon.aggregator.normalize import BatchError, StreamDecoder
from sysmon.core.metrics import GAUGE, RATE, Limits, series_id
from sysmon.pb.v1 import metrics_pb2

NOW_MS = 1_795_000_000_000  # 2026-11-18T...Z, any fixed instant
HOST = "node-1"
SESSION = "sess-a"
CPU = "system.cpu.utilization"
MEM = "system.memory.usage"

Decl = tuple[int, str, Mapping[str, str]] | tuple[int, str, Mapping[str, str], str, int]
FrameT = tuple[int, Sequence[int], Sequence[float]]


def make_batch(
    seq: int = 1,
    series: Iterable[Decl] = (),
    frames: Iterable[FrameT] = (),
    host: str = HOST,
    session: str = SESSION,
) -> metrics_pb2.MetricBatch:
    msg = metrics_pb2.MetricBatch(host_id=host, session_id=session, seq=seq)
    for d in series:
        ref, name, attrs = d[0], d[1], d[2]
        unit, kind = (d[3], d[4]) if len(d) == 5 else ("1", GAUGE)
        msg.series.add(ref=ref, name=name, attributes=dict(attrs), unit=unit, kind=kind)
    for t, refs, values in frames:
        msg.frames.add(time_unix_ms=t, refs=list(refs), values=list(values))
    return msg


def reject(decoder: StreamDecoder, msg: metrics_pb2.MetricBatch, now_ms: int = NOW_MS) -> BatchError:
    with pytest.raises(BatchError) as info:
        decoder.decode(msg, now_ms)
    return info.value


@pytest.fixture
def decoder() -> StreamDecoder:
    return StreamDecoder(Limits())


USER0 = {"cpu": "0", "state": "user"}
IDLE0 = {"cpu": "0", "state": "idle"}


# --- valid batches ----------------------------------------------------------------------------


def test_valid_batch_becomes_normalized_batch_with_global_ids(decoder: StreamDecoder) -> None:
    msg = make_batch(
        seq=1,
        series=[(1, CPU, USER0), (2, CPU, IDLE0), (3, MEM, {"state": "used"}, "By", GAUGE)],
        frames=[(NOW_MS - 5000, [1, 2, 3], [0.25, 0.75, 1024.0]), (NOW_MS, [2, 1], [0.5, 0.5])],
    )
    b = decoder.decode(msg, NOW_MS)

    user, idle, mem = (series_id(HOST, CPU, USER0), series_id(HOST, CPU, IDLE0),
                       series_id(HOST, MEM, {"state": "used"}))
    assert b.key == (HOST, SESSION, 1)
    assert b.times_ms == [NOW_MS - 5000, NOW_MS]
    assert b.frame_ids == [[user, idle, mem], [idle, user]]
    assert b.frame_values == [[0.25, 0.75, 1024.0], [0.5, 0.5]]
    assert b.sample_count == 5
    assert sorted(b.samples()) == sorted([
        (user, NOW_MS - 5000, 0.25), (idle, NOW_MS - 5000, 0.75), (mem, NOW_MS - 5000, 1024.0),
        (idle, NOW_MS, 0.5), (user, NOW_MS, 0.5),
    ])
    by_id = {s.id: s for s in b.series}
    assert set(by_id) == {user, idle, mem}
    assert by_id[mem].name == MEM
    assert dict(by_id[mem].attributes) == {"state": "used"}
    assert by_id[mem].unit == "By"
    assert by_id[mem].kind == GAUGE
    assert by_id[user].host_id == HOST


def test_series_lists_only_series_used_by_the_batch(decoder: StreamDecoder) -> None:
    msg = make_batch(series=[(1, CPU, USER0), (2, CPU, IDLE0)], frames=[(NOW_MS, [2], [0.9])])
    b = decoder.decode(msg, NOW_MS)
    assert [s.id for s in b.series] == [series_id(HOST, CPU, IDLE0)]


def test_refs_declared_earlier_on_the_stream_decode_without_redeclaring(decoder: StreamDecoder) -> None:
    decoder.decode(make_batch(seq=1, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [0.1])]), NOW_MS)
    b = decoder.decode(make_batch(seq=2, frames=[(NOW_MS + 1000, [1], [0.2])]), NOW_MS + 1000)
    assert b.frame_ids == [[series_id(HOST, CPU, USER0)]]
    assert b.frame_values == [[0.2]]
    assert b.seq == 2


def test_identical_redeclaration_is_accepted(decoder: StreamDecoder) -> None:
    # A replayed batch declares the same series again: that is not an error.
    decoder.decode(make_batch(seq=1, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [0.1])]), NOW_MS)
    b = decoder.decode(make_batch(seq=2, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [0.3])]), NOW_MS)
    assert b.frame_values == [[0.3]]


def test_global_ids_do_not_depend_on_stream_refs() -> None:
    a = StreamDecoder(Limits()).decode(
        make_batch(series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [0.1])]), NOW_MS)
    b = StreamDecoder(Limits()).decode(
        make_batch(series=[(42, CPU, USER0)], frames=[(NOW_MS, [42], [0.1])], session="sess-b"), NOW_MS)
    assert a.frame_ids == b.frame_ids == [[series_id(HOST, CPU, USER0)]]


def test_rate_kind_is_kept(decoder: StreamDecoder) -> None:
    b = decoder.decode(
        make_batch(series=[(1, "system.network.io", {"direction": "receive"}, "By/s", RATE)],
                   frames=[(NOW_MS, [1], [12.5])]),
        NOW_MS,
    )
    assert b.series[0].kind == RATE
    assert b.series[0].unit == "By/s"


def test_batch_without_frames_is_accepted_and_empty(decoder: StreamDecoder) -> None:
    b = decoder.decode(make_batch(series=[(1, CPU, USER0)]), NOW_MS)
    assert b.times_ms == []
    assert b.series == []
    assert b.sample_count == 0


def test_timestamps_exactly_at_the_window_edges_are_accepted() -> None:
    lim = Limits()
    d = StreamDecoder(lim)
    lo = NOW_MS - int(lim.max_past.total_seconds() * 1000)
    hi = NOW_MS + int(lim.max_future.total_seconds() * 1000)
    b = d.decode(make_batch(series=[(1, CPU, USER0)], frames=[(lo, [1], [1.0]), (hi, [1], [2.0])]), NOW_MS)
    assert b.times_ms == [lo, hi]


# --- rejected batches: INVALID_ARGUMENT, not fatal ----------------------------------------------


def test_seq_zero_is_rejected(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(seq=0, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [0.1])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message == "batch seq=0: seq must be at least 1"
    assert e.fatal is False


@pytest.mark.parametrize("name", ["1system.cpu", "system-cpu", "system cpu", "cpu/util", "système.cpu"])
def test_name_with_bad_charset_is_rejected(decoder: StreamDecoder, name: str) -> None:
    e = reject(decoder, make_batch(seq=3, series=[(1, name, {})], frames=[(NOW_MS, [1], [0.1])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message.startswith("batch seq=3: name: ")
    assert repr(name) in e.message
    assert "[A-Za-z_][A-Za-z0-9_.]*" in e.message
    assert not e.fatal


def test_too_long_name_is_rejected_naming_the_limit() -> None:
    d = StreamDecoder(Limits(max_name_length=20))
    e = reject(d, make_batch(series=[(1, "a" * 21, {})], frames=[(NOW_MS, [1], [0.1])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "name:" in e.message
    assert "longer than 20 characters" in e.message
    # exactly at the limit is fine
    ok = StreamDecoder(Limits(max_name_length=20)).decode(
        make_batch(series=[(1, "a" * 20, {})], frames=[(NOW_MS, [1], [0.1])]), NOW_MS)
    assert ok.series[0].name == "a" * 20


def test_too_many_attributes_is_rejected() -> None:
    d = StreamDecoder(Limits(max_attributes=2))
    attrs = {"a": "1", "b": "2", "c": "3"}
    e = reject(d, make_batch(series=[(1, CPU, attrs)], frames=[(NOW_MS, [1], [0.1])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"attributes: {CPU} has 3 attributes, more than 2" in e.message


@pytest.mark.parametrize("key", ["1cpu", "cpu-id", "", "k y"])
def test_bad_attribute_key_is_rejected(decoder: StreamDecoder, key: str) -> None:
    e = reject(decoder, make_batch(series=[(1, CPU, {key: "0"})], frames=[(NOW_MS, [1], [0.1])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"attributes: {CPU}: key {key!r}" in e.message


def test_too_long_attribute_key_is_rejected() -> None:
    d = StreamDecoder(Limits(max_attribute_key_length=4))
    e = reject(d, make_batch(series=[(1, CPU, {"abcde": "0"})], frames=[(NOW_MS, [1], [0.1])]))
    assert "key 'abcde'" in e.message
    assert "at most 4 characters" in e.message


def test_unknown_kind_is_rejected(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(series=[(1, CPU, USER0, "1", 7)], frames=[(NOW_MS, [1], [0.1])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{CPU}: unknown kind 7" in e.message


def test_unspecified_kind_is_accepted_as_gauge(decoder: StreamDecoder) -> None:
    b = decoder.decode(make_batch(series=[(1, CPU, USER0, "1", 0)], frames=[(NOW_MS, [1], [0.1])]), NOW_MS)
    assert b.series[0].kind == GAUGE


@pytest.mark.parametrize(
    ("value", "shown"), [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")]
)
def test_non_finite_value_is_rejected_naming_the_series(decoder: StreamDecoder, value: float, shown: str) -> None:
    msg = make_batch(
        seq=9,
        series=[(1, CPU, USER0), (2, CPU, IDLE0)],
        frames=[(NOW_MS - 1000, [1, 2], [0.1, 0.9]), (NOW_MS, [1, 2], [0.2, value])],
    )
    e = reject(decoder, msg)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message == (
        f'batch seq=9: frame 1: {CPU}{{cpu="0",state="idle"}} value {shown} is not a finite number'
    )
    assert not e.fatal


def test_timestamp_too_old_is_out_of_range() -> None:
    lim = Limits()
    d = StreamDecoder(lim)
    lo = NOW_MS - int(lim.max_past.total_seconds() * 1000)
    e = reject(d, make_batch(seq=4, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [1.0]), (lo - 1, [1], [2.0])]))
    assert e.code == grpc.StatusCode.OUT_OF_RANGE
    assert e.message.startswith("batch seq=4: frame 1 time ")
    assert "outside the accepted window" in e.message
    assert "(at most 1 day, 0:00:00 old, 0:05:00 ahead)" in e.message
    assert not e.fatal


def test_timestamp_too_far_in_future_is_out_of_range() -> None:
    d = StreamDecoder(Limits())
    future = NOW_MS + 5 * 60_000 + 1
    e = reject(d, make_batch(series=[(1, CPU, USER0)], frames=[(future, [1], [1.0])]))
    assert e.code == grpc.StatusCode.OUT_OF_RANGE
    assert "frame 0 time" in e.message
    # Times are shown as ISO-8601 UTC, so the sender sees the clock skew.
    assert "2026-11-" in e.message
    assert "+00:00" in e.message


def test_zero_timestamp_is_out_of_range(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(series=[(1, CPU, USER0)], frames=[(0, [1], [1.0])]))
    assert e.code == grpc.StatusCode.OUT_OF_RANGE
    assert "1970-01-01T00:00:00.000+00:00" in e.message


def test_refs_values_length_mismatch_is_rejected(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(series=[(1, CPU, USER0), (2, CPU, IDLE0)], frames=[(NOW_MS, [1, 2], [0.5])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message == "batch seq=1: frame 0 has 2 refs but 1 values"


def test_repeated_ref_in_a_frame_is_rejected(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(series=[(1, CPU, USER0)], frames=[(NOW_MS, [1, 1], [0.5, 0.6])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message == "batch seq=1: frame 0 repeats a series ref"


def test_two_refs_of_one_series_in_a_frame_are_rejected(decoder: StreamDecoder) -> None:
    msg = make_batch(series=[(1, CPU, USER0), (2, CPU, USER0)], frames=[(NOW_MS, [1, 2], [0.1, 0.2])])
    e = reject(decoder, msg)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_ref_is_rejected_naming_the_smallest(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(series=[(1, CPU, USER0)], frames=[(NOW_MS, [1, 9, 5], [0.1, 0.2, 0.3])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message == "batch seq=1: frame 0 uses ref 5, which this stream never declared"


def test_ref_zero_in_a_declaration_is_rejected(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(series=[(0, CPU, USER0)]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message == f"batch seq=1: series.ref: {CPU}: ref 0 is reserved"


def test_ref_zero_in_a_frame_is_an_unknown_ref(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(series=[(1, CPU, USER0)], frames=[(NOW_MS, [0, 1], [0.1, 0.2])]))
    assert e.message == "batch seq=1: frame 0 uses ref 0, which this stream never declared"


def test_redeclaring_a_ref_differently_is_rejected(decoder: StreamDecoder) -> None:
    decoder.decode(make_batch(seq=1, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [0.1])]), NOW_MS)
    e = reject(decoder, make_batch(seq=2, series=[(1, CPU, IDLE0)], frames=[(NOW_MS, [1], [0.2])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message == (
        f'batch seq=2: ref 1 is already {CPU}{{cpu="0",state="user"}} on this stream; '
        f'it cannot become {CPU}{{cpu="0",state="idle"}}'
    )
    assert not e.fatal
    # The original meaning stays.
    b = decoder.decode(make_batch(seq=3, frames=[(NOW_MS, [1], [0.3])]), NOW_MS)
    assert b.frame_ids == [[series_id(HOST, CPU, USER0)]]


def test_redeclaring_a_ref_with_another_unit_is_rejected(decoder: StreamDecoder) -> None:
    decoder.decode(make_batch(seq=1, series=[(1, MEM, {}, "By", GAUGE)]), NOW_MS)
    e = reject(decoder, make_batch(seq=2, series=[(1, MEM, {}, "KiBy", GAUGE)]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ref 1 is already" in e.message


# --- resource limits: RESOURCE_EXHAUSTED ---------------------------------------------------------


def test_too_many_series_per_stream_is_resource_exhausted() -> None:
    d = StreamDecoder(Limits(max_series_per_stream=2))
    d.decode(make_batch(seq=1, series=[(1, CPU, USER0), (2, CPU, IDLE0)]), NOW_MS)
    e = reject(d, make_batch(seq=2, series=[(3, MEM, {})], frames=[(NOW_MS, [1], [0.5])]))
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.message == "batch seq=2: more than 2 series on one stream"
    assert not e.fatal
    assert set(d.refs) == {1, 2}
    # The series already declared still decode.
    b = d.decode(make_batch(seq=3, frames=[(NOW_MS, [1, 2], [0.5, 0.5])]), NOW_MS)
    assert b.sample_count == 2


def test_series_over_the_stream_limit_in_one_batch_keeps_the_first_ones() -> None:
    d = StreamDecoder(Limits(max_series_per_stream=2))
    e = reject(d, make_batch(series=[(1, CPU, USER0), (2, CPU, IDLE0), (3, MEM, {})]))
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert set(d.refs) == {1, 2}


def test_too_many_series_declared_in_one_batch_is_resource_exhausted() -> None:
    d = StreamDecoder(Limits(max_series_per_batch=2))
    e = reject(d, make_batch(seq=5, series=[(1, CPU, USER0), (2, CPU, IDLE0), (3, MEM, {})]))
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.message == "batch seq=5: declares 3 series, more than 2"
    assert d.refs == {}


def test_too_many_frames_is_resource_exhausted() -> None:
    d = StreamDecoder(Limits(max_frames_per_batch=2))
    frames = [(NOW_MS - i, [1], [float(i)]) for i in range(3)]
    e = reject(d, make_batch(seq=6, series=[(1, CPU, USER0)], frames=frames))
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.message == "batch seq=6: 3 frames exceed the limit of 2"
    assert not e.fatal
    ok = d.decode(make_batch(seq=7, frames=frames[:2]), NOW_MS)
    assert len(ok.times_ms) == 2


def test_too_many_samples_is_resource_exhausted() -> None:
    d = StreamDecoder(Limits(max_samples_per_batch=3))
    msg = make_batch(seq=7, series=[(1, CPU, USER0), (2, CPU, IDLE0)],
                     frames=[(NOW_MS - 1, [1, 2], [0.1, 0.2]), (NOW_MS, [1, 2], [0.3, 0.4])])
    e = reject(d, msg)
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.message == "batch seq=7: 4 samples exceed the limit of 3"
    ok = d.decode(make_batch(seq=8, frames=[(NOW_MS - 1, [1, 2], [0.1, 0.2]), (NOW_MS, [1], [0.3])]), NOW_MS)
    assert ok.sample_count == 3


# --- fatal errors: identity ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["", "-node", "node 1", "node/1", "x" * 254])
def test_invalid_host_id_is_fatal(host: str) -> None:
    d = StreamDecoder(Limits())
    e = reject(d, make_batch(host=host, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [0.1])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.fatal is True
    assert e.message.startswith("host_id: ")


@pytest.mark.parametrize("session", ["", "bad session", "s" * 65])
def test_invalid_session_id_is_fatal(session: str) -> None:
    d = StreamDecoder(Limits())
    e = reject(d, make_batch(session=session))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.fatal is True
    assert e.message.startswith("session_id: ")


@pytest.mark.parametrize(("host", "session"), [("node-2", SESSION), (HOST, "sess-b")])
def test_host_or_session_changing_mid_stream_is_fatal(decoder: StreamDecoder, host: str, session: str) -> None:
    decoder.decode(make_batch(seq=1, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [0.1])]), NOW_MS)
    e = reject(decoder, make_batch(seq=2, host=host, session=session, frames=[(NOW_MS, [1], [0.2])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.fatal is True
    assert e.message == (
        f"a Push stream carries one host and session: got {host}/{session} after {HOST}/{SESSION}"
    )


def test_only_identity_errors_are_fatal() -> None:
    cases = [
        make_batch(seq=0),
        make_batch(seq=2, series=[(0, CPU, {})]),
        make_batch(seq=3, frames=[(NOW_MS, [77], [1.0])]),
        make_batch(seq=4, series=[(1, CPU, USER0)], frames=[(1, [1], [1.0])]),
        make_batch(seq=5, frames=[(NOW_MS, [1], [math.nan])]),
    ]
    d = StreamDecoder(Limits(max_frames_per_batch=5))
    for msg in cases:
        assert reject(d, msg).fatal is False
    # And the stream goes on.
    assert d.decode(make_batch(seq=6, frames=[(NOW_MS, [1], [1.0])]), NOW_MS).sample_count == 1


# --- declarations survive a rejected batch -----------------------------------------------------


def test_valid_declarations_of_a_rejected_batch_stay_declared(decoder: StreamDecoder) -> None:
    msg = make_batch(
        seq=1,
        series=[(1, CPU, USER0), (2, "bad name", {}), (3, CPU, IDLE0)],
        frames=[(NOW_MS, [1, 3], [0.1, 0.9])],
    )
    e = reject(decoder, msg)
    assert "name: 'bad name'" in e.message
    # The collector counts refs 1 and 3 as declared and sends them bare from now on.
    b = decoder.decode(make_batch(seq=2, frames=[(NOW_MS, [1, 3], [0.2, 0.8])]), NOW_MS)
    assert b.frame_ids == [[series_id(HOST, CPU, USER0), series_id(HOST, CPU, IDLE0)]]
    assert 2 not in decoder.refs


def test_declarations_stay_when_a_frame_is_rejected(decoder: StreamDecoder) -> None:
    reject(decoder, make_batch(seq=1, series=[(1, CPU, USER0)], frames=[(NOW_MS, [1], [math.inf])]))
    b = decoder.decode(make_batch(seq=2, frames=[(NOW_MS, [1], [0.5])]), NOW_MS)
    assert b.frame_values == [[0.5]]


def test_first_declaration_error_is_reported(decoder: StreamDecoder) -> None:
    e = reject(decoder, make_batch(series=[(1, "9bad", {}), (0, CPU, {})]))
    assert "name: '9bad'" in e.message
    assert "ref 0" not in e.message


# --- bounds stored as int8, per-host limits, the caller's host ----------------------------------


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1])
def test_seq_beyond_int8_is_rejected_alone(decoder: StreamDecoder, seq: int) -> None:
    e = reject(decoder, make_batch(seq, [(1, CPU, USER0)], [(NOW_MS, [1], [0.5])]))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not e.fatal
    assert "at most 2^63-1" in e.message
    # The stream goes on: the next batch decodes.
    assert decoder.decode(make_batch(2**63 - 1, frames=[(NOW_MS, [1], [0.5])]), NOW_MS).seq == 2**63 - 1


def test_series_limit_counts_every_stream_of_a_host() -> None:
    from sysmon.aggregator.host_limits import HostSeries

    registry = HostSeries(limit=4)
    limits = Limits(max_series_per_host=4)
    first, second = StreamDecoder(limits, host_series=registry), StreamDecoder(limits, host_series=registry)
    first.decode(make_batch(1, [(i, CPU, {"cpu": str(i)}) for i in (1, 2, 3)], session="s1"), NOW_MS)
    # The same series on another stream counts once; a fourth is allowed, a fifth is not.
    second.decode(make_batch(1, [(1, CPU, {"cpu": "1"}), (2, CPU, {"cpu": "4"})], session="s2"), NOW_MS)
    e = reject(second, make_batch(2, [(3, CPU, {"cpu": "5"})], session="s2"))
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already has 4 active series" in e.message
    assert "limit per host (4)" in e.message
    # Another host has its own count.
    other = StreamDecoder(limits, host_series=registry)
    other.decode(make_batch(1, [(1, CPU, {"cpu": "5"})], host="node-2"), NOW_MS)
    # A stream that ends gives its series back.
    first.release()
    second.decode(make_batch(3, [(3, CPU, {"cpu": "5"})], session="s2"), NOW_MS)
    assert registry.count(HOST) == 3


def test_a_credential_for_another_host_ends_the_stream() -> None:
    decoder = StreamDecoder(Limits(), may_send_for=lambda h: h == "web-1")
    e = reject(decoder, make_batch(1, host="web-2"))
    assert (e.code, e.fatal) == (grpc.StatusCode.PERMISSION_DENIED, True)
    assert "'web-2'" in e.message
    assert StreamDecoder(Limits(), may_send_for=lambda h: h == "web-1").decode(
        make_batch(1, host="web-1"), NOW_MS).host_id == "web-1"
