"""The one codec: bytes <-> queries and replies.

Only this module knows the DNS byte layout or imports dnslib. ``parse`` turns a
datagram into a ``Query`` (or raises ``Malformed`` carrying whatever of the header and
question could be read); ``encode`` turns a ``Decision`` into reply bytes, with the
outcome -> rcode/flags mapping, EDNS (RFC 6891), extended errors (RFC 8914), owner
names spelled as the query spelled them (DNS 0x20) and truncation at RRset boundaries.
Replies are written, and upstream replies read, by our own code: any octet may appear in
a label (RFC 2181 §11), which dnslib refuses, and a reply of thousands of records must
be written in milliseconds.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
FLAG_RA = 0x0080
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
    question: bytes  # the first question as sent (name, type, class), echoed in replies
    labels: tuple[bytes, ...]  # its name's labels as sent (DNS 0x20 letter case kept)
    raw: bytes = b""  # the whole query as received

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    def udp_limit(self, server_max: int) -> int:
        """SPEC §S4: 512 without EDNS, else the client's size clamped to ours (and to
        what one UDP datagram can carry)."""
        if self.edns is None:
            return MIN_UDP
        return max(MIN_UDP, min(self.edns.payload, server_max, UDP_MAX))


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
    """Normal form of wire labels; a dot inside a label is escaped so it matches nothing.

    Only ASCII letters are folded (RFC 4343): "É" and "é" are different octets.
    """
    return ".".join(lab.lower().decode("latin-1").replace(".", "\\.") for lab in labels)


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
    return Query(
        id=header[0], flags=header[1], qdcount=qd,
        qname=normal_name(labels) if labels is not None else "",
        qtype=qtype, qclass=qclass, edns=edns, question=question_raw,
        labels=tuple(labels) if labels is not None else (), raw=data,
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
# Replies are written by ``_Message``, one record at a time, so the size limit is checked
# as records go in: a headless service of thousands of endpoints is encoded in a few
# milliseconds, and cutting an RRset that does not fit even a TCP message costs nothing
# extra (dnslib, which this module used before, needed 120 ms to build and pack 5,900 A
# records, and fitting packed the message again for each step of a binary search).

MAX_POINTER = 0x3FFF
"""Compression pointers have 14 bits: names written further in are never pointed at."""
OPT_FIXED = 11
"""An OPT record without options: root owner, type, class, TTL, RDLENGTH."""
EDE_FIXED = 6
"""An extended-error option without text: code, length, INFO-CODE."""
UDP_MAX = 65507
"""The largest UDP payload over IPv4: no UDP reply is made larger, whatever EDNS says."""

_U16 = struct.Struct("!H")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH
_SRV_FIXED = struct.Struct("!HHH")
_SOA_TIMES = struct.Struct("!IIIII")
_INET6 = socket.AF_INET6


def _target_labels(name: str) -> tuple[bytes, ...]:
    """Wire labels of a name in record data (ours are ASCII; an IDN becomes punycode)."""
    if not name:
        return ()
    try:
        return tuple(name.encode("ascii").split(b"."))
    except UnicodeEncodeError:
        return tuple(name.encode("idna").split(b"."))


class _Message:
    """One reply being written: header, question, then records, with name compression.

    Compression (RFC 1035 §4.1.4) points only at names written before offset 0x4000 and
    matches label bytes exactly, so an owner name spelled in the query's letter case is
    never replaced by another spelling. ``mark`` and ``rollback`` take back records that
    did not fit, with the names they registered.
    """

    __slots__ = ("added", "buf", "names", "owners", "ttls")

    def __init__(self, ident: int, flags: int, question: bytes,
                 labels: tuple[bytes, ...]) -> None:
        self.buf = bytearray(HEADER.pack(ident, flags, 1 if question else 0, 0, 0, 0))
        self.names: dict[tuple[bytes, ...], int] = {}
        self.added: list[tuple[bytes, ...]] = []  # keys of ``names``, in offset order
        self.owners: dict[str, tuple[bytes, ...]] = {}  # our owner names, spelled
        self.ttls: list[tuple[int, int]] | None = None  # (offset, TTL) written, if asked
        if question:
            self._register(labels, HEADER.size, len(labels))
            self.buf += question

    def _register(self, labels: tuple[bytes, ...], offset: int, count: int) -> None:
        """Remember where the first ``count`` suffixes of ``labels`` start (from
        ``offset``), for later names to point at."""
        names = self.names
        for i in range(count):
            if offset > MAX_POINTER:
                return
            suffix = labels[i:]
            if suffix not in names:
                names[suffix] = offset
                self.added.append(suffix)
            offset += 1 + len(labels[i])

    def name(self, labels: tuple[bytes, ...], compress: bool = True) -> None:
        """Write a name: its labels up to the longest suffix already written, then a
        pointer to that suffix (or the root label when there is none)."""
        buf = self.buf
        count = len(labels)
        pointer = None
        if compress:
            names = self.names
            for i in range(count):
                pointer = names.get(labels[i:])
                if pointer is not None:
                    count = i
                    break
            self._register(labels, len(buf), count)
        for label in labels[:count]:
            buf.append(len(label))
            buf += label
        if pointer is None:
            buf.append(0)
        else:
            buf += _U16.pack(0xC000 | pointer)

    def mark(self) -> tuple[int, int]:
        return len(self.buf), len(self.added)

    def rollback(self, mark: tuple[int, int]) -> None:
        size, added = mark
        del self.buf[size:]
        if self.ttls is not None:
            while self.ttls and self.ttls[-1][0] >= size:
                self.ttls.pop()
        for key in self.added[added:]:
            del self.names[key]
        del self.added[added:]

    def record(self, rec: Record, query: Query) -> None:
        """One of our records; its owner keeps the query's letter case (DNS 0x20)."""
        labels = self.owners.get(rec.name)
        if labels is None:
            labels = self.owners[rec.name] = _spell(rec.name, query)
        self.name(labels)
        data = rec.data
        buf = self.buf
        if type(data) is rr.A:
            buf += _RR_FIXED.pack(rr.RRType.A, 1, rec.ttl, 4)
            buf += socket.inet_aton(data.address)
            return
        if type(data) is rr.AAAA:
            buf += _RR_FIXED.pack(rr.RRType.AAAA, 1, rec.ttl, 16)
            buf += socket.inet_pton(_INET6, data.address)
            return
        at = len(buf) + 8  # where RDLENGTH goes
        buf += _RR_FIXED.pack(rec.rtype, 1, rec.ttl, 0)
        if isinstance(data, rr.CNAME | rr.PTR | rr.NS):
            self.name(_target_labels(data.target))
        elif isinstance(data, rr.SRV):  # RFC 2782: the target is never compressed
            buf += _SRV_FIXED.pack(data.priority, data.weight, data.port)
            self.name(_target_labels(data.target), compress=False)
        elif isinstance(data, rr.SOA):
            self.name(_target_labels(data.mname))
            self.name(_target_labels(data.rname))
            buf += _SOA_TIMES.pack(data.serial, data.refresh, data.retry, data.expire,
                                   data.minimum)
        elif isinstance(data, rr.TXT):
            for text in data.strings:
                raw = text.encode()[:255]
                buf.append(len(raw))
                buf += raw
        elif isinstance(data, rr.HINFO):
            for text in (data.cpu, data.os):
                raw = text.encode()[:255]
                buf.append(len(raw))
                buf += raw
        _U16.pack_into(buf, at, len(buf) - at - 2)

    def foreign(self, item: _Foreign) -> None:
        """A record from an upstream reply (owner already respelled)."""
        self.name(item.owner)
        buf = self.buf
        at = len(buf) + 8
        if self.ttls is not None:
            self.ttls.append((at - 4, item.ttl))
        buf += _RR_FIXED.pack(item.rtype, item.rclass, item.ttl, 0)
        for part in item.rdata:
            if isinstance(part, tuple):
                self.name(part)
            else:
                buf += part
        _U16.pack_into(buf, at, len(buf) - at - 2)

    def write(self, item: Record | _Foreign, query: Query) -> None:
        if type(item) is _Foreign:
            self.foreign(item)
        else:
            self.record(item, query)  # type: ignore[arg-type]

    def opt(self, payload: int, ext_rcode: int, do: bool,
            ede: tuple[int, bytes] | None) -> None:
        """Our OPT record (RFC 6891 §6.1.2), with an extended error (RFC 8914) if given."""
        ttl = (ext_rcode << 24) | (0x8000 if do else 0)
        if ede is None:
            self.buf += b"\x00" + _RR_FIXED.pack(rr.RRType.OPT, payload, ttl, 0)
            return
        code, text = ede
        self.buf += b"\x00" + _RR_FIXED.pack(rr.RRType.OPT, payload, ttl, EDE_FIXED + len(text))
        self.buf += struct.pack("!HHH", OPT_EDE, 2 + len(text), code) + text

    def finish(self, flags: int, counts: Sequence[int]) -> bytes:
        struct.pack_into("!HHHH", self.buf, 2, flags, counts[0], counts[1], counts[2])
        struct.pack_into("!H", self.buf, 10, counts[3])
        return bytes(self.buf)


