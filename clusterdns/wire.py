"""The one codec: bytes <-> queries and replies.

Only this module knows the DNS byte layout or imports dnslib. ``parse`` turns a
datagram into a ``Query`` (or raises ``Malformed`` carrying whatever of the header and
question could be read); ``encode`` turns a ``Decision`` into reply bytes, with the
outcome -> rcode/flags mapping, EDNS (RFC 6891), extended errors (RFC 8914), owner
names spelled as the query spelled them (DNS 0x20) and truncation at RRset boundaries.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dnslib

from clusterdns import records as rr
from clusterdns.records import Record
from clusterdns.resolve import EDE, Decision, Outcome

HEADER = struct.Struct("!HHHHHH")
MIN_UDP = 512
TCP_MAX = 65535
OPT_EDE = 15
RCODE = {
    Outcome.SUCCESS: 0, Outcome.NODATA: 0, Outcome.FORMERR: 1, Outcome.SERVFAIL: 2,
    Outcome.NXDOMAIN: 3, Outcome.NOTIMP: 4, Outcome.REFUSED: 5,
}
BADVERS = 16

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_CD = 0x0010


@dataclass(frozen=True, slots=True)
class Edns:
    payload: int
    version: int
    do: bool
    options: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int  # the raw header flags word
    qdcount: int
    qname: str  # normal form: lower-case, no trailing dot; "" for the root
    qtype: int
    qclass: int
    edns: Edns | None
    question: Any  # the dnslib question, re-encoded byte for byte in replies

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def labels(self) -> tuple[bytes, ...]:
        return tuple(self.question.qname.label)

    def udp_limit(self, server_max: int) -> int:
        """SPEC §S4: 512 without EDNS, else the client's size clamped to ours."""
        if self.edns is None:
            return MIN_UDP
        return max(MIN_UDP, min(self.edns.payload, server_max))


class Malformed(Exception):
    """The packet is not a well-formed query; FORMERR echoes what could be read."""

    def __init__(self, reason: str, header: tuple[int, int] | None, question: bytes) -> None:
        super().__init__(reason)
        self.header = header  # (id, flags) when the 12-byte header was there
        self.question = question  # raw question bytes when readable, else b""


def peek_header(data: bytes) -> tuple[int, int] | None:
    """(id, flags) of a packet long enough to have a header."""
    if len(data) < HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    return ident, flags


def is_response(flags: int) -> bool:
    return bool(flags & FLAG_QR)


def normal_name(labels: Sequence[bytes]) -> str:
    """Normal form of wire labels; a dot inside a label is escaped so it matches nothing."""
    return ".".join(lab.decode("latin-1").replace(".", "\\.") for lab in labels).lower()


class _Bad(Exception):
    """Internal: where parsing stopped and why."""


