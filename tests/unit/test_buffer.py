"""The collector's unacknowledged buffer: bounded, oldest first, resent on timeout, nacks probed one at a time."""

from __future__ import annotations

import pytest

from sysmon.agent.buffer import UnackedBuffer
from sysmon.pb.v1 import metrics_pb2

TIMEOUT = 30.0


def frame(i: int) -> metrics_pb2.Frame:
    return metrics_pb2.Frame(time_unix_ms=1_800_000_000_000 + i * 5000, refs=[1], values=[float(i)])


def filled(n: int, capacity: int = 100) -> UnackedBuffer:
    buf = UnackedBuffer(capacity)
    for seq in range(1, n + 1):
        buf.add(seq, frame(seq))
    return buf


def send(buf: UnackedBuffer, now: float) -> list[int]:
    """What the sender does: take what is due and mark it sent at `now`."""
    due = buf.due(now, TIMEOUT)
    for p in due:
        p.sent_at = now
    return [p.seq for p in due]


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        UnackedBuffer(capacity)


def test_empty_buffer() -> None:
    buf = UnackedBuffer(3)
    assert len(buf) == 0
    assert buf.last_seq == 0
    assert buf.due(0.0, TIMEOUT) == []
    assert buf.next_deadline(TIMEOUT) is None
    assert (buf.dropped, buf.acked, buf.rejected) == (0, 0, 0)


def test_bounded_oldest_dropped_and_counted() -> None:
    buf = filled(5, capacity=3)
    assert len(buf) == 3
    assert buf.dropped == 2
    assert [p.seq for p in buf.due(0.0, TIMEOUT)] == [3, 4, 5]
    assert buf.due(0.0, TIMEOUT)[0].frame == frame(3)
    buf.add(6, frame(6))
    assert buf.dropped == 3
    assert [p.seq for p in buf.due(0.0, TIMEOUT)] == [4, 5, 6]


def test_last_seq_is_the_newest() -> None:
    buf = filled(4)
    assert buf.last_seq == 4
    buf.ack([4])
    assert buf.last_seq == 3


def test_ack_removes_and_counts_only_present_batches() -> None:
    buf = filled(5)
    assert buf.ack([1, 3, 99, 3]) == 2
    assert buf.acked == 2
    assert len(buf) == 3
    assert [p.seq for p in buf.due(0.0, TIMEOUT)] == [2, 4, 5]
    assert buf.ack([]) == 0
    assert buf.acked == 2


def test_reject_removes_and_counts() -> None:
    buf = filled(3)
    assert buf.reject(2) is True
    assert buf.reject(2) is False
    assert buf.reject(42) is False
    assert buf.rejected == 1
    assert buf.acked == 0
    assert [p.seq for p in buf.due(0.0, TIMEOUT)] == [1, 3]


def test_due_is_oldest_first_and_limited() -> None:
    buf = filled(10)
    assert [p.seq for p in buf.due(0.0, TIMEOUT, limit=4)] == [1, 2, 3, 4]


def test_sent_batches_are_not_due_until_the_ack_timeout() -> None:
    buf = filled(3)
    assert send(buf, 100.0) == [1, 2, 3]
    assert buf.due(100.0, TIMEOUT) == []
    assert buf.due(100.0 + TIMEOUT - 0.001, TIMEOUT) == []
    # Unacknowledged for the whole timeout: sent again.
    assert send(buf, 100.0 + TIMEOUT) == [1, 2, 3]


def test_only_timed_out_batches_are_resent() -> None:
    buf = filled(2)
    send(buf, 100.0)
    buf.add(3, frame(3))
    assert send(buf, 110.0) == [3]
    assert send(buf, 130.0) == [1, 2]
    assert send(buf, 140.0) == [3]


def test_acked_batches_are_never_resent() -> None:
    buf = filled(3)
    send(buf, 0.0)
    buf.ack([1, 2])
    assert send(buf, TIMEOUT) == [3]


