"""§S5 Out-of-zone names: forwarding through the real server to a real upstream on loopback.

Each test starts the real App (demo cluster) with ``tests/upstream.py``'s FakeUpstream as
its upstream, asks with dnspython (or dig) over real sockets, and checks the reply and
what the upstream saw. Expected values come from the upstream's zone lines below, never
from our server. Cache tests swap the forwarder's clock for a manual one (the injection
point the forwarder offers) so TTL arithmetic is checked without sleeping.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from upstream import BIG_COUNT, EXAMPLE_ZONE, SPOOFED_ADDRESS, FakeUpstream, dead_address

from clusterdns.config import ListenAddr, SourceSpec
from clusterdns.forward import Forwarder, Upstream, read_resolv_conf, upstream_list
from conftest import RunningServer, addresses, rrset_texts, wait_until

ServerFactory = Callable[..., RunningServer]

ZONE = EXAMPLE_ZONE
OUR_ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
EDE_STALE = 3
EDE_NO_REACHABLE_AUTHORITY = 22


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream(ZONE)
    yield up
    up.close()


def forwarder(server: RunningServer) -> Forwarder:
    fwd = server.app.forwarder
    assert fwd is not None
    return fwd


def forwarding(make_server: ServerFactory, *upstream_addresses: str,
               **changes: Any) -> RunningServer:
    """A server forwarding to the given upstreams, once its start-up loop probe is over."""
    server = make_server(upstreams=upstream_addresses, **changes)
    wait_until(lambda: server.call(lambda: forwarder(server).probed.is_set()), 30,
               "the start-up loop probe")
    return server


class ManualClock:
    def __init__(self) -> None:
        # A whole number of seconds: (now + 100) - now is then exactly 100, where from
        # an arbitrary monotonic reading it can come out as 99.99999999999 and the
        # forwarder's whole-second age (and so the TTL asserted) would be one off.
        self.now = float(int(time.monotonic()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cache_hits(server: RunningServer, kind: str) -> int:
    """Answers from the forward cache: given by the forwarder, or by the fast path."""
    def count() -> int:
        fast = server.app.handler.fast
        return forwarder(server).stats.cache_hits[kind] + (
            fast.hits.cache_hits()[kind] if fast is not None else 0)
    return int(server.call(count))


def manual_clock(server: RunningServer) -> ManualClock:
    clock = ManualClock()
    server.call(lambda: setattr(forwarder(server), "clock", clock))
    return clock


def in_our_zones(name: str) -> bool:
    name = name.lower().rstrip(".")
    return any(name == z or name.endswith("." + z) for z in OUR_ZONES)


def ede_list(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(int(opt.code), opt.text or "") for opt in msg.extended_errors()]


def ttls(msg: dns.message.Message, section: str = "answer") -> list[int]:
    return [rrset.ttl for rrset in getattr(msg, section)]


def udp_send(server: RunningServer, name: str, rdtype: str = "A") -> tuple[socket.socket, int]:
    """Send one query without waiting for the reply; (socket, query id)."""
    q = dns.message.make_query(name, rdtype, use_edns=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(30)
    sock.sendto(q.to_wire(), (server.host, server.port))
    return sock, q.id


def udp_receive(sock: socket.socket, ident: int) -> dns.message.Message:
    with sock:
        reply = dns.message.from_wire(sock.recv(65535))
    assert reply.id == ident
    return reply


# ----------------------------------------------------------------------------- relaying


@pytest.mark.parametrize(("rdtype", "expected"), [
    ("A", ["192.0.2.1"]), ("AAAA", ["2001:db8::1"]), ("MX", ["10 mail.example.com."])])
def test_s5_out_of_zone_answers_are_relayed_from_the_upstream(
        make_server: ServerFactory, upstream: FakeUpstream, proto: str, rdtype: str,
        expected: list[str]) -> None:
    server = forwarding(make_server, upstream.address)
    reply = server.ask("example.com", rdtype, tcp=proto == "tcp")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply, rdtype) == expected
    assert reply.flags & dns.flags.RA
    assert not reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.RD  # copied from the query
    assert upstream.count("example.com", rdtype) == 1


def test_s5_nxdomain_is_relayed_with_the_upstream_soa(
        make_server: ServerFactory, upstream: FakeUpstream, proto: str) -> None:
    server = forwarding(make_server, upstream.address)
    reply = server.ask("nope.example.com", "A", tcp=proto == "tcp")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert not reply.answer
    [soa] = reply.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name == dns.name.from_text("example.com")
    assert soa.ttl == 60  # RFC 2308: min(SOA TTL 3600, MINIMUM 60)


def test_s5_relayed_replies_have_the_clients_flags_and_our_own_opt(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, max_udp_size=1232)
    q = dns.message.make_query("example.com", "A", use_edns=0, payload=4096)
    q.flags &= ~dns.flags.RD
    q.flags |= dns.flags.CD
    reply = dns.query.udp(q, server.host, port=server.port, timeout=10)
    assert not reply.flags & dns.flags.RD
    assert reply.flags & dns.flags.CD
    assert reply.flags & dns.flags.RA
    assert reply.edns == 0 and reply.payload == 1232  # ours, not the upstream's
    plain = server.ask("example.com", "A", edns=False)
    assert plain.edns == -1
    assert addresses(plain) == ["192.0.2.1"]


def test_s5_a_reply_too_big_for_the_client_is_truncated_with_tc_and_whole_over_tcp(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address)
    small = server.ask("big.example.com", "A", edns=False)
    assert small.flags & dns.flags.TC
    assert len(small.to_wire()) <= 512
    whole = server.ask("big.example.com", "A", tcp=True)
    assert not whole.flags & dns.flags.TC
    assert len(addresses(whole)) == BIG_COUNT


def test_s5_the_letter_case_of_the_question_is_kept(
        make_server: ServerFactory, upstream: FakeUpstream, proto: str) -> None:
    server = forwarding(make_server, upstream.address)
    for spelling in ("WwW.ExAmPlE.CoM.", "www.EXAMPLE.com."):  # the second is a cache hit
        reply = server.ask(spelling, "A", tcp=proto == "tcp")
        assert reply.question[0].name.to_text() == spelling
        assert [rrset.name.to_text() for rrset in reply.answer] == [spelling]
        assert addresses(reply) == ["192.0.2.2"]


# ----------------------------------------------------------------------- upstream faults


def test_s5_a_truncated_udp_reply_is_retried_over_tcp(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    upstream.truncate_udp = True
    server = forwarding(make_server, upstream.address)
    reply = server.ask("example.com", "A")
    assert addresses(reply) == ["192.0.2.1"]
    assert not reply.flags & dns.flags.TC
    assert [s.transport for s in upstream.seen if s.name == "example.com"] == ["udp", "tcp"]


def test_s5_a_malformed_udp_reply_is_retried_over_tcp(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    upstream.garble_udp = True
    server = forwarding(make_server, upstream.address)
    reply = server.ask("example.com", "A")
    assert addresses(reply) == ["192.0.2.1"]
    assert [s.transport for s in upstream.seen if s.name == "example.com"] == ["udp", "tcp"]


def test_s5_a_reply_with_the_wrong_id_is_discarded(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    upstream.spoof_first = True
    server = forwarding(make_server, upstream.address)
    reply = server.ask("example.com", "A")
    assert addresses(reply) == ["192.0.2.1"]
    assert SPOOFED_ADDRESS not in addresses(reply)


def test_s5_a_dead_first_upstream_fails_over_to_the_second_and_is_then_tried_last(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    silent, good = upstreams(), upstreams()
    silent.silent = True
    server = forwarding(make_server, silent.address, good.address, forward_timeout=1.0,
                        forward_policy="sequential", forward_max_fails=1, loop_detect=False)
    reply = server.ask("example.com", "A", timeout=20)
    assert addresses(reply) == ["192.0.2.1"]
    assert silent.count("example.com") == 1
    reply = server.ask("www.example.com", "A", timeout=20)
    assert addresses(reply) == ["192.0.2.2"]
    assert silent.count("www.example.com") == 0  # marked down: the good one is asked first
    stats = server.call(lambda: forwarder(server).stats)
    assert stats.failures[silent.address] >= 1


def test_s5_a_closed_upstream_port_fails_over_to_the_next(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, dead_address(), upstream.address)
    assert addresses(server.ask("example.com", "A", timeout=20)) == ["192.0.2.1"]


def test_s5_when_every_upstream_fails_the_answer_is_servfail_explaining_why(
        make_server: ServerFactory) -> None:
    server = forwarding(make_server, dead_address(), forward_timeout=1.0)
    reply = server.ask("example.com", "A", timeout=20)
    assert reply.rcode() == dns.rcode.SERVFAIL
    [(code, text)] = ede_list(reply)
    assert code == EDE_NO_REACHABLE_AUTHORITY and "no upstream answered" in text


# ------------------------------------------------------------------------------- cache


def test_s5_a_cache_hit_is_served_without_an_upstream_query_and_with_a_decremented_ttl(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address)
    clock = manual_clock(server)
    assert ttls(server.ask("example.com", "A")) == [300]
    clock.advance(100)
    hit = server.ask("EXAMPLE.com", "A")  # the cache key is case-insensitive
    assert addresses(hit) == ["192.0.2.1"]
    assert ttls(hit) == [200]
    assert upstream.count("example.com", "A") == 1
    clock.advance(201)  # expired: asked again
    assert ttls(server.ask("example.com", "A")) == [300]
    assert upstream.count("example.com", "A") == 2
    stats = server.call(lambda: forwarder(server).stats)
    assert cache_hits(server, "success") == 1
    assert stats.cache_misses == 2


def test_s5_positive_ttls_are_capped_by_cache_ttl(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, cache_ttl=100)
    clock = manual_clock(server)
    assert ttls(server.ask("example.com", "A")) == [100]
    clock.advance(101)
    server.ask("example.com", "A")
    assert upstream.count("example.com", "A") == 2


def test_s5_the_cache_key_includes_the_do_bit(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address)
    server.ask("example.com", "A")
    server.ask("example.com", "A", want_dnssec=True)
    assert upstream.count("example.com", "A") == 2


def test_s5_negative_answers_are_cached_for_the_soa_minimum_capped_by_cache_negative_ttl(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, cache_negative_ttl=30)
    clock = manual_clock(server)
    first = server.ask("nope.example.com", "A")
    assert first.rcode() == dns.rcode.NXDOMAIN and ttls(first, "authority") == [30]
    clock.advance(10)
    again = server.ask("nope.example.com", "A")
    assert again.rcode() == dns.rcode.NXDOMAIN and ttls(again, "authority") == [20]
    assert upstream.count("nope.example.com") == 1
    nodata = server.ask("example.com", "TXT")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    server.ask("example.com", "TXT")
    assert upstream.count("example.com", "TXT") == 1
    clock.advance(21)
    server.ask("nope.example.com", "A")
    assert upstream.count("nope.example.com") == 2
    assert cache_hits(server, "denial") == 2


def test_s5_cache_size_zero_turns_the_cache_off(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, cache_size=0)
    for _ in range(2):
        assert ttls(server.ask("example.com", "A")) == [300]
    assert upstream.count("example.com", "A") == 2


def test_s5_a_stale_answer_is_served_when_every_upstream_is_down(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, serve_stale=600,
                        forward_timeout=1.0)
    clock = manual_clock(server)
    server.ask("example.com", "A")
    upstream.close()
    clock.advance(301)  # expired, within serve_stale
    stale = server.ask("example.com", "A", timeout=20)
    assert stale.rcode() == dns.rcode.NOERROR
    assert addresses(stale) == ["192.0.2.1"]
    assert ttls(stale) == [30]  # RFC 8767
    assert [code for code, _ in ede_list(stale)] == [EDE_STALE]
    assert server.call(lambda: forwarder(server).stats.stale_served) == 1
    clock.advance(600)  # beyond serve_stale: gone
    gone = server.ask("example.com", "A", timeout=20)
    assert gone.rcode() == dns.rcode.SERVFAIL


# --------------------------------------------------------------- our zones stay ours


def test_s5_cluster_names_never_reach_the_upstream(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address)
    asked = [
        ("web.default.svc.cluster.local", "A"),  # exists
        ("web.default.svc.cluster.local", "TXT"),  # NODATA
        ("nothing.default.svc.cluster.local", "A"),  # NXDOMAIN
        ("nothing.nowhere.svc.cluster.local", "AAAA"),  # NXDOMAIN, unknown namespace
        ("cluster.local", "SOA"),
        ("4.3.2.1.in-addr.arpa", "PTR"),  # unknown IP in a reverse zone, no fallthrough
        ("queue.default.svc.cluster.local", "A"),  # ExternalName to an in-zone name
    ]
    for name, rdtype in asked:
        reply = server.ask(name, rdtype)
        assert reply.flags & dns.flags.AA, name
    assert server.ask("4.3.2.1.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN
    assert addresses(server.ask("example.com", "A")) == ["192.0.2.1"]  # it does forward
    seen = upstream.names_seen()
    assert "example.com" in seen
    assert [name for name in seen if in_our_zones(name)] == []


def test_s5_an_external_name_to_an_outside_name_returns_our_cname_and_the_upstream_answer(
        make_server: ServerFactory, upstream: FakeUpstream, proto: str) -> None:
    server = forwarding(make_server, upstream.address)
    reply = server.ask("httpbin.default.svc.cluster.local", "A", tcp=proto == "tcp")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rrset_texts(reply) == [
        "httpbin.default.svc.cluster.local. 5 IN CNAME httpbin.org.",
        "httpbin.org. 120 IN A 192.0.2.80",
    ]
    assert reply.flags & dns.flags.AA  # the question is our name
    cname_only = server.ask("httpbin.default.svc.cluster.local", "CNAME", tcp=proto == "tcp")
    assert rrset_texts(cname_only) == [
        "httpbin.default.svc.cluster.local. 5 IN CNAME httpbin.org."]
    seen = upstream.names_seen()
    assert seen.count("httpbin.org") == 1  # only the target, only for the A query
    assert [name for name in seen if in_our_zones(name)] == []


def test_s5_an_external_name_takes_the_upstreams_rcode_for_its_target(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    empty = upstreams(["org. 3600 IN SOA a.org. b.org. 1 7200 1800 86400 60"])
    server = forwarding(make_server, empty.address)
    reply = server.ask("httpbin.default.svc.cluster.local", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert rrset_texts(reply) == ["httpbin.default.svc.cluster.local. 5 IN CNAME httpbin.org."]
    assert [rrset.name.to_text() for rrset in reply.authority] == ["org."]


def test_s5_fallthrough_sends_an_unknown_in_addr_arpa_ptr_upstream(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, fallthrough=frozenset({"in-addr.arpa"}))
    reply = server.ask("4.3.2.1.in-addr.arpa", "PTR")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rrset_texts(reply) == ["4.3.2.1.in-addr.arpa. 300 IN PTR host.example.com."]
    assert upstream.count("4.3.2.1.in-addr.arpa", "PTR") == 1
    known = server.ask("5.120.96.10.in-addr.arpa", "PTR")  # the dual service's ClusterIP
    assert rrset_texts(known) == [
        "5.120.96.10.in-addr.arpa. 5 IN PTR dual.default.svc.cluster.local."]
    assert upstream.count("5.120.96.10.in-addr.arpa") == 0
    # Fallthrough is per zone: cluster.local NXDOMAINs still stay here.
    assert server.ask("nothing.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert upstream.count("nothing.default.svc.cluster.local") == 0


def test_s5_a_fallthrough_answer_gives_way_to_our_own_once_the_cluster_has_the_name(
        make_server: ServerFactory, upstream: FakeUpstream, tmp_path: Path) -> None:
    # The upstream's answer for an address we do not know is cached (300 s), and the fast
    # path keeps forwarded answers across snapshots: a service that takes the address
    # must still be answered from the cluster at once.
    cluster = tmp_path / "cluster.yaml"
    namespace = "kind: Namespace\nmetadata: {name: default}\n"
    cluster.write_text(namespace, encoding="utf-8")
    server = forwarding(make_server, upstream.address, source=SourceSpec("file", (cluster,)),
                        fallthrough=frozenset({"in-addr.arpa"}), poll_interval=0.1)
    for _ in range(3):
        assert rrset_texts(server.ask("4.3.2.1.in-addr.arpa", "PTR")) == [
            "4.3.2.1.in-addr.arpa. 300 IN PTR host.example.com."]
    cluster.write_text(namespace + "---\nkind: Service\nmetadata: {name: db, namespace: "
                       "default}\nspec: {clusterIP: 1.2.3.4, ports: [{port: 80}]}\n",
                       encoding="utf-8")
    wait_until(lambda: addresses(server.ask("db.default.svc.cluster.local")) == ["1.2.3.4"], 5,
               "the new service answering")
    assert rrset_texts(server.ask("4.3.2.1.in-addr.arpa", "PTR")) == [
        "4.3.2.1.in-addr.arpa. 5 IN PTR db.default.svc.cluster.local."]
    assert upstream.count("4.3.2.1.in-addr.arpa", "PTR") == 1


def test_s5_a_sidecar_watching_one_namespace_falls_through_to_the_cluster_dns_for_others(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream]) -> None:
    cluster_dns = upstreams(["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"])
    server = forwarding(make_server, cluster_dns.address, namespaces=frozenset({"default"}),
                        fallthrough=frozenset({"cluster.local"}))
    other = server.ask("kube-dns.kube-system.svc.cluster.local")
    assert other.rcode() == dns.rcode.NOERROR and addresses(other) == ["10.96.0.10"]
    assert not other.flags & dns.flags.AA  # relayed, not ours
    assert cluster_dns.count("kube-dns.kube-system.svc.cluster.local") == 1
    # Names of the watched namespace are answered here and never asked upstream.
    own = server.ask("web.default.svc.cluster.local")
    assert own.rcode() == dns.rcode.NOERROR and own.flags & dns.flags.AA
    assert cluster_dns.count("web.default.svc.cluster.local") == 0


def test_s5_a_slow_upstream_does_not_block_in_zone_answers(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, forward_timeout=30)
    upstream.hold()
    sock, ident = udp_send(server, "example.com")
    wait_until(lambda: upstream.count("example.com") == 1, 30, "the upstream asked")
    local = server.ask("web.default.svc.cluster.local", "A")
    assert local.rcode() == dns.rcode.NOERROR and addresses(local)
    upstream.release()
    assert addresses(udp_receive(sock, ident)) == ["192.0.2.1"]


def test_s5_beyond_the_concurrency_cap_queries_are_refused(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, forward_max_concurrent=2,
                        forward_timeout=30)
    upstream.hold()
    pending = [udp_send(server, name) for name in ("example.com", "www.example.com")]
    wait_until(lambda: server.call(lambda: forwarder(server).inflight) == 2, 30,
               "two queries in flight")
    refused = server.ask("big.example.com", "A")
    assert refused.rcode() == dns.rcode.REFUSED
    assert server.call(lambda: forwarder(server).stats.refused_over_cap) == 1
    upstream.release()
    assert [addresses(udp_receive(sock, ident)) for sock, ident in pending] == [
        ["192.0.2.1"], ["192.0.2.2"]]
    assert addresses(server.ask("big.example.com", "A", tcp=True))  # room again


# ------------------------------------------------------------------------------ loops


def test_s5_a_forwarding_loop_is_detected_and_reported_without_exiting(
        make_server: ServerFactory, upstreams: Callable[..., FakeUpstream],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="clusterdns.forward")
    looping = upstreams()
    looping.hold()  # until we know where to send the probe back to
    server = make_server(upstreams=(looping.address,), forward_timeout=30)
    looping.forward_to = (server.host, server.port)
    looping.release()
    wait_until(lambda: server.call(lambda: forwarder(server).probed.is_set()), 30,
               "the start-up loop probe")
    assert server.call(lambda: forwarder(server).loop_detected)
    assert any(r.levelno == logging.ERROR and "forwarding loop detected" in r.getMessage()
               for r in caplog.records)
    reply = server.ask("example.com", "A")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert any("loop" in text for _, text in ede_list(reply))
    assert looping.count("example.com") == 0
    local = server.ask("web.default.svc.cluster.local", "A")
    assert local.rcode() == dns.rcode.NOERROR and addresses(local)
    assert server.app.failure is None


def test_s5_without_a_loop_the_probe_passes(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address)
    assert not server.call(lambda: forwarder(server).loop_detected)
    probes = [s for s in upstream.seen if s.rdtype == "HINFO"]
    assert len(probes) == 1 and len(probes[0].name.split(".")) == 2


# ------------------------------------------------------------------- the upstream list


def test_s5_resolv_conf_parsing_skips_our_own_address() -> None:
    conf = ("# generated\nsearch default.svc.cluster.local\nnameserver 127.0.0.1\n"
            "nameserver 192.0.2.53 # remote\nnameserver ::1\noptions ndots:5\n")
    assert read_resolv_conf(conf) == ["127.0.0.1", "192.0.2.53", "::1"]
    files = {"/etc/resolv.conf": conf}

    def read(path: Any) -> str:
        return files[str(path)]

    # A wildcard IPv4 bind on port 53 is reached through 127.0.0.1; ::1 is another socket.
    got = upstream_list(("/etc/resolv.conf",), [("0.0.0.0", 53)], read=read)
    assert got == [Upstream("192.0.2.53", 53), Upstream("::1", 53)]
    got = upstream_list(("/etc/resolv.conf",), [("0.0.0.0", 53), ("::", 53)], read=read)
    assert got == [Upstream("192.0.2.53", 53)]
    # Same address, other port: not us.
    got = upstream_list(("127.0.0.1:5353", "127.0.0.1:53"), [("127.0.0.1", 5353)], read=read)
    assert got == [Upstream("127.0.0.1", 53)]


def test_s5_our_own_listen_address_in_the_upstream_list_is_skipped(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    own = dead_address()
    host, port = own.rsplit(":", 1)
    server = forwarding(make_server, own, upstream.address,
                        listen=(ListenAddr(host, int(port)),))
    assert server.call(lambda: forwarder(server).upstreams) == [
        Upstream("127.0.0.1", upstream.port)]
    assert addresses(server.ask("example.com", "A")) == ["192.0.2.1"]


# -------------------------------------------------------------------------------- dig


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed")
def test_s5_dig_gets_an_upstream_answer_through_the_server(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address)
    out = subprocess.run(
        ["dig", f"@{server.host}", "-p", str(server.port), "MaIl.example.COM", "MX",
         "+tries=1", "+time=10"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "status: NXDOMAIN" in out
    out = subprocess.run(
        ["dig", f"@{server.host}", "-p", str(server.port), "example.com", "MX",
         "+tries=1", "+time=10", "+noall", "+answer", "+comments"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    assert "status: NOERROR" in out
    flags_line = next(line for line in out.splitlines() if ";; flags:" in line)
    assert " ra" in flags_line and " aa" not in flags_line
    answers = [line.split() for line in out.splitlines() if line and not line.startswith(";")]
    assert answers == [["example.com.", "300", "IN", "MX", "10", "mail.example.com."]]


def test_s5_a_cache_ttl_of_zero_caches_nothing_and_relays_the_upstream_ttls(
        make_server: ServerFactory, upstream: FakeUpstream) -> None:
    server = forwarding(make_server, upstream.address, cache_ttl=0)
    for _ in range(2):
        assert ttls(server.ask("example.com", "A")) == [300]
    assert upstream.count("example.com", "A") == 2
