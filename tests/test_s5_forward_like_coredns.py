"""§S5 Out-of-zone names, as CoreDNS's ``forward`` and ``cache`` handle them.

The real App forwards to ``tests/upstream.py``'s FakeUpstreams over loopback; dnspython
asks. Covered: cached answers repeated by the fast path with TTLs counting down to the
second (positive and negative) and dropped when they expire; prefetching of a popular
answer before it expires; an upstream marked down after ``forward_max_fails`` failures
and back once its health check is answered, with a log line each way; the total
deadline of a client query when every upstream is dead; the three policies; one UDP
socket per upstream reused until it expires; TCP to the upstream for TCP clients,
``forward_prefer_udp`` and ``forward_force_tcp``. The forwarder's clock is swapped for a
manual one where TTLs are checked (its injection point), so nothing sleeps for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import dns.edns
import dns.rcode
import pytest
from test_s5_forwarding import (
    ManualClock,
    cache_hits,
    forwarder,
    forwarding,
    manual_clock,
    ttls,
)
from upstream import FakeUpstream

from conftest import RunningServer, addresses, wait_until

ServerFactory = Callable[..., RunningServer]


def upstream_count(up: FakeUpstream, name: str, rdtype: str | None = None) -> int:
    return up.count(name, rdtype)


# ------------------------------------------------------------------- the fast path


def test_s5_a_repeated_cached_answer_counts_its_ttl_down_to_the_second(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    up = upstreams()
    server = forwarding(make_server, up.address)
    clock = manual_clock(server)
    assert ttls(server.ask("example.com", "A")) == [300]  # from the upstream
    for advance, expected in ((0, 300), (0.4, 300), (0.7, 299), (100, 199), (98.5, 101)):
        clock.advance(advance)
        reply = server.ask("example.com", "A")  # the same query: the fast path
        assert addresses(reply) == ["192.0.2.1"] and ttls(reply) == [expected], advance
    assert up.count("example.com", "A") == 1
    assert cache_hits(server, "success") == 5
    clock.advance(101)  # 300 s after it was cached: expired, asked again
    assert ttls(server.ask("example.com", "A")) == [300]
    assert up.count("example.com", "A") == 2


def test_s5_a_repeated_negative_answer_counts_its_soa_ttl_down(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    up = upstreams()
    server = forwarding(make_server, up.address)
    clock = manual_clock(server)
    first = server.ask("nope.example.com", "A")
    assert first.rcode() == dns.rcode.NXDOMAIN and ttls(first, "authority") == [60]
    clock.advance(20)
    again = server.ask("nope.example.com", "A")
    assert again.rcode() == dns.rcode.NXDOMAIN and ttls(again, "authority") == [40]
    assert up.count("nope.example.com") == 1
    assert cache_hits(server, "denial") == 1
    clock.advance(41)
    server.ask("nope.example.com", "A")
    assert up.count("nope.example.com") == 2


def test_s5_the_fast_path_keeps_the_letter_case_and_id_of_each_query(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    up = upstreams()
    server = forwarding(make_server, up.address)
    for qid, spelling in ((1, "ExAmPle.com."), (2, "ExAmPle.com."), (3, "EXAMPLE.COM.")):
        reply = server.ask(spelling, "A", id=qid)
        assert reply.id == qid and reply.question[0].name.to_text() == spelling
        assert reply.answer[0].name.to_text() == spelling
    assert up.count("example.com", "A") == 1


def test_s5_queries_with_edns_options_bypass_the_fast_path_but_use_the_cache(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    up = upstreams()
    server = forwarding(make_server, up.address)
    cookie = [dns.edns.GenericOption(dns.edns.COOKIE, b"\x01" * 8)]
    for _ in range(3):
        assert addresses(server.ask("example.com", "A", options=cookie)) == ["192.0.2.1"]
    stats = server.call(lambda: forwarder(server).stats)
    assert stats.cache_hits["success"] == 2  # the forwarder's cache, not the fast path
    assert up.count("example.com", "A") == 1


# ---------------------------------------------------------------------- prefetch


def test_s5_a_popular_answer_is_fetched_again_before_it_expires(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    up = upstreams()
    server = forwarding(make_server, up.address, cache_prefetch=2, cache_prefetch_window=600,
                        cache_prefetch_percentage=10)
    clock: ManualClock = manual_clock(server)
    server.ask("example.com", "A")
    for _ in range(3):  # popular: asked more than twice
        clock.advance(60)
        server.ask("example.com", "A")
    clock.advance(101)  # 281 s after it was cached, 19 s left: under 10% of 300
    assert ttls(server.ask("example.com", "A")) == [19]  # still the old answer...
    wait_until(lambda: up.count("example.com", "A") == 2, 5, "the prefetch")  # ...refreshed
    assert server.call(lambda: forwarder(server).stats.prefetches) == 1
    clock.advance(25)  # past the old answer's expiry: the prefetched one answers
    assert ttls(server.ask("example.com", "A")) == [275]
    assert up.count("example.com", "A") == 2


def test_s5_an_answer_asked_for_once_is_not_prefetched(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    up = upstreams()
    server = forwarding(make_server, up.address, cache_prefetch=3)
    clock = manual_clock(server)
    server.ask("example.com", "A")
    clock.advance(290)
    server.ask("example.com", "A")
    time.sleep(0.3)
    assert up.count("example.com", "A") == 1


# ------------------------------------------------------------------------- health


def test_s5_an_upstream_failing_max_fails_times_is_marked_down_then_back(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    flaky, good = upstreams(), upstreams()
    flaky.silent = True
    server = forwarding(make_server, flaky.address, good.address, forward_policy="sequential",
                        forward_max_fails=2, forward_timeout=0.3, forward_health_check=0.1,
                        loop_detect=False)
    for n in range(2):  # two failures in a row (each query then answered by the next one)
        reply = server.ask(f"x{n}.example.com", "A", timeout=5)
        assert reply.rcode() == dns.rcode.NXDOMAIN
    assert flaky.count("x0.example.com") == 1 and good.count("x0.example.com") == 1
    wait_until(lambda: any("is down after 2 failures" in r.getMessage()
                           for r in caplog.records), 5, "the down line")
    before = flaky.count("www.example.com")
    assert addresses(server.ask("www.example.com", "A", timeout=5)) == ["192.0.2.2"]
    assert flaky.count("www.example.com") == before  # not asked: it is down
    probes = len([s for s in flaky.seen if s.rdtype == "NS"])
    wait_until(lambda: len([s for s in flaky.seen if s.rdtype == "NS"]) > probes + 1, 5,
               "health checks in the background")
    flaky.silent = False
    wait_until(lambda: any("is back after" in r.getMessage() for r in caplog.records), 5,
               "the back line")
    server.ask("example.com", "AAAA", timeout=5)
    assert flaky.count("example.com", "AAAA") == 1  # first in line again


def test_s5_with_every_upstream_dead_the_answer_is_servfail_within_the_deadline(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    dead = [upstreams() for _ in range(3)]
    for up in dead:
        up.silent = True
    server = forwarding(make_server, *(up.address for up in dead), forward_timeout=1.0,
                        forward_deadline=2.0, loop_detect=False)
    started = time.monotonic()
    reply = server.ask("example.com", "A", timeout=10)
    waited = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert "within 2 s" in (reply.extended_errors()[0].text or "")
    assert sum(up.count("example.com") for up in dead) == 2  # two 1-s tries fit in 2 s
    assert waited < 4.0  # well before dig (5 s) or glibc (5 s) give up


# ----------------------------------------------------------------------- policies


@pytest.mark.parametrize(("policy", "check"), [
    ("sequential", lambda counts: counts == [30, 0, 0]),
    ("round_robin", lambda counts: counts == [10, 10, 10]),
    ("random", lambda counts: all(c >= 2 for c in counts) and sum(counts) == 30),
])
def test_s5_the_policy_decides_which_upstream_is_asked_first(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream], policy: str,
        check: Callable[[list[int]], bool]) -> None:
    ups = [upstreams() for _ in range(3)]
    server = forwarding(make_server, *(up.address for up in ups), forward_policy=policy,
                        loop_detect=False)
    for n in range(30):
        server.ask(f"n{n}.example.com", "A")
    counts = [len([s for s in up.seen if s.name.startswith("n")]) for up in ups]
    assert check(counts), counts


# ------------------------------------------------------------------ sockets, TCP


def test_s5_one_udp_socket_per_upstream_is_reused_until_it_expires(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    up = upstreams()
    server = forwarding(make_server, up.address, forward_expire=0.5, loop_detect=False)
    for n in range(10):
        server.ask(f"a{n}.example.com", "A")
    first = {s.port for s in up.seen if s.name.startswith("a")}
    assert len(first) == 1
    time.sleep(0.7)
    server.ask("late.example.com", "A")
    (late,) = {s.port for s in up.seen if s.name == "late.example.com"}
    assert late not in first


@pytest.mark.parametrize(("options", "tcp_client", "transport"), [
    ({}, False, "udp"),
    ({}, True, "tcp"),  # the client's protocol, as CoreDNS does
    ({"forward_prefer_udp": True}, True, "udp"),
    ({"forward_force_tcp": True}, False, "tcp"),
])
def test_s5_the_upstream_is_asked_over_the_protocol_the_options_choose(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream],
        options: dict[str, Any], tcp_client: bool, transport: str) -> None:
    up = upstreams()
    server = forwarding(make_server, up.address, loop_detect=False, **options)
    assert addresses(server.ask("example.com", "A", tcp=tcp_client)) == ["192.0.2.1"]
    assert [s.transport for s in up.seen if s.name == "example.com"] == [transport]