@dataclass(frozen=True, slots=True)
class _Foreign:
    """An upstream record ready to write: owner labels, and RDATA as raw bytes with the
    names that may be compressed (CNAME, NS, PTR, MX, SOA) kept as label tuples."""

    owner: tuple[bytes, ...]
    rtype: int
    rclass: int
    ttl: int
    rdata: tuple[bytes | tuple[bytes, ...], ...]


def _spell(name: str, query: Query | None) -> tuple[bytes, ...]:
    """Owner name with the query's letter case on the labels it shares with the qname."""
    labels = [lab.encode("latin-1") for lab in name.split(".")] if name else []
    if query is None or not query.labels:
        return tuple(labels)
    qlabels = query.labels
    i = 1
    while i <= len(labels) and i <= len(qlabels) and labels[-i] == qlabels[-i].lower():
        labels[-i] = qlabels[-i]
        i += 1
    return tuple(labels)


def _rrsets(recs: Sequence[Record]) -> list[list[Record]]:
    """Split a section into RRsets: consecutive records with the same owner and type."""
    out: list[list[Record]] = []
    for rec in recs:
        if out and out[-1][0].name == rec.name and type(out[-1][0].data) is type(rec.data):
            out[-1].append(rec)
        else:
            out.append([rec])
    return out


