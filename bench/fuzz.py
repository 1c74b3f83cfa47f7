"""Packet fuzzer: a million odd packets at a running ``clusterdns serve``, checking its replies.

This module exists because unit properties of the handler (``tests/test_properties.py``)
stop at the handler's edge: they cannot see the sockets, the fast path in front of the
handler, TCP framing, what the process logs or how much memory it keeps. Here the server
is the real thing, started the way a user starts it (``clusterdns serve --config
config/demo.yaml`` on a free loopback port, pods insecure), and the packets are made to
hurt it:

- a corpus of valid queries: every owner and target name ``clusterdns records`` prints
  for the demo, out-of-zone names, pod names (``10-244-1-11.default.pod...``, IPv6 ones
  with a zone index such as ``fe80--1%25``), reverse names, random labels of any byte
  values (dots, NUL, non-ASCII, latin-1 digits such as ``\\xb2``), names near 255 octets,
  names of 100+ labels, letter case scrambled (DNS 0x20); every query type (random 16-bit
  ones too), classes, opcodes and header flag bits;
- EDNS: OPT records with payload sizes 0..65535, versions, the DO bit, options (cookies,
  client subnet, padding, NSID, garbage, truncated options), duplicate OPTs, OPT in the
  wrong section or with an owner name; section counts that lie; compression pointers in
  the question and in records (valid, loops, forward, out of range);
- mutations of those: truncation (random, and a sweep of every offset of a few queries),
  bit flips, byte insertions and deletions, splices, trailing garbage; random garbage;
  responses (QR set, which must get no reply); 0-12 byte packets; maximum-size datagrams.

UDP packets go out of several sockets with a window of outstanding queries; each socket
uses every 16-bit ID before reusing one, so a reply is matched by its ID alone and a late
reply is still recognised. A small share goes over TCP from a second thread: single
queries, pipelines of up to 200 queries in one write, messages written in pieces with
pauses or byte by byte, length prefixes that lie (longer than the data then EOF, shorter
than the message), zero-length messages, connect/close/reset churn and 64 KiB messages.
The harness works out how the server must frame what it was sent and matches the replies
in order.

Every reply is checked against the transport rules: the ID of the query; QR set; opcode
echoed; size within the limit (UDP: 512 without a parseable EDNS OPT, else
min(max(512, payload), 1232); TCP: 65535, framed correctly); the question echoed byte
for byte when the query's first question was readable (and never one it could not read);
no reply at all to a packet with QR set or without a full header; a known rcode; a
well-formed message. Violations are counted per rule with a few examples in hex. Rcodes,
SERVFAILs and TC replies are counted, and so are the ERROR/CRITICAL/Traceback lines of
the server's log. Every ``probe_every`` packets a normal query for
``httpenv.default.svc.cluster.local`` goes over UDP and TCP (dnspython) and must get its
address back. The server's RSS is sampled as the run goes, and the largest amplification
(reply bytes / query bytes) is kept with the query that caused it.

Run: ``.venv/bin/python -m bench.fuzz [--packets 1000000] [--tcp-share 0.03] [--seed 1]
[--json FILE] [--log FILE] [--source file:PATH,...]``; it prints a table, then examples
(hex) of every broken rule, SERVFAIL, unanswered query and logged error. Nothing here
fails a build: ``bench.run_all`` runs it as one table (``main_table``), and
``tests/test_fuzz.py`` runs 20,000 packets and asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import select
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from bench.dnsperf_common import (
    free_port,
    machine_load,
    process_cpu_seconds,
    stop,
    wait_answering,
)
from bench.run_all import Table, markdown

TABLE_ORDER = 60

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "config" / "demo.yaml"
LIVENESS_NAME = "httpenv.default.svc.cluster.local"
LIVENESS_ADDRESS = "10.108.189.10"

HEADER = struct.Struct("!HHHHHH")
RR_HEADER = struct.Struct("!HHIH")
MIN_UDP = 512
SERVER_UDP_MAX = 1232  # clusterdns's max_udp_size (config default)
TCP_MAX = 65535
UDP_MAX_DATAGRAM = 65507  # 65535 - IPv4 header - UDP header
OPT = 41

RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
    16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
    22: "BADTRUNC", 23: "BADCOOKIE",
}
"""The IANA-assigned rcodes a reply may carry (with the extended bits of its OPT)."""

RULES = (
    "ID echoed",
    "QR set",
    "opcode echoed",
    "size limit",
    "question echoed",
    "no reply to responses",
    "no reply without a header",
    "known rcode",
    "well-formed reply",
    "TCP framing",
)
"""The transport rules every reply is checked against (see the module docstring)."""

LOG_ERROR_MARKS = (" ERROR ", "CRITICAL", "Traceback")
EXAMPLES_PER_RULE = 3
HEAVY = 8  # names owning the most records, asked for more often (PacketGenerator.heavy)
HEX_LIMIT = 600  # hex characters of a packet kept in an example

UDP_TIMEOUT = 2.0  # seconds a UDP packet waits for its reply before it counts as unanswered
LATE_MEMORY = 10.0  # seconds an unanswered packet is remembered, so a late reply is known
TCP_TIMEOUT = 10.0  # seconds a TCP exchange may take before it counts as stalled
BIG_DATAGRAM = 4096  # larger UDP packets are sent alone (see UdpFuzzer.fill)
ID_STEP = 40503  # odd: ID = start + k * ID_STEP visits all 65536 IDs before repeating


# -- reading packets (independently of clusterdns.wire) ------------------------------------


class _Bad(Exception):
    """A packet could not be read; the message says where."""


def _skip_name(data: bytes, pos: int, strict: bool) -> int:
    """Offset after the (possibly compressed) name at ``pos``.

    ``strict`` (for replies): a pointer must point backwards into the message, after the
    header, and the name must fit 255 octets up to the pointer.
    """
    n = len(data)
    start = pos
    while True:
        if pos >= n:
            raise _Bad("name runs past the end")
        length = data[pos]
        if length >= 0xC0:
            if pos + 2 > n:
                raise _Bad("truncated compression pointer")
            if strict:
                target = (length & 0x3F) << 8 | data[pos + 1]
                if target < HEADER.size or target >= start:
                    raise _Bad(f"compression pointer to {target} from {pos}")
            return pos + 2
        if length & 0xC0:
            raise _Bad(f"label type {length:#x}")
        if length == 0:
            return pos + 1
        pos += 1 + length
        if strict and pos - start > 255:
            raise _Bad("name longer than 255 octets")


def question_bytes(query: bytes) -> bytes | None:
    """The first question (name, type, class) as sent, when it can be read as a question
    must be: QDCOUNT >= 1, an uncompressed name of at most 255 octets, type and class."""
    n = len(query)
    if n < HEADER.size or not (query[4] or query[5]):
        return None
    pos = HEADER.size
    while True:
        if pos >= n:
            return None
        length = query[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:
            return None
        pos += 1 + length
        if pos - HEADER.size > 254:  # 255 octets with the root label
            return None
    if pos + 4 > n:
        return None
    return query[HEADER.size:pos + 4]


def edns_payload(query: bytes) -> int | None:
    """The largest UDP payload size any OPT record header of ``query`` advertises.

    Lenient on purpose (any section, any owner, before a later part fails to parse): the
    server may ignore an OPT this finds (and then it must answer within 512), never the
    other way round, so the limit derived from this can only be too generous.
    """
    n = len(query)
    if n < HEADER.size:
        return None
    qd, an, ns, ar = struct.unpack_from("!HHHH", query, 4)
    pos = HEADER.size
    best: int | None = None
    try:
        for _ in range(qd):
            pos = _skip_name(query, pos, strict=False) + 4
            if pos > n:
                return None
        for _ in range(an + ns + ar):
            pos = _skip_name(query, pos, strict=False)
            if pos + RR_HEADER.size > n:
                return best
            rtype, rclass, _ttl, rdlen = RR_HEADER.unpack_from(query, pos)
            if rtype == OPT:
                best = rclass if best is None else max(best, rclass)
            pos += RR_HEADER.size + rdlen
            if pos > n:
                return best
    except _Bad:
        return best
    return best


def udp_limit(query: bytes) -> int:
    """The largest UDP reply allowed for ``query`` (SPEC §S4, RFC 6891 §6.2.5)."""
    payload = edns_payload(query)
    if payload is None:
        return MIN_UDP
    return min(max(MIN_UDP, payload), SERVER_UDP_MAX)


@dataclass(frozen=True, slots=True)
class ReplyShape:
    rcode: int
    """The full rcode: the header's four bits and, with an OPT, its eight extended bits."""
    question_end: int
    """Offset just after the first question, 0 when there is none."""
    problem: str
    """Why the reply is not a well-formed DNS message; empty when it is."""


