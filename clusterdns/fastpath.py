"""The fast path: encoded replies of the current snapshot, served without parsing.

This module exists because parsing, resolving and encoding a query costs tens of
microseconds, while most queries a cluster DNS server sees repeat the same few thousand
questions. The full path (``handler``) stores what it produced for a *plain* query; the
next identical query is answered by one dict lookup and one bytes concatenation.

The key is the whole query except its 2-byte ID (flags, counts, the question as sent and
the OPT record), one table per transport. Everything the full path's reply depends on
besides the snapshot and the handler's settings is in those bytes, so a hit is exactly
what the full path would have sent: same flags (RD, CD), same question bytes (so the
query's letter case, DNS 0x20, is kept trivially), same EDNS shape (payload size, DO
bit), same truncation. Only the ID is patched. Two spellings of one name are two entries;
a 0x20-randomising client therefore rarely hits, which costs it nothing but speed.

Only plain queries are stored (``plain_query``): QUERY opcode, one question, no answer
or authority records, and either no additional record or exactly one OPT of version 0
without options (cookies, client subnet, padding... take the full path every time).
Only replies that depend on nothing but the snapshot and the key are stored; the handler
decides which (never forwarded replies).

Invalidation: the tables belong to one snapshot generation (its serial). When the
snapshot reference points at another generation, the next lookup starts fresh tables.
A handler setting the replies depend on (UDP size, forwarder) changing calls ``clear``.

Autopath: the NXDOMAIN of ``<name>.<ns>.svc.<zone>`` is the same for every client but
one kind, the pods of ``<ns>`` whose search list autopath walks instead. Such an entry
carries that namespace (``walk``), and a hit from the address of such a pod is a miss,
so the full path walks for it; everyone else gets the stored NXDOMAIN. Walked replies
themselves are never stored.

Round robin: a headless A/AAAA RRset of n records is cached as n rotations, filled
lazily by the full path, and hits cycle through them (``wanted_rotation`` tells the full
path which rotation the entry is missing).

Metrics: a hit does not call the per-query observer. It bumps a counter cell shared by
every entry with the same (qtype, in zone, rcode, TC, query size, reply size); the cells
outlive the tables, and the metrics exporter adds them in at scrape time.

Bounds (clients choose what is stored, so everything here has one): at most
``max_entries`` questions per transport and ``max_bytes`` of keys and replies in all,
the oldest entry going first; at most ``resolve.MAX_ROTATIONS`` rotations per question;
at most ``MAX_CELLS`` counter cells. When a new cell is needed and there is no room,
every cell is handed to ``HitCounts.on_fold`` (the metrics exporter adds them to its
totals) and the tables start afresh, since their entries count into the folded cells.
Query types other than ``HitCounts.types`` (when set) share one cell key, type 0.

Pure: no sockets, no asyncio, no dnslib.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from clusterdns.autopath import source_ip
from clusterdns.objects import Pod
from clusterdns.snapshot import Snapshot, SnapshotRef

UDP4: Final = 0
UDP6: Final = 1
TCP4: Final = 2
TCP6: Final = 3
"""Slots: what a hit is counted under; a listener knows its slot from its socket family."""

DEFAULT_MAX_ENTRIES = 50_000
"""Questions stored per transport."""
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""Keys and replies stored in all, counted with ``ENTRY_OVERHEAD`` each."""
ENTRY_OVERHEAD = 200
"""Bytes an entry costs beyond its key and replies (objects, dict slot), as measured."""
MAX_CELLS = 4096
"""Hit counter cells kept before they are folded into the exporter's totals."""

_OPT = 41
_COUNTS = struct.Struct("!HHHH")
_TTL = struct.Struct("!I")


def slot(tcp: bool, ipv6: bool) -> int:
    return (TCP4 if tcp else UDP4) + (1 if ipv6 else 0)


