"""Per-host limits: active series over every stream, and a samples/s token bucket."""

from __future__ import annotations

import pytest

from sysmon.aggregator.host_limits import HostBudget, HostSeries


def test_active_series_are_counted_once_per_host_and_released_with_their_streams() -> None:
    reg = HostSeries(limit=2)
    assert reg.acquire("a", 1)
    assert reg.acquire("a", 1)  # a second stream using the same series
    assert reg.acquire("a", 2)
    assert not reg.acquire("a", 3)
    assert reg.acquire("b", 3)  # hosts do not share a limit
    reg.release("a", [1])
    assert not reg.acquire("a", 3)  # series 1 is still on the other stream
    reg.release("a", [1, 2])
    assert reg.count("a") == 0
    assert reg.acquire("a", 3)


def test_budget_admits_a_burst_then_the_rate() -> None:
    b = HostBudget(rate=100, burst=1000)
    assert b.take("h", 1000, now=0.0) == 0.0  # the whole burst at once
    wait = b.take("h", 50, now=0.0)
    assert wait == pytest.approx(0.5)  # 50 more samples at 100/s
    assert b.take("h", 50, now=0.1) == 0.0  # 10 samples' worth back: positive, so admitted (-40)
    assert b.take("h", 50, now=0.2) == pytest.approx(0.8)  # -30 now: 80 samples to pay for
    assert b.take("h", 50, now=1.0) == 0.0
    assert b.take("other", 1000, now=1.0) == 0.0  # each host has its own bucket


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_is_paid_for_after() -> None:
    b = HostBudget(rate=10, burst=100)
    assert b.take("h", 500, now=0.0) == 0.0
    # 400 in debt: 40 s until the host may send anything again.
    assert b.take("h", 1, now=0.0) == pytest.approx(40.1)
    assert b.take("h", 1, now=40.2) == 0.0


def test_idle_hosts_are_forgotten_once_refilled() -> None:
    b = HostBudget(rate=10, burst=100)
    b.take("h", 100, now=0.0)
    b.forget_idle(now=5.0)
    assert "h" in b._tokens
    b.forget_idle(now=10.0)
    assert "h" not in b._tokens