def read_reply(reply: bytes) -> ReplyShape:
    """Walk a reply's sections: names (backward pointers only), record headers, one OPT
    at most, in Additional with the root name, and nothing after the last record."""
    n = len(reply)
    if n < HEADER.size:
        return ReplyShape(-1, 0, f"{n} bytes, shorter than a header")
    qd, an, ns, ar = struct.unpack_from("!HHHH", reply, 4)
    rcode = reply[3] & 0x0F
    pos = HEADER.size
    question_end = 0
    problem = ""
    try:
        for index in range(qd):
            pos = _skip_name(reply, pos, strict=True) + 4
            if pos > n:
                raise _Bad("question runs past the end")
            if index == 0:
                question_end = pos
        opts = 0
        for index in range(an + ns + ar):
            owner = pos
            pos = _skip_name(reply, pos, strict=True)
            if pos + RR_HEADER.size > n:
                raise _Bad("record header runs past the end")
            rtype, _rclass, ttl, rdlen = RR_HEADER.unpack_from(reply, pos)
            pos += RR_HEADER.size + rdlen
            if pos > n:
                raise _Bad("rdata runs past the end")
            if rtype == OPT:
                opts += 1
                if index < an + ns or reply[owner] != 0 or opts > 1:
                    problem = "OPT repeated, outside Additional or not owned by the root"
                rcode |= (ttl >> 24) << 4
        if pos != n and not problem:
            problem = f"{n - pos} bytes after the last record"
    except _Bad as exc:
        problem = str(exc)
    return ReplyShape(rcode, question_end, problem)


def short_hex(data: bytes) -> str:
    text = data.hex()
    return text if len(text) <= HEX_LIMIT else f"{text[:HEX_LIMIT]}... ({len(data)} bytes)"


# -- the tally: what the replies showed ----------------------------------------------------


@dataclass
class Tally:
    """Counts of one sender (the UDP loop, the TCP thread); merged into the report."""

    replies: int = 0
    truncated: int = 0
    not_echoed: int = 0
    """Replies without a question although the query's question was readable."""
    rcodes: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    servfail_examples: list[str] = field(default_factory=list)
    """Queries answered SERVFAIL (hex), the first few."""
    max_amplification: float = 0.0
    amplification_query: str = ""
    amplification_sizes: tuple[int, int] = (0, 0)

    def violate(self, rule: str, transport: str, query: bytes | None, reply: bytes | None,
                detail: str) -> None:
        self.violations[rule] += 1
        kept = self.examples.setdefault(rule, [])
        if len(kept) < EXAMPLES_PER_RULE:
            parts = [f"{transport}: {detail}"]
            if query is not None:
                parts.append(f"query {short_hex(query)}")
            if reply is not None:
                parts.append(f"reply {short_hex(reply)}")
            kept.append("; ".join(parts))

    def check(self, query: bytes, reply: bytes, transport: str, limit: int) -> None:
        """Every rule a reply to ``query`` must keep (``limit``: its largest size)."""
        self.replies += 1
        if len(query) < HEADER.size:
            self.violate("no reply without a header", transport, query, reply,
                         f"reply to a {len(query)}-byte packet")
            return
        if query[2] & 0x80:
            self.violate("no reply to responses", transport, query, reply,
                         "reply to a packet with QR set")
        shape = read_reply(reply)
        if shape.problem:
            self.violate("well-formed reply", transport, query, reply, shape.problem)
        if len(reply) < HEADER.size:
            return
        if reply[:2] != query[:2]:
            self.violate("ID echoed", transport, query, reply,
                         f"ID {reply[:2].hex()} for query ID {query[:2].hex()}")
        flags = reply[2]
        if not flags & 0x80:
            self.violate("QR set", transport, query, reply, "QR clear")
        if (flags >> 3) & 0x0F != (query[2] >> 3) & 0x0F:
            self.violate("opcode echoed", transport, query, reply,
                         f"opcode {(flags >> 3) & 0x0F} for {(query[2] >> 3) & 0x0F}")
        if flags & 0x02:
            self.truncated += 1
        if len(reply) > limit:
            self.violate("size limit", transport, query, reply,
                         f"{len(reply)} bytes over the limit of {limit}")
        self._check_question(query, reply, shape, transport)
        name = RCODE_NAMES.get(shape.rcode)
        if name is None:
            name = f"RCODE{shape.rcode}"
            self.violate("known rcode", transport, query, reply, f"rcode {shape.rcode}")
        self.rcodes[name] += 1
        if shape.rcode == 2 and len(self.servfail_examples) < EXAMPLES_PER_RULE:
            self.servfail_examples.append(f"{transport}: {short_hex(query)}")
        amplification = len(reply) / len(query)
        if amplification > self.max_amplification:
            self.max_amplification = amplification
            self.amplification_query = f"{transport}: {short_hex(query)}"
            self.amplification_sizes = (len(query), len(reply))

    def _check_question(self, query: bytes, reply: bytes, shape: ReplyShape,
                        transport: str) -> None:
        asked = question_bytes(query)
        qdcount = reply[4] << 8 | reply[5]
        if asked is None:
            if qdcount:
                self.violate("question echoed", transport, query, reply,
                             f"QDCOUNT {qdcount} for a query without a readable question")
        elif qdcount == 0:
            self.not_echoed += 1
        elif qdcount > 1:
            self.violate("question echoed", transport, query, reply, f"QDCOUNT {qdcount}")
        elif (reply[HEADER.size:HEADER.size + len(asked)] != asked
              or shape.question_end not in (0, HEADER.size + len(asked))):
            self.violate("question echoed", transport, query, reply,
                         f"question differs from the query's {asked.hex()}")

    def merge(self, other: Tally) -> None:
        self.replies += other.replies
        self.truncated += other.truncated
        self.not_echoed += other.not_echoed
        self.rcodes.update(other.rcodes)
        self.violations.update(other.violations)
        room = max(0, EXAMPLES_PER_RULE - len(self.servfail_examples))
        self.servfail_examples.extend(other.servfail_examples[:room])
        for rule, kept in other.examples.items():
            mine = self.examples.setdefault(rule, [])
            mine.extend(kept[:max(0, EXAMPLES_PER_RULE - len(mine))])
        if other.max_amplification > self.max_amplification:
            self.max_amplification = other.max_amplification
            self.amplification_query = other.amplification_query
            self.amplification_sizes = other.amplification_sizes


# -- making packets ------------------------------------------------------------------------


COMMON_TYPES = (1, 28, 33, 12, 255, 5, 16, 2, 6, 13)  # A AAAA SRV PTR ANY CNAME TXT NS SOA HINFO
ODD_TYPES = (15, 43, 48, 65, 64, 257, 10, 252, 251, 41, 249, 250, 254, 253, 0, 65535, 65280,
             99, 46, 47, 50, 39)
