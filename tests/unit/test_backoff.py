"""Retry delays (exponential, jittered, capped, hint honoured) and the interruptible wait."""

from __future__ import annotations

import asyncio
import random
import time

import grpc

from sysmon.core.backoff import RETRYABLE, Backoff, wait_or_stop


def test_exponential_without_jitter_doubles_up_to_the_cap() -> None:
    b = Backoff(initial=1.0, maximum=30.0, jitter=(1.0, 1.0))
    assert [b.next_delay() for _ in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert b.attempt == 8


def test_custom_initial() -> None:
    b = Backoff(initial=0.25, maximum=10.0, jitter=(1.0, 1.0))
    assert [b.next_delay() for _ in range(4)] == [0.25, 0.5, 1.0, 2.0]


def test_jitter_stays_within_0_8_and_1_2_of_the_base() -> None:
    b = Backoff(initial=1.0, maximum=1000.0, rng=random.Random(1234))
    seen_low = seen_high = False
    for _ in range(200):
        b.reset()
        for attempt in range(6):
            base = 2.0**attempt
            d = b.next_delay()
            assert 0.8 * base <= d <= 1.2 * base
            seen_low |= d < base
            seen_high |= d > base
    assert seen_low, "jitter shortens some delays"
    assert seen_high, "jitter lengthens some delays"


def test_jittered_delay_never_exceeds_the_cap() -> None:
    b = Backoff(initial=1.0, maximum=30.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(60)]
    assert max(delays) <= 30.0
    assert min(delays[10:]) >= 0.8 * 30.0


def test_same_seed_same_delays() -> None:
    a = Backoff(rng=random.Random(42))
    b = Backoff(rng=random.Random(42))
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]


def test_longer_hint_is_honoured_even_past_the_cap() -> None:
    b = Backoff(initial=1.0, maximum=30.0, jitter=(1.0, 1.0))
    assert b.next_delay(hint=5.0) == 5.0
    assert b.next_delay(hint=120.0) == 120.0


def test_shorter_hint_does_not_shorten_the_delay() -> None:
    b = Backoff(initial=1.0, maximum=30.0, jitter=(1.0, 1.0), attempt=3)
    assert b.next_delay(hint=0.5) == 8.0


def test_hint_still_advances_the_attempt() -> None:
    b = Backoff(jitter=(1.0, 1.0))
    b.next_delay(hint=10.0)
    assert b.next_delay() == 2.0


def test_reset_starts_over() -> None:
    b = Backoff(jitter=(1.0, 1.0))
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.attempt == 0
    assert b.next_delay() == 1.0


def test_many_attempts_stay_at_the_cap() -> None:
    b = Backoff(initial=1.0, maximum=30.0, jitter=(1.0, 1.0))
    for _ in range(1100):
        assert b.next_delay() <= 30.0


def test_retryable_codes() -> None:
    assert grpc.StatusCode.UNAVAILABLE in RETRYABLE
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in RETRYABLE
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                 grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.OK):
        assert code not in RETRYABLE


# --- wait_or_stop ------------------------------------------------------------------------------


async def test_wait_or_stop_returns_at_once_when_already_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    started = time.monotonic()
    assert await asyncio.wait_for(wait_or_stop(stop, 3600), timeout=5) is True
    assert time.monotonic() - started < 1.0


async def test_wait_or_stop_returns_promptly_when_stopped_during_the_wait() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_soon(stop.set)
    started = time.monotonic()
    # An hour-long wait that must end as soon as the event is set, well before this deadline.
    assert await asyncio.wait_for(wait_or_stop(stop, 3600), timeout=5) is True
    assert time.monotonic() - started < 1.0


async def test_wait_or_stop_times_out_without_stop() -> None:
    stop = asyncio.Event()
    assert await wait_or_stop(stop, 0.01) is False
    assert not stop.is_set()


async def test_wait_or_stop_zero_seconds() -> None:
    stop = asyncio.Event()
    assert await wait_or_stop(stop, 0) is False