def _utf8_prefix(text: str, room: int) -> bytes:
    """At most ``room`` bytes of ``text`` in UTF-8, cut on a character boundary."""
    raw = text.encode()
    if len(raw) <= room:
        return raw
    return raw[:room].decode("utf-8", "ignore").encode()


Groups = list[tuple[int, Sequence[Any]]]
"""RRsets to write, in order: (section 0 Answer | 1 Authority | 2 Additional, records)."""


def encode(query: Query, decision: Decision, limit: int, server_max: int,
           *, recursion_available: bool = False) -> bytes:
    """Reply bytes no larger than ``limit``.

    Too large: whole RRsets are dropped from the end, Additional first. TC is set
    when an Answer or Authority RRset had to go; dropping only Additional data does
    not set TC (RFC 2181 §9), since the answer itself is complete. The extended-error
    text is optional and gives way first. In a TCP message (``limit`` is ``TCP_MAX``)
    an Answer RRset too large for any message is cut instead, to as many records as
    fit, and the extended error says so.
    """
    rcode = RCODE[decision.outcome]
    flags = FLAG_QR | (query.flags & (0x7800 | FLAG_RD | FLAG_CD)) | rcode
    if decision.authoritative:
        flags |= FLAG_AA
    if recursion_available:
        flags |= FLAG_RA
    groups: Groups = [(0, rs) for rs in _rrsets(decision.answer)]
    groups += [(1, rs) for rs in _rrsets(decision.authority)]
    required = len(groups)
    groups += [(2, rs) for rs in _rrsets(decision.additional)]
    return _fit(query, flags, groups, required, limit, server_max, decision.ede)