CLASSES = (1, 1, 1, 255, 3, 4, 254, 2, 0, 65535)
PAYLOADS = (0, 1, 100, 511, 512, 513, 1024, 1231, 1232, 1233, 1400, 1472, 4096, 8192, 65535)
OPCODES = (1, 2, 3, 4, 5, 6, 15)
ODD_BYTES = b".\x00\xb2\xb3\xb9\xbc\xff\x80\xc0\xe9\xdf *_\\\"%@\x7f\x01\t\n"
LETTERS = b"abcdefghijklmnopqrstuvwxyz0123456789-"
TO_LETTERS = bytes(LETTERS[i % len(LETTERS)] for i in range(256))
TO_MIXED = bytes((ODD_BYTES + LETTERS)[i % len(ODD_BYTES + LETTERS)] for i in range(256))
TO_UPPER = bytes(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabc-"[i % 30] for i in range(256))
"""Tables for ``bytes.translate`` turning random bytes into label characters."""
LETTER_BIT = bytes(0x20 if chr(i).isascii() and chr(i).isalpha() else 0 for i in range(256))
HALF_BIT = bytes(0x20 if i & 1 else 0 for i in range(256))
"""Tables for ``PacketGenerator.spell``: the case bit of letters, and a coin per byte."""
INTERESTING = (0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xFE, 0xFF)

EXTRA_NAMES = (
    "", "cluster.local", "svc.cluster.local", "default.svc.cluster.local",
    "pod.cluster.local", "default.pod.cluster.local", "kube-system.svc.cluster.local",
    "nope.default.svc.cluster.local", "nope.nope.svc.cluster.local",
    "a.b.httpenv.default.svc.cluster.local", "*.default.svc.cluster.local",
    "*.*.svc.cluster.local", "_http._tcp.*.default.svc.cluster.local",
    "_tcp.httpenv-headless.default.svc.cluster.local", "_http._udp.web.default.svc.cluster.local",
    "httpenv.default.svc.cluster.local.cluster.local", "httpenv.default.svc",
    "10-244-1-11.default.pod.cluster.local", "10-244-1-11.nope.pod.cluster.local",
    "1-2-3.default.pod.cluster.local", "256-1-1-1.default.pod.cluster.local",
    "10-244-1-011.default.pod.cluster.local", "fe80--1%25.default.pod.cluster.local",
    "fe80--1%eth0.default.pod.cluster.local", "fe80--1%.default.pod.cluster.local",
    "fd00-10-244-1--29.default.pod.cluster.local", "--.default.pod.cluster.local",
    "-.default.pod.cluster.local", "0-0-0-0.default.pod.cluster.local",
    "ffff-ffff-ffff-ffff-ffff-ffff-ffff-ffff.default.pod.cluster.local",
    "--ffff-10-244-1-11.default.pod.cluster.local", "1--2--3.default.pod.cluster.local",
    "example.com", "localhost", "google.com", "local", "arpa", "com",
    "in-addr.arpa", "ip6.arpa", "10.in-addr.arpa", "244.10.in-addr.arpa",
    "1.244.10.in-addr.arpa", "999.1.244.10.in-addr.arpa", "x.11.1.244.10.in-addr.arpa",
    "0.0.0.0.10.in-addr.arpa", "d.f.ip6.arpa", "dns-version.cluster.local",
    "ns.dns.cluster.local", "dns.cluster.local", "version.bind", "hostname.bind",
)


def demo_names(source: str | None = None) -> list[str]:
    """Owner and target names of every record ``clusterdns records`` prints for the demo
    (or for the demo's settings with ``source`` instead of its cluster dump), the names
    owning the most records first."""
    command = [sys.executable, "-m", "clusterdns", "records", "--config", str(DEMO_CONFIG)]
    if source is not None:
        command += ["--source", source]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"clusterdns records failed: {done.stderr[-2000:]}")
    owned: Counter[str] = Counter()
    for line in done.stdout.splitlines():
        if not line or line.startswith(";"):
            continue
        fields = line.split()
        owned[fields[0].rstrip(".").lower()] += 1
        owned.update({f.rstrip(".").lower(): 0 for f in fields[4:] if f.endswith(".")})
    return sorted(owned, key=lambda name: (-owned[name], name))


def encode_labels(labels: Sequence[bytes]) -> bytes:
    """Wire form of a name (labels cut at 63 octets; no length check on the whole)."""
    out = bytearray()
    for label in labels:
        label = label[:63]
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out)


