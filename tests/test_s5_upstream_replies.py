"""§S5: reading upstream replies, which an upstream (or whoever spoofs one) controls.

``wire.read_reply`` reads them by RFC 1035 §4.1 itself: any octet in a label (RFC 2181
§11; a name with such a label used to fail the whole reply, answer SERVFAIL and mark a
healthy upstream dead), compression pointers only backwards (no loops), names of at most
255 octets, record data that matches its length. ``wire.relay`` writes the records on:
names in RFC 1035 record data compressed again, SRV targets whole (RFC 2782), other data
byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from upstream import FakeUpstream

from clusterdns import wire
from conftest import RunningServer

ODD = dns.name.Name([b"\xff\x00.x", b"\xc3\x28", b"example", b""])  # not UTF-8, a dot, a NUL


def reply_to(qname: dns.name.Name, rdtype: str, *rrsets: dns.rrset.RRset,
             authority: tuple[dns.rrset.RRset, ...] = (), ident: int = 7) -> bytes:
    query = dns.message.make_query(qname, rdtype, use_edns=0)
    query.id = ident
    response = dns.message.make_response(query)
    response.answer.extend(rrsets)
    response.authority.extend(authority)
    return response.to_wire()


def client(qname: dns.name.Name, rdtype: str) -> wire.Query:
    return wire.parse(dns.message.make_query(qname, rdtype, use_edns=0).to_wire())


def read(data: bytes, qname: dns.name.Name, rdtype: str) -> wire.UpstreamReply:
    labels = [bytes(label) for label in qname.labels[:-1]]
    reply = wire.read_reply(data, 7, labels, dns.rdatatype.from_text(rdtype), 1)
    assert reply is not None
    return reply


def relayed(data: bytes, qname: dns.name.Name, rdtype: str) -> dns.message.Message:
    out = wire.relay(client(qname, rdtype), read(data, qname, rdtype), 65535, 1232)
    return dns.message.from_wire(out)


def test_labels_of_any_octets_are_read_and_relayed_exactly() -> None:
    target = dns.name.Name([b"\x00\xfe", b"odd", b"example", b""])
    wire_target = target.to_wire()
    assert wire_target is not None
    data = reply_to(ODD, "CNAME", dns.rrset.from_rdata(
        ODD, 60, dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.CNAME,
                                     wire_target, 0, len(wire_target))))
    msg = relayed(data, ODD, "CNAME")
    assert msg.answer[0].name == ODD
    assert msg.answer[0][0].target == target


@pytest.mark.parametrize("rdtype, text", [
    ("MX", "10 mail.example."), ("NS", "ns1.example."), ("PTR", "host.example."),
    ("SOA", "ns.example. admin.example. 1 2 3 4 5"), ("SRV", "0 5 443 svc.example."),
    ("TXT", '"hello" "world"'), ("CAA", '0 issue "ca.example"'),
    ("AAAA", "2001:db8::1"), ("HTTPS", "1 . alpn=h2"),
])
def test_records_with_and_without_names_in_their_data_relay_unchanged(
        rdtype: str, text: str) -> None:
    owner = dns.name.from_text("www.example.")
    rrset = dns.rrset.from_text(owner, 60, "IN", rdtype, text)
    msg = relayed(reply_to(owner, rdtype, rrset), owner, rdtype)
    assert msg.answer == [rrset]


def test_an_srv_target_compressed_by_the_upstream_is_relayed_whole() -> None:
    owner = dns.name.from_text("_x._tcp.example.")
    question = dns.message.make_query(owner, "SRV", use_edns=False).to_wire()[12:]
    # An SRV whose target "example." is a pointer into the question (offset 12 + 8).
    rdata = struct.pack("!HHH", 0, 5, 80) + b"\x03svc" + bytes([0xC0, 12 + 8])
    record = b"\xc0\x0c" + struct.pack("!HHIH", 33, 1, 60, len(rdata)) + rdata
    data = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + question + record
    out = wire.relay(client(owner, "SRV"), read(data, owner, "SRV"), 65535, 1232)
    assert b"\x03svc\x07example\x00" in out  # no pointer in an SRV target
    assert dns.message.from_wire(out).answer[0][0].target == dns.name.from_text(
        "svc.example.")


def test_a_ttl_with_the_top_bit_set_counts_as_zero() -> None:
    owner = dns.name.from_text("www.example.")
    data = bytearray(reply_to(owner, "A", dns.rrset.from_text(owner, 60, "IN", "A", "1.2.3.4")))
    ttl_at = data.rindex(struct.pack("!I", 60))
    data[ttl_at:ttl_at + 4] = struct.pack("!I", 0x80000001)
    assert read(bytes(data), owner, "A").answer[0].ttl == 0


Mangle = Callable[[bytearray, int], None]


def _point_at_itself(data: bytearray, at: int) -> None:
    data[at:at + 2] = bytes([0xC0 | (at >> 8), at & 0xFF])


def _point_forwards(data: bytearray, at: int) -> None:
    data[at:at + 2] = bytes([0xC0, at + 4])


def _cut_short(data: bytearray, at: int) -> None:
    del data[at + 5:]


@pytest.mark.parametrize("mangle", [_point_at_itself, _point_forwards, _cut_short])
def test_a_reply_with_a_bad_pointer_or_cut_short_is_malformed(mangle: Mangle) -> None:
    owner = dns.name.from_text("www.example.")
    data = bytearray(reply_to(owner, "A", dns.rrset.from_text(owner, 60, "IN", "A", "1.2.3.4")))
    at = data.index(b"\xc0\x0c")  # the answer's owner, a pointer to the question
    mangle(data, at)
    with pytest.raises(wire.Malformed):
        wire.read_reply(bytes(data), 7, [b"www", b"example"], 1, 1)


def test_a_name_longer_than_255_octets_through_pointers_is_malformed() -> None:
    owner = dns.name.from_text("www.example.")
    question = dns.message.make_query(owner, "A", use_edns=False).to_wire()[12:]
    # The answer's owner: 4 labels of 63 octets, then a pointer to the 13-octet question
    # name: 4 x 64 + 13 = 269 octets.
    long_owner = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\xc0\x0c"
    record = long_owner + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(4)
    data = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + question + record
    with pytest.raises(wire.Malformed):
        wire.read_reply(data, 7, [b"www", b"example"], 1, 1)


def test_a_record_whose_names_overrun_its_data_length_is_malformed() -> None:
    owner = dns.name.from_text("www.example.")
    data = bytearray(reply_to(owner, "CNAME", dns.rrset.from_text(
        owner, 60, "IN", "CNAME", "other.example.")))
    rdlen_at = data.rindex(b"\x00\x05\x00\x01") + 8  # CNAME IN, TTL, then RDLENGTH
    data[rdlen_at:rdlen_at + 2] = struct.pack("!H", 3)
    with pytest.raises(wire.Malformed):
        wire.read_reply(bytes(data), 7, [b"www", b"example"], 5, 1)


def test_s5_a_name_with_odd_octets_is_forwarded_and_the_upstream_stays_healthy(
        make_server: Callable[..., RunningServer]) -> None:
    upstream = FakeUpstream(["example. 300 IN SOA ns.example. admin.example. 1 2 3 4 60"])
    try:
        server = make_server(upstreams=(upstream.address,), loop_detect=False)
        for _ in range(2):  # from the upstream, then from the cache
            reply = server.ask(ODD.to_text(), "A")
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert reply.question[0].name == ODD
        forwarder = server.app.forwarder
        assert forwarder is not None and not forwarder.stats.failures
        fast = server.app.handler.fast
        assert fast is not None  # the second answer came from the cache, by the fast path
        assert forwarder.stats.cache_hits["denial"] + fast.hits.cache_hits()["denial"] == 1
    finally:
        upstream.close()