def _read_labels(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """An uncompressed name at ``pos`` (a question name cannot point anywhere valid)."""
    labels: list[bytes] = []
    total = 1
    while True:
        if pos >= len(data):
            raise _Bad("name runs past the end of the packet")
        length = data[pos]
        if length == 0:
            return labels, pos + 1
        if length & 0xC0:
            raise _Bad("compression pointer or extended label in the question name")
        end = pos + 1 + length
        if end > len(data):
            raise _Bad("label runs past the end of the packet")
        total += length + 1
        if total > 255:
            raise _Bad("name longer than 255 octets")
        labels.append(bytes(data[pos + 1:end]))
        pos = end


def _skip_name(data: bytes, pos: int) -> int:
    """Offset after a possibly compressed name (RR owners in queries are rarely used)."""
    while True:
        if pos >= len(data):
            raise _Bad("name runs past the end of the packet")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 2 > len(data):
                raise _Bad("truncated compression pointer")
            return pos + 2
        if length & 0xC0:
            raise _Bad("extended label type")
        if length == 0:
            return pos + 1
        pos += 1 + length


def parse(data: bytes) -> Query:
    """A query from wire bytes, strictly: anything malformed raises ``Malformed``.

    Any octet is legal in a label (RFC 2181 §11); such names simply are not ours.
    """
    header = peek_header(data)
    if header is None:
        raise Malformed("shorter than a DNS header", None, b"")
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    pos = HEADER.size
    labels: list[bytes] | None = None
    qtype = qclass = 0
    question_raw = b""
    try:
        if qd >= 1:
            labels, pos = _read_labels(data, pos)
            if pos + 4 > len(data):
                raise _Bad("question type and class missing")
            qtype, qclass = struct.unpack_from("!HH", data, pos)
            pos += 4
            question_raw = bytes(data[HEADER.size:pos])
            for _ in range(qd - 1):  # further questions: skip them (QDCOUNT != 1 is FORMERR)
                _, pos = _read_labels(data, pos)
                pos += 4
        edns: Edns | None = None
        for index in range(an + ns + ar):
            owner = pos
            pos = _skip_name(data, pos)
            if pos + 10 > len(data):
                raise _Bad("resource record header runs past the end")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
            pos += 10
            if pos + rdlen > len(data):
                raise _Bad("rdata runs past the end")
            if rtype == rr.RRType.OPT:
                if index < an + ns or data[owner] != 0 or edns is not None:
                    raise _Bad("OPT must be a single record with the root name in Additional")
                edns = Edns(rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000),
                            _options(data[pos:pos + rdlen]))
            pos += rdlen
    except (_Bad, struct.error) as exc:
        raise Malformed(str(exc), header, question_raw) from None
    question = None
    if labels is not None:
        question = dnslib.DNSQuestion(dnslib.DNSLabel(labels), qtype, qclass)
    return Query(
        id=header[0], flags=header[1], qdcount=qd,
        qname=normal_name(labels) if labels is not None else "",
        qtype=qtype, qclass=qclass, edns=edns, question=question,
    )


def _options(rdata: bytes) -> tuple[tuple[int, bytes], ...]:
    out = []
    pos = 0
    while pos < len(rdata):
        if pos + 4 > len(rdata):
            raise _Bad("truncated EDNS option")
        code, length = struct.unpack_from("!HH", rdata, pos)
        pos += 4
        if pos + length > len(rdata):
            raise _Bad("EDNS option runs past the OPT record")
        out.append((code, bytes(rdata[pos:pos + length])))
        pos += length
    return tuple(out)


# ----------------------------------------------------------------------------- encoding


def _spell(name: str, query: Query | None) -> dnslib.DNSLabel:
    """Owner name with the query's letter case on the labels it shares with the qname."""
    labels = [lab.encode("latin-1") for lab in name.split(".")] if name else []
    if query is None or query.question is None:
        return dnslib.DNSLabel(labels)
    qlabels = query.labels
    i = 1
    while i <= len(labels) and i <= len(qlabels) and labels[-i] == qlabels[-i].lower():
        labels[-i] = qlabels[-i]
        i += 1
    return dnslib.DNSLabel(labels)


def _rdata(data: rr.RData) -> tuple[int, Any]:
    if isinstance(data, rr.A):
        return rr.RRType.A, dnslib.A(data.address)
    if isinstance(data, rr.AAAA):
        return rr.RRType.AAAA, dnslib.AAAA(data.address)
    if isinstance(data, rr.CNAME):
        return rr.RRType.CNAME, dnslib.CNAME(data.target + ".")
    if isinstance(data, rr.PTR):
        return rr.RRType.PTR, dnslib.PTR(data.target + ".")
    if isinstance(data, rr.NS):
        return rr.RRType.NS, dnslib.NS(data.target + ".")
    if isinstance(data, rr.SRV):
        return rr.RRType.SRV, dnslib.SRV(data.priority, data.weight, data.port, data.target + ".")
    if isinstance(data, rr.SOA):
        return rr.RRType.SOA, dnslib.SOA(data.mname + ".", data.rname + ".", (
            data.serial, data.refresh, data.retry, data.expire, data.minimum))
    if isinstance(data, rr.TXT):
        return rr.RRType.TXT, dnslib.TXT([s.encode() for s in data.strings])
    blob = b"".join(bytes([len(s)]) + s for s in (data.cpu.encode(), data.os.encode()))
    return rr.RRType.HINFO, dnslib.RD(blob)


def _rr(record: Record, query: Query | None) -> Any:
    rtype, rdata = _rdata(record.data)
    return dnslib.RR(_spell(record.name, query), rtype, 1, record.ttl, rdata)