class PacketGenerator:
    """Seeded maker of odd DNS packets; ``next()`` gives one (its ID is overwritten by
    the sender)."""

    def __init__(self, rng: random.Random, names: Sequence[str]) -> None:
        """``names``: the served names, those with the largest answers first (``demo_names``);
        the first few are asked for more often, so that replies need truncation."""
        self.rng = rng
        pool = sorted(set(names) | set(EXTRA_NAMES))
        self.pool: list[tuple[bytes, ...]] = [
            tuple(lab.encode() for lab in name.split(".")) if name else () for name in pool]
        self.heavy: list[tuple[bytes, ...]] = [
            tuple(lab.encode() for lab in name.split(".")) for name in names[:HEAVY] if name]
        self.heavy = self.heavy or self.pool
        self.zones: list[tuple[bytes, ...]] = [
            (b"cluster", b"local"), (b"svc", b"cluster", b"local"),
            (b"default", b"svc", b"cluster", b"local"), (b"in-addr", b"arpa"),
            (b"ip6", b"arpa"), (b"default", b"pod", b"cluster", b"local"), ()]
        self.kinds: Counter[str] = Counter()
        self._sweep: list[bytes] = []
        self._sweep_offset = 0

    # names ----------------------------------------------------------------------------

    def label(self, length: int | None = None) -> bytes:
        """A label of ``length`` octets: host-name letters, any bytes, odd bytes mixed in,
        or upper case (random bytes mapped through a table: one C call per label)."""
        r = self.rng
        if length is None:
            length = r.choice((1, 1, 2, 3, 5, 8, 15, r.randint(1, 63), 63))
        roll = r.random()
        raw = r.randbytes(length)
        if roll < 0.45:
            return raw.translate(TO_LETTERS)
        if roll < 0.7:
            return raw
        if roll < 0.9:
            return raw.translate(TO_MIXED)
        return raw.translate(TO_UPPER)

    def pod_label(self) -> bytes:
        r = self.rng
        roll = r.random()
        if roll < 0.4:
            parts = [str(r.choice((10, 172, 192, 0, 255, 256, 1000, r.randrange(300))))
                     for _ in range(r.choice((4, 4, 4, 3, 5)))]
            return "-".join(parts).encode()
        if roll < 0.8:
            head = r.choice(("fe80--1", "fd00-10-244-1--29", "--1", "fe80--", "2001-db8--",
                             "fd00-10-96--7c5", "ffff--", "1-2-3-4-5-6-7-8"))
            zone = r.choice(("", "%25", "%eth0", "%", "%25eth0", "%%", "%1", "%lo",
                             "%" + r.randbytes(2).hex()))
            return (head + zone).encode()
        return self.label()

    def name_labels(self) -> list[bytes]:
        r = self.rng
        roll = r.random()
        if roll < 0.06:
            return list(r.choice(self.heavy))
        if roll < 0.45:
            return list(r.choice(self.pool))
        if roll < 0.55:
            return [self.label() for _ in range(r.randint(1, 3))] + list(r.choice(self.pool))
        if roll < 0.63:
            labels = list(r.choice(self.pool)) or [b""]
            labels[r.randrange(len(labels))] = self.label()
            return labels
        if roll < 0.70:
            return [self.label() for _ in range(r.randint(1, 6))] + list(r.choice(self.zones))
        if roll < 0.78:
            namespace = r.choice((b"default", b"kube-system", b"nope", b"*", b"DEFAULT"))
            return [self.pod_label(), namespace, b"pod", b"cluster", b"local"]
        if roll < 0.86:
            return self.reverse_labels()
        if roll < 0.93:
            return self.long_labels()
        return self.many_labels()

    def reverse_labels(self) -> list[bytes]:
        r = self.rng
        if r.random() < 0.5:
            octets = [str(r.choice((10, 244, 1, 0, 11, 255, 256, r.randrange(1000))))
                      for _ in range(r.randint(1, 6))]
            return [o.encode() for o in octets] + [b"in-addr", b"arpa"]
        nibbles = [r.choice(b"0123456789abcdefABCDEFg") for _ in range(r.randint(1, 34))]
        labels = [bytes([c]) for c in nibbles]
        if r.random() < 0.1:
            labels[r.randrange(len(labels))] = b"ab"
        return [*labels, b"ip6", b"arpa"]

    def long_labels(self) -> list[bytes]:
        """A name whose wire form is close to 255 octets (sometimes just over)."""
        r = self.rng
        target = r.choice((253, 254, 255, 255, 256, 257, r.randint(230, 260)))
        suffix = list(r.choice(self.zones))
        remaining = target - len(encode_labels(suffix))
        labels: list[bytes] = []
        while remaining >= 2:
            length = min(r.choice((63, 63, r.randint(1, 63))), remaining - 1)
            labels.append(self.label(length))
            remaining -= length + 1
        return labels + suffix

    def many_labels(self) -> list[bytes]:
        r = self.rng
        count = r.choice((100, 124, 125, 126, 127, 128, r.randint(20, 130)))
        suffix = [] if r.random() < 0.5 else [b"cluster", b"local"]
        letters = r.randbytes(count - len(suffix)).translate(TO_LETTERS)
        return [letters[i:i + 1] for i in range(len(letters))] + suffix

    def spell(self, wire: bytes) -> bytes:
        """DNS 0x20: flip the case of about half the letters (length octets are below 64,
        never letters), with integer arithmetic instead of a loop over the bytes."""
        size = len(wire)
        letters = int.from_bytes(wire.translate(LETTER_BIT))
        coin = int.from_bytes(self.rng.randbytes(size).translate(HALF_BIT))
        return (int.from_bytes(wire) ^ (letters & coin)).to_bytes(size)

    def qname(self) -> bytes:
        r = self.rng
        labels = self.name_labels()
        if r.random() < 0.04:  # a compression pointer ends the name
            prefix = encode_labels(labels[:r.randint(0, 3)])[:-1]
            here = HEADER.size + len(prefix)
            target = r.choice((HEADER.size, here, r.randrange(HEADER.size), here + 2,
                               here + r.randint(3, 40), 0x3FFF, r.randrange(0x4000)))
            return prefix + struct.pack("!H", 0xC000 | target)
        wire = encode_labels(labels)
        if r.random() < 0.3:
            wire = self.spell(wire)
        return wire

    # records --------------------------------------------------------------------------

    def qtype(self) -> int:
        r = self.rng
        roll = r.random()
        if roll < 0.7:
            return r.choice(COMMON_TYPES)
        if roll < 0.9:
            return r.choice(ODD_TYPES)
        return r.randrange(0x10000)

    def question(self) -> bytes:
        r = self.rng
        qclass = 1 if r.random() < 0.88 else r.choice((*CLASSES, r.randrange(0x10000)))
        return self.qname() + struct.pack("!HH", self.qtype(), qclass)

    def option(self) -> bytes:
        r = self.rng
        roll = r.random()
        if roll < 0.25:  # cookie: client only, client + server, or a wrong length
            data = r.randbytes(r.choice((8, 8, 16, 24, 40, 0, 7, 9, 41)))
            code = 10
        elif roll < 0.45:  # client subnet
            family = r.choice((1, 2, 0, 3))
            source = r.choice((0, 8, 24, 32, 48, 56, 64, 128, 129, 255))
            size = (source + 7) // 8 if r.random() < 0.8 else r.randint(0, 20)
            scope = 0 if r.random() < 0.8 else r.randrange(256)
            data = struct.pack("!HBB", family, source, scope) + r.randbytes(size)
            code = 8
        elif roll < 0.6:  # padding
            data = bytes(r.choice((0, 1, 16, 128, 400, r.randint(0, 1500))))
            code = 12
        elif roll < 0.7:  # NSID, keepalive, expire, chain, EDE: empty or odd
            code = r.choice((3, 11, 9, 13, 15, 5, 6, 7))
            data = r.randbytes(r.choice((0, 0, 1, 2, 4, 7)))
        elif roll < 0.85:
            code = r.randrange(0x10000)
            data = r.randbytes(r.randint(0, 40))
        else:  # truncated: the option says it is longer than what follows
            code = r.choice((8, 10, 12, r.randrange(0x10000)))
            data = r.randbytes(r.randint(0, 6))
            return struct.pack("!HH", code, len(data) + r.randint(1, 300)) + data
        return struct.pack("!HH", code, len(data)) + data

    def opt_rr(self) -> bytes:
        r = self.rng
        roll = r.random()
        owner = (b"\x00" if roll < 0.94 else b"\xc0\x0c" if roll < 0.97
                 else encode_labels(self.name_labels()))
        payload = r.choice(PAYLOADS) if r.random() < 0.8 else r.randrange(0x10000)
        ext_rcode = 0 if r.random() < 0.92 else r.randrange(256)
        version = 0 if r.random() < 0.88 else r.choice((1, 2, 255, r.randrange(256)))
        flags = 0x8000 if r.random() < 0.3 else 0
        if r.random() < 0.05:
            flags |= r.randrange(0x8000)
        count = 0 if r.random() < 0.65 else r.choice((1, 1, 1, 2, 3, r.randint(4, 12)))
        rdata = b"".join(self.option() for _ in range(count))
        rdlen = len(rdata)
        if r.random() < 0.03:
            rdlen = max(0, min(0xFFFF, rdlen + r.choice((-3, -1, 1, 2, 500))))
        return owner + RR_HEADER.pack(OPT, payload, ext_rcode << 24 | version << 16 | flags,
                                      rdlen) + rdata

    def rr(self) -> bytes:
        """A record other than OPT, as could sit in a query's (or response's) sections."""
        r = self.rng
        how = r.randrange(7)
        if how < 2:
            owner = b"\xc0\x0c"  # the question's name
        elif how == 2:
            owner = b"\x00"
        elif how == 3:  # anywhere: header, itself, forward, past the end
            owner = struct.pack("!H", 0xC000 | r.choice((0, 2, 11, 0x3FFF, r.randrange(0x4000))))
        elif how == 4:
            owner = encode_labels(self.name_labels())
        else:  # labels, then a pointer to the question
            owner = encode_labels([self.label() for _ in range(r.randint(1, 2))])[:-1] + (
                b"\xc0\x0c")
        rtype = r.choice((1, 28, 5, 12, 33, 6, 250, 24, 16, 0))
        if rtype == 0:
            rtype = r.randrange(0x10000)
        rclass = r.choice((1, 1, 255, 254, 3, 0))
        if rtype == 1:
            rdata = r.randbytes(4)
        elif rtype == 28:
            rdata = r.randbytes(16)
        elif rtype in (5, 12):
            rdata = b"\xc0\x0c" if r.random() < 0.5 else encode_labels(self.name_labels())
        else:
            rdata = r.randbytes(r.choice((0, 1, 4, 10, 30, 100, 200)))
        rdlen = len(rdata) if r.random() < 0.95 else r.randrange(0x10000)
        return owner + RR_HEADER.pack(rtype, rclass, r.getrandbits(32), rdlen) + rdata

    # whole packets --------------------------------------------------------------------

    def flags(self, response: bool = False) -> int:
        r = self.rng
        roll = r.random()
        if roll < 0.72:
            flags = r.choice((0x0100, 0x0100, 0x0000, 0x0110, 0x0120, 0x0130))
        elif roll < 0.84:
            flags = r.randrange(0x10000) & 0x7FFF
        elif roll < 0.94:
            flags = r.choice(OPCODES) << 11 | r.choice((0, 0x0100))
        else:  # Z bit, an rcode in a query, AA/TC/RA where a query has none
            flags = r.choice((0x0040, 0x0001, 0x000F, 0x0400, 0x0200, 0x0080, 0x0700))
        if response:
            flags |= 0x8000
        return flags

    def query(self, response: bool = False) -> bytes:
        r = self.rng
        roll = r.random()
        if roll < 0.92:
            questions = [self.question()]
        elif roll < 0.96:
            questions = []
        else:
            questions = [self.question() for _ in range(r.randint(2, 4))]
        answer: list[bytes] = []
        authority: list[bytes] = []
        additional: list[bytes] = []
        if r.random() < 0.6:
            additional.append(self.opt_rr())
        if r.random() < 0.04:  # a second OPT, or one in the wrong section
            r.choice((answer, authority, additional)).append(self.opt_rr())
        if response or r.random() < 0.05:
            answer.extend(self.rr() for _ in range(r.randint(1, 3)))
        if r.random() < 0.04:
            authority.append(self.rr())
        if r.random() < 0.05:
            additional.insert(r.randint(0, len(additional)), self.rr())
        counts = [len(questions), len(answer), len(authority), len(additional)]
        if r.random() < 0.08:  # counts that lie
            which = r.randrange(4)
            counts[which] = r.choice((counts[which] + 1, max(0, counts[which] - 1), 0, 2,
                                      0xFFFF, r.randrange(0x10000)))
        body = b"".join(questions + answer + authority + additional)
        return HEADER.pack(0, self.flags(response), *counts) + body

    def mutate(self, data: bytes) -> bytes:
        r = self.rng
        buf = bytearray(data)
        for _ in range(r.choice((1, 1, 1, 2, 3))):
            n = len(buf)
            op = r.randrange(9)
            if op == 0 and n:
                del buf[r.randrange(n):]
            elif op == 1 and n:
                for _ in range(r.randint(1, 8)):
                    buf[r.randrange(n)] ^= 1 << r.randrange(8)
            elif op == 2:
                at = r.randint(0, n)
                buf[at:at] = r.randbytes(r.randint(1, 8))
            elif op == 3 and n:
                at = r.randrange(n)
                del buf[at:at + r.randint(1, 8)]
            elif op == 4 and n:
                buf[r.randrange(n)] = r.choice(INTERESTING)
            elif op == 5 and n >= HEADER.size:
                at = r.choice((4, 6, 8, 10))
                buf[at:at + 2] = struct.pack("!H", r.choice((0, 1, 2, 0xFFFF,
                                                             r.randrange(0x10000))))
            elif op == 6:
                buf += r.randbytes(r.choice((1, 2, 11, 50, r.randint(1, 500))))
            elif op == 7 and n:
                at = r.randrange(n)
                end = min(n, at + r.randint(1, 40))
                buf[end:end] = buf[at:end]
            elif op == 8:
                other = self.query()
                cut = r.randint(0, n)
                buf[cut:] = other[r.randint(0, len(other)):]
        return bytes(buf)

    def sweep(self) -> bytes:
        """A few fixed queries truncated at every offset, one offset per call."""
        if not self._sweep or self._sweep_offset > len(self._sweep[0]):
            if self._sweep:
                self._sweep.pop(0)
            if not self._sweep:
                self._sweep = [self.query() for _ in range(8)]
            self._sweep_offset = 0
        packet = self._sweep[0][:self._sweep_offset]
        self._sweep_offset += 1
        return packet

    def next(self, tcp: bool = False) -> bytes:
        """One packet; ``tcp`` leaves out the maximum-size UDP datagrams (TCP has its own
        maximum-size messages)."""
        r = self.rng
        roll = r.random()
        if roll < 0.025:
            self.kinds["short (0-12 bytes)"] += 1
            if r.random() < 0.5:
                return r.randbytes(r.randint(0, 12))
            return self.query()[:r.randint(0, 12)]
        if roll < 0.065:
            self.kinds["random garbage"] += 1
            garbage = r.randbytes(r.choice((12, 13, 17, 30, r.randint(12, 600))))
            if r.random() < 0.5:  # a header that asks one question, then garbage
                garbage = HEADER.pack(0, 0x0100, 1, 0, 0, r.choice((0, 1))) + garbage[12:]
            return garbage
        if roll < 0.105:
            self.kinds["response (QR set)"] += 1
            packet = self.query(response=True)
            return self.mutate(packet) if r.random() < 0.2 else packet
        if roll < 0.125:
            self.kinds["truncation sweep"] += 1
            return self.sweep()
        if roll < 0.1265:
            self.kinds["maximum size"] += 1
            base = self.query()
            size = TCP_MAX if tcp else UDP_MAX_DATAGRAM
            if r.random() < 0.5:
                return (base + r.randbytes(size))[:size]
            return (base + bytes(size))[:size]
        if roll < 0.14:
            self.kinds["large (EDNS padding, many records)"] += 1
            return self.large()
        packet = self.query()
        if r.random() < 0.35:
            self.kinds["mutated query"] += 1
            return self.mutate(packet)
        self.kinds["structured query"] += 1
        return packet

    def large(self) -> bytes:
        """A well-formed query of 1-20 KB: a big padding option, or many records."""
        r = self.rng
        question = self.question()
        if r.random() < 0.5:
            pad = r.randint(1000, 20000)
            options = struct.pack("!HH", 12, pad) + bytes(pad)
            opt = b"\x00" + RR_HEADER.pack(OPT, r.choice(PAYLOADS), 0, len(options)) + options
            return HEADER.pack(0, 0x0100, 1, 0, 0, 1) + question + opt
        records = [self.rr() for _ in range(r.randint(20, 120))]
        opt = self.opt_rr()
        return (HEADER.pack(0, 0x0100, 1, 0, 0, len(records) + 1) + question
                + b"".join(records) + opt)


