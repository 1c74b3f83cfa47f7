"""§S2.3 / §S2.5 / §S4: headless services too large for one DNS message.

An A record takes 16 bytes in a reply, so a TCP message (65,535 bytes) holds about 4,090
addresses, and far fewer SRV records. A headless service with more ready endpoints than
that used to be answered with no address at all (NOERROR, empty, TC) even over TCP.
Now, over TCP, the answer carries as many records as fit, says so in an RFC 8914
extended error, and successive queries start at different records, so every endpoint
gets its share; over UDP the reply keeps TC so that clients move to TCP.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns.config import SourceSpec
from conftest import RunningServer, _start, _stop, demo_config, raw_exchange

SIZES = {"fits": 4000, "over": 5900, "huge": 10_000}
TCP_MAX = 65535


def address(service: int, i: int) -> str:
    return str(ipaddress.IPv4Address(f"10.{100 + service}.0.0") + i)


def dump(path: Path) -> None:
    items: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"}}]
    for s, (name, count) in enumerate(SIZES.items()):
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": name, "namespace": "big"},
                      "spec": {"clusterIP": "None",
                               "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
        for first in range(0, count, 100):
            items.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-{first}", "namespace": "big",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [address(s, i)], "conditions": {"ready": True}}
                              for i in range(first, min(first + 100, count))]})
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    path = tmp_path_factory.mktemp("big") / "big.json"
    dump(path)
    handle = _start(demo_config(source=SourceSpec("file", (path,))))
    yield handle.server
    _stop(handle)


def name(service: str) -> str:
    return f"{service}.big.svc.cluster.local."


def answer_values(reply: dns.message.Message, rdtype: str) -> list[str]:
    t = dns.rdatatype.from_text(rdtype)
    return [rd.to_text() for rrset in reply.answer if rrset.rdtype == t for rd in rrset]


def _skip_name(data: bytes, pos: int) -> int:
    while data[pos] and data[pos] < 0xC0:
        pos += 1 + data[pos]
    return pos + (2 if data[pos] else 1)


def _name_at(data: bytes, pos: int) -> str:
    labels = []
    while data[pos]:
        labels.append(data[pos + 1:pos + 1 + data[pos]].decode())
        pos += 1 + data[pos]
    return ".".join(labels) + "."


def quick_answers(reply: bytes) -> list[str]:
    """The A addresses or SRV targets of a reply's Answer, in order. (dnspython takes
    half a second to read 4,000 records; this walks them by RFC 1035 §4.1.)"""
    count = int.from_bytes(reply[6:8], "big")
    pos = _skip_name(reply, 12) + 4
    out = []
    for _ in range(count):
        pos = _skip_name(reply, pos)
        rtype = int.from_bytes(reply[pos:pos + 2], "big")
        rdlen = int.from_bytes(reply[pos + 8:pos + 10], "big")
        pos += 10
        if rtype == dns.rdatatype.A:
            out.append(str(ipaddress.IPv4Address(reply[pos:pos + 4])))
        elif rtype == dns.rdatatype.SRV:  # SRV targets are never compressed
            out.append(_name_at(reply, pos + 6))
        pos += rdlen
    return out


def tcp_raw(server: RunningServer, qname: str, rdtype: str) -> bytes:
    query = dns.message.make_query(qname, rdtype, use_edns=0).to_wire()
    return raw_exchange(server, query, tcp=True, timeout=10)


def extended_errors(reply: dns.message.Message) -> list[str]:
    return [opt.text or "" for opt in reply.options if isinstance(opt, dns.edns.EDEOption)]


Ask = Callable[..., dns.message.Message]


@pytest.mark.parametrize("service", list(SIZES))
def test_over_udp_an_rrset_that_does_not_fit_keeps_tc_so_clients_move_to_tcp(
        big: RunningServer, service: str) -> None:
    for rdtype in ("A", "SRV"):
        reply = big.ask(name(service), rdtype)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.TC
        assert not reply.answer


def test_over_tcp_an_rrset_that_fits_comes_whole_without_an_explanation(
        big: RunningServer) -> None:
    reply = big.ask(name("fits"), "A", tcp=True)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert not reply.flags & dns.flags.TC
    assert sorted(answer_values(reply, "A"), key=ipaddress.ip_address) == [
        address(0, i) for i in range(SIZES["fits"])]
    assert extended_errors(reply) == []


@pytest.mark.parametrize("service", ["over", "huge"])
def test_over_tcp_an_address_rrset_too_large_for_any_message_is_cut_and_says_so(
        big: RunningServer, service: str) -> None:
    count = SIZES[service]
    reply = big.ask(name(service), "A", tcp=True, timeout=10)
    got = answer_values(reply, "A")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert not reply.flags & dns.flags.TC
    assert 4000 < len(got) < count
    assert len(reply.to_wire()) <= TCP_MAX
    assert extended_errors(reply) == [
        f"answer cut to {len(got)} of {count} records: the whole RRset does not fit in one "
        "message"]


@pytest.mark.parametrize(("service", "rdtype"), [("over", "A"), ("huge", "A"), ("huge", "SRV")])
def test_successive_tcp_queries_give_every_endpoint_its_share(
        big: RunningServer, service: str, rdtype: str) -> None:
    count = SIZES[service]
    s = list(SIZES).index(service)
    seen: set[str] = set()
    firsts: set[str] = set()
    for _ in range(32):  # each query the next of the 32 rotations
        got = quick_answers(tcp_raw(big, name(service), rdtype))
        assert got and len(got) < count
        firsts.add(got[0])
        seen.update(got)
    if rdtype == "A":
        assert seen == {address(s, i) for i in range(count)}
    else:
        assert seen == {f"{address(s, i).replace('.', '-')}.{name(service)}"
                        for i in range(count)}
    assert len(firsts) == 32  # 32 evenly spaced starting points


def test_a_cut_answer_without_edns_still_fits_and_carries_records(big: RunningServer) -> None:
    reply = big.ask(name("huge"), "A", tcp=True, edns=False, timeout=10)
    assert 4000 < len(answer_values(reply, "A")) < SIZES["huge"]
    assert len(reply.to_wire()) <= TCP_MAX