def test_nack_makes_batches_due_again_after_not_before() -> None:
    buf = filled(3)
    send(buf, 100.0)
    buf.ack([1])
    buf.nack([2, 3], not_before=105.0)
    assert buf.due(104.9, TIMEOUT) == []
    # Probing: the oldest nacked batch goes alone; its ack releases the rest.
    assert send(buf, 105.0) == [2]
    assert buf.due(106.0, TIMEOUT) == []
    buf.ack([2])
    assert send(buf, 106.0) == [3]


def test_new_batches_are_not_held_back_by_a_nack() -> None:
    """While storage is down new batches still go out, so the hot tier stays live."""
    buf = filled(4)
    send(buf, 100.0)
    buf.nack([2], not_before=110.0)
    buf.add(5, frame(5))
    assert send(buf, 105.0) == [5]
    assert send(buf, 110.0) == [2]


def test_timed_out_batches_are_resent_while_a_nack_waits() -> None:
    buf = filled(3)
    send(buf, 100.0)
    buf.nack([2], not_before=200.0)
    # At 130 batches 1 and 3 are unacknowledged for the whole timeout; 2 still waits.
    assert send(buf, 130.0) == [1, 3]
    buf.ack([1, 3])
    assert buf.due(199.9, TIMEOUT) == []
    assert send(buf, 200.0) == [2]


def test_nack_of_unknown_seq_is_ignored() -> None:
    buf = filled(2)
    buf.nack([7], not_before=1e9)
    assert [p.seq for p in buf.due(0.0, TIMEOUT)] == [1, 2]


def test_unsend_all_makes_everything_due_at_once() -> None:
    buf = filled(3)
    send(buf, 100.0)
    buf.unsend_all()
    assert send(buf, 100.5) == [1, 2, 3]


def test_next_deadline() -> None:
    buf = filled(2)
    assert buf.next_deadline(TIMEOUT) == 0.0  # never sent: due at once
    send(buf, 100.0)
    assert buf.next_deadline(TIMEOUT) == 100.0 + TIMEOUT
    buf.add(3, frame(3))
    send(buf, 110.0)
    assert buf.next_deadline(TIMEOUT) == 100.0 + TIMEOUT
    buf.ack([1, 2])
    assert buf.next_deadline(TIMEOUT) == 110.0 + TIMEOUT
    buf.nack([3], not_before=115.0)
    assert buf.next_deadline(TIMEOUT) == 115.0
    buf.ack([3])
    assert buf.next_deadline(TIMEOUT) is None


def test_next_deadline_waits_for_a_nacked_batch() -> None:
    buf = filled(2)
    send(buf, 100.0)
    buf.nack([1, 2], not_before=200.0)
    assert buf.due(101.0, TIMEOUT) == []
    assert buf.next_deadline(TIMEOUT) == 200.0


def test_after_a_nack_only_the_oldest_batch_probes_until_an_ack() -> None:
    from sysmon.pb.v1 import metrics_pb2

    buf = UnackedBuffer(100)
    for seq in range(1, 6):
        buf.add(seq, metrics_pb2.Frame(time_unix_ms=seq))
    for p in buf.due(0.0, 30.0):
        p.sent_at = 0.0
    buf.nack([1, 2, 3, 4, 5], not_before=10.0)
    assert buf.due(5.0, 30.0) == []
    probe = buf.due(10.0, 30.0)
    assert [p.seq for p in probe] == [1]
    probe[0].sent_at = 10.0
    # While the probe is out no other nacked batch goes; a new one does.
    buf.add(6, metrics_pb2.Frame(time_unix_ms=6))
    assert [p.seq for p in buf.due(11.0, 30.0)] == [6]
    buf.due(11.0, 30.0)[0].sent_at = 11.0
    assert buf.due(12.0, 30.0) == []
    assert buf.next_deadline(30.0) == 40.0
    buf.ack([1])
    assert [p.seq for p in buf.due(12.0, 30.0)] == [2, 3, 4, 5]
