"""Properties of ``Handler.handle`` over generated packets (hypothesis).

Four strategies, over 100,000 packets in all: fully random bytes; well-formed queries with
random names / types / classes / flags / opcodes / EDNS; well-formed queries with random
byte mutations and truncations; random section counts over real questions and records.
For every packet, ``handle(data, tcp=False)``:

* never raises, and never takes its own "exception while answering" (SERVFAIL) path;
* returns nothing for a packet with QR set (or shorter than a header);
* otherwise returns a reply with QR set and the query's ID, which dnspython can parse;
* keeps a UDP reply within the limit: 512 without EDNS, else min(max(payload, 512), 1232);
* echoes the question byte for byte whenever the query's first question can be read.

What the query contains (EDNS payload, the first question) is worked out here by a small
independent reader written from RFC 1035 §4.1 and RFC 6891 §6.1.2, not by ``wire``.

Speed: hypothesis costs a few hundred microseconds per example and tens per draw, so each
example is a batch of ``BATCH`` packets, and each structured packet is decoded from one
drawn byte string (``Picker``, in the style of libFuzzer's FuzzedDataProvider: a zero byte
always decodes to the plainest choice, so shrinking the bytes shrinks the query).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterdns.config import Config, ListenAddr, PodsMode, SourceSpec
from clusterdns.handler import Handler
from clusterdns.snapshot import SnapshotRef, unsynced
from clusterdns.source.dump import load_files
from conftest import DEMO_CLUSTER, EXTRA_CLUSTER

SERVER_MAX = 1232
MIN_UDP = 512
OPT = 41

BATCH = 10  # packets per hypothesis example
EXAMPLES = {  # examples per strategy; x BATCH packets each
    "random_bytes": 3_000,
    "valid_queries": 3_000,
    "mutated_queries": 3_000,
    "random_counts": 1_200,
}
assert sum(EXAMPLES.values()) * BATCH >= 100_000

FAST = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CHECKED: Counter[str] = Counter()  # packets checked per strategy in this session


# ----------------------------------------------------------------------------- handlers


def _config() -> Config:
    return Config(
        zones=("cluster.local", "in-addr.arpa", "ip6.arpa"),
        source=SourceSpec("file", (DEMO_CLUSTER, EXTRA_CLUSTER)),
        listen=(ListenAddr("127.0.0.1", 0),),
        pods=PodsMode.INSECURE,
    )


def _synced_handler() -> Handler:
    config = _config()
    ref = SnapshotRef(unsynced(config))
    ref.publish_cluster(load_files(config.source.paths).cluster, config)
    return Handler(ref, SERVER_MAX)


SYNCED = _synced_handler()
UNSYNCED = Handler(SnapshotRef(unsynced(_config())), SERVER_MAX)
NODE_TYPES = {name: [int(t) for t in sorted(node)] for name, node in SYNCED.ref.get().nodes.items()}
REAL_NAMES = sorted(
    [*NODE_TYPES, "10-244-1-11.default.pod.cluster.local",
     "fd00-10-244-1--29.team-a.pod.cluster.local", "example.com", "kubernetes.io"])
BIG_NAMES = [  # replies near or over the UDP limits
    "big.team-a.svc.cluster.local", "_http._tcp.big.team-a.svc.cluster.local",
    "rabbitmq.default.svc.cluster.local", "httpenv-headless.default.svc.cluster.local",
    "_amqp._tcp.rabbitmq.default.svc.cluster.local", "kube-dns.kube-system.svc.cluster.local",
]


# ----------------------------------------------------- an independent reader (RFC 1035)


@dataclass(frozen=True)
class Reading:
    """What a careful reader sees in a packet: the first question and the EDNS payload."""

    qdcount: int
    question: bytes | None  # raw first question when it is readable
    payload: int | None  # the OPT CLASS when the message is well formed and has one OPT


def _plain_name_end(data: bytes, pos: int) -> int | None:
    """End of an uncompressed name of at most 255 octets starting at ``pos``, else None."""
    total = 0
    while pos < len(data):
        length = data[pos]
        if length & 0xC0:
            return None
        total += length + 1
        if total > 255:
            return None
        if length == 0:
            return pos + 1
        pos += 1 + length
    return None


def _any_name_end(data: bytes, pos: int) -> int | None:
    """End of a possibly compressed name (the pointer itself is not followed)."""
    while pos < len(data):
        length = data[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2 if pos + 2 <= len(data) else None
        if length & 0xC0:
            return None
        if length == 0:
            return pos + 1
        pos += 1 + length
    return None


def read(data: bytes) -> Reading:
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    question: bytes | None = None
    payload: int | None = None
    pos: int | None = 12
    for i in range(qd):
        assert pos is not None
        end = _plain_name_end(data, pos)
        if end is None or end + 4 > len(data):
            pos = None
            break
        if i == 0:
            question = data[12:end + 4]
        pos = end + 4
    opts = 0
    well_formed = pos is not None
    for index in range(an + ns + ar):
        if pos is None:
            well_formed = False
            break
        owner = pos
        end = _any_name_end(data, pos)
        if end is None or end + 10 > len(data):
            well_formed = False
            break
        rtype, rclass, _, rdlen = struct.unpack_from("!HHIH", data, end)
        if end + 10 + rdlen > len(data):
            well_formed = False
            break
        if rtype == OPT:
            if index < an + ns or data[owner] != 0:
                well_formed = False
                break
            opts += 1
            payload = rclass
        pos = end + 10 + rdlen
    if not well_formed or opts != 1:
        payload = None
    return Reading(qd, question, payload)


def udp_limit(reading: Reading) -> int:
    if reading.payload is None:
        return MIN_UDP
    return min(max(reading.payload, MIN_UDP), SERVER_MAX)


# ------------------------------------------------------------------------- the property


def check(data: bytes, handler: Handler = SYNCED) -> None:
    errors_before = handler.stats.errors
    reply = handler.handle(data, tcp=False)
    assert handler.stats.errors == errors_before, (
        f"an exception was raised while answering {data!r} (see the log)")
    if len(data) < 12 or data[2] & 0x80:
        assert reply is None, f"replied to a response or a runt: {data!r}"
        return
    assert reply is not None, f"no reply to {data!r}"
    assert isinstance(reply, bytes), "without a forwarder every answer is synchronous"
    assert len(reply) >= 12
    assert reply[:2] == data[:2], "reply ID must match the query ID"
    assert reply[2] & 0x80, "QR must be set in a reply"
    reading = read(data)
    limit = udp_limit(reading)
    assert len(reply) <= limit, f"{len(reply)}-byte UDP reply over the {limit} limit: {data!r}"
    try:  # (opcode cleared: dnspython reads UPDATE messages by stricter rules of its own)
        dns.message.from_wire(reply[:2] + bytes([reply[2] & 0x87]) + reply[3:])
    except dns.exception.DNSException as exc:
        raise AssertionError(f"unparseable reply {reply!r} to {data!r}: {exc!r}") from None
    if reading.question is not None:
        assert struct.unpack_from("!H", reply, 4)[0] == 1, f"question not echoed: {data!r}"
        assert reply[12:12 + len(reading.question)] == reading.question, (
            f"question not echoed byte for byte: {data!r} -> {reply!r}")


# --------------------------------------------------------------------------- strategies


class Picker:
    """Choices decoded from bytes; past the end every byte reads as zero."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        value = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return value

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def u32(self) -> int:
        return self.u16() << 16 | self.u16()

    def take(self, size: int) -> bytes:
        return bytes(self.byte() for _ in range(size))

    def below(self, n: int) -> int:
        return (self.u16() if n > 256 else self.byte()) % n

    def pick(self, options: Sequence[bytes]) -> bytes:
        return options[self.below(len(options))]

    def odds(self, in_256: int) -> bool:
        """True with probability ``in_256``/256 (a zero byte reads False)."""
        return self.byte() >= 256 - in_256


