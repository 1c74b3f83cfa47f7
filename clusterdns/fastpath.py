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

Invalidation: the tables belong to one snapshot object. When the snapshot reference
points at another object, the next lookup starts fresh tables. A handler setting the
replies depend on (UDP size, forwarder) changing calls ``clear``.

Round robin: a headless A/AAAA RRset of n records is cached as n rotations, filled
lazily by the full path, and hits cycle through them (``wanted_rotation`` tells the full
path which rotation the entry is missing).

Metrics: a hit does not call the per-query observer. It bumps a counter cell shared by
every entry with the same (qtype, in zone, rcode, TC, query size, reply size); the cells
outlive the tables, and the metrics exporter adds them in at scrape time.

Pure: no sockets, no asyncio, no dnslib.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from clusterdns.snapshot import Snapshot, SnapshotRef

UDP4: Final = 0
UDP6: Final = 1
TCP4: Final = 2
TCP6: Final = 3
"""Slots: what a hit is counted under; a listener knows its slot from its socket family."""

DEFAULT_MAX_ENTRIES = 50_000
"""Per transport. At ~100-300 bytes per reply plus the key, about 20 MB when full."""

_OPT = 41
_COUNTS = struct.Struct("!HHHH")


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


@dataclass(frozen=True, slots=True)
class CellKey:
    """What the metrics exporter needs to count a hit like an observed query."""

    qtype: int
    in_zone: bool
    rcode: int
    truncated: bool
    query_size: int
    reply_size: int


class HitCounts:
    """Hit counters per cell, one count per slot; they outlive every table."""

    def __init__(self) -> None:
        self.cells: dict[CellKey, list[int]] = {}

    def cell(self, key: CellKey) -> list[int]:
        counts = self.cells.get(key)
        if counts is None:
            counts = self.cells[key] = [0, 0, 0, 0]
        return counts

    def total(self) -> int:
        return sum(sum(c) for c in list(self.cells.values()))

    def truncated(self) -> int:
        """UDP hits that carried TC (for ``clusterdns_truncated_replies``)."""
        return sum(c[UDP4] + c[UDP6] for k, c in list(self.cells.items()) if k.truncated)


class _Entry:
    """A stored reply without its ID; or, for a rotating RRset, every rotation of it."""

    __slots__ = ("bodies", "body", "cell", "cells", "cursor")

    def __init__(self, body: bytes | None, cell: list[int], rotations: int) -> None:
        self.body = body  # None for a rotating entry
        self.cell = cell
        self.bodies: list[bytes | None] = [None] * rotations
        self.cells: list[list[int]] = [cell] * rotations
        self.cursor = 0


class ReplyCache:
    """Per-snapshot tables of encoded replies, keyed by the query without its ID."""

    def __init__(self, ref: SnapshotRef, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ref = ref
        self.max_entries = max_entries
        self.hits = HitCounts()
        self._snap: Snapshot | None = None
        self._udp: dict[bytes, _Entry] = {}
        self._tcp: dict[bytes, _Entry] = {}
        self._by_slot = (self._udp, self._udp, self._tcp, self._tcp)
        self.generations = 0  # how many times the tables were started afresh

    def __len__(self) -> int:
        return len(self._udp) + len(self._tcp)

    def clear(self) -> None:
        """Forget every reply (a setting the replies depend on changed)."""
        self._snap = None

    def _renew(self, snap: Snapshot) -> None:
        self._snap = snap
        self._udp = {}
        self._tcp = {}
        self._by_slot = (self._udp, self._udp, self._tcp, self._tcp)
        self.generations += 1

    def lookup(self, data: bytes, slot: int) -> bytes | None:
        """The reply to ``data`` if it is stored for the current snapshot, else None.

        This is the hit path: one slice, one dict lookup, one concatenation.
        """
        if self._ref.current is not self._snap:
            self._renew(self._ref.current)
            return None
        entry = self._by_slot[slot].get(data[2:])
        if entry is None:
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

    def wanted_rotation(self, data: bytes, tcp: bool) -> int | None:
        """For a query whose entry misses the rotation its cursor points at: that one."""
        entry = (self._tcp if tcp else self._udp).get(data[2:])
        if entry is None or entry.body is not None or self._snap is not self._ref.current:
            return None
        return entry.cursor

    def insert(self, snap: Snapshot, data: bytes, tcp: bool, reply: bytes, *, qtype: int,
               in_zone: bool, rotations: int = 1, index: int = 0) -> bool:
        """Store the full path's ``reply`` to ``data``, made from ``snap``.

        ``rotations`` > 1: the reply is rotation ``index`` of that many. Returns whether
        it was stored (not when ``data`` is not plain or ``snap`` is no longer current).
        """
        if snap is not self._snap:
            if snap is not self._ref.current:
                return False
            self._renew(snap)
        if len(reply) < 12 or not plain_query(data):
            return False
        table = self._tcp if tcp else self._udp
        key = data[2:]
        cell = self.hits.cell(CellKey(qtype, in_zone, reply[3] & 0x0F, bool(reply[2] & 0x02),
                                      len(data), len(reply)))
        body = reply[2:]
        entry = table.get(key)
        if rotations <= 1:
            if entry is None or entry.body is None:
                self._make_room(table, key)
                table[key] = _Entry(body, cell, 0)
            return True
        if entry is None or len(entry.bodies) != rotations:
            self._make_room(table, key)
            entry = table[key] = _Entry(None, cell, rotations)
            entry.cursor = index % rotations
        entry.bodies[index % rotations] = body
        entry.cells[index % rotations] = cell
        return True

    def _make_room(self, table: dict[bytes, _Entry], key: bytes) -> None:
        if key not in table and len(table) >= self.max_entries:
            del table[next(iter(table))]  # the oldest entry