def _fit(query: Query, flags: int, groups: Groups, required: int, limit: int,
         server_max: int, ede: tuple[int, str] | None, ext_rcode: int = 0,
         ttls: list[tuple[int, int]] | None = None) -> bytes:
    """Write the longest prefix of ``groups`` that fits ``limit``, then our OPT.

    The first ``required`` groups are Answer and Authority: leaving any of them out sets
    TC, except that a TCP message cuts an Answer RRset no message could hold (see
    ``encode``). Records come before the extended-error text, which is shortened or
    dropped to fit what room is left.
    """
    msg = _Message(query.id, flags, query.question, query.labels)
    msg.ttls = ttls
    room = limit - (OPT_FIXED if query.edns is not None else 0)
    counts = [1 if query.question else 0, 0, 0, 0]
    buf = msg.buf
    for index, (section, items) in enumerate(groups):
        mark = msg.mark()
        cuttable = limit == TCP_MAX and section == 0
        marks: list[tuple[int, int]] = []  # before each record, when the RRset may be cut
        written = 0
        for item in items:
            if cuttable:
                marks.append(msg.mark())
            msg.write(item, query)
            if len(buf) <= room:
                written += 1
                continue
            if cuttable and written:  # no message holds the RRset: keep what fits,
                ede = (EDE.OTHER, f"answer cut to {written} of {len(items)} records: "
                                  "the whole RRset does not fit in one message")
                # leaving room to say so
                need = len(ede[1].encode()) + EDE_FIXED + OPT_FIXED
                while query.edns is not None and written > 1 and \
                        marks[written][0] + need > limit:
                    written -= 1
                msg.rollback(marks[written])
                ede = (EDE.OTHER, f"answer cut to {written} of {len(items)} records: "
                                  "the whole RRset does not fit in one message")
            else:
                msg.rollback(mark)
                written = 0
                if index < required:
                    flags |= FLAG_TC
            break
        counts[1 + section] += written
        if written < len(items):
            break
    if query.edns is not None:
        text = None
        if ede is not None:
            space = limit - len(buf) - OPT_FIXED - EDE_FIXED
            if space >= 0:
                text = (ede[0], _utf8_prefix(ede[1], space))
        msg.opt(server_max, ext_rcode, query.edns.do, text)
        counts[3] += 1
    return msg.finish(flags, counts)


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
    return _fit(query, flags, [], 0, TCP_MAX, server_max,
                (EDE.OTHER, "only EDNS version 0 is supported"), ext_rcode=BADVERS >> 4)


# ------------------------------------------------------------------------ zone transfers
# Packet-level help for ``transfer``: spotting a transfer query cheaply, the serial an
# IXFR query carries, and a transfer's messages written one at a time.

TRANSFER_MESSAGE = 16_384
"""Bytes a transfer message is filled to (RFC 5936 allows up to 65,535). BIND fills
20,480; at this size one message takes about a millisecond to write, which is how long
a running transfer keeps other queries waiting, and every name of it lies where
compression pointers (14 bits) can reach."""


def question_type(data: bytes) -> int | None:
    """The type of the first question, read without parsing the rest of the packet;
    None when there is no readable question."""
    if len(data) < HEADER.size + 5 or not (data[4] or data[5]):
        return None
    pos, end = HEADER.size, len(data)
    while pos < end:
        length = data[pos]
        if length == 0:
            return data[pos + 1] << 8 | data[pos + 2] if pos + 3 <= end else None
        if length & 0xC0:
            return None
        pos += 1 + length
    return None


