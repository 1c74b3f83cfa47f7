"""§S4 Transport, end to end: the real App on loopback, dnspython and raw sockets.

Sizes used below (all names lower case, so every owner name compresses to a pointer):

* ``big.team-a.svc.cluster.local`` A: 120 ready endpoints. Header 12 + question 34
  (30-byte name + type + class) + 120 x 16 (pointer 2, type/class/TTL/length 10,
  address 4) = 1966 bytes, 1977 with our 11-byte OPT. Too large for 512 and for 1232,
  fits 4096.
* ``rabbitmq.default.svc.cluster.local`` SRV: six SRV records (targets are not
  compressed, RFC 2782) then the three endpoint A records in Additional. Without EDNS
  the Answer fits in 512 but not all of the Additional data does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.HINFO
import pytest

from conftest import RunningServer, addresses

BIG = "big.team-a.svc.cluster.local"
BIG_A_REPLY = 12 + 34 + 120 * 16  # bytes without OPT
OPT_SIZE = 11
RABBIT = "rabbitmq.default.svc.cluster.local"
STEP = 3.0


# ----------------------------------------------------------------------------- helpers


def is_tcp(proto: str) -> bool:
    return proto == "tcp"


def make_wire(name: str, rdtype: str = "A", *, qid: int = 0x1234, edns: int | bool = False,
              payload: int = 1232, rdclass: str = "IN") -> bytes:
    q = dns.message.make_query(name, rdtype, rdclass=rdclass, use_edns=edns, payload=payload)
    q.id = qid
    return q.to_wire()


def with_flags(wire: bytes, flags: int) -> bytes:
    return wire[:2] + struct.pack("!H", flags) + wire[4:]


def with_counts(wire: bytes, qd: int, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return wire[:4] + struct.pack("!HHHH", qd, an, ns, ar) + wire[12:]


def question_bytes(wire: bytes) -> bytes:
    """QNAME + QTYPE + QCLASS of the first question of a message we built (no pointers)."""
    offset = 12
    while wire[offset]:
        assert wire[offset] < 0xC0
        offset += 1 + wire[offset]
    return wire[12:offset + 1 + 4]


def header(wire: bytes) -> tuple[int, int, int, int, int, int]:
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", wire)
    return ident, flags, qd, an, ns, ar


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed early")
        buf += chunk
    return buf


def tcp_read_message(conn: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", recv_exactly(conn, 2))
    return recv_exactly(conn, length)


def frame(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def udp_exchange(server: RunningServer, wire: bytes, timeout: float = STEP) -> bytes | None:
    """Send one datagram; the reply, or None when nothing came back within ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, (server.host, server.port))
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
        return data


def tcp_exchange(server: RunningServer, wire: bytes) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=STEP) as conn:
        conn.sendall(frame(wire))
        return tcp_read_message(conn)


def raw_exchange(server: RunningServer, wire: bytes, proto: str) -> bytes:
    if is_tcp(proto):
        return tcp_exchange(server, wire)
    reply = udp_exchange(server, wire)
    assert reply is not None, "no UDP reply"
    return reply


def closed_by_peer(conn: socket.socket, within: float) -> bool:
    """True when the server closes (or resets) the connection within ``within`` seconds."""
    conn.settimeout(within)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# ----------------------------------------------------------------- UDP and TCP framing


def test_s4_udp_and_tcp_answer_on_the_same_port(demo: RunningServer) -> None:
    name = "httpenv.default.svc.cluster.local"
    udp = demo.ask(name)
    tcp = demo.ask(name, tcp=True)
    assert addresses(udp) == addresses(tcp) == ["10.108.189.10"]
    wire = make_wire(name, qid=0x0101)
    assert udp_exchange(demo, wire) == tcp_exchange(demo, wire)


def test_s4_tcp_answers_several_queries_one_after_another_on_one_connection(
        demo: RunningServer) -> None:
    names = ["httpenv.default.svc.cluster.local", "web.default.svc.cluster.local",
             "kube-dns.kube-system.svc.cluster.local", "nope.default.svc.cluster.local"]
    with socket.create_connection((demo.host, demo.port), timeout=STEP) as conn:
        for i, name in enumerate(names):
            wire = make_wire(name, qid=0x2000 + i)
            conn.sendall(frame(wire))
            reply = dns.message.from_wire(tcp_read_message(conn))
            assert reply.id == 0x2000 + i
            assert reply.question[0].name == dns.name.from_text(name)