# -- the server ----------------------------------------------------------------------------


@dataclass
class ServerProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def memory_mb(self, field_name: str) -> float:
        """VmRSS / VmHWM of the process in MB (2**20 bytes); NaN once it is gone."""
        try:
            text = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return float("nan")
        for line in text.splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")


def serve_command(port: int, source: str | None = None) -> list[str]:
    """The demo as a user serves it, on 127.0.0.1:port with the HTTP endpoints off;
    ``source`` (``file:PATH[,PATH...]``, relative to the repository) replaces its dump."""
    command = [sys.executable, "-m", "clusterdns", "serve", "--config", str(DEMO_CONFIG),
               "--listen", f"127.0.0.1:{port}", "--health", "", "--ready", "",
               "--metrics", "", "--pods", "insecure", "--lameduck", "0"]
    return command if source is None else [*command, "--source", source]


@contextlib.contextmanager
def demo_server(directory: Path, source: str | None = None) -> Iterator[ServerProcess]:
    """``clusterdns serve`` for the demo cluster (or ``source``) on a free port, stderr
    to a log file; stopped with SIGTERM on exit."""
    port = free_port()
    log = directory / f"clusterdns-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(serve_command(port, source), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_answering(port, LIVENESS_NAME, process, log)
        yield ServerProcess(port, process, log)
    finally:
        stop(process)


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the UDP sockets bound to 127.0.0.1:``port`` (its
    receive buffer was full), from /proc/net/udp."""
    local = f"0100007F:{port:04X}"
    total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 12 and fields[1] == local:
                total += int(fields[-1])
    return total


def log_errors(log: Path) -> tuple[int, int, list[str]]:
    """(error lines, warning lines, the first few error lines) of a server log."""
    errors = warnings = 0
    kept: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        if any(mark in line for mark in LOG_ERROR_MARKS):
            errors += 1
            if len(kept) < 10:
                kept.append(line[:400])
        elif " WARNING " in line:
            warnings += 1
    return errors, warnings, kept


# -- liveness ------------------------------------------------------------------------------


@dataclass
class Liveness:
    probes: int = 0
    failures: int = 0
    slowest: float = 0.0
    examples: list[str] = field(default_factory=list)

    def probe(self, port: int, timeout: float = 2.0) -> None:
        """``httpenv.default.svc.cluster.local A`` over UDP and over TCP must answer with
        its ClusterIP within ``timeout``."""
        for transport in ("udp", "tcp"):
            self.probes += 1
            query = dns.message.make_query(LIVENESS_NAME, "A")
            started = time.monotonic()
            problem = ""
            try:
                if transport == "udp":
                    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
                else:
                    reply = dns.query.tcp(query, "127.0.0.1", port=port, timeout=timeout)
                found = [rd.to_text() for rrset in reply.answer
                         if rrset.rdtype == dns.rdatatype.A for rd in rrset]
                if reply.rcode() != dns.rcode.NOERROR or found != [LIVENESS_ADDRESS]:
                    problem = f"{dns.rcode.to_text(reply.rcode())} {found}"
            except (dns.exception.DNSException, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.slowest = max(self.slowest, time.monotonic() - started)
            if problem:
                self.failures += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{transport}: {problem}")


# -- UDP -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    data: bytes
    expect: bool
    """Whether the packet must get a reply (a full header and QR clear)."""
    deadline: float
    sock: int
    ident: int


@dataclass
class UdpCounts:
    sent: int = 0
    no_reply: int = 0
    """Packets that needed a reply and got none within the timeout."""
    dropped: int = 0
    """Packets that needed no reply (responses, shorter than a header) and got none."""
    no_id: int = 0
    """Packets of 0 or 1 bytes: nothing to match a reply by, so any reply that came would
    have counted as a reply with an unknown ID."""
    late: int = 0
    send_errors: int = 0
    no_reply_examples: list[str] = field(default_factory=list)


class UdpFuzzer:
    """Sends packets from ``sockets`` sockets, at most ``window`` awaiting a reply."""

    def __init__(self, port: int, gen: PacketGenerator, tally: Tally, sockets: int = 8,
                 window: int = 64) -> None:
        self.address = ("127.0.0.1", port)
        self.gen = gen
        self.tally = tally
        self.window = window
        self.counts = UdpCounts()
        self.socks: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        for index in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
            sock.setblocking(False)
            sock.connect(self.address)  # only the server's datagrams reach it
            self.selector.register(sock, selectors.EVENT_READ, index)
            self.socks.append(sock)
        self.pending: list[dict[int, Pending]] = [{} for _ in range(sockets)]
        self.expired: list[dict[int, Pending]] = [{} for _ in range(sockets)]
        self.timeline: deque[Pending] = deque()
        self.forget: deque[tuple[float, Pending]] = deque()
        self.next_ids = [gen.rng.randrange(0x10000) for _ in range(sockets)]
        self.in_window = 0
        self.held: bytes | None = None

    def close(self) -> None:
        self.selector.close()
        for sock in self.socks:
            sock.close()

    def _ident(self, index: int) -> int:
        pending = self.pending[index]
        ident = self.next_ids[index]
        while ident in pending:
            ident = (ident + ID_STEP) & 0xFFFF
        self.next_ids[index] = (ident + ID_STEP) & 0xFFFF
        return ident

    def send_one(self, data: bytes) -> None:
        counts = self.counts
        index = counts.sent % len(self.socks)
        counts.sent += 1
        now = time.monotonic()
        ident = -1
        if len(data) >= 2:
            ident = self._ident(index)
            data = struct.pack("!H", ident) + data[2:]
        expect = len(data) >= HEADER.size and not data[2] & 0x80
        try:
            self.socks[index].send(data)
        except OSError:
            counts.send_errors += 1
            return
        if ident < 0:
            counts.no_id += 1
            return
        entry = Pending(data, expect, now + UDP_TIMEOUT, index, ident)
        self.pending[index][ident] = entry
        self.expired[index].pop(ident, None)
        self.timeline.append(entry)
        if expect:
            self.in_window += 1

    def fill(self, limit: int) -> None:
        """Send until the window is full or ``limit`` packets have gone in all.

        A datagram over ``BIG_DATAGRAM`` bytes waits until no reply is awaited and goes
        alone: a few 64 KB datagrams fill the server's socket buffer (208 KB by default),
        and the kernel would drop the small packets queued behind them.
        """
        while self.in_window < self.window and self.counts.sent < limit:
            if self.held is None:
                self.held = self.gen.next()
            if len(self.held) > BIG_DATAGRAM and self.in_window:
                return
            data, self.held = self.held, None
            self.send_one(data)

    def poll(self, timeout: float) -> None:
        """Read every reply that is there (waiting up to ``timeout``), then expire."""
        for key, _ in self.selector.select(timeout):
            index = key.data
            sock = self.socks[index]
            while True:
                try:
                    reply = sock.recv(70000)
                except BlockingIOError:
                    break
                except OSError:  # ICMP errors reported on the connected socket
                    continue
                self._received(index, reply)
        self._expire(time.monotonic())

    def _received(self, index: int, reply: bytes) -> None:
        if len(reply) < 2:
            self.tally.violate("ID echoed", "udp", None, reply, "reply without an ID")
            return
        ident = reply[0] << 8 | reply[1]
        entry = self.pending[index].pop(ident, None)
        if entry is not None:
            if entry.expect:
                self.in_window -= 1
        else:
            entry = self.expired[index].pop(ident, None)
            if entry is None:
                self.tally.violate("ID echoed", "udp", None, reply,
                                   "reply with an ID no packet on this socket carried")
                return
            self.counts.late += 1
        self.tally.check(entry.data, reply, "udp", udp_limit(entry.data))

    def _expire(self, now: float) -> None:
        timeline = self.timeline
        counts = self.counts
        while timeline and timeline[0].deadline <= now:
            entry = timeline.popleft()
            pending = self.pending[entry.sock]
            if pending.get(entry.ident) is not entry:
                continue  # answered
            del pending[entry.ident]
            if entry.expect:
                self.in_window -= 1
                counts.no_reply += 1
                if len(counts.no_reply_examples) < EXAMPLES_PER_RULE:
                    counts.no_reply_examples.append(short_hex(entry.data))
            else:
                counts.dropped += 1
            self.expired[entry.sock][entry.ident] = entry
            self.forget.append((now + LATE_MEMORY, entry))
        while self.forget and self.forget[0][0] <= now:
            _, entry = self.forget.popleft()
            expired = self.expired[entry.sock]
            if expired.get(entry.ident) is entry:
                del expired[entry.ident]

    def outstanding(self) -> int:
        return len(self.timeline)


# -- TCP -----------------------------------------------------------------------------------


@dataclass
class TcpCounts:
    messages: int = 0
    """Framed messages written (lying ones included)."""
    connections: int = 0
    no_reply: int = 0
    resets: int = 0
    """Connections the server reset (tolerated: replies read before it are checked)."""
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    scenarios: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    """Replies with TC over TCP (nothing is too large for 65535 bytes here)."""


def frames_read(stream: bytes) -> tuple[list[bytes], bytes]:
    """Messages in a length-prefixed stream, and the bytes after the last whole one."""
    out: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 2:
        length = stream[pos] << 8 | stream[pos + 1]
        if len(stream) < pos + 2 + length:
            break
        out.append(stream[pos + 2:pos + 2 + length])
        pos += 2 + length
    return out, stream[pos:]


def server_messages(stream: bytes) -> list[bytes]:
    """The messages a server following RFC 7766 reads from ``stream`` before the client's
    EOF: complete frames up to a zero length (which ends the connection)."""
    out: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 2:
        length = stream[pos] << 8 | stream[pos + 1]
        if length == 0 or len(stream) < pos + 2 + length:
            break
        out.append(stream[pos + 2:pos + 2 + length])
        pos += 2 + length
    return out


def frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


@dataclass
class Step:
    data: bytes
    pause: float = 0.0
    await_frames: int = 0
    """Wait (up to the timeout) until this many reply frames have arrived in all."""


class TcpFuzzer:
    """Connections of every shape, one at a time, from a thread of its own."""

    def __init__(self, port: int, gen: PacketGenerator, tally: Tally) -> None:
        self.address = ("127.0.0.1", port)
        self.gen = gen
        self.tally = tally
        self.counts = TcpCounts()
        self.next_id = gen.rng.randrange(0x10000)
        self.stop = threading.Event()

    def message(self) -> bytes:
        data = self.gen.next(tcp=True)[:TCP_MAX]
        if len(data) >= 2:
            data = struct.pack("!H", self.next_id) + data[2:]
            self.next_id = (self.next_id + ID_STEP) & 0xFFFF
        return data

    def run(self, budget: int) -> None:
        try:
            while self.counts.messages < budget and not self.stop.is_set():
                self.scenario()
        except Exception as exc:  # keep the main loop going; the report shows it
            self._error(f"TCP thread stopped: {type(exc).__name__}: {exc}")

    def _error(self, text: str) -> None:
        self.counts.errors += 1
        if len(self.counts.error_examples) < 5:
            self.counts.error_examples.append(text)

    def scenario(self) -> None:
        r = self.gen.rng
        kind = r.choices(("single", "pipeline", "pieces", "bytewise", "long prefix",
                          "short prefix", "zero length", "churn"),
                         (25, 25, 15, 3, 8, 8, 5, 11))[0]
        self.counts.scenarios[kind] += 1
        if kind == "churn":
            self.churn()
            return
        count = r.choice((1, 1, 2, 3, 5))
        if kind == "pipeline":
            count = r.choice((2, 3, 5, 10, 20, 30, r.randint(2, 200)))
        elif kind == "bytewise":
            count = r.choice((1, 2))
        messages = [self.message() for _ in range(count)]
        framed = [frame(m) for m in messages]
        steps: list[Step]
        if kind == "single":  # one at a time, each awaiting its reply when it gets one
            steps = []
            needing = 0
            for message, data in zip(messages, framed, strict=True):
                needing += _needs_reply(message)
                steps.append(Step(data, await_frames=needing if _needs_reply(message) else 0))
        elif kind == "pipeline":
            steps = [Step(b"".join(framed))]
        elif kind in ("pieces", "bytewise"):
            stream = b"".join(framed)
            if kind == "bytewise":  # the first 400 bytes one by one, then the rest
                cuts = list(range(1, min(len(stream), 401)))
            else:
                cuts = sorted(r.sample(range(1, len(stream)), min(len(stream) - 1,
                                                                  r.randint(1, 9))))
            bounds = [0, *cuts, len(stream)]
            steps = [Step(stream[a:b], pause=r.choice((0.0, 0.0, 0.001, 0.005, 0.02))
                          if kind == "pieces" else 0.0)
                     for a, b in itertools.pairwise(bounds)]
        elif kind == "long prefix":
            last = messages[-1]
            claimed = min(TCP_MAX, len(last) + r.choice((1, 2, 100, TCP_MAX)))
            steps = [Step(b"".join(framed[:-1]) + struct.pack("!H", claimed) + last)]
        elif kind == "short prefix":
            at = r.randrange(len(messages))
            lie = r.randint(0, max(0, len(messages[at]) - 1))
            framed[at] = struct.pack("!H", lie) + messages[at]
            steps = [Step(b"".join(framed))]
        else:  # zero length, then more that must not be read
            at = r.randint(0, len(framed))
            steps = [Step(b"".join(framed[:at]) + b"\x00\x00" + b"".join(framed[at:]))]
        self.counts.messages += count + (1 if kind == "zero length" else 0)
        self.exchange(steps, nodelay=kind in ("pieces", "bytewise"))

    def churn(self) -> None:
        """Connections that end without an orderly exchange: nothing is checked but that
        the server survives them (the liveness probes and the log tell)."""
        r = self.gen.rng
        self.counts.messages += 1
        self.counts.connections += 1
        how = r.randrange(4)
        try:
            with socket.create_connection(self.address, timeout=TCP_TIMEOUT) as sock:
                if how == 1:  # reset at once
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                elif how == 2:  # half a message, then gone
                    data = frame(self.message())
                    sock.sendall(data[:r.randint(1, max(1, len(data) - 1))])
                elif how == 3:  # a pipeline nobody reads, then a reset
                    sock.sendall(b"".join(frame(self.message()) for _ in range(r.randint(1,
                                                                                        50))))
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
        except OSError as exc:
            self._error(f"churn: {type(exc).__name__}: {exc}")

    def exchange(self, steps: Sequence[Step], nodelay: bool) -> None:
        counts = self.counts
        counts.connections += 1
        sent = bytearray()
        received = bytearray()
        reset = stalled = False
        try:
            sock = socket.create_connection(self.address, timeout=TCP_TIMEOUT)
        except OSError as exc:
            self._error(f"connect: {type(exc).__name__}: {exc}")
            return
        with sock:
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            deadline = time.monotonic() + TCP_TIMEOUT
            try:
                for step in steps:
                    if not self._write(sock, step.data, received, deadline):
                        break  # the server closed the connection
                    sent += step.data
                    if step.await_frames:
                        self._read(sock, received, min(deadline, time.monotonic() + 3.0),
                                   frames=step.await_frames)
                    if step.pause:
                        self._read(sock, received, time.monotonic() + step.pause)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                stalled = not self._read(sock, received, time.monotonic() + TCP_TIMEOUT)
            except (ConnectionResetError, BrokenPipeError):
                reset = True
            except TimeoutError:
                stalled = True
        if reset:
            counts.resets += 1
        self.match(bytes(sent), bytes(received), reset, stalled)

    def _write(self, sock: socket.socket, data: bytes, received: bytearray,
               deadline: float) -> bool:
        """Write ``data``, reading replies meanwhile (the server stops reading while we
        leave its replies unread). False when the server closed its side first."""
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("write")
            readable, writable, _ = select.select([sock], [sock], [], remaining)
            if readable:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return False
                received += chunk
            if writable:
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    continue
        return True

    def _read(self, sock: socket.socket, received: bytearray, until: float,
              frames: int | None = None) -> bool:
        """Read replies until the server's EOF, until ``frames`` whole reply frames are in,
        or until ``until`` passes; whether the EOF came."""
        while True:
            if frames is not None and len(frames_read(bytes(received))[0]) >= frames:
                return False
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                continue
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                return True
            received += chunk

    def match(self, sent: bytes, received: bytes, reset: bool, stalled: bool) -> None:
        """Replies in order against the messages the server must have read from ``sent``."""
        tally = self.tally
        replies, rest = frames_read(received)
        if stalled:
            tally.violate("TCP framing", "tcp", sent, received,
                          f"connection still open {TCP_TIMEOUT:g} s after the client's EOF")
        elif rest and not reset:
            tally.violate("TCP framing", "tcp", sent, received,
                          f"{len(rest)} bytes after the last whole reply frame")
        messages = server_messages(sent)
        at = 0
        for reply in replies:
            # The first message with the reply's ID that needs a reply, else the first
            # with that ID at all (a reply it should not have had). A message made of
            # garbage by a lying length can share an ID with a real one after it.
            ident = reply[:2]
            same = [j for j in range(at, len(messages)) if messages[j][:2] == ident
                    and len(messages[j]) >= 2]
            found = next((j for j in same if _needs_reply(messages[j])),
                         same[0] if same else None)
            if found is None:
                tally.violate("ID echoed", "tcp", sent, reply,
                              "reply matching no message still unanswered on the connection")
                continue
            self.counts.no_reply += sum(1 for m in messages[at:found] if _needs_reply(m))
            if len(reply) >= 3 and reply[2] & 0x02:
                self.counts.truncated += 1
            tally.check(messages[found], reply, "tcp", TCP_MAX)
            at = found + 1
        if not reset and not stalled:
            self.counts.no_reply += sum(1 for m in messages[at:] if _needs_reply(m))


def _needs_reply(message: bytes) -> bool:
    return len(message) >= HEADER.size and not message[2] & 0x80


# -- the run -------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    packets: int
    seed: int
    source: str = ""
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    udp_packets: int = 0
    tcp_messages: int = 0
    tcp_connections: int = 0
    replies: int = 0
    tcp_replies: int = 0
    no_reply: int = 0
    """Packets that needed a reply (UDP, or a whole TCP message) and got none."""
    tcp_no_reply: int = 0
    dropped: int = 0
    """UDP packets that needed no reply (responses, no full header) and got none. Those of
    0-1 bytes have no ID and are counted here too: a reply to one would have shown as a
    reply with an unknown ID (an "ID echoed" violation)."""
    late_replies: int = 0
    server_socket_drops: int = 0
    """Datagrams the kernel dropped at the server's UDP socket (its buffer was full)."""
    send_errors: int = 0
    tcp_resets: int = 0
    tcp_errors: int = 0
    tcp_truncated: int = 0
    rcodes: dict[str, int] = field(default_factory=dict)
    servfail: int = 0
    servfail_examples: list[str] = field(default_factory=list)
    truncated: int = 0
    not_echoed: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    log_errors: int = 0
    log_warnings: int = 0
    log_examples: list[str] = field(default_factory=list)
    liveness_probes: int = 0
    liveness_failures: int = 0
    liveness_slowest: float = 0.0
    liveness_examples: list[str] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_max_mb: float = 0.0
    rss_end_mb: float = 0.0
    hwm_mb: float = 0.0
    max_amplification: float = 0.0
    """UDP: the largest reply bytes / query bytes (TCP's is ``tcp_max_amplification``)."""
    amplification_query: str = ""
    amplification_sizes: tuple[int, int] = (0, 0)
    tcp_max_amplification: float = 0.0
    server_alive: bool = False
    kinds: dict[str, int] = field(default_factory=dict)
    tcp_scenarios: dict[str, int] = field(default_factory=dict)
    no_reply_examples: list[str] = field(default_factory=list)
    tcp_error_examples: list[str] = field(default_factory=list)

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())

    @property
    def packets_per_second(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0

    def problems(self) -> list[str]:
        """What went wrong, one line each; empty when the server kept every rule."""
        out = [f"{rule}: {count} violations, e.g. {self.examples.get(rule, [])}"
               for rule, count in self.violations.items() if count]
        if self.log_errors:
            out.append(f"{self.log_errors} error lines in the log: {self.log_examples}")
        if self.liveness_failures:
            out.append(f"{self.liveness_failures} of {self.liveness_probes} liveness probes "
                       f"failed: {self.liveness_examples}")
        if not self.server_alive:
            out.append("the server process exited")
        if self.tcp_errors:
            out.append(f"{self.tcp_errors} TCP errors: {self.tcp_error_examples}")
        return out


def run_fuzz(packets: int = 1_000_000, seed: int = 1, tcp_share: float = 0.03, *,
             window: int = 64, sockets: int = 8, probe_every: int = 10_000,
             progress: bool = False, keep_log: Path | None = None,
             source: str | None = None) -> FuzzReport:
    """Start the demo server, send ``packets`` packets (``tcp_share`` of them as TCP
    messages), stop it and report; ``keep_log`` gets a copy of the server's log.

    ``source`` serves other cluster dumps with the demo's settings, e.g.
    ``file:config/demo-cluster.yaml,tests/data/extra-cluster.yaml`` adds a headless
    service of 120 pods, whose RRsets need truncation.
    """
    with tempfile.TemporaryDirectory(prefix="clusterdns-fuzz-") as tmp, \
            demo_server(Path(tmp), source) as server:
        report = fuzz(server, packets, seed, tcp_share, window=window, sockets=sockets,
                      probe_every=probe_every, progress=progress, source=source)
        stop(server.process)
        report.log_errors, report.log_warnings, report.log_examples = log_errors(server.log)
        if keep_log is not None:
            keep_log.write_bytes(server.log.read_bytes())
    return report


def fuzz(server: ServerProcess, packets: int, seed: int, tcp_share: float = 0.03, *,
         window: int = 64, sockets: int = 8, probe_every: int = 10_000,
         progress: bool = False, source: str | None = None) -> FuzzReport:
    """Fuzz a running server (the log is the caller's to read); ``source`` is what it
    serves, for the names to ask."""
    names = demo_names(source)
    report = FuzzReport(packets=packets, seed=seed, source=source or "the demo cluster")
    tcp_budget = round(packets * tcp_share)
    udp_budget = packets - tcp_budget
    udp_tally, tcp_tally = Tally(), Tally()
    udp_gen = PacketGenerator(random.Random(seed), names)
    tcp_gen = PacketGenerator(random.Random(f"tcp-{seed}"), names)
    udp = UdpFuzzer(server.port, udp_gen, udp_tally, sockets=sockets, window=window)
    tcp = TcpFuzzer(server.port, tcp_gen, tcp_tally)
    liveness = Liveness()
    liveness.probe(server.port)
    report.rss_start_mb = report.rss_max_mb = server.memory_mb("VmRSS")
    cpu_before = process_cpu_seconds(server.process.pid)
    drops_before = udp_drops(server.port)
    thread = threading.Thread(target=tcp.run, args=(tcp_budget,), name="fuzz-tcp", daemon=True)
    started = time.monotonic()
    next_probe = probe_every
    next_sample = started
    thread.start()
    try:
        while udp.counts.sent < udp_budget or udp.outstanding() or thread.is_alive():
            udp.fill(udp_budget)
            udp.poll(0.02)
            now = time.monotonic()
            if now >= next_sample:
                report.rss_max_mb = max(report.rss_max_mb, server.memory_mb("VmRSS"))
                next_sample = now + 0.5
            done = udp.counts.sent + tcp.counts.messages
            if done >= next_probe:
                liveness.probe(server.port)
                next_probe = (done // probe_every + 1) * probe_every
                if progress:
                    print(f"{done:,} packets, {now - started:.0f} s, "
                          f"{udp_tally.replies + tcp_tally.replies:,} replies, "
                          f"{udp_tally.violations.total() + tcp_tally.violations.total()} "
                          f"violations, {liveness.failures} failed probes, "
                          f"RSS {server.memory_mb('VmRSS'):.0f} MB", flush=True)
            if server.process.poll() is not None:
                tcp.stop.set()
                break
        thread.join(timeout=TCP_TIMEOUT * 3)
    finally:
        tcp.stop.set()
        udp.close()
    report.seconds = time.monotonic() - started
    report.server_cpu_s = process_cpu_seconds(server.process.pid) - cpu_before
    report.server_socket_drops = udp_drops(server.port) - drops_before
    liveness.probe(server.port)
    report.server_alive = server.process.poll() is None
    report.rss_end_mb = server.memory_mb("VmRSS")
    report.hwm_mb = server.memory_mb("VmHWM")
    report.rss_max_mb = max(report.rss_max_mb, report.rss_end_mb)
    tally = Tally()
    tally.merge(tcp_tally)
    report.tcp_max_amplification = tally.max_amplification
    tally.max_amplification = 0.0  # the figure that matters for reflection: UDP's
    tally.merge(udp_tally)
    report.udp_packets = udp.counts.sent
    report.tcp_messages = tcp.counts.messages
    report.tcp_connections = tcp.counts.connections
    report.packets = udp.counts.sent + tcp.counts.messages
    report.replies = tally.replies
    report.tcp_replies = tcp_tally.replies
    report.no_reply = udp.counts.no_reply + tcp.counts.no_reply
    report.tcp_no_reply = tcp.counts.no_reply
    report.no_reply_examples = udp.counts.no_reply_examples
    report.dropped = udp.counts.dropped + udp.counts.no_id
    report.late_replies = udp.counts.late
    report.send_errors = udp.counts.send_errors
    report.tcp_resets = tcp.counts.resets
    report.tcp_errors = tcp.counts.errors
    report.tcp_error_examples = tcp.counts.error_examples
    report.tcp_truncated = tcp.counts.truncated
    report.rcodes = dict(tally.rcodes.most_common())
    report.servfail = tally.rcodes["SERVFAIL"]
    report.servfail_examples = tally.servfail_examples
    report.truncated = tally.truncated
    report.not_echoed = tally.not_echoed
    report.violations = {rule: tally.violations[rule] for rule in RULES}
    report.violations.update(tally.violations)
    report.examples = tally.examples
    report.max_amplification = tally.max_amplification
    report.amplification_query = tally.amplification_query
    report.amplification_sizes = tally.amplification_sizes
    report.liveness_probes = liveness.probes
    report.liveness_failures = liveness.failures
    report.liveness_slowest = liveness.slowest
    report.liveness_examples = liveness.examples
    report.kinds = dict((udp_gen.kinds + tcp_gen.kinds).most_common())
    report.tcp_scenarios = dict(tcp.counts.scenarios.most_common())
    return report


# -- the table -----------------------------------------------------------------------------


def table(report: FuzzReport) -> Table:
    r = report
    rows = [
        ["packets", f"{r.packets:,} ({r.udp_packets:,} UDP, {r.tcp_messages:,} TCP messages "
                    f"on {r.tcp_connections:,} connections)"],
        ["time", f"{r.seconds:.1f} s, {r.packets_per_second:,.0f} packets/s "
                 f"(server CPU {r.server_cpu_s:.1f} s)"],
        ["replies", f"{r.replies:,} ({r.tcp_replies:,} over TCP; {r.truncated:,} with TC, "
                    f"{r.late_replies} late)"],
        ["no reply (reply expected)",
         f"{r.no_reply:,} ({r.tcp_no_reply:,} over TCP; {r.server_socket_drops:,} datagrams "
         f"dropped by the kernel at the server's UDP socket)"],
        ["dropped (responses, no header)", f"{r.dropped:,}"],
        ["rcodes", ", ".join(f"{name} {count:,}" for name, count in r.rcodes.items())],
        ["SERVFAIL", f"{r.servfail:,}"],
    ]
    rows += [[f"violations: {rule}", f"{count:,}"] for rule, count in r.violations.items()]
    rows += [
        ["log errors (ERROR, CRITICAL, Traceback lines)",
         f"{r.log_errors:,} ({r.log_warnings:,} warnings)"],
        ["liveness probes (UDP + TCP) failed",
         f"{r.liveness_failures} of {r.liveness_probes} (slowest {r.liveness_slowest:.3f} s)"],
        ["server RSS start / max sampled / end",
         f"{r.rss_start_mb:.0f} / {r.rss_max_mb:.0f} / {r.rss_end_mb:.0f} MB"],
        ["server peak RSS (VmHWM)", f"{r.hwm_mb:.0f} MB"],
        ["max UDP amplification (reply / query bytes)",
         f"{r.max_amplification:.2f} ({r.amplification_sizes[1]} / "
         f"{r.amplification_sizes[0]} bytes; TCP {r.tcp_max_amplification:.2f})"],
        ["server alive at the end", "yes" if r.server_alive else "NO"],
        ["verdict", "pass" if not r.problems() else "FAIL"],
        [machine_load(), ""],
    ]
    title = (f"Packet fuzzer: {r.packets:,} packets (seed {r.seed}) against clusterdns serve "
             f"({r.source})")
    return title, ["figure", "value"], rows


def main_table(runs: int = 1) -> Table:
    """One run of 1,000,000 packets (``runs`` is not used: the figures are counts of one
    seeded run, not timings to take a median of)."""
    del runs
    return table(run_fuzz(1_000_000, seed=1, progress=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--tcp-share", type=float, default=0.03,
                        help="share of the packets sent as TCP messages (default 0.03)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=int, default=64,
                        help="UDP packets awaiting a reply at most (default 64)")
    parser.add_argument("--probe-every", type=int, default=10_000,
                        help="packets between liveness probes (default 10,000)")
    parser.add_argument("--json", type=Path, help="also write the whole report here")
    parser.add_argument("--log", type=Path, help="keep a copy of the server's log here")
    parser.add_argument("--source", help="file:PATH[,PATH...] to serve with the demo's "
                        "settings instead of its dump (e.g. file:config/demo-cluster.yaml,"
                        "tests/data/extra-cluster.yaml, for RRsets that need truncation)")
    args = parser.parse_args()
    report = run_fuzz(args.packets, args.seed, args.tcp_share, window=args.window,
                      probe_every=args.probe_every, progress=True, keep_log=args.log,
                      source=args.source)
    print(markdown(*table(report)))
    for rule, kept in report.examples.items():
        for example in kept:
            print(f"{rule}: {example}")
    for example in report.servfail_examples:
        print(f"SERVFAIL: {example}")
    for example in report.no_reply_examples:
        print(f"no reply: {example}")
    for line in report.log_examples:
        print(f"log: {line}")
    if report.amplification_query:
        print(f"largest amplification: {report.amplification_query}")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")


if __name__ == "__main__":
    main()
