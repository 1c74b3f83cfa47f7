"""§S1 Names and matching, end to end: dnspython (and raw sockets) against a real server.

Expected values come from config/demo-cluster.yaml and tests/data/extra-cluster.yaml:
httpenv (ClusterIP 10.108.189.10), svc-clusterip-httpd (ClusterIP 10.99.76.207, named
port http/TCP 80), rabbitmq (headless, StatefulSet hostnames rabbitmq-0..2), queue
(ExternalName -> rabbitmq.default.svc.cluster.local), team-a/3d-render (ClusterIP
10.96.50.3, named port grpc/TCP 50051).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns.config import PodsMode
from conftest import RunningServer, addresses

# ----------------------------------------------------------------------------- helpers


def question_bytes(wire: bytes) -> bytes:
    """The raw first question (QNAME + QTYPE + QCLASS) of a message without compression."""
    offset = 12
    while True:
        length = wire[offset]
        assert length < 0xC0, "a compression pointer in the question"
        offset += 1 + length
        if length == 0:
            break
    return wire[12:offset + 4]


def raw_exchange(server: RunningServer, query: bytes, *, tcp: bool) -> bytes:
    """Send one query as raw bytes and return the raw reply bytes."""
    if tcp:
        with socket.create_connection((server.host, server.port), timeout=3) as conn:
            conn.sendall(struct.pack("!H", len(query)) + query)
            head = _recv_exactly(conn, 2)
            return _recv_exactly(conn, struct.unpack("!H", head)[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(query, (server.host, server.port))
        data, _ = sock.recvfrom(65535)
        return data


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        assert chunk, "connection closed early"
        buf += chunk
    return buf


def owner_texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    """Owner names exactly as they came off the wire (letter case included)."""
    return [rrset.name.to_text() for rrset in getattr(msg, section)]


def is_tcp(proto: str) -> bool:
    return proto == "tcp"


# ----------------------------------------------------------------------------- matching


@pytest.mark.parametrize("name", [
    "httpenv.default.svc.cluster.local",
    "HTTPENV.DEFAULT.SVC.CLUSTER.LOCAL",
    "HttpEnv.DEFAULT.svc.Cluster.Local",
    "hTtPeNv.dEfAuLt.SvC.cLuStEr.LoCaL.",
])
def test_s1_matching_is_case_insensitive(demo: RunningServer, proto: str, name: str) -> None:
    reply = demo.ask(name, "A", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["10.108.189.10"]


def test_s1_answer_owner_name_keeps_the_query_letter_case(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("HttpEnv.DEFAULT.svc.Cluster.Local", "A", tcp=is_tcp(proto))
    assert addresses(reply) == ["10.108.189.10"]
    assert owner_texts(reply) == ["HttpEnv.DEFAULT.svc.Cluster.Local."]


def test_s1_srv_owner_name_keeps_the_query_letter_case(demo: RunningServer, proto: str) -> None:
    name = "_Http._TCP.Svc-ClusterIP-Httpd.Default.SVC.cluster.LOCAL"
    reply = demo.ask(name, "SRV", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NOERROR
    assert owner_texts(reply) == [name + "."]


def test_s1_headless_owner_name_keeps_the_query_letter_case_for_every_record(
        demo: RunningServer, proto: str) -> None:
    name = "HTTPENV-Headless.default.Svc.cluster.local"
    reply = demo.ask(name, "A", tcp=is_tcp(proto))
    assert len(addresses(reply)) == 5
    assert owner_texts(reply) == [name + "."]


def test_s1_cname_owner_keeps_the_query_case_and_target_records_follow(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("QUEUE.Default.svc.cluster.local", "A", tcp=is_tcp(proto))
    assert reply.answer[0].rdtype == dns.rdatatype.CNAME
    assert reply.answer[0].name.to_text() == "QUEUE.Default.svc.cluster.local."
    assert sorted(addresses(reply)) == ["10.244.1.31", "10.244.1.33", "10.244.2.32"]


def test_s1_negative_answer_soa_owner_keeps_the_query_letter_case_of_the_zone(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("NoSuch.default.svc.Cluster.LOCAL", "A", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert owner_texts(reply, "authority") == ["Cluster.LOCAL."]


def test_s1_apex_owner_name_keeps_the_query_letter_case(demo: RunningServer, proto: str) -> None:
    reply = demo.ask("CLUSTER.Local", "SOA", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NOERROR
    assert owner_texts(reply) == ["CLUSTER.Local."]


def test_s1_reverse_name_matching_is_case_insensitive(demo: RunningServer, proto: str) -> None:
    reply = demo.ask("10.189.108.10.IN-ADDR.Arpa", "PTR", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NOERROR
    assert owner_texts(reply) == ["10.189.108.10.IN-ADDR.Arpa."]
    assert [rd.to_text() for rrset in reply.answer for rd in rrset] == [
        "httpenv.default.svc.cluster.local."]


# ---------------------------------------------------------------------- question echo


ECHO_NAMES = [
    # (labels, type): positives, a negative, a dot inside a label, binary bytes, a PTR
    ((b"HtTpEnV", b"dEfAuLt", b"SvC", b"cLuStEr", b"LoCaL"), "A"),
    ((b"_AMQP", b"_tcp", b"RabbitMQ", b"default", b"svc", b"cluster", b"local"), "SRV"),
    ((b"NoSuch", b"Default", b"svc", b"CLUSTER", b"local"), "AAAA"),
    ((b"we.ird", b"Default", b"svc", b"cluster", b"local"), "A"),
    ((b"Nul\x00and\x7fdel", b"default", b"SVC", b"cluster", b"local"), "TXT"),
    ((b"10", b"189", b"108", b"10", b"In-Addr", b"ARPA"), "PTR"),
]


@pytest.mark.parametrize(("labels", "rdtype"), ECHO_NAMES,
                         ids=[b".".join(labels).decode("latin-1").encode("unicode_escape")
                              .decode() for labels, _ in ECHO_NAMES])
def test_s1_question_section_is_echoed_byte_for_byte(
        demo: RunningServer, proto: str, labels: tuple[bytes, ...], rdtype: str) -> None:
    name = dns.name.Name((*labels, b""))
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    query.id = 0x5A5A
    wire = query.to_wire()
    reply = raw_exchange(demo, wire, tcp=is_tcp(proto))
    assert reply[:2] == wire[:2], "reply ID must match the query ID"
    assert struct.unpack("!H", reply[4:6])[0] == 1, "QDCOUNT"
    assert question_bytes(reply) == question_bytes(wire)


def test_s1_question_with_8bit_label_bytes_is_answered_nxdomain_and_echoed(
        demo: RunningServer, proto: str) -> None:
    """RFC 2181 §11: any octet is legal in a label; such a name is just not ours."""
    name = dns.name.Name((b"Caf\xe9", b"default", b"svc", b"cluster", b"local", b""))
    wire = dns.message.make_query(name, "A", use_edns=0).to_wire()
    reply = raw_exchange(demo, wire, tcp=is_tcp(proto))
    assert struct.unpack("!H", reply[4:6])[0] == 1, "QDCOUNT: the question must be echoed"
    assert question_bytes(reply) == question_bytes(wire)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN


def test_s1_question_is_echoed_byte_for_byte_without_edns(demo: RunningServer) -> None:
    query = dns.message.make_query("RABBITMQ-0.RabbitMQ.default.svc.cluster.local", "A",
                                   use_edns=False)
    wire = query.to_wire()
    reply = raw_exchange(demo, wire, tcp=False)
    assert question_bytes(reply) == question_bytes(wire)
    parsed = dns.message.from_wire(reply)
    assert [rd.to_text() for rrset in parsed.answer for rd in rrset] == ["10.244.1.31"]


# ------------------------------------------------------------------------- name forms


def test_s1_service_name_starting_with_a_digit_resolves(demo: RunningServer, proto: str) -> None:
    reply = demo.ask("3d-render.team-a.svc.cluster.local", "A", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["10.96.50.3"]


def test_s1_service_name_starting_with_a_digit_has_its_srv_name(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("_grpc._tcp.3d-render.team-a.svc.cluster.local", "SRV", tcp=is_tcp(proto))
    assert [rd.to_text() for rrset in reply.answer for rd in rrset] == [
        "0 100 50051 3d-render.team-a.svc.cluster.local."]


@pytest.mark.parametrize("name", [
    "a.b.c.httpenv.default.svc.cluster.local",
    "x.y.z.rabbitmq.default.svc.cluster.local",
    "a.b.rabbitmq-0.rabbitmq.default.svc.cluster.local",
    "x._http._tcp.svc-clusterip-httpd.default.svc.cluster.local",
    "w.x._amqp._tcp.rabbitmq.default.svc.cluster.local",
    "a.b.c.d.e.kube-dns.kube-system.svc.cluster.local",
])
def test_s1_three_or_more_labels_left_of_the_service_is_nxdomain(
        demo: RunningServer, proto: str, name: str) -> None:
    for rdtype in ("A", "SRV"):
        reply = demo.ask(name, rdtype, tcp=is_tcp(proto))
        assert reply.rcode() == dns.rcode.NXDOMAIN, (name, rdtype)
        assert reply.answer == []
        assert reply.flags & dns.flags.AA


@pytest.mark.parametrize(("name", "rdtype"), [
    ("httpenv.default.svc.cluster.local", "A"),  # <svc>.<ns>.svc.<zone>
    ("rabbitmq-0.rabbitmq.default.svc.cluster.local", "A"),  # <ep>.<svc>.<ns>.svc.<zone>
    ("_amqp._tcp.rabbitmq.default.svc.cluster.local", "SRV"),  # _<port>._<proto>.<svc>...
    ("10-244-1-11.default.pod.cluster.local", "A"),  # <a-b-c-d>.<ns>.pod.<zone>
    ("dns-version.cluster.local", "TXT"),  # dns-version.<zone>
])
def test_s1_each_documented_name_form_answers(
        demo: RunningServer, proto: str, name: str, rdtype: str) -> None:
    reply = demo.ask(name, rdtype, tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer, f"{name} {rdtype} has no answer"


@pytest.mark.parametrize("name", [
    "nosuch.default.svc.cluster.local",  # unknown service
    "httpenv.nosuch.svc.cluster.local",  # unknown namespace
    "httpenv.prod.svc.cluster.local",  # the service lives in default, not prod
    "httpenv.default.cluster.local",  # missing the svc label
    "httpenv.default.pods.cluster.local",  # not svc or pod
    "www.cluster.local",
])
def test_s1_names_below_the_zone_that_match_no_form_are_nxdomain(
        demo: RunningServer, proto: str, name: str) -> None:
    reply = demo.ask(name, "A", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA


def test_s1_reverse_zones_are_served(demo: RunningServer, proto: str) -> None:
    for zone in ("in-addr.arpa", "ip6.arpa"):
        reply = demo.ask(zone, "SOA", tcp=is_tcp(proto))
        assert reply.rcode() == dns.rcode.NOERROR, zone
        assert reply.flags & dns.flags.AA
        assert len(reply.answer) == 1 and reply.answer[0].rdtype == dns.rdatatype.SOA


def test_s1_additional_forward_zone_serves_the_same_services(
        make_server: Callable[..., RunningServer], proto: str) -> None:
    server = make_server(zones=("cluster.local", "corp.example", "in-addr.arpa", "ip6.arpa"),
                         pods=PodsMode.DISABLED)
    tcp = is_tcp(proto)
    assert addresses(server.ask("httpenv.default.svc.corp.example", "A", tcp=tcp)) == [
        "10.108.189.10"]
    assert addresses(server.ask("httpenv.default.svc.cluster.local", "A", tcp=tcp)) == [
        "10.108.189.10"]
    txt = server.ask("dns-version.corp.example", "TXT", tcp=tcp)
    assert [rd.to_text() for rrset in txt.answer for rd in rrset] == ['"1.1.0"']
    # PTR targets point into the cluster domain, the first forward zone.
    ptr = server.ask("10.189.108.10.in-addr.arpa", "PTR", tcp=tcp)
    assert [rd.to_text() for rrset in ptr.answer for rd in rrset] == [
        "httpenv.default.svc.cluster.local."]


def test_s1_only_ascii_letters_match_without_regard_to_case() -> None:
    from clusterdns.wire import normal_name
    assert normal_name([b"HTTPENV", b"Default"]) == "httpenv.default"
    # RFC 4343 §3: other octets are compared exactly, whatever they look like in latin-1.
    assert normal_name([b"\xc9t\xc9"]) != normal_name([b"\xe9t\xe9"])
    assert normal_name([b"\xc9T\xc9"]) == "\xc9t\xc9"
