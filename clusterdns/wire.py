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
    return _fit(query, flags, groups, required, limit, server_max, decision.ede)


def _fit(query: Query, flags: int, groups: list[tuple[int, list[Any]]], required: int,
         limit: int, server_max: int, ede: tuple[int, str] | None) -> bytes:
    """Pack the largest prefix of RRset ``groups`` (section index, dnslib RRs) that fits.

    The first ``required`` groups are Answer and Authority: leaving any of them out sets TC.
    """

    def pack(keep: int, explain: bool = True) -> bytes:
        tc = FLAG_TC if keep < required else 0
        msg = dnslib.DNSRecord(dnslib.DNSHeader(id=query.id), q=query.question)
        msg.header.bitmap = flags | tc
        for section, rrs in groups[:keep]:
            (msg.rr if section == 0 else msg.auth if section == 1 else msg.ar).extend(rrs)
        if query.edns is not None:
            msg.ar.append(_opt(query, server_max, ede if explain else None, 0))
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


# --------------------------------------------------------------------------- forwarding
# Packet-level help for ``forward``: the query we send upstream, the checks a reply must
# pass before we believe it, its cache lifetime (RFC 2308) and the reply we relay.

FLAG_RA = 0x0080
FLAG_AD = 0x0020
RCODE_NOERROR = 0
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_REFUSED = 5
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH",
               10: "NOTZONE"}
EDE_STALE_ANSWER = 3  # RFC 8914 §4.4
EDE_NO_REACHABLE_AUTHORITY = 22  # RFC 8914 §4.23
STALE_TTL = 30  # RFC 8767 §4: TTL of records in a stale answer
UPSTREAM_PAYLOAD = 1232


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """An upstream's reply that matched our query; records are dnslib RRs (never mutated)."""

    rcode: int
    flags: int
    answer: tuple[Any, ...]
    authority: tuple[Any, ...]
    additional: tuple[Any, ...]  # without OPT

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def rcode_name(self) -> str:
        return RCODE_NAMES.get(self.rcode, f"RCODE{self.rcode}")


def labels_of(name: str) -> tuple[bytes, ...]:
    """Wire labels of a normal-form name ("" is the root)."""
    return tuple(label.encode("latin-1") for label in name.split(".")) if name else ()


def upstream_query(labels: Sequence[bytes], qtype: int, qclass: int, ident: int, *,
                   do: bool = False, cd: bool = False) -> bytes:
    """A recursive query (RD set, CD as asked) with an OPT advertising 1232 bytes."""
    flags = FLAG_RD | (FLAG_CD if cd else 0)
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    opt = b"\x00" + struct.pack("!HHIH", rr.RRType.OPT, UPSTREAM_PAYLOAD,
                                0x8000 if do else 0, 0)
    return (HEADER.pack(ident, flags, 1, 0, 0, 1) + name + struct.pack("!HH", qtype, qclass)
            + opt)


def read_reply(data: bytes, ident: int, labels: Sequence[bytes], qtype: int,
               qclass: int) -> UpstreamReply | None:
    """The upstream reply in ``data`` if it answers our query, None if it does not.

    A packet with another ID, without QR, or with another question (compared without
    regard to letter case) is not ours and is discarded. One that carries our ID but
    cannot be parsed raises ``Malformed``; the caller retries over TCP. A truncated
    reply without a question is accepted as truncated (the TCP retry will tell).
    """
    header = peek_header(data)
    if header is None or header[0] != ident or not header[1] & FLAG_QR:
        return None
    try:
        msg = dnslib.DNSRecord.parse(data)
    except Exception as exc:  # dnslib raises several kinds on garbage
        raise Malformed(f"unparseable upstream reply: {exc}", header, b"") from None
    flags = header[1]
    if (flags >> 11) & 0xF != 0:
        return None
    if not msg.questions and flags & FLAG_TC:
        return UpstreamReply(flags & 0xF, flags, (), (), ())
    if len(msg.questions) != 1:
        return None
    question = msg.questions[0]
    asked = [label.lower() for label in labels]
    if ([bytes(label).lower() for label in question.qname.label] != asked
            or question.qtype != qtype or question.qclass != qclass):
        return None
    return UpstreamReply(
        rcode=flags & 0xF, flags=flags, answer=tuple(msg.rr), authority=tuple(msg.auth),
        additional=tuple(r for r in msg.ar if r.rtype != rr.RRType.OPT))


