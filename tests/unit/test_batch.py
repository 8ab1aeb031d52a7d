"""NormalizedBatch and its bus form (SamplesEvent): every consumer decodes what the aggregator sent."""

from __future__ import annotations

import math

from sysmon.core.batch import NormalizedBatch, from_event, to_event
from sysmon.core.metrics import GAUGE, RATE, Series, series_id
from sysmon.pb.v1 import events_pb2

HOST = "node-1"


def sample_batch() -> NormalizedBatch:
    cpu = Series(series_id(HOST, "system.cpu.utilization", {"cpu": "0", "state": "user"}), HOST,
                 "system.cpu.utilization", {"cpu": "0", "state": "user"}, "1", GAUGE)
    net = Series(series_id(HOST, "system.network.io", {"direction": "receive"}), HOST, "system.network.io",
                 {"direction": "receive"}, "By/s", RATE)
    up = Series(series_id(HOST, "system.uptime", {}), HOST, "system.uptime", {}, "s", GAUGE)
    return NormalizedBatch(
        host_id=HOST,
        session_id="sess-a",
        seq=17,
        series=[cpu, net, up],
        times_ms=[1_800_000_000_000, 1_800_000_005_000],
        frame_ids=[[cpu.id, net.id, up.id], [net.id]],
        frame_values=[[0.25, 1e9, 12345.0], [-0.0]],
    )


def test_round_trip_through_the_event() -> None:
    b = sample_batch()
    back = from_event(to_event(b, stored_unix_ms=1_800_000_006_000))
    assert back == b


def test_round_trip_through_the_wire_bytes() -> None:
    b = sample_batch()
    wire = to_event(b, stored_unix_ms=1).SerializeToString()
    assert from_event(events_pb2.SamplesEvent.FromString(wire)) == b


def test_event_fields() -> None:
    b = sample_batch()
    ev = to_event(b, stored_unix_ms=1_800_000_006_000)
    assert (ev.host_id, ev.session_id, ev.seq, ev.stored_unix_ms) == (HOST, "sess-a", 17, 1_800_000_006_000)
    assert [s.id for s in ev.series] == [s.id for s in b.series]
    assert ev.series[1].unit == "By/s"
    assert ev.series[1].kind == RATE
    assert dict(ev.series[0].attributes) == {"cpu": "0", "state": "user"}
    assert [f.time_unix_ms for f in ev.frames] == b.times_ms
    assert [list(f.series_ids) for f in ev.frames] == b.frame_ids
    assert [list(f.values) for f in ev.frames] == b.frame_values


def test_round_trip_keeps_non_finite_values_and_extreme_ids() -> None:
    s = Series(-(2**63), HOST, "x", {}, "", GAUGE)
    b = NormalizedBatch(HOST, "s", 1, [s], [0], [[s.id]], [[math.inf]])
    back = from_event(to_event(b, 0))
    assert back.frame_ids == [[-(2**63)]]
    assert back.frame_values == [[math.inf]]
    assert back.series[0].id == -(2**63)


def test_round_trip_of_an_empty_batch() -> None:
    b = NormalizedBatch(HOST, "s", 3, [])
    assert from_event(to_event(b, 0)) == b


def test_batch_properties() -> None:
    b = sample_batch()
    assert b.key == (HOST, "sess-a", 17)
    assert b.sample_count == 4
    assert b.min_ts == 1_800_000_000_000
    assert b.max_ts == 1_800_000_005_000
    assert list(b.samples()) == [
        (b.series[0].id, 1_800_000_000_000, 0.25),
        (b.series[1].id, 1_800_000_000_000, 1e9),
        (b.series[2].id, 1_800_000_000_000, 12345.0),
        (b.series[1].id, 1_800_000_005_000, -0.0),
    ]


def test_decoded_series_carry_the_event_host() -> None:
    back = from_event(to_event(sample_batch(), 0))
    assert {s.host_id for s in back.series} == {HOST}
    assert isinstance(back.series[0].attributes, dict)