LABEL_POOL = [
    b"httpenv", b"rabbitmq", b"big", b"team-a", b"_tcp", b"_udp", b"_http", b"_amqp",
    b"rabbitmq-0", b"10-244-1-11", b"dns-version", b"queue", b"httpbin", b"empty-headless",
    b"3d-render", b"v6", b"dual", b"web", b"ns", b"dns", b"kube-dns", b"kube-system",
    b"default", b"prod", b"svc", b"pod", b"10", b"96", b"0", b"1", b"244", b"*", b"example",
    b"com", b"HTTPENV", b"Default", b"SVC", b"10-244-0-5", b"fd00-10-244-1--29", b"a.b",
    b"\xff\xfe", b"Caf\xe9", b"x" * 63,
]
SUFFIXES: list[tuple[bytes, ...]] = [
    (b"cluster", b"local"), (b"svc", b"cluster", b"local"),
    (b"default", b"svc", b"cluster", b"local"), (b"team-a", b"svc", b"cluster", b"local"),
    (b"kube-system", b"svc", b"cluster", b"local"), (b"default", b"pod", b"cluster", b"local"),
    (b"in-addr", b"arpa"), (b"10", b"in-addr", b"arpa"), (b"ip6", b"arpa"),
    (b"CLUSTER", b"Local"), (b"example", b"com"), (b"local",), (b"arpa",), (),
]
FREQUENT_TYPES = [1, 28, 33, 1, 28, 12, 255, 16, 6, 2, 5]
TYPES = [1, 28, 33, 12, 255, 16, 6, 2, 5, 13, 15, 35, 43, 46, 48, 64, 65, 99, 41, 249, 250,
         251, 252, 253, 254, 256, 257, 0, 65535]