def plain_query(data: bytes) -> bool:
    """Whether ``data`` is a query the fast path may store a reply for.

    QR clear, opcode QUERY, QDCOUNT 1, ANCOUNT = NSCOUNT = 0, a well-formed uncompressed
    question name, and then either the end of the message or exactly one OPT record
    (root owner, version 0, no options) ending the message.
    """
    n = len(data)
    if n < 17 or data[2] & 0xF8:  # QR and opcode
        return False
    qd, an, ns, ar = _COUNTS.unpack_from(data, 4)
    if qd != 1 or an or ns or ar > 1:
        return False
    pos = 12
    while True:  # labels
        if pos >= n:
            return False
        length = data[pos]
        if length == 0:
            break
        if length > 63:
            return False
        pos += 1 + length
    if pos - 12 > 254:  # 255 octets with the root label
        return False
    end = pos + 5  # root label, type, class
    if ar == 0:
        return end == n
    # OPT: owner 0, type 41, class = payload, ttl = ext-rcode, version, flags, rdlen 0
    return (n == end + 11 and data[end] == 0
            and data[end + 1] << 8 | data[end + 2] == _OPT
            and data[end + 6] == 0 and data[end + 9] == 0 and data[end + 10] == 0)


NOT_OURS: Final = 0
"""Who answered, as CoreDNS's ``plugin`` label says: nobody (REFUSED without upstreams),"""
KUBERNETES: Final = 1
"""our zones,"""
CACHE_SUCCESS: Final = 2
"""the forward cache (a positive answer),"""
CACHE_DENIAL: Final = 3
"""or the forward cache (a negative answer)."""


@dataclass(frozen=True, slots=True)
class CellKey:
    """What the metrics exporter needs to count a hit like an observed query."""

    qtype: int
    plugin: int  # NOT_OURS, KUBERNETES, CACHE_SUCCESS or CACHE_DENIAL
    rcode: int
    truncated: bool
    query_size: int
    reply_size: int


class HitCounts:
    """Hit counters per cell, one count per slot; they outlive every table.

    ``types``: the query types counted under their own cell key (the rest under type 0);
    None counts every type apart. ``on_fold`` receives the cells when they are folded.
    """

    def __init__(self, max_cells: int = MAX_CELLS) -> None:
        self.cells: dict[CellKey, list[int]] = {}
        self.max_cells = max_cells
        self.types: frozenset[int] | None = None
        self.on_fold: Callable[[Iterable[tuple[CellKey, list[int]]]], None] | None = None
        self.folded = 0  # hits handed to on_fold so far
        self.folded_truncated = 0  # of which UDP replies with TC
        self.folded_cache = {"success": 0, "denial": 0}  # of which forward-cache hits

    def key(self, qtype: int, plugin: int, rcode: int, truncated: bool, query_size: int,
            reply_size: int) -> CellKey:
        types = self.types
        if types is not None and qtype not in types:
            qtype = 0
        return CellKey(qtype, plugin, rcode, truncated, query_size, reply_size)

    def cell(self, key: CellKey) -> list[int] | None:
        """The cell for ``key``; None when it is new and there is no room for it."""
        counts = self.cells.get(key)
        if counts is None:
            if len(self.cells) >= self.max_cells:
                return None
            counts = self.cells[key] = [0, 0, 0, 0]
        return counts

    def fold(self) -> None:
        """Hand every cell to ``on_fold`` and start with none (entries that count into
        them must go too: ``ReplyCache`` drops its tables)."""
        cells, self.cells = self.cells, {}
        self.folded += sum(sum(c) for c in cells.values())
        self.folded_truncated += sum(c[UDP4] + c[UDP6] for k, c in cells.items()
                                     if k.truncated)
        for kind, hits in _cache_hits(cells.items()).items():
            self.folded_cache[kind] += hits
        if self.on_fold is not None:
            self.on_fold(cells.items())

    def total(self) -> int:
        return self.folded + sum(sum(c) for c in list(self.cells.values()))

    def truncated(self) -> int:
        """UDP hits that carried TC (for ``clusterdns_truncated_replies``)."""
        return self.folded_truncated + sum(
            c[UDP4] + c[UDP6] for k, c in list(self.cells.items()) if k.truncated)

    def cache_hits(self) -> dict[str, int]:
        """Forward-cache answers given by the fast path, per kind (for
        ``coredns_cache_hits_total``)."""
        live = _cache_hits(list(self.cells.items()))
        return {kind: self.folded_cache[kind] + live[kind] for kind in live}


