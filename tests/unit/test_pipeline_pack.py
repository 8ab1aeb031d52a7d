"""Packing batches into SQS messages and calls: every limit SQS sets, and nothing lost or doubled."""

from __future__ import annotations

import random

import pytest

from sysmon.core.metrics import series_id
from sysmon.pb.v1 import events_pb2
from sysmon.pipeline import pack, samples, wire
from tests.pipeline_helpers import recorded_events


def _keys_and_samples(messages: list[wire.Encoded]) -> tuple[list[samples.PartKey], int]:
    keys, n = [], 0
    for m in messages:
        evs = samples.check(wire.decode(m.body, m.attributes).events).events
        keys += [samples.part_key(ev) for ev in evs]
        n += sum(len(f.values) for ev in evs for f in ev.frames)
    return keys, n


def test_messages_and_calls_stay_within_sqs_limits_and_carry_every_sample() -> None:
    events = recorded_events([f"node-{i}" for i in range(8)], frames=60, per_batch=6)
    packer = pack.Packer(message_bytes=64 * 1024)
    messages = packer.pack(events)
    assert all(m.size <= 64 * 1024 for m in messages)
    assert all(m.encoding == wire.DEFLATE for m in messages)
    # Deflate learnt: messages are filled well past what the raw size alone would allow.
    assert len(messages) < sum(ev.ByteSize() for ev in events) * 4 / 3 / (64 * 1024) / 2
    keys, n = _keys_and_samples(messages)
    assert keys == [samples.part_key(ev) for ev in events]
    assert n == sum(len(f.values) for ev in events for f in ev.frames)
    for call in pack.calls(messages):
        assert 1 <= len(call) <= wire.MAX_BATCH_MESSAGES
        assert sum(m.size for m in call) <= wire.MAX_CALL_BYTES
    assert sum(len(c) for c in pack.calls(messages)) == len(messages)


def test_a_batch_larger_than_a_message_is_sent_in_parts_the_handler_tells_apart() -> None:
    rng = random.Random(7)
    ev = events_pb2.SamplesEvent(host_id="big", session_id="s", seq=3)
    ids = []
    for i in range(2000):
        attrs = {"pid": str(i), "name": f"p{rng.random()}"}
        sid = series_id("big", "process.memory.usage", attrs)
        ids.append(sid)
        ev.series.add(id=sid, name="process.memory.usage", attributes=attrs, unit="By", kind=1)
    for t in range(12):
        ev.frames.add(time_unix_ms=1_700_000_000_000 + 5000 * t, series_ids=ids,
                      values=[rng.random() * 1e9 for _ in ids])
    messages = pack.Packer(message_bytes=32 * 1024).pack([ev])
    assert len(messages) > 1
    assert all(m.size <= 32 * 1024 for m in messages)
    keys, n = _keys_and_samples(messages)
    assert len(set(keys)) == len(keys)  # distinct parts: none is taken for a delivery again
    assert n == 12 * 2000
    # Each part describes only the series its frames use (so each stays within the limit).
    for m in messages:
        for part in wire.decode(m.body, m.attributes).events:
            assert {s.id for s in part.series} == {i for f in part.frames for i in f.series_ids}


def test_incompressible_payloads_go_uncompressed() -> None:
    rng = random.Random(1)
    ev = events_pb2.SamplesEvent(host_id="h", session_id="s", seq=1)
    sid = series_id("h", "x", {})
    ev.series.add(id=sid, name="x", unit="", kind=1)
    ev.frames.add(time_unix_ms=1, series_ids=[sid], values=[rng.random()])
    enc = wire.encode([ev])
    assert enc.encoding == wire.IDENTITY
    assert wire.decode(enc.body, enc.attributes).events[0] == ev


def test_limits_are_named() -> None:
    with pytest.raises(ValueError, match="between 16384 and 262144"):
        pack.Packer(message_bytes=300 * 1024)
