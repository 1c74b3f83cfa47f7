"""The error ladder: one function from request bytes to reply bytes (or nothing).

Every packet the transports receive goes through ``Handler.handle`` and nothing ever
escapes it: too short or a response -> drop; unparseable -> FORMERR (echoing the
question when it can be read); opcode other than QUERY -> NOTIMP; QDCOUNT != 1 ->
FORMERR; an EDNS version we do not speak -> BADVERS; class other than IN -> REFUSED;
meta types -> NOTIMP; otherwise ``resolve`` decides and ``wire`` encodes. An exception
while answering becomes SERVFAIL, is logged and counted.

With a forwarder, three kinds of query go upstream and make ``handle`` return an
awaitable instead of bytes: names outside our zones, the out-of-zone target of an
ExternalName CNAME (the upstream's answer follows our CNAME), and names we would answer
NXDOMAIN for in a ``fallthrough`` zone. Everything else stays synchronous, and names in
our zones never reach an upstream otherwise.

With ``autopath`` on, the NXDOMAIN of ``<name>.<ns>.svc.<zone>`` asked from the address
of the one running ClusterFirst pod of ``<ns>`` is not the answer yet: ``autopath.Walk``
tries the rest of that pod's search list and answers the first name that exists (the
server gives ``handle`` the client's address, ``peer``, for this alone). Walked replies
never go to the fast path; the NXDOMAINs of names a walk could apply to do, marked with
the namespace whose pods must not get them from there.

The fast path (``fastpath.ReplyCache``) sits in front: the transports try
``Handler.fast.lookup`` first, and every reply this handler makes that depends only on
the snapshot and the query bytes (not forwarded, not an error it logged) is stored there
for the next identical query, rotations of round-robin RRsets included. Zone transfer
queries never are: whether one is allowed depends on who asks.

Zone transfers over TCP go through ``Handler.transfer`` instead (the server calls it
with the client's address for every TCP query the fast path did not answer): it refuses
them (client not in ``transfer_to``, zone not in ``transfer_zones``, too many running),
says an IXFR client is up to date, or starts a ``transfer.Transfer`` whose messages the
server writes one at a time. Over UDP, ``handle`` refuses them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from clusterdns import autopath, names, wire
from clusterdns import resolve as resolver
from clusterdns.fastpath import ReplyCache
from clusterdns.records import CNAME, Record, RRType
from clusterdns.resolve import EDE, Decision, Outcome
from clusterdns.snapshot import Snapshot, SnapshotRef
from clusterdns.transfer import MAX_TRANSFERS, REFUSED, UP_TO_DATE, Transfer, TransferPolicy

log = logging.getLogger(__name__)

CLASS_IN = 1
CLASS_ANY = 255
META_TYPES = frozenset({RRType.OPT, RRType.MAILA, RRType.MAILB, 249, 250})  # + TKEY, TSIG
TRANSFER_TYPES = (RRType.AXFR, RRType.IXFR)


Reply = bytes | None


class Forwarding(Protocol):
    """What the handler needs of a forwarder (``clusterdns.forward.Forwarder``)."""

    def answer(self, query: wire.Query, limit: int, chain: tuple[Record, ...] = (),
               target: str | None = None, *,
               ours: bool = False) -> bytes | Awaitable[Reply]: ...

    def candidate(self, query: wire.Query, limit: int, name: str,
                  cname: Record) -> autopath.Step | Awaitable[autopath.Step]: ...


@dataclass(slots=True)
class HandlerStats:
    """Plain counters, read by the metrics exporter."""

    dropped: int = 0
    formerr: int = 0
    errors: int = 0
    truncated: int = 0
    autopath: int = 0  # queries answered for another name of the pod's search list
    transfers: dict[tuple[str, str], int] = field(default_factory=dict)
    """Zone transfers by (zone, result): ``transfer.COMPLETE``, ``ABORTED``,
    ``UP_TO_DATE``, ``REFUSED``. Zones are ours, results a fixed set."""

    def count_transfer(self, zone: str, result: str) -> None:
        key = (zone, result)
        self.transfers[key] = self.transfers.get(key, 0) + 1


class Handler:
    def __init__(self, ref: SnapshotRef, max_udp_size: int = 1232,
                 forwarder: Forwarding | None = None, *, fast: bool = True) -> None:
        self.ref = ref
        self.fast: ReplyCache | None = ReplyCache(ref) if fast else None
        self._max_udp_size = max_udp_size
        self._forwarder = forwarder
        self.stats = HandlerStats()
        self._rotation = itertools.count(1)
        # The server's own resolv.conf search domains: autopath walks them after <zone>.
        self.autopath_search: tuple[str, ...] = ()
        self.transfers: TransferPolicy | None = None  # None: zone transfers are off
        self.max_transfers = MAX_TRANSFERS
        self.transfers_running = 0

    # Stored replies depend on these two: changing either forgets them.
    @property
    def max_udp_size(self) -> int:
        return self._max_udp_size

    @max_udp_size.setter
    def max_udp_size(self, value: int) -> None:
        self._max_udp_size = value
        if self.fast is not None:
            self.fast.clear()

    @property
    def forwarder(self) -> Forwarding | None:
        return self._forwarder

    @forwarder.setter
    def forwarder(self, value: Forwarding | None) -> None:
        self._forwarder = value
        if self.fast is not None:
            self.fast.clear()

    def handle(self, data: bytes, tcp: bool = False,
               peer: object = None) -> Reply | Awaitable[Reply]:
        """Reply bytes for one request, None to drop it, or an awaitable of either
        when the answer needs an upstream. Never raises. ``peer`` is the client's
        address as the socket gives it (only autopath looks at it)."""
        header = wire.peek_header(data)
        if header is None or wire.is_response(header[1]):
            self.stats.dropped += 1
            return None
        try:
            return self._answer(data, header, tcp, peer)
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

    def _answer(self, data: bytes, header: tuple[int, int], tcp: bool,
                peer: object = None) -> bytes | Awaitable[Reply]:
        try:
            query = wire.parse(data)
        except wire.Malformed as bad:
            self.stats.formerr += 1
            return wire.encode_error(None, bad.header, bad.question, Outcome.FORMERR,
                                     self.max_udp_size)
        if query.edns is not None and query.edns.version != 0 and query.opcode == 0:
            return wire.encode_badvers(query, self.max_udp_size)
        limit = wire.TCP_MAX if tcp else query.udp_limit(self.max_udp_size)
        snap = self.ref.get()
        fwd = self.forwarder
        fast = self.fast
        rotation = 0
        in_zone = snap.zone_for(query.qname) is not None
        walk: str | None = None  # autopath's namespace for this name (see fastpath)
        decision = self._refuse(query)
        if decision is None:
            if (fwd is not None and not in_zone
                    and query.qtype not in (RRType.AXFR, RRType.IXFR)):
                return fwd.answer(query, limit)
            rotation = next(self._rotation)
            if fast is not None:
                wanted = fast.wanted_rotation(data, tcp)
                if wanted is not None:
                    rotation = wanted
            decision = resolver.resolve(snap, query.qname, query.qtype, rotation)
            if decision is resolver.TRANSFER_REFUSED:
                decision = self._transfer_refused(query, snap, tcp)
            if (decision.outcome is Outcome.NXDOMAIN and not decision.answer
                    and snap.config.autopath):
                shaped = autopath.shape(snap, query.qname)
                if shaped is not None:
                    walk = shaped[1]  # the fast path keeps this NXDOMAIN from its pods
                    walked = self._autopath(snap, query, decision, shaped, limit, rotation,
                                            peer)
                    if walked is not None:
                        return walked
            if fwd is not None:
                onward = _onward(snap, query, decision)
                if onward is not None:
                    return fwd.answer(query, limit, *onward, ours=True)
        reply = self._counted(wire.encode(query, decision, limit, self.max_udp_size))
        # Out-of-zone replies are stored only without a forwarder (else metrics would count
        # them as forwarded); transfer queries never (their answer depends on the client).
        if fast is not None and (in_zone or fwd is None) and query.qtype not in TRANSFER_TYPES:
            # TC: the answer RRset did not fit, so every rotation is the same reply.
            rotations = 1 if reply[2] & 0x02 else _rotations(decision, query.qtype)
            fast.insert(snap, data, tcp, reply, qtype=query.qtype, in_zone=in_zone,
                        rotations=rotations, index=rotation % rotations, walk=walk)
        return reply

    def _transfer_refused(self, query: wire.Query, snap: Snapshot, tcp: bool) -> Decision:
        """A transfer query of a synced zone of ours that reached ``handle`` (``resolve``
        gave ``TRANSFER_REFUSED``): REFUSED, saying why."""
        zone = snap.zone_for(query.qname) or ""
        if self.transfers is None:
            why = "zone transfer is not enabled"
        elif not tcp:
            why = "zone transfer is only over TCP"
        else:  # the server hands TCP transfers to ``transfer``; without it, no client address
            why = "zone transfer needs the client's address"
        self.stats.count_transfer(zone, REFUSED)
        return Decision(Outcome.REFUSED, ede=(EDE.NOT_SUPPORTED, why))

    def transfer(self, data: bytes, peer: Any) -> bytes | Transfer | None:
        """A zone transfer asked over TCP by ``peer`` (the socket's address tuple).

        Returns a started ``Transfer`` (an iterator of messages, which the server must
        ``finish``), the one reply that refuses it or tells an IXFR client it is up to
        date, or None when ``data`` is not a transfer of one of our zones that can be
        answered now (``handle`` answers it like any other query: FORMERR, REFUSED out
        of our zones, SERVFAIL before the first sync). Never raises.
        """
        policy = self.transfers
        if policy is None or wire.question_type(data) not in TRANSFER_TYPES:
            return None
        header = wire.peek_header(data)
        if header is None or wire.is_response(header[1]):
            return None
        try:
            return self._transfer(data, peer, policy)
        except Exception:
            self.stats.errors += 1
            log.exception("error while starting a zone transfer; replying SERVFAIL")
            try:
                return wire.encode_error(wire.parse(data), header, b"", Outcome.SERVFAIL,
                                         self.max_udp_size)
            except Exception:
                return None

    def _transfer(self, data: bytes, peer: Any,
                  policy: TransferPolicy) -> bytes | Transfer | None:
        try:
            query = wire.parse(data)
        except wire.Malformed:
            return None
        if (query.opcode != 0 or query.qdcount != 1 or query.qclass not in (CLASS_IN, CLASS_ANY)
                or (query.edns is not None and query.edns.version != 0)):
            return None
        snap = self.ref.get()
        zone = snap.zone_for(query.qname)
        if zone is None or not snap.synced:
            return None
        host = str(peer[0]) if isinstance(peer, tuple | list) and peer else str(peer or "")
        ede: tuple[EDE, str] | None = None
        if not policy.allows(host):
            ede = (EDE.PROHIBITED, f"zone transfer of {zone} is not allowed to {host or '?'}")
        elif query.qname != zone or not policy.covers(zone):
            enabled = [z for z in snap.zones[::-1] if policy.covers(z)]
            what = (f"{query.qname} is not a zone" if query.qname != zone
                    else f"zone transfer of {zone} is not enabled")
            ede = (EDE.NOT_SUPPORTED, f"{what}; zones that transfer: "
                                      f"{', '.join(enabled) or 'none'}")
        elif self.transfers_running >= self.max_transfers:
            ede = (EDE.OTHER, f"too many zone transfers running ({self.transfers_running}); "
                              "try again shortly")
        if ede is not None:
            self.stats.count_transfer(zone, REFUSED)
            return wire.encode(query, Decision(Outcome.REFUSED, ede=ede), wire.TCP_MAX,
                               self.max_udp_size)
        if query.qtype == RRType.IXFR:
            serial = wire.ixfr_serial(query)
            if serial is None:
                self.stats.formerr += 1
                return wire.encode(query, Decision(Outcome.FORMERR, ede=(
                    EDE.OTHER, "IXFR needs the SOA the client holds in the Authority "
                               "section (RFC 1995)")), wire.TCP_MAX, self.max_udp_size)
            if serial == snap.serial:
                # Up to date: the current SOA alone (RFC 1995 §2). Any other serial, older
                # or not (ours restart at 1 with the process), gets the whole zone (§4).
                self.stats.count_transfer(zone, UP_TO_DATE)
                return wire.encode(query, Decision(Outcome.SUCCESS, (snap.soa(zone),),
                                                   authoritative=True),
                                   wire.TCP_MAX, self.max_udp_size)
        self.transfers_running += 1
        return Transfer(query, snap, zone, host, self.max_udp_size, self._transfer_ended)

    def _transfer_ended(self, transfer: Transfer, result: str) -> None:
        self.transfers_running -= 1
        self.stats.count_transfer(transfer.zone, result)

    def _autopath(self, snap: Snapshot, query: wire.Query, decision: Decision,
                  shaped: tuple[str, str, str], limit: int, rotation: int,
                  peer: object) -> bytes | Awaitable[Reply] | None:
        """Walk the asking pod's search list (``clusterdns.autopath``) when it may be:
        the one pod at ``peer``'s address runs, ClusterFirst, in the namespace the name
        asked names. None: answer the name as usual."""
        base, namespace, zone = shaped
        ip = autopath.source_ip(peer)
        if ip is None or snap.autopath_namespace(ip) != namespace:
            return None
        fwd = self.forwarder

        def normal() -> bytes | Awaitable[Reply]:
            """The name's own answer, once the walk found nothing."""
            if fwd is not None:
                onward = _onward(snap, query, decision)
                if onward is not None:
                    return fwd.answer(query, limit, *onward, ours=True)
            return self._counted(wire.encode(query, decision, limit, self.max_udp_size))

        def succeeded(reply: bytes) -> None:
            self.stats.autopath += 1
            self._counted(reply)

        return autopath.Walk(snap, query, zone, autopath.candidates(base, zone,
                                                                    self.autopath_search),
                             limit, self.max_udp_size, rotation, fwd, normal, succeeded).run()

    def _counted(self, reply: bytes) -> bytes:
        """``reply``, counted in ``stats.truncated`` when it carries TC."""
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


def _rotations(decision: Decision, qtype: int) -> int:
    """How many rotations of its answer ``resolve`` can give (1: it does not rotate)."""
    if decision.outcome is not Outcome.SUCCESS:
        return 1
    count = sum(1 for r in decision.answer if r.rtype == qtype)
    return resolver.rotations(count) if resolver.rotating(qtype, count) else 1


def _onward(snap: Snapshot, query: wire.Query,
            decision: Decision) -> tuple[tuple[Record, ...], str | None] | None:
    """(our CNAME chain, name to ask upstream) when an in-zone answer continues upstream.

    An ExternalName whose target is outside our zones: the chain and its target. An
    NXDOMAIN (no chain) in a ``fallthrough`` zone: no chain, the query's own name.
    """
    answer = decision.answer
    if (decision.outcome is Outcome.SUCCESS and answer and isinstance(answer[-1].data, CNAME)
            and query.qtype not in (RRType.CNAME, RRType.ANY)):
        target = answer[-1].data.target
        if snap.zone_for(target) is None:
            return answer, target
    if (decision.outcome is Outcome.NXDOMAIN and not answer
            and any(names.is_subdomain(query.qname, z) for z in snap.config.fallthrough)):
        return (), None
    return None
