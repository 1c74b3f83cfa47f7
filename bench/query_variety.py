"""Memory against the variety of queries: RSS of a server answering 600,000 random queries.

Why this exists: every table the server keeps per kind of query (the fast path's stored
replies, the forwarder's cache, the metrics' per-name memo and counters) has to be bounded,
or a client that asks for ever new names, types, sizes and EDNS shapes -- a scanner, a
0x20-randomising resolver, a broken search path -- makes the process grow until it is
killed. The acceptance item: at least 500,000 queries with random names, types, sizes and
EDNS shapes, and RSS growth of at most 3% over the second half of them, once the bounded
caches are full.

Per run (each with a fresh server):

- a tiny upstream (this module with ``--upstream-child PORT``, its own process) answers
  every name with an A/AAAA record, or NXDOMAIN / NODATA with an SOA, all with TTL 3600,
  so forwarded answers stay in the forwarder's cache until it evicts them;
- ``clusterdns serve --config config/demo.yaml`` on a free loopback port, with
  ``--upstream`` pointing at it, ``--metrics`` on another free port and /health, /ready
  off; /metrics is scraped every ``--scrape-interval`` seconds during the run, as
  Prometheus would, so scrape-time work is included;
- from an RNG seeded with ``--seed``: a warm-up of 5,000 queries, then ``--queries``
  (default 600,000) with a window of ``--window`` queries in flight. Names: names the
  demo serves (``clusterdns records``), missing in-zone names of random length and label
  count, pod names, reverse names (in-addr.arpa and ip6.arpa), out-of-zone names (fresh
  ones and a pool of popular ones); letter case randomised (DNS 0x20) on half of them,
  a few labels of arbitrary octets. Types: the common ones and random 16-bit values.
  EDNS: none, or an OPT with a payload size from 0 to 65535, the DO bit, sometimes
  another version, and options (cookie, padding of random length, NSID, client subnet,
  keepalive, unknown codes). Queries are 17 to about 300 bytes;
- 2% of the queries go over TCP, 1 to 3 per connection. They are drawn from a fixed pool
  of 1,000 random queries: the fast path keeps up to 50,000 TCP replies, and this few TCP
  queries could not fill that table in the first half, so fresh ones would show up as a
  bounded cache still filling rather than as a leak. The UDP stream is fresh throughout;
- VmRSS of the server (from /proc/PID/status) is sampled every 1% of the queries sent
  (never while a scrape is in flight, whose temporary text would be counted).

Reported: RSS after the warm-up, at the halfway point, at the end and its peak over the
samples (and VmHWM); the growth over the second half, (end - mid) / mid, against the 3%
target, and a least-squares trend over the second-half samples as a check on that
two-point figure; time, queries per second, the server's CPU, queries that got no reply,
replies whose question was not ours, the rcodes; the size and series count of /metrics at
the half and the end (they grow with every label value the counters keep) and the
forwarder's cache entries at the half (``coredns_cache_entries``: full, 10,000, with the
default count). Medians over ``--runs``; each run prints its RSS every 10% and the
first lines of the server's log (warnings and above), if any.

Nothing asserts; the script prints a table.

Run: ``.venv/bin/python -m bench.query_variety [--queries 600000] [--runs 1] [--seed 7]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.dnsperf_common import (
    CLUSTERDNS,
    ROOT,
    free_port,
    machine_load,
    median,
    process_cpu_seconds,
    records_text,
    stop,
    wait_answering,
)
from bench.run_all import Table, markdown
from bench.scale import status_mb

TABLE_ORDER = 70

CONFIG = ROOT / "config" / "demo.yaml"
PROBE = "httpenv.default.svc.cluster.local"
GROWTH_TARGET_PCT = 3.0
WARMUP = 5_000
TCP_SHARE = 0.02
"""Share of the queries sent over TCP (in connections of 1 to 3 queries, 2 on average)."""
TCP_POOL = 1_000
POPULAR_OUT_OF_ZONE = 1_000
UPSTREAM_TTL = 3600
REPLY_TIMEOUT = 5.0
MAX_QUERY = 300
"""Bytes a query may have; EDNS options that would make it longer are left out."""

HEADER = struct.Struct("!HHHHHH")
RR_HEADER = struct.Struct("!HHIH")
TYPE_CLASS = struct.Struct("!HH")

A, NS, CNAME, SOA, PTR, HINFO, MX, TXT, AAAA, SRV, NAPTR = 1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 35
DS, OPT, DNSKEY, SVCB, HTTPS, ANY, CAA = 43, 41, 48, 64, 65, 255, 257
TYPE_CODES = {"A": A, "NS": NS, "CNAME": CNAME, "SOA": SOA, "PTR": PTR, "MX": MX, "TXT": TXT,
              "AAAA": AAAA, "SRV": SRV}
COMMON_TYPES = (A, AAAA, SRV, PTR, TXT, CNAME, NS, SOA, MX, ANY, HTTPS, SVCB, CAA, DS, DNSKEY,
                NAPTR, HINFO)
COMMON_WEIGHTS = (30, 15, 8, 6, 4, 4, 3, 3, 3, 3, 4, 2, 2, 2, 2, 1, 1)
RCODE_NAMES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")

LDH = b"abcdefghijklmnopqrstuvwxyz0123456789-"
CASE_MASK = bytes(0x20 if chr(b).isascii() and chr(b).isalpha() else 0 for b in range(256))
"""Translation table: 0x20 where a byte is an ASCII letter (length bytes are <= 63, never
letters), 0 elsewhere; AND-ed with random bytes it gives the 0x20 flips of a name."""
TLDS = (b"com", b"org", b"net", b"io", b"de", b"example", b"test", b"internal", b"local",
        b"arpa", b"svc")


# -- the queries ---------------------------------------------------------------------------


def wire_name(labels: Sequence[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def text_labels(name: str) -> list[bytes]:
    return [label.encode() for label in name.rstrip(".").split(".") if label]


@dataclass(frozen=True)
class Names:
    """What the demo cluster serves, from ``clusterdns records``."""

    existing: list[tuple[list[bytes], int]]  # (labels, type of a record it has)
    namespaces: list[bytes]


def demo_names(config: Path = CONFIG) -> Names:
    existing: list[tuple[list[bytes], int]] = []
    namespaces = {b"default", b"kube-system"}
    for line in records_text(config).splitlines():
        if not line or line.startswith(";"):
            continue
        owner, _ttl, _class, rtype, *_ = line.split()
        labels = text_labels(owner)
        existing.append((labels, TYPE_CODES.get(rtype, A)))
        if len(labels) >= 4 and labels[-3] == b"svc":
            namespaces.add(labels[-4])
    if not existing:
        raise SystemExit(f"clusterdns records --config {config} gave no records")
    return Names(existing, sorted(namespaces))


class QueryMaker:
    """Random queries (the message without its 2-byte ID) from a seeded RNG."""

    def __init__(self, names: Names, seed: int) -> None:
        self.rng = random.Random(seed)
        self.names = names
        self.popular = [self._out_of_zone_fresh() for _ in range(POPULAR_OUT_OF_ZONE)]

    # names ---------------------------------------------------------------------------

    def _label(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        size = (rng.randint(1, 15) if roll < 0.75 else rng.randint(16, 40) if roll < 0.95
                else rng.randint(41, 63))
        if rng.random() < 0.02:  # arbitrary octets: dots, zero bytes, non-ASCII
            return rng.randbytes(size)
        return bytes(rng.choices(LDH, k=size))

    def _random_under(self, suffix: list[bytes], most: int) -> list[bytes]:
        """1..``most`` random labels in front of ``suffix``, the name kept <= 255 bytes."""
        labels = [self._label() for _ in range(self.rng.randint(1, most))]
        room = 255 - len(wire_name(suffix))
        while labels and len(wire_name(labels)) - 1 > room:
            labels.pop()
        return [*labels, *suffix]

    def _missing_in_zone(self) -> list[bytes]:
        rng = self.rng
        ns = rng.choice(self.names.namespaces)
        suffix = rng.choice(([b"svc", b"cluster", b"local"], [ns, b"svc", b"cluster", b"local"],
                             [b"cluster", b"local"], [ns, b"pod", b"cluster", b"local"]))
        return self._random_under(suffix, rng.choice((1, 2, 3, 4, 8, 12)))

    def _pod(self) -> list[bytes]:
        rng = self.rng
        if rng.random() < 0.8:
            ip = "-".join(str(rng.randrange(256)) for _ in range(4))
        else:
            ip = f"fd00-10-244-{rng.randrange(65536):x}--{rng.randrange(65536):x}"
        ns = (rng.choice(self.names.namespaces) if rng.random() < 0.7
              else bytes(rng.choices(LDH[:26], k=rng.randint(1, 20))))
        return [ip.encode(), ns, b"pod", b"cluster", b"local"]

    def _reverse(self) -> list[bytes]:
        rng = self.rng
        if rng.random() < 0.8:
            first = 10 if rng.random() < 0.6 else rng.randrange(256)
            octets = [first] + [rng.randrange(256) for _ in range(3)]
            octets = octets[:4 if rng.random() < 0.9 else rng.randint(1, 3)]
            return [str(o).encode() for o in reversed(octets)] + [b"in-addr", b"arpa"]
        nibbles = [f"{rng.randrange(16):x}".encode() for _ in range(32)]
        nibbles[:4] = [b"f", b"d", b"0", b"0"] if rng.random() < 0.5 else nibbles[:4]
        count = 32 if rng.random() < 0.9 else rng.randint(1, 31)
        return [*reversed(nibbles[:count]), b"ip6", b"arpa"]

    def _out_of_zone_fresh(self) -> list[bytes]:
        rng = self.rng
        if rng.random() < 0.005:
            return []  # the root
        return self._random_under([rng.choice(TLDS)], rng.choice((1, 2, 3, 4, 6, 10)))

    def _name_and_type(self) -> tuple[list[bytes], int]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.22:
            labels, rtype = rng.choice(self.names.existing)
            return labels, rtype if rng.random() < 0.6 else self._qtype()
        if roll < 0.44:
            return self._missing_in_zone(), self._qtype()
        if roll < 0.54:
            return self._pod(), self._qtype()
        if roll < 0.66:
            return self._reverse(), PTR if rng.random() < 0.7 else self._qtype()
        if rng.random() < 0.4:
            return rng.choice(self.popular), self._qtype()
        return self._out_of_zone_fresh(), self._qtype()

    def _qtype(self) -> int:
        rng = self.rng
        if rng.random() < 0.2:
            return rng.randrange(65536)
        return rng.choices(COMMON_TYPES, COMMON_WEIGHTS)[0]

    # EDNS ----------------------------------------------------------------------------

    def _option(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(6)
        if kind == 0:  # cookie: client cookie, sometimes with a server cookie
            data = rng.randbytes(8 + (rng.randint(8, 32) if rng.random() < 0.3 else 0))
            code = 10
        elif kind == 1:  # padding
            code, data = 12, bytes(rng.randint(0, 64))
        elif kind == 2:  # NSID
            code, data = 3, b""
        elif kind == 3:  # client subnet, IPv4, a random source prefix
            prefix = rng.randint(0, 32)
            address = (rng.getrandbits(32) >> (32 - prefix) << (32 - prefix) if prefix else 0)
            code = 8
            data = (struct.pack("!HBB", 1, prefix, 0)
                    + address.to_bytes(4, "big")[:(prefix + 7) // 8])
        elif kind == 4:  # edns-tcp-keepalive, empty in a query
            code, data = 11, b""
        else:  # a code nobody knows
            code, data = rng.randint(65001, 65534), rng.randbytes(rng.randint(0, 16))
        return struct.pack("!HH", code, len(data)) + data

    def _opt(self, room: int) -> bytes:
        """An OPT record; its options take at most ``room`` bytes."""
        rng = self.rng
        roll = rng.random()
        payload = (rng.choice((0, 512, 1232, 1400, 4096, 65535)) if roll < 0.4
                   else rng.randrange(65536))
        version = 0 if rng.random() < 0.97 else rng.randint(1, 255)
        flags = (0x8000 if rng.random() < 0.5 else 0) | (
            rng.randrange(0x8000) if rng.random() < 0.05 else 0)
        options = b""
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                option = self._option()
                if len(options) + len(option) <= room:
                    options += option
        ttl = (version << 16) | flags
        return b"\x00" + RR_HEADER.pack(OPT, payload, ttl, len(options)) + options

    # the message ---------------------------------------------------------------------

    def make(self) -> bytes:
        """A query without its ID: flags, counts, the question, maybe an OPT."""
        rng = self.rng
        labels, qtype = self._name_and_type()
        name = wire_name(labels)
        if rng.random() < 0.5:  # DNS 0x20: flip the case of random letters
            n = len(name)
            flips = (int.from_bytes(name.translate(CASE_MASK), "big")
                     & int.from_bytes(rng.randbytes(n), "big"))
            name = (int.from_bytes(name, "big") ^ flips).to_bytes(n, "big")
        qclass = 1 if rng.random() < 0.98 else rng.choice((3, 4, 254, 255, rng.randrange(65536)))
        opcode = 0 if rng.random() < 0.995 else rng.choice((1, 2, 4, 5))
        flags = ((opcode << 11) | (0x0100 if rng.random() < 0.8 else 0)
                 | (0x0010 if rng.random() < 0.1 else 0) | (0x0020 if rng.random() < 0.1 else 0))
        opt = self._opt(MAX_QUERY - 12 - len(name) - 4 - 11) if rng.random() < 0.7 else b""
        return (HEADER.pack(0, flags, 1, 0, 0, 1 if opt else 0)[2:] + name
                + TYPE_CLASS.pack(qtype, qclass) + opt)


def question_of(body: bytes) -> bytes:
    """The question section of a query without its ID (our queries are uncompressed)."""
    i = 10
    while body[i]:
        i += body[i] + 1
    return body[10:i + 5]


# -- the upstream --------------------------------------------------------------------------


def upstream_reply(data: bytes) -> bytes | None:
    """The upstream's answer: NXDOMAIN for a quarter of the names (by a hash of the name),
    else A / AAAA records or NODATA; negative answers carry an SOA. TTLs are 3600."""
    if len(data) < 17:
        return None
    ident, flags, qdcount = struct.unpack_from("!HHH", data)
    if flags & 0x8000 or qdcount != 1:
        return None
    i = 12
    while i < len(data) and data[i]:
        if data[i] > 63:
            return None
        i += data[i] + 1
    end = i + 5
    if end > len(data):
        return None
    question = data[12:end]
    qtype = struct.unpack_from("!H", data, i + 1)[0]
    digest = zlib.crc32(data[12:i + 1].lower())
    answer = authority = b""
    rcode = 0
    if digest % 4 == 0:
        rcode = 3
    elif qtype == A:
        answer = b"\xc0\x0c" + RR_HEADER.pack(A, 1, UPSTREAM_TTL, 4) + digest.to_bytes(4, "big")
    elif qtype == AAAA:
        answer = (b"\xc0\x0c" + RR_HEADER.pack(AAAA, 1, UPSTREAM_TTL, 16)
                  + bytes.fromhex("20010db8") + bytes(8) + digest.to_bytes(4, "big"))
    if not answer:
        soa = b"\x00\x00" + struct.pack("!IIIII", 1, 7200, 1800, 86400, UPSTREAM_TTL)
        authority = b"\x00" + RR_HEADER.pack(SOA, 1, UPSTREAM_TTL, len(soa)) + soa
    opt = b"\x00" + RR_HEADER.pack(OPT, 1232, 0, 0)
    header = HEADER.pack(ident, 0x8080 | (flags & 0x0100) | rcode, 1, 1 if answer else 0,
                         1 if authority else 0, 1)
    return header + question + answer + authority + opt


class _UpstreamTCP(socketserver.StreamRequestHandler):
    """The upstream over TCP, where the forwarder retries replies it could not read."""

    def handle(self) -> None:
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            reply = upstream_reply(self.rfile.read(int.from_bytes(head, "big")))
            if reply is None:
                return
            self.wfile.write(len(reply).to_bytes(2, "big") + reply)


def serve_upstream(port: int) -> None:
    """The upstream child: answer UDP (and TCP, in threads) on 127.0.0.1:``port`` until
    the parent goes away."""
    parent = os.getppid()
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), _UpstreamTCP)
    tcp.daemon_threads = True
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind(("127.0.0.1", port))
        sock.settimeout(1.0)
        while os.getppid() == parent:
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            reply = upstream_reply(data)
            if reply is not None:
                sock.sendto(reply, peer)


@contextlib.contextmanager
def upstream(directory: Path) -> Iterator[int]:
    """The upstream child process; yields its port once it answers."""
    port = free_port()
    log = directory / f"upstream-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.query_variety", "--upstream-child", str(port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
    try:
        probe = (HEADER.pack(1, 0x0100, 1, 0, 0, 0) + wire_name([b"up", b"test"])
                 + TYPE_CLASS.pack(A, 1))
        deadline = time.monotonic() + 30
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"upstream exited: {log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise SystemExit("the upstream did not answer within 30 s")
                sock.sendto(probe, ("127.0.0.1", port))
                try:
                    if sock.recv(4096)[:2] == probe[:2]:
                        break
                except (TimeoutError, ConnectionRefusedError):
                    continue
        yield port
    finally:
        stop(process)


# -- the server ----------------------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path


@contextlib.contextmanager
def server(directory: Path, upstream_port: int) -> Iterator[Served]:
    """``clusterdns serve`` on the demo cluster, forwarding to ``upstream_port``."""
    port, metrics_port = free_port(), free_port()
    cmd = [*CLUSTERDNS, "serve", "--config", str(CONFIG), "--listen", f"127.0.0.1:{port}",
           "--upstream", f"127.0.0.1:{upstream_port}", "--metrics", f"127.0.0.1:{metrics_port}",
           "--health", "", "--ready", "", "--lameduck", "0", "--log-level", "warning"]
    log = directory / f"clusterdns-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
    try:
        try:
            wait_answering(port, PROBE, process, log)
            wait_answering(port, "forwarder-ready.example", process, log)  # not NXDOMAIN
        except SystemExit as exc:
            raise SystemExit(f"{exc}\nserver log:\n{log.read_text()[-3000:]}") from None
        yield Served(process, port, metrics_port, log)
    finally:
        stop(process)


@dataclass(frozen=True)
class Scrape:
    size: int  # bytes of /metrics
    series: int  # its sample lines
    forward_cache: float  # coredns_cache_entries, summed over its labels


def scrape(metrics_port: int) -> Scrape:
    """GET /metrics as Prometheus does."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    entries = sum(float(line.rsplit(None, 1)[1]) for line in lines
                  if line.startswith("coredns_cache_entries"))
    return Scrape(len(text), len(lines), entries)