CLASSES = [1, 3, 4, 254, 255, 0, 2, 65535]
PAYLOADS = [1232, 512, 4096, 0, 1, 511, 513, 1220, 1231, 1233, 1400, 65535]
OPTION_CODES = [15, 10, 8, 12, 3, 0, 65535]


def encode_name(labels: Sequence[bytes]) -> bytes:
    """Uncompressed wire name; labels beyond 255 octets in all are left off."""
    out = b""
    for label in labels:
        piece = bytes([len(label)]) + label
        if len(out) + len(piece) + 1 > 255:
            break
        out += piece
    return out + b"\x00"


def pick_real_name(p: Picker) -> tuple[str, list[bytes]]:
    """A name we serve (a large answer now and then), its letter case shuffled at times."""
    names = BIG_NAMES if p.odds(40) else REAL_NAMES
    name = names[p.below(len(names))]
    labels = [lab.encode() for lab in name.split(".")]
    if p.odds(48):
        labels = [bytes(c ^ 0x20 if 97 <= c <= 122 and p.odds(128) else c for c in lab)
                  for lab in labels]
    return name, labels


def pick_name(p: Picker) -> bytes:
    """Mostly a name we serve, else labels from a pool or any octets under a suffix."""
    if p.odds(144):
        labels = pick_real_name(p)[1]
        if p.odds(24):
            labels.insert(0, p.pick(LABEL_POOL))
        return encode_name(labels)
    labels = []
    for _ in range(p.byte() % 6):
        if p.odds(48):
            labels.append(p.take(1 + p.byte() % 63))  # any octets at all
        else:
            labels.append(p.pick(LABEL_POOL))
    return encode_name([*labels, *SUFFIXES[p.below(len(SUFFIXES))]])


def pick_question(p: Picker) -> bytes:
    """Half the time a served name with one of its own types; else anything."""
    if p.odds(128):
        name, labels = pick_real_name(p)
        types = NODE_TYPES.get(name) or FREQUENT_TYPES
        qtype = types[p.byte() % len(types)]
        return encode_name(labels) + struct.pack("!HH", qtype, 1)
    if p.odds(192):
        qtype = FREQUENT_TYPES[p.byte() % len(FREQUENT_TYPES)]
    else:
        qtype = p.u16() if p.odds(96) else TYPES[p.below(len(TYPES))]
    qclass = 1
    if p.odds(24):
        qclass = p.u16() if p.odds(64) else CLASSES[p.byte() % len(CLASSES)]
    return pick_name(p) + struct.pack("!HH", qtype, qclass)


def pick_opt(p: Picker) -> bytes:
    owner = [b"\x00", b"\xc0\x0c", b"\x03foo\x00"][p.byte() % 3] if p.odds(12) else b"\x00"
    payload = p.u16() if p.odds(48) else int(PAYLOADS[p.below(len(PAYLOADS))])
    ext_rcode = p.byte() if p.odds(12) else 0
    version = p.byte() if p.odds(24) else 0
    flags = p.u16() if p.odds(32) else 0x8000 if p.odds(64) else 0
    rdata = b""
    for _ in range(p.byte() % 3 if p.odds(64) else 0):
        code = p.u16() if p.odds(64) else OPTION_CODES[p.below(len(OPTION_CODES))]
        value = p.take(p.byte() % 40)
        rdata += struct.pack("!HH", code, len(value)) + value
    ttl = ext_rcode << 24 | version << 16 | flags
    return owner + struct.pack("!HHIH", OPT, payload, ttl, len(rdata)) + rdata


def pick_flags(p: Picker) -> int:
    """RD only, mostly; sometimes any flags (QR included) and any opcode."""
    flags = [0x0100, 0x0000, p.u16(), p.u16() & 0x7FFF][p.byte() % 4] if p.odds(64) else 0x0100
    if p.odds(12):
        flags = (flags & ~0x7800) | (p.byte() % 16) << 11
    return flags


def valid_query(p: Picker) -> bytes:
    qid, flags = p.u16(), pick_flags(p)
    question = pick_question(p)
    opt = pick_opt(p) if p.odds(160) else b""
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if opt else 0) + question + opt


def mutate(p: Picker, data: bytes) -> bytes:
    """One to four flips, overwrites, truncations, insertions or deletions."""
    buf = bytearray(data)
    for _ in range(1 + p.byte() % 4):
        kind, i = p.byte() % 5, p.u16() % (len(buf) + 1)
        if kind == 0 and i < len(buf):
            buf[i] ^= 1 << p.byte() % 8
        elif kind == 1 and i < len(buf):
            buf[i] = p.byte()
        elif kind == 2:
            del buf[i:]
        elif kind == 3:
            buf[i:i] = p.take(1 + p.byte() % 8)
        elif kind == 4:
            del buf[i:i + 1 + p.byte() % 8]
    return bytes(buf)