def _cache_hits(cells: Iterable[tuple[CellKey, list[int]]]) -> dict[str, int]:
    out = {"success": 0, "denial": 0}
    for key, counts in cells:
        if key.plugin == CACHE_SUCCESS:
            out["success"] += sum(counts)
        elif key.plugin == CACHE_DENIAL:
            out["denial"] += sum(counts)
    return out


class _Entry:
    """A stored reply without its ID; or, for a rotating RRset, every rotation of it."""

    __slots__ = ("bodies", "body", "cell", "cells", "cursor", "size", "walk")

    def __init__(self, body: bytes | None, cell: list[int], rotations: int,
                 size: int, walk: str | None = None) -> None:
        self.body = body  # None for a rotating entry
        self.walk = walk  # autopath: the namespace whose pods must miss (see above)
        self.cell = cell
        self.bodies: list[bytes | None] = [None] * rotations
        self.cells: list[list[int]] = [cell] * rotations
        self.cursor = 0
        self.size = size  # what it counts against max_bytes


class Popularity(Protocol):
    """What a forwarded entry tells the forwarder's cache entry: one more hit."""

    hits: int


class _Forwarded:
    """A forwarded answer from the forwarder's cache, kept as reply bytes whose TTLs are
    patched as they count down (the body is made again at most once a second)."""

    __slots__ = ("ages", "body", "cell", "expires", "origin", "size", "stored", "template",
                 "ttls")

    def __init__(self, template: bytes, ttls: tuple[tuple[int, int], ...], stored: float,
                 expires: float, cell: list[int], origin: Popularity, size: int) -> None:
        self.template = template  # the reply without its ID, TTLs as at ``stored``
        self.ttls = ttls  # (offset into the template, TTL when cached)
        self.stored = stored  # clock() when the forwarder cached the answer
        self.expires = expires  # clock() from which it may no longer be given
        self.body = template
        self.ages = -1  # whole seconds since ``stored`` that ``body`` was patched for
        self.cell = cell
        self.origin = origin
        self.size = size