def test_s4_tcp_pipelined_queries_in_one_write_get_replies_with_matching_ids(
        demo: RunningServer) -> None:
    queries = [
        make_wire("httpenv.default.svc.cluster.local", qid=0x3001),
        make_wire("dns-version.cluster.local", "TXT", qid=0x3002, edns=0),
        make_wire(BIG, qid=0x3003),  # the big one: 120 records over TCP
    ]
    with socket.create_connection((demo.host, demo.port), timeout=STEP) as conn:
        conn.sendall(b"".join(frame(q) for q in queries))
        replies = [dns.message.from_wire(tcp_read_message(conn)) for _ in queries]
    assert [r.id for r in replies] == [0x3001, 0x3002, 0x3003]
    assert addresses(replies[0]) == ["10.108.189.10"]
    assert replies[1].answer[0][0].strings == (b"1.1.0",)
    assert len(addresses(replies[2])) == 120


def test_s4_tcp_connection_idle_longer_than_the_timeout_is_closed(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(tcp_idle_timeout=0.3)
    with socket.create_connection((server.host, server.port), timeout=STEP) as conn:
        conn.sendall(frame(make_wire("httpenv.default.svc.cluster.local", qid=7)))
        assert dns.message.from_wire(tcp_read_message(conn)).id == 7
        started = time.monotonic()
        assert closed_by_peer(conn, within=STEP), "idle connection was not closed"
        waited = time.monotonic() - started
    assert 0.2 <= waited < 2.0, waited


def test_s4_tcp_connection_in_use_is_not_closed_before_the_idle_timeout(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(tcp_idle_timeout=0.3)
    with socket.create_connection((server.host, server.port), timeout=STEP) as conn:
        for i in range(4):  # 0.6 s in total, each gap well under the timeout
            time.sleep(0.15)
            conn.sendall(frame(make_wire("httpenv.default.svc.cluster.local", qid=i)))
            assert dns.message.from_wire(tcp_read_message(conn)).id == i


def test_s4_tcp_connections_beyond_the_cap_are_closed(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(tcp_max_connections=2)
    addr = (server.host, server.port)
    first = socket.create_connection(addr, timeout=STEP)
    second = socket.create_connection(addr, timeout=STEP)
    try:
        for i, conn in enumerate((first, second)):  # both admitted and answering
            conn.sendall(frame(make_wire("httpenv.default.svc.cluster.local", qid=i)))
            assert dns.message.from_wire(tcp_read_message(conn)).id == i
        with socket.create_connection(addr, timeout=STEP) as third:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                third.sendall(frame(make_wire("httpenv.default.svc.cluster.local", qid=3)))
            assert closed_by_peer(third, within=STEP), "third connection was admitted"
        # The admitted ones keep working.
        first.sendall(frame(make_wire("web.default.svc.cluster.local", qid=9)))
        assert dns.message.from_wire(tcp_read_message(first)).id == 9
    finally:
        first.close()
    # A slot frees up when a connection closes.
    deadline = time.monotonic() + STEP
    while True:
        with socket.create_connection(addr, timeout=STEP) as again:
            try:
                again.sendall(frame(make_wire("httpenv.default.svc.cluster.local", qid=11)))
                reply = tcp_read_message(again)
            except (ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, "no slot after a connection closed"
                time.sleep(0.05)
                continue
            assert dns.message.from_wire(reply).id == 11
            break
    second.close()


# -------------------------------------------------------------------------------- EDNS


def test_s4_edns_opt_is_in_the_reply_when_the_query_had_one(demo: RunningServer,
                                                              proto: str) -> None:
    msg = demo.ask("httpenv.default.svc.cluster.local", tcp=is_tcp(proto), payload=4096)
    assert msg.edns == 0
    assert msg.payload == 1232, "we advertise our own maximum, not the client's"
    assert msg.ednsflags & 0xFFFF == 0


@pytest.mark.parametrize("name", ["httpenv.default.svc.cluster.local",
                                  "nope.default.svc.cluster.local"])
def test_s4_edns_do_bit_of_the_query_is_copied_into_the_reply(demo: RunningServer, proto: str,
                                                              name: str) -> None:
    # RFC 3225 §3 (the DO bit RFC 6891 §6.1.4 refers to): "MUST be copied in the response".
    with_do = demo.ask(name, tcp=is_tcp(proto), want_dnssec=True)
    assert with_do.ednsflags & dns.flags.DO
    without = demo.ask(name, tcp=is_tcp(proto))
    assert not without.ednsflags & dns.flags.DO


def test_s4_edns_opt_is_absent_when_the_query_had_none(demo: RunningServer, proto: str) -> None:
    msg = demo.ask("httpenv.default.svc.cluster.local", tcp=is_tcp(proto), edns=False)
    assert msg.edns == -1
    wire = raw_exchange(demo, make_wire("httpenv.default.svc.cluster.local"), proto)
    assert header(wire)[5] == 0, "no Additional records at all, so no OPT"


def test_s4_edns_advertised_payload_follows_the_configured_server_maximum(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(max_udp_size=4096)
    assert server.ask("httpenv.default.svc.cluster.local").payload == 4096


def test_s4_edns_client_payload_above_the_server_maximum_is_clamped(demo: RunningServer) -> None:
    assert BIG_A_REPLY + OPT_SIZE == 1977  # > 1232 (our maximum), < 4096 (the client's)
    msg = demo.ask(BIG, payload=4096)
    assert msg.flags & dns.flags.TC, "a 1977-byte reply was sent over a 1232-byte limit"
    assert not msg.answer


def test_s4_edns_payload_up_to_a_larger_server_maximum_is_honoured(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(max_udp_size=4096)
    wire = udp_exchange(server, make_wire(BIG, edns=0, payload=4096))
    assert wire is not None
    assert len(wire) == BIG_A_REPLY + OPT_SIZE
    msg = dns.message.from_wire(wire)
    assert not msg.flags & dns.flags.TC
    assert len(addresses(msg)) == 120
    # The same server still clamps a client that asks for less.
    small = server.ask(BIG, payload=1232)
    assert small.flags & dns.flags.TC and not small.answer


def test_s4_edns_payload_below_512_is_treated_as_512(demo: RunningServer) -> None:
    # The rabbitmq SRV reply with EDNS is larger than 256 bytes; with a 256-byte
    # payload the server must still use 512 (RFC 6891 §6.2.5), so the Answer is whole.
    wire = udp_exchange(demo, make_wire(RABBIT, "SRV", edns=0, payload=256))
    assert wire is not None
    assert 256 < len(wire) <= 512
    msg = dns.message.from_wire(wire)
    assert not msg.flags & dns.flags.TC
    assert len(msg.answer[0]) == 6


@pytest.mark.parametrize(("edns", "limit"), [(False, 512), (0, 1232)])
def test_s4_udp_replies_never_exceed_the_limit(demo: RunningServer, edns: int | bool,
                                               limit: int) -> None:
    for name, rdtype in [(BIG, "A"), (RABBIT, "SRV"), ("_http._tcp." + BIG, "SRV"),
                         ("httpenv-headless.default.svc.cluster.local", "SRV")]:
        wire = udp_exchange(demo, make_wire(name, rdtype, edns=edns, payload=65000))
        assert wire is not None
        assert len(wire) <= limit, (name, rdtype, len(wire))


# --------------------------------------------------------------------------- truncation


@pytest.mark.parametrize(("edns", "payload"), [(False, 0), (0, 512), (0, 1232), (0, 4096)])
def test_s4_truncation_sets_tc_keeps_the_question_and_drops_the_whole_rrset(
        demo: RunningServer, edns: int | bool, payload: int) -> None:
    query = make_wire(BIG, qid=0x4444, edns=edns, payload=payload or 1232)
    wire = udp_exchange(demo, query)
    assert wire is not None
    ident, flags, qd, an, ns, _ = header(wire)
    assert ident == 0x4444
    assert flags & 0x0200, "TC"
    assert flags & 0x8000 and flags & 0x0400, "QR and AA"
    assert flags & 0xF == 0, "NOERROR"
    assert (qd, an, ns) == (1, 0, 0), "no partial RRset: 75 records would fit in 1232"
    assert wire[12:12 + len(question_bytes(query))] == question_bytes(query)
    msg = dns.message.from_wire(wire)
    assert (msg.edns == 0) == (edns is not False)


def test_s4_truncation_over_tcp_gets_the_full_answer(demo: RunningServer) -> None:
    for edns in (False, True):
        msg = demo.ask(BIG, tcp=True, edns=edns)
        assert not msg.flags & dns.flags.TC
        assert len(msg.answer) == 1
        got = addresses(msg)
        assert len(got) == 120
        assert sorted(got) == sorted(f"10.244.3.{i}" for i in range(1, 121))


def test_s4_additional_rrsets_that_do_not_fit_are_dropped_whole_without_tc(
        demo: RunningServer) -> None:
    # wire.encode's rule (RFC 2181 §9): TC only when Answer or Authority data had to go;
    # Additional RRsets are dropped whole from the end and the answer is not truncated.
    full = demo.ask(RABBIT, "SRV", tcp=True, edns=False)
    assert len(full.additional) == 3
    assert len(full.to_wire()) > 512
    wire = udp_exchange(demo, make_wire(RABBIT, "SRV"))
    assert wire is not None
    assert len(wire) <= 512
    msg = dns.message.from_wire(wire)
    assert not msg.flags & dns.flags.TC, "only Additional data was left out"
    assert msg.answer == full.answer, "the SRV answer is complete"
    assert 0 < len(msg.additional) < len(full.additional)
    # What is kept is a prefix of the full Additional section, each RRset whole.
    assert msg.additional == full.additional[:len(msg.additional)]


def test_s4_additional_rrsets_are_all_kept_when_they_fit(demo: RunningServer) -> None:
    msg = demo.ask(RABBIT, "SRV")  # EDNS 1232
    assert not msg.flags & dns.flags.TC
    assert sorted(str(r.name) for r in msg.additional) == [
        f"rabbitmq-{i}.rabbitmq.default.svc.cluster.local." for i in range(3)]


# -------------------------------------------------------------------- the error ladder


def test_s4_a_packet_with_qr_set_gets_no_reply_over_udp(demo: RunningServer) -> None:
    wire = make_wire("httpenv.default.svc.cluster.local", qid=0x5151)
    assert udp_exchange(demo, with_flags(wire, 0x8100), timeout=0.5) is None
    # ...while the same packet without QR is answered.
    assert udp_exchange(demo, wire) is not None


def test_s4_a_packet_with_qr_set_gets_no_reply_over_tcp(demo: RunningServer) -> None:
    response = with_flags(make_wire("httpenv.default.svc.cluster.local", qid=0x6161), 0x8500)
    query = make_wire("web.default.svc.cluster.local", qid=0x6262)
    with socket.create_connection((demo.host, demo.port), timeout=STEP) as conn:
        conn.sendall(frame(response) + frame(query))
        first = dns.message.from_wire(tcp_read_message(conn))
        assert first.id == 0x6262, "the first reply is for the real query"
        conn.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn.recv(1)


def test_s4_packets_shorter_than_a_header_get_no_reply(demo: RunningServer) -> None:
    for junk in (b"", b"\x12", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00"):
        assert udp_exchange(demo, junk, timeout=0.3) is None


def _formerr_checks(wire: bytes, qid: int, opcode_flags: int = 0x0100) -> tuple[int, int]:
    ident, flags, qd, an, ns, ar = header(wire)
    assert ident == qid
    assert flags & 0x8000, "QR"
    assert flags & 0x000F == dns.rcode.FORMERR
    assert flags & 0x7800 == opcode_flags & 0x7800
    assert (an, ns) == (0, 0)
    return qd, ar


def test_s4_formerr_for_a_truncated_question_echoes_the_id(demo: RunningServer,
                                                           proto: str) -> None:
    full = make_wire("httpenv.default.svc.cluster.local", qid=0x7001)
    for cut in (13, 20, len(full) - 3, len(full) - 1):
        wire = raw_exchange(demo, full[:cut], proto)
        qd, _ = _formerr_checks(wire, 0x7001)
        assert qd == 0 and len(wire) == 12, "an unreadable question is not echoed"


def test_s4_formerr_for_qdcount_2_with_one_question_echoes_the_question(
        demo: RunningServer, proto: str) -> None:
    one = make_wire("httpenv.default.svc.cluster.local", qid=0x7002)
    wire = raw_exchange(demo, with_counts(one, qd=2), proto)
    qd, _ = _formerr_checks(wire, 0x7002)
    assert qd == 1
    assert wire[12:] == question_bytes(one)


def test_s4_formerr_for_two_questions_echoes_the_first(demo: RunningServer, proto: str) -> None:
    one = make_wire("httpenv.default.svc.cluster.local", qid=0x7003)
    two = make_wire("web.default.svc.cluster.local", qid=0x7003)
    wire = raw_exchange(demo, with_counts(one, qd=2) + question_bytes(two), proto)
    qd, ar = _formerr_checks(wire, 0x7003)
    assert qd == 1 and ar == 0
    assert wire[12:] == question_bytes(one)


def test_s4_formerr_for_qdcount_0(demo: RunningServer, proto: str) -> None:
    wire = raw_exchange(demo, struct.pack("!HHHHHH", 0x7004, 0x0100, 0, 0, 0, 0), proto)
    qd, _ = _formerr_checks(wire, 0x7004)
    assert qd == 0 and len(wire) == 12


def test_s4_formerr_for_qdcount_0_with_edns_keeps_the_opt(demo: RunningServer,
                                                          proto: str) -> None:
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    wire = raw_exchange(demo, struct.pack("!HHHHHH", 0x7005, 0x0100, 0, 0, 0, 1) + opt, proto)
    qd, ar = _formerr_checks(wire, 0x7005)
    assert qd == 0 and ar == 1
    msg = dns.message.from_wire(wire)
    assert msg.edns == 0


def test_s4_formerr_for_garbage_after_a_readable_header_echoes_the_id(
        demo: RunningServer, proto: str) -> None:
    wire = raw_exchange(demo, struct.pack("!HHHHHH", 0x7006, 0x0000, 1, 0, 0, 0) + b"\xff" * 9,
                        proto)
    _formerr_checks(wire, 0x7006, opcode_flags=0)


@pytest.mark.parametrize("opcode", [dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE])
def test_s4_notimp_for_opcodes_other_than_query(demo: RunningServer, proto: str,
                                                opcode: dns.opcode.Opcode) -> None:
    query = make_wire("cluster.local", "SOA", qid=0x7100 + int(opcode))
    query = with_flags(query, int(opcode) << 11)
    wire = raw_exchange(demo, query, proto)
    ident, flags, qd, an, ns, ar = header(wire)
    assert ident == 0x7100 + int(opcode)
    assert flags & 0x8000
    assert (flags >> 11) & 0xF == int(opcode), "the opcode is copied into the reply"
    assert flags & 0xF == dns.rcode.NOTIMP
    assert (qd, an, ns, ar) == (1, 0, 0, 0)
    assert wire[12:] == question_bytes(query)


@pytest.mark.parametrize("name", [
    "httpenv.default.svc.cluster.local",
    "rabbitmq.default.svc.cluster.local",
    "cluster.local",
    "dns-version.cluster.local",
])
def test_s4_any_gets_a_minimal_answer_of_one_hinfo_record(demo: RunningServer, proto: str,
                                                          name: str) -> None:
    msg = demo.ask(name, "ANY", tcp=is_tcp(proto))
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA
    assert len(msg.answer) == 1 and len(msg.answer[0]) == 1
    rrset = msg.answer[0]
    assert rrset.rdtype == dns.rdatatype.HINFO
    assert rrset.name == dns.name.from_text(name)
    rdata = rrset[0]
    assert isinstance(rdata, dns.rdtypes.ANY.HINFO.HINFO)
    assert rdata.cpu == b"RFC8482"
    assert not msg.authority and not msg.additional


def test_s4_any_for_a_big_rrset_is_still_one_record(demo: RunningServer) -> None:
    msg = demo.ask(BIG, "ANY", edns=False)
    assert not msg.flags & dns.flags.TC
    assert len(msg.answer) == 1 and len(msg.answer[0]) == 1


def test_s4_any_for_a_name_that_does_not_exist_is_nxdomain(demo: RunningServer) -> None:
    msg = demo.ask("nope.default.svc.cluster.local", "ANY")
    assert msg.rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
@pytest.mark.parametrize("zone", ["cluster.local", "in-addr.arpa"])
def test_s4_zone_transfers_are_refused(demo: RunningServer, proto: str, rdtype: str,
                                       zone: str) -> None:
    wire = raw_exchange(demo, make_wire(zone, rdtype, qid=0x7200), proto)
    msg = dns.message.from_wire(wire)
    assert msg.id == 0x7200
    assert msg.rcode() == dns.rcode.REFUSED
    assert not msg.answer


def test_s4_edns_version_1_gets_badvers_with_our_version_0_opt(demo: RunningServer,
                                                                proto: str) -> None:
    query = make_wire("httpenv.default.svc.cluster.local", qid=0x7300, edns=1)
    msg = dns.message.from_wire(raw_exchange(demo, query, proto))
    assert msg.id == 0x7300
    assert msg.rcode() == dns.rcode.BADVERS
    assert msg.edns == 0
    assert msg.payload == 1232
    assert not msg.answer


@pytest.mark.parametrize("rdclass", ["CH", "HS"])
def test_s4_class_other_than_in_is_refused(demo: RunningServer, proto: str,
                                           rdclass: str) -> None:
    wire = raw_exchange(demo, make_wire("dns-version.cluster.local", "TXT", rdclass=rdclass),
                        proto)
    msg = dns.message.from_wire(wire)
    assert msg.rcode() == dns.rcode.REFUSED
    assert not msg.answer


def test_s4_recursion_desired_is_copied_into_the_reply(demo: RunningServer) -> None:
    for flags in (0x0000, 0x0100):
        query = with_flags(make_wire("httpenv.default.svc.cluster.local"), flags)
        wire = udp_exchange(demo, query)
        assert wire is not None
        reply_flags = header(wire)[1]
        assert reply_flags & 0x0100 == flags & 0x0100