def random_rr(p: Picker) -> bytes:
    owner = [b"\x00", b"\xc0\x0c", b"\xc0\xff"][p.byte() % 3] if p.odds(192) else pick_name(p)
    rtype = OPT if p.odds(96) else p.u16()
    rdata = p.take(p.byte() % 24)
    return owner + struct.pack("!HHIH", rtype, p.u16(), p.u32(), len(rdata)) + rdata


def counted_packet(p: Picker) -> bytes:
    """Real questions and records under section counts that may or may not match them."""
    qid = p.u16()
    flags = p.u16() & 0x87FF if p.odds(64) else 0x0100
    questions = [pick_question(p) for _ in range(p.byte() % 4)]
    records = [random_rr(p) for _ in range(p.byte() % 5)]
    split = sorted(p.byte() % (len(records) + 1) for _ in range(2))
    counts = [len(questions), split[0], split[1] - split[0], len(records) - split[1]]
    counts = [p.u16() if p.odds(24) else p.byte() % 4 if p.odds(96) else c for c in counts]
    tail = p.take(p.byte() % 8) if p.odds(32) else b""
    return (struct.pack("!HHHHHH", qid, flags, *counts) + b"".join(questions)
            + b"".join(records) + tail)


def batch_of(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    # unique: left alone, hypothesis fills a list with copies of one element.
    return st.lists(strategy, min_size=BATCH, max_size=BATCH, unique=True)


seeds = st.binary(min_size=48, max_size=160)  # short seeds would decode to near-zeros


def check_all(name: str, packets: Sequence[bytes], handler: Handler = SYNCED) -> None:
    for data in packets:
        check(data, handler)
    CHECKED[name] += len(packets)


# -------------------------------------------------------------------------------- tests


@settings(FAST, max_examples=EXAMPLES["random_bytes"])
@given(batch_of(st.one_of(
    st.binary(max_size=600),
    st.binary(min_size=12, max_size=120).map(lambda b: b[:2] + bytes([b[2] & 0x7F]) + b[3:]))))
def test_properties_random_bytes_never_crash_and_get_well_formed_replies(
        packets: list[bytes]) -> None:
    check_all("random_bytes", packets)


@settings(FAST, max_examples=EXAMPLES["valid_queries"])
@given(batch_of(seeds), st.booleans())
def test_properties_valid_queries_get_well_formed_replies_within_the_udp_limit(
        blobs: list[bytes], synced: bool) -> None:
    check_all("valid_queries", [valid_query(Picker(b)) for b in blobs],
              SYNCED if synced else UNSYNCED)


@settings(FAST, max_examples=EXAMPLES["mutated_queries"])
@given(batch_of(seeds))
def test_properties_mutated_and_truncated_queries_never_crash(blobs: list[bytes]) -> None:
    packets = []
    for blob in blobs:
        p = Picker(blob)
        packets.append(mutate(p, valid_query(p)))
    check_all("mutated_queries", packets)


@settings(FAST, max_examples=EXAMPLES["random_counts"])
@given(batch_of(seeds))
def test_properties_random_section_counts_never_crash(blobs: list[bytes]) -> None:
    check_all("random_counts", [counted_packet(Picker(b)) for b in blobs])


def test_properties_covered_at_least_100000_packets() -> None:
    if set(CHECKED) != set(EXAMPLES):
        pytest.skip("only meaningful when every strategy ran in this session")
    assert sum(CHECKED.values()) >= 100_000, CHECKED


# ----------------------------------------------------- the reference reader, checked


@pytest.mark.parametrize(("packet", "expected"), [
    (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01",
     Reading(1, b"\x00\x00\x01\x00\x01", None)),
    (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x01"
     b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00",
     Reading(1, b"\x00\x00\x01\x00\x01", 4096)),
    (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\xc0\x0c\x00\x01\x00\x01",
     Reading(1, None, None)),
    (b"\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02"
     b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"
     b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00",
     Reading(0, None, None)),
])
def test_properties_reference_reader_reads_questions_and_opt(packet: bytes,
                                                             expected: Reading) -> None:
    assert read(packet) == expected


@pytest.mark.parametrize(("payload", "limit"), [
    (None, 512), (0, 512), (511, 512), (512, 512), (1000, 1000), (1232, 1232), (4096, 1232)])
def test_properties_udp_limit_follows_the_spec(payload: int | None, limit: int) -> None:
    assert udp_limit(Reading(1, None, payload)) == limit
