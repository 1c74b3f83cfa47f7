"""The error ladder: one function from request bytes to reply bytes (or nothing).

Every packet the transports receive goes through ``Handler.handle`` and nothing ever
escapes it: too short or a response -> drop; unparseable -> FORMERR (echoing the
question when it can be read); opcode other than QUERY -> NOTIMP; QDCOUNT != 1 ->
FORMERR; an EDNS version we do not speak -> BADVERS; class other than IN -> REFUSED;
meta types -> NOTIMP; otherwise ``resolve`` decides and ``wire`` encodes. An exception
while answering becomes SERVFAIL, is logged and counted.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

from clusterdns import resolve as resolver
from clusterdns import wire
from clusterdns.records import RRType
from clusterdns.resolve import EDE, Decision, Outcome
from clusterdns.snapshot import SnapshotRef

log = logging.getLogger(__name__)

CLASS_IN = 1
CLASS_ANY = 255
META_TYPES = frozenset({RRType.OPT, RRType.MAILA, RRType.MAILB, 249, 250})  # + TKEY, TSIG


@dataclass(slots=True)
class HandlerStats:
    """Plain counters, read by the metrics exporter."""

    dropped: int = 0
    formerr: int = 0
    errors: int = 0
    truncated: int = 0


class Handler:
    def __init__(self, ref: SnapshotRef, max_udp_size: int = 1232) -> None:
        self.ref = ref
        self.max_udp_size = max_udp_size
        self.stats = HandlerStats()
        self._rotation = itertools.count(1)

    def handle(self, data: bytes, tcp: bool = False) -> bytes | None:
        """Reply bytes for one request, or None to drop it. Never raises."""
        header = wire.peek_header(data)
        if header is None or wire.is_response(header[1]):
            self.stats.dropped += 1
            return None
        try:
            return self._answer(data, header, tcp)
        except Exception:
            self.stats.errors += 1
            log.exception("error while answering a query; replying SERVFAIL")
            try:
                query = wire.parse(data)
            except wire.Malformed:
                query = None
            try:
                return wire.encode_error(query, header, b"", Outcome.SERVFAIL,
                                         self.max_udp_size)
            except Exception:
                log.exception("could not even encode SERVFAIL; dropping the query")
                return None

    def _answer(self, data: bytes, header: tuple[int, int], tcp: bool) -> bytes:
        try:
            query = wire.parse(data)
        except wire.Malformed as bad:
            self.stats.formerr += 1
            return wire.encode_error(None, bad.header, bad.question, Outcome.FORMERR,
                                     self.max_udp_size)
        if query.edns is not None and query.edns.version != 0 and query.opcode == 0:
            return wire.encode_badvers(query, self.max_udp_size)
        decision = self._refuse(query)
        if decision is None:
            decision = resolver.resolve(self.ref.get(), query.qname, query.qtype,
                                        next(self._rotation))
        limit = wire.TCP_MAX if tcp else query.udp_limit(self.max_udp_size)
        reply = wire.encode(query, decision, limit, self.max_udp_size)
        if reply[2] & 0x02:
            self.stats.truncated += 1
        return reply

    def _refuse(self, query: wire.Query) -> Decision | None:
        """The rungs of the ladder after parsing; None when the query may be resolved."""
        if query.opcode != 0:
            return Decision(Outcome.NOTIMP, ede=(EDE.NOT_SUPPORTED, "only QUERY is implemented"))
        if query.qdcount != 1:
            self.stats.formerr += 1
            return Decision(Outcome.FORMERR, ede=(
                EDE.OTHER, f"expected exactly one question, got {query.qdcount}"))
        if query.qclass not in (CLASS_IN, CLASS_ANY):
            return Decision(Outcome.REFUSED, ede=(EDE.OTHER, "only class IN is served"))
        if query.qtype in META_TYPES:
            return Decision(Outcome.NOTIMP, ede=(
                EDE.NOT_SUPPORTED, "meta query types are not supported"))
        return None
