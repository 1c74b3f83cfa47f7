"""Backoff of the watch loops: exponential, jittered, low cap early in an outage."""

from __future__ import annotations

from clusterdns.source.kube import Backoff, Tuning


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_from_the_base_and_stays_under_a_second_in_the_first_minute() -> None:
    clock = FakeClock()
    backoff = Backoff(Tuning(), clock, rng=lambda: 1.0)  # no jitter: the ceiling itself
    delays = []
    for _ in range(8):
        delays.append(backoff.next_delay())
        clock.now += delays[-1]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(delays) == 1.0


def test_backoff_cap_rises_after_the_first_minute_of_an_outage() -> None:
    clock = FakeClock()
    backoff = Backoff(Tuning(), clock, rng=lambda: 1.0)
    backoff.next_delay()
    clock.now += 61
    late = [backoff.next_delay() for _ in range(12)]
    assert max(late) == 30.0


def test_jitter_keeps_each_delay_between_half_and_all_of_the_ceiling() -> None:
    clock = FakeClock()
    low = Backoff(Tuning(), clock, rng=lambda: 0.0)
    assert low.next_delay() == 0.05


def test_retry_after_wins_when_it_is_longer_than_the_backoff() -> None:
    backoff = Backoff(Tuning(), FakeClock(), rng=lambda: 1.0)
    assert backoff.next_delay(retry_after=3.0) == 3.0


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(Tuning(), FakeClock(), rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.1
