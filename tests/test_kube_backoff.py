"""Backoff of the watch loops: exponential, jittered, low cap early in an outage, and
never more than five seconds before a kind has listed (so a granted RBAC rule shows at
once). The live test runs the real source against FakeKube with a clock that sleeps
instantly, so minutes of 403s take a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from clusterdns.config import SourceSpec
from clusterdns.source.kube import Backoff, KubeSource, Tuning
from conftest import demo_config
from fakekube import FakeKube


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


def test_before_the_first_list_the_backoff_stays_at_most_five_seconds_however_long() -> None:
    clock = FakeClock()
    backoff = Backoff(Tuning(), clock, rng=lambda: 1.0)
    delays = []
    for _ in range(200):  # about ten minutes of failures
        delays.append(backoff.next_delay(listed=False))
        clock.now += delays[-1]
    assert clock.now - 1000.0 > 600
    assert max(delays) == 5.0
    assert delays[-1] == 5.0
    assert backoff.next_delay(retry_after=12.0, listed=False) == 12.0  # the server's word


# --------------------------------------------------------------------------- live


class SteppingClock:
    """The source's clock and sleep: a sleep moves the clock at once and records who
    slept how long (by the reflector task's name)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[tuple[str, float]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        task = asyncio.current_task()
        self.slept.append((task.get_name() if task is not None else "?", seconds))
        self.now += seconds
        await asyncio.sleep(0)

    def slept_by(self, name: str) -> list[float]:
        return [seconds for who, seconds in self.slept if who == name]


async def test_a_kind_forbidden_for_minutes_is_retried_every_five_seconds_and_syncs_once_granted(
        fake: FakeKube, tmp_path: Path) -> None:
    fake.forbid("endpointslices")
    clock = SteppingClock()
    config = demo_config(source=SourceSpec("kubernetes"),
                         kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
    source = KubeSource(config, clock=clock, sleep=clock.sleep, rng=lambda: 1.0)
    await source.connect()
    task = asyncio.create_task(source.run(lambda: None))
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + 20
        while clock.now - 1000.0 < 600:  # ten minutes of 403s, in the source's time
            assert loop.time() < deadline, f"only {clock.now - 1000.0:.0f} s went by"
            await asyncio.sleep(0.005)
        delays = clock.slept_by("watch-endpointslices")
        assert max(delays) == 5.0, delays  # not the 30 s of a long outage once listed
        assert len(delays) > 100, delays
        assert not source.synced
        forbidden = [r for r in fake.requests if r.status == 403]
        assert {r.path for r in forbidden} == {"/apis/discovery.k8s.io/v1/endpointslices"}

        fake.allow("endpointslices")
        granted_at = clock.now
        while not source.synced:
            assert loop.time() < deadline, "not synced after the rule was granted"
            await asyncio.sleep(0.005)
        assert clock.now - granted_at <= 5.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