def cache_lifetime(reply: UpstreamReply) -> tuple[str, int] | None:
    """("success" | "denial", seconds) this reply may be cached for, None if not at all.

    Success: the smallest TTL of its records. Denial (NXDOMAIN, or NOERROR with an empty
    Answer) per RFC 2308 §5: the SOA in Authority gives min(SOA TTL, SOA MINIMUM); without
    an SOA a negative answer is not cached. Other rcodes and truncated replies are not
    cached.
    """
    if reply.truncated or reply.rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
        return None
    denial = reply.rcode == RCODE_NXDOMAIN or not reply.answer
    ttls = [r.ttl for r in (*reply.answer, *reply.authority, *reply.additional)
            if r.rtype != rr.RRType.SOA]
    soas = [min(r.ttl, r.rdata.times[4]) for r in reply.authority
            if r.rtype == rr.RRType.SOA and isinstance(r.rdata, dnslib.SOA)]
    if denial:
        if not soas:
            return None
        return "denial", min([*soas, *(r.ttl for r in reply.answer)])
    all_ttls = ttls + soas
    return "success", min(all_ttls) if all_ttls else 0


def _respell(label: Any, query: Query) -> Any:
    """An upstream owner name with the query's letter case on the labels it shares."""
    labels = list(label.label)
    qlabels = query.labels
    i = 1
    while (i <= len(labels) and i <= len(qlabels)
           and bytes(labels[-i]).lower() == qlabels[-i].lower()):
        labels[-i] = qlabels[-i]
        i += 1
    return dnslib.DNSLabel(labels)


def _upstream_rrsets(records: Sequence[Any], query: Query, ttl: Any) -> list[list[Any]]:
    out: list[list[Any]] = []
    last: tuple[bytes, int] | None = None
    for rec in records:
        key = (str(rec.rname).lower().encode(), rec.rtype)
        copy = dnslib.RR(_respell(rec.rname, query), rec.rtype, rec.rclass, ttl(rec.ttl),
                         rec.rdata)
        if out and key == last:
            out[-1].append(copy)
        else:
            out.append([copy])
        last = key
    return out


def relay(query: Query, reply: UpstreamReply, limit: int, server_max: int, *,
          chain: Sequence[Record] = (), ttl_cap: int | None = None, age: int = 0,
          stale: bool = False) -> bytes:
    """Our reply to ``query`` carrying the upstream's answer, no larger than ``limit``.

    The client's ID and question (with its letter case), RD/CD from the query, RA set,
    the upstream's rcode, our own OPT. ``chain`` (our CNAMEs of an ExternalName) goes in
    front of the upstream's Answer and makes the reply authoritative; otherwise AA is
    clear. TTLs are capped at ``ttl_cap`` and reduced by ``age``; a stale reply has
    TTL 30 everywhere upstream data appears and says so with an extended error.
    AD is kept only when the client showed it understands it (AD or DO, RFC 6840 §5.8).
    """
    flags = (FLAG_QR | FLAG_RA | (query.flags & (0x7800 | FLAG_RD | FLAG_CD))
             | (reply.rcode & 0xF))
    if chain:
        flags |= FLAG_AA
    wants_ad = bool(query.flags & FLAG_AD) or (query.edns is not None and query.edns.do)
    if reply.flags & FLAG_AD and wants_ad:
        flags |= FLAG_AD

    def ttl(value: int) -> int:
        if stale:
            return STALE_TTL
        if ttl_cap is not None:
            value = min(value, ttl_cap)
        return max(0, value - age)

    groups: list[tuple[int, list[Any]]] = [
        (0, [_rr(r, query) for r in rs]) for rs in _rrsets(chain)]
    for section, records in enumerate((reply.answer, reply.authority, reply.additional)):
        groups.extend((section, rs) for rs in _upstream_rrsets(records, query, ttl))
    required = sum(1 for section, _ in groups if section < 2)
    ede = (EDE_STALE_ANSWER, "serving stale data: no upstream answered") if stale else None
    return _fit(query, flags, groups, required, limit, server_max, ede)


def encode_forward_error(query: Query, outcome: Outcome, limit: int, server_max: int,
                         ede: tuple[int, str], chain: Sequence[Record] = ()) -> bytes:
    """SERVFAIL / REFUSED for a forwarded name (RA set), after ``chain`` if there is one."""
    flags = FLAG_QR | FLAG_RA | (query.flags & (0x7800 | FLAG_RD | FLAG_CD)) | RCODE[outcome]
    if chain:
        flags |= FLAG_AA
    groups: list[tuple[int, list[Any]]] = [
        (0, [_rr(r, query) for r in rs]) for rs in _rrsets(chain)]
    return _fit(query, flags, groups, len(groups), limit, server_max, ede)