def ixfr_serial(query: Query) -> int | None:
    """The serial of the SOA a client puts in the Authority section of an IXFR query to
    say which version it holds (RFC 1995 §3); None when there is none."""
    data = query.raw
    if len(data) < HEADER.size:
        return None
    qd, an, ns, _ = struct.unpack_from("!HHHH", data, 4)
    try:
        pos = HEADER.size
        for _ in range(qd):
            pos = _read_labels(data, pos)[1] + 4
        for index in range(an + ns):
            pos = _read_name(data, pos)[1]
            rtype, _, _, rdlen = _RR_FIXED.unpack_from(data, pos)
            pos += 10
            if index >= an and rtype == rr.RRType.SOA:
                at = _read_name(data, _read_name(data, pos)[1])[1]
                if at + 20 > pos + rdlen or at + 20 > len(data):
                    return None
                serial: int = struct.unpack_from("!I", data, at)[0]
                return serial
            pos += rdlen
    except (_Bad, struct.error):
        return None
    return None


def transfer_messages(query: Query, soa: Record, records: Iterable[Record | None],
                      server_max: int,
                      size: int = TRANSFER_MESSAGE) -> Generator[bytes, None, None]:
    """The messages of a full zone transfer (RFC 5936 §2.2): the SOA, ``records``, the
    SOA again, as many records per message as fit ``size`` bytes (never more than
    65,535). Written one message per step, so a transfer of any size holds one message
    at a time. Every message has the query's ID, opcode, RD and CD, QR and AA, owner
    names in the query's letter case, names compressed within the message, and our
    OPT when the query had one; only the first repeats the question.

    A None among ``records`` gives an empty ``b""``: nothing to send yet, a point where
    the caller may let other work run.
    """
    flags = FLAG_QR | FLAG_AA | (query.flags & (0x7800 | FLAG_RD | FLAG_CD))
    room = min(size, TCP_MAX) - (OPT_FIXED if query.edns is not None else 0)
    question = query.question
    msg = _Message(query.id, flags, question, query.labels)
    count = 0
    for rec in itertools.chain((soa,), records, (soa,)):
        if rec is None:
            yield b""
            continue
        mark = msg.mark()
        msg.record(rec, query)
        if len(msg.buf) > room and count:
            msg.rollback(mark)
            yield _transfer_message(msg, query, flags, question, count, server_max)
            question = b""
            msg = _Message(query.id, flags, b"", query.labels)
            msg.record(rec, query)
            count = 0
        count += 1
    yield _transfer_message(msg, query, flags, question, count, server_max)


def _transfer_message(msg: _Message, query: Query, flags: int, question: bytes,
                      count: int, server_max: int) -> bytes:
    if query.edns is not None:
        msg.opt(server_max, 0, query.edns.do, None)
    return msg.finish(flags, (1 if question else 0, count, 0,
                              1 if query.edns is not None else 0))


# --------------------------------------------------------------------------- forwarding
# Packet-level help for ``forward``: the query we send upstream, the checks a reply must
# pass before we believe it, its cache lifetime (RFC 2308) and the reply we relay.

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
_COMPRESSIBLE = frozenset({rr.RRType.CNAME, rr.RRType.NS, rr.RRType.PTR, rr.RRType.SOA, 15})
"""Types whose RDATA names we compress when relaying (RFC 3597 §4: the RFC 1035 ones)."""


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """An upstream's reply that matched our query, its records ready to relay."""

    rcode: int
    flags: int
    answer: tuple[_Foreign, ...]
    authority: tuple[_Foreign, ...]
    additional: tuple[_Foreign, ...]  # without OPT
    size: int = 0  # bytes on the wire (what the forward cache weighs it by)

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


# RDATA layouts with domain names (RFC 3597 §4): the RFC 1035 types, whose names we may
# compress again when relaying ("n"), and the later ones whose names are read through
# pointers but written whole ("w"); "2" is a 16-bit field, "t" the rest as it is.
_RDATA_NAMES: dict[int, str] = {
    2: "n", 3: "n", 4: "n", 5: "n", 7: "n", 8: "n", 9: "n", 12: "n",  # NS MD MF CNAME MB MG MR PTR
    6: "nnt", 14: "nn", 15: "2n",  # SOA, MINFO, MX
    17: "ww", 18: "2w", 21: "2w", 26: "2ww", 33: "222w",  # RP, AFSDB, RT, PX, SRV
}