NO_SCRAPE = Scrape(0, 0, 0.0)


def source_version() -> str:
    """The clusterdns commit measured (``git describe --always --dirty``)."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


# -- the client ----------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    no_reply: int = 0
    other_question: int = 0  # replies whose question is not the one we asked
    truncated: int = 0
    tcp: int = 0
    rcodes: Counter[int] = field(default_factory=Counter)
    smallest: int = 1 << 16
    largest: int = 0


@dataclass
class Sample:
    sent: int
    seconds: float
    rss_mb: float


class Client(asyncio.DatagramProtocol):
    """Keeps ``window`` queries in flight over UDP (and a few over TCP); counts replies."""

    def __init__(self, port: int, window: int, tally: Tally) -> None:
        self.port = port
        self.window = window
        self.low = max(1, window - max(1, window // 4))  # refill from here on
        self.tally = tally
        self.pending: dict[int, tuple[float, bytes]] = {}  # UDP: id -> (sent at, question)
        self.in_flight = 0
        self.room = asyncio.Event()
        self.idle = asyncio.Event()
        self.next_id = 0
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < 12:
            return
        entry = self.pending.pop(int.from_bytes(data[:2], "big"), None)
        if entry is None:
            return  # a reply after we gave up on it
        self._count(data, entry[1])
        self._done()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors; the query is counted as unanswered when it times out

    def _count(self, reply: bytes, question: bytes) -> None:
        tally = self.tally
        tally.answered += 1
        tally.rcodes[reply[3] & 0x0F] += 1
        if reply[2] & 0x02:
            tally.truncated += 1
        if reply[12:12 + len(question)] != question:
            tally.other_question += 1

    def _done(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= self.low:
            self.room.set()
        if self.in_flight == 0:
            self.idle.set()

    def _ident(self) -> int:
        ident = self.next_id
        while ident in self.pending:
            ident = (ident + 1) & 0xFFFF
        self.next_id = (ident + 1) & 0xFFFF
        return ident

    async def wait_room(self) -> None:
        while self.in_flight >= self.window:
            self.room.clear()
            await self.room.wait()

    def send_udp(self, body: bytes) -> None:
        assert self.transport is not None
        ident = self._ident()
        self.pending[ident] = (time.monotonic(), question_of(body))
        self.in_flight += 1
        self.idle.clear()
        self.tally.sent += 1
        self.transport.sendto(ident.to_bytes(2, "big") + body)

    def start_tcp(self, bodies: list[bytes]) -> asyncio.Task[None]:
        self.in_flight += len(bodies)
        self.idle.clear()
        self.tally.sent += len(bodies)
        self.tally.tcp += len(bodies)
        return asyncio.get_running_loop().create_task(self._tcp(bodies))

    async def _tcp(self, bodies: list[bytes]) -> None:
        asked = {ident: question_of(body) for ident, body in enumerate(bodies)}
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(b"".join(
                        (len(body) + 2).to_bytes(2, "big") + ident.to_bytes(2, "big") + body
                        for ident, body in enumerate(bodies)))
                    while asked:
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        reply = await reader.readexactly(size)
                        if size < 12:
                            continue
                        question = asked.pop(int.from_bytes(reply[:2], "big"), None)
                        if question is not None:
                            self._count(reply, question)
                            self._done()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        for _ in asked:
            self.tally.no_reply += 1
            self._done()

    def expire(self, now: float) -> None:
        """Give up on UDP queries older than ``REPLY_TIMEOUT``."""
        for ident, (sent_at, _) in list(self.pending.items()):
            if now - sent_at > REPLY_TIMEOUT:
                del self.pending[ident]
                self.tally.no_reply += 1
                self._done()


@dataclass
class RunResult:
    rss_start: float
    rss_mid: float
    rss_end: float
    rss_peak: float
    hwm: float
    growth_pct: float
    trend_pct: float
    seconds: float
    qps: float
    server_cpu_pct: float  # the server's CPU time over the run, in % of one core
    client_cpu_pct: float  # this process's
    tally: Tally
    scrapes: int
    metrics_mid: Scrape  # the last scrape before the halfway point
    metrics_end: Scrape
    samples: list[Sample]
    log_lines: list[str]


def trend_pct(samples: Sequence[Sample]) -> float:
    """Least-squares growth over ``samples``, in % of the fitted value at the first one."""
    if len(samples) < 3:
        return float("nan")
    xs = [float(s.sent) for s in samples]
    ys = [s.rss_mb for s in samples]
    slope, intercept = statistics.linear_regression(xs, ys)
    first = slope * xs[0] + intercept
    return slope * (xs[-1] - xs[0]) / first * 100


class Driver:
    """One run's sending, sampling and scraping against a running server."""

    def __init__(self, served: Served, maker: QueryMaker, window: int,
                 scrape_interval: float) -> None:
        self.served = served
        self.maker = maker
        self.window = window
        self.scrape_interval = scrape_interval
        self.tcp_pool = [maker.make() for _ in range(TCP_POOL)]
        self.scraping: asyncio.Future[Scrape] | None = None
        self.scrapes = 0
        self.last_metrics = NO_SCRAPE

    def rss(self) -> float:
        if self.served.process.poll() is not None:
            raise SystemExit(f"clusterdns exited ({self.served.process.returncode}): "
                             f"{self.served.log.read_text()[-2000:]}")
        return status_mb(self.served.process.pid, "VmRSS")

    async def quiet_rss(self) -> float:
        """VmRSS, taken when no scrape is in flight."""
        while self.scraping is not None and not self.scraping.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.scraping)
        return self.rss()

    async def scrape_now(self) -> Scrape:
        """One scrape, in a thread (urllib blocks), after any scrape still in flight."""
        if self.scraping is not None and not self.scraping.done():
            await asyncio.shield(self.scraping)  # one at a time, as Prometheus does
        loop = asyncio.get_running_loop()
        self.scraping = future = loop.run_in_executor(None, scrape, self.served.metrics_port)
        try:
            # shielded: a cancelled scraper leaves the future for quiet_rss to wait on
            self.last_metrics = await asyncio.shield(future)
        except OSError as exc:  # SystemExit leaves the event loop at once, even from a task
            raise SystemExit(f"scraping /metrics failed: {exc}") from None
        self.scrapes += 1
        return self.last_metrics

    async def scraper(self) -> None:
        while True:
            await asyncio.sleep(self.scrape_interval)
            await self.scrape_now()

    async def send(self, client: Client, count: int,
                   every: int = 0, on_sample: Callable[[int], None] | None = None) -> None:
        """Send ``count`` queries, calling ``on_sample(i)`` after every ``every``-th."""
        rng = self.maker.rng
        tasks: set[asyncio.Task[None]] = set()
        tally = client.tally
        i = 0
        while i < count:
            await client.wait_room()
            if rng.random() < TCP_SHARE / 2:
                bodies = [rng.choice(self.tcp_pool)
                          for _ in range(min(rng.randint(1, 3), count - i))]
                task = client.start_tcp(bodies)
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent = len(bodies)
            else:
                body = self.maker.make()
                size = len(body) + 2
                tally.smallest = min(tally.smallest, size)
                tally.largest = max(tally.largest, size)
                client.send_udp(body)
                sent = 1
            for k in range(i + 1, i + sent + 1):
                if every and k % every == 0 and on_sample is not None:
                    on_sample(k)
            i += sent
            if i % 32 < sent:
                await asyncio.sleep(0)  # let the replies in
        while client.in_flight:
            await client.idle.wait()
        if tasks:
            await asyncio.gather(*tasks)

    async def run(self, queries: int) -> RunResult:
        loop = asyncio.get_running_loop()
        warm = Tally()
        client = Client(self.served.port, self.window, warm)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: client, remote_addr=("127.0.0.1", self.served.port))
        client.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)

        async def expirer() -> None:
            while True:
                await asyncio.sleep(0.5)
                client.expire(time.monotonic())

        background = [loop.create_task(expirer())]
        try:
            await self.send(client, WARMUP)
            await self.scrape_now()
            rss_start = self.rss()
            tally = client.tally = Tally()
            background.append(loop.create_task(self.scraper()))
            samples = [Sample(0, 0.0, rss_start)]
            pending_samples: list[int] = []
            started = time.monotonic()
            cpu_started = (process_cpu_seconds(self.served.process.pid), time.process_time())
            step = max(1, queries // 100)
            metrics_mid = NO_SCRAPE

            def on_sample(k: int) -> None:
                pending_samples.append(k)

            async def sampler() -> None:
                nonlocal metrics_mid
                while True:
                    await asyncio.sleep(0.01)
                    while pending_samples:
                        k = pending_samples.pop(0)
                        rss = await self.quiet_rss()
                        samples.append(Sample(k, time.monotonic() - started, rss))
                        if k == (queries // 2) // step * step:
                            metrics_mid = self.last_metrics

            sampling = loop.create_task(sampler())
            background.append(sampling)
            await self.send(client, queries, step, on_sample)
            seconds = time.monotonic() - started
            server_cpu = process_cpu_seconds(self.served.process.pid) - cpu_started[0]
            client_cpu = time.process_time() - cpu_started[1]
            while pending_samples and not sampling.done():
                await asyncio.sleep(0.01)
            if sampling.done():
                sampling.result()  # raises what stopped it
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            background.clear()
            rss_end = await self.quiet_rss()
            if samples[-1].sent == tally.sent:
                samples[-1] = Sample(tally.sent, seconds, rss_end)
            else:
                samples.append(Sample(tally.sent, seconds, rss_end))
            metrics_end = await self.scrape_now()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            transport.close()
        half = [s for s in samples if s.sent >= queries // 2]
        rss_mid = half[0].rss_mb
        return RunResult(
            rss_start=rss_start, rss_mid=rss_mid, rss_end=rss_end,
            rss_peak=max(s.rss_mb for s in samples),
            hwm=status_mb(self.served.process.pid, "VmHWM"),
            growth_pct=(rss_end - rss_mid) / rss_mid * 100, trend_pct=trend_pct(half),
            seconds=seconds, qps=tally.sent / seconds, server_cpu_pct=server_cpu / seconds * 100,
            client_cpu_pct=client_cpu / seconds * 100, tally=tally, scrapes=self.scrapes,
            metrics_mid=metrics_mid, metrics_end=metrics_end, samples=samples, log_lines=[])


def one_run(names: Names, queries: int, seed: int, window: int,
            scrape_interval: float) -> RunResult:
    """A fresh upstream and server, the warm-up and ``queries`` queries."""
    with tempfile.TemporaryDirectory(prefix="clusterdns-variety-") as tmp:
        directory = Path(tmp)
        with upstream(directory) as up_port, server(directory, up_port) as served:
            driver = Driver(served, QueryMaker(names, seed), window, scrape_interval)
            result = asyncio.run(driver.run(queries))
        result.log_lines = [line for line in served.log.read_text().splitlines()
                            if line.strip()]
    return result


# -- the table -----------------------------------------------------------------------------


def rcode_text(rcodes: Counter[int]) -> str:
    total = sum(rcodes.values()) or 1
    names = {i: name for i, name in enumerate(RCODE_NAMES)}
    return ", ".join(f"{names.get(code, f'RCODE{code}')} {count / total:.1%}"
                     for code, count in rcodes.most_common())


def report_run(run: int, result: RunResult) -> None:
    tally = result.tally
    verdict = "pass" if result.growth_pct <= GROWTH_TARGET_PCT else "FAIL"
    print(f"run {run}: {tally.sent:,} queries ({tally.tcp:,} over TCP) in "
          f"{result.seconds:.1f} s, {result.qps:,.0f} q/s (CPU: server "
          f"{result.server_cpu_pct:.0f}%, client {result.client_cpu_pct:.0f}% of a core); "
          f"{tally.no_reply:,} without a "
          f"reply; RSS {result.rss_start:.1f} (start) -> {result.rss_mid:.1f} (half) -> "
          f"{result.rss_end:.1f} MB (end), peak {result.rss_peak:.1f} MB, VmHWM "
          f"{result.hwm:.1f} MB; second half {result.growth_pct:+.2f}% ({verdict}), trend "
          f"{result.trend_pct:+.2f}%; /metrics {result.metrics_mid.size:,} -> "
          f"{result.metrics_end.size:,} bytes, {result.metrics_mid.series:,} -> "
          f"{result.metrics_end.series:,} series, forward cache "
          f"{result.metrics_mid.forward_cache:,.0f} -> {result.metrics_end.forward_cache:,.0f} "
          f"entries; {result.scrapes} scrapes", flush=True)
    print(f"  query sizes {tally.smallest}..{tally.largest} bytes (UDP); replies: "
          f"{rcode_text(tally.rcodes)}; TC {tally.truncated:,}; "
          f"other question {tally.other_question:,}", flush=True)
    print("  RSS (MB) every 10%: " + " ".join(
        f"{s.rss_mb:.1f}" for s in result.samples if s.sent % max(1, tally.sent // 10) == 0
        or s is result.samples[-1]), flush=True)
    if result.log_lines:
        distinct = list(dict.fromkeys(line[:200] for line in result.log_lines))
        print(f"  server log: {len(result.log_lines)} lines (warning and above), e.g.:",
              flush=True)
        for line in distinct[:5]:
            print(f"    {line}", flush=True)


def measure(runs: int = 3, queries: int = 600_000, seed: int = 7, window: int = 100,
            scrape_interval: float = 5.0) -> Table:
    names = demo_names()
    version = source_version()
    print(f"query variety: clusterdns {version}, {queries:,} queries per run (after "
          f"{WARMUP:,} warm-up), seed {seed}, window {window}, /metrics every "
          f"{scrape_interval:g} s; {machine_load()}", flush=True)
    results: list[RunResult] = []
    for run in range(1, runs + 1):
        result = one_run(names, queries, seed, window, scrape_interval)
        results.append(result)
        report_run(run, result)

    def row(figure: str, values: list[float], unit: str, digits: int, target: str = "",
            limit: float | None = None) -> list[str]:
        m = median(values)
        verdict = "" if limit is None else ("pass" if m <= limit else "FAIL")
        return [figure, f"{m:,.{digits}f} {unit}".strip(),
                ", ".join(f"{v:,.{digits}f}" for v in values), target, verdict]

    def each(get: Callable[[RunResult], float]) -> list[float]:
        return [get(r) for r in results]

    last = results[-1].tally
    rows = [
        row("RSS at start (after warm-up)", each(lambda r: r.rss_start), "MB", 1),
        row("RSS at half", each(lambda r: r.rss_mid), "MB", 1),
        row("RSS at end", each(lambda r: r.rss_end), "MB", 1),
        row("peak RSS (samples every 1%)", each(lambda r: r.rss_peak), "MB", 1),
        row("VmHWM at end", each(lambda r: r.hwm), "MB", 1),
        row("RSS growth over the second half", each(lambda r: r.growth_pct), "%", 2,
            f"<= {GROWTH_TARGET_PCT:g} %", GROWTH_TARGET_PCT),
        row("  same, least-squares trend of the samples", each(lambda r: r.trend_pct), "%", 2),
        row("RSS growth start -> end",
            each(lambda r: (r.rss_end - r.rss_start) / r.rss_start * 100), "%", 2),
        row("/metrics size at half", each(lambda r: float(r.metrics_mid.size)), "B", 0),
        row("/metrics size at end", each(lambda r: float(r.metrics_end.size)), "B", 0),
        row("/metrics series at half", each(lambda r: float(r.metrics_mid.series)), "", 0),
        row("/metrics series at end", each(lambda r: float(r.metrics_end.series)), "", 0),
        row("forward cache entries at half (coredns_cache_entries)",
            each(lambda r: r.metrics_mid.forward_cache), "", 0),
        row("time", each(lambda r: r.seconds), "s", 1),
        row("queries per second", each(lambda r: r.qps), "q/s", 0),
        row("server CPU (of one core)", each(lambda r: r.server_cpu_pct), "%", 0),
        row("queries without a reply", each(lambda r: float(r.tally.no_reply)), "", 0),
        row("replies with another question",
            each(lambda r: float(r.tally.other_question)), "", 0),
        row("server log lines (warning and above)",
            each(lambda r: float(len(r.log_lines))), "", 0),
        [f"replies (last run): {rcode_text(last.rcodes)}", "", "", "", ""],
        [f"{last.sent:,} queries per run, {last.tcp:,} over TCP; UDP queries "
         f"{last.smallest}..{last.largest} bytes; seed {seed}, window {window}; "
         f"clusterdns {version}", "", "", "", ""],
        [machine_load(), "", "", "", ""],
    ]
    title = (f"Query variety: RSS over {queries:,} random queries "
             f"(names, types, sizes, EDNS), medians of {runs}")
    return title, ["figure", "median", "runs", "target", ""], rows


def main_table(runs: int = 3) -> Table:
    return measure(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--queries", type=int, default=600_000,
                        help="queries per run after the warm-up (default 600000)")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs, each with a fresh server (medians; default 1)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the query RNG")
    parser.add_argument("--window", type=int, default=100, help="queries in flight")
    parser.add_argument("--scrape-interval", type=float, default=5.0,
                        help="seconds between scrapes of /metrics")
    parser.add_argument("--upstream-child", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream_child is not None:
        serve_upstream(args.upstream_child)
        return
    if args.queries < 200:
        parser.error("--queries must be at least 200")
    print(markdown(*measure(args.runs, args.queries, args.seed, args.window,
                            args.scrape_interval)))


if __name__ == "__main__":
    main()