class ReplyCache:
    """Per-snapshot tables of encoded replies, keyed by the query without its ID, and
    tables of forwarded answers, which no snapshot changes (see ``remember``)."""

    def __init__(self, ref: SnapshotRef, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self._ref = ref
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # what the stored entries count against max_bytes
        self.hits = HitCounts()
        # The serial of the snapshot the tables belong to (not the snapshot itself, which
        # would keep an old generation's index alive until the next query).
        self._serial = -1
        self._udp: dict[bytes, _Entry] = {}
        self._tcp: dict[bytes, _Entry] = {}
        self._by_slot = (self._udp, self._udp, self._tcp, self._tcp)
        self.generations = 0  # how many times the tables were started afresh
        self._forwarded: tuple[dict[bytes, _Forwarded], dict[bytes, _Forwarded]] = ({}, {})
        self.forwarded_bytes = 0  # what the forwarded entries count against max_bytes
        self.clock: Callable[[], float] = time.monotonic  # the forwarder's

    def __len__(self) -> int:
        return len(self._udp) + len(self._tcp)

    def clear(self) -> None:
        """Forget every reply (a setting the replies depend on changed)."""
        self._serial = -1
        for table in self._forwarded:
            table.clear()
        self.forwarded_bytes = 0

    def _renew(self, serial: int) -> None:
        self._serial = serial
        self._udp = {}
        self._tcp = {}
        self._by_slot = (self._udp, self._udp, self._tcp, self._tcp)
        self.bytes = 0
        self.generations += 1

    def lookup(self, data: bytes, slot: int, peer: object = None) -> bytes | None:
        """The reply to ``data`` from ``peer`` (the socket's address of the client) if it
        is stored for the current snapshot, else None.

        This is the hit path: one slice, one dict lookup, one concatenation.
        """
        serial = self._ref.current.serial
        if serial != self._serial:
            self._renew(serial)
            return None
        entry = self._by_slot[slot].get(data[2:])
        if entry is None:
            return self._forwarded_reply(data, slot) if self.forwarded_bytes else None
        if entry.walk is not None and self._walks_for(entry.walk, peer):
            return None
        body = entry.body
        if body is None:  # a rotating RRset: the next rotation, if the full path made it
            bodies = entry.bodies
            i = entry.cursor + 1
            if i == len(bodies):
                i = 0
            entry.cursor = i
            body = bodies[i]
            if body is None:
                return None
            entry.cells[i][slot] += 1
            return data[:2] + body
        entry.cell[slot] += 1
        return data[:2] + body

    def _walks_for(self, namespace: str, peer: object) -> bool:
        """Whether autopath walks the search list of ``peer``, a pod of ``namespace``."""
        ip = peer[0] if type(peer) is tuple and peer else None  # what asyncio hands over
        if type(ip) is not str or ":" in ip:  # IPv6, IPv4-mapped: canonical text first
            ip = source_ip(peer)
            if ip is None:
                return False
        held = self._ref.current.pods_by_ip.get(ip)
        return type(held) is Pod and held.namespace == namespace and held.autopath

    def _forwarded_reply(self, data: bytes, slot: int) -> bytes | None:
        """The hit path for forwarded answers: TTLs aged to the second."""
        table = self._forwarded[slot >> 1]
        key = data[2:]
        entry = table.get(key)
        if entry is None:
            return None
        now = self.clock()
        if now >= entry.expires:
            del table[key]
            self.forwarded_bytes -= entry.size
            return None
        ages = int(now - entry.stored)
        if ages != entry.ages:
            body = bytearray(entry.template)
            for offset, ttl in entry.ttls:
                _TTL.pack_into(body, offset, max(0, ttl - ages))
            entry.body, entry.ages = bytes(body), ages
        entry.cell[slot] += 1
        entry.origin.hits += 1
        return data[:2] + entry.body

    def remember(self, data: bytes, tcp: bool, reply: bytes, ttls: Sequence[tuple[int, int]],
                 stored: float, ages: int, expires: float, qtype: int, denial: bool,
                 origin: Popularity) -> bool:
        """Keep the forwarder's ``reply`` to ``data``, made from its cache entry stored at
        ``stored`` (the forwarder's clock) when it was ``ages`` whole seconds old, with
        the (offset, TTL) of each TTL in ``reply`` as written then, until ``expires``.
        Bounded like the other tables; returns whether it was kept."""
        if len(reply) < 12 or not plain_query(data):
            return False
        cell = self._cell(data, reply, qtype, CACHE_DENIAL if denial else CACHE_SUCCESS)
        template = reply[2:]
        size = len(data) + len(template) + ENTRY_OVERHEAD
        table = self._forwarded[1 if tcp else 0]
        name = data[2:]
        old = table.pop(name, None)
        if old is not None:
            self.forwarded_bytes -= old.size
        if size > self.max_bytes:
            return False
        while table and (len(table) >= self.max_entries
                         or self.forwarded_bytes + size > self.max_bytes):
            self.forwarded_bytes -= table.pop(next(iter(table))).size
        entry = _Forwarded(template, tuple((offset - 2, ttl + ages) for offset, ttl in ttls),
                           stored, expires, cell, origin, size)
        entry.body, entry.ages = template, ages
        table[name] = entry
        self.forwarded_bytes += size
        return True

    def wanted_rotation(self, data: bytes, tcp: bool) -> int | None:
        """For a query whose entry misses the rotation its cursor points at: that one."""
        entry = (self._tcp if tcp else self._udp).get(data[2:])
        if entry is None or entry.body is not None or self._serial != self._ref.current.serial:
            return None
        return entry.cursor

    def insert(self, snap: Snapshot, data: bytes, tcp: bool, reply: bytes, *, qtype: int,
               in_zone: bool, rotations: int = 1, index: int = 0,
               walk: str | None = None) -> bool:
        """Store the full path's ``reply`` to ``data``, made from ``snap``.

        ``rotations`` > 1: the reply is rotation ``index`` of that many. ``walk``: the
        reply is an NXDOMAIN autopath replaces for the pods of that namespace, who must
        not get it. Returns whether it was stored (not when ``data`` is not plain,
        ``snap`` is no longer current, or the reply alone is over ``max_bytes``).
        """
        if snap.serial != self._serial:
            if snap is not self._ref.current:
                return False
            self._renew(snap.serial)
        if len(reply) < 12 or not plain_query(data):
            return False
        cell = self._cell(data, reply, qtype, KUBERNETES if in_zone else NOT_OURS)
        table = self._tcp if tcp else self._udp
        key_bytes = data[2:]
        body = reply[2:]
        entry = table.get(key_bytes)
        if rotations <= 1:
            if entry is None or entry.body is None:
                size = len(key_bytes) + len(body) + ENTRY_OVERHEAD
                if not self._make_room(table, key_bytes, size):
                    return False
                table[key_bytes] = _Entry(body, cell, 0, size, walk)
            return True
        if entry is None or len(entry.bodies) != rotations:
            size = len(key_bytes) + ENTRY_OVERHEAD
            if size + len(body) > self.max_bytes or not self._make_room(table, key_bytes, size):
                return False
            entry = table[key_bytes] = _Entry(None, cell, rotations, size)
            entry.cursor = index % rotations
        i = index % rotations
        if entry.bodies[i] is None:
            if self.bytes + len(body) > self.max_bytes:
                self._evict(table, len(body), keep=entry)
                if self.bytes + len(body) > self.max_bytes:
                    return False
            entry.size += len(body)
            self.bytes += len(body)
        else:
            previous = entry.bodies[i]
            assert previous is not None
            entry.size += len(body) - len(previous)
            self.bytes += len(body) - len(previous)
        entry.bodies[i] = body
        entry.cells[i] = cell
        return True

    def _cell(self, data: bytes, reply: bytes, qtype: int, plugin: int) -> list[int]:
        """The hit counter cell for ``reply`` to ``data``. When there is no room for a new
        one, the cells are folded and every table, forwarded ones too, starts afresh: no
        entry may go on counting into a cell already folded."""
        hits = self.hits
        key = hits.key(qtype, plugin, reply[3] & 0x0F, bool(reply[2] & 0x02), len(data),
                       len(reply))
        cell = hits.cell(key)
        if cell is None:
            hits.fold()
            self._renew(self._serial)
            for table in self._forwarded:
                table.clear()
            self.forwarded_bytes = 0
            cell = hits.cell(key)
            assert cell is not None
        return cell

    def _make_room(self, table: dict[bytes, _Entry], key: bytes, size: int) -> bool:
        """Room for an entry of ``size`` at ``key`` (replacing what is there): the oldest
        entries go first. False when ``size`` alone is over ``max_bytes``."""
        if size > self.max_bytes:
            return False
        old = table.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        if len(table) >= self.max_entries:
            self.bytes -= table.pop(next(iter(table))).size
        self._evict(table, size)
        self.bytes += size
        return True

    def _evict(self, table: dict[bytes, _Entry], size: int,
               keep: _Entry | None = None) -> None:
        """Drop the oldest entries, of ``table`` first, until ``size`` more bytes fit."""
        for victims in (table, self._udp if table is self._tcp else self._tcp):
            while victims and self.bytes + size > self.max_bytes:
                oldest = next(iter(victims))
                if victims[oldest] is keep:
                    if len(victims) == 1:
                        break
                    victims[oldest] = victims.pop(oldest)  # to the back of the line
                    continue
                self.bytes -= victims.pop(oldest).size