def _read_name(data: bytes, pos: int) -> tuple[tuple[bytes, ...], int]:
    """A possibly compressed name at ``pos``: its labels and the offset after it.

    Every pointer must point before itself (so pointers cannot loop) and the name may
    not exceed 255 octets. Any octet is legal in a label (RFC 2181 §11).
    """
    labels: list[bytes] = []
    after = -1
    total = 1
    n = len(data)
    while True:
        if pos >= n:
            raise _Bad("name runs past the end of the message")
        length = data[pos]
        if length >= 0xC0:
            if pos + 1 >= n:
                raise _Bad("truncated compression pointer")
            target = (length & 0x3F) << 8 | data[pos + 1]
            if target >= pos:
                raise _Bad("compression pointer does not point backwards")
            if after < 0:
                after = pos + 2
            pos = target
            continue
        if length & 0xC0:
            raise _Bad("extended label type")
        if length == 0:
            return tuple(labels), (pos + 1 if after < 0 else after)
        total += length + 1
        if total > 255 or pos + 1 + length > n:
            raise _Bad("name longer than 255 octets or past the end")
        labels.append(data[pos + 1:pos + 1 + length])
        pos += 1 + length


def _whole(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def _read_rr(data: bytes, pos: int) -> tuple[_Foreign, int]:
    owner, pos = _read_name(data, pos)
    if pos + 10 > len(data):
        raise _Bad("record header runs past the end")
    rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
    pos += 10
    end = pos + rdlen
    if end > len(data):
        raise _Bad("record data runs past the end")
    if ttl & 0x80000000:  # RFC 2181 §8: a TTL with the top bit set means zero
        ttl = 0
    layout = _RDATA_NAMES.get(rtype)
    parts: tuple[bytes | tuple[bytes, ...], ...]
    if layout is None or rclass != 1:
        parts = (data[pos:end],)
    else:
        out: list[bytes | tuple[bytes, ...]] = []
        at = pos
        for field in layout:
            if field == "2":
                out.append(data[at:at + 2])
                at += 2
            elif field == "t":
                out.append(data[at:end])
                at = end
            else:
                labels, at = _read_name(data, at)
                out.append(labels if field == "n" else _whole(labels))
            if at > end:
                raise _Bad(f"TYPE{rtype} record data runs past its length")
        if at != end or (rtype == 6 and len(out[2]) != 20):
            raise _Bad(f"TYPE{rtype} record data does not match its length")
        parts = tuple(out)
    return _Foreign(owner, rtype, rclass, ttl, parts), end


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
    flags = header[1]
    if (flags >> 11) & 0xF != 0:
        return None
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    if qd == 0 and flags & FLAG_TC:
        return UpstreamReply(flags & 0xF, flags, (), (), (), len(data))
    if qd != 1:
        return None
    try:
        asked, pos = _read_name(data, HEADER.size)
        if pos + 4 > len(data):
            raise _Bad("question type and class missing")
        if ([label.lower() for label in asked] != [label.lower() for label in labels]
                or struct.unpack_from("!HH", data, pos) != (qtype, qclass)):
            return None
        pos += 4
        sections: list[list[_Foreign]] = [[], [], []]
        for section, count in enumerate((an, ns, ar)):
            for _ in range(count):
                record, pos = _read_rr(data, pos)
                if record.rtype != rr.RRType.OPT:
                    sections[section].append(record)
    except _Bad as exc:
        raise Malformed(f"unparseable upstream reply: {exc}", header, b"") from None
    return UpstreamReply(flags & 0xF, flags, tuple(sections[0]), tuple(sections[1]),
                         tuple(sections[2]), len(data))


def _soa_minimum(record: _Foreign) -> int:
    times = record.rdata[-1]
    assert isinstance(times, bytes)
    return int.from_bytes(times[16:20], "big")


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
    soas = [min(r.ttl, _soa_minimum(r)) for r in reply.authority
            if r.rtype == rr.RRType.SOA and len(r.rdata) == 3]
    if denial:
        if not soas:
            return None
        return "denial", min([*soas, *(r.ttl for r in reply.answer)])
    all_ttls = ttls + soas
    return "success", min(all_ttls) if all_ttls else 0


def _respell(owner: tuple[bytes, ...], query: Query) -> tuple[bytes, ...]:
    """An upstream owner name with the query's letter case on the labels it shares."""
    labels = list(owner)
    qlabels = query.labels
    i = 1
    while (i <= len(labels) and i <= len(qlabels)
           and labels[-i].lower() == qlabels[-i].lower()):
        labels[-i] = qlabels[-i]
        i += 1
    return tuple(labels)


def _upstream_rrsets(records: Sequence[_Foreign], query: Query,
                     ttl: Callable[[int], int]) -> list[list[_Foreign]]:
    out: list[list[_Foreign]] = []
    last: tuple[tuple[bytes, ...], int] | None = None
    for rec in records:
        key = (tuple(label.lower() for label in rec.owner), rec.rtype)
        copy = _Foreign(_respell(rec.owner, query), rec.rtype, rec.rclass, ttl(rec.ttl),
                        rec.rdata)
        if out and key == last:
            out[-1].append(copy)
        else:
            out.append([copy])
        last = key
    return out


def relay(query: Query, reply: UpstreamReply, limit: int, server_max: int, *,
          chain: Sequence[Record] = (), ttl_cap: int | None = None, ttl_floor: int = 0,
          age: int = 0, stale: bool = False,
          ttls: list[tuple[int, int]] | None = None) -> bytes:
    """Our reply to ``query`` carrying the upstream's answer, no larger than ``limit``.

    The client's ID and question (with its letter case), RD/CD from the query, RA set,
    the upstream's rcode, our own OPT. ``chain`` (our CNAMEs of an ExternalName) goes in
    front of the upstream's Answer and makes the reply authoritative; otherwise AA is
    clear. TTLs are raised to ``ttl_floor``, capped at ``ttl_cap`` and reduced by
    ``age``; a stale reply has TTL 30 everywhere upstream data appears and says so with
    an extended error. AD is kept only when the client showed it understands it (AD or
    DO, RFC 6840 §5.8). ``ttls``, when given, receives the (offset, value) of every TTL
    of upstream data written, so that a copy of the reply can be aged by patching them.
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
        value = max(value, ttl_floor)
        if ttl_cap is not None:
            value = min(value, ttl_cap)
        return max(0, value - age)

    groups: Groups = [(0, rs) for rs in _rrsets(chain)]
    for section, records in enumerate((reply.answer, reply.authority, reply.additional)):
        groups.extend((section, rs) for rs in _upstream_rrsets(records, query, ttl))
    required = sum(1 for section, _ in groups if section < 2)
    ede = (EDE_STALE_ANSWER, "serving stale data: no upstream answered") if stale else None
    return _fit(query, flags, groups, required, limit, server_max, ede, ttls=ttls)


def encode_forward_error(query: Query, outcome: Outcome, limit: int, server_max: int,
                         ede: tuple[int, str], chain: Sequence[Record] = ()) -> bytes:
    """SERVFAIL / REFUSED for a forwarded name (RA set), after ``chain`` if there is one."""
    flags = FLAG_QR | FLAG_RA | (query.flags & (0x7800 | FLAG_RD | FLAG_CD)) | RCODE[outcome]
    if chain:
        flags |= FLAG_AA
    groups: Groups = [(0, rs) for rs in _rrsets(chain)]
    return _fit(query, flags, groups, len(groups), limit, server_max, ede)