def _rrsets(recs: Sequence[Record]) -> list[list[Record]]:
    """Split a section into RRsets: consecutive records with the same owner and type."""
    out: list[list[Record]] = []
    for rec in recs:
        if out and out[-1][0].name == rec.name and out[-1][0].rtype == rec.rtype:
            out[-1].append(rec)
        else:
            out.append([rec])
    return out


def _opt(query: Query, server_max: int, ede: tuple[int, str] | None, ext_rcode: int) -> Any:
    opts = []
    if ede is not None:
        code, text = ede
        opts.append(dnslib.EDNSOption(OPT_EDE, struct.pack("!H", code) + text.encode()))
    # RFC 3225 §3: the DO bit is copied from the query (we sign nothing, so it changes
    # nothing else).
    flags = "do" if query.edns is not None and query.edns.do else ""
    return dnslib.EDNS0(udp_len=server_max, ext_rcode=ext_rcode, flags=flags, opts=opts)


def encode(query: Query, decision: Decision, limit: int, server_max: int,
           *, recursion_available: bool = False) -> bytes:
    """Reply bytes no larger than ``limit``.

    Too large: whole RRsets are dropped from the end, Additional first. TC is set
    when an Answer or Authority RRset had to go; dropping only Additional data does
    not set TC (RFC 2181 §9), since the answer itself is complete.
    """
    rcode = RCODE[decision.outcome]
    flags = FLAG_QR | (query.flags & (0x7800 | FLAG_RD | FLAG_CD)) | rcode
    if decision.authoritative:
        flags |= FLAG_AA
    if recursion_available:
        flags |= 0x0080

    sections = [_rrsets(decision.answer), _rrsets(decision.authority),
                _rrsets(decision.additional)]
    groups = [(i, [_rr(r, query) for r in rs]) for i, sec in enumerate(sections) for rs in sec]
    required = len(sections[0]) + len(sections[1])

    def pack(keep: int, explain: bool = True) -> bytes:
        tc = FLAG_TC if keep < required else 0
        msg = dnslib.DNSRecord(dnslib.DNSHeader(id=query.id), q=query.question)
        msg.header.bitmap = flags | tc
        for section, rrs in groups[:keep]:
            (msg.rr if section == 0 else msg.auth if section == 1 else msg.ar).extend(rrs)
        if query.edns is not None:
            msg.ar.append(_opt(query, server_max, decision.ede if explain else None, 0))
        return bytes(msg.pack())

    full = pack(len(groups))
    if len(full) <= limit:
        return full
    lo, hi = 0, len(groups) - 1  # largest prefix of RRsets that fits
    best = pack(0)
    if len(best) > limit:  # a long extended-error text is the last thing to give way
        return pack(0, explain=False)
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = pack(mid)
        if len(candidate) <= limit:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def encode_error(query: Query | None, header: tuple[int, int] | None, question: bytes,
                 outcome: Outcome, server_max: int,
                 ede: tuple[EDE, str] | None = None) -> bytes:
    """FORMERR / NOTIMP / REFUSED / SERVFAIL without records.

    With a parsed query the reply goes through ``encode``; for a packet we could not
    parse we write the header and the raw question bytes ourselves.
    """
    if query is not None:
        return encode(query, Decision(outcome, ede=ede), TCP_MAX, server_max)
    assert header is not None
    ident, qflags = header
    flags = FLAG_QR | (qflags & (0x7800 | FLAG_RD | FLAG_CD)) | RCODE[outcome]
    return HEADER.pack(ident, flags, 1 if question else 0, 0, 0, 0) + question


def encode_badvers(query: Query, server_max: int) -> bytes:
    """RFC 6891 §6.1.3: an EDNS version we do not speak gets BADVERS with our OPT."""
    flags = FLAG_QR | (query.flags & (0x7800 | FLAG_RD | FLAG_CD)) | (BADVERS & 0xF)
    msg = dnslib.DNSRecord(dnslib.DNSHeader(id=query.id), q=query.question)
    msg.header.bitmap = flags
    msg.ar.append(_opt(query, server_max, (0, "only EDNS version 0 is supported"),
                       BADVERS >> 4))
    return bytes(msg.pack())
