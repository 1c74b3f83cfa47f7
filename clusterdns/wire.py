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


def _question_bytes(data: bytes) -> bytes:
    """The first question's raw bytes, or b"" when it cannot be read."""
    if len(data) < HEADER.size or HEADER.unpack_from(data)[2] < 1:
        return b""
    try:
        buf = dnslib.DNSBuffer(data)
        buf.offset = HEADER.size
        dnslib.DNSQuestion.parse(buf)
        return bytes(data[HEADER.size: buf.offset])
    except Exception:
        return b""


def parse(data: bytes) -> Query:
    header = peek_header(data)
    try:
        msg = dnslib.DNSRecord.parse(data)
    except Exception as exc:
        raise Malformed(f"unparseable: {exc}", header, _question_bytes(data)) from None
    assert header is not None
    opts = [r for r in msg.ar if r.rtype == rr.RRType.OPT]
    edns: Edns | None = None
    question = msg.questions[0] if msg.questions else None
    if len(opts) > 1 or (opts and tuple(opts[0].rname.label)):
        raise Malformed("bad OPT record", header, _question_bytes(data))
    if opts:
        opt = opts[0]
        options = tuple((o.code, bytes(o.data)) for o in opt.rdata) if isinstance(
            opt.rdata, list) else ()
        edns = Edns(payload=opt.rclass, version=(opt.ttl >> 16) & 0xFF,
                    do=bool(opt.ttl & 0x8000), options=options)
    return Query(
        id=header[0], flags=header[1], qdcount=len(msg.questions),
        qname=normal_name(question.qname.label) if question is not None else "",
        qtype=question.qtype if question is not None else 0,
        qclass=question.qclass if question is not None else 0,
        edns=edns, question=question,
    )


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
    return dnslib.EDNS0(udp_len=server_max, ext_rcode=ext_rcode, opts=opts)


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
    opt = _opt(query, server_max, decision.ede, 0) if query.edns is not None else None

    sections = [_rrsets(decision.answer), _rrsets(decision.authority),
                _rrsets(decision.additional)]
    groups = [(i, [_rr(r, query) for r in rs]) for i, sec in enumerate(sections) for rs in sec]
    required = len(sections[0]) + len(sections[1])

    def pack(keep: int) -> bytes:
        tc = FLAG_TC if keep < required else 0
        msg = dnslib.DNSRecord(dnslib.DNSHeader(id=query.id), q=query.question)
        msg.header.bitmap = flags | tc
        for section, rrs in groups[:keep]:
            (msg.rr if section == 0 else msg.auth if section == 1 else msg.ar).extend(rrs)
        if opt is not None:
            msg.ar.append(opt)
        return bytes(msg.pack())

    full = pack(len(groups))
    if len(full) <= limit:
        return full
    lo, hi = 0, len(groups) - 1  # largest prefix of RRsets that fits
    best = pack(0)
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
